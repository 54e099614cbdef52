//! What the proxy keeps of a released call: its *tombstone*.
//!
//! Release moves a call to a tombstone holding its final statistics for [`TOMBSTONE_TTL`]; a
//! retried release (or a release after the proxy ended the call itself) gets the same
//! statistics with `already_released`, and signaling's CDR its figures even when its first
//! release's answer was lost. A tombstone keeps only the answer such a release gets, encoded
//! once (425 bytes for an audio call, against 1 064 for the figures' structs alone), and all
//! of them together take at most [`TOMBSTONE_BYTES`]: past that the oldest go first, counted
//! in `mediaproxy_tombstones_evicted_total`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::recording::RecordingInfo;
use crate::session::CallSnapshot;
use crate::types::{CallId, Owner, ReleaseReason};

/// How long final statistics of a released call stay available to a retried release.
pub(crate) const TOMBSTONE_TTL: Duration = Duration::from_secs(600);
/// Memory all tombstones may take (their encoded answers and the bookkeeping around each);
/// the oldest are evicted first past it. 64 MiB holds about 115 000 audio calls (585 bytes
/// each): the full ten minutes of them up to 190 calls/s.
pub(crate) const TOMBSTONE_BYTES: usize = 64 << 20;
/// Bookkeeping per tombstone besides its answer: the call id's text, the map and queue
/// entries, the allocation headers.
const TOMBSTONE_OVERHEAD: usize = 160;

/// Final statistics of a released call.
#[derive(Debug, Clone)]
pub(crate) struct Released {
    pub(crate) snapshot: CallSnapshot,
    pub(crate) reason: ReleaseReason,
    /// The call's recording as it ended (`Off` if it was never recorded).
    pub(crate) recording: RecordingInfo,
}

/// Encodes a released call's answer for its tombstone, given the node's id.
pub(crate) type EncodeRelease = fn(&Released, &str) -> Vec<u8>;

/// A released call, or one being released.
pub(crate) enum Tombstone {
    /// A release is under way; wait for it.
    Pending(watch::Receiver<Option<Arc<Released>>>),
    /// Released: the answer a retried release gets, encoded (see [`EncodeRelease`]).
    Done {
        owner: Owner,
        answer: Arc<[u8]>,
        /// When it was made (its place in the expiry order).
        at: Instant,
    },
}

impl Tombstone {
    /// What it counts against the cap.
    fn bytes(&self) -> usize {
        match self {
            Self::Pending(_) => 0,
            Self::Done { answer, .. } => answer.len() + TOMBSTONE_OVERHEAD,
        }
    }
}

/// Every tombstone, in the order they were made, within a memory cap.
pub(crate) struct Tombstones {
    by_call: HashMap<CallId, Tombstone>,
    order: VecDeque<(Instant, CallId)>,
    /// What they take together (see [`Tombstone::bytes`]).
    bytes: usize,
    cap: usize,
}

impl Tombstones {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            by_call: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            cap,
        }
    }

    pub(crate) fn get(&self, call_id: &CallId) -> Option<&Tombstone> {
        self.by_call.get(call_id)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_call.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Marks `call_id` as being released: a concurrent release waits on `done`.
    pub(crate) fn pending(
        &mut self,
        call_id: &CallId,
        done: watch::Receiver<Option<Arc<Released>>>,
    ) {
        if let Some(old) = self
            .by_call
            .insert(call_id.clone(), Tombstone::Pending(done))
        {
            self.bytes -= old.bytes();
        }
    }

    /// Keeps a released call's tombstone, evicting the oldest while all of them take more
    /// than the cap; how many were evicted.
    pub(crate) fn keep(&mut self, now: Instant, call_id: &CallId, tombstone: Tombstone) -> u64 {
        self.bytes += tombstone.bytes();
        if let Some(old) = self.by_call.insert(call_id.clone(), tombstone) {
            self.bytes -= old.bytes();
        }
        self.order.push_back((now, call_id.clone()));
        let mut evicted = 0;
        while self.bytes > self.cap {
            let Some((at, old)) = self.order.pop_front() else {
                break;
            };
            if self.forget(&old, Some(at)) {
                evicted += 1;
            }
        }
        evicted
    }

    /// Forgets the tombstone of `call_id` if it is the one made at `at` (any, when None).
    pub(crate) fn forget(&mut self, call_id: &CallId, at: Option<Instant>) -> bool {
        let matches = match self.by_call.get(call_id) {
            Some(Tombstone::Done { at: made, .. }) => at.is_none_or(|at| at == *made),
            Some(Tombstone::Pending(_)) => at.is_none(),
            None => false,
        };
        if matches && let Some(tombstone) = self.by_call.remove(call_id) {
            self.bytes -= tombstone.bytes();
        }
        matches
    }

    /// Forgets those made `ttl` or longer before `now`.
    pub(crate) fn expire(&mut self, now: Instant, ttl: Duration) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < ttl {
                break;
            }
            if let Some((at, old)) = self.order.pop_front() {
                self.forget(&old, Some(at));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::recording::RecordingInfo;
    use crate::rtp::build_rtp;
    use crate::session::{Component, Session, SocketRef, Timing};
    use crate::types::{
        Codec, Direction, Leg, MediaKind, ReleaseReason, RemoteMedia, RemoteTarget, WallClock,
    };

    /// The figures of an audio call that carried 20 s of G.711 both ways, as released.
    fn released(call: &str) -> Released {
        let now = Instant::now();
        let mut session = Session::new(
            CallId::parse(call).unwrap(),
            Owner::parse("signaling-1:sig").unwrap(),
            WallClock::now(),
            Timing::default(),
            now,
        );
        let phones: [SocketAddr; 2] = [
            "192.0.2.10:17616".parse().unwrap(),
            "198.51.100.20:16004".parse().unwrap(),
        ];
        for (leg, phone, port) in [
            (Leg::Caller, phones[0], 30000),
            (Leg::Callee, phones[1], 30002),
        ] {
            session.add_media(leg, MediaKind::Audio, port);
            let remote = RemoteMedia {
                index: 0,
                target: RemoteTarget::Address {
                    rtp: phone,
                    rtcp: SocketAddr::new(phone.ip(), phone.port() + 1),
                },
                codecs: vec![Codec {
                    payload_type: 0,
                    encoding: "PCMU".into(),
                    clock_rate: 8000,
                    channels: 1,
                }],
                direction: Direction::SendRecv,
                signaling_ip: None,
            };
            session.update(now, leg, &[remote]).unwrap();
        }
        for seq in 0..1000u16 {
            let at = now + Duration::from_millis(u64::from(seq) * 20);
            for (leg, phone) in [(Leg::Caller, phones[0]), (Leg::Callee, phones[1])] {
                let packet = build_rtp(0, seq, u32::from(seq) * 160, 0x1234, &[0xff; 160]);
                let socket = SocketRef {
                    leg,
                    media: 0,
                    component: Component::Rtp,
                };
                if let crate::session::Verdict::Forward { via, rtcp, .. } =
                    session.handle_packet(at, socket, phone, &packet)
                {
                    session.record_sent(at, via, rtcp, packet.len());
                }
            }
        }
        Released {
            snapshot: session.snapshot(),
            reason: ReleaseReason::Released,
            recording: RecordingInfo::off(),
        }
    }

    fn kept(owner: &str, answer: &[u8], at: Instant) -> Tombstone {
        Tombstone::Done {
            owner: Owner::parse(owner).unwrap(),
            answer: answer.into(),
            at,
        }
    }

    #[test]
    fn a_released_audio_call_is_kept_in_a_few_hundred_bytes() {
        let figures = released("a-call-id-as-long-as-phones-make-them@192.0.2.10");
        let answer = crate::grpc::encode_release(&figures, "mp-1");
        // What the figures take in memory: the structs and their vectors.
        let in_memory = std::mem::size_of::<Released>()
            + figures
                .snapshot
                .legs
                .iter()
                .map(|leg| {
                    std::mem::size_of_val(leg)
                        + leg.media.len() * std::mem::size_of::<crate::session::MediaSnapshot>()
                })
                .sum::<usize>();
        assert!(answer.len() < 500, "{} bytes", answer.len());
        assert!(
            answer.len() * 2 < in_memory,
            "{} bytes kept against {in_memory} in memory",
            answer.len()
        );
    }

    #[test]
    fn tombstones_past_the_memory_cap_go_oldest_first() {
        let start = Instant::now();
        let answer = [7u8; 340];
        let each = 340 + TOMBSTONE_OVERHEAD;
        let mut kept_ones = Tombstones::new(10 * each);
        let mut evicted = 0;
        for n in 0..15u64 {
            let call = CallId::parse(&format!("call-{n}")).unwrap();
            let at = start + Duration::from_millis(n);
            evicted += kept_ones.keep(at, &call, kept("sig", &answer, at));
        }
        assert_eq!(evicted, 5);
        assert_eq!(kept_ones.len(), 10);
        assert_eq!(kept_ones.bytes(), 10 * each);
        assert!(kept_ones.get(&CallId::parse("call-4").unwrap()).is_none());
        assert!(kept_ones.get(&CallId::parse("call-5").unwrap()).is_some());
        // A call id used again (allocated anew) forgets its tombstone and its bytes; the old
        // queue entry later finds nothing of its own to evict.
        assert!(kept_ones.forget(&CallId::parse("call-5").unwrap(), None));
        assert_eq!(kept_ones.bytes(), 9 * each);
        let again = CallId::parse("call-5").unwrap();
        let later = start + Duration::from_secs(1);
        kept_ones.keep(later, &again, kept("sig", &answer, later));
        assert!(!kept_ones.forget(&again, Some(start + Duration::from_millis(5))));
        assert!(kept_ones.get(&again).is_some(), "the newer one stays");
        // Past their time, all go; a pending release is never expired.
        let (_done, pending) = watch::channel(None);
        let waiting = CallId::parse("waiting").unwrap();
        kept_ones.pending(&waiting, pending);
        kept_ones.expire(later + TOMBSTONE_TTL, TOMBSTONE_TTL);
        assert_eq!((kept_ones.len(), kept_ones.bytes()), (1, 0));
        assert!(matches!(
            kept_ones.get(&waiting),
            Some(Tombstone::Pending(_))
        ));
    }
}
