//! NVMe/TCP against Linux's in-kernel target (nvmet-tcp): discovery, the admin queue with
//! and without digests, Connect rejections (no such subsystem, host not allowed), keep-alive
//! kept and expired, and `nvmectl discover` / `id-ctrl` over TCP.
//!
//! `--tcp TRID` names the exported subsystem (`subnqn:` included); `--tcp6 TRID` the same
//! over IPv6; `--tcp-denied NQN` a subsystem on the same port that allows no host. Prints `PASS`/`FAIL` lines and
//! `HWTEST TCP SUMMARY passed=N failed=M`.

use std::time::{Duration, Instant};

use nvme_host_linux::regs::fabrics::{SubsystemType, DISCOVERY_NQN};
use nvme_host_linux::regs::features::{fid, FeatureSelect};
use nvme_host_linux::tcp::{self, TcpController, TcpControllerOptions, TcpError};
use nvme_host_linux::{Error, TcpOptions, TransportId, TransportKind};

type R = Result<(), String>;

/// The keep-alive timeout the keep-alive tests ask for (the kernel grants whole seconds).
const KATO_MS: u32 = 1000;
/// How long the keep-alive tests leave the admin queue without commands of their own:
/// the kernel target's timer expires between one and two KATOs after the last command.
const IDLE: Duration = Duration::from_millis(3500);

fn options(trid: &str) -> Result<TcpOptions, String> {
    match TransportId::parse(trid)?.kind {
        TransportKind::Tcp(o) => Ok(o),
        k => Err(format!(
            "--tcp {trid}: not a trtype:TCP transport id ({k:?})"
        )),
    }
}

fn check(cond: bool, what: impl FnOnce() -> String) -> R {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

fn discover(o: &TcpOptions) -> R {
    let mut d = o.clone();
    d.subnqn = None;
    let log = tcp::discover(&d, &TcpControllerOptions::default()).map_err(|e| e.to_string())?;
    let want = o.subnqn.as_deref().unwrap_or_default();
    let e = log
        .entries
        .iter()
        .find(|e| e.subnqn() == want)
        .ok_or_else(|| {
            let got: Vec<&str> = log.entries.iter().map(|e| e.subnqn()).collect();
            format!("{want} is not in the discovery log (entries: {got:?})")
        })?;
    check(e.subsystem_type() == Some(SubsystemType::Nvme), || {
        format!("subtype {} for {want}", e.subtype)
    })?;
    check(
        e.traddr() == o.addr.ip().to_string() && e.trsvcid() == o.addr.port().to_string(),
        || format!("entry address {}:{}", e.traddr(), e.trsvcid()),
    )?;
    println!(
        "  discovery log: generation {}, {} entries: {:?}",
        log.genctr,
        log.entries.len(),
        log.entries.iter().map(|e| e.subnqn()).collect::<Vec<_>>()
    );
    Ok(())
}

fn admin(o: &TcpOptions) -> R {
    let c =
        TcpController::connect(o, &TcpControllerOptions::default()).map_err(|e| e.to_string())?;
    let err = |what: &str| {
        let what = what.to_string();
        move |e: Error| format!("{what}: {e}")
    };
    let id = c
        .identify_controller()
        .map_err(err("Identify Controller"))?;
    let subnqn = nvme_host_linux::regs::identify::trim_ascii(&id.subnqn);
    check(Some(subnqn) == o.subnqn.as_deref(), || {
        format!("Identify SUBNQN '{subnqn}'")
    })?;
    check(id.cntlid == c.cntlid(), || {
        format!("Identify CNTLID {} vs Connect's {}", id.cntlid, c.cntlid())
    })?;
    check(
        c.version().major() >= 1 && c.csts().map_err(err("CSTS"))?.rdy(),
        || "not ready".into(),
    )?;
    let nsids = c.active_namespaces().map_err(err("active namespaces"))?;
    check(nsids.first() == Some(&1), || {
        format!("active namespaces {nsids:?}")
    })?;
    let ns = c
        .identify_namespace(1)
        .map_err(err("Identify Namespace 1"))?;
    check(ns.nsze > 0 && ns.block_size() >= 512, || {
        format!("namespace 1: {} blocks of {}", ns.nsze, ns.block_size())
    })?;
    let mut smart = [0u8; 512];
    c.get_log_page(0x02, u32::MAX, 0, &mut smart)
        .map_err(err("SMART log"))?;
    let kato = c
        .get_features(fid::KEEP_ALIVE_TIMER, FeatureSelect::Current, 0, 0)
        .map_err(err("Get Features KATO"))?;
    check(kato == c.kato_ms() && kato > 0, || {
        format!("KATO {kato} vs {}", c.kato_ms())
    })?;
    c.set_features(fid::KEEP_ALIVE_TIMER, 0, 10_000, false)
        .map_err(err("Set Features KATO"))?;
    let kato = c
        .get_features(fid::KEEP_ALIVE_TIMER, FeatureSelect::Current, 0, 0)
        .map_err(err("Get Features KATO"))?;
    check(kato == 10_000, || {
        format!("KATO after Set Features: {kato}")
    })?;
    c.keep_alive().map_err(err("Keep Alive"))?;
    println!(
        "  {} cntlid {} '{}' fw '{}', VS {}, {} namespace(s), ns 1: {} blocks of {} B",
        c.subnqn(),
        c.cntlid(),
        id.model(),
        id.firmware(),
        c.version(),
        nsids.len(),
        ns.nsze,
        ns.block_size()
    );
    Ok(())
}

fn digests(o: &TcpOptions) -> R {
    let mut d = o.clone();
    d.header_digest = true;
    d.data_digest = true;
    let c =
        TcpController::connect(&d, &TcpControllerOptions::default()).map_err(|e| e.to_string())?;
    let n = c.negotiated();
    check(n.header_digest && n.data_digest, || {
        format!("negotiated {n:?}")
    })?;
    let id = c.identify_controller().map_err(|e| e.to_string())?;
    let mut smart = [0u8; 512];
    c.get_log_page(0x02, u32::MAX, 0, &mut smart)
        .map_err(|e| e.to_string())?;
    println!(
        "  digests on: header and data CRC32C, CPDA alignment {} B, MAXH2CDATA {} B, model '{}'",
        n.data_alignment,
        n.max_h2c_data,
        id.model()
    );
    Ok(())
}

/// Discovery and the admin queue over IPv6.
fn ipv6(trid: &str) -> R {
    let o = options(trid)?;
    check(o.addr.is_ipv6(), || {
        format!("--tcp6 {trid}: not an IPv6 address")
    })?;
    discover(&o)?;
    admin(&o)
}

fn expect_error(r: nvme_host_linux::Result<TcpController>, text: &str) -> R {
    match r {
        Ok(_) => Err(format!("connected; expected an error saying '{text}'")),
        Err(e) if e.to_string().contains(text) => {
            println!("  {e}");
            Ok(())
        }
        Err(e) => Err(format!("the error does not say '{text}': {e}")),
    }
}

fn rejections(o: &TcpOptions, denied: &str) -> R {
    let opts = TcpControllerOptions::default();
    let mut bad = o.clone();
    bad.subnqn = Some("nqn.2014-08.org.example:no-such-subsystem".into());
    expect_error(TcpController::connect(&bad, &opts), "no such subsystem")?;
    let mut bad = o.clone();
    bad.subnqn = Some(denied.into());
    expect_error(
        TcpController::connect(&bad, &opts),
        "is not allowed to connect",
    )?;
    let mut bad = o.clone();
    bad.addr.set_port(o.addr.port().wrapping_add(1));
    expect_error(TcpController::connect(&bad, &opts), "connection refused")
}

/// Two associations side by side: one whose thread keeps it alive, one with no thread and
/// no commands, which the target must expire.
fn keep_alive(o: &TcpOptions) -> R {
    let opts = |thread: bool| TcpControllerOptions {
        kato_ms: KATO_MS,
        keep_alive_thread: thread,
        ..TcpControllerOptions::default()
    };
    let kept = TcpController::connect(o, &opts(true)).map_err(|e| e.to_string())?;
    let idle = TcpController::connect(o, &opts(false)).map_err(|e| e.to_string())?;
    check(
        kept.kato_ms() == KATO_MS && idle.kato_ms() == KATO_MS,
        || format!("granted KATO {} / {}", kept.kato_ms(), idle.kato_ms()),
    )?;
    let start = Instant::now();
    std::thread::sleep(IDLE);
    kept.identify_controller()
        .map_err(|e| format!("the association with keep-alives did not survive: {e}"))?;
    match idle.identify_controller() {
        Err(Error::Tcp(e @ TcpError::KeepAliveExpired { .. })) => {
            println!("  after {} ms idle: {e}", start.elapsed().as_millis());
            Ok(())
        }
        Err(e) => Err(format!("expected keep-alive expiry, got: {e}")),
        Ok(_) => Err(format!(
            "the target did not expire an association idle for {} ms with KATO {KATO_MS} ms",
            start.elapsed().as_millis()
        )),
    }
}

/// `nvmectl discover` and `nvmectl id-ctrl` over TCP, run from `tools`.
fn nvmectl(tools: &str, trid: &str, o: &TcpOptions) -> R {
    let run = |args: &[&str]| -> Result<String, String> {
        let out = std::process::Command::new(format!("{tools}/nvmectl"))
            .args(args)
            .output()
            .map_err(|e| format!("running {tools}/nvmectl: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!(
                "nvmectl {args:?}: {}{text}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(text)
    };
    let disc = format!(
        "trtype:TCP adrfam:IPv4 traddr:{} trsvcid:{}",
        o.addr.ip(),
        o.addr.port()
    );
    let out = run(&["discover", "-r", &disc])?;
    let want = format!("subnqn:  {}", o.subnqn.as_deref().unwrap_or_default());
    check(
        out.starts_with("\nDiscovery Log Number of Records ") && out.contains(&want),
        || format!("nvmectl discover printed:\n{out}"),
    )?;
    print!(
        "{}",
        out.lines().map(|l| format!("  {l}\n")).collect::<String>()
    );
    let out = run(&["id-ctrl", "-r", trid])?;
    check(out.starts_with("NVME Identify Controller:"), || {
        format!("nvmectl id-ctrl printed:\n{out}")
    })?;
    let out = run(&["id-ctrl", "-r", &disc])?;
    check(out.contains(DISCOVERY_NQN), || {
        format!("nvmectl id-ctrl of the discovery controller printed:\n{out}")
    })?;
    // The rest of nvmectl through the same Controller API as on PCIe (the null namespace:
    // writes are dropped); each must exit 0. Linux's target has no Compare.
    let runs: &[&[&str]] = &[
        &["list"],
        &["id-ns", "-n", "1", "-o", "json"],
        &["list-ns"],
        &["ns-descs", "-n", "1"],
        &["smart-log"],
        &["error-log"],
        &["fw-log"],
        &["get-log", "--log-id", "2", "-l", "512"],
        &["get-feature", "-f", "7"],
        crate::NVMECTL_IDENTIFY_PASSTHRU,
        &["read", "-n", "1", "-s", "8", "-c", "7", "-z", "4096"],
        &["flush", "-n", "1"],
        &["write-zeroes", "-n", "1", "-s", "0", "-c", "7"],
        &["dsm", "-n", "1", "--ad", "-s", "8", "-b", "8"],
        // One block (NLB 0) of the 512-byte null namespace: over fabrics the data length
        // must match the command's (Data SGL Length Invalid otherwise).
        &["io-passthru", "-o", "2", "-n", "1", "-l", "512", "--read"],
    ];
    for args in runs {
        let mut a = vec!["-r", trid];
        a.extend_from_slice(args);
        run(&a)?;
    }
    println!("  nvmectl over TCP: {} more subcommands", runs.len());
    Ok(())
}

/// The target goes away under a queue pair and comes back: Linux's nvmet drops the
/// subsystem from its port (`port_dir`, a configfs directory), which deletes the
/// association; I/O fails naming the failure, and once the subsystem is back the queue
/// pair reconnects by itself (a new association) and reads again.
fn target_away(trid: &str, o: &TcpOptions, port_dir: &str) -> R {
    let nqn = o.subnqn.as_deref().unwrap_or_default();
    let link = std::path::Path::new(port_dir).join("subsystems").join(nqn);
    // configfs takes a link to the subsystem's own directory (an absolute path).
    let target = std::fs::canonicalize(&link).map_err(|e| format!("{}: {e}", link.display()))?;
    let ctrl = nvme_host_linux::Controller::attach(trid).map_err(|e| e.to_string())?;
    let cntlid = ctrl.identify().cntlid;
    let mut q = ctrl
        .alloc_io_queue(nvme_host_linux::QueueOptions::new(16))
        .map_err(|e| e.to_string())?;
    let mut buf = ctrl.alloc_dma(4096).map_err(|e| e.to_string())?;
    q.read_sync(1, 0, buf.slice(0..512).map_err(|e| e.to_string())?)
        .map_err(|e| format!("read before: {e}"))?;
    std::fs::remove_file(&link).map_err(|e| format!("unlinking {}: {e}", link.display()))?;
    let gone = Instant::now();
    let failed = loop {
        let r = q.read_sync(1, 0, buf.slice(0..512).map_err(|e| e.to_string())?);
        match r {
            Err(e) => break e.to_string(),
            Ok(()) if gone.elapsed() > Duration::from_secs(10) => {
                let _ = std::os::unix::fs::symlink(&target, &link);
                return Err("reads still succeed 10 s after the subsystem left the port".into());
            }
            Ok(()) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    println!("  subsystem off the port: {failed}");
    std::thread::sleep(Duration::from_millis(300));
    std::os::unix::fs::symlink(&target, &link)
        .map_err(|e| format!("linking {} again: {e}", link.display()))?;
    let back = Instant::now();
    let mut last = String::new();
    while back.elapsed() < Duration::from_secs(8) {
        match q.read_sync(1, 0, buf.slice(0..512).map_err(|e| e.to_string())?) {
            Ok(()) => {
                let now = ctrl.identify_controller().map_err(|e| e.to_string())?;
                println!(
                    "  subsystem back: the queue pair reads again after {} ms (controller id {cntlid} -> {})",
                    back.elapsed().as_millis(),
                    now.cntlid
                );
                return Ok(());
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "the queue pair did not read again within 8 s of the subsystem's return; last: {last}"
    ))
}

/// Runs the NVMe/TCP checks; `true` when none failed.
pub fn run(
    trid: &str,
    trid6: Option<&str>,
    denied: Option<&str>,
    tools: Option<&str>,
    nvmet_port: Option<&str>,
) -> bool {
    let (mut passed, mut failed) = (0, 0);
    let mut test = |name: &str, f: &dyn Fn() -> R| {
        let start = Instant::now();
        match f() {
            Ok(()) => {
                passed += 1;
                println!("PASS {name} ({} ms)", start.elapsed().as_millis());
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {name}: {e}");
            }
        }
    };
    match options(trid) {
        Err(e) => test("tcp-transport-id", &|| Err(e.clone())),
        Ok(o) if o.subnqn.is_none() => test("tcp-transport-id", &|| {
            Err(format!("--tcp {trid}: needs subnqn:"))
        }),
        Ok(o) => {
            test("tcp-discover", &|| discover(&o));
            test("tcp-admin", &|| admin(&o));
            test("tcp-digests", &|| digests(&o));
            if let Some(t6) = trid6 {
                test("tcp-ipv6", &|| ipv6(t6));
            }
            if let Some(d) = denied {
                test("tcp-connect-rejections", &|| rejections(&o, d));
            }
            test("tcp-keep-alive", &|| keep_alive(&o));
            if let Some(t) = tools {
                test("tcp-nvmectl", &|| nvmectl(t, trid, &o));
            }
            if let Some(p) = nvmet_port {
                test("tcp-target-away-and-back", &|| target_away(trid, &o, p));
            }
        }
    }
    println!("HWTEST TCP SUMMARY passed={passed} failed={failed}");
    failed == 0
}
