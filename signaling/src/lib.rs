//! `signaling`: the SIP side of the product (registrar, B2BUA, routing, CDRs).
//!
//! Under construction: the SIP message layer, SDP handling, digest authentication and the
//! registrar's binding store are in place (pure, tested); the transports, transactions and
//! the B2BUA follow. Until they land the binary refuses to start rather than pretend to serve.
//!
//! # Layout
//!
//! - [`sip`]: RFC 3261 messages, URIs and headers, parsed and written without I/O.
//! - [`sdp`]: reading SDP for the relay and the line-based rewrite through the proxy.
//! - [`auth`]: digest authentication (MD5, SHA-256, qop=auth, expiring stateless nonces).
//! - [`registrar`]: REGISTER bindings with expiry (RFC 3261 section 10.3).

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
