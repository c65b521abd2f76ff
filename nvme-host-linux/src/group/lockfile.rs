//! Open-file-description (OFD) byte locks: the kernel drops them when the last descriptor of
//! the open file goes, which for our descriptors (O_CLOEXEC, never duplicated) means when
//! the process dies. A member's lock on its byte is therefore proof that it is alive, with no
//! pid involved (pids are reused).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

fn flock(kind: libc::c_short, byte: u64) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value before we fill it in.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte as libc::off_t;
    fl.l_len = 1;
    fl
}

fn fcntl_lock(file: &File, cmd: libc::c_int, fl: &mut libc::flock) -> io::Result<()> {
    loop {
        // SAFETY: F_OFD_* commands with a valid flock pointer on our own descriptor.
        let r = unsafe { libc::fcntl(file.as_raw_fd(), cmd, fl as *mut libc::flock) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Takes an exclusive lock on `byte`, waiting for it.
pub(crate) fn lock_wait(file: &File, byte: u64) -> io::Result<()> {
    fcntl_lock(
        file,
        libc::F_OFD_SETLKW,
        &mut flock(libc::F_WRLCK as libc::c_short, byte),
    )
}

/// Takes an exclusive lock on `byte` if nobody else holds it.
pub(crate) fn try_lock(file: &File, byte: u64) -> io::Result<bool> {
    match fcntl_lock(
        file,
        libc::F_OFD_SETLK,
        &mut flock(libc::F_WRLCK as libc::c_short, byte),
    ) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Releases our lock on `byte`.
pub(crate) fn unlock(file: &File, byte: u64) -> io::Result<()> {
    fcntl_lock(
        file,
        libc::F_OFD_SETLK,
        &mut flock(libc::F_UNLCK as libc::c_short, byte),
    )
}

/// Does another open file description hold a lock on `byte`?
pub(crate) fn held_by_other(file: &File, byte: u64) -> io::Result<bool> {
    let mut fl = flock(libc::F_WRLCK as libc::c_short, byte);
    fcntl_lock(file, libc::F_OFD_GETLK, &mut fl)?;
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
        drop(a); // closing the last descriptor releases the lock, as death does
        assert!(!held_by_other(&b, 3).unwrap());
        assert!(try_lock(&b, 3).unwrap());
        unlock(&b, 3).unwrap();
        assert!(!held_by_other(&open(), 3).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
