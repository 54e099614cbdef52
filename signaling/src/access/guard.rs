//! Abuse limits, decided before any work is done for a request (pure: the caller passes
//! `now`). Two concerns, one table per source address:
//!
//! - **Request budget.** Every request that could start something (out of any dialog: an
//!   INVITE, a REGISTER, an OPTIONS probe) spends a token of its source's bucket, refilled
//!   at `--source-rate` per second up to twice that. An empty bucket answers 503 with
//!   `Retry-After`; a source that keeps sending into an empty bucket until it owes a whole
//!   burst is dropped silently (answering a flood would amplify it). Trusted sources
//!   (`--trusted`, trunks and PBXs) have no budget. What counts is the address, never the
//!   `User-Agent`, which a scanner sets as it likes.
//! - **Password guessing.** Wrong digest answers from one source, with no success in
//!   between, ban it after `--auth-max-failures` for `--auth-ban` (doubling with each ban of
//!   the same source, at most an hour; the count of bans is kept a day): everything it sends
//!   is dropped while banned, except the requests of its calls that are up. A user guessed
//!   at from many sources is guarded the same way: its answers from addresses it has never
//!   authenticated from are refused unchecked (the same challenge a wrong password gets, so
//!   the guesser learns nothing) while it is guarded.
//!
//! Neither locks the real user out of the address it uses: a source and user pair that
//! authenticated in the last day is *known*, and that user's requests from that address pass
//! both bans and are checked as usual. A guesser sharing that address (the same NAT) gets
//! `--auth-max-failures` tries at that user before the pair is forgotten and the ordinary
//! ban applies to it too.
//!
//! Memory is bounded: at most [`MAX_SOURCES`] sources and [`MAX_KNOWN`] known pairs; past
//! that, idle sources are forgotten first, and new ones are served untracked (the global
//! limits, `--max-calls` and the transaction table, still hold).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Sources tracked at once.
pub(crate) const MAX_SOURCES: usize = 65_536;
/// Known source and user pairs kept.
pub(crate) const MAX_KNOWN: usize = 100_000;
/// How long a success keeps its source and user pair known.
const KNOWN_FOR: Duration = Duration::from_secs(24 * 3600);
/// Failures older than this are forgiven.
const FAILURE_MEMORY: Duration = Duration::from_secs(600);
/// How long a banned source's record of bans is kept after its last failure, so that a
/// patient guesser coming back after a ban meets a longer one.
const BAN_MEMORY: Duration = Duration::from_secs(24 * 3600);
/// The longest ban.
const MAX_BAN: Duration = Duration::from_secs(3600);
/// A user guessed at from unknown addresses this many times `max_failures` is guarded.
const USER_FACTOR: u32 = 4;

/// The limits (`--source-rate`, `--auth-max-failures`, `--auth-ban`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Requests per second a source may start outside dialogs; 0: no budget.
    pub source_rate: f64,
    /// Wrong answers from a source (or `USER_FACTOR` times that at a user) before a ban; 0:
    /// no bans.
    pub max_failures: u32,
    /// The first ban; each further ban of the same source doubles it, up to an hour.
    pub ban: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            source_rate: 50.0,
            max_failures: 5,
            ban: Duration::from_secs(60),
        }
    }
}

/// What to do with a request that could start something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Pass,
    /// Over budget: answer 503 with `Retry-After` (seconds).
    Reject {
        retry_after: u64,
    },
    /// Flooding or banned: no answer at all.
    Drop,
}

/// A ban that began (logged once, counted in `signaling_auth_bans_total`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ban {
    Source {
        source: IpAddr,
        failures: u32,
        length: Duration,
    },
    User {
        user: String,
        failures: u32,
        length: Duration,
    },
}

#[derive(Debug)]
struct Source {
    tokens: f64,
    refilled: Instant,
    /// Over budget since this many requests (logged once when it starts).
    limited: bool,
    strikes: Strikes,
    seen: Instant,
}

/// Wrong answers counted against a source or a user, and the bans they brought.
#[derive(Debug, Default)]
struct Strikes {
    failures: u32,
    last_failure: Option<Instant>,
    /// Banned (a source) or guarded (a user) until then.
    until: Option<Instant>,
    bans: u32,
}

impl Strikes {
    fn active(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| until > now)
    }

    /// Whether there is anything left to remember at `now`: a ban in force, or failures
    /// not yet forgiven (a day once it was ever banned, so a patient guesser meets a longer
    /// ban).
    fn remembered(&self, now: Instant) -> bool {
        let memory = if self.bans > 0 {
            BAN_MEMORY
        } else {
            FAILURE_MEMORY
        };
        self.active(now)
            || self
                .last_failure
                .is_some_and(|at| now.saturating_duration_since(at) < memory)
    }

    /// One more wrong answer; when it reaches `threshold`, a ban begins (the first lasting
    /// `first`, each further one twice the last): its failures and length.
    fn strike(&mut self, now: Instant, threshold: u32, first: Duration) -> Option<(u32, Duration)> {
        if self
            .last_failure
            .is_some_and(|at| now.saturating_duration_since(at) > FAILURE_MEMORY)
        {
            self.failures = 0;
        }
        self.failures += 1;
        self.last_failure = Some(now);
        if self.failures < threshold {
            return None;
        }
        let (failures, length) = (self.failures, ban_length(first, self.bans));
        self.until = Some(now + length);
        self.bans += 1;
        self.failures = 0;
        Some((failures, length))
    }
}

#[derive(Debug)]
struct Known {
    since: Instant,
    failures: u32,
}

/// The per-source and per-user state.
#[derive(Debug)]
pub(crate) struct Guard {
    limits: Limits,
    sources: HashMap<IpAddr, Source>,
    users: HashMap<String, Strikes>,
    known: HashMap<(IpAddr, String), Known>,
    purged: Option<Instant>,
}

fn ban_length(first: Duration, bans: u32) -> Duration {
    first
        .saturating_mul(1u32 << bans.min(16))
        .min(MAX_BAN.max(first))
}

impl Guard {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            sources: HashMap::new(),
            users: HashMap::new(),
            known: HashMap::new(),
            purged: None,
        }
    }

    /// Housekeeping, called about once a second: forgets what expired once a minute; the
    /// sources banned now.
    pub(crate) fn tick(&mut self, now: Instant) -> usize {
        if self
            .purged
            .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(60))
        {
            self.purge(now);
            self.purged = Some(now);
        }
        self.banned_sources(now)
    }

    fn burst(&self) -> f64 {
        (self.limits.source_rate * 2.0).max(1.0)
    }

    fn source(&mut self, now: Instant, ip: IpAddr) -> Option<&mut Source> {
        if !self.sources.contains_key(&ip) {
            if self.sources.len() >= MAX_SOURCES {
                self.purge(now);
            }
            if self.sources.len() >= MAX_SOURCES {
                return None;
            }
            let tokens = self.burst();
            self.sources.insert(
                ip,
                Source {
                    tokens,
                    refilled: now,
                    limited: false,
                    strikes: Strikes::default(),
                    seen: now,
                },
            );
        }
        self.sources.get_mut(&ip)
    }

    /// Forgets sources that are neither banned nor recently active, pairs no longer known
    /// and users no longer guarded.
    pub(crate) fn purge(&mut self, now: Instant) {
        let idle = Duration::from_secs(60);
        self.sources.retain(|_, s| {
            now.saturating_duration_since(s.seen) < idle || s.strikes.remembered(now)
        });
        self.known
            .retain(|_, k| now.saturating_duration_since(k.since) < KNOWN_FOR);
        self.users.retain(|_, u| u.remembered(now));
    }

    fn is_known(&self, now: Instant, ip: IpAddr, user: Option<&str>) -> bool {
        user.is_some_and(|user| {
            self.known
                .get(&(ip, user.to_owned()))
                .is_some_and(|k| now.saturating_duration_since(k.since) < KNOWN_FOR)
        })
    }

    /// Whether everything from `ip` is dropped: it is banned, and `user` (who the request
    /// claims to be) has not authenticated from there lately.
    pub(crate) fn drops(&self, now: Instant, ip: IpAddr, user: Option<&str>) -> bool {
        self.sources.get(&ip).is_some_and(|s| s.strikes.active(now))
            && !self.is_known(now, ip, user)
    }

    /// Admits a request from `ip` that could start something; `user` is who it claims to be
    /// (its credentials' user name, else its To user for REGISTER or From user otherwise).
    /// The second value is true when the source just went over its budget (log it once).
    pub(crate) fn admit(
        &mut self,
        now: Instant,
        ip: IpAddr,
        user: Option<&str>,
    ) -> (Admission, bool) {
        let known = self.is_known(now, ip, user);
        let rate = self.limits.source_rate;
        let burst = self.burst();
        let Some(source) = self.source(now, ip) else {
            return (Admission::Pass, false);
        };
        source.seen = now;
        if source.strikes.active(now) && !known {
            return (Admission::Drop, false);
        }
        if rate <= 0.0 {
            return (Admission::Pass, false);
        }
        let elapsed = now.saturating_duration_since(source.refilled).as_secs_f64();
        source.refilled = now;
        source.tokens = (source.tokens + elapsed * rate).min(burst);
        if source.tokens >= 1.0 {
            source.tokens -= 1.0;
            source.limited = false;
            return (Admission::Pass, false);
        }
        // Owing: each request while empty deepens the debt, down to a whole burst.
        source.tokens = (source.tokens - 1.0).max(-burst);
        let started = !source.limited;
        source.limited = true;
        if source.tokens <= -burst {
            return (Admission::Drop, started);
        }
        let retry_after = ((1.0 - source.tokens) / rate).ceil().max(1.0) as u64;
        (Admission::Reject { retry_after }, started)
    }

    /// Whether `user`'s answer from `ip` must be refused unchecked (the user is guarded and
    /// the address is not one it uses).
    pub(crate) fn refuses(&self, now: Instant, ip: IpAddr, user: &str) -> bool {
        if self.is_known(now, ip, Some(user)) {
            return false;
        }
        self.users.get(user).is_some_and(|u| u.active(now))
    }

    /// A right answer: the pair becomes known and the source's failures are forgiven.
    pub(crate) fn succeeded(&mut self, now: Instant, ip: IpAddr, user: &str) {
        if let Some(source) = self.sources.get_mut(&ip) {
            source.strikes.failures = 0;
        }
        let key = (ip, user.to_owned());
        if !self.known.contains_key(&key) && self.known.len() >= MAX_KNOWN {
            self.purge(now);
            if self.known.len() >= MAX_KNOWN {
                return;
            }
        }
        self.known.insert(
            key,
            Known {
                since: now,
                failures: 0,
            },
        );
    }

    /// A wrong or unusable answer (including one for an unknown user, so a guesser cannot
    /// tell the two apart by the limits either); the bans it began.
    pub(crate) fn failed(&mut self, now: Instant, ip: IpAddr, user: &str) -> Vec<Ban> {
        let mut bans = Vec::new();
        let max = self.limits.max_failures;
        if max == 0 {
            return bans;
        }
        let first = self.limits.ban;
        let key = (ip, user.to_owned());
        if let Some(known) = self.known.get_mut(&key) {
            // The user's own address: a few typing mistakes are not an attack, but a guesser
            // behind the same address must not get unlimited tries either.
            known.failures += 1;
            if known.failures < max {
                return bans;
            }
            self.known.remove(&key);
        }
        if let Some(source) = self.source(now, ip)
            && let Some((failures, length)) = source.strikes.strike(now, max, first)
        {
            bans.push(Ban::Source {
                source: ip,
                failures,
                length,
            });
        }
        if (self.users.len() < MAX_SOURCES || self.users.contains_key(user))
            && let Some((failures, length)) = self.users.entry(user.to_owned()).or_default().strike(
                now,
                max.saturating_mul(USER_FACTOR),
                first,
            )
        {
            bans.push(Ban::User {
                user: user.to_owned(),
                failures,
                length,
            });
        }
        bans
    }

    /// Sources currently banned (the `signaling_banned_sources` gauge).
    pub(crate) fn banned_sources(&self, now: Instant) -> usize {
        self.sources
            .values()
            .filter(|s| s.strikes.active(now))
            .count()
    }

    /// Sources tracked (bounded by [`MAX_SOURCES`]).
    #[cfg(test)]
    pub(crate) fn tracked_sources(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    fn limits() -> Limits {
        Limits {
            source_rate: 10.0,
            max_failures: 5,
            ban: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_source_spends_its_burst_then_is_answered_503_then_dropped() {
        let mut guard = Guard::new(limits());
        let now = Instant::now();
        for _ in 0..20 {
            assert_eq!(guard.admit(now, ip(1), None).0, Admission::Pass);
        }
        let (first, started) = guard.admit(now, ip(1), None);
        assert!(matches!(first, Admission::Reject { retry_after } if retry_after >= 1));
        assert!(started, "the first refusal is reported for the log");
        assert!(!guard.admit(now, ip(1), None).1, "and only the first");
        let mut answers = Vec::new();
        for _ in 0..40 {
            answers.push(guard.admit(now, ip(1), None).0);
        }
        assert_eq!(answers.last(), Some(&Admission::Drop), "a flood is dropped");
        // Another source is not affected.
        assert_eq!(guard.admit(now, ip(2), None).0, Admission::Pass);
        // The debt is paid back at the rate: a burst's debt takes 4 s at 10/s.
        let later = now + Duration::from_secs(5);
        assert_eq!(guard.admit(later, ip(1), None).0, Admission::Pass);
    }

    #[test]
    fn a_steady_source_within_its_rate_always_passes() {
        let mut guard = Guard::new(limits());
        let start = Instant::now();
        for i in 0..1000u64 {
            let now = start + Duration::from_millis(i * 110);
            assert_eq!(guard.admit(now, ip(1), None).0, Admission::Pass);
        }
    }

    #[test]
    fn a_rate_of_zero_is_no_budget() {
        let mut guard = Guard::new(Limits {
            source_rate: 0.0,
            ..limits()
        });
        let now = Instant::now();
        for _ in 0..10_000 {
            assert_eq!(guard.admit(now, ip(1), None).0, Admission::Pass);
        }
    }

    #[test]
    fn a_guesser_is_banned_after_five_failures_longer_each_time() {
        let mut guard = Guard::new(limits());
        let now = Instant::now();
        for _ in 0..4 {
            assert!(guard.failed(now, ip(1), "alice").is_empty());
        }
        let bans = guard.failed(now, ip(1), "alice");
        assert_eq!(
            bans,
            vec![Ban::Source {
                source: ip(1),
                failures: 5,
                length: Duration::from_secs(60)
            }]
        );
        assert_eq!(guard.admit(now, ip(1), Some("alice")).0, Admission::Drop);
        assert_eq!(guard.banned_sources(now), 1);
        let after = now + Duration::from_secs(61);
        assert_eq!(guard.admit(after, ip(1), Some("alice")).0, Admission::Pass);
        for _ in 0..4 {
            guard.failed(after, ip(1), "alice");
        }
        let again = guard.failed(after, ip(1), "alice");
        assert!(
            matches!(again[0], Ban::Source { length, .. } if length == Duration::from_secs(120))
        );
        // Bans stop growing at an hour.
        assert_eq!(
            ban_length(Duration::from_secs(60), 30),
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn a_success_forgives_earlier_failures() {
        let mut guard = Guard::new(limits());
        let now = Instant::now();
        for _ in 0..4 {
            guard.failed(now, ip(1), "alice");
        }
        guard.succeeded(now, ip(1), "alice");
        for _ in 0..4 {
            assert!(guard.failed(now, ip(1), "bob").is_empty());
        }
    }

    #[test]
    fn a_ban_does_not_lock_the_real_user_out_of_its_address() {
        let mut guard = Guard::new(limits());
        let now = Instant::now();
        guard.succeeded(now, ip(1), "alice");
        // A guesser behind the same address tries bob until the address is banned.
        for _ in 0..5 {
            guard.failed(now, ip(1), "bob");
        }
        assert_eq!(guard.admit(now, ip(1), Some("bob")).0, Admission::Drop);
        assert_eq!(guard.admit(now, ip(1), None).0, Admission::Drop);
        assert_eq!(guard.admit(now, ip(1), Some("alice")).0, Admission::Pass);
        // Guessing alice from her own address: five tries, then the pair is forgotten.
        for _ in 0..5 {
            guard.failed(now, ip(1), "alice");
        }
        assert_eq!(guard.admit(now, ip(1), Some("alice")).0, Admission::Drop);
    }

    #[test]
    fn a_user_guessed_from_many_addresses_is_guarded_except_where_it_lives() {
        let mut guard = Guard::new(limits());
        let now = Instant::now();
        guard.succeeded(now, ip(1), "alice");
        let mut bans = Vec::new();
        for attacker in 10..30 {
            bans.extend(guard.failed(now, ip(attacker), "alice"));
        }
        assert!(
            bans.iter()
                .any(|b| matches!(b, Ban::User { user, .. } if user == "alice"))
        );
        assert!(guard.refuses(now, ip(99), "alice"));
        assert!(
            !guard.refuses(now, ip(1), "alice"),
            "her own address is checked"
        );
        assert!(!guard.refuses(now, ip(99), "bob"));
        assert!(!guard.refuses(now + Duration::from_secs(61), ip(99), "alice"));
    }

    #[test]
    fn old_failures_are_forgiven_and_idle_sources_forgotten() {
        let mut guard = Guard::new(limits());
        let now = Instant::now();
        for _ in 0..4 {
            guard.failed(now, ip(1), "alice");
        }
        let later = now + FAILURE_MEMORY + Duration::from_secs(1);
        assert!(guard.failed(later, ip(1), "alice").is_empty());
        guard.admit(now, ip(2), None);
        guard.purge(later + FAILURE_MEMORY + Duration::from_secs(1));
        assert_eq!(guard.tracked_sources(), 0);
    }

    #[test]
    fn a_guesser_back_after_a_quiet_hour_meets_a_longer_ban() {
        let mut guard = Guard::new(limits());
        let now = Instant::now();
        for _ in 0..5 {
            guard.failed(now, ip(1), "alice");
        }
        let later = now + Duration::from_secs(3600);
        guard.purge(later);
        for _ in 0..4 {
            guard.failed(later, ip(1), "alice");
        }
        assert!(matches!(
            guard.failed(later, ip(1), "alice")[..],
            [Ban::Source { length, .. }] if length == Duration::from_secs(120)
        ));
        // A day without failures forgets it.
        let next_day = later + BAN_MEMORY + Duration::from_secs(1);
        guard.purge(next_day);
        assert_eq!(guard.tracked_sources(), 0);
    }

    #[test]
    fn the_source_table_is_bounded() {
        let mut guard = Guard::new(limits());
        let now = Instant::now();
        for n in 0..(MAX_SOURCES as u32 + 100) {
            let source = IpAddr::from(n.to_be_bytes());
            guard.admit(now, source, None);
        }
        assert_eq!(guard.tracked_sources(), MAX_SOURCES);
        // Untracked sources are served.
        assert_eq!(
            guard.admit(now, IpAddr::from([203, 0, 113, 1]), None).0,
            Admission::Pass
        );
    }
}
