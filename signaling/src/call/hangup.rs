//! How calls end: BYE from either leg (RFC 3261 section 15), CANCEL from the caller (section
//! 9), failures answered to the caller, the media proxy ending a session, and finishing: the
//! record for the CDR, the call's timers stopped, its pending requests answered.

use std::time::Instant;

use super::messages::response;
use super::{
    CALL_TIMERS, CallId, CallRef, CallTimer, Core, Disposition, Endpoint, Flow, HangupSide, LINGER,
    Output, Side, State, TxTag,
};
use crate::sip::message::{Method, Request, reason_phrase};
use crate::transaction::TxId;

impl Core {
    pub(super) fn on_bye(
        &mut self,
        now: Instant,
        call: CallRef,
        side: Side,
        tx: TxId,
        bye: &Request,
    ) {
        let ok = response(bye, 200, "OK", None);
        self.transactions.respond(now, tx, &ok);
        if self.calls.get(&call).is_none_or(|r| r.finished) {
            // A BYE crossing ours, or a retransmission after its transaction ended.
            return;
        }
        if self.transferor_left(call, side) {
            // A transferor leaving as its transfer goes on (many phones hang up right after
            // the 202): the transfer decides how the call ends.
            return;
        }
        let hangup = side.hangup();
        let reason = format!("BYE from the {}", hangup.as_str());
        let Some(record) = self.calls.get(&call) else {
            return;
        };
        match (record.state.answered(), side) {
            (true, _) => self.end_on(now, call, side, hangup, reason),
            // The caller may end an early dialog with BYE (RFC 3261 section 15): like a
            // CANCEL, the callee's INVITE is cancelled and the caller's answered 487.
            (false, Side::A) => {
                self.cancel_b(now, call);
                self.fail_a(now, call, 487, Disposition::Cancelled, hangup, reason);
            }
            // A callee must not BYE an early dialog; if it does it is gone all the same.
            (false, Side::B) => {
                self.fail_a(now, call, 480, Disposition::Failed, hangup, reason);
            }
        }
    }

    pub(super) fn on_cancel(&mut self, now: Instant, call: CallRef, tx: TxId, cancel: &Request) {
        let ok = response(cancel, 200, "OK", None);
        self.transactions.respond(now, tx, &ok);
        let Some(record) = self.calls.get(&call) else {
            return;
        };
        // RFC 3261 section 9.2: only a CANCEL of the INVITE still pending has an effect.
        let target = self.transactions.cancelled_invite(cancel).map(|(t, _)| t);
        if target != Some(record.a_tx) {
            return;
        }
        match record.state {
            State::MediaPending | State::Calling | State::Proceeding => self.cancel_b(now, call),
            State::LateOfferPending => self.drop_held_answer(now, call),
            _ => return,
        }
        let reason = "CANCEL from the caller".to_owned();
        self.fail_a(
            now,
            call,
            487,
            Disposition::Cancelled,
            HangupSide::Caller,
            reason,
        );
    }

    /// Cancels our INVITE to the callee: every branch still waiting for a final response.
    pub(super) fn cancel_b(&mut self, now: Instant, call: CallRef) {
        self.cancel_branches(now, call, None);
    }

    /// Answers the caller with a final error and ends the call.
    pub(super) fn fail_a(
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
        if record.state != State::Ended {
            record.state = State::Failed;
        }
        let answer = response(
            &record.a_invite,
            status,
            reason_phrase(status),
            Some(&record.a.local_tag),
        );
        let tx = record.a_tx;
        self.transactions.respond(now, tx, &answer);
        self.finish(now, call, disposition, status, hangup, reason);
    }

    /// Ends an answered call from one side: BYE to the other.
    fn end_on(
        &mut self,
        now: Instant,
        call: CallRef,
        side: Side,
        hangup: HangupSide,
        reason: String,
    ) {
        if let Some(record) = self.calls.get_mut(&call) {
            record.state = State::Ended;
        }
        self.send_bye(now, call, side.other());
        self.finish(now, call, Disposition::Answered, 200, hangup, reason);
    }

    /// Ends an answered call from the middle: BYE to both legs.
    pub(super) fn end_answered(
        &mut self,
        now: Instant,
        call: CallRef,
        hangup: HangupSide,
        reason: String,
    ) {
        if let Some(record) = self.calls.get_mut(&call) {
            record.state = State::Ended;
        }
        self.send_bye(now, call, Side::A);
        self.send_bye(now, call, Side::B);
        self.finish(now, call, Disposition::Answered, 200, hangup, reason);
    }

    /// Sends a BYE within the dialog of `side`.
    pub(super) fn send_bye(&mut self, now: Instant, call: CallRef, side: Side) {
        let local = self.local();
        let branch = self.ids.branch();
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let (peer, bye) = record
            .dialog(side)
            .request(Method::Bye, None, local, &branch);
        let tag = TxTag {
            call,
            side,
            flow: Flow::Hangup,
        };
        self.transactions.send(now, peer, bye, tag);
    }

    pub(super) fn on_max_duration(&mut self, now: Instant, call: CallRef) {
        let Some(record) = self.calls.get(&call) else {
            return;
        };
        if !record.state.answered() {
            return;
        }
        let reason = format!(
            "maximum call duration ({} s) reached",
            self.settings.max_call_duration.as_secs()
        );
        self.end_answered(now, call, HangupSide::System, reason);
    }

    pub(super) fn on_media_ended(
        &mut self,
        now: Instant,
        endpoint: &Endpoint,
        call_id: &CallId,
        reason: &str,
    ) {
        let Some(&call) = self.by_key.get(call_id) else {
            return;
        };
        let Some(record) = self.calls.get(&call) else {
            return;
        };
        // Only the call's own node speaks for it: a node the call moved away from times its
        // abandoned session out, which says nothing about the call.
        if record.finished
            || record
                .media
                .as_ref()
                .is_some_and(|m| m.endpoint != *endpoint)
        {
            return;
        }
        tracing::info!(%call_id, reason, "media proxy ended the session; ending the call");
        if reason == "shutdown" && record.state.answered() {
            // The node shut down with the call still up (its drain grace ran out): the call
            // can live on another node.
            self.relocate(now, call, "shut down with the call still up");
            return;
        }
        let why = format!("media proxy ended the session ({reason})");
        match record.state {
            State::Answered | State::Confirmed => {
                self.end_answered(now, call, HangupSide::System, why);
            }
            State::Calling | State::Proceeding | State::MediaPending => {
                self.cancel_b(now, call);
                self.fail_a(now, call, 503, Disposition::Failed, HangupSide::System, why);
            }
            State::LateOfferPending => {
                self.drop_held_answer(now, call);
                self.fail_a(now, call, 503, Disposition::Failed, HangupSide::System, why);
            }
            State::Failed | State::Ended => {}
        }
    }

    /// A leg stopped answering (keepalive): hang up the other leg and end the call.
    pub(super) fn peer_gone(&mut self, now: Instant, call: CallRef, side: Side) {
        let Some(record) = self.calls.get(&call) else {
            return;
        };
        if record.finished {
            return;
        }
        tracing::info!(call_id = %record.key, side = ?side, "leg stopped answering keepalives; ending the call");
        let reason = format!(
            "the {} stopped answering in-dialog OPTIONS keepalives",
            side.party()
        );
        self.end_on(now, call, side, HangupSide::System, reason);
    }

    /// Emits the call's record once, stops its timers, answers what it still owes, and keeps
    /// it a while for crossing requests and retransmissions.
    pub(super) fn finish(
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
        // RFC 3261 section 15.1.2: pending requests of the dialog get 487.
        let pending = record.reinvite.take();
        let out = record.record(now, disposition, status, hangup, reason);
        let disposition = out.disposition;
        if let Some(pending) = pending {
            self.reply(now, pending.server, &pending.request, 487);
        }
        self.abandon_relayed(now, call);
        self.abandon_transfer(now, call);
        self.settle_reliable(call);
        for timer in CALL_TIMERS {
            self.stop_timer(call, timer);
        }
        self.set_timer(now, call, CallTimer::Linger, LINGER);
        tracing::info!(
            call_id = %out.call_id,
            disposition = disposition.as_str(),
            hangup = hangup.as_str(),
            reason = %out.end_reason,
            "call ended"
        );
        self.push(Output::Finish(out));
    }
}
