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
//! - [`types`]: domain types (call id, owner, leg, media kind, drop and release reasons).
//! - [`rtp`]: RTP/RTCP recognition of a datagram.
//! - [`quality`]: RFC 3550 loss, duplicates, reordering and jitter of one stream.
//! - [`session`]: one call's relay state: latching, routing, counters, timers, events.
//! - [`ports`]: the RTP port pool with quarantine.
//! - [`recording`]: the recorder thread: WAV recordings, pcap, the live audio tap.
//! - [`relay`]: worker threads that own sockets and sessions and run the hot path.
//! - [`control`]: the control plane: calls, leases, idempotent allocate/release.
//! - `fuzzing` (hidden): entry points of the fuzz targets in `fuzz/`.
//! - [`grpc`]: the `mediaproxy.v1` gRPC service, converting wire types to domain types.
//! - [`identity`]: a client's name under mutual TLS (its certificate's common name).
//! - [`metrics`]: Prometheus registry and the `/metrics` and `/healthz` HTTP endpoints.
//! - [`config`]: command line, environment and TOML configuration.
//! - [`server`]: wires everything together; used by the binary, by tests and by `signaling`'s
//!   embedded mode.
#![forbid(unsafe_code)]

pub mod audio;
pub mod client;
pub mod config;
pub mod control;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod ports;
pub mod quality;
pub mod ratelimit;
pub mod recording;
pub mod relay;
pub mod rtp;
pub mod server;
pub mod session;
pub mod tombstone;
pub mod types;
