//! Proves that `nvme-core` and `nvme-regs` build and link without `std`.
//!
//! This binary has its own `#[panic_handler]` and its own `_start`, and is linked with
//! `-nostartfiles -nostdlib -static` (see `build.rs`). If either crate pulled in `std`, the
//! build would fail: `std` brings a second `panic_impl` lang item, and libc symbols that
//! cannot be resolved.
//!
//! It calls into both crates so their code is really linked, and feeds every result to
//! [`black_box`] so nothing is optimised away. On x86_64 Linux, `cargo xtask nostd` also runs
//! it: it exits with status 0 when the results are as expected.
#![no_std]
#![no_main]

use core::hint::black_box;
use core::panic::PanicInfo;

use nvme_core::{prp, Command, DmaRegion};
use nvme_regs::Status;

const PAGE: usize = 4096;

/// Page-aligned memory standing in for DMA memory: two PRP list pages.
#[repr(C, align(4096))]
struct Pages([u8; 2 * PAGE]);

/// The PRP list storage. Only [`run`] touches it, once, through a [`DmaRegion`].
static mut PRP_LIST: Pages = Pages([0; 2 * PAGE]);

/// Exercises both crates; returns 0 on success, or the number of the first failed check.
fn run() -> u8 {
    // A read of 8 blocks at LBA 0 of namespace 1.
    let cmd = black_box(Command::read(1, 0, 8));
    if cmd.opcode() != 0x02 || cmd.0.nsid != 1 {
        return 1;
    }

    // Completion status words: 0 is success; SCT 0 / SC 2 is "invalid field", not success.
    let ok = black_box(Status::from_completion_word(black_box(0)));
    if !ok.is_success() {
        return 2;
    }
    let invalid = black_box(Status::from_completion_word(black_box(0x2 << 1)));
    if invalid.is_success() || invalid.sc() != 0x2 {
        return 3;
    }
    black_box(invalid.name());

    // SAFETY: PRP_LIST is valid for reads and writes of its whole length for the life of the
    // program; this is the only place that takes its address and nothing else runs
    // concurrently (single-threaded, no interrupts handled). The "IOVA" is never given to a
    // device.
    let list = unsafe {
        DmaRegion::new(
            core::ptr::addr_of_mut!(PRP_LIST).cast::<u8>(),
            0x10_0000,
            2 * PAGE,
        )
    };
    let list = black_box(list);

    // One page: PRP1 only. Two pages: PRP1 and PRP2. Four pages: a PRP list in PRP2.
    match prp::build(black_box(0x20_0000), 8 * 512, PAGE, Some(&list)) {
        Ok((0x20_0000, 0)) => {}
        _ => return 4,
    }
    match prp::build(black_box(0x20_0800), PAGE, PAGE, Some(&list)) {
        Ok((0x20_0800, 0x20_1000)) => {}
        _ => return 5,
    }
    match prp::build(black_box(0x20_0000), 4 * PAGE, PAGE, Some(&list)) {
        Ok((0x20_0000, 0x10_0000)) => {}
        _ => return 6,
    }
    // SAFETY: reading the first list entry written by `prp::build` above; in bounds and
    // 8-byte aligned (the buffer is page aligned), nothing else accesses it.
    let first_entry = unsafe { core::ptr::read_volatile(list.vaddr().cast::<u64>()) };
    if black_box(first_entry) != 0x20_1000 {
        return 7;
    }
    if prp::build(black_box(0x20_0002), PAGE, PAGE, None).is_ok() {
        return 8;
    }
    0
}

/// Ends the process with `code` (Linux `exit_group`).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn exit(code: u8) -> ! {
    // SAFETY: exit_group (231) takes one integer argument and never returns, so the
    // registers the syscall instruction clobbers (rcx, r11) do not matter.
    unsafe {
        core::arch::asm!(
            "syscall",
            in("rax") 231usize,
            in("rdi") code as usize,
            options(noreturn, nostack),
        )
    }
}

/// Without a known exit system call, spin forever (the binary is only built, not run).
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn exit(code: u8) -> ! {
    black_box(code);
    loop {
        core::hint::spin_loop();
    }
}

/// Rust entry point, called by [`_start`] with a 16-byte aligned stack.
extern "C" fn start_rust() -> ! {
    exit(run())
}

/// The process entry point (there is no C runtime). The kernel enters with the stack 16-byte
/// aligned and no return address; Rust functions expect a call to have pushed one, so this
/// realigns the stack and calls [`start_rust`].
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[no_mangle]
pub extern "C" fn _start() -> ! {
    core::arch::naked_asm!(
        "xor ebp, ebp",
        "and rsp, -16",
        "call {start}",
        "ud2",
        start = sym start_rust,
    )
}

/// The process entry point (there is no C runtime).
#[cfg(not(target_arch = "x86_64"))]
#[no_mangle]
pub extern "C" fn _start() -> ! {
    start_rust()
}

/// The freestanding environment's memory functions.
///
/// Without libc, something must define the symbols the compiler emits calls to
/// (`compiler_builtins` does not export them on `*-linux-gnu`); an embedding kernel or
/// firmware provides them the same way. Byte loops with volatile accesses, so that LLVM cannot
/// turn a loop back into a call to the function it implements.
mod mem {
    /// Copies `n` bytes from `src` to `dst`; the ranges must not overlap.
    ///
    /// # Safety
    /// `src` must be valid for reads and `dst` for writes of `n` bytes.
    #[no_mangle]
    pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        for i in 0..n {
            // SAFETY: i < n, in bounds of both ranges by the caller's contract.
            unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
        }
        dst
    }

    /// Copies `n` bytes from `src` to `dst`; the ranges may overlap.
    ///
    /// # Safety
    /// `src` must be valid for reads and `dst` for writes of `n` bytes.
    #[no_mangle]
    pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        if (dst as usize) <= (src as usize) {
            for i in 0..n {
                // SAFETY: i < n, in bounds by the caller's contract; copying forwards is
                // correct when dst is below src.
                unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
            }
        } else {
            for i in (0..n).rev() {
                // SAFETY: as above; copying backwards is correct when dst is above src.
                unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
            }
        }
        dst
    }

    /// Fills `n` bytes at `dst` with the low byte of `c`.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `n` bytes.
    #[no_mangle]
    pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
        for i in 0..n {
            // SAFETY: i < n, in bounds by the caller's contract.
            unsafe { dst.add(i).write_volatile(c as u8) };
        }
        dst
    }

    /// Compares `n` bytes; negative, zero or positive like C's `memcmp`.
    ///
    /// # Safety
    /// `a` and `b` must be valid for reads of `n` bytes.
    #[no_mangle]
    pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
        for i in 0..n {
            // SAFETY: i < n, in bounds of both ranges by the caller's contract.
            let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
            if x != y {
                return i32::from(x) - i32::from(y);
            }
        }
        0
    }

    /// Compares `n` bytes for equality only (zero when equal).
    ///
    /// # Safety
    /// `a` and `b` must be valid for reads of `n` bytes.
    #[no_mangle]
    pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
        // SAFETY: same contract as memcmp.
        unsafe { memcmp(a, b, n) }
    }
}

/// The precompiled `core` is built for unwinding and its unwind tables name this symbol.
/// Nothing unwinds here (`panic = "abort"`), so it is never called.
#[no_mangle]
extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(_info: &PanicInfo<'_>) -> ! {
    exit(101)
}
