//! `cargo fuzz run sim_protocol`: see `nvme_fuzz::sim_protocol` (fuzz/src/sim_protocol.rs) for what it exercises.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nvme_fuzz::sim_protocol::run(data));
