//! `mediaproxy`: an rtpengine-style RTP relay driven over gRPC (`mediaproxy.v1`).
//!
//! Signaling allocates RTP/RTCP port pairs per call leg, tells the proxy where each leg's
//! media should go (from SDP), and the proxy relays packets between the legs with symmetric
//! latching, counting everything that happens to every packet.
//!
//! # Layout
//!
//! Protocol logic does no I/O; async and thread code only moves data.
//!
//! - [`audio`]: decoders (G.711, G.722, Opus), rate conversion and the timeline of a leg's
//!   audio, for recordings and the tap.
//! - `types`: domain types (call id, owner, leg, media kind, drop and release reasons).
//! - [`rtp`]: RTP/RTCP recognition of a datagram (and building one, for tools and tests).
//! - `quality`: RFC 3550 loss, duplicates, reordering and jitter of one stream.
//! - `session`: one call's relay state: latching, routing, counters, timers, events.
//! - `ports`: the RTP port pool with quarantine.
//! - `recording`: the recorder thread: WAV recordings, pcap, the live audio tap.
//! - `relay`: worker threads that own sockets and sessions and run the hot path.
//! - `control`: the control plane: calls, leases, idempotent allocate/release.
//! - `fuzzing` (hidden): entry points of the fuzz targets in `fuzz/`.
//! - `grpc`: the `mediaproxy.v1` gRPC service, converting wire types to domain types.
//! - `ng`: rtpengine's ng control protocol (bencode/JSON over UDP), for Kamailio and OpenSIPS.
//! - `identity`: a client's name under mutual TLS (its certificate's common name).
//! - `metrics`: Prometheus registry and the `/metrics` and `/healthz` HTTP endpoints.
//! - [`config`]: command line, environment and TOML configuration.
//! - `ratelimit`: per-client request budgets of the gRPC service.
//! - `tombstone`: answers kept for released calls, so a retried release is idempotent.
//! - [`client`]: the gRPC client of the operator tools (`mpctl`, `mp-analyser`).
//! - [`server`]: wires everything together; used by the binary, by tests and by `signaling`'s
//!   embedded mode.
//!
//! # API
//!
//! Everything else is private to the crate. What other crates may use:
//!
//! - [`MediaProxy`] ([`server`]) with its configuration ([`config`]): the `mediaproxy`
//!   binary, `signaling`'s embedded proxy and the integration tests start a proxy with them.
//!   This is the only part of the crate that `signaling` uses.
//! - [`client`]: the operator tools' connection and output helpers.
//! - [`audio`]: the decoders and the tone analysis (the analyser, the benchmark, tests).
//! - [`wav`]: the WAV writer of recordings (the analyser).
//! - [`rtp`]: recognising and building RTP packets (the benchmark and tests).
//! - `fuzzing` (hidden): entry points of the fuzz targets in `fuzz/`.
//!
//! What both services use (durations, logging, the metrics server, the wall clock) lives in
//! the `service-kit` crate; the types both speak over gRPC live in `proto`.
#![forbid(unsafe_code)]

pub mod audio;
pub mod client;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod rtp;
pub mod server;

mod control;
mod grpc;
mod identity;
mod metrics;
mod ng;
mod ports;
mod quality;
mod ratelimit;
mod recording;
mod relay;
mod session;
mod tombstone;
mod types;

pub use recording::wav;
pub use server::MediaProxy;
