//! Client transactions: RFC 3261 sections 17.1.1 (INVITE) and 17.1.2 (non-INVITE), with the
//! `Accepted` state of RFC 6026 section 7.2.

use std::time::Duration;

use super::{Ctx, Outcome, Step, T1, T2, T4, TIMEOUT, Timer};
use crate::sip::message::{Headers, Method, Request, Response};

/// Timer D: how long a completed INVITE client transaction absorbs retransmitted errors over
/// an unreliable transport (at least 32 s, RFC 3261 section 17.1.1.2).
const TIMER_D: Duration = Duration::from_secs(32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InviteState {
    /// Sent, no response yet (Timers A and B run).
    Calling,
    /// A provisional response arrived.
    Proceeding,
    /// A final error arrived and was acknowledged (Timer D runs).
    Completed,
    /// A 2xx arrived (RFC 6026; Timer M runs).
    Accepted,
}

/// Where a CANCEL of this INVITE stands (RFC 3261 section 9.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cancelling {
    No,
    /// Asked for before any provisional response: sent on the first one.
    Waiting,
    Sent,
}

/// What [`InviteClient::cancel`] decided.
#[derive(Debug)]
pub(crate) enum Cancel {
    Now(Request),
    Pending,
    TooLate,
}

/// An INVITE client transaction.
#[derive(Debug)]
pub(crate) struct InviteClient {
    state: InviteState,
    request: Request,
    data: Vec<u8>,
    interval: Duration,
    /// The ACK of the accepted 2xx, from the transaction user (RFC 3261 section 13.2.2.4).
    ack: Option<Vec<u8>>,
    cancelling: Cancelling,
}

impl InviteClient {
    pub(crate) fn start(ctx: &mut Ctx<'_>, request: Request) -> Self {
        let data = request.to_bytes();
        ctx.send(&data);
        if !ctx.reliable() {
            ctx.set(Timer::A, T1);
        }
        ctx.set(Timer::B, TIMEOUT);
        Self {
            state: InviteState::Calling,
            request,
            data,
            interval: T1,
            ack: None,
            cancelling: Cancelling::No,
        }
    }

    pub(crate) fn set_ack(&mut self, ack: Vec<u8>) {
        self.ack = Some(ack);
    }

    /// Returns the step, whether the response goes up, and whether a CANCEL waiting for a
    /// provisional response must go now.
    pub(crate) fn on_response(
        &mut self,
        ctx: &mut Ctx<'_>,
        response: &Response,
    ) -> (Step, bool, bool) {
        let status = response.status;
        match self.state {
            InviteState::Calling | InviteState::Proceeding => {
                ctx.stop(Timer::A);
                if status < 200 {
                    self.state = InviteState::Proceeding;
                    // Once proceeding the callee may ring as long as it likes: the
                    // transaction user's ring timeout decides, not Timer B (17.1.1.2).
                    if self.cancelling != Cancelling::Sent {
                        ctx.stop(Timer::B);
                    }
                    let send_cancel = self.cancelling == Cancelling::Waiting;
                    if send_cancel {
                        self.cancelling = Cancelling::Sent;
                        ctx.set(Timer::B, TIMEOUT);
                    }
                    return (Step::Keep, true, send_cancel);
                }
                ctx.stop(Timer::B);
                if status < 300 {
                    self.state = InviteState::Accepted;
                    ctx.set(Timer::M, TIMEOUT);
                    return (Step::Keep, true, false);
                }
                ctx.send(&self.ack_of_error(response).to_bytes());
                self.state = InviteState::Completed;
                match ctx.unreliable_wait(TIMER_D) {
                    Some(wait) => {
                        ctx.set(Timer::D, wait);
                        (Step::Keep, true, false)
                    }
                    None => (Step::Terminate, true, false),
                }
            }
            InviteState::Completed => {
                if status >= 300 {
                    ctx.send(&self.ack_of_error(response).to_bytes());
                }
                (Step::Keep, false, false)
            }
            InviteState::Accepted => {
                if (200..300).contains(&status)
                    && let Some(ack) = &self.ack
                {
                    ctx.send(ack);
                }
                (Step::Keep, false, false)
            }
        }
    }

    pub(crate) fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: Timer) -> (Step, Option<Outcome>) {
        match (timer, self.state) {
            (Timer::A, InviteState::Calling) => {
                ctx.send(&self.data);
                self.interval *= 2;
                ctx.set(Timer::A, self.interval);
                (Step::Keep, None)
            }
            (Timer::B, InviteState::Calling | InviteState::Proceeding) => {
                (Step::Terminate, Some(Outcome::NoResponse(Method::Invite)))
            }
            (Timer::D, InviteState::Completed) | (Timer::M, InviteState::Accepted) => {
                (Step::Terminate, None)
            }
            _ => (Step::Keep, None),
        }
    }

    pub(crate) fn cancel(&mut self, ctx: &mut Ctx<'_>) -> Cancel {
        match (self.state, self.cancelling) {
            (_, Cancelling::Sent | Cancelling::Waiting) => Cancel::Pending,
            (InviteState::Calling, Cancelling::No) => {
                self.cancelling = Cancelling::Waiting;
                Cancel::Pending
            }
            (InviteState::Proceeding, Cancelling::No) => {
                self.cancelling = Cancelling::Sent;
                // 9.1: without a final response within 64*T1 of the CANCEL, the INVITE
                // transaction is given up.
                ctx.set(Timer::B, TIMEOUT);
                Cancel::Now(self.cancel_request())
            }
            _ => Cancel::TooLate,
        }
    }

    /// The CANCEL of this INVITE (RFC 3261 section 9.1): the same Request-URI, Call-ID,
    /// From, To, CSeq number, top Via (so the same branch) and Route.
    pub(crate) fn cancel_request(&self) -> Request {
        self.in_transaction(Method::Cancel, self.request.headers.get("To"))
    }

    /// The ACK of a final error (RFC 3261 section 17.1.1.3): like the CANCEL, with the To of
    /// the response (which carries the callee's tag).
    fn ack_of_error(&self, response: &Response) -> Request {
        self.in_transaction(Method::Ack, response.headers.get("To"))
    }

    fn in_transaction(&self, method: Method, to: Option<&str>) -> Request {
        let invite = &self.request;
        let mut headers = Headers::new();
        if let Some(via) = invite.headers.values("Via").next() {
            headers.push("Via", via);
        }
        headers.push("Max-Forwards", "70");
        for route in invite.headers.values("Route") {
            headers.push("Route", route);
        }
        headers.push("From", invite.headers.get("From").unwrap_or(""));
        headers.push("To", to.unwrap_or(""));
        headers.push("Call-ID", invite.call_id());
        let number = invite.cseq().map_or(1, |c| c.number);
        headers.push("CSeq", format!("{number} {method}"));
        Request {
            method,
            uri: invite.uri.clone(),
            headers,
            body: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonInviteState {
    /// Sent, no response yet (Timers E and F run).
    Trying,
    /// A provisional response arrived (Timer E keeps at T2).
    Proceeding,
    /// A final response arrived (Timer K runs).
    Completed,
}

/// A non-INVITE client transaction (BYE, CANCEL, OPTIONS).
#[derive(Debug)]
pub(crate) struct NonInviteClient {
    state: NonInviteState,
    method: Method,
    data: Vec<u8>,
    interval: Duration,
}

impl NonInviteClient {
    pub(crate) fn start(ctx: &mut Ctx<'_>, request: &Request) -> Self {
        let data = request.to_bytes();
        ctx.send(&data);
        if !ctx.reliable() {
            ctx.set(Timer::E, T1);
        }
        ctx.set(Timer::F, TIMEOUT);
        Self {
            state: NonInviteState::Trying,
            method: request.method.clone(),
            data,
            interval: T1,
        }
    }

    pub(crate) fn on_response(&mut self, ctx: &mut Ctx<'_>, status: u16) -> (Step, bool) {
        match self.state {
            NonInviteState::Trying | NonInviteState::Proceeding if status < 200 => {
                self.state = NonInviteState::Proceeding;
                (Step::Keep, true)
            }
            NonInviteState::Trying | NonInviteState::Proceeding => {
                ctx.stop(Timer::E);
                ctx.stop(Timer::F);
                self.state = NonInviteState::Completed;
                match ctx.unreliable_wait(T4) {
                    Some(wait) => {
                        ctx.set(Timer::K, wait);
                        (Step::Keep, true)
                    }
                    None => (Step::Terminate, true),
                }
            }
            NonInviteState::Completed => (Step::Keep, false),
        }
    }

    pub(crate) fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: Timer) -> (Step, Option<Outcome>) {
        match (timer, self.state) {
            (Timer::E, NonInviteState::Trying | NonInviteState::Proceeding) => {
                ctx.send(&self.data);
                self.interval = if self.state == NonInviteState::Trying {
                    (self.interval * 2).min(T2)
                } else {
                    T2
                };
                ctx.set(Timer::E, self.interval);
                (Step::Keep, None)
            }
            (Timer::F, NonInviteState::Trying | NonInviteState::Proceeding) => (
                Step::Terminate,
                Some(Outcome::NoResponse(self.method.clone())),
            ),
            (Timer::K, NonInviteState::Completed) => (Step::Terminate, None),
            _ => (Step::Keep, None),
        }
    }
}
