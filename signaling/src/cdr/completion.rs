//! The end of a call: its CDR row, built without I/O from what the core recorded and what the
//! media proxy's release returned (docs/contributing.md, "Protocol logic without sockets or
//! clocks").
//!
//! The driver awaits the release over gRPC and hands the outcome to [`cdr_row`]; everything
//! the row says (times, disposition, packet totals, verdict, diagnosis) is decided here, so
//! every combination is unit-tested below.

use std::time::Instant;

use proto::domain::Leg;

use std::fmt::Write as _;

use crate::call::MediaError;
use crate::call::{CallRecord, MediaMove};
use crate::cdr::diagnosis::{self, Evidence, MediaFigures, MediaReport, Verdict};
use crate::cdr::{Cdr, CdrMedia};
use service_kit::clock::WallClock;

/// What Release returned.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FinalStats {
    pub(crate) media: Vec<MediaFigures>,
    pub(crate) release_reason: String,
    /// False when the proxy had already released the call by itself (the figures are its
    /// tombstone's).
    pub(crate) released_now: bool,
    /// The call's recording, if one was ever started on this node.
    pub(crate) recording: Option<Recording>,
}

/// A call's recording as the media proxy reports it (`RecordingState`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Recording {
    /// `recording`, `paused` or `finished`.
    pub(crate) state: &'static str,
    /// The stereo WAV on the proxy's host; empty until audio was written.
    pub(crate) path: String,
    /// Every file: stereo WAV, mixed WAV, sidecar JSON, pcap.
    pub(crate) files: Vec<String>,
    /// RTP packets whose audio was written.
    pub(crate) packets: u64,
    pub(crate) duration_ms: u64,
    pub(crate) sample_rate: u32,
    /// Captured packets the recorder could not take (it fell behind).
    pub(crate) dropped_packets: u64,
    /// What ended the writing early (a full disk); empty when nothing did.
    pub(crate) error: String,
}

/// What releasing a call's media gave.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Release {
    /// No media session existed: direct mode, or the call ended before one was asked for.
    NotRelayed,
    /// The proxy's final figures.
    Released(FinalStats),
    /// The proxy could not be asked (lost node, timeout): the row says so, with what the
    /// first-packet events showed.
    Failed(MediaError),
}

/// The CDR row of a finished call.
pub(crate) fn cdr_row(
    record: &CallRecord,
    release: &Release,
    evidence: &Evidence,
    clock: &WallClock,
) -> Cdr {
    // Every instant is projected through one clock (which follows steps of the wall clock), so
    // the row's times stay in order and its duration is the measured one.
    let ms = |at: Instant| clock.unix_ms(at) as i64;
    let (answer_time_ms, end_time_ms) = (record.answer.map(ms), ms(record.end));
    let mut row = Cdr {
        call_id: record.call_id.to_string(),
        b_call_id: record.b_call_id_text(),
        caller: record.caller.clone(),
        callee: record.callee.clone(),
        start_time_ms: ms(record.start),
        answer_time_ms,
        end_time_ms,
        // The difference of the projected times (one anchor, so the measured length), never
        // a millisecond off from what a reader computes from the row.
        duration_ms: answer_time_ms.map_or(0, |answer| (end_time_ms - answer).max(0)),
        disposition: record.disposition.as_str().to_owned(),
        sip_status: i64::from(record.sip_status),
        hangup_side: record.hangup_side.as_str().to_owned(),
        media_mode: record.media_mode.as_str().to_owned(),
        media_node: record.media_node.clone(),
        end_reason: record.end_reason.clone(),
        media_address: record.media_address.map(|a| a.to_string()),
        transferred_from: record.transferred_from.as_ref().map(ToString::to_string),
        transferred_to: record.transferred_to.as_ref().map(ToString::to_string),
        callee_contact: record.callee_contact.clone(),
        ..Cdr::default()
    };
    let answered = record.answer.is_some();
    let (verdict, diagnosis) = match release {
        Release::NotRelayed if answered => (
            Verdict::Direct,
            "direct mode: media went end to end, not through a proxy; not measured".to_owned(),
        ),
        Release::NotRelayed => (
            Verdict::NotAnswered,
            format!("not answered: {}", record.end_reason),
        ),
        Release::Released(stats) => {
            let report = MediaReport {
                advertised: record.media_address,
                media: stats.media.clone(),
            };
            add_totals(&mut row, &report);
            // A moved call's totals also hold what the nodes it left had counted when last
            // seen (cdr_media keeps the final node's lines).
            for step in record.media_moves.iter().filter(|m| m.to.is_some()) {
                if let Some(seen) = evidence.last_seen_on(&step.from) {
                    add_totals(
                        &mut row,
                        &MediaReport {
                            advertised: record.media_address,
                            media: seen.media.clone(),
                        },
                    );
                }
            }
            row.media = report.media.iter().map(CdrMedia::from_figures).collect();
            if answered {
                let (verdict, mut text) = diagnosis::diagnose(&report);
                if !stats.released_now {
                    text = format!(
                        "{text}; the proxy had already ended the session ({})",
                        stats.release_reason
                    );
                }
                (verdict, text)
            } else {
                (
                    Verdict::NotAnswered,
                    format!(
                        "not answered: {}; early media: caller sent {} RTP packets, callee {}",
                        record.end_reason, row.caller_audio_packets, row.callee_audio_packets
                    ),
                )
            }
        }
        Release::Failed(error) => {
            let node = record.media_node.as_deref().unwrap_or("(unknown)");
            let seen = evidence.last_seen_on(node);
            if let (true, Some(seen)) = (answered, seen) {
                // The node's last live figures: better than none, and said to be so.
                let report = MediaReport {
                    advertised: record.media_address,
                    media: seen.media.clone(),
                };
                add_totals(&mut row, &report);
                row.media = report.media.iter().map(CdrMedia::from_figures).collect();
                let (verdict, text) = diagnosis::diagnose(&report);
                let before_end = (row.end_time_ms - seen.at_unix_ms as i64).max(0) / 1000;
                (
                    verdict,
                    format!(
                        "media proxy {node} could not give final figures ({error}); as last seen {before_end} s before the end of the call: {text}"
                    ),
                )
            } else if answered {
                diagnosis::diagnose_lost(node, &error.to_string(), evidence)
            } else {
                (
                    Verdict::NotAnswered,
                    format!(
                        "not answered: {}; media proxy {node} could not release the call ({error})",
                        record.end_reason
                    ),
                )
            }
        }
    };
    row.media_verdict = verdict.as_str().to_owned();
    row.media_diagnosis = diagnosis + &moves_text(&record.media_moves, evidence);
    if let Some(text) = recording_outcome(&mut row, record, release) {
        row.media_diagnosis.push_str("; ");
        row.media_diagnosis.push_str(&text);
    }
    row
}

/// Fills the row's recording fields from the proxy's final recording state, and says what
/// became of the recording (None when none was asked for or made).
fn recording_outcome(row: &mut Cdr, record: &CallRecord, release: &Release) -> Option<String> {
    let intent = &record.recording;
    let asked = intent.last.is_some() || (intent.by_policy && record.answer.is_some());
    // A restart happens only on the node a call moved to.
    let earlier = if intent.restarts > 0 {
        "; the part before the media moved stays on the node it left"
    } else {
        ""
    };
    let made = match release {
        Release::Released(stats) => stats.recording.as_ref(),
        Release::NotRelayed if asked => {
            return Some(
                "recording asked for, but the media went direct (not through a proxy): nothing recorded"
                    .to_owned(),
            );
        }
        Release::NotRelayed => return None,
        Release::Failed(_) if asked => {
            // The files, if any, are on the lost node; the last-seen figures say how much.
            return Some(format!(
                "recording: the media proxy gave no final state, so whether its files are complete is unknown; {} packets were recorded when it was last seen{earlier}",
                row.recording_packets
            ));
        }
        Release::Failed(_) => return None,
    };
    let Some(made) = made else {
        return asked.then(|| match &intent.failure {
            Some(failure) => format!("recording asked for but not made: {failure}"),
            None => "recording asked for but not made: the media proxy reports none".to_owned(),
        });
    };
    row.recording_packets = made.packets as i64;
    row.has_recording = !made.path.is_empty();
    row.recording_path = row.has_recording.then(|| made.path.clone());
    let seconds = made.duration_ms as f64 / 1000.0;
    let mut text = if !made.error.is_empty() {
        format!(
            "recording failed: {}; the files keep the {seconds:.1} s ({} packets) written before",
            made.error, made.packets
        )
    } else if made.packets == 0 {
        "recording has no audio: no RTP reached the recorder".to_owned()
    } else {
        format!(
            "recorded {seconds:.1} s ({} packets) at {} Hz to {}",
            made.packets, made.sample_rate, made.path
        )
    };
    if made.dropped_packets > 0 {
        let _ = write!(
            text,
            "; partial: the recorder fell behind and lost {} packets",
            made.dropped_packets
        );
    }
    text.push_str(earlier);
    Some(text)
}

/// Adds a report's audio and relayed totals to the row's.
fn add_totals(row: &mut Cdr, report: &MediaReport) {
    let (caller, callee) = (report.audio_in(Leg::Caller), report.audio_in(Leg::Callee));
    row.caller_audio_packets += caller.packets as i64;
    row.callee_audio_packets += callee.packets as i64;
    row.caller_audio_bytes += caller.bytes as i64;
    row.callee_audio_bytes += callee.bytes as i64;
    row.total_bytes_relayed += report
        .media
        .iter()
        .map(|m| m.rtp_out.bytes + m.rtcp_out.bytes)
        .sum::<u64>() as i64;
    // What the recorder took, per media line; the final recording state replaces it.
    row.recording_packets += report.media.iter().map(|m| m.recorded_packets).sum::<u64>() as i64;
}

/// What the diagnosis adds for a call whose media node was lost: where the media went, and
/// that the figures above cover only the last node.
fn moves_text(moves: &[MediaMove], evidence: &Evidence) -> String {
    let mut text = String::new();
    let mut counted = true;
    for step in moves {
        let seen = evidence.last_seen_on(&step.from).map(|seen| {
            let report = MediaReport {
                advertised: None,
                media: seen.media.clone(),
            };
            (
                report.audio_in(Leg::Caller).packets,
                report.audio_in(Leg::Callee).packets,
            )
        });
        let _ = match (&step.to, seen) {
            (Some(to), Some((caller, callee))) => write!(
                text,
                "; media moved from {} ({}) to {to} {} s into the call; {} had counted caller {caller}, callee {callee} RTP packets when last seen",
                step.from, step.reason, step.after_s, step.from
            ),
            (Some(to), None) => {
                counted = false;
                write!(
                    text,
                    "; media moved from {} ({}) to {to} {} s into the call",
                    step.from, step.reason, step.after_s
                )
            }
            (None, _) => write!(
                text,
                "; media proxy {} lost ({}) {} s into the call, and no other node took the call",
                step.from, step.reason, step.after_s
            ),
        };
    }
    if moves.iter().any(|m| m.to.is_some()) {
        text.push_str(if counted {
            "; packet counts add those last-seen figures (listed every 5 s) to the last node's final ones"
        } else {
            "; packet counts are from the last node only"
        });
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proto::domain::MediaKind;

    use super::*;
    use crate::call::{CallId, Disposition, HangupSide, RecordingIntent};
    use crate::cdr::diagnosis::{Flow, MediaFigures, Snapshot};
    use crate::media::{Recording, RecordingAction};
    use crate::policy::MediaMode;

    const START_MS: u64 = 1_800_000_000_000;

    fn record(answered: bool) -> (CallRecord, WallClock) {
        let start = Instant::now();
        let clock = WallClock::anchored(start, START_MS);
        let record = CallRecord {
            call_id: CallId::parse("a-leg").unwrap(),
            b_call_id: Some("b-leg".into()),
            caller: "alice".into(),
            callee: "bob".into(),
            start,
            answer: answered.then(|| start + Duration::from_millis(1500)),
            end: start + Duration::from_millis(61_500),
            disposition: if answered {
                Disposition::Answered
            } else {
                Disposition::Cancelled
            },
            sip_status: if answered { 200 } else { 487 },
            hangup_side: HangupSide::Caller,
            media_mode: MediaMode::Relay,
            media_node: Some("node-1".into()),
            media_endpoint: Some("http://192.0.2.20:50051".into()),
            media_moves: Vec::new(),
            relayed: true,
            media_address: Some("192.0.2.10".parse().unwrap()),
            end_reason: if answered {
                "BYE from the caller".into()
            } else {
                "CANCEL from the caller".into()
            },
            recording: RecordingIntent::default(),
            transferred_from: None,
            transferred_to: None,
            callee_contact: None,
        };
        (record, clock)
    }

    fn audio(leg: Leg, packets: u64, sdp: &str) -> MediaFigures {
        let mut m = MediaFigures::new(leg, 0, MediaKind::Audio);
        m.sdp_rtp = sdp.into();
        m.local_rtp_port = 30_000;
        m.rtp_in = Flow {
            packets,
            bytes: packets * 172,
            ..Flow::default()
        };
        m.rtp_out = Flow {
            packets,
            bytes: packets * 172,
            ..Flow::default()
        };
        m.recorded_packets = packets / 2;
        m
    }

    fn released(media: Vec<MediaFigures>, now: bool) -> Release {
        Release::Released(FinalStats {
            media,
            release_reason: if now { "released" } else { "timeout" }.into(),
            released_now: now,
            recording: None,
        })
    }

    fn two_way() -> Vec<MediaFigures> {
        vec![
            audio(Leg::Caller, 3000, "192.0.2.1:4000"),
            audio(Leg::Callee, 3000, "192.0.2.2:5000"),
        ]
    }

    fn recorded(error: &str, packets: u64, dropped: u64) -> Release {
        let path = "/var/lib/mediaproxy/recordings/2026/12/02/a-leg.wav";
        Release::Released(FinalStats {
            media: two_way(),
            release_reason: "released".into(),
            released_now: true,
            recording: Some(Recording {
                state: "finished",
                path: path.into(),
                files: vec![path.into()],
                packets,
                duration_ms: packets * 10,
                sample_rate: 8000,
                dropped_packets: dropped,
                error: error.into(),
            }),
        })
    }

    fn by_policy() -> RecordingIntent {
        RecordingIntent {
            by_policy: true,
            last: Some(RecordingAction::Start { pcap: false }),
            ..RecordingIntent::default()
        }
    }

    #[test]
    fn a_wall_clock_step_moves_the_anchor_and_never_a_duration() {
        let (record, clock) = record(true);
        let at = record.start + Duration::from_secs(30);
        // Within a second of the projection: slewing and jitter, not a step.
        assert_eq!(clock.follow_at(at, 1_800_000_030_900), None);
        assert_eq!(clock.unix_ms(at), 1_800_000_030_000);
        // An hour back, mid-call: the clock follows it...
        assert_eq!(clock.follow_at(at, 1_799_996_430_000), Some(-3_600_000));
        let row = cdr_row(&record, &Release::NotRelayed, &Evidence::default(), &clock);
        // ...and the row is projected whole on the new time: in order, the measured length.
        assert_eq!(row.start_time_ms, 1_799_996_400_000);
        assert_eq!(row.answer_time_ms, Some(1_799_996_401_500));
        assert_eq!(row.end_time_ms, 1_799_996_461_500);
        assert_eq!(row.duration_ms, 60_000);
        // Times that fall between milliseconds: the duration is still end minus answer.
        let mut odd = record.clone();
        odd.answer = Some(record.start + Duration::from_micros(1_500_900));
        odd.end = record.start + Duration::from_micros(61_500_200);
        let row = cdr_row(&odd, &Release::NotRelayed, &Evidence::default(), &clock);
        assert_eq!(
            row.duration_ms,
            row.end_time_ms - row.answer_time_ms.unwrap()
        );
        // Forward again: the step is reported with its sign.
        assert_eq!(clock.follow_at(at, 1_800_007_230_000), Some(10_800_000));
        assert_eq!(clock.unix_ms(record.end), 1_800_007_261_500);
    }

    #[test]
    fn a_recorded_call_carries_the_recordings_path_packets_and_length() {
        let (mut record, clock) = record(true);
        record.recording = by_policy();
        let row = cdr_row(
            &record,
            &recorded("", 6000, 0),
            &Evidence::default(),
            &clock,
        );
        assert!(row.has_recording);
        assert_eq!(
            row.recording_path.as_deref(),
            Some("/var/lib/mediaproxy/recordings/2026/12/02/a-leg.wav")
        );
        assert_eq!(row.recording_packets, 6000);
        assert_eq!(row.media_verdict, "ok");
        assert!(
            row.media_diagnosis.ends_with(
                "; recorded 60.0 s (6000 packets) at 8000 Hz to /var/lib/mediaproxy/recordings/2026/12/02/a-leg.wav"
            ),
            "{}",
            row.media_diagnosis
        );
    }

    #[test]
    fn a_failed_or_partial_recording_is_explained_and_the_row_still_written() {
        let (mut record, clock) = record(true);
        record.recording = by_policy();
        let full = recorded("writing a-leg.wav: No space left on device", 1500, 0);
        let row = cdr_row(&record, &full, &Evidence::default(), &clock);
        assert!(row.has_recording, "the salvaged files still play");
        assert_eq!(row.recording_packets, 1500);
        assert_eq!(row.media_verdict, "ok", "the call's media was fine");
        assert!(
            row.media_diagnosis.ends_with(
                "; recording failed: writing a-leg.wav: No space left on device; the files keep the 15.0 s (1500 packets) written before"
            ),
            "{}",
            row.media_diagnosis
        );
        let behind = cdr_row(
            &record,
            &recorded("", 5900, 100),
            &Evidence::default(),
            &clock,
        );
        assert!(
            behind
                .media_diagnosis
                .ends_with("; partial: the recorder fell behind and lost 100 packets"),
            "{}",
            behind.media_diagnosis
        );
        let silent = cdr_row(&record, &recorded("", 0, 0), &Evidence::default(), &clock);
        assert!(
            silent
                .media_diagnosis
                .ends_with("; recording has no audio: no RTP reached the recorder"),
            "{}",
            silent.media_diagnosis
        );
    }

    #[test]
    fn a_recording_that_never_started_says_why() {
        let (mut record, clock) = record(true);
        record.recording = by_policy();
        record.recording.failure = Some(
            "start failed: media proxy refused the media: FailedPrecondition: recordings directory is not writable"
                .into(),
        );
        let release = released(two_way(), true);
        let row = cdr_row(&record, &release, &Evidence::default(), &clock);
        assert!(!row.has_recording);
        assert_eq!(row.recording_path, None);
        assert!(
            row.media_diagnosis.ends_with(
                "; recording asked for but not made: start failed: media proxy refused the media: FailedPrecondition: recordings directory is not writable"
            ),
            "{}",
            row.media_diagnosis
        );
        // Direct mode: nothing could record it.
        record.relayed = false;
        let direct = cdr_row(&record, &Release::NotRelayed, &Evidence::default(), &clock);
        assert!(
            direct
                .media_diagnosis
                .ends_with("; recording asked for, but the media went direct (not through a proxy): nothing recorded"),
            "{}",
            direct.media_diagnosis
        );
        // Not recorded, not asked: the diagnosis says nothing of recording.
        let (plain, clock) = self::record(true);
        let row = cdr_row(&plain, &release, &Evidence::default(), &clock);
        assert!(
            !row.media_diagnosis.contains("record"),
            "{}",
            row.media_diagnosis
        );
        // Policy asks at the answer: an unanswered call was never to be recorded.
        let (mut unanswered, clock) = self::record(false);
        unanswered.recording = RecordingIntent {
            by_policy: true,
            ..RecordingIntent::default()
        };
        let row = cdr_row(&unanswered, &release, &Evidence::default(), &clock);
        assert!(
            !row.media_diagnosis.contains("record"),
            "{}",
            row.media_diagnosis
        );
    }

    #[test]
    fn an_answered_relayed_call_carries_times_totals_and_verdict() {
        let (record, clock) = record(true);
        let release = released(
            vec![
                audio(Leg::Caller, 250, "192.0.2.1:4000"),
                audio(Leg::Callee, 240, "192.0.2.2:5000"),
            ],
            true,
        );
        let row = cdr_row(&record, &release, &Evidence::default(), &clock);
        assert_eq!(row.start_time_ms, 1_800_000_000_000);
        assert_eq!(row.answer_time_ms, Some(1_800_000_001_500));
        assert_eq!(row.end_time_ms, 1_800_000_061_500);
        assert_eq!(row.duration_ms, 60_000);
        assert_eq!(
            (row.disposition.as_str(), row.sip_status),
            ("answered", 200)
        );
        assert_eq!(
            (row.caller_audio_packets, row.callee_audio_packets),
            (250, 240)
        );
        assert_eq!(row.caller_audio_bytes, 250 * 172);
        assert_eq!(row.total_bytes_relayed, (250 + 240) * 172);
        assert_eq!(row.recording_packets, 125 + 120);
        assert_eq!(row.media.len(), 2);
        assert_eq!(row.media_verdict, "ok");
        assert_eq!(row.media_address.as_deref(), Some("192.0.2.10"));
    }

    #[test]
    fn a_session_the_proxy_had_ended_says_so_in_the_diagnosis() {
        let (record, clock) = record(true);
        let release = released(vec![audio(Leg::Caller, 10, "192.0.2.1:4000")], false);
        let row = cdr_row(&record, &release, &Evidence::default(), &clock);
        assert_eq!(row.media_verdict, "one_way");
        assert!(
            row.media_diagnosis
                .ends_with("the proxy had already ended the session (timeout)"),
            "{}",
            row.media_diagnosis
        );
    }

    #[test]
    fn direct_and_unanswered_calls_are_explained_without_figures() {
        let (mut record, clock) = record(true);
        record.relayed = false;
        let row = cdr_row(&record, &Release::NotRelayed, &Evidence::default(), &clock);
        assert_eq!(row.media_verdict, "direct");
        assert_eq!(row.caller_audio_packets, 0);
        let (record, clock) = self::record(false);
        let row = cdr_row(&record, &Release::NotRelayed, &Evidence::default(), &clock);
        assert_eq!(row.media_verdict, "not_answered");
        assert_eq!(row.media_diagnosis, "not answered: CANCEL from the caller");
        assert_eq!(row.duration_ms, 0);
        assert_eq!(row.answer_time_ms, None);
        let early = released(vec![audio(Leg::Callee, 30, "192.0.2.2:5000")], true);
        let row = cdr_row(&record, &early, &Evidence::default(), &clock);
        assert_eq!(row.media_verdict, "not_answered");
        assert!(
            row.media_diagnosis
                .contains("early media: caller sent 0 RTP packets, callee 30"),
            "{}",
            row.media_diagnosis
        );
    }

    #[test]
    fn a_moved_call_names_both_nodes_and_says_whose_counts_it_has() {
        let (mut record, clock) = record(true);
        record.media_node = Some("node-2".into());
        record.media_moves = vec![MediaMove {
            from: "node-1".into(),
            reason: "stopped answering its health checks".into(),
            to: Some("node-2".into()),
            after_s: 12,
        }];
        let release = released(
            vec![
                audio(Leg::Caller, 250, "192.0.2.1:4000"),
                audio(Leg::Callee, 240, "192.0.2.2:5000"),
            ],
            true,
        );
        let row = cdr_row(&record, &release, &Evidence::default(), &clock);
        assert_eq!(row.media_verdict, "ok");
        assert_eq!(row.media_node.as_deref(), Some("node-2"));
        assert!(
            row.media_diagnosis.ends_with(
                "; media moved from node-1 (stopped answering its health checks) to node-2 12 s into the call; packet counts are from the last node only"
            ),
            "{}",
            row.media_diagnosis
        );
    }

    #[test]
    fn a_moved_call_adds_the_lost_nodes_last_seen_figures_to_the_totals() {
        let (mut record, clock) = record(true);
        record.media_node = Some("node-2".into());
        record.media_moves = vec![MediaMove {
            from: "node-1".into(),
            reason: "stopped answering its health checks".into(),
            to: Some("node-2".into()),
            after_s: 12,
        }];
        let mut evidence = Evidence::default();
        evidence.seen(Snapshot {
            node: "node-1".into(),
            at_unix_ms: START_MS + 10_000,
            media: vec![
                audio(Leg::Caller, 500, "192.0.2.1:4000"),
                audio(Leg::Callee, 490, "192.0.2.2:5000"),
            ],
        });
        let release = released(
            vec![
                audio(Leg::Caller, 250, "192.0.2.1:4000"),
                audio(Leg::Callee, 240, "192.0.2.2:5000"),
            ],
            true,
        );
        let row = cdr_row(&record, &release, &evidence, &clock);
        assert_eq!(
            (row.caller_audio_packets, row.callee_audio_packets),
            (750, 730)
        );
        assert_eq!(row.total_bytes_relayed, (750 + 730) * 172);
        assert_eq!(row.media.len(), 2, "cdr_media: the final node's lines");
        assert!(
            row.media_diagnosis.ends_with(
                "node-1 had counted caller 500, callee 490 RTP packets when last seen; packet counts add those last-seen figures (listed every 5 s) to the last node's final ones"
            ),
            "{}",
            row.media_diagnosis
        );
    }

    #[test]
    fn a_lost_node_last_seen_gives_the_row_its_figures_not_unknown() {
        let (record, clock) = record(true);
        let mut evidence = Evidence::default();
        // Seen 58.5 s into the call, which ended at 61.5 s.
        evidence.seen(Snapshot {
            node: "node-1".into(),
            at_unix_ms: START_MS + 58_500,
            media: vec![
                audio(Leg::Caller, 2900, "192.0.2.1:4000"),
                audio(Leg::Callee, 0, "192.0.2.2:5000"),
            ],
        });
        let lost = Release::Failed(MediaError::Unavailable("connection refused".into()));
        let row = cdr_row(&record, &lost, &evidence, &clock);
        assert_eq!(row.media_verdict, "one_way");
        assert_eq!(
            (row.caller_audio_packets, row.callee_audio_packets),
            (2900, 0)
        );
        assert!(
            row.media_diagnosis.starts_with(
                "media proxy node-1 could not give final figures (media proxy unavailable: connection refused); as last seen 3 s before the end of the call: "
            ),
            "{}",
            row.media_diagnosis
        );
    }

    #[test]
    fn a_lost_proxy_leaves_a_row_built_from_the_first_packet_events() {
        let (record, clock) = record(true);
        let evidence = Evidence {
            caller_first_source: Some("192.0.2.1:4000".into()),
            callee_first_source: None,
            last_seen: Vec::new(),
        };
        let lost = Release::Failed(MediaError::Unavailable("connection refused".into()));
        let row = cdr_row(&record, &lost, &evidence, &clock);
        assert_eq!(row.media_verdict, "one_way");
        assert!(
            row.media_diagnosis.starts_with(
                "media proxy node-1 could not give final figures (media proxy unavailable: connection refused)"
            ),
            "{}",
            row.media_diagnosis
        );
        assert_eq!(row.caller_audio_packets, 0, "counts unknown, not invented");
    }
}
