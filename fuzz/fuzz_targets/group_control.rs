//! `cargo fuzz run group_control`: see `nvme_fuzz::group_control` (fuzz/src/group_control.rs) for what it exercises.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nvme_fuzz::group_control::run(data));
