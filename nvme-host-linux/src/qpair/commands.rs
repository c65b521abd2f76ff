//! Synchronous helpers for the NVM commands a management tool sends one at a time: Flush,
//! Write Zeroes with its options, Dataset Management over many ranges, and any I/O command
//! as built (passthru) with its completion dword 0.
//!
//! They are not the I/O path: each waits for its one command (no other I/O may be
//! outstanding on the pair), and Dataset Management allocates its range list. Everything
//! that can be checked here is checked before the command is sent: the namespace is active,
//! every LBA range lies inside it, counts fit one command, buffers fit the maximum transfer.

use std::time::{Duration, Instant};

use nvme_core::cmd::DsmRange;
use nvme_core::qpair::MAX_BLOCKS_PER_COMMAND;
use nvme_core::{Command, Completion};
use nvme_regs::opcode::NvmOpcode;
use zerocopy::IntoBytes;

use super::{with_qp, Engine, IoCtx, IoQueuePair};
use crate::dma::IoBuf;
use crate::error::{Error, Result};

/// How long the synchronous helpers wait for their command unless told otherwise.
pub const SYNC_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Most ranges one Dataset Management command carries (NR is 8 bits, 0's based).
pub const MAX_DSM_RANGES: usize = 256;

/// Options of Write Zeroes (command dword 12 bits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteZeroesOptions {
    /// DEAC (bit 25): the controller may deallocate the blocks instead of writing them;
    /// they read as zeroes either way.
    pub deallocate: bool,
    /// FUA (bit 30): the zeroes are on non-volatile media when the command completes.
    pub force_unit_access: bool,
    /// LR (bit 31): limited retry.
    pub limited_retry: bool,
}

impl WriteZeroesOptions {
    /// The bits these options set in command dword 12.
    pub fn cdw12_bits(self) -> u32 {
        (self.deallocate as u32) << 25
            | (self.force_unit_access as u32) << 30
            | (self.limited_retry as u32) << 31
    }
}

/// Dataset Management attributes (command dword 11).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DsmAttributes {
    /// IDR (bit 0): integral dataset for read.
    pub integral_read: bool,
    /// IDW (bit 1): integral dataset for write.
    pub integral_write: bool,
    /// AD (bit 2): deallocate the ranges (they read back as the namespace's DLFEAT says;
    /// zeroes on the software controller).
    pub deallocate: bool,
}

impl DsmAttributes {
    /// Command dword 11.
    pub fn cdw11(self) -> u32 {
        self.integral_read as u32
            | (self.integral_write as u32) << 1
            | (self.deallocate as u32) << 2
    }
    /// From command dword 11 (bits 31:3 are reserved and dropped).
    pub fn from_cdw11(v: u32) -> DsmAttributes {
        DsmAttributes {
            integral_read: v & 1 != 0,
            integral_write: v & 2 != 0,
            deallocate: v & 4 != 0,
        }
    }
}

impl IoQueuePair {
    /// Flushes namespace `nsid`'s volatile write cache and waits for it.
    pub fn flush_sync(&mut self, nsid: u32) -> Result<()> {
        self.namespace(nsid)?;
        self.command_sync(Command::flush(nsid), None, SYNC_COMMAND_TIMEOUT)
            .map(|_| ())
    }

    /// Write Zeroes to `blocks` (1..=65536) blocks at `lba` with `opts`, and waits for it.
    /// The range is checked against the namespace first.
    pub fn write_zeroes_sync(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u32,
        opts: WriteZeroesOptions,
    ) -> Result<()> {
        let capacity = self.namespace(nsid)?.blocks;
        if blocks > MAX_BLOCKS_PER_COMMAND {
            return Err(Error::Invalid(format!(
                "write zeroes of {blocks} blocks: at most {MAX_BLOCKS_PER_COMMAND} per command"
            )));
        }
        self.check_range(nsid, lba, blocks as u64, capacity)?;
        self.leases.check_write(nsid, lba, blocks as u64)?;
        let mut cmd = Command::write_zeroes(nsid, lba, blocks);
        cmd.0.cdw12 |= opts.cdw12_bits();
        self.command_sync(cmd, None, SYNC_COMMAND_TIMEOUT)
            .map(|_| ())
    }

    /// Dataset Management of `ranges` (1..=256, each of at least one block inside the
    /// namespace) with `attrs`, and waits for it. Every range is checked before the
    /// command is sent; the range list goes in a DMA buffer allocated for the call.
    pub fn dataset_management_sync(
        &mut self,
        nsid: u32,
        ranges: &[DsmRange],
        attrs: DsmAttributes,
    ) -> Result<()> {
        let capacity = self.namespace(nsid)?.blocks;
        if ranges.is_empty() || ranges.len() > MAX_DSM_RANGES {
            return Err(Error::Invalid(format!(
                "dataset management of {} ranges: give 1 to {MAX_DSM_RANGES}",
                ranges.len()
            )));
        }
        for (i, r) in ranges.iter().enumerate() {
            if r.blocks == 0 {
                return Err(Error::Invalid(format!(
                    "dataset management range {i} (starting LBA {}) has 0 blocks: give at least 1",
                    r.slba
                )));
            }
            self.check_range(nsid, r.slba, r.blocks as u64, capacity)?;
            if attrs.deallocate {
                self.leases.check_write(nsid, r.slba, r.blocks as u64)?;
            }
        }
        let mut buf = self.ctrl.alloc_dma(4096)?;
        buf.as_mut_slice()[..ranges.len() * 16].copy_from_slice(ranges.as_bytes());
        let cmd = Command::new(NvmOpcode::DatasetManagement as u8, nsid)
            .cdw10((ranges.len() as u32 - 1) & 0xff)
            .cdw11(attrs.cdw11());
        let data = buf.slice(0..ranges.len() * 16)?;
        self.command_sync(cmd, Some(data), SYNC_COMMAND_TIMEOUT)
            .map(|_| ())
    }

    /// Sends any I/O command as built (I/O passthru), with an optional data range (at most
    /// the controller's maximum transfer; not split), waits up to `timeout` for it and
    /// returns its completion dword 0. The driver fills in the command identifier and the
    /// data pointer: fused operations and SGLs (command dword 0 bits 15:8) are refused.
    /// Nothing else is checked (but a write's blocks against this process's LBA range
    /// leases, when it enforces them: [`Lease`](crate::Lease)): the controller's status
    /// reports the rest. No other I/O may be outstanding on this pair. After a timeout the command stays outstanding (its
    /// buffer stays mapped) until it completes or the pair is dropped.
    pub fn passthru_sync(
        &mut self,
        cmd: Command,
        data: Option<IoBuf<'_>>,
        timeout: Duration,
    ) -> Result<u32> {
        if cmd.0.flags != 0 {
            return Err(Error::Invalid(format!(
                "I/O passthru: flags {:#04x} ask for a fused operation or SGLs; the driver builds the data pointer (PRPs) and sends no fused commands: give flags 0",
                cmd.0.flags
            )));
        }
        self.leases.check_command(&cmd, data.as_ref())?;
        if let Some(d) = &data {
            let max = self.ctrl.max_transfer();
            if d.len() > max {
                return Err(Error::Invalid(format!(
                    "I/O passthru: {} bytes of data exceed the controller's maximum transfer of {max} bytes (MDTS); send it in pieces",
                    d.len()
                )));
            }
        }
        self.command_sync(cmd, data, timeout)
    }

    /// Submits `cmd` alone on this pair and waits up to `timeout` for its completion;
    /// returns dword 0. A reset meanwhile completes it as [`Error::AbortedByReset`].
    fn command_sync(
        &mut self,
        cmd: Command,
        data: Option<IoBuf<'_>>,
        timeout: Duration,
    ) -> Result<u32> {
        if self.outstanding() > 0 {
            return Err(Error::Busy {
                outstanding: self.outstanding(),
            });
        }
        self.current()?;
        let opcode = cmd.opcode();
        let ctx = IoCtx {
            token: 0,
            _buf: data.map(|d| d.map.clone()),
        };
        let region = data.map(|d| d.region());
        with_qp!(&mut self.qp, |q| q.submit(cmd, region, ctx)).map_err(|e| self.submit_error(e))?;
        let start = Instant::now();
        let mut result: Option<Result<u32>> = None;
        loop {
            if self.live.generation() != self.generation {
                // A reset: reconnecting completes the command as aborted.
                self.process_completions(usize::MAX, |_, r| result = Some(r.map(|()| 0)));
            } else {
                let res = &mut result;
                with_qp!(&mut self.qp, |q| q.poll(
                    usize::MAX,
                    |_: IoCtx, c: Completion| {
                        *res = Some(if c.status.is_success() {
                            Ok(c.dw0)
                        } else {
                            Err(Error::Nvme {
                                opcode: c.opcode,
                                admin: false,
                                status: c.status,
                            })
                        });
                    }
                ));
                if let Engine::Tcp(q) = &mut self.qp {
                    if q.rings().needs_reconnect() {
                        let mut failed = |_, r: Result<()>| result = Some(r.map(|()| 0));
                        Self::recover_connection(q, &self.ctrl, self.qid, &mut failed);
                    }
                }
            }
            if let Some(r) = result {
                return r;
            }
            if start.elapsed() > Duration::from_millis(1) {
                self.ctrl.state().check_alive()?;
            }
            if start.elapsed() > timeout {
                return Err(Error::Timeout {
                    opcode,
                    admin: false,
                    waited_ms: timeout.as_millis() as u64,
                });
            }
            // Spin at first, then sleep briefly between polls, as `drain` does.
            crate::admin::wait_a_little(start);
        }
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use crate::{Controller, QueueOptions};

    fn setup() -> (Controller, IoQueuePair, crate::DmaBuffer) {
        let c = Controller::attach("trtype:sim nscount:1 size:1M lbasize:512").unwrap();
        let qp = c.alloc_io_queue(QueueOptions::new(8)).unwrap();
        let buf = c.alloc_dma(8 * 512).unwrap();
        (c, qp, buf)
    }

    fn read(qp: &mut IoQueuePair, buf: &mut crate::DmaBuffer, lba: u64) -> Vec<u8> {
        qp.read_sync(1, lba, buf.slice(0..4096).unwrap()).unwrap();
        buf.as_slice()[..4096].to_vec()
    }

    #[test]
    fn write_zeroes_and_deallocate_read_back_zeroes() {
        let (_c, mut qp, mut buf) = setup();
        buf.as_mut_slice().fill(0x5a);
        for lba in [0, 8, 16] {
            qp.write_sync(1, lba, buf.slice(0..4096).unwrap()).unwrap();
        }
        let opts = WriteZeroesOptions {
            deallocate: true,
            force_unit_access: true,
            limited_retry: false,
        };
        qp.write_zeroes_sync(1, 2, 4, opts).unwrap();
        let b = read(&mut qp, &mut buf, 0);
        assert!(b[..1024].iter().all(|&x| x == 0x5a));
        assert!(b[1024..3072].iter().all(|&x| x == 0));
        assert!(b[3072..].iter().all(|&x| x == 0x5a));
        let ranges = [
            DsmRange {
                attributes: 0,
                blocks: 1,
                slba: 8,
            },
            DsmRange {
                attributes: 0,
                blocks: 2,
                slba: 20,
            },
        ];
        let ad = DsmAttributes {
            deallocate: true,
            ..Default::default()
        };
        qp.dataset_management_sync(1, &ranges, ad).unwrap();
        let b = read(&mut qp, &mut buf, 8);
        assert!(b[..512].iter().all(|&x| x == 0) && b[512..].iter().all(|&x| x == 0x5a));
        let b = read(&mut qp, &mut buf, 16);
        assert!(b[..2048].iter().all(|&x| x == 0x5a));
        assert!(b[2048..3072].iter().all(|&x| x == 0));
        // Without AD the attributes are hints: nothing changes.
        qp.dataset_management_sync(1, &ranges[..1], DsmAttributes::from_cdw11(3))
            .unwrap();
        qp.flush_sync(1).unwrap();
    }

    #[test]
    fn out_of_range_and_bad_counts_are_refused_before_sending() {
        let (c, mut qp, _buf) = setup();
        let before = c.sim().map(|s| s.stats().write_zeroes);
        let e = qp
            .write_zeroes_sync(1, 2047, 2, WriteZeroesOptions::default())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "LBA range 2047..2049 is out of range for namespace 1 (2048 blocks)"
        );
        assert_eq!(c.sim().map(|s| s.stats().write_zeroes), before);
        let r = |slba, blocks| DsmRange {
            attributes: 0,
            blocks,
            slba,
        };
        let e = qp
            .dataset_management_sync(1, &[r(0, 1), r(2040, 9)], DsmAttributes::default())
            .unwrap_err();
        assert!(e.to_string().contains("2040..2049 is out of range"), "{e}");
        let e = qp
            .dataset_management_sync(1, &[r(5, 0)], DsmAttributes::default())
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("range 0 (starting LBA 5) has 0 blocks"),
            "{e}"
        );
        let e = qp
            .dataset_management_sync(1, &[], DsmAttributes::default())
            .unwrap_err();
        assert!(e.to_string().contains("give 1 to 256"), "{e}");
        assert!(matches!(qp.flush_sync(2), Err(Error::NoSuchNamespace(2))));
        let e = qp
            .passthru_sync(
                Command(nvme_regs::SubmissionEntry {
                    flags: 0x40,
                    ..Command::flush(1).0
                }),
                None,
                SYNC_COMMAND_TIMEOUT,
            )
            .unwrap_err();
        assert!(e.to_string().contains("give flags 0"), "{e}");
    }

    #[test]
    fn passthru_returns_the_status_of_any_command() {
        let (_c, mut qp, mut buf) = setup();
        buf.as_mut_slice().fill(0x33);
        let w = Command::write(1, 4, 2);
        qp.passthru_sync(w, Some(buf.slice(0..1024).unwrap()), SYNC_COMMAND_TIMEOUT)
            .unwrap();
        // Compare: equal, then a mismatch (Compare Failure, 02h/85h).
        let cmp = Command::compare(1, 4, 2);
        qp.passthru_sync(cmp, Some(buf.slice(0..1024).unwrap()), SYNC_COMMAND_TIMEOUT)
            .unwrap();
        buf.as_mut_slice()[700] = 0;
        let e = qp
            .passthru_sync(cmp, Some(buf.slice(0..1024).unwrap()), SYNC_COMMAND_TIMEOUT)
            .unwrap_err();
        let st = e.status().expect("an NVMe status");
        assert!(
            st.is_media(nvme_regs::status::MediaErrorStatus::CompareFailure),
            "{e}"
        );
        // An unknown opcode: the controller's Invalid Opcode.
        let e = qp
            .passthru_sync(Command::new(0x7e, 1), None, SYNC_COMMAND_TIMEOUT)
            .unwrap_err();
        assert!(e.to_string().contains("Invalid Command Opcode"), "{e}");
    }
}
