//! libFuzzer entry of the `http_upgrade` target: the input and its properties are in
//! `fuzz/props/http_upgrade.rs`, which `tests/fuzz_seeds.rs` also replays on stable Rust.
#![no_main]

#[path = "../props/http_upgrade.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::check_input(data));
