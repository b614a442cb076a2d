//! One rate budget for the fleet: every request takes its turn from a GCRA
//! (a "theoretical arrival time" per tenant) kept in Redis and run on the
//! Redis server's clock, so that the mounts together send no more than
//! `--rate-limit`. A throttling answer seen by one mount holds them all
//! back, and the turns taken are counted per month.
//!
//! This process's own limiter still paces it too (and orders its callers by
//! priority). Each mount also keeps its name in a membership set in Redis
//! (refreshed every [`MEMBERSHIP_REFRESH`], expiring after
//! [`MEMBERSHIP_TTL`]) and reads how many mounts are alive; while Redis
//! fails, a mount paces at its share of `--rate-limit` from the last count
//! it saw, so that the fleet alone stays under the tenant's limit (how it
//! goes alone and comes back: [`super::alone`]). Shares of mounts that died
//! come back within the membership's expiry.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::alone::Outages;
use super::client::Script;
use super::{Fleet, RETRY_AFTER};
use crate::api::throttle::{NoSlot, NoTurn, Pacer, Priority, RateLimiter};

/// KEYS: the arrival time, the pause, this month's counter.
/// ARGV: the interval and the longest wait (µs), the monthly budget (0:
/// none), the counter's lifetime (s), the furthest ahead a turn or pause
/// can be (µs).
/// Returns {wait µs, requests this month}; the month's count is -1 when the
/// wait is too long (no turn taken), -2 when the budget is spent.
///
/// Numbers that no mount could have written — a pause or turn further
/// ahead than any wait, a count that is not one — are taken as forged and
/// ignored: whoever can write to Redis must not stop the fleet with one SET.
const TAKE_TURN: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local furthest = now + tonumber(ARGV[5])
local function bounded(key)
  local value = tonumber(redis.call('GET', key) or '0') or 0
  if value > furthest then return 0 end
  return value
end
local pause = bounded(KEYS[2])
local tat = math.max(bounded(KEYS[1]), now, pause)
local wait = tat - now
if wait > tonumber(ARGV[2]) then return {wait, -1} end
local used = tonumber(redis.call('GET', KEYS[3]) or '0')
if used == nil or used < 0 or used > 1099511627776 or used ~= math.floor(used) then
  used = 0
  redis.call('SET', KEYS[3], 0, 'EX', ARGV[4])
end
local budget = tonumber(ARGV[3])
if budget > 0 and used >= budget then return {used, -2} end
local next = tat + tonumber(ARGV[1])
redis.call('SET', KEYS[1], next, 'PX', math.floor((next - now) / 1000) + 1000)
used = redis.call('INCR', KEYS[3])
if used == 1 then redis.call('EXPIRE', KEYS[3], ARGV[4]) end
return {wait, used}
";

/// Sets the fleet's pause to at least `now + ARGV[1]` µs (on the server's clock).
const PAUSE: &str = r"
local t = redis.call('TIME')
local until_ = tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[1])
local old = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ > old then
  redis.call('SET', KEYS[1], until_, 'PX', math.floor(tonumber(ARGV[1]) / 1000) + 1000)
end
return 1
";

/// The furthest ahead a turn or a pause may be (beyond twice the longest
/// wait): the API's throttling answers ask for seconds, not minutes.
const FURTHEST_AHEAD: Duration = Duration::from_secs(60);

/// Keeps this mount in the set of mounts alive and counts them.
/// KEYS: the set, the arrival time of [`TAKE_TURN`]. ARGV: this mount, the
/// expiry (ms). Returns {the count, 1 if turns are granted ahead (the
/// fleet is sending at its limit) else 0}.
const MEMBERSHIP: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
local tat = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
local queued = 0
if tat > tonumber(t[1]) * 1000000 + tonumber(t[2]) then queued = 1 end
return {redis.call('ZCARD', KEYS[1]), queued}
";

/// How often a mount says it is alive, and how long that lasts.
pub const MEMBERSHIP_REFRESH: Duration = Duration::from_secs(2);
pub const MEMBERSHIP_TTL: Duration = Duration::from_secs(6);
/// A count past this is not a fleet but a forgery: shares stop shrinking.
const MAX_MEMBERS: u64 = 1000;

pub struct FleetPacer {
    local: Arc<RateLimiter>,
    fleet: Arc<Fleet>,
    interval: Duration,
    monthly_budget: Option<u64>,
    take_turn: Script,
    pause: Script,
    /// This mount's pace while Redis fails, and around its changes.
    outages: Arc<Outages>,
}

/// The counter's key part for the month of `now` (UTC), e.g. `2026-12`.
fn month_of(now: SystemTime) -> String {
    let days = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 86_400;
    // Civil from days (Howard Hinnant's algorithm), enough for a month name.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}")
}

impl FleetPacer {
    pub fn new(
        local: Arc<RateLimiter>,
        fleet: Arc<Fleet>,
        per_second: f64,
        monthly_budget: Option<u64>,
    ) -> FleetPacer {
        let outages = Arc::new(Outages::new(
            per_second,
            MEMBERSHIP_REFRESH + fleet.timeout(),
            RETRY_AFTER + fleet.timeout(),
        ));
        let told = outages.clone();
        fleet.when_changed(move |up| told.changed(up));
        let pacer = FleetPacer {
            outages,
            local,
            fleet,
            interval: Duration::from_secs_f64(1.0 / per_second.max(0.001)),
            monthly_budget,
            take_turn: Script::new(TAKE_TURN),
            pause: Script::new(PAUSE),
        };
        pacer.start_membership();
        pacer
    }

    /// Says every [`MEMBERSHIP_REFRESH`] that this mount is alive, and
    /// notes how many are (a thread for the life of the process).
    fn start_membership(&self) {
        let fleet = self.fleet.clone();
        let outages = self.outages.clone();
        let me = fleet.instance().to_owned();
        let spawned = std::thread::Builder::new()
            .name("facefs-fleet-members".into())
            .spawn(move || {
                let script = Script::new(MEMBERSHIP);
                let keys = [fleet.key("members"), fleet.key("rate:next")];
                loop {
                    let call = script
                        .call(&[&keys[0], &keys[1]])
                        .arg(&me)
                        .arg(MEMBERSHIP_TTL.as_millis() as u64);
                    if let Some((count, queued)) = fleet.run(|c| c.invoke(&call)?.two_ints()) {
                        let count = u64::try_from(count).unwrap_or(1).clamp(1, MAX_MEMBERS);
                        fleet.metrics.members.set(count as i64);
                        if queued == 1 {
                            outages.queued();
                        }
                    }
                    std::thread::sleep(MEMBERSHIP_REFRESH);
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start the fleet's membership thread ({e}): while Redis fails, this mount paces at its own --rate-limit");
        }
    }

    /// Takes a fleet turn, waiting for it; `None`: Redis failed (before
    /// or while waiting), go alone.
    fn fleet_turn(&self, deadline: Instant) -> Option<Result<(), NoTurn>> {
        let outage = self.outages.current();
        let longest = deadline.saturating_duration_since(Instant::now());
        let month = month_of(SystemTime::now());
        let keys = [
            self.fleet.key("rate:next"),
            self.fleet.key("rate:pause"),
            self.fleet.key(&format!("requests:{month}")),
        ];
        let call = self
            .take_turn
            .call(&[&keys[0], &keys[1], &keys[2]])
            .arg(self.interval.as_micros() as u64)
            .arg(longest.as_micros() as u64)
            .arg(self.monthly_budget.unwrap_or(0))
            .arg(40u64 * 86_400)
            .arg(FURTHEST_AHEAD.max(longest * 2).as_micros() as u64);
        let (wait, used) = self.fleet.run(|c| c.invoke(&call)?.two_ints())?;
        Some(match used {
            -1 => Err(NoTurn::TooLate),
            -2 => Err(NoTurn::MonthlyBudget {
                used: wait.max(0) as u64,
                budget: self.monthly_budget.unwrap_or(0),
            }),
            used => {
                self.fleet.metrics.requests_this_month.set(used.max(0));
                // Never past the caller's deadline, whatever Redis answers.
                let wait = Duration::from_micros(wait.max(0) as u64).min(longest);
                if !wait.is_zero() {
                    self.outages.queued();
                }
                if !self.outages.wait_for_turn(Instant::now() + wait, outage) {
                    return None;
                }
                Ok(())
            }
        })
    }
}

impl Pacer for FleetPacer {
    fn acquire(&self, deadline: Instant, priority: Priority) -> Result<(), NoTurn> {
        Pacer::acquire(&*self.local, deadline, priority)?;
        // Redis failing (or in the grace after it answers again): this
        // mount's share of the fleet's rate paces it; in the grace, the
        // fleet's turn is taken as well.
        // `failed`: the fleet turn just asked for failed (Redis down, or
        // every connection busy).
        let (mut failed, mut paced) = (false, false);
        loop {
            if !paced {
                let members = self.fleet.metrics.members.get().max(1) as u64;
                let alone = failed || self.fleet.is_down();
                if let Some(share) = self.outages.share(alone, members) {
                    match share.acquire(deadline, priority) {
                        Ok(()) => paced = true,
                        Err(NoSlot::TooLate) => return Err(NoTurn::TooLate),
                        // The grace ended, or the share changed: ask again.
                        Err(NoSlot::Retired) => {
                            failed = false;
                            continue;
                        }
                    }
                }
            }
            match self.fleet_turn(deadline) {
                Some(turn) => return turn,
                None if paced => return Ok(()),
                None => failed = true,
            }
        }
    }

    fn pause_for(&self, length: Duration) {
        self.local.pause_for(length);
        self.outages.pause_for(length);
        let key = self.fleet.key("rate:pause");
        let call = self.pause.call(&[&key]).arg(length.as_micros() as u64);
        let _ = self.fleet.run(|c| c.invoke(&call));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_named_in_utc() {
        let at = |secs: u64| month_of(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01");
        assert_eq!(at(951_782_400), "2000-02"); // 2000-02-29, a leap day
        assert_eq!(at(1_796_083_199), "2026-11"); // 2026-11-30 23:59:59
        assert_eq!(at(1_796_083_200), "2026-12");
        assert_eq!(at(1_798_761_599), "2026-12");
        assert_eq!(at(1_798_761_600), "2027-01");
    }
}
