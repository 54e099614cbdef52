//! Requests relayed across the legs of an answered call: INFO (RFC 6086; DTMF as
//! `application/dtmf-relay`, IVR and phone features), MESSAGE (RFC 3428) and NOTIFY (RFC
//! 6665). The B2BUA sends each to the other leg on that leg's dialog, bodies and the headers
//! that give them meaning untouched, and answers the sender with the other leg's final
//! response (its status, reason and body); 408 when the other leg does not answer. Before the
//! answer they keep 501: the early dialog of a call is not one they may travel on here.

use std::time::Instant;

use super::messages::response;
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
}

/// Whether `method` is one this module relays.
pub(super) fn relays(method: &Method) -> bool {
    matches!(method, Method::Info | Method::Message | Method::Notify)
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
        match self.calls.get(&call) {
            None => return self.reply(now, tx, &request, 481),
            Some(record) if !record.state.answered() || record.finished => {
                return self.reply(now, tx, &request, 501);
            }
            Some(_) => {}
        }
        let (local, branch) = (self.local(), self.ids.branch());
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
        relayed.body.clone_from(&request.body);
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
            });
        }
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

    fn take_relayed(&mut self, call: CallRef, client: TxId) -> Option<Relayed> {
        let record = self.calls.get_mut(&call)?;
        let at = record.relayed.iter().position(|r| r.client == client)?;
        Some(record.relayed.swap_remove(at))
    }
}
