//! A simulated network for the call core (the model is quinn-proto's `tests/util.rs`): a
//! virtual clock, a datagram channel between the core and two scripted phones that can lose,
//! duplicate, delay and so reorder messages, and the core's own timers fired in time order.
//! A call flow's correctness shows in milliseconds of real time.
//!
//! The phones are scripted by the tests: they read what reached them with [`Sim::take`] and
//! answer with [`Sim::send`], using the builders at the end of this file.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::{Core, Input, Output, Settings};
use crate::access::auth::DigestAuth;
use crate::access::registrar::{Policy, Registrar};
use crate::ids::Ids;
use crate::policy::{MediaMode, Route};
use crate::sip::message::{Message, Request, Response, parse};
use crate::sip::{Peer, Transport};

const fn udp(port: u16) -> Peer {
    Peer {
        transport: Transport::Udp,
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
    }
}

/// The core's address, the caller's phone and the callee's phone (the default route).
pub(super) const CORE: Peer = udp(5060);
pub(super) const A: Peer = udp(5061);
pub(super) const B: Peer = udp(5062);
/// A third phone: a transfer's target.
pub(super) const C: Peer = udp(5063);

/// What the channel does to the messages a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    Drop,
    Duplicate,
    /// Delivered this much later than the others (so after messages sent after it).
    Delay(Duration),
}

struct Rule {
    /// Applies to messages from `from` to `to` whose first line contains `line`.
    from: Peer,
    to: Peer,
    line: String,
    fault: Fault,
    /// How many more messages it applies to.
    times: usize,
}

/// The settings the simulations run with: direct media, one default route to B, trusted
/// loopback, keepalives off unless a test turns them on.
pub(super) fn settings() -> Settings {
    let mut route: Route = "=sip:127.0.0.1:5062".parse().unwrap();
    route.resolve().unwrap();
    Settings {
        local: CORE.addr,
        routes: vec![route],
        trusted: vec!["127.0.0.0/8".parse().unwrap()],
        users: BTreeMap::new(),
        media_mode: MediaMode::Direct,
        record: false,
        ring_timeout: Duration::from_secs(60),
        max_call_duration: Duration::from_secs(3600),
        keepalive: Duration::ZERO,
        session_expires: Duration::from_secs(1800),
        min_se: Duration::from_secs(90),
        max_calls: 100_000,
        limits: crate::access::guard::Limits::default(),
    }
}

pub(super) struct Sim {
    pub(super) core: Core,
    pub(super) now: Instant,
    start: Instant,
    latency: Duration,
    /// Messages on the wire, by delivery time (then sending order).
    wire: BTreeMap<(Instant, u64), (Peer, Peer, Vec<u8>)>,
    sequence: u64,
    rules: Vec<Rule>,
    inbox: HashMap<Peer, VecDeque<Message>>,
    /// Every output that is not a datagram (allocations, CDR records), in order.
    pub(super) outputs: Vec<Output>,
}

impl Sim {
    pub(super) fn new(settings: Settings) -> Self {
        let core = Core::new(
            settings,
            DigestAuth::with_secret("sim", [1; 32], 300),
            Registrar::new(Policy::default()),
            Ids::from_seed([42; 32]),
        );
        let now = Instant::now();
        Self {
            core,
            now,
            start: now,
            latency: Duration::from_millis(5),
            wire: BTreeMap::new(),
            sequence: 0,
            rules: Vec::new(),
            inbox: HashMap::new(),
            outputs: Vec::new(),
        }
    }

    /// Virtual time since the start.
    pub(super) fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The next `times` messages from `from` to `to` whose first line contains `line` meet
    /// `fault`.
    pub(super) fn fault(&mut self, from: Peer, to: Peer, line: &str, fault: Fault, times: usize) {
        self.rules.push(Rule {
            from,
            to,
            line: line.to_owned(),
            fault,
            times,
        });
    }

    fn put_on_wire(&mut self, from: Peer, to: Peer, data: Vec<u8>) {
        let first_line = String::from_utf8_lossy(&data)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        let fault = self.rules.iter_mut().find_map(|rule| {
            (rule.times > 0
                && rule.from == from
                && rule.to == to
                && first_line.contains(&rule.line))
            .then(|| {
                rule.times -= 1;
                rule.fault
            })
        });
        let mut at = self.now + self.latency;
        match fault {
            Some(Fault::Drop) => return,
            Some(Fault::Duplicate) => {
                self.sequence += 1;
                self.wire
                    .insert((at, self.sequence), (from, to, data.clone()));
            }
            Some(Fault::Delay(by)) => at += by,
            None => {}
        }
        self.sequence += 1;
        self.wire.insert((at, self.sequence), (from, to, data));
    }

    /// A phone sends `message` (CRLF line ends are added) to the core.
    pub(super) fn send(&mut self, from: Peer, message: &str) {
        let text = message.replace("\r\n", "\n").replace('\n', "\r\n");
        self.put_on_wire(from, CORE, text.into_bytes());
    }

    fn collect(&mut self) {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Send { to, data } => self.put_on_wire(CORE, to, data),
                other => self.outputs.push(other),
            }
        }
    }

    /// Feeds a non-SIP input (a media proxy answer) to the core now.
    pub(super) fn input(&mut self, input: Input) {
        self.core.handle(self.now, 0, input);
        self.collect();
    }

    /// Runs the network and the core's timers for `duration` of virtual time.
    pub(super) fn run(&mut self, duration: Duration) {
        let end = self.now + duration;
        loop {
            let next_packet = self.wire.keys().next().map(|(at, _)| *at);
            let next_timer = self.core.poll_timeout();
            let next = match (next_packet, next_timer) {
                (Some(p), Some(t)) => p.min(t),
                (p, t) => match p.or(t) {
                    Some(next) => next,
                    None => break,
                },
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            if next_packet == Some(next) {
                let (_, (from, to, data)) = self.wire.pop_first().expect("a packet");
                if to == CORE {
                    let input = match parse(&data) {
                        Ok(message) => Input::Message { from, message },
                        Err(error) => Input::Malformed { from, error },
                    };
                    self.core.handle(self.now, 0, input);
                } else {
                    let message = parse(&data).expect("the core sends valid SIP");
                    self.inbox.entry(to).or_default().push_back(message);
                }
            } else {
                self.core.handle_timeout(self.now);
            }
            self.collect();
        }
        self.now = end;
    }

    /// Everything that reached `peer` so far.
    pub(super) fn take(&mut self, peer: Peer) -> Vec<Message> {
        self.inbox.remove(&peer).map(Vec::from).unwrap_or_default()
    }

    /// Registers `user` at each of `contacts` (the phone's port and its `q`), as a REGISTER
    /// from that phone would.
    pub(super) fn register(&mut self, user: &str, contacts: &[(Peer, f32)]) {
        for (n, (peer, q)) in contacts.iter().enumerate() {
            let mut headers = crate::sip::message::Headers::new();
            headers.push(
                "Contact",
                format!("<sip:{user}@127.0.0.1:{}>;q={q}", peer.addr.port()),
            );
            let request = crate::access::registrar::RegisterRequest {
                aor: user.to_owned(),
                headers: &headers,
                call_id: &format!("reg-{user}-{n}"),
                cseq: 1,
                source: peer.addr,
                transport: "udp",
            };
            self.core
                .registrar
                .register(self.now, &request)
                .expect("a valid registration");
        }
    }

    /// The call records the core finished, in order.
    pub(super) fn records(&self) -> Vec<&super::CallRecord> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Finish(record) => Some(record),
                _ => None,
            })
            .collect()
    }
}

// ---- what phones see and say --------------------------------------------------------

pub(super) fn requests<'a>(messages: &'a [Message], method: &str) -> Vec<&'a Request> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::Request(r) if r.method.as_str() == method => Some(r),
            _ => None,
        })
        .collect()
}

pub(super) fn responses(messages: &[Message], status: u16) -> Vec<&Response> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::Response(r) if r.status == status => Some(r),
            _ => None,
        })
        .collect()
}

pub(super) const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";

/// The caller's INVITE with an SDP offer (`sdp` empty: a late offer).
pub(super) fn invite(call_id: &str, branch: &str, sdp: &str) -> String {
    let content_type = if sdp.is_empty() {
        String::new()
    } else {
        "Content-Type: application/sdp\n".to_owned()
    };
    format!(
        "INVITE sip:bob@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch={branch}\nFrom: <sip:alice@127.0.0.1>;tag=af\nTo: <sip:bob@127.0.0.1>\nCall-ID: {call_id}\nCSeq: 1 INVITE\nContact: <sip:alice@127.0.0.1:5061>\nMax-Forwards: 70\n{content_type}Content-Length: {}\n\n{sdp}",
        sdp.len()
    )
}

/// A phone's response to a request it received: Via, From, To (with `tag`), Call-ID and CSeq
/// copied, `extra` headers and `sdp` added.
pub(super) fn answer(request: &Request, status_line: &str, tag: Option<&str>, sdp: &str) -> String {
    let to = request.headers.get("To").unwrap_or("");
    let to = match tag {
        Some(tag) if !to.contains("tag=") => format!("{to};tag={tag}"),
        _ => to.to_owned(),
    };
    let vias: String = request
        .headers
        .all("Via")
        .map(|v| format!("Via: {v}\n"))
        .collect();
    let content_type = if sdp.is_empty() {
        String::new()
    } else {
        "Content-Type: application/sdp\n".to_owned()
    };
    let contact = if tag.is_some() {
        "Contact: <sip:bob@127.0.0.1:5062>\n"
    } else {
        ""
    };
    format!(
        "SIP/2.0 {status_line}\n{vias}From: {}\nTo: {to}\nCall-ID: {}\nCSeq: {}\n{contact}{content_type}Content-Length: {}\n\n{sdp}",
        request.headers.get("From").unwrap_or(""),
        request.call_id(),
        request.headers.get("CSeq").unwrap_or(""),
        sdp.len()
    )
}

/// A phone inside a dialog: its Call-ID, its From and To (the core's side, with its tag), and
/// the port it sends from.
pub(super) struct Phone<'a> {
    pub(super) call_id: &'a str,
    pub(super) from: &'a str,
    pub(super) to: &'a str,
    pub(super) port: u16,
}

impl Phone<'_> {
    /// A request of the dialog with CSeq `cseq`, branch `branch` and an optional SDP body.
    pub(super) fn request(&self, method: &str, cseq: u32, branch: &str, sdp: &str) -> String {
        let content_type = if sdp.is_empty() {
            String::new()
        } else {
            "Content-Type: application/sdp\n".to_owned()
        };
        format!(
            "{method} sip:127.0.0.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch={branch}\nFrom: {from}\nTo: {to}\nCall-ID: {call_id}\nCSeq: {cseq} {method}\nMax-Forwards: 70\nContact: <sip:phone@127.0.0.1:{port}>\n{content_type}Content-Length: {}\n\n{sdp}",
            sdp.len(),
            port = self.port,
            from = self.from,
            to = self.to,
            call_id = self.call_id,
        )
    }
}
