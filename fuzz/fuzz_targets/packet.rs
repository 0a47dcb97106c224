//! libFuzzer entry of the `packet` target: the input and its properties are in
//! `fuzz/props/packet.rs`, which `tests/fuzz_seeds.rs` also replays on stable Rust.
#![no_main]

#[path = "../props/packet.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::check_input(data));
