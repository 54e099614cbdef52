//! An INVITE with `Replaces` from a phone (RFC 3891): a phone that does the attended transfer
//! itself, or takes over a call, names one of our confirmed dialogs; its sender takes that
//! dialog's party's place in the call. As a B2BUA we run it as a transfer whose target came
//! to us: the new phone's offer goes on a new media session and to the other party in a
//! re-INVITE, that party's answer comes back in our 2xx to the new phone, and the replaced
//! party gets a BYE. The old pairing's row says `replaced by dave (INVITE with Replaces)`.
//!
//! The INVITE is authenticated like any (digest unless trusted) and must come from one of the
//! call's own users (the replaced party's or the other one's) or a trusted source: a stranger
//! who learned a Call-ID and tags cannot take a call over (403). A `Replaces` that names no
//! confirmed dialog of ours gets 481, one of a call with an offer under way 491, an INVITE
//! without an SDP offer 488. Early dialogs (call pickup of a ringing phone) are not matched
//! (481).

use std::time::Instant;

use super::attended::parse_replaces;
use super::{Step, Transfer};
use crate::call::messages::{relayed_response, response};
use crate::call::{CallRef, Core, Flow, Output, State, TxTag};
use crate::dialog::Dialog;
use crate::policy::MediaMode;
use crate::sip::Peer;
use crate::sip::message::{Request, Response};
use crate::transaction::TxId;

impl Core {
    /// A new INVITE carrying `Replaces`, from `caller` (authenticated); true when it was
    /// taken care of here (answered, or a replacement started).
    pub(in crate::call) fn on_replacing_invite(
        &mut self,
        now: Instant,
        from: Peer,
        tx: TxId,
        request: &Request,
        caller: &str,
    ) -> bool {
        let Some(value) = request.headers.get("Replaces") else {
            return false;
        };
        let refuse = |core: &mut Self, status: u16, why: &str| {
            tracing::info!(
                call_id = request.call_id(),
                status,
                why,
                replaces = value,
                "INVITE with Replaces refused"
            );
            core.reply(now, tx, request, status);
            core.push(Output::Transfer { outcome: "refused" });
            true
        };
        let replaces = match parse_replaces(value) {
            Ok(replaces) => replaces,
            Err((status, _)) => return refuse(self, status, "unreadable Replaces"),
        };
        let Some(&(call, side)) = self.by_call_id.get(replaces.call_id.as_str()) else {
            return refuse(self, 481, "Replaces names no dialog of ours");
        };
        let Some(record) = self.calls.get(&call) else {
            return refuse(self, 481, "Replaces names no dialog of ours");
        };
        let matches = replaces.names(record.dialog_of(side));
        if !matches || record.finished || record.state != State::Confirmed {
            return refuse(self, 481, "Replaces names no confirmed dialog of ours");
        }
        if record.transfer.is_some() || record.reinvite.is_some() || record.relocating.is_some() {
            return refuse(self, 491, "the call has an offer under way");
        }
        let trusted = self
            .settings
            .trusted
            .iter()
            .any(|c| c.contains(from.addr.ip()));
        if !trusted && caller != record.caller && caller != record.callee {
            return refuse(
                self,
                403,
                "the INVITE with Replaces is not from a user of the call",
            );
        }
        if crate::call::messages::body_sdp(&request.body)
            .ok()
            .flatten()
            .is_none()
        {
            return refuse(self, 488, "an INVITE with Replaces needs an SDP offer");
        }
        let number = record.transfers + 1;
        let key = record.pairing_key(number);
        let mode = record.mode;
        let tag = self.ids.tag();
        let trying = response(request, 100, "Trying", None);
        self.transactions.respond(now, tx, &trying);
        self.transactions.set_tag(
            tx,
            TxTag {
                call,
                side,
                flow: Flow::ReInviteAnswer,
            },
        );
        let offer = Response {
            status: 200,
            reason: "OK".into(),
            headers: request.headers.clone(),
            body: request.body.clone(),
        };
        tracing::info!(
            call_id = request.call_id(),
            replaced = side.party(),
            by = caller,
            "INVITE with Replaces taken"
        );
        let invite_cseq = request.cseq().map_or(1, |c| c.number);
        if let Some(record) = self.calls.get_mut(&call) {
            record.transfers = number;
            let mut transfer = Transfer::new(
                side,
                caller.to_owned(),
                key.clone(),
                Dialog::uas(request, tag, from),
                tx,
                invite_cseq,
                Step::Allocating { ok: offer.clone() },
                None,
            );
            transfer.incoming = Some((request.clone(), tx));
            record.transfer = Some(transfer);
        }
        if mode == MediaMode::Direct {
            self.reoffer_transferee(now, call, offer);
            return true;
        }
        let Ok(Some(mut sdp)) = crate::call::messages::body_sdp(&request.body) else {
            return true;
        };
        sdp.signaling_ip = Some(from.addr.ip());
        self.by_key.insert(key.clone(), call);
        let reflect = mode == MediaMode::Reflect;
        self.push(Output::Allocate {
            call,
            call_id: key,
            offer: sdp,
            offer_leg: side.leg(),
            reflect,
        });
        true
    }

    /// The replacing phone's INVITE is answered with `body` (the other party's answer,
    /// rewritten); false when the transfer has no such INVITE (its target gets an ACK).
    pub(super) fn answer_replacing(&mut self, now: Instant, call: CallRef, body: Vec<u8>) -> bool {
        let contact = self.contact();
        let Some(record) = self.calls.get_mut(&call) else {
            return false;
        };
        let Some(transfer) = record.transfer.as_ref() else {
            return false;
        };
        let Some((request, tx)) = transfer.incoming.clone() else {
            return false;
        };
        let tag = transfer.dialog.local_tag.clone();
        let by = transfer.by;
        let cseq = request.cseq().map_or(0, |c| c.number);
        let ok = Response {
            status: 200,
            reason: "OK".into(),
            headers: crate::sip::message::Headers::new(),
            body: Vec::new(),
        };
        let answer = relayed_response(&request, &ok, Some(&tag), &contact, body);
        // Its ACK is a request of the dialog that takes the replaced party's side.
        record.reinvite_ok = Some((by, cseq, tx));
        self.transactions.respond(now, tx, &answer);
        true
    }
}

/// What the call is for the replaced party: its side's name.
pub(super) fn replaced_reason(target: &str) -> String {
    format!("replaced by {target} (INVITE with Replaces)")
}

#[cfg(test)]
mod tests {
    use super::super::attended::parse_replaces;

    #[test]
    fn replaces_values_are_read_in_any_parameter_order_and_refused_when_incomplete() {
        let replaces = parse_replaces("abc@host;from-tag=f1;to-tag=t1;early-only").unwrap();
        assert_eq!(
            (
                replaces.call_id.as_str(),
                replaces.to_tag.as_str(),
                replaces.from_tag.as_str()
            ),
            ("abc@host", "t1", "f1")
        );
        assert!(parse_replaces("abc@host;to-tag=t1").is_err());
        assert!(parse_replaces(";to-tag=t1;from-tag=f1").is_err());
    }
}
