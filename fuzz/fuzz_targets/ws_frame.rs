//! libFuzzer entry of the `ws_frame` target: the input and its properties are in
//! `fuzz/props/ws_frame.rs`, which `tests/fuzz_seeds.rs` also replays on stable Rust.
#![no_main]

#[path = "../props/ws_frame.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::check_input(data));
