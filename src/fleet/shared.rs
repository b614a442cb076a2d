//! One download per face (and one listing per directory) for the fleet: a
//! [`FaceApi`] around the real one that looks in Redis first. On a miss,
//! one mount takes a short lock (SET NX PX), asks the API and publishes
//! the answer — the bytes with their digest and when they were fetched,
//! or "does not exist" — for `--ttl` (`--negative-ttl`); the others wait
//! for it, bounded, and read it from Redis.
//!
//! Every value is sealed to its key (see `crate::seal`), and keys name ids
//! by a keyed hash: whoever can write to Redis can delete values, costing
//! downloads, but cannot read a face, move one under another name, or forge
//! one. A value that fails to open, or says it was fetched in the future,
//! is a miss (counted, logged), never bytes, never a "does not exist".
//! Redis failing is a miss too; waiting for another mount's download ends
//! after `--request-timeout`, and then this mount asks the API itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::client::{Cmd, Limits, Script};
use super::events::FleetEvents;
use super::Fleet;
use crate::api::{ApiError, FaceApi, FaceBytes, IdKind, ImageType, ListedUser, Priority, UserPage};
use crate::events::message::UserChange;
use crate::seal::{NotOpened, Sealer};
use crate::sync::byte_budget::ByteBudget;

/// Faces larger than this are not shared (a face is tens of KB); the
/// mount that downloaded one keeps it to itself.
pub const MAX_SHARED_FACE: usize = 2 << 20;

const FACE: u8 = b'F';
const NO_USER: u8 = b'U';
const NO_FACE: u8 = b'N';
const PAGE: u8 = b'L';
/// Kind byte and fetched-at (ms since the epoch), sealed with the body.
const HEADER: usize = 1 + 8;
/// What sealing adds: a version, a nonce, a tag.
const SEALING: usize = 1 + 12 + 16;
/// A fetch time this far ahead of this clock is a forgery, not a skew.
const MAX_AHEAD: Duration = Duration::from_secs(5);
/// What a value is sealed to, before its key: the format.
const PLACE: &[u8] = b"facefs fleet value v2\0";

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
    unlock: Script,
    tokens: AtomicU64,
}

fn place(key: &str) -> Vec<u8> {
    [PLACE, key.as_bytes()].concat()
}

/// A value as published under `key`: what was answered and when, sealed
/// to the key.
fn encode(sealer: &Sealer, key: &str, kind: u8, body: &[u8], at: SystemTime) -> Vec<u8> {
    let ms = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let mut plain = Vec::with_capacity(HEADER + body.len());
    plain.push(kind);
    plain.extend_from_slice(&ms.to_le_bytes());
    plain.extend_from_slice(body);
    sealer.seal(&place(key), &plain)
}

/// (kind, body, fetched at) of the value under `key`, if it opens there
/// and was not fetched in the future.
fn decode(
    sealer: &Sealer,
    key: &str,
    value: Vec<u8>,
) -> Result<(u8, Vec<u8>, SystemTime), NotOpened> {
    // Opened in the value's own buffer: a face is not copied again.
    let mut plain = sealer.open_owned(&place(key), value)?;
    if plain.len() < HEADER {
        return Err(NotOpened);
    }
    let ms = u64::from_le_bytes(plain[1..9].try_into().map_err(|_| NotOpened)?);
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    if at > SystemTime::now() + MAX_AHEAD {
        return Err(NotOpened);
    }
    let kind = plain[0];
    plain.drain(..HEADER);
    Ok((kind, plain, at))
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
            unlock: Script::new(UNLOCK),
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
        let len = self
            .fleet
            .run(|c| c.query(&Cmd::new("STRLEN").arg(key))?.int())?;
        let len = usize::try_from(len).ok()?;
        if len == 0 || len > limit + HEADER + SEALING {
            return None;
        }
        let _held = self
            .config
            .memory
            .hold_within(len as u64, self.fleet.timeout())?;
        // Read under the length just seen: a value grown since is refused
        // unread, never held past the budget.
        let reply = self
            .fleet
            .run(|c| c.query_within(&Cmd::new("GET").arg(key), Limits::value(len)))?;
        let value = reply.value().ok()??;
        (value.len() == len).then_some(value)
    }

    /// The answer under `key`: from Redis if published, else fetched by
    /// this mount or another (see the module).
    fn shared<T>(
        &self,
        key: &str,
        limit: usize,
        read: impl Fn(u8, Vec<u8>, SystemTime) -> Option<Result<T, ApiError>>,
        fetch: impl FnOnce() -> Result<T, ApiError>,
        publish: impl FnOnce(&Result<T, ApiError>) -> Option<(Vec<u8>, Duration)>,
    ) -> Result<T, ApiError> {
        let look = || {
            let value = self.published(key, limit)?;
            let answer = match decode(&self.fleet.sealer, key, value) {
                Ok((kind, body, at)) => read(kind, body, at),
                Err(e) => {
                    self.fleet.rejected(&e);
                    None
                }
            };
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
            let set = Cmd::new("SET")
                .arg(&lock)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(lock_for.as_millis() as u64);
            c.query(&set)?.ok_or_nil()
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
                        .run(|c| c.invoke(&self.unlock.call(&[&lock]).arg(&token)))
                };
                // Published between the look and the lock: no need to ask.
                if let Some(answer) = look() {
                    let _ = unlock();
                    return answer;
                }
                let result = fetch();
                if let Some((value, ttl)) = publish(&result) {
                    let set = Cmd::new("PSETEX")
                        .arg(key)
                        .arg(ttl.as_millis().max(1) as u64)
                        .arg(value);
                    let _ = self.fleet.run(|c| c.query(&set));
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
                    let held: Option<bool> = self
                        .fleet
                        .run(|c| Ok(c.query(&Cmd::new("EXISTS").arg(&lock))?.int()? > 0));
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

/// Where the fleet keeps a face; the id is personal data, a keyed hash
/// names it.
pub(super) fn face_key(fleet: &Fleet, kind: IdKind, id: &str, cropped: bool) -> String {
    let name = fleet.sealer.name(&[
        kind.as_str().as_bytes(),
        &[u8::from(cropped)],
        id.as_bytes(),
    ]);
    fleet.key(&format!("face:{name}"))
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
            .run(|c| {
                match c.query(&Cmd::new("GET").arg(listing_generation(&self.fleet, kind)))? {
                    super::client::Reply::Nil => Ok(0),
                    reply => reply.int(),
                }
            })
            .unwrap_or(0);
        let token = self
            .fleet
            .sealer
            .name(&[page_token.unwrap_or("").as_bytes()]);
        let key = self.fleet.key(&format!("list:{kind}:{generation}:{token}"));
        self.shared(
            &key,
            4 << 20,
            |what, body, at| {
                if what != PAGE {
                    return None;
                }
                let page: SharedPage = serde_json::from_slice(&body).ok()?;
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
                let value = encode(&self.fleet.sealer, &key, PAGE, &body, SystemTime::now());
                Some((value, self.config.face_ttl))
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
            |what, body, at| {
                Some(match what {
                    FACE => {
                        let held = self.config.memory.try_hold(body.len() as u64)?;
                        Ok(FaceBytes {
                            bytes: body,
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
            |result| {
                let (what, body, ttl) = match result {
                    Ok(face) if face.bytes.len() <= MAX_SHARED_FACE => {
                        (FACE, &face.bytes[..], self.config.face_ttl)
                    }
                    // The API's "does not exist", for as long as a mount remembers it.
                    Err(ApiError::UserNotFound) => (NO_USER, &b""[..], self.config.negative_ttl),
                    Err(ApiError::FaceNotFound) => (NO_FACE, &b""[..], self.config.negative_ttl),
                    _ => return None,
                };
                let value = encode(&self.fleet.sealer, &key, what, body, SystemTime::now());
                Some((value, ttl))
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
                    let _ = self
                        .fleet
                        .run(|c| c.query(&Cmd::new("DEL").arg(&keys[0]).arg(&keys[1])));
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
    fn a_value_is_used_only_whole_under_its_key_and_never_from_the_future() {
        let sealer = Sealer::derive(b"secret", "tenant");
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let value = encode(&sealer, "k:a", FACE, b"face bytes", at);
        assert_eq!(
            decode(&sealer, "k:a", value.clone()),
            Ok((FACE, b"face bytes".to_vec(), at))
        );
        assert_eq!(
            decode(&sealer, "k:b", value.clone()),
            Err(NotOpened),
            "moved"
        );
        for cut in 0..value.len() {
            assert_eq!(
                decode(&sealer, "k:a", value[..cut].to_vec()),
                Err(NotOpened)
            );
        }
        // Any change: the kind (a face turned into "no face" would be a
        // false ENOENT), the time, the bytes.
        for flip in 0..value.len() {
            let mut bad = value.clone();
            bad[flip] ^= 0x20;
            assert_eq!(
                decode(&sealer, "k:a", bad),
                Err(NotOpened),
                "flip at {flip}"
            );
        }
        let ahead = SystemTime::now() + Duration::from_secs(3600);
        let forged = encode(&sealer, "k:a", FACE, b"face bytes", ahead);
        assert_eq!(
            decode(&sealer, "k:a", forged),
            Err(NotOpened),
            "from the future"
        );
    }
}
