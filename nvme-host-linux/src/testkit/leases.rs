//! LBA range leases claimed by a child process ([`claim_leases`]): the child role of the
//! lease scenarios, against the software controller and in the VM.

use std::time::Duration;

use super::{say, stop_requested};
use crate::{Controller, Error, LeaseMode};

/// Parses a lease spec `nsid:start:count:mode` (`mode`: `exclusive` or `shared`).
pub fn lease_spec(spec: &str) -> Result<(u32, std::ops::Range<u64>, LeaseMode), String> {
    let p: Vec<&str> = spec.split(':').collect();
    let [nsid, start, count, mode] = p[..] else {
        return Err(format!("bad lease spec {spec}"));
    };
    let num = |s: &str| s.parse::<u64>().map_err(|e| format!("{spec}: {e}"));
    let start = num(start)?;
    Ok((num(nsid)? as u32, start..start + num(count)?, mode.parse()?))
}

/// Claims each lease of `specs` (space separated [`lease_spec`]s) in turn, reporting
/// `LEASED <spec>`, `CONFLICT <spec> <error>` or `FAILED <spec> <error>` for each, then
/// calls `then`, reports `DONE` and keeps what it got until told to stop.
pub fn claim_leases(ctrl: &Controller, specs: &str, then: impl FnOnce()) -> Result<(), String> {
    let mut kept = Vec::new();
    for spec in specs.split_whitespace() {
        let (nsid, lbas, mode) = lease_spec(spec)?;
        match ctrl.lease(nsid, lbas, mode) {
            Ok(l) => {
                say(format!("LEASED {spec}"));
                kept.push(l);
            }
            Err(e @ Error::LeaseConflict(_)) => say(format!("CONFLICT {spec} {e}")),
            Err(e) => say(format!("FAILED {spec} {e}")),
        }
    }
    then();
    say("DONE");
    while !stop_requested() {
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(kept);
    Ok(())
}
