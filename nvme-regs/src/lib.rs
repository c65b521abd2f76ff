//! The NVMe specification (1.4 base + NVM command set) as Rust types.
//!
//! Encoding and decoding only: controller registers, the 64-byte submission and 16-byte
//! completion queue entries, opcodes, status codes, Identify data, log pages and feature
//! identifiers, SGL descriptors; for NVMe over Fabrics the Fabrics command set and the
//! Discovery Log Page (`fabrics`) and the NVMe/TCP PDUs and data pointers (`tcp`). Every
//! structure's size (and the offsets that matter) is asserted at compile time. The crate is
//! `no_std` and contains no `unsafe` code.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod entry;
pub mod fabrics;
pub mod features;
pub mod identify;
pub mod log;
pub mod opcode;
pub mod registers;
pub mod sgl;
pub mod status;
pub mod tcp;

pub use entry::{CompletionEntry, SubmissionEntry};
pub use status::{Status, StatusCodeType};

/// Compile-time assertion of a structure's size.
#[macro_export]
#[doc(hidden)]
macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $n);
    };
}

/// Compile-time assertion of a field's byte offset.
#[macro_export]
#[doc(hidden)]
macro_rules! assert_offset {
    ($t:ty, $f:ident, $n:expr) => {
        const _: () = assert!(core::mem::offset_of!($t, $f) == $n);
    };
}
