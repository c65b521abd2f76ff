//! The few process and descriptor primitives that `nix` offers no safe call for: `fork`,
//! `_exit`, `close_range`, resetting signal dispositions, and taking ownership of the
//! descriptors a message brought (`SCM_RIGHTS`).
//!
//! With [`crate::mem`] this is the only module of the crate allowed to contain `unsafe`.
//! Each function here is safe to call: its unsafe block's preconditions are established
//! inside it (or, for the functions that only make sense in a freshly forked child, by the
//! [`ForkedChild`] token only [`fork`] can create).

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{self, ControlMessageOwned, MsgFlags};
use nix::unistd::{ForkResult, Pid};

/// Proof that the code holding it runs in the child of [`fork`], before the child exits.
/// It cannot be created anywhere else.
pub(crate) struct ForkedChild(());

/// Exit code of a forked child whose closure panicked.
const PANIC_EXIT: i32 = 70;

/// Forks. The child runs `child` with its copy of `state` and exits with the code it
/// returns (70 if it panics) through `_exit`: it never returns from this call, so it never
/// unwinds into or runs the rest of the caller's frames, and no destructor or `atexit`
/// handler of the caller's runs twice. The parent gets the child's pid (or the error) and
/// its own `state` back; `child` is dropped there, unrun.
///
/// Both processes own their copy of `state`: descriptors in it are duplicated by the fork,
/// and its memory is copied.
///
/// What the child may do: the child is a copy of the calling thread only. A lock that
/// another thread held at the moment of the fork stays held in the child forever, so
/// `child` must only use `state` and memory it allocates itself (glibc's `malloc` is
/// fork-safe), start threads with an explicit stack size (std reads `RUST_MIN_STACK` under
/// the environment lock otherwise) and leave stdio and the environment alone. Breaking this
/// can deadlock the child; it cannot corrupt the parent.
pub(crate) fn fork<T>(
    state: T,
    child: impl FnOnce(&ForkedChild, T) -> i32,
) -> (io::Result<Pid>, T) {
    // SAFETY: nix marks fork unsafe because, in a multi-threaded process, the child may only
    // call async-signal-safe functions until it execs. Here the child runs nothing of the
    // caller's after the fork except `child`, whose contract (above) keeps it away from
    // locks other threads may have held, and it ends in `_exit` without returning: nothing
    // that assumes a single owner of the parent's state (destructors, the caller's frames)
    // runs in the child, and `state` is owned by one party in each process.
    match unsafe { nix::unistd::fork() } {
        Err(e) => (Err(e.into()), state),
        Ok(ForkResult::Parent { child }) => (Ok(child), state),
        Ok(ForkResult::Child) => {
            let token = ForkedChild(());
            let code =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| child(&token, state)))
                    .unwrap_or(PANIC_EXIT);
            exit_now(code)
        }
    }
}

/// Ends the process at once (`_exit`): no destructors, no `atexit` handlers, no flushing.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions; it does not return.
    unsafe { libc::_exit(code) }
}

/// `close_range(lo, hi, 0)`: closes the descriptors `lo..=hi` of a forked child (those it
/// inherited from its parent). False when the kernel lacks the call (before 5.9).
pub(crate) fn close_range(_child: &ForkedChild, lo: u32, hi: u32) -> bool {
    // SAFETY: close_range(2) takes integers only. Closing descriptors that an object of this
    // process owns would break that object's I/O safety; the token shows we run in a
    // freshly forked child, whose inherited descriptors belong to objects of the parent that
    // the child never uses.
    unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0u32) == 0 }
}

/// Sets the disposition of every signal but `SIGKILL`/`SIGSTOP` to the default, then
/// ignores `SIGPIPE` (in a forked child: the parent's handlers are not the child's).
pub(crate) fn reset_signal_dispositions(_child: &ForkedChild) {
    for sig in 1..=libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: SIG_DFL installs no handler code, so there is no handler whose
            // async-signal safety matters; glibc refuses the signals it reserves.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    // SAFETY: as above, with SIG_IGN.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// One message from [`recv_with_fds`].
pub(crate) struct RecvMsg {
    /// Bytes received (0: the peer closed the connection).
    pub(crate) len: usize,
    /// The message was longer than the buffer.
    pub(crate) truncated: bool,
    /// Descriptors received (close-on-exec; closed when dropped), all of them.
    pub(crate) fds: Vec<OwnedFd>,
}

/// Receives one message into `buf` and owns the descriptors attached to it (`recvmsg` with
/// `MSG_CMSG_CLOEXEC`, retried on `EINTR`).
pub(crate) fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<RecvMsg> {
    // Room for as many descriptors as one message can carry (the kernel's SCM_MAX_FD), so
    // that the kernel drops none on the way: every one that arrives is owned (and closed)
    // here.
    let mut control = nix::cmsg_space!([RawFd; 253]);
    loop {
        let mut iov = [IoSliceMut::new(&mut *buf)];
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
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        return Ok(RecvMsg {
            len: msg.bytes,
            truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
            fds,
        });
    }
}
