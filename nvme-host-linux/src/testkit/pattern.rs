//! Data patterns that depend on the absolute LBA, so that any read of any size can be
//! checked against what was written, and a small checksum for log lines.

/// Fills `buf` with the pattern of blocks `lba..` of size `bs` under `seed`.
pub fn fill(seed: u64, lba: u64, bs: usize, buf: &mut [u8]) {
    for (i, block) in buf.chunks_mut(bs).enumerate() {
        let mut x = (seed ^ (lba + i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// Checks `got` against the pattern of blocks `lba..` (see [`fill`]); the error names the
/// first byte that differs.
pub fn check(seed: u64, lba: u64, bs: usize, got: &[u8]) -> Result<(), String> {
    let mut want = vec![0u8; got.len()];
    fill(seed, lba, bs, &mut want);
    match got.iter().zip(&want).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(format!(
            "data mismatch at byte {i} (block {} of {} from LBA {lba}): got {:#04x}, expected {:#04x}",
            i / bs,
            got.len().div_ceil(bs),
            got[i],
            want[i]
        )),
    }
}

/// FNV-1a, 64 bits.
pub fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_per_block() {
        let mut a = vec![0u8; 4096];
        fill(7, 10, 512, &mut a);
        let mut b = vec![0u8; 512];
        fill(7, 13, 512, &mut b);
        assert_eq!(&a[3 * 512..4 * 512], &b[..]);
        assert!(check(7, 10, 512, &a).is_ok());
        a[1000] ^= 1;
        let e = check(7, 10, 512, &a).unwrap_err();
        assert!(e.contains("byte 1000 (block 1 of 8"), "{e}");
        assert_ne!(checksum(&a), checksum(&b));
    }

    #[test]
    fn seeds_and_lbas_give_different_data() {
        let mut a = vec![0u8; 512];
        let mut b = vec![0u8; 512];
        fill(1, 5, 512, &mut a);
        fill(2, 5, 512, &mut b);
        assert_ne!(a, b, "another seed");
        fill(1, 6, 512, &mut b);
        assert_ne!(a, b, "another LBA");
        assert!(check(1, 6, 512, &a).is_err());
        // A partial last block is filled and checked too.
        let mut c = vec![0u8; 700];
        fill(3, 0, 512, &mut c);
        assert_eq!(
            &c[..8],
            &{
                let mut d = vec![0u8; 512];
                fill(3, 0, 512, &mut d);
                d
            }[..8]
        );
        assert!(check(3, 0, 512, &c).is_ok());
        c[699] ^= 0x80;
        assert!(check(3, 0, 512, &c).unwrap_err().contains("block 1 of 2"));
    }
}
