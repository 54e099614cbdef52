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

use std::fmt::Write as _;

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

/// Expands a compact header name (RFC 3261 section 7.3.3 and later RFCs) and normalises the
/// case of well-known names; unknown names keep their spelling.
pub fn canonical_name(name: &str) -> String {
    let full = match name.to_ascii_lowercase().as_str() {
        "i" | "call-id" => "Call-ID",
        "m" | "contact" => "Contact",
        "e" | "content-encoding" => "Content-Encoding",
        "l" | "content-length" => "Content-Length",
        "c" | "content-type" => "Content-Type",
        "f" | "from" => "From",
        "s" | "subject" => "Subject",
        "k" | "supported" => "Supported",
        "t" | "to" => "To",
        "v" | "via" => "Via",
        "o" | "event" => "Event",
        "r" | "refer-to" => "Refer-To",
        "b" | "referred-by" => "Referred-By",
        "u" | "allow-events" => "Allow-Events",
        "x" | "session-expires" => "Session-Expires",
        "cseq" => "CSeq",
        "max-forwards" => "Max-Forwards",
        "record-route" => "Record-Route",
        "route" => "Route",
        "expires" => "Expires",
        "authorization" => "Authorization",
        "www-authenticate" => "WWW-Authenticate",
        "proxy-authorization" => "Proxy-Authorization",
        "proxy-authenticate" => "Proxy-Authenticate",
        "user-agent" => "User-Agent",
        "server" => "Server",
        "allow" => "Allow",
        "require" => "Require",
        "min-expires" => "Min-Expires",
        "min-se" => "Min-SE",
        "rseq" => "RSeq",
        "rack" => "RAck",
        _ => return name.to_owned(),
    };
    full.to_owned()
}

/// Headers in received order. Names are canonical; values are unfolded and trimmed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Header lines held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first value of a header (whole line).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header line of a name, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a comma-separable header (Via, Contact, Route, ...), split at top-level
    /// commas (not inside quotes or angle brackets).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.all(name).flat_map(split_values)
    }

    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.0.push((canonical_name(name), value.into()));
    }

    /// Replaces every line of `name` with one value (appending if absent).
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self
            .0
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(first) => {
                self.0[first].1 = value;
                let mut index = 0;
                self.0.retain(|(n, _)| {
                    let keep = index <= first || !n.eq_ignore_ascii_case(name);
                    index += 1;
                    keep
                });
            }
            None => self.push(name, value),
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// Removes the first value of a multi-value header (e.g. the top Via), keeping the others.
    pub fn remove_first_value(&mut self, name: &str) {
        if let Some(index) = self
            .0
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            let rest: Vec<String> = split_values(&self.0[index].1)
                .skip(1)
                .map(str::to_owned)
                .collect();
            if rest.is_empty() {
                self.0.remove(index);
            } else {
                self.0[index].1 = rest.join(", ");
            }
        }
    }

    /// Replaces the first value of a multi-value header (e.g. the top Via), keeping the others.
    pub fn replace_first_value(&mut self, name: &str, value: &str) {
        if let Some(index) = self
            .0
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            let mut values: Vec<String> =
                split_values(&self.0[index].1).map(str::to_owned).collect();
            match values.first_mut() {
                Some(first) => *first = value.to_owned(),
                None => values.push(value.to_owned()),
            }
            self.0[index].1 = values.join(", ");
        }
    }

    /// Inserts a header line before every other line (e.g. a new top Via).
    pub fn prepend(&mut self, name: &str, value: impl Into<String>) {
        self.0.insert(0, (canonical_name(name), value.into()));
    }

    /// The CSeq header, parsed.
    pub fn cseq(&self) -> Option<CSeq> {
        CSeq::parse(self.get("CSeq")?)
    }

    /// The Call-ID, or "" when absent (parsing guarantees it on complete messages).
    pub fn call_id(&self) -> &str {
        self.get("Call-ID").unwrap_or("")
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// Splits a header value at commas outside quotes and angle brackets.
pub fn split_values(value: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut quoted, mut angle, mut start) = (false, false, 0);
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'<' if !quoted => angle = true,
            b'>' if !quoted => angle = false,
            b',' if !quoted && !angle => {
                parts.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(value[start..].trim());
    parts.into_iter().filter(|p| !p.is_empty())
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
fn header_end(data: &[u8]) -> Option<(usize, usize)> {
    let crlf = data.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = data.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) if b < a => Some((b, 2)),
        (Some(a), _) => Some((a, 4)),
        (None, Some(b)) => Some((b, 2)),
        (None, None) => None,
    }
}

/// Parses one complete message (a UDP datagram, or a frame cut by [`frame`]).
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
fn has_empty_element(line: &str) -> bool {
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
/// Largest body accepted: SDP of a video call with every codec is a few KiB; a bigger
/// Content-Length is refused (413 for a datagram; a stream is closed, as no frame of it can
/// be trusted) instead of buffered.
pub const MAX_BODY: usize = 32 * 1024;
/// Most header fields in one message (after unfolding); more is refused 513.
pub const MAX_HEADER_FIELDS: usize = 256;

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

impl Request {
    pub fn cseq(&self) -> Option<CSeq> {
        self.headers.cseq()
    }

    pub fn call_id(&self) -> &str {
        self.headers.call_id()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        encode(
            format!("{} {} SIP/2.0\r\n", self.method, self.uri),
            &self.headers,
            &self.body,
        )
    }
}

impl Response {
    pub fn cseq(&self) -> Option<CSeq> {
        self.headers.cseq()
    }

    pub fn call_id(&self) -> &str {
        self.headers.call_id()
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Request {
        match parse(text.as_bytes()) {
            Ok(Message::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    const INVITE: &str = "INVITE sip:bob@biloxi.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.com>\r\n\
From: Alice <sip:alice@atlanta.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.com>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\n";

    #[test]
    fn parses_the_rfc3261_example_invite_and_writes_it_back() {
        let r = request(INVITE);
        assert_eq!(r.method, Method::Invite);
        assert_eq!(r.uri, "sip:bob@biloxi.com");
        assert_eq!(r.call_id(), "a84b4c76e66710@pc33.atlanta.com");
        assert_eq!(
            r.cseq().unwrap(),
            CSeq {
                number: 314159,
                method: Method::Invite
            }
        );
        assert_eq!(r.body, b"v=0\n");
        let again = request(std::str::from_utf8(&r.to_bytes()).unwrap());
        assert_eq!(again, r);
    }

    #[test]
    fn compact_names_folding_space_before_colon_and_multi_values() {
        let text = "\r\n\r\nOPTIONS sip:carol@chicago.com SIP/2.0\r\n\
v: SIP/2.0/UDP a.example.com;branch=z9hG4bK1, SIP/2.0/TCP [2001:db8::9]:5061;branch=z9hG4bK2\r\n\
Via : SIP/2.0/UDP c.example.com;branch=z9hG4bK3\r\n\
f: <sip:x@y>;tag=a\r\nt: <sip:carol@chicago.com>\r\ni: folded-id\r\n\
Subject: I know you're there,\r\n  pick up the phone\r\n\tand talk to me!\r\n\
m: \"Joe, Smith\" <sip:joe@z>, <sip:joe@w>\r\nCSeq: 8 OPTIONS\r\nX-Unknown: kept\r\nl: 0\r\n\r\n";
        let r = request(text);
        let vias: Vec<&str> = r.headers.values("Via").collect();
        assert_eq!(vias.len(), 3);
        assert!(vias[1].contains("[2001:db8::9]:5061"));
        assert_eq!(r.call_id(), "folded-id");
        assert_eq!(
            r.headers.get("Subject"),
            Some("I know you're there, pick up the phone and talk to me!")
        );
        let contacts: Vec<&str> = r.headers.values("Contact").collect();
        assert_eq!(contacts, vec!["\"Joe, Smith\" <sip:joe@z>", "<sip:joe@w>"]);
        assert_eq!(r.headers.get("x-unknown"), Some("kept"));
        let written = String::from_utf8(r.to_bytes()).unwrap();
        assert!(written.contains("Call-ID: folded-id\r\n"));
        assert!(written.contains("X-Unknown: kept\r\n"));
    }

    #[test]
    fn a_body_over_the_limit_is_413_and_too_many_headers_513_and_a_stream_is_cut() {
        let big = format!(
            "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP a.example.com;branch=z9hG4bK1\r\n\
From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: big\r\n\
CSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{}",
            MAX_BODY + 1,
            "v".repeat(MAX_BODY + 1)
        );
        let error = parse(big.as_bytes()).unwrap_err();
        assert_eq!((error.status, error.request), (413, true));
        assert_eq!(error.headers.call_id(), "big", "enough to answer");
        assert!(matches!(frame(big.as_bytes()), Frame::Invalid(_)));
        let mut many = String::from(
            "OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP a.example.com;branch=z9hG4bK2\r\n\
From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: many\r\nCSeq: 1 OPTIONS\r\n",
        );
        for n in 0..MAX_HEADER_FIELDS {
            many.push_str(&format!("X-Filler-{n}: {n}\r\n"));
        }
        many.push_str("Content-Length: 0\r\n\r\n");
        let error = parse(many.as_bytes()).unwrap_err();
        assert_eq!(error.status, 513, "{}", error.reason);
        // Right at the limits is fine.
        let ok = big.replace(
            &format!("Content-Length: {}", MAX_BODY + 1),
            &format!("Content-Length: {MAX_BODY}"),
        );
        assert!(parse(ok.as_bytes()).is_ok());
    }

    /// Found by the `sip_message` fuzz target (a 10-minute run): the field count was checked
    /// before each next field, not after the last, and not against the Content-Length the
    /// writer adds, so a message accepted with 256 fields was written with 257 and refused.
    #[test]
    fn the_field_limit_holds_for_the_last_field_and_for_the_message_written_back() {
        let with_fields = |count: usize, length: bool| {
            let mut text = String::from(
                "OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP a.example.com;branch=z9hG4bK3\r\n\
From: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: edge\r\nCSeq: 1 OPTIONS\r\n",
            );
            let fillers = count - 5 - usize::from(length);
            for n in 0..fillers {
                text.push_str(&format!("X-Filler-{n}: {n}\r\n"));
            }
            if length {
                text.push_str("Content-Length: 0\r\n");
            }
            text.push_str("\r\n");
            text
        };
        for length in [true, false] {
            let at_limit = with_fields(MAX_HEADER_FIELDS - usize::from(!length), length);
            let message = parse(at_limit.as_bytes()).unwrap();
            let written = match &message {
                Message::Request(r) => r.to_bytes(),
                Message::Response(_) => unreachable!(),
            };
            assert!(parse(&written).is_ok(), "written back: {length}");
            let over = with_fields(MAX_HEADER_FIELDS + 1 - usize::from(!length), length);
            assert_eq!(parse(over.as_bytes()).unwrap_err().status, 513, "{length}");
        }
    }

    /// Found by the `sip_message` fuzz target: a folded continuation of only white space left
    /// a trailing space in the value, so the message written back parsed differently.
    #[test]
    fn a_blank_continuation_line_adds_nothing_to_the_value() {
        let text = "OPTIONS sip:carol@chicago.com SIP/2.0\r\n\
Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=a\r\n\
To: <sip:carol@chicago.com>\r\nCall-ID: folded\r\n \r\n\t\r\nCSeq: 8 OPTIONS\r\n\
Subject: a\r\n \r\n b\r\nContent-Length: 0\r\n\r\n";
        let r = request(text);
        assert_eq!(r.call_id(), "folded");
        assert_eq!(r.headers.get("Subject"), Some("a b"));
        let written = r.to_bytes();
        assert_eq!(
            request(std::str::from_utf8(&written).unwrap()).to_bytes(),
            written
        );
    }

    #[test]
    fn errors_say_what_is_wrong_and_keep_headers_for_the_reply() {
        let bad_length = INVITE.replace("Content-Length: 4", "Content-Length: four");
        let error = parse(bad_length.as_bytes()).unwrap_err();
        assert_eq!(error.reason, "Bad Content-Length");
        assert!(error.request);
        assert_eq!(
            error.headers.get("Call-ID"),
            Some("a84b4c76e66710@pc33.atlanta.com")
        );
        let short = INVITE.replace("Content-Length: 4", "Content-Length: 400");
        assert_eq!(
            parse(short.as_bytes()).unwrap_err().reason,
            "Body shorter than Content-Length"
        );
        let no_call_id = INVITE.replace("Call-ID: a84b4c76e66710@pc33.atlanta.com\r\n", "");
        assert_eq!(
            parse(no_call_id.as_bytes()).unwrap_err().reason,
            "Missing Call-ID header"
        );
        let mismatch = INVITE.replace("314159 INVITE", "314159 BYE");
        assert_eq!(
            parse(mismatch.as_bytes()).unwrap_err().reason,
            "CSeq method does not match the request"
        );
        let bad_line = INVITE.replace("SIP/2.0\r\nVia", "SIP/3.0\r\nVia");
        assert!(
            parse(bad_line.as_bytes())
                .unwrap_err()
                .reason
                .starts_with("Unsupported version")
        );
        assert_eq!(
            parse(b"garbage").unwrap_err().reason,
            "Incomplete header section"
        );
        let no_colon = INVITE.replace("Max-Forwards: 70", "Max-Forwards 70");
        assert!(
            parse(no_colon.as_bytes())
                .unwrap_err()
                .reason
                .starts_with("Malformed header line")
        );
    }

    /// What RFC 4475 section 3 asks of a parser, on messages written for this test: another
    /// SIP version is 505, another URI scheme 416, and a header that must appear once,
    /// two Content-Lengths, or stray separators in Via and Contact are 400.
    #[test]
    fn versions_schemes_duplicates_and_stray_separators_get_the_rfc_status() {
        let status = |text: &str| {
            parse(text.as_bytes())
                .map(|_| 200)
                .unwrap_or_else(|e| e.status)
        };
        let reason = |text: &str| parse(text.as_bytes()).unwrap_err().reason;
        assert_eq!(status(INVITE), 200);
        assert_eq!(
            status(&INVITE.replace("SIP/2.0\r\nVia", "SIP/7.0\r\nVia")),
            505
        );
        assert_eq!(
            status(&INVITE.replace("SIP/2.0\r\nVia", "SIP/2.0x\r\nVia")),
            400
        );
        assert_eq!(
            status(&INVITE.replace("SIP/2.0\r\nVia", "HTTP/1.1\r\nVia")),
            400
        );
        let im = INVITE.replace("INVITE sip:bob@biloxi.com", "INVITE im:bob@biloxi.com");
        assert_eq!(
            (status(&im), reason(&im).as_str()),
            (416, "Unsupported URI scheme im")
        );
        let tel = INVITE.replace("INVITE sip:bob@biloxi.com", "INVITE tel:+15551234");
        assert_eq!(status(&tel), 200);
        let sips = INVITE.replace("INVITE sip:bob@biloxi.com", "INVITE SIPS:bob@biloxi.com");
        assert_eq!(status(&sips), 200);
        let no_scheme = INVITE.replace("INVITE sip:bob@biloxi.com", "INVITE bob");
        assert_eq!(status(&no_scheme), 400);
        for (header, again) in [
            ("Call-ID", "Call-ID: other@pc33.atlanta.com"),
            ("To", "t: Carol <sip:carol@chicago.com>"),
            ("From", "From: Mallory <sip:m@evil.example>;tag=9"),
            ("CSeq", "CSeq: 314160 INVITE"),
            ("Max-Forwards", "Max-Forwards: 69"),
            ("Content-Length", "l: 2"),
            ("Content-Length", "Content-Length: 4"),
        ] {
            let twice = INVITE.replace("Contact:", &format!("{again}\r\nContact:"));
            assert_eq!(
                (status(&twice), reason(&twice)),
                (400, format!("Duplicate {header} header")),
                "{again}"
            );
        }
        let stray_via = INVITE.replace(
            "Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds",
            "Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds;;,;,,",
        );
        assert_eq!(reason(&stray_via), "Empty value or parameter in Via");
        let stray_contact = INVITE.replace(
            "Contact: <sip:alice@pc33.atlanta.com>",
            "Contact: \"Alice\" <sip:alice@pc33.atlanta.com>;;;;",
        );
        assert_eq!(
            reason(&stray_contact),
            "Empty value or parameter in Contact"
        );
        // Separators inside quotes and angle brackets are not separators.
        let quoted = INVITE.replace(
            "Contact: <sip:alice@pc33.atlanta.com>",
            "Contact: \"Doe, Alice; Jr\" <sip:alice@pc33.atlanta.com;transport=udp>;expires=60, <sip:a2@h>",
        );
        assert_eq!(status(&quoted), 200);
        let star = INVITE.replace("Contact: <sip:alice@pc33.atlanta.com>", "Contact: *");
        assert_eq!(status(&star), 200);
        // On a stream, two Content-Lengths cannot frame anything: the connection closes.
        let smuggled = INVITE.replace("Content-Length: 4", "Content-Length: 4\r\nl: 0");
        assert_eq!(
            frame(smuggled.as_bytes()),
            Frame::Invalid("two Content-Length headers")
        );
    }

    #[test]
    fn empty_elements_are_found_outside_quotes_and_brackets() {
        for line in ["a;;b", "a,,b", "a;", "a,", ";a", ", a", "a; ;b", ""] {
            assert!(has_empty_element(line), "{line:?}");
        }
        for line in [
            "SIP/2.0/UDP h;branch=z9hG4bK1",
            "SIP/2.0/UDP h;branch=x, SIP/2.0/TCP g;rport",
            "\"a;,b\" <sip:x;y,z>;q=1",
            "\"esc \\\" ;,\" <sip:x>",
            "*",
        ] {
            assert!(!has_empty_element(line), "{line:?}");
        }
    }

    #[test]
    fn responses_keep_their_reason_phrase() {
        let text = "SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let Ok(Message::Response(r)) = parse(text.as_bytes()) else {
            panic!()
        };
        assert_eq!((r.status, r.reason.as_str()), (486, "Busy Here"));
        assert!(
            String::from_utf8(r.to_bytes())
                .unwrap()
                .starts_with("SIP/2.0 486 Busy Here\r\n")
        );
        assert_eq!(reason_phrase(486), "Busy Here");
    }

    #[test]
    fn stream_framing_uses_content_length_rfc3261_18_3() {
        let two = format!("{INVITE}{INVITE}");
        let Frame::Complete(first) = frame(two.as_bytes()) else {
            panic!()
        };
        assert_eq!(first, INVITE.len());
        assert_eq!(
            frame(&two.as_bytes()[first..]),
            Frame::Complete(INVITE.len())
        );
        assert_eq!(
            frame(&INVITE.as_bytes()[..INVITE.len() - 2]),
            Frame::Incomplete
        );
        assert_eq!(frame(b"\r\n\r\n"), Frame::KeepAlive(4));
        let bad = INVITE.replace("Content-Length: 4", "l: x");
        assert_eq!(frame(bad.as_bytes()), Frame::Invalid("bad Content-Length"));
    }

    #[test]
    fn header_editing_for_proxying() {
        let mut r = request(INVITE);
        r.headers
            .prepend("Via", "SIP/2.0/UDP proxy;branch=z9hG4bKp");
        assert_eq!(r.headers.values("Via").count(), 2);
        r.headers.remove_first_value("Via");
        assert_eq!(
            r.headers.get("Via"),
            Some("SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds")
        );
        r.headers.set("Max-Forwards", "69");
        assert_eq!(r.headers.get("Max-Forwards"), Some("69"));
    }
}
