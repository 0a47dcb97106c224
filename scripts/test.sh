#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and integration tests over real sockets.
# Usage: scripts/test.sh   (from anywhere; needs cargo)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets -- --test-threads=2
