//! How the parts that act on their own talk back to the core: [`Faces`]
//! through [`LoadContext`] (what ranks first, what stat must show), and
//! [`Writing`] through [`WriteContext`] (versions, uploads, what to forget).
//!
//! [`Faces`]: super::faces::Faces
//! [`Writing`]: super::writing::Writing

use std::sync::Arc;

use super::answer::{Answer, Fetch, Step};
use super::attr::Attr;
use super::error::FsError;
use super::face::{Face, FaceMeta};
use super::faces::LoadContext;
use super::kernel::Invalidation;
use super::layout::FaceKey;
use super::writing::WriteContext;
use super::FaceFs;
use crate::api::image::ImageType;
use crate::api::{ApiError, Priority};

impl LoadContext for FaceFs {
    fn priority(&self, key: &FaceKey) -> Priority {
        // A name no listing shows waits behind those one does: probes of
        // names that do not exist must not hold up the faces that do.
        if self.listings.shows(key) {
            Priority::Listed
        } else {
            Priority::Probe
        }
    }

    fn kept(&self, key: &FaceKey, meta: FaceMeta) {
        self.nodes.confirm(key, meta);
    }

    fn user_absent(&self, key: &FaceKey) {
        self.writing.user_absent(key);
    }
}

impl WriteContext for FaceFs {
    fn face_version(&self, ino: u64) -> Result<(FaceKey, FaceMeta), FsError> {
        match self.nodes.face_version(ino)? {
            (key, Some(meta)) => Ok((key, meta)),
            // The kernel revalidates a listed name before opening it; if
            // it did not, ESTALE makes it.
            (key, None) => Err(super::unversioned(&key)),
        }
    }

    fn version_bytes(&self, key: &FaceKey, digest: u64, fetch: Fetch) -> Step<Arc<Face>> {
        FaceFs::version_bytes(self, key, digest, fetch)
    }

    fn put_face(&self, key: &FaceKey, bytes: &[u8], image_type: ImageType) -> Result<(), ApiError> {
        self.faces
            .api()
            .put_face(key.kind, &key.id, bytes, image_type)
    }

    /// The digests of the user's faces as facefs knows them now (memory,
    /// the kernel's inodes, the store): after an upload, those bytes
    /// wherever they are (also under the user's other ids) are out of date.
    fn known_digests(&self, key: &FaceKey) -> Vec<u64> {
        let mut digests = Vec::new();
        for cropped in [false, true] {
            let key = FaceKey::new(key.kind, key.id.clone(), cropped);
            digests.extend(self.faces.digests(&key));
            digests.extend(self.nodes.digest(&key));
        }
        digests.sort_unstable();
        digests.dedup();
        digests
    }

    /// The user's faces changed by our own upload: as for an event, and the
    /// same bytes under the user's other ids (which facefs cannot name: the
    /// API maps no id to another) are no longer trusted anywhere.
    fn uploaded(&self, key: &FaceKey, old_digests: &[u64]) {
        let mut forget = self.user_changed(&[(key.kind, &key.id)], Some(true));
        if !old_digests.is_empty() {
            self.freshness.supersede(old_digests);
            forget.extend(self.nodes.others_with(old_digests, key));
        }
        self.kernel.tell(forget);
    }

    fn forget_inode(&self, ino: u64) {
        self.kernel.tell(vec![Invalidation::Inode(ino)]);
    }

    fn dir_attr(&self, ino: u64) -> Attr {
        self.nodes.dir_attr(ino)
    }

    fn getattr(&self, ino: u64, fetch: Fetch) -> Answer<Attr> {
        FaceFs::getattr(self, ino, fetch)
    }
}
