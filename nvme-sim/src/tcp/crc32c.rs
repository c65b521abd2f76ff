//! CRC32C (Castagnoli), the NVMe/TCP header and data digest: reflected polynomial
//! 0x82F63B78, all-ones start, inverted result, sent little-endian after what it covers.
//!
//! One 256-entry table built at compile time, a byte per step: the simulator's digests are
//! not on anyone's hot path.

/// `TABLE[b]`: the remainder of byte `b` shifted through eight reflected steps.
static TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut b = 0usize;
    while b < 256 {
        let mut r = b as u32;
        let mut step = 0;
        while step < 8 {
            let low = r & 1;
            r >>= 1;
            if low == 1 {
                r ^= 0x82f6_3b78;
            }
            step += 1;
        }
        t[b] = r;
        b += 1;
    }
    t
};

/// A running digest over several pieces.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Crc32c(u32);

impl Crc32c {
    /// A digest of nothing yet.
    pub(crate) fn new() -> Crc32c {
        Crc32c(u32::MAX)
    }
    /// Adds `bytes`.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        let mut r = self.0;
        for &b in bytes {
            r = TABLE[((r as u8) ^ b) as usize] ^ (r >> 8);
        }
        self.0 = r;
    }
    /// The digest of everything fed.
    pub(crate) fn value(self) -> u32 {
        !self.0
    }
}

/// The CRC32C of `bytes`.
pub(crate) fn crc32c(bytes: &[u8]) -> u32 {
    let mut c = Crc32c::new();
    c.feed(bytes);
    c.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digest computed one bit at a time, straight from the polynomial.
    fn bitwise(bytes: &[u8]) -> u32 {
        let mut r = u32::MAX;
        for &b in bytes {
            r ^= b as u32;
            for _ in 0..8 {
                r = (r >> 1) ^ (0x82f6_3b78 & 0u32.wrapping_sub(r & 1));
            }
        }
        !r
    }

    #[test]
    fn matches_the_polynomial_and_the_check_value() {
        // CRC-32C's published check value.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 3) as u8).collect();
        for len in [0, 1, 3, 8, 31, 64, 999] {
            assert_eq!(crc32c(&data[..len]), bitwise(&data[..len]), "{len} bytes");
        }
        let mut c = Crc32c::new();
        c.feed(&data[..400]);
        c.feed(&data[400..]);
        assert_eq!(c.value(), bitwise(&data));
    }
}
