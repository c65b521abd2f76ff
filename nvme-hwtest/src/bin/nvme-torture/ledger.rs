//! What writers put on the device and what they record about it: the block format (each
//! block says which write put it there), the per-writer log (a line before each submission,
//! a line after each completion) and the check of a writer's range against its log.

use std::collections::BTreeMap;

use nvme_host_linux::testkit::pattern;

/// The first bytes of every block a writer writes.
const MAGIC: &[u8; 8] = b"TORTURE1";
/// Bytes of the block header: magic, epoch, LBA, sequence number.
const HEADER: usize = 32;

/// Fills `block` (one logical block) with the content of write `seq` at `lba` in `epoch`:
/// a header naming them, then a pattern that depends on all three (a torn or misplaced
/// block does not check).
pub fn fill(epoch: u64, lba: u64, seq: u64, block: &mut [u8]) {
    pattern::fill(seed(epoch, seq), lba, block.len(), block);
    block[..8].copy_from_slice(MAGIC);
    block[8..16].copy_from_slice(&epoch.to_le_bytes());
    block[16..24].copy_from_slice(&lba.to_le_bytes());
    block[24..32].copy_from_slice(&seq.to_le_bytes());
}

fn seed(epoch: u64, seq: u64) -> u64 {
    epoch.rotate_left(17) ^ seq.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// What a block read back holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    /// Write `seq` of this epoch, whole.
    Write(u64),
    /// Something else: zeros, another epoch's data, a torn or misplaced block.
    Other(&'static str),
}

/// Decodes block `lba` as read back.
pub fn decode(epoch: u64, lba: u64, block: &[u8]) -> Content {
    if block.len() < HEADER || &block[..8] != MAGIC {
        return Content::Other(if block.iter().all(|&b| b == 0) {
            "zeros"
        } else {
            "not written by a writer"
        });
    }
    let word = |i: usize| u64::from_le_bytes(block[i..i + 8].try_into().expect("8 bytes"));
    if word(8) != epoch {
        return Content::Other("another run's block");
    }
    if word(16) != lba {
        return Content::Other("a block written for another LBA");
    }
    let seq = word(24);
    let mut want = vec![0u8; block.len()];
    fill(epoch, lba, seq, &mut want);
    if want[HEADER..] != block[HEADER..] {
        return Content::Other("a torn block (header and data disagree)");
    }
    Content::Write(seq)
}

/// One line of a writer's log for write `seq` of `blocks` blocks at `lba`, written before
/// the write is submitted.
pub fn submitted_line(seq: u64, lba: u64, blocks: u32) -> String {
    format!("S {seq} {lba} {blocks}\n")
}

/// The line written once write `seq` completed successfully (acknowledged).
pub fn acked_line(seq: u64) -> String {
    format!("A {seq}\n")
}

/// The line written once write `seq` completed with an error (not acknowledged).
pub fn failed_line(seq: u64) -> String {
    format!("E {seq}\n")
}

/// A write as its writer's log tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Write {
    lba: u64,
    blocks: u64,
    acked: bool,
}

/// A writer's log, parsed. A last line without its newline (the writer died inside the
/// `write` call) is ignored: an acknowledgement lost that way only widens the candidates.
#[derive(Debug, Default)]
pub struct Log {
    writes: BTreeMap<u64, Write>,
}

impl Log {
    /// Parses the text of a log.
    pub fn parse(text: &str) -> Result<Log, String> {
        let mut log = Log::default();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        for (n, line) in complete.lines().enumerate() {
            let bad = || format!("log line {}: '{line}'", n + 1);
            let f: Vec<&str> = line.split(' ').collect();
            let num = |i: usize| -> Result<u64, String> {
                f.get(i).and_then(|s| s.parse().ok()).ok_or_else(bad)
            };
            match f[0] {
                "S" if f.len() == 4 => {
                    let w = Write {
                        lba: num(2)?,
                        blocks: num(3)?,
                        acked: false,
                    };
                    if log.writes.insert(num(1)?, w).is_some() {
                        return Err(format!("{}: sequence number used twice", bad()));
                    }
                }
                "A" | "E" if f.len() == 2 => {
                    let w = log.writes.get_mut(&num(1)?).ok_or_else(|| {
                        format!("{}: completion of a write never submitted", bad())
                    })?;
                    w.acked = f[0] == "A";
                }
                _ => return Err(bad()),
            }
        }
        Ok(log)
    }

    /// Writes submitted, and of them acknowledged.
    pub fn counts(&self) -> (usize, usize) {
        let acked = self.writes.values().filter(|w| w.acked).count();
        (self.writes.len(), acked)
    }

    /// What block `lba` may hold: the last acknowledged write covering it (`None`: none
    /// was), and the later writes covering it that were submitted but not acknowledged
    /// (in flight when the writer died, or failed): any of them may have landed. A writer
    /// never has two writes to one block in flight, so sequence order is completion order.
    pub fn expected(&self, lba: u64) -> (Option<u64>, Vec<u64>) {
        let covering = self
            .writes
            .iter()
            .filter(|(_, w)| w.lba <= lba && lba < w.lba + w.blocks);
        let mut last_acked = None;
        let mut later = Vec::new();
        for (&seq, w) in covering {
            if w.acked {
                last_acked = Some(seq);
                later.clear();
            } else {
                later.push(seq);
            }
        }
        (last_acked, later)
    }
}

/// A block whose content breaks the rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bad {
    /// The block.
    pub lba: u64,
    /// The last acknowledged write to it (`None`: never acknowledged).
    pub acked: Option<u64>,
    /// What it holds.
    pub found: Content,
    /// Later unacknowledged writes that would also have been fine.
    pub in_flight: Vec<u64>,
}

impl Bad {
    /// A lost acknowledged write (rather than unexpected data in a never-acknowledged block).
    pub fn lost(&self) -> bool {
        self.acked.is_some()
    }
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LBA {}: acknowledged seq {:?}, in flight {:?}, found {:?}",
            self.lba, self.acked, self.in_flight, self.found
        )
    }
}

/// Checks block `lba` as read back against the log. A block no acknowledged write covers
/// may hold anything but a write this writer never submitted there (on real hardware it
/// holds what was there before the run).
pub fn check_block(log: &Log, epoch: u64, lba: u64, block: &[u8]) -> Result<(), Bad> {
    let (acked, later) = log.expected(lba);
    let found = decode(epoch, lba, block);
    let ok = match (found, acked) {
        (Content::Write(s), Some(a)) => s == a || later.contains(&s),
        (Content::Write(s), None) => later.contains(&s),
        (Content::Other(_), Some(_)) => false,
        (Content::Other(_), None) => true,
    };
    if ok {
        Ok(())
    } else {
        Err(Bad {
            lba,
            acked,
            found,
            in_flight: later,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(epoch: u64, lba: u64, seq: u64) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        fill(epoch, lba, seq, &mut b);
        b
    }

    #[test]
    fn blocks_say_which_write_put_them_there() {
        assert_eq!(decode(9, 100, &block(9, 100, 7)), Content::Write(7));
        assert_eq!(decode(9, 100, &vec![0; 512]), Content::Other("zeros"));
        assert!(matches!(
            decode(8, 100, &block(9, 100, 7)),
            Content::Other(_)
        ));
        assert!(matches!(
            decode(9, 101, &block(9, 100, 7)),
            Content::Other(_)
        ));
        let mut torn = block(9, 100, 7);
        torn[300..].copy_from_slice(&block(9, 100, 8)[300..]);
        assert!(matches!(decode(9, 100, &torn), Content::Other(s) if s.contains("torn")));
    }

    #[test]
    fn the_log_gives_the_candidates() {
        // Write 1 covers 10..14 and was acknowledged; 2 covers 12..13, acknowledged; 3
        // covers 10..11, failed; 4 covers 12, in flight at the end (no line after it); the
        // last line is cut short.
        let text = "S 1 10 4\nA 1\nS 2 12 1\nA 2\nS 3 10 1\nE 3\nS 4 12 1\nA";
        let log = Log::parse(text).unwrap();
        assert_eq!(log.counts(), (4, 2));
        assert_eq!(log.expected(10), (Some(1), vec![3]));
        assert_eq!(log.expected(11), (Some(1), vec![]));
        assert_eq!(log.expected(12), (Some(2), vec![4]));
        assert_eq!(log.expected(20), (None, vec![]));

        let e = 5;
        assert!(check_block(&log, e, 10, &block(e, 10, 1)).is_ok());
        assert!(
            check_block(&log, e, 10, &block(e, 10, 3)).is_ok(),
            "failed may land"
        );
        assert!(
            check_block(&log, e, 12, &block(e, 12, 4)).is_ok(),
            "in flight may land"
        );
        let lost = check_block(&log, e, 12, &block(e, 12, 1)).unwrap_err();
        assert!(
            lost.lost(),
            "an older write where an acknowledged one should be"
        );
        assert!(check_block(&log, e, 11, &[0; 512]).unwrap_err().lost());
        assert!(check_block(&log, e, 20, &[0; 512]).is_ok(), "never written");
        assert!(check_block(&log, e, 20, &[0xee; 512]).is_ok(), "old data");
        let bad = check_block(&log, e, 20, &block(e, 20, 9)).unwrap_err();
        assert!(
            !bad.lost(),
            "a write never submitted: bad, but not a lost write"
        );
    }

    #[test]
    fn bad_logs_are_errors() {
        assert!(Log::parse("A 1\n").unwrap_err().contains("never submitted"));
        assert!(Log::parse("S 1 2 3\nS 1 2 3\n")
            .unwrap_err()
            .contains("twice"));
        assert!(Log::parse("X\n").is_err());
        assert_eq!(Log::parse("").unwrap().counts(), (0, 0));
    }
}
