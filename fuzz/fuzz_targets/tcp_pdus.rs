//! `cargo fuzz run tcp_pdus`: see `nvme_fuzz::tcp_pdus` (fuzz/src/tcp_pdus.rs) for what it exercises.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nvme_fuzz::tcp_pdus::run(data));
