//! Call flows on the simulated network ([`super::sim`]): each test scripts the two phones,
//! bends the channel where the flow is interesting (a lost 200, a lost ACK, a CANCEL that
//! crosses a 200, glare, BYEs that cross) and checks what each phone saw, what the core
//! recorded and that nothing is left behind. RFC 3261 sections are cited where the behaviour
//! comes from.
//!
//! One file per flow: [`basic`] (INVITE to BYE, retransmissions, CANCEL, timeouts),
//! [`reinvite`], [`media`] (relayed media), [`relocate`] (moves and stale sessions),
//! [`recording`], [`fork`] (forking, redirects, forwarding), [`relayed`] (INFO, MESSAGE, NOTIFY across the legs), [`update`], [`transfer`], [`attended`], [`reliable`] (100rel), [`session_timer`] and
//! [`admission`] (what a request must be to get in). This file holds what
//! they share: establishing calls, relay settings and media plans, and the final check that
//! nothing is left behind.

mod admission;
mod attended;
mod basic;
mod fork;
mod media;
mod recording;
mod reinvite;
mod relayed;
mod reliable;
mod relocate;
mod session_timer;
mod transfer;
mod update;

use std::time::Duration;

use proto::domain::Leg;

use super::MediaError;
use super::sim::{A, B, Phone, SDP, Sim, answer, invite, requests, responses, settings};
use super::{CallId, Input, MediaPlan, Output};
use crate::policy::MediaMode;
use crate::sip::message::Request;
use crate::transaction::TIMEOUT;

/// A call's key, as a test writes it.
fn key(text: &str) -> CallId {
    CallId::parse(text).expect("a valid call id")
}

const MS: Duration = Duration::from_millis(1);

/// What an established call's phones need to speak in its dialogs.
struct Established {
    /// The INVITE the callee received.
    to_b: Request,
    /// The To of the caller's dialog as the caller sees it (with our tag).
    a_to: String,
}

/// A's From in the caller's dialog.
const A_FROM: &str = "<sip:alice@127.0.0.1>;tag=af";

/// A call from A to B, answered and acknowledged, on `sim`.
fn establish(sim: &mut Sim, call_id: &str) -> Established {
    establish_on(sim, call_id, false)
}

/// [`establish`] for relay settings: the media proxy answers with [`plan`].
fn establish_relayed(sim: &mut Sim, call_id: &str) -> Established {
    establish_on(sim, call_id, true)
}

fn establish_on(sim: &mut Sim, call_id: &str, relayed: bool) -> Established {
    sim.send(A, &invite(call_id, &format!("z9hG4bK{call_id}i"), SDP));
    sim.run(20 * MS);
    if relayed {
        allocated(sim, Ok(plan()));
        sim.run(20 * MS);
    }
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    sim.send(B, &answer(&to_b, "180 Ringing", Some("bt"), ""));
    sim.send(B, &answer(&to_b, "200 OK", Some("bt"), SDP));
    sim.run(20 * MS);
    let at_a = sim.take(A);
    let ok = responses(&at_a, 200)[0].clone();
    let a_to = ok.headers.get("To").unwrap().to_owned();
    sim.send(
        A,
        &Phone {
            call_id,
            from: A_FROM,
            to: &a_to,
            port: 5061,
        }
        .request("ACK", 1, &format!("z9hG4bK{call_id}a"), ""),
    );
    sim.run(20 * MS);
    assert_eq!(requests(&sim.take(B), "ACK").len(), 1, "B got its ACK");
    Established { to_b, a_to }
}

/// B's From and To in the callee's dialog (B speaks as the UAS of our INVITE).
fn b_dialog(call: &Established) -> (String, String) {
    let to = format!("{};tag=bt", call.to_b.headers.get("To").unwrap());
    let from = call.to_b.headers.get("From").unwrap().to_owned();
    (to, from)
}

/// After every test: once the longest linger has passed, nothing is left.
fn assert_clean(sim: &mut Sim) {
    sim.run(TIMEOUT + Duration::from_secs(6));
    assert_eq!(sim.core.calls_in_memory(), 0, "calls forgotten");
    assert_eq!(sim.core.transactions_alive(), 0, "transactions ended");
    assert_eq!(sim.core.pending_timers(), 0, "no timer left");
    assert_eq!(sim.core.poll_timeout(), None);
}

/// Relay mode, with the media proxy's answer given by the test.
fn relay_settings() -> super::Settings {
    let mut config = settings();
    config.media_mode = MediaMode::Relay;
    config
}

fn plan() -> MediaPlan {
    MediaPlan {
        node: "sim".into(),
        endpoint: "http://sim".into(),
        advertised: "192.0.2.10".parse().unwrap(),
        caller_ports: vec![30_000],
        callee_ports: vec![30_002],
    }
}

/// Answers the last allocation the core asked for.
fn allocated(sim: &mut Sim, result: Result<MediaPlan, MediaError>) -> Leg {
    let (call, leg, signaling_ip) = sim
        .outputs
        .iter()
        .rev()
        .find_map(|o| match o {
            Output::Allocate {
                call,
                offer_leg,
                offer,
                ..
            } => Some((*call, *offer_leg, offer.signaling_ip)),
            _ => None,
        })
        .expect("an allocation");
    // The proxy is told where the offering leg's SIP came from (its NAT's public side).
    assert_eq!(
        signaling_ip,
        Some(std::net::IpAddr::from([127, 0, 0, 1])),
        "the offer's signaling address"
    );
    sim.input(Input::MediaReady { call, result });
    leg
}

/// The last allocation the core asked for: its call, the leg that offered, the session key.
fn last_allocation(sim: &Sim) -> (super::CallRef, Leg, CallId) {
    sim.outputs
        .iter()
        .rev()
        .find_map(|o| match o {
            Output::Allocate {
                call,
                offer_leg,
                call_id,
                ..
            } => Some((*call, *offer_leg, call_id.clone())),
            _ => None,
        })
        .expect("an allocation")
}

/// Answers 200 to every `method` request that reached `peer`; how many distinct ones came
/// (retransmissions aside).
fn answer_all(sim: &mut Sim, peer: crate::sip::Peer, method: &str) -> usize {
    let mut seen = std::collections::HashSet::new();
    for message in sim.take(peer) {
        if let crate::sip::message::Message::Request(request) = message
            && request.method.as_str() == method
        {
            seen.insert(request.headers.get("CSeq").unwrap_or("").to_owned());
            sim.send(peer, &answer(&request, "200 OK", None, ""));
        }
    }
    seen.len()
}

fn relocation(sim: &Sim) -> Option<(super::CallRef, u16, u16, String)> {
    sim.outputs.iter().rev().find_map(|o| match o {
        Output::Relocate {
            call,
            caller,
            callee,
            lost,
            ..
        } => Some((
            *call,
            caller.media[0].port,
            callee.media[0].port,
            lost.as_ref().map(ToString::to_string).unwrap_or_default(),
        )),
        _ => None,
    })
}
