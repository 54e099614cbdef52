//! Reliable provisional responses (RFC 3262, `100rel`), per leg: the B2BUA is the UAS of the
//! caller's INVITE and the UAC of its own INVITE to the callee, so each leg's reliability is
//! its own business, as in every B2BUA.
//!
//! - **Caller's leg.** A caller that requires `100rel` gets every provisional response (but
//!   100) reliably; one that only supports it gets those with SDP (early media, where a lost
//!   183 means a call that connects with no ringback or announcement). A reliable
//!   provisional carries `Require: 100rel` and an `RSeq`, is resent at T1, 2 x T1, ... until
//!   the caller's PRACK (`RAck` naming it, answered 200), and the next waits for it (section
//!   3: one unacknowledged at a time). A caller that never PRACKs within 64 x T1 has its call
//!   refused 504 (section 3: the UAS SHOULD reject with a 5xx). A PRACK that names no
//!   outstanding response gets 481. This holds whatever the callee does: a callee that knows
//!   nothing of 100rel still gives the caller reliable provisionals.
//! - **Callee's leg.** Our INVITE says `Supported: 100rel`; a reliable provisional from the
//!   callee is PRACKed in its early dialog (one PRACK per RSeq, in order; a retransmission is
//!   not passed on twice).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::messages::response;
use super::{CallRef, CallTimer, Core, Disposition, Flow, HangupSide, Side, TxTag};
use crate::sip::message::{Method, Request, Response};
use crate::transaction::{T1, TIMEOUT, TxId};

/// How the caller takes provisional responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum CallerRel {
    /// Plain provisionals (the caller did not mention 100rel).
    #[default]
    None,
    /// `Supported: 100rel`: reliable when carrying SDP.
    Supported,
    /// `Require: 100rel`: every provisional but 100 is reliable.
    Required,
}

/// A reliable provisional sent to the caller, waiting for its PRACK.
#[derive(Debug, Clone)]
struct Outstanding {
    rseq: u32,
    response: Response,
    /// The next resend interval, and when the first was sent.
    interval: Duration,
    first: Instant,
}

/// The reliability state of a call's two legs.
#[derive(Debug, Clone, Default)]
pub(super) struct Reliability {
    pub(super) caller: CallerRel,
    /// Our next RSeq towards the caller.
    next_rseq: u32,
    outstanding: Option<Outstanding>,
    /// Reliable provisionals waiting for the outstanding one's PRACK.
    queue: VecDeque<Response>,
}

impl Reliability {
    /// The caller's stance from its INVITE; `first_rseq` is where our RSeq starts (random,
    /// below 2^31: section 3).
    pub(super) fn of(invite: &Request, first_rseq: u32) -> Self {
        let has = |name: &str| {
            invite
                .headers
                .values(name)
                .any(|o| o.trim().eq_ignore_ascii_case("100rel"))
        };
        let caller = if has("Require") {
            CallerRel::Required
        } else if has("Supported") {
            CallerRel::Supported
        } else {
            CallerRel::None
        };
        Self {
            caller,
            next_rseq: first_rseq,
            ..Self::default()
        }
    }

    /// Whether `provisional` goes to the caller reliably.
    pub(super) fn reliable(&self, provisional: &Response) -> bool {
        provisional.status > 100
            && match self.caller {
                CallerRel::None => false,
                CallerRel::Supported => !provisional.body.is_empty(),
                CallerRel::Required => true,
            }
    }
}

/// The `RSeq` of a reliable provisional response (one that requires 100rel).
pub(super) fn rseq_of(provisional: &Response) -> Option<u32> {
    let required = provisional
        .headers
        .values("Require")
        .any(|o| o.trim().eq_ignore_ascii_case("100rel"));
    if !required {
        return None;
    }
    provisional.headers.get("RSeq")?.trim().parse().ok()
}

impl Core {
    /// Sends a provisional response to the caller reliably: now, or after the outstanding
    /// one's PRACK.
    pub(super) fn send_reliable(&mut self, now: Instant, call: CallRef, mut provisional: Response) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let rel = &mut record.reliability;
        if rel.outstanding.is_some() {
            rel.queue.push_back(provisional);
            return;
        }
        let rseq = rel.next_rseq;
        rel.next_rseq = rel.next_rseq.wrapping_add(1);
        provisional.headers.push("Require", "100rel");
        provisional.headers.push("RSeq", rseq.to_string());
        rel.outstanding = Some(Outstanding {
            rseq,
            response: provisional.clone(),
            interval: T1,
            first: now,
        });
        let tx = record.a_tx;
        self.transactions.respond(now, tx, &provisional);
        self.set_timer(now, call, CallTimer::Reliable, T1);
    }

    /// The caller's PRACK.
    pub(super) fn on_prack(&mut self, now: Instant, call: CallRef, tx: TxId, prack: &Request) {
        let Some(record) = self.calls.get_mut(&call) else {
            return self.reply(now, tx, prack, 481);
        };
        let invite_cseq = record.a_invite.cseq().map_or(0, |c| c.number);
        let rack = prack.headers.get("RAck").map(|v| {
            let mut parts = v.split_whitespace();
            (
                parts.next().and_then(|p| p.parse::<u32>().ok()),
                parts.next().and_then(|p| p.parse::<u32>().ok()),
                parts.next().map(str::to_ascii_uppercase),
            )
        });
        let matches = match (&record.reliability.outstanding, rack) {
            (Some(out), Some((Some(rseq), Some(cseq), Some(method)))) => {
                out.rseq == rseq && cseq == invite_cseq && method == "INVITE"
            }
            _ => false,
        };
        if !matches {
            // Section 3: a PRACK matching no unacknowledged reliable provisional.
            tracing::info!(
                call_id = prack.call_id(),
                rack = prack.headers.get("RAck").unwrap_or(""),
                "PRACK matches no reliable provisional; 481"
            );
            return self.reply(now, tx, prack, 481);
        }
        record.reliability.outstanding = None;
        let next = record.reliability.queue.pop_front();
        self.stop_timer(call, CallTimer::Reliable);
        let ok = response(prack, 200, "OK", None);
        self.transactions.respond(now, tx, &ok);
        if let Some(next) = next {
            self.send_reliable(now, call, next);
        }
    }

    /// Resends the outstanding reliable provisional; 64 x T1 without a PRACK refuses the call.
    pub(super) fn on_reliable_timer(&mut self, now: Instant, call: CallRef) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let tx = record.a_tx;
        let Some(out) = record.reliability.outstanding.as_mut() else {
            return;
        };
        if now.saturating_duration_since(out.first) >= TIMEOUT {
            record.reliability.outstanding = None;
            record.reliability.queue.clear();
            tracing::info!(call_id = %record.key, "no PRACK for a reliable provisional within 64 x T1");
            self.cancel_b(now, call);
            let reason =
                "the caller never acknowledged (PRACK) a reliable provisional response".to_owned();
            self.fail_a(
                now,
                call,
                504,
                Disposition::Failed,
                HangupSide::System,
                reason,
            );
            return;
        }
        out.interval *= 2;
        // The last wait ends at 64 x T1 sharp.
        let left = TIMEOUT.saturating_sub(now.saturating_duration_since(out.first));
        let (response, interval) = (out.response.clone(), out.interval.min(left));
        self.transactions.respond(now, tx, &response);
        self.set_timer(now, call, CallTimer::Reliable, interval);
    }

    /// The call's final response goes out: reliable provisionals still waiting are moot.
    pub(super) fn settle_reliable(&mut self, call: CallRef) {
        if let Some(record) = self.calls.get_mut(&call) {
            record.reliability.outstanding = None;
            record.reliability.queue.clear();
        }
        self.stop_timer(call, CallTimer::Reliable);
    }

    /// A provisional from branch `fork` of the callee: PRACKed in that branch's early dialog
    /// when reliable. False for a retransmission of one already PRACKed (not to be passed on
    /// again).
    pub(super) fn prack_callee(
        &mut self,
        now: Instant,
        call: CallRef,
        fork: usize,
        provisional: &Response,
    ) -> bool {
        let Some(rseq) = rseq_of(provisional) else {
            return true;
        };
        let (local, branch) = (self.local(), self.ids.branch());
        let Some(record) = self.calls.get_mut(&call) else {
            return false;
        };
        let Some(callee) = record.forks.branches.get_mut(fork) else {
            return false;
        };
        if callee.rseq.is_some_and(|last| rseq <= last) {
            return false;
        }
        callee.rseq = Some(rseq);
        let cseq = callee.cseq;
        let (peer, mut prack) = callee.dialog.request(Method::Prack, None, local, &branch);
        prack.headers.push("RAck", format!("{rseq} {cseq} INVITE"));
        let tag = TxTag {
            call,
            side: Side::B,
            flow: Flow::Prack,
        };
        self.transactions.send(now, peer, prack, tag);
        true
    }
}
