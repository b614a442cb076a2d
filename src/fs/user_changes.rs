//! What follows a change of a user's faces (an event, here or in the
//! fleet, or an upload of ours): what facefs and the kernel held of them
//! goes, and the listings gain or lose the user.

use super::inodes::dir_ino;
use super::kernel::Invalidation;
use super::layout::FaceKey;
use super::FaceFs;
use crate::api::IdKind;

impl FaceFs {
    /// A user's faces changed (an event said so, here or in the fleet):
    /// both faces under each id given are dropped from memory and the
    /// store, what `stat` knew of them expires, the listings gain or lose
    /// the user as `face_uploaded` says, and the kernel is told to forget
    /// the names it holds. Ids the event does not name (`user_id` without
    /// its field scope) stay until their TTL.
    pub fn apply_user_change(&self, ids: &[(IdKind, &str)], face_uploaded: Option<bool>) {
        let forget = self.user_changed(ids, face_uploaded);
        self.kernel.tell(forget);
    }

    /// [`Self::apply_user_change`] without telling the kernel: what it must forget.
    pub(super) fn user_changed(
        &self,
        ids: &[(IdKind, &str)],
        face_uploaded: Option<bool>,
    ) -> Vec<Invalidation> {
        let mut forget = Vec::new();
        for (kind, id) in ids {
            self.writing.user_changed(*kind, id);
            // The kernel may hold "does not exist" for the user's names
            // only if the listing showed the user without a face.
            let held_absent = face_uploaded == Some(true)
                && self
                    .listings
                    .absence(&FaceKey::new(*kind, *id, false))
                    .is_some();
            for cropped in [false, true] {
                let key = FaceKey::new(*kind, *id, cropped);
                self.faces.changed(&key);
                let ino = self.nodes.expire(&key);
                // A name the kernel holds is one it looked up and has not
                // forgotten, or one it was told does not exist: only those
                // are told, since each notice takes the directory's lock.
                if ino.is_some() || held_absent {
                    forget.push(Invalidation::Entry {
                        parent: dir_ino(*kind),
                        name: key.file_name(),
                    });
                }
                if let Some(ino) = ino {
                    self.open.unpin(ino);
                    forget.push(Invalidation::Inode(ino));
                }
            }
            if let Some(listed) = face_uploaded {
                self.listings.user_changed(*kind, id, listed);
            }
        }
        forget
    }
}
