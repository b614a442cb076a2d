//! The store's file formats, each sealed (see `crate::seal`) to where it
//! belongs and verified before anything in it is believed. A disk image, a
//! backup of the cache directory or another process reading it sees
//! neither faces nor ids; one writing to it can delete entries (costing
//! downloads) but cannot make facefs serve anything it did not store.
//!
//! A face file: a fixed magic that names the format and its version, then
//! a small sealed header (the face's size, digest and when it was fetched)
//! that `stat` reads alone, then the sealed bytes. Both are sealed to the
//! face (kind, crop, id: the id is in no file, only in what the seal is
//! bound to), and the bytes also to the header's digest, so neither can be
//! moved to another face or paired with another version's header.
//!
//! A listing file: the magic, then the sealed listing (when it was fetched,
//! the packed ids with a face in the API's order, see [`Listing`], and the
//! users listed without one), sealed to its id kind.
//!
//! Integers are little-endian; times are milliseconds since the Unix epoch.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::api::IdKind;
use crate::fs::id_set::IdSet;
use crate::fs::layout::FaceKey;
use crate::fs::listing::Listing;
use crate::seal::{Sealer, SEALING};

/// "facefs", F for face or L for listing, and the format version. A file of
/// any other version is discarded, never converted.
pub const FACE_MAGIC: [u8; 8] = *b"facefsF2";
pub const LISTING_MAGIC: [u8; 8] = *b"facefsL3";

/// What the sealed header holds: size, digest, fetched at.
const HEADER_FIELDS: usize = 8 + 8 + 8;
/// A face file's header, magic and sealed fields: `stat` reads this much.
pub const FACE_HEADER_MAX: usize = FACE_MAGIC.len() + SEALING + HEADER_FIELDS;

/// Why a stored file was not believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// Not this version of a facefs entry: another format, zeroes, garbage.
    Format,
    /// Ends before its header or its data does: a torn write.
    Truncated,
    /// More bytes than its header says.
    Length,
    /// Its sealed part does not open: damaged, forged, moved from another
    /// face or kind, or sealed under another key (a rotated app secret).
    NotOpened,
    /// An opened entry whose fields contradict each other.
    Inconsistent,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Damage::Format => "not a facefs store entry of this version",
            Damage::Truncated => "cut short",
            Damage::Length => "longer than its header says",
            Damage::NotOpened => {
                "it does not open (damaged, tampered with, moved, or sealed under another app secret)"
            }
            Damage::Inconsistent => "its fields contradict each other",
        })
    }
}

/// What a face file's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredFaceHeader {
    pub size: u64,
    pub digest: u64,
    pub fetched_at: SystemTime,
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn from_millis(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// What a face's header or bytes are sealed to.
fn face_place(part: &[u8], key: &FaceKey, digest: Option<u64>) -> Vec<u8> {
    let mut place = b"facefs store face v2\0".to_vec();
    place.extend_from_slice(part);
    place.push(key.kind.index() as u8);
    place.push(u8::from(key.cropped));
    place.extend_from_slice(&digest.unwrap_or(0).to_le_bytes());
    place.extend_from_slice(key.id.as_bytes());
    place
}

/// The whole file of a face: magic, sealed header, sealed bytes.
pub fn seal_face(
    sealer: &Sealer,
    key: &FaceKey,
    bytes: &[u8],
    digest: u64,
    fetched_at: SystemTime,
) -> Vec<u8> {
    let mut fields = Vec::with_capacity(HEADER_FIELDS);
    fields.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    fields.extend_from_slice(&digest.to_le_bytes());
    fields.extend_from_slice(&millis(fetched_at).to_le_bytes());
    let mut file = Vec::with_capacity(FACE_HEADER_MAX + SEALING + bytes.len());
    file.extend_from_slice(&FACE_MAGIC);
    file.extend(sealer.seal(&face_place(b"header", key, None), &fields));
    file.extend(sealer.seal(&face_place(b"bytes", key, Some(digest)), bytes));
    file
}

fn magic(start: &[u8], expected: &[u8; 8]) -> Result<(), Damage> {
    match start.get(..expected.len()) {
        Some(found) if found == expected => Ok(()),
        // A file shorter than the magic that starts like it was cut short.
        None if expected.starts_with(start) && !start.is_empty() => Err(Damage::Truncated),
        _ => Err(Damage::Format),
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

/// Opens the header at the start of a face file (`start` may be just the
/// first [`FACE_HEADER_MAX`] bytes) as that of `key`, in a file `file_len`
/// bytes long: everything `stat` shows is then known, the bytes are not
/// yet opened.
pub fn verify_face_header(
    sealer: &Sealer,
    key: &FaceKey,
    start: &[u8],
    file_len: u64,
) -> Result<StoredFaceHeader, Damage> {
    magic(start, &FACE_MAGIC)?;
    let sealed = start
        .get(FACE_MAGIC.len()..FACE_HEADER_MAX)
        .ok_or(Damage::Truncated)?;
    let fields = sealer
        .open(&face_place(b"header", key, None), sealed)
        .map_err(|_| Damage::NotOpened)?;
    if fields.len() != HEADER_FIELDS {
        return Err(Damage::Inconsistent);
    }
    let header = StoredFaceHeader {
        size: u64_at(&fields, 0),
        digest: u64_at(&fields, 8),
        fetched_at: from_millis(u64_at(&fields, 16)),
    };
    let expected = (FACE_HEADER_MAX + SEALING) as u64 + header.size;
    match file_len.cmp(&expected) {
        std::cmp::Ordering::Less => Err(Damage::Truncated),
        std::cmp::Ordering::Greater => Err(Damage::Length),
        std::cmp::Ordering::Equal => Ok(header),
    }
}

/// Opens a whole face file as the entry of `key`: its header, and its
/// bytes, which the file's buffer becomes.
pub fn open_face(
    sealer: &Sealer,
    key: &FaceKey,
    mut file: Vec<u8>,
) -> Result<(StoredFaceHeader, Vec<u8>), Damage> {
    let header = verify_face_header(sealer, key, &file, file.len() as u64)?;
    file.drain(..FACE_HEADER_MAX);
    let bytes = sealer
        .open_owned(&face_place(b"bytes", key, Some(header.digest)), file)
        .map_err(|_| Damage::NotOpened)?;
    Ok((header, bytes))
}

fn listing_place(kind: IdKind) -> Vec<u8> {
    let mut place = b"facefs store listing v3\0".to_vec();
    place.push(kind.index() as u8);
    place
}

/// Packed ids as a section: their count, where each ends, the text.
fn encode_ids(plain: &mut Vec<u8>, (text, ends): (&str, &[u32])) {
    // At most 2,000,000 ids of at most 255 bytes: inside u32.
    plain.extend_from_slice(&(ends.len() as u32).to_le_bytes());
    for end in ends {
        plain.extend_from_slice(&end.to_le_bytes());
    }
    plain.extend_from_slice(text.as_bytes());
}

/// The section at `at`: its text and ends, and where the next begins.
fn decode_ids(plain: &[u8], at: usize) -> Result<(String, Vec<u32>, usize), Damage> {
    let count = plain
        .get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("four bytes")) as usize)
        .ok_or(Damage::Inconsistent)?;
    // Checked before anything is allocated from the count.
    let text_start = count
        .checked_mul(4)
        .and_then(|n| n.checked_add(at + 4))
        .filter(|n| *n <= plain.len())
        .ok_or(Damage::Inconsistent)?;
    let ends: Vec<u32> = plain[at + 4..text_start]
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("four bytes")))
        .collect();
    let text_end = text_start
        .checked_add(ends.last().map_or(0, |e| *e as usize))
        .filter(|n| *n <= plain.len())
        .ok_or(Damage::Inconsistent)?;
    let text = String::from_utf8(plain[text_start..text_end].to_vec())
        .map_err(|_| Damage::Inconsistent)?;
    Ok((text, ends, text_end))
}

/// A listing as one file: when it was fetched, the ids with a face in the
/// API's order, and the users listed without one.
pub fn encode_listing(sealer: &Sealer, kind: IdKind, listing: &Listing) -> Vec<u8> {
    let (text, ends) = listing.parts();
    let (other, other_ends) = listing.users_without_face().parts();
    let mut plain =
        Vec::with_capacity(16 + text.len() + 4 * ends.len() + other.len() + 4 * other_ends.len());
    plain.extend_from_slice(&millis(listing.fetched_at).to_le_bytes());
    encode_ids(&mut plain, (text, ends));
    encode_ids(&mut plain, (other, other_ends));
    let mut file = LISTING_MAGIC.to_vec();
    file.extend(sealer.seal(&listing_place(kind), &plain));
    file
}

/// Opens a whole listing file as the listing of `kind`, in the file's own
/// buffer (a listing can be hundreds of MB: it is not copied).
pub fn decode_listing(sealer: &Sealer, kind: IdKind, mut file: Vec<u8>) -> Result<Listing, Damage> {
    magic(&file, &LISTING_MAGIC)?;
    file.drain(..LISTING_MAGIC.len());
    let plain = sealer
        .open_owned(&listing_place(kind), file)
        .map_err(|_| Damage::NotOpened)?;
    if plain.len() < 8 {
        return Err(Damage::Inconsistent);
    }
    let fetched_at = from_millis(u64_at(&plain, 0));
    let (text, ends, next) = decode_ids(&plain, 8)?;
    let (other, other_ends, end) = decode_ids(&plain, next)?;
    if end != plain.len() {
        return Err(Damage::Inconsistent);
    }
    drop(plain);
    let without_face = IdSet::from_parts(other, other_ends).ok_or(Damage::Inconsistent)?;
    Listing::from_parts(text, ends, fetched_at)
        .and_then(|listing| listing.with_set_without_face(without_face))
        .ok_or(Damage::Inconsistent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::digest;

    fn key() -> FaceKey {
        FaceKey::new(IdKind::OpenId, "ou_a", false)
    }

    fn sealer() -> Sealer {
        Sealer::derive(b"secret", "tenant")
    }

    fn at(ms: u64) -> SystemTime {
        from_millis(ms)
    }

    fn face_file(key: &FaceKey, bytes: &[u8]) -> Vec<u8> {
        seal_face(&sealer(), key, bytes, digest(bytes), at(1_700_000_000_123))
    }

    #[test]
    fn a_face_file_reads_back_as_written_and_shows_neither_face_nor_id() {
        let bytes = b"\xff\xd8\xff a face \xff\xd9";
        let file = face_file(&key(), bytes);
        assert!(!file.windows(3).any(|w| w == b"\xff\xd8\xff"));
        assert!(!file.windows(4).any(|w| w == b"ou_a"));
        let (header, back) = open_face(&sealer(), &key(), file).unwrap();
        assert_eq!(back, bytes);
        assert_eq!(header.digest, digest(bytes));
        assert_eq!(header.fetched_at, at(1_700_000_000_123));
    }

    #[test]
    fn the_header_alone_says_what_stat_shows_and_catches_a_torn_file() {
        let bytes = vec![3u8; 300];
        let file = face_file(&key(), &bytes);
        let start = &file[..FACE_HEADER_MAX];
        let header = verify_face_header(&sealer(), &key(), start, file.len() as u64).unwrap();
        assert_eq!((header.size, header.digest), (300, digest(&bytes)));
        let torn = verify_face_header(&sealer(), &key(), start, file.len() as u64 - 1);
        assert_eq!(torn.err(), Some(Damage::Truncated));
        let long = FaceKey::new(IdKind::OpenId, "x".repeat(243), true);
        let file = face_file(&long, &bytes);
        let start = &file[..FACE_HEADER_MAX];
        assert!(verify_face_header(&sealer(), &long, start, file.len() as u64).is_ok());
    }

    #[test]
    fn every_kind_of_damage_to_a_face_file_is_caught() {
        let bytes = vec![7u8; 1000];
        let file = face_file(&key(), &bytes);
        let open = |file: &[u8]| open_face(&sealer(), &key(), file.to_vec()).map(|(h, _)| h);
        for cut in [0, 3, 8, 20, FACE_HEADER_MAX, file.len() - 1] {
            let expected = if cut == 0 {
                Damage::Format
            } else {
                Damage::Truncated
            };
            assert_eq!(open(&file[..cut]), Err(expected), "cut at {cut}");
        }
        assert_eq!(open(&vec![0; file.len()]), Err(Damage::Format));
        let mut older = file.clone();
        older[7] = b'1';
        assert_eq!(open(&older), Err(Damage::Format));
        for i in 8..file.len() {
            let mut flipped = file.clone();
            flipped[i] ^= 0x10;
            assert!(open(&flipped).is_err(), "byte {i} flipped");
        }
        let mut longer = file.clone();
        longer.push(0);
        assert_eq!(open(&longer), Err(Damage::Length));
        for other in [
            FaceKey::new(IdKind::OpenId, "ou_a", true),
            FaceKey::new(IdKind::UnionId, "ou_a", false),
            FaceKey::new(IdKind::OpenId, "ou_b", false),
        ] {
            let moved = open_face(&sealer(), &other, file.clone());
            assert_eq!(moved.err(), Some(Damage::NotOpened), "{other:?}");
        }
        let rotated = Sealer::derive(b"new secret", "tenant");
        assert_eq!(
            open_face(&rotated, &key(), file.clone()).err(),
            Some(Damage::NotOpened)
        );
        // Another version's bytes behind this header.
        let newer = face_file(&key(), &[8u8; 1000]);
        let mut spliced = file[..FACE_HEADER_MAX].to_vec();
        spliced.extend_from_slice(&newer[FACE_HEADER_MAX..]);
        assert_eq!(open(&spliced), Err(Damage::NotOpened));
    }

    #[test]
    fn a_listing_file_reads_back_as_written_and_damage_is_caught() {
        let ids = vec!["ou_b".to_owned(), "ou_a".to_owned(), "ou_ccc".to_owned()];
        let listing = Listing::new(ids, at(1_700_000_000_000))
            .with_users_without_face(vec!["ou_nf1".into(), "ou_nf0".into()]);
        let file = encode_listing(&sealer(), IdKind::OpenId, &listing);
        assert!(!file.windows(4).any(|w| w == b"ou_a"));
        let back = decode_listing(&sealer(), IdKind::OpenId, file.clone()).unwrap();
        assert_eq!(back.parts(), listing.parts());
        assert_eq!(back.users_without_face(), listing.users_without_face());
        assert!(back.shows_without_face("ou_nf0"));
        assert_eq!(back.fetched_at, listing.fetched_at);
        assert!(back.place_of(&FaceKey::new(IdKind::OpenId, "ou_ccc", true)) == Some(5));
        assert_eq!(
            decode_listing(&sealer(), IdKind::UserId, file.clone()).err(),
            Some(Damage::NotOpened)
        );
        for cut in [1, 8, 20, file.len() - 1] {
            assert!(
                decode_listing(&sealer(), IdKind::OpenId, file[..cut].to_vec()).is_err(),
                "cut at {cut}"
            );
        }
        for i in 8..file.len() {
            let mut flipped = file.clone();
            flipped[i] ^= 0x04;
            assert!(
                decode_listing(&sealer(), IdKind::OpenId, flipped).is_err(),
                "byte {i} flipped"
            );
        }
    }
}
