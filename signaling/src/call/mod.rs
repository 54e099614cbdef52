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
//! - [`fork`]: where a call rings: every contact of the user (q-values), 3xx redirects,
//!   forwarding on busy / no answer / always.
//! - [`answer`]: the callee's answers to our INVITE, branch by branch, relayed to the caller.
//! - [`reinvite`]: re-INVITEs relayed from either leg (hold, resume, codec change), glare.
//! - [`hangup`]: BYE, CANCEL, failures, the media proxy ending a call, and finishing.
//! - [`keepalive`]: in-dialog OPTIONS pings of answered calls.
//! - [`reliable`]: reliable provisional responses (100rel, PRACK) on each leg.
//! - [`relayed`]: INFO, MESSAGE, NOTIFY and UPDATE relayed across the legs of an answered
//!   call (an UPDATE's SDP through the relay like a re-INVITE's).
//! - [`transfer`]: REFER: the transferee connected to the target by a new leg, the
//!   transferor hung up, a record per pairing.
//! - [`session_timer`]: RFC 4028 session timers, negotiated and refreshed per leg.
//! - [`relocate`]: moving a call's media to another node when its node is lost.
//! - [`registrar`]: REGISTER with digest authentication, OPTIONS outside dialogs.
//! - [`recording`]: recording by policy at the answer, by operators, and after a move.
//! - [`record`]: the call's record for the CDR and its admin summary.
//!
//! Around the flows:
//!
//! - [`interface`]: what the driver and the core exchange ([`Input`], [`Output`],
//!   [`Settings`]).
//! - [`dispatch`]: each input and expired timer to its flow; the admission of requests.
//! - [`messages`]: building responses, relaying the other leg's, rewriting SDP bodies.
//! - [`media`]: the media types the core owns; [`sweep`]: releasing stale sessions.
//! - this file: a call's state and timers, the core's output queue, deadline and plumbing.

mod answer;
mod dispatch;
mod fork;
mod hangup;
mod interface;
mod invite;
mod keepalive;
mod media;
mod messages;
pub(crate) mod record;
pub(crate) mod recording;
mod registrar;
mod reinvite;
mod relayed;
mod reliable;
mod relocate;
mod session_timer;
mod sweep;
mod transfer;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proto::domain::Leg;

pub(crate) use self::interface::{Input, Output, Settings};
pub(crate) use self::media::{CallId, Endpoint, MediaError, MediaPlan, RecordingAction};
use self::messages::{response, rewrite_for};
pub(crate) use self::record::{CallRecord, CallSummary, Disposition, HangupSide, MediaMove};
pub(crate) use self::recording::{RecordingIntent, RecordingRefused, RecordingTarget};
use crate::access::auth::DigestAuth;
use crate::access::guard::Guard;
use crate::access::registrar::Registrar;
use crate::dialog::Dialog;
use crate::ids::Ids;
use crate::policy::MediaMode;
use crate::sdp::{SdpError, SessionDescription};
use crate::sip::message::{Request, Response};
use crate::sip::{Peer, SipCallId};
use crate::timer::TimerTable;
use crate::transaction::{TIMEOUT, Transactions, TxId};

pub(crate) const ALLOW: &str =
    "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, INFO, MESSAGE, NOTIFY, UPDATE, REFER, PRACK";

/// The extensions the core implements: a request that requires only these is taken.
pub(crate) const SUPPORTED: &[&str] = &["100rel", "timer"];

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

    /// This side as the party that hung up.
    fn hangup(self) -> HangupSide {
        match self {
            Self::A => HangupSide::Caller,
            Self::B => HangupSide::Callee,
        }
    }
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
    /// A transfer's target rang too long.
    TransferRing,
    /// The called user rang for its `forward-no-answer-after`: forward the call.
    NoAnswer,
    /// Resend the reliable provisional response the caller has not PRACKed.
    Reliable,
    /// Time for us to refresh this leg's session (RFC 4028).
    SessionRefresh(Side),
    /// This leg's phone did not refresh its session in time (RFC 4028).
    SessionExpiry(Side),
}

/// Every timer a call may have armed.
const CALL_TIMERS: [CallTimer; 15] = [
    CallTimer::NoAnswer,
    CallTimer::SessionRefresh(Side::A),
    CallTimer::SessionRefresh(Side::B),
    CallTimer::SessionExpiry(Side::A),
    CallTimer::SessionExpiry(Side::B),
    CallTimer::TransferRing,
    CallTimer::Reliable,
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
    /// An INFO, MESSAGE, NOTIFY or UPDATE relayed to this side from the other (client).
    Relayed,
    /// Our INVITE to a transfer's target, who takes this side's place (client).
    Transfer,
    /// The re-INVITE that moves this side, the transferee, onto a transfer's new pairing
    /// (client).
    TransferReInvite,
    /// A NOTIFY telling this side, the transferor, how its REFER fares (client; its answer
    /// changes nothing).
    Notify,
    /// Our PRACK of the callee's reliable provisional (client; its answer changes nothing).
    Prack,
    /// Our session refresh of this side (UPDATE or re-INVITE, client; RFC 4028).
    Refresh,
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
    /// INFO, MESSAGE, NOTIFY and UPDATE relayed to the other leg, waiting for its answer.
    relayed: Vec<relayed::Relayed>,
    /// A transfer under way.
    transfer: Option<transfer::Transfer>,
    /// Transfers this call made (bounded by [`transfer::MAX_TRANSFERS`]).
    transfers: u8,
    /// Transfers that failed, in words, for the CDR's `end_reason`.
    transfer_notes: Vec<String>,
    /// The key of the call this one was transferred out of.
    transferred_from: Option<CallId>,
    /// The key of the pairing this call was transferred into (an attended transfer's other
    /// call).
    transferred_to: Option<CallId>,
    /// Call-IDs of dialogs that left the call (a transferor's): their late requests get a
    /// BYE answered, anything else 481.
    departed: Vec<SipCallId>,
    /// Reliable provisional responses on both legs (RFC 3262).
    reliability: reliable::Reliability,
    /// Session timers on both legs (RFC 4028).
    timers: session_timer::SessionTimers,
    /// Per side, the `o=` session its phone knows when the party behind the other side
    /// changed (a transfer): the SDP it gets keeps that session.
    origin: [Option<messages::OriginAnchor>; 2],
    /// Where the callee side rings: its branches, targets still to try, forwarding.
    forks: fork::Forks,
    /// Our INVITE to the callee as every branch sends it.
    b_template: Option<Request>,
    /// The contact (Request-URI) that answered on the callee side.
    callee_contact: Option<String>,
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
        let notes: Vec<&String> = self
            .forks
            .notes
            .iter()
            .chain(&self.transfer_notes)
            .collect();
        let end_reason = if notes.is_empty() {
            reason
        } else {
            let notes: Vec<&str> = notes.iter().map(|n| n.as_str()).collect();
            format!("{reason}; {}", notes.join("; "))
        };
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
            end_reason,
            recording: self.recording.clone(),
            transferred_from: self.transferred_from.clone(),
            transferred_to: self.transferred_to.clone(),
            callee_contact: self.callee_contact.clone(),
        }
    }

    /// The dialog of `side`, to read.
    fn dialog_of(&self, side: Side) -> &Dialog {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    /// The user of `side`: the caller's or the callee's name.
    fn party_name(&self, side: Side) -> String {
        match side {
            Side::A => self.caller.clone(),
            Side::B => self.callee.clone(),
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
        rewrite_for(
            body,
            plan.advertised,
            ports,
            self.sdp_bump[to.index()],
            self.origin[to.index()].as_ref(),
        )
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
    pub(crate) fn registrations(
        &self,
        now: Instant,
    ) -> Vec<crate::access::registrar::RegistrationSummary> {
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
}

/// How long a finished call is remembered (crossing BYEs, late 2xx, retransmissions).
const LINGER: Duration = TIMEOUT;
