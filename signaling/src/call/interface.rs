//! What the driver and the core exchange: the [`Input`]s the driver feeds in, the
//! [`Output`]s it performs, and the core's static [`Settings`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use proto::domain::Leg;

use super::{
    CallId, CallRecord, CallRef, Endpoint, MediaError, MediaPlan, RecordingAction, RecordingTarget,
};
use crate::policy::{Cidr, MediaMode, Route, User};
use crate::sdp::SessionDescription;
use crate::sip::Peer;
use crate::sip::message::{Message, ParseError};

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
    /// A REFER was refused (`refused`), or a transfer `completed` or `failed`
    /// (`signaling_transfers_total{outcome}`).
    Transfer {
        outcome: &'static str,
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
    /// RFC 4028: the session interval we offer and accept, and the shortest we accept.
    pub(crate) session_expires: Duration,
    pub(crate) min_se: Duration,
    /// Most calls at once; more INVITEs are answered 503.
    pub(crate) max_calls: usize,
    /// Per-source request budget and password-guessing bans.
    pub(crate) limits: crate::access::guard::Limits,
}
