//! Interrupt vectors: the eventfd each MSI-X vector signals, as `VFIO_DEVICE_SET_IRQS` gives
//! them to a real device's vectors. The controller signals a vector when it posts to a
//! completion queue created with interrupts enabled on it (Create I/O Completion Queue IEN
//! and IV).

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::SimError;

/// The controller's interrupt vectors.
pub(crate) struct Vectors {
    fds: Mutex<Vec<Option<OwnedFd>>>,
    /// Interrupts signalled (to a vector with an eventfd) since the start.
    signalled: AtomicU64,
}

impl Vectors {
    /// `count` vectors, none signalling anything.
    pub(crate) fn new(count: u16) -> Vectors {
        Vectors {
            fds: Mutex::new((0..count).map(|_| None).collect()),
            signalled: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<OwnedFd>>> {
        self.fds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many vectors the controller has.
    pub(crate) fn count(&self) -> u16 {
        self.lock().len() as u16
    }

    /// Makes `vector` signal a duplicate of `fd` (`None`: nothing).
    pub(crate) fn set(&self, vector: u16, fd: Option<BorrowedFd<'_>>) -> Result<(), SimError> {
        let fd = fd
            .map(|f| f.try_clone_to_owned())
            .transpose()
            .map_err(|e| SimError::Io {
                op: "dup an interrupt eventfd",
                source: e,
            })?;
        let mut fds = self.lock();
        let count = fds.len();
        let slot = fds.get_mut(vector as usize).ok_or_else(|| {
            SimError::InvalidArgument(format!(
                "interrupt vector {vector}: the controller has {count} (0..={})",
                count.saturating_sub(1)
            ))
        })?;
        *slot = fd;
        Ok(())
    }

    /// Signals `vector` (adds 1 to its eventfd), if it has one.
    pub(crate) fn signal(&self, vector: u16) {
        if let Some(Some(fd)) = self.lock().get(vector as usize) {
            // An eventfd write fails only when the counter would overflow, which a reader
            // that never reads would need 2^64 interrupts for: nothing to do then.
            if nix::unistd::write(fd, &1u64.to_ne_bytes()).is_ok() {
                self.signalled.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Interrupts signalled since the start.
    pub(crate) fn signalled(&self) -> u64 {
        self.signalled.load(Ordering::Relaxed)
    }
}
