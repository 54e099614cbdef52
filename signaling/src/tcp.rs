//! Limits on SIP over TCP, so that connections cannot take what calls need: a connection must
//! bring a complete message within [`FIRST_MESSAGE`] of its accept and finish a message it
//! started within [`PARTIAL_MESSAGE`], and one silent for [`IDLE`] is closed; one source may
//! hold `--tcp-per-source` ([`PER_SOURCE`]) connections, all sources together a global cap
//! that leaves descriptors for the media proxy's sockets. What is refused or closed is
//! counted in `signaling_tcp_connections_closed_total{reason}` and logged at most once a
//! minute per source.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGauge};

/// A new inbound connection has this long to bring its first complete message.
pub(crate) const FIRST_MESSAGE: Duration = Duration::from_secs(10);
/// Once part of a message has arrived, the rest must follow within this.
pub(crate) const PARTIAL_MESSAGE: Duration = Duration::from_secs(10);
/// A connection that sends nothing (not even a CRLF keep-alive, RFC 5626) this long is closed.
pub(crate) const IDLE: Duration = Duration::from_secs(600);
/// Connections one source address may hold at once, unless `--tcp-per-source` says: enough for
/// an office of TCP phones behind one NAT, a sliver of the descriptors.
pub(crate) const PER_SOURCE: usize = 256;
/// Descriptors kept for everything but inbound TCP: the media proxy's four sockets per call
/// (embedded), database connections, outbound connections, files.
const RESERVE_PER_CALL: usize = 4;
const RESERVE_FIXED: usize = 1024;

/// `reason` values of `signaling_tcp_connections_closed_total`.
pub(crate) const CLOSE_REASONS: [&str; 6] = [
    "per_source_limit",
    "global_limit",
    "no_message",
    "partial_message",
    "idle",
    "unframeable",
];

/// The global cap for a descriptor limit and a call limit.
pub(crate) fn global_cap(nofile: u64, max_calls: usize) -> usize {
    let reserve = RESERVE_FIXED + RESERVE_PER_CALL * max_calls;
    usize::try_from(nofile)
        .unwrap_or(usize::MAX)
        .saturating_sub(reserve)
        .max(64)
}

/// The connection counts, shared by the acceptor and every connection's reader.
#[derive(Debug)]
pub(crate) struct Limits {
    per_source: usize,
    global: usize,
    state: Mutex<State>,
    open: IntGauge,
    closed: IntCounterVec,
}

#[derive(Debug, Default)]
struct State {
    by_source: HashMap<IpAddr, usize>,
    total: usize,
    /// When each source's last refusal was logged.
    logged: HashMap<IpAddr, Instant>,
}

/// One admitted inbound connection; dropping it gives its place back.
#[derive(Debug)]
pub(crate) struct Slot {
    limits: Arc<Limits>,
    source: IpAddr,
}

impl Limits {
    pub(crate) fn new(
        per_source: usize,
        global: usize,
        open: IntGauge,
        closed: IntCounterVec,
    ) -> Arc<Self> {
        Arc::new(Self {
            per_source,
            global,
            state: Mutex::default(),
            open,
            closed,
        })
    }

    /// Admits a connection from `source`, or says which limit refuses it.
    pub(crate) fn admit(
        self: &Arc<Self>,
        source: IpAddr,
        now: Instant,
    ) -> Result<Slot, &'static str> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let held = state.by_source.get(&source).copied().unwrap_or(0);
        let refused = if state.total >= self.global {
            Some("global_limit")
        } else if held >= self.per_source {
            Some("per_source_limit")
        } else {
            None
        };
        if let Some(reason) = refused {
            self.closed.with_label_values(&[reason]).inc();
            let log = state
                .logged
                .get(&source)
                .is_none_or(|at| now.duration_since(*at) >= Duration::from_secs(60));
            if log {
                if state.logged.len() > 10_000 {
                    state.logged.clear();
                }
                state.logged.insert(source, now);
                tracing::warn!(
                    peer = %source,
                    reason,
                    held,
                    total = state.total,
                    "TCP connection refused (logged once a minute per source)"
                );
            }
            return Err(reason);
        }
        *state.by_source.entry(source).or_default() += 1;
        state.total += 1;
        self.open.set(state.total as i64);
        Ok(Slot {
            limits: self.clone(),
            source,
        })
    }

    /// Counts a connection closed by a timeout or a framing error.
    pub(crate) fn closed(&self, reason: &'static str) {
        self.closed.with_label_values(&[reason]).inc();
    }
}

impl Slot {
    /// Counts this connection closed by a timeout or a framing error.
    pub(crate) fn closed(&self, reason: &'static str) {
        self.limits.closed(reason);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.limits.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = state.by_source.get_mut(&self.source) {
            *held -= 1;
            if *held == 0 {
                state.by_source.remove(&self.source);
            }
        }
        state.total = state.total.saturating_sub(1);
        self.limits.open.set(state.total as i64);
    }
}

/// When a connection's reader gives up waiting, and why: its first message, the rest of a
/// started one, or any sign of life.
pub(crate) fn deadline(
    inbound: bool,
    accepted: Instant,
    got_message: bool,
    partial_since: Option<Instant>,
    last_activity: Instant,
) -> (Instant, &'static str) {
    let idle = (last_activity + IDLE, "idle");
    let mut soonest = idle;
    if let Some(since) = partial_since {
        soonest = earliest(soonest, (since + PARTIAL_MESSAGE, "partial_message"));
    }
    if inbound && !got_message {
        soonest = earliest(soonest, (accepted + FIRST_MESSAGE, "no_message"));
    }
    soonest
}

fn earliest(a: (Instant, &'static str), b: (Instant, &'static str)) -> (Instant, &'static str) {
    if b.0 < a.0 { b } else { a }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_source: usize, global: usize) -> Arc<Limits> {
        let registry = prometheus::Registry::new();
        let open = IntGauge::new("open", "open").unwrap();
        let closed = service_kit::metrics::counter_vec(
            &registry,
            "closed",
            "closed",
            "reason",
            &CLOSE_REASONS,
        );
        Limits::new(per_source, global, open, closed)
    }

    #[test]
    fn sources_are_capped_each_and_all_together_and_slots_come_back() {
        let now = Instant::now();
        let limits = limits(2, 3);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let a1 = limits.admit(a, now).unwrap();
        let _a2 = limits.admit(a, now).unwrap();
        assert_eq!(limits.admit(a, now).unwrap_err(), "per_source_limit");
        let _b1 = limits.admit(b, now).unwrap();
        assert_eq!(limits.admit(b, now).unwrap_err(), "global_limit");
        assert_eq!(limits.open.get(), 3);
        drop(a1);
        assert_eq!(limits.open.get(), 2);
        let _a3 = limits.admit(a, now).expect("a's place came back");
        assert_eq!(
            limits.closed.with_label_values(&["per_source_limit"]).get(),
            1
        );
        assert_eq!(limits.closed.with_label_values(&["global_limit"]).get(), 1);
    }

    #[test]
    fn the_deadline_is_the_soonest_that_applies() {
        let t = Instant::now();
        assert_eq!(
            deadline(true, t, false, None, t),
            (t + FIRST_MESSAGE, "no_message")
        );
        assert_eq!(deadline(false, t, false, None, t), (t + IDLE, "idle"));
        assert_eq!(deadline(true, t, true, None, t), (t + IDLE, "idle"));
        let later = t + Duration::from_secs(30);
        assert_eq!(
            deadline(true, t, true, Some(later), later),
            (later + PARTIAL_MESSAGE, "partial_message")
        );
    }

    #[test]
    fn the_global_cap_keeps_descriptors_for_calls() {
        assert_eq!(global_cap(20_000, 2_000), 20_000 - 1024 - 8_000);
        assert_eq!(global_cap(1024, 2_000), 64, "never below 64");
    }
}
