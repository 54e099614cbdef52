//! SIP protocol layers named after RFC 3261: messages and their parts. No I/O here.

pub mod call_id;
pub mod header;
pub mod message;
pub mod peer;
pub mod uri;

pub use call_id::SipCallId;
pub use peer::{Peer, Transport};
