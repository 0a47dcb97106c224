//! The fuzz targets' properties (`fuzz/props/`) on stable Rust, in every test run: each committed
//! seed (`fuzz/corpus/<target>/`) and crash reproducer (`fuzz/regressions/<target>/`, if any)
//! is replayed, then a blind mutation pass (no coverage feedback: bit flips, byte changes,
//! inserts, cuts, copies and splices of the seeds) runs for a bounded count and time per target
//! (`GATEHOUSE_FUZZ_SEEDS_MS`, default 1500 ms). It catches a decoder change that breaks a
//! property near the seeds without nightly or cargo-fuzz; the coverage-guided runs are
//! `scripts/fuzz.sh` (docs/fuzzing.md). A failure prints the input in hex and the seed of the pass.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

#[path = "../fuzz/props/config.rs"]
mod config;
#[path = "../fuzz/props/drpc.rs"]
mod drpc;
#[path = "../fuzz/props/http_upgrade.rs"]
mod http_upgrade;
#[path = "../fuzz/props/packet.rs"]
mod packet;
#[path = "../fuzz/props/proxy_header.rs"]
mod proxy_header;
#[path = "../fuzz/props/ws_frame.rs"]
mod ws_frame;

/// At most this many mutated inputs per target, whatever the time allows.
const MAX_MUTATIONS: usize = 50_000;
/// libFuzzer's default input cap in these runs.
const MAX_LEN: usize = 4096;

/// xorshift64*: a reproducible stream without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Files of `dir`, sorted by name (an absent directory has none).
fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).expect("read a fuzz input"))
        })
        .collect();
    files.sort();
    files
}

/// One mutation of `input`, `other` a second seed for splices.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = [0, 0xff, 0x7f, 0x80, 1, rng.next() as u8][rng.below(6)];
            }
            2 => {
                let i = rng.below(len + 1);
                v.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                v.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let copy = v[i..i + n].to_vec();
                let at = rng.below(len + 1);
                v.splice(at..at, copy);
            }
            5 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ => v.truncate(rng.below(len + 1)),
        }
    }
    v.truncate(MAX_LEN);
    v
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs `check` over one input; on a failed property, panics with the input in hex.
fn run_one(target: &str, what: &str, check: fn(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| check(input))).is_err() {
        panic!(
            "{target}: a property failed on {what} ({} bytes): {}\n\
             reproduce: write those bytes to a file and run `cd fuzz && cargo +nightly fuzz run {target} FILE`",
            input.len(),
            hex(input)
        );
    }
}

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let seeds = inputs(&root.join("corpus").join(target));
    assert!(!seeds.is_empty(), "{target}: no committed seeds");
    let regressions = inputs(&root.join("regressions").join(target));
    for (name, input) in seeds.iter().chain(&regressions) {
        run_one(target, name, check, input);
    }
    let budget = std::env::var("GATEHOUSE_FUZZ_SEEDS_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_millis(1500), Duration::from_millis);
    let seed = target.bytes().fold(0x9E37_79B9_7F4A_7C15u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
    }) | 1;
    let mut rng = Rng(seed);
    let start = Instant::now();
    let mut done = 0;
    while done < MAX_MUTATIONS && start.elapsed() < budget {
        let (_, a) = &seeds[rng.below(seeds.len())];
        let (_, b) = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, a, b);
        run_one(
            target,
            &format!("mutation {done} of pass seed {seed:#x}"),
            check,
            &input,
        );
        done += 1;
    }
    // The pass did something: a budget too small to run any mutation is a broken setting.
    assert!(done > 0, "{target}: no mutation ran within {budget:?}");
    eprintln!(
        "{target}: {} seeds, {} regressions, {done} mutations in {:?}",
        seeds.len(),
        regressions.len(),
        start.elapsed()
    );
}

#[test]
fn packet_properties_hold_on_seeds_and_mutations() {
    replay("packet", packet::check_input);
}

#[test]
fn ws_frame_properties_hold_on_seeds_and_mutations() {
    replay("ws_frame", ws_frame::check_input);
}

#[test]
fn http_upgrade_properties_hold_on_seeds_and_mutations() {
    replay("http_upgrade", http_upgrade::check_input);
}

#[test]
fn drpc_properties_hold_on_seeds_and_mutations() {
    replay("drpc", drpc::check_input);
}

#[test]
fn config_properties_hold_on_seeds_and_mutations() {
    replay("config", config::check_input);
}

#[test]
fn proxy_header_properties_hold_on_seeds_and_mutations() {
    replay("proxy_header", proxy_header::check_input);
}
