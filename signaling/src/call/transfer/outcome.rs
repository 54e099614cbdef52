//! How a transfer ends when it does not complete: failures noted for the CDR and told to
//! the transferor, a transferor that left, a call that ends first; and the target's leg
//! acknowledged, hung up and its media session released.

use std::time::Instant;

use super::{Step, TxTag};
use crate::call::{CallRef, CallTimer, Core, Disposition, Flow, Output, Side, State};
use crate::sip::message::{Method, reason_phrase};

impl Core {
    /// The transfer failed before the target answered: the original call goes on.
    pub(super) fn transfer_failed(
        &mut self,
        now: Instant,
        call: CallRef,
        status: u16,
        reason: &str,
        why: &str,
    ) {
        self.notify_transferor(now, call, status, reason);
        self.transfer_over(now, call, why);
    }

    /// The transfer failed after the target answered: the target is acknowledged and hung up,
    /// the new media session released; the original call goes on.
    pub(super) fn transfer_failed_answered(
        &mut self,
        now: Instant,
        call: CallRef,
        status: u16,
        why: &str,
    ) {
        self.let_target_go(now, call, status);
        self.release_transfer_media(call);
        self.notify_transferor(now, call, status, reason_phrase(status));
        self.transfer_over(now, call, why);
    }

    /// Forgets a failed transfer, notes it for the CDR, and ends the call if its transferor
    /// already left.
    pub(super) fn transfer_over(&mut self, now: Instant, call: CallRef, why: &str) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let Some(transfer) = record.transfer.take() else {
            return;
        };
        if let Some(current) = self.by_key.get(&transfer.key)
            && *current == call
            && transfer.key != record.key
        {
            self.by_key.remove(&transfer.key);
        }
        let note = format!(
            "a transfer to {} by the {} failed: {why}",
            transfer.target,
            transfer.by.party()
        );
        tracing::info!(call_id = %record.key, %note, "transfer failed");
        record.transfer_notes.push(note);
        self.push(Output::Transfer { outcome: "failed" });
        if transfer.transferor_gone {
            let hangup = transfer.by.hangup();
            let reason = format!("the {} hung up to transfer the call", transfer.by.party());
            if let Some(record) = self.calls.get_mut(&call) {
                record.state = State::Ended;
            }
            self.send_bye(now, call, transfer.by.other());
            self.finish(now, call, Disposition::Answered, 200, hangup, reason);
        }
    }

    /// The transferor hung up while its transfer is under way: the transfer goes on.
    /// Returns false when there is no transfer of `side` (the BYE ends the call as usual).
    pub(in crate::call) fn transferor_left(&mut self, call: CallRef, side: Side) -> bool {
        let Some(transfer) = self
            .calls
            .get_mut(&call)
            .and_then(|r| r.transfer.as_mut())
            .filter(|t| t.by == side && t.step != Step::Abandoned)
        else {
            return false;
        };
        transfer.transferor_gone = true;
        true
    }

    /// Gives up a transfer when its call ends: the target is cancelled or hung up, the new
    /// media session released.
    pub(in crate::call) fn abandon_transfer(&mut self, now: Instant, call: CallRef) {
        self.stop_timer(call, CallTimer::TransferRing);
        let Some(transfer) = self.calls.get(&call).and_then(|r| r.transfer.clone()) else {
            return;
        };
        match transfer.step {
            Step::Calling { .. } => {
                let tag = TxTag {
                    call,
                    side: transfer.by,
                    flow: Flow::Hangup,
                };
                self.transactions.cancel(now, transfer.invite, tag);
                if let Some(t) = self.calls.get_mut(&call).and_then(|r| r.transfer.as_mut()) {
                    t.step = Step::Abandoned;
                }
                return;
            }
            Step::Allocating { .. } | Step::Reoffering { .. } => {
                self.let_target_go(now, call, 487);
                self.release_transfer_media(call);
            }
            Step::Abandoned => return,
        }
        if let Some(record) = self.calls.get_mut(&call) {
            record.transfer = None;
        }
        if self.by_key.get(&transfer.key) == Some(&call) {
            self.by_key.remove(&transfer.key);
        }
    }

    /// Releases the new pairing's media session (allocated, or asked for).
    pub(super) fn release_transfer_media(&mut self, call: CallRef) {
        let Some(transfer) = self.calls.get(&call).and_then(|r| r.transfer.as_ref()) else {
            return;
        };
        let endpoint = transfer.media.as_ref().map(|m| m.endpoint.clone());
        let call_id = transfer.key.clone();
        // An allocation still on its way finds no transfer when it comes back: its session is
        // then released as stale by the sweep (two listings, about 10 s).
        if let Some(endpoint) = endpoint {
            self.push(Output::ReleaseMedia { endpoint, call_id });
        }
    }

    /// A transfer that does not go through after the target answered: a new leg is
    /// acknowledged and hung up; the target of an attended transfer, whose dialog belongs to
    /// its own call, is acknowledged with the SDP it had, and stays.
    /// A phone's INVITE with `Replaces` gets `status` instead.
    pub(super) fn let_target_go(&mut self, now: Instant, call: CallRef, status: u16) {
        let Some(transfer) = self.calls.get(&call).and_then(|r| r.transfer.as_ref()) else {
            return;
        };
        let attended = transfer.attended.is_some();
        if let Some((request, tx)) = transfer.incoming.clone() {
            self.reply(now, tx, &request, status);
        } else if attended {
            let restore = self.attended_restore(call).unwrap_or_default();
            self.ack_target(call, restore);
        } else {
            self.ack_target(call, Vec::new());
            self.bye_target(now, call);
        }
    }

    /// The ACK of the target's 2xx (with `body`, the transferee's answer, when it has one).
    pub(super) fn ack_target(&mut self, call: CallRef, body: Vec<u8>) {
        let (local, branch) = (self.local(), self.ids.branch());
        let Some(transfer) = self.calls.get_mut(&call).and_then(|r| r.transfer.as_mut()) else {
            return;
        };
        if transfer.dialog.remote_tag.is_none() {
            return;
        }
        let cseq = transfer.invite_cseq;
        let (peer, mut ack) = transfer
            .dialog
            .request(Method::Ack, Some(cseq), local, &branch);
        if !body.is_empty() {
            ack.headers.push("Content-Type", "application/sdp");
        }
        ack.body = body;
        let tx = transfer.invite;
        self.transactions.set_ack(tx, &ack);
        self.send(peer, ack.to_bytes());
    }

    /// A BYE to the target of a transfer that did not go through.
    pub(super) fn bye_target(&mut self, now: Instant, call: CallRef) {
        let (local, branch) = (self.local(), self.ids.branch());
        let Some(transfer) = self.calls.get_mut(&call).and_then(|r| r.transfer.as_mut()) else {
            return;
        };
        if transfer.dialog.remote_tag.is_none() {
            return;
        }
        let by = transfer.by;
        let (peer, bye) = transfer.dialog.request(Method::Bye, None, local, &branch);
        let tag = TxTag {
            call,
            side: by,
            flow: Flow::Hangup,
        };
        self.transactions.send(now, peer, bye, tag);
    }
}
