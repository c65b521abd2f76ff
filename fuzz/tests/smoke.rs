//! The fuzz targets on stable Rust, without libFuzzer: every input kept in
//! `fuzz/corpus/<target>/`, then pseudo-random mutations of them (seeded, so a run is
//! repeatable) for a bounded time per target. This is what CI runs (`cargo xtask fuzz
//! --smoke`); the coverage-guided campaigns are `cargo fuzz run <target>` (see
//! docs/reliability.md).
//!
//! `NVME_FUZZ_SMOKE_SECS` sets the time per target (default 5 s); `NVME_FUZZ_SMOKE_SEED`
//! the seed. An input that panics is written to `target/fuzz-smoke/<target>-crash` and
//! reproduces with `cargo fuzz run <target> <file>`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// xorshift64*: enough randomness for mutations, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_file())
                .map(|e| {
                    (
                        e.path(),
                        std::fs::read(e.path()).expect("readable corpus file"),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// One mutation of `seed` (or of nothing): byte flips, random bytes, insertions, cuts,
/// interesting values, splices with another input.
fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(v.len() + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(i..i, bytes);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = 1 + rng.below((v.len() - i).min(64));
                v.drain(i..i + n);
            }
            4 if v.len() >= 4 => {
                let i = rng.below(v.len() - 3);
                let vals = [
                    0u32,
                    1,
                    0xff,
                    0xffff,
                    0x7fff_ffff,
                    u32::MAX,
                    0x8000_0000,
                    4096,
                ];
                v[i..i + 4].copy_from_slice(&vals[rng.below(vals.len())].to_le_bytes());
            }
            5 if !other.is_empty() => {
                let i = rng.below(v.len() + 1);
                let j = rng.below(other.len());
                let n = 1 + rng.below((other.len() - j).min(256));
                v.truncate(i);
                v.extend_from_slice(&other[j..j + n]);
            }
            _ => {
                let n = rng.below(64);
                v.extend((0..n).map(|_| rng.next() as u8));
            }
        }
    }
    v
}

fn save_crash(target: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("fuzz-smoke");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{target}-crash"));
    let _ = std::fs::write(&path, input);
    path
}

/// Runs `input`; on a panic, saves it and fails the test naming the file.
fn run_one(target: &str, f: fn(&[u8]), input: &[u8]) {
    if std::panic::catch_unwind(|| f(input)).is_err() {
        let path = save_crash(target, input);
        panic!(
            "fuzz target {target} panicked on an input saved to {} ({} bytes); reproduce with \
             `cd fuzz && cargo fuzz run {target} {}`",
            path.display(),
            input.len(),
            path.display()
        );
    }
}

fn smoke(target: &str) {
    let f = nvme_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target")
        .1;
    let secs: f64 = std::env::var("NVME_FUZZ_SMOKE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let seed: u64 = std::env::var("NVME_FUZZ_SMOKE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f00d);
    let kept = corpus(target);
    for (path, input) in &kept {
        if std::panic::catch_unwind(|| f(input)).is_err() {
            panic!(
                "fuzz target {target} panicked on its corpus file {}",
                path.display()
            );
        }
    }
    let mut rng = Rng((seed ^ (target.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
    let start = Instant::now();
    let budget = Duration::from_secs_f64(secs);
    let mut runs = 0u64;
    let empty = Vec::new();
    while start.elapsed() < budget {
        for _ in 0..64 {
            let base = if kept.is_empty() {
                &empty
            } else {
                &kept[rng.below(kept.len())].1
            };
            let other = if kept.is_empty() {
                &empty
            } else {
                &kept[rng.below(kept.len())].1
            };
            let input = mutate(&mut rng, base, other);
            run_one(target, f, &input);
            runs += 1;
        }
    }
    println!(
        "fuzz smoke {target}: {} corpus inputs, {runs} mutated inputs in {:.1} s, no crash",
        kept.len(),
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn completions() {
    smoke("completions");
}

#[test]
fn identify() {
    smoke("identify");
}

#[test]
fn group_control() {
    smoke("group_control");
}

#[test]
fn sim_protocol() {
    smoke("sim_protocol");
}

#[test]
fn tcp_pdus() {
    smoke("tcp_pdus");
}
