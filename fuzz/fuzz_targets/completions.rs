//! `cargo fuzz run completions`: see `nvme_fuzz::completions` (fuzz/src/completions.rs) for what it exercises.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nvme_fuzz::completions::run(data));
