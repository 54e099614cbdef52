//! The initial INVITE: the caller's request, routing, media allocation, our INVITE to the
//! callee, the callee's responses relayed back, and the late offer (RFC 3261 sections 13 and
//! 16-17 as a B2BUA plays them; RFC 3264 offer/answer through the relay).

use std::time::Instant;

use proto::domain::Leg;

use super::messages::{body_sdp, response, transport_named};
use super::{
    ALLOW, Call, CallId, CallRecord, CallRef, CallTimer, Core, Disposition, Flow, HangupSide,
    MediaError, MediaPlan, RecordingIntent, Side, State, TxTag,
};
use crate::dialog::Dialog;
use crate::policy::MediaMode;
use crate::sdp;
use crate::sip::Peer;
use crate::sip::header::NameAddr;
use crate::sip::message::Request;
use crate::sip::uri::{Uri, host_text};
use crate::transaction::TxId;

/// What a static route says of its calls' media (none for a registered user).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct RoutePolicy {
    media_mode: Option<MediaMode>,
    record: Option<bool>,
}

impl Core {
    /// Where a call to `user` goes: a registered contact first, then the longest static
    /// route prefix. Returns (Request-URI, peer, the route's media policy).
    pub(super) fn route(&self, now: Instant, user: &str) -> Option<(String, Peer, RoutePolicy)> {
        if let Some(binding) = self.registrar.lookup(now, user).into_iter().next() {
            return Some((
                binding.contact.uri.to_string(),
                Peer {
                    transport: transport_named(binding.transport),
                    addr: binding.source,
                },
                RoutePolicy::default(),
            ));
        }
        let route = self
            .settings
            .routes
            .iter()
            .filter(|r| user.starts_with(&r.prefix))
            .max_by_key(|r| r.prefix.len())?;
        let address = route.address?;
        let mut uri = route.target.clone();
        if uri.user.is_none() {
            uri.user = Some(user.to_owned());
        }
        Some((
            uri.to_string(),
            Peer {
                transport: transport_named(&route.target.transport()),
                addr: address,
            },
            RoutePolicy {
                media_mode: route.media_mode,
                record: route.record,
            },
        ))
    }

    /// The called user's forwarding rules, and the target of its `forward` (every call).
    fn forwarding_of(&self, user: &str) -> (super::fork::Forwarding, Option<String>) {
        let Some(rules) = self.settings.users.get(user) else {
            return Default::default();
        };
        let forwarding = super::fork::Forwarding {
            busy: rules.forward_busy.clone(),
            no_answer: rules.forward_no_answer.clone(),
            no_answer_after: std::time::Duration::from_secs(
                rules.forward_no_answer_after.unwrap_or(20),
            ),
        };
        let always = rules
            .forward
            .as_deref()
            .map(super::fork::forward_user)
            .filter(|to| to != user);
        (forwarding, always)
    }

    /// Answers an INVITE that never became a call and records it. Its server transaction
    /// absorbs retransmissions, so this runs (and leaves a CDR) once per call.
    fn reject_call(
        &mut self,
        now: Instant,
        tx: TxId,
        key: &CallId,
        request: &Request,
        status: u16,
        reason: &str,
    ) {
        self.reply(now, tx, request, status);
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
            call_id: key.clone(),
            b_call_id: None,
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
            media_endpoint: None,
            media_moves: Vec::new(),
            relayed: false,
            media_address: None,
            end_reason: reason.to_owned(),
            recording: RecordingIntent::default(),
            transferred_from: None,
            transferred_to: None,
            callee_contact: None,
        };
        tracing::info!(call_id = %record.call_id, status, reason, "call rejected");
        self.push(super::Output::Finish(record));
    }

    pub(super) fn on_invite(
        &mut self,
        now: Instant,
        unix: u64,
        from: Peer,
        tx: TxId,
        request: Request,
    ) {
        // The caller's Call-ID keys the call's media session, recording and CDR; one that
        // cannot be such a key (over 256 characters, or not printable ASCII, which RFC 3261's
        // `word` never is) is answered like a malformed request, before anything is kept.
        let key = match CallId::parse(request.call_id()) {
            Ok(key) => key,
            Err(error) => {
                tracing::info!(call_id = request.call_id(), %error, "INVITE refused: its Call-ID cannot key a call");
                let tag = self.ids.tag();
                let answer = response(&request, 400, "Bad Request (Call-ID unusable)", Some(&tag));
                self.transactions.respond(now, tx, &answer);
                return;
            }
        };
        if self.draining {
            let reason = "signaling is shutting down (draining); INVITE refused";
            self.reject_call(now, tx, &key, &request, 503, reason);
            return;
        }
        if self.active >= self.settings.max_calls {
            let reason = format!(
                "call limit reached ({} calls, --max-calls)",
                self.settings.max_calls
            );
            self.reject_call(now, tx, &key, &request, 503, &reason);
            return;
        }
        // A From without a tag is an RFC 2543 caller's: taken as a null tag (RFC 3261
        // section 12.2.1.1 keeps them working), the dialog then has no remote tag.
        let from_header = request.headers.get("From").and_then(NameAddr::parse);
        let Some(from_header) = from_header else {
            let answer = response(&request, 400, "Malformed From", None);
            self.transactions.respond(now, tx, &answer);
            return;
        };
        // Our answer carries SDP: a caller that accepts no SDP cannot take it (RFC 3261
        // section 21.4.7).
        if let Some(accept) = request.headers.get("Accept")
            && !accepts_sdp(&request.headers)
        {
            let reason = format!("the caller accepts only {accept}, our answer is application/sdp");
            self.reject_call(now, tx, &key, &request, 406, &reason);
            return;
        }
        // RFC 4028 section 8.1: a session interval below our Min-SE is refused 422 naming it.
        let timers = match super::session_timer::SessionTimers::of(
            &request,
            self.settings.session_expires,
            self.settings.min_se,
        ) {
            Ok(timers) => timers,
            Err(min_se) => {
                let tag = self.ids.tag();
                let mut answer = response(&request, 422, "Session Interval Too Small", Some(&tag));
                answer.headers.push("Min-SE", min_se.to_string());
                self.transactions.respond(now, tx, &answer);
                return;
            }
        };
        let trusted = self
            .settings
            .trusted
            .iter()
            .any(|c| c.contains(from.addr.ip()));
        let caller = if trusted {
            from_header.uri.user.clone().unwrap_or_default()
        } else {
            match self.authenticate(now, from, tx, &request, unix, true) {
                Some(user) => user,
                None => return,
            }
        };
        // RFC 3891: an INVITE that replaces a dialog of ours joins that call.
        if self.on_replacing_invite(now, from, tx, &request, &caller) {
            return;
        }
        let Ok(uri) = Uri::parse(&request.uri) else {
            let tag = self.ids.tag();
            let answer = response(&request, 416, "Unsupported URI Scheme", Some(&tag));
            self.transactions.respond(now, tx, &answer);
            return;
        };
        let callee = uri.user.clone().unwrap_or_default();
        // The called user's forwarding (users file); `forward` sends every call elsewhere.
        let (forwarding, forward_to) = self.forwarding_of(&callee);
        let routed = forward_to.clone().unwrap_or_else(|| callee.clone());
        let targets = self.targets(now, &routed);
        let Some(first) = targets.first().cloned() else {
            let reason = format!("no registered user and no route for {routed:?}");
            self.reject_call(now, tx, &key, &request, 404, &reason);
            return;
        };
        let (request_uri, target) = (first.uri.clone(), first.peer);
        let policy = if self.registrar.lookup(now, &routed).is_empty() {
            self.route(now, &routed)
                .map(|(_, _, p)| p)
                .unwrap_or_default()
        } else {
            RoutePolicy::default()
        };
        let mut forks = super::fork::Forks::new(&callee, targets, forwarding);
        if let Some(to) = &forward_to {
            forks
                .notes
                .push(format!("forwarded always from {callee} to {to}"));
        }
        let mode = self
            .settings
            .users
            .get(&caller)
            .and_then(|u| u.media_mode)
            .or(policy.media_mode)
            .unwrap_or(self.settings.media_mode);
        let recorded = self.records(&caller, policy.record);
        if let Some(kind) = super::messages::foreign_body(&request) {
            let reason = format!("the INVITE's body is {kind}, not application/sdp");
            self.reject_call(now, tx, &key, &request, 415, &reason);
            return;
        }
        let offer = match body_sdp(&request.body) {
            Ok(offer) => offer,
            Err(error) => {
                let reason = format!("unusable SDP offer: {error}");
                self.reject_call(now, tx, &key, &request, 488, &reason);
                return;
            }
        };
        let call = self.next_call;
        self.next_call += 1;
        let host = host_text(&self.settings.local.ip().to_string());
        let a_tag = self.ids.tag();
        let b_tag = self.ids.tag();
        let b_call_id = self.ids.call_id(&host);
        let trying = response(&request, 100, "Trying", None);
        self.transactions.respond(now, tx, &trying);
        self.transactions.set_tag(
            tx,
            TxTag {
                call,
                side: Side::A,
                flow: Flow::Answer,
            },
        );
        // The callee's dialog: From is the caller with our host, To the caller's To.
        let mut b_from = from_header.clone();
        b_from.params.retain(|(n, _)| n != "tag");
        b_from.uri.host = self.settings.local.ip().to_string();
        b_from.uri.port = Some(self.settings.local.port());
        b_from.uri.params.clear();
        let b_to = request
            .headers
            .get("To")
            .and_then(NameAddr::parse)
            .map(|mut to| {
                to.params.retain(|(n, _)| n != "tag");
                to.to_string()
            })
            .unwrap_or_else(|| format!("<{request_uri}>"));
        let relayed = mode != MediaMode::Direct;
        let a_call_id = crate::sip::SipCallId::new(request.call_id());
        let reliability = super::reliable::Reliability::of(&request, self.ids.rseq());
        let record = Call {
            key: key.clone(),
            state: State::MediaPending,
            a: Dialog::uas(&request, a_tag, from),
            b: Dialog::uac(
                b_call_id.clone(),
                b_tag,
                b_from.to_string(),
                b_to,
                request_uri,
                0,
                target,
            ),
            a_invite: request,
            a_tx: tx,
            b_tx: None,
            b_invite_cseq: 0,
            mode: if relayed { mode } else { MediaMode::Direct },
            media: None,
            caller,
            callee,
            start: now,
            answer: None,
            finished: false,
            allocation_requested: false,
            held_answer: None,
            reinvite: None,
            reinvite_ok: None,
            keepalive_pending: [None, None],
            keepalive_missed: [0, 0],
            last_sdp: [None, None],
            sdp_bump: [0, 0],
            moves: Vec::new(),
            relocating: None,
            recording: RecordingIntent {
                by_policy: recorded,
                ..RecordingIntent::default()
            },
            relayed: Vec::new(),
            transfer: None,
            transfers: 0,
            transfer_notes: Vec::new(),
            transferred_from: None,
            transferred_to: None,
            departed: Vec::new(),
            reliability,
            timers,
            origin: [None, None],
            forks,
            b_template: None,
            callee_contact: None,
        };
        self.by_call_id.insert(a_call_id, (call, Side::A));
        self.by_call_id.insert(b_call_id, (call, Side::B));
        self.by_key.insert(key.clone(), call);
        self.calls.insert(call, record);
        self.active += 1;
        tracing::info!(call_id = %key, mode = if relayed { mode.as_str() } else { "direct" }, recorded, "new call");
        match offer {
            Some(mut offer) if relayed => {
                if let Some(record) = self.calls.get_mut(&call) {
                    record.allocation_requested = true;
                    record.last_sdp[Side::A.index()] = Some(record.a_invite.body.clone());
                    offer.signaling_ip = Some(record.a.peer.addr.ip());
                }
                self.push(super::Output::Allocate {
                    call,
                    call_id: key,
                    offer,
                    offer_leg: Leg::Caller,
                    reflect: mode == MediaMode::Reflect,
                });
            }
            _ => self.send_invite(now, call),
        }
    }

    pub(super) fn on_media(
        &mut self,
        now: Instant,
        call: CallRef,
        result: Result<MediaPlan, MediaError>,
    ) {
        if self.transfer_allocating(call) {
            return self.on_transfer_media(now, call, result);
        }
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        match (record.state, result) {
            (State::MediaPending, Ok(plan)) => {
                record.media = Some(plan);
                self.send_invite(now, call);
            }
            (State::MediaPending, Err(error)) => {
                tracing::warn!(call_id = %record.key, %error, "media allocation failed");
                let status = error.sip_status();
                self.fail_a(
                    now,
                    call,
                    status,
                    Disposition::Failed,
                    HangupSide::System,
                    error.to_string(),
                );
            }
            (State::LateOfferPending, Ok(plan)) => {
                record.media = Some(plan);
                let Some(answer) = record.held_answer.clone() else {
                    return;
                };
                match self.relay_to_a(now, call, &answer) {
                    Ok(()) => self.answered(now, call),
                    Err(error) => {
                        let reason = format!("callee's SDP offer (late offer) unusable: {error}");
                        self.drop_held_answer(now, call);
                        self.fail_a(
                            now,
                            call,
                            502,
                            Disposition::Failed,
                            HangupSide::System,
                            reason,
                        );
                    }
                }
            }
            (State::LateOfferPending, Err(error)) => {
                tracing::warn!(call_id = %record.key, %error, "media allocation failed (late offer)");
                let status = error.sip_status();
                let reason = format!("{error} (late offer)");
                self.drop_held_answer(now, call);
                self.fail_a(
                    now,
                    call,
                    status,
                    Disposition::Failed,
                    HangupSide::System,
                    reason,
                );
            }
            (_, Ok(_)) if record.finished => {
                // The call ended while its media was being allocated; the release that
                // finishing asked for may have overtaken this allocation.
                if let Some(endpoint) = record.media.as_ref().map(|m| m.endpoint.clone()) {
                    let call_id = record.key.clone();
                    self.push(super::Output::ReleaseMedia { endpoint, call_id });
                }
            }
            _ => {}
        }
    }

    /// The callee's 2xx of a late offer cannot go on: acknowledge it and hang the callee up.
    pub(super) fn drop_held_answer(&mut self, now: Instant, call: CallRef) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        record.state = State::Ended;
        if record.held_answer.take().is_some() {
            self.ack_b(call, Vec::new());
            self.send_bye(now, call, Side::B);
        }
    }

    /// Sends the INVITE to the callee (SDP rewritten to the callee leg's ports): to every
    /// target of the first group of its forks.
    pub(super) fn send_invite(&mut self, now: Instant, call: CallRef) {
        if self.invite_template(now, call).is_some() {
            self.ring_next_group(now, call);
        }
    }

    /// Our INVITE to the callee as every branch sends it (each with its own Request-URI and
    /// Via branch), with the next CSeq of the callee's dialog; None when the caller's offer
    /// cannot be rewritten (the call then failed).
    pub(super) fn invite_template(&mut self, now: Instant, call: CallRef) -> Option<Request> {
        let local = self.local();
        let branch = self.ids.branch();
        let record = self.calls.get_mut(&call)?;
        let body = match &record.media {
            Some(_) => match record.rewrite_to(Side::B, &record.a_invite.body) {
                Ok(body) => body,
                Err(error) => {
                    let reason = format!("caller's SDP offer could not be rewritten: {error}");
                    self.fail_a(
                        now,
                        call,
                        500,
                        Disposition::Failed,
                        HangupSide::System,
                        reason,
                    );
                    return None;
                }
            },
            None => record.a_invite.body.clone(),
        };
        record.state = State::Calling;
        let forwards = record
            .a_invite
            .headers
            .get("Max-Forwards")
            .and_then(|v| v.trim().parse::<u8>().ok())
            .unwrap_or(70)
            .saturating_sub(1);
        let content_type = record
            .a_invite
            .headers
            .get("Content-Type")
            .unwrap_or("application/sdp")
            .to_owned();
        let (_, mut invite) = record.b.invite(local, &branch, &content_type, body);
        record.b_invite_cseq = invite.cseq().map_or(1, |c| c.number);
        invite.headers.set("Max-Forwards", forwards.to_string());
        invite.headers.push("Allow", ALLOW);
        // One Supported header: some parsers read only the first.
        invite.headers.push("Supported", "100rel, timer");
        self.offer_session_timer(call, &mut invite);
        if let Some(record) = self.calls.get_mut(&call) {
            record.b_template = Some(invite.clone());
        }
        Some(invite)
    }

    /// The call is answered on both legs: its own timers start (once).
    pub(super) fn answered(&mut self, now: Instant, call: CallRef) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        record.state = State::Answered;
        record.answer = Some(now);
        let open = record.open_record(now);
        self.push(super::Output::Answered(open));
        let max = self.settings.max_call_duration;
        self.set_timer(now, call, CallTimer::MaxDuration, max);
        self.schedule_keepalive(now, call);
        self.arm_session_timers(now, call);
        self.start_recording_at_answer(call);
    }

    /// An ACK outside any server transaction: the caller's ACK of our 2xx (possibly with the
    /// late offer's answer), or a re-INVITE requester's.
    pub(super) fn on_ack(&mut self, now: Instant, request: Request) {
        let Some(&(call, side)) = self.by_call_id.get(request.call_id()) else {
            return;
        };
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let cseq = request.cseq().map_or(0, |c| c.number);
        if let Some((ok_side, ok_cseq, tx)) = record.reinvite_ok
            && ok_side == side
            && ok_cseq == cseq
        {
            record.reinvite_ok = None;
            self.transactions.acknowledge(now, tx);
            return;
        }
        let invite_cseq = record.a_invite.cseq().map_or(0, |c| c.number);
        if side != Side::A || cseq != invite_cseq {
            return;
        }
        let tx = record.a_tx;
        self.transactions.acknowledge(now, tx);
        let record = self.calls.get_mut(&call).expect("call exists");
        if record.state != State::Answered {
            return;
        }
        record.state = State::Confirmed;
        if record.held_answer.take().is_some() {
            // Late offer: the caller's ACK carries the SDP answer for the callee.
            match self.late_answer(call, &request) {
                Ok(body) => self.ack_b(call, body),
                Err(error) => {
                    tracing::warn!(call_id = request.call_id(), %error, "caller's SDP answer in the ACK unusable; ending the call");
                    self.ack_b(call, Vec::new());
                    let reason = format!("caller's SDP answer in the ACK unusable: {error}");
                    self.end_answered(now, call, HangupSide::System, reason);
                }
            }
        }
    }

    /// The caller's SDP answer of a late offer, rewritten for the callee (and the caller leg
    /// of the media session updated with it). Empty when the ACK carries none.
    fn late_answer(&mut self, call: CallRef, ack: &Request) -> Result<Vec<u8>, sdp::SdpError> {
        let Some(record) = self.calls.get_mut(&call) else {
            return Ok(Vec::new());
        };
        let (Some(_), Some(answer)) = (&record.media, body_sdp(&ack.body)?) else {
            return Ok(Vec::new());
        };
        let body = record.rewrite_to(Side::B, &ack.body)?;
        let update = record.media_update(Side::A, answer);
        if let Some(record) = self.calls.get_mut(&call) {
            record.last_sdp[Side::A.index()] = Some(ack.body.clone());
        }
        if let Some(update) = update {
            self.push(update);
        }
        Ok(body)
    }

    /// The ring timeout: CANCEL the callee, 408 to the caller.
    pub(super) fn on_ring_timeout(&mut self, now: Instant, call: CallRef) {
        let Some(record) = self.calls.get(&call) else {
            return;
        };
        if record.state != State::Proceeding {
            return;
        }
        tracing::info!(call_id = %record.key, "no answer before the ring timeout");
        self.cancel_b(now, call);
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

    /// Our 2xx to the caller was never acknowledged (Timer L of its transaction, RFC 6026;
    /// RFC 3261 section 13.3.1.4 ends the dialog with a BYE).
    pub(super) fn on_ack_timeout(&mut self, now: Instant, call: CallRef) {
        let Some(record) = self.calls.get(&call) else {
            return;
        };
        if record.state != State::Answered {
            return;
        }
        tracing::info!(call_id = %record.key, "caller never acknowledged the 200");
        let reason = "caller never acknowledged the 200 (no ACK within 64 x T1 = 32 s)".to_owned();
        self.end_answered(now, call, HangupSide::System, reason);
    }
}

/// Whether the Accept headers (present) admit `application/sdp` (or a wildcard covering it).
/// An empty Accept admits nothing.
fn accepts_sdp(headers: &crate::sip::message::Headers) -> bool {
    headers.values("Accept").any(|range| {
        matches!(
            super::messages::media_type(range).as_str(),
            "application/sdp" | "application/*" | "*/*"
        )
    })
}
