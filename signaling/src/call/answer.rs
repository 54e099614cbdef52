//! The callee's answers to our INVITE: provisional responses (early media, reliable ones
//! PRACKed), the 2xx that answers the call (or starts a late offer), final refusals, and
//! Timer B; each from one branch of the call's forks ([`super::fork`]), and what reaches the
//! caller: the callee's responses relayed with their SDP rewritten for the relay.

use std::time::Instant;

use proto::domain::Leg;

use super::messages::relayed_response;
use super::{CallRef, CallTimer, Core, Disposition, HangupSide, Side, State};
use crate::policy::MediaMode;
use crate::sdp;
use crate::sip::message::{Method, Response};
use crate::transaction::TxId;

impl Core {
    /// The answer of one branch of our INVITE to the callee.
    pub(super) fn on_invite_response(
        &mut self,
        now: Instant,
        call: CallRef,
        tx: TxId,
        response: Response,
    ) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let Some(i) = record.forks.branch(tx) else {
            return;
        };
        let status = response.status;
        let success = (200..300).contains(&status);
        if !matches!(record.state, State::Calling | State::Proceeding) {
            if success {
                // A 2xx after the call ended on the caller's side (CANCEL raced the 200,
                // media lost, ring timeout), or of a second branch: the callee believes the
                // call is up. RFC 3261 section 15: acknowledge it and hang up (the winner's
                // retransmissions excepted).
                self.hang_up_branch(now, call, i, &response);
            }
            return;
        }
        if status < 200 {
            if status == 100 {
                record.state = State::Proceeding;
                return;
            }
            let first = record.state == State::Calling;
            record.state = State::Proceeding;
            let media = self.branch_provisional(call, i, &response);
            if !self.prack_callee(now, call, i, &response) {
                return;
            }
            if first {
                let ring = self.settings.ring_timeout;
                self.set_timer(now, call, CallTimer::Ring, ring);
                if let Some(after) = self
                    .calls
                    .get(&call)
                    .filter(|r| r.forks.forwarding.no_answer.is_some())
                    .map(|r| r.forks.forwarding.no_answer_after)
                {
                    self.set_timer(now, call, CallTimer::NoAnswer, after);
                }
            }
            let mut response = response;
            if !media {
                // Early media is the first branch's that brought SDP.
                response.body.clear();
            }
            if let Err(error) = self.relay_to_a(now, call, &response) {
                tracing::info!(status, %error, "provisional response's SDP unusable; relayed without it");
                let mut bare = response;
                bare.body.clear();
                let _ = self.relay_to_a(now, call, &bare);
            }
            return;
        }
        if success {
            self.branch_won(now, call, i, &response);
            self.callee_timer(call, &response);
            self.stop_timer(call, CallTimer::Ring);
            self.stop_timer(call, CallTimer::NoAnswer);
            let record = self.calls.get_mut(&call).expect("call exists");
            let late_offer = (record.mode != MediaMode::Direct && !record.allocation_requested)
                .then(|| {
                    std::str::from_utf8(&response.body)
                        .ok()
                        .and_then(|t| sdp::parse(t).ok())
                })
                .flatten();
            if let Some(mut offer) = late_offer {
                offer.signaling_ip = Some(record.b.peer.addr.ip());
                record.state = State::LateOfferPending;
                record.held_answer = Some(response);
                record.allocation_requested = true;
                let call_id = record.key.clone();
                let reflect = record.mode == MediaMode::Reflect;
                self.push(super::Output::Allocate {
                    call,
                    call_id,
                    offer,
                    offer_leg: Leg::Callee,
                    reflect,
                });
                return;
            }
            self.ack_b(call, Vec::new());
            match self.relay_to_a(now, call, &response) {
                Ok(()) => self.answered(now, call),
                Err(error) => {
                    // Passing the callee's own SDP on would take the media around the relay:
                    // a call with no audio that nobody could explain. Refuse it instead.
                    let reason = format!("callee's SDP answer unusable: {error}");
                    tracing::warn!(%reason, "answer refused");
                    if let Some(record) = self.calls.get_mut(&call) {
                        record.state = State::Ended;
                    }
                    self.send_bye(now, call, Side::B);
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
            return;
        }
        if status == 422 && self.retry_after_422(call, &response) {
            let target = self.calls.get_mut(&call).map(|r| {
                r.forks.retire(i);
                r.forks.branches[i].target.clone()
            });
            if let (Some(template), Some(target)) = (self.invite_template(now, call), target) {
                self.send_branch(now, call, &template, target);
            }
            return;
        }
        if let Some(best) = self.branch_failed(now, call, i, response) {
            self.callee_refused(now, call, &best);
        }
    }

    /// Every branch failed: the best final answer goes to the caller (its Contacts too, for
    /// a 3xx that was not followed) and the call ends.
    fn callee_refused(&mut self, now: Instant, call: CallRef, answer: &Response) {
        self.stop_timer(call, CallTimer::Ring);
        self.stop_timer(call, CallTimer::NoAnswer);
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        record.state = State::Failed;
        let status = answer.status;
        let mut relayed = super::response(
            &record.a_invite,
            status,
            &answer.reason,
            Some(&record.a.local_tag),
        );
        for name in ["Retry-After", "Warning", "Reason"] {
            if let Some(value) = answer.headers.get(name) {
                relayed.headers.push(name, value);
            }
        }
        if (300..400).contains(&status) {
            for contact in answer.headers.all("Contact") {
                relayed.headers.push("Contact", contact);
            }
        }
        let tx = record.a_tx;
        self.transactions.respond(now, tx, &relayed);
        let reason = format!("callee answered {status} {}", answer.reason);
        let disposition = Disposition::of_refusal(status);
        self.finish(now, call, disposition, status, HangupSide::Callee, reason);
    }

    /// Timer B of one branch: that target never answered at all.
    pub(super) fn on_invite_timeout(&mut self, now: Instant, call: CallRef, tx: TxId) {
        let Some(record) = self.calls.get(&call) else {
            return;
        };
        let Some(i) = record.forks.branch(tx) else {
            return;
        };
        if !matches!(record.state, State::Calling | State::Proceeding) {
            return;
        }
        tracing::info!(call_id = %record.key, contact = %record.forks.branches[i].target.uri, "a callee branch never answered the INVITE (Timer B)");
        // Not a response of the callee's: it has no headers, and is never passed on as such.
        let silence = Response {
            status: 408,
            reason: "Request Timeout".into(),
            headers: crate::sip::message::Headers::new(),
            body: Vec::new(),
        };
        let Some(best) = self.branch_failed(now, call, i, silence) else {
            return;
        };
        if best.headers.get("Via").is_some() {
            return self.callee_refused(now, call, &best);
        }
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

    /// Acknowledges the callee's 2xx (RFC 3261 section 13.2.2.4): a request of the dialog,
    /// resent by the INVITE transaction for every retransmitted 2xx.
    pub(super) fn ack_b(&mut self, call: CallRef, body: Vec<u8>) {
        let local = self.local();
        let branch = self.ids.branch();
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let cseq = record.b_invite_cseq;
        let (peer, mut ack) = record.b.request(Method::Ack, Some(cseq), local, &branch);
        if !body.is_empty() {
            ack.headers.push("Content-Type", "application/sdp");
        }
        ack.body = body;
        if let Some(tx) = record.b_tx {
            self.transactions.set_ack(tx, &ack);
        }
        self.send(peer, ack.to_bytes());
    }

    /// Passes a provisional or 2xx response from the callee to the caller, with the SDP
    /// rewritten to the caller leg's ports, and updates the callee leg of the media session.
    /// An SDP that cannot be rewritten is an error, never passed on as it is.
    pub(super) fn relay_to_a(
        &mut self,
        now: Instant,
        call: CallRef,
        response: &Response,
    ) -> Result<(), sdp::SdpError> {
        let contact = self.contact();
        let Some(record) = self.calls.get_mut(&call) else {
            return Ok(());
        };
        let mut body = response.body.clone();
        let mut update = None;
        if record.media.is_some() && !body.is_empty() {
            let answer = super::messages::body_sdp(&body)?.expect("a body");
            body = record.rewrite_to(Side::A, &body)?;
            record.last_sdp[Side::B.index()] = Some(response.body.clone());
            update = record.media_update(Side::B, answer);
        }
        let mut relayed = relayed_response(
            &record.a_invite,
            response,
            Some(&record.a.local_tag),
            &contact,
            body,
        );
        let tx = record.a_tx;
        let reliable = record.reliability.reliable(&relayed);
        if (200..300).contains(&relayed.status) {
            self.caller_timer(call, &mut relayed);
        }
        if let Some(update) = update {
            self.push(update);
        }
        if reliable {
            self.send_reliable(now, call, relayed);
        } else {
            if relayed.status >= 200 {
                self.settle_reliable(call);
            }
            self.transactions.respond(now, tx, &relayed);
        }
        Ok(())
    }
}
