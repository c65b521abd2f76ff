//! The NVMe driver engine, `no_std` and without an allocator.
//!
//! - [`queue`]: submission/completion rings over caller-provided DMA memory, phase tags,
//!   doorbells rung once per batch.
//! - [`qpair`]: a queue pair with command identifiers (slot + generation) in fixed storage,
//!   PRP lists, transparent splitting of transfers larger than MDTS, and back-pressure.
//! - [`prp`]: PRP entry and list construction.
//! - [`sgl`]: SGL descriptors for controllers that take them (Identify SGLS).
//! - [`cmd`]: builders for admin and NVM commands.
//! - [`init`]: the controller bring-up state machine, driven by the caller's clock.
//! - [`shared`]: the admin queue shared by the processes of a group.
//!
//! Hardware and the OS enter through the small traits in [`hal`] (register access, a clock,
//! a lock) and through [`DmaRegion`], memory the caller maps for the device. `DmaRegion`'s
//! module is the only one with `unsafe` code: volatile entry writes, the acquire load of the
//! completion's phase tag, zeroing and copies. Everything else is safe Rust.
#![no_std]
#![deny(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod cmd;
mod dma;
pub mod hal;
pub mod init;
pub mod prp;
pub mod qpair;
pub mod queue;
pub mod sgl;
pub mod shared;

pub use cmd::Command;
pub use dma::{CqCursor, DmaRegion, DmaRing, DmaWord, SharedRef, SharedState, SqCursor};
pub use hal::{Clock, LockOutcome, RegisterAccess, RobustLock};
pub use init::{ControllerInfo, ControllerInit, InitError, InitOptions, InitStep};

pub use nvme_regs as regs;
pub use qpair::{Completion, DataPointer, QueueConfig, QueuePair, Slot, SubmitError};
pub use queue::{PciRings, Rings};
