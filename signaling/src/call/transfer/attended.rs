//! Attended transfer (RFC 3891 `Replaces` in a REFER's `Refer-To`): the transferor talks to
//! the target in a call of its own first, then asks us to join the transferee and the target.
//! The target is re-INVITEd without SDP on its own dialog (no new leg), the flow goes on as a
//! blind transfer's from its offer, and at the end its dialog joins the transferee's call, the
//! transferor is hung up in both calls, and the other call's record says where it went.
//!
//! `Replaces` must name a confirmed dialog of ours that is the transferor's own (same address
//! as the REFER), in a call free of other offers: a REFER cannot take over someone else's call
//! (481 otherwise). A transfer that fails after the target answered leaves the target where it
//! was: its ACK carries the SDP it had.

use std::time::Instant;

use super::{Attended, Step, Transfer};
use crate::call::{CallId, CallRef, Core, Disposition, Flow, Side, State, TxTag};
use crate::sip::message::Request;
use crate::transaction::TxId;

/// What a `Replaces` names: a dialog by Call-ID and tags (RFC 3891 section 6.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Replaces {
    pub(super) call_id: String,
    pub(super) to_tag: String,
    pub(super) from_tag: String,
}

impl Replaces {
    /// Whether this names `dialog`: its Call-ID, and its two tags (in either order: phones
    /// differ on whose tag is `to-tag`).
    pub(super) fn names(&self, dialog: &crate::dialog::Dialog) -> bool {
        let ours = (
            Some(dialog.local_tag.as_str()),
            dialog.remote_tag.as_deref(),
        );
        let (to, from) = (Some(self.to_tag.as_str()), Some(self.from_tag.as_str()));
        dialog.call_id.as_str() == self.call_id && (ours == (to, from) || ours == (from, to))
    }
}

/// `%XX` escapes of a URI header value decoded (an unreadable escape stays as it is).
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).and_then(|b| hex(*b)),
            bytes.get(i + 2).and_then(|b| hex(*b)),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `Replaces` of a Refer-To URI's headers (`?Replaces=...&...`), if any.
pub(super) fn replaces_of(headers: &str) -> Option<Result<Replaces, (u16, &'static str)>> {
    let value = headers.split('&').find_map(|h| {
        let (name, value) = h.split_once('=')?;
        name.eq_ignore_ascii_case("Replaces").then_some(value)
    })?;
    Some(parse_replaces(&unescape(value)))
}

/// A `Replaces` value: `call-id;to-tag=...;from-tag=...` (RFC 3891 section 6.1).
pub(super) fn parse_replaces(value: &str) -> Result<Replaces, (u16, &'static str)> {
    let mut parts = value.split(';').map(str::trim);
    let call_id = parts.next().unwrap_or("").to_owned();
    let (mut to_tag, mut from_tag) = (None, None);
    for part in parts {
        match part.split_once('=') {
            Some((name, tag)) if name.eq_ignore_ascii_case("to-tag") => to_tag = Some(tag),
            Some((name, tag)) if name.eq_ignore_ascii_case("from-tag") => from_tag = Some(tag),
            _ => {}
        }
    }
    match (call_id.is_empty(), to_tag, from_tag) {
        (false, Some(to), Some(from)) => Ok(Replaces {
            call_id,
            to_tag: to.to_owned(),
            from_tag: from.to_owned(),
        }),
        _ => Err((400, "Bad Request (Replaces)")),
    }
}

impl Core {
    /// The transferor's other call that an attended transfer's `Replaces` names: it must be
    /// up, free of other offers, and the transferor's own (its dialog with us, from the same
    /// address as the REFER): a REFER cannot take over someone else's call.
    pub(super) fn attended_target(
        &self,
        call: CallRef,
        side: Side,
        replaces: &Replaces,
    ) -> Result<Attended, &'static str> {
        let &(other, transferor) = self
            .by_call_id
            .get(replaces.call_id.as_str())
            .ok_or("Replaces names no dialog of ours")?;
        let record = self
            .calls
            .get(&other)
            .ok_or("Replaces names no dialog of ours")?;
        let dialog = record.dialog_of(transferor);
        if other == call || !replaces.names(dialog) {
            return Err("Replaces names no dialog of the transferor's");
        }
        if record.finished || record.state != State::Confirmed {
            return Err("the dialog Replaces names is not confirmed");
        }
        if record.transfer.is_some() || record.reinvite.is_some() || record.relocating.is_some() {
            return Err("the call Replaces names has an offer under way");
        }
        let Some(this) = self.calls.get(&call) else {
            return Err("no call");
        };
        let referrer = this.dialog_of(side).peer.addr.ip();
        if dialog.peer.addr.ip() != referrer {
            return Err("the dialog Replaces names is not the transferor's");
        }
        Ok(Attended {
            call: other,
            transferor,
        })
    }

    /// An attended transfer: the other party of the transferor's other call (the target)
    /// is re-INVITEd without SDP on its own dialog, and the flow goes on as a blind
    /// transfer's from the target's offer.
    pub(super) fn start_attended(
        &mut self,
        now: Instant,
        call: CallRef,
        side: Side,
        tx: TxId,
        request: &Request,
        other: Attended,
    ) {
        let (local, branch) = (self.local(), self.ids.branch());
        let Some(record) = self.calls.get(&call) else {
            return;
        };
        let number = record.transfers + 1;
        let key = record.pairing_key(number);
        let event = (request.headers.get("Refer-Sub").map(str::trim) != Some("false"))
            .then(|| "refer".to_owned());
        let Some(joined) = self.calls.get(&other.call) else {
            return;
        };
        let target_side = other.transferor.other();
        let target = joined.party_name(target_side);
        // The target's dialog, carried over; its CSeq jumps ahead of anything the other
        // call may still send on its own copy until the join.
        let mut dialog = joined.dialog_of(target_side).clone();
        dialog.local_cseq = dialog.local_cseq.saturating_add(100);
        self.accept_refer(now, tx, request, event.is_some());
        tracing::info!(call_id = request.call_id(), by = side.party(), %target, "attended transfer accepted");
        let (peer, invite) = dialog.invite(local, &branch, "application/sdp", Vec::new());
        let invite_cseq = invite.cseq().map_or(1, |c| c.number);
        let tag = TxTag {
            call,
            side,
            flow: Flow::Transfer,
        };
        let invite_tx = self.transactions.send(now, peer, invite, tag);
        if let Some(record) = self.calls.get_mut(&call) {
            record.transfers = number;
            let mut transfer = Transfer::new(
                side,
                target,
                key,
                dialog,
                invite_tx,
                invite_cseq,
                Step::Calling { proceeding: true },
                event,
            );
            transfer.attended = Some(other);
            record.transfer = Some(transfer);
        }
        self.notify_transferor(now, call, 100, "Trying");
    }

    /// The other call of an attended transfer once its target joined this one: its
    /// transferor is hung up, its target is not (its dialog lives on in the new pairing),
    /// and its record says where it went.
    pub(super) fn join_done(&mut self, now: Instant, other: &Attended, key: &CallId) {
        let Some(record) = self.calls.get_mut(&other.call) else {
            return;
        };
        record.state = State::Ended;
        record.transferred_to = Some(key.clone());
        let by = other.transferor;
        let (name, target) = (record.party_name(by), record.party_name(by.other()));
        let hangup = by.hangup();
        let reason = format!(
            "transferred (attended) by the {} ({name}): {target} joined the other call",
            by.party()
        );
        self.send_bye(now, other.call, by);
        self.finish(now, other.call, Disposition::Answered, 200, hangup, reason);
    }

    /// The SDP the target of an attended transfer had before it was re-INVITEd: what its ACK
    /// carries when the transfer fails after its 2xx, so its media stays where it was.
    pub(super) fn attended_restore(&self, call: CallRef) -> Option<Vec<u8>> {
        let other = self
            .calls
            .get(&call)?
            .transfer
            .as_ref()?
            .attended
            .as_ref()?;
        let joined = self.calls.get(&other.call)?;
        let sdp = joined.last_sdp[other.transferor.index()].clone()?;
        match &joined.media {
            Some(_) => joined.rewrite_to(other.transferor.other(), &sdp).ok(),
            None => Some(sdp),
        }
    }
}
