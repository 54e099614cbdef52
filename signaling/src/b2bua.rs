//! The B2BUA and registrar core, without sockets or clocks (STYLE habit 1).
//!
//! The driver feeds [`Input`]s (parsed SIP messages, media proxy answers, timers) with `now`
//! into [`Core::handle`] and performs the [`Output`]s it returns (send bytes, ask the media
//! proxy, arm timers, finish a call). Every call has two SIP dialogs with different Call-IDs;
//! both map to one [`Call`] keyed by the caller's Call-ID, which is also the media session id
//! and the CDR's `call_id` (DESIGN section 5): a BYE on either leg releases the same session.
//!
//! Transactions follow RFC 3261 section 17 where it matters for a B2BUA over UDP: the INVITE
//! to the callee is retransmitted (Timer A) until a response and abandoned after Timer B; the
//! 2xx to the caller is retransmitted (Timer G) until the ACK, up to Timer H; BYEs are
//! retransmitted (Timer E) up to Timer F; retransmitted requests are answered from the last
//! response. Over TCP nothing is retransmitted.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mediaproxy::types::Leg;

use crate::auth::{Credentials, DigestAuth, Verdict};
use crate::config::{Cidr, MediaMode, Route, User};
use crate::registrar::{RegisterRequest, Registrar};
use crate::sdp::{self, Rewrite, SessionDescription};
use crate::sip::header::NameAddr;
use crate::sip::message::{Headers, Message, Method, ParseError, Request, Response, reason_phrase};
use crate::sip::uri::{Uri, host_text};

/// RFC 3261 timer T1 (round-trip estimate).
pub const T1: Duration = Duration::from_millis(500);
/// RFC 3261 timer T2 (longest retransmit interval for non-INVITE and 2xx).
pub const T2: Duration = Duration::from_secs(4);
/// 64 x T1: Timers B, F, H.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(32);

const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER";

/// The transport a message came over or must leave by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
        }
    }

    fn reliable(self) -> bool {
        self == Self::Tcp
    }
}

/// The remote end of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    pub transport: Transport,
    pub addr: SocketAddr,
}

/// Driver-chosen handle of a call.
pub type CallRef = u64;

/// What the media proxy gave a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPlan {
    pub node: String,
    pub advertised: IpAddr,
    /// RTP ports per media line on the caller leg (go into the SDP sent to the caller).
    pub caller_ports: Vec<u16>,
    /// RTP ports per media line on the callee leg (go into the SDP sent to the callee).
    pub callee_ports: Vec<u16>,
}

/// Named RFC 3261 timers plus the call-level ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimerKind {
    /// Retransmit the INVITE to the callee.
    TimerA,
    /// Give up on the callee's INVITE transaction.
    TimerB,
    /// Retransmit the 2xx to the caller.
    TimerG,
    /// Give up waiting for the caller's ACK.
    TimerH,
    /// Retransmit a BYE we sent on a leg.
    TimerE(Side),
    /// Give up on a BYE.
    TimerF(Side),
    /// The callee rang too long.
    RingTimeout,
    /// The answered call reached the maximum duration.
    MaxDuration,
    /// Time to ping both legs with an in-dialog OPTIONS.
    Keepalive,
    /// The keepalive OPTIONS with this CSeq was not answered within the interval.
    KeepaliveTimeout(Side, u32),
    /// Retransmit a relayed re-INVITE (Timer A of that transaction).
    ReInviteRetransmit,
    /// Give up on the relayed re-INVITE with this CSeq (Timer B): 408 to the requester.
    ReInviteTimeout(u32),
    /// Retransmit the 2xx relayed to the re-INVITE's requester (Timer G).
    ReInviteOkRetransmit,
    /// Stop waiting for the requester's ACK of that 2xx (Timer H).
    ReInviteOkTimeout,
    /// Forget a finished call (after retransmissions can no longer arrive).
    Cleanup,
}

/// Which dialog of a call: the caller's (A) or the callee's (B).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    A,
    B,
}

/// Inputs to the core.
#[derive(Debug)]
pub enum Input {
    /// The media proxy ended a call's session itself (media timeout, lease expiry,
    /// shutdown): end the call on both legs.
    MediaEnded {
        call_id: String,
        reason: String,
    },
    Message {
        from: Peer,
        message: Message,
    },
    Malformed {
        from: Peer,
        error: ParseError,
    },
    MediaReady {
        call: CallRef,
        result: Result<MediaPlan, String>,
    },
    Timer {
        call: CallRef,
        kind: TimerKind,
    },
}

/// Outputs the driver performs.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Send {
        to: Peer,
        data: Vec<u8>,
    },
    /// Allocate both legs for the offer's media lines, update `offer_leg` (the leg the offer
    /// came from: the caller, or the callee for a late offer) and answer with
    /// [`Input::MediaReady`].
    Allocate {
        call: CallRef,
        call_id: String,
        offer: SessionDescription,
        offer_leg: Leg,
    },
    /// Update a leg with its latest SDP (no answer needed).
    UpdateMedia {
        call_id: String,
        leg: Leg,
        sdp: SessionDescription,
    },
    Timer {
        call: CallRef,
        kind: TimerKind,
        after: Duration,
    },
    /// The call ended: release its media (if relayed) and write its CDR.
    Finish(CallRecord),
}

/// How a call ended (DESIGN section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Answered,
    Busy,
    NoAnswer,
    Cancelled,
    Failed,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Busy => "busy",
            Self::NoAnswer => "no_answer",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }
}

/// Who ended the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangupSide {
    Caller,
    Callee,
    System,
}

impl HangupSide {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Caller => "caller",
            Self::Callee => "callee",
            Self::System => "system",
        }
    }
}

/// The signaling half of a CDR; the driver adds the media statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRecord {
    pub call_id: String,
    pub b_call_id: String,
    pub caller: String,
    pub callee: String,
    pub start: Instant,
    pub answer: Option<Instant>,
    pub end: Instant,
    pub disposition: Disposition,
    pub sip_status: u16,
    pub hangup_side: HangupSide,
    pub media_mode: MediaMode,
    pub media_node: Option<String>,
    /// Whether a media session exists to release.
    pub relayed: bool,
    /// The media address the proxy advertised in SDP.
    pub media_address: Option<IpAddr>,
    /// Why the call ended, in words ("BYE from the callee", "ring timeout after 60 s").
    pub end_reason: String,
}

/// One call in progress, as the admin endpoint shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CallSummary {
    pub call_id: String,
    pub b_call_id: String,
    pub caller: String,
    pub callee: String,
    /// mediapending, lateofferpending, calling, proceeding, answered, confirmed.
    pub state: String,
    pub media_mode: &'static str,
    pub media_node: Option<String>,
    pub media_address: Option<String>,
    /// Relay RTP ports per media line, as given to each side in SDP.
    pub caller_ports: Vec<u16>,
    pub callee_ports: Vec<u16>,
    /// Where each side's SIP comes from / goes to.
    pub caller_address: String,
    pub callee_address: String,
    pub age_s: u64,
    /// Seconds since the answer, if answered.
    pub answered_s: Option<u64>,
}

/// Static settings of the core.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Our SIP address (Via, Contact).
    pub local: SocketAddr,
    pub routes: Vec<Route>,
    pub trusted: Vec<Cidr>,
    pub users: BTreeMap<String, User>,
    pub media_mode: MediaMode,
    pub ring_timeout: Duration,
    pub max_call_duration: Duration,
    /// In-dialog OPTIONS keepalive interval of answered calls; zero disables.
    pub keepalive: Duration,
    /// Most calls at once; more INVITEs are answered 503.
    pub max_calls: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the media proxy.
    MediaPending,
    /// Late offer (INVITE without SDP): the callee's 2xx carries the offer; waiting for the
    /// media proxy before passing it on.
    LateOfferPending,
    /// INVITE sent to the callee, no response yet.
    Calling,
    /// The callee sent a provisional response.
    Proceeding,
    /// 2xx sent to the caller, waiting for its ACK.
    Answered,
    Confirmed,
    /// Final non-2xx sent to the caller, or CANCEL handled.
    Failed,
    /// BYE seen; the call is over.
    Ended,
}

#[derive(Debug, Clone)]
struct Retransmit {
    to: Peer,
    data: Vec<u8>,
    interval: Duration,
}

/// The caller's dialog.
#[derive(Debug, Clone)]
struct LegA {
    peer: Peer,
    call_id: String,
    invite: Request,
    /// Our tag in the caller's dialog (To tag of our responses).
    local_tag: String,
    remote_target: String,
    /// Route set (RFC 3261 section 12.1.1): the INVITE's Record-Route values, in order.
    route_set: Vec<String>,
    cseq: u32,
    last_response: Option<Vec<u8>>,
}

/// The callee's dialog.
#[derive(Debug, Clone)]
struct LegB {
    peer: Peer,
    call_id: String,
    request_uri: String,
    remote_tag: Option<String>,
    remote_target: Option<String>,
    invite_branch: String,
    invite_cseq: u32,
    cseq: u32,
    from_value: String,
    to_value: String,
    /// Route set (RFC 3261 section 12.1.2): the 2xx's Record-Route values, reversed.
    route_set: Vec<String>,
}

/// A re-INVITE relayed from one leg to the other, waiting for the answer.
#[derive(Debug, Clone)]
struct ReInvite {
    from: Side,
    requester: Peer,
    request: Request,
    /// CSeq and branch of the INVITE we sent to the other leg.
    cseq: u32,
    branch: String,
    last_response: Option<Vec<u8>>,
    /// The INVITE sent to the other leg, resent until a response (UDP only).
    retransmit: Option<Retransmit>,
}

#[derive(Debug)]
struct Call {
    state: State,
    a: LegA,
    b: LegB,
    mode: MediaMode,
    media: Option<MediaPlan>,
    caller: String,
    callee: String,
    start: Instant,
    answer: Option<Instant>,
    finished: bool,
    invite_retransmit: Option<Retransmit>,
    ok_retransmit: Option<Retransmit>,
    bye_retransmit: [Option<Retransmit>; 2],
    reinvite: Option<ReInvite>,
    /// A media session was asked for (it must be released whatever happened next).
    allocation_requested: bool,
    /// Late offer: the callee's 2xx, held until the media proxy answered, then kept until
    /// the caller's ACK brings the SDP answer for the callee's ACK.
    held_answer: Option<Response>,
    /// CSeq of the keepalive OPTIONS awaiting an answer, per side.
    keepalive_pending: [Option<u32>; 2],
    /// Consecutive unanswered keepalives, per side (two end the call: one lost datagram
    /// must not).
    keepalive_missed: [u8; 2],
    /// The 2xx relayed to a re-INVITE's requester (the side), resent until its ACK (UDP).
    reinvite_ok: Option<(Side, Retransmit)>,
}

/// The core: calls, dialogs, registrations.
pub struct Core {
    settings: Settings,
    auth: DigestAuth,
    registrar: Registrar,
    calls: HashMap<CallRef, Call>,
    by_call_id: HashMap<String, (CallRef, Side)>,
    next_call: CallRef,
    counter: u64,
    draining: bool,
    /// Calls not yet finished.
    active: usize,
    /// INVITEs rejected before a call existed, by (Call-ID, CSeq), so a retransmission gets
    /// the same answer without a second CDR.
    rejected: HashMap<(String, u32), Instant>,
    out: Vec<Output>,
}

fn side_index(side: Side) -> usize {
    match side {
        Side::A => 0,
        Side::B => 1,
    }
}

impl Core {
    pub fn new(settings: Settings, auth: DigestAuth, registrar: Registrar) -> Self {
        Self {
            settings,
            auth,
            registrar,
            calls: HashMap::new(),
            by_call_id: HashMap::new(),
            next_call: 1,
            counter: 0,
            draining: false,
            active: 0,
            rejected: HashMap::new(),
            out: Vec::new(),
        }
    }

    /// Calls in progress (not yet finished).
    /// The calls not yet finished, oldest first (admin endpoint).
    pub fn calls_summary(&self, now: Instant) -> Vec<CallSummary> {
        let mut calls: Vec<(&CallRef, &Call)> =
            self.calls.iter().filter(|(_, c)| !c.finished).collect();
        calls.sort_by_key(|(r, _)| **r);
        calls
            .into_iter()
            .map(|(_, c)| CallSummary {
                call_id: c.a.call_id.clone(),
                b_call_id: c.b.call_id.clone(),
                caller: c.caller.clone(),
                callee: c.callee.clone(),
                state: format!("{:?}", c.state).to_lowercase(),
                media_mode: c.mode.as_str(),
                media_node: c.media.as_ref().map(|m| m.node.clone()),
                media_address: c.media.as_ref().map(|m| m.advertised.to_string()),
                caller_ports: c
                    .media
                    .as_ref()
                    .map(|m| m.caller_ports.clone())
                    .unwrap_or_default(),
                callee_ports: c
                    .media
                    .as_ref()
                    .map(|m| m.callee_ports.clone())
                    .unwrap_or_default(),
                caller_address: c.a.peer.addr.to_string(),
                callee_address: c.b.peer.addr.to_string(),
                age_s: now.saturating_duration_since(c.start).as_secs(),
                answered_s: c.answer.map(|a| now.saturating_duration_since(a).as_secs()),
            })
            .collect()
    }

    /// Live registrations (admin endpoint).
    pub fn registrations(&self, now: Instant) -> Vec<crate::registrar::RegistrationSummary> {
        self.registrar.summary(now)
    }

    pub fn active_calls(&self) -> usize {
        self.active
    }

    /// While draining, new INVITEs are answered 503.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Handles one input; `unix` is the wall clock in seconds (for digest nonces).
    pub fn handle(&mut self, now: Instant, unix: u64, input: Input) -> Vec<Output> {
        match input {
            Input::Message {
                from,
                message: Message::Request(request),
            } => self.on_request(now, unix, from, request),
            Input::Message {
                from,
                message: Message::Response(response),
            } => self.on_response(now, from, response),
            Input::Malformed { from, error } => self.on_malformed(from, error),
            Input::MediaReady { call, result } => self.on_media(now, call, result),
            Input::MediaEnded { call_id, reason } => self.on_media_ended(now, &call_id, &reason),
            Input::Timer { call, kind } => self.on_timer(now, call, kind),
        }
        std::mem::take(&mut self.out)
    }

    fn unique(&mut self, what: &str) -> String {
        self.counter += 1;
        format!("{what}{:x}{:x}", self.counter, std::process::id())
    }

    fn send(&mut self, to: Peer, data: Vec<u8>) {
        self.out.push(Output::Send { to, data });
    }

    fn timer(&mut self, call: CallRef, kind: TimerKind, after: Duration) {
        self.out.push(Output::Timer { call, kind, after });
    }

    fn via(&self, transport: Transport, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {}:{};branch={branch};rport",
            transport.as_str(),
            host_text(&self.settings.local.ip().to_string()),
            self.settings.local.port()
        )
    }

    fn contact(&self) -> String {
        format!(
            "<sip:{}:{}>",
            host_text(&self.settings.local.ip().to_string()),
            self.settings.local.port()
        )
    }

    // ---- responses we generate -------------------------------------------------------

    /// A response to `request` (RFC 3261 section 8.2.6): Via, From, To, Call-ID, CSeq copied.
    fn response(request: &Request, status: u16, reason: &str, to_tag: Option<&str>) -> Response {
        let mut headers = Headers::new();
        for via in request.headers.all("Via") {
            headers.push("Via", via);
        }
        headers.push("From", request.headers.get("From").unwrap_or(""));
        let to = request.headers.get("To").unwrap_or("");
        match (to_tag, NameAddr::parse(to)) {
            (Some(tag), Some(mut to)) if to.tag().is_none() => {
                to.set_tag(tag);
                headers.push("To", to.to_string());
            }
            _ => headers.push("To", to),
        }
        headers.push("Call-ID", request.call_id());
        headers.push("CSeq", request.headers.get("CSeq").unwrap_or(""));
        if (101..300).contains(&status) {
            // A UAS echoes Record-Route in dialog-creating responses (RFC 3261 12.1.1).
            for route in request.headers.all("Record-Route") {
                headers.push("Record-Route", route);
            }
        }
        headers.push("Server", concat!("signaling/", env!("CARGO_PKG_VERSION")));
        Response {
            status,
            reason: reason.to_owned(),
            headers,
            body: Vec::new(),
        }
    }

    /// Our response to `request` carrying the other leg's `response` on: its status and
    /// reason, our Contact, and `body` (the SDP already rewritten) with its Content-Type.
    fn relayed_response(
        request: &Request,
        response: &Response,
        to_tag: Option<&str>,
        contact: &str,
        body: Vec<u8>,
    ) -> Response {
        let mut relayed = Self::response(request, response.status, &response.reason, to_tag);
        relayed.headers.push("Contact", contact);
        if !body.is_empty() {
            relayed.headers.push(
                "Content-Type",
                response
                    .headers
                    .get("Content-Type")
                    .unwrap_or("application/sdp"),
            );
        }
        relayed.body = body;
        relayed
    }

    fn reply(&mut self, to: Peer, request: &Request, status: u16) {
        let tag = self.unique("t");
        let response = Self::response(request, status, reason_phrase(status), Some(&tag));
        self.send(to, response.to_bytes());
    }

    fn on_malformed(&mut self, from: Peer, error: ParseError) {
        tracing::info!(peer = %from.addr, reason = %error.reason, "malformed SIP message");
        // Only requests with the headers a response needs get one; the rest are dropped.
        if !error.request {
            return;
        }
        let needed = ["Via", "From", "To", "Call-ID", "CSeq"];
        if needed.iter().any(|h| error.headers.get(h).is_none()) {
            return;
        }
        let mut headers = Headers::new();
        for name in needed {
            for value in error.headers.all(name) {
                headers.push(name, value);
            }
        }
        let response = Response {
            status: 400,
            reason: error.reason.replace(['\r', '\n'], " "),
            headers,
            body: Vec::new(),
        };
        self.send(from, response.to_bytes());
    }

    // ---- requests --------------------------------------------------------------------

    fn on_request(&mut self, now: Instant, unix: u64, from: Peer, mut request: Request) {
        if !crate::sip::header::stamp_via(&mut request.headers, from.addr) {
            tracing::info!(peer = %from.addr, "request with an unreadable Via dropped");
            return;
        }
        if let Some(&(call, side)) = self.by_call_id.get(request.call_id()) {
            self.in_dialog(now, call, side, from, request);
            return;
        }
        if let Some(forwards) = request.headers.get("Max-Forwards")
            && forwards.trim().parse::<u8>() == Ok(0)
            && request.method != Method::Ack
        {
            self.reply(from, &request, 483);
            return;
        }
        match request.method {
            Method::Register => self.on_register(now, unix, from, &request),
            Method::Options => {
                let mut response = Self::response(&request, 200, "OK", Some(&self.unique("t")));
                response.headers.push("Allow", ALLOW);
                response.headers.push("Accept", "application/sdp");
                self.send(from, response.to_bytes());
            }
            Method::Invite => self.on_invite(now, unix, from, request),
            Method::Ack => {}
            Method::Bye | Method::Cancel => self.reply(from, &request, 481),
            Method::Other(_) => self.reply(from, &request, 501),
            _ => {
                let mut response =
                    Self::response(&request, 405, "Method Not Allowed", Some(&self.unique("t")));
                response.headers.push("Allow", ALLOW);
                self.send(from, response.to_bytes());
            }
        }
    }

    fn challenge(&mut self, from: Peer, request: &Request, unix: u64, stale: bool, proxy: bool) {
        let (status, header) = if proxy {
            (407, "Proxy-Authenticate")
        } else {
            (401, "WWW-Authenticate")
        };
        let mut response = Self::response(
            request,
            status,
            reason_phrase(status),
            Some(&self.unique("t")),
        );
        for challenge in self.auth.challenges(unix, stale) {
            response.headers.push(header, challenge);
        }
        self.send(from, response.to_bytes());
    }

    /// Checks digest credentials; None when a challenge was sent instead.
    fn authenticate(
        &mut self,
        from: Peer,
        request: &Request,
        unix: u64,
        proxy: bool,
    ) -> Option<String> {
        let header = if proxy {
            "Proxy-Authorization"
        } else {
            "Authorization"
        };
        let credentials = request
            .headers
            .all(header)
            .filter_map(Credentials::parse)
            .find(|c| c.realm == self.auth.realm());
        let Some(credentials) = credentials else {
            self.challenge(from, request, unix, false, proxy);
            return None;
        };
        let password = self
            .settings
            .users
            .get(&credentials.username)
            .map(|u| u.password.clone());
        match self.auth.verify(
            unix,
            request.method.as_str(),
            &credentials,
            password.as_deref(),
        ) {
            Verdict::Authenticated(user) => Some(user),
            Verdict::Stale => {
                self.challenge(from, request, unix, true, proxy);
                None
            }
            Verdict::Rejected(why) => {
                tracing::info!(peer = %from.addr, user = %credentials.username, why, "authentication failed");
                self.challenge(from, request, unix, false, proxy);
                None
            }
        }
    }

    fn on_register(&mut self, now: Instant, unix: u64, from: Peer, request: &Request) {
        let Some(user) = self.authenticate(from, request, unix, false) else {
            return;
        };
        let to_user = request
            .headers
            .get("To")
            .and_then(NameAddr::parse)
            .and_then(|to| to.uri.user);
        if to_user.as_deref() != Some(user.as_str()) {
            self.reply(from, request, 403);
            return;
        }
        let cseq = request.cseq().map_or(0, |c| c.number);
        let transport = match from.transport {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        };
        let outcome = self.registrar.register(
            now,
            &RegisterRequest {
                aor: user.clone(),
                headers: &request.headers,
                call_id: request.call_id(),
                cseq,
                source: from.addr,
                transport,
            },
        );
        match outcome {
            Ok(bindings) => {
                let mut response = Self::response(request, 200, "OK", Some(&self.unique("t")));
                for binding in &bindings {
                    let mut contact = binding.contact.clone();
                    contact.params.retain(|(n, _)| n != "expires");
                    response.headers.push(
                        "Contact",
                        format!("{contact};expires={}", binding.remaining(now)),
                    );
                }
                tracing::info!(%user, contacts = bindings.len(), source = %from.addr, "registered");
                self.send(from, response.to_bytes());
            }
            Err(error) => {
                let mut response = Self::response(
                    request,
                    error.status(),
                    &error.to_string(),
                    Some(&self.unique("t")),
                );
                if let crate::registrar::RegisterError::TooBrief { min_expires } = error {
                    response
                        .headers
                        .push("Min-Expires", min_expires.to_string());
                }
                self.send(from, response.to_bytes());
            }
        }
    }

    /// Where a call to `user` goes: a registered contact first, then the longest static
    /// route prefix. Returns (Request-URI, peer, the route's media mode).
    fn route(&self, now: Instant, user: &str) -> Option<(String, Peer, Option<MediaMode>)> {
        if let Some(binding) = self.registrar.lookup(now, user).into_iter().next() {
            let transport = if binding.transport == "tcp" {
                Transport::Tcp
            } else {
                Transport::Udp
            };
            return Some((
                binding.contact.uri.to_string(),
                Peer {
                    transport,
                    addr: binding.source,
                },
                None,
            ));
        }
        let route = self
            .settings
            .routes
            .iter()
            .filter(|r| user.starts_with(&r.prefix))
            .max_by_key(|r| r.prefix.len())?;
        let address = route.address?;
        let transport = if route.target.transport() == "tcp" {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        let mut uri = route.target.clone();
        if uri.user.is_none() {
            uri.user = Some(user.to_owned());
        }
        Some((
            uri.to_string(),
            Peer {
                transport,
                addr: address,
            },
            route.media_mode,
        ))
    }

    /// Answers an INVITE that never became a call and records it: a CDR per rejected call
    /// (not per retransmission of its INVITE).
    fn reject_call(
        &mut self,
        now: Instant,
        from: Peer,
        request: &Request,
        status: u16,
        reason: &str,
    ) {
        self.reply(from, request, status);
        let key = (
            request.call_id().to_owned(),
            request.cseq().map_or(0, |c| c.number),
        );
        if self.rejected.contains_key(&key) {
            return;
        }
        if self.rejected.len() >= 4096 {
            self.rejected
                .retain(|_, at| now.saturating_duration_since(*at) < TRANSACTION_TIMEOUT);
        }
        self.rejected.insert(key, now);
        let user = |value: Option<&str>| {
            value
                .and_then(NameAddr::parse)
                .and_then(|n| n.uri.user)
                .unwrap_or_default()
        };
        let callee = Uri::parse(&request.uri)
            .ok()
            .and_then(|u| u.user)
            .unwrap_or_else(|| user(request.headers.get("To")));
        let record = CallRecord {
            call_id: request.call_id().to_owned(),
            b_call_id: String::new(),
            caller: user(request.headers.get("From")),
            callee,
            start: now,
            answer: None,
            end: now,
            disposition: Disposition::Failed,
            sip_status: status,
            hangup_side: HangupSide::System,
            media_mode: self.settings.media_mode,
            media_node: None,
            relayed: false,
            media_address: None,
            end_reason: reason.to_owned(),
        };
        tracing::info!(call_id = %record.call_id, status, reason, "call rejected");
        self.out.push(Output::Finish(record));
    }

    fn on_invite(&mut self, now: Instant, unix: u64, from: Peer, request: Request) {
        if self.draining {
            let reason = "signaling is shutting down (draining); INVITE refused";
            self.reject_call(now, from, &request, 503, reason);
            return;
        }
        if self.active >= self.settings.max_calls {
            let reason = format!(
                "call limit reached ({} calls, --max-calls)",
                self.settings.max_calls
            );
            self.reject_call(now, from, &request, 503, &reason);
            return;
        }
        let from_header = request.headers.get("From").and_then(NameAddr::parse);
        let Some(from_header) = from_header.filter(|f| f.tag().is_some()) else {
            let mut response = Self::response(&request, 400, "Missing From tag", None);
            response
                .headers
                .set("To", request.headers.get("To").unwrap_or(""));
            self.send(from, response.to_bytes());
            return;
        };
        let trusted = self
            .settings
            .trusted
            .iter()
            .any(|c| c.contains(from.addr.ip()));
        let caller = if trusted {
            from_header.uri.user.clone().unwrap_or_default()
        } else {
            match self.authenticate(from, &request, unix, true) {
                Some(user) => user,
                None => return,
            }
        };
        let Ok(uri) = Uri::parse(&request.uri) else {
            let response = Self::response(
                &request,
                416,
                "Unsupported URI Scheme",
                Some(&self.unique("t")),
            );
            self.send(from, response.to_bytes());
            return;
        };
        let callee = uri.user.clone().unwrap_or_default();
        let Some((request_uri, target, route_mode)) = self.route(now, &callee) else {
            let reason = format!("no registered user and no route for {callee:?}");
            self.reject_call(now, from, &request, 404, &reason);
            return;
        };
        let mode = self
            .settings
            .users
            .get(&caller)
            .and_then(|u| u.media_mode)
            .or(route_mode)
            .unwrap_or(self.settings.media_mode);
        let offer = match body_sdp(&request.body) {
            Ok(offer) => offer,
            Err(error) => {
                let reason = format!("unusable SDP offer: {error}");
                self.reject_call(now, from, &request, 488, &reason);
                return;
            }
        };
        let call = self.next_call;
        self.next_call += 1;
        let a_tag = self.unique("a");
        let b_tag = self.unique("b");
        let b_call_id = format!(
            "{}@{}",
            self.unique("b2b"),
            host_text(&self.settings.local.ip().to_string())
        );
        let trying = Self::response(&request, 100, "Trying", None);
        self.send(from, trying.to_bytes());
        let mut b_from = from_header.clone();
        b_from.params.retain(|(n, _)| n != "tag");
        b_from.set_tag(&b_tag);
        b_from.uri.host = self.settings.local.ip().to_string();
        b_from.uri.port = Some(self.settings.local.port());
        b_from.uri.params.clear();
        let to_value = request
            .headers
            .get("To")
            .and_then(NameAddr::parse)
            .map(|to| {
                let mut to = to;
                to.params.retain(|(n, _)| n != "tag");
                to.to_string()
            })
            .unwrap_or_else(|| format!("<{request_uri}>"));
        let remote_target = request
            .headers
            .get("Contact")
            .and_then(NameAddr::parse)
            .map_or_else(|| from_header.uri.to_string(), |c| c.uri.to_string());
        let call_id = request.call_id().to_owned();
        let route_set: Vec<String> = request
            .headers
            .values("Record-Route")
            .map(str::to_owned)
            .collect();
        let relayed = mode != MediaMode::Direct;
        let record = Call {
            state: State::MediaPending,
            a: LegA {
                peer: from,
                call_id: call_id.clone(),
                invite: request,
                local_tag: a_tag,
                remote_target,
                route_set,
                cseq: 0,
                last_response: None,
            },
            b: LegB {
                peer: target,
                call_id: b_call_id.clone(),
                request_uri,
                remote_tag: None,
                remote_target: None,
                invite_branch: format!("z9hG4bK{}", self.unique("i")),
                invite_cseq: 1,
                cseq: 1,
                from_value: b_from.to_string(),
                to_value,
                route_set: Vec::new(),
            },
            mode: if relayed { mode } else { MediaMode::Direct },
            media: None,
            caller,
            callee,
            start: now,
            answer: None,
            finished: false,
            invite_retransmit: None,
            ok_retransmit: None,
            bye_retransmit: [None, None],
            reinvite: None,
            allocation_requested: false,
            held_answer: None,
            keepalive_pending: [None, None],
            keepalive_missed: [0, 0],
            reinvite_ok: None,
        };
        self.by_call_id.insert(call_id.clone(), (call, Side::A));
        self.by_call_id.insert(b_call_id, (call, Side::B));
        self.calls.insert(call, record);
        self.active += 1;
        tracing::info!(%call_id, mode = if relayed { mode.as_str() } else { "direct" }, "new call");
        match offer {
            Some(offer) if relayed => {
                if let Some(record) = self.calls.get_mut(&call) {
                    record.allocation_requested = true;
                }
                self.out.push(Output::Allocate {
                    call,
                    call_id,
                    offer,
                    offer_leg: Leg::Caller,
                });
            }
            _ => self.send_invite(call),
        }
    }

    fn on_media(&mut self, now: Instant, call: CallRef, result: Result<MediaPlan, String>) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        match (record.state, result) {
            (State::MediaPending, Ok(plan)) => {
                record.media = Some(plan);
                self.send_invite(call);
            }
            (State::MediaPending, Err(error)) => {
                tracing::warn!(call_id = %record.a.call_id, %error, "media proxy unavailable");
                let reason = format!("media proxy unavailable: {error}");
                self.fail_a(
                    now,
                    call,
                    503,
                    Disposition::Failed,
                    HangupSide::System,
                    reason,
                );
            }
            (State::LateOfferPending, Ok(plan)) => {
                record.media = Some(plan);
                record.state = State::Answered;
                record.answer = Some(now);
                let Some(answer) = record.held_answer.clone() else {
                    return;
                };
                self.relay_to_a(call, &answer);
                let max = self.settings.max_call_duration;
                self.timer(call, TimerKind::MaxDuration, max);
                self.schedule_keepalive(call);
                self.schedule_keepalive(call);
            }
            (State::LateOfferPending, Err(error)) => {
                tracing::warn!(call_id = %record.a.call_id, %error, "media proxy unavailable (late offer)");
                let reason = format!("media proxy unavailable (late offer): {error}");
                let held = record.held_answer.take();
                record.state = State::Ended;
                if let Some(answer) = held {
                    self.ack_b(call, &answer, Vec::new());
                    self.send_bye(call, Side::B);
                }
                self.fail_a(
                    now,
                    call,
                    503,
                    Disposition::Failed,
                    HangupSide::System,
                    reason,
                );
            }
            _ => {}
        }
    }

    fn on_media_ended(&mut self, now: Instant, call_id: &str, reason: &str) {
        let Some(&(call, Side::A)) = self.by_call_id.get(call_id) else {
            return;
        };
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        if record.finished {
            return;
        }
        tracing::info!(%call_id, reason, "media proxy ended the session; ending the call");
        let why = format!("media proxy ended the session ({reason})");
        match record.state {
            State::Answered | State::Confirmed => {
                record.state = State::Ended;
                record.ok_retransmit = None;
                self.send_bye(call, Side::A);
                self.send_bye(call, Side::B);
                self.finish(
                    now,
                    call,
                    Disposition::Answered,
                    200,
                    HangupSide::System,
                    why,
                );
            }
            State::Calling | State::Proceeding => {
                self.send_cancel(call);
                self.fail_a(now, call, 503, Disposition::Failed, HangupSide::System, why);
            }
            State::MediaPending => {
                self.fail_a(now, call, 503, Disposition::Failed, HangupSide::System, why)
            }
            State::LateOfferPending => {
                let held = record.held_answer.take();
                record.state = State::Ended;
                if let Some(answer) = held {
                    self.ack_b(call, &answer, Vec::new());
                    self.send_bye(call, Side::B);
                }
                self.fail_a(now, call, 503, Disposition::Failed, HangupSide::System, why);
            }
            State::Failed | State::Ended => {}
        }
    }

    /// Sends the INVITE to the callee (SDP rewritten to the callee leg's ports).
    fn send_invite(&mut self, call: CallRef) {
        let via = {
            let record = &self.calls[&call];
            self.via(record.b.peer.transport, &record.b.invite_branch)
        };
        let contact = self.contact();
        let record = self.calls.get_mut(&call).expect("call exists");
        record.state = State::Calling;
        let body = match &record.media {
            Some(plan) => {
                let text = String::from_utf8_lossy(&record.a.invite.body).into_owned();
                rewrite_for(&text, plan.advertised, &plan.callee_ports)
                    .unwrap_or(text)
                    .into_bytes()
            }
            None => record.a.invite.body.clone(),
        };
        let mut headers = Headers::new();
        headers.push("Via", via);
        let forwards = record
            .a
            .invite
            .headers
            .get("Max-Forwards")
            .and_then(|v| v.trim().parse::<u8>().ok())
            .unwrap_or(70)
            .saturating_sub(1);
        headers.push("Max-Forwards", forwards.to_string());
        headers.push("From", record.b.from_value.clone());
        headers.push("To", record.b.to_value.clone());
        headers.push("Call-ID", record.b.call_id.clone());
        headers.push("CSeq", format!("{} INVITE", record.b.invite_cseq));
        headers.push("Contact", contact);
        headers.push("Allow", ALLOW);
        if !body.is_empty() {
            headers.push(
                "Content-Type",
                record
                    .a
                    .invite
                    .headers
                    .get("Content-Type")
                    .unwrap_or("application/sdp"),
            );
        }
        let invite = Request {
            method: Method::Invite,
            uri: record.b.request_uri.clone(),
            headers,
            body,
        };
        let data = invite.to_bytes();
        let peer = record.b.peer;
        if !peer.transport.reliable() {
            record.invite_retransmit = Some(Retransmit {
                to: peer,
                data: data.clone(),
                interval: T1,
            });
            self.timer(call, TimerKind::TimerA, T1);
        }
        self.timer(call, TimerKind::TimerB, TRANSACTION_TIMEOUT);
        self.send(peer, data);
    }

    fn in_dialog(&mut self, now: Instant, call: CallRef, side: Side, from: Peer, request: Request) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        match (side, &request.method) {
            (Side::A, Method::Invite)
                if request.headers.get("Via") == record.a.invite.headers.get("Via") =>
            {
                // A retransmitted initial INVITE: repeat the last response (or 100).
                let data = record.a.last_response.clone().unwrap_or_else(|| {
                    Self::response(&record.a.invite, 100, "Trying", None).to_bytes()
                });
                self.send(from, data);
            }
            (_, Method::Invite) => self.on_reinvite(call, side, from, request),
            (_, Method::Ack) => {
                if record.reinvite_ok.as_ref().is_some_and(|(s, _)| *s == side) {
                    record.reinvite_ok = None;
                }
                if side == Side::A && record.state == State::Answered {
                    record.state = State::Confirmed;
                    record.ok_retransmit = None;
                    if let Some(answer) = record.held_answer.take() {
                        // Late offer: the caller's ACK carries the SDP answer for the callee.
                        let body = self.late_answer(call, &request);
                        self.ack_b(call, &answer, body);
                    }
                }
            }
            (_, Method::Bye) => {
                let finished = record.finished;
                let answered = record.answer.is_some();
                let ok = Self::response(&request, 200, "OK", None);
                self.send(from, ok.to_bytes());
                if !finished {
                    let hangup = if side == Side::A {
                        HangupSide::Caller
                    } else {
                        HangupSide::Callee
                    };
                    let other = if side == Side::A { Side::B } else { Side::A };
                    if let Some(record) = self.calls.get_mut(&call) {
                        record.state = State::Ended;
                        record.ok_retransmit = None;
                    }
                    if answered || side == Side::B {
                        self.send_bye(call, other);
                    }
                    let reason = format!("BYE from the {}", hangup.as_str());
                    self.finish(now, call, Disposition::Answered, 200, hangup, reason);
                }
            }
            (Side::A, Method::Cancel) => {
                let state = record.state;
                let ok = Self::response(&request, 200, "OK", None);
                self.send(from, ok.to_bytes());
                if matches!(
                    state,
                    State::MediaPending | State::Calling | State::Proceeding
                ) {
                    if state != State::MediaPending {
                        self.send_cancel(call);
                    }
                    self.fail_a(
                        now,
                        call,
                        487,
                        Disposition::Cancelled,
                        HangupSide::Caller,
                        "CANCEL from the caller".to_owned(),
                    );
                }
            }
            (_, Method::Options) => {
                let ok = Self::response(&request, 200, "OK", None);
                self.send(from, ok.to_bytes());
            }
            _ => self.reply(from, &request, 501),
        }
    }

    /// Answers the caller with a final error and ends the call.
    fn fail_a(
        &mut self,
        now: Instant,
        call: CallRef,
        status: u16,
        disposition: Disposition,
        hangup: HangupSide,
        reason: String,
    ) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        record.state = State::Failed;
        record.invite_retransmit = None;
        let response = Self::response(
            &record.a.invite,
            status,
            reason_phrase(status),
            Some(&record.a.local_tag),
        );
        let data = response.to_bytes();
        record.a.last_response = Some(data.clone());
        let peer = record.a.peer;
        self.send(peer, data);
        self.finish(now, call, disposition, status, hangup, reason);
    }

    fn send_cancel(&mut self, call: CallRef) {
        let record = &self.calls[&call];
        let mut headers = Headers::new();
        headers.push(
            "Via",
            self.via(record.b.peer.transport, &record.b.invite_branch),
        );
        headers.push("Max-Forwards", "70");
        headers.push("From", record.b.from_value.clone());
        headers.push("To", record.b.to_value.clone());
        headers.push("Call-ID", record.b.call_id.clone());
        headers.push("CSeq", format!("{} CANCEL", record.b.invite_cseq));
        let cancel = Request {
            method: Method::Cancel,
            uri: record.b.request_uri.clone(),
            headers,
            body: Vec::new(),
        };
        let peer = record.b.peer;
        self.send(peer, cancel.to_bytes());
    }

    /// Builds a request inside the dialog of `side`. `cseq` None takes the dialog's next
    /// CSeq; `branch` None makes a new transaction.
    fn dialog_request(
        &mut self,
        call: CallRef,
        side: Side,
        method: Method,
        cseq: Option<u32>,
        branch: Option<String>,
    ) -> (Peer, Request) {
        let branch = branch.unwrap_or_else(|| format!("z9hG4bK{}", self.unique("d")));
        let record = self.calls.get_mut(&call).expect("call exists");
        let route_set = match side {
            Side::A => record.a.route_set.clone(),
            Side::B => record.b.route_set.clone(),
        };
        let (peer, uri, from, to, call_id, cseq) = match side {
            Side::A => {
                let cseq = cseq.unwrap_or_else(|| {
                    record.a.cseq += 1;
                    record.a.cseq
                });
                let mut from = NameAddr::parse(record.a.invite.headers.get("To").unwrap_or(""))
                    .map(|n| n.to_string())
                    .unwrap_or_default();
                if !from.contains("tag=") {
                    let _ = write!(from, ";tag={}", record.a.local_tag);
                }
                (
                    record.a.peer,
                    record.a.remote_target.clone(),
                    from,
                    record.a.invite.headers.get("From").unwrap_or("").to_owned(),
                    record.a.call_id.clone(),
                    cseq,
                )
            }
            Side::B => {
                let cseq = cseq.unwrap_or_else(|| {
                    record.b.cseq += 1;
                    record.b.cseq
                });
                let mut to = record.b.to_value.clone();
                if let Some(tag) = &record.b.remote_tag {
                    let _ = write!(to, ";tag={tag}");
                }
                (
                    record.b.peer,
                    record
                        .b
                        .remote_target
                        .clone()
                        .unwrap_or_else(|| record.b.request_uri.clone()),
                    record.b.from_value.clone(),
                    to,
                    record.b.call_id.clone(),
                    cseq,
                )
            }
        };
        let peer = next_hop(&route_set, peer);
        let mut headers = Headers::new();
        headers.push("Via", self.via(peer.transport, &branch));
        headers.push("Max-Forwards", "70");
        for route in &route_set {
            headers.push("Route", route.as_str());
        }
        headers.push("From", from);
        headers.push("To", to);
        headers.push("Call-ID", call_id);
        headers.push("CSeq", format!("{cseq} {method}"));
        let request = Request {
            method,
            uri,
            headers,
            body: Vec::new(),
        };
        (peer, request)
    }

    /// Sends a BYE within the dialog of `side`.
    fn send_bye(&mut self, call: CallRef, side: Side) {
        let (peer, bye) = self.dialog_request(call, side, Method::Bye, None, None);
        let data = bye.to_bytes();
        if !peer.transport.reliable() {
            if let Some(record) = self.calls.get_mut(&call) {
                record.bye_retransmit[side_index(side)] = Some(Retransmit {
                    to: peer,
                    data: data.clone(),
                    interval: T1,
                });
            }
            self.timer(call, TimerKind::TimerE(side), T1);
            self.timer(call, TimerKind::TimerF(side), TRANSACTION_TIMEOUT);
        }
        self.send(peer, data);
    }

    /// Relays a re-INVITE (hold, resume, codec change) to the other leg. The relay ports stay
    /// the same; the requesting leg's media is updated now, the answering leg's on its 2xx.
    fn on_reinvite(&mut self, call: CallRef, side: Side, from: Peer, request: Request) {
        let record = self.calls.get_mut(&call).expect("call exists");
        if let Some(pending) = &record.reinvite {
            if pending.request.headers.get("Via") == request.headers.get("Via") {
                // Retransmission of the pending re-INVITE.
                let data = pending
                    .last_response
                    .clone()
                    .unwrap_or_else(|| Self::response(&request, 100, "Trying", None).to_bytes());
                self.send(from, data);
            } else {
                self.reply(from, &request, 491);
            }
            return;
        }
        if !matches!(record.state, State::Answered | State::Confirmed) {
            self.reply(from, &request, 491);
            return;
        }
        let offer = match body_sdp(&request.body) {
            Ok(offer) => offer,
            Err(error) => {
                tracing::info!(call_id = request.call_id(), %error, "unusable SDP answered 488");
                self.reply(from, &request, 488);
                return;
            }
        };
        let other = match side {
            Side::A => Side::B,
            Side::B => Side::A,
        };
        let plan = record.media.clone();
        let call_id = record.a.call_id.clone();
        let trying = Self::response(&request, 100, "Trying", None);
        self.send(from, trying.to_bytes());
        let mut body = request.body.clone();
        if let (Some(plan), Some(offer)) = (plan, offer) {
            let (leg, ports) = match side {
                Side::A => (Leg::Caller, &plan.callee_ports),
                Side::B => (Leg::Callee, &plan.caller_ports),
            };
            let text = String::from_utf8_lossy(&request.body).into_owned();
            if let Some(rewritten) = rewrite_for(&text, plan.advertised, ports) {
                body = rewritten.into_bytes();
            }
            self.out.push(Output::UpdateMedia {
                call_id,
                leg,
                sdp: offer,
            });
        }
        let branch = format!("z9hG4bK{}", self.unique("r"));
        let contact = self.contact();
        let (peer, mut invite) =
            self.dialog_request(call, other, Method::Invite, None, Some(branch.clone()));
        invite.headers.push("Contact", contact);
        if !body.is_empty() {
            invite.headers.push(
                "Content-Type",
                request
                    .headers
                    .get("Content-Type")
                    .unwrap_or("application/sdp"),
            );
        }
        invite.body = body;
        let cseq = invite.cseq().map_or(0, |c| c.number);
        let data = invite.to_bytes();
        let retransmit = (!peer.transport.reliable()).then(|| Retransmit {
            to: peer,
            data: data.clone(),
            interval: T1,
        });
        if retransmit.is_some() {
            self.timer(call, TimerKind::ReInviteRetransmit, T1);
        }
        self.timer(call, TimerKind::ReInviteTimeout(cseq), TRANSACTION_TIMEOUT);
        if let Some(record) = self.calls.get_mut(&call) {
            record.reinvite = Some(ReInvite {
                from: side,
                requester: from,
                request,
                cseq,
                branch,
                last_response: None,
                retransmit,
            });
        }
        self.send(peer, data);
    }

    /// The other leg answered a relayed re-INVITE.
    fn on_reinvite_response(&mut self, call: CallRef, responder: Side, response: Response) {
        if response.status < 200 {
            if let Some(pending) = self.calls.get_mut(&call).and_then(|r| r.reinvite.as_mut()) {
                pending.retransmit = None;
            }
            return;
        }
        let Some(pending) = self.calls.get_mut(&call).and_then(|r| r.reinvite.take()) else {
            return;
        };
        let success = (200..300).contains(&response.status);
        let ack_branch = (!success).then(|| pending.branch.clone());
        let (peer, mut ack) =
            self.dialog_request(call, responder, Method::Ack, Some(pending.cseq), ack_branch);
        if !success {
            ack.headers
                .set("To", response.headers.get("To").unwrap_or(""));
        }
        self.send(peer, ack.to_bytes());
        let contact = self.contact();
        let record = self.calls.get_mut(&call).expect("call exists");
        let mut body = response.body.clone();
        if success && !body.is_empty() {
            let text = String::from_utf8_lossy(&body).into_owned();
            if let (Some(plan), Ok(answer)) = (&record.media, sdp::parse(&text)) {
                let (leg, ports) = match responder {
                    Side::A => (Leg::Caller, &plan.callee_ports),
                    Side::B => (Leg::Callee, &plan.caller_ports),
                };
                if let Some(rewritten) = rewrite_for(&text, plan.advertised, ports) {
                    body = rewritten.into_bytes();
                }
                self.out.push(Output::UpdateMedia {
                    call_id: record.a.call_id.clone(),
                    leg,
                    sdp: answer,
                });
            }
        }
        let data =
            Self::relayed_response(&pending.request, &response, None, &contact, body).to_bytes();
        if success && !pending.requester.transport.reliable() {
            if let Some(record) = self.calls.get_mut(&call) {
                record.reinvite_ok = Some((
                    pending.from,
                    Retransmit {
                        to: pending.requester,
                        data: data.clone(),
                        interval: T1,
                    },
                ));
            }
            self.timer(call, TimerKind::ReInviteOkRetransmit, T1);
            self.timer(call, TimerKind::ReInviteOkTimeout, TRANSACTION_TIMEOUT);
        }
        self.send(pending.requester, data);
    }

    // ---- responses -------------------------------------------------------------------

    fn on_response(&mut self, now: Instant, from: Peer, response: Response) {
        let Some(&(call, side)) = self.by_call_id.get(response.call_id()) else {
            tracing::debug!(call_id = response.call_id(), "response to no known call");
            return;
        };
        let Some(cseq) = response.cseq() else { return };
        let reinvite = self
            .calls
            .get(&call)
            .and_then(|r| r.reinvite.as_ref())
            .is_some_and(|p| p.from != side && p.cseq == cseq.number);
        if reinvite && cseq.method == Method::Invite {
            self.on_reinvite_response(call, side, response);
            return;
        }
        match (side, cseq.method) {
            (Side::B, Method::Invite) => self.on_invite_response(now, call, from, response),
            (side, Method::Bye) if response.status >= 200 => {
                if let Some(record) = self.calls.get_mut(&call) {
                    record.bye_retransmit[side_index(side)] = None;
                }
            }
            (side, Method::Options) if response.status >= 200 => {
                let Some(record) = self.calls.get_mut(&call) else {
                    return;
                };
                if record.keepalive_pending[side_index(side)] != Some(cseq.number) {
                    return;
                }
                record.keepalive_pending[side_index(side)] = None;
                record.keepalive_missed[side_index(side)] = 0;
                // RFC 5057: 481 (and a timeout) mean the dialog is gone on that side; any
                // other answer means the peer is alive.
                if matches!(response.status, 408 | 481) {
                    self.peer_gone(now, call, side);
                }
            }
            _ => {}
        }
    }

    fn on_invite_response(&mut self, now: Instant, call: CallRef, _from: Peer, response: Response) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        record.invite_retransmit = None;
        let status = response.status;
        if status < 200 {
            if status == 100 || !matches!(record.state, State::Calling | State::Proceeding) {
                if record.state == State::Calling {
                    record.state = State::Proceeding;
                }
                return;
            }
            let first = record.state == State::Calling;
            record.state = State::Proceeding;
            if let Some(tag) = NameAddr::parse(response.headers.get("To").unwrap_or(""))
                .and_then(|t| t.tag().map(str::to_owned))
            {
                record.b.remote_tag = Some(tag);
            }
            if first {
                let ring = self.settings.ring_timeout;
                self.timer(call, TimerKind::RingTimeout, ring);
            }
            self.relay_to_a(call, &response);
            return;
        }
        if !matches!(record.state, State::Calling | State::Proceeding) {
            if record.held_answer.is_some() {
                // Late offer in progress: the ACK waits for the caller's answer.
                return;
            }
            // A retransmitted 2xx (our ACK was lost), or the final answer to a CANCEL we
            // sent: every final response to our INVITE is acknowledged.
            self.ack_b(call, &response, Vec::new());
            return;
        }
        if (200..300).contains(&status) {
            let record = self.calls.get_mut(&call).expect("call exists");
            record.b.remote_tag = NameAddr::parse(response.headers.get("To").unwrap_or(""))
                .and_then(|t| t.tag().map(str::to_owned));
            record.b.remote_target = response
                .headers
                .get("Contact")
                .and_then(NameAddr::parse)
                .map(|c| c.uri.to_string());
            let mut route_set: Vec<String> = response
                .headers
                .values("Record-Route")
                .map(str::to_owned)
                .collect();
            route_set.reverse();
            record.b.route_set = route_set;
            let late_offer = (record.mode != MediaMode::Direct && !record.allocation_requested)
                .then(|| {
                    std::str::from_utf8(&response.body)
                        .ok()
                        .and_then(|t| sdp::parse(t).ok())
                })
                .flatten();
            if let Some(offer) = late_offer {
                record.state = State::LateOfferPending;
                record.held_answer = Some(response);
                record.allocation_requested = true;
                let call_id = record.a.call_id.clone();
                self.out.push(Output::Allocate {
                    call,
                    call_id,
                    offer,
                    offer_leg: Leg::Callee,
                });
                return;
            }
            record.state = State::Answered;
            record.answer = Some(now);
            self.ack_b(call, &response, Vec::new());
            self.relay_to_a(call, &response);
            let max = self.settings.max_call_duration;
            self.timer(call, TimerKind::MaxDuration, max);
            self.schedule_keepalive(call);
            return;
        }
        // A final error from the callee: ACK it (same transaction), pass it on.
        self.ack_b(call, &response, Vec::new());
        let disposition = match status {
            486 | 600 => Disposition::Busy,
            408 | 480 => Disposition::NoAnswer,
            487 => Disposition::Cancelled,
            _ => Disposition::Failed,
        };
        let record = self.calls.get_mut(&call).expect("call exists");
        record.state = State::Failed;
        let mut relayed = Self::response(
            &record.a.invite,
            status,
            &response.reason,
            Some(&record.a.local_tag),
        );
        for name in ["Retry-After", "Warning", "Reason"] {
            if let Some(value) = response.headers.get(name) {
                relayed.headers.push(name, value);
            }
        }
        let data = relayed.to_bytes();
        record.a.last_response = Some(data.clone());
        let peer = record.a.peer;
        self.send(peer, data);
        let reason = format!("callee answered {status} {}", response.reason);
        self.finish(now, call, disposition, status, HangupSide::Callee, reason);
    }

    /// ACK for a final response to our INVITE: for 2xx a new request to the remote target
    /// (RFC 3261 section 13.2.2.4), for errors within the INVITE transaction (17.1.1.3).
    fn ack_b(&mut self, call: CallRef, response: &Response, body: Vec<u8>) {
        let record = &self.calls[&call];
        let success = (200..300).contains(&response.status);
        let branch = if success {
            format!("z9hG4bK{}", self.counter.wrapping_add(1))
        } else {
            record.b.invite_branch.clone()
        };
        let uri = if success {
            record
                .b
                .remote_target
                .clone()
                .unwrap_or_else(|| record.b.request_uri.clone())
        } else {
            record.b.request_uri.clone()
        };
        // The 2xx ACK is a request of the dialog and follows its route set; an error's ACK
        // belongs to the INVITE transaction and goes where the INVITE went.
        let routes: &[String] = if success { &record.b.route_set } else { &[] };
        let peer = next_hop(routes, record.b.peer);
        let mut headers = Headers::new();
        headers.push("Via", self.via(peer.transport, &branch));
        headers.push("Max-Forwards", "70");
        for route in routes {
            headers.push("Route", route.as_str());
        }
        headers.push("From", record.b.from_value.clone());
        headers.push("To", response.headers.get("To").unwrap_or(""));
        headers.push("Call-ID", record.b.call_id.clone());
        headers.push("CSeq", format!("{} ACK", record.b.invite_cseq));
        if !body.is_empty() {
            headers.push("Content-Type", "application/sdp");
        }
        let ack = Request {
            method: Method::Ack,
            uri,
            headers,
            body,
        };
        self.counter += 1;
        self.send(peer, ack.to_bytes());
    }

    /// The caller's SDP answer of a late offer, rewritten for the callee (and the caller leg
    /// of the media session updated with it). Empty when the ACK carries none.
    fn late_answer(&mut self, call: CallRef, ack: &Request) -> Vec<u8> {
        let Some(record) = self.calls.get(&call) else {
            return Vec::new();
        };
        let text = String::from_utf8_lossy(&ack.body).into_owned();
        let (Some(plan), Ok(answer)) = (&record.media, sdp::parse(&text)) else {
            return ack.body.clone();
        };
        let body = rewrite_for(&text, plan.advertised, &plan.callee_ports).unwrap_or(text);
        self.out.push(Output::UpdateMedia {
            call_id: record.a.call_id.clone(),
            leg: Leg::Caller,
            sdp: answer,
        });
        body.into_bytes()
    }

    /// Passes a provisional or 2xx response from the callee to the caller, with the SDP
    /// rewritten to the caller leg's ports, and updates the callee leg of the media session.
    fn relay_to_a(&mut self, call: CallRef, response: &Response) {
        let contact = self.contact();
        let record = self.calls.get_mut(&call).expect("call exists");
        let mut body = response.body.clone();
        if !body.is_empty() {
            let text = String::from_utf8_lossy(&body).into_owned();
            if let (Some(plan), Ok(answer)) = (&record.media, sdp::parse(&text)) {
                if let Some(rewritten) = rewrite_for(&text, plan.advertised, &plan.caller_ports) {
                    body = rewritten.into_bytes();
                }
                self.out.push(Output::UpdateMedia {
                    call_id: record.a.call_id.clone(),
                    leg: Leg::Callee,
                    sdp: answer,
                });
            }
        }
        let data = Self::relayed_response(
            &record.a.invite,
            response,
            Some(&record.a.local_tag),
            &contact,
            body,
        )
        .to_bytes();
        record.a.last_response = Some(data.clone());
        let peer = record.a.peer;
        if (200..300).contains(&response.status) && !peer.transport.reliable() {
            record.ok_retransmit = Some(Retransmit {
                to: peer,
                data: data.clone(),
                interval: T1,
            });
            self.timer(call, TimerKind::TimerG, T1);
            self.timer(call, TimerKind::TimerH, TRANSACTION_TIMEOUT);
        }
        self.send(peer, data);
    }

    // ---- timers ----------------------------------------------------------------------

    fn on_timer(&mut self, now: Instant, call: CallRef, kind: TimerKind) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        match kind {
            TimerKind::TimerA => {
                if let Some(retransmit) = record.invite_retransmit.as_mut() {
                    retransmit.interval *= 2;
                    let (to, data, next) =
                        (retransmit.to, retransmit.data.clone(), retransmit.interval);
                    self.send(to, data);
                    self.timer(call, TimerKind::TimerA, next);
                }
            }
            TimerKind::TimerB => {
                if record.state == State::Calling {
                    tracing::info!(call_id = %record.a.call_id, "callee never answered the INVITE (Timer B)");
                    let reason = "callee never answered the INVITE (Timer B)".to_owned();
                    self.fail_a(
                        now,
                        call,
                        408,
                        Disposition::Failed,
                        HangupSide::System,
                        reason,
                    );
                }
            }
            TimerKind::TimerG => {
                if record.state == State::Answered
                    && let Some(retransmit) = record.ok_retransmit.as_mut()
                {
                    retransmit.interval = (retransmit.interval * 2).min(T2);
                    let (to, data, next) =
                        (retransmit.to, retransmit.data.clone(), retransmit.interval);
                    self.send(to, data);
                    self.timer(call, TimerKind::TimerG, next);
                }
            }
            TimerKind::TimerH => {
                if record.state == State::Answered {
                    tracing::info!(call_id = %record.a.call_id, "caller never acknowledged the 200 (Timer H)");
                    record.state = State::Ended;
                    record.ok_retransmit = None;
                    self.send_bye(call, Side::A);
                    self.send_bye(call, Side::B);
                    let reason = "caller never acknowledged the 200 (Timer H)".to_owned();
                    self.finish(
                        now,
                        call,
                        Disposition::Answered,
                        200,
                        HangupSide::System,
                        reason,
                    );
                }
            }
            TimerKind::TimerE(side) => {
                if let Some(retransmit) = record.bye_retransmit[side_index(side)].as_mut() {
                    retransmit.interval = (retransmit.interval * 2).min(T2);
                    let (to, data, next) =
                        (retransmit.to, retransmit.data.clone(), retransmit.interval);
                    self.send(to, data);
                    self.timer(call, TimerKind::TimerE(side), next);
                }
            }
            TimerKind::TimerF(side) => record.bye_retransmit[side_index(side)] = None,
            TimerKind::RingTimeout => {
                if record.state == State::Proceeding {
                    tracing::info!(call_id = %record.a.call_id, "no answer before the ring timeout");
                    self.send_cancel(call);
                    let reason = format!(
                        "no answer within the ring timeout ({} s)",
                        self.settings.ring_timeout.as_secs()
                    );
                    self.fail_a(
                        now,
                        call,
                        408,
                        Disposition::NoAnswer,
                        HangupSide::System,
                        reason,
                    );
                }
            }
            TimerKind::MaxDuration => {
                if matches!(record.state, State::Answered | State::Confirmed) {
                    record.state = State::Ended;
                    self.send_bye(call, Side::A);
                    self.send_bye(call, Side::B);
                    let reason = format!(
                        "maximum call duration ({} s) reached",
                        self.settings.max_call_duration.as_secs()
                    );
                    self.finish(
                        now,
                        call,
                        Disposition::Answered,
                        200,
                        HangupSide::System,
                        reason,
                    );
                }
            }
            TimerKind::Keepalive => {
                if !matches!(record.state, State::Answered | State::Confirmed) {
                    return;
                }
                for side in [Side::A, Side::B] {
                    let (peer, options) =
                        self.dialog_request(call, side, Method::Options, None, None);
                    let cseq = options.cseq().map_or(0, |c| c.number);
                    if let Some(record) = self.calls.get_mut(&call) {
                        record.keepalive_pending[side_index(side)] = Some(cseq);
                    }
                    self.send(peer, options.to_bytes());
                    let wait = self.settings.keepalive;
                    self.timer(call, TimerKind::KeepaliveTimeout(side, cseq), wait);
                }
                self.schedule_keepalive(call);
            }
            TimerKind::KeepaliveTimeout(side, cseq) => {
                let index = side_index(side);
                if record.keepalive_pending[index] != Some(cseq)
                    || !matches!(record.state, State::Answered | State::Confirmed)
                {
                    return;
                }
                record.keepalive_missed[index] += 1;
                if record.keepalive_missed[index] >= 2 {
                    self.peer_gone(now, call, side);
                }
            }
            TimerKind::ReInviteRetransmit => {
                if let Some(retransmit) =
                    record.reinvite.as_mut().and_then(|p| p.retransmit.as_mut())
                {
                    retransmit.interval *= 2;
                    let (to, data, next) =
                        (retransmit.to, retransmit.data.clone(), retransmit.interval);
                    self.send(to, data);
                    self.timer(call, TimerKind::ReInviteRetransmit, next);
                }
            }
            TimerKind::ReInviteTimeout(cseq) => {
                if record.reinvite.as_ref().is_some_and(|p| p.cseq == cseq)
                    && let Some(pending) = record.reinvite.take()
                {
                    tracing::info!(call_id = %record.a.call_id, "re-INVITE not answered by the other leg (Timer B)");
                    let timeout = Self::response(&pending.request, 408, reason_phrase(408), None);
                    self.send(pending.requester, timeout.to_bytes());
                }
            }
            TimerKind::ReInviteOkRetransmit => {
                if let Some((_, retransmit)) = record.reinvite_ok.as_mut() {
                    retransmit.interval = (retransmit.interval * 2).min(T2);
                    let (to, data, next) =
                        (retransmit.to, retransmit.data.clone(), retransmit.interval);
                    self.send(to, data);
                    self.timer(call, TimerKind::ReInviteOkRetransmit, next);
                }
            }
            TimerKind::ReInviteOkTimeout => record.reinvite_ok = None,
            TimerKind::Cleanup => {
                if let Some(record) = self.calls.remove(&call) {
                    self.by_call_id.remove(&record.a.call_id);
                    self.by_call_id.remove(&record.b.call_id);
                }
            }
        }
    }

    fn schedule_keepalive(&mut self, call: CallRef) {
        let every = self.settings.keepalive;
        if !every.is_zero() {
            self.timer(call, TimerKind::Keepalive, every);
        }
    }

    /// A leg stopped answering (keepalive): hang up the other leg and end the call.
    fn peer_gone(&mut self, now: Instant, call: CallRef, side: Side) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        tracing::info!(call_id = %record.a.call_id, side = ?side, "leg stopped answering keepalives; ending the call");
        record.state = State::Ended;
        record.ok_retransmit = None;
        let other = match side {
            Side::A => Side::B,
            Side::B => Side::A,
        };
        self.send_bye(call, other);
        let reason = format!(
            "the {} stopped answering in-dialog OPTIONS keepalives",
            if side == Side::A { "caller" } else { "callee" }
        );
        self.finish(
            now,
            call,
            Disposition::Answered,
            200,
            HangupSide::System,
            reason,
        );
    }

    /// Emits the call's record once and schedules forgetting it.
    fn finish(
        &mut self,
        now: Instant,
        call: CallRef,
        disposition: Disposition,
        status: u16,
        hangup: HangupSide,
        reason: String,
    ) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        if record.finished {
            return;
        }
        record.finished = true;
        self.active -= 1;
        let disposition = if record.answer.is_some() {
            Disposition::Answered
        } else {
            disposition
        };
        let out = CallRecord {
            call_id: record.a.call_id.clone(),
            b_call_id: record.b.call_id.clone(),
            caller: record.caller.clone(),
            callee: record.callee.clone(),
            start: record.start,
            answer: record.answer,
            end: now,
            disposition,
            sip_status: if record.answer.is_some() { 200 } else { status },
            hangup_side: hangup,
            media_mode: record.mode,
            media_node: record.media.as_ref().map(|m| m.node.clone()),
            relayed: record.allocation_requested,
            media_address: record.media.as_ref().map(|m| m.advertised),
            end_reason: reason,
        };
        tracing::info!(
            call_id = %out.call_id,
            disposition = disposition.as_str(),
            hangup = hangup.as_str(),
            reason = %out.end_reason,
            "call ended"
        );
        self.out.push(Output::Finish(out));
        self.timer(call, TimerKind::Cleanup, TRANSACTION_TIMEOUT);
    }
}

/// Where an in-dialog request goes: the first hop of the route set when it is a loose router
/// with an IP address (RFC 3261 section 12.2.1.1), else the dialog's peer. (Strict routers and
/// host names are not supported: the request then goes to the peer.)
fn next_hop(route_set: &[String], peer: Peer) -> Peer {
    let Some(first) = route_set.first().and_then(|r| NameAddr::parse(r)) else {
        return peer;
    };
    if first.uri.param("lr").is_none() {
        return peer;
    }
    let Some(ip) = first.uri.ip() else {
        return peer;
    };
    let transport = if first.uri.transport() == "tcp" {
        Transport::Tcp
    } else {
        Transport::Udp
    };
    Peer {
        transport,
        addr: SocketAddr::new(ip, first.uri.port.unwrap_or(5060)),
    }
}

/// The SDP of a message body: None when there is no body, an error when it is not usable.
fn body_sdp(body: &[u8]) -> Result<Option<SessionDescription>, sdp::SdpError> {
    if body.is_empty() {
        return Ok(None);
    }
    let text = std::str::from_utf8(body).map_err(|_| sdp::SdpError("body is not UTF-8".into()))?;
    sdp::parse(text).map(Some)
}

/// Rewrites an SDP for one leg; None (and the original kept) when it cannot be parsed.
fn rewrite_for(text: &str, address: IpAddr, ports: &[u16]) -> Option<String> {
    let parsed = sdp::parse(text).ok()?;
    let plan = Rewrite {
        address,
        ports: parsed
            .media
            .iter()
            .enumerate()
            .map(|(i, m)| (m.port != 0).then(|| ports.get(i).copied()).flatten())
            .collect(),
        origin_version: None,
    };
    sdp::rewrite(text, &plan).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::DigestAuth;
    use crate::registrar::Policy;
    use crate::sip::message::parse;

    const A: Peer = Peer {
        transport: Transport::Udp,
        addr: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5061),
    };
    const B: Peer = Peer {
        transport: Transport::Udp,
        addr: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5062),
    };
    const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";

    fn core() -> Core {
        Core::new(
            Settings {
                local: "127.0.0.1:5060".parse().unwrap(),
                routes: vec![{
                    let mut route: Route = "=sip:127.0.0.1:5062".parse().unwrap();
                    route.resolve().unwrap();
                    route
                }],
                trusted: vec!["127.0.0.0/8".parse().unwrap()],
                users: BTreeMap::new(),
                media_mode: MediaMode::Direct,
                ring_timeout: Duration::from_secs(60),
                max_call_duration: Duration::from_secs(3600),
                keepalive: Duration::ZERO,
                max_calls: 100,
            },
            DigestAuth::with_secret("test", [1; 32], 300),
            Registrar::new(Policy::default()),
        )
    }

    fn message(text: &str) -> Message {
        parse(
            text.replace('\n', "\r\n")
                .replace("\r\r\n", "\r\n")
                .as_bytes(),
        )
        .unwrap()
    }

    fn with_body(head: &str, body: &str) -> Message {
        let text = format!(
            "{}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            head.replace('\n', "\r\n"),
            body.len()
        );
        parse(text.as_bytes()).unwrap()
    }

    /// Feeds one parsed message from `from` into the core.
    fn deliver(core: &mut Core, now: Instant, from: Peer, message: Message) -> Vec<Output> {
        core.handle(now, 0, Input::Message { from, message })
    }

    /// Fires one timer of call 1 (the only call these tests make).
    fn fire(core: &mut Core, now: Instant, kind: TimerKind) -> Vec<Output> {
        core.handle(now, 0, Input::Timer { call: 1, kind })
    }

    /// Sends the caller's INVITE (Call-ID `call_id`) into the core; returns the INVITE the
    /// core sent to the callee.
    fn start_call(core: &mut Core, now: Instant, call_id: &str) -> Request {
        let invite = with_body(
            &format!(
                "INVITE sip:bob@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK{call_id}\nFrom: <sip:alice@127.0.0.1>;tag=af\nTo: <sip:bob@127.0.0.1>\nCall-ID: {call_id}\nCSeq: 1 INVITE\nContact: <sip:alice@127.0.0.1:5061>\nMax-Forwards: 70\n"
            ),
            SDP,
        );
        let out = deliver(core, now, A, invite);
        request(&sent(&out, B)[0]).clone()
    }

    /// The callee's answer to a request we sent it, with an SDP body; `tag` is added to To.
    fn answer(to: &Request, status_line: &str, tag: Option<&str>, extra: &str) -> Message {
        let to_header = match tag {
            Some(tag) => format!("{};tag={tag}", to.headers.get("To").unwrap()),
            None => to.headers.get("To").unwrap().to_owned(),
        };
        with_body(
            &format!(
                "SIP/2.0 {status_line}\nVia: {}\nFrom: {}\nTo: {to_header}\nCall-ID: {}\nCSeq: {}\n{extra}",
                to.headers.get("Via").unwrap(),
                to.headers.get("From").unwrap(),
                to.call_id(),
                to.headers.get("CSeq").unwrap(),
            ),
            SDP,
        )
    }

    /// The messages sent to `to`, parsed.
    fn sent(outputs: &[Output], to: Peer) -> Vec<Message> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Send { to: peer, data } if *peer == to => Some(parse(data).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn request(m: &Message) -> &Request {
        match m {
            Message::Request(r) => r,
            Message::Response(r) => panic!("expected a request, got {}", r.status),
        }
    }

    fn response(m: &Message) -> &Response {
        match m {
            Message::Response(r) => r,
            Message::Request(r) => panic!("expected a response, got {}", r.method),
        }
    }

    /// A direct-mode call, answered and acknowledged. Returns the core, the callee-side
    /// INVITE and the caller's To header (with our tag).
    fn established() -> (Core, Request, String) {
        let mut core = core();
        let now = Instant::now();
        let to_b = start_call(&mut core, now, "a-leg");
        assert_eq!(to_b.method, Method::Invite);
        assert_ne!(
            to_b.call_id(),
            "a-leg",
            "the callee leg has its own Call-ID"
        );
        let ok = answer(
            &to_b,
            "200 OK",
            Some("bt"),
            "Contact: <sip:bob@127.0.0.1:5062>\n",
        );
        let out = deliver(&mut core, now, B, ok);
        assert_eq!(request(&sent(&out, B)[0]).method, Method::Ack);
        let ok_to_a = response(&sent(&out, A)[0]).clone();
        assert_eq!(ok_to_a.status, 200);
        let a_to = ok_to_a.headers.get("To").unwrap().to_owned();
        let ack = message(&format!(
            "ACK sip:127.0.0.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKa2\nFrom: <sip:alice@127.0.0.1>;tag=af\nTo: {a_to}\nCall-ID: a-leg\nCSeq: 1 ACK\nContent-Length: 0\n\n"
        ));
        deliver(&mut core, now, A, ack);
        (core, to_b, a_to)
    }

    #[test]
    fn a_relayed_reinvite_and_its_2xx_are_retransmitted_over_udp_rfc3261_17() {
        let (mut core, to_b, a_to) = established();
        let now = Instant::now();
        let reinvite = with_body(
            &format!(
                "INVITE sip:127.0.0.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKa3\nFrom: <sip:alice@127.0.0.1>;tag=af\nTo: {a_to}\nCall-ID: a-leg\nCSeq: 2 INVITE\nContact: <sip:alice@127.0.0.1:5061>\n"
            ),
            &SDP.replace("m=audio", "a=sendonly\r\nm=audio"),
        );
        let out = deliver(&mut core, now, A, reinvite);
        assert_eq!(response(&sent(&out, A)[0]).status, 100);
        let relayed = sent(&out, B);
        let relayed = request(&relayed[0]).clone();
        assert_eq!(relayed.method, Method::Invite);
        assert_eq!(relayed.call_id(), to_b.call_id());
        assert!(out.contains(&Output::Timer {
            call: 1,
            kind: TimerKind::ReInviteRetransmit,
            after: T1
        }));
        // Timer A: the same INVITE again, with a doubled interval.
        let out = fire(&mut core, now, TimerKind::ReInviteRetransmit);
        assert_eq!(request(&sent(&out, B)[0]), &relayed);
        assert!(out.contains(&Output::Timer {
            call: 1,
            kind: TimerKind::ReInviteRetransmit,
            after: T1 * 2
        }));
        // The callee answers: ACK to it, 2xx to the caller, retransmitted until the ACK.
        let ok = answer(
            &relayed,
            "200 OK",
            None,
            "Contact: <sip:bob@127.0.0.1:5062>\n",
        );
        let out = deliver(&mut core, now, B, ok);
        assert_eq!(request(&sent(&out, B)[0]).method, Method::Ack);
        let ok_to_a = response(&sent(&out, A)[0]).clone();
        assert_eq!((ok_to_a.status, ok_to_a.cseq().unwrap().number), (200, 2));
        // No more INVITE retransmissions once answered.
        let out = fire(&mut core, now, TimerKind::ReInviteRetransmit);
        assert!(sent(&out, B).is_empty());
        // Timer G: the 2xx again until the caller's ACK.
        let out = fire(&mut core, now, TimerKind::ReInviteOkRetransmit);
        assert_eq!(response(&sent(&out, A)[0]), &ok_to_a);
        let ack = message(&format!(
            "ACK sip:127.0.0.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKa4\nFrom: <sip:alice@127.0.0.1>;tag=af\nTo: {a_to}\nCall-ID: a-leg\nCSeq: 2 ACK\nContent-Length: 0\n\n"
        ));
        deliver(&mut core, now, A, ack);
        let out = fire(&mut core, now, TimerKind::ReInviteOkRetransmit);
        assert!(
            sent(&out, A).is_empty(),
            "acknowledged: no more retransmissions"
        );
    }

    #[test]
    fn an_unanswered_relayed_reinvite_gets_408_after_timer_b() {
        let (mut core, _, a_to) = established();
        let now = Instant::now();
        let reinvite = with_body(
            &format!(
                "INVITE sip:127.0.0.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKa5\nFrom: <sip:alice@127.0.0.1>;tag=af\nTo: {a_to}\nCall-ID: a-leg\nCSeq: 2 INVITE\n"
            ),
            SDP,
        );
        let out = deliver(&mut core, now, A, reinvite);
        let timeout = out
            .iter()
            .find_map(|o| match o {
                Output::Timer {
                    kind: kind @ TimerKind::ReInviteTimeout(_),
                    after,
                    ..
                } => Some((*kind, *after)),
                _ => None,
            })
            .expect("Timer B armed");
        assert_eq!(timeout.1, TRANSACTION_TIMEOUT);
        let out = fire(&mut core, now, timeout.0);
        let answer = response(&sent(&out, A)[0]).clone();
        assert_eq!((answer.status, answer.cseq().unwrap().number), (408, 2));
        // The call itself goes on: a new re-INVITE is accepted (not 491).
        let again = with_body(
            &format!(
                "INVITE sip:127.0.0.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKa6\nFrom: <sip:alice@127.0.0.1>;tag=af\nTo: {a_to}\nCall-ID: a-leg\nCSeq: 3 INVITE\n"
            ),
            SDP,
        );
        let out = deliver(&mut core, now, A, again);
        assert_eq!(response(&sent(&out, A)[0]).status, 100);
        assert_eq!(request(&sent(&out, B)[0]).method, Method::Invite);
    }

    #[test]
    fn a_caller_that_never_acks_is_hung_up_after_timer_h() {
        let mut core = core();
        let now = Instant::now();
        let to_b = start_call(&mut core, now, "no-ack");
        // Early media first: a 183 with SDP reaches the caller with its SDP and our Contact.
        let early = answer(&to_b, "183 Session Progress", Some("bt"), "");
        let out = deliver(&mut core, now, B, early);
        let progress = response(&sent(&out, A)[0]).clone();
        assert_eq!(progress.status, 183);
        assert_eq!(progress.body, SDP.as_bytes());
        assert_eq!(
            progress.headers.get("Contact"),
            Some("<sip:127.0.0.1:5060>")
        );
        let ok = answer(
            &to_b,
            "200 OK",
            Some("bt"),
            "Contact: <sip:bob@127.0.0.1:5062>\n",
        );
        let out = deliver(&mut core, now, B, ok);
        let ok_to_a = response(&sent(&out, A)[0]).clone();
        assert!(out.contains(&Output::Timer {
            call: 1,
            kind: TimerKind::TimerH,
            after: TRANSACTION_TIMEOUT
        }));
        let out = fire(&mut core, now, TimerKind::TimerG);
        assert_eq!(
            response(&sent(&out, A)[0]),
            &ok_to_a,
            "Timer G resends the 2xx"
        );
        let later = now + TRANSACTION_TIMEOUT;
        let out = fire(&mut core, later, TimerKind::TimerH);
        assert_eq!(request(&sent(&out, A)[0]).method, Method::Bye);
        assert_eq!(request(&sent(&out, B)[0]).method, Method::Bye);
        let record = out
            .iter()
            .find_map(|o| match o {
                Output::Finish(record) => Some(record.clone()),
                _ => None,
            })
            .expect("the call ends with a record");
        assert_eq!(record.hangup_side, HangupSide::System);
        assert_eq!(record.disposition, Disposition::Answered);
        assert_eq!(record.call_id, "no-ack");
        assert!(!record.relayed, "direct mode: nothing to release");
    }
}
