//! Per-(namespace, worker) counters: I/O count, errors, latency sum/min/max, and the latency
//! histogram when `-L` asks for it. Recording allocates nothing.

use hdrhistogram::Histogram;

/// Largest latency the histogram resolves (longer ones are counted as this): one hour.
const HISTOGRAM_MAX_NS: u64 = 3_600 * 1_000_000_000;
/// Significant decimal digits of the histogram: 128 buckets per power of two, the
/// resolution of SPDK's own latency histogram.
const HISTOGRAM_SIGFIG: u8 = 2;

/// Counters of one namespace on one worker.
#[derive(Clone, Debug)]
pub struct Stats {
    /// I/Os completed (failed ones included, as SPDK counts them).
    pub ios: u64,
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// I/Os that failed (at submission or with an error status).
    pub errors: u64,
    /// I/Os a controller reset aborted (e.g. `nvmectl -i N reset` beside the run): not
    /// counted in `ios`, submitted again.
    pub aborted_by_reset: u64,
    /// Sum of latencies in nanoseconds.
    pub latency_sum_ns: u64,
    /// Smallest latency (`u64::MAX` before the first I/O).
    pub latency_min_ns: u64,
    /// Largest latency.
    pub latency_max_ns: u64,
    /// Latency histogram in nanoseconds (`-L`).
    pub histogram: Option<Histogram<u64>>,
}

/// A latency histogram in nanoseconds, with the bounds and resolution `nvme-perf` uses.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_NS, HISTOGRAM_SIGFIG)
        .expect("constant histogram bounds are valid")
}

impl Stats {
    /// Empty counters; with `histogram`, latencies also go into a histogram.
    pub fn new(histogram: bool) -> Stats {
        Stats {
            ios: 0,
            reads: 0,
            writes: 0,
            errors: 0,
            aborted_by_reset: 0,
            latency_sum_ns: 0,
            latency_min_ns: u64::MAX,
            latency_max_ns: 0,
            histogram: histogram.then(new_histogram),
        }
    }

    /// Records a completed I/O and its latency.
    #[inline]
    pub fn record(&mut self, latency_ns: u64, read: bool) {
        self.ios += 1;
        if read {
            self.reads += 1;
        } else {
            self.writes += 1;
        }
        self.latency_sum_ns += latency_ns;
        self.latency_min_ns = self.latency_min_ns.min(latency_ns);
        self.latency_max_ns = self.latency_max_ns.max(latency_ns);
        if let Some(h) = &mut self.histogram {
            h.saturating_record(latency_ns.max(1));
        }
    }

    /// Forgets everything (end of the warm-up), keeping the histogram's memory.
    pub fn reset(&mut self) {
        let histogram = self.histogram.take().map(|mut h| {
            h.reset();
            h
        });
        *self = Stats {
            histogram,
            ..Stats::new(false)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_resets() {
        let mut s = Stats::new(true);
        s.record(1000, true);
        s.record(3000, false);
        s.record(2000, true);
        assert_eq!((s.ios, s.reads, s.writes), (3, 2, 1));
        assert_eq!(
            (s.latency_sum_ns, s.latency_min_ns, s.latency_max_ns),
            (6000, 1000, 3000)
        );
        assert_eq!(s.histogram.as_ref().unwrap().len(), 3);
        s.record(u64::MAX / 4, true);
        assert_eq!(
            s.histogram.as_ref().unwrap().len(),
            4,
            "saturates, never fails"
        );
        s.reset();
        assert_eq!(
            (s.ios, s.latency_min_ns, s.latency_max_ns),
            (0, u64::MAX, 0)
        );
        assert_eq!(s.histogram.as_ref().unwrap().len(), 0);
        assert!(Stats::new(false).histogram.is_none());
    }
}
