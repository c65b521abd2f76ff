//! The tools' system interface, and the only module of this crate with `unsafe` code: CPU
//! affinity (which cores the process may use, pinning a worker thread to one), the TSC,
//! and the process's limits and identity.
#![allow(unsafe_code)]

use std::io;

/// The cores this process may run on (its affinity mask), in increasing order.
pub fn available_cores() -> io::Result<Vec<usize>> {
    // SAFETY: `cpu_set_t` is plain bits, valid when zeroed; sched_getaffinity writes at most
    // `size_of::<cpu_set_t>()` bytes into it; CPU_ISSET reads within it (index bounded by
    // CPU_SETSIZE).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect())
    }
}

/// Pins the calling thread to `core`.
pub fn pin_current_thread(core: usize) -> io::Result<()> {
    if core >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("core {core} is beyond CPU_SETSIZE"),
        ));
    }
    // SAFETY: as above; `core` is below CPU_SETSIZE (checked), and pid 0 is the calling
    // thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads the time stamp counter.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no preconditions on x86_64 (it is unprivileged unless CR4.TSD is set,
    // which Linux does not do for ordinary processes).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The locked-memory limit (RLIMIT_MEMLOCK) in bytes, `None` when unlimited.
pub fn memlock_limit() -> io::Result<Option<u64>> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur))
}

/// Does the process run as root (effective uid 0)?
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_to_an_available_core() {
        let cores = available_cores().unwrap();
        assert!(!cores.is_empty());
        let core = *cores.last().unwrap();
        std::thread::spawn(move || {
            pin_current_thread(core).unwrap();
            assert_eq!(available_cores().unwrap(), vec![core]);
        })
        .join()
        .unwrap();
        assert!(pin_current_thread(1 << 20).is_err());
    }

    #[test]
    fn limits_and_identity_agree_with_proc() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let euid: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(is_root(), euid == 0);
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let soft = limits
            .lines()
            .find(|l| l.starts_with("Max locked memory"))
            .and_then(|l| l.split_whitespace().nth(3))
            .unwrap();
        match memlock_limit().unwrap() {
            None => assert_eq!(soft, "unlimited"),
            Some(n) => assert_eq!(soft, n.to_string()),
        }
    }
}
