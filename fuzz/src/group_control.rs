//! The group control file and admin segment reader, from arbitrary bytes.
//!
//! Input: a flags byte (bit 0: stamp this build's identity over the control bytes, so that
//! the checks behind magic, version and build id are reached), the admin segment file's
//! length (32 bits), the control file's bytes (length: 16 bits, then the bytes; lengths
//! past the input are kept, the missing bytes being zeros, so the file-size checks see
//! every size) and the admin segment's bytes (the rest). `nvme_host_linux::group::fuzzing::
//! join_checks` runs the checks a joining process does (`check_control`, `admin_layout`)
//! and, when they pass, builds, joins and polls the shared admin queue over them. It must
//! return an error, never panic.

use nvme_host_linux::group::fuzzing::join_checks;

use crate::input::Input;

/// Size of this build's control file: the header (192536 bytes, layout 5) rounded up to
/// the page size; the checks want exactly this many bytes.
const HEADER: usize = 196608;

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let admin_file_len = u64::from(input.u32());
    // Bit 1: a control file of exactly the header's size (the common case of a real file).
    let len = if flags & 2 != 0 {
        HEADER
    } else {
        usize::from(input.u16()) * if flags & 4 != 0 { 4 } else { 1 }
    };
    let given = input.bytes(len);
    let mut control = given.to_vec();
    control.resize(len, 0);
    let admin = input.rest();
    let r = join_checks(&control, flags & 1 != 0, admin, admin_file_len);
    if let Err(e) = r {
        assert!(!e.to_string().is_empty());
    }
}
