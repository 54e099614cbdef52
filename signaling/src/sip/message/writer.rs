//! Writing messages back to the wire: start line, headers with a Content-Length that states
//! the real body length, body; and the standard reason phrases (RFC 3261 section 21).

use std::fmt::Write as _;

use super::{Headers, Request, Response};

impl Request {
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(
            format!("{} {} SIP/2.0\r\n", self.method, self.uri),
            &self.headers,
            &self.body,
        )
    }
}

impl Response {
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(
            format!("SIP/2.0 {} {}\r\n", self.status, self.reason),
            &self.headers,
            &self.body,
        )
    }
}

/// Start line, headers, body: the wire form of a message.
fn encode(mut out: String, headers: &Headers, body: &[u8]) -> Vec<u8> {
    write_headers(&mut out, headers, body.len());
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Writes headers in order; Content-Length keeps its place (or goes last) and always states
/// the real body length.
fn write_headers(out: &mut String, headers: &Headers, body_len: usize) {
    let mut length_written = false;
    for (name, value) in headers.iter() {
        if name == "Content-Length" {
            if !length_written {
                let _ = write!(out, "Content-Length: {body_len}\r\n");
                length_written = true;
            }
            continue;
        }
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if !length_written {
        let _ = write!(out, "Content-Length: {body_len}\r\n");
    }
    out.push_str("\r\n");
}

/// The standard reason phrase of a status code (RFC 3261 section 21).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        420 => "Bad Extension",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => "Unknown",
    }
}
