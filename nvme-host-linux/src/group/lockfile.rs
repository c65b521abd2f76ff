//! Open-file-description (OFD) byte locks: the kernel drops them when the last descriptor of
//! the open file goes, which for our descriptors (O_CLOEXEC, never duplicated) means when
//! the process dies. A member's lock on its byte is therefore proof that it is alive, with no
//! pid involved (pids are reused).

use std::fs::File;
use std::io;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};

/// A lock request for the single byte `byte`.
fn flock(kind: libc::c_int, byte: u64) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: byte as libc::off_t,
        l_len: 1,
        // OFD locks require 0 here; the kernel fills in -1 for GETLK results.
        l_pid: 0,
    }
}

/// One `fcntl` lock command, retried when a signal interrupts it.
fn fcntl_lock<'a>(file: &File, arg: impl Fn() -> FcntlArg<'a>) -> io::Result<()> {
    loop {
        match fcntl(file, arg()) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Takes an exclusive lock on `byte`, waiting at most `bound` for it; `false` when another
/// open file description still held it then.
///
/// The kernel has no timed wait for a record lock (F_OFD_SETLKW waits for good, and only a
/// signal would end it), so this polls: at once, then every 50 us growing to every 2 ms.
pub(crate) fn lock_within(file: &File, byte: u64, bound: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + bound;
    let mut pause = Duration::from_micros(50);
    loop {
        if try_lock(file, byte)? {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

/// Takes an exclusive lock on `byte` if nobody else holds it.
pub(crate) fn try_lock(file: &File, byte: u64) -> io::Result<bool> {
    let fl = flock(libc::F_WRLCK, byte);
    match fcntl_lock(file, || FcntlArg::F_OFD_SETLK(&fl)) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Releases our lock on `byte`.
pub(crate) fn unlock(file: &File, byte: u64) -> io::Result<()> {
    let fl = flock(libc::F_UNLCK, byte);
    fcntl_lock(file, || FcntlArg::F_OFD_SETLK(&fl))
}

/// Does another open file description hold a lock on `byte`?
pub(crate) fn held_by_other(file: &File, byte: u64) -> io::Result<bool> {
    let mut fl = flock(libc::F_WRLCK, byte);
    loop {
        match fcntl(file, FcntlArg::F_OFD_GETLK(&mut fl)) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    #[test]
    fn locks_are_per_open_file_and_visible_to_others() {
        let dir = std::env::temp_dir().join(format!("nvme-lockfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l");
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap()
        };
        let (a, b) = (open(), open());
        assert!(try_lock(&a, 3).unwrap());
        assert!(held_by_other(&b, 3).unwrap());
        assert!(
            !held_by_other(&a, 3).unwrap(),
            "our own lock is no conflict"
        );
        assert!(!try_lock(&b, 3).unwrap());
        assert!(try_lock(&b, 4).unwrap());
        let start = Instant::now();
        assert!(!lock_within(&b, 3, Duration::from_millis(30)).unwrap());
        assert!(
            start.elapsed() >= Duration::from_millis(30),
            "waited the bound"
        );
        assert!(start.elapsed() < Duration::from_secs(5), "not much longer");
        let waiter = std::thread::spawn({
            let b = b.try_clone().unwrap();
            move || lock_within(&b, 3, Duration::from_secs(20)).unwrap()
        });
        std::thread::sleep(Duration::from_millis(20));
        drop(a); // closing the last descriptor releases the lock, as death does
        assert!(
            waiter.join().unwrap(),
            "the waiter got the lock once it was free"
        );
        unlock(&b, 3).unwrap();
        assert!(!held_by_other(&b, 3).unwrap());
        assert!(try_lock(&b, 3).unwrap());
        unlock(&b, 3).unwrap();
        assert!(!held_by_other(&open(), 3).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
