//! Where each I/O goes and whether it reads or writes: a per-worker xorshift generator,
//! I/O-aligned LBAs inside the namespace (or the part of it `--lba-range` gives), and the
//! read/write mix.

/// xorshift64* (Marsaglia / Vigna): a few cycles per number, good enough for spreading I/O.
#[derive(Clone, Debug)]
pub struct XorShift64(u64);

impl XorShift64 {
    /// A generator from a seed (any value; zero is replaced, xorshift must not start at 0).
    pub fn new(seed: u64) -> XorShift64 {
        // SplitMix64 finaliser: nearby seeds (worker 0, 1, 2...) give unrelated streams.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        XorShift64(if z == 0 { 0x2545_f491_4f6c_dd1d } else { z })
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n > 0`), by multiply-shift (no division).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// `--lba-range START:COUNT`: the blocks of a namespace a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbaRange {
    /// First LBA.
    pub start: u64,
    /// Number of blocks (at least 1).
    pub count: u64,
}

impl LbaRange {
    /// Checks the range against a namespace of `blocks` blocks (`name` in the error).
    pub fn check(&self, blocks: u64, name: &str) -> Result<(), String> {
        match self.start.checked_add(self.count) {
            Some(end) if end <= blocks => Ok(()),
            _ => Err(format!(
                "--lba-range {}:{} goes past the end of {name} ({blocks} blocks): give START:COUNT with START + COUNT <= {blocks}",
                self.start, self.count
            )),
        }
    }
}

/// Parses `START:COUNT` (decimal, or hexadecimal with `0x`; COUNT at least 1).
pub fn parse_lba_range(s: &str) -> Result<LbaRange, String> {
    let num = |t: &str| match t.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => t.parse().ok(),
    };
    let bad = || format!("bad LBA range '{s}': expected START:COUNT in blocks, e.g. 0:262144");
    let (start, count) = s.split_once(':').ok_or_else(bad)?;
    let (start, count) = (num(start).ok_or_else(bad)?, num(count).ok_or_else(bad)?);
    if count == 0 {
        return Err(format!(
            "LBA range '{s}' has 0 blocks: give a COUNT of at least 1"
        ));
    }
    Ok(LbaRange { start, count })
}

/// Generates the starting LBA of each I/O for one namespace on one worker.
#[derive(Clone, Debug)]
pub struct LbaGen {
    /// The first LBA the run uses (`--lba-range`; 0 otherwise).
    base: u64,
    blocks_per_io: u64,
    ios_in_ns: u64,
    order: Order,
}

#[derive(Clone, Debug)]
enum Order {
    /// Uniformly random I/O-aligned slots.
    Random,
    /// Slot `next`, then `next + stride`, wrapping: worker `w` of `n` walks `w, w+n, w+2n...`
    /// so that the workers on a namespace together read it front to back.
    Sequential { next: u64, stride: u64 },
}

impl LbaGen {
    /// LBAs for I/Os of `io_size` bytes in a namespace of `blocks` blocks of `block_size`
    /// bytes. `io_size` must be a multiple of the block size and fit in the namespace.
    /// Sequential workloads stride by `workers`, starting at `worker`.
    pub fn new(
        blocks: u64,
        block_size: u32,
        io_size: usize,
        random: bool,
        worker: u64,
        workers: u64,
    ) -> Result<LbaGen, String> {
        let bs = block_size as u64;
        let io = io_size as u64;
        if bs == 0 || io == 0 || !io.is_multiple_of(bs) {
            return Err(format!(
                "I/O size {io_size} is not a multiple of the {block_size}-byte block size"
            ));
        }
        let blocks_per_io = io / bs;
        let ios_in_ns = blocks / blocks_per_io;
        if ios_in_ns == 0 {
            return Err(format!(
                "I/O size {io_size} is larger than the namespace ({blocks} blocks of {block_size} bytes)"
            ));
        }
        let order = if random {
            Order::Random
        } else {
            let stride = workers.max(1) % ios_in_ns;
            Order::Sequential {
                next: worker % ios_in_ns,
                stride: if stride == 0 { 1 } else { stride },
            }
        };
        Ok(LbaGen {
            base: 0,
            blocks_per_io,
            ios_in_ns,
            order,
        })
    }

    /// The same LBAs moved up by `base` blocks: for a run on blocks `base..base + blocks`.
    pub fn starting_at(mut self, base: u64) -> LbaGen {
        self.base = base;
        self
    }

    /// Blocks per I/O.
    pub fn blocks_per_io(&self) -> u64 {
        self.blocks_per_io
    }

    /// The LBA of the next I/O: a multiple of the I/O size in blocks, and the whole I/O
    /// lies inside the namespace.
    #[inline]
    pub fn next_lba(&mut self, rng: &mut XorShift64) -> u64 {
        let slot = match &mut self.order {
            Order::Random => rng.below(self.ios_in_ns),
            Order::Sequential { next, stride } => {
                let slot = *next;
                *next += *stride;
                if *next >= self.ios_in_ns {
                    *next -= self.ios_in_ns;
                }
                slot
            }
        };
        self.base + slot * self.blocks_per_io
    }
}

/// The read/write mix: `percent` of I/Os are reads.
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    read_percent: u8,
}

impl Mix {
    /// `read_percent` (0-100) of the I/Os read; the others write.
    pub fn new(read_percent: u8) -> Mix {
        Mix {
            read_percent: read_percent.min(100),
        }
    }

    /// Should the next I/O read? Draws a random number only for a real mix.
    #[inline]
    pub fn next_is_read(&self, rng: &mut XorShift64) -> bool {
        match self.read_percent {
            100 => true,
            0 => false,
            p => rng.below(100) < p as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_lbas_are_aligned_and_in_range() {
        // 64 MiB of 512-byte blocks, 4 KiB I/Os: 16384 slots of 8 blocks.
        let blocks = (64 << 20) / 512;
        let mut g = LbaGen::new(blocks, 512, 4096, true, 0, 1).unwrap();
        let mut rng = XorShift64::new(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100_000 {
            let lba = g.next_lba(&mut rng);
            assert_eq!(lba % 8, 0);
            assert!(lba + 8 <= blocks, "{lba}");
            seen.insert(lba);
        }
        // Spread over the namespace, not stuck in a corner.
        assert!(seen.len() > 16384 * 9 / 10, "{}", seen.len());
        assert!(
            seen.iter().any(|&l| l < blocks / 16) && seen.iter().any(|&l| l >= blocks * 15 / 16)
        );
    }

    #[test]
    fn a_namespace_that_is_not_a_multiple_of_the_io_size() {
        // 1001 blocks, 8-block I/Os: slots 0..125, the last partial slot is never used.
        let mut g = LbaGen::new(1001, 512, 4096, true, 0, 1).unwrap();
        let mut rng = XorShift64::new(7);
        for _ in 0..10_000 {
            let lba = g.next_lba(&mut rng);
            assert!(lba.is_multiple_of(8) && lba + 8 <= 1001, "{lba}");
        }
        let mut s = LbaGen::new(1001, 512, 4096, false, 0, 1).unwrap();
        let lbas: Vec<u64> = (0..126).map(|_| s.next_lba(&mut rng)).collect();
        assert_eq!(lbas[..3], [0, 8, 16]);
        assert_eq!(lbas[124], 992);
        assert_eq!(lbas[125], 0, "wraps");
    }

    #[test]
    fn sequential_workers_stride() {
        let mut rng = XorShift64::new(0);
        let mut w0 = LbaGen::new(80, 512, 4096, false, 0, 2).unwrap();
        let mut w1 = LbaGen::new(80, 512, 4096, false, 1, 2).unwrap();
        let a: Vec<u64> = (0..6).map(|_| w0.next_lba(&mut rng)).collect();
        let b: Vec<u64> = (0..6).map(|_| w1.next_lba(&mut rng)).collect();
        assert_eq!(a, [0, 16, 32, 48, 64, 0]);
        assert_eq!(b, [8, 24, 40, 56, 72, 8]);
        assert_eq!(w0.blocks_per_io(), 8);
        // More workers than slots still stays in range.
        let mut g = LbaGen::new(4, 4096, 8192, false, 5, 7).unwrap();
        for _ in 0..20 {
            let lba = g.next_lba(&mut rng);
            assert!(lba == 0 || lba == 2, "{lba}");
        }
    }

    #[test]
    fn bad_geometry_is_refused() {
        let e = LbaGen::new(1 << 20, 4096, 1000, true, 0, 1).unwrap_err();
        assert!(
            e.contains("not a multiple of the 4096-byte block size"),
            "{e}"
        );
        let e = LbaGen::new(4, 512, 4096, true, 0, 1).unwrap_err();
        assert!(e.contains("larger than the namespace"), "{e}");
    }

    #[test]
    fn an_lba_range_moves_and_bounds_the_lbas() {
        let r = parse_lba_range("1000:64").unwrap();
        assert_eq!(
            r,
            LbaRange {
                start: 1000,
                count: 64
            }
        );
        assert_eq!(
            parse_lba_range("0x10:0x20").unwrap(),
            LbaRange {
                start: 16,
                count: 32
            }
        );
        for bad in ["", "5", "a:1", "1:b", ":", "1:2:3"] {
            let e = parse_lba_range(bad).unwrap_err();
            assert!(e.contains("expected START:COUNT"), "{bad}: {e}");
        }
        assert!(parse_lba_range("7:0").unwrap_err().contains("0 blocks"));
        r.check(1064, "NS").unwrap();
        let e = r.check(1063, "NS").unwrap_err();
        assert!(e.contains("goes past the end of NS (1063 blocks)"), "{e}");
        let e = LbaRange {
            start: u64::MAX,
            count: 2,
        }
        .check(10, "NS")
        .unwrap_err();
        assert!(e.contains("goes past the end"), "{e}");
        // 64 blocks of 8-block I/Os from 1000: slots 1000, 1008, ... 1056.
        let mut rng = XorShift64::new(3);
        let mut g = LbaGen::new(r.count, 512, 4096, true, 0, 1)
            .unwrap()
            .starting_at(r.start);
        for _ in 0..10_000 {
            let lba = g.next_lba(&mut rng);
            assert!(
                (1000..1057).contains(&lba) && (lba - 1000).is_multiple_of(8),
                "{lba}"
            );
        }
        let mut s = LbaGen::new(r.count, 512, 4096, false, 0, 1)
            .unwrap()
            .starting_at(r.start);
        let lbas: Vec<u64> = (0..9).map(|_| s.next_lba(&mut rng)).collect();
        assert_eq!(lbas, [1000, 1008, 1016, 1024, 1032, 1040, 1048, 1056, 1000]);
    }

    #[test]
    fn mix_and_generator() {
        let mut rng = XorShift64::new(42);
        let m = Mix::new(70);
        let reads = (0..100_000).filter(|_| m.next_is_read(&mut rng)).count();
        assert!((69_000..71_000).contains(&reads), "{reads}");
        assert!((0..100).all(|_| Mix::new(100).next_is_read(&mut rng)));
        assert!((0..100).all(|_| !Mix::new(0).next_is_read(&mut rng)));
        assert_ne!(XorShift64::new(0).next_u64(), XorShift64::new(1).next_u64());
        assert!((0..1000).all(|_| rng.below(3) < 3));
    }
}
