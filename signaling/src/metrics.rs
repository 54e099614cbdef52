//! Prometheus metrics of signaling (stable names: docs/metrics.md, "Stable names and bounded
//! labels"; catalogue in `docs/metrics.md`). Served on `--metrics` together with the embedded
//! media proxy's.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use service_kit::metrics::registered;

/// Request method label values; anything else counts as `other`.
pub(crate) const METHODS: [&str; 15] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "REGISTER",
    "OPTIONS",
    "INFO",
    "UPDATE",
    "PRACK",
    "SUBSCRIBE",
    "NOTIFY",
    "REFER",
    "MESSAGE",
    "PUBLISH",
    "other",
];
/// Response code classes.
pub(crate) const CODE_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"];
const DISPOSITIONS: [&str; 5] = ["answered", "busy", "no_answer", "cancelled", "failed"];
const VERDICTS: [&str; 5] = ["ok", "one_way", "no_media", "direct", "not_answered"];

/// Every metric of one signaling instance.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub(crate) registry: Registry,
    pub(crate) calls: IntCounterVec,
    pub(crate) active_calls: IntGauge,
    pub(crate) calls_in_memory: IntGauge,
    pub(crate) transactions: IntGauge,
    pub(crate) timers: IntGauge,
    pub(crate) requests: IntCounterVec,
    pub(crate) responses: IntCounterVec,
    pub(crate) verdicts: IntCounterVec,
    pub(crate) mediaproxy_up: IntGaugeVec,
    pub(crate) media_moves: IntCounterVec,
    pub(crate) dns_failures: IntCounter,
    /// Steps of the wall clock seen (CDR times follow them; timers never do).
    pub(crate) clock_steps: IntCounter,
    pub(crate) sessions_swept: IntCounterVec,
    pub(crate) mediaproxy_duration: HistogramVec,
    pub(crate) recording_requests: IntCounterVec,
    pub(crate) auth_failures: IntCounterVec,
    /// Bans begun after failed authentications, by scope (`source`, `user`).
    pub(crate) auth_bans: IntCounterVec,
    /// Sources banned now.
    pub(crate) banned_sources: IntGauge,
    /// Requests over their source's budget, by action (`rejected` 503, `dropped`).
    pub(crate) requests_limited: IntCounterVec,
    /// Transfers (REFER), by outcome (`completed`, `failed`, `refused`).
    pub(crate) transfers: IntCounterVec,
    /// Inbound SIP TCP connections open.
    pub(crate) tcp_connections: IntGauge,
    /// Inbound SIP TCP connections refused or closed by a limit, by reason.
    pub(crate) tcp_closed: IntCounterVec,
    /// Answered calls: seconds from the caller's INVITE to the answer.
    pub(crate) setup: prometheus::Histogram,
    pub(crate) cdr: crate::cdr::WriterMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, label: &str, values: &[&str]| {
            service_kit::metrics::counter_vec(&registry, name, help, label, values)
        };
        let calls = counter(
            "signaling_calls_total",
            "Calls ended, by disposition.",
            "disposition",
            &DISPOSITIONS,
        );
        let requests = counter(
            "signaling_sip_requests_total",
            "SIP requests received, by method.",
            "method",
            &METHODS,
        );
        let responses = counter(
            "signaling_sip_responses_total",
            "SIP responses sent by signaling, by class.",
            "code_class",
            &CODE_CLASSES,
        );
        let verdicts = counter(
            "signaling_media_verdicts_total",
            "Media verdicts of ended calls.",
            "verdict",
            &VERDICTS,
        );
        let active_calls = registered(
            &registry,
            IntGauge::new("signaling_active_calls", "Calls in progress.").expect("valid metric"),
        );
        let gauge = |name: &str, help: &str| {
            registered(&registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let calls_in_memory = gauge(
            "signaling_calls_in_memory",
            "Calls held in memory: in progress, and ended ones lingering for retransmissions.",
        );
        let transactions = gauge(
            "signaling_sip_transactions",
            "SIP transactions alive (RFC 3261 section 17).",
        );
        let timers = gauge(
            "signaling_timers",
            "Armed deadlines of calls and transactions.",
        );
        let auth_failures = counter(
            "signaling_auth_failures_total",
            "Requests whose digest credentials were wrong or unusable, by method.",
            "method",
            &["REGISTER", "INVITE", "other"],
        );
        let auth_bans = counter(
            "signaling_auth_bans_total",
            "Bans begun after failed authentications: a source banned (everything it sends \
             dropped) or a user guarded (answers from addresses it never used refused).",
            "scope",
            &["source", "user"],
        );
        let banned_sources = gauge(
            "signaling_banned_sources",
            "Source addresses banned now after failed authentications.",
        );
        let requests_limited = counter(
            "signaling_requests_limited_total",
            "Requests over their source's budget (--source-rate): answered 503 with \
             Retry-After (rejected) or, flooding or banned, not answered (dropped).",
            "action",
            &["rejected", "dropped"],
        );
        let transfers = counter(
            "signaling_transfers_total",
            "Transfers asked by REFER: completed (the transferee talks to the target), failed \
             (the target or the transferee did not take it; the call went on) or refused (the \
             REFER itself: unroutable target, call not up, another pending, over budget).",
            "outcome",
            &["completed", "failed", "refused"],
        );
        let tcp_connections = registered(
            &registry,
            IntGauge::new(
                "signaling_tcp_connections",
                "Inbound SIP TCP connections open.",
            )
            .expect("valid metric"),
        );
        let tcp_closed = counter(
            "signaling_tcp_connections_closed_total",
            "Inbound SIP TCP connections refused or closed by a limit, by reason.",
            "reason",
            &crate::tcp::CLOSE_REASONS,
        );
        let media_moves = counter(
            "signaling_media_moves_total",
            "Calls whose media node was lost: moved to another node, or failed (no node took them).",
            "result",
            &["moved", "failed"],
        );
        let dns_failures = registered(
            &registry,
            IntCounter::new(
                "signaling_mediaproxy_dns_failures_total",
                "Resolutions of a --mediaproxy name that failed or found no address (the known nodes stay).",
            )
            .expect("valid metric"),
        );
        let mediaproxy_up = IntGaugeVec::new(
            Opts::new(
                "signaling_mediaproxy_up",
                "1 when the media proxy answers its lease renewal.",
            ),
            &["node"],
        )
        .expect("valid metric");
        let mediaproxy_up = registered(&registry, mediaproxy_up);
        let sessions_swept = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "signaling_media_sessions_swept_total",
                    "Stale sessions of ours released on a node: listed twice there with no call of ours on that node (moved away or ended while it was unreachable).",
                ),
                &["node"],
            )
            .expect("valid metric"),
        );
        let mediaproxy_duration = HistogramVec::new(
            HistogramOpts::new(
                "signaling_mediaproxy_request_duration_seconds",
                "Time of gRPC requests to the media proxy.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 0.5, 1.0, 2.0,
            ]),
            &["method"],
        )
        .expect("valid metric");
        let mediaproxy_duration = registered(&registry, mediaproxy_duration);
        let setup = registered(
            &registry,
            prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    "signaling_call_setup_seconds",
                    "Answered calls: time from the caller's INVITE to the answer relayed to it.",
                )
                .buckets(vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0,
                ]),
            )
            .expect("valid metric"),
        );
        let recording_requests = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "signaling_recording_requests_total",
                    "Recording requests sent to media proxies (by policy at the answer, by operators, after a move), by action and result.",
                ),
                &["action", "result"],
            )
            .expect("valid metric"),
        );
        for action in ["start", "pause", "stop"] {
            for result in ["ok", "failed"] {
                recording_requests.with_label_values(&[action, result]);
            }
        }
        let gauge = |name: &str, help: &str| {
            registered(&registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let plain_counter = |name: &str, help: &str| {
            registered(
                &registry,
                IntCounter::new(name, help).expect("valid metric"),
            )
        };
        let cdr = crate::cdr::WriterMetrics {
            queued: gauge(
                "signaling_cdr_queue",
                "CDRs waiting to be written (grows while the database is unreachable).",
            ),
            written: plain_counter(
                "signaling_cdr_written_total",
                "CDRs stored in the database.",
            ),
            errors: plain_counter(
                "signaling_cdr_write_errors_total",
                "Failed CDR database operations (connects and inserts).",
            ),
            spooled: plain_counter(
                "signaling_cdr_spooled_total",
                "CDRs written to the spool file instead of the database.",
            ),
        };
        let clock_steps = plain_counter(
            "signaling_clock_steps_total",
            "Steps of the wall clock of more than a second seen (CDR times follow the new time; timers and durations use the monotonic clock).",
        );
        Self {
            registry,
            cdr,
            clock_steps,
            calls,
            active_calls,
            calls_in_memory,
            transactions,
            timers,
            requests,
            responses,
            verdicts,
            mediaproxy_up,
            media_moves,
            dns_failures,
            sessions_swept,
            mediaproxy_duration,
            recording_requests,
            auth_failures,
            auth_bans,
            banned_sources,
            requests_limited,
            transfers,
            setup,
            tcp_connections,
            tcp_closed,
        }
    }

    /// Counts a received request by method (unknown methods as `other`).
    pub(crate) fn request(&self, method: &str) {
        let label = METHODS
            .iter()
            .find(|m| **m == method)
            .copied()
            .unwrap_or("other");
        self.requests.with_label_values(&[label]).inc();
    }

    /// Counts a response about to be sent, from its first bytes.
    pub(crate) fn response(&self, data: &[u8]) {
        if let Some(&digit) = data.strip_prefix(b"SIP/2.0 ").and_then(|rest| rest.first())
            && (b'1'..=b'6').contains(&digit)
        {
            self.responses
                .with_label_values(&[CODE_CLASSES[usize::from(digit - b'1')]])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_bounded() {
        let metrics = Metrics::new();
        metrics.request("INVITE");
        metrics.request("FROBNICATE");
        metrics.response(b"SIP/2.0 486 Busy Here\r\n");
        metrics.response(b"INVITE sip:x SIP/2.0\r\n");
        assert_eq!(metrics.requests.with_label_values(&["INVITE"]).get(), 1);
        assert_eq!(metrics.requests.with_label_values(&["other"]).get(), 1);
        assert_eq!(metrics.responses.with_label_values(&["4xx"]).get(), 1);
        let text = service_kit::metrics::render(std::slice::from_ref(&metrics.registry));
        assert!(!text.contains("FROBNICATE"));
    }
}
