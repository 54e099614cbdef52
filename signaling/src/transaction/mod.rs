//! RFC 3261 section 17 transactions, without sockets or clocks.
//!
//! Four state machines, one per kind ([`client::InviteClient`], [`client::NonInviteClient`],
//! [`server::InviteServer`], [`server::NonInviteServer`]), each with its own state enum and
//! the RFC's timers (A, B, D, E, F, G, H, I, J, K, and RFC 6026's L and M) kept in one
//! [`TimerTable`] keyed by transaction and timer. [`Transactions`] owns them all: it matches
//! every message to its transaction ([`key`]), absorbs retransmissions and answers them from
//! the last response, and passes up only what the transaction user must decide. Every flow of
//! the B2BUA (initial INVITE, re-INVITE, BYE, CANCEL, keepalive OPTIONS, REGISTER) goes
//! through this one implementation.
//!
//! Two choices beyond the letter of section 17, both from RFC 6026: a 2xx ends an INVITE
//! server transaction in `Accepted` (not `Terminated`), where retransmitted INVITEs are
//! absorbed and the 2xx itself is retransmitted until its ACK (the UAS core's duty in RFC
//! 3261 section 13.3.1.4, done here so it is written once); and an INVITE client transaction
//! that got a 2xx stays `Accepted` for Timer M, resending the ACK the transaction user gave it
//! for every retransmitted 2xx (the ACK of our 2xx was lost).
//!
//! Each transaction carries a tag of the transaction user's type `T` (for the B2BUA: which
//! call, which leg, which flow), handed back with every event.

pub(crate) mod client;
pub(crate) mod key;
pub(crate) mod server;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::sip::Peer;
use crate::sip::message::{Method, Request, Response};
use crate::timer::TimerTable;
use client::{InviteClient, NonInviteClient};
use key::Key;
use server::{InviteServer, NonInviteServer};

/// RFC 3261 T1: the round-trip estimate.
pub(crate) const T1: Duration = Duration::from_millis(500);
/// RFC 3261 T2: the longest retransmission interval of non-INVITE requests and 2xx.
pub(crate) const T2: Duration = Duration::from_secs(4);
/// RFC 3261 T4: the longest time a message stays in the network.
pub(crate) const T4: Duration = Duration::from_secs(5);
/// 64 x T1: Timers B, F, H, J, L and M.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(32);

/// Handle of one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TxId(u64);

/// The timers of RFC 3261 section 17 (table 4) and RFC 6026.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// INVITE client: retransmit the request (unreliable transports).
    A,
    /// INVITE client: give up waiting for a final response.
    B,
    /// INVITE client: absorb retransmitted final errors after the ACK.
    D,
    /// Non-INVITE client: retransmit the request.
    E,
    /// Non-INVITE client: give up.
    F,
    /// INVITE server: retransmit the final response (the 2xx too, RFC 3261 13.3.1.4).
    G,
    /// INVITE server: give up waiting for the ACK of an error.
    H,
    /// INVITE server: absorb retransmitted ACKs.
    I,
    /// Non-INVITE server: absorb retransmitted requests.
    J,
    /// Non-INVITE client: absorb retransmitted responses.
    K,
    /// INVITE server (RFC 6026): leave `Accepted`; the 2xx was never acknowledged if it fires
    /// before the ACK.
    L,
    /// INVITE client (RFC 6026): leave `Accepted`.
    M,
}

/// What a received request means for the transaction user.
#[derive(Debug)]
pub(crate) enum Received {
    /// A new request: a server transaction now exists for it; answer with
    /// [`Transactions::respond`].
    Request { tx: TxId, request: Request },
    /// An ACK the transaction user handles: the ACK of a 2xx (its own transaction, RFC 3261
    /// section 17.1.1.3). When its branch matched an accepted INVITE server transaction, that
    /// transaction has already stopped resending its 2xx.
    Ack { request: Request },
    /// A retransmission or the ACK of an error response: answered here.
    Absorbed,
}

/// A response for the transaction user, with the tag of the client transaction it belongs to.
#[derive(Debug)]
pub(crate) struct Answer<T> {
    pub tx: TxId,
    pub tag: T,
    pub response: Response,
}

/// A transaction that ended without the answer its user waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expired<T> {
    /// Timer B or F: no final response to our request.
    NoResponse { tx: TxId, tag: T, method: Method },
    /// Timer L: the 2xx we sent to an INVITE was never acknowledged.
    NoAck { tx: TxId, tag: Option<T> },
}

/// One datagram or stream write the driver performs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transmit {
    pub to: Peer,
    pub data: Vec<u8>,
}

#[derive(Debug)]
enum Machine {
    InviteClient(InviteClient),
    NonInviteClient(NonInviteClient),
    InviteServer(InviteServer),
    NonInviteServer(NonInviteServer),
}

#[derive(Debug)]
struct Entry<T> {
    key: Key,
    peer: Peer,
    tag: Option<T>,
    machine: Machine,
}

/// What a machine's step asks of the manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Keep the transaction.
    Keep,
    /// The transaction is over: forget it (and its timers).
    Terminate,
}

/// What a machine needs from its surroundings for one step.
pub(crate) struct Ctx<'a> {
    id: TxId,
    now: Instant,
    peer: Peer,
    timers: &'a mut TimerTable<(TxId, Timer)>,
    out: &'a mut Vec<Transmit>,
}

impl Ctx<'_> {
    pub(crate) fn send(&mut self, data: &[u8]) {
        self.out.push(Transmit {
            to: self.peer,
            data: data.to_vec(),
        });
    }

    pub(crate) fn set(&mut self, timer: Timer, after: Duration) {
        self.timers.set((self.id, timer), self.now + after);
    }

    pub(crate) fn stop(&mut self, timer: Timer) {
        self.timers.stop((self.id, timer));
    }

    pub(crate) fn reliable(&self) -> bool {
        self.peer.transport.reliable()
    }

    /// A wait that reliable transports skip (Timers D, I, J, K): None means "now".
    pub(crate) fn unreliable_wait(&self, wait: Duration) -> Option<Duration> {
        (!self.reliable()).then_some(wait)
    }
}

/// Every transaction of one SIP endpoint.
#[derive(Debug)]
pub(crate) struct Transactions<T> {
    entries: HashMap<TxId, Entry<T>>,
    keys: HashMap<Key, TxId>,
    timers: TimerTable<(TxId, Timer)>,
    /// The tags of CANCELs waiting for their INVITE's first provisional response.
    cancel_tags: HashMap<TxId, T>,
    next: u64,
    out: Vec<Transmit>,
}

impl<T> Default for Transactions<T> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            keys: HashMap::new(),
            timers: TimerTable::default(),
            cancel_tags: HashMap::new(),
            next: 0,
            out: Vec::new(),
        }
    }
}

impl<T: Copy> Transactions<T> {
    /// Takes everything there is to send, in order.
    pub(crate) fn drain_transmits(&mut self) -> std::vec::Drain<'_, Transmit> {
        self.out.drain(..)
    }

    /// The earliest transaction deadline.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_timeout()
    }

    /// Transactions alive.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Armed transaction timers.
    pub(crate) fn timers(&self) -> usize {
        self.timers.len()
    }

    fn allocate(&mut self) -> TxId {
        self.next += 1;
        TxId(self.next)
    }

    fn step<R>(
        &mut self,
        id: TxId,
        now: Instant,
        f: impl FnOnce(&mut Machine, &mut Ctx<'_>) -> (Step, R),
    ) -> Option<R> {
        let entry = self.entries.get_mut(&id)?;
        let mut ctx = Ctx {
            id,
            now,
            peer: entry.peer,
            timers: &mut self.timers,
            out: &mut self.out,
        };
        let (step, result) = f(&mut entry.machine, &mut ctx);
        if step == Step::Terminate {
            self.terminate(id);
        }
        Some(result)
    }

    fn terminate(&mut self, id: TxId) {
        self.cancel_tags.remove(&id);
        if let Some(entry) = self.entries.remove(&id) {
            if self.keys.get(&entry.key) == Some(&id) {
                self.keys.remove(&entry.key);
            }
            for timer in [
                Timer::A,
                Timer::B,
                Timer::D,
                Timer::E,
                Timer::F,
                Timer::G,
                Timer::H,
                Timer::I,
                Timer::J,
                Timer::K,
                Timer::L,
                Timer::M,
            ] {
                self.timers.stop((id, timer));
            }
        }
    }

    /// The tag of a transaction.
    pub(crate) fn tag(&self, tx: TxId) -> Option<T> {
        self.entries.get(&tx).and_then(|e| e.tag)
    }

    /// Tags a server transaction with its transaction user's handle.
    pub(crate) fn set_tag(&mut self, tx: TxId, tag: T) {
        if let Some(entry) = self.entries.get_mut(&tx) {
            entry.tag = Some(tag);
        }
    }

    // ---- server side -------------------------------------------------------------------

    /// A request from `from`: a retransmission is answered here, anything new is passed up.
    /// Requests whose top Via cannot be read make no transaction; they are passed up with an
    /// untracked id, and answering them sends once without retransmission state.
    pub(crate) fn on_request(&mut self, now: Instant, from: Peer, request: Request) -> Received {
        let Some(key) = Key::server(&request) else {
            return Received::Absorbed;
        };
        if let Some(&id) = self.keys.get(&key) {
            let is_ack = request.method == Method::Ack;
            let passed = self.step(id, now, |machine, ctx| match machine {
                Machine::InviteServer(m) if is_ack => m.on_ack(ctx),
                Machine::InviteServer(m) => (m.on_retransmission(ctx), false),
                Machine::NonInviteServer(m) => (m.on_retransmission(ctx), false),
                _ => (Step::Keep, false),
            });
            return match passed {
                Some(true) => Received::Ack { request },
                _ => Received::Absorbed,
            };
        }
        if request.method == Method::Ack {
            // The ACK of a 2xx is a transaction of its own (17.1.1.3), for the dialog.
            return Received::Ack { request };
        }
        let id = self.allocate();
        let machine = if request.method == Method::Invite {
            Machine::InviteServer(InviteServer::new())
        } else {
            Machine::NonInviteServer(NonInviteServer::new())
        };
        self.keys.insert(key.clone(), id);
        self.entries.insert(
            id,
            Entry {
                key,
                peer: from,
                tag: None,
                machine,
            },
        );
        Received::Request { tx: id, request }
    }

    /// Sends the transaction user's response on a server transaction. Returns false when the
    /// transaction is gone (then nothing was sent).
    pub(crate) fn respond(&mut self, now: Instant, tx: TxId, response: &Response) -> bool {
        let data = response.to_bytes();
        let status = response.status;
        self.step(tx, now, |machine, ctx| match machine {
            Machine::InviteServer(m) => (m.respond(ctx, status, data), ()),
            Machine::NonInviteServer(m) => (m.respond(ctx, status, data), ()),
            _ => (Step::Keep, ()),
        })
        .is_some()
    }

    /// The ACK of the 2xx sent on `tx` arrived (matched by the dialog): stop resending it.
    pub(crate) fn acknowledge(&mut self, now: Instant, tx: TxId) {
        self.step(tx, now, |machine, ctx| match machine {
            Machine::InviteServer(m) => m.on_ack(ctx),
            _ => (Step::Keep, false),
        });
    }

    /// The INVITE server transaction a CANCEL targets, if it is still waiting for its final
    /// response (RFC 3261 section 9.2).
    pub(crate) fn cancelled_invite(&self, cancel: &Request) -> Option<(TxId, Option<T>)> {
        let key = Key::cancelled_invite(cancel)?;
        let id = *self.keys.get(&key)?;
        let entry = self.entries.get(&id)?;
        match &entry.machine {
            Machine::InviteServer(m) if m.is_proceeding() => Some((id, entry.tag)),
            _ => None,
        }
    }

    // ---- client side -------------------------------------------------------------------

    /// Sends a request in a new client transaction to `to`. The request's top Via must carry
    /// a fresh branch; an ACK is not a transaction and must be sent directly.
    pub(crate) fn send(&mut self, now: Instant, to: Peer, request: Request, tag: T) -> TxId {
        debug_assert!(request.method != Method::Ack, "an ACK is not a transaction");
        let branch = request
            .headers
            .values("Via")
            .next()
            .and_then(crate::sip::header::Via::parse)
            .and_then(|v| v.branch().map(str::to_owned))
            .unwrap_or_default();
        let key = Key::client(&branch, &request.method);
        let id = self.allocate();
        let mut ctx = Ctx {
            id,
            now,
            peer: to,
            timers: &mut self.timers,
            out: &mut self.out,
        };
        let machine = if request.method == Method::Invite {
            Machine::InviteClient(InviteClient::start(&mut ctx, request))
        } else {
            Machine::NonInviteClient(NonInviteClient::start(&mut ctx, &request))
        };
        self.keys.insert(key.clone(), id);
        self.entries.insert(
            id,
            Entry {
                key,
                peer: to,
                tag: Some(tag),
                machine,
            },
        );
        id
    }

    /// A response: passed up when its transaction's user needs it, absorbed when it is a
    /// retransmission (a retransmitted error is acknowledged again, a retransmitted 2xx gets
    /// the ACK given to [`Self::set_ack`]).
    pub(crate) fn on_response(&mut self, now: Instant, response: Response) -> Option<Answer<T>> {
        let key = Key::of_response(&response)?;
        let id = *self.keys.get(&key)?;
        let tag = self.tag(id)?;
        let mut cancel = None;
        let passed = self.step(id, now, |machine, ctx| match machine {
            Machine::InviteClient(m) => {
                let (step, passed, send_cancel) = m.on_response(ctx, &response);
                if send_cancel {
                    cancel = Some(m.cancel_request());
                }
                (step, passed)
            }
            Machine::NonInviteClient(m) => m.on_response(ctx, response.status),
            _ => (Step::Keep, false),
        })?;
        if let Some(request) = cancel {
            let peer = self.entries.get(&id).map(|e| e.peer);
            if let (Some(peer), Some(cancel_tag)) = (peer, self.cancel_tags.remove(&id)) {
                self.send(now, peer, request, cancel_tag);
            }
        }
        passed.then_some(Answer {
            tx: id,
            tag,
            response,
        })
    }

    /// The ACK to resend for every retransmission of the 2xx that `tx` (an INVITE client
    /// transaction) accepted.
    pub(crate) fn set_ack(&mut self, tx: TxId, ack: &Request) {
        if let Some(Entry {
            machine: Machine::InviteClient(m),
            ..
        }) = self.entries.get_mut(&tx)
        {
            m.set_ack(ack.to_bytes());
        }
    }

    /// Cancels an INVITE client transaction (RFC 3261 section 9.1): the CANCEL, a
    /// transaction of its own tagged `cancel_tag`, goes now when a provisional response has
    /// arrived, or as soon as one does. Returns false when the INVITE already has a final
    /// response (too late to cancel).
    pub(crate) fn cancel(&mut self, now: Instant, tx: TxId, cancel_tag: T) -> bool {
        let Some(peer) = self.entries.get(&tx).map(|e| e.peer) else {
            return false;
        };
        let request = self.step(tx, now, |machine, ctx| match machine {
            Machine::InviteClient(m) => (Step::Keep, m.cancel(ctx)),
            _ => (Step::Keep, client::Cancel::TooLate),
        });
        match request {
            Some(client::Cancel::Now(request)) => {
                self.send(now, peer, request, cancel_tag);
                true
            }
            Some(client::Cancel::Pending) => {
                self.cancel_tags.insert(tx, cancel_tag);
                true
            }
            _ => false,
        }
    }

    /// Runs every timer due at `now`; returns the transactions whose users must hear of it.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Vec<Expired<T>> {
        let mut expired = Vec::new();
        while let Some((id, timer)) = self.timers.pop_expired(now) {
            let Some(tag) = self.entries.get(&id).map(|e| e.tag) else {
                continue;
            };
            let outcome = self.step(id, now, |machine, ctx| match machine {
                Machine::InviteClient(m) => m.on_timer(ctx, timer),
                Machine::NonInviteClient(m) => m.on_timer(ctx, timer),
                Machine::InviteServer(m) => m.on_timer(ctx, timer),
                Machine::NonInviteServer(m) => m.on_timer(ctx, timer),
            });
            match (outcome.flatten(), tag) {
                (Some(Outcome::NoResponse(method)), Some(tag)) => {
                    expired.push(Expired::NoResponse {
                        tx: id,
                        tag,
                        method,
                    });
                }
                (Some(Outcome::NoAck), tag) => expired.push(Expired::NoAck { tx: id, tag }),
                _ => {}
            }
        }
        expired
    }
}

/// What a timer meant, when the transaction user must hear of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    NoResponse(Method),
    NoAck,
}

#[cfg(test)]
mod tests;
