//! Times what a short-lived group member such as `nvmectl -i N` costs inside the process:
//! join the group as a secondary, Identify Controller, leave, `-n` times.
//!
//! ```text
//! nvme-perf -i 7 -q 32 -o 4k -w randread -t 30 -r 'trtype:sim' &
//! cargo run --release -p nvme-tools --example group_attach -- -i 7 -n 100
//! ```
//!
//! When no other process is in the group, a first attach in this process (the primary)
//! holds it during the loop, and the report says so.
//!
//! `--hold SECONDS` instead makes this process an idle member (a keeper) for that long: it
//! prints its role and the software controller's pid (to pin it with `taskset`), sleeps,
//! and leaves.

use std::time::{Duration, Instant};

use nvme_host_linux::{AttachOptions, Controller, Role, TransportId};

fn usage() -> ! {
    eprintln!("usage: group_attach -i GROUP [-n RUNS | --hold SECONDS] [-r TRID]");
    std::process::exit(2);
}

/// min / median / p99 / max of `d`, in milliseconds.
fn summary(what: &str, d: &mut [Duration]) {
    d.sort();
    let ms = |x: Duration| x.as_secs_f64() * 1000.0;
    let at = |q: f64| d[((d.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what:<22} min {:7.3}  median {:7.3}  p99 {:7.3}  max {:7.3} ms",
        ms(d[0]),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(d[d.len() - 1])
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut group, mut runs, mut trid) = (None, 100usize, "trtype:sim".to_string());
    let mut hold = None;
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "-i" => group = Some(value().parse().unwrap_or_else(|_| usage())),
            "-n" => runs = value().parse().unwrap_or_else(|_| usage()),
            "-r" => trid = value(),
            "--hold" => hold = Some(value().parse().unwrap_or_else(|_| usage())),
            _ => usage(),
        }
    }
    let Some(group) = group else { usage() };
    if runs == 0 {
        usage();
    }
    let trid = TransportId::parse(&trid).unwrap_or_else(|e| {
        eprintln!("group_attach: {e}");
        std::process::exit(2)
    });
    let opts = AttachOptions {
        group: Some(group),
        ..AttachOptions::default()
    };
    let attach = || {
        Controller::attach_with(&trid, &opts).unwrap_or_else(|e| {
            eprintln!("group_attach: {e}");
            std::process::exit(1)
        })
    };
    if let Some(seconds) = hold {
        let ctrl = attach();
        println!(
            "holding group {group} as {:?} for {seconds} s; controller process {}",
            ctrl.role(),
            ctrl.sim_process().map_or("none".into(), |p| p.to_string())
        );
        std::thread::sleep(Duration::from_secs(seconds));
        return;
    }
    let (mut t_attach, mut t_identify, mut t_detach, mut t_total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut keeper = None;
    for _ in 0..runs {
        let start = Instant::now();
        let ctrl = attach();
        let attached = Instant::now();
        if ctrl.role() == Role::Primary {
            // Nobody else holds the group: keep this member as the keeper, not a sample.
            println!("no other process in group {group}: this process holds it (primary)");
            keeper = Some(ctrl);
            continue;
        }
        let id = ctrl.identify_controller().unwrap_or_else(|e| {
            eprintln!("group_attach: identify: {e}");
            std::process::exit(1)
        });
        std::hint::black_box(&id);
        let identified = Instant::now();
        drop(ctrl);
        let end = Instant::now();
        t_attach.push(attached - start);
        t_identify.push(identified - attached);
        t_detach.push(end - identified);
        t_total.push(end - start);
    }
    drop(keeper);
    if t_total.is_empty() {
        return;
    }
    println!(
        "{} secondary attach / identify / detach cycles in group {group}:",
        t_total.len()
    );
    summary("attach (join)", &mut t_attach);
    summary("identify controller", &mut t_identify);
    summary("detach (leave)", &mut t_detach);
    summary("total", &mut t_total);
}
