//! Links the check binary without the C runtime or libc: if nvme-core or nvme-regs needed
//! std (and so libc), the link would fail too.

fn main() {
    for arg in ["-nostartfiles", "-nostdlib", "-static"] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
