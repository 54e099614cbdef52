//! `signaling`: the SIP side of the product (registrar, B2BUA, routing, CDRs).
//!
//! # Layout
//!
//! - [`sip`]: RFC 3261 messages, URIs and headers, parsed and written without I/O.
//! - [`sdp`]: reading SDP for the relay and the line-based rewrite through the proxy.
//! - [`auth`]: digest authentication (MD5, SHA-256, qop=auth, expiring stateless nonces).
//! - [`registrar`]: REGISTER bindings with expiry (RFC 3261 section 10.3).
//! - [`b2bua`]: the sans-IO call core (both legs of every call, transactions, timers).
//! - [`media`]: the gRPC client of the media proxy.
//! - [`diagnosis`]: the media verdict and its plain-words diagnosis (pure).
//! - [`cdr`]: the CDR store (SQLite, PostgreSQL) and its writer thread; [`export`] reads it.
//! - [`server`]: the driver (sockets, timers, tasks); [`admin`]: its read-only HTTP endpoints.
//! - [`config`], [`metrics`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod b2bua;
pub mod cdr;
pub mod config;
pub mod diagnosis;
pub mod export;
pub mod media;
pub mod metrics;
pub mod registrar;
pub mod sdp;
pub mod server;
pub mod sip;
