//! One call's relay state, without sockets or clocks.
//!
//! The worker that owns a session feeds it datagrams with [`Session::handle_packet`] and gets
//! back a [`Verdict`]: where to send the datagram and through which local socket, or why to
//! drop it. Timers run from [`Session::poll_timers`]; events (first packet, source changed,
//! timeout, one-way media) queue up for [`Session::poll_event`]. Everything takes `now`, so
//! tests drive it with made-up instants.
//!
//! Latching (which source a local socket accepts and sends back to) is the [`latch`] module
//! (`session/latch.rs`); the statistics a session reports ([`CallSnapshot`]) are the
//! [`snapshot`] module (`session/snapshot.rs`); the tests are `session/tests.rs`.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

mod latch;
mod snapshot;

use latch::{Admission, Latch};
pub(crate) use snapshot::{CallSnapshot, MediaSnapshot};

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

#[cfg(test)]
mod tests;
