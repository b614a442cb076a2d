//! Events for every mount: the mount that hears an `acs.user.updated_v1`
//! on the long connection (the service gives each event to one client of
//! the app) appends it to a Redis Stream; every mount reads the stream and
//! drops the user's faces (memory, store, kernel) as if it had heard it.
//!
//! A mount with an on-disk store remembers how far it read (a note in the
//! store), so events sent while it was down are applied when it is back.
//! The stream keeps the last [`STREAM_LENGTH`] events; if what a mount
//! missed is no longer there (trimmed, or Redis restarted and lost it),
//! the mount trusts nothing it fetched before as fresh: every face and
//! listing is fetched again when next needed.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redis::streams::{StreamInfoStreamReply, StreamReadOptions, StreamReadReply};
use redis::Commands;

use super::shared::{face_key, listing_generation};
use super::Fleet;
use crate::api::IdKind;
use crate::events::message::UserChange;
use crate::seal::NotOpened;

/// Events the stream keeps (about: trimming is approximate).
pub const STREAM_LENGTH: usize = 10_000;
/// How long one read waits for new events.
const BLOCK: Duration = Duration::from_secs(1);
/// What the stream reader asks of the mount it serves; it sees the mount
/// only through this.
pub trait StreamTarget: Send + Sync {
    /// Applies a change another mount heard, as if heard here.
    fn apply(&self, change: &UserChange);
    /// Changes may have been missed: nothing fetched before `at` is fresh.
    fn distrust_before(&self, at: SystemTime);
    /// The last entry applied, where it outlives the mount (the store), if kept.
    fn position(&self) -> Option<String>;
    /// Notes the last entry applied (a no-op where nothing outlives the mount).
    fn set_position(&self, at: &str);
}

pub struct FleetEvents {
    fleet: Arc<Fleet>,
    /// This mount, so that it skips what it appended itself.
    origin: String,
}

/// Stream ids are `ms-seq`: ordered as pairs of numbers.
fn id_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

impl FleetEvents {
    pub fn new(fleet: Arc<Fleet>) -> Arc<FleetEvents> {
        let origin = format!(
            "{:x}-{:x}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        );
        Arc::new(FleetEvents { fleet, origin })
    }

    /// Tells the fleet of a change this mount heard: appends it to the
    /// stream, and drops the fleet's copies of the user's faces (and starts
    /// new listing pages if who has a face changed), so that no mount reads
    /// the old ones from Redis.
    pub fn publish(&self, change: &UserChange) {
        let Ok(event) = serde_json::to_vec(change) else {
            return;
        };
        // Sealed: the entry names users, and a forged one must not apply.
        let event = self.fleet.sealer.seal(&self.event_place(), &event);
        let mut stale: Vec<String> = Vec::new();
        for (kind, id) in change.ids() {
            for cropped in [false, true] {
                stale.push(face_key(&self.fleet, kind, id, cropped));
            }
        }
        let published = self.fleet.run(|c| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            pipe.cmd("XADD")
                .arg(self.fleet.key("events"))
                .arg("MAXLEN")
                .arg("~")
                .arg(STREAM_LENGTH)
                .arg("*")
                .arg("origin")
                .arg(&self.origin)
                .arg("event")
                .arg(&event)
                .ignore();
            pipe.del(&stale).ignore();
            if change.face_uploaded.is_some() {
                for kind in IdKind::ALL {
                    pipe.incr(listing_generation(&self.fleet, kind), 1).ignore();
                }
            }
            pipe.query::<()>(c)
        });
        if published.is_none() {
            log::warn!(
                "event {}: not passed on to the fleet (Redis is failing); other mounts see the change after their --ttl",
                change.event_id
            );
        }
    }

    /// What a stream entry is sealed to: the format and the stream.
    fn event_place(&self) -> Vec<u8> {
        [
            &b"facefs fleet event v2\0"[..],
            self.fleet.key("events").as_bytes(),
        ]
        .concat()
    }

    /// Starts the thread that applies the fleet's events to `target`.
    pub fn listen(self: &Arc<Self>, target: Arc<dyn StreamTarget>) -> std::io::Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("facefs-fleet-events".into())
            .spawn(move || me.read_forever(&*target))
            .map(drop)
    }

    fn read_forever(&self, target: &dyn StreamTarget) {
        // The last entry applied: from the store across restarts, else
        // from the first connection on.
        let mut position: Option<String> = target.position();
        // Logged once per outage; the request path tells the rest.
        let mut broken = false;
        loop {
            let mut connection = match self.fleet.dedicated(BLOCK) {
                Ok(connection) => connection,
                Err(e) => {
                    if !std::mem::replace(&mut broken, true) {
                        log::warn!(
                            "the fleet's event stream cannot be read ({:?}); reading it again every {:?}",
                            e.kind(),
                            super::RETRY_AFTER
                        );
                    }
                    std::thread::sleep(super::RETRY_AFTER);
                    continue;
                }
            };
            // At every (re)connect: Redis may have restarted and lost the stream.
            let mut at = self.resume_from(&mut connection, position.take(), target);
            // From here on, a restart resumes here (the store holds what
            // these events would change).
            target.set_position(&at);
            position = Some(at.clone());
            loop {
                let options = StreamReadOptions::default()
                    .block(BLOCK.as_millis() as usize)
                    .count(100);
                let read: redis::RedisResult<Option<StreamReadReply>> =
                    connection.xread_options(&[self.fleet.key("events")], &[&at], &options);
                let reply = match read {
                    Ok(reply) => reply.unwrap_or_default(),
                    Err(e) => {
                        log::debug!("reading the fleet's event stream: {:?}", e.kind());
                        break;
                    }
                };
                if std::mem::take(&mut broken) {
                    log::info!("the fleet's event stream is read again");
                }
                let mut moved = false;
                for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
                    at = entry.id.clone();
                    moved = true;
                    let origin: Option<String> = entry.get("origin");
                    if origin.as_deref() == Some(self.origin.as_str()) {
                        continue;
                    }
                    let opened = entry
                        .get::<Vec<u8>>("event")
                        .ok_or(NotOpened)
                        .and_then(|e| self.fleet.sealer.open(&self.event_place(), &e));
                    let change = match opened {
                        Ok(event) => serde_json::from_slice::<UserChange>(&event).ok(),
                        Err(e) => {
                            self.fleet.rejected(&e);
                            continue;
                        }
                    };
                    match change {
                        Some(change) => {
                            self.fleet.metrics.events.inc();
                            log::info!(
                                "event {} from the fleet: a user's faces changed (face_uploaded {:?}); dropping them",
                                change.event_id,
                                change.face_uploaded
                            );
                            target.apply(&change);
                        }
                        None => log::warn!(
                            "an unreadable entry {} in the fleet's event stream",
                            entry.id
                        ),
                    }
                }
                if moved {
                    position = Some(at.clone());
                    target.set_position(&at);
                }
            }
        }
    }

    /// Where to read the stream from: after `last`, the entry last
    /// applied, if every entry since is still there; if not, nothing
    /// fetched before now is trusted, and reading goes on from the end.
    /// Without a `last` (a first start: nothing held to go stale), the end.
    fn resume_from(
        &self,
        connection: &mut redis::Connection,
        last: Option<String>,
        target: &dyn StreamTarget,
    ) -> String {
        let info: redis::RedisResult<StreamInfoStreamReply> =
            connection.xinfo_stream(self.fleet.key("events"));
        let end = info
            .as_ref()
            .map_or_else(|_| "0-0".to_owned(), |i| i.last_generated_id.clone());
        let Some(last) = last else {
            return end;
        };
        // The entry last read must still be there (ids only grow, also in
        // a stream made anew after Redis lost the old one).
        let lost = match &info {
            // Read from the start of a stream made after this mount
            // started: all of it is there unless some was trimmed.
            Ok(info) if last == "0-0" => info.length >= STREAM_LENGTH,
            Ok(info) if info.length == 0 => id_order(&info.last_generated_id) > id_order(&last),
            Ok(info) => id_order(&info.first_entry.id) > id_order(&last),
            // No stream at all where there was one: Redis lost it.
            Err(_) => last != "0-0",
        };
        if !lost {
            return last;
        }
        log::warn!(
            "the fleet's event stream no longer holds every event since this mount last read it (Redis restarted, or more than {STREAM_LENGTH} events passed): faces and listings fetched before now are fetched again when next needed"
        );
        target.distrust_before(SystemTime::now());
        end
    }
}
