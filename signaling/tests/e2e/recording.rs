//! End-to-end recording and the live tap: calls recorded by policy and by an operator into
//! playable files, a full recordings disk, and a reflect call tapped by an analyser over gRPC.
//!
//! Ports: each test takes its own (`Ports::take`: testkit's port blocks).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::calls::{MIN_PACKETS, Ports, Scenario, Service, call, expect_success, uac, uas};
use crate::common::{Scratch, number};

/// The port block of a recording test: SIP `sip` (+1 UAC, +2 UAS), SIPp media `media` (UAC)
/// and `media + 100` (UAS), relay ports `relay..relay + 100`.
/// Signaling trusting loopback, recordings under `directory`, `--record` when `record`.
fn recording_service(
    name: &str,
    ports: &Ports,
    directory: &std::path::Path,
    record: bool,
) -> Service {
    let mut args = vec![
        "--trusted",
        "127.0.0.0/8",
        "--recordings",
        directory.to_str().unwrap(),
    ];
    if record {
        args.push("--record");
    }
    Service::start(name, ports, &args)
}

/// A WAV file's channels, sample rate and length in milliseconds (canonical 44-byte header,
/// as the media proxy writes it).
fn wav_shape(path: &str) -> (u16, u32, u64) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(&bytes[0..4], b"RIFF", "{path}");
    assert_eq!(&bytes[8..12], b"WAVE", "{path}");
    let channels = u16::from_le_bytes([bytes[22], bytes[23]]);
    let rate = u32::from_le_bytes(bytes[24..28].try_into().unwrap());
    let data = u32::from_le_bytes(bytes[40..44].try_into().unwrap());
    assert_eq!(
        data as usize,
        bytes.len() - 44,
        "{path}: header matches the data"
    );
    let millis = u64::from(data) * 1000 / (u64::from(rate) * 2 * u64::from(channels));
    (channels, rate, millis)
}

/// The stereo recording's sidecar JSON (`STEM.json` beside `STEM.wav`).
fn sidecar(stereo: &str) -> serde_json::Value {
    let path = stereo.strip_suffix(".wav").expect("a .wav path").to_owned() + ".json";
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn record_policy_records_a_call_the_callee_hangs_up_into_playable_files() {
    let ports = Ports::take();
    let recordings = Scratch::new("sig-e2e-record-files");
    let directory = recordings.join("calls");
    let service = recording_service("record", &ports, &directory, true);
    call(
        &ports,
        &service,
        Scenario::new("uas_echo_then_bye.xml").echo(),
        Scenario::new("uac_pcap_until_bye.xml"),
    );
    let metrics = service.metrics();
    let (rows, media, log) = service.stop_all();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let cdr = &rows[0];
    assert_eq!(cdr["hangup_side"], "callee");
    assert_eq!(number(cdr, "has_recording"), 1, "{cdr:?}");
    let path = cdr["recording_path"].clone();
    assert!(
        path.starts_with(directory.to_str().unwrap()) && path.ends_with(".wav"),
        "{path}"
    );
    // Both legs' audio was written: the caller's pcap and the callee's echo of it.
    let packets = number(cdr, "recording_packets");
    assert!(packets >= 2 * MIN_PACKETS, "{cdr:?}");
    assert!(
        cdr["media_diagnosis"].contains("; recorded ") && cdr["media_diagnosis"].ends_with(&path),
        "{cdr:?}"
    );
    // Playable files at G.711's 8 kHz: stereo (caller left, callee right) and mixed mono. They
    // cover the recorded time, answer to hang-up (the second of silence after the caller's 5 s
    // pcap included: time compressed away would misplace what follows), so they hold all the
    // media and last as long as the answered call, within 100 ms (the start request's round
    // trip and the first packet's arrival, the release after the BYE).
    let (channels, rate, millis) = wav_shape(&path);
    assert_eq!((channels, rate), (2, 8000));
    let times = |column: &str| -> Vec<i64> {
        media
            .iter()
            .filter_map(|m| m.get(column).and_then(|v| v.parse().ok()))
            .collect()
    };
    let span = times("last_packet_time").into_iter().max().unwrap()
        - times("first_packet_time").into_iter().min().unwrap();
    let answered = number(cdr, "duration_ms");
    assert!(
        millis as i64 >= span && (millis as i64 - answered).abs() <= 100,
        "the file holds {millis} ms, the media lasted {span} ms, the answered call {answered} ms"
    );
    let mixed = path.replace(".wav", "-mixed.wav");
    let (channels, rate, mixed_millis) = wav_shape(&mixed);
    assert_eq!((channels, rate, mixed_millis), (1, 8000, millis));
    let json = sidecar(&path);
    assert_eq!(json["state"], "complete", "{json}");
    assert_eq!(
        json["call_id"],
        cdr["call_id"].as_str(),
        "named by the caller's Call-ID"
    );
    assert_eq!(json["packets"].as_i64(), Some(packets));
    assert!(
        metrics.contains("signaling_recording_requests_total{action=\"start\",result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(log.contains("recording request done"), "{log}");
}

#[test]
fn an_operator_starts_pauses_and_stops_a_recording_over_the_admin_endpoint() {
    let ports = Ports::take();
    let recordings = Scratch::new("sig-e2e-admin-record-files");
    let directory = recordings.join("calls");
    let service = recording_service("admin-record", &ports, &directory, false);
    let callee = uas(&ports, "uas_echo_then_bye.xml", true, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let caller = uac(&ports, "uac_pcap_until_bye.xml", &[]);
    let (call_id, _) = answered_call(&service);
    let post = |action: &str| -> (String, serde_json::Value) {
        let answer = service.http(
            "POST",
            &format!("/admin/calls/{call_id}/recording/{action}"),
        );
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let status = head.lines().next().unwrap().to_owned();
        (
            status,
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    };
    let (status, started) = post("start?pcap=1");
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(started["recording"]["state"], "recording", "{started}");
    let detail = service.get(&format!("/admin/calls/{call_id}"));
    let body = detail.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let detail: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(detail["recording"]["state"], "recording", "{detail}");
    // Its files so far: the sidecar at once (the WAVs with the first audio written).
    let files = detail["recording"]["files"].as_array().unwrap();
    assert!(
        files.iter().any(|f| f.as_str().unwrap().ends_with(".json")),
        "{detail}"
    );
    std::thread::sleep(Duration::from_millis(1000));
    let (status, paused) = post("pause");
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(paused["recording"]["state"], "paused", "{paused}");
    std::thread::sleep(Duration::from_millis(1000));
    let (_, resumed) = post("start");
    assert_eq!(resumed["recording"]["state"], "recording", "{resumed}");
    std::thread::sleep(Duration::from_millis(1000));
    let (_, stopped) = post("stop");
    assert_eq!(stopped["recording"]["state"], "finished", "{stopped}");
    // What cannot be done is said, with the status that fits.
    let unknown = service.http("POST", "/admin/calls/nobody/recording/start");
    assert!(unknown.starts_with("HTTP/1.0 404"), "{unknown}");
    let nonsense = service.http("POST", &format!("/admin/calls/{call_id}/recording/rewind"));
    assert!(nonsense.starts_with("HTTP/1.0 404"), "{nonsense}");
    expect_success(caller, "UAC", &service);
    expect_success(callee, "UAS", &service);
    let rows = service.stop();
    let cdr = &rows[0];
    assert_eq!(number(cdr, "has_recording"), 1, "{cdr:?}");
    let path = cdr["recording_path"].clone();
    let json = sidecar(&path);
    assert_eq!(json["state"], "complete", "{json}");
    let pauses = json["pauses_ms"].as_array().unwrap();
    assert_eq!(pauses.len(), 1, "{json}");
    let (from, to) = (
        pauses[0][0].as_u64().unwrap(),
        pauses[0][1].as_u64().unwrap(),
    );
    assert!(
        (800..=1300).contains(&(to - from)),
        "paused for about a second: {json}"
    );
    // Three seconds of the call were recorded (one of them paused, kept as silence).
    let (_, _, millis) = wav_shape(&path);
    assert!((2700..=3400).contains(&millis), "{millis} ms");
    let pcap = path.replace(".wav", ".pcap");
    assert!(
        std::fs::metadata(&pcap).is_ok_and(|m| m.len() > 24),
        "{pcap}"
    );
}

#[test]
fn a_full_recordings_disk_ends_the_recording_not_the_call_and_the_cdr_says_so() {
    let recordings = Scratch::new("sig-e2e-full-disk-files");
    let mount = recordings.join("disk");
    std::fs::create_dir_all(&mount).unwrap();
    // 96 KiB: the stereo and mixed WAVs at 8 kHz take 48 KiB a second, full after about 2 s.
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=96k", "tmpfs"])
        .arg(&mount)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        println!("SKIPPED: mounting a small tmpfs needs root");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.clone());
    let ports = Ports::take();
    let service = recording_service("full-disk", &ports, &mount, true);
    let baseline = service.settled();
    call(
        &ports,
        &service,
        Scenario::new("uas_echo_then_bye.xml").echo(),
        Scenario::new("uac_pcap_until_bye.xml"),
    );
    // The failed recording's files are closed, the call's ports and session given back.
    service.gives_back(baseline);
    let rows = service.stop();
    assert_eq!(rows.len(), 1, "the CDR is written: {rows:?}");
    let cdr = &rows[0];
    // The call went on: both legs' audio relayed the whole time.
    assert_eq!(cdr["media_verdict"], "ok", "{cdr:?}");
    assert!(
        number(cdr, "caller_audio_packets") >= MIN_PACKETS,
        "{cdr:?}"
    );
    assert!(
        number(cdr, "callee_audio_packets") >= MIN_PACKETS,
        "{cdr:?}"
    );
    // The recording stopped where the disk filled; what reached it still plays.
    assert_eq!(number(cdr, "has_recording"), 1, "{cdr:?}");
    let diagnosis = &cdr["media_diagnosis"];
    assert!(
        diagnosis.contains("; recording failed: ") && diagnosis.contains("No space left on device"),
        "{diagnosis}"
    );
    let packets = number(cdr, "recording_packets");
    assert!(packets > 0 && packets < 2 * MIN_PACKETS, "{cdr:?}");

    let (channels, rate, millis) = wav_shape(&cdr["recording_path"]);
    assert_eq!((channels, rate), (2, 8000));
    assert!((500..=2500).contains(&millis), "{millis} ms kept");
}

/// The one call in progress once answered, from `/admin/calls`: (call id, media endpoint).
fn answered_call(service: &Service) -> (String, String) {
    let mut found = None;
    let answered = crate::common::eventually(Duration::from_secs(5), || {
        let answer = service.get("/admin/calls");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("[]");
        let calls: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        match calls.get(0) {
            Some(call) if !call["answered_s"].is_null() => {
                found = Some((
                    call["call_id"].as_str().unwrap_or_default().to_owned(),
                    call["media_endpoint"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                ));
                true
            }
            _ => false,
        }
    });
    assert!(answered, "the call was answered:\n{}", service.log());
    found.unwrap()
}

#[test]
fn a_reflect_call_is_tapped_live_by_an_analyser_over_grpc() {
    use proto::v1 as pb;
    let ports = Ports::take();
    let recordings = Scratch::new("sig-e2e-reflect-files");
    let service = Service::start(
        "reflect",
        &ports,
        &[
            "--trusted",
            "127.0.0.0/8",
            "--media-mode",
            "reflect",
            "--recordings",
            recordings.join("calls").to_str().unwrap(),
        ],
    );
    let callee = uas(&ports, "uas_echo_then_bye.xml", true, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let caller = uac(&ports, "uac_pcap_until_bye.xml", &[]);
    let (call_id, endpoint) = answered_call(&service);
    // An analyser subscribes to the call's node, as signaling's reflect mode allows.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let frames: Vec<pb::AudioFrame> = runtime.block_on(async {
        let mut client = pb::media_proxy_client::MediaProxyClient::connect(endpoint)
            .await
            .expect("the call's media proxy");
        let mut stream = client
            .tap_audio(pb::TapAudioRequest {
                call_id: call_id.clone(),
                leg: pb::Leg::Unspecified as i32,
                sample_rate: 16000,
            })
            .await
            .expect("a reflect call can be tapped")
            .into_inner();
        let mut frames = Vec::new();
        while frames.len() < 100 {
            match tokio::time::timeout(Duration::from_secs(3), stream.message()).await {
                Ok(Ok(Some(frame))) => frames.push(frame),
                other => panic!("the tap ended early: {other:?}"),
            }
        }
        frames
    });
    expect_success(caller, "UAC", &service);
    expect_success(callee, "UAS", &service);
    // Both legs' frames: 20 ms at the 16 kHz asked for, from PCMU, with the caller's audio in
    // them (the pcap's speech, and the callee's echo of it).
    for leg in [pb::Leg::Caller, pb::Leg::Callee] {
        let of_leg: Vec<&pb::AudioFrame> = frames.iter().filter(|f| f.leg == leg as i32).collect();
        assert!(of_leg.len() >= 40, "{leg:?}: {} frames", of_leg.len());
        for frame in &of_leg {
            assert_eq!(frame.call_id, call_id);
            assert_eq!(
                (frame.sample_rate, frame.pcm.len()),
                (16000, 640),
                "{leg:?}"
            );
            assert_eq!(frame.encoding, "PCMU");
        }
        let loud = of_leg.iter().any(|f| {
            f.pcm
                .chunks_exact(2)
                .any(|b| i16::from_le_bytes([b[0], b[1]]).unsigned_abs() > 1000)
        });
        assert!(loud, "{leg:?} frames carry audio");
    }
    let rows = service.stop();
    assert_eq!(rows[0]["media_mode"], "reflect");
    assert_eq!(rows[0]["media_verdict"], "ok", "{:?}", rows[0]);
}
