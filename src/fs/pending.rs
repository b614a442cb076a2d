//! The bytes of a file being written, until they are uploaded.
//!
//! A face opened for writing without `O_TRUNC` starts out as its current
//! bytes, but they are not downloaded unless needed: programs that rewrite
//! the whole file (`rsync --inplace`, `dd`, `cp` over an existing file)
//! never need them. The ranges written are tracked; only a file with holes
//! in what was written needs the original to fill them.

use std::ops::Range;

/// Written ranges kept apart at most; past it the original is fetched and
/// the file becomes one known whole (bounds the bookkeeping of a writer
/// that writes every other byte).
const MAX_RANGES: usize = 64;

#[derive(Debug)]
pub struct PendingBytes {
    /// Always `len` bytes long; where not `known`, zeros standing in for
    /// the original's bytes.
    bytes: Vec<u8>,
    /// Sorted, disjoint, not touching: the ranges whose bytes are the
    /// file's (written, or zeros of a hole or extension).
    known: Vec<Range<u64>>,
    /// The version (digest) the rest comes from.
    base: Option<u64>,
}

/// A write would split what is known into too many pieces: fill in the
/// original first.
#[derive(Debug, PartialEq, Eq)]
pub struct NeedsBase;

impl PendingBytes {
    /// A new file, or one truncated to nothing.
    pub fn empty() -> PendingBytes {
        PendingBytes {
            bytes: Vec::new(),
            known: Vec::new(),
            base: None,
        }
    }

    /// An existing face of `size` bytes, version `digest`, not read yet.
    pub fn over(size: u64, digest: u64) -> PendingBytes {
        PendingBytes {
            bytes: vec![0; size as usize],
            known: Vec::new(),
            base: (size > 0).then_some(digest),
        }
    }

    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The version whose bytes are still needed, if any are.
    pub fn missing_base(&self) -> Option<u64> {
        if self.covers(0..self.len()) {
            None
        } else {
            self.base
        }
    }

    /// Whether `range` is all known.
    fn covers(&self, range: Range<u64>) -> bool {
        range.is_empty()
            || self
                .known
                .iter()
                .any(|k| k.start <= range.start && range.end <= k.end)
    }

    fn add(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        let mut merged = range;
        self.known.retain(|k| {
            if k.end < merged.start || merged.end < k.start {
                return true;
            }
            merged = merged.start.min(k.start)..merged.end.max(k.end);
            false
        });
        let at = self.known.partition_point(|k| k.start < merged.start);
        self.known.insert(at, merged);
    }

    /// Writes `data` at `offset`; a gap past the end reads as zeros.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), NeedsBase> {
        if self.missing_base().is_some() && self.known.len() >= MAX_RANGES {
            return Err(NeedsBase);
        }
        let end = offset + data.len() as u64;
        let old_len = self.len();
        if end > old_len {
            self.bytes.resize(end as usize, 0);
            self.add(old_len..offset.max(old_len));
        }
        self.bytes[offset as usize..end as usize].copy_from_slice(data);
        self.add(offset..end);
        Ok(())
    }

    /// Cuts or extends the file to `len` bytes (an extension reads as zeros).
    pub fn truncate(&mut self, len: u64) {
        let old_len = self.len();
        self.bytes.resize(len as usize, 0);
        if len > old_len {
            self.add(old_len..len);
        }
        for k in &mut self.known {
            k.end = k.end.min(len);
        }
        self.known.retain(|k| !k.is_empty());
        if self.covers(0..len) {
            self.base = None;
        }
    }

    /// Takes what was not written from `original`, the bytes of the
    /// version [`Self::missing_base`] named.
    pub fn fill(&mut self, original: &[u8]) {
        let len = self.len();
        let mut at = 0;
        let known = std::mem::take(&mut self.known);
        for k in known.into_iter().chain(std::iter::once(len..len)) {
            let from = (at as usize).min(original.len());
            let to = (k.start as usize).min(original.len()).max(from);
            self.bytes[from..to].copy_from_slice(&original[from..to]);
            at = k.end;
        }
        if len > 0 {
            self.known = std::iter::once(0..len).collect();
        }
        self.base = None;
    }

    /// `size` bytes from `offset`, if they are known.
    pub fn read(&self, offset: u64, size: u32) -> Option<&[u8]> {
        let start = offset.min(self.len());
        let end = offset.saturating_add(u64::from(size)).min(self.len());
        self.covers(start..end)
            .then(|| &self.bytes[start as usize..end as usize])
    }

    /// The whole file, once every byte is known.
    pub fn whole(&self) -> Option<&[u8]> {
        self.missing_base().is_none().then_some(&self.bytes[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_written_whole_needs_no_original() {
        let mut p = PendingBytes::over(5, 7);
        assert_eq!(p.missing_base(), Some(7));
        p.write(0, b"abc").unwrap();
        p.write(3, b"defg").unwrap();
        assert_eq!(p.missing_base(), None);
        assert_eq!(p.whole(), Some(&b"abcdefg"[..]));
    }

    #[test]
    fn holes_are_filled_from_the_original() {
        let mut p = PendingBytes::over(8, 7);
        p.write(2, b"XY").unwrap();
        assert_eq!(p.read(2, 2), Some(&b"XY"[..]));
        assert_eq!(p.read(0, 4), None, "bytes 0-1 are the original's");
        assert_eq!(p.whole(), None);
        p.fill(b"01234567");
        assert_eq!(p.whole(), Some(&b"01XY4567"[..]));
    }

    #[test]
    fn truncation_and_extension() {
        let mut p = PendingBytes::over(8, 7);
        p.truncate(3);
        assert_eq!(
            p.missing_base(),
            Some(7),
            "the first 3 bytes are still the original's"
        );
        p.truncate(0);
        assert_eq!(p.missing_base(), None);
        p.write(4, b"z").unwrap();
        assert_eq!(p.whole(), Some(&b"\0\0\0\0z"[..]), "a gap reads as zeros");
        let mut q = PendingBytes::over(4, 7);
        q.write(0, b"ab").unwrap();
        q.truncate(6);
        q.fill(b"ABCD");
        assert_eq!(q.whole(), Some(&b"abCD\0\0"[..]));
    }

    #[test]
    fn scattered_writes_ask_for_the_original() {
        let mut p = PendingBytes::over(1000, 7);
        for i in 0..MAX_RANGES as u64 {
            p.write(i * 10, b"x").unwrap();
        }
        assert_eq!(p.write(999, b"y"), Err(NeedsBase));
        p.fill(&[b'o'; 1000]);
        p.write(999, b"y").unwrap();
        let whole = p.whole().unwrap();
        assert_eq!(
            (whole[0], whole[1], whole[10], whole[999]),
            (b'x', b'o', b'x', b'y')
        );
        let mut empty = PendingBytes::empty();
        for i in 0..1000u64 {
            empty.write(i * 2, b"x").unwrap();
        }
        assert_eq!(empty.len(), 1999, "a new file has no original to wait for");
    }
}
