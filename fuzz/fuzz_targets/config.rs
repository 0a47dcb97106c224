//! libFuzzer entry of the `config` target: the input and its properties are in
//! `fuzz/props/config.rs`, which `tests/fuzz_seeds.rs` also replays on stable Rust.
#![no_main]

#[path = "../props/config.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::check_input(data));
