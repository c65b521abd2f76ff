use super::*;
use core::cell::{Cell, RefCell};
use std::vec::Vec;

/// A register model: RDY follows EN after `delay` reads of CSTS; CFS can be raised.
struct FakeRegs {
    cap: Cap,
    cc: Cell<u32>,
    rdy: Cell<bool>,
    cfs: Cell<bool>,
    follow_in: Cell<u32>,
    delay: u32,
    never_ready: bool,
    writes: RefCell<Vec<(usize, u32)>>,
}

impl FakeRegs {
    fn new(delay: u32) -> FakeRegs {
        FakeRegs {
            cap: Cap::new(1023, true, 2, 0, false, CAP_CSS_NVM, 0, 4),
            cc: Cell::new(0),
            rdy: Cell::new(false),
            cfs: Cell::new(false),
            follow_in: Cell::new(0),
            delay,
            never_ready: false,
            writes: RefCell::new(Vec::new()),
        }
    }
}

impl RegisterAccess for FakeRegs {
    fn read32(&self, off: usize) -> u32 {
        match off {
            offset::CAP => self.cap.0 as u32,
            0x04 => (self.cap.0 >> 32) as u32,
            offset::VS => Vs::V1_4.0,
            offset::CC => self.cc.get(),
            offset::CSTS => {
                let en = Cc(self.cc.get()).en();
                if self.rdy.get() != en && !(en && self.never_ready) {
                    if self.follow_in.get() == 0 {
                        self.rdy.set(en);
                    } else {
                        self.follow_in.set(self.follow_in.get() - 1);
                    }
                }
                self.rdy.get() as u32 | (self.cfs.get() as u32) << 1
            }
            _ => 0,
        }
    }
    fn write32(&self, off: usize, v: u32) {
        self.writes.borrow_mut().push((off, v));
        if off == offset::CC {
            self.cc.set(v);
            self.follow_in.set(self.delay);
        }
    }
}

struct AdminMem(DmaRegion);

impl AdminMem {
    fn new() -> AdminMem {
        AdminMem(crate::dma::test_memory(4, 0x1000_0000))
    }
    fn region(&self, page: usize) -> DmaRegion {
        self.0.sub(page * 4096, 4096).expect("one of 4 pages")
    }
}

type Admin<'a> = QueuePair<crate::PciRings<&'a FakeRegs>, u8, Vec<Slot<u8>>>;

fn admin<'a>(init: &ControllerInit, regs: &'a FakeRegs, mem: &AdminMem) -> Admin<'a> {
    let cfg = init.admin_queue_config(mem.region(0), mem.region(1), mem.region(2), 4096);
    QueuePair::new(cfg, regs, (0..63).map(|_| Slot::EMPTY).collect()).unwrap()
}

const MS: u64 = 1_000_000;

fn err(p: Poll<Result<ControllerInfo, InitError>>) -> InitError {
    match p {
        Poll::Ready(Err(e)) => e,
        Poll::Ready(Ok(_)) => panic!("bring-up succeeded"),
        Poll::Pending => panic!("bring-up still pending"),
    }
}

#[test]
fn enables_with_the_right_registers_and_reaches_identify() {
    let regs = FakeRegs::new(3);
    let mem = AdminMem::new();
    let mut init = ControllerInit::new(&regs, InitOptions::default()).unwrap();
    let mut admin = admin(&init, &regs, &mem);
    let data = mem.region(3);
    let mut now = 0;
    while init.step() != InitStep::Identifying {
        assert!(init.poll(&regs, &mut admin, &data, now).is_pending());
        now += MS;
    }
    let w = regs.writes.borrow();
    assert_eq!(w[0], (offset::AQA, 0x003f_003f));
    assert_eq!(w[1], (offset::ASQ, 0x1000_0000));
    assert_eq!(w[2], (offset::ASQ + 4, 0));
    assert_eq!(w[3], (offset::ACQ, 0x1000_1000));
    let cc = Cc(w[5].1);
    assert_eq!(w[5].0, offset::CC);
    assert!(cc.en());
    assert_eq!((cc.css(), cc.mps(), cc.iosqes(), cc.iocqes()), (0, 0, 6, 4));
    // The identify command was submitted and the doorbell rung.
    assert_eq!(w.last(), Some(&(0x1000, 1)));
}

#[test]
fn disables_an_enabled_controller_first() {
    let regs = FakeRegs::new(2);
    regs.cc.set(Cc(0).with_en(true).0);
    regs.rdy.set(true);
    let mem = AdminMem::new();
    let mut init = ControllerInit::new(&regs, InitOptions::default()).unwrap();
    let mut admin = admin(&init, &regs, &mem);
    let data = mem.region(3);
    assert!(init.poll(&regs, &mut admin, &data, 0).is_pending());
    assert_eq!(regs.writes.borrow()[0], (offset::CC, 0));
    assert_eq!(init.step(), InitStep::Disabling);
    for t in 1..10 {
        let _ = init.poll(&regs, &mut admin, &data, t * MS);
    }
    assert_eq!(init.step(), InitStep::Identifying);
}

#[test]
fn ready_timeout_is_bounded_by_cap_to() {
    let mut regs = FakeRegs::new(0);
    regs.never_ready = true;
    let mem = AdminMem::new();
    let mut init = ControllerInit::new(&regs, InitOptions::default()).unwrap();
    let mut admin = admin(&init, &regs, &mem);
    let data = mem.region(3);
    assert!(init.poll(&regs, &mut admin, &data, 0).is_pending());
    // CAP.TO = 2 (1000 ms): still waiting just before, failed just after.
    assert!(init.poll(&regs, &mut admin, &data, 999 * MS).is_pending());
    let r = init.poll(&regs, &mut admin, &data, 1000 * MS);
    assert_eq!(
        err(r),
        InitError::ReadyTimeout {
            ready: true,
            timeout_ms: 1000
        }
    );
    assert_eq!(init.step(), InitStep::Failed);
    assert!(std::format!(
        "{}",
        InitError::ReadyTimeout {
            ready: true,
            timeout_ms: 1000
        }
    )
    .contains("CAP.TO"));
}

#[test]
fn fatal_status_while_enabling_is_an_error() {
    let mut regs = FakeRegs::new(0);
    regs.never_ready = true;
    let mem = AdminMem::new();
    let mut init = ControllerInit::new(&regs, InitOptions::default()).unwrap();
    let mut admin = admin(&init, &regs, &mem);
    let data = mem.region(3);
    assert!(init.poll(&regs, &mut admin, &data, 0).is_pending());
    regs.cfs.set(true);
    assert_eq!(
        err(init.poll(&regs, &mut admin, &data, MS)),
        InitError::Fatal
    );
}

#[test]
fn admin_command_timeout() {
    let regs = FakeRegs::new(0);
    let mem = AdminMem::new();
    let opts = InitOptions {
        admin_timeout_ms: 50,
        ..Default::default()
    };
    let mut init = ControllerInit::new(&regs, opts).unwrap();
    let mut admin = admin(&init, &regs, &mem);
    let data = mem.region(3);
    assert!(init.poll(&regs, &mut admin, &data, 0).is_pending());
    assert!(init.poll(&regs, &mut admin, &data, MS).is_pending());
    assert_eq!(
        err(init.poll(&regs, &mut admin, &data, 60 * MS)),
        InitError::CommandTimeout {
            what: "Identify Controller"
        }
    );
}

#[test]
fn rejects_bad_options_and_missing_devices() {
    let regs = FakeRegs::new(0);
    let bad = InitOptions {
        page_size: Some(128 << 10),
        ..Default::default()
    };
    assert_eq!(
        ControllerInit::new(&regs, bad).err(),
        Some(InitError::PageSize {
            requested: 128 << 10,
            min: 4096,
            max: 65536
        })
    );
    let bad = InitOptions {
        admin_entries: 1,
        ..Default::default()
    };
    assert!(matches!(
        ControllerInit::new(&regs, bad),
        Err(InitError::Queue(_))
    ));
    let mut gone = FakeRegs::new(0);
    gone.cap = Cap(u64::MAX);
    assert_eq!(
        ControllerInit::new(&gone, InitOptions::default()).err(),
        Some(InitError::DeviceGone)
    );
    let mut admin_only = FakeRegs::new(0);
    admin_only.cap = Cap::new(1023, true, 2, 0, false, 0x80, 0, 4);
    assert!(matches!(
        ControllerInit::new(&admin_only, InitOptions::default()),
        Err(InitError::NoNvmCommandSet(_))
    ));
}

#[test]
fn async_event_config_asks_for_the_notices_the_controller_offers() {
    assert_eq!(async_event_config(0), 0xff);
    assert_eq!(async_event_config(1 << 8), 0x1ff);
    assert_eq!(async_event_config(1 << 8 | 1 << 9 | 1 << 11), 0x3ff);
}
