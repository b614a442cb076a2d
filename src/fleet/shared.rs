//! One download per face (and one listing per directory) for the fleet: a
//! [`FaceApi`] around the real one that looks in Redis first. On a miss,
//! one mount takes a short lock (SET NX PX), asks the API and publishes
//! the answer — the bytes with their digest and when they were fetched,
//! or "does not exist" — for `--ttl` (`--negative-ttl`); the others wait
//! for it, bounded, and read it from Redis.
//!
//! Every value read from Redis is checked against its digest: a mismatch
//! (a torn or foreign value) is a miss, never bytes handed to a reader.
//! Redis failing is a miss too; waiting for another mount's download ends
//! after `--request-timeout`, and then this mount asks the API itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::Commands;

use super::events::FleetEvents;
use super::Fleet;
use crate::api::{ApiError, FaceApi, FaceBytes, IdKind, ImageType, ListedUser, Priority, UserPage};
use crate::events::message::UserChange;
use crate::hash::{digest, digest_of_parts};
use crate::sync::byte_budget::ByteBudget;

/// Faces larger than this are not shared (a face is tens of KB); the
/// mount that downloaded one keeps it to itself.
pub const MAX_SHARED_FACE: usize = 2 << 20;

const FACE: u8 = b'F';
const NO_USER: u8 = b'U';
const NO_FACE: u8 = b'N';
const PAGE: u8 = b'L';
/// Kind byte, fetched-at (ms since the epoch), digest of all else.
const HEADER: usize = 1 + 8 + 8;

/// Deletes the lock only if it is still this mount's.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

pub struct SharedConfig {
    pub face_ttl: Duration,
    pub negative_ttl: Duration,
    /// How long to wait for another mount's answer before asking the API.
    pub wait: Duration,
    /// Where bytes read from Redis are held.
    pub memory: Arc<ByteBudget>,
    /// Where an upload tells the other mounts (see `put_face`).
    pub events: Option<Arc<FleetEvents>>,
}

pub struct SharedApi<A> {
    inner: A,
    fleet: Arc<Fleet>,
    config: SharedConfig,
    unlock: redis::Script,
    tokens: AtomicU64,
}

/// The digest over what a value says: its kind, time and bytes.
fn sum(head: &[u8], body: &[u8]) -> u64 {
    digest_of_parts(&[head, body])
}

/// A value as published: what was answered, when, and the digest of both.
fn encode(kind: u8, body: &[u8], at: SystemTime) -> Vec<u8> {
    let ms = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let mut value = Vec::with_capacity(HEADER + body.len());
    value.push(kind);
    value.extend_from_slice(&ms.to_le_bytes());
    let digest = sum(&value, body);
    value.extend_from_slice(&digest.to_le_bytes());
    value.extend_from_slice(body);
    value
}

/// (kind, body, fetched at), if the value is whole and its digest agrees.
fn decode(value: &[u8]) -> Option<(u8, &[u8], SystemTime)> {
    if value.len() < HEADER {
        return None;
    }
    let ms = u64::from_le_bytes(value[1..9].try_into().ok()?);
    let digest = u64::from_le_bytes(value[9..17].try_into().ok()?);
    let body = &value[HEADER..];
    (sum(&value[..9], body) == digest)
        .then(|| (value[0], body, UNIX_EPOCH + Duration::from_millis(ms)))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SharedPage {
    users: Vec<(String, bool)>,
    next: Option<String>,
    unreadable: usize,
}

impl<A: FaceApi> SharedApi<A> {
    pub fn new(inner: A, fleet: Arc<Fleet>, config: SharedConfig) -> SharedApi<A> {
        SharedApi {
            inner,
            fleet,
            config,
            unlock: redis::Script::new(UNLOCK),
            tokens: AtomicU64::new(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos() as u64
                    ^ u64::from(std::process::id()) << 32,
            ),
        }
    }

    /// The published value under `key`, bounded by `limit` bytes, held in
    /// the memory budget while it is read.
    fn published(&self, key: &str, limit: usize) -> Option<Vec<u8>> {
        let len: usize = self.fleet.run(|c| c.strlen(key))?;
        if len == 0 || len > limit + HEADER {
            return None;
        }
        let _held = self
            .config
            .memory
            .hold_within(len as u64, self.fleet.timeout())?;
        let value: Vec<u8> = self.fleet.run(|c| c.get(key))?;
        (value.len() == len).then_some(value)
    }

    /// The answer under `key`: from Redis if published, else fetched by
    /// this mount or another (see the module).
    fn shared<T>(
        &self,
        key: &str,
        limit: usize,
        read: impl Fn(&[u8]) -> Option<Result<T, ApiError>>,
        fetch: impl FnOnce() -> Result<T, ApiError>,
        publish: impl FnOnce(&Result<T, ApiError>) -> Option<(Vec<u8>, Duration)>,
    ) -> Result<T, ApiError> {
        let look = || {
            let answer = self.published(key, limit).and_then(|v| read(&v));
            if answer.is_some() {
                self.fleet.metrics.hits.inc();
            }
            answer
        };
        if let Some(answer) = look() {
            return answer;
        }
        let lock = format!("{key}:lock");
        let token = self.tokens.fetch_add(1, Ordering::Relaxed).to_string();
        let lock_for = self.config.wait + Duration::from_secs(1);
        let took: Option<bool> = self.fleet.run(|c| {
            redis::cmd("SET")
                .arg(&lock)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(lock_for.as_millis() as u64)
                .query::<Option<String>>(c)
                .map(|ok| ok.is_some())
        });
        match took {
            // Redis is failing: this mount alone.
            None => {
                log::debug!("fleet: no lock answer for {key}; asking the API alone");
                fetch()
            }
            Some(true) => {
                let unlock = || {
                    self.fleet
                        .run(|c| self.unlock.key(&lock).arg(&token).invoke::<i64>(c))
                };
                // Published between the look and the lock: no need to ask.
                if let Some(answer) = look() {
                    let _ = unlock();
                    return answer;
                }
                let result = fetch();
                if let Some((value, ttl)) = publish(&result) {
                    let _ = self
                        .fleet
                        .run(|c| c.pset_ex::<_, _, ()>(key, value, ttl.as_millis().max(1) as u64));
                }
                let _ = unlock();
                result
            }
            Some(false) => {
                let deadline = Instant::now() + self.config.wait;
                let mut pause = Duration::from_millis(10);
                while Instant::now() < deadline {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                    if let Some(answer) = look() {
                        return answer;
                    }
                    // The other mount is done: published (looked at once
                    // more, as it may have come just now) or gave up.
                    let held: Option<bool> = self.fleet.run(|c| c.exists(&lock));
                    if held != Some(true) {
                        if let Some(answer) = look() {
                            return answer;
                        }
                        log::debug!("fleet: the lock of {key} went without an answer ({held:?})");
                        return fetch();
                    }
                }
                log::debug!("fleet: waited out the lock of {key}");
                fetch()
            }
        }
    }
}

/// Where the fleet keeps a face; the id is personal data, its digest names it.
pub(super) fn face_key(fleet: &Fleet, kind: IdKind, id: &str, cropped: bool) -> String {
    fleet.key(&format!(
        "face:{kind}:{}:{:016x}",
        u8::from(cropped),
        digest(id.as_bytes())
    ))
}

/// The generation of `kind`'s listing pages: a change of who has a face
/// starts a new one, so no mount reads the old pages again.
pub(super) fn listing_generation(fleet: &Fleet, kind: IdKind) -> String {
    fleet.key(&format!("listgen:{kind}"))
}

impl<A: FaceApi> FaceApi for SharedApi<A> {
    fn list_users(&self, kind: IdKind, page_token: Option<&str>) -> Result<UserPage, ApiError> {
        let generation: i64 = self
            .fleet
            .run(|c| c.get::<_, Option<i64>>(listing_generation(&self.fleet, kind)))
            .flatten()
            .unwrap_or(0);
        let key = self.fleet.key(&format!(
            "list:{kind}:{generation}:{:016x}",
            digest(page_token.unwrap_or("").as_bytes())
        ));
        self.shared(
            &key,
            4 << 20,
            |value| {
                let (PAGE, body, at) = decode(value)? else {
                    return None;
                };
                let page: SharedPage = serde_json::from_slice(body).ok()?;
                Some(Ok(UserPage {
                    users: page
                        .users
                        .into_iter()
                        .map(|(user_id, face_uploaded)| ListedUser {
                            user_id,
                            face_uploaded,
                        })
                        .collect(),
                    next_page_token: page.next,
                    unreadable_ids: page.unreadable,
                    fetched_at: Some(at),
                }))
            },
            || self.inner.list_users(kind, page_token),
            |result| {
                let page = result.as_ref().ok()?;
                let shared = SharedPage {
                    users: page
                        .users
                        .iter()
                        .map(|u| (u.user_id.clone(), u.face_uploaded))
                        .collect(),
                    next: page.next_page_token.clone(),
                    unreadable: page.unreadable_ids,
                };
                let body = serde_json::to_vec(&shared).ok()?;
                Some((encode(PAGE, &body, SystemTime::now()), self.config.face_ttl))
            },
        )
    }

    fn get_face(
        &self,
        kind: IdKind,
        id: &str,
        cropped: bool,
        priority: Priority,
    ) -> Result<FaceBytes, ApiError> {
        let key = face_key(&self.fleet, kind, id, cropped);
        self.shared(
            &key,
            MAX_SHARED_FACE,
            |value| {
                let (what, body, at) = decode(value)?;
                Some(match what {
                    FACE => {
                        let held = self.config.memory.try_hold(body.len() as u64)?;
                        Ok(FaceBytes {
                            bytes: body.to_vec(),
                            held,
                            fetched_at: Some(at),
                        })
                    }
                    NO_USER => Err(ApiError::UserNotFound),
                    NO_FACE => Err(ApiError::FaceNotFound),
                    _ => return None,
                })
            },
            || self.inner.get_face(kind, id, cropped, priority),
            |result| match result {
                Ok(face) if face.bytes.len() <= MAX_SHARED_FACE => Some((
                    encode(FACE, &face.bytes, SystemTime::now()),
                    self.config.face_ttl,
                )),
                // The API's "does not exist", for as long as a mount remembers it.
                Err(ApiError::UserNotFound) => Some((
                    encode(NO_USER, b"", SystemTime::now()),
                    self.config.negative_ttl,
                )),
                Err(ApiError::FaceNotFound) => Some((
                    encode(NO_FACE, b"", SystemTime::now()),
                    self.config.negative_ttl,
                )),
                _ => None,
            },
        )
    }

    /// An upload changes the user's faces: the fleet hears of it under this
    /// id (the other ids when the service's event comes, or after their TTL).
    fn put_face(
        &self,
        kind: IdKind,
        id: &str,
        image: &[u8],
        image_type: ImageType,
    ) -> Result<(), ApiError> {
        let result = self.inner.put_face(kind, id, image, image_type);
        if result.is_ok() {
            // As an event would: the fleet's copies go, and every mount
            // drops the faces of this id.
            match &self.config.events {
                Some(events) => events.publish(&UserChange::uploaded(kind, id)),
                None => {
                    let keys = [
                        face_key(&self.fleet, kind, id, false),
                        face_key(&self.fleet, kind, id, true),
                    ];
                    let _ = self.fleet.run(|c| c.del::<_, i64>(&keys[..]));
                }
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_used_only_whole_and_with_its_digest() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let value = encode(FACE, b"face bytes", at);
        assert_eq!(decode(&value), Some((FACE, &b"face bytes"[..], at)));
        for cut in 0..value.len() {
            assert_eq!(decode(&value[..cut]), None, "cut at {cut}");
        }
        // Any change: the kind (a face turned into "no face" would be a
        // false ENOENT), the time, the digest, the bytes.
        for flip in 0..value.len() {
            let mut bad = value.clone();
            bad[flip] ^= 0x20;
            assert_eq!(decode(&bad), None, "flip at {flip}");
        }
    }
}
