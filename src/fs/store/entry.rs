//! The store's two file formats, each verified whole before anything in it
//! is believed.
//!
//! A face file: a fixed magic that names the format and its version, a
//! header (which face, its size, digest, mtime, when it was fetched, and the
//! CRC-32 of its bytes) closed by a CRC-32 over everything before it, then
//! the face's bytes. The digest is the face's FNV-1a from its download, the
//! value its mtime is derived from; the bytes' CRC-32 was computed from the
//! same bytes at the same time, so bytes that pass it are the ones the
//! digest and mtime describe. (CRC-32, not the FNV-1a digest again, because
//! it runs at memory speed: FNV-1a is a byte at a time.)
//!
//! A listing file: the magic, the kind, when it was fetched, the packed ids
//! (see [`Listing`]) and a CRC-32 over all of it.
//!
//! Integers are little-endian; times are milliseconds since the Unix epoch.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::api::IdKind;
use crate::fs::face::mtime_of;
use crate::fs::layout::FaceKey;
use crate::fs::listing::Listing;

/// "facefs", F for face or L for listing, and the format version. A file of
/// any other version is discarded, never converted.
pub const FACE_MAGIC: [u8; 8] = *b"facefsF1";
pub const LISTING_MAGIC: [u8; 8] = *b"facefsL1";

/// No id in a header this code wrote is longer (ids are at most 243 bytes).
const MAX_HEADER: usize = 255;

/// Why a stored file was not believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// Not this version of a facefs entry: another format, zeroes, garbage.
    Format,
    /// Ends before its header or its data does: a torn write.
    Truncated,
    HeaderChecksum,
    /// A well-formed entry for another face or kind (a name collision).
    OtherKey,
    /// More bytes than its header says.
    Length,
    DataChecksum,
    /// A checksum-valid header whose fields contradict each other.
    Inconsistent,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Damage::Format => "not a facefs store entry of this version",
            Damage::Truncated => "cut short",
            Damage::HeaderChecksum => "its header checksum does not match",
            Damage::OtherKey => "it holds another face",
            Damage::Length => "longer than its header says",
            Damage::DataChecksum => "its bytes do not match their checksum",
            Damage::Inconsistent => "its fields contradict each other",
        })
    }
}

/// What a verified face file says besides the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredFaceHeader {
    /// Where the face's bytes start in the file.
    pub data_start: usize,
    pub digest: u64,
    pub fetched_at: SystemTime,
    /// CRC-32 of the face's bytes.
    pub data_crc: u32,
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn from_millis(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

fn mtime_secs(digest: u64) -> u64 {
    mtime_of(digest)
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The header of a face file; the face's bytes follow it.
pub fn face_header(key: &FaceKey, bytes: &[u8], digest: u64, fetched_at: SystemTime) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + key.id.len());
    out.extend_from_slice(&FACE_MAGIC);
    out.push(key.kind.index() as u8);
    out.push(u8::from(key.cropped));
    // Ids that are file names are at most 255 bytes (see layout).
    out.extend_from_slice(&(key.id.len() as u16).to_le_bytes());
    out.extend_from_slice(key.id.as_bytes());
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(&digest.to_le_bytes());
    out.extend_from_slice(&mtime_secs(digest).to_le_bytes());
    out.extend_from_slice(&millis(fetched_at).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
    let checksum = crc32fast::hash(&out);
    out.extend_from_slice(&checksum.to_le_bytes());
    out
}

/// Reads fields off the front of a file, failing as [`Damage::Truncated`].
struct Fields<'a> {
    all: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Damage> {
        let end = self.at.checked_add(n).ok_or(Damage::Truncated)?;
        let taken = self.all.get(self.at..end).ok_or(Damage::Truncated)?;
        self.at = end;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, Damage> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Damage> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> Result<u32, Damage> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64, Damage> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    /// The CRC-32 stored here must be that of everything before it.
    fn checksum(&mut self, damage: Damage) -> Result<(), Damage> {
        let covered = crc32fast::hash(&self.all[..self.at]);
        if self.u32()? != covered {
            return Err(damage);
        }
        Ok(())
    }
}

fn magic(fields: &mut Fields, expected: &[u8; 8]) -> Result<(), Damage> {
    match fields.take(expected.len()) {
        Ok(found) if found == expected => Ok(()),
        // A file shorter than the magic that starts like it was cut short.
        Err(_) if expected.starts_with(fields.all) && !fields.all.is_empty() => {
            Err(Damage::Truncated)
        }
        _ => Err(Damage::Format),
    }
}

/// No face header is longer than this; reading this much of a file is
/// enough for [`verify_face_header`].
pub const FACE_HEADER_MAX: usize = 8 + 1 + 1 + 2 + 255 + 8 * 4 + 4 + 4;

/// Verifies the header at the start of a face file (`start` may be just the
/// first [`FACE_HEADER_MAX`] bytes) as that of `key`, in a file `file_len`
/// bytes long: everything `stat` shows is then checked, the bytes are not.
pub fn verify_face_header(
    key: &FaceKey,
    start: &[u8],
    file_len: u64,
) -> Result<(StoredFaceHeader, u64), Damage> {
    let mut fields = Fields { all: start, at: 0 };
    magic(&mut fields, &FACE_MAGIC)?;
    let kind = fields.u8()?;
    let cropped = fields.u8()?;
    let id_len = usize::from(fields.u16()?);
    if id_len > MAX_HEADER {
        // Cannot be a header this code wrote: do not trust the rest either.
        return Err(Damage::HeaderChecksum);
    }
    let id = fields.take(id_len)?;
    let size = fields.u64()?;
    let digest = fields.u64()?;
    let mtime = fields.u64()?;
    let fetched_ms = fields.u64()?;
    let data_crc = fields.u32()?;
    fields.checksum(Damage::HeaderChecksum)?;
    if kind as usize != key.kind.index() || (cropped != 0) != key.cropped || id != key.id.as_bytes()
    {
        return Err(Damage::OtherKey);
    }
    if cropped > 1 || mtime != mtime_secs(digest) {
        return Err(Damage::Inconsistent);
    }
    let data_len = file_len
        .checked_sub(fields.at as u64)
        .ok_or(Damage::Truncated)?;
    match data_len.cmp(&size) {
        std::cmp::Ordering::Less => return Err(Damage::Truncated),
        std::cmp::Ordering::Greater => return Err(Damage::Length),
        std::cmp::Ordering::Equal => {}
    }
    let header = StoredFaceHeader {
        data_start: fields.at,
        digest,
        fetched_at: from_millis(fetched_ms),
        data_crc,
    };
    Ok((header, size))
}

/// Verifies a whole face file as the entry of `key`: its header, and its
/// bytes against their CRC-32.
pub fn verify_face(key: &FaceKey, file: &[u8]) -> Result<StoredFaceHeader, Damage> {
    let (header, _) = verify_face_header(key, file, file.len() as u64)?;
    if crc32fast::hash(&file[header.data_start..]) != header.data_crc {
        return Err(Damage::DataChecksum);
    }
    Ok(header)
}

/// A listing as one file.
pub fn encode_listing(kind: IdKind, listing: &Listing) -> Vec<u8> {
    let (text, ends) = listing.parts();
    let mut out = Vec::with_capacity(40 + text.len() + 4 * ends.len());
    out.extend_from_slice(&LISTING_MAGIC);
    out.push(kind.index() as u8);
    out.extend_from_slice(&millis(listing.fetched_at).to_le_bytes());
    // A listing holds at most 2,000,000 ids of at most 255 bytes: inside u32.
    out.extend_from_slice(&(ends.len() as u32).to_le_bytes());
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    for end in ends {
        out.extend_from_slice(&end.to_le_bytes());
    }
    out.extend_from_slice(text.as_bytes());
    let checksum = crc32fast::hash(&out);
    out.extend_from_slice(&checksum.to_le_bytes());
    out
}

/// Verifies a whole listing file as the listing of `kind`.
pub fn decode_listing(kind: IdKind, file: &[u8]) -> Result<Listing, Damage> {
    let mut fields = Fields { all: file, at: 0 };
    magic(&mut fields, &LISTING_MAGIC)?;
    let stored_kind = fields.u8()?;
    let fetched_ms = fields.u64()?;
    let count = fields.u32()? as usize;
    let text_len = fields.u32()? as usize;
    // Checked before anything is allocated from the counts.
    let body = count
        .checked_mul(4)
        .and_then(|n| n.checked_add(text_len))
        .and_then(|n| n.checked_add(4))
        .ok_or(Damage::Inconsistent)?;
    match (file.len() - fields.at).cmp(&body) {
        std::cmp::Ordering::Less => return Err(Damage::Truncated),
        std::cmp::Ordering::Greater => return Err(Damage::Length),
        std::cmp::Ordering::Equal => {}
    }
    let ends_bytes = fields.take(4 * count)?;
    let text = fields.take(text_len)?;
    fields.checksum(Damage::DataChecksum)?;
    if stored_kind as usize != kind.index() {
        return Err(Damage::OtherKey);
    }
    let ends = ends_bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let text = String::from_utf8(text.to_vec()).map_err(|_| Damage::Inconsistent)?;
    Listing::from_parts(text, ends, from_millis(fetched_ms)).ok_or(Damage::Inconsistent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::face::digest;

    fn key() -> FaceKey {
        FaceKey::new(IdKind::OpenId, "ou_a", false)
    }

    fn at(ms: u64) -> SystemTime {
        from_millis(ms)
    }

    fn face_file(key: &FaceKey, bytes: &[u8]) -> Vec<u8> {
        let mut file = face_header(key, bytes, digest(bytes), at(1_700_000_000_123));
        file.extend_from_slice(bytes);
        file
    }

    #[test]
    fn a_face_file_reads_back_as_written() {
        let bytes = b"\xff\xd8 a face \xff\xd9";
        let file = face_file(&key(), bytes);
        let header = verify_face(&key(), &file).unwrap();
        assert_eq!(&file[header.data_start..], bytes);
        assert_eq!(header.digest, digest(bytes));
        assert_eq!(header.fetched_at, at(1_700_000_000_123));
    }

    #[test]
    fn the_header_alone_says_what_stat_shows_and_catches_a_torn_file() {
        let bytes = vec![3u8; 300];
        let file = face_file(&key(), &bytes);
        let start = &file[..FACE_HEADER_MAX.min(file.len())];
        let (header, size) = verify_face_header(&key(), start, file.len() as u64).unwrap();
        assert_eq!((size, header.digest), (300, digest(&bytes)));
        let torn = verify_face_header(&key(), start, file.len() as u64 - 1);
        assert_eq!(torn.err(), Some(Damage::Truncated));
        let long = FaceKey::new(IdKind::OpenId, "x".repeat(243), true);
        let file = face_file(&long, &bytes);
        assert!(verify_face_header(&long, &file[..FACE_HEADER_MAX], file.len() as u64).is_ok());
    }

    #[test]
    fn every_kind_of_damage_to_a_face_file_is_caught() {
        let bytes = vec![7u8; 1000];
        let file = face_file(&key(), &bytes);
        let data_start = file.len() - bytes.len();
        // Cut anywhere: before the magic ends, in the header, in the data.
        for cut in [0, 3, 8, 20, data_start - 1, data_start, file.len() - 1] {
            let damage = verify_face(&key(), &file[..cut]).unwrap_err();
            let expected = if cut == 0 {
                Damage::Format
            } else {
                Damage::Truncated
            };
            assert_eq!(damage, expected, "cut at {cut}");
        }
        assert_eq!(
            verify_face(&key(), &vec![0; file.len()]),
            Err(Damage::Format)
        );
        let mut older = file.clone();
        older[7] = b'0';
        assert_eq!(verify_face(&key(), &older), Err(Damage::Format));
        // Each byte of the header after the magic, flipped.
        for i in 8..data_start {
            let mut flipped = file.clone();
            flipped[i] ^= 0x10;
            assert!(verify_face(&key(), &flipped).is_err(), "byte {i} flipped");
        }
        let mut flipped = file.clone();
        flipped[data_start + 500] ^= 1;
        assert_eq!(verify_face(&key(), &flipped), Err(Damage::DataChecksum));
        let mut longer = file.clone();
        longer.push(0);
        assert_eq!(verify_face(&key(), &longer), Err(Damage::Length));
        let other = FaceKey::new(IdKind::OpenId, "ou_a", true);
        assert_eq!(verify_face(&other, &file), Err(Damage::OtherKey));
        let other = FaceKey::new(IdKind::UnionId, "ou_a", false);
        assert_eq!(verify_face(&other, &file), Err(Damage::OtherKey));
    }

    #[test]
    fn a_listing_file_reads_back_as_written_and_damage_is_caught() {
        let ids = vec!["ou_b".to_owned(), "ou_a".to_owned(), "ou_ccc".to_owned()];
        let listing = Listing::new(ids, at(1_700_000_000_000));
        let file = encode_listing(IdKind::OpenId, &listing);
        let back = decode_listing(IdKind::OpenId, &file).unwrap();
        assert_eq!(back.parts(), listing.parts());
        assert_eq!(back.fetched_at, listing.fetched_at);
        assert!(back.place_of(&FaceKey::new(IdKind::OpenId, "ou_ccc", true)) == Some(5));
        assert_eq!(
            decode_listing(IdKind::UserId, &file).err(),
            Some(Damage::OtherKey)
        );
        for cut in [1, 8, 20, file.len() - 1] {
            assert_eq!(
                decode_listing(IdKind::OpenId, &file[..cut]).err(),
                Some(Damage::Truncated),
                "cut at {cut}"
            );
        }
        for i in 8..file.len() {
            let mut flipped = file.clone();
            flipped[i] ^= 0x04;
            assert!(
                decode_listing(IdKind::OpenId, &flipped).is_err(),
                "byte {i} flipped"
            );
        }
        // Counts that claim more than the file holds allocate nothing.
        let mut huge = file.clone();
        huge[17..21].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_listing(IdKind::OpenId, &huge).is_err());
    }
}
