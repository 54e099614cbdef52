//! In-dialog OPTIONS keepalives of answered calls: what notices a vanished phone when no
//! media timeout can (direct mode). RFC 5057 section 5.1: a 481 or 408 answer means the
//! dialog is gone on that side; any other answer means the peer is alive. Two pings in a row
//! without an answer within the interval end the call (one lost datagram must not).

use std::time::Instant;

use super::{CallRef, CallTimer, Core, Flow, Side, TxTag};
use crate::sip::message::{Method, Response};

impl Core {
    /// Arms the next ping, unless keepalives are off.
    pub(super) fn schedule_keepalive(&mut self, now: Instant, call: CallRef) {
        let every = self.settings.keepalive;
        if !every.is_zero() {
            self.set_timer(now, call, CallTimer::Keepalive, every);
        }
    }

    pub(super) fn on_keepalive(&mut self, now: Instant, call: CallRef) {
        let answered = self.calls.get(&call).is_some_and(|r| r.state.answered());
        if !answered {
            return;
        }
        let local = self.local();
        let wait = self.settings.keepalive;
        for side in [Side::A, Side::B] {
            let branch = self.ids.branch();
            let Some(record) = self.calls.get_mut(&call) else {
                return;
            };
            let (peer, options) =
                record
                    .dialog(side)
                    .request(Method::Options, None, local, &branch);
            record.keepalive_pending[side.index()] = options.cseq().map(|c| c.number);
            let tag = TxTag {
                call,
                side,
                flow: Flow::Keepalive,
            };
            self.transactions.send(now, peer, options, tag);
            self.set_timer(now, call, CallTimer::KeepaliveTimeout(side), wait);
        }
        self.schedule_keepalive(now, call);
    }

    pub(super) fn on_keepalive_response(
        &mut self,
        now: Instant,
        call: CallRef,
        side: Side,
        response: &Response,
    ) {
        if response.status < 200 {
            return;
        }
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let cseq = response.cseq().map(|c| c.number);
        if cseq.is_none() || record.keepalive_pending[side.index()] != cseq {
            return;
        }
        record.keepalive_pending[side.index()] = None;
        record.keepalive_missed[side.index()] = 0;
        self.stop_timer(call, CallTimer::KeepaliveTimeout(side));
        if matches!(response.status, 408 | 481) {
            self.peer_gone(now, call, side);
        }
    }

    pub(super) fn on_keepalive_timeout(&mut self, now: Instant, call: CallRef, side: Side) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        if record.keepalive_pending[side.index()].is_none() || !record.state.answered() {
            return;
        }
        record.keepalive_missed[side.index()] += 1;
        if record.keepalive_missed[side.index()] >= 2 {
            self.peer_gone(now, call, side);
        }
    }
}
