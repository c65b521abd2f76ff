//! Controller bring-up as a state machine driven by the caller's clock.
//!
//! ```text
//! Start -> [disable: CC.EN=0, wait CSTS.RDY=0] -> program AQA/ASQ/ACQ -> CC.EN=1
//!       -> wait CSTS.RDY=1 -> Identify Controller -> Set Features (Number of Queues)
//!       -> Identify (active namespace list) -> Done
//! ```
//! Every wait is bounded by CAP.TO (register phases) or [`InitOptions::admin_timeout_ms`]
//! (admin commands). CSTS.CFS at any point is [`InitError::Fatal`].
//!
//! The caller owns the admin queue pair and a 4 KiB data buffer, calls
//! [`ControllerInit::poll`] until it returns `Ready`, and sleeps or spins in between as it
//! likes. The state machine never blocks.

use core::task::Poll;

use nvme_regs::features::{fid, NumberOfQueues};
use nvme_regs::identify::{cns, IdentifyController, NamespaceList, IDENTIFY_DATA_SIZE};
use nvme_regs::registers::{offset, Aqa, Cap, Cc, Csts, Vs, CAP_CSS_NVM};
use nvme_regs::Status;
use zerocopy::FromBytes;

use crate::cmd::Command;
use crate::dma::DmaRegion;
use crate::hal::RegisterAccess;
use crate::hal::RobustLock;
use crate::qpair::{Completion, QueueConfig, QueuePair, Slot};
use crate::queue::QueueError;
use crate::shared::{AdminSubmitError, SharedAdminQueue};

/// The admin queue the bring-up drives: the shared admin queue of a group (of one or more
/// processes), or a bare [`QueuePair`] with queue id 0.
pub trait AdminQueue {
    /// Ring entries, for AQA.
    fn entries(&self) -> u32;
    /// IOVA of the submission ring, for ASQ.
    fn sq_iova(&self) -> u64;
    /// IOVA of the completion ring, for ACQ.
    fn cq_iova(&self) -> u64;
    /// Submits one command (the bring-up has one outstanding at a time).
    fn submit_admin(
        &mut self,
        cmd: Command,
        data: Option<DmaRegion>,
    ) -> Result<(), AdminSubmitError>;
    /// The completion of the command submitted last, if it arrived.
    fn poll_admin(&mut self) -> Option<Completion>;
}

impl<R: RegisterAccess, T: Default, S: AsMut<[Slot<T>]>> AdminQueue
    for QueuePair<crate::PciRings<R>, T, S>
{
    fn entries(&self) -> u32 {
        QueuePair::entries(self)
    }
    fn sq_iova(&self) -> u64 {
        QueuePair::sq_iova(self)
    }
    fn cq_iova(&self) -> u64 {
        QueuePair::cq_iova(self)
    }
    fn submit_admin(
        &mut self,
        cmd: Command,
        data: Option<DmaRegion>,
    ) -> Result<(), AdminSubmitError> {
        Ok(self.submit(cmd, data, T::default())?)
    }
    fn poll_admin(&mut self) -> Option<Completion> {
        let mut result = None;
        self.poll(1, |_, c| result = Some(c));
        result
    }
}

/// The tag of the bring-up's commands on a shared admin queue.
const BRING_UP_TAG: u64 = u64::MAX;

impl<R: RegisterAccess, L: RobustLock> AdminQueue for SharedAdminQueue<'_, R, L> {
    fn entries(&self) -> u32 {
        SharedAdminQueue::entries(self)
    }
    fn sq_iova(&self) -> u64 {
        SharedAdminQueue::sq_iova(self)
    }
    fn cq_iova(&self) -> u64 {
        SharedAdminQueue::cq_iova(self)
    }
    fn submit_admin(
        &mut self,
        cmd: Command,
        data: Option<DmaRegion>,
    ) -> Result<(), AdminSubmitError> {
        self.submit(cmd, data, BRING_UP_TAG)
    }
    fn poll_admin(&mut self) -> Option<Completion> {
        let mut result = None;
        self.poll(true, |tag, c| {
            if tag == BRING_UP_TAG {
                result = Some(c);
            }
        });
        result
    }
}

/// Options of the bring-up.
#[derive(Clone, Copy, Debug)]
pub struct InitOptions {
    /// Admin queue entries (2..=4096).
    pub admin_entries: u32,
    /// I/O queues to ask for (submission and completion each).
    pub io_queues: u16,
    /// Memory page size in bytes; `None` = the controller's minimum, but at least 4096.
    pub page_size: Option<usize>,
    /// Bound on each admin command of the bring-up, in milliseconds.
    pub admin_timeout_ms: u32,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            admin_entries: 64,
            io_queues: 64,
            page_size: None,
            admin_timeout_ms: 10_000,
        }
    }
}

/// Why the bring-up failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// CSTS.RDY did not reach `ready` within CAP.TO.
    ReadyTimeout {
        /// The RDY value waited for.
        ready: bool,
        /// The bound that expired, in milliseconds.
        timeout_ms: u32,
    },
    /// The controller reports Controller Fatal Status (CSTS.CFS).
    Fatal,
    /// Registers read as all ones: the device is gone or its BAR is not mapped.
    DeviceGone,
    /// The controller does not support the NVM command set.
    NoNvmCommandSet(Cap),
    /// The requested memory page size is outside CAP.MPSMIN..=MPSMAX.
    PageSize {
        /// Requested size.
        requested: usize,
        /// Smallest the controller supports.
        min: usize,
        /// Largest the controller supports.
        max: usize,
    },
    /// The admin queue memory or size is unusable.
    Queue(QueueError),
    /// An admin command of the bring-up could not be submitted.
    Submit(AdminSubmitError),
    /// An admin command of the bring-up failed.
    Command {
        /// Which command.
        what: &'static str,
        /// The status it completed with.
        status: Status,
    },
    /// An admin command of the bring-up did not complete in time.
    CommandTimeout {
        /// Which command.
        what: &'static str,
    },
}

impl core::error::Error for InitError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            InitError::Queue(e) => Some(e),
            InitError::Submit(e) => Some(e),
            _ => None,
        }
    }
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InitError::ReadyTimeout { ready, timeout_ms } => write!(
                f,
                "controller did not {} within CAP.TO ({timeout_ms} ms): CSTS.RDY stayed {}; reset the device (unbind and rebind it, or a PCI reset) and make sure no other driver or process is using it",
                if *ready { "become ready" } else { "disable" },
                !*ready as u8
            ),
            InitError::Fatal => write!(
                f,
                "controller fatal status (CSTS.CFS=1): the controller needs a reset"
            ),
            InitError::DeviceGone => write!(
                f,
                "controller registers read as all ones: the device is gone or not mapped"
            ),
            InitError::NoNvmCommandSet(cap) => {
                write!(
                    f,
                    "controller does not support the NVM command set (CAP.CSS={:#x})",
                    cap.css()
                )
            }
            InitError::PageSize {
                requested,
                min,
                max,
            } => {
                write!(
                    f,
                    "memory page size {requested} is outside the controller's {min}..={max}"
                )
            }
            InitError::Queue(e) => write!(f, "admin queue: {e}"),
            InitError::Submit(e) => write!(f, "admin command: {e}"),
            InitError::Command { what, status } => write!(f, "{what} failed: {status}"),
            InitError::CommandTimeout { what } => write!(f, "{what} did not complete in time"),
        }
    }
}

/// What the bring-up learned.
#[derive(Clone, Copy, Debug)]
pub struct ControllerInfo {
    /// Controller capabilities.
    pub cap: Cap,
    /// Version register.
    pub vs: Vs,
    /// Memory page size in use.
    pub page_size: usize,
    /// Maximum data transfer size in bytes (MDTS; `usize::MAX` when unlimited).
    pub max_transfer: usize,
    /// I/O queues granted (submission, completion).
    pub io_queues: NumberOfQueues,
    /// Identify Controller data.
    pub identify: IdentifyController,
    /// Active namespace IDs (the first 1024).
    pub namespaces: NamespaceList,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Start,
    WaitReadyBeforeDisable {
        deadline: u64,
    },
    WaitNotReady {
        deadline: u64,
    },
    Enable,
    WaitReady {
        deadline: u64,
    },
    Command {
        step: Step,
        deadline: u64,
        submitted: bool,
    },
    Done,
    Failed(InitError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    IdentifyController,
    SetQueues,
    AsyncEvents,
    ActiveNamespaces,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::IdentifyController => "Identify Controller",
            Step::SetQueues => "Set Features (Number of Queues)",
            Step::AsyncEvents => "Set Features (Asynchronous Event Configuration)",
            Step::ActiveNamespaces => "Identify (Active Namespace List)",
        }
    }
}

/// Which stage the bring-up is in (for progress messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitStep {
    /// Disabling the controller.
    Disabling,
    /// Enabling the controller and waiting for it to become ready.
    Enabling,
    /// Sending the bring-up's admin commands.
    Identifying,
    /// Finished successfully.
    Done,
    /// Failed.
    Failed,
}

/// The bring-up state machine.
pub struct ControllerInit {
    opts: InitOptions,
    cap: Cap,
    page_size: usize,
    state: State,
    info: Option<ControllerInfo>,
    identify: Option<IdentifyController>,
    granted: Option<NumberOfQueues>,
}

const NS_PER_MS: u64 = 1_000_000;

impl ControllerInit {
    /// Reads CAP and checks the options against it.
    pub fn new<R: RegisterAccess>(
        regs: &R,
        opts: InitOptions,
    ) -> Result<ControllerInit, InitError> {
        let cap = Cap(regs.read64(offset::CAP));
        if cap.0 == u64::MAX {
            return Err(InitError::DeviceGone);
        }
        if cap.css() & CAP_CSS_NVM == 0 {
            return Err(InitError::NoNvmCommandSet(cap));
        }
        let (min, max) = (cap.min_page_size(), cap.max_page_size());
        let page_size = opts.page_size.unwrap_or(min.max(4096));
        if page_size < min || page_size > max || !page_size.is_power_of_two() {
            return Err(InitError::PageSize {
                requested: page_size,
                min,
                max,
            });
        }
        if !(2..=nvme_regs::registers::MAX_ADMIN_QUEUE_ENTRIES as u32).contains(&opts.admin_entries)
            || opts.admin_entries > cap.max_queue_entries()
        {
            return Err(InitError::Queue(QueueError::BadSize(opts.admin_entries)));
        }
        Ok(ControllerInit {
            opts,
            cap,
            page_size,
            state: State::Start,
            info: None,
            identify: None,
            granted: None,
        })
    }

    /// The controller's capabilities.
    pub fn cap(&self) -> Cap {
        self.cap
    }
    /// The memory page size the controller will be enabled with.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// The configuration for the admin queue pair (qid 0) over the given memory. The admin
    /// queue's maximum transfer is `max_transfer` until the controller's MDTS is known.
    pub fn admin_queue_config(
        &self,
        sq: DmaRegion,
        cq: DmaRegion,
        prp: DmaRegion,
        max_transfer: usize,
    ) -> QueueConfig {
        QueueConfig {
            qid: 0,
            entries: self.opts.admin_entries,
            dstrd: self.cap.dstrd(),
            page_size: self.page_size,
            max_transfer,
            sq,
            cq,
            prp,
        }
    }

    /// The stage the bring-up is in.
    pub fn step(&self) -> InitStep {
        match self.state {
            State::Start | State::WaitReadyBeforeDisable { .. } | State::WaitNotReady { .. } => {
                InitStep::Disabling
            }
            State::Enable | State::WaitReady { .. } => InitStep::Enabling,
            State::Command { .. } => InitStep::Identifying,
            State::Done => InitStep::Done,
            State::Failed(_) => InitStep::Failed,
        }
    }

    fn ready_timeout_ns(&self) -> u64 {
        (self.cap.timeout_ms().max(500)) as u64 * NS_PER_MS
    }

    fn fail(&mut self, e: InitError) -> Poll<Result<ControllerInfo, InitError>> {
        self.state = State::Failed(e);
        Poll::Ready(Err(e))
    }

    /// Advances the bring-up as far as it can without waiting. `data` is a 4096-byte DMA
    /// buffer for Identify data; `now_ns` is the caller's monotonic clock.
    pub fn poll<R: RegisterAccess, A: AdminQueue>(
        &mut self,
        regs: &R,
        admin: &mut A,
        data: &DmaRegion,
        now_ns: u64,
    ) -> Poll<Result<ControllerInfo, InitError>> {
        loop {
            let csts = Csts(regs.read32(offset::CSTS));
            if csts.is_all_ones() && !matches!(self.state, State::Done | State::Failed(_)) {
                return self.fail(InitError::DeviceGone);
            }
            match self.state {
                State::Done => return Poll::Ready(Ok(self.info.expect("info set when done"))),
                State::Failed(e) => return Poll::Ready(Err(e)),
                State::Start => {
                    let cc = Cc(regs.read32(offset::CC));
                    let deadline = now_ns + self.ready_timeout_ns();
                    self.state = match (cc.en(), csts.rdy()) {
                        // Enabling: let it finish before disabling (NVMe 1.4 3.5.1).
                        (true, false) => State::WaitReadyBeforeDisable { deadline },
                        (true, true) => {
                            regs.write32(offset::CC, cc.with_en(false).0);
                            State::WaitNotReady { deadline }
                        }
                        (false, true) => State::WaitNotReady { deadline },
                        (false, false) => State::Enable,
                    };
                }
                State::WaitReadyBeforeDisable { deadline } => {
                    if csts.cfs() {
                        // A fatal controller may never become ready; disabling resets it.
                        let cc = Cc(regs.read32(offset::CC));
                        regs.write32(offset::CC, cc.with_en(false).0);
                        self.state = State::WaitNotReady {
                            deadline: now_ns + self.ready_timeout_ns(),
                        };
                    } else if csts.rdy() {
                        let cc = Cc(regs.read32(offset::CC));
                        regs.write32(offset::CC, cc.with_en(false).0);
                        self.state = State::WaitNotReady {
                            deadline: now_ns + self.ready_timeout_ns(),
                        };
                    } else if now_ns >= deadline {
                        return self.fail(InitError::ReadyTimeout {
                            ready: true,
                            timeout_ms: self.cap.timeout_ms(),
                        });
                    } else {
                        return Poll::Pending;
                    }
                }
                State::WaitNotReady { deadline } => {
                    if !csts.rdy() {
                        self.state = State::Enable;
                    } else if now_ns >= deadline {
                        return self.fail(InitError::ReadyTimeout {
                            ready: false,
                            timeout_ms: self.cap.timeout_ms(),
                        });
                    } else {
                        return Poll::Pending;
                    }
                }
                State::Enable => {
                    let entries = admin.entries() as u16;
                    regs.write32(offset::AQA, Aqa::new(entries, entries).0);
                    regs.write64(offset::ASQ, admin.sq_iova());
                    regs.write64(offset::ACQ, admin.cq_iova());
                    let cc = Cc(0)
                        .with_css(0)
                        .with_mps((self.page_size.trailing_zeros() - 12) as u8)
                        .with_ams(0)
                        .with_iosqes(6)
                        .with_iocqes(4)
                        .with_en(true);
                    regs.write32(offset::CC, cc.0);
                    self.state = State::WaitReady {
                        deadline: now_ns + self.ready_timeout_ns(),
                    };
                }
                State::WaitReady { deadline } => {
                    if csts.cfs() {
                        return self.fail(InitError::Fatal);
                    }
                    if csts.rdy() {
                        self.state = State::Command {
                            step: Step::IdentifyController,
                            deadline: 0,
                            submitted: false,
                        };
                    } else if now_ns >= deadline {
                        return self.fail(InitError::ReadyTimeout {
                            ready: true,
                            timeout_ms: self.cap.timeout_ms(),
                        });
                    } else {
                        return Poll::Pending;
                    }
                }
                State::Command {
                    step,
                    deadline,
                    submitted,
                } => {
                    if csts.cfs() {
                        return self.fail(InitError::Fatal);
                    }
                    if !submitted {
                        let (cmd, buf) = match step {
                            Step::IdentifyController => {
                                (Command::identify(cns::CONTROLLER, 0, 0), Some(*data))
                            }
                            Step::SetQueues => {
                                let n = self.opts.io_queues.max(1);
                                (
                                    Command::set_number_of_queues(NumberOfQueues { sq: n, cq: n }),
                                    None,
                                )
                            }
                            Step::AsyncEvents => {
                                let oaes = self.identify.map_or(0, |id| id.oaes);
                                (
                                    Command::set_features(
                                        fid::ASYNC_EVENT_CONFIG,
                                        0,
                                        async_event_config(oaes),
                                        false,
                                    ),
                                    None,
                                )
                            }
                            Step::ActiveNamespaces => (
                                Command::identify(cns::ACTIVE_NAMESPACE_LIST, 0, 0),
                                Some(*data),
                            ),
                        };
                        // The controller does not use the buffer until we submit.
                        let buf = match buf.map(|b| (b.sub(0, IDENTIFY_DATA_SIZE), b.len())) {
                            None => None,
                            Some((Some(b), _)) => {
                                b.zero();
                                Some(b)
                            }
                            Some((None, given)) => {
                                return self.fail(InitError::Queue(QueueError::RegionTooSmall {
                                    needed: IDENTIFY_DATA_SIZE,
                                    given,
                                }));
                            }
                        };
                        if let Err(e) = admin.submit_admin(cmd, buf) {
                            return self.fail(InitError::Submit(e));
                        }
                        self.state = State::Command {
                            step,
                            deadline: now_ns + self.opts.admin_timeout_ms as u64 * NS_PER_MS,
                            submitted: true,
                        };
                        continue;
                    }
                    let Some(c) = admin.poll_admin() else {
                        if now_ns >= deadline {
                            return self.fail(InitError::CommandTimeout { what: step.name() });
                        }
                        return Poll::Pending;
                    };
                    // Which notices the controller sends is a preference: a controller that
                    // refuses the configuration still works (its defaults apply).
                    if !c.status.is_success() && step != Step::AsyncEvents {
                        return self.fail(InitError::Command {
                            what: step.name(),
                            status: c.status,
                        });
                    }
                    match step {
                        Step::IdentifyController => {
                            self.identify = Some(read_data::<IdentifyController>(data));
                            self.state = State::Command {
                                step: Step::SetQueues,
                                deadline: 0,
                                submitted: false,
                            };
                        }
                        Step::SetQueues => {
                            self.granted = Some(NumberOfQueues::from_dword(c.dw0));
                            self.state = State::Command {
                                step: Step::AsyncEvents,
                                deadline: 0,
                                submitted: false,
                            };
                        }
                        Step::AsyncEvents => {
                            self.state = State::Command {
                                step: Step::ActiveNamespaces,
                                deadline: 0,
                                submitted: false,
                            };
                        }
                        Step::ActiveNamespaces => {
                            let identify = self.identify.expect("identified");
                            let max_transfer = identify
                                .max_transfer_bytes(self.cap.min_page_size())
                                .unwrap_or(usize::MAX);
                            self.info = Some(ControllerInfo {
                                cap: self.cap,
                                vs: Vs(regs.read32(offset::VS)),
                                page_size: self.page_size,
                                max_transfer,
                                io_queues: self.granted.expect("queues negotiated"),
                                identify,
                                namespaces: read_data::<NamespaceList>(data),
                            });
                            self.state = State::Done;
                        }
                    }
                }
            }
        }
    }
}

/// The Asynchronous Event Configuration the driver asks for: every SMART / health critical
/// warning, and the notices the controller says it supports (OAES) among Namespace
/// Attribute (bit 8: the namespace list changed) and Firmware Activation (bit 9).
pub const fn async_event_config(oaes: u32) -> u32 {
    0xff | (oaes & (1 << 8 | 1 << 9))
}

/// Copies a 4 KiB structure out of a DMA buffer the controller has finished writing (its
/// completion was observed with acquire ordering).
fn read_data<D: FromBytes>(data: &DmaRegion) -> D {
    let mut bytes = [0u8; IDENTIFY_DATA_SIZE];
    // The region holds IDENTIFY_DATA_SIZE bytes (it was submitted with that length; a
    // shorter one was refused by `sub` and never submitted, leaving zeroes here).
    data.read_bytes(0, &mut bytes);
    D::read_from_prefix(&bytes).expect("4 KiB structure").0
}

#[cfg(test)]
mod tests;
