//! Shadow doorbells (Doorbell Buffer Config, NVMe 1.4 5.7): the two pages the controller is
//! given, this process's own when it is alone, two pages of the group's admin segment in a
//! shared-memory group (so that every member's queues use them), and setting them up.

use std::sync::Arc;

use nvme_core::{Command, ControllerInfo, DmaRegion};

use crate::admin::Admin;
use crate::attach::AttachOptions;
use crate::dma::DmaMapping;
use crate::group::Group;
use crate::transport::Transport;

/// The environment variable that overrides [`AttachOptions::shadow_doorbells`] for the
/// process that attaches alone, or for the one that creates a group (the group's members
/// follow it): `1` on, `0` off.
pub(crate) const SHADOW_VAR: &str = "NVME_SHADOW_DOORBELLS";
/// The older way to turn them off (when they were on by default): set, it means off.
pub(crate) const NO_SHADOW_VAR: &str = "NVME_NO_SHADOW_DOORBELLS";

/// The shadow doorbell page and the EventIdx page (one controller page each) that the
/// controller was given with Doorbell Buffer Config. They stay mapped as long as this value
/// lives: the controller holds it, and every queue pair holds the controller.
pub(crate) struct ShadowPages {
    db: DmaRegion,
    ei: DmaRegion,
    owner: Owner,
}

/// What keeps the pages mapped.
enum Owner {
    /// A mapping of this process (attached alone).
    Own(Arc<DmaMapping>),
    /// The group's admin segment, mapped by every member for as long as it is a member.
    Group { _group: Arc<Group> },
}

impl ShadowPages {
    /// The shadow doorbell page.
    pub(crate) fn db(&self) -> &DmaRegion {
        &self.db
    }
    /// The EventIdx page.
    pub(crate) fn ei(&self) -> &DmaRegion {
        &self.ei
    }
    /// The mapping an admin command pointing at the pages must keep alive (past a timeout):
    /// this process's own; the group's admin segment lives as long as the group.
    pub(crate) fn mapping(&self) -> Option<Arc<DmaMapping>> {
        match &self.owner {
            Owner::Own(m) => Some(m.clone()),
            Owner::Group { .. } => None,
        }
    }
    /// Zeroes both pages (every queue starts at 0, and no EventIdx may be left from an
    /// earlier use) and returns the Doorbell Buffer Config command that gives them to the
    /// controller. Only while no queue of the controller uses them (at attach, or during a
    /// reset with the controller disabled).
    pub(crate) fn config_command(&self) -> Command {
        self.db.zero();
        self.ei.zero();
        Command::doorbell_buffer_config(self.db.iova(), self.ei.iova())
    }
    /// The pages of a group whose creator gave them to the controller (see
    /// [`Group::shadow_pages`]).
    pub(crate) fn of_group(group: &Arc<Group>, db: DmaRegion, ei: DmaRegion) -> ShadowPages {
        ShadowPages {
            db,
            ei,
            owner: Owner::Group {
                _group: group.clone(),
            },
        }
    }
}

/// Does the controller offer Doorbell Buffer Config, and are we asked to use it
/// ([`AttachOptions::shadow_doorbells`], or the environment's override)?
pub(crate) fn wanted(info: &ControllerInfo, opts: &AttachOptions) -> bool {
    use nvme_regs::identify::Oacs;
    info.identify.oacs().contains(Oacs::DOORBELL_BUFFER_CONFIG)
        && asked(
            opts.shadow_doorbells,
            std::env::var(SHADOW_VAR).ok().as_deref(),
            std::env::var_os(NO_SHADOW_VAR).is_some(),
        )
}

/// The choice: `NVME_NO_SHADOW_DOORBELLS` set means off, `NVME_SHADOW_DOORBELLS` `1` on and
/// `0` off, otherwise the option.
fn asked(option: bool, var: Option<&str>, no_var: bool) -> bool {
    if no_var {
        return false;
    }
    match var.map(str::trim) {
        Some("1") => true,
        Some("0") => false,
        _ => option,
    }
}

/// Gives the controller shadow doorbell buffers of this process's own when it offers them
/// and they are asked for (a process attached alone). A failure only means MMIO doorbells.
pub(crate) fn setup_own(
    transport: &Arc<dyn Transport>,
    info: &ControllerInfo,
    admin: &mut Admin,
    opts: &AttachOptions,
) -> Option<ShadowPages> {
    if !wanted(info, opts) {
        return None;
    }
    let ps = info.page_size;
    let mem = Arc::new(DmaMapping::new(transport, "nvme-dbbuf", 2 * ps).ok()?);
    let r = mem.region();
    let pages = ShadowPages {
        db: r.sub(0, ps)?,
        ei: r.sub(ps, ps)?,
        owner: Owner::Own(mem.clone()),
    };
    // The buffers are not a PRP, but the controller may use them once the command ran:
    // on a timeout they stay mapped like a data buffer.
    admin
        .execute(
            None,
            pages.config_command(),
            None,
            Some(mem),
            opts.admin_timeout,
        )
        .ok()?;
    Some(pages)
}

/// At group creation (join lock held, no other member yet): gives the controller the two
/// pages reserved in the group's admin segment when it offers Doorbell Buffer Config and
/// they are asked for, and records in the control segment that the
/// group uses them. A failure only means MMIO doorbells, for every member.
pub(crate) fn setup_group(
    group: &Arc<Group>,
    info: &ControllerInfo,
    admin: &mut Admin,
    opts: &AttachOptions,
) -> crate::error::Result<Option<ShadowPages>> {
    if !wanted(info, opts) {
        return Ok(None);
    }
    let (db, ei) = group.shadow_regions()?;
    let pages = ShadowPages::of_group(group, db, ei);
    if admin
        .execute(
            Some(group),
            pages.config_command(),
            None,
            None,
            opts.admin_timeout,
        )
        .is_err()
    {
        return Ok(None);
    }
    group.set_shadow_on();
    Ok(Some(pages))
}

#[cfg(test)]
mod tests {
    use super::asked;

    #[test]
    fn the_environment_overrides_the_option() {
        assert!(!asked(false, None, false), "off by default");
        assert!(asked(true, None, false));
        assert!(asked(false, Some("1"), false));
        assert!(!asked(true, Some("0"), false));
        assert!(asked(true, Some("yes"), false), "anything else: the option");
        assert!(
            !asked(true, Some("1"), true),
            "the older variable means off"
        );
    }
}
