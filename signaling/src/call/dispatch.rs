//! Dispatch: each input and each expired timer to the flow that handles it, and the
//! admission of requests (abuse limits, required extensions, in-dialog or new) before any
//! flow sees them.

use std::time::Instant;

use super::messages::response;
use super::{ALLOW, CallRef, CallTimer, Core, Flow, Input, Output, Side, TxTag};
use crate::access::guard::Admission;
use crate::sip::Peer;
use crate::sip::header::NameAddr;
use crate::sip::message::{Headers, Message, Method, ParseError, Request, Response};
use crate::transaction::{Expired, Received, TxId};

impl Core {
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
        // implement ([`super::SUPPORTED`] are those we do) is refused with 420, naming it.
        // ACK and CANCEL get no answer of their own.
        if !matches!(request.method, Method::Ack | Method::Cancel) {
            let required: Vec<&str> = request
                .headers
                .values("Require")
                .chain(request.headers.values("Proxy-Require"))
                .map(str::trim)
                .filter(|option| !option.is_empty())
                .filter(|option| {
                    !super::SUPPORTED
                        .iter()
                        .any(|known| known.eq_ignore_ascii_case(option))
                })
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
        if record.dialog(side).call_id.as_str() != request.call_id() {
            // A dialog that left the call (a transferor's): its BYE crossing ours is
            // answered, anything else no longer has a dialog here.
            let status = if request.method == Method::Bye {
                200
            } else {
                481
            };
            self.reply(now, tx, &request, status);
            return;
        }
        if !matches!(request.method, Method::Cancel) && !tags_match(record.dialog(side), &request) {
            // RFC 3261 section 12.2.2: a request whose tags name no dialog of ours (someone
            // who knows the Call-ID but is not a party) gets 481.
            tracing::info!(
                call_id = request.call_id(),
                "in-dialog request with foreign tags; 481"
            );
            self.reply(now, tx, &request, 481);
            return;
        }
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
            (_, Method::Refer) => self.on_refer(now, call, side, tx, request),
            (Side::A, Method::Prack) => self.on_prack(now, call, tx, &request),
            (_, method) if super::relayed::relays(method) => {
                self.relay_request(now, call, side, tx, request);
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
            Flow::Invite => self.on_invite_response(now, tag.call, answer.tx, answer.response),
            Flow::ReInvite => {
                self.on_reinvite_response(now, tag.call, tag.side, answer.tx, answer.response)
            }
            Flow::Relocate => {
                self.on_relocate_response(now, tag.call, tag.side, answer.tx, answer.response)
            }
            Flow::Keepalive => {
                self.on_keepalive_response(now, tag.call, tag.side, &answer.response)
            }
            Flow::Relayed => {
                self.on_relayed_response(now, tag.call, answer.tx, &answer.response);
            }
            Flow::Transfer => {
                self.on_transfer_response(now, tag.call, answer.tx, answer.response);
            }
            Flow::TransferReInvite => self.on_transfer_reoffer_response(
                now,
                tag.call,
                tag.side,
                answer.tx,
                answer.response,
            ),
            Flow::Refresh => {
                self.on_refresh_response(now, tag.call, tag.side, answer.tx, &answer.response)
            }
            Flow::Hangup | Flow::Answer | Flow::ReInviteAnswer | Flow::Notify | Flow::Prack => {}
        }
    }

    fn on_expired(&mut self, now: Instant, expired: Expired<TxTag>) {
        match expired {
            Expired::NoResponse { tx, tag, .. } => match tag.flow {
                Flow::Invite => self.on_invite_timeout(now, tag.call, tx),
                Flow::ReInvite => self.on_reinvite_timeout(now, tag.call, tx),
                Flow::Relocate => self.on_relocate_timeout(now, tag.call, tag.side, tx),
                Flow::Relayed => self.on_relayed_timeout(now, tag.call, tx),
                Flow::Transfer | Flow::TransferReInvite => {
                    self.on_transfer_timeout(now, tag.call, tx);
                }
                Flow::Refresh => self.on_refresh_timeout(now, tag.call, tag.side, tx),
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
            CallTimer::TransferRing => self.on_transfer_ring_timeout(now, call),
            CallTimer::NoAnswer => self.on_no_answer_forward(now, call),
            CallTimer::Reliable => self.on_reliable_timer(now, call),
            CallTimer::SessionRefresh(side) => self.send_refresh(now, call, side),
            CallTimer::SessionExpiry(side) => self.on_session_expired(now, call, side),
            CallTimer::Linger => {
                if let Some(record) = self.calls.remove(&call) {
                    let dialogs = [&record.a.call_id, &record.b.call_id];
                    for call_id in dialogs.into_iter().chain(&record.departed) {
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

/// Whether a request's tags are those of `dialog`: its To tag ours (when it has one) and its
/// From tag the peer's (when the dialog knows it).
fn tags_match(dialog: &crate::dialog::Dialog, request: &Request) -> bool {
    let tag = |name: &str| {
        NameAddr::parse(request.headers.get(name).unwrap_or(""))
            .and_then(|n| n.tag().map(str::to_owned))
    };
    let to_ok = tag("To").is_none_or(|t| t == dialog.local_tag);
    let from_ok = match (&dialog.remote_tag, tag("From")) {
        (Some(ours), Some(theirs)) => *ours == theirs,
        _ => true,
    };
    to_ok && from_ok
}

/// Who a request says it is: its credentials' user name, else its To user (REGISTER) or
/// From user (anything else).
fn claimed_user(request: &Request) -> Option<String> {
    let credentials = request
        .headers
        .all("Authorization")
        .chain(request.headers.all("Proxy-Authorization"))
        .find_map(crate::access::auth::Credentials::parse);
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
