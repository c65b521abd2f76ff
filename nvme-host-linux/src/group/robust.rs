//! A robust, process-shared pthread mutex living in shared memory.

use nix::time::{clock_gettime, ClockId};
use nvme_core::{LockOutcome, RobustLock};

/// Storage for a `pthread_mutex_t` in the shared control segment (glibc's is 40 bytes on
/// x86_64; 64 leaves room and keeps the layout fixed).
#[repr(C, align(8))]
pub(crate) struct MutexStorage([u8; 64]);

const _: () = assert!(std::mem::size_of::<libc::pthread_mutex_t>() <= 64);

/// A handle on the mutex in a mapping of the control segment.
pub(crate) struct RobustMutex {
    m: *mut libc::pthread_mutex_t,
}

// SAFETY: the mutex is designed for concurrent use from several threads and processes.
unsafe impl Send for RobustMutex {}
// SAFETY: as above.
unsafe impl Sync for RobustMutex {}

impl RobustMutex {
    /// Initialises the mutex (process-shared, robust). Only the process creating the group
    /// calls this, before anyone else maps the segment.
    ///
    /// # Safety
    /// `storage` must be in a shared mapping that outlives every handle, and no other process
    /// may use it yet.
    pub(crate) unsafe fn init(storage: *mut MutexStorage) -> std::io::Result<()> {
        let m = storage as *mut libc::pthread_mutex_t;
        // SAFETY: attr is initialised by pthread_mutexattr_init before use and destroyed
        // after; `m` points at enough suitably aligned memory that nobody else uses yet.
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            let check = |r: libc::c_int| {
                if r == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::from_raw_os_error(r))
                }
            };
            check(libc::pthread_mutexattr_init(&mut attr))?;
            let r = check(libc::pthread_mutexattr_setpshared(
                &mut attr,
                libc::PTHREAD_PROCESS_SHARED,
            ))
            .and_then(|_| {
                check(libc::pthread_mutexattr_setrobust(
                    &mut attr,
                    libc::PTHREAD_MUTEX_ROBUST,
                ))
            })
            .and_then(|_| check(libc::pthread_mutex_init(m, &attr)));
            libc::pthread_mutexattr_destroy(&mut attr);
            r
        }
    }

    /// A handle on an initialised mutex.
    ///
    /// # Safety
    /// `storage` must hold a mutex initialised by [`RobustMutex::init`] in a mapping that
    /// outlives the handle.
    pub(crate) unsafe fn from_storage(storage: *mut MutexStorage) -> RobustMutex {
        RobustMutex {
            m: storage as *mut libc::pthread_mutex_t,
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

/// Holding the group mutex; dropping it unlocks.
pub(crate) struct RobustGuard<'a>(&'a RobustMutex);

impl Drop for RobustGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: the guard exists only while this thread holds the mutex.
        unsafe { libc::pthread_mutex_unlock(self.0.m) };
    }
}

/// pthread mutex semantics: one holder at a time; a dead holder is reported through
/// EOWNERDEAD to exactly one next locker.
impl RobustLock for RobustMutex {
    type Guard<'a> = RobustGuard<'a>;
    fn lock(&self, bound: Option<std::time::Duration>) -> Option<(RobustGuard<'_>, LockOutcome)> {
        let r = match bound {
            // SAFETY: the mutex is initialised and mapped (constructor contract).
            None => unsafe { libc::pthread_mutex_lock(self.m) },
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
                // SAFETY: the mutex is initialised and mapped (constructor contract).
                match unsafe { libc::pthread_mutex_timedlock(self.m, &deadline) } {
                    libc::ETIMEDOUT => return None,
                    r => r,
                }
            }
        };
        Some((RobustGuard(self), Self::outcome(r)))
    }
    fn try_lock(&self) -> Option<(RobustGuard<'_>, LockOutcome)> {
        // SAFETY: as in `lock`.
        match unsafe { libc::pthread_mutex_trylock(self.m) } {
            libc::EBUSY => None,
            r => Some((RobustGuard(self), Self::outcome(r))),
        }
    }
    fn mark_consistent(&self, _guard: &RobustGuard<'_>) {
        // SAFETY: called by the holder (it shows the guard) after EOWNERDEAD.
        unsafe { libc::pthread_mutex_consistent(self.m) };
    }
}
