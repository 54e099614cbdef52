//! Parsing one complete message from bytes (RFC 3261 sections 7 and 25), and the
//! [`ParseError`] that keeps what is needed to answer a message that cannot be parsed.

use super::{CSeq, Headers, Message, Method, Request, Response};

/// A message that could not be parsed, with what is needed to answer it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ParseError {
    /// The status to answer a request with: 400, or 505 (a SIP version other than 2.0), 416
    /// (a Request-URI scheme other than sip, sips, tel), 413 (a body over [`MAX_BODY`]) or
    /// 513 (more than [`MAX_HEADER_FIELDS`] header fields).
    pub status: u16,
    /// For the reason phrase of the answer, e.g. "Bad Content-Length".
    pub reason: String,
    /// Whether the start line was a request (only requests get a 400).
    pub request: bool,
    /// Headers that could be read (Via, From, To, Call-ID, CSeq are needed to answer).
    pub headers: Headers,
}

fn fail(reason: impl Into<String>, request: bool, headers: Headers) -> ParseError {
    ParseError {
        status: 400,
        reason: reason.into(),
        request,
        headers,
    }
}

impl ParseError {
    /// The same error answered with `status` instead of 400.
    fn answered(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
}

/// Where the header section ends: (index of the blank line, length of the separator).
pub(super) fn header_end(data: &[u8]) -> Option<(usize, usize)> {
    let crlf = data.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = data.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) if b < a => Some((b, 2)),
        (Some(a), _) => Some((a, 4)),
        (None, Some(b)) => Some((b, 2)),
        (None, None) => None,
    }
}

/// Parses one complete message (a UDP datagram, or a frame cut by [`frame`](super::frame)).
pub fn parse(data: &[u8]) -> Result<Message, ParseError> {
    let start = data
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(data.len());
    let data = &data[start..];
    let Some((end, separator)) = header_end(data) else {
        return Err(fail("Incomplete header section", false, Headers::new()));
    };
    let head = std::str::from_utf8(&data[..end])
        .map_err(|_| fail("Header section is not UTF-8", false, Headers::new()))?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start_line = lines.next().unwrap_or("");
    let request = !start_line.starts_with("SIP/");
    // Unfold: a line starting with whitespace continues the previous header (section 7.3.1).
    let mut headers = Headers::new();
    let mut current: Option<(String, String)> = None;
    for line in lines {
        if line.starts_with(' ') || line.starts_with('\t') {
            match current.as_mut() {
                Some((_, value)) => {
                    // A continuation of only white space adds nothing (found by fuzzing: it
                    // left a trailing space that a second parse trimmed away).
                    let more = line.trim();
                    if !more.is_empty() {
                        if !value.is_empty() {
                            value.push(' ');
                        }
                        value.push_str(more);
                    }
                }
                None => return Err(fail("Folded line before any header", request, headers)),
            }
            continue;
        }
        if let Some((name, value)) = current.take() {
            headers.push(&name, value);
            if headers.len() > MAX_HEADER_FIELDS {
                return Err(fail("Too many header fields", request, headers).answered(513));
            }
        }
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(fail(
                format!("Malformed header line {:?}", truncate(line)),
                request,
                headers,
            ));
        };
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return Err(fail(
                format!("Malformed header name {:?}", truncate(name)),
                request,
                headers,
            ));
        }
        current = Some((name.to_owned(), value.trim().to_owned()));
    }
    if let Some((name, value)) = current.take() {
        headers.push(&name, value);
    }
    // Counted as the message is written back: a missing Content-Length is added then, and
    // what we accept must still be accepted once forwarded (found by the fuzzer: 256 fields
    // without one passed, 257 were written, the copy was refused).
    let written = headers.len() + usize::from(headers.get("Content-Length").is_none());
    if written > MAX_HEADER_FIELDS {
        return Err(fail("Too many header fields", request, headers).answered(513));
    }
    check_framing_headers(&headers).map_err(|reason| fail(reason, request, headers.clone()))?;
    let rest = &data[end + separator..];
    let body = match headers.get("Content-Length") {
        Some(text) => {
            let Ok(length) = text.trim().parse::<usize>() else {
                return Err(fail("Bad Content-Length", request, headers));
            };
            if length > MAX_BODY {
                return Err(fail("Request Entity Too Large", request, headers).answered(413));
            }
            if rest.len() < length {
                return Err(fail("Body shorter than Content-Length", request, headers));
            }
            rest[..length].to_vec()
        }
        None => rest.to_vec(),
    };
    if request {
        let mut parts = start_line.split(' ').filter(|p| !p.is_empty());
        let (Some(method), Some(uri), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(fail("Malformed request line", true, headers));
        };
        if !version.eq_ignore_ascii_case("SIP/2.0") {
            // A well-formed other version is 505 (RFC 3261 section 8.2.2.x); junk is 400.
            let other_version = version
                .get(..4)
                .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"))
                && version[4..].split_once('.').is_some_and(|(major, minor)| {
                    !major.is_empty()
                        && !minor.is_empty()
                        && major
                            .bytes()
                            .chain(minor.bytes())
                            .all(|b| b.is_ascii_digit())
                });
            return Err(fail(
                format!("Unsupported version {}", truncate(version)),
                true,
                headers,
            )
            .answered(if other_version { 505 } else { 400 }));
        }
        // Schemes we route; anything else is 416 (RFC 3261 section 8.2.2.1).
        let Some((scheme, _)) = uri.split_once(':') else {
            return Err(fail("Malformed Request-URI", true, headers));
        };
        if !["sip", "sips", "tel"]
            .iter()
            .any(|known| scheme.eq_ignore_ascii_case(known))
        {
            return Err(fail(
                format!("Unsupported URI scheme {}", truncate(scheme)),
                true,
                headers,
            )
            .answered(416));
        }
        if !method.bytes().all(is_token_char) {
            return Err(fail("Malformed method", true, headers));
        }
        let method = Method::parse(method);
        check_mandatory(&method, &headers).map_err(|reason| fail(reason, true, headers.clone()))?;
        Ok(Message::Request(Request {
            method,
            uri: uri.to_owned(),
            headers,
            body,
        }))
    } else {
        let mut parts = start_line.splitn(3, ' ');
        let _version = parts.next();
        let status = parts
            .next()
            .and_then(|code| code.parse::<u16>().ok())
            .filter(|code| (100..=699).contains(code))
            .ok_or_else(|| fail("Malformed status line", false, headers.clone()))?;
        let reason = parts.next().unwrap_or("").to_owned();
        for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
            if headers.get(name).is_none() {
                return Err(fail(format!("Missing {name} header"), false, headers));
            }
        }
        Ok(Message::Response(Response {
            status,
            reason,
            headers,
            body,
        }))
    }
}

/// Headers that must appear once (RFC 3261 section 7.3.1: only comma-separable headers may
/// repeat). Two Content-Length lines are a framing ambiguity (on a stream, a smuggling risk):
/// refused like the other duplicates. Via and Contact must not hold empty values or empty
/// parameters (stray `,` or `;`).
fn check_framing_headers(headers: &Headers) -> Result<(), String> {
    for name in [
        "Content-Length",
        "Call-ID",
        "From",
        "To",
        "CSeq",
        "Max-Forwards",
        "Content-Type",
    ] {
        if headers.all(name).nth(1).is_some() {
            return Err(format!("Duplicate {name} header"));
        }
    }
    for name in ["Via", "Contact"] {
        for line in headers.all(name) {
            if has_empty_element(line) {
                return Err(format!("Empty value or parameter in {name}"));
            }
        }
    }
    Ok(())
}

/// Whether a header line has an empty comma-separated value or an empty `;` parameter,
/// outside quotes and angle brackets.
pub(super) fn has_empty_element(line: &str) -> bool {
    let (mut quoted, mut angle) = (false, false);
    // What the current element or parameter holds so far (non-blank characters).
    let mut filled = false;
    let mut escaped = false;
    for c in line.chars() {
        if quoted {
            filled = true;
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                quoted = true;
                filled = true;
            }
            '<' => {
                angle = true;
                filled = true;
            }
            '>' => angle = false,
            ',' | ';' if !angle => {
                if !filled {
                    return true;
                }
                filled = false;
            }
            c if !c.is_whitespace() => filled = true,
            _ => {}
        }
    }
    !filled
}

/// RFC 3261 section 8.1.1: the headers every request needs, and a CSeq that agrees with the
/// method.
fn check_mandatory(method: &Method, headers: &Headers) -> Result<(), String> {
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        if headers.get(name).is_none_or(str::is_empty) {
            return Err(format!("Missing {name} header"));
        }
    }
    let cseq = CSeq::parse(headers.get("CSeq").unwrap_or("")).ok_or("Malformed CSeq")?;
    if cseq.method != *method {
        return Err("CSeq method does not match the request".into());
    }
    if let Some(forwards) = headers.get("Max-Forwards")
        && forwards.trim().parse::<u8>().is_err()
    {
        return Err("Malformed Max-Forwards".into());
    }
    Ok(())
}

fn truncate(text: &str) -> String {
    text.chars().take(40).collect()
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Largest body accepted: SDP of a video call with every codec is a few KiB; a bigger
/// Content-Length is refused (413 for a datagram; a stream is closed, as no frame of it can
/// be trusted) instead of buffered.
pub const MAX_BODY: usize = 32 * 1024;
/// Most header fields in one message (after unfolding); more is refused 513.
pub const MAX_HEADER_FIELDS: usize = 256;
