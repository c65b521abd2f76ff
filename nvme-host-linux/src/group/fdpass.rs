//! Handing VFIO descriptors to a joining process.
//!
//! A VFIO group node (`/dev/vfio/N`) admits one opener at a time, so a process joining a
//! group cannot open the device itself: it receives the container, group and device
//! descriptors from a live member over a Unix socket (`SCM_RIGHTS`). The descriptors refer to
//! the same open files, so the device stays open (and is not reset by the kernel) as long as
//! any member holds them.
//!
//! Every member serves: it listens on `<group dir>/member.<index>.sock` in a small thread
//! (an accept loop, never on the I/O path), so a joiner can get the descriptors from any
//! live member, the primary or not, and tries the live members in turn. Both ends check the
//! other's credentials (`SO_PEERCRED`): same user, and the server's pid must be the one in
//! the member record. Socket files are owner-only (0600) in the owner-only group directory.

use std::io::{self, IoSlice, IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, sockopt, ControlMessage, ControlMessageOwned, MsgFlags};

/// First bytes of a server's answer that carries descriptors.
const MAGIC: &[u8; 8] = b"NVMEFD01";
/// First bytes of a refusal (followed by the reason).
const DENIED: &[u8; 8] = b"NVMEFDNO";
/// Most descriptors one message carries.
pub(crate) const MAX_FDS: usize = 8;
/// How long either side waits for the other.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The credentials of the process at the other end of a Unix socket (`SO_PEERCRED`).
pub(crate) fn peer_cred(sock: BorrowedFd<'_>) -> io::Result<libc::ucred> {
    let cred = socket::getsockopt(&sock, sockopt::PeerCredentials)?;
    Ok(cred.into())
}

/// Refuses a peer that runs as another user than `uid`.
pub(crate) fn check_uid(cred: &libc::ucred, uid: u32) -> io::Result<()> {
    if cred.uid != uid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the process at the other end (pid {}) runs as user {}, not {uid}",
                cred.pid, cred.uid
            ),
        ));
    }
    Ok(())
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Sends `payload` with `fds` attached (one `sendmsg`; `MSG_NOSIGNAL`: a closed peer is an
/// error, not a `SIGPIPE`).
pub(crate) fn send_fds(
    sock: &UnixStream,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    if fds.len() > MAX_FDS || payload.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad descriptor message",
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    let iov = [IoSlice::new(payload)];
    let n = loop {
        match socket::sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(Errno::EINTR) => continue,
            r => break r?,
        }
    };
    if n != payload.len() {
        return Err(io::Error::other("short descriptor message"));
    }
    Ok(())
}

/// Receives one message of at most `max_payload` bytes with up to [`MAX_FDS`] descriptors
/// (close-on-exec). A message with more descriptors is an error (the ones that arrived are
/// closed).
pub(crate) fn recv_fds(
    sock: &UnixStream,
    max_payload: usize,
) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut payload = vec![0u8; max_payload.max(1)];
    // Room for as many descriptors as one message can carry (the kernel's SCM_MAX_FD), so
    // that none is dropped by the kernel on the way: every one that arrives is owned here.
    let mut control = nix::cmsg_space!([RawFd; 253]);
    let (n, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut payload)];
        let msg = match socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut control),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            r => r?,
        };
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel has just installed these descriptors in this process
                // for this message; nothing else owns them.
                #[allow(unsafe_code)]
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        break (msg.bytes, fds);
    };
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "descriptor message with {} descriptors: more than expected",
            fds.len()
        )));
    }
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the member closed the connection without answering",
        ));
    }
    payload.truncate(n);
    Ok((payload, fds))
}

/// A member's descriptor server: a thread accepting connections on its socket.
pub(crate) struct Server {
    path: PathBuf,
    ino: u64,
    listener: Arc<UnixListener>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("path", &self.path).finish()
    }
}

fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| m.ino())
}

impl Server {
    /// Listens on `path` (replacing a stale socket there) and hands `fds` to every client
    /// that runs as our user. The descriptors are owned by the server and closed when it
    /// stops.
    pub(crate) fn start(path: &Path, fds: Vec<OwnedFd>) -> io::Result<Server> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let listener = Arc::new(listener);
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (listener.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("nvme-fdpass".into())
            .spawn(move || serve(&l, &s, &fds))?;
        Ok(Server {
            ino: inode(path).unwrap_or(0),
            path: path.to_path_buf(),
            listener,
            stop,
            thread: Some(thread),
        })
    }
}

fn serve(listener: &UnixListener, stop: &AtomicBool, fds: &[OwnedFd]) {
    let uid = euid();
    while !stop.load(Ordering::Acquire) {
        // Wakes up for a client, a shutdown (stop), or after 100 ms to look at `stop` again;
        // an error (EINTR) just goes round the loop.
        let mut pfd = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut pfd, PollTimeout::from(100u8));
        if stop.load(Ordering::Acquire) {
            return;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Shut down (stop) or out of descriptors: back off, then look at `stop` again.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let _ = answer(stream, uid, fds);
    }
}

/// One client: check who it is, then send the descriptors or a refusal.
fn answer(stream: UnixStream, uid: u32, fds: &[OwnedFd]) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let cred = peer_cred(stream.as_fd())?;
    if let Err(e) = check_uid(&cred, uid) {
        let mut msg = DENIED.to_vec();
        msg.extend_from_slice(e.to_string().as_bytes());
        let _ = (&stream).write_all(&msg);
        return Err(e);
    }
    let mut msg = MAGIC.to_vec();
    msg.extend_from_slice(&std::process::id().to_le_bytes());
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    // Descriptors in flight stay valid after we close our end.
    send_fds(&stream, &msg, &borrowed)
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes a poll in progress (a listening socket reports POLLHUP once shut down).
        let _ = socket::shutdown(self.listener.as_raw_fd(), socket::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Remove the socket file unless a newer member already put its own there.
        if inode(&self.path) == Some(self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Fetches `want` descriptors from the member serving `path`, whose process must be
/// `expect_pid` (from its member record) and run as our user.
pub(crate) fn fetch(path: &Path, expect_pid: u32, want: usize) -> io::Result<Vec<OwnedFd>> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let cred = peer_cred(stream.as_fd())?;
    check_uid(&cred, euid())?;
    if cred.pid as u32 != expect_pid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the socket is served by pid {}, not by the member's pid {expect_pid}",
                cred.pid
            ),
        ));
    }
    let (payload, fds) = recv_fds(&stream, 512)?;
    if payload.starts_with(DENIED) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the member refused: {}",
                String::from_utf8_lossy(&payload[DENIED.len()..])
            ),
        ));
    }
    if !payload.starts_with(MAGIC) {
        return Err(io::Error::other(
            "the member answered something that is not a descriptor message",
        ));
    }
    if fds.len() != want {
        return Err(io::Error::other(format!(
            "the member sent {} descriptors, expected {want}",
            fds.len()
        )));
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nvme-fdpass-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn same_file(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
        let st = |f: BorrowedFd<'_>| {
            let s = nix::sys::stat::fstat(f).unwrap();
            (s.st_dev, s.st_ino)
        };
        st(a) == st(b)
    }

    #[test]
    fn two_descriptors_cross_a_socketpair() {
        let d = tmp("pair");
        let f1 = std::fs::File::create(d.join("one")).unwrap();
        let f2 = std::fs::File::create(d.join("two")).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        send_fds(&a, b"hello", &[f1.as_fd(), f2.as_fd()]).unwrap();
        let (payload, fds) = recv_fds(&b, 64).unwrap();
        assert_eq!(payload, b"hello");
        assert_eq!(fds.len(), 2);
        assert!(same_file(fds[0].as_fd(), f1.as_fd()));
        assert!(same_file(fds[1].as_fd(), f2.as_fd()));
        assert!(!same_file(fds[0].as_fd(), f2.as_fd()));
        // Same open file description: a write through one offset moves the other.
        let mut r = std::fs::File::from(fds[0].try_clone().unwrap());
        r.write_all(b"xyz").unwrap();
        assert_eq!(std::fs::read(d.join("one")).unwrap(), b"xyz");
        // Received descriptors are close-on-exec.
        let flags = nix::fcntl::fcntl(&fds[1], nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        // A message without descriptors arrives with none.
        send_fds(&a, b"x", &[]).unwrap();
        assert!(recv_fds(&b, 64).unwrap().1.is_empty());
        drop(a);
        assert_eq!(
            recv_fds(&b, 64).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn too_many_descriptors_are_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(
            send_fds(&a, b"x", &[f.as_fd(); MAX_FDS + 1])
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidInput
        );
        // A peer that sends more than MAX_FDS anyway (not through send_fds).
        let raw = vec![f.as_raw_fd(); MAX_FDS + 1];
        let iov = [IoSlice::new(b"x")];
        socket::sendmsg::<()>(
            a.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let e = recv_fds(&b, 64).unwrap_err();
        assert!(e.to_string().contains("9 descriptors"), "{e}");
    }

    #[test]
    fn credentials_are_checked() {
        let (a, _b) = UnixStream::pair().unwrap();
        let cred = peer_cred(a.as_fd()).unwrap();
        assert_eq!(cred.pid as u32, std::process::id());
        assert_eq!(cred.uid, euid());
        check_uid(&cred, euid()).unwrap();
        let e = check_uid(&cred, euid().wrapping_add(1)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(
            e.to_string().contains(&format!("runs as user {}", euid())),
            "{e}"
        );
    }

    #[test]
    fn server_hands_descriptors_to_clients_and_cleans_up() {
        let d = tmp("server");
        let f = std::fs::File::create(d.join("dev")).unwrap();
        let g = std::fs::File::create(d.join("grp")).unwrap();
        let path = d.join("member.0.sock");
        let server = Server::start(
            &path,
            vec![f.try_clone().unwrap().into(), g.try_clone().unwrap().into()],
        )
        .unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().mode() & 0o777,
            0o600,
            "owner-only socket"
        );
        for _ in 0..3 {
            let fds = fetch(&path, std::process::id(), 2).unwrap();
            assert!(same_file(fds[0].as_fd(), f.as_fd()));
            assert!(same_file(fds[1].as_fd(), g.as_fd()));
        }
        // The wrong pid (a reused socket path): refused by the client.
        let e = fetch(&path, 1, 2).unwrap_err();
        assert!(e.to_string().contains("not by the member's pid 1"), "{e}");
        // The wrong count.
        let e = fetch(&path, std::process::id(), 3).unwrap_err();
        assert!(e.to_string().contains("expected 3"), "{e}");
        let start = std::time::Instant::now();
        drop(server);
        assert!(start.elapsed() < Duration::from_secs(1), "stops promptly");
        assert!(!path.exists(), "socket removed");
        let e = fetch(&path, std::process::id(), 2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// The socket the other user's side asks, set in its environment.
    const CLIENT_SOCKET: &str = "NVME_FDPASS_TEST_CLIENT_SOCKET";

    #[test]
    fn a_client_of_another_user_is_refused() {
        // As root: this test runs again, in this test binary run as another user (the
        // environment says so), and asks; the server refuses.
        if let Some(path) = std::env::var_os(CLIENT_SOCKET) {
            other_user_client(path);
            return;
        }
        if euid() != 0 {
            println!("(skipped: needs root to become another user)");
            return;
        }
        let d = tmp("uid");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let f = std::fs::File::create(d.join("dev")).unwrap();
        let path = d.join("member.1.sock");
        let server = Server::start(&path, vec![f.try_clone().unwrap().into()]).unwrap();
        // Let the other user reach the socket file (the real group directory is 0700).
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "group::fdpass::tests::a_client_of_another_user_is_refused",
            ])
            .args(["--nocapture", "--test-threads=1"])
            .env(CLIENT_SOCKET, &path)
            .uid(65534)
            .gid(65534)
            .output();
        drop(server);
        std::fs::remove_dir_all(&d).unwrap();
        let out = match out {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                println!("(skipped: user 65534 cannot run this test binary: {e})");
                return;
            }
            r => r.unwrap(),
        };
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "the other user was not refused: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The other user's side of [`a_client_of_another_user_is_refused`].
    fn other_user_client(path: std::ffi::OsString) {
        use std::io::Read;
        assert_ne!(euid(), 0, "runs as another user");
        let mut s = UnixStream::connect(path).expect("connecting to the member's socket");
        let mut buf = [0u8; 8];
        s.read_exact(&mut buf).expect("an answer");
        // Refused: the answer starts with the refusal tag.
        assert_eq!(&buf, DENIED);
    }
}
