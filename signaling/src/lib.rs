//! `signaling`: the SIP side of the product (registrar, B2BUA, routing, CDRs).
//!
//! Not built yet: this crate exists so the workspace has its final shape. The SIP service is
//! the next piece of work (see `docs/architecture.md`); until it lands the binary refuses to
//! start rather than pretend to serve.
