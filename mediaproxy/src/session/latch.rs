//! The latching policy: which source each local socket (RTP and RTCP of each media line of
//! each leg) accepts, and where it sends what the other leg sends. Each socket latches
//! independently:
//!
//! 1. Before the leg's first update the proxy does not know the leg: packets are dropped as
//!    `before_latching`.
//! 2. Until a packet arrives, packets for the leg go to the SDP address.
//! 3. The first packet latches its source at once (media flows without delay) and opens a
//!    learning window (`latch_window`). Inside the window a source that matches the SDP
//!    better (rank: exact address and port > the SDP's IP with another port, or the IP the
//!    leg's SIP came from > same port > anything) takes the latch over; packets from other
//!    sources are dropped as `unknown_source`.
//! 4. After the window the latch is fixed: a stranger spraying packets at a live port cannot
//!    steal the stream. One exception: a latch on a guess (a source neither at the SDP's IP
//!    nor at the leg's SIP source: a NAT pool that changed the address, or a stranger who
//!    sprayed the port before the phone's first packet) gives way to the first expected
//!    source, at any time, so an early spray cannot lock the real phone out.
//! 5. An update with the same SDP address keeps the latch and lets the next packet open a new
//!    window from any source (a phone that moved networks re-INVITEs); an update with a new
//!    address drops the latch and sends to the new address until its first packet.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Latch state of one local socket.
#[derive(Debug, Clone, Default)]
pub(super) struct Latch {
    /// Address from SDP (None before the first update, on hold, or disabled).
    pub(super) sdp: Option<SocketAddr>,
    /// The IP the leg's SIP comes from (a NATed phone's media comes from it too).
    pub(super) signaling_ip: Option<IpAddr>,
    /// Current latched source.
    pub(super) source: Option<SocketAddr>,
    rank: u8,
    /// End of the learning window.
    window_until: Option<Instant>,
    /// Set by an update: the next packet opens a new window from any source.
    relearn: bool,
    /// Whether any packet was ever latched here (first-packet event sent).
    ever_latched: bool,
    /// The leg declared hold (`c=0.0.0.0`) or a disabled line: send nothing.
    pub(super) silenced: bool,
}

/// How a packet's source fared against the latch.
pub(super) enum Admission {
    Accept,
    First,
    Changed { from: SocketAddr },
    Reject,
}

/// The rank of a source at the address the SDP gave (exactly, or its IP with another port as
/// a NAT rewrites it).
const EXPECTED: u8 = 2;

fn rank(source: SocketAddr, sdp: Option<SocketAddr>, signaling_ip: Option<IpAddr>) -> u8 {
    match sdp {
        Some(sdp) if sdp == source => 3,
        Some(sdp) if sdp.ip() == source.ip() => EXPECTED,
        _ if signaling_ip == Some(source.ip()) => EXPECTED,
        Some(sdp) if sdp.port() == source.port() => 1,
        _ => 0,
    }
}

impl Latch {
    pub(super) fn admit(
        &mut self,
        now: Instant,
        source: SocketAddr,
        window: Duration,
    ) -> Admission {
        let Some(current) = self.source else {
            self.source = Some(source);
            self.rank = rank(source, self.sdp, self.signaling_ip);
            self.window_until = Some(now + window);
            self.relearn = false;
            return if self.ever_latched {
                Admission::Accept
            } else {
                self.ever_latched = true;
                Admission::First
            };
        };
        if current == source {
            if self.relearn {
                self.relearn = false;
                self.rank = rank(source, self.sdp, self.signaling_ip);
                self.window_until = Some(now + window);
            }
            return Admission::Accept;
        }
        let new_rank = rank(source, self.sdp, self.signaling_ip);
        let switch = if self.relearn {
            true
        } else if self.rank < EXPECTED && new_rank >= EXPECTED {
            // A source at the address the SDP gave beats a guess at any time: a stranger
            // that sprayed the port before the phone's first packet cannot keep it once the
            // phone is heard, window or not.
            true
        } else {
            self.window_until.is_some_and(|until| now < until) && new_rank > self.rank
        };
        if !switch {
            return Admission::Reject;
        }
        if self.relearn {
            self.relearn = false;
            self.window_until = Some(now + window);
        }
        self.source = Some(source);
        self.rank = new_rank;
        Admission::Changed { from: current }
    }

    pub(super) fn destination(&self) -> Option<SocketAddr> {
        if self.silenced {
            None
        } else {
            self.source.or(self.sdp)
        }
    }

    pub(super) fn set_sdp(
        &mut self,
        sdp: Option<SocketAddr>,
        signaling_ip: Option<IpAddr>,
        silenced: bool,
    ) {
        if signaling_ip.is_some() {
            self.signaling_ip = signaling_ip;
        }
        if sdp.is_some() && sdp != self.sdp {
            // A new address: send there until a packet shows where the leg really is.
            self.source = None;
        } else {
            self.relearn = true;
        }
        if sdp.is_some() {
            self.sdp = sdp;
        }
        self.silenced = silenced;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn sources_rank_by_how_well_they_match_the_sdp_and_the_sip_source() {
        let sdp = Some(at("192.0.2.10:4000"));
        let sip = Some("203.0.113.5".parse().unwrap());
        assert_eq!(rank(at("192.0.2.10:4000"), sdp, sip), 3);
        assert_eq!(rank(at("192.0.2.10:5000"), sdp, sip), EXPECTED);
        assert_eq!(rank(at("203.0.113.5:6000"), sdp, sip), EXPECTED);
        assert_eq!(rank(at("198.51.100.1:4000"), sdp, sip), 1);
        assert_eq!(rank(at("198.51.100.1:9"), sdp, sip), 0);
        assert_eq!(rank(at("198.51.100.1:9"), None, None), 0);
    }

    #[test]
    fn a_guess_gives_way_to_the_phone_after_the_window_and_a_stranger_never_does() {
        let start = Instant::now();
        let window = Duration::from_secs(3);
        let mut latch = Latch::default();
        latch.set_sdp(Some(at("192.0.2.10:4000")), None, false);
        assert_eq!(latch.destination(), Some(at("192.0.2.10:4000")));
        // A stranger first: latched (a guess), and sent to.
        assert!(matches!(
            latch.admit(start, at("198.51.100.1:9"), window),
            Admission::First
        ));
        assert_eq!(latch.destination(), Some(at("198.51.100.1:9")));
        // The phone, long after the window: it takes the port over.
        let late = start + Duration::from_secs(60);
        assert!(matches!(
            latch.admit(late, at("192.0.2.10:4000"), window),
            Admission::Changed { .. }
        ));
        // From then on the stranger is refused, and so is anyone else.
        assert!(matches!(
            latch.admit(late, at("198.51.100.1:9"), window),
            Admission::Reject
        ));
        assert_eq!(latch.destination(), Some(at("192.0.2.10:4000")));
        // Hold: nothing is sent.
        latch.set_sdp(Some(at("192.0.2.10:4000")), None, true);
        assert_eq!(latch.destination(), None);
    }
}
