//! The NVMe driver engine, `no_std` and without an allocator.
//!
//! - [`queue`]: submission/completion rings over caller-provided DMA memory, phase tags,
//!   doorbells rung once per batch.
//! - [`qpair`]: a queue pair with command identifiers (slot + generation) in fixed storage,
//!   PRP lists, transparent splitting of transfers larger than MDTS, and back-pressure.
//! - [`prp`]: PRP entry and list construction.
//! - [`cmd`]: builders for admin and NVM commands.
//! - [`init`]: the controller bring-up state machine, driven by the caller's clock.
//!
//! Hardware and the OS enter through the small traits in [`hal`]: register access, DMA
//! memory regions, a clock and a lock.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod cmd;
pub mod hal;
pub mod init;
pub mod prp;
pub mod qpair;
pub mod queue;
pub mod shared;

pub use cmd::Command;
pub use hal::{Clock, DmaRegion, LockOutcome, RawLock, RegisterAccess, RobustLock, SpinLock};
pub use init::{ControllerInfo, ControllerInit, InitError, InitOptions, InitStep};

pub use nvme_regs as regs;
pub use qpair::{Completion, QueueConfig, QueuePair, Slot, SubmitError};
