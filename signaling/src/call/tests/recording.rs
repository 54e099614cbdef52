//! Recording: by policy from the answer (user over route over default), on in new files after
//! a move, and refused for direct calls.

use super::{A_FROM, MS, allocated, plan, relay_settings, relocation};
use crate::call::sim::{A, B, Phone, SDP, Sim, answer, invite, requests, responses, settings};
use crate::call::{Input, MediaPlan, Output};
use crate::call::{MediaError, RecordingAction};

/// Recording requests the core asked for, in order: (endpoint, call id, action, file stem).
fn recording_requests(sim: &Sim) -> Vec<(String, String, RecordingAction, String)> {
    sim.outputs
        .iter()
        .filter_map(|o| match o {
            Output::Recording { target, action } => Some((
                target.endpoint.to_string(),
                target.call_id.to_string(),
                *action,
                target.file_stem.clone(),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn policy_records_from_the_answer_and_a_moved_call_records_on_in_new_files() {
    let mut config = relay_settings();
    config.record = true;
    let mut sim = Sim::new(config);
    sim.send(A, &invite("rec", "z9hG4bKrec", SDP));
    sim.run(20 * MS);
    allocated(
        &mut sim,
        Ok(MediaPlan {
            node: "node-1".into(),
            endpoint: "http://n1".into(),
            ..plan()
        }),
    );
    sim.run(20 * MS);
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    sim.send(B, &answer(&to_b, "183 Session Progress", Some("bt"), SDP));
    sim.run(20 * MS);
    assert!(
        recording_requests(&sim).is_empty(),
        "early media is not recorded"
    );
    sim.send(B, &answer(&to_b, "200 OK", Some("bt"), SDP));
    sim.run(20 * MS);
    let ok = responses(&sim.take(A), 200)[0].clone();
    let a_to = ok.headers.get("To").unwrap().to_owned();
    let start = RecordingAction::Start { pcap: false };
    assert_eq!(
        recording_requests(&sim),
        [("http://n1".into(), "rec".into(), start, String::new())],
        "started once, at the answer, on the call's node, named by the caller's Call-ID"
    );
    // An operator pauses it (by the callee leg's Call-ID).
    let b_call_id = to_b.call_id().to_owned();
    let target = sim
        .core
        .recording_request(&b_call_id, RecordingAction::Pause)
        .unwrap();
    assert_eq!(
        (target.endpoint.as_str(), target.call_id.as_str()),
        ("http://n1", "rec")
    );
    sim.input(Input::RecordingDone {
        call: target.call,
        action: RecordingAction::Pause,
        result: Ok(()),
    });
    // The node is lost; the call moves, and its paused recording is set up again there.
    sim.input(Input::MediaNodeLost {
        endpoint: "http://n1".into(),
        reason: "stopped answering its health checks".into(),
    });
    let (call, ..) = relocation(&sim).expect("a relocation");
    sim.input(Input::Relocated {
        call,
        result: Ok(MediaPlan {
            node: "node-2".into(),
            endpoint: "http://n2".into(),
            ..plan()
        }),
    });
    let stem = "rec-moved-1".to_owned();
    assert_eq!(
        recording_requests(&sim)[1..],
        [
            ("http://n2".into(), "rec".into(), start, stem.clone()),
            (
                "http://n2".into(),
                "rec".into(),
                RecordingAction::Pause,
                stem
            ),
        ],
        "new files on the new node, paused as it was"
    );
    sim.input(Input::RecordingDone {
        call,
        action: start,
        result: Err(MediaError::Refused("disk full".into())),
    });
    sim.send(
        A,
        &Phone {
            call_id: "rec",
            from: A_FROM,
            to: &a_to,
            port: 5061,
        }
        .request("BYE", 2, "z9hG4bKrecbye", ""),
    );
    sim.run(20 * MS);
    let record = sim.records()[0].clone();
    assert_eq!(record.recording.last, Some(RecordingAction::Pause));
    assert_eq!(record.recording.restarts, 1);
    assert_eq!(
        record.recording.failure.as_deref(),
        Some("start failed: media proxy refused the media: disk full"),
        "kept for the CDR's diagnosis"
    );
}

#[test]
fn recording_policy_user_beats_route_beats_default_and_direct_calls_cannot_be_recorded() {
    let mut config = settings();
    config.record = true;
    config.users.insert(
        "alice".into(),
        crate::policy::User {
            password: Some("x".into()),
            ha1: None,
            ha1_sha256: None,
            media_mode: None,
            record: Some(true),
            ..Default::default()
        },
    );
    config.users.insert(
        "carol".into(),
        crate::policy::User {
            password: Some("x".into()),
            ha1: None,
            ha1_sha256: None,
            media_mode: None,
            record: None,
            ..Default::default()
        },
    );
    let sim = Sim::new(config);
    assert!(
        sim.core.records("alice", Some(false)),
        "the user's own setting"
    );
    assert!(!sim.core.records("carol", Some(false)), "the route's");
    assert!(sim.core.records("carol", None), "--record");
    assert!(sim.core.records("nobody", None));
    // A direct call (these settings' default) has no session to record.
    let mut sim = Sim::new(settings());
    sim.send(A, &invite("direct", "z9hG4bKdirect", SDP));
    sim.run(20 * MS);
    assert_eq!(
        sim.core
            .recording_request("direct", RecordingAction::Start { pcap: false }),
        Err(crate::call::RecordingRefused::Direct("direct".into()))
    );
    assert_eq!(
        sim.core.recording_request("nobody", RecordingAction::Stop),
        Err(crate::call::RecordingRefused::NoCall("nobody".into()))
    );
    assert!(recording_requests(&sim).is_empty());
}
