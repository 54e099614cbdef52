//! `signaling`: the SIP side of the product (registrar, B2BUA, routing, CDRs).
//!
//! # Layout
//!
//! - [`sip`]: RFC 3261 messages, URIs and headers, parsed and written without I/O
//!   (`sip/message/`: headers, parser, framing, writer).
//! - [`sdp`]: reading SDP for the relay and the line-based rewrite through the proxy.
//! - [`access`]: who may do what, all pure: `auth` (digest: MD5, SHA-256, qop=auth,
//!   HMAC-bound expiring nonces, nonce counts that must grow, passwords or stored HA1
//!   hashes), `guard` (per-source request budgets, password-guessing bans), `registrar`
//!   (REGISTER bindings with expiry, RFC 3261 section 10.3).
//! - `fuzzing` (hidden): entry points of the fuzz targets in `fuzz/`.
//! - [`transaction`]: RFC 3261 section 17 client and server transactions with their timers.
//! - [`dialog`]: RFC 3261 section 12 dialogs and the requests built from them.
//! - [`call`]: the sans-IO B2BUA: two dialogs bridged per call, one file per flow (its
//!   inputs and outputs in `call/interface.rs`, their dispatch in `call/dispatch.rs`).
//! - [`timer`]: deadlines as state; [`ids`]: random tags, branches and Call-IDs.
//! - [`media`]: the gRPC client of the media proxy.
//! - [`cdr`]: the end of a call: `cdr::completion` builds its row from its record and its
//!   media's release, `cdr::diagnosis` gives the media verdict in plain words (both pure);
//!   the store (SQLite, PostgreSQL) and its writer thread; [`export`] reads it.
//! - [`driver`]: the driver (sockets, timers, tasks): `driver/mod.rs` serves, `perform.rs`
//!   performs the core's outputs, `transport.rs` moves SIP over UDP and TCP, `nodes.rs`
//!   watches the media proxies, `finish.rs` finishes calls into CDRs; [`admin`]: its
//!   read-only HTTP endpoints.
//! - [`policy`]: media modes, routes, trusted networks and users, as the core reads them.
//! - [`config`], [`metrics`].
#![forbid(unsafe_code)]

pub mod access;
pub(crate) mod admin;
pub(crate) mod call;
pub mod cdr;
pub mod config;
pub(crate) mod dialog;
pub mod driver;
pub mod export;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub(crate) mod ids;
pub(crate) mod media;
pub(crate) mod metrics;
pub mod policy;
pub mod sdp;
pub mod sip;
pub(crate) mod tcp;
pub(crate) mod timer;
pub(crate) mod transaction;
