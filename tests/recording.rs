//! Recordings and the audio tap through the real relay: a media proxy on loopback, real gRPC,
//! two UDP "phones" sending known tones encoded by independent encoders (libopus for Opus,
//! the `audio-codec` crate for G.711 and G.722). The files are read back and their channels'
//! frequencies measured.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mediaproxy::audio::analysis::{level_at, tone_from};
use mediaproxy::config::MediaOptions;
use proto::v1 as pb;
use tests::{Phone, TestProxy, build_rtp};

const CALLER: pb::Leg = pb::Leg::Caller;
const CALLEE: pb::Leg = pb::Leg::Callee;
const CALLER_TONE: f64 = 440.0;
const CALLEE_TONE: f64 = 1000.0;

/// A codec under test: its SDP entry, its audio rate, and an encoder of 20 ms frames.
#[derive(Clone, Copy, Debug, PartialEq)]
enum TestCodec {
    Pcmu,
    Pcma,
    G722,
    Opus { channels: usize },
}

impl TestCodec {
    fn sdp(self) -> pb::Codec {
        let (payload_type, encoding, clock_rate, channels) = match self {
            Self::Pcmu => (0, "PCMU", 8000, 1),
            Self::Pcma => (8, "PCMA", 8000, 1),
            Self::G722 => (9, "G722", 8000, 1),
            Self::Opus { .. } => (111, "opus", 48000, 2),
        };
        pb::Codec {
            payload_type,
            encoding: encoding.into(),
            clock_rate,
            channels,
        }
    }

    fn rate(self) -> u32 {
        match self {
            Self::Pcmu | Self::Pcma => 8000,
            Self::G722 => 16000,
            Self::Opus { .. } => 48000,
        }
    }

    /// RTP timestamp units per 20 ms packet.
    fn timestamp_step(self) -> u32 {
        match self {
            Self::Opus { .. } => 960,
            _ => 160,
        }
    }
}

/// Encodes one phone's tone, 20 ms at a time.
enum Encoder {
    Pcmu(audio_codec::pcmu::PcmuEncoder),
    Pcma(audio_codec::pcma::PcmaEncoder),
    G722(Box<audio_codec::g722::G722Encoder>),
    Opus(opus::Encoder, usize),
}

impl Encoder {
    fn new(codec: TestCodec) -> Self {
        match codec {
            TestCodec::Pcmu => Self::Pcmu(audio_codec::pcmu::PcmuEncoder::new()),
            TestCodec::Pcma => Self::Pcma(audio_codec::pcma::PcmaEncoder::new()),
            TestCodec::G722 => Self::G722(Box::default()),
            TestCodec::Opus { channels } => {
                let layout = if channels == 2 {
                    opus::Channels::Stereo
                } else {
                    opus::Channels::Mono
                };
                let encoder = opus::Encoder::new(48000, layout, opus::Application::Voip)
                    .expect("libopus encoder");
                Self::Opus(encoder, channels)
            }
        }
    }

    fn encode(&mut self, pcm: &[i16]) -> Vec<u8> {
        use audio_codec::Encoder as _;
        match self {
            Self::Pcmu(e) => e.encode(pcm),
            Self::Pcma(e) => e.encode(pcm),
            Self::G722(e) => e.encode(pcm),
            Self::Opus(e, channels) => {
                let interleaved: Vec<i16> = pcm
                    .iter()
                    .flat_map(|&s| std::iter::repeat_n(s, *channels))
                    .collect();
                let mut out = vec![0u8; 1500];
                let len = e.encode(&interleaved, &mut out).expect("opus encodes");
                out.truncate(len);
                out
            }
        }
    }
}

/// A relayed call between two phones on one proxy.
struct Call {
    id: String,
    caller: Phone,
    callee: Phone,
    to_caller_leg: SocketAddr,
    to_callee_leg: SocketAddr,
}

fn local(allocation: &pb::AllocateResponse) -> SocketAddr {
    let ip: std::net::IpAddr = allocation.advertised_address.parse().unwrap();
    SocketAddr::new(ip, allocation.media[0].rtp_port as u16)
}

fn remote(phone: &Phone, codec: TestCodec) -> pb::RemoteMedia {
    let mut media = tests::pcmu_media(0, phone.addr(), None);
    media.codecs = vec![
        codec.sdp(),
        pb::Codec {
            payload_type: 101,
            encoding: "telephone-event".into(),
            clock_rate: 8000,
            channels: 1,
        },
    ];
    media
}

async fn call(proxy: &mut TestProxy, id: &str, codec: TestCodec, reflect: bool) -> Call {
    let caller = Phone::new().await;
    let callee = Phone::new().await;
    let mut allocations = Vec::new();
    for leg in [CALLER, CALLEE] {
        let answer = proxy
            .client
            .allocate(pb::AllocateRequest {
                call_id: id.into(),
                leg: leg as i32,
                owner: "owner-1".into(),
                media: vec![pb::MediaKind::Audio as i32],
                lease_timeout_ms: 0,
                reflect,
            })
            .await
            .expect("allocate")
            .into_inner();
        allocations.push(answer);
    }
    for (leg, phone) in [(CALLER, &caller), (CALLEE, &callee)] {
        proxy
            .client
            .update(pb::UpdateRequest {
                call_id: id.into(),
                leg: leg as i32,
                media: vec![remote(phone, codec)],
                ..Default::default()
            })
            .await
            .expect("update");
    }
    Call {
        id: id.into(),
        caller,
        callee,
        to_caller_leg: local(&allocations[0]),
        to_callee_leg: local(&allocations[1]),
    }
}

/// One phone's stream: its tone, encoder and RTP state.
struct Stream {
    codec: TestCodec,
    frequency: f64,
    encoder: Encoder,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    samples: usize,
}

impl Stream {
    fn new(codec: TestCodec, frequency: f64, ssrc: u32) -> Self {
        Self {
            codec,
            frequency,
            encoder: Encoder::new(codec),
            ssrc,
            sequence: 1000,
            timestamp: 90_000,
            samples: 0,
        }
    }

    /// The next 20 ms packet.
    fn next(&mut self) -> Vec<u8> {
        let count = (self.codec.rate() / 50) as usize;
        let pcm = tone_from(
            self.frequency,
            self.codec.rate(),
            self.samples,
            count,
            9000.0,
        );
        self.samples += count;
        let payload = self.encoder.encode(&pcm);
        let packet = build_rtp(
            self.codec.sdp().payload_type as u8,
            self.sequence,
            self.timestamp,
            self.ssrc,
            &payload,
        );
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(self.codec.timestamp_step());
        packet
    }
}

/// Sends `packets` 20 ms packets from both phones, paced in real time.
async fn talk(c: &Call, caller: &mut Stream, callee: &mut Stream, packets: usize) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for _ in 0..packets {
        tick.tick().await;
        c.caller.send(c.to_caller_leg, &caller.next()).await;
        c.callee.send(c.to_callee_leg, &callee.next()).await;
    }
}

async fn start_recording(proxy: &mut TestProxy, call: &str, pcap: bool) -> pb::RecordingState {
    proxy
        .client
        .start_recording(pb::StartRecordingRequest {
            call_id: call.into(),
            file_stem: String::new(),
            pcap,
        })
        .await
        .expect("recording starts")
        .into_inner()
}

/// A WAV file read back: its format and samples (interleaved).
struct Wav {
    channels: u16,
    rate: u32,
    samples: Vec<i16>,
}

impl Wav {
    fn read(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(&bytes[0..4], b"RIFF");
        assert_eq!(&bytes[8..16], b"WAVEfmt ");
        let riff = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
        assert_eq!(riff + 8, bytes.len(), "RIFF size covers the file");
        let channels = u16::from_le_bytes([bytes[22], bytes[23]]);
        let rate = u32::from_le_bytes(bytes[24..28].try_into().unwrap());
        assert_eq!(&bytes[36..40], b"data");
        let data = u32::from_le_bytes(bytes[40..44].try_into().unwrap()) as usize;
        assert_eq!(data + 44, bytes.len(), "data size covers the file");
        let samples = bytes[44..]
            .chunks_exact(2)
            .map(|p| i16::from_le_bytes([p[0], p[1]]))
            .collect();
        Self {
            channels,
            rate,
            samples,
        }
    }

    fn channel(&self, index: usize) -> Vec<i16> {
        self.samples
            .iter()
            .skip(index)
            .step_by(usize::from(self.channels))
            .copied()
            .collect()
    }

    fn seconds(&self) -> f64 {
        self.samples.len() as f64 / f64::from(self.channels) / f64::from(self.rate)
    }
}

fn mixed_path(stereo: &Path) -> PathBuf {
    let name = stereo.file_name().unwrap().to_string_lossy();
    stereo.with_file_name(name.replace(".wav", "-mixed.wav"))
}

fn recordings_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("recordings-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A call in `codec` recorded from its first packet: the stereo file's left channel carries
/// the caller's 440 Hz, the right the callee's 1000 Hz, the mixed file both, at the codec's
/// rate, and the files last as long as the media.
async fn tones_are_recorded_on_their_channels(codec: TestCodec, ports: u16, name: &str) {
    let dir = recordings_dir(name);
    let mut proxy = TestProxy::start(
        ports,
        MediaOptions {
            recordings: Some(dir.clone()),
            ..MediaOptions::default()
        },
    )
    .await;
    let c = call(&mut proxy, &format!("rec-{name}@example.com"), codec, false).await;
    let state = start_recording(&mut proxy, &c.id, false).await;
    assert_eq!(state.state, pb::recording_state::State::Recording as i32);
    let mut caller = Stream::new(codec, CALLER_TONE, 0x1111);
    let mut callee = Stream::new(codec, CALLEE_TONE, 0x2222);
    let started = Instant::now();
    talk(&c, &mut caller, &mut callee, 100).await;
    let media_seconds = started.elapsed().as_secs_f64();
    let released = proxy.release(&c.id).await;
    let stats = released.stats.unwrap();
    let recording = stats.recording.unwrap();
    assert_eq!(
        recording.state,
        pb::recording_state::State::Finished as i32,
        "{recording:?}"
    );
    assert!(recording.error.is_empty(), "{}", recording.error);
    assert_eq!(recording.packets, 200, "every packet of both legs written");
    assert_eq!(recording.sample_rate, codec.rate());
    let per_leg: Vec<u64> = stats
        .legs
        .iter()
        .map(|l| l.media[0].recorded_packets)
        .collect();
    assert_eq!(per_leg, [100, 100]);
    let path = PathBuf::from(&recording.path);
    // DIR/YYYY/MM/DD/<call id with '@' made safe>.wav
    assert_eq!(
        path.strip_prefix(&dir).unwrap().components().count(),
        4,
        "{}",
        path.display()
    );
    assert_eq!(
        path.file_name().unwrap().to_string_lossy(),
        format!("rec-{name}_example.com.wav")
    );
    let stereo = Wav::read(&path);
    assert_eq!((stereo.channels, stereo.rate), (2, codec.rate()));
    // 100 packets of 20 ms, sent over `media_seconds` (the first at 0): 2 s of audio.
    assert!(
        (stereo.seconds() - 2.0).abs() < 0.1,
        "{:.3} s recorded for {media_seconds:.3} s of media",
        stereo.seconds()
    );
    // Skip the first 100 ms (codec start-up), judge the rest.
    let skip = (codec.rate() / 10) as usize;
    let left = &stereo.channel(0)[skip..];
    let right = &stereo.channel(1)[skip..];
    let rate = codec.rate();
    assert!(
        level_at(left, rate, CALLER_TONE) > 0.8,
        "{codec:?} left: {}",
        level_at(left, rate, CALLER_TONE)
    );
    assert!(
        level_at(left, rate, CALLEE_TONE) < 0.1,
        "{codec:?} left carries the callee"
    );
    assert!(
        level_at(right, rate, CALLEE_TONE) > 0.8,
        "{codec:?} right: {}",
        level_at(right, rate, CALLEE_TONE)
    );
    assert!(
        level_at(right, rate, CALLER_TONE) < 0.1,
        "{codec:?} right carries the caller"
    );
    let mixed = Wav::read(&mixed_path(&path));
    assert_eq!((mixed.channels, mixed.rate), (1, codec.rate()));
    assert_eq!(mixed.samples.len() * 2, stereo.samples.len());
    let mixed = &mixed.samples[skip..];
    assert!(level_at(mixed, rate, CALLER_TONE) > 0.5);
    assert!(level_at(mixed, rate, CALLEE_TONE) > 0.5);
    // The sidecar describes it.
    let sidecar_path = path.with_file_name(format!("rec-{name}_example.com.json"));
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sidecar_path).unwrap()).unwrap();
    assert_eq!(sidecar["state"], "complete");
    assert_eq!(sidecar["call_id"], c.id.as_str());
    assert_eq!(sidecar["sample_rate"], codec.rate());
    assert_eq!(sidecar["legs"]["caller"]["packets"], 100);
    assert_eq!(sidecar["legs"]["caller"]["channel"], "left");
    assert_eq!(
        sidecar["legs"]["callee"]["codecs"][0],
        codec.sdp().encoding.as_str()
    );
    assert_eq!(proxy.metric("mediaproxy_recordings", &[]).await, Some(0.0));
    assert_eq!(
        proxy
            .metric(
                "mediaproxy_recordings_finished_total",
                &[("outcome", "complete")]
            )
            .await,
        Some(1.0)
    );
    proxy.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn pcmu_tones_land_on_their_channels_at_8_khz() {
    tones_are_recorded_on_their_channels(TestCodec::Pcmu, 20, "pcmu").await;
}

#[tokio::test]
async fn pcma_tones_land_on_their_channels_at_8_khz() {
    tones_are_recorded_on_their_channels(TestCodec::Pcma, 20, "pcma").await;
}

#[tokio::test]
async fn g722_tones_land_on_their_channels_at_16_khz() {
    tones_are_recorded_on_their_channels(TestCodec::G722, 20, "g722").await;
}

#[tokio::test]
async fn opus_tones_land_on_their_channels_at_48_khz() {
    tones_are_recorded_on_their_channels(TestCodec::Opus { channels: 1 }, 20, "opus").await;
}

#[tokio::test]
async fn stereo_opus_is_recorded_as_one_channel_per_leg() {
    tones_are_recorded_on_their_channels(TestCodec::Opus { channels: 2 }, 20, "opus2").await;
}

async fn recording_proxy(ports: u16, dir: &Path) -> TestProxy {
    TestProxy::start(
        ports,
        MediaOptions {
            recordings: Some(dir.to_path_buf()),
            ..MediaOptions::default()
        },
    )
    .await
}

async fn control(proxy: &mut TestProxy, call: &str, pause: bool) -> pb::RecordingState {
    let request = pb::RecordingControlRequest {
        call_id: call.into(),
    };
    let answer = if pause {
        proxy.client.pause_recording(request).await
    } else {
        proxy.client.stop_recording(request).await
    };
    answer.expect("recording control").into_inner()
}

/// Seconds `from..to` of a channel.
fn span(samples: &[i16], rate: u32, from: f64, to: f64) -> &[i16] {
    let at = |s: f64| ((s * f64::from(rate)) as usize).min(samples.len());
    &samples[at(from)..at(to)]
}

#[tokio::test]
async fn pause_keeps_the_time_line_silent_and_stop_mid_call_closes_the_files() {
    let dir = recordings_dir("pause");
    let mut proxy = recording_proxy(20, &dir).await;
    let c = call(&mut proxy, "pause-call", TestCodec::Pcmu, false).await;
    let mut caller = Stream::new(TestCodec::Pcmu, CALLER_TONE, 1);
    let mut callee = Stream::new(TestCodec::Pcmu, CALLEE_TONE, 2);
    // Media flows before the recording starts: it is not in the file.
    talk(&c, &mut caller, &mut callee, 25).await;
    start_recording(&mut proxy, &c.id, false).await;
    talk(&c, &mut caller, &mut callee, 50).await;
    let paused = control(&mut proxy, &c.id, true).await;
    assert_eq!(paused.state, pb::recording_state::State::Paused as i32);
    talk(&c, &mut caller, &mut callee, 50).await;
    let resumed = start_recording(&mut proxy, &c.id, false).await;
    assert_eq!(resumed.state, pb::recording_state::State::Recording as i32);
    talk(&c, &mut caller, &mut callee, 50).await;
    let stopped = control(&mut proxy, &c.id, false).await;
    assert_eq!(stopped.state, pb::recording_state::State::Finished as i32);
    assert_eq!(
        stopped.packets, 200,
        "the paused second's packets are not written"
    );
    assert_eq!(stopped.files.len(), 3, "{:?}", stopped.files);
    // The call goes on after the recording stopped; the release reports the finished one.
    talk(&c, &mut caller, &mut callee, 10).await;
    let released = proxy.release(&c.id).await.stats.unwrap();
    let recording = released.recording.unwrap();
    assert_eq!(recording.path, stopped.path);
    assert_eq!(recording.packets, 200);
    let wav = Wav::read(Path::new(&stopped.path));
    assert!((wav.seconds() - 3.0).abs() < 0.1, "{:.3} s", wav.seconds());
    let left = wav.channel(0);
    let (first, pause, last) = (
        span(&left, 8000, 0.1, 0.9),
        span(&left, 8000, 1.1, 1.9),
        span(&left, 8000, 2.1, 2.9),
    );
    assert!(level_at(first, 8000, CALLER_TONE) > 0.8);
    assert!(level_at(last, 8000, CALLER_TONE) > 0.8);
    let loud = mediaproxy::audio::analysis::rms(pause);
    assert!(loud < 1.0, "paused time is silent, not {loud} rms");
    let sidecar_path = Path::new(&stopped.path).with_extension("json");
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sidecar_path).unwrap()).unwrap();
    let pauses = sidecar["pauses_ms"].as_array().unwrap();
    assert_eq!(pauses.len(), 1);
    let (from, to) = (
        pauses[0][0].as_u64().unwrap(),
        pauses[0][1].as_u64().unwrap(),
    );
    assert!(
        from.abs_diff(1000) < 100 && to.abs_diff(2000) < 100,
        "{from}..{to}"
    );
    proxy.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_recording_started_again_after_a_stop_gets_new_files_and_only_its_own_audio() {
    let dir = recordings_dir("again");
    let mut proxy = recording_proxy(20, &dir).await;
    let c = call(&mut proxy, "again-call", TestCodec::Pcmu, false).await;
    let mut caller = Stream::new(TestCodec::Pcmu, CALLER_TONE, 1);
    let mut callee = Stream::new(TestCodec::Pcmu, CALLEE_TONE, 2);
    start_recording(&mut proxy, &c.id, false).await;
    talk(&c, &mut caller, &mut callee, 25).await;
    let first = control(&mut proxy, &c.id, false).await;
    // Between the recordings the relay stops copying the call to the recorder; the second
    // start has it copy again, so the second file holds its own half second exactly.
    talk(&c, &mut caller, &mut callee, 25).await;
    let again = start_recording(&mut proxy, &c.id, false).await;
    assert_eq!(again.state, pb::recording_state::State::Recording as i32);
    talk(&c, &mut caller, &mut callee, 25).await;
    let second = control(&mut proxy, &c.id, false).await;
    assert_eq!((first.packets, second.packets), (50, 50));
    assert_ne!(first.path, second.path, "a new file, the first one kept");
    assert!(Path::new(&first.path).exists());
    let wav = Wav::read(Path::new(&second.path));
    assert!((wav.seconds() - 0.5).abs() < 0.1, "{:.3} s", wav.seconds());
    assert!(level_at(&wav.channel(0), 8000, CALLER_TONE) > 0.8);
    proxy.release(&c.id).await;
    proxy.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn gaps_are_silence_of_their_length_and_reordered_packets_land_in_place() {
    let dir = recordings_dir("gaps");
    let mut proxy = recording_proxy(20, &dir).await;
    let c = call(&mut proxy, "gap-call", TestCodec::Pcmu, false).await;
    start_recording(&mut proxy, &c.id, false).await;
    let mut caller = Stream::new(TestCodec::Pcmu, CALLER_TONE, 1);
    let mut callee = Stream::new(TestCodec::Pcmu, CALLEE_TONE, 2);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut held = None;
    for n in 0..150 {
        tick.tick().await;
        c.callee.send(c.to_callee_leg, &callee.next()).await;
        let packet = caller.next();
        match n {
            // 0.5 s of silence suppression: the caller sends nothing, its clock goes on.
            50..75 => {}
            // Every other pair after that arrives swapped (40 ms apart).
            _ if n >= 100 && n % 2 == 0 => held = Some(packet),
            _ if n > 100 && n % 2 == 1 => {
                c.caller.send(c.to_caller_leg, &packet).await;
                c.caller.send(c.to_caller_leg, &held.take().unwrap()).await;
            }
            _ => c.caller.send(c.to_caller_leg, &packet).await,
        }
    }
    let stats = proxy.release(&c.id).await.stats.unwrap();
    let recording = stats.recording.unwrap();
    assert_eq!(recording.packets, 125 + 150);
    let wav = Wav::read(Path::new(&recording.path));
    // Both channels cover the whole 3 s: the gap did not compress the caller's time.
    assert!((wav.seconds() - 3.0).abs() < 0.1, "{:.3} s", wav.seconds());
    let left = wav.channel(0);
    assert!(level_at(span(&left, 8000, 0.1, 0.95), 8000, CALLER_TONE) > 0.9);
    assert!(mediaproxy::audio::analysis::rms(span(&left, 8000, 1.05, 1.45)) < 1.0);
    // Had the swapped packets been written in arrival order, the tone would be broken up
    // every 20 ms; in place, it is as clean as before the swaps.
    let reordered = level_at(span(&left, 8000, 2.05, 2.95), 8000, CALLER_TONE);
    assert!(reordered > 0.9, "reordered part: {reordered}");
    let right = wav.channel(1);
    assert!(level_at(span(&right, 8000, 0.1, 2.9), 8000, CALLEE_TONE) > 0.9);
    proxy.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_tap_subscriber_gets_both_legs_tones_resampled_and_other_calls_refuse_it() {
    let dir = recordings_dir("tap");
    let mut proxy = recording_proxy(20, &dir).await;
    let relayed = call(&mut proxy, "relay-only", TestCodec::Pcmu, false).await;
    let refused = proxy
        .client
        .tap_audio(pb::TapAudioRequest {
            call_id: relayed.id.clone(),
            leg: 0,
            sample_rate: 0,
        })
        .await
        .expect_err("a relay-mode call cannot be tapped");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    let c = call(&mut proxy, "reflect-call", TestCodec::Pcmu, true).await;
    let open = |rate| pb::TapAudioRequest {
        call_id: c.id.clone(),
        leg: 0,
        sample_rate: rate,
    };
    let mut wideband = proxy
        .client
        .tap_audio(open(16000))
        .await
        .unwrap()
        .into_inner();
    let mut native = proxy.client.tap_audio(open(0)).await.unwrap().into_inner();
    // One that never reads, on a connection with a small HTTP/2 window: once the transport's
    // buffers are full its frames are dropped.
    let slow = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.grpc))
        .unwrap()
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024)
        .connect()
        .await
        .unwrap();
    let _stuck = pb::media_proxy_client::MediaProxyClient::new(slow)
        .tap_audio(open(48000))
        .await
        .unwrap()
        .into_inner();
    let mut caller = Stream::new(TestCodec::Pcmu, CALLER_TONE, 1);
    let mut callee = Stream::new(TestCodec::Pcmu, CALLEE_TONE, 2);
    talk(&c, &mut caller, &mut callee, 75).await;
    let mut frames: Vec<pb::AudioFrame> = Vec::new();
    while frames.len() < 100 {
        let frame = tokio::time::timeout(Duration::from_secs(2), wideband.message())
            .await
            .expect("frames keep coming")
            .unwrap()
            .expect("stream open");
        frames.push(frame);
    }
    let first_native = native.message().await.unwrap().unwrap();
    assert_eq!(
        (first_native.sample_rate, first_native.pcm.len()),
        (8000, 320)
    );
    for leg in [CALLER, CALLEE] {
        let of_leg: Vec<&pb::AudioFrame> = frames.iter().filter(|f| f.leg == leg as i32).collect();
        assert!(of_leg.len() >= 45, "{leg:?}: {} frames", of_leg.len());
        for (n, frame) in of_leg.iter().enumerate() {
            assert_eq!(frame.sample_rate, 16000);
            assert_eq!(frame.pcm.len(), 640, "20 ms of 16-bit samples");
            assert_eq!(frame.sequence as usize, n);
            assert_eq!(frame.rtp_timestamp as usize, n * 320);
            assert_eq!(frame.encoding, "PCMU");
            assert_eq!(frame.call_id, c.id);
        }
        let pcm: Vec<i16> = of_leg[5..]
            .iter()
            .flat_map(|f| {
                f.pcm
                    .chunks_exact(2)
                    .map(|p| i16::from_le_bytes([p[0], p[1]]))
            })
            .collect();
        let (own, other) = if leg == CALLER {
            (CALLER_TONE, CALLEE_TONE)
        } else {
            (CALLEE_TONE, CALLER_TONE)
        };
        assert!(
            level_at(&pcm, 16000, own) > 0.9,
            "{leg:?}: {}",
            level_at(&pcm, 16000, own)
        );
        assert!(level_at(&pcm, 16000, other) < 0.05);
    }
    // Frames of the two legs with the same timestamp are simultaneous.
    let caller_first = frames.iter().find(|f| f.leg == CALLER as i32).unwrap();
    let callee_first = frames.iter().find(|f| f.leg == CALLEE as i32).unwrap();
    assert_eq!(caller_first.unix_ms, callee_first.unix_ms);
    assert_eq!(
        proxy.metric("mediaproxy_tap_subscribers", &[]).await,
        Some(3.0)
    );
    // A subscriber that stops reading loses frames; the relay does not slow down.
    talk(&c, &mut caller, &mut callee, 150).await;
    let delivered = c
        .callee
        .receive(400, Duration::from_millis(300))
        .await
        .len();
    assert!(
        delivered >= 225,
        "the callee got {delivered} of the caller's packets"
    );
    assert!(
        proxy
            .metric("mediaproxy_tap_frames_dropped_total", &[])
            .await
            .unwrap()
            > 0.0
    );
    // Release ends the streams.
    proxy.release(&c.id).await;
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(Some(_)) = native.message().await {}
    })
    .await;
    assert!(ended.is_ok(), "the tap stream ends with the call");
    assert_eq!(
        proxy.metric("mediaproxy_tap_subscribers", &[]).await,
        Some(0.0)
    );
    // The subscriber that never read still holds its stream: shutdown does not wait for it.
    let stopping = Instant::now();
    proxy.shutdown().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "{:?}",
        stopping.elapsed()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_pcap_holds_both_legs_packets_and_lease_expiry_closes_the_files() {
    let dir = recordings_dir("pcap");
    let mut proxy = TestProxy::start(
        20,
        MediaOptions {
            recordings: Some(dir.clone()),
            lease_timeout: Some("1s".parse().unwrap()),
            ..MediaOptions::default()
        },
    )
    .await;
    let c = call(&mut proxy, "pcap-call", TestCodec::Pcma, false).await;
    let state = start_recording(&mut proxy, &c.id, true).await;
    assert!(
        state.files.iter().any(|f| f.ends_with(".pcap")),
        "{:?}",
        state.files
    );
    let mut caller = Stream::new(TestCodec::Pcma, CALLER_TONE, 1);
    let mut callee = Stream::new(TestCodec::Pcma, CALLEE_TONE, 2);
    talk(&c, &mut caller, &mut callee, 25).await;
    // The owner stops renewing: the proxy releases the call itself and closes the files.
    let mut events = proxy.events("", &c.id).await;
    let finished = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let event = events.message().await.unwrap().unwrap();
            if let Some(pb::event::Kind::RecordingFinished(done)) = event.kind {
                return done;
            }
        }
    })
    .await
    .expect("the recording finishes with the lease");
    assert_eq!(finished.packets, 50);
    // The file runs from the first packet to the release: 0.5 s of tones, then the silence
    // of a call whose phones went quiet until its lease ran out.
    let wav = Wav::read(Path::new(&finished.path));
    assert!(
        wav.seconds() > 0.5 && wav.seconds() < 1.6,
        "{:.3} s",
        wav.seconds()
    );
    let left = wav.channel(0);
    assert!(level_at(span(&left, 8000, 0.1, 0.45), 8000, CALLER_TONE) > 0.9);
    assert!(mediaproxy::audio::analysis::rms(span(&left, 8000, 0.6, 1.6)) < 1.0);
    let pcap = std::fs::read(Path::new(&finished.path).with_extension("pcap")).unwrap();
    assert_eq!(&pcap[0..4], &0xa1b2_c3d4u32.to_le_bytes());
    // Records: 16-byte header, 20-byte IPv4, 8-byte UDP, then the RTP packet.
    let mut at = 24;
    let mut from_caller = 0;
    let mut from_callee = 0;
    while at + 16 <= pcap.len() {
        let len = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let ip = &pcap[at + 16..at + 16 + len];
        let source = u16::from_be_bytes([ip[20], ip[21]]);
        let destination = u16::from_be_bytes([ip[22], ip[23]]);
        assert_eq!(ip[28], 0x80, "an RTP packet follows the headers");
        if source == c.caller.addr().port() {
            assert_eq!(destination, c.to_caller_leg.port());
            from_caller += 1;
        } else if source == c.callee.addr().port() {
            assert_eq!(destination, c.to_callee_leg.port());
            from_callee += 1;
        }
        at += 16 + len;
    }
    assert_eq!((from_caller, from_callee), (25, 25));
    proxy.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A tmpfs of `kib` KiB mounted for the test's life (root only).
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(name: &str, kib: u32) -> Option<Self> {
        let dir = recordings_dir(name);
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(Self(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn a_full_disk_ends_the_recording_not_the_call() {
    let Some(disk) = SmallDisk::mount("full", 96) else {
        println!("SKIPPED: mounting a small tmpfs needs root");
        return;
    };
    let mut proxy = recording_proxy(20, &disk.0).await;
    let c = call(&mut proxy, "full-disk", TestCodec::Pcmu, false).await;
    start_recording(&mut proxy, &c.id, false).await;
    let mut caller = Stream::new(TestCodec::Pcmu, CALLER_TONE, 1);
    let mut callee = Stream::new(TestCodec::Pcmu, CALLEE_TONE, 2);
    // 48 KiB of WAV per second (stereo and mixed at 8 kHz): full after about 2 s.
    talk(&c, &mut caller, &mut callee, 200).await;
    let relayed = c
        .callee
        .receive(400, Duration::from_millis(300))
        .await
        .len();
    assert_eq!(relayed, 200, "every packet was relayed");
    let stats = proxy.release(&c.id).await.stats.unwrap();
    let recording = stats.recording.unwrap();
    assert_eq!(recording.state, pb::recording_state::State::Finished as i32);
    assert!(
        recording.error.contains("No space left"),
        "{}",
        recording.error
    );
    assert!(
        recording.packets > 0 && recording.packets < 400,
        "{}",
        recording.packets
    );
    // What reached the disk is a valid, playable file.
    let wav = Wav::read(Path::new(&recording.path));
    assert!(wav.seconds() > 0.3, "{:.3} s kept", wav.seconds());
    assert_eq!(
        proxy
            .metric(
                "mediaproxy_recordings_finished_total",
                &[("outcome", "failed")]
            )
            .await,
        Some(1.0)
    );
    proxy.shutdown().await;
}
