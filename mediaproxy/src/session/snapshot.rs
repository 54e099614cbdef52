//! What a session reports: the statistics of a call, live or final ([`CallSnapshot`]), as
//! [`Session::snapshot`] builds them from the session's counters, latches and quality.

use std::net::SocketAddr;
use std::time::Instant;

// What a snapshot reports: the figures both services speak, modelled once in `proto`.
use proto::domain::{Counters as FlowCounters, RtpQuality as QualityFigures};

use super::{Counters, Drops, Session};
use crate::types::{CallId, Direction, Leg, MediaKind, Owner};

impl Session {
    /// Statistics as they stand.
    pub(crate) fn snapshot(&self) -> CallSnapshot {
        let clock = &self.clock;
        let ms = |t: Option<Instant>| t.map_or(0, |t| clock.unix_ms(t));
        let counters = |c: &Counters| FlowCounters {
            packets: c.packets,
            bytes: c.bytes,
            first_unix_ms: ms(c.first),
            last_unix_ms: ms(c.last),
        };
        let legs = Leg::BOTH
            .iter()
            .filter_map(|&leg| {
                let state = self.legs[leg.index()].as_ref()?;
                let media = state
                    .media
                    .iter()
                    .enumerate()
                    .map(|(index, m)| MediaSnapshot {
                        index,
                        kind: m.kind,
                        local_rtp_port: m.rtp_port,
                        local_rtcp_port: m.rtp_port + 1,
                        sdp_rtp: m.rtp_latch.sdp,
                        sdp_rtcp: m.rtcp_latch.sdp,
                        latched_rtp: m.rtp_latch.source,
                        latched_rtcp: m.rtcp_latch.source,
                        rtp_received: counters(&m.rtp_received),
                        rtcp_received: counters(&m.rtcp_received),
                        rtp_sent: counters(&m.rtp_sent),
                        rtcp_sent: counters(&m.rtcp_sent),
                        quality: QualityFigures {
                            ssrc: m.quality.ssrc(),
                            expected: m.quality.expected(),
                            lost: m.quality.lost(),
                            duplicates: m.quality.duplicates,
                            out_of_order: m.quality.out_of_order,
                            jitter_ms: m.quality.jitter_ms(),
                            max_jitter_ms: m.quality.max_jitter_ms(),
                            ssrc_changes: m.quality.ssrc_changes,
                            last_payload_type: m.quality.last_payload_type,
                        },
                        drops: m.drops,
                        // The recorder's count; the control plane fills it in.
                        recorded_packets: 0,
                        source_changes: m.source_changes,
                        direction: m.direction,
                    })
                    .collect();
                Some(LegSnapshot { leg, media })
            })
            .collect();
        CallSnapshot {
            call_id: self.call_id.clone(),
            owner: self.owner.clone(),
            created_unix_ms: clock.unix_ms(self.created),
            released_unix_ms: 0,
            legs,
            recorder_dropped: 0,
        }
    }
}

/// Statistics of a call (live or final).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CallSnapshot {
    pub(crate) call_id: CallId,
    pub(crate) owner: Owner,
    pub(crate) created_unix_ms: u64,
    pub(crate) released_unix_ms: u64,
    pub(crate) legs: Vec<LegSnapshot>,
    /// Captured packets of this call the recorder could not take (its queue was full).
    pub(crate) recorder_dropped: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LegSnapshot {
    pub(crate) leg: Leg,
    pub(crate) media: Vec<MediaSnapshot>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MediaSnapshot {
    pub(crate) index: usize,
    pub(crate) kind: MediaKind,
    pub(crate) local_rtp_port: u16,
    pub(crate) local_rtcp_port: u16,
    pub(crate) sdp_rtp: Option<SocketAddr>,
    pub(crate) sdp_rtcp: Option<SocketAddr>,
    pub(crate) latched_rtp: Option<SocketAddr>,
    pub(crate) latched_rtcp: Option<SocketAddr>,
    pub(crate) rtp_received: FlowCounters,
    pub(crate) rtcp_received: FlowCounters,
    pub(crate) rtp_sent: FlowCounters,
    pub(crate) rtcp_sent: FlowCounters,
    pub(crate) quality: QualityFigures,
    pub(crate) drops: Drops,
    pub(crate) recorded_packets: u64,
    pub(crate) source_changes: u32,
    pub(crate) direction: Direction,
}
