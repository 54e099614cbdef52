//! SIP messages (RFC 3261 section 7 and 25): parsing from bytes and writing back, no I/O.
//!
//! Built for real traffic: compact header names (`v: f: t: i: m: l:` ...), whitespace before
//! the colon (`Via :`), folded header lines, several values in one header line, unknown
//! headers kept in order, IPv6 in URIs and Vias, and leading CRLF keep-alives. A message that
//! cannot be parsed yields a [`ParseError`] that keeps whatever headers were readable, so the
//! caller can still answer `400` with a reason phrase that says what was wrong.
//!
//! On stream transports [`frame`] cuts one message out of a buffer using Content-Length
//! (RFC 3261 section 18.3), so two messages sharing a TCP read are never merged.
//!
//! # Layout
//!
//! This file holds the message types (method, request, response, CSeq); the rest is one file
//! per concept, re-exported here:
//!
//! - `headers`: [`Headers`] in received order, compact and canonical names, value splitting.
//! - `parser`: [`parse`], [`ParseError`] and the limits a message must keep.
//! - `framing`: [`frame`] and [`Frame`], cutting messages out of a TCP stream.
//! - `writer`: the wire form of requests and responses, and [`reason_phrase`].

mod framing;
mod headers;
mod parser;
mod writer;

#[cfg(test)]
mod tests;

pub use framing::{Frame, frame};
pub use headers::{Headers, canonical_name, split_values};
pub use parser::{MAX_BODY, MAX_HEADER_FIELDS, ParseError, parse};
pub use writer::reason_phrase;

/// A request method. Unknown methods are kept by name (answered 501 by the core).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Info,
    Update,
    Prack,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    Other(String),
}

impl Method {
    pub fn parse(text: &str) -> Self {
        match text {
            "INVITE" => Self::Invite,
            "ACK" => Self::Ack,
            "BYE" => Self::Bye,
            "CANCEL" => Self::Cancel,
            "REGISTER" => Self::Register,
            "OPTIONS" => Self::Options,
            "INFO" => Self::Info,
            "UPDATE" => Self::Update,
            "PRACK" => Self::Prack,
            "SUBSCRIBE" => Self::Subscribe,
            "NOTIFY" => Self::Notify,
            "REFER" => Self::Refer,
            "MESSAGE" => Self::Message,
            "PUBLISH" => Self::Publish,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Invite => "INVITE",
            Self::Ack => "ACK",
            Self::Bye => "BYE",
            Self::Cancel => "CANCEL",
            Self::Register => "REGISTER",
            Self::Options => "OPTIONS",
            Self::Info => "INFO",
            Self::Update => "UPDATE",
            Self::Prack => "PRACK",
            Self::Subscribe => "SUBSCRIBE",
            Self::Notify => "NOTIFY",
            Self::Refer => "REFER",
            Self::Message => "MESSAGE",
            Self::Publish => "PUBLISH",
            Self::Other(name) => name,
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// Request-URI as received (parse with [`crate::sip::uri::Uri::parse`]).
    pub uri: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

impl Message {
    pub fn headers(&self) -> &Headers {
        match self {
            Self::Request(r) => &r.headers,
            Self::Response(r) => &r.headers,
        }
    }
}

/// The CSeq header: sequence number and method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub number: u32,
    pub method: Method,
}

impl CSeq {
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split_whitespace();
        let number = parts.next()?.parse().ok()?;
        let method = Method::parse(parts.next()?);
        parts.next().is_none().then_some(Self { number, method })
    }
}

impl Request {
    pub fn cseq(&self) -> Option<CSeq> {
        self.headers.cseq()
    }

    pub fn call_id(&self) -> &str {
        self.headers.call_id()
    }
}

impl Response {
    pub fn cseq(&self) -> Option<CSeq> {
        self.headers.cseq()
    }

    pub fn call_id(&self) -> &str {
        self.headers.call_id()
    }
}
