//! A queue over one connection with one command in flight: the admin queue's engine. It
//! moves a command's data the way NVMe/TCP does (in the capsule, in C2HData PDUs, or in
//! H2CData PDUs answering R2Ts) and checks every offset and length the controller sends
//! against the command's buffer before using it.

use std::time::Instant;

use nvme_regs::entry::PSDT_SGL;
use nvme_regs::entry::{CompletionEntry, SubmissionEntry};
use nvme_regs::tcp::{in_capsule, transport_data_block, PduFlags};

use super::link::{Inbound, Link};
use super::TcpError;

/// A command's data.
pub enum Data<'a> {
    /// No data.
    None,
    /// Controller to host (Identify, Get Log Page, ...).
    ToHost(&'a mut [u8]),
    /// Host to controller.
    FromHost(&'a [u8]),
}

/// One queue (admin here), one command at a time.
pub struct SyncQueue {
    pub(crate) link: Link,
    next_cid: u16,
    /// In-capsule data this queue accepts (8 KiB on the admin queue).
    in_capsule: usize,
    /// When the last command completed (for the keep-alive diagnosis).
    pub(crate) last_completion: Instant,
    /// The first transport failure: the byte stream is out of step after it, so every
    /// later command fails at once naming it.
    failed: Option<String>,
}

impl SyncQueue {
    /// A queue over `link` accepting `in_capsule` bytes of in-capsule data.
    pub fn new(link: Link, in_capsule: usize) -> SyncQueue {
        SyncQueue {
            link,
            next_cid: 0,
            in_capsule,
            last_completion: Instant::now(),
            failed: None,
        }
    }

    /// Runs `sqe` with `data` and returns its completion (whatever its status). After a
    /// transport failure every call fails with [`TcpError::Failed`].
    pub fn execute(
        &mut self,
        sqe: SubmissionEntry,
        data: Data<'_>,
    ) -> Result<CompletionEntry, TcpError> {
        if let Some(first) = &self.failed {
            return Err(TcpError::Failed {
                peer: self.link.peer.clone(),
                first: first.clone(),
            });
        }
        let r = self.transfer(sqe, data);
        if let Err(e) = &r {
            self.failed = Some(e.to_string());
        }
        r
    }

    /// The first transport failure, if there was one.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Marks the queue failed with `why` (replacing a failure recorded before): every later
    /// command fails at once naming it.
    pub fn mark_failed(&mut self, why: String) {
        self.failed = Some(why);
    }

    fn transfer(
        &mut self,
        mut sqe: SubmissionEntry,
        mut data: Data<'_>,
    ) -> Result<CompletionEntry, TcpError> {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        sqe.cid = cid;
        sqe.set_psdt(PSDT_SGL);
        let (inline, len): (&[u8], usize) = match &data {
            Data::None => (&[], 0),
            Data::ToHost(b) => (&[], b.len()),
            Data::FromHost(b) if b.len() <= self.in_capsule => (b, b.len()),
            Data::FromHost(b) => (&[], b.len()),
        };
        let len32 = u32::try_from(len).map_err(|_| TcpError::Protocol {
            peer: self.link.peer.clone(),
            message: format!("a transfer of {len} bytes is too long"),
        })?;
        (sqe.prp1, sqe.prp2) = match (&data, inline.is_empty()) {
            (Data::None, _) => (0, 0),
            (Data::FromHost(_), false) => in_capsule(0, len32).to_dptr(),
            _ => transport_data_block(len32).to_dptr(),
        };
        self.link.send_command(&sqe, inline)?;
        let mut received = 0usize;
        loop {
            match self.link.recv("a response")? {
                Inbound::Response(cqe) => {
                    if cqe.cid != cid {
                        return Err(self.sequence(format!(
                            "response for command id {} while command {cid} is the only one outstanding",
                            cqe.cid
                        )));
                    }
                    self.last_completion = Instant::now();
                    return Ok(cqe);
                }
                Inbound::Data(d) => {
                    let Data::ToHost(buf) = &mut data else {
                        return Err(self.sequence(format!(
                            "C2HData for command {} that reads no data",
                            d.cccid
                        )));
                    };
                    let (off, n) = (d.datao as usize, d.datal as usize);
                    if d.cccid != cid {
                        return Err(self.sequence(format!(
                            "C2HData for command id {} while command {cid} is outstanding",
                            d.cccid
                        )));
                    }
                    if off != received || off + n > buf.len() {
                        return Err(self.sequence(format!(
                            "C2HData at offset {off} with {n} bytes: expected offset {received} within the command's {} bytes",
                            buf.len()
                        )));
                    }
                    self.link.recv_data(&mut buf[off..off + n])?;
                    received += n;
                    let flags = PduFlags::from_bits_retain(d.ch.flags);
                    if flags.contains(PduFlags::SUCCESS) {
                        if received != buf.len() {
                            return Err(self.sequence(format!(
                                "C2HData with SUCCESS after {received} of {} bytes",
                                buf.len()
                            )));
                        }
                        self.last_completion = Instant::now();
                        return Ok(CompletionEntry {
                            cid,
                            status: 0,
                            ..Default::default()
                        });
                    }
                }
                Inbound::R2t(r) => {
                    let Data::FromHost(buf) = &data else {
                        return Err(self
                            .sequence(format!("R2T for command {} that writes no data", r.cccid)));
                    };
                    if !inline.is_empty() {
                        return Err(self.sequence(
                            "R2T for a command whose data was sent in the capsule".into(),
                        ));
                    }
                    let (off, n) = (r.r2to as usize, r.r2tl as usize);
                    if r.cccid != cid || n == 0 || off + n > buf.len() {
                        return Err(self.sequence(format!(
                            "R2T for command id {} asking for {n} bytes at offset {off} (command {cid} writes {} bytes)",
                            r.cccid,
                            buf.len()
                        )));
                    }
                    let max = self.link.negotiated().max_h2c_data as usize;
                    let mut at = off;
                    while at < off + n {
                        let chunk = (off + n - at).min(max);
                        let last = at + chunk == off + n;
                        self.link
                            .send_h2c(cid, r.ttag, at as u32, &buf[at..at + chunk], last)?;
                        at += chunk;
                    }
                }
            }
        }
    }

    fn sequence(&mut self, message: String) -> TcpError {
        // PDU Sequence Error: tell the controller before the connection goes.
        self.link
            .send_term(nvme_regs::tcp::FatalErrorStatus::PduSequenceError as u16);
        TcpError::Protocol {
            peer: self.link.peer.clone(),
            message,
        }
    }
}
