//! An fio external I/O engine over this driver (SPDK's `ioengine=spdk`, for fio 3.33):
//!
//! ```ini
//! [global]
//! ioengine=external:/path/to/libnvme_fio.so
//! thread=1
//! [job]
//! filename=trtype=sim size=64M lbasize=512
//! rw=randrw
//! bs=4k
//! iodepth=32
//! ```
//!
//! A job's `filename` is a transport id in SPDK's plugin form: `trtype=PCIe
//! traddr=0000.04.00.0 ns=1` (fio reserves `:` in file names, so `.` stands for the PCI
//! address's colons) or `trtype=sim` with the software controller's options (`size=64M
//! lbasize=512 nscount=N mdts=N mqes=N`). The file's size is the namespace's. Engine
//! options: `shm_id=N` (attach as a member of the driver's shared-memory group `N`, the
//! tools' `-i N`, so fio runs beside other processes of the group) and `io_queue_size=N`
//! (entries of each job thread's I/O queue pair; default the smaller of 1024 and the
//! controller's maximum). There is no SGL option: the driver builds PRP lists only.
//!
//! fio must run its jobs as threads (`thread=1`): each process attaches each controller
//! once, its job threads share the attachment and each has its own polled I/O queue pair.
//! fio's I/O buffers are the engine's DMA memory (`iomem_alloc`), so data is not copied; a
//! buffer outside it (fio does not hand one out today) goes through a bounce buffer, and the
//! engine says so once. Requests larger than the controller's MDTS are split by the driver.
//! A failed command comes back to fio as `EIO`, with a log line naming the command, the
//! offset and the NVMe status (status code type and code). A controller that dies under a
//! job (removed, fatal, or the group's software controller process killed) is noticed after
//! 10 ms without completions: the I/Os it had and every later one fail with `EIO`.
//!
//! Where each job lives: `ffi` (fio's structures, the entry points fio calls, fio's
//! version check), `engine` (attachments, per-thread state, the I/O path), `target` (the
//! `filename` syntax). All `unsafe` is in `ffi`; the rest denies `unsafe_code`.

#![deny(unsafe_code)]

mod engine;
mod ffi;
mod target;
