//! libFuzzer entry of the `drpc` target: the input and its properties are in
//! `fuzz/props/drpc.rs`, which `tests/fuzz_seeds.rs` also replays on stable Rust.
#![no_main]

#[path = "../props/drpc.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::check_input(data));
