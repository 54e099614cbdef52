//! Server transactions: RFC 3261 sections 17.2.1 (INVITE) and 17.2.2 (non-INVITE), with the
//! `Accepted` state of RFC 6026 section 7.1.

use std::time::Duration;

use super::{Ctx, Outcome, Step, T1, T2, T4, TIMEOUT, Timer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InviteState {
    /// Waiting for the transaction user's final response; retransmitted INVITEs get the last
    /// provisional one.
    Proceeding,
    /// A final error was sent (Timers G and H run) and is resent until its ACK.
    Completed,
    /// The ACK of the error arrived (Timer I runs).
    Confirmed,
    /// A 2xx was sent (RFC 6026; Timers G and L run): retransmitted INVITEs are absorbed and
    /// the 2xx is resent until the transaction user reports its ACK (RFC 3261 13.3.1.4).
    Accepted { acknowledged: bool },
}

/// An INVITE server transaction.
#[derive(Debug)]
pub(crate) struct InviteServer {
    state: InviteState,
    last: Option<Vec<u8>>,
    interval: Duration,
}

impl InviteServer {
    pub(crate) fn new() -> Self {
        Self {
            state: InviteState::Proceeding,
            last: None,
            interval: T1,
        }
    }

    pub(crate) fn is_proceeding(&self) -> bool {
        self.state == InviteState::Proceeding
    }

    pub(crate) fn on_retransmission(&mut self, ctx: &mut Ctx<'_>) -> Step {
        if matches!(self.state, InviteState::Proceeding | InviteState::Completed)
            && let Some(last) = &self.last
        {
            ctx.send(last);
        }
        Step::Keep
    }

    /// Returns the step and whether the ACK goes up (it does for a 2xx: it belongs to the
    /// dialog, and the transaction user may have waited for its SDP).
    pub(crate) fn on_ack(&mut self, ctx: &mut Ctx<'_>) -> (Step, bool) {
        match self.state {
            InviteState::Completed => {
                ctx.stop(Timer::G);
                ctx.stop(Timer::H);
                self.state = InviteState::Confirmed;
                match ctx.unreliable_wait(T4) {
                    Some(wait) => {
                        ctx.set(Timer::I, wait);
                        (Step::Keep, false)
                    }
                    None => (Step::Terminate, false),
                }
            }
            InviteState::Accepted { acknowledged } => {
                ctx.stop(Timer::G);
                self.state = InviteState::Accepted { acknowledged: true };
                (Step::Keep, !acknowledged)
            }
            _ => (Step::Keep, false),
        }
    }

    pub(crate) fn respond(&mut self, ctx: &mut Ctx<'_>, status: u16, data: Vec<u8>) -> Step {
        if self.state != InviteState::Proceeding {
            return Step::Keep;
        }
        ctx.send(&data);
        self.last = Some(data);
        if status < 200 {
            return Step::Keep;
        }
        self.interval = T1;
        if status < 300 {
            // 13.3.1.4: the 2xx is resent whatever the transport, until its ACK.
            self.state = InviteState::Accepted {
                acknowledged: false,
            };
            ctx.set(Timer::G, T1);
            ctx.set(Timer::L, TIMEOUT);
        } else {
            self.state = InviteState::Completed;
            if !ctx.reliable() {
                ctx.set(Timer::G, T1);
            }
            ctx.set(Timer::H, TIMEOUT);
        }
        Step::Keep
    }

    pub(crate) fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: Timer) -> (Step, Option<Outcome>) {
        match (timer, self.state) {
            (
                Timer::G,
                InviteState::Completed
                | InviteState::Accepted {
                    acknowledged: false,
                },
            ) => {
                if let Some(last) = &self.last {
                    ctx.send(last);
                }
                self.interval = (self.interval * 2).min(T2);
                ctx.set(Timer::G, self.interval);
                (Step::Keep, None)
            }
            (Timer::H, InviteState::Completed) | (Timer::I, InviteState::Confirmed) => {
                (Step::Terminate, None)
            }
            (Timer::L, InviteState::Accepted { acknowledged }) => {
                (Step::Terminate, (!acknowledged).then_some(Outcome::NoAck))
            }
            _ => (Step::Keep, None),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonInviteState {
    /// Waiting for the transaction user; retransmissions are absorbed.
    Trying,
    /// A provisional response was sent; retransmissions get it again.
    Proceeding,
    /// The final response was sent (Timer J runs); retransmissions get it again.
    Completed,
}

/// A non-INVITE server transaction (BYE, CANCEL, OPTIONS, REGISTER).
#[derive(Debug)]
pub(crate) struct NonInviteServer {
    state: NonInviteState,
    last: Option<Vec<u8>>,
}

impl NonInviteServer {
    pub(crate) fn new() -> Self {
        Self {
            state: NonInviteState::Trying,
            last: None,
        }
    }

    pub(crate) fn on_retransmission(&mut self, ctx: &mut Ctx<'_>) -> Step {
        if self.state != NonInviteState::Trying
            && let Some(last) = &self.last
        {
            ctx.send(last);
        }
        Step::Keep
    }

    pub(crate) fn respond(&mut self, ctx: &mut Ctx<'_>, status: u16, data: Vec<u8>) -> Step {
        if self.state == NonInviteState::Completed {
            return Step::Keep;
        }
        ctx.send(&data);
        self.last = Some(data);
        if status < 200 {
            self.state = NonInviteState::Proceeding;
            return Step::Keep;
        }
        self.state = NonInviteState::Completed;
        match ctx.unreliable_wait(TIMEOUT) {
            Some(wait) => {
                ctx.set(Timer::J, wait);
                Step::Keep
            }
            None => Step::Terminate,
        }
    }

    pub(crate) fn on_timer(&mut self, _ctx: &mut Ctx<'_>, timer: Timer) -> (Step, Option<Outcome>) {
        match (timer, self.state) {
            (Timer::J, NonInviteState::Completed) => (Step::Terminate, None),
            _ => (Step::Keep, None),
        }
    }
}
