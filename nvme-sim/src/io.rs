//! NVM command set I/O commands.

use nvme_regs::entry::{PSDT_PRP, PSDT_SGL};
use nvme_regs::opcode::NvmOpcode;
use nvme_regs::status::{GenericStatus as G, MediaErrorStatus};
use nvme_regs::{Status, SubmissionEntry};

use crate::ctrl::{Controller, Outcome};
use crate::dma::{copy_from_host, copy_to_host, read_host, resolve_prps, resolve_sgl};
use crate::stats::add;

fn invalid_ns() -> Status {
    Status::generic(G::InvalidNamespaceOrFormat).with_dnr()
}

fn lba_out_of_range() -> Status {
    Status::generic(G::LbaOutOfRange).with_dnr()
}

fn invalid_field() -> Status {
    Status::generic(G::InvalidField).with_dnr()
}

/// A checked block range of one namespace.
struct Range {
    ns: usize,
    slba: u64,
    nlb: u64,
    /// Byte offset in the namespace.
    offset: u64,
    /// Length in bytes.
    len: u64,
}

impl Controller {
    pub(crate) fn io(&mut self, cmd: &SubmissionEntry) -> Outcome {
        let psdt_ok = match cmd.psdt() {
            PSDT_PRP => true,
            // SGLs when Identify reports them (SGLS 01b); never SGL metadata (PSDT 10b).
            PSDT_SGL => self.cfg.sgl,
            _ => false,
        };
        if cmd.fuse() != 0 || !psdt_ok {
            // No fused operations.
            return invalid_field().into();
        }
        let Some(op) = NvmOpcode::from_u8(cmd.opcode) else {
            return Status::generic(G::InvalidOpcode).with_dnr().into();
        };
        let status = match op {
            NvmOpcode::Read => self.read(cmd),
            NvmOpcode::Write => self.write(cmd),
            NvmOpcode::Flush => self.flush(cmd),
            NvmOpcode::Compare => self.compare(cmd),
            NvmOpcode::WriteZeroes => self.write_zeroes(cmd),
            NvmOpcode::DatasetManagement => self.dataset_management(cmd),
            NvmOpcode::WriteUncorrectable => self.write_uncorrectable(cmd),
            NvmOpcode::Verify => self.verify(cmd),
        };
        status.into()
    }

    /// Checks NSID and LBA range of an LBA-addressed command (SLBA, NLB 0's based).
    #[inline]
    fn range(&self, cmd: &SubmissionEntry) -> Result<Range, Status> {
        let ns = cmd
            .nsid
            .checked_sub(1)
            .map(|i| i as usize)
            .filter(|&i| self.namespaces.get(i).is_some_and(|n| n.active()))
            .ok_or_else(invalid_ns)?;
        self.block_range(ns, cmd.slba(), cmd.nlb() as u64)
    }

    fn block_range(&self, ns: usize, slba: u64, nlb: u64) -> Result<Range, Status> {
        let n = &self.namespaces[ns];
        if slba.checked_add(nlb).is_none_or(|end| end > n.blocks()) {
            return Err(lba_out_of_range());
        }
        let bs = n.lba_size() as u64;
        Ok(Range {
            ns,
            slba,
            nlb,
            offset: slba * bs,
            len: nlb * bs,
        })
    }

    /// Range check, MDTS check and PRP resolution of a data transfer command.
    #[inline]
    fn data_command(&mut self, cmd: &SubmissionEntry) -> Result<Range, Status> {
        let r = self.range(cmd)?;
        if r.len > self.max_transfer as u64 {
            return Err(invalid_field());
        }
        self.resolve_data(cmd, r.len as usize)?;
        Ok(r)
    }

    /// The host memory of a command's `len`-byte transfer, from its PRPs or (PSDT 01b,
    /// checked in [`io`](Self::io)) its SGL, into `self.segs`.
    fn resolve_data(&mut self, cmd: &SubmissionEntry, len: usize) -> Result<(), Status> {
        if cmd.psdt() == PSDT_SGL {
            resolve_sgl(&mut self.dma, &mut self.segs, cmd.prp1, cmd.prp2, len)
        } else {
            resolve_prps(
                &mut self.dma,
                &mut self.segs,
                cmd.prp1,
                cmd.prp2,
                len,
                self.page_size,
            )
        }
    }

    fn uncorrectable_in(&self, r: &Range) -> bool {
        !self.uncorrectable.is_empty()
            && self
                .uncorrectable
                .range((r.ns as u32, r.slba)..(r.ns as u32, r.slba + r.nlb))
                .next()
                .is_some()
    }

    fn clear_uncorrectable(&mut self, r: &Range) {
        if self.uncorrectable.is_empty() {
            return;
        }
        let hit: Vec<_> = self
            .uncorrectable
            .range((r.ns as u32, r.slba)..(r.ns as u32, r.slba + r.nlb))
            .copied()
            .collect();
        for k in hit {
            self.uncorrectable.remove(&k);
        }
    }

    fn read(&mut self, cmd: &SubmissionEntry) -> Status {
        let r = match self.data_command(cmd) {
            Ok(r) => r,
            Err(s) => return s,
        };
        if self.uncorrectable_in(&r) {
            return Status::media(MediaErrorStatus::UnrecoveredReadError).with_dnr();
        }
        // The range is inside the namespace (checked by `range`).
        copy_to_host(&self.segs, self.namespaces[r.ns].map(), r.offset as usize);
        let st = &self.shared.stats;
        add(&st.reads, 1);
        add(&st.bytes_read, r.len);
        Status::SUCCESS
    }

    fn write(&mut self, cmd: &SubmissionEntry) -> Status {
        let r = match self.data_command(cmd) {
            Ok(r) => r,
            Err(s) => return s,
        };
        copy_from_host(&self.segs, self.namespaces[r.ns].map(), r.offset as usize);
        self.clear_uncorrectable(&r);
        let st = &self.shared.stats;
        add(&st.writes, 1);
        add(&st.bytes_written, r.len);
        Status::SUCCESS
    }

    fn compare(&mut self, cmd: &SubmissionEntry) -> Status {
        let r = match self.data_command(cmd) {
            Ok(r) => r,
            Err(s) => return s,
        };
        add(&self.shared.stats.compares, 1);
        if self.uncorrectable_in(&r) {
            return Status::media(MediaErrorStatus::UnrecoveredReadError).with_dnr();
        }
        let ns = &self.namespaces[r.ns];
        let mut pos = r.offset;
        let mut host = [0u8; 4096];
        let mut media = [0u8; 4096];
        for seg in &self.segs {
            let mut done = 0;
            while done < seg.len {
                let n = (seg.len - done).min(host.len());
                // The namespace range [pos, pos + n) is inside the namespace (checked).
                seg.map.read(seg.off + done, &mut host[..n]);
                ns.map().read(pos as usize, &mut media[..n]);
                if host[..n] != media[..n] {
                    return Status::media(MediaErrorStatus::CompareFailure).with_dnr();
                }
                done += n;
                pos += n as u64;
            }
        }
        Status::SUCCESS
    }

    fn flush(&mut self, cmd: &SubmissionEntry) -> Status {
        let active = |nsid: u32| {
            nsid.checked_sub(1)
                .and_then(|i| self.namespaces.get(i as usize))
                .is_some_and(|n| n.active())
        };
        if cmd.nsid != 0xffff_ffff && !active(cmd.nsid) {
            return invalid_ns();
        }
        add(&self.shared.stats.flushes, 1);
        Status::SUCCESS
    }

    fn write_zeroes(&mut self, cmd: &SubmissionEntry) -> Status {
        let r = match self.range(cmd) {
            Ok(r) => r,
            Err(s) => return s,
        };
        self.namespaces[r.ns].zero(r.offset, r.len);
        self.clear_uncorrectable(&r);
        add(&self.shared.stats.write_zeroes, 1);
        Status::SUCCESS
    }

    fn write_uncorrectable(&mut self, cmd: &SubmissionEntry) -> Status {
        let r = match self.range(cmd) {
            Ok(r) => r,
            Err(s) => return s,
        };
        for lba in r.slba..r.slba + r.nlb {
            self.uncorrectable.insert((r.ns as u32, lba));
        }
        Status::SUCCESS
    }

    fn verify(&mut self, cmd: &SubmissionEntry) -> Status {
        let r = match self.range(cmd) {
            Ok(r) => r,
            Err(s) => return s,
        };
        if self.uncorrectable_in(&r) {
            return Status::media(MediaErrorStatus::UnrecoveredReadError).with_dnr();
        }
        Status::SUCCESS
    }

    fn dataset_management(&mut self, cmd: &SubmissionEntry) -> Status {
        let Some(ns) = cmd
            .nsid
            .checked_sub(1)
            .map(|i| i as usize)
            .filter(|&i| self.namespaces.get(i).is_some_and(|n| n.active()))
        else {
            return invalid_ns();
        };
        add(&self.shared.stats.dataset_management, 1);
        let nr = (cmd.cdw10 & 0xff) as usize + 1;
        let deallocate = cmd.cdw11 & (1 << 2) != 0;
        let mut list = [0u8; 256 * 16];
        let bytes = nr * 16;
        if let Err(s) = self.resolve_data(cmd, bytes) {
            return s;
        }
        read_host(&self.segs, &mut list[..bytes]);
        if !deallocate {
            return Status::SUCCESS; // attributes are hints only
        }
        let range_of = |d: &[u8]| {
            let nlb = u32::from_le_bytes([d[4], d[5], d[6], d[7]]) as u64;
            let slba = u64::from_le_bytes([d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15]]);
            (slba, nlb)
        };
        // Validate every range before changing anything.
        for d in list[..bytes].chunks_exact(16) {
            let (slba, nlb) = range_of(d);
            if let Err(s) = self.block_range(ns, slba, nlb) {
                return s;
            }
        }
        for d in list[..bytes].chunks_exact(16) {
            let (slba, nlb) = range_of(d);
            if let Ok(r) = self.block_range(ns, slba, nlb) {
                if r.len > 0 {
                    self.namespaces[r.ns].zero(r.offset, r.len);
                    self.clear_uncorrectable(&r);
                }
            }
        }
        Status::SUCCESS
    }
}
