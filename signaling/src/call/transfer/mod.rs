//! Transfer handled by the B2BUA (RFC 3515 REFER, RFC 3892 Referred-By), as Asterisk and
//! FreeSWITCH do it rather than passing the REFER on: the phone that sends the REFER (the
//! transferor) leaves the call, the other party (the transferee) stays and is connected to the
//! REFER's target by a new leg that this B2BUA places like any call.
//!
//! The flow, with the transferor X on one side of the call and the transferee Y on the other:
//!
//! 1. X's REFER is checked (one routable `Refer-To`, a call that is up, no other offer or
//!    transfer under way, the per-call transfer budget, the transferor's abuse budget) and
//!    answered 202; X is told `100 Trying` in a NOTIFY (`message/sipfrag`, RFC 3515 section
//!    2.4.5) unless it asked for no subscription (`Refer-Sub: false`, RFC 4488).
//! 2. An INVITE without SDP goes to the target T (a late offer: T offers, Y answers, so the two
//!    phones that will talk negotiate their codecs themselves, RFC 3725 flow I). T's
//!    provisional responses become NOTIFYs (`180 Ringing`).
//! 3. T's 2xx: in relay modes a new media session is allocated for the new pairing (its own
//!    key, so its own CDR with its own figures, and every leg's learning window starts anew);
//!    Y is re-INVITEd with T's offer rewritten to the new session's ports.
//! 4. Y's 2xx: T gets its ACK with Y's answer (rewritten), X a NOTIFY `200 OK` and a BYE. The
//!    original pairing's record is written (`transferred_to` the new key; ended by the
//!    transferor), and the call goes on as the new pairing under the new key
//!    (`transferred_from` the old one): T takes X's side and Y keeps its own.
//!
//! Any failure (T refuses, rings out, never answers; Y refuses the re-INVITE; the media
//! proxy cannot allocate) leaves the original call up, tells X the final status in the
//! NOTIFY and is noted in the call's CDR (`end_reason`). A transferor that hung up meanwhile
//! does not stop the transfer; if it then fails, the transferee is hung up.

use std::time::Instant;

use proto::domain::Leg;

use super::messages::{OriginAnchor, body_sdp, origin_of, response, rewrite_for};
use super::{
    CallId, CallRef, CallTimer, Core, Disposition, Flow, MediaError, MediaPlan, Output, Side, TxTag,
};
use crate::dialog::Dialog;
use crate::policy::MediaMode;
use crate::sip::header::NameAddr;
use crate::sip::message::{Method, Request, Response};
use crate::sip::uri::{Uri, host_text};
use crate::transaction::TxId;

mod attended;
mod outcome;
mod replaces;

use self::attended::{Replaces, replaces_of};

/// Transfers one call may make: a phone looping REFERs cannot place calls without end.
pub(super) const MAX_TRANSFERS: u8 = 8;

/// Where a transfer is.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// Our INVITE to the target is out (`Proceeding` after its first provisional).
    Calling { proceeding: bool },
    /// The target answered with its offer (`ok`); the new media session is being allocated.
    Allocating { ok: Response },
    /// The transferee is re-INVITEd onto the new pairing (`tx`); `ok` is the target's 2xx,
    /// acknowledged when the transferee's answer comes.
    Reoffering { ok: Response, tx: TxId },
    /// Given up while our INVITE was still out: a late 2xx is acknowledged and hung up.
    Abandoned,
}

/// A transfer under way.
#[derive(Debug, Clone)]
pub(super) struct Transfer {
    /// The side that sent the REFER; the target takes its place.
    by: Side,
    /// The target as the REFER named it (its user part), for the NOTIFY, logs and CDR.
    target: String,
    /// The key of the new pairing: its media session and its CDR.
    key: CallId,
    /// Our dialog with the target (we are its UAC).
    dialog: Dialog,
    /// Our INVITE to the target.
    invite: TxId,
    invite_cseq: u32,
    step: Step,
    /// The new pairing's media session (relay modes), once allocated.
    media: Option<MediaPlan>,
    /// The `Event` of the NOTIFYs to the transferor; None when it asked for none.
    event: Option<String>,
    /// The transferor hung up while the transfer was under way.
    transferor_gone: bool,
    /// The `o=` session the transferee knows, which the target's SDP is shown as.
    anchor: Option<OriginAnchor>,
    /// An attended transfer: the other call of the transferor, whose other party is the
    /// target (its dialog is the one re-INVITEd, and joins this call at the end).
    attended: Option<Attended>,
    /// An INVITE with `Replaces` from the target itself: its request and server
    /// transaction, answered with the transferee's SDP instead of an ACK.
    incoming: Option<(Request, TxId)>,
}

/// The other call of an attended transfer (RFC 3891 `Replaces` in the `Refer-To`).
#[derive(Debug, Clone)]
struct Attended {
    call: CallRef,
    /// The transferor's side in that call (its dialog is the one `Replaces` named).
    transferor: Side,
}

/// What a REFER asks.
#[derive(Debug, Clone, PartialEq)]
enum Referred {
    /// Call this target (blind transfer).
    Blind(Uri),
    /// Join the transferee with the other party of the transferor's dialog `Replaces` names.
    Attended(Replaces),
}

impl Transfer {
    /// A transfer by `by` to `target` on `dialog`, whose INVITE `invite` (CSeq `cseq`) is
    /// at `step`; NOTIFYs with `event` when the transferor asked for them.
    #[allow(clippy::too_many_arguments)]
    fn new(
        by: Side,
        target: String,
        key: CallId,
        dialog: Dialog,
        invite: TxId,
        invite_cseq: u32,
        step: Step,
        event: Option<String>,
    ) -> Self {
        Self {
            by,
            target,
            key,
            dialog,
            invite,
            invite_cseq,
            step,
            media: None,
            event,
            transferor_gone: false,
            anchor: None,
            attended: None,
            incoming: None,
        }
    }

    /// The new pairing's relay ports for `side`'s leg.
    fn ports(&self, side: Side) -> &[u16] {
        match (&self.media, side.leg()) {
            (Some(plan), Leg::Caller) => &plan.caller_ports,
            (Some(plan), Leg::Callee) => &plan.callee_ports,
            (None, _) => &[],
        }
    }

    /// `body` rewritten for `side` on the new pairing's session (as it is in direct mode):
    /// for the transferee, as the session it already knows.
    fn rewrite_to(&self, side: Side, body: &[u8]) -> Result<Vec<u8>, crate::sdp::SdpError> {
        let anchor = (side != self.by).then_some(self.anchor.as_ref()).flatten();
        match &self.media {
            Some(plan) if !body.is_empty() => {
                rewrite_for(body, plan.advertised, self.ports(side), 0, anchor)
            }
            _ => Ok(body.to_vec()),
        }
    }
}

/// What a REFER asks: its Refer-To, checked (RFC 3515 section 2.4.1: exactly one).
fn refer_target(request: &Request) -> Result<Referred, (u16, &'static str)> {
    let mut values = request.headers.all("Refer-To");
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err((400, "Bad Request (one Refer-To)"));
    };
    let name = NameAddr::parse(value.trim()).ok_or((400, "Bad Request (Refer-To)"))?;
    if let Some(replaces) = name.uri.headers.as_deref().and_then(replaces_of) {
        return replaces.map(Referred::Attended);
    }
    if name.uri.user.as_deref().is_none_or(str::is_empty) {
        return Err((404, "Not Found (Refer-To names no user)"));
    }
    let mut uri = name.uri;
    uri.headers = None;
    Ok(Referred::Blind(uri))
}

impl super::Call {
    /// The key of the new pairing of a transfer under way.
    pub(super) fn transfer_key(&self) -> Option<&CallId> {
        self.transfer.as_ref().map(|t| &t.key)
    }

    /// The key the pairing of this call's transfer number `number` gets:
    /// `<call id>;transfer=N` (the callee leg's Call-ID instead when that would be too long).
    fn pairing_key(&self, number: u8) -> CallId {
        CallId::parse(&format!("{};transfer={number}", self.key))
            .or_else(|_| CallId::parse(&format!("{};transfer={number}", self.b.call_id)))
            .unwrap_or_else(|_| self.key.clone())
    }
}

impl Core {
    /// A REFER from `side` of an answered call.
    pub(super) fn on_refer(
        &mut self,
        now: Instant,
        call: CallRef,
        side: Side,
        tx: TxId,
        request: Request,
    ) {
        let Some(record) = self.calls.get(&call) else {
            return self.reply(now, tx, &request, 481);
        };
        let refuse = |core: &mut Self, status: u16, reason: &str, why: &str| {
            let refer_to = request.headers.get("Refer-To").unwrap_or("");
            tracing::info!(
                call_id = request.call_id(),
                status,
                why,
                refer_to,
                "REFER refused"
            );
            let tag = None;
            let answer = response(&request, status, reason, tag);
            core.transactions.respond(now, tx, &answer);
            core.push(Output::Transfer { outcome: "refused" });
        };
        if record.finished {
            return self.reply(now, tx, &request, 481);
        }
        if !record.state.answered() {
            return refuse(self, 403, "Forbidden (call not answered)", "not answered");
        }
        if record.transfer.is_some() || record.reinvite.is_some() || record.relocating.is_some() {
            return refuse(
                self,
                491,
                "Request Pending",
                "another transfer or offer pending",
            );
        }
        if record.transfers >= MAX_TRANSFERS {
            return refuse(
                self,
                403,
                "Forbidden (too many transfers)",
                "transfer budget",
            );
        }
        let referred = match refer_target(&request) {
            Ok(referred) => referred,
            Err((status, reason)) => return refuse(self, status, reason, reason),
        };
        let target = match referred {
            Referred::Blind(target) => target,
            Referred::Attended(replaces) => {
                return match self.attended_target(call, side, &replaces) {
                    Ok(other) => self.start_attended(now, call, side, tx, &request, other),
                    Err(why) => refuse(self, 481, "Call/Transaction Does Not Exist", why),
                };
            }
        };
        let user = target.user.clone().unwrap_or_default();
        // The target is routed like a new call from the transferee: a REFER is no way
        // around the routes (toll fraud).
        let Some((request_uri, peer, _)) = self.route(now, &user) else {
            return refuse(self, 404, "Not Found", "no route for the Refer-To target");
        };
        let Some(record) = self.calls.get(&call) else {
            return;
        };
        let transferee = record.party_name(side.other());
        // The transferor's own abuse budget: each REFER places a call.
        let source = record.dialog_of(side).peer.addr.ip();
        let transferor = record.party_name(side);
        let number = record.transfers + 1;
        if !self.settings.trusted.iter().any(|c| c.contains(source)) {
            let (admission, _) = self.guard.admit(now, source, Some(&transferor));
            if admission != crate::access::guard::Admission::Pass {
                self.push(Output::Limited { action: "rejected" });
                return refuse(
                    self,
                    503,
                    "Service Unavailable",
                    "transferor over its budget",
                );
            }
        }
        let Some(record) = self.calls.get(&call) else {
            return;
        };
        let key = record.pairing_key(number);
        let event = (request.headers.get("Refer-Sub").map(str::trim) != Some("false")).then(|| {
            if record.transfers == 0 {
                "refer".to_owned()
            } else {
                format!("refer;id={}", request.cseq().map_or(0, |c| c.number))
            }
        });
        let host = host_text(&self.settings.local.ip().to_string());
        let local = self.local();
        let dialog = Dialog::uac(
            self.ids.call_id(&host),
            self.ids.tag(),
            format!("<sip:{transferee}@{host}:{}>", local.port()),
            format!("<{target}>"),
            request_uri,
            0,
            peer,
        );
        self.accept_refer(now, tx, &request, event.is_some());
        tracing::info!(call_id = request.call_id(), by = side.party(), target = %user, "transfer accepted");
        // The INVITE to the target: a late offer, from the transferee, Referred-By kept.
        let branch = self.ids.branch();
        let mut dialog = dialog;
        let (peer, mut invite) = dialog.invite(local, &branch, "application/sdp", Vec::new());
        invite.headers.push("Allow", super::ALLOW);
        if let Some(by) = request.headers.get("Referred-By") {
            invite.headers.push("Referred-By", by);
        }
        let invite_cseq = invite.cseq().map_or(1, |c| c.number);
        let tag = TxTag {
            call,
            side,
            flow: Flow::Transfer,
        };
        let invite_tx = self.transactions.send(now, peer, invite, tag);
        let ring = self.settings.ring_timeout;
        self.set_timer(now, call, CallTimer::TransferRing, ring);
        if let Some(record) = self.calls.get_mut(&call) {
            record.transfers = number;
            record.transfer = Some(Transfer::new(
                side,
                user,
                key,
                dialog,
                invite_tx,
                invite_cseq,
                Step::Calling { proceeding: false },
                event,
            ));
        }
        self.notify_transferor(now, call, 100, "Trying");
    }

    /// Answers a REFER 202, with `Refer-Sub: false` when it asked for no subscription.
    fn accept_refer(&mut self, now: Instant, tx: TxId, request: &Request, subscribed: bool) {
        let mut accepted = response(request, 202, "Accepted", None);
        accepted.headers.push("Contact", self.contact());
        if !subscribed {
            accepted.headers.push("Refer-Sub", "false");
        }
        self.transactions.respond(now, tx, &accepted);
    }

    /// Tells the transferor how its REFER fares (a `message/sipfrag` NOTIFY), unless it
    /// asked for no subscription or is gone. A final status ends the subscription.
    fn notify_transferor(&mut self, now: Instant, call: CallRef, status: u16, reason: &str) {
        let (local, branch) = (self.local(), self.ids.branch());
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let Some(transfer) = record.transfer.as_ref() else {
            return;
        };
        let (Some(event), false) = (transfer.event.clone(), transfer.transferor_gone) else {
            return;
        };
        let by = transfer.by;
        let (peer, mut notify) = record
            .dialog(by)
            .request(Method::Notify, None, local, &branch);
        notify.headers.push("Event", event);
        let state = if status < 200 {
            "active;expires=60"
        } else {
            "terminated;reason=noresource"
        };
        notify.headers.push("Subscription-State", state);
        notify
            .headers
            .push("Contact", crate::dialog::contact(local));
        notify
            .headers
            .push("Content-Type", "message/sipfrag;version=2.0");
        notify.body = format!("SIP/2.0 {status} {reason}\r\n").into_bytes();
        let tag = TxTag {
            call,
            side: by,
            flow: Flow::Notify,
        };
        self.transactions.send(now, peer, notify, tag);
    }

    /// The target's answer to our INVITE.
    pub(super) fn on_transfer_response(
        &mut self,
        now: Instant,
        call: CallRef,
        tx: TxId,
        answer: Response,
    ) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let Some(transfer) = record.transfer.as_mut().filter(|t| t.invite == tx) else {
            return;
        };
        let status = answer.status;
        let success = (200..300).contains(&status);
        match transfer.step.clone() {
            Step::Abandoned => {
                if success {
                    transfer.dialog.confirm(&answer);
                    self.let_target_go(now, call, 487);
                }
                if status >= 200
                    && let Some(record) = self.calls.get_mut(&call)
                {
                    record.transfer = None;
                }
            }
            Step::Calling { proceeding } if status < 200 => {
                if status == 100 {
                    return;
                }
                transfer.dialog.early(&answer);
                transfer.step = Step::Calling { proceeding: true };
                if !proceeding || status != 180 {
                    self.notify_transferor(now, call, status, &answer.reason);
                }
            }
            Step::Calling { .. } if success => {
                transfer.dialog.confirm(&answer);
                self.stop_timer(call, CallTimer::TransferRing);
                let offer = match body_sdp(&answer.body) {
                    Ok(Some(offer)) => offer,
                    Ok(None) => {
                        return self.transfer_failed_answered(
                            now,
                            call,
                            488,
                            "the target's 2xx carries no SDP offer",
                        );
                    }
                    Err(error) => {
                        let why = format!("the target's SDP offer is unusable: {error}");
                        return self.transfer_failed_answered(now, call, 488, &why);
                    }
                };
                let Some(record) = self.calls.get_mut(&call) else {
                    return;
                };
                let transfer = record.transfer.as_mut().expect("checked above");
                if record.mode == MediaMode::Direct {
                    self.reoffer_transferee(now, call, answer);
                    return;
                }
                let mut offer = offer;
                offer.signaling_ip = Some(transfer.dialog.peer.addr.ip());
                let call_id = transfer.key.clone();
                let offer_leg = transfer.by.leg();
                transfer.step = Step::Allocating { ok: answer };
                let reflect = record.mode == MediaMode::Reflect;
                self.by_key.insert(call_id.clone(), call);
                self.push(Output::Allocate {
                    call,
                    call_id,
                    offer,
                    offer_leg,
                    reflect,
                });
            }
            Step::Calling { .. } if status >= 300 => {
                self.stop_timer(call, CallTimer::TransferRing);
                let why = format!("the target answered {status} {}", answer.reason);
                self.transfer_failed(now, call, status, &answer.reason, &why);
            }
            // 2xx retransmissions while the transferee is asked: its answer makes the ACK.
            _ => {}
        }
    }

    /// Timer B of our INVITE to the target, or of the transferee's re-INVITE.
    pub(super) fn on_transfer_timeout(&mut self, now: Instant, call: CallRef, tx: TxId) {
        let Some(transfer) = self.calls.get(&call).and_then(|r| r.transfer.as_ref()) else {
            return;
        };
        match &transfer.step {
            Step::Calling { .. } if transfer.invite == tx => {
                self.stop_timer(call, CallTimer::TransferRing);
                self.transfer_failed(
                    now,
                    call,
                    408,
                    "Request Timeout",
                    "the target never answered the INVITE (Timer B)",
                );
            }
            Step::Reoffering { tx: reoffer, .. } if *reoffer == tx => {
                self.transfer_failed_answered(
                    now,
                    call,
                    408,
                    "the transferee never answered the re-INVITE (Timer B)",
                );
            }
            Step::Abandoned if transfer.invite == tx => {
                if let Some(record) = self.calls.get_mut(&call) {
                    record.transfer = None;
                }
            }
            _ => {}
        }
    }

    /// The target rang for the whole ring timeout: CANCEL it (its 487 fails the transfer).
    pub(super) fn on_transfer_ring_timeout(&mut self, now: Instant, call: CallRef) {
        let Some(transfer) = self.calls.get(&call).and_then(|r| r.transfer.as_ref()) else {
            return;
        };
        if matches!(transfer.step, Step::Calling { .. }) {
            tracing::info!(target = %transfer.target, "transfer target did not answer within the ring timeout");
            let tag = TxTag {
                call,
                side: transfer.by,
                flow: Flow::Hangup,
            };
            self.transactions.cancel(now, transfer.invite, tag);
        }
    }

    /// Whether the call's transfer waits for its media session (an allocation's answer is
    /// the transfer's, not the call's).
    pub(super) fn transfer_allocating(&self, call: CallRef) -> bool {
        self.calls
            .get(&call)
            .and_then(|r| r.transfer.as_ref())
            .is_some_and(|t| matches!(t.step, Step::Allocating { .. }))
    }

    /// The new pairing's media session, allocated (or not).
    pub(super) fn on_transfer_media(
        &mut self,
        now: Instant,
        call: CallRef,
        result: Result<MediaPlan, MediaError>,
    ) {
        let Some(transfer) = self.calls.get_mut(&call).and_then(|r| r.transfer.as_mut()) else {
            return;
        };
        let Step::Allocating { ok } = transfer.step.clone() else {
            return;
        };
        match result {
            Ok(plan) => {
                transfer.media = Some(plan);
                self.reoffer_transferee(now, call, ok);
            }
            Err(error) => {
                let why = format!("no media session for the new pairing: {error}");
                self.transfer_failed_answered(now, call, error.sip_status(), &why);
            }
        }
    }

    /// Re-INVITEs the transferee with the target's offer (`ok`), rewritten for its leg of
    /// the new pairing.
    fn reoffer_transferee(&mut self, now: Instant, call: CallRef, ok: Response) {
        let (local, branch) = (self.local(), self.ids.branch());
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        // RFC 3264 section 8: the transferee keeps the `o=` session it knows (the one the
        // transferor's SDP showed it), one version up, whoever is behind it now.
        let by = record.transfer.as_ref().expect("a transfer").by;
        let transferee = by.other();
        let seen = record.last_sdp[by.index()]
            .as_deref()
            .and_then(origin_of)
            .map(
                |(user, session, version)| match &record.origin[transferee.index()] {
                    Some(known) => (
                        known.user.clone(),
                        known.session.clone(),
                        known
                            .base
                            .wrapping_add(version.wrapping_sub(known.source_base)),
                    ),
                    None => (user, session, version),
                },
            );
        let bump = record.sdp_bump[transferee.index()];
        let anchor = match (seen, origin_of(&ok.body)) {
            (Some((user, session, version)), Some((_, _, target))) => Some(OriginAnchor {
                user,
                session,
                base: version.wrapping_add(bump).wrapping_add(1),
                source_base: target,
            }),
            _ => None,
        };
        let transfer = record.transfer.as_mut().expect("a transfer");
        transfer.anchor = anchor;
        let body = match transfer.rewrite_to(transferee, &ok.body) {
            Ok(body) => body,
            Err(error) => {
                let why = format!("the target's SDP offer cannot be relayed: {error}");
                return self.transfer_failed_answered(now, call, 488, &why);
            }
        };
        let (peer, invite) =
            record
                .dialog(transferee)
                .invite(local, &branch, "application/sdp", body);
        let tag = TxTag {
            call,
            side: transferee,
            flow: Flow::TransferReInvite,
        };
        let tx = self.transactions.send(now, peer, invite, tag);
        if let Some(transfer) = self.calls.get_mut(&call).and_then(|r| r.transfer.as_mut()) {
            transfer.step = Step::Reoffering { ok, tx };
        }
    }

    /// The transferee's answer to the re-INVITE that moves it onto the new pairing.
    pub(super) fn on_transfer_reoffer_response(
        &mut self,
        now: Instant,
        call: CallRef,
        side: Side,
        tx: TxId,
        answer: Response,
    ) {
        if answer.status < 200 {
            return;
        }
        let Some(record) = self.calls.get(&call) else {
            return;
        };
        let transferee = match record.transfer.as_ref() {
            Some(t) if matches!(t.step, Step::Reoffering { tx: reoffer, .. } if reoffer == tx) => {
                t.by.other()
            }
            _ => {
                // A 2xx of a transfer given up: the transferee's dialog still needs its ACK.
                if (200..300).contains(&answer.status) {
                    self.ack_reinvite(call, side, tx, &answer);
                }
                return;
            }
        };
        if !(200..300).contains(&answer.status) {
            let why = format!(
                "the transferee refused the re-INVITE: {} {}",
                answer.status, answer.reason
            );
            return self.transfer_failed_answered(now, call, answer.status, &why);
        }
        self.ack_reinvite(call, transferee, tx, &answer);
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let transfer = record.transfer.as_ref().expect("checked above");
        let by = transfer.by;
        let for_target = match transfer.rewrite_to(by, &answer.body) {
            Ok(body) => body,
            Err(error) => {
                let why = format!("the transferee's SDP answer cannot be relayed: {error}");
                return self.transfer_failed_answered(now, call, 488, &why);
            }
        };
        // The new session's legs, pointed at both phones' SDP.
        let Step::Reoffering { ok, .. } = transfer.step.clone() else {
            return;
        };
        let mut updates = Vec::new();
        if let Some(plan) = transfer.media.as_ref() {
            let transferee_peer = record.dialog_of(transferee).peer;
            for (side, body, peer) in [
                (transferee, &answer.body, transferee_peer),
                (by, &ok.body, transfer.dialog.peer),
            ] {
                if let Ok(Some(mut sdp)) = body_sdp(body) {
                    sdp.signaling_ip = Some(peer.addr.ip());
                    updates.push(Output::UpdateMedia {
                        endpoint: plan.endpoint.clone(),
                        call_id: transfer.key.clone(),
                        leg: side.leg(),
                        sdp,
                    });
                }
            }
        }
        for update in updates {
            self.push(update);
        }
        if !self.answer_replacing(now, call, for_target.clone()) {
            self.ack_target(call, for_target);
        }
        self.complete_transfer(now, call, &ok.body, &answer.body);
    }

    /// The transfer went through: the transferor is told and hung up, the original pairing's
    /// record written, and the call goes on as the new pairing.
    fn complete_transfer(
        &mut self,
        now: Instant,
        call: CallRef,
        target_sdp: &[u8],
        transferee_sdp: &[u8],
    ) {
        self.notify_transferor(now, call, 200, "OK");
        let Some(record) = self.calls.get(&call) else {
            return;
        };
        let transfer = record.transfer.clone().expect("a transfer");
        if !transfer.transferor_gone {
            self.send_bye(now, call, transfer.by);
        }
        let record = self.calls.get_mut(&call).expect("call exists");
        let by = transfer.by;
        let transferee = by.other();
        let hangup = by.hangup();
        let transferor = record.party_name(by);
        let reason = if transfer.incoming.is_some() {
            replaces::replaced_reason(&transfer.target)
        } else {
            format!(
                "transferred by the {} ({transferor}) to {}",
                by.party(),
                transfer.target
            )
        };
        let mut old = record.record(now, Disposition::Answered, 200, hangup, reason);
        old.transferred_to = Some(transfer.key.clone());
        tracing::info!(call_id = %old.call_id, new = %transfer.key, "call transferred");
        // The new pairing: the target in the transferor's place, under the new key.
        let old_key = record.key.clone();
        let departed = record.dialog(by).call_id.clone();
        record.departed.push(departed);
        *record.dialog(by) = transfer.dialog.clone();
        match by {
            Side::A => record.caller = transfer.target.clone(),
            Side::B => record.callee = transfer.target.clone(),
        }
        record.key = transfer.key.clone();
        record.transferred_from = Some(old_key.clone());
        if record.mode != MediaMode::Direct {
            record.media = transfer.media.clone();
            record.last_sdp[by.index()] = Some(target_sdp.to_vec());
            record.last_sdp[transferee.index()] = Some(transferee_sdp.to_vec());
        }
        record.sdp_bump = [0, 0];
        record.origin[transferee.index()] = transfer.anchor.clone();
        record.origin[by.index()] = None;
        record.moves.clear();
        record.start = now;
        record.answer = Some(now);
        record.keepalive_pending = [None, None];
        record.keepalive_missed = [0, 0];
        record.transfer = None;
        record.transfer_notes.clear();
        // The target's leg was placed without timers; the keepalive watches it.
        record.timers.forget(by);
        self.stop_timer(call, CallTimer::SessionRefresh(by));
        self.stop_timer(call, CallTimer::SessionExpiry(by));
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let new_call_id = record.dialog(by).call_id.clone();
        let open = record.open_record(now);
        if self.by_key.get(&old_key) == Some(&call) {
            self.by_key.remove(&old_key);
        }
        self.by_key.insert(transfer.key.clone(), call);
        self.by_call_id.insert(new_call_id, (call, by));
        self.push(Output::Finish(old));
        self.push(Output::Answered(open));
        if let Some(other) = transfer.attended.clone() {
            self.join_done(now, &other, &transfer.key);
        }
        self.push(Output::Transfer {
            outcome: "completed",
        });
        self.start_recording_at_answer(call);
    }
}
