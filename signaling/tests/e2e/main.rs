//! End-to-end tests: the real `signaling` binary (with its embedded media proxy, or separate
//! ones) between SIPp phones, RTP included; one test binary, a module per topic:
//!
//! - `calls`: call flows (both hang-ups, busy, cancel, digest, direct mode, malformed
//!   requests, hold, an unreachable proxy, no answer, a separate proxy, media timeout, TCP,
//!   draining);
//! - `media`: transports and what the media did (IPv6, late offer, route sets, keepalives,
//!   one-way and silent calls, a moved source, the admin endpoint, TCP limits);
//! - `features`: what phones send inside a call (INFO, MESSAGE, UPDATE) relayed to the other
//!   leg, a blind transfer between three SIPp phones, 100rel on both legs;
//! - `linphone`: real softphones (Debian's linphonec): a blind transfer with the audio
//!   moving, by the callee and by the caller;
//! - `cdr`: CDR rows in a real PostgreSQL, a database outage during calls, `signaling export`;
//! - `nodes`: separately started media proxies (a pool, a node lost or killed, draining,
//!   orphans, mutual TLS);
//! - `recording`: recording by policy and by an operator, a full disk, the live tap.
//!
//! Each module keeps its own port plan in its top comment (`calls.rs` has the shared one).

#[path = "../common/mod.rs"]
mod common;

mod calls;
mod cdr;
mod features;
mod linphone;
mod media;
mod nodes;
mod recording;
