//! The B2BUA call layer, on top of the transaction and dialog layers, without sockets or
//! clocks (docs/contributing.md).
//!
//! The driver feeds [`Input`]s (parsed SIP messages, media proxy answers) with `now` into
//! [`Core::handle`], takes what to do from [`Core::poll_output`] (send bytes, ask the media
//! proxy, finish a call), asks [`Core::poll_timeout`] for the next deadline and calls
//! [`Core::handle_timeout`] when it passes. The core owns every timer: the transactions'
//! (RFC 3261 section 17) and the calls' own (ring timeout, maximum duration, keepalive,
//! linger); ending a call stops its timers.
//!
//! Every call has two SIP dialogs with different Call-IDs; both map to one [`Call`] keyed by
//! a [`CallRef`]. The caller's Call-ID is also the media session id and the CDR's `call_id`
//! (docs/architecture.md, "Call identity"): a BYE on either leg releases the same session.
//!
//! # Layout (one file per flow)
//!
//! - [`invite`]: the initial INVITE on both legs, routing, media allocation, the callee's
//!   responses, late offer.
//! - [`reinvite`]: re-INVITEs relayed from either leg (hold, resume, codec change), glare.
//! - [`hangup`]: BYE, CANCEL, failures, the media proxy ending a call, and finishing.
//! - [`keepalive`]: in-dialog OPTIONS pings of answered calls.
//! - [`relocate`]: moving a call's media to another node when its node is lost.
//! - [`registrar`]: REGISTER with digest authentication, OPTIONS outside dialogs.
//! - [`recording`]: recording by policy at the answer, by operators, and after a move.
//! - [`record`]: the call's record for the CDR and its admin summary.

mod hangup;
mod invite;
mod keepalive;
mod media;
pub(crate) mod record;
pub(crate) mod recording;
mod registrar;
mod reinvite;
mod relocate;
mod sweep;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use proto::domain::Leg;

pub(crate) use self::media::{CallId, Endpoint, MediaError, MediaPlan, RecordingAction};
pub(crate) use self::record::{CallRecord, CallSummary, Disposition, HangupSide, MediaMove};
pub(crate) use self::recording::{RecordingIntent, RecordingRefused, RecordingTarget};
use crate::auth::DigestAuth;
use crate::dialog::Dialog;
use crate::guard::{Admission, Guard};
use crate::ids::Ids;
use crate::policy::{Cidr, MediaMode, Route, User};
use crate::registrar::Registrar;
use crate::sdp::{self, Rewrite, SdpError, SessionDescription};
use crate::sip::header::NameAddr;
use crate::sip::message::{Headers, Message, Method, ParseError, Request, Response};
use crate::sip::{Peer, SipCallId, Transport};
use crate::timer::TimerTable;
use crate::transaction::{Expired, Received, TIMEOUT, Transactions, TxId};

pub(crate) const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER";

/// The end reason of a call whose durable record outlived its signaling process.
pub(crate) const CRASHED: &str = "signaling stopped with the call up (a crash, kill -9 or power loss); ended at its last sign of life before that";

/// Driver-visible handle of a call.
pub(crate) type CallRef = u64;

/// Which dialog of a call: the caller's (A) or the callee's (B).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Side {
    A,
    B,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Self::A => 0,
            Self::B => 1,
        }
    }

    fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }

    /// The media leg this dialog's phone sends on.
    fn leg(self) -> Leg {
        match self {
            Self::A => Leg::Caller,
            Self::B => Leg::Callee,
        }
    }

    fn party(self) -> &'static str {
        match self {
            Self::A => "caller",
            Self::B => "callee",
        }
    }
}

/// Inputs to the core.
#[derive(Debug)]
pub(crate) enum Input {
    Message {
        from: Peer,
        message: Message,
    },
    Malformed {
        from: Peer,
        error: ParseError,
    },
    /// The answer to an [`Output::Allocate`].
    MediaReady {
        call: CallRef,
        result: Result<MediaPlan, MediaError>,
    },
    /// The media proxy ended a call's session itself (media timeout, lease expiry,
    /// shutdown): end the call on both legs.
    MediaEnded {
        endpoint: Endpoint,
        call_id: CallId,
        reason: String,
    },
    /// The media node at `endpoint` is gone (stopped answering, or restarted without its
    /// sessions): its calls move to another node or end.
    MediaNodeLost {
        endpoint: Endpoint,
        reason: String,
    },
    /// This instance's sessions on the node at `endpoint`, as listed at a lease renewal:
    /// those no call of ours has there are released once listed twice (`sweep`).
    MediaSessions {
        endpoint: Endpoint,
        call_ids: Vec<CallId>,
    },
    /// The answer to an [`Output::Relocate`].
    Relocated {
        call: CallRef,
        result: Result<MediaPlan, MediaError>,
    },
    /// The outcome of an [`Output::Recording`] or an operator's recording request.
    RecordingDone {
        call: CallRef,
        action: RecordingAction,
        result: Result<(), MediaError>,
    },
}

/// Outputs the driver performs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Output {
    Send {
        to: Peer,
        data: Vec<u8>,
    },
    /// Allocate both legs for the offer's media lines, update `offer_leg` (the leg the offer
    /// came from: the caller, or the callee for a late offer) and answer with
    /// [`Input::MediaReady`].
    Allocate {
        call: CallRef,
        call_id: CallId,
        offer: SessionDescription,
        offer_leg: Leg,
        /// The call's audio may be tapped (reflect mode).
        reflect: bool,
    },
    /// Update a leg with its latest SDP (no answer needed), on the call's node.
    UpdateMedia {
        endpoint: Endpoint,
        call_id: CallId,
        leg: Leg,
        sdp: SessionDescription,
    },
    /// Release a media session that no call owns any more (its allocation came back after
    /// the call ended).
    ReleaseMedia {
        endpoint: Endpoint,
        call_id: CallId,
    },
    /// Release a session found stale on its node in two listings in a row (a call that moved
    /// away or ended while the node was unreachable).
    ReleaseStale {
        endpoint: Endpoint,
        call_id: CallId,
    },
    /// Set the call up again on another node than `lost`: allocate both legs for `caller`'s
    /// media lines, point each leg at its SDP, and answer with [`Input::Relocated`].
    Relocate {
        call: CallRef,
        call_id: CallId,
        caller: SessionDescription,
        callee: SessionDescription,
        /// The node given up (None if the call had none yet).
        lost: Option<Endpoint>,
        reflect: bool,
    },
    /// Start, pause or stop the recording of a call's session on its node (`target`), and
    /// answer with [`Input::RecordingDone`].
    Recording {
        target: RecordingTarget,
        action: RecordingAction,
    },
    /// A request's digest credentials were wrong or unusable (counted per method in
    /// `signaling_auth_failures_total`; the log line names the source and user).
    AuthFailed {
        /// `REGISTER`, `INVITE` or `other`.
        method: &'static str,
    },
    /// A source was banned or a user guarded after failed authentications
    /// (`signaling_auth_bans_total{scope}`; logged when it began).
    Banned {
        /// `source` or `user`.
        scope: &'static str,
    },
    /// A request over its source's budget was answered 503 (`rejected`) or dropped
    /// (`dropped`, a flood or a banned source): `signaling_requests_limited_total{action}`.
    Limited {
        action: &'static str,
    },
    /// The call is up (answered, or its media moved to another node): keep a durable record
    /// of it, so that a crash of this process still leaves its CDR (completed at the next
    /// start, ended at the last sign of life). The record ends "now", by the system.
    Answered(CallRecord),
    /// The call ended: release its media (if relayed) and write its CDR.
    Finish(CallRecord),
}

/// Static settings of the core.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Our SIP address (Via, Contact).
    pub(crate) local: SocketAddr,
    pub(crate) routes: Vec<Route>,
    pub(crate) trusted: Vec<Cidr>,
    pub(crate) users: BTreeMap<String, User>,
    pub(crate) media_mode: MediaMode,
    /// Record relayed calls from their answer (`--record`; routes and users override it).
    pub(crate) record: bool,
    pub(crate) ring_timeout: Duration,
    pub(crate) max_call_duration: Duration,
    /// In-dialog OPTIONS keepalive interval of answered calls; zero disables.
    pub(crate) keepalive: Duration,
    /// Most calls at once; more INVITEs are answered 503.
    pub(crate) max_calls: usize,
    /// Per-source request budget and password-guessing bans.
    pub(crate) limits: crate::guard::Limits,
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

impl State {
    fn answered(self) -> bool {
        matches!(self, Self::Answered | Self::Confirmed)
    }
}

/// Timers of a call (the transactions' are the transaction layer's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum CallTimer {
    /// The callee rang too long.
    Ring,
    /// The answered call reached the maximum duration.
    MaxDuration,
    /// Time to ping both legs with an in-dialog OPTIONS.
    Keepalive,
    /// The keepalive OPTIONS of that side was not answered within the interval.
    KeepaliveTimeout(Side),
    /// Forget a finished call: retransmissions and crossing requests can no longer arrive.
    Linger,
    /// Offer this side the move to the new node again, after its 491 (glare).
    Relocate(Side),
}

/// Every timer a call may have armed.
const CALL_TIMERS: [CallTimer; 8] = [
    CallTimer::Relocate(Side::A),
    CallTimer::Relocate(Side::B),
    CallTimer::Ring,
    CallTimer::MaxDuration,
    CallTimer::Keepalive,
    CallTimer::KeepaliveTimeout(Side::A),
    CallTimer::KeepaliveTimeout(Side::B),
    CallTimer::Linger,
];

/// Which flow a transaction serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Our answer to the caller's INVITE (server).
    Answer,
    /// Our INVITE to the callee (client).
    Invite,
    /// A re-INVITE we relay to this side (client).
    ReInvite,
    /// Our answer to this side's re-INVITE (server).
    ReInviteAnswer,
    /// A BYE or CANCEL we sent (client; its answer changes nothing).
    Hangup,
    /// A keepalive OPTIONS (client).
    Keepalive,
    /// A re-INVITE of ours that moves this side's media to another node (client).
    Relocate,
}

/// The tag the call layer puts on its transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TxTag {
    call: CallRef,
    side: Side,
    flow: Flow,
}

/// A re-INVITE relayed from one leg to the other, waiting for the answer.
#[derive(Debug, Clone)]
struct ReInvite {
    from: Side,
    /// The requester's INVITE and its server transaction.
    request: Request,
    server: TxId,
    /// Our INVITE to the other leg.
    client: TxId,
}

#[derive(Debug)]
struct Call {
    /// The call's one key: its media session, recording and CDR, whichever leg a request
    /// comes on (the caller's Call-ID, checked as a key when the INVITE arrived).
    key: CallId,
    state: State,
    /// The caller's dialog (we are its UAS) and the callee's (we are its UAC).
    a: Dialog,
    b: Dialog,
    /// The caller's INVITE, which every response to it is built from, and its transaction.
    a_invite: Request,
    a_tx: TxId,
    /// Our INVITE to the callee and its transaction.
    b_tx: Option<TxId>,
    b_invite_cseq: u32,
    mode: MediaMode,
    media: Option<MediaPlan>,
    caller: String,
    callee: String,
    start: Instant,
    answer: Option<Instant>,
    finished: bool,
    /// A media session was asked for (it must be released whatever happened next).
    allocation_requested: bool,
    /// Late offer: the callee's 2xx, held until the media proxy answered, then kept until
    /// the caller's ACK brings the SDP answer for the callee's ACK.
    held_answer: Option<Response>,
    reinvite: Option<ReInvite>,
    /// The 2xx relayed to a re-INVITE's requester: its side, CSeq and server transaction,
    /// which resends it until the requester's ACK.
    reinvite_ok: Option<(Side, u32, TxId)>,
    /// CSeq of the keepalive OPTIONS awaiting an answer, per side.
    keepalive_pending: [Option<u32>; 2],
    /// Consecutive unanswered keepalives, per side (two end the call: one lost datagram
    /// must not).
    keepalive_missed: [u8; 2],
    /// The last SDP each side sent (relayed calls): what a move to another node re-offers.
    last_sdp: [Option<Vec<u8>>; 2],
    /// How far we raised the `o=` version of the SDP each side gets from us, above the
    /// other side's own: every offer of ours (a move) raises it (RFC 3264 section 8).
    sdp_bump: [u64; 2],
    /// Nodes the call's media left, in order.
    moves: Vec<MediaMove>,
    /// A move in progress.
    relocating: Option<relocate::Relocation>,
    recording: RecordingIntent,
}

impl Call {
    /// The durable record of the call while it is up ([`Output::Answered`]): ended now, by
    /// the system, because its process stopped.
    fn open_record(&self, now: Instant) -> CallRecord {
        self.record(
            now,
            Disposition::Answered,
            200,
            HangupSide::System,
            CRASHED.to_owned(),
        )
    }

    /// The call's record as if it ended at `now` (an answered call is `answered` with 200,
    /// whatever `disposition` and `status` say).
    fn record(
        &self,
        now: Instant,
        disposition: Disposition,
        status: u16,
        hangup: HangupSide,
        reason: String,
    ) -> CallRecord {
        let answered = self.answer.is_some();
        CallRecord {
            call_id: self.key.clone(),
            b_call_id: Some(self.b.call_id.clone()),
            caller: self.caller.clone(),
            callee: self.callee.clone(),
            start: self.start,
            answer: self.answer,
            end: now,
            disposition: if answered {
                Disposition::Answered
            } else {
                disposition
            },
            sip_status: if answered { 200 } else { status },
            hangup_side: hangup,
            media_mode: self.mode,
            media_node: self.media.as_ref().map(|m| m.node.clone()),
            media_endpoint: self.media.as_ref().map(|m| m.endpoint.clone()),
            media_moves: self.moves.clone(),
            relayed: self.allocation_requested,
            media_address: self.media.as_ref().map(|m| m.advertised),
            end_reason: reason,
            recording: self.recording.clone(),
        }
    }

    fn dialog(&mut self, side: Side) -> &mut Dialog {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    /// An SDP body rewritten for `to`: the relay's address and `to`'s leg ports, the `o=`
    /// version raised by what our own offers added.
    fn rewrite_to(&self, to: Side, body: &[u8]) -> Result<Vec<u8>, SdpError> {
        let plan = self
            .media
            .as_ref()
            .ok_or_else(|| SdpError("no media plan".into()))?;
        let ports = match to {
            Side::A => &plan.caller_ports,
            Side::B => &plan.callee_ports,
        };
        rewrite_for(body, plan.advertised, ports, self.sdp_bump[to.index()])
    }

    /// Points `from`'s media leg at its new SDP, on the call's node.
    fn media_update(&self, from: Side, mut sdp: SessionDescription) -> Option<Output> {
        let dialog = match from {
            Side::A => &self.a,
            Side::B => &self.b,
        };
        sdp.signaling_ip = Some(dialog.peer.addr.ip());
        self.media.as_ref().map(|plan| Output::UpdateMedia {
            endpoint: plan.endpoint.clone(),
            call_id: self.key.clone(),
            leg: from.leg(),
            sdp,
        })
    }
}

/// The core: calls, dialogs, transactions, registrations.
pub(crate) struct Core {
    settings: Settings,
    auth: DigestAuth,
    guard: Guard,
    registrar: Registrar,
    ids: Ids,
    transactions: Transactions<TxTag>,
    calls: HashMap<CallRef, Call>,
    /// Both legs' Call-IDs of every call, to the call and the leg's side.
    by_call_id: HashMap<SipCallId, (CallRef, Side)>,
    /// Every call by its key: what the media proxy's events and listings name.
    by_key: HashMap<CallId, CallRef>,
    timers: TimerTable<(CallRef, CallTimer)>,
    next_call: CallRef,
    draining: bool,
    /// Calls not yet finished.
    active: usize,
    /// Per node endpoint, sessions the last listing found that no call of ours has there.
    stale: HashMap<Endpoint, HashSet<CallId>>,
    out: VecDeque<Output>,
}

impl Core {
    /// A core whose identifiers come from `ids` (seed it in tests, from the OS in service).
    pub(crate) fn new(
        settings: Settings,
        auth: DigestAuth,
        registrar: Registrar,
        ids: Ids,
    ) -> Self {
        Self {
            guard: Guard::new(settings.limits),
            settings,
            auth,
            registrar,
            ids,
            transactions: Transactions::default(),
            calls: HashMap::new(),
            by_call_id: HashMap::new(),
            by_key: HashMap::new(),
            timers: TimerTable::default(),
            next_call: 1,
            draining: false,
            active: 0,
            stale: HashMap::new(),
            out: VecDeque::new(),
        }
    }

    /// The calls not yet finished, oldest first (admin endpoint).
    pub(crate) fn calls_summary(&self, now: Instant) -> Vec<CallSummary> {
        let mut calls: Vec<(&CallRef, &Call)> =
            self.calls.iter().filter(|(_, c)| !c.finished).collect();
        calls.sort_by_key(|(r, _)| **r);
        calls
            .into_iter()
            .map(|(_, c)| CallSummary {
                call_id: c.key.to_string(),
                b_call_id: c.b.call_id.to_string(),
                caller: c.caller.clone(),
                callee: c.callee.clone(),
                state: format!("{:?}", c.state).to_lowercase(),
                media_mode: c.mode.as_str(),
                media_node: c.media.as_ref().map(|m| m.node.clone()),
                media_endpoint: c.media.as_ref().map(|m| m.endpoint.to_string()),
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
    pub(crate) fn registrations(&self, now: Instant) -> Vec<crate::registrar::RegistrationSummary> {
        self.registrar.summary(now)
    }

    pub(crate) fn active_calls(&self) -> usize {
        self.active
    }

    /// While draining, new INVITEs are answered 503.
    pub(crate) fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Armed deadlines: the calls' and the transactions'.
    pub(crate) fn pending_timers(&self) -> usize {
        self.timers.len() + self.transactions.timers()
    }

    /// Calls held in memory, finished ones that still linger included.
    pub(crate) fn calls_in_memory(&self) -> usize {
        self.calls.len()
    }

    /// Transactions alive.
    pub(crate) fn transactions_alive(&self) -> usize {
        self.transactions.len()
    }

    /// Handles one input; `unix` is the wall clock in seconds (for digest nonces).
    pub(crate) fn handle(&mut self, now: Instant, unix: u64, input: Input) {
        match input {
            Input::Message {
                from,
                message: Message::Request(request),
            } => self.on_request(now, unix, from, request),
            Input::Message {
                from,
                message: Message::Response(response),
            } => self.on_response(now, response, from),
            Input::Malformed { from, error } => self.on_malformed(from, error),
            Input::MediaReady { call, result } => self.on_media(now, call, result),
            Input::MediaEnded {
                endpoint,
                call_id,
                reason,
            } => self.on_media_ended(now, &endpoint, &call_id, &reason),
            Input::MediaNodeLost { endpoint, reason } => self.on_node_lost(now, &endpoint, &reason),
            Input::MediaSessions { endpoint, call_ids } => {
                self.on_media_sessions(&endpoint, call_ids);
            }
            Input::Relocated { call, result } => self.on_relocated(now, call, result),
            Input::RecordingDone {
                call,
                action,
                result,
            } => self.on_recording_done(call, action, result),
        }
        self.flush();
    }

    /// The next thing for the driver to do.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The earliest deadline the driver must wake up for.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match (self.timers.next_timeout(), self.transactions.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs every timer due at `now`.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        for expired in self.transactions.handle_timeout(now) {
            self.on_expired(now, expired);
        }
        while let Some((call, timer)) = self.timers.pop_expired(now) {
            self.on_call_timer(now, call, timer);
        }
        self.flush();
    }

    // ---- plumbing ----------------------------------------------------------------------

    /// Moves what the transactions sent into the output queue, in order.
    fn flush(&mut self) {
        for transmit in self.transactions.drain_transmits() {
            self.out.push_back(Output::Send {
                to: transmit.to,
                data: transmit.data,
            });
        }
    }

    /// Sends outside any transaction (the ACK of a 2xx, a stateless 400).
    fn send(&mut self, to: Peer, data: Vec<u8>) {
        self.flush();
        self.out.push_back(Output::Send { to, data });
    }

    fn push(&mut self, output: Output) {
        self.flush();
        self.out.push_back(output);
    }

    fn set_timer(&mut self, now: Instant, call: CallRef, timer: CallTimer, after: Duration) {
        self.timers.set((call, timer), now + after);
    }

    fn stop_timer(&mut self, call: CallRef, timer: CallTimer) {
        self.timers.stop((call, timer));
    }

    fn local(&self) -> SocketAddr {
        self.settings.local
    }

    fn contact(&self) -> String {
        crate::dialog::contact(self.settings.local)
    }

    /// Answers a server transaction with `status` and our To tag when it had none.
    fn reply(&mut self, now: Instant, tx: TxId, request: &Request, status: u16) {
        let tag = self.ids.tag();
        let mut response = response(
            request,
            status,
            crate::sip::message::reason_phrase(status),
            Some(&tag),
        );
        if status == 415 {
            // RFC 3261 section 21.4.13: say what we do take.
            response.headers.push("Accept", "application/sdp");
        }
        self.transactions.respond(now, tx, &response);
    }

    // ---- dispatch ----------------------------------------------------------------------

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
            status: error.status,
            reason: error.reason.replace(['\r', '\n'], " "),
            headers,
            body: Vec::new(),
        };
        self.send(from, response.to_bytes());
    }

    fn on_request(&mut self, now: Instant, unix: u64, from: Peer, mut request: Request) {
        if !crate::sip::header::stamp_via(&mut request.headers, from.addr) {
            tracing::info!(peer = %from.addr, "request with an unreadable Via dropped");
            return;
        }
        if !self.admit(now, from, &request) {
            return;
        }
        match self.transactions.on_request(now, from, request) {
            Received::Absorbed => {}
            Received::Ack { request } => self.on_ack(now, request),
            Received::Request { tx, request } => self.on_new_request(now, unix, from, tx, request),
        }
    }

    /// Admits a request before any work is done for it; false when it was answered 503
    /// statelessly or dropped. Requests of a call that is up always pass (a ban is for what a
    /// source tries next, never a cut of calls already admitted); a banned source gets
    /// nothing else through, whatever tags it writes; everything else that is answerable
    /// spends its source's budget: a To tag is the sender's to write, so only a live call
    /// makes a request in-dialog here (its Call-ID and a To tag, or an ACK or CANCEL of its
    /// INVITE). REGISTER is never part of a call. ACK and CANCEL
    /// cannot be answered 503 and belong to an INVITE already admitted (or cost a 481).
    /// Trusted sources have neither budget nor ban.
    fn admit(&mut self, now: Instant, from: Peer, request: &Request) -> bool {
        let ip = from.addr.ip();
        if self.settings.trusted.iter().any(|c| c.contains(ip)) {
            return true;
        }
        if request.method != Method::Register
            && self.by_call_id.contains_key(request.call_id())
            && (matches!(request.method, Method::Ack | Method::Cancel)
                || NameAddr::parse(request.headers.get("To").unwrap_or(""))
                    .is_some_and(|to| to.tag().is_some()))
        {
            return true;
        }
        let user = claimed_user(request);
        if self.guard.drops(now, ip, user.as_deref()) {
            self.push(Output::Limited { action: "dropped" });
            return false;
        }
        if matches!(request.method, Method::Ack | Method::Cancel) {
            return true;
        }
        let (admission, started) = self.guard.admit(now, ip, user.as_deref());
        if started {
            tracing::warn!(source = %ip, rate = self.settings.limits.source_rate, "source over its request budget: answered 503, then dropped while it keeps on");
        }
        match admission {
            Admission::Pass => true,
            Admission::Reject { retry_after } => {
                self.push(Output::Limited { action: "rejected" });
                let tag = self.ids.tag();
                let mut answer = response(request, 503, "Service Unavailable", Some(&tag));
                answer.headers.push("Retry-After", retry_after.to_string());
                self.send(from, answer.to_bytes());
                false
            }
            Admission::Drop => {
                self.push(Output::Limited { action: "dropped" });
                false
            }
        }
    }

    /// Housekeeping of the abuse limits, about once a second; the sources banned now (the
    /// `signaling_banned_sources` gauge).
    pub(crate) fn guard_tick(&mut self, now: Instant) -> usize {
        self.guard.tick(now)
    }

    fn on_new_request(&mut self, now: Instant, unix: u64, from: Peer, tx: TxId, request: Request) {
        // RFC 3261 section 8.2.2.3: an extension the request requires and we do not
        // implement (we implement none) is refused with 420, naming it. ACK and CANCEL get
        // no answer of their own.
        if !matches!(request.method, Method::Ack | Method::Cancel) {
            let required: Vec<&str> = request
                .headers
                .values("Require")
                .chain(request.headers.values("Proxy-Require"))
                .map(str::trim)
                .filter(|option| !option.is_empty())
                .collect();
            if !required.is_empty() {
                tracing::info!(peer = %from.addr, options = %required.join(", "), "request requires unsupported extensions");
                let tag = self.ids.tag();
                let mut answer = response(&request, 420, "Bad Extension", Some(&tag));
                answer.headers.push("Unsupported", required.join(", "));
                self.transactions.respond(now, tx, &answer);
                return;
            }
        }
        if let Some(&(call, side)) = self.by_call_id.get(request.call_id()) {
            let fresh_invite = request.method == Method::Invite
                && NameAddr::parse(request.headers.get("To").unwrap_or(""))
                    .is_some_and(|to| to.tag().is_none());
            let finished = self.calls.get(&call).is_none_or(|c| c.finished);
            if fresh_invite && finished {
                // The same Call-ID again after its call ended (a phone retrying): a new call.
                self.by_call_id.remove(request.call_id());
            } else {
                self.in_dialog(now, call, side, tx, request);
                return;
            }
        }
        if let Some(forwards) = request.headers.get("Max-Forwards")
            && forwards.trim().parse::<u8>() == Ok(0)
        {
            self.reply(now, tx, &request, 483);
            return;
        }
        match request.method {
            Method::Register => self.on_register(now, unix, from, tx, &request),
            Method::Options => self.on_options(now, tx, &request),
            Method::Invite => self.on_invite(now, unix, from, tx, request),
            Method::Bye | Method::Cancel => self.reply(now, tx, &request, 481),
            Method::Other(_) => self.reply(now, tx, &request, 501),
            _ => {
                let tag = self.ids.tag();
                let mut response = response(&request, 405, "Method Not Allowed", Some(&tag));
                response.headers.push("Allow", ALLOW);
                self.transactions.respond(now, tx, &response);
            }
        }
    }

    /// A new request inside one of a call's dialogs.
    fn in_dialog(&mut self, now: Instant, call: CallRef, side: Side, tx: TxId, request: Request) {
        let Some(record) = self.calls.get_mut(&call) else {
            self.reply(now, tx, &request, 481);
            return;
        };
        if let Err(error) = record.dialog(side).receive(&request) {
            tracing::info!(call_id = request.call_id(), %error, "in-dialog request refused");
            self.reply(now, tx, &request, error.status());
            return;
        }
        match (side, &request.method) {
            (_, Method::Invite) => self.on_reinvite(now, call, side, tx, request),
            (_, Method::Bye) => self.on_bye(now, call, side, tx, &request),
            (Side::A, Method::Cancel) => self.on_cancel(now, call, tx, &request),
            (_, Method::Options) => {
                let ok = response(&request, 200, "OK", None);
                self.transactions.respond(now, tx, &ok);
            }
            _ => self.reply(now, tx, &request, 501),
        }
    }

    fn on_response(&mut self, now: Instant, response: Response, from: Peer) {
        let Some(answer) = self.transactions.on_response(now, response) else {
            return;
        };
        let tag = answer.tag;
        if !self.calls.contains_key(&tag.call) {
            tracing::debug!(peer = %from.addr, "response for a call already forgotten");
            return;
        }
        match tag.flow {
            Flow::Invite => self.on_invite_response(now, tag.call, answer.response),
            Flow::ReInvite => {
                self.on_reinvite_response(now, tag.call, tag.side, answer.tx, answer.response)
            }
            Flow::Relocate => {
                self.on_relocate_response(now, tag.call, tag.side, answer.tx, answer.response)
            }
            Flow::Keepalive => {
                self.on_keepalive_response(now, tag.call, tag.side, &answer.response)
            }
            Flow::Hangup | Flow::Answer | Flow::ReInviteAnswer => {}
        }
    }

    fn on_expired(&mut self, now: Instant, expired: Expired<TxTag>) {
        match expired {
            Expired::NoResponse { tx, tag, .. } => match tag.flow {
                Flow::Invite => self.on_invite_timeout(now, tag.call, tx),
                Flow::ReInvite => self.on_reinvite_timeout(now, tag.call, tx),
                Flow::Relocate => self.on_relocate_timeout(now, tag.call, tag.side, tx),
                _ => {}
            },
            Expired::NoAck { tx, tag: Some(tag) } => match tag.flow {
                Flow::Answer => self.on_ack_timeout(now, tag.call),
                Flow::ReInviteAnswer => {
                    if let Some(call) = self.calls.get_mut(&tag.call)
                        && call.reinvite_ok.is_some_and(|(_, _, t)| t == tx)
                    {
                        tracing::info!(call_id = %call.key, "re-INVITE 2xx never acknowledged");
                        call.reinvite_ok = None;
                    }
                }
                _ => {}
            },
            Expired::NoAck { tag: None, .. } => {}
        }
    }

    fn on_call_timer(&mut self, now: Instant, call: CallRef, timer: CallTimer) {
        match timer {
            CallTimer::Ring => self.on_ring_timeout(now, call),
            CallTimer::MaxDuration => self.on_max_duration(now, call),
            CallTimer::Keepalive => self.on_keepalive(now, call),
            CallTimer::KeepaliveTimeout(side) => self.on_keepalive_timeout(now, call, side),
            CallTimer::Relocate(side) => self.send_relocation(now, call, side),
            CallTimer::Linger => {
                if let Some(record) = self.calls.remove(&call) {
                    for call_id in [&record.a.call_id, &record.b.call_id] {
                        if self
                            .by_call_id
                            .get(call_id)
                            .is_some_and(|(c, _)| *c == call)
                        {
                            self.by_call_id.remove(call_id);
                        }
                    }
                    if self.by_key.get(&record.key) == Some(&call) {
                        self.by_key.remove(&record.key);
                    }
                }
            }
        }
    }
}

// ---- building messages ---------------------------------------------------------------

/// A response to `request` (RFC 3261 section 8.2.6): Via, From, To, Call-ID, CSeq copied;
/// `to_tag` added when the To has none; Record-Route echoed in dialog-creating responses.
/// The media type of a request's body when it is neither SDP nor multipart (whose SDP part is
/// looked for by the SDP reader): such a body is answered 415, not read as SDP.
fn foreign_body(request: &Request) -> Option<String> {
    if request.body.is_empty() {
        return None;
    }
    let kind = media_type(request.headers.get("Content-Type")?);
    (kind != "application/sdp" && !kind.starts_with("multipart/")).then_some(kind)
}

/// The media type of a Content-Type or Accept value, lowercase and without parameters
/// (`Application/SDP; charset=x` is `application/sdp`).
fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Who a request says it is: its credentials' user name, else its To user (REGISTER) or
/// From user (anything else).
fn claimed_user(request: &Request) -> Option<String> {
    let credentials = request
        .headers
        .all("Authorization")
        .chain(request.headers.all("Proxy-Authorization"))
        .find_map(crate::auth::Credentials::parse);
    if let Some(credentials) = credentials {
        return Some(credentials.username);
    }
    let header = if request.method == Method::Register {
        "To"
    } else {
        "From"
    };
    NameAddr::parse(request.headers.get(header)?)?.uri.user
}

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

/// Our response to `request` carrying the other leg's `response` on: its status and reason,
/// our Contact, and `body` (the SDP already rewritten) with its Content-Type.
fn relayed_response(
    request: &Request,
    response: &Response,
    to_tag: Option<&str>,
    contact: &str,
    body: Vec<u8>,
) -> Response {
    let mut relayed = self::response(request, response.status, &response.reason, to_tag);
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

/// The SDP of a message body: None when there is no body, an error when it is not usable.
fn body_sdp(body: &[u8]) -> Result<Option<SessionDescription>, SdpError> {
    if body.is_empty() {
        return Ok(None);
    }
    let text = std::str::from_utf8(body).map_err(|_| SdpError("body is not UTF-8".into()))?;
    sdp::parse(text).map(Some)
}

/// Rewrites an SDP body for one leg of the relay: the proxy's address and that leg's ports,
/// and the `o=` version raised by `bump` (0 keeps it).
fn rewrite_for(
    body: &[u8],
    address: IpAddr,
    ports: &[u16],
    bump: u64,
) -> Result<Vec<u8>, SdpError> {
    let text = std::str::from_utf8(body).map_err(|_| SdpError("body is not UTF-8".into()))?;
    let parsed = sdp::parse(text)?;
    let plan = Rewrite {
        address,
        ports: parsed
            .media
            .iter()
            .enumerate()
            .map(|(i, m)| (m.port != 0).then(|| ports.get(i).copied()).flatten())
            .collect(),
        origin_version: (bump > 0)
            .then(|| parsed.origin_version.map(|v| v.wrapping_add(bump)))
            .flatten(),
    };
    if parsed
        .media
        .iter()
        .enumerate()
        .any(|(i, m)| m.port != 0 && i >= ports.len())
    {
        return Err(SdpError(format!(
            "{} media lines, the relay has ports for {}",
            parsed.media.len(),
            ports.len()
        )));
    }
    sdp::rewrite(text, &plan).map(String::into_bytes)
}

/// The transport of a registered binding or route (`tcp`, else UDP).
fn transport_named(name: &str) -> Transport {
    if name == "tcp" {
        Transport::Tcp
    } else {
        Transport::Udp
    }
}

/// How long a finished call is remembered (crossing BYEs, late 2xx, retransmissions).
const LINGER: Duration = TIMEOUT;
