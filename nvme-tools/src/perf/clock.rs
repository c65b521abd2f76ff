//! The clock of the I/O loop: the CPU's time-stamp counter where it ticks at a constant
//! rate, otherwise `Instant`.
//!
//! `Instant::now()` is `clock_gettime`, which is cheap only when the kernel's clock source
//! has a vDSO path. In a TCG guest (hpet) every read is a system call and a device register
//! access, about 1 us, and the I/O loop reads the clock once per polling round: that alone
//! tripled the QD1 latency measured in the VM (docs/performance.md). SPDK's perf reads the
//! TSC for the same reason. The TSC rate is calibrated against `Instant` once at start-up.

use std::time::{Duration, Instant};

/// Nanoseconds since the clock was created.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    kind: Kind,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// TSC ticks since `start`, `ns_per_tick_q32` nanoseconds per tick in 32.32 fixed point.
    #[cfg(target_arch = "x86_64")]
    Tsc {
        start: u64,
        ns_per_tick_q32: u64,
    },
    Instant(Instant),
}

impl Clock {
    /// The TSC when the CPU says it runs at a constant rate (`constant_tsc` in
    /// `/proc/cpuinfo`) or when the kernel's clock source is not the TSC (then every
    /// `Instant::now()` is a system call and a device read, as in a TCG guest on hpet; SPDK's
    /// perf reads the TSC there too). `NVME_PERF_CLOCK=instant` forces `Instant`.
    pub fn new() -> Clock {
        let forced_instant = std::env::var("NVME_PERF_CLOCK").is_ok_and(|v| v == "instant");
        #[cfg(target_arch = "x86_64")]
        if !forced_instant && (constant_tsc() || !kernel_clock_is_tsc()) {
            if let Some(c) = Clock::calibrate_tsc(Duration::from_millis(20)) {
                return c;
            }
        }
        let _ = forced_instant;
        Clock {
            kind: Kind::Instant(Instant::now()),
        }
    }

    /// A clock on `Instant`, whatever the CPU offers.
    pub fn instant() -> Clock {
        Clock {
            kind: Kind::Instant(Instant::now()),
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn calibrate_tsc(over: Duration) -> Option<Clock> {
        let (t0, c0) = (Instant::now(), rdtsc());
        while t0.elapsed() < over {
            std::hint::spin_loop();
        }
        let (ns, ticks) = (t0.elapsed().as_nanos() as u64, rdtsc().wrapping_sub(c0));
        if ticks == 0 || ns == 0 {
            return None;
        }
        let ns_per_tick_q32 = ((ns as u128) << 32) / ticks as u128;
        Some(Clock {
            kind: Kind::Tsc {
                start: rdtsc(),
                ns_per_tick_q32: ns_per_tick_q32 as u64,
            },
        })
    }

    /// Is this the TSC?
    pub fn is_tsc(&self) -> bool {
        !matches!(self.kind, Kind::Instant(_))
    }

    /// Nanoseconds since the clock was created.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        match self.kind {
            #[cfg(target_arch = "x86_64")]
            Kind::Tsc {
                start,
                ns_per_tick_q32,
            } => ((rdtsc().wrapping_sub(start) as u128 * ns_per_tick_q32 as u128) >> 32) as u64,
            Kind::Instant(start) => start.elapsed().as_nanos() as u64,
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

#[cfg(target_arch = "x86_64")]
use crate::sys::rdtsc;

/// Is the kernel's current clock source the TSC (fast `clock_gettime` through the vDSO)?
#[cfg(target_arch = "x86_64")]
fn kernel_clock_is_tsc() -> bool {
    std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .map(|s| s.trim() == "tsc")
        .unwrap_or(true)
}

#[cfg(target_arch = "x86_64")]
fn constant_tsc() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines()
                .find(|l| l.starts_with("flags"))
                .is_some_and(|l| l.split_whitespace().any(|f| f == "constant_tsc"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_clocks_track_real_time() {
        for clock in [Clock::new(), Clock::instant()] {
            let t0 = clock.now_ns();
            let wall = Instant::now();
            std::thread::sleep(Duration::from_millis(30));
            let measured = clock.now_ns() - t0;
            let real = wall.elapsed().as_nanos() as u64;
            // Generous bounds: the machine is shared and the calibration is 20 ms long.
            assert!(
                measured > real * 8 / 10 && measured < real * 12 / 10,
                "clock (tsc: {}) measured {measured} ns over {real} ns",
                clock.is_tsc()
            );
        }
    }

    #[test]
    fn never_goes_backwards() {
        let c = Clock::new();
        let mut last = c.now_ns();
        for _ in 0..100_000 {
            let now = c.now_ns();
            assert!(now >= last);
            last = now;
        }
    }
}
