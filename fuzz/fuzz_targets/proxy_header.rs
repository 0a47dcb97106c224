//! libFuzzer entry of the `proxy_header` target: the input and its properties are in
//! `fuzz/props/proxy_header.rs`, which `tests/fuzz_seeds.rs` also replays on stable Rust.
#![no_main]

#[path = "../props/proxy_header.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::check_input(data));
