//! The software controller's socket protocol: arbitrary requests (and descriptor counts)
//! through the daemon's own request loop.
//!
//! The input is up to 8 messages for one connection, each: a byte whose low bits pick how
//! the message is made and a descriptor count, then either raw bytes (any length) or a
//! well-formed header (magic, version) with an arbitrary operation, sequence number,
//! reserved word and arguments, so the fuzzer gets past the checks and into every
//! operation (DMA map and unmap with a real memfd, namespace descriptors, fault rules,
//! events...). `nvme_sim::fuzzing::serve` queues them on a socket pair, serves the
//! connection with `serve_client` (what the daemon runs for each client) and parses the
//! replies as the client does. Nothing may panic or hang.

use nvme_sim::fuzzing::{serve, MAX_MESSAGES};

use crate::input::Input;

/// "NVSD".
const MAGIC: u32 = u32::from_le_bytes(*b"NVSD");

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mut messages: Vec<(Vec<u8>, usize)> = Vec::new();
    while !input.is_empty() && messages.len() < MAX_MESSAGES {
        let kind = input.u8();
        let fds = usize::from(kind >> 4) % 3;
        let bytes = if kind & 1 == 0 {
            let n = usize::from(input.u8());
            input.bytes(n).to_vec()
        } else {
            let mut m = Vec::with_capacity(64);
            m.extend_from_slice(&MAGIC.to_le_bytes());
            let version: u16 = if kind & 2 == 0 { 1 } else { input.u16() };
            m.extend_from_slice(&version.to_le_bytes());
            let op = u16::from(input.u8() % 20);
            m.extend_from_slice(&op.to_le_bytes());
            m.extend_from_slice(&input.u32().to_le_bytes()); // seq
            let reserved: u32 = if kind & 4 == 0 { 0 } else { input.u32() };
            m.extend_from_slice(&reserved.to_le_bytes());
            // Arguments: small values most of the time, so that lengths, offsets and ids
            // are often valid.
            let nargs = usize::from((kind >> 3) & 1) * 3 + 3;
            for i in 0..6 {
                let a = if i >= nargs {
                    0
                } else if input.bool() {
                    input.u64()
                } else {
                    u64::from(input.u16()) << (12 * (input.u8() % 3))
                };
                m.extend_from_slice(&a.to_le_bytes());
            }
            m
        };
        messages.push((bytes, fds));
    }
    let msgs: Vec<(&[u8], usize)> = messages.iter().map(|(b, n)| (b.as_slice(), *n)).collect();
    let replies = serve(&msgs);
    assert!(
        replies.len() <= msgs.len() + 1,
        "more replies than requests"
    );
}
