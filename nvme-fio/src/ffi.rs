//! fio's side: the `#[repr(C)]` structures of fio 3.33's external engine interface, the
//! fields of `thread_data`, `io_u` and `fio_file` the engine uses, the entry points fio
//! calls, and the check that the fio that loaded us is 3.33. All of the crate's `unsafe` is
//! here; the handles it gives out ([`Td`], [`IoU`], [`FioFile`]) are safe to use because
//! fio hands their pointers to the engine's callbacks and keeps them alive for the call (a
//! `thread_data` for the job's life, an `io_u` until the engine gives it back through
//! `event`).
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{null, null_mut, NonNull};
use std::sync::OnceLock;
use std::time::Duration;

use crate::engine::{self, QueueResult, ThreadState};

/// The fio release whose structure layout [`layout`] records.
pub(crate) const FIO_VERSION: &str = "fio-3.33";
/// `FIO_IOOPS_VERSION` of fio 3.33's `ioengines.h`: fio refuses an engine with another.
const FIO_IOOPS_VERSION: c_int = 31;

/// Offsets into fio 3.33's structures (x86-64). `thread_data` is ~190 KB and its layout
/// follows fio's configure, so these were printed by `nvme-fio/layout/offsets.c` compiled
/// against the fio-3.33 sources configured as Debian 12 builds its fio 3.33-3 package
/// (`./configure --disable-native`, with libaio, libnuma and zlib found; see the C file for
/// the commands), and checked against `/usr/bin/fio`'s own code (`td_io_init` stores
/// `io_ops_init` at `io_ops` + 8 = 0x2e608, `init_io_u_buffers` reads `orig_buffer` at
/// 0x2e280). The engine refuses to load into any fio but [`FIO_VERSION`].
mod layout {
    /// `sizeof(struct io_u)` and `sizeof(struct fio_file)`: the tests' fakes.
    #[cfg(test)]
    pub const IO_U_SIZE: usize = 368;
    #[cfg(test)]
    pub const FILE_SIZE: usize = 376;
    pub const TD_O_NAME: usize = 104;
    pub const TD_O_IODEPTH: usize = 208;
    pub const TD_O_USE_THREAD: usize = 1256;
    pub const TD_O_SIZE: usize = 240;
    pub const TD_O_START_OFFSET: usize = 296;
    pub const TD_EO: usize = 4216;
    pub const TD_THREAD_NUMBER: usize = 4232;
    pub const TD_FILES: usize = 188832;
    pub const TD_FILES_INDEX: usize = 188852;
    pub const TD_ORIG_BUFFER: usize = 189056;
    pub const TD_IO_OPS_DATA: usize = 189968;
    pub const IO_U_FILE: usize = 32;
    pub const IO_U_DDIR: usize = 44;
    pub const IO_U_OFFSET: usize = 72;
    pub const IO_U_XFER_BUF: usize = 104;
    pub const IO_U_XFER_BUFLEN: usize = 112;
    pub const IO_U_RESID: usize = 136;
    pub const IO_U_ERROR: usize = 144;
    pub const FILE_FILETYPE: usize = 16;
    pub const FILE_FILE_NAME: usize = 40;
    pub const FILE_REAL_FILE_SIZE: usize = 48;
    pub const FILE_ENGINE_POS: usize = 168;
    pub const FILE_FLAGS: usize = 364;
    /// `FIO_TYPE_BLOCK` of `enum fio_filetype`: not a regular file, so fio never lays one out.
    pub const FIO_TYPE_BLOCK: u32 = 2;
    /// `FIO_FILE_size_known` of `enum fio_file_flags`.
    pub const FIO_FILE_SIZE_KNOWN: u32 = 1 << 4;
    /// `sizeof(struct ioengine_ops)`, `sizeof(struct fio_option)`, offsets checked below.
    pub const OPS_SIZE: usize = 264;
    pub const OPTION_SIZE: usize = 1512;
    pub const OPTION_CATEGORY: usize = 1464;
    pub const OPTION_NO_FREE: usize = 1504;
    /// `FIO_OPT_INT` of `enum fio_opt_type`.
    pub const FIO_OPT_INT: c_uint = 8;
    /// `FIO_OPT_C_ENGINE` and `FIO_OPT_G_INVALID` of `optgroup.h`.
    pub const FIO_OPT_C_ENGINE: u64 = 1 << 6;
    pub const FIO_OPT_G_INVALID: u64 = 1 << 40;
    use std::ffi::c_uint;
}

/// `enum fio_ddir` values the engine handles.
pub(crate) mod ddir {
    pub const READ: i32 = 0;
    pub const WRITE: i32 = 1;
    pub const TRIM: i32 = 2;
    pub const SYNC: i32 = 3;
    pub const DATASYNC: i32 = 4;
}

/// `enum fio_ioengine_flags`: SPDK's plugin uses `FIO_RAWIO | FIO_NOEXTEND | FIO_NODISKUTIL
/// | FIO_MEMALIGN` for the same kind of engine (no kernel file behind `filename`).
const FIO_RAWIO: c_int = 1 << 1;
const FIO_NOEXTEND: c_int = 1 << 3;
const FIO_NODISKUTIL: c_int = 1 << 4;
const FIO_MEMALIGN: c_int = 1 << 9;

/// `enum fio_q_status`.
const FIO_Q_COMPLETED: c_int = 0;
const FIO_Q_QUEUED: c_int = 1;
const FIO_Q_BUSY: c_int = 2;

type TdPtr = *mut c_void;
type IoUPtr = *mut c_void;
type FilePtr = *mut c_void;

#[repr(C)]
struct FlistHead {
    next: *mut c_void,
    prev: *mut c_void,
}

/// `struct ioengine_ops` of fio 3.33 (`FIO_IOOPS_VERSION` 31).
#[repr(C)]
struct IoengineOps {
    list: FlistHead,
    name: *const c_char,
    version: c_int,
    flags: c_int,
    dlhandle: *mut c_void,
    setup: Option<unsafe extern "C" fn(TdPtr) -> c_int>,
    init: Option<unsafe extern "C" fn(TdPtr) -> c_int>,
    post_init: Option<unsafe extern "C" fn(TdPtr) -> c_int>,
    prep: Option<unsafe extern "C" fn(TdPtr, IoUPtr) -> c_int>,
    queue: Option<unsafe extern "C" fn(TdPtr, IoUPtr) -> c_int>,
    commit: Option<unsafe extern "C" fn(TdPtr) -> c_int>,
    getevents: Option<unsafe extern "C" fn(TdPtr, c_uint, c_uint, *const libc::timespec) -> c_int>,
    event: Option<unsafe extern "C" fn(TdPtr, c_int) -> IoUPtr>,
    errdetails: Option<unsafe extern "C" fn(IoUPtr) -> *mut c_char>,
    cancel: Option<unsafe extern "C" fn(TdPtr, IoUPtr) -> c_int>,
    cleanup: Option<unsafe extern "C" fn(TdPtr)>,
    open_file: Option<unsafe extern "C" fn(TdPtr, FilePtr) -> c_int>,
    close_file: Option<unsafe extern "C" fn(TdPtr, FilePtr) -> c_int>,
    invalidate: Option<unsafe extern "C" fn(TdPtr, FilePtr) -> c_int>,
    unlink_file: Option<unsafe extern "C" fn(TdPtr, FilePtr) -> c_int>,
    get_file_size: Option<unsafe extern "C" fn(TdPtr, FilePtr) -> c_int>,
    prepopulate_file: Option<unsafe extern "C" fn(TdPtr, FilePtr) -> c_int>,
    terminate: Option<unsafe extern "C" fn(TdPtr)>,
    iomem_alloc: Option<unsafe extern "C" fn(TdPtr, usize) -> c_int>,
    iomem_free: Option<unsafe extern "C" fn(TdPtr)>,
    io_u_init: Option<unsafe extern "C" fn(TdPtr, IoUPtr) -> c_int>,
    io_u_free: Option<unsafe extern "C" fn(TdPtr, IoUPtr)>,
    get_zoned_model: Option<unsafe extern "C" fn(TdPtr, FilePtr, *mut c_int) -> c_int>,
    report_zones: Option<unsafe extern "C" fn(TdPtr, FilePtr, u64, *mut c_void, c_uint) -> c_int>,
    reset_wp: Option<unsafe extern "C" fn(TdPtr, FilePtr, u64, u64) -> c_int>,
    get_max_open_zones: Option<unsafe extern "C" fn(TdPtr, FilePtr, *mut c_uint) -> c_int>,
    option_struct_size: c_int,
    options: *mut FioOption,
}

/// `struct value_pair` (parse.h).
#[repr(C)]
struct ValuePair {
    ival: *const c_char,
    oval: u64,
    help: *const c_char,
    orval: c_int,
    cb: *mut c_void,
}

/// `struct fio_option` (parse.h): one engine option.
#[repr(C)]
struct FioOption {
    name: *const c_char,
    lname: *const c_char,
    alias: *const c_char,
    type_: c_uint,
    off: [c_uint; 6],
    maxval: u64,
    minval: c_int,
    maxfp: f64,
    minfp: f64,
    interval: c_uint,
    maxlen: c_uint,
    neg: c_int,
    prio: c_int,
    cb: *mut c_void,
    help: *const c_char,
    def: *const c_char,
    posval: [ValuePair; 32],
    parent: *const c_char,
    hide: c_int,
    hide_on_set: c_int,
    inverse: *const c_char,
    inv_opt: *mut FioOption,
    verify: *mut c_void,
    prof_name: *const c_char,
    prof_opts: *mut c_void,
    category: u64,
    group: u64,
    gui_data: *mut c_void,
    is_seconds: c_int,
    is_time: c_int,
    no_warn_def: c_int,
    pow2: c_int,
    no_free: c_int,
}

const _: () = {
    assert!(std::mem::size_of::<IoengineOps>() == layout::OPS_SIZE);
    assert!(std::mem::offset_of!(IoengineOps, option_struct_size) == 248);
    assert!(std::mem::size_of::<FioOption>() == layout::OPTION_SIZE);
    assert!(std::mem::offset_of!(FioOption, category) == layout::OPTION_CATEGORY);
    assert!(std::mem::offset_of!(FioOption, no_free) == layout::OPTION_NO_FREE);
};

/// The engine's options as fio stores them (`td->eo`): fio writes the `thread_data`
/// pointer into the first word.
#[repr(C)]
struct EngineOptionsRaw {
    _td: *mut c_void,
    shm_id: c_int,
    io_queue_size: c_int,
}

/// The engine options of a job.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EngineOptions {
    /// `shm_id`: the driver's shared-memory group; negative = none.
    pub shm_id: i32,
    /// `io_queue_size`: entries of the job's I/O queue pair; 0 = default.
    pub io_queue_size: u32,
}

impl FioOption {
    fn int(name: &'static CStr, lname: &'static CStr, off: usize, min: c_int, max: u64) -> Self {
        FioOption {
            name: name.as_ptr(),
            lname: lname.as_ptr(),
            type_: layout::FIO_OPT_INT,
            off: [off as c_uint, 0, 0, 0, 0, 0],
            maxval: max,
            minval: min,
            ..FioOption::END
        }
    }
    /// The all-zero option that ends fio's option table.
    const END: FioOption = FioOption {
        name: null(),
        lname: null(),
        alias: null(),
        type_: 0,
        off: [0; 6],
        maxval: 0,
        minval: 0,
        maxfp: 0.0,
        minfp: 0.0,
        interval: 0,
        maxlen: 0,
        neg: 0,
        prio: 0,
        cb: null_mut(),
        help: null(),
        def: null(),
        posval: [const {
            ValuePair {
                ival: null(),
                oval: 0,
                help: null(),
                orval: 0,
                cb: null_mut(),
            }
        }; 32],
        parent: null(),
        hide: 0,
        hide_on_set: 0,
        inverse: null(),
        inv_opt: null_mut(),
        verify: null_mut(),
        prof_name: null(),
        prof_opts: null_mut(),
        category: 0,
        group: 0,
        gui_data: null_mut(),
        is_seconds: 0,
        is_time: 0,
        no_warn_def: 0,
        pow2: 0,
        no_free: 0,
    };
}

fn options() -> *mut FioOption {
    let mut shm = FioOption::int(
        c"shm_id",
        c"nvme-fio shared-memory group id",
        std::mem::offset_of!(EngineOptionsRaw, shm_id),
        -1,
        i32::MAX as u64,
    );
    shm.help = c"The driver's shared-memory group (-i of nvme-perf/nvmectl): attach as a member of group N beside other processes; -1: alone".as_ptr();
    shm.def = c"-1".as_ptr();
    let mut qsize = FioOption::int(
        c"io_queue_size",
        c"nvme-fio I/O queue entries",
        std::mem::offset_of!(EngineOptionsRaw, io_queue_size),
        0,
        65536,
    );
    qsize.help = c"Entries of each job thread's I/O queue pair (0: the smaller of 1024 and the controller's maximum)".as_ptr();
    qsize.def = c"0".as_ptr();
    for o in [&mut shm, &mut qsize] {
        o.category = layout::FIO_OPT_C_ENGINE;
        o.group = layout::FIO_OPT_G_INVALID;
    }
    Box::leak(Box::new([shm, qsize, FioOption::END])).as_mut_ptr()
}

// ---------------------------------------------------------------------------------------
// Reading and writing fio's structures.

/// Reads a `T` at `off` bytes into fio's structure at `base`.
///
/// # Safety
/// `base + off` must be a valid, aligned `T` inside a live fio structure.
unsafe fn get<T: Copy>(base: NonNull<u8>, off: usize) -> T {
    // SAFETY: the caller's contract.
    unsafe { base.as_ptr().add(off).cast::<T>().read() }
}

/// Writes a `T` at `off` bytes into fio's structure at `base`.
///
/// # Safety
/// As [`get`], and no Rust reference to that field may be alive.
unsafe fn put<T: Copy>(base: NonNull<u8>, off: usize, v: T) {
    // SAFETY: the caller's contract.
    unsafe { base.as_ptr().add(off).cast::<T>().write(v) }
}

fn c_string(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: fio's strings (job and file names) are NUL-terminated and live while the job does.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// A job thread (`struct thread_data`), valid during the callback it was passed to.
#[derive(Clone, Copy)]
pub(crate) struct Td(NonNull<u8>);

impl Td {
    /// The job's name (`name=` or its section).
    pub(crate) fn name(self) -> String {
        // SAFETY: o.name is a `char *` field of the live thread_data (layout above).
        c_string(unsafe { get(self.0, layout::TD_O_NAME) })
    }
    /// fio's number for this job thread.
    pub(crate) fn thread_number(self) -> u32 {
        // SAFETY: an `unsigned int` field of the live thread_data.
        unsafe { get(self.0, layout::TD_THREAD_NUMBER) }
    }
    /// `iodepth=`.
    pub(crate) fn iodepth(self) -> u32 {
        // SAFETY: an `unsigned int` field of the live thread_data.
        unsafe { get(self.0, layout::TD_O_IODEPTH) }
    }
    /// `thread=1`?
    pub(crate) fn use_thread(self) -> bool {
        // SAFETY: an `unsigned int` field of the live thread_data.
        unsafe { get::<c_uint>(self.0, layout::TD_O_USE_THREAD) != 0 }
    }
    /// `offset=` and `size=` in bytes, as given (0: not given).
    pub(crate) fn offset_and_size(self) -> (u64, u64) {
        // SAFETY: two `unsigned long long` fields of the live thread_data.
        unsafe {
            (
                get(self.0, layout::TD_O_START_OFFSET),
                get(self.0, layout::TD_O_SIZE),
            )
        }
    }
    /// The job's files (`td->files[0..files_index]`).
    pub(crate) fn files(self) -> Vec<FioFile> {
        // SAFETY: `files` is a `struct fio_file **` with `files_index` entries (fio's
        // for_each_file walks the same array); entries may be NULL.
        unsafe {
            let files: *const *mut u8 = get(self.0, layout::TD_FILES);
            let n: c_uint = get(self.0, layout::TD_FILES_INDEX);
            if files.is_null() {
                return Vec::new();
            }
            (0..n as usize)
                .filter_map(|i| NonNull::new(*files.add(i)).map(FioFile))
                .collect()
        }
    }
    /// The engine options of this job.
    pub(crate) fn options(self) -> EngineOptions {
        // SAFETY: td->eo points to `option_struct_size` bytes laid out as EngineOptionsRaw
        // (fio allocates it for this engine's option table) or is NULL.
        unsafe {
            let eo: *const EngineOptionsRaw = get(self.0, layout::TD_EO);
            match eo.as_ref() {
                Some(eo) => EngineOptions {
                    shm_id: eo.shm_id,
                    io_queue_size: eo.io_queue_size.max(0) as u32,
                },
                None => EngineOptions {
                    shm_id: -1,
                    io_queue_size: 0,
                },
            }
        }
    }
    /// Tells fio where its I/O buffers are (`td->orig_buffer`, what `iomem_alloc` must set).
    pub(crate) fn set_orig_buffer(self, p: *mut u8) {
        // SAFETY: a `char *` field of the live thread_data, written only by the thread that
        // allocates the job's buffers, which is this callback's.
        unsafe { put(self.0, layout::TD_ORIG_BUFFER, p) }
    }
    fn state_ptr(self) -> *mut ThreadState {
        // SAFETY: td->io_ops_data is a `void *` field; the engine stores there only a
        // pointer from Box::<ThreadState>::into_raw (or NULL).
        unsafe { get(self.0, layout::TD_IO_OPS_DATA) }
    }
    /// Stores the job thread's state (`td->io_ops_data`).
    pub(crate) fn set_state(self, st: Box<ThreadState>) {
        drop(self.take_state());
        // SAFETY: as in state_ptr.
        unsafe { put(self.0, layout::TD_IO_OPS_DATA, Box::into_raw(st)) }
    }
    /// Takes the job thread's state back.
    pub(crate) fn take_state(self) -> Option<Box<ThreadState>> {
        let p = self.state_ptr();
        if p.is_null() {
            return None;
        }
        // SAFETY: as in state_ptr; cleared so that it is taken once.
        unsafe { put(self.0, layout::TD_IO_OPS_DATA, null_mut::<ThreadState>()) };
        // SAFETY: from Box::into_raw in set_state, not freed since (cleared above).
        Some(unsafe { Box::from_raw(p) })
    }
    /// Runs `f` on the job thread's state, if it has one.
    pub(crate) fn with_state<R>(self, f: impl FnOnce(&mut ThreadState) -> R) -> Option<R> {
        // SAFETY: from Box::into_raw in set_state; fio calls a job's engine callbacks from
        // one thread at a time (the job's), so no other reference to it is alive.
        let st = unsafe { self.state_ptr().as_mut() }?;
        Some(f(st))
    }
}

/// An I/O unit (`struct io_u`): fio's, lent to the engine from `queue` until `event`
/// returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IoU(NonNull<u8>);

impl IoU {
    /// The token the driver carries for this I/O.
    pub(crate) fn token(self) -> u64 {
        self.0.as_ptr() as usize as u64
    }
    /// The I/O whose token this is. Tokens the engine gives the driver come from
    /// [`token`](Self::token) of an `io_u` fio lent it, which stays alive until `event`.
    pub(crate) fn from_token(t: u64) -> IoU {
        IoU(NonNull::new(t as usize as *mut u8).expect("tokens are io_u pointers"))
    }
    /// `enum fio_ddir`.
    pub(crate) fn ddir(self) -> i32 {
        // SAFETY: an enum (int) field of the live io_u.
        unsafe { get(self.0, layout::IO_U_DDIR) }
    }
    /// Byte offset in the file.
    pub(crate) fn offset(self) -> u64 {
        // SAFETY: an `unsigned long long` field of the live io_u.
        unsafe { get(self.0, layout::IO_U_OFFSET) }
    }
    /// The data's address and length.
    pub(crate) fn xfer(self) -> (*mut u8, usize) {
        // SAFETY: a `void *` and an `unsigned long long` field of the live io_u.
        unsafe {
            (
                get(self.0, layout::IO_U_XFER_BUF),
                get::<u64>(self.0, layout::IO_U_XFER_BUFLEN) as usize,
            )
        }
    }
    /// The file the I/O is for.
    pub(crate) fn file(self) -> Option<FioFile> {
        // SAFETY: a `struct fio_file *` field of the live io_u.
        NonNull::new(unsafe { get::<*mut u8>(self.0, layout::IO_U_FILE) }).map(FioFile)
    }
    /// Sets the I/O's result: 0 or an errno; the residual is 0 on success, all on error.
    pub(crate) fn complete(self, errno: u32) {
        let (_, len) = self.xfer();
        // SAFETY: an `unsigned int` and an `unsigned long long` field of the io_u, which fio
        // lent to the engine (nothing else writes it until `event` returns it).
        unsafe {
            put(self.0, layout::IO_U_ERROR, errno as c_uint);
            put(
                self.0,
                layout::IO_U_RESID,
                if errno == 0 { 0u64 } else { len as u64 },
            );
        }
    }
    /// Copies the I/O's data (a write's) into `dst`.
    pub(crate) fn copy_data_to(self, dst: &mut [u8]) {
        let (p, len) = self.xfer();
        assert_eq!(dst.len(), len, "bounce buffer of the I/O's length");
        // SAFETY: fio's buffer of `len` bytes at `p`, not in use by any device (it is not
        // DMA memory: that is why it is copied), and `dst` is a distinct Rust slice.
        unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), len) }
    }
    /// Copies `src` into the I/O's buffer (a read's data).
    pub(crate) fn copy_data_from(self, src: &[u8]) {
        let (p, len) = self.xfer();
        assert_eq!(src.len(), len, "bounce buffer of the I/O's length");
        // SAFETY: as in copy_data_to, the other way.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, len) }
    }
}

/// A job's file (`struct fio_file`), alive as long as its job.
#[derive(Clone, Copy)]
pub(crate) struct FioFile(NonNull<u8>);

impl FioFile {
    /// `filename=`.
    pub(crate) fn name(self) -> String {
        // SAFETY: a `char *` field of the live fio_file.
        c_string(unsafe { get(self.0, layout::FILE_FILE_NAME) })
    }
    /// The engine's own word in the file (`engine_pos`).
    pub(crate) fn engine_pos(self) -> u64 {
        // SAFETY: a `uint64_t` field of the live fio_file, for the engine's use.
        unsafe { get(self.0, layout::FILE_ENGINE_POS) }
    }
    /// Sets the engine's own word.
    pub(crate) fn set_engine_pos(self, v: u64) {
        // SAFETY: as in engine_pos; only the job's setup and cleanup write it.
        unsafe { put(self.0, layout::FILE_ENGINE_POS, v) }
    }
    /// Makes the file a block device of `size` bytes whose size is known (what `setup`
    /// must do: fio then neither stats nor lays out the "file").
    pub(crate) fn set_block_device_size(self, size: u64) {
        // SAFETY: `uint64_t`, enum (int) and flags (int) fields of the live fio_file,
        // written during setup, before any I/O of its job.
        unsafe {
            put(self.0, layout::FILE_REAL_FILE_SIZE, size);
            put(self.0, layout::FILE_FILETYPE, layout::FIO_TYPE_BLOCK);
            let flags: u32 = get(self.0, layout::FILE_FLAGS);
            put(
                self.0,
                layout::FILE_FLAGS,
                flags | layout::FIO_FILE_SIZE_KNOWN,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// fio's functions and the version check.

type LogFn = unsafe extern "C" fn(*const c_char, ...) -> usize;

fn symbol(name: &CStr) -> *mut c_void {
    // SAFETY: dlsym with RTLD_DEFAULT looks a NUL-terminated name up in the process's
    // global scope (fio's executable exports its symbols to engines).
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
}

/// Prints `msg` on fio's error output (`log_err`, so that fio's client/server mode carries
/// it), or on stderr outside fio.
pub(crate) fn log(msg: &str) {
    static LOG_ERR: OnceLock<Option<LogFn>> = OnceLock::new();
    let f = LOG_ERR.get_or_init(|| {
        let p = symbol(c"log_err");
        // SAFETY: fio's `size_t log_err(const char *format, ...)`.
        (!p.is_null()).then(|| unsafe { std::mem::transmute::<*mut c_void, LogFn>(p) })
    });
    let line = format!("nvme-fio: {msg}\n").replace('\0', " ");
    match (f, std::ffi::CString::new(line.clone())) {
        // SAFETY: a "%s" format with one NUL-terminated string argument.
        (Some(f), Ok(c)) => unsafe {
            f(c"%s".as_ptr(), c.as_ptr());
        },
        _ => eprint!("{line}"),
    }
}

/// The version string of the fio that loaded us (`fio_version_string`), if exported.
fn fio_version() -> Option<String> {
    let p = symbol(c"fio_version_string");
    // SAFETY: fio's `const char fio_version_string[]`, NUL-terminated.
    (!p.is_null()).then(|| c_string(p as *const c_char))
}

// ---------------------------------------------------------------------------------------
// The entry points.

/// Runs a callback's body; a panic becomes an error message (it must not unwind into fio).
fn guard<R>(what: &str, on_panic: R, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(e) => {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            log(&format!("internal error in {what}: {why}"));
            on_panic
        }
    }
}

fn status(r: Result<(), String>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => {
            log(&e);
            1
        }
    }
}

macro_rules! td {
    ($p:expr) => {
        match NonNull::new($p.cast::<u8>()) {
            Some(p) => Td(p),
            None => return,
        }
    };
    ($p:expr, $err:expr) => {
        match NonNull::new($p.cast::<u8>()) {
            Some(p) => Td(p),
            None => return $err,
        }
    };
}

unsafe extern "C" fn setup(td: TdPtr) -> c_int {
    let td = td!(td, 1);
    guard("setup", 1, || status(engine::setup(td)))
}

unsafe extern "C" fn init(td: TdPtr) -> c_int {
    let td = td!(td, 1);
    guard("init", 1, || status(engine::init(td)))
}

unsafe extern "C" fn queue(td: TdPtr, io_u: IoUPtr) -> c_int {
    let td = td!(td, FIO_Q_COMPLETED);
    let Some(io) = NonNull::new(io_u.cast::<u8>()).map(IoU) else {
        return FIO_Q_COMPLETED;
    };
    guard("queue", FIO_Q_COMPLETED, || match engine::queue(td, io) {
        QueueResult::Submitted => FIO_Q_QUEUED,
        QueueResult::Busy => FIO_Q_BUSY,
        QueueResult::Completed => FIO_Q_COMPLETED,
    })
}

unsafe extern "C" fn commit(td: TdPtr) -> c_int {
    let p = td;
    let td = td!(td, 1);
    guard("commit", 1, || {
        let n = engine::commit(td);
        if n > 0 {
            if let Some(f) = mark_submit() {
                // SAFETY: fio's `void io_u_mark_submit(struct thread_data *, unsigned int)`
                // with the thread_data fio passed to this commit (fio's own engines with a
                // commit hook count their batches this way: the "submit" histogram).
                unsafe { f(p, n as c_uint) };
            }
        }
        0
    })
}

type MarkSubmitFn = unsafe extern "C" fn(TdPtr, c_uint);

/// fio's `io_u_mark_submit`, if exported.
fn mark_submit() -> Option<MarkSubmitFn> {
    static F: OnceLock<Option<MarkSubmitFn>> = OnceLock::new();
    *F.get_or_init(|| {
        let p = symbol(c"io_u_mark_submit");
        // SAFETY: fio's `void io_u_mark_submit(struct thread_data *, unsigned int)`.
        (!p.is_null()).then(|| unsafe { std::mem::transmute::<*mut c_void, MarkSubmitFn>(p) })
    })
}

unsafe extern "C" fn getevents(
    td: TdPtr,
    min: c_uint,
    max: c_uint,
    t: *const libc::timespec,
) -> c_int {
    let td = td!(td, -1);
    // SAFETY: fio passes NULL or a timespec that lives for the call.
    let timeout = unsafe { t.as_ref() }.map(|t| {
        Duration::new(
            t.tv_sec.max(0) as u64,
            t.tv_nsec.clamp(0, 999_999_999) as u32,
        )
    });
    guard("getevents", -1, || {
        engine::getevents(td, min as usize, max as usize, timeout) as c_int
    })
}

unsafe extern "C" fn event(td: TdPtr, i: c_int) -> IoUPtr {
    let td = td!(td, null_mut());
    guard("event", null_mut(), || {
        engine::event(td, i.max(0) as usize).map_or(null_mut(), |io| io.0.as_ptr().cast::<c_void>())
    })
}

unsafe extern "C" fn cleanup(td: TdPtr) {
    let td = td!(td);
    guard("cleanup", (), || engine::cleanup(td))
}

unsafe extern "C" fn open_file(_td: TdPtr, _f: FilePtr) -> c_int {
    // Nothing to open: setup attached the controller and sized the file.
    0
}

unsafe extern "C" fn close_file(_td: TdPtr, _f: FilePtr) -> c_int {
    // The attachment outlives the job's files; cleanup lets it go.
    0
}

unsafe extern "C" fn invalidate(_td: TdPtr, _f: FilePtr) -> c_int {
    // No page cache in front of the controller (fio's own would try a block device ioctl).
    0
}

unsafe extern "C" fn iomem_alloc(td: TdPtr, len: usize) -> c_int {
    let td = td!(td, 1);
    guard("iomem_alloc", 1, || status(engine::iomem_alloc(td, len)))
}

unsafe extern "C" fn iomem_free(td: TdPtr) {
    let td = td!(td);
    guard("iomem_free", (), || engine::iomem_free(td))
}

/// The engine's operations, built once (fio writes `list` and `dlhandle` into them).
fn ops() -> *mut IoengineOps {
    static OPS: OnceLock<usize> = OnceLock::new();
    *OPS.get_or_init(|| {
        let ops = IoengineOps {
            list: FlistHead {
                next: null_mut(),
                prev: null_mut(),
            },
            name: c"nvme-fio".as_ptr(),
            version: FIO_IOOPS_VERSION,
            flags: FIO_RAWIO | FIO_NOEXTEND | FIO_NODISKUTIL | FIO_MEMALIGN,
            dlhandle: null_mut(),
            setup: Some(setup),
            init: Some(init),
            post_init: None,
            prep: None,
            queue: Some(queue),
            commit: Some(commit),
            getevents: Some(getevents),
            event: Some(event),
            errdetails: None,
            cancel: None,
            cleanup: Some(cleanup),
            open_file: Some(open_file),
            close_file: Some(close_file),
            invalidate: Some(invalidate),
            unlink_file: None,
            get_file_size: None,
            prepopulate_file: None,
            terminate: None,
            iomem_alloc: Some(iomem_alloc),
            iomem_free: Some(iomem_free),
            io_u_init: None,
            io_u_free: None,
            get_zoned_model: None,
            report_zones: None,
            reset_wp: None,
            get_max_open_zones: None,
            option_struct_size: std::mem::size_of::<EngineOptionsRaw>() as c_int,
            options: options(),
        };
        Box::into_raw(Box::new(ops)) as usize
    }) as *mut IoengineOps
}

/// Is `found` (fio's `fio_version_string`) the fio whose layout this engine knows?
fn check_version(found: Option<&str>) -> Result<(), String> {
    match found {
        Some(v) if v == FIO_VERSION => Ok(()),
        found => Err(format!(
            "this engine is built for {FIO_VERSION}'s structures and was loaded by {}; \
             not loading (install fio 3.33, e.g. Debian 12's package, or port \
             nvme-fio/src/ffi.rs with nvme-fio/layout/offsets.c)",
            found.unwrap_or("a program without fio_version_string")
        )),
    }
}

/// What fio calls after `dlopen` to get the engine's operations (`get_ioengine_t`). Leaves
/// `*out` NULL, with a message, in any fio but 3.33: the structures above are 3.33's.
///
/// # Safety
/// `out` must be a valid `struct ioengine_ops **` (fio's own variable).
#[no_mangle]
pub unsafe extern "C" fn get_ioengine(out: *mut *mut c_void) {
    if out.is_null() {
        return;
    }
    let ops = match check_version(fio_version().as_deref()) {
        Ok(()) => ops().cast::<c_void>(),
        Err(e) => {
            log(&e);
            null_mut()
        }
    };
    // SAFETY: the caller's contract.
    unsafe { *out = ops };
}

/// fio's `io_u` and `fio_file` in Rust memory, for tests of the engine without fio.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;

    /// Zeroed, 8-byte aligned memory of `bytes` bytes, owned by the fake.
    fn zeroed(bytes: usize) -> NonNull<u8> {
        let words = vec![0u64; bytes.div_ceil(8)].into_boxed_slice();
        NonNull::from(Box::leak(words)).cast()
    }

    fn free(p: NonNull<u8>, bytes: usize) {
        let words = std::ptr::slice_from_raw_parts_mut(p.as_ptr().cast::<u64>(), bytes.div_ceil(8));
        // SAFETY: `p` came from Box::leak of a slice of this length in `zeroed`.
        drop(unsafe { Box::from_raw(words) });
    }

    /// A `struct fio_file` with the engine's word set.
    pub(crate) struct FakeFile(NonNull<u8>);

    impl FakeFile {
        pub(crate) fn new(engine_pos: u64) -> FakeFile {
            let f = FakeFile(zeroed(layout::FILE_SIZE));
            FioFile(f.0).set_engine_pos(engine_pos);
            f
        }
    }

    impl Drop for FakeFile {
        fn drop(&mut self) {
            free(self.0, layout::FILE_SIZE);
        }
    }

    /// A `struct io_u` for `buf` at byte `offset` of `file`.
    pub(crate) struct FakeIoU(NonNull<u8>);

    impl FakeIoU {
        pub(crate) fn new(file: &FakeFile, ddir: i32, offset: u64, buf: &mut [u8]) -> FakeIoU {
            let p = zeroed(layout::IO_U_SIZE);
            // SAFETY: fields of the zeroed io_u-sized memory above, at fio's offsets.
            unsafe {
                put(p, layout::IO_U_FILE, file.0.as_ptr());
                put(p, layout::IO_U_DDIR, ddir);
                put(p, layout::IO_U_OFFSET, offset);
                put(p, layout::IO_U_XFER_BUF, buf.as_mut_ptr());
                put(p, layout::IO_U_XFER_BUFLEN, buf.len() as u64);
            }
            FakeIoU(p)
        }
        pub(crate) fn io(&self) -> IoU {
            IoU(self.0)
        }
        pub(crate) fn error(&self) -> u32 {
            // SAFETY: an `unsigned int` field of the fake io_u.
            unsafe { get(self.0, layout::IO_U_ERROR) }
        }
    }

    impl Drop for FakeIoU {
        fn drop(&mut self) {
            free(self.0, layout::IO_U_SIZE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fio_3_33_loads_the_engine() {
        assert!(check_version(Some("fio-3.33")).is_ok());
        let e = check_version(Some("fio-3.35")).unwrap_err();
        assert!(
            e.contains("built for fio-3.33") && e.contains("loaded by fio-3.35"),
            "{e}"
        );
        let e = check_version(None).unwrap_err();
        assert!(e.contains("without fio_version_string"), "{e}");
        // The test binary is not fio: the symbol is not there, and get_ioengine says no.
        assert_eq!(fio_version(), None);
        let mut out = std::ptr::dangling_mut::<c_void>();
        // SAFETY: `out` is a valid pointer-sized variable.
        unsafe { get_ioengine(&mut out) };
        assert!(out.is_null(), "refused outside fio 3.33");
    }
}
