//! A robust, process-shared pthread mutex living in shared memory: the group lock.
//!
//! The crate's one module besides `sys` that calls into libc with `unsafe`: the mutex is a
//! place in shared memory that only the pthread functions may touch, which nix does not
//! wrap.
#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::marker::PhantomData;

use nix::time::{clock_gettime, ClockId};
use nvme_core::{LockOutcome, RobustLock};

/// A robust, process-shared `pthread_mutex_t` in place in the shared control segment
/// (glibc's is 40 bytes on x86_64; 64 leaves room and keeps the layout fixed). The type is
/// the storage itself: a handle on it is a reference into the mapping, so it cannot outlive
/// the mapping.
#[repr(C, align(8))]
pub(crate) struct RobustMutex(UnsafeCell<[u8; 64]>);

const _: () = assert!(std::mem::size_of::<libc::pthread_mutex_t>() <= 64);
const _: () = assert!(std::mem::align_of::<libc::pthread_mutex_t>() <= 8);

// SAFETY: a pthread mutex is made for use from several threads (and, process-shared, from
// several processes) at once; every access goes through the pthread functions.
unsafe impl Sync for RobustMutex {}

impl RobustMutex {
    fn m(&self) -> *mut libc::pthread_mutex_t {
        self.0.get() as *mut libc::pthread_mutex_t
    }

    /// Initialises the mutex (process-shared, robust). Only the process creating the group
    /// calls this, before it publishes the segment: `&mut` rules out any other user in this
    /// process, and no other process looks at an unpublished group.
    ///
    /// A mutex never initialised is all zeros (a fresh file): glibc's default mutex, which
    /// locks and unlocks like any other but is not robust; a group is published (and
    /// joined) only after `init` succeeded.
    pub(crate) fn init(&mut self) -> std::io::Result<()> {
        let check = |r: libc::c_int| {
            if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::from_raw_os_error(r))
            }
        };
        let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        // SAFETY: pthread_mutexattr_init initialises `attr`.
        check(unsafe { libc::pthread_mutexattr_init(attr.as_mut_ptr()) })?;
        let attr = attr.as_mut_ptr();
        // SAFETY: `attr` is initialised (above) and destroyed once, at the end; the storage
        // is large and aligned enough for a pthread_mutex_t (asserted above) and nobody
        // uses it meanwhile (`&mut self`).
        unsafe {
            let r = check(libc::pthread_mutexattr_setpshared(
                attr,
                libc::PTHREAD_PROCESS_SHARED,
            ))
            .and_then(|_| {
                check(libc::pthread_mutexattr_setrobust(
                    attr,
                    libc::PTHREAD_MUTEX_ROBUST,
                ))
            })
            .and_then(|_| check(libc::pthread_mutex_init(self.m(), attr)));
            libc::pthread_mutexattr_destroy(attr);
            r
        }
    }

    fn outcome(r: libc::c_int) -> LockOutcome {
        match r {
            0 => LockOutcome::Acquired,
            libc::EOWNERDEAD => LockOutcome::PreviousOwnerDied,
            // ENOTRECOVERABLE: a holder died and nobody marked the state consistent. Our
            // users always do, so this means memory corruption; stop rather than race.
            e => panic!(
                "robust group mutex failed: {}",
                std::io::Error::from_raw_os_error(e)
            ),
        }
    }
}

/// Holding the group mutex; dropping it unlocks. Not `Send`: a pthread mutex is unlocked by
/// the thread that locked it.
pub(crate) struct RobustGuard<'a>(&'a RobustMutex, PhantomData<*const ()>);

impl Drop for RobustGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: the guard exists only while this thread holds the mutex.
        unsafe { libc::pthread_mutex_unlock(self.0.m()) };
    }
}

/// pthread mutex semantics: one holder at a time; a dead holder is reported through
/// EOWNERDEAD to exactly one next locker.
impl RobustLock for RobustMutex {
    type Guard<'a> = RobustGuard<'a>;
    fn lock(&self, bound: Option<std::time::Duration>) -> Option<(RobustGuard<'_>, LockOutcome)> {
        let r = match bound {
            // SAFETY: the mutex lives in a mapping at least as long as `&self`; it was
            // initialised by `init` (or is zero, glibc's default mutex: see `init`).
            None => unsafe { libc::pthread_mutex_lock(self.m()) },
            Some(timeout) => {
                // pthread_mutex_timedlock takes an absolute CLOCK_REALTIME deadline.
                let now = clock_gettime(ClockId::CLOCK_REALTIME)
                    .expect("CLOCK_REALTIME is always available");
                let total = now.tv_nsec() as u64 + timeout.subsec_nanos() as u64;
                let deadline = libc::timespec {
                    tv_sec: now.tv_sec()
                        + timeout.as_secs() as libc::time_t
                        + (total / 1_000_000_000) as libc::time_t,
                    tv_nsec: (total % 1_000_000_000) as libc::c_long,
                };
                // SAFETY: as above; `deadline` outlives the call.
                match unsafe { libc::pthread_mutex_timedlock(self.m(), &deadline) } {
                    libc::ETIMEDOUT => return None,
                    r => r,
                }
            }
        };
        Some((RobustGuard(self, PhantomData), Self::outcome(r)))
    }
    fn try_lock(&self) -> Option<(RobustGuard<'_>, LockOutcome)> {
        // SAFETY: as in `lock`.
        match unsafe { libc::pthread_mutex_trylock(self.m()) } {
            libc::EBUSY => None,
            r => Some((RobustGuard(self, PhantomData), Self::outcome(r))),
        }
    }
    fn mark_consistent(&self, _guard: &RobustGuard<'_>) {
        // SAFETY: called by the holder (it shows the guard) after EOWNERDEAD.
        unsafe { libc::pthread_mutex_consistent(self.m()) };
    }
}
