//! Independent read-back: after the suite wrote a pattern through our driver and the
//! controller was rebound to the kernel's nvme driver, read the same blocks from the kernel's
//! block devices with plain file I/O and compare.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nvme_host_linux::PciAddress;

use nvme_host_linux::testkit::pattern;

/// One manifest line: `nsid lba blocks block_size seed fnv`.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    nsid: u32,
    lba: u64,
    blocks: u64,
    bs: u64,
    seed: u64,
    sum: u64,
}

pub fn parse_manifest(text: &str) -> Result<Vec<Entry>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let bad = || format!("bad manifest line '{l}'");
            if f.len() != 6 {
                return Err(bad());
            }
            Ok(Entry {
                nsid: f[0].parse().map_err(|_| bad())?,
                lba: f[1].parse().map_err(|_| bad())?,
                blocks: f[2].parse().map_err(|_| bad())?,
                bs: f[3].parse().map_err(|_| bad())?,
                seed: f[4].parse().map_err(|_| bad())?,
                sum: u64::from_str_radix(f[5], 16).map_err(|_| bad())?,
            })
        })
        .collect()
}

/// The PCI addresses of the controllers behind the block device at `/sys/block/<disk>`:
/// its controller's, or, for the multipath head of a namespace in an NVM subsystem (whose
/// `device` is the subsystem), those of the subsystem's controllers (`device/nvmeN`).
fn controller_addresses(disk: &std::path::Path) -> Vec<String> {
    let dev = disk.join("device");
    if let Ok(a) = fs::read_to_string(dev.join("address")) {
        return vec![a.trim().to_string()];
    }
    fs::read_dir(&dev)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|c| c.file_name().to_string_lossy().starts_with("nvme"))
        .filter_map(|c| fs::read_to_string(c.path().join("address")).ok())
        .map(|a| a.trim().to_string())
        .collect()
}

/// The kernel block device of namespace `nsid` (of controller `addr`, when given).
fn block_device(nsid: u32, addr: Option<&PciAddress>) -> Option<PathBuf> {
    for e in fs::read_dir("/sys/block").ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("nvme") {
            continue;
        }
        let id = fs::read_to_string(e.path().join("nsid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if id != Some(nsid) {
            continue;
        }
        if let Some(a) = addr {
            if !controller_addresses(&e.path()).contains(&a.to_string()) {
                continue;
            }
        }
        return Some(PathBuf::from("/dev").join(name));
    }
    None
}

/// Runs the read-back; prints one line per manifest entry and a summary.
pub fn run(manifest: &str, addr: Option<&PciAddress>) -> bool {
    check_all(manifest, |e| {
        // udev is absent: devtmpfs creates the node once the kernel has scanned the namespace.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(d) = block_device(e.nsid, addr).filter(|d| d.exists()) {
                return Ok(d);
            }
            if Instant::now() > deadline {
                return Err(format!("no kernel block device for namespace {} after 20 s (is the nvme driver bound?)", e.nsid));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// The read-back from `file`, the backing file of the namespace(s) the manifest names on
/// an NVMe over Fabrics target (the kernel's nvmet wrote it).
pub fn run_file(manifest: &str, file: &str) -> bool {
    check_all(manifest, |_| Ok(PathBuf::from(file)))
}

/// Checks every entry of `manifest` in the file or device `source` gives for it.
fn check_all(manifest: &str, source: impl Fn(&Entry) -> Result<PathBuf, String>) -> bool {
    let start = Instant::now();
    let entries = match fs::read_to_string(manifest)
        .map_err(|e| format!("reading {manifest}: {e}"))
        .and_then(|t| parse_manifest(&t))
    {
        Ok(e) => e,
        Err(e) => {
            println!("FAIL kernel-readback: {e}");
            println!("HWTEST VERIFY passed=0 failed=1");
            return false;
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for e in &entries {
        let name = format!("kernel-readback-ns{}-lba{}", e.nsid, e.lba);
        let t = Instant::now();
        let r = (|| -> Result<String, String> {
            let dev = source(e)?;
            let mut f =
                fs::File::open(&dev).map_err(|x| format!("opening {}: {x}", dev.display()))?;
            let mut buf = vec![0u8; (e.blocks * e.bs) as usize];
            f.seek(SeekFrom::Start(e.lba * e.bs))
                .and_then(|_| f.read_exact(&mut buf))
                .map_err(|x| format!("reading {}: {x}", dev.display()))?;
            pattern::check(e.seed, e.lba, e.bs as usize, &buf)
                .map_err(|x| format!("{}: {x}", dev.display()))?;
            let sum = pattern::checksum(&buf);
            if sum != e.sum {
                return Err(format!(
                    "{}: checksum {sum:016x}, manifest says {:016x}",
                    dev.display(),
                    e.sum
                ));
            }
            Ok(format!(
                "{} blocks at LBA {} of {} match (fnv {sum:016x})",
                e.blocks,
                e.lba,
                dev.display()
            ))
        })();
        match r {
            Ok(m) => {
                passed += 1;
                println!("PASS {name} ({} ms): {m}", t.elapsed().as_millis());
            }
            Err(m) => {
                failed += 1;
                println!("FAIL {name}: {m}");
            }
        }
    }
    if entries.is_empty() {
        failed += 1;
        println!("FAIL kernel-readback: the manifest {manifest} is empty");
    }
    println!(
        "HWTEST VERIFY passed={passed} failed={failed} time_ms={}",
        start.elapsed().as_millis()
    );
    failed == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trip() {
        let m = parse_manifest("1 0 1 512 99 00000000000000ff\n\n2 10 3 4096 7 abc\n").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[0],
            Entry {
                nsid: 1,
                lba: 0,
                blocks: 1,
                bs: 512,
                seed: 99,
                sum: 0xff
            }
        );
        assert!(parse_manifest("1 2 3")
            .unwrap_err()
            .contains("bad manifest line"));
    }
}
