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

use super::client::{ClientError, Cmd, Connection, Limits, Reply};
use super::shared::{face_key, listing_generation};
use super::Fleet;
use crate::api::IdKind;
use crate::events::message::UserChange;
use crate::repeated_warning::RepeatedWarning;
use crate::seal::NotOpened;
use crate::text::shown;

/// Warnings that can repeat with every event.
static NOT_PASSED_ON: RepeatedWarning = RepeatedWarning::new();
static UNREADABLE: RepeatedWarning = RepeatedWarning::new();

/// Events the stream keeps (about: trimming is approximate).
pub const STREAM_LENGTH: usize = 10_000;
/// How long one read waits for new events.
const BLOCK: Duration = Duration::from_secs(1);
/// Entries read at a time.
const READ_COUNT: usize = 16;
/// The largest entry value kept: a sealed event is a few hundred bytes.
/// A larger one is read past, counted as rejected and skipped.
const MAX_EVENT: usize = 16 << 10;
/// What one read may hold: [`READ_COUNT`] entries of the largest size.
const READ_LIMITS: Limits = Limits {
    bulk: MAX_EVENT,
    total: READ_COUNT * (MAX_EVENT + (4 << 10)),
};
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

/// Whether `id` is a stream id (`ms-seq`, two numbers): anything else
/// from Redis is not used as a position, nor logged.
fn is_stream_id(id: &str) -> bool {
    id.split_once('-').is_some_and(|(ms, seq)| {
        [ms, seq]
            .iter()
            .all(|n| !n.is_empty() && n.len() <= 20 && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// One entry read from the stream.
struct Entry {
    id: String,
    origin: Option<Vec<u8>>,
    /// The sealed event, or the size of one too large to keep.
    event: Result<Vec<u8>, usize>,
}

/// The entries of an `XREAD` reply (nil: none came within the block).
fn entries(reply: Reply) -> Result<Vec<Entry>, ClientError> {
    const SHAPE: ClientError = ClientError::Protocol("not a stream read");
    let mut out = Vec::new();
    if reply == Reply::Nil {
        return Ok(out);
    }
    for stream in reply.array()? {
        let mut stream = stream.array()?.into_iter();
        let (Some(_key), Some(items), None) = (stream.next(), stream.next(), stream.next()) else {
            return Err(SHAPE);
        };
        for item in items.array()? {
            let mut item = item.array()?.into_iter();
            let (Some(id), Some(fields)) = (item.next(), item.next()) else {
                return Err(SHAPE);
            };
            let id = id
                .text()
                .filter(|id| is_stream_id(id))
                .ok_or(SHAPE)?
                .to_owned();
            let mut entry = Entry {
                id,
                origin: None,
                event: Err(0),
            };
            // A deleted entry's fields are nil.
            let fields = if fields == Reply::Nil {
                Vec::new()
            } else {
                fields.array()?
            };
            let mut fields = fields.into_iter();
            while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                match (name.text(), value) {
                    (Some("origin"), Reply::Bulk(v)) => entry.origin = Some(v),
                    (Some("event"), Reply::Bulk(v)) => entry.event = Ok(v),
                    (Some("event"), Reply::Oversized(n)) => entry.event = Err(n),
                    _ => {}
                }
            }
            out.push(entry);
        }
    }
    Ok(out)
}

/// What `XINFO STREAM` says of where the stream begins and ends.
#[derive(Debug, PartialEq)]
struct StreamInfo {
    length: u64,
    last_generated_id: String,
    first_entry_id: Option<String>,
}

fn stream_info(reply: Reply) -> Result<StreamInfo, ClientError> {
    const SHAPE: ClientError = ClientError::Protocol("not a stream's information");
    let mut info = StreamInfo {
        length: 0,
        last_generated_id: String::new(),
        first_entry_id: None,
    };
    let mut fields = reply.array()?.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        match name.text() {
            Some("length") => info.length = u64::try_from(value.int()?).map_err(|_| SHAPE)?,
            Some("last-generated-id") => {
                info.last_generated_id = value
                    .text()
                    .filter(|id| is_stream_id(id))
                    .ok_or(SHAPE)?
                    .to_owned()
            }
            Some("first-entry") if value != Reply::Nil => {
                let first = value.array()?.into_iter().next().ok_or(SHAPE)?;
                let id = first.text().filter(|id| is_stream_id(id)).ok_or(SHAPE)?;
                info.first_entry_id = Some(id.to_owned());
            }
            _ => {}
        }
    }
    if info.last_generated_id.is_empty() {
        return Err(SHAPE);
    }
    Ok(info)
}

impl FleetEvents {
    pub fn new(fleet: Arc<Fleet>) -> Arc<FleetEvents> {
        let origin = fleet.instance().to_owned();
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
        let mut commands = vec![
            Cmd::new("XADD")
                .arg(self.fleet.key("events"))
                .arg("MAXLEN")
                .arg("~")
                .arg(STREAM_LENGTH)
                .arg("*")
                .arg("origin")
                .arg(&self.origin)
                .arg("event")
                .arg(&event),
            stale.iter().fold(Cmd::new("DEL"), |del, key| del.arg(key)),
        ];
        if change.face_uploaded.is_some() {
            for kind in IdKind::ALL {
                commands.push(Cmd::new("INCR").arg(listing_generation(&self.fleet, kind)));
            }
        }
        let published = self.fleet.run(|c| {
            let replies = c.transaction(&commands)?;
            match replies.iter().any(|r| matches!(r, Reply::Error(_))) {
                true => Err(ClientError::Unexpected(
                    "a command of the transaction failed",
                )),
                false => Ok(()),
            }
        });
        if published.is_none() {
            NOT_PASSED_ON.warn(|| {
                format!(
                    "event {}: not passed on to the fleet (Redis is failing); other mounts see the change after their --ttl",
                    shown(&change.event_id)
                )
            });
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
            let connected = std::time::Instant::now();
            let (failure, lived) = match self.fleet.dedicated() {
                Ok(mut connection) => {
                    match self.read_connection(&mut connection, &mut position, &mut broken, target)
                    {
                        Err(e) => (e, connected.elapsed()),
                        Ok(never) => match never {},
                    }
                }
                Err(e) => (e, Duration::ZERO),
            };
            if !std::mem::replace(&mut broken, true) {
                log::warn!(
                    "the fleet's event stream cannot be read ({failure}); reading it again every {:?}",
                    super::RETRY_AFTER
                );
            } else {
                log::debug!("reading the fleet's event stream: {failure}");
            }
            // A connection that worked a while is made again at once (a
            // restarted Redis); one that failed at once, or could not be
            // made, waits: a Redis answering nonsense is not asked in a loop.
            if lived < super::RETRY_AFTER {
                std::thread::sleep(super::RETRY_AFTER);
            }
        }
    }

    /// Reads and applies entries on `connection` until it fails.
    fn read_connection(
        &self,
        connection: &mut Connection,
        position: &mut Option<String>,
        broken: &mut bool,
        target: &dyn StreamTarget,
    ) -> Result<std::convert::Infallible, ClientError> {
        // At every (re)connect: Redis may have restarted and lost the stream.
        let mut at = self.resume_from(connection, position.clone(), target)?;
        // From here on, a restart resumes here (the store holds what
        // these events would change).
        target.set_position(&at);
        *position = Some(at.clone());
        let stream = self.fleet.key("events");
        loop {
            // A blocking read answers after BLOCK: allow for a busy machine.
            connection.set_deadline(
                std::time::Instant::now()
                    + BLOCK
                    + self.fleet.timeout().max(Duration::from_secs(2)),
            );
            let read = Cmd::new("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&stream)
                .arg(&at);
            let read = entries(connection.query_within(&read, READ_LIMITS)?)?;
            if std::mem::take(broken) {
                log::info!("the fleet's event stream is read again");
            }
            for entry in &read {
                if id_order(&entry.id) <= id_order(&at) {
                    return Err(ClientError::Protocol("a stream entry out of order"));
                }
                at = entry.id.clone();
                self.apply(entry, target);
            }
            if !read.is_empty() {
                *position = Some(at.clone());
                target.set_position(&at);
            }
        }
    }

    /// Applies one entry another mount appended.
    fn apply(&self, entry: &Entry, target: &dyn StreamTarget) {
        if entry.origin.as_deref() == Some(self.origin.as_bytes()) {
            return;
        }
        let opened = entry
            .event
            .as_ref()
            .map_err(|_| NotOpened)
            .and_then(|e| self.fleet.sealer.open(&self.event_place(), e));
        let change = match opened {
            Ok(event) => serde_json::from_slice::<UserChange>(&event).ok(),
            Err(e) => {
                self.fleet.rejected(&e);
                return;
            }
        };
        match change {
            Some(change) => {
                self.fleet.metrics.events.inc();
                log::info!(
                    "event {} from the fleet: a user's faces changed (face_uploaded {:?}); dropping them",
                    shown(&change.event_id),
                    change.face_uploaded
                );
                target.apply(&change);
            }
            None => UNREADABLE.warn(|| {
                format!(
                    "an unreadable entry {} in the fleet's event stream",
                    entry.id
                )
            }),
        }
    }

    /// Where to read the stream from: after `last`, the entry last
    /// applied, if every entry since is still there; if not, nothing
    /// fetched before now is trusted, and reading goes on from the end.
    /// Without a `last` (a first start: nothing held to go stale), the end.
    fn resume_from(
        &self,
        connection: &mut Connection,
        last: Option<String>,
        target: &dyn StreamTarget,
    ) -> Result<String, ClientError> {
        connection.set_deadline(std::time::Instant::now() + self.fleet.timeout());
        let info = match connection.query_within(
            &Cmd::new("XINFO")
                .arg("STREAM")
                .arg(self.fleet.key("events")),
            READ_LIMITS,
        ) {
            Ok(reply) => Some(stream_info(reply)?),
            // No such key: no stream yet, or Redis lost it.
            Err(ClientError::Refused(_)) => None,
            Err(e) => return Err(e),
        };
        let end = info
            .as_ref()
            .map_or_else(|| "0-0".to_owned(), |i| i.last_generated_id.clone());
        let Some(last) = last.filter(|last| is_stream_id(last)) else {
            return Ok(end);
        };
        // The entry last read must still be there (ids only grow, also in
        // a stream made anew after Redis lost the old one).
        let lost = match &info {
            // Read from the start of a stream made after this mount
            // started: all of it is there unless some was trimmed.
            Some(info) if last == "0-0" => info.length >= STREAM_LENGTH as u64,
            Some(StreamInfo {
                first_entry_id: Some(first),
                ..
            }) => id_order(first) > id_order(&last),
            Some(info) => id_order(&info.last_generated_id) > id_order(&last),
            // No stream at all where there was one: Redis lost it.
            None => last != "0-0",
        };
        if !lost {
            return Ok(last);
        }
        log::warn!(
            "the fleet's event stream no longer holds every event since this mount last read it (Redis restarted, or more than {STREAM_LENGTH} events passed): faces and listings fetched before now are fetched again when next needed"
        );
        target.distrust_before(SystemTime::now());
        Ok(end)
    }
}
