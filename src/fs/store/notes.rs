//! Small notes kept beside the store's entries (how far the fleet's event
//! stream was read), sealed to their names like every entry.

use std::io::{Read, Write};

use super::{directory, FaceStore};

/// What a note is sealed to: the format and its name.
fn note_place(name: &str) -> Vec<u8> {
    [&b"facefs store note v2\0"[..], name.as_bytes()].concat()
}

impl FaceStore {
    /// A small note kept beside the store's entries (e.g. how far the
    /// fleet's event stream was read), if one was written.
    /// Sealed to its name, like every entry. One that does not open is
    /// none: whoever needs it starts over (the fleet distrusts what it holds).
    pub fn note(&self, name: &str) -> Option<String> {
        let mut sealed = Vec::new();
        directory::open_private(&self.root.join(format!("{name}.note")))
            .ok()?
            .take(64 << 10)
            .read_to_end(&mut sealed)
            .ok()?;
        let text = self.sealer.open(&note_place(name), &sealed).ok()?;
        String::from_utf8(text).ok()
    }

    pub fn put_note(&self, name: &str, text: &str) {
        let path = self.root.join(format!("{name}.note"));
        let sealed = self.sealer.seal(&note_place(name), text.as_bytes());
        if let Err(e) = self
            .replacer
            .write_then_rename(&path, |file| file.write_all(&sealed))
        {
            log::warn!("cannot write {}: {e}", path.display());
        }
    }
}
