//! Stream framing (RFC 3261 section 18.3): [`frame`] cuts the first message out of a TCP
//! buffer by its Content-Length, so two messages sharing a read are never merged.

use super::canonical_name;
use super::parser::{MAX_BODY, header_end};

/// Result of looking for one message in a stream buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole message occupies the first `len` bytes.
    Complete(usize),
    /// More bytes are needed.
    Incomplete,
    /// Only CRLF keep-alives (RFC 5626 section 3.5.1): drop this many bytes.
    KeepAlive(usize),
    /// The stream cannot be resynchronised (bad Content-Length): close it.
    Invalid(&'static str),
}

/// Longest header section accepted on a stream before giving up on it.
const MAX_HEADER: usize = 64 * 1024;

/// Cuts the first message out of a stream buffer by its Content-Length.
pub fn frame(buffer: &[u8]) -> Frame {
    let skip = buffer
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buffer.len());
    if skip == buffer.len() {
        return if skip == 0 {
            Frame::Incomplete
        } else {
            Frame::KeepAlive(skip)
        };
    }
    let data = &buffer[skip..];
    let Some((end, separator)) = header_end(data) else {
        return if data.len() > MAX_HEADER {
            Frame::Invalid("header section too long")
        } else {
            Frame::Incomplete
        };
    };
    let head = String::from_utf8_lossy(&data[..end]);
    let mut length = None;
    for line in head.split('\n') {
        if let Some((name, value)) = line.split_once(':')
            && canonical_name(name.trim()) == "Content-Length"
        {
            if length.is_some() {
                // Which one frames the stream? Neither: the peer is broken or smuggling.
                return Frame::Invalid("two Content-Length headers");
            }
            match value.trim().parse::<usize>() {
                Ok(n) => length = Some(n),
                Err(_) => return Frame::Invalid("bad Content-Length"),
            }
        }
    }
    let length = length.unwrap_or(0);
    if length > MAX_BODY {
        return Frame::Invalid("Content-Length over the 32 KiB a body may have");
    }
    let total = skip + end + separator + length;
    if buffer.len() >= total {
        Frame::Complete(total)
    } else {
        Frame::Incomplete
    }
}
