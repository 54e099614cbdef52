//! Requests relayed across the legs of an answered call: INFO (RFC 6086; DTMF as
//! `application/dtmf-relay`, IVR and phone features), MESSAGE (RFC 3428), NOTIFY (RFC 6665)
//! and UPDATE (RFC 3311). The B2BUA sends each to the other leg on that leg's dialog, bodies
//! and the headers that give them meaning untouched, and answers the sender with the other
//! leg's final response (its status, reason and body); 408 when the other leg does not
//! answer. Before the answer INFO, MESSAGE and NOTIFY keep 501: the early dialog of a call is
//! not one they may travel on here.
//!
//! UPDATE is the one whose body is not untouched: its SDP offer is rewritten through the
//! media proxy like a re-INVITE's (the same relay ports, the requester's leg pointed at its
//! new SDP, which reopens the leg's learning window) and so is the answer in the other leg's
//! 2xx. An offer while another offer of the call is pending (a re-INVITE, a move, another
//! UPDATE) is glare: 491 (RFC 3311 section 5.2). Before the answer, an UPDATE with an offer
//! gets `500` with `Retry-After` (the INVITE's own offer is still unanswered, section 5.2) and
//! one without SDP (a session refresh) is answered 200 here.

use std::time::Instant;

use super::messages::{body_sdp, response};
use super::{CallRef, Core, Flow, Side, TxTag};
use crate::sip::message::{Method, Request, Response};
use crate::transaction::TxId;

/// Headers that travel with a relayed request: what its body is, and what it is about.
const CARRIED: [&str; 8] = [
    "Content-Type",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Info-Package",
    "Event",
    "Subscription-State",
    "Subject",
];

/// A request relayed to the other leg, waiting for its answer.
#[derive(Debug, Clone)]
pub(super) struct Relayed {
    /// Our transaction towards the other leg.
    client: TxId,
    /// The sender's transaction, answered with the other leg's answer.
    server: TxId,
    request: Request,
    /// The side the request came from.
    from: Side,
    /// It carries an SDP offer (an UPDATE): its answer is rewritten for the requester.
    pub(super) offer: bool,
}

/// Whether `method` is one this module relays.
pub(super) fn relays(method: &Method) -> bool {
    matches!(
        method,
        Method::Info | Method::Message | Method::Notify | Method::Update
    )
}

impl Core {
    /// `request` from `side`: relayed to the other leg when the call is answered.
    pub(super) fn relay_request(
        &mut self,
        now: Instant,
        call: CallRef,
        side: Side,
        tx: TxId,
        request: Request,
    ) {
        let update = request.method == Method::Update;
        match self.calls.get(&call) {
            None => return self.reply(now, tx, &request, 481),
            Some(record) if record.finished => return self.reply(now, tx, &request, 481),
            Some(record) if !record.state.answered() && update => {
                return self.early_update(now, tx, &request);
            }
            Some(record) if !record.state.answered() => {
                return self.reply(now, tx, &request, 501);
            }
            Some(_) => {}
        }
        if update && request.body.is_empty() {
            // A session (or target) refresh of the sender's own leg: answered here.
            return self.answer_refresh(now, call, side, tx, &request);
        }
        if update {
            self.session_refreshed(now, call, side, &request);
        }
        let mut body = request.body.clone();
        let mut offer = false;
        if update && !request.body.is_empty() {
            match self.update_offer(call, side, &request) {
                Ok(rewritten) => {
                    body = rewritten;
                    offer = true;
                }
                Err(status) => return self.reply(now, tx, &request, status),
            }
        }
        let (local, branch) = (self.local(), self.ids.branch());
        let contact = self.contact();
        let record = self.calls.get_mut(&call).expect("checked above");
        let other = side.other();
        let (peer, mut relayed) =
            record
                .dialog(other)
                .request(request.method.clone(), None, local, &branch);
        for name in CARRIED {
            for value in request.headers.all(name) {
                relayed.headers.push(name, value);
            }
        }
        if update {
            // A target refresh request (RFC 3311 section 5.1): it names where we take the
            // dialog's requests.
            relayed.headers.push("Contact", &contact);
        }
        relayed.body = body;
        let tag = TxTag {
            call,
            side: other,
            flow: Flow::Relayed,
        };
        let client = self.transactions.send(now, peer, relayed, tag);
        if let Some(record) = self.calls.get_mut(&call) {
            record.relayed.push(Relayed {
                client,
                server: tx,
                request,
                from: side,
                offer,
            });
        }
    }

    /// An UPDATE's SDP offer from `side`, rewritten for the other leg, the requester's media
    /// leg pointed at it; the status to refuse it with otherwise.
    fn update_offer(
        &mut self,
        call: CallRef,
        side: Side,
        request: &Request,
    ) -> Result<Vec<u8>, u16> {
        let record = self.calls.get(&call).ok_or(481u16)?;
        let pending_offer = record.reinvite.is_some()
            || record.relocating.is_some()
            || record.relayed.iter().any(|r| r.offer);
        if pending_offer {
            return Err(491);
        }
        if let Some(kind) = super::messages::foreign_body(request) {
            tracing::info!(call_id = request.call_id(), %kind, "UPDATE body is not SDP; 415");
            return Err(415);
        }
        let offer = body_sdp(&request.body).map_err(|error| {
            tracing::info!(call_id = request.call_id(), %error, "unusable SDP in an UPDATE; 488");
            488u16
        })?;
        let (Some(offer), Some(_)) = (offer, &record.media) else {
            return Ok(request.body.clone());
        };
        let body = record.rewrite_to(side.other(), &request.body).map_err(|error| {
            tracing::info!(call_id = request.call_id(), %error, "UPDATE SDP cannot be relayed; 488");
            488u16
        })?;
        let update = record.media_update(side, offer);
        if let Some(record) = self.calls.get_mut(&call) {
            record.last_sdp[side.index()] = Some(request.body.clone());
        }
        if let Some(update) = update {
            self.push(update);
        }
        Ok(body)
    }

    /// An UPDATE before the call is answered: one with an offer crosses the INVITE's offer,
    /// still unanswered (500 with `Retry-After`, RFC 3311 section 5.2); one without SDP
    /// changes nothing and is answered here.
    fn early_update(&mut self, now: Instant, tx: TxId, request: &Request) {
        let mut answer = if request.body.is_empty() {
            response(request, 200, "OK", None)
        } else {
            let mut refused = response(request, 500, "Server Internal Error", None);
            refused.headers.push("Retry-After", "1");
            refused
        };
        answer.headers.push("Contact", self.contact());
        self.transactions.respond(now, tx, &answer);
    }

    /// The other leg's answer to a relayed request: a final one goes back to the sender.
    pub(super) fn on_relayed_response(
        &mut self,
        now: Instant,
        call: CallRef,
        client: TxId,
        answer: &Response,
    ) {
        if answer.status < 200 {
            return;
        }
        let Some(waiting) = self.take_relayed(call, client) else {
            return;
        };
        let mut back = response(&waiting.request, answer.status, &answer.reason, None);
        for name in CARRIED.iter().filter(|n| n.starts_with("Content-")) {
            for value in answer.headers.all(name) {
                back.headers.push(name, value);
            }
        }
        back.body.clone_from(&answer.body);
        if waiting.request.method == Method::Update {
            back.headers.push("Contact", self.contact());
            if (200..300).contains(&answer.status) {
                self.stamp_session(call, waiting.from, &mut back);
            }
        }
        if waiting.offer && (200..300).contains(&answer.status) && !answer.body.is_empty() {
            match self.update_answer(call, waiting.from, &answer.body) {
                Ok(body) => back.body = body,
                Err(error) => {
                    tracing::warn!(%error, "UPDATE answer cannot be relayed; 488 to its requester");
                    return self.reply(now, waiting.server, &waiting.request, 488);
                }
            }
        }
        self.transactions.respond(now, waiting.server, &back);
    }

    /// The other leg never answered a relayed request: 408 to its sender.
    pub(super) fn on_relayed_timeout(&mut self, now: Instant, call: CallRef, client: TxId) {
        if let Some(waiting) = self.take_relayed(call, client) {
            self.reply(now, waiting.server, &waiting.request, 408);
        }
    }

    /// Answers every relayed request still waiting when its call ends: 487, like every
    /// request pending in a dialog that ends (RFC 3261 section 15.1.2).
    pub(super) fn abandon_relayed(&mut self, now: Instant, call: CallRef) {
        let waiting = self
            .calls
            .get_mut(&call)
            .map(|record| std::mem::take(&mut record.relayed))
            .unwrap_or_default();
        for relayed in waiting {
            self.reply(now, relayed.server, &relayed.request, 487);
        }
    }

    /// The other leg's SDP answer to `requester`'s UPDATE, rewritten for the requester, the
    /// answerer's media leg pointed at it.
    fn update_answer(
        &mut self,
        call: CallRef,
        requester: Side,
        body: &[u8],
    ) -> Result<Vec<u8>, crate::sdp::SdpError> {
        let Some(record) = self.calls.get_mut(&call) else {
            return Ok(body.to_vec());
        };
        let answerer = requester.other();
        let (Some(answer), Some(_)) = (body_sdp(body)?, &record.media) else {
            return Ok(body.to_vec());
        };
        let rewritten = record.rewrite_to(requester, body)?;
        record.last_sdp[answerer.index()] = Some(body.to_vec());
        if let Some(update) = record.media_update(answerer, answer) {
            self.push(update);
        }
        Ok(rewritten)
    }

    fn take_relayed(&mut self, call: CallRef, client: TxId) -> Option<Relayed> {
        let record = self.calls.get_mut(&call)?;
        let at = record.relayed.iter().position(|r| r.client == client)?;
        Some(record.relayed.swap_remove(at))
    }
}
