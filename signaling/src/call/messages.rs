//! Building messages: responses to requests (RFC 3261 section 8.2.6), responses relayed from
//! the other leg, and the SDP bodies they carry, rewritten for the relay.

use std::net::IpAddr;

use crate::sdp::{self, Rewrite, SdpError, SessionDescription};
use crate::sip::Transport;
use crate::sip::header::NameAddr;
use crate::sip::message::{Headers, Request, Response};

/// The media type of a request's body when it is neither SDP nor multipart (whose SDP part is
/// looked for by the SDP reader): such a body is answered 415, not read as SDP.
pub(super) fn foreign_body(request: &Request) -> Option<String> {
    if request.body.is_empty() {
        return None;
    }
    let kind = media_type(request.headers.get("Content-Type")?);
    (kind != "application/sdp" && !kind.starts_with("multipart/")).then_some(kind)
}

/// The media type of a Content-Type or Accept value, lowercase and without parameters
/// (`Application/SDP; charset=x` is `application/sdp`).
pub(super) fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// A response to `request` (RFC 3261 section 8.2.6): Via, From, To, Call-ID, CSeq copied;
/// `to_tag` added when the To has none; Record-Route echoed in dialog-creating responses.
pub(super) fn response(
    request: &Request,
    status: u16,
    reason: &str,
    to_tag: Option<&str>,
) -> Response {
    let mut headers = Headers::new();
    for via in request.headers.all("Via") {
        headers.push("Via", via);
    }
    headers.push("From", request.headers.get("From").unwrap_or(""));
    let to = request.headers.get("To").unwrap_or("");
    match (to_tag, NameAddr::parse(to)) {
        (Some(tag), Some(mut to)) if to.tag().is_none() => {
            to.set_tag(tag);
            headers.push("To", to.to_string());
        }
        _ => headers.push("To", to),
    }
    headers.push("Call-ID", request.call_id());
    headers.push("CSeq", request.headers.get("CSeq").unwrap_or(""));
    if (101..300).contains(&status) {
        // A UAS echoes Record-Route in dialog-creating responses (RFC 3261 12.1.1).
        for route in request.headers.all("Record-Route") {
            headers.push("Record-Route", route);
        }
    }
    headers.push("Server", concat!("signaling/", env!("CARGO_PKG_VERSION")));
    Response {
        status,
        reason: reason.to_owned(),
        headers,
        body: Vec::new(),
    }
}

/// Our response to `request` carrying the other leg's `response` on: its status and reason,
/// our Contact, and `body` (the SDP already rewritten) with its Content-Type.
pub(super) fn relayed_response(
    request: &Request,
    response: &Response,
    to_tag: Option<&str>,
    contact: &str,
    body: Vec<u8>,
) -> Response {
    let mut relayed = self::response(request, response.status, &response.reason, to_tag);
    relayed.headers.push("Contact", contact);
    if !body.is_empty() {
        relayed.headers.push(
            "Content-Type",
            response
                .headers
                .get("Content-Type")
                .unwrap_or("application/sdp"),
        );
    }
    relayed.body = body;
    relayed
}

/// The SDP of a message body: None when there is no body, an error when it is not usable.
pub(super) fn body_sdp(body: &[u8]) -> Result<Option<SessionDescription>, SdpError> {
    if body.is_empty() {
        return Ok(None);
    }
    let text = std::str::from_utf8(body).map_err(|_| SdpError("body is not UTF-8".into()))?;
    sdp::parse(text).map(Some)
}

/// The `o=` session a phone knows, kept when the party behind it changes (a transfer): the
/// user name and session id it saw, and the versions (RFC 3264 section 8: same session id,
/// the version one up at each change). SDP from the new party is shown to the phone as this
/// session, its version `base` plus how far the new party's own version moved from
/// `source_base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OriginAnchor {
    pub(super) user: String,
    pub(super) session: String,
    pub(super) base: u64,
    pub(super) source_base: u64,
}

/// The `o=` user name, session id and version of an SDP body.
pub(super) fn origin_of(body: &[u8]) -> Option<(String, String, u64)> {
    let text = std::str::from_utf8(body).ok()?;
    let line = text.lines().find_map(|l| l.trim_end().strip_prefix("o="))?;
    let mut parts = line.split(' ');
    let (user, session, version) = (parts.next()?, parts.next()?, parts.next()?);
    Some((user.to_owned(), session.to_owned(), version.parse().ok()?))
}

/// Rewrites an SDP body for one leg of the relay: the proxy's address and that leg's ports,
/// and the `o=` version raised by `bump` (0 keeps it) over the session `anchor` names.
pub(super) fn rewrite_for(
    body: &[u8],
    address: IpAddr,
    ports: &[u16],
    bump: u64,
    anchor: Option<&OriginAnchor>,
) -> Result<Vec<u8>, SdpError> {
    let text = std::str::from_utf8(body).map_err(|_| SdpError("body is not UTF-8".into()))?;
    let parsed = sdp::parse(text)?;
    let version = match anchor {
        Some(anchor) => parsed.origin_version.map(|v| {
            anchor
                .base
                .wrapping_add(v.wrapping_sub(anchor.source_base))
                .wrapping_add(bump)
        }),
        None => (bump > 0)
            .then(|| parsed.origin_version.map(|v| v.wrapping_add(bump)))
            .flatten(),
    };
    let plan = Rewrite {
        address,
        ports: parsed
            .media
            .iter()
            .enumerate()
            .map(|(i, m)| (m.port != 0).then(|| ports.get(i).copied()).flatten())
            .collect(),
        origin_version: version,
        origin_identity: anchor.map(|a| (a.user.clone(), a.session.clone())),
    };
    if parsed
        .media
        .iter()
        .enumerate()
        .any(|(i, m)| m.port != 0 && i >= ports.len())
    {
        return Err(SdpError(format!(
            "{} media lines, the relay has ports for {}",
            parsed.media.len(),
            ports.len()
        )));
    }
    sdp::rewrite(text, &plan).map(String::into_bytes)
}

/// The transport of a registered binding or route (`tcp`, else UDP).
pub(super) fn transport_named(name: &str) -> Transport {
    if name == "tcp" {
        Transport::Tcp
    } else {
        Transport::Udp
    }
}
