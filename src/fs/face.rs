//! A downloaded face and what `stat` shows of it: the exact size, and an
//! mtime derived from the bytes.

use std::time::{Duration, SystemTime};

use crate::api::FaceBytes;
use crate::sync::byte_budget::MemoryHold;

/// A downloaded face.
pub struct Face {
    pub bytes: Vec<u8>,
    pub digest: u64,
    pub fetched_at: SystemTime,
    /// The bytes' share of the memory budget, given back when the last
    /// holder (the cache, an open file, a reader) lets go of the face.
    _held: MemoryHold,
}

impl Face {
    pub fn new(downloaded: FaceBytes, fetched_at: SystemTime) -> Face {
        let digest = digest(&downloaded.bytes);
        Face::verified(downloaded, digest, fetched_at)
    }

    /// A face whose `digest` the caller has just checked against its bytes
    /// (the on-disk store does, as it reads them).
    pub fn verified(bytes: FaceBytes, digest: u64, fetched_at: SystemTime) -> Face {
        let FaceBytes {
            mut bytes, held, ..
        } = bytes;
        // The cache weighs faces by length: hold no more than that.
        bytes.shrink_to_fit();
        Face {
            digest,
            bytes,
            fetched_at,
            _held: held,
        }
    }

    pub fn meta(&self) -> FaceMeta {
        FaceMeta {
            size: self.bytes.len() as u64,
            digest: self.digest,
            fetched_at: self.fetched_at,
        }
    }
}

/// What is known of a face without holding its bytes: enough for `stat`.
#[derive(Clone, Copy, Debug)]
pub struct FaceMeta {
    pub size: u64,
    pub digest: u64,
    pub fetched_at: SystemTime,
}

pub use crate::hash::digest;

/// The API gives faces no timestamps. A time derived from the bytes stays the
/// same for the same face across mounts and machines, so `rsync -a` skips
/// unchanged faces, and moves when the face changes, so it copies new ones.
/// The times fall between 2000 and 2020. Changing this function makes every
/// existing backup copy every face again: the golden test below pins it.
pub fn mtime_of(digest: u64) -> SystemTime {
    const Y2000: u64 = 946_684_800;
    const TWENTY_YEARS: u64 = 631_152_000;
    SystemTime::UNIX_EPOCH + Duration::from_secs(Y2000 + digest % TWENTY_YEARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(t: SystemTime) -> u64 {
        t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
    }

    /// Values worked out by hand from the FNV-1a definition (offset basis
    /// 0xcbf29ce484222325, prime 0x100000001b3), not by this code: if one
    /// moves, every backup made with facefs so far would be copied again.
    #[test]
    fn golden_digests_and_mtimes() {
        assert_eq!(digest(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(digest(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(digest(b"foobar"), 0x8594_4171_f739_67e8);
        // 0xaf63dc4c8601ec8c = 12638187200555641996; mod 631152000 = 42409996 (the FNV-1a vectors are the published ones).
        assert_eq!(secs(mtime_of(digest(b"a"))), 946_684_800 + 42_409_996);
        assert_eq!(secs(mtime_of(0)), 946_684_800);
        assert_eq!(
            secs(mtime_of(631_152_000 - 1)),
            946_684_800 + 631_152_000 - 1
        );
    }
}
