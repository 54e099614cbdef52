//! Audio for recordings and the live tap: decoding RTP payloads to linear PCM, converting
//! sample rates, and laying each leg's audio out on the recording's clock. Pure functions and
//! state machines, no I/O; the recorder thread ([`crate::recording`]) drives them.
//!
//! # Layout
//!
//! - [`codec`]: which codec a payload type means (both legs' SDP, then RFC 3551), decoders.
//! - [`g711`]: PCMU and PCMA.
//! - [`g722`]: G.722 sub-band ADPCM.
//! - Opus comes from the pure-Rust `opus-pure` crate (docs/decisions.md says why).
//! - [`resample`]: windowed-sinc rate conversion.
//! - [`timeline`]: placing packets by RTP time: gaps, reordering, jitter, SSRC changes, drift.
//! - [`analysis`]: tone levels, for the example analyser and tests.

pub mod analysis;
pub mod codec;
pub mod g711;
pub mod g722;
pub mod resample;
pub mod timeline;
