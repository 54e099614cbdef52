//! `signaling`: the SIP side of the product (registrar, B2BUA, routing, CDRs).
//!
//! Under construction: the SIP message layer is in place; transport, registrar and the B2BUA
//! follow. Until they land the binary refuses to start rather than pretend to serve.
//!
//! # Layout
//!
//! - [`sip`]: RFC 3261 messages, URIs and headers, parsed and written without I/O.
//! - [`sdp`]: reading SDP for the relay and the line-based rewrite through the proxy.

pub mod sdp;
pub mod sip;
