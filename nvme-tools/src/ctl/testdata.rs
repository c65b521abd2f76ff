//! Structures for the formatters' unit tests.
//!
//! This crate does not depend on zerocopy, so the structures cannot be built from bytes
//! here: one small software controller is attached once, its data copied, and every field a
//! test looks at is then set by hand.

use std::sync::OnceLock;

use nvme_host_linux::regs::identify::{IdentifyController, IdentifyNamespace};
use nvme_host_linux::regs::log::{FirmwareSlotLog, SmartLog};
use nvme_host_linux::Controller;

/// Copies of the driver's structures.
#[derive(Clone, Copy)]
pub struct Templates {
    pub ctrl: IdentifyController,
    pub ns: IdentifyNamespace,
    pub smart: SmartLog,
    pub firmware: FirmwareSlotLog,
}

/// The templates, with every public field a test reads reset to zero.
pub fn templates() -> Templates {
    static T: OnceLock<Templates> = OnceLock::new();
    *T.get_or_init(|| {
        let c = Controller::attach("trtype:sim size:1M").expect("software controller");
        let mut t = Templates {
            ctrl: c.identify_controller().unwrap(),
            ns: c.identify_namespace(1).unwrap(),
            smart: c.smart_log().unwrap(),
            firmware: c.firmware_log().unwrap(),
        };
        t.ctrl.sn = [b' '; 20];
        t.ctrl.ieee = [0; 3];
        t.ctrl.nvmeof = [0; 256];
        t.ns.nguid = [0; 16];
        t.ns.eui64 = [0; 8];
        t.smart.temp_sensor = [0; 8];
        t.smart.data_units_read = [0; 16];
        t.smart.power_cycles = [0; 16];
        t
    })
}
