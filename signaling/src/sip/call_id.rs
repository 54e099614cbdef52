//! The value of a SIP `Call-ID` header (RFC 3261 section 8.1.1.4): it names one dialog, so
//! one leg of a B2BUA call. A call has two (the caller's and the one we made for the
//! callee) and one media session key, [`proto::domain::CallId`]; keeping them apart in the
//! types is what stops a leg's Call-ID from being used where the call's key is wanted.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// A SIP Call-ID header value, as it arrived or as we made it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SipCallId(Arc<str>);

impl SipCallId {
    pub fn new(text: &str) -> Self {
        Self(Arc::from(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SipCallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for SipCallId {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl PartialEq<str> for SipCallId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for SipCallId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

/// Maps keyed by Call-ID are looked up with the `&str` of a message's header.
impl Borrow<str> for SipCallId {
    fn borrow(&self) -> &str {
        &self.0
    }
}
