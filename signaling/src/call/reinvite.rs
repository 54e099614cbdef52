//! Re-INVITEs (hold, resume, codec change) relayed from either leg to the other (RFC 3261
//! section 14). The relay ports stay the same: the requester's SDP is rewritten to the other
//! leg's ports, the answer to the requester's. A re-INVITE while one is pending is glare and
//! gets 491 (section 14.2).

use std::time::Instant;

use super::messages::{body_sdp, relayed_response, response};
use super::{CallRef, Core, Flow, ReInvite, Side, TxTag};
use crate::sip::message::{Method, Request, Response};
use crate::transaction::TxId;

impl Core {
    pub(super) fn on_reinvite(
        &mut self,
        now: Instant,
        call: CallRef,
        side: Side,
        tx: TxId,
        request: Request,
    ) {
        let Some(record) = self.calls.get(&call) else {
            return;
        };
        // A pending re-INVITE of either kind (a phone's, or ours moving the media) makes a
        // new one glare: 491, and the phone tries again later (RFC 3261 section 14.2).
        if record.reinvite.is_some()
            || record.relocating.is_some()
            || record.relayed.iter().any(|r| r.offer)
            || !record.state.answered()
        {
            self.reply(now, tx, &request, 491);
            return;
        }
        self.session_refreshed(now, call, side, &request);
        let Some(record) = self.calls.get(&call) else {
            return;
        };
        if let Some(kind) = super::messages::foreign_body(&request) {
            tracing::info!(call_id = request.call_id(), %kind, "re-INVITE body is not SDP; 415");
            self.reply(now, tx, &request, 415);
            return;
        }
        let offer = match body_sdp(&request.body) {
            Ok(offer) => offer,
            Err(error) => {
                tracing::info!(call_id = request.call_id(), %error, "unusable SDP answered 488");
                self.reply(now, tx, &request, 488);
                return;
            }
        };
        let other = side.other();
        let mut body = request.body.clone();
        let mut update = None;
        if let (Some(_), Some(offer)) = (&record.media, offer) {
            match record.rewrite_to(other, &request.body) {
                Ok(rewritten) => body = rewritten,
                Err(error) => {
                    tracing::info!(call_id = request.call_id(), %error, "re-INVITE SDP cannot be relayed; 488");
                    self.reply(now, tx, &request, 488);
                    return;
                }
            }
            update = record.media_update(side, offer);
        }
        if let Some(record) = self.calls.get_mut(&call)
            && record.media.is_some()
            && !request.body.is_empty()
        {
            record.last_sdp[side.index()] = Some(request.body.clone());
        }
        let trying = response(&request, 100, "Trying", None);
        self.transactions.respond(now, tx, &trying);
        self.transactions.set_tag(
            tx,
            TxTag {
                call,
                side,
                flow: Flow::ReInviteAnswer,
            },
        );
        if let Some(update) = update {
            self.push(update);
        }
        let local = self.local();
        let branch = self.ids.branch();
        let content_type = request
            .headers
            .get("Content-Type")
            .unwrap_or("application/sdp")
            .to_owned();
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let (peer, invite) = record
            .dialog(other)
            .invite(local, &branch, &content_type, body);
        let tag = TxTag {
            call,
            side: other,
            flow: Flow::ReInvite,
        };
        let client = self.transactions.send(now, peer, invite, tag);
        if let Some(record) = self.calls.get_mut(&call) {
            record.reinvite = Some(ReInvite {
                from: side,
                request,
                server: tx,
                client,
            });
        }
    }

    /// The other leg answered a relayed re-INVITE.
    pub(super) fn on_reinvite_response(
        &mut self,
        now: Instant,
        call: CallRef,
        responder: Side,
        tx: TxId,
        response: Response,
    ) {
        if response.status < 200 {
            return;
        }
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        if record.reinvite.as_ref().is_none_or(|p| p.client != tx) {
            // A 2xx to a re-INVITE whose requester already gave up: acknowledge it.
            if (200..300).contains(&response.status) {
                self.ack_reinvite(call, responder, tx, &response);
            }
            return;
        }
        let pending = record.reinvite.take().expect("checked");
        let success = (200..300).contains(&response.status);
        let mut body = response.body.clone();
        let mut update = None;
        if success {
            self.ack_reinvite(call, responder, tx, &response);
            let record = self.calls.get_mut(&call).expect("call exists");
            if let (Some(_), Ok(Some(answer))) = (&record.media, body_sdp(&body)) {
                record.last_sdp[responder.index()] = Some(body.clone());
                match record.rewrite_to(responder.other(), &body) {
                    Ok(rewritten) => body = rewritten,
                    Err(error) => {
                        tracing::warn!(call_id = %record.key, %error, "re-INVITE answer cannot be relayed");
                        self.reply(now, pending.server, &pending.request, 488);
                        return;
                    }
                }
                update = record.media_update(responder, answer);
            }
        }
        if let Some(update) = update {
            self.push(update);
        }
        let contact = self.contact();
        let mut relayed = relayed_response(&pending.request, &response, None, &contact, body);
        if success {
            self.stamp_session(call, pending.from, &mut relayed);
        }
        self.transactions.respond(now, pending.server, &relayed);
        if success {
            let cseq = pending.request.cseq().map_or(0, |c| c.number);
            if let Some(record) = self.calls.get_mut(&call) {
                record.reinvite_ok = Some((pending.from, cseq, pending.server));
            }
        }
    }

    /// The ACK of a re-INVITE's 2xx (a request of the responder's dialog).
    pub(super) fn ack_reinvite(&mut self, call: CallRef, responder: Side, tx: TxId, ok: &Response) {
        let local = self.local();
        let branch = self.ids.branch();
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let cseq = ok.cseq().map(|c| c.number);
        let (peer, ack) = record
            .dialog(responder)
            .request(Method::Ack, cseq, local, &branch);
        self.transactions.set_ack(tx, &ack);
        self.send(peer, ack.to_bytes());
    }

    /// Timer B of a relayed re-INVITE: 408 to the requester; the call goes on.
    pub(super) fn on_reinvite_timeout(&mut self, now: Instant, call: CallRef, tx: TxId) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        if record.reinvite.as_ref().is_none_or(|p| p.client != tx) {
            return;
        }
        let pending = record.reinvite.take().expect("checked");
        tracing::info!(call_id = %record.key, "re-INVITE not answered by the other leg (Timer B)");
        self.reply(now, pending.server, &pending.request, 408);
    }
}
