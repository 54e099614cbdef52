//! Prometheus metrics of the media proxy (stable names: docs/metrics.md, "Stable names and
//! bounded labels"; catalogue in `docs/metrics.md`) and the HTTP endpoints `/metrics` and
//! `/healthz`.
//!
//! The registry belongs to one proxy instance, not to the process, so several proxies (tests,
//! signaling's embedded proxy) live side by side. Relay workers do not touch these counters
//! per packet: they count locally and add their totals every tick (see [`crate::relay`]).

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};
pub(crate) use service_kit::metrics::{counter_vec, registered, serve_http};

use crate::types::{DropReason, ReleaseReason};

/// Relay direction label values: where the packet came from and where it went.
pub(crate) const DIRECTIONS: [&str; 2] = ["caller_to_callee", "callee_to_caller"];

/// Every metric of one media proxy.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub(crate) registry: Registry,
    /// Packets relayed (RTP and RTCP), by direction.
    pub(crate) packets: IntCounterVec,
    /// UDP payload bytes relayed, by direction.
    pub(crate) bytes: IntCounterVec,
    /// Packets received and not relayed, by reason.
    pub(crate) dropped: IntCounterVec,
    pub(crate) sessions: IntGauge,
    pub(crate) ports_free: IntGauge,
    /// Ports (RTP and RTCP) in the range usable as pairs.
    pub(crate) ports_capacity: IntGauge,
    pub(crate) recordings: IntGauge,
    /// Recordings ended, by outcome ([`RECORDING_OUTCOMES`]).
    pub(crate) recordings_finished: IntCounterVec,
    /// WAV and pcap bytes written by recordings.
    pub(crate) recording_bytes: IntCounter,
    /// Captured packets the recorder could not take (its hand-off queue was full).
    pub(crate) recorder_dropped: IntCounter,
    /// Audio packets not decoded, by reason ([`DECODE_ERRORS`]).
    pub(crate) decode_errors: IntCounterVec,
    /// Live audio tap streams open.
    pub(crate) tap_subscribers: IntGauge,
    /// Tap frames not delivered because the subscriber was not reading fast enough.
    pub(crate) tap_frames_dropped: IntCounter,
    /// Sessions ended, by reason.
    pub(crate) released: IntCounterVec,
    /// Released calls whose final figures are kept for a retried release.
    pub(crate) tombstones: IntGauge,
    /// Memory those take (encoded answers and bookkeeping).
    pub(crate) tombstone_bytes: IntGauge,
    /// Kept figures dropped before their time because the memory cap was reached.
    pub(crate) tombstones_evicted: IntCounter,
    /// Steps of the wall clock seen (reported times follow them; timers never do).
    pub(crate) clock_steps: IntCounter,
    /// Allocations refused, by reason.
    pub(crate) allocation_failures: IntCounterVec,
    /// gRPC requests refused because their client was past its rate, by kind.
    pub(crate) grpc_rate_limited: IntCounterVec,
    /// Media events emitted, by kind.
    pub(crate) events: IntCounterVec,
    /// ng requests answered, by result.
    pub(crate) ng_requests: IntCounterVec,
    /// ng datagrams not answered, by reason.
    pub(crate) ng_dropped: IntCounterVec,
    pub(crate) grpc_duration: HistogramVec,
}

/// `outcome` values of `mediaproxy_recordings_finished_total`.
pub(crate) const RECORDING_OUTCOMES: [&str; 3] = ["complete", "failed", "no_audio"];
/// `reason` values of `mediaproxy_decode_errors_total`.
pub(crate) const DECODE_ERRORS: [&str; 2] = ["unknown_payload_type", "undecodable"];

/// `reason` values of `mediaproxy_allocation_failures_total`.
pub(crate) const ALLOCATION_FAILURES: [&str; 4] = [
    "ports_exhausted",
    "descriptors_exhausted",
    "draining",
    "owner_quota",
];
/// Event kind label values.
pub(crate) const EVENT_KINDS: [&str; 6] = [
    "first_packet",
    "source_changed",
    "media_timeout",
    "one_way_media",
    "recording_finished",
    "session_released",
];

impl Metrics {
    pub(crate) fn new(node_id: &str) -> Self {
        let registry =
            Registry::new_custom(None, Some([("node".to_owned(), node_id.to_owned())].into()))
                .expect("static registry labels are valid");
        let counter = |name: &str, help: &str, label: &str, values: &[&str]| {
            counter_vec(&registry, name, help, label, values)
        };
        let gauge = |name: &str, help: &str| {
            registered(&registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let drop_reasons: Vec<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        let release_reasons: Vec<&str> = ReleaseReason::ALL.iter().map(|r| r.as_str()).collect();
        let packets = counter(
            "mediaproxy_packets_total",
            "RTP and RTCP packets relayed.",
            "direction",
            &DIRECTIONS,
        );
        let bytes = counter(
            "mediaproxy_bytes_total",
            "UDP payload bytes relayed.",
            "direction",
            &DIRECTIONS,
        );
        let dropped = counter(
            "mediaproxy_packets_dropped_total",
            "Packets received and not relayed.",
            "reason",
            &drop_reasons,
        );
        let released = counter(
            "mediaproxy_sessions_released_total",
            "Sessions ended.",
            "reason",
            &release_reasons,
        );
        let allocation_failures = counter(
            "mediaproxy_allocation_failures_total",
            "Allocate requests refused.",
            "reason",
            &ALLOCATION_FAILURES,
        );
        let grpc_rate_limited = counter(
            "mediaproxy_grpc_rate_limited_total",
            "gRPC requests refused RESOURCE_EXHAUSTED because their client was past its rate (--grpc-rate, --allocate-rate).",
            "kind",
            &["request", "allocation"],
        );
        let ng_requests = counter(
            "mediaproxy_ng_requests_total",
            "rtpengine ng requests answered (--listen-ng): ok, error (an error reply), malformed (undecodable, answered with an error), cached (a retransmission answered from the reply cache).",
            "result",
            &["ok", "error", "malformed", "cached"],
        );
        let ng_dropped = counter(
            "mediaproxy_ng_dropped_total",
            "rtpengine ng datagrams not answered: no_cookie, oversize, not_allowed (a source outside --ng-allow).",
            "reason",
            &["no_cookie", "oversize", "not_allowed"],
        );
        let events = counter(
            "mediaproxy_events_total",
            "Media events emitted.",
            "kind",
            &EVENT_KINDS,
        );
        let recordings_finished = counter(
            "mediaproxy_recordings_finished_total",
            "Recordings ended: complete, failed (a write error; the call went on), or no_audio.",
            "outcome",
            &RECORDING_OUTCOMES,
        );
        let decode_errors = counter(
            "mediaproxy_decode_errors_total",
            "Recorded or tapped RTP packets whose audio could not be decoded.",
            "reason",
            &DECODE_ERRORS,
        );
        let plain = |name: &str, help: &str| {
            registered(
                &registry,
                IntCounter::new(name, help).expect("valid metric"),
            )
        };
        let grpc_duration = HistogramVec::new(
            HistogramOpts::new(
                "mediaproxy_grpc_request_duration_seconds",
                "Time to answer a gRPC request.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
            ]),
            &["method"],
        )
        .expect("valid metric");
        let grpc_duration = registered(&registry, grpc_duration);
        Self {
            packets,
            bytes,
            dropped,
            sessions: gauge("mediaproxy_sessions", "Calls held."),
            ports_free: gauge(
                "mediaproxy_ports_free",
                "RTP and RTCP ports free to allocate.",
            ),
            ports_capacity: gauge(
                "mediaproxy_ports_capacity",
                "RTP and RTCP ports in the range, usable as pairs.",
            ),
            recordings: gauge("mediaproxy_recordings", "Recordings in progress."),
            recordings_finished,
            recording_bytes: plain(
                "mediaproxy_recording_bytes_total",
                "Bytes written to recording files (WAV and pcap).",
            ),
            recorder_dropped: plain(
                "mediaproxy_recorder_dropped_packets_total",
                "Captured packets dropped because the recorder fell behind (relaying went on).",
            ),
            decode_errors,
            tap_subscribers: gauge("mediaproxy_tap_subscribers", "Live audio tap streams open."),
            tap_frames_dropped: plain(
                "mediaproxy_tap_frames_dropped_total",
                "Audio tap frames dropped because a subscriber read too slowly.",
            ),
            released,
            tombstones: gauge(
                "mediaproxy_tombstones",
                "Released calls whose final figures are kept for a retried release.",
            ),
            tombstone_bytes: gauge(
                "mediaproxy_tombstone_bytes",
                "Memory taken by the kept final figures of released calls.",
            ),
            tombstones_evicted: plain(
                "mediaproxy_tombstones_evicted_total",
                "Kept final figures dropped before their 10 minutes because their memory cap was reached.",
            ),
            clock_steps: plain(
                "mediaproxy_clock_steps_total",
                "Steps of the wall clock of more than a second seen (times reported after it follow the new time; leases, timers and durations use the monotonic clock).",
            ),
            allocation_failures,
            grpc_rate_limited,
            events,
            ng_requests,
            ng_dropped,
            grpc_duration,
            registry,
        }
    }
}
