//! Per-source throttling: escalating penalties and bans for repeated SSH login failures (in
//! the spirit of OpenSSH's PerSourcePenalties) and a token bucket per address for the
//! registration API.
//!
//! Sources are IPv4 addresses or IPv6 /64 networks (one host usually owns a whole /64, so
//! per-address state would be trivial to dodge). Both maps are bounded: when full, entries
//! that no longer matter are dropped first, then the stalest one, so a flood of spoofed-ish
//! sources costs memory once and never grows it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use assist_proto::lock;
use assist_proto::per_source::source_key;

/// Sources remembered at once by each map.
pub const MAX_SOURCES: usize = 65_536;

/// The `[penalties]` policy section; every key optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PenaltySettings {
    /// Failed logins from one source tolerated before penalties start.
    pub free_failures: u32,
    /// The first penalty: new connections from the source are closed this long. Each further
    /// failure doubles it (never beyond `ban`).
    pub penalty: Duration,
    /// Failed logins after which the source is banned for `ban`.
    pub max_failures: u32,
    /// How long a ban lasts; also how long failures are remembered after the last one.
    pub ban: Duration,
    /// Registrations one source may make back to back.
    pub register_burst: u32,
    /// Registrations per minute a source gets back after the burst.
    pub register_per_minute: u32,
}

impl Default for PenaltySettings {
    /// Lenient enough for a person mistyping, an agent retrying or a NAT of a few devices;
    /// strict enough that guessing keys or flooding registrations gets nowhere.
    fn default() -> Self {
        Self {
            free_failures: 5,
            penalty: Duration::from_secs(5),
            max_failures: 12,
            ban: Duration::from_secs(10 * 60),
            register_burst: 60,
            register_per_minute: 30,
        }
    }
}

/// What [`Penalties::record_failure`] decided, for the log and the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Still within the free failures.
    Tolerated { failures: u32 },
    /// New connections are closed for `until`.
    Penalized { failures: u32, until: Duration },
    /// Banned for `until`.
    Banned { failures: u32, until: Duration },
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Tolerated { failures } => write!(f, "{failures} failed logins, tolerated"),
            Verdict::Penalized { failures, until } => write!(
                f,
                "{failures} failed logins: connections refused for {}",
                humantime::format_duration(*until)
            ),
            Verdict::Banned { failures, until } => write!(
                f,
                "{failures} failed logins: banned for {}",
                humantime::format_duration(*until)
            ),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
    /// The block is a ban (the failures reached `max_failures`), not a penalty.
    banned: bool,
}

/// Why connections from a source are refused right now, for the refusal's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// How much longer.
    pub left: Duration,
    /// A ban (too many failures), rather than an escalating penalty.
    pub banned: bool,
    /// Failed logins remembered.
    pub failures: u32,
}

/// Login failures per source.
#[derive(Debug, Default)]
pub struct Penalties {
    sources: Mutex<HashMap<IpAddr, Failures>>,
}

impl Penalties {
    /// How much longer connections from `ip` are refused, if they are.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        self.block(ip, now).map(|b| b.left)
    }

    /// Whether, why and how much longer connections from `ip` are refused.
    pub fn block(&self, ip: IpAddr, now: Instant) -> Option<Block> {
        let sources = lock::mutex(&self.sources);
        let entry = sources.get(&source_key(ip))?;
        let until = entry.blocked_until?;
        (until > now).then(|| Block {
            left: until - now,
            banned: entry.banned,
            failures: entry.count,
        })
    }

    /// Counts one connection from `ip` that ended without a login after a refused attempt.
    pub fn record_failure(&self, ip: IpAddr, settings: &PenaltySettings, now: Instant) -> Verdict {
        let mut sources = lock::mutex(&self.sources);
        let key = source_key(ip);
        if !sources.contains_key(&key) && sources.len() >= MAX_SOURCES {
            make_room(&mut sources, now, settings.ban, |f| f.last);
        }
        let entry = sources.entry(key).or_insert(Failures {
            count: 0,
            last: now,
            blocked_until: None,
            banned: false,
        });
        // Failures are forgiven a ban's length after the last one.
        if now.saturating_duration_since(entry.last) > settings.ban {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        let failures = entry.count;
        let verdict = if failures >= settings.max_failures.max(1) {
            Verdict::Banned {
                failures,
                until: settings.ban,
            }
        } else if failures > settings.free_failures {
            let doublings = (failures - settings.free_failures - 1).min(30);
            let until = settings
                .penalty
                .saturating_mul(1 << doublings)
                .min(settings.ban);
            Verdict::Penalized { failures, until }
        } else {
            Verdict::Tolerated { failures }
        };
        if let Verdict::Penalized { until, .. } | Verdict::Banned { until, .. } = verdict {
            entry.blocked_until = Some(now + until);
        }
        entry.banned = matches!(verdict, Verdict::Banned { .. });
        verdict
    }
}

/// One source as `assist-jumphost status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceState {
    /// The address, or the /64 for IPv6.
    pub source: IpAddr,
    /// Failed logins still remembered.
    pub failures: u32,
    /// Seconds its connections are still refused for; 0 when only counted.
    pub blocked_secs: u64,
    /// "counted", "penalized" or "banned".
    pub state: String,
}

impl Penalties {
    /// Sources whose failures are still remembered under `settings`, blocked ones first.
    pub fn snapshot(&self, settings: &PenaltySettings, now: Instant) -> Vec<SourceState> {
        let sources = lock::mutex(&self.sources);
        let mut out: Vec<SourceState> = sources
            .iter()
            .filter(|(_, f)| now.saturating_duration_since(f.last) <= settings.ban)
            .map(|(source, f)| {
                let blocked = f
                    .blocked_until
                    .map_or(Duration::ZERO, |u| u.saturating_duration_since(now));
                let state = if blocked.is_zero() {
                    "counted"
                } else if f.count >= settings.max_failures.max(1) {
                    "banned"
                } else {
                    "penalized"
                };
                SourceState {
                    source: *source,
                    failures: f.count,
                    blocked_secs: blocked.as_secs_f64().ceil() as u64,
                    state: state.to_owned(),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            b.blocked_secs
                .cmp(&a.blocked_secs)
                .then(a.source.cmp(&b.source))
        });
        out
    }
}

/// Drops the entries older than `forget` (they no longer matter), or else the stalest one.
fn make_room<V>(
    map: &mut HashMap<IpAddr, V>,
    now: Instant,
    forget: Duration,
    last: impl Fn(&V) -> Instant,
) {
    map.retain(|_, v| now.saturating_duration_since(last(v)) <= forget);
    if map.len() >= MAX_SOURCES
        && let Some(stalest) = map.iter().min_by_key(|(_, v)| last(v)).map(|(k, _)| *k)
    {
        map.remove(&stalest);
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A token bucket per source for the registration API.
#[derive(Debug, Default)]
pub struct RateLimiter {
    sources: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    /// Takes a token for `ip`; `Err` carries how long until the next one.
    pub fn take(
        &self,
        ip: IpAddr,
        settings: &PenaltySettings,
        now: Instant,
    ) -> Result<(), Duration> {
        let burst = f64::from(settings.register_burst.max(1));
        let per_sec = f64::from(settings.register_per_minute.max(1)) / 60.0;
        let mut sources = lock::mutex(&self.sources);
        let key = source_key(ip);
        if !sources.contains_key(&key) && sources.len() >= MAX_SOURCES {
            // A bucket idle long enough to be full again is the same as no bucket.
            let refill = Duration::from_secs_f64(burst / per_sec);
            make_room(&mut sources, now, refill, |b| b.last);
        }
        let bucket = sources.entry(key).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_sec).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_sec))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn settings() -> PenaltySettings {
        PenaltySettings {
            free_failures: 2,
            penalty: Duration::from_secs(1),
            max_failures: 5,
            ban: Duration::from_secs(60),
            register_burst: 3,
            register_per_minute: 60,
        }
    }

    #[test]
    fn penalties_escalate_then_ban_and_spare_other_sources() {
        let p = Penalties::default();
        let s = settings();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t = Instant::now();
        assert_eq!(
            p.record_failure(a, &s, t),
            Verdict::Tolerated { failures: 1 }
        );
        assert_eq!(
            p.record_failure(a, &s, t),
            Verdict::Tolerated { failures: 2 }
        );
        assert_eq!(p.blocked(a, t), None);
        let third = p.record_failure(a, &s, t);
        assert_eq!(
            third,
            Verdict::Penalized {
                failures: 3,
                until: Duration::from_secs(1)
            }
        );
        assert_eq!(p.blocked(a, t), Some(Duration::from_secs(1)));
        assert!(!p.block(a, t).unwrap().banned, "a penalty is not a ban");
        assert_eq!(p.blocked(b, t), None, "another address is not affected");
        assert_eq!(
            p.blocked(a, t + Duration::from_secs(2)),
            None,
            "a penalty ends"
        );
        let fourth = p.record_failure(a, &s, t);
        assert_eq!(
            fourth,
            Verdict::Penalized {
                failures: 4,
                until: Duration::from_secs(2)
            }
        );
        let fifth = p.record_failure(a, &s, t);
        assert_eq!(
            fifth,
            Verdict::Banned {
                failures: 5,
                until: Duration::from_secs(60)
            }
        );
        assert!(p.blocked(a, t + Duration::from_secs(59)).is_some());
        let ban = p.block(a, t).unwrap();
        assert!(ban.banned && ban.failures == 5, "{ban:?}");
        // Long after the ban, the slate is clean.
        let later = t + Duration::from_secs(200);
        assert_eq!(
            p.record_failure(a, &s, later),
            Verdict::Tolerated { failures: 1 }
        );
    }

    #[test]
    fn snapshot_shows_blocked_sources_first_and_forgets_old_ones() {
        let p = Penalties::default();
        let s = settings();
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "192.0.2.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            "192.0.2.3".parse().unwrap(),
        );
        let t = Instant::now();
        p.record_failure(b, &s, t);
        for _ in 0..5 {
            p.record_failure(a, &s, t);
        }
        for _ in 0..3 {
            p.record_failure(c, &s, t);
        }
        let view = p.snapshot(&s, t);
        let rows: Vec<(IpAddr, u32, u64, &str)> = view
            .iter()
            .map(|v| (v.source, v.failures, v.blocked_secs, v.state.as_str()))
            .collect();
        assert_eq!(
            rows,
            [
                (a, 5, 60, "banned"),
                (c, 3, 1, "penalized"),
                (b, 1, 0, "counted")
            ]
        );
        // After the penalty the source is only counted; after a ban's length, forgotten.
        let later = p.snapshot(&s, t + Duration::from_secs(2));
        assert_eq!(later[1].state, "counted");
        assert!(p.snapshot(&s, t + Duration::from_secs(61)).is_empty());
    }

    #[test]
    fn ipv6_sources_are_their_64() {
        let p = Penalties::default();
        let s = PenaltySettings {
            free_failures: 0,
            ..settings()
        };
        let t = Instant::now();
        p.record_failure("2001:db8::1".parse().unwrap(), &s, t);
        assert!(p.blocked("2001:db8::ffff:1".parse().unwrap(), t).is_some());
        assert!(p.blocked("2001:db8:0:1::1".parse().unwrap(), t).is_none());
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        p.record_failure(mapped, &s, t);
        assert!(p.blocked("192.0.2.9".parse().unwrap(), t).is_some());
    }

    #[test]
    fn token_bucket_refills_per_source() {
        let r = RateLimiter::default();
        let s = settings();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let t = Instant::now();
        for _ in 0..3 {
            r.take(a, &s, t).unwrap();
        }
        let wait = r.take(a, &s, t).unwrap_err();
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::ZERO,
            "{wait:?}"
        );
        r.take("192.0.2.2".parse().unwrap(), &s, t).unwrap();
        r.take(a, &s, t + Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn maps_stay_bounded() {
        let p = Penalties::default();
        let s = settings();
        let t = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 10) {
            p.record_failure(IpAddr::from(i.to_be_bytes()), &s, t);
        }
        assert!(p.sources.lock().unwrap().len() <= MAX_SOURCES);
    }
}
