//! What arrives in data frames: fragments put back together, the event JSON
//! read, and events seen before recognised (delivery is at least once).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;
use serde::Deserialize;

/// A partly received message is dropped this long after its last fragment
/// (the Go SDK's 5 s).
pub const FRAGMENT_TTL: Duration = Duration::from_secs(5);
/// Bounds on what fragments may hold: a message of more bytes, or more
/// messages in parts at once, is a broken sender, not an event.
const MAX_MESSAGE_BYTES: usize = 1 << 20;
const MAX_PARTIAL_MESSAGES: usize = 64;
const MAX_FRAGMENTS: usize = 64;

/// An ACS user whose features changed (`acs.user.updated_v1`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserChange {
    pub event_id: String,
    /// The user's ids as the event names them (`user_id` only with the
    /// field scope `contact:user.employee_id:readonly`).
    pub open_id: Option<String>,
    pub union_id: Option<String>,
    pub user_id: Option<String>,
    pub face_uploaded: Option<bool>,
}

impl UserChange {
    /// What this mount's own upload of `id`'s face changed, as the fleet
    /// is told it (the other ids are not known here).
    pub fn uploaded(kind: crate::api::IdKind, id: &str) -> UserChange {
        use crate::api::IdKind;
        let id = Some(id.to_owned());
        let only = |k: IdKind| if k == kind { id.clone() } else { None };
        UserChange {
            event_id: format!("upload-{}", std::process::id()),
            open_id: only(IdKind::OpenId),
            union_id: only(IdKind::UnionId),
            user_id: only(IdKind::UserId),
            face_uploaded: Some(true),
        }
    }

    /// The ids the event names, by kind.
    pub fn ids(&self) -> Vec<(crate::api::IdKind, &str)> {
        use crate::api::IdKind;
        [
            (IdKind::OpenId, &self.open_id),
            (IdKind::UnionId, &self.union_id),
            (IdKind::UserId, &self.user_id),
        ]
        .into_iter()
        .filter_map(|(kind, id)| Some((kind, id.as_deref()?)))
        .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    UserChanged(UserChange),
    /// Any other event type: acknowledged, nothing done.
    Other {
        event_type: String,
        event_id: String,
    },
}

#[derive(Deserialize)]
struct Envelope {
    header: EnvelopeHeader,
    #[serde(default)]
    event: serde_json::Value,
}

#[derive(Deserialize)]
struct EnvelopeHeader {
    event_id: String,
    event_type: String,
}

#[derive(Deserialize)]
struct UserUpdated {
    #[serde(default)]
    user_id: UserIds,
    face_uploaded: Option<bool>,
}

#[derive(Deserialize, Default)]
struct UserIds {
    open_id: Option<String>,
    union_id: Option<String>,
    user_id: Option<String>,
}

pub const USER_UPDATED: &str = "acs.user.updated_v1";

/// Why an event's payload was not understood.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not a schema 2.0 event")]
    NotAnEvent(#[source] serde_json::Error),
    #[error("an {USER_UPDATED} event without its fields")]
    MissingFields(#[source] serde_json::Error),
}

/// Reads a schema 2.0 event.
pub fn parse(payload: &[u8]) -> Result<Event, ParseError> {
    let envelope: Envelope = serde_json::from_slice(payload).map_err(ParseError::NotAnEvent)?;
    let EnvelopeHeader {
        event_id,
        event_type,
    } = envelope.header;
    if event_type != USER_UPDATED {
        return Ok(Event::Other {
            event_type,
            event_id,
        });
    }
    let body: UserUpdated =
        serde_json::from_value(envelope.event).map_err(ParseError::MissingFields)?;
    let non_empty = |id: Option<String>| id.filter(|s| !s.is_empty());
    Ok(Event::UserChanged(UserChange {
        event_id,
        open_id: non_empty(body.user_id.open_id),
        union_id: non_empty(body.user_id.union_id),
        user_id: non_empty(body.user_id.user_id),
        face_uploaded: body.face_uploaded,
    }))
}

struct Partial {
    parts: Vec<Option<Vec<u8>>>,
    bytes: usize,
    touched: Instant,
}

/// Messages split over several frames (`sum` > 1), by message id.
#[derive(Default)]
pub struct Fragments {
    partial: HashMap<String, Partial>,
}

impl Fragments {
    /// Adds fragment `seq` of `sum`; the whole message once every fragment
    /// is in. Fragments that cannot belong to a message (`seq` ≥ `sum`, a
    /// `sum` that changed, too many or too large) end that message.
    pub fn add(
        &mut self,
        id: &str,
        sum: usize,
        seq: usize,
        bytes: Vec<u8>,
        now: Instant,
    ) -> Option<Vec<u8>> {
        self.partial
            .retain(|_, p| now.saturating_duration_since(p.touched) < FRAGMENT_TTL);
        if sum <= 1 {
            return Some(bytes);
        }
        if seq >= sum || sum > MAX_FRAGMENTS {
            self.partial.remove(id);
            return None;
        }
        if !self.partial.contains_key(id) && self.partial.len() >= MAX_PARTIAL_MESSAGES {
            return None;
        }
        let partial = self
            .partial
            .entry(id.to_owned())
            .or_insert_with(|| Partial {
                parts: vec![None; sum],
                bytes: 0,
                touched: now,
            });
        if partial.parts.len() != sum {
            self.partial.remove(id);
            return None;
        }
        partial.bytes += bytes.len();
        if partial.bytes > MAX_MESSAGE_BYTES {
            self.partial.remove(id);
            return None;
        }
        partial.parts[seq] = Some(bytes);
        partial.touched = now;
        if partial.parts.iter().any(Option::is_none) {
            return None;
        }
        let partial = self.partial.remove(id)?;
        Some(partial.parts.into_iter().flatten().flatten().collect())
    }

    pub fn pending(&self) -> usize {
        self.partial.len()
    }
}

/// Event ids handled lately: a re-push of one is acknowledged, not redone.
pub struct SeenEvents(LruCache<String, ()>);

impl SeenEvents {
    pub fn new(capacity: usize) -> SeenEvents {
        SeenEvents(LruCache::new(NonZeroUsize::new(capacity.max(1)).unwrap()))
    }

    /// Whether `event_id` is new (and remembers it).
    pub fn first_time(&mut self, event_id: &str) -> bool {
        self.0.put(event_id.to_owned(), ()).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPDATED: &str = r#"{"schema":"2.0","header":{"event_id":"5e37","event_type":"acs.user.updated_v1","create_time":"1608725989000","token":"t","app_id":"cli_x","tenant_key":"k"},"event":{"user_id":{"union_id":"on_1","user_id":"e33","open_id":"ou_1"},"card":123456,"face_uploaded":true}}"#;

    #[test]
    fn the_documented_payload_reads_as_a_user_change() {
        assert_eq!(
            parse(UPDATED.as_bytes()).ok(),
            Some(Event::UserChanged(UserChange {
                event_id: "5e37".into(),
                open_id: Some("ou_1".into()),
                union_id: Some("on_1".into()),
                user_id: Some("e33".into()),
                face_uploaded: Some(true),
            }))
        );
        let without_user_id = UPDATED.replace(r#""user_id":"e33","#, "");
        let Ok(Event::UserChanged(change)) = parse(without_user_id.as_bytes()) else {
            panic!()
        };
        assert_eq!(change.user_id, None);
        let other = UPDATED.replace("acs.user.updated_v1", "acs.access_record.created_v1");
        assert!(matches!(parse(other.as_bytes()), Ok(Event::Other { .. })));
        assert!(parse(b"{}").is_err());
        assert!(parse(b"\xff").is_err());
    }

    #[test]
    fn fragments_join_in_order_whatever_order_they_come_in() {
        let now = Instant::now();
        let mut f = Fragments::default();
        assert_eq!(
            f.add("m", 1, 0, b"whole".to_vec(), now),
            Some(b"whole".to_vec())
        );
        assert_eq!(f.add("m", 3, 2, b"c".to_vec(), now), None);
        assert_eq!(f.add("m", 3, 0, b"a".to_vec(), now), None);
        assert_eq!(f.add("m", 3, 1, b"b".to_vec(), now), Some(b"abc".to_vec()));
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn broken_or_stale_fragments_end_their_message() {
        let now = Instant::now();
        let mut f = Fragments::default();
        assert_eq!(f.add("m", 2, 5, b"x".to_vec(), now), None, "seq past sum");
        f.add("m", 2, 0, b"a".to_vec(), now);
        assert_eq!(f.add("m", 3, 1, b"b".to_vec(), now), None, "sum changed");
        assert_eq!(f.pending(), 0);
        f.add("n", 2, 0, b"a".to_vec(), now);
        let later = now + FRAGMENT_TTL;
        assert_eq!(f.add("n", 2, 1, b"b".to_vec(), later), None, "expired");
        assert_eq!(f.pending(), 1, "only the new fragment waits");
        let huge = vec![0u8; MAX_MESSAGE_BYTES + 1];
        assert_eq!(f.add("h", 2, 0, huge, now), None);
        for i in 0..MAX_PARTIAL_MESSAGES + 10 {
            f.add(&format!("p{i}"), 2, 0, b"a".to_vec(), later);
        }
        assert!(f.pending() <= MAX_PARTIAL_MESSAGES);
    }

    #[test]
    fn an_event_id_is_new_once() {
        let mut seen = SeenEvents::new(2);
        assert!(seen.first_time("a"));
        assert!(!seen.first_time("a"));
        assert!(seen.first_time("b"));
        assert!(seen.first_time("c"));
        assert!(seen.first_time("a"), "forgotten past the capacity");
    }
}
