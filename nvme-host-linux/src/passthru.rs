//! Admin passthru: any admin command as built, except those that would break what the
//! driver owns for every process of the group (the I/O queues, the Asynchronous Event
//! Requests, the shadow doorbells, the commands of other processes).

use nvme_core::{Command, Completion};
use nvme_regs::features::fid;
use nvme_regs::opcode::AdminOpcode;

use crate::controller::Controller;
use crate::dma::IoBuf;
use crate::error::{Error, Result};

/// Why the driver refuses to pass `cmd` through to the admin queue, or `None` when it
/// lets it through. The reasons name what the command would break.
pub fn admin_passthru_refusal(cmd: &Command) -> Option<String> {
    let op = cmd.opcode();
    let why = match AdminOpcode::from_u8(op) {
        Some(
            AdminOpcode::CreateIoSq
            | AdminOpcode::CreateIoCq
            | AdminOpcode::DeleteIoSq
            | AdminOpcode::DeleteIoCq,
        ) => "the driver owns the I/O queues: every process creates and deletes its own (IoQueuePair) with queue ids from the group's pool, and one created or deleted behind its back would take a queue from under a running process",
        Some(AdminOpcode::Abort) => {
            "Abort names a command by its submission queue and command id: those of other processes of the group, which must not be aborted behind their backs; the driver aborts its own timed-out commands"
        }
        Some(AdminOpcode::AsyncEventRequest) => {
            "the driver keeps the Asynchronous Event Requests outstanding and hands each event to every process of the group; a passthru one would complete only when an event comes, taking that event from them"
        }
        Some(AdminOpcode::DoorbellBufferConfig) => {
            "the driver configures the shadow doorbell buffers at bring-up; new ones would leave every I/O queue of the group ringing doorbells the controller no longer reads"
        }
        Some(AdminOpcode::SetFeatures) if cmd.0.cdw10 & 0xff == fid::NUMBER_OF_QUEUES as u32 => {
            "the number of I/O queues was negotiated at bring-up and the group's queue id pool is sized by it; the controller accepts it only before creating queues"
        }
        _ => {
            if cmd.0.flags != 0 {
                return Some(format!(
                    "admin passthru of opcode {op:#04x}: flags {:#04x} ask for a fused operation or SGLs; the driver builds the data pointer (PRPs) and sends no fused commands: give flags 0",
                    cmd.0.flags
                ));
            }
            return None;
        }
    };
    Some(format!("admin passthru of opcode {op:#04x} refused: {why}"))
}

impl Controller {
    /// Sends any admin command as built (admin passthru), with an optional data range (at
    /// most the maximum transfer size), through the shared admin queue, and returns its
    /// completion (dword 0 is the command's result). A failing status is an
    /// [`Error::Nvme`].
    ///
    /// Refused before anything is sent ([`Error::Invalid`], naming why): commands that
    /// would break what the driver owns for the whole group (see
    /// [`admin_passthru_refusal`]: I/O queue creation and deletion, Abort, Asynchronous
    /// Event Request, Doorbell Buffer Config, Set Features Number of Queues), fused
    /// operations and SGLs, and data larger than the controller's maximum transfer.
    pub fn admin_passthru(&self, cmd: Command, data: Option<IoBuf<'_>>) -> Result<Completion> {
        self.admin_passthru_timeout(cmd, data, None)
    }

    /// [`admin_passthru`](Self::admin_passthru) waiting up to `timeout` (the admin timeout
    /// when `None`) for a command known to take long (a Format NVM, a Sanitize); see
    /// [`admin_command_timeout`](Self::admin_command_timeout).
    pub fn admin_passthru_timeout(
        &self,
        cmd: Command,
        data: Option<IoBuf<'_>>,
        timeout: Option<std::time::Duration>,
    ) -> Result<Completion> {
        if let Some(why) = admin_passthru_refusal(&cmd) {
            return Err(Error::Invalid(why));
        }
        if let Some(d) = &data {
            if d.len() > self.max_transfer() {
                return Err(Error::Invalid(format!(
                    "admin passthru: {} bytes of data exceed the controller's maximum transfer of {} bytes (MDTS)",
                    d.len(),
                    self.max_transfer()
                )));
            }
        }
        match timeout {
            Some(t) => self.admin_command_timeout(cmd, data, t),
            None => self.admin_command(cmd, data),
        }
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use nvme_regs::identify::{cns, IDENTIFY_DATA_SIZE};

    #[test]
    fn identify_through_passthru_is_identify() {
        let c = Controller::attach("trtype:sim serial:PASS1").unwrap();
        let mut buf = c.alloc_dma(IDENTIFY_DATA_SIZE).unwrap();
        let done = c
            .admin_passthru(
                Command::identify(cns::CONTROLLER, 0, 0),
                Some((&mut buf).into()),
            )
            .unwrap();
        assert!(done.status.is_success());
        let direct = c.admin_read(Command::identify(cns::CONTROLLER, 0, 0), IDENTIFY_DATA_SIZE);
        assert_eq!(buf.as_slice(), &direct.unwrap()[..]);
    }

    #[test]
    fn commands_the_driver_owns_are_refused() {
        let c = Controller::attach("trtype:sim").unwrap();
        let _qp = c.alloc_io_queue(crate::QueueOptions::new(4)).unwrap();
        for (cmd, word) in [
            (Command::delete_io_sq(1), "owns the I/O queues"),
            (Command::create_io_cq(5, 4, 0), "owns the I/O queues"),
            (Command::abort(1, 0), "other processes"),
            (
                Command::async_event_request(),
                "Asynchronous Event Requests",
            ),
            (Command::doorbell_buffer_config(0, 0), "shadow doorbell"),
            (
                Command::set_features(fid::NUMBER_OF_QUEUES, 0, 0, false),
                "negotiated",
            ),
        ] {
            let e = c.admin_passthru(cmd, None).unwrap_err();
            let m = e.to_string();
            assert!(
                m.starts_with("admin passthru of opcode") && m.contains(word),
                "{m}"
            );
        }
        // Still there and usable: the queue was not deleted.
        assert_eq!(c.io_queues_in_use(), 1);
        c.admin_passthru(
            Command::set_features(fid::VOLATILE_WRITE_CACHE, 0, 1, false),
            None,
        )
        .unwrap();
        let mut big = c.alloc_dma(c.max_transfer() + 4096).unwrap();
        let e = c
            .admin_passthru(
                Command::identify(cns::CONTROLLER, 0, 0),
                Some((&mut big).into()),
            )
            .unwrap_err();
        assert!(e.to_string().contains("maximum transfer"), "{e}");
    }
}
