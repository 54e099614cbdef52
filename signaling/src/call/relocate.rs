//! Moving a call's media when its node is lost (docs/operations.md): the driver sets the call up
//! on another node from the last SDP of each leg ([`Output::Relocate`]), and the core offers
//! each phone the new relay address and ports in a re-INVITE of its own (RFC 3261 section 14,
//! RFC 3264 section 8: a new offer with a higher `o=` version). If no node can take the call,
//! or a phone refuses the move, the call ends with BYE on both legs and a record that names the
//! lost node.

use std::time::{Duration, Instant};

use super::MediaError;
use super::messages::body_sdp;
use super::{
    CallRef, CallTimer, Core, Disposition, Endpoint, Flow, HangupSide, MediaMove, MediaPlan,
    Output, Side, State, TxTag,
};
use crate::policy::MediaMode;
use crate::sip::message::Response;
use crate::transaction::TxId;

/// Glare retries of one side's move re-INVITE before the call is given up.
const GLARE_RETRIES: u8 = 3;

/// Where one side's move re-INVITE stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offer {
    /// Out, in this transaction.
    Sent(TxId),
    /// Answered 491; sent again when the side's `CallTimer::Relocate` fires.
    Waiting,
    /// Accepted.
    Done,
}

/// A move in progress.
#[derive(Debug, Clone)]
pub(super) struct Relocation {
    /// The node id lost and why.
    from: String,
    reason: String,
    /// Our re-INVITE to each side.
    offers: [Offer; 2],
    /// The SDP offered to each side (kept for a retry after glare).
    bodies: [Vec<u8>; 2],
    /// 491s each side answered.
    glare: [u8; 2],
}

impl Core {
    /// Every call on the node at `endpoint` moves (answered calls) or fails (calls still
    /// being set up: their SDP went out with the lost node's address).
    pub(super) fn on_node_lost(&mut self, now: Instant, endpoint: &Endpoint, reason: &str) {
        let mut calls: Vec<CallRef> = self
            .calls
            .iter()
            .filter(|(_, c)| {
                !c.finished && c.media.as_ref().is_some_and(|m| m.endpoint == *endpoint)
            })
            .map(|(call, _)| *call)
            .collect();
        calls.sort_unstable();
        for call in calls {
            self.relocate(now, call, reason);
        }
    }

    /// Moves one call off its node, lost for `reason`.
    pub(super) fn relocate(&mut self, now: Instant, call: CallRef, reason: &str) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let node = record
            .media
            .as_ref()
            .map_or_else(String::new, |m| m.node.clone());
        let why = format!("media proxy {node} lost ({reason})");
        match record.state {
            State::Answered | State::Confirmed if record.relocating.is_none() => {
                let sdp = |side: Side| {
                    record.last_sdp[side.index()]
                        .as_deref()
                        .and_then(|body| body_sdp(body).ok().flatten())
                };
                let (Some(mut caller), Some(mut callee)) = (sdp(Side::A), sdp(Side::B)) else {
                    let reason = format!("{why}; no SDP of both legs to move the call with");
                    self.end_answered(now, call, HangupSide::System, reason);
                    return;
                };
                caller.signaling_ip = Some(record.a.peer.addr.ip());
                callee.signaling_ip = Some(record.b.peer.addr.ip());
                tracing::warn!(call_id = %record.key, %node, reason, "media node lost; moving the call");
                record.relocating = Some(Relocation {
                    from: node,
                    reason: reason.to_owned(),
                    offers: [Offer::Waiting, Offer::Waiting],
                    bodies: [Vec::new(), Vec::new()],
                    glare: [0, 0],
                });
                let lost = record.media.as_ref().map(|m| m.endpoint.clone());
                let call_id = record.key.clone();
                let reflect = record.mode == MediaMode::Reflect;
                self.push(Output::Relocate {
                    call,
                    call_id,
                    caller,
                    callee,
                    lost,
                    reflect,
                });
            }
            State::Calling | State::Proceeding => {
                self.cancel_b(now, call);
                self.fail_a(now, call, 503, Disposition::Failed, HangupSide::System, why);
            }
            State::LateOfferPending => {
                self.drop_held_answer(now, call);
                self.fail_a(now, call, 503, Disposition::Failed, HangupSide::System, why);
            }
            _ => {}
        }
    }

    /// The driver's answer to a relocation: re-INVITE both legs to the new node, or end.
    pub(super) fn on_relocated(
        &mut self,
        now: Instant,
        call: CallRef,
        result: Result<MediaPlan, MediaError>,
    ) {
        let live = self
            .calls
            .get(&call)
            .is_some_and(|r| !r.finished && r.relocating.is_some());
        if !live {
            // The call ended meanwhile: the new node's session is nobody's.
            if let Ok(plan) = result
                && let Some(record) = self.calls.get(&call)
            {
                let call_id = record.key.clone();
                self.push(Output::ReleaseMedia {
                    endpoint: plan.endpoint,
                    call_id,
                });
            }
            return;
        }
        let record = self.calls.get_mut(&call).expect("checked");
        let after_s = now.saturating_duration_since(record.start).as_secs();
        let relocation = record.relocating.clone().expect("checked");
        let plan = match result {
            Ok(plan) => plan,
            Err(error) => {
                record.relocating = None;
                record.moves.push(MediaMove {
                    from: relocation.from.clone(),
                    reason: relocation.reason.clone(),
                    to: None,
                    after_s,
                });
                let reason = format!(
                    "media proxy {} lost ({}); no other node could take the call: {error}",
                    relocation.from, relocation.reason
                );
                tracing::warn!(call_id = %record.key, %reason, "call not moved");
                self.end_answered(now, call, HangupSide::System, reason);
                return;
            }
        };
        tracing::info!(call_id = %record.key, from = %relocation.from, to = %plan.node, "media moved; re-INVITE of both legs");
        record.moves.push(MediaMove {
            from: relocation.from.clone(),
            reason: relocation.reason.clone(),
            to: Some(plan.node.clone()),
            after_s,
        });
        record.media = Some(plan);
        if record.answer.is_some() {
            let open = record.open_record(now);
            self.push(Output::Answered(open));
        }
        self.restart_recording_after_move(call);
        for side in [Side::A, Side::B] {
            let Some(record) = self.calls.get_mut(&call) else {
                return;
            };
            record.sdp_bump[side.index()] += 1;
            let source = record.last_sdp[side.other().index()]
                .clone()
                .unwrap_or_default();
            match record.rewrite_to(side, &source) {
                Ok(body) => {
                    if let Some(moving) = record.relocating.as_mut() {
                        moving.bodies[side.index()] = body;
                    }
                }
                Err(error) => {
                    let reason = format!("the call's SDP could not be moved: {error}");
                    self.end_answered(now, call, HangupSide::System, reason);
                    return;
                }
            }
        }
        for side in [Side::A, Side::B] {
            self.send_relocation(now, call, side);
        }
    }

    /// Sends `side` the re-INVITE offering the new node (again, after a 491).
    pub(super) fn send_relocation(&mut self, now: Instant, call: CallRef, side: Side) {
        let local = self.local();
        let branch = self.ids.branch();
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let Some(body) = record
            .relocating
            .as_ref()
            .filter(|m| m.offers[side.index()] == Offer::Waiting)
            .map(|m| m.bodies[side.index()].clone())
        else {
            return;
        };
        let (peer, invite) = record
            .dialog(side)
            .invite(local, &branch, "application/sdp", body);
        let tag = TxTag {
            call,
            side,
            flow: Flow::Relocate,
        };
        let tx = self.transactions.send(now, peer, invite, tag);
        if let Some(moving) = self
            .calls
            .get_mut(&call)
            .and_then(|r| r.relocating.as_mut())
        {
            moving.offers[side.index()] = Offer::Sent(tx);
        }
    }

    /// A phone answered the re-INVITE that moves its media.
    pub(super) fn on_relocate_response(
        &mut self,
        now: Instant,
        call: CallRef,
        side: Side,
        tx: TxId,
        response: Response,
    ) {
        if response.status < 200 {
            return;
        }
        let success = (200..300).contains(&response.status);
        if success {
            self.ack_reinvite(call, side, tx, &response);
        }
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        let Some(moving) = record.relocating.as_mut() else {
            return;
        };
        if moving.offers[side.index()] != Offer::Sent(tx) {
            return;
        }
        if response.status == 491 && moving.glare[side.index()] < GLARE_RETRIES {
            // Glare with the phone's own re-INVITE (RFC 3261 section 14.1): try again after
            // 2.1-4 s where we chose the Call-ID (the callee's dialog), 0-2 s where not.
            moving.glare[side.index()] += 1;
            moving.offers[side.index()] = Offer::Waiting;
            let (low, high) = match side {
                Side::B => (Duration::from_millis(2100), Duration::from_secs(4)),
                Side::A => (Duration::ZERO, Duration::from_secs(2)),
            };
            let wait = self.ids.delay(low, high);
            self.set_timer(now, call, CallTimer::Relocate(side), wait);
            return;
        }
        moving.offers[side.index()] = Offer::Done;
        let done = moving.offers.iter().all(|o| *o == Offer::Done);
        if !success {
            let node = record.media.as_ref().map_or("", |m| m.node.as_str());
            let reason = format!(
                "the {} refused the re-INVITE moving its media to {node} ({} {})",
                side.party(),
                response.status,
                response.reason
            );
            record.relocating = None;
            self.end_answered(now, call, HangupSide::System, reason);
            return;
        }
        if let Ok(Some(answer)) = body_sdp(&response.body) {
            record.last_sdp[side.index()] = Some(response.body.clone());
            if let Some(update) = record.media_update(side, answer) {
                self.push(update);
            }
        }
        if done && let Some(record) = self.calls.get_mut(&call) {
            record.relocating = None;
            tracing::info!(call_id = %record.key, "both legs moved to the new media node");
        }
    }

    /// A phone did not answer the re-INVITE that moves its media.
    pub(super) fn on_relocate_timeout(
        &mut self,
        now: Instant,
        call: CallRef,
        side: Side,
        tx: TxId,
    ) {
        let Some(record) = self.calls.get_mut(&call) else {
            return;
        };
        if record
            .relocating
            .as_ref()
            .is_none_or(|m| m.offers[side.index()] != Offer::Sent(tx))
        {
            return;
        }
        record.relocating = None;
        let reason = format!(
            "the {} did not answer the re-INVITE moving its media",
            side.party()
        );
        self.end_answered(now, call, HangupSide::System, reason);
    }
}
