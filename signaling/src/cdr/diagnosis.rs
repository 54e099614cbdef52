//! The media verdict of a call and its diagnosis in plain words (docs/cdr.md), computed
//! from the media proxy's final per-leg statistics. Pure: no I/O, so every case is a unit test.
//!
//! The verdict answers "did audio flow both ways?"; the diagnosis answers "if not, why, and
//! what should the operator check?", naming the leg, the address the SDP announced, the source
//! the proxy actually saw and the proxy port nobody reached.

use std::fmt::Write as _;
use std::net::IpAddr;

use proto::domain::{Direction, Leg, MediaKind};

/// The media verdict column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Both legs sent audio through the proxy.
    Ok,
    /// Only one leg sent audio.
    OneWay,
    /// Neither leg sent audio.
    NoMedia,
    /// Media went end to end (`direct` mode); not measured.
    Direct,
    /// The call was not answered.
    NotAnswered,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::OneWay => "one_way",
            Self::NoMedia => "no_media",
            Self::Direct => "direct",
            Self::NotAnswered => "not_answered",
        }
    }
}

/// Packet and byte counters of one flow, with the times of its first and last packet: the
/// counters the media proxy reports, as both services model them.
pub use proto::domain::Counters as Flow;
/// Receive quality of one leg's RTP (RFC 3550 appendix A), as both services model it.
pub use proto::domain::RtpQuality;

/// Packets received from a leg and not relayed, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops {
    pub unknown_source: u64,
    pub before_latching: u64,
    pub too_short: u64,
    pub not_rtp: u64,
    pub no_destination: u64,
    pub send_error: u64,
}

/// Final figures of one media line of one leg. "in" is what the proxy received from the leg,
/// "out" what it relayed towards the leg.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaFigures {
    pub leg: Leg,
    pub index: u32,
    pub kind: MediaKind,
    pub local_rtp_port: u16,
    pub local_rtcp_port: u16,
    /// "ip:port" from the leg's SDP; empty if the leg never gave one.
    pub sdp_rtp: String,
    pub sdp_rtcp: String,
    /// "ip:port" the proxy latched on; empty if the leg never sent.
    pub latched_rtp: String,
    pub latched_rtcp: String,
    pub rtp_in: Flow,
    pub rtcp_in: Flow,
    pub rtp_out: Flow,
    pub rtcp_out: Flow,
    /// Loss, duplicates, reordering and jitter of what the leg sent.
    pub quality: RtpQuality,
    pub drops: Drops,
    pub recorded_packets: u64,
    pub source_changes: u32,
    /// The direction the leg's latest SDP declared for this line.
    pub direction: Direction,
}

impl MediaFigures {
    /// Empty figures of a line (what a leg that never sent looks like).
    pub fn new(leg: Leg, index: u32, kind: MediaKind) -> Self {
        Self {
            leg,
            index,
            kind,
            local_rtp_port: 0,
            local_rtcp_port: 0,
            sdp_rtp: String::new(),
            sdp_rtcp: String::new(),
            latched_rtp: String::new(),
            latched_rtcp: String::new(),
            rtp_in: Flow::default(),
            rtcp_in: Flow::default(),
            rtp_out: Flow::default(),
            rtcp_out: Flow::default(),
            quality: RtpQuality::default(),
            drops: Drops::default(),
            recorded_packets: 0,
            source_changes: 0,
            direction: Direction::SendRecv,
        }
    }
}

/// Everything the proxy reported for a call at release.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MediaReport {
    /// The address the proxy put in SDP (where the phones were told to send).
    pub advertised: Option<IpAddr>,
    pub media: Vec<MediaFigures>,
}

impl MediaReport {
    /// RTP packets and bytes received from `leg` on its audio lines (the CDR's
    /// `caller_audio_packets` / `callee_audio_packets`).
    pub fn audio_in(&self, leg: Leg) -> Flow {
        let mut total = Flow::default();
        for m in self
            .media
            .iter()
            .filter(|m| m.leg == leg && m.kind == MediaKind::Audio)
        {
            total.packets += m.rtp_in.packets;
            total.bytes += m.rtp_in.bytes;
        }
        total
    }

    /// The first audio line of a leg, the one the verdict is about.
    fn audio(&self, leg: Leg) -> Option<&MediaFigures> {
        self.media
            .iter()
            .find(|m| m.leg == leg && m.kind == MediaKind::Audio)
    }
}

/// What is known about a call's media when its proxy could not be asked for final figures:
/// the first-packet events seen while the call was up (source per leg), and the last live
/// figures of each node it was on (from the periodic session listing).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evidence {
    pub caller_first_source: Option<String>,
    pub callee_first_source: Option<String>,
    pub last_seen: Vec<Snapshot>,
}

/// One node's live figures of a call, as last listed.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The node's id.
    pub node: String,
    pub at_unix_ms: u64,
    pub media: Vec<MediaFigures>,
}

impl Evidence {
    /// The last figures `node` gave of the call.
    pub fn last_seen_on(&self, node: &str) -> Option<&Snapshot> {
        self.last_seen.iter().find(|s| s.node == node)
    }

    /// Keeps `snapshot` as the node's latest.
    pub fn seen(&mut self, snapshot: Snapshot) {
        self.last_seen.retain(|s| s.node != snapshot.node);
        self.last_seen.push(snapshot);
    }
}

/// The verdict and diagnosis of an answered, relayed call from the proxy's final figures.
pub fn diagnose(report: &MediaReport) -> (Verdict, String) {
    let caller = report.audio_in(Leg::Caller).packets;
    let callee = report.audio_in(Leg::Callee).packets;
    let verdict = match (caller > 0, callee > 0) {
        (true, true) => Verdict::Ok,
        (false, false) => Verdict::NoMedia,
        _ => Verdict::OneWay,
    };
    if report.audio(Leg::Caller).is_none() && report.audio(Leg::Callee).is_none() {
        return (
            Verdict::NoMedia,
            "no audio line was relayed (the offer had no audio, or the proxy kept no figures)"
                .to_owned(),
        );
    }
    let mut notes: Vec<String> = Vec::new();
    match verdict {
        Verdict::Ok => notes.push(format!(
            "both legs sent audio: caller {caller} RTP packets, callee {callee}"
        )),
        Verdict::OneWay => {
            let (sender, silent) = if caller > 0 {
                (Leg::Caller, Leg::Callee)
            } else {
                (Leg::Callee, Leg::Caller)
            };
            notes.push(format!(
                "one way: only the {} sent audio ({} RTP packets), the {} sent none",
                sender.as_str(),
                caller.max(callee),
                silent.as_str()
            ));
        }
        _ => notes.push("no media: neither leg sent audio".to_owned()),
    }
    for leg in [Leg::Caller, Leg::Callee] {
        if let Some(m) = report.audio(leg) {
            leg_notes(report, m, &mut notes);
        }
    }
    if verdict == Verdict::NoMedia
        && let Some(advertised) = report.advertised
    {
        notes.push(format!(
            "when both legs are silent the usual cause is the advertised media address \
             {advertised} (not reachable from the phones: check --advertise-ip) or a firewall \
             in front of the proxy"
        ));
    }
    (verdict, notes.join("; "))
}

/// What the proxy saw of one leg's audio line, in words.
fn leg_notes(report: &MediaReport, m: &MediaFigures, notes: &mut Vec<String>) {
    let leg = m.leg.as_str();
    let proxy = report.advertised.map_or_else(
        || "the proxy".to_owned(),
        |a| proxy_address(a, m.local_rtp_port),
    );
    if m.rtp_in.packets == 0 {
        let sdp_ip = m.sdp_rtp.rsplit_once(':').map(|(ip, _)| ip);
        if m.sdp_rtp.is_empty() {
            notes.push(format!(
                "the {leg} never gave an SDP address for its audio, so it was never expected to send"
            ));
        } else if matches!(sdp_ip, Some("0.0.0.0" | "[::]")) || m.sdp_rtp.ends_with(":0") {
            notes.push(format!(
                "the {leg}'s SDP put the audio on hold or disabled it (SDP said {})",
                m.sdp_rtp
            ));
        } else if !m.direction.sends() {
            notes.push(format!(
                "the {leg}'s SDP said a={} (on hold), so it was not expected to send",
                m.direction.as_str()
            ));
        } else {
            let mut text = format!(
                "no packet reached {proxy} from the {leg} (SDP said {})",
                m.sdp_rtp
            );
            if let Some(advertised) = report.advertised {
                let _ = write!(
                    text,
                    "; check that the advertised address {advertised} is reachable from the {leg} \
                     and UDP {}-{} is open",
                    m.local_rtp_port, m.local_rtcp_port
                );
            }
            notes.push(text);
        }
    } else if !m.latched_rtp.is_empty() && !m.sdp_rtp.is_empty() && m.latched_rtp != m.sdp_rtp {
        let same_ip = m.latched_rtp.rsplit_once(':').map(|(ip, _)| ip)
            == m.sdp_rtp.rsplit_once(':').map(|(ip, _)| ip);
        notes.push(format!(
            "{leg} sent from {} while SDP said {} ({}); latched",
            m.latched_rtp,
            m.sdp_rtp,
            if same_ip {
                "same address, other port: a NAT or a phone sending from another port"
            } else {
                "NAT"
            }
        ));
    }
    let dropped = &m.drops;
    if dropped.unknown_source > 0 {
        notes.push(format!(
            "{} packets from an unknown source reached the {leg}'s port {} and were dropped",
            dropped.unknown_source, m.local_rtp_port
        ));
    }
    if dropped.not_rtp > 0 {
        notes.push(format!(
            "{} packets from the {leg} were not RTP (STUN, DTLS or garbage) and were dropped",
            dropped.not_rtp
        ));
    }
    if dropped.before_latching > 0 && m.rtp_in.packets == 0 {
        notes.push(format!(
            "{} packets from the {leg} arrived before its SDP was known and were dropped",
            dropped.before_latching
        ));
    }
    let other = report
        .media
        .iter()
        .find(|o| o.leg != m.leg && o.index == m.index);
    if let Some(other) = other
        && other.drops.no_destination > 0
        && m.rtp_out.packets == 0
    {
        notes.push(format!(
            "{} packets from the {} had nowhere to go: the {leg} had no usable address",
            other.drops.no_destination,
            other.leg.as_str()
        ));
    }
    if dropped.send_error > 0 {
        notes.push(format!(
            "{} packets could not be sent on towards the other leg (the kernel reported errors, \
             e.g. ICMP unreachable)",
            dropped.send_error
        ));
    }
    let q = &m.quality;
    if q.expected >= 50 && q.lost > 0 {
        let percent = q.lost as f64 * 100.0 / q.expected as f64;
        if percent >= 2.0 {
            notes.push(format!(
                "{leg} audio lost {percent:.1} % of {} packets on the way to the proxy (jitter up to {:.1} ms)",
                q.expected, q.max_jitter_ms
            ));
        }
    }
}

fn proxy_address(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// The verdict and diagnosis when the proxy could not give final figures (it was lost, or the
/// release failed): judged from the first-packet events seen during the call.
pub fn diagnose_lost(node: &str, error: &str, evidence: &Evidence) -> (Verdict, String) {
    let verdict = match (
        evidence.caller_first_source.is_some(),
        evidence.callee_first_source.is_some(),
    ) {
        (true, true) => Verdict::Ok,
        (false, false) => Verdict::NoMedia,
        _ => Verdict::OneWay,
    };
    let seen = |source: &Option<String>| {
        source
            .as_ref()
            .map_or_else(|| "no packet seen".to_owned(), |s| format!("sent from {s}"))
    };
    (
        verdict,
        format!(
            "media proxy {node} could not give final figures ({error}); packet counts unknown; \
             from its events: caller {}, callee {}",
            seen(&evidence.caller_first_source),
            seen(&evidence.callee_first_source)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(leg: Leg, packets: u64, sdp: &str, latched: &str) -> MediaFigures {
        let mut m = MediaFigures::new(leg, 0, MediaKind::Audio);
        m.local_rtp_port = if leg == Leg::Caller { 30000 } else { 30002 };
        m.local_rtcp_port = m.local_rtp_port + 1;
        m.sdp_rtp = sdp.to_owned();
        m.latched_rtp = latched.to_owned();
        m.rtp_in.packets = packets;
        m.rtp_in.bytes = packets * 172;
        m
    }

    fn report(media: Vec<MediaFigures>) -> MediaReport {
        MediaReport {
            advertised: Some("203.0.113.5".parse().unwrap()),
            media,
        }
    }

    #[test]
    fn both_sending_from_their_sdp_address_is_ok() {
        let (verdict, text) = diagnose(&report(vec![
            line(Leg::Caller, 500, "10.0.0.7:17616", "10.0.0.7:17616"),
            line(Leg::Callee, 498, "10.1.1.4:16004", "10.1.1.4:16004"),
        ]));
        assert_eq!(verdict, Verdict::Ok);
        assert_eq!(
            text,
            "both legs sent audio: caller 500 RTP packets, callee 498"
        );
    }

    #[test]
    fn one_way_names_the_silent_leg_and_what_to_check() {
        let (verdict, text) = diagnose(&report(vec![
            line(Leg::Caller, 0, "10.0.0.7:17616", ""),
            line(Leg::Callee, 498, "10.1.1.4:16004", "10.1.1.4:16004"),
        ]));
        assert_eq!(verdict, Verdict::OneWay);
        assert!(
            text.starts_with(
                "one way: only the callee sent audio (498 RTP packets), the caller sent none"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "no packet reached 203.0.113.5:30000 from the caller (SDP said 10.0.0.7:17616); \
                 check that the advertised address 203.0.113.5 is reachable from the caller and \
                 UDP 30000-30001 is open"
            ),
            "{text}"
        );
    }

    #[test]
    fn nat_latching_names_both_addresses() {
        let (verdict, text) = diagnose(&report(vec![
            line(Leg::Caller, 500, "10.0.0.7:17616", "10.0.0.7:17616"),
            line(Leg::Callee, 500, "10.1.1.4:16004", "198.51.100.9:4000"),
        ]));
        assert_eq!(verdict, Verdict::Ok);
        assert!(
            text.contains(
                "callee sent from 198.51.100.9:4000 while SDP said 10.1.1.4:16004 (NAT); latched"
            ),
            "{text}"
        );
        let (_, text) = diagnose(&report(vec![
            line(Leg::Caller, 500, "10.0.0.7:17616", "10.0.0.7:17618"),
            line(Leg::Callee, 500, "10.1.1.4:16004", "10.1.1.4:16004"),
        ]));
        assert!(
            text.contains("caller sent from 10.0.0.7:17618 while SDP said 10.0.0.7:17616 (same address, other port"),
            "{text}"
        );
    }

    #[test]
    fn no_media_points_at_the_advertised_address() {
        let (verdict, text) = diagnose(&report(vec![
            line(Leg::Caller, 0, "10.0.0.7:17616", ""),
            line(Leg::Callee, 0, "10.1.1.4:16004", ""),
        ]));
        assert_eq!(verdict, Verdict::NoMedia);
        assert!(
            text.starts_with("no media: neither leg sent audio"),
            "{text}"
        );
        assert!(text.contains("from the caller (SDP said 10.0.0.7:17616)"));
        assert!(text.contains("from the callee (SDP said 10.1.1.4:16004)"));
        assert!(text.contains("advertised media address 203.0.113.5"));
    }

    #[test]
    fn held_and_missing_sdp_are_not_blamed_on_the_network() {
        let mut held = line(Leg::Callee, 0, "0.0.0.0:16004", "");
        held.direction = Direction::SendOnly;
        let (_, text) = diagnose(&report(vec![
            line(Leg::Caller, 500, "10.0.0.7:17616", "10.0.0.7:17616"),
            held,
        ]));
        assert!(
            text.contains("the callee's SDP put the audio on hold or disabled it"),
            "{text}"
        );
        let mut recvonly = line(Leg::Callee, 0, "10.1.1.4:16004", "");
        recvonly.direction = Direction::RecvOnly;
        let (_, text) = diagnose(&report(vec![
            line(Leg::Caller, 500, "10.0.0.7:17616", "10.0.0.7:17616"),
            recvonly,
        ]));
        assert!(text.contains("said a=recvonly (on hold)"), "{text}");
        let (_, text) = diagnose(&report(vec![
            line(Leg::Caller, 500, "10.0.0.7:17616", "10.0.0.7:17616"),
            line(Leg::Callee, 0, "", ""),
        ]));
        assert!(
            text.contains("the callee never gave an SDP address"),
            "{text}"
        );
    }

    #[test]
    fn drops_and_loss_are_explained() {
        let mut caller = line(Leg::Caller, 0, "10.0.0.7:17616", "");
        caller.drops.unknown_source = 40;
        caller.drops.not_rtp = 3;
        let mut callee = line(Leg::Callee, 1000, "10.1.1.4:16004", "10.1.1.4:16004");
        callee.quality.expected = 1000;
        callee.quality.lost = 50;
        callee.quality.max_jitter_ms = 12.5;
        callee.drops.send_error = 7;
        let (_, text) = diagnose(&report(vec![caller, callee]));
        assert!(text.contains("40 packets from an unknown source reached the caller's port 30000"));
        assert!(text.contains("3 packets from the caller were not RTP"));
        assert!(text.contains("7 packets could not be sent on"));
        assert!(
            text.contains("callee audio lost 5.0 % of 1000 packets on the way to the proxy (jitter up to 12.5 ms)"),
            "{text}"
        );
    }

    #[test]
    fn audio_counts_ignore_video() {
        let mut video = line(Leg::Caller, 900, "10.0.0.7:17620", "10.0.0.7:17620");
        video.kind = MediaKind::Video;
        video.index = 1;
        let r = report(vec![
            line(Leg::Caller, 0, "10.0.0.7:17616", ""),
            line(Leg::Callee, 10, "10.1.1.4:16004", "10.1.1.4:16004"),
            video,
        ]);
        assert_eq!(r.audio_in(Leg::Caller).packets, 0);
        assert_eq!(diagnose(&r).0, Verdict::OneWay);
    }

    #[test]
    fn a_lost_proxy_is_judged_from_events() {
        let (verdict, text) = diagnose_lost(
            "mp-2",
            "Unavailable: connection refused",
            &Evidence {
                caller_first_source: Some("10.0.0.7:17616".into()),
                callee_first_source: None,
                last_seen: Vec::new(),
            },
        );
        assert_eq!(verdict, Verdict::OneWay);
        assert!(text.contains("media proxy mp-2 could not give final figures"));
        assert!(text.contains("caller sent from 10.0.0.7:17616, callee no packet seen"));
    }
}
