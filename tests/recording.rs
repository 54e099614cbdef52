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
async fn tones_are_recorded_on_their_channels(codec: TestCodec, ports: &str, name: &str) {
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
    tones_are_recorded_on_their_channels(TestCodec::Pcmu, "24000-24019", "pcmu").await;
}

#[tokio::test]
async fn pcma_tones_land_on_their_channels_at_8_khz() {
    tones_are_recorded_on_their_channels(TestCodec::Pcma, "24020-24039", "pcma").await;
}

#[tokio::test]
async fn g722_tones_land_on_their_channels_at_16_khz() {
    tones_are_recorded_on_their_channels(TestCodec::G722, "24040-24059", "g722").await;
}

#[tokio::test]
async fn opus_tones_land_on_their_channels_at_48_khz() {
    tones_are_recorded_on_their_channels(TestCodec::Opus { channels: 1 }, "24060-24079", "opus")
        .await;
}

#[tokio::test]
async fn stereo_opus_is_recorded_as_one_channel_per_leg() {
    tones_are_recorded_on_their_channels(TestCodec::Opus { channels: 2 }, "24080-24099", "opus2")
        .await;
}
