//! Sealing what facefs keeps outside its memory: authenticated encryption
//! (ChaCha20-Poly1305) bound to where a value belongs, and keyed names, so
//! that whoever can write to Redis (or the store's disk) can delete values
//! but can neither read a face, nor move one under another name, nor forge
//! one. A leaf: it depends on no other module.
//!
//! The keys come from the app secret and the tenant (HKDF-SHA256), so
//! every mount of a tenant has them and nothing else does. A value sealed
//! under other keys (another tenant, a rotated secret) does not open: it
//! is a miss, never bytes.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hkdf::{Salt, HKDF_SHA256};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// The format of a sealed value: its first byte. A new format gets a new
/// version, and values of another fail to open.
const VERSION: u8 = 1;
/// What sealing adds to a value: a version, a nonce, a tag.
pub const SEALING: usize = 1 + NONCE_LEN + 16;
/// The HKDF salt: what the keys are for.
const SALT: &[u8] = b"facefs sealing v1";

/// The keys of one tenant.
pub struct Sealer {
    aead: LessSafeKey,
    names: hmac::Key,
    random: SystemRandom,
}

/// A sealed value that did not open: damaged, forged, moved from another
/// name, or sealed under another key.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("a sealed value failed to open (tampered with, moved, or sealed under another key)")]
pub struct NotOpened;

impl Sealer {
    /// The keys of `tenant`, derived from `secret` (the app secret).
    pub fn derive(secret: &[u8], tenant: &str) -> Sealer {
        let prk = Salt::new(HKDF_SHA256, SALT).extract(secret);
        let aead = prk
            .expand(&[b"values", tenant.as_bytes()], &CHACHA20_POLY1305)
            .map(UnboundKey::from)
            .expect("a 32-byte key is within HKDF's output");
        let names = prk
            .expand(&[b"names", tenant.as_bytes()], hmac::HMAC_SHA256)
            .map(hmac::Key::from)
            .expect("an HMAC key is within HKDF's output");
        Sealer {
            aead: LessSafeKey::new(aead),
            names,
            random: SystemRandom::new(),
        }
    }

    /// `plain`, sealed to `place` (everything that says where the value
    /// belongs): it opens only with the same keys and the same place.
    pub fn seal(&self, place: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .expect("the system's random source works");
        // One buffer, sealed in place: faces are not copied twice.
        let mut sealed = Vec::with_capacity(SEALING + plain.len());
        sealed.push(VERSION);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(plain);
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place),
                &mut sealed[1 + NONCE_LEN..],
            )
            .expect("values are far below ChaCha20-Poly1305's limit");
        sealed.extend_from_slice(tag.as_ref());
        sealed
    }

    /// What [`Self::seal`] sealed to `place`.
    pub fn open(&self, place: &[u8], sealed: &[u8]) -> Result<Vec<u8>, NotOpened> {
        self.open_owned(place, sealed.to_vec())
    }

    /// [`Self::open`] in the sealed value's own buffer (a face's bytes are
    /// not copied again).
    pub fn open_owned(&self, place: &[u8], mut sealed: Vec<u8>) -> Result<Vec<u8>, NotOpened> {
        if sealed.len() < SEALING || sealed[0] != VERSION {
            return Err(NotOpened);
        }
        let nonce =
            Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN]).map_err(|_| NotOpened)?;
        sealed.drain(..1 + NONCE_LEN);
        let plain = self
            .aead
            .open_in_place(nonce, Aad::from(place), &mut sealed)
            .map_err(|_| NotOpened)?
            .len();
        sealed.truncate(plain);
        Ok(sealed)
    }

    /// [`Self::name`] as a number, for file names.
    pub fn name_number(&self, parts: &[&[u8]]) -> u128 {
        let mut context = hmac::Context::with_key(&self.names);
        for part in parts {
            // Lengths first: ("ab", "c") and ("a", "bc") name differently.
            context.update(&(part.len() as u64).to_le_bytes());
            context.update(part);
        }
        let tag = context.sign();
        u128::from_be_bytes(tag.as_ref()[..16].try_into().expect("16 of 32 bytes"))
    }

    /// A name for `parts` (a user id, a page token) that tells nothing of
    /// them to whoever lacks the keys: hex of a keyed hash, 128 bits.
    pub fn name(&self, parts: &[&[u8]]) -> String {
        format!("{:032x}", self.name_number(parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_opens_only_with_its_keys_and_at_its_place() {
        let sealer = Sealer::derive(b"secret", "tenant a");
        let sealed = sealer.seal(b"face:ou_1", b"\xff\xd8\xff a face");
        assert_eq!(
            sealer.open(b"face:ou_1", &sealed).unwrap(),
            b"\xff\xd8\xff a face"
        );
        assert!(
            !sealed.windows(3).any(|w| w == b"\xff\xd8\xff"),
            "the bytes show through"
        );
        assert_eq!(sealer.open(b"face:ou_2", &sealed), Err(NotOpened), "moved");
        let other_tenant = Sealer::derive(b"secret", "tenant b");
        assert_eq!(other_tenant.open(b"face:ou_1", &sealed), Err(NotOpened));
        let rotated = Sealer::derive(b"new secret", "tenant a");
        assert_eq!(rotated.open(b"face:ou_1", &sealed), Err(NotOpened));
        for flip in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[flip] ^= 1;
            assert_eq!(
                sealer.open(b"face:ou_1", &bad),
                Err(NotOpened),
                "flip {flip}"
            );
        }
        for cut in 0..sealed.len() {
            assert_eq!(sealer.open(b"face:ou_1", &sealed[..cut]), Err(NotOpened));
        }
        assert_ne!(
            sealer.seal(b"p", b"same"),
            sealer.seal(b"p", b"same"),
            "one nonce each"
        );
    }

    #[test]
    fn names_are_keyed_and_unambiguous() {
        let sealer = Sealer::derive(b"secret", "tenant a");
        let name = sealer.name(&[b"open_id", b"ou_1"]);
        assert_eq!(name.len(), 32);
        assert_eq!(name, sealer.name(&[b"open_id", b"ou_1"]));
        assert_ne!(name, sealer.name(&[b"open_i", b"dou_1"]));
        assert_ne!(
            name,
            Sealer::derive(b"secret", "tenant b").name(&[b"open_id", b"ou_1"])
        );
        assert!(!name.contains("ou_1"));
    }
}
