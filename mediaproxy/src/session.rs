//! One call's relay state, without sockets or clocks.
//!
//! The worker that owns a session feeds it datagrams with [`Session::handle_packet`] and gets
//! back a [`Verdict`]: where to send the datagram and through which local socket, or why to
//! drop it. Timers run from [`Session::poll_timers`]; events (first packet, source changed,
//! timeout, one-way media) queue up for [`Session::poll_event`]. Everything takes `now`, so
//! tests drive it with made-up instants.
//!
//! Latching (which source a local socket accepts and sends back to) is the [`latch`] module.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

mod latch;

use latch::{Admission, Latch};
// What a snapshot reports: the figures both services speak, modelled once in `proto`.
use proto::domain::{Counters as FlowCounters, RtpQuality as QualityFigures};

use crate::quality::RtpQuality;
use crate::rtp::{Datagram, Malformed, classify};
use crate::types::{
    CallId, Direction, DropReason, Leg, MediaKind, Owner, RemoteMedia, RemoteTarget, WallClock,
};

/// Media lines per leg. Sockets per session are `2 legs x MAX_MEDIA x 2`.
pub(crate) const MAX_MEDIA: usize = 8;
/// Number of distinct [`SocketRef`] indexes in a session.
pub(crate) const SOCKETS_PER_SESSION: usize = 2 * MAX_MEDIA * 2;

/// Timing policy of sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    pub(crate) latch_window: Duration,
    pub(crate) media_timeout: Duration,
    pub(crate) hold_timeout: Duration,
    pub(crate) one_way_after: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            latch_window: Duration::from_secs(3),
            media_timeout: Duration::from_secs(60),
            hold_timeout: Duration::from_secs(3600),
            one_way_after: Duration::from_secs(10),
        }
    }
}

/// The RTP or RTCP socket of a media line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Component {
    Rtp,
    Rtcp,
}

/// Names one local socket of a session: leg, media line, component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SocketRef {
    pub(crate) leg: Leg,
    pub(crate) media: usize,
    pub(crate) component: Component,
}

impl SocketRef {
    /// Dense index below [`SOCKETS_PER_SESSION`], used in poll tokens and the relay's socket
    /// table. A media line's four sockets (both legs, RTP and RTCP) are adjacent, so the
    /// socket a packet arrives on and the one it leaves by share a cache line.
    pub(crate) fn index(self) -> usize {
        let component = match self.component {
            Component::Rtp => 0,
            Component::Rtcp => 1,
        };
        self.media * 4 + self.leg.index() * 2 + component
    }

    pub(crate) fn from_index(index: usize) -> Option<Self> {
        if index >= SOCKETS_PER_SESSION {
            return None;
        }
        let leg = if index & 2 == 0 {
            Leg::Caller
        } else {
            Leg::Callee
        };
        let component = if index & 1 == 0 {
            Component::Rtp
        } else {
            Component::Rtcp
        };
        Some(Self {
            leg,
            media: index / 4,
            component,
        })
    }
}

/// What to do with one received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Send the datagram unchanged out of local socket `via` to `to`.
    Forward {
        via: SocketRef,
        to: SocketAddr,
        rtcp: bool,
    },
    Drop(DropReason),
}

/// Something worth telling the owner, produced by packets or timers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    pub(crate) call_id: CallId,
    pub(crate) owner: Owner,
    /// The leg concerned (for one-way media: the silent one).
    pub(crate) leg: Leg,
    pub(crate) media: usize,
    pub(crate) unix_ms: u64,
    pub(crate) kind: EventKind,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum EventKind {
    FirstPacket {
        source: SocketAddr,
        sdp: Option<SocketAddr>,
        rtcp: bool,
    },
    SourceChanged {
        from: SocketAddr,
        to: SocketAddr,
        rtcp: bool,
    },
    MediaTimeout {
        idle: Duration,
    },
    OneWayMedia {
        silent_for: Duration,
    },
    RecordingFinished {
        path: String,
        packets: u64,
    },
    SessionReleased {
        reason: crate::types::ReleaseReason,
    },
}

/// Timer outcome: the session has had no media for its timeout and should be released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expired {
    pub(crate) idle: Duration,
}

/// Error from [`Session::update`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UpdateError {
    #[error("leg {0} has no ports allocated")]
    LegNotAllocated(&'static str),
    #[error("media index {index} was not allocated for leg {leg} (it has {allocated})")]
    MediaNotAllocated {
        leg: &'static str,
        index: usize,
        allocated: usize,
    },
}

/// Packets, bytes and first/last arrival of one flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
    pub(crate) first: Option<Instant>,
    pub(crate) last: Option<Instant>,
}

impl Counters {
    fn count(&mut self, now: Instant, len: usize) {
        self.packets += 1;
        self.bytes += len as u64;
        self.first.get_or_insert(now);
        self.last = Some(now);
    }
}

/// Per-media-line drop counters, indexed by [`DropReason::index`].
pub(crate) type Drops = [u64; DropReason::ALL.len()];

/// State of one media line of one leg.
#[derive(Debug, Clone)]
struct Media {
    kind: MediaKind,
    /// RTCP multiplexed on the RTP port (RFC 5761), as the leg's SDP said.
    mux: bool,
    updated: bool,
    disabled: bool,
    direction: Direction,
    rtp_port: u16,
    /// The last payload type looked up in `clocks` and its rate, kept inline: a stream keeps
    /// its payload type, so the packet path rarely reads `clocks` (another cache line).
    /// [`NO_PAYLOAD_TYPE`] when empty.
    last_clock: (u8, Option<u32>),
    rtp_latch: Latch,
    rtp_received: Counters,
    quality: RtpQuality,
    rtp_sent: Counters,
    rtcp_latch: Latch,
    rtcp_received: Counters,
    rtcp_sent: Counters,
    /// Payload type to RTP clock rate from the leg's SDP (`None` for telephone-event, which
    /// is not judged for jitter), resolved once per update rather than per packet.
    clocks: Vec<(u8, Option<u32>)>,
    drops: Drops,
    source_changes: u32,
}

impl Media {
    fn new(kind: MediaKind, rtp_port: u16) -> Self {
        Self {
            kind,
            rtp_port,
            rtp_latch: Latch::default(),
            rtcp_latch: Latch::default(),
            mux: false,
            updated: false,
            disabled: false,
            direction: Direction::SendRecv,
            clocks: Vec::new(),
            last_clock: (NO_PAYLOAD_TYPE, None),
            rtp_received: Counters::default(),
            rtcp_received: Counters::default(),
            rtp_sent: Counters::default(),
            rtcp_sent: Counters::default(),
            quality: RtpQuality::default(),
            drops: [0; DropReason::ALL.len()],
            source_changes: 0,
        }
    }

    /// The latch of the RTP socket, or of the RTCP socket.
    fn latch(&self, rtcp: bool) -> &Latch {
        if rtcp {
            &self.rtcp_latch
        } else {
            &self.rtp_latch
        }
    }

    fn latch_mut(&mut self, rtcp: bool) -> &mut Latch {
        if rtcp {
            &mut self.rtcp_latch
        } else {
            &mut self.rtp_latch
        }
    }

    /// Applies one SDP target to both latches.
    fn set_sdp(
        &mut self,
        rtp: Option<SocketAddr>,
        rtcp: Option<SocketAddr>,
        signaling_ip: Option<IpAddr>,
        silenced: bool,
    ) {
        self.rtp_latch.set_sdp(rtp, signaling_ip, silenced);
        self.rtcp_latch.set_sdp(rtcp, signaling_ip, silenced);
    }

    fn clock_for(&mut self, payload_type: u8) -> Option<u32> {
        if self.last_clock.0 == payload_type {
            return self.last_clock.1;
        }
        let rate = match self.clocks.iter().find(|(pt, _)| *pt == payload_type) {
            Some(&(_, rate)) => rate,
            None => static_clock_rate(payload_type),
        };
        self.last_clock = (payload_type, rate);
        rate
    }
}

/// No RTP payload type has this value (they are 7 bits).
const NO_PAYLOAD_TYPE: u8 = u8::MAX;

/// RFC 3551 static payload types' clock rates, for SDPs without `a=rtpmap`.
fn static_clock_rate(payload_type: u8) -> Option<u32> {
    match payload_type {
        0 | 3..=5 | 7..=9 | 12 | 13 | 15 | 18 => Some(8000),
        6 => Some(16000),
        10 | 11 => Some(44100),
        16 => Some(11025),
        17 => Some(22050),
        14 | 25 | 26 | 28 | 31..=34 => Some(90000),
        _ => None,
    }
}

/// One leg's media lines and activity.
#[derive(Debug, Clone, Default)]
struct LegState {
    media: Vec<Media>,
    last_packet: Option<Instant>,
    last_rtp: Option<Instant>,
    silence_reported: bool,
    /// The leg's SDP was applied at least once.
    sdp_applied: bool,
}

impl LegState {
    fn sends(&self) -> bool {
        self.media
            .iter()
            .any(|m| m.updated && !m.disabled && m.kind.is_rtp() && m.direction.sends())
    }

    fn on_hold(&self) -> bool {
        self.media.iter().any(|m| {
            m.updated && !m.disabled && (m.direction == Direction::Inactive || m.rtp_latch.silenced)
        })
    }
}

/// The relay state of one call.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    call_id: CallId,
    owner: Owner,
    clock: WallClock,
    timing: Timing,
    created: Instant,
    legs: [Option<LegState>; 2],
    /// When both legs had been updated (relaying in both directions possible).
    started: Option<Instant>,
    timed_out: bool,
    events: VecDeque<Event>,
}

impl Session {
    pub(crate) fn new(
        call_id: CallId,
        owner: Owner,
        clock: WallClock,
        timing: Timing,
        now: Instant,
    ) -> Self {
        Self {
            call_id,
            owner,
            clock,
            timing,
            created: now,
            legs: [None, None],
            started: None,
            timed_out: false,
            events: VecDeque::new(),
        }
    }

    pub(crate) fn call_id(&self) -> &CallId {
        &self.call_id
    }

    /// Appends a media line to a leg (creating the leg) and returns its index, or None when
    /// the leg already has [`MAX_MEDIA`] lines.
    pub(crate) fn add_media(&mut self, leg: Leg, kind: MediaKind, rtp_port: u16) -> Option<usize> {
        let state = self.legs[leg.index()].get_or_insert_with(LegState::default);
        if state.media.len() >= MAX_MEDIA {
            return None;
        }
        // Exactly one more: the first push into an empty Vec would reserve room for four media
        // lines (2.3 KiB) where most calls have one; this halved the relay's memory per call.
        state.media.reserve_exact(1);
        state.media.push(Media::new(kind, rtp_port));
        Some(state.media.len() - 1)
    }

    /// Applies a leg's SDP. Opens a new latching window (see the module docs).
    pub(crate) fn update(
        &mut self,
        now: Instant,
        leg: Leg,
        remotes: &[RemoteMedia],
    ) -> Result<(), UpdateError> {
        let state = self.legs[leg.index()]
            .as_mut()
            .ok_or(UpdateError::LegNotAllocated(leg.as_str()))?;
        for remote in remotes {
            let allocated = state.media.len();
            let media =
                state
                    .media
                    .get_mut(remote.index)
                    .ok_or(UpdateError::MediaNotAllocated {
                        leg: leg.as_str(),
                        index: remote.index,
                        allocated,
                    })?;
            match remote.target {
                RemoteTarget::Address { rtp, rtcp } => {
                    media.mux = rtcp == rtp;
                    media.disabled = false;
                    media.set_sdp(Some(rtp), Some(rtcp), remote.signaling_ip, false);
                }
                RemoteTarget::Hold => {
                    media.disabled = false;
                    media.set_sdp(None, None, remote.signaling_ip, true);
                }
                RemoteTarget::Disabled => {
                    media.disabled = true;
                    media.set_sdp(None, None, remote.signaling_ip, true);
                }
            }
            media.updated = true;
            media.direction = remote.direction;
            media.clocks.clear();
            media.last_clock = (NO_PAYLOAD_TYPE, None);
            media.clocks.extend(remote.codecs.iter().map(|codec| {
                let rate = (!codec.encoding.eq_ignore_ascii_case("telephone-event"))
                    .then_some(codec.clock_rate);
                (codec.payload_type, rate)
            }));
        }
        state.sdp_applied = true;
        state.silence_reported = false;
        let both = self
            .legs
            .iter()
            .all(|l| l.as_ref().is_some_and(|l| l.sdp_applied));
        if both {
            // Restart the timers: a re-INVITE is activity, and hold changes the timeout.
            self.started = Some(now);
            self.timed_out = false;
        }
        Ok(())
    }

    /// Decides what to do with one datagram received on local socket `at` from `source`.
    pub(crate) fn handle_packet(
        &mut self,
        now: Instant,
        at: SocketRef,
        source: SocketAddr,
        data: &[u8],
    ) -> Verdict {
        let window = self.timing.latch_window;
        let Some(leg) = self.legs[at.leg.index()].as_mut() else {
            return Verdict::Drop(DropReason::BeforeLatching);
        };
        let Some(media) = leg.media.get_mut(at.media) else {
            return Verdict::Drop(DropReason::BeforeLatching);
        };
        let on_rtcp_port = at.component == Component::Rtcp;
        let drop = |media: &mut Media, reason: DropReason| {
            media.drops[reason.index()] += 1;
            Verdict::Drop(reason)
        };
        if !media.updated {
            return drop(media, DropReason::BeforeLatching);
        }
        if media.disabled {
            return drop(media, DropReason::NoDestination);
        }
        let datagram = if media.kind.is_rtp() {
            match classify(data, on_rtcp_port) {
                Ok(datagram) => Some(datagram),
                Err(Malformed::TooShort) => return drop(media, DropReason::TooShort),
                Err(Malformed::NotRtp) => return drop(media, DropReason::NotRtp),
            }
        } else {
            None
        };
        let rtcp = match datagram {
            Some(Datagram::Rtcp) => true,
            Some(Datagram::Rtp(_)) => false,
            None => on_rtcp_port,
        };
        let event = match media.latch_mut(on_rtcp_port).admit(now, source, window) {
            Admission::Reject => return drop(media, DropReason::UnknownSource),
            Admission::Accept => None,
            Admission::First => Some(EventKind::FirstPacket {
                source,
                sdp: media.latch(on_rtcp_port).sdp,
                rtcp: on_rtcp_port,
            }),
            Admission::Changed { from } => {
                media.source_changes += 1;
                Some(EventKind::SourceChanged {
                    from,
                    to: source,
                    rtcp: on_rtcp_port,
                })
            }
        };
        if let Some(kind) = event {
            push_event(
                &mut self.events,
                &self.call_id,
                &self.owner,
                &self.clock,
                now,
                at,
                kind,
            );
        }
        leg.last_packet = Some(now);
        if rtcp {
            media.rtcp_received.count(now, data.len());
        } else {
            media.rtp_received.count(now, data.len());
            leg.last_rtp = Some(now);
            if let Some(Datagram::Rtp(header)) = datagram {
                let arrival = media.clock_for(header.payload_type).map(|rate| {
                    let elapsed = now.saturating_duration_since(self.created);
                    // Whole seconds and the fraction apart: no 128-bit division per packet.
                    let rate_64 = u64::from(rate);
                    let units = (elapsed.as_secs() * rate_64
                        + u64::from(elapsed.subsec_nanos()) * rate_64 / 1_000_000_000)
                        as u32;
                    (units, rate)
                });
                media.quality.record(
                    header.ssrc,
                    header.sequence,
                    header.payload_type,
                    header.timestamp,
                    arrival,
                );
            }
        }
        if leg.silence_reported && !rtcp {
            leg.silence_reported = false;
        }
        // Route to the same media line of the other leg.
        let peer_leg = at.leg.other();
        let Some(peer) = self.legs[peer_leg.index()]
            .as_ref()
            .and_then(|l| l.media.get(at.media))
        else {
            return self.drop_at(at, DropReason::NoDestination);
        };
        let component = if rtcp && !peer.mux {
            Component::Rtcp
        } else {
            Component::Rtp
        };
        let latch = peer.latch(component == Component::Rtcp);
        match latch.destination() {
            Some(to) if !peer.disabled => Verdict::Forward {
                via: SocketRef {
                    leg: peer_leg,
                    media: at.media,
                    component,
                },
                to,
                rtcp,
            },
            _ => self.drop_at(at, DropReason::NoDestination),
        }
    }

    fn drop_at(&mut self, at: SocketRef, reason: DropReason) -> Verdict {
        if let Some(media) = self.media_mut(at) {
            media.drops[reason.index()] += 1;
        }
        Verdict::Drop(reason)
    }

    fn media_mut(&mut self, at: SocketRef) -> Option<&mut Media> {
        self.legs[at.leg.index()].as_mut()?.media.get_mut(at.media)
    }

    /// The driver sent a forwarded datagram of `len` bytes out of `via`.
    pub(crate) fn record_sent(&mut self, now: Instant, via: SocketRef, rtcp: bool, len: usize) {
        if let Some(media) = self.media_mut(via) {
            if rtcp {
                media.rtcp_sent.count(now, len);
            } else {
                media.rtp_sent.count(now, len);
            }
        }
    }

    /// The driver failed to send a datagram received on `from`.
    pub(crate) fn record_send_error(&mut self, from: SocketRef) {
        self.drop_at(from, DropReason::SendError);
    }

    /// The next event, if any.
    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Runs the media timeout and one-way detection.
    pub(crate) fn poll_timers(&mut self, now: Instant) -> Option<Expired> {
        let started = self.started?;
        if self.timed_out {
            return None;
        }
        let [Some(caller), Some(callee)] = &self.legs else {
            return None;
        };
        let last_activity = [caller.last_packet, callee.last_packet]
            .into_iter()
            .flatten()
            .chain([started])
            .max()
            .unwrap_or(started);
        let timeout = if caller.on_hold() || callee.on_hold() {
            self.timing.hold_timeout
        } else {
            self.timing.media_timeout
        };
        let idle = now.saturating_duration_since(last_activity);
        if idle >= timeout {
            self.timed_out = true;
            self.push_event(now, Leg::Caller, EventKind::MediaTimeout { idle });
            return Some(Expired { idle });
        }
        let after = self.timing.one_way_after;
        if now.saturating_duration_since(started) < after {
            return None;
        }
        let recent =
            |t: Option<Instant>| t.is_some_and(|t| now.saturating_duration_since(t) < after);
        for silent in Leg::BOTH {
            let (Some(quiet), Some(talker)) = (
                self.legs[silent.index()].as_ref(),
                self.legs[silent.other().index()].as_ref(),
            ) else {
                continue;
            };
            if quiet.silence_reported
                || !quiet.sends()
                || recent(quiet.last_rtp)
                || !recent(talker.last_rtp)
            {
                continue;
            }
            let silent_for =
                now.saturating_duration_since(quiet.last_rtp.unwrap_or(started).max(started));
            if let Some(state) = self.legs[silent.index()].as_mut() {
                state.silence_reported = true;
            }
            self.push_event(now, silent, EventKind::OneWayMedia { silent_for });
        }
        None
    }

    fn push_event(&mut self, now: Instant, leg: Leg, kind: EventKind) {
        let at = SocketRef {
            leg,
            media: 0,
            component: Component::Rtp,
        };
        push_event(
            &mut self.events,
            &self.call_id,
            &self.owner,
            &self.clock,
            now,
            at,
            kind,
        );
    }

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

    /// The proxy port of one local socket (0 for a media line that does not exist).
    pub(crate) fn local_port(&self, at: SocketRef) -> u16 {
        self.legs[at.leg.index()]
            .as_ref()
            .and_then(|leg| leg.media.get(at.media))
            .map_or(0, |m| {
                m.rtp_port + u16::from(at.component == Component::Rtcp)
            })
    }
}

/// Queues an event about the media line of `at`. A free function so that the packet path can
/// call it while it holds a leg of the session borrowed.
fn push_event(
    events: &mut VecDeque<Event>,
    call_id: &CallId,
    owner: &Owner,
    clock: &WallClock,
    now: Instant,
    at: SocketRef,
    kind: EventKind,
) {
    events.push_back(Event {
        call_id: call_id.clone(),
        owner: owner.clone(),
        leg: at.leg,
        media: at.media,
        unix_ms: clock.unix_ms(now),
        kind,
    });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::build_rtp;
    use crate::types::Codec;

    const CALLER_SDP: &str = "10.0.0.7:17616";
    const CALLEE_SDP: &str = "10.1.1.4:16004";

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn remote(text: &str) -> RemoteMedia {
        let rtp = addr(text);
        RemoteMedia {
            index: 0,
            target: RemoteTarget::Address {
                rtp,
                rtcp: SocketAddr::new(rtp.ip(), rtp.port() + 1),
            },
            codecs: Vec::new(),
            direction: Direction::SendRecv,
            signaling_ip: None,
        }
    }

    fn rtp_at(leg: Leg) -> SocketRef {
        SocketRef {
            leg,
            media: 0,
            component: Component::Rtp,
        }
    }

    fn session(now: Instant) -> Session {
        let mut s = Session::new(
            CallId::parse("call-1").unwrap(),
            Owner::parse("sig-1").unwrap(),
            WallClock::now(),
            Timing::default(),
            now,
        );
        s.add_media(Leg::Caller, MediaKind::Audio, 30000);
        s.add_media(Leg::Callee, MediaKind::Audio, 30002);
        s
    }

    fn started(now: Instant) -> Session {
        let mut s = session(now);
        s.update(now, Leg::Caller, &[remote(CALLER_SDP)]).unwrap();
        s.update(now, Leg::Callee, &[remote(CALLEE_SDP)]).unwrap();
        s
    }

    fn packet(seq: u16) -> Vec<u8> {
        build_rtp(0, seq, u32::from(seq) * 160, 0x1234, &[0xff; 160])
    }

    #[test]
    fn socket_refs_round_trip_through_their_index() {
        for index in 0..SOCKETS_PER_SESSION {
            assert_eq!(SocketRef::from_index(index).unwrap().index(), index);
        }
        assert!(SocketRef::from_index(SOCKETS_PER_SESSION).is_none());
        // Every socket of a media line, of both legs, sits in one run of four.
        for media in 0..MAX_MEDIA {
            let mut indexes: Vec<usize> = Leg::BOTH
                .iter()
                .flat_map(|&leg| {
                    [Component::Rtp, Component::Rtcp].map(|component| {
                        SocketRef {
                            leg,
                            media,
                            component,
                        }
                        .index()
                    })
                })
                .collect();
            indexes.sort_unstable();
            assert_eq!(indexes, (media * 4..media * 4 + 4).collect::<Vec<_>>());
        }
    }

    #[test]
    fn packets_before_the_update_are_dropped_and_counted() {
        let now = Instant::now();
        let mut s = session(now);
        let verdict = s.handle_packet(now, rtp_at(Leg::Caller), addr(CALLER_SDP), &packet(1));
        assert_eq!(verdict, Verdict::Drop(DropReason::BeforeLatching));
        let snap = s.snapshot();
        assert_eq!(
            snap.legs[0].media[0].drops[DropReason::BeforeLatching.index()],
            1
        );
    }

    #[test]
    fn relays_to_the_other_legs_sdp_address_until_it_latches() {
        let now = Instant::now();
        let mut s = started(now);
        let verdict = s.handle_packet(now, rtp_at(Leg::Caller), addr(CALLER_SDP), &packet(1));
        assert_eq!(
            verdict,
            Verdict::Forward {
                via: rtp_at(Leg::Callee),
                to: addr(CALLEE_SDP),
                rtcp: false
            }
        );
        // The callee answers from a NAT-rewritten source: it latches there.
        let nat = addr("198.51.100.9:4000");
        let verdict = s.handle_packet(now, rtp_at(Leg::Callee), nat, &packet(1));
        assert!(matches!(verdict, Verdict::Forward { to, .. } if to == addr(CALLER_SDP)));
        let verdict = s.handle_packet(now, rtp_at(Leg::Caller), addr(CALLER_SDP), &packet(2));
        assert!(matches!(verdict, Verdict::Forward { to, .. } if to == nat));
        let kinds: Vec<_> = std::iter::from_fn(|| s.poll_event())
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            vec![
                EventKind::FirstPacket {
                    source: addr(CALLER_SDP),
                    sdp: Some(addr(CALLER_SDP)),
                    rtcp: false
                },
                EventKind::FirstPacket {
                    source: nat,
                    sdp: Some(addr(CALLEE_SDP)),
                    rtcp: false
                },
            ]
        );
    }

    #[test]
    fn a_better_source_wins_inside_the_window_and_strangers_lose_after_it() {
        let now = Instant::now();
        let mut s = started(now);
        let stranger = addr("203.0.113.66:9999");
        // A stranger hits first: latched provisionally (rank 0).
        assert!(matches!(
            s.handle_packet(now, rtp_at(Leg::Caller), stranger, &packet(1)),
            Verdict::Forward { .. }
        ));
        // The real phone (exact SDP match) takes over inside the window.
        let t1 = now + Duration::from_millis(500);
        assert!(matches!(
            s.handle_packet(t1, rtp_at(Leg::Caller), addr(CALLER_SDP), &packet(2)),
            Verdict::Forward { .. }
        ));
        // The stranger is now refused, in and after the window.
        assert_eq!(
            s.handle_packet(t1, rtp_at(Leg::Caller), stranger, &packet(3)),
            Verdict::Drop(DropReason::UnknownSource)
        );
        let t2 = now + Duration::from_secs(5);
        let other = addr("10.0.0.7:5555");
        assert_eq!(
            s.handle_packet(t2, rtp_at(Leg::Caller), other, &packet(4)),
            Verdict::Drop(DropReason::UnknownSource)
        );
        let snap = s.snapshot();
        let media = &snap.legs[0].media[0];
        assert_eq!(media.latched_rtp, Some(addr(CALLER_SDP)));
        assert_eq!(media.source_changes, 1);
        assert_eq!(media.drops[DropReason::UnknownSource.index()], 2);
        assert_eq!(media.rtp_received.packets, 2);
    }

    #[test]
    fn a_worse_source_cannot_take_over_and_a_late_one_cannot_either() {
        let now = Instant::now();
        let mut s = started(now);
        let nat = addr("10.0.0.7:40000"); // same IP as SDP, port rewritten: rank 2
        s.handle_packet(now, rtp_at(Leg::Caller), nat, &packet(1));
        let stranger = addr("192.0.2.1:17616"); // same port only: rank 1
        assert_eq!(
            s.handle_packet(now, rtp_at(Leg::Caller), stranger, &packet(2)),
            Verdict::Drop(DropReason::UnknownSource)
        );
        // Exact match after the window: too late, refused.
        let late = now + Duration::from_secs(4);
        assert_eq!(
            s.handle_packet(late, rtp_at(Leg::Caller), addr(CALLER_SDP), &packet(3)),
            Verdict::Drop(DropReason::UnknownSource)
        );
    }

    #[test]
    fn a_stranger_spraying_before_the_phone_cannot_keep_the_port_when_the_phone_comes() {
        let now = Instant::now();
        let mut s = started(now);
        // Before the caller's first packet a stranger sprays its port; it is a guess (rank
        // 0) and is relayed, as a phone behind an address-changing NAT would be.
        let stranger = addr("203.0.113.66:4444");
        assert!(matches!(
            s.handle_packet(now, rtp_at(Leg::Caller), stranger, &packet(1)),
            Verdict::Forward { .. }
        ));
        // The phone answers late, long after the window: from its SDP address it takes over.
        let late = now + Duration::from_secs(10);
        assert!(matches!(
            s.handle_packet(late, rtp_at(Leg::Caller), addr(CALLER_SDP), &packet(2)),
            Verdict::Forward { .. }
        ));
        // From then on the stranger is refused and counted, and cannot come back.
        for seq in 3..6 {
            assert_eq!(
                s.handle_packet(late, rtp_at(Leg::Caller), stranger, &packet(seq)),
                Verdict::Drop(DropReason::UnknownSource)
            );
        }
        let snap = s.snapshot();
        let media = &snap.legs[0].media[0];
        assert_eq!(media.latched_rtp, Some(addr(CALLER_SDP)));
        assert_eq!(media.drops[DropReason::UnknownSource.index()], 3);
        // A phone at the SDP's address with a NAT-rewritten port (rank 2) wins the same way.
        let mut s = started(now);
        s.handle_packet(now, rtp_at(Leg::Caller), stranger, &packet(1));
        let nat = addr("10.0.0.7:40000");
        assert!(matches!(
            s.handle_packet(late, rtp_at(Leg::Caller), nat, &packet(2)),
            Verdict::Forward { .. }
        ));
        assert_eq!(s.snapshot().legs[0].media[0].latched_rtp, Some(nat));
    }

    #[test]
    fn a_natted_phone_is_known_by_its_signaling_address_and_beats_an_earlier_stranger() {
        let now = Instant::now();
        let mut s = session(now);
        // The caller's SDP names its private address; its SIP came from its NAT's public one.
        let mut private = remote("192.168.1.20:4000");
        private.signaling_ip = Some("198.51.100.7".parse().unwrap());
        s.update(now, Leg::Caller, &[private]).unwrap();
        s.update(now, Leg::Callee, &[remote(CALLEE_SDP)]).unwrap();
        let stranger = addr("203.0.113.66:4444");
        s.handle_packet(now, rtp_at(Leg::Caller), stranger, &packet(1));
        // Its media comes from the public address with a port the NAT chose, seconds later.
        let phone = addr("198.51.100.7:61000");
        let late = now + Duration::from_secs(10);
        assert!(matches!(
            s.handle_packet(late, rtp_at(Leg::Caller), phone, &packet(2)),
            Verdict::Forward { .. }
        ));
        assert_eq!(
            s.handle_packet(late, rtp_at(Leg::Caller), stranger, &packet(3)),
            Verdict::Drop(DropReason::UnknownSource)
        );
        assert_eq!(s.snapshot().legs[0].media[0].latched_rtp, Some(phone));
        // Without the signaling address both are guesses: the first keeps the port after
        // the window (what the proxy cannot tell apart, it does not switch).
        let mut s = session(now);
        s.update(now, Leg::Caller, &[remote("192.168.1.20:4000")])
            .unwrap();
        s.update(now, Leg::Callee, &[remote(CALLEE_SDP)]).unwrap();
        s.handle_packet(now, rtp_at(Leg::Caller), stranger, &packet(1));
        assert_eq!(
            s.handle_packet(late, rtp_at(Leg::Caller), phone, &packet(2)),
            Verdict::Drop(DropReason::UnknownSource)
        );
    }

    #[test]
    fn an_update_reopens_the_window_for_a_moved_phone() {
        let now = Instant::now();
        let mut s = started(now);
        s.handle_packet(now, rtp_at(Leg::Caller), addr(CALLER_SDP), &packet(1));
        let later = now + Duration::from_secs(30);
        let moved = addr("198.51.100.20:6000");
        assert_eq!(
            s.handle_packet(later, rtp_at(Leg::Caller), moved, &packet(2)),
            Verdict::Drop(DropReason::UnknownSource)
        );
        s.update(later, Leg::Caller, &[remote(CALLER_SDP)]).unwrap();
        assert!(matches!(
            s.handle_packet(later, rtp_at(Leg::Caller), moved, &packet(3)),
            Verdict::Forward { .. }
        ));
        assert_eq!(s.snapshot().legs[0].media[0].latched_rtp, Some(moved));
    }

    #[test]
    fn hold_stops_sending_to_the_held_leg_and_malformed_input_is_counted() {
        let now = Instant::now();
        let mut s = started(now);
        let mut hold = remote(CALLEE_SDP);
        hold.target = RemoteTarget::Hold;
        hold.direction = Direction::Inactive;
        s.update(now, Leg::Callee, &[hold]).unwrap();
        assert_eq!(
            s.handle_packet(now, rtp_at(Leg::Caller), addr(CALLER_SDP), &packet(1)),
            Verdict::Drop(DropReason::NoDestination)
        );
        assert_eq!(
            s.handle_packet(now, rtp_at(Leg::Caller), addr(CALLER_SDP), &[0x80, 0]),
            Verdict::Drop(DropReason::TooShort)
        );
        assert_eq!(
            s.handle_packet(now, rtp_at(Leg::Caller), addr(CALLER_SDP), &[0u8; 20]),
            Verdict::Drop(DropReason::NotRtp)
        );
        let drops = s.snapshot().legs[0].media[0].drops;
        assert_eq!(drops[DropReason::NoDestination.index()], 1);
        assert_eq!(drops[DropReason::TooShort.index()], 1);
        assert_eq!(drops[DropReason::NotRtp.index()], 1);
    }

    #[test]
    fn rtcp_follows_multiplexing_of_the_receiving_leg() {
        let now = Instant::now();
        let mut s = started(now);
        let rr = [0x80, 201, 0, 1, 0, 0, 0, 1];
        let rtcp_at = SocketRef {
            leg: Leg::Caller,
            media: 0,
            component: Component::Rtcp,
        };
        let caller_rtcp = addr("10.0.0.7:17617");
        let verdict = s.handle_packet(now, rtcp_at, caller_rtcp, &rr);
        let callee_rtcp = addr("10.1.1.4:16005");
        assert_eq!(
            verdict,
            Verdict::Forward {
                via: SocketRef {
                    leg: Leg::Callee,
                    media: 0,
                    component: Component::Rtcp
                },
                to: callee_rtcp,
                rtcp: true
            }
        );
        // The callee switches to rtcp-mux: RTCP now goes to its RTP port via the RTP socket.
        let mut mux = remote(CALLEE_SDP);
        mux.target = RemoteTarget::Address {
            rtp: addr(CALLEE_SDP),
            rtcp: addr(CALLEE_SDP),
        };
        s.update(now, Leg::Callee, &[mux]).unwrap();
        let verdict = s.handle_packet(now, rtcp_at, caller_rtcp, &rr);
        assert_eq!(
            verdict,
            Verdict::Forward {
                via: rtp_at(Leg::Callee),
                to: addr(CALLEE_SDP),
                rtcp: true
            }
        );
        assert_eq!(s.snapshot().legs[0].media[0].rtcp_received.packets, 2);
    }

    #[test]
    fn media_timeout_and_one_way_detection() {
        let now = Instant::now();
        let mut s = started(now);
        let timing = Timing::default();
        for i in 0..20u16 {
            let t = now + Duration::from_millis(u64::from(i) * 600);
            s.handle_packet(t, rtp_at(Leg::Caller), addr(CALLER_SDP), &packet(i));
            assert_eq!(s.poll_timers(t), None);
        }
        let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        let one_way: Vec<_> = events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::OneWayMedia { .. }))
            .collect();
        assert_eq!(one_way.len(), 1, "{events:?}");
        assert_eq!(one_way[0].leg, Leg::Callee);
        let last = now + Duration::from_millis(19 * 600);
        assert_eq!(
            s.poll_timers(last + timing.media_timeout - Duration::from_millis(1)),
            None
        );
        let expired = s.poll_timers(last + timing.media_timeout);
        assert_eq!(
            expired,
            Some(Expired {
                idle: timing.media_timeout
            })
        );
        // Reported once.
        assert_eq!(s.poll_timers(last + timing.media_timeout * 2), None);
    }

    #[test]
    fn hold_uses_the_longer_timeout() {
        let now = Instant::now();
        let mut s = started(now);
        let mut hold = remote(CALLEE_SDP);
        hold.direction = Direction::Inactive;
        s.update(now, Leg::Callee, &[hold]).unwrap();
        let timing = Timing::default();
        assert_eq!(s.poll_timers(now + timing.media_timeout), None);
        assert!(s.poll_timers(now + timing.hold_timeout).is_some());
    }

    #[test]
    fn sequence_quality_reaches_the_snapshot() {
        let now = Instant::now();
        let mut s = started(now);
        for seq in [1u16, 2, 4, 3, 3, 7] {
            s.handle_packet(now, rtp_at(Leg::Caller), addr(CALLER_SDP), &packet(seq));
        }
        let q = s.snapshot().legs[0].media[0].quality;
        assert_eq!(
            (q.expected, q.lost, q.duplicates, q.out_of_order),
            (7, 2, 1, 1)
        );
    }

    #[test]
    fn jitter_uses_the_sdp_clock_rate_and_ignores_telephone_events() {
        let start = Instant::now();
        let mut s = session(start);
        let mut caller = remote(CALLER_SDP);
        caller.codecs = vec![
            Codec {
                payload_type: 96,
                encoding: "opus".into(),
                clock_rate: 48000,
                channels: 2,
            },
            Codec {
                payload_type: 101,
                encoding: "telephone-event".into(),
                clock_rate: 8000,
                channels: 1,
            },
        ];
        s.update(start, Leg::Caller, &[caller]).unwrap();
        s.update(start, Leg::Callee, &[remote(CALLEE_SDP)]).unwrap();
        let jitter = |s: &Session| s.snapshot().legs[0].media[0].quality.jitter_ms;
        // Opus every 20 ms (960 units at 48 kHz), one packet 10 ms late: A.8 gives 10/16 ms.
        for (seq, late_ms) in [(1u16, 0u64), (2, 0), (3, 10)] {
            let at = start + Duration::from_millis(20 * u64::from(seq) + late_ms);
            let rtp = build_rtp(96, seq, u32::from(seq) * 960, 0x1234, &[0; 80]);
            s.handle_packet(at, rtp_at(Leg::Caller), addr(CALLER_SDP), &rtp);
        }
        assert!((jitter(&s) - 0.625).abs() < 1e-6, "{}", jitter(&s));
        // DTMF events repeat one timestamp for the whole key press: no jitter from them.
        for seq in 4u16..10 {
            let at = start + Duration::from_millis(20 * u64::from(seq));
            let rtp = build_rtp(101, seq, 7777, 0x1234, &[0; 4]);
            s.handle_packet(at, rtp_at(Leg::Caller), addr(CALLER_SDP), &rtp);
        }
        assert!((jitter(&s) - 0.625).abs() < 1e-6, "{}", jitter(&s));
    }

    #[test]
    fn a_new_sdp_for_the_same_payload_type_changes_its_clock_rate() {
        let start = Instant::now();
        let mut s = session(start);
        let codec = |encoding: &str, clock_rate| Codec {
            payload_type: 96,
            encoding: encoding.into(),
            clock_rate,
            channels: 1,
        };
        let mut caller = remote(CALLER_SDP);
        caller.codecs = vec![codec("telephone-event", 8000)];
        s.update(start, Leg::Caller, &[caller.clone()]).unwrap();
        s.update(start, Leg::Callee, &[remote(CALLEE_SDP)]).unwrap();
        let jitter = |s: &Session| s.snapshot().legs[0].media[0].quality.jitter_ms;
        let send = |s: &mut Session, seq: u16, late_ms: u64| {
            let at = start + Duration::from_millis(20 * u64::from(seq) + late_ms);
            let rtp = build_rtp(96, seq, u32::from(seq) * 960, 0x1234, &[0; 80]);
            s.handle_packet(at, rtp_at(Leg::Caller), addr(CALLER_SDP), &rtp);
        };
        // As telephone-event, payload type 96 is not judged for jitter, however late.
        for (seq, late_ms) in [(1, 0), (2, 0), (3, 10)] {
            send(&mut s, seq, late_ms);
        }
        assert_eq!(jitter(&s), 0.0);
        // A re-INVITE makes 96 Opus at 48 kHz: the rate the packet path remembered for 96 is
        // forgotten, and the same lateness now counts.
        caller.codecs = vec![codec("opus", 48000)];
        s.update(start, Leg::Caller, &[caller]).unwrap();
        for (seq, late_ms) in [(4, 0), (5, 0), (6, 10)] {
            send(&mut s, seq, late_ms);
        }
        assert!((jitter(&s) - 0.625).abs() < 1e-6, "{}", jitter(&s));
    }

    #[test]
    fn update_errors_name_what_is_missing() {
        let now = Instant::now();
        let mut s = session(now);
        let mut far = remote(CALLER_SDP);
        far.index = 3;
        assert_eq!(
            s.update(now, Leg::Caller, &[far]),
            Err(UpdateError::MediaNotAllocated {
                leg: "caller",
                index: 3,
                allocated: 1
            })
        );
        let mut lone = Session::new(
            CallId::parse("c").unwrap(),
            Owner::parse("o").unwrap(),
            WallClock::now(),
            Timing::default(),
            now,
        );
        assert_eq!(
            lone.update(now, Leg::Callee, &[]),
            Err(UpdateError::LegNotAllocated("callee"))
        );
    }
}
