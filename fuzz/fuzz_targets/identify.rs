//! `cargo fuzz run identify`: see `nvme_fuzz::identify` (fuzz/src/identify.rs) for what it exercises.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nvme_fuzz::identify::run(data));
