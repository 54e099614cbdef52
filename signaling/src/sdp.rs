//! SDP (RFC 4566, RFC 3264): reading what the relay needs, and rewriting an offer or answer so
//! media flows through the media proxy (docs/architecture.md, "SDP rewrite rules").
//!
//! The rewrite is line-based on purpose: only the session and media `c=` addresses, the `m=`
//! ports, `a=rtcp:` and the `o=` version change; every other line, unknown attributes, `i=`,
//! `a=crypto`, T.38 `m=image` sections and all, is copied byte for byte with its own line
//! ending. Media lines with port 0 stay as they are, and so does a hold address (`0.0.0.0`).
//! Re-serialising a parsed model instead loses lines (measured: docs/decisions.md).

use std::net::IpAddr;

use proto::domain::{Codec, Direction, MediaKind};

/// Why an SDP body is unusable (answered 488 Not Acceptable Here).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad SDP: {0}")]
pub struct SdpError(pub String);

fn error(message: impl Into<String>) -> SdpError {
    SdpError(message.into())
}

/// What one `m=` line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaLine {
    pub kind: MediaKind,
    /// `m=` port; 0 means the line is disabled.
    pub port: u16,
    /// The connection address in force for this line (media `c=` or session `c=`).
    pub address: Option<IpAddr>,
    /// RTCP port (`a=rtcp:`, else port + 1; equal to `port` under `a=rtcp-mux`).
    pub rtcp_port: u16,
    pub rtcp_mux: bool,
    pub direction: Direction,
    pub codecs: Vec<Codec>,
    pub protocol: String,
}

/// What an SDP body says, as far as the relay is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    pub origin_version: Option<u64>,
    pub media: Vec<MediaLine>,
    /// Not part of the SDP: the IP the SIP message carrying it came from, set by the call
    /// layer for the media proxy (a NATed phone's media comes from there too).
    pub signaling_ip: Option<IpAddr>,
}

/// Splits into lines, keeping each line's ending.
fn lines(sdp: &str) -> impl Iterator<Item = (&str, &str)> {
    sdp.split_inclusive('\n').map(|line| {
        let content = line.trim_end_matches(['\r', '\n']);
        (content, &line[content.len()..])
    })
}

fn parse_connection(value: &str) -> Result<IpAddr, SdpError> {
    // c=IN IP4 192.0.2.1[/ttl]
    let mut parts = value.split_whitespace();
    let (Some(_net), Some(_family), Some(address)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(error(format!("malformed c= line {value:?}")));
    };
    let address = address.split('/').next().unwrap_or(address);
    address
        .parse()
        .map_err(|_| error(format!("c= address {address:?} is not an IP address")))
}

fn parse_direction(attribute: &str) -> Option<Direction> {
    match attribute {
        "sendrecv" => Some(Direction::SendRecv),
        "sendonly" => Some(Direction::SendOnly),
        "recvonly" => Some(Direction::RecvOnly),
        "inactive" => Some(Direction::Inactive),
        _ => None,
    }
}

/// Static payload types of RFC 3551 used without `a=rtpmap`.
fn static_codec(payload_type: u8) -> Option<Codec> {
    let (name, rate) = match payload_type {
        0 => ("PCMU", 8000),
        3 => ("GSM", 8000),
        4 => ("G723", 8000),
        8 => ("PCMA", 8000),
        9 => ("G722", 8000),
        13 => ("CN", 8000),
        18 => ("G729", 8000),
        _ => return None,
    };
    Some(Codec {
        payload_type,
        encoding: name.to_owned(),
        clock_rate: rate,
        channels: 1,
    })
}

/// Reads an SDP body.
pub fn parse(sdp: &str) -> Result<SessionDescription, SdpError> {
    let mut first = true;
    let mut origin_version = None;
    let mut session_address = None;
    let mut session_direction = Direction::SendRecv;
    let mut media: Vec<MediaLine> = Vec::new();
    // Per media line: the explicit c= and direction, applied at the end.
    let mut media_address: Vec<Option<IpAddr>> = Vec::new();
    let mut media_direction: Vec<Option<Direction>> = Vec::new();
    let mut explicit_rtcp: Vec<Option<u16>> = Vec::new();
    for (line, _) in lines(sdp) {
        if line.is_empty() {
            continue;
        }
        let Some((kind, value)) = line.split_once('=') else {
            return Err(error(format!("line without '=': {line:?}")));
        };
        if first {
            if line != "v=0" {
                return Err(error("must start with v=0"));
            }
            first = false;
            continue;
        }
        let current = media.len().checked_sub(1);
        match kind {
            "o" => {
                let version = value.split_whitespace().nth(2);
                origin_version = version.and_then(|v| v.parse().ok());
            }
            "c" => {
                let address = parse_connection(value)?;
                match current {
                    Some(i) => media_address[i] = Some(address),
                    None => session_address = Some(address),
                }
            }
            "m" => {
                let mut parts = value.split_whitespace();
                let (Some(kind), Some(port), Some(protocol)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(error(format!("malformed m= line {value:?}")));
                };
                let port: u16 = port
                    .split('/')
                    .next()
                    .unwrap_or(port)
                    .parse()
                    .map_err(|_| error(format!("m= port {port:?} is not a port")))?;
                let kind = match kind {
                    "audio" => MediaKind::Audio,
                    "video" => MediaKind::Video,
                    _ => MediaKind::Other,
                };
                let rtp_profile = protocol.contains("RTP");
                let codecs = if rtp_profile {
                    parts
                        .filter_map(|pt| pt.parse::<u8>().ok())
                        .filter_map(static_codec)
                        .collect()
                } else {
                    Vec::new()
                };
                media.push(MediaLine {
                    kind,
                    port,
                    address: None,
                    rtcp_port: port.saturating_add(1),
                    rtcp_mux: false,
                    direction: Direction::SendRecv,
                    codecs,
                    protocol: protocol.to_owned(),
                });
                media_address.push(None);
                media_direction.push(None);
                explicit_rtcp.push(None);
            }
            "a" => {
                let (name, attribute_value) = value.split_once(':').unwrap_or((value, ""));
                if let Some(direction) = parse_direction(name) {
                    match current {
                        Some(i) => media_direction[i] = Some(direction),
                        None => session_direction = direction,
                    }
                    continue;
                }
                let Some(i) = current else { continue };
                match name {
                    "rtcp-mux" => media[i].rtcp_mux = true,
                    "rtcp" => {
                        let port = attribute_value.split_whitespace().next().unwrap_or("");
                        let port = port
                            .parse()
                            .map_err(|_| error(format!("a=rtcp port {port:?} is not a port")))?;
                        explicit_rtcp[i] = Some(port);
                    }
                    "rtpmap" => {
                        // a=rtpmap:<pt> <encoding>/<clock>[/<channels>]
                        let mut parts = attribute_value.split_whitespace();
                        let (Some(pt), Some(map)) = (parts.next(), parts.next()) else {
                            continue;
                        };
                        let Ok(payload_type) = pt.parse::<u8>() else {
                            continue;
                        };
                        let mut map = map.split('/');
                        let encoding = map.next().unwrap_or("").to_owned();
                        let Some(Ok(clock_rate)) = map.next().map(str::parse::<u32>) else {
                            continue;
                        };
                        let channels = map.next().and_then(|c| c.parse().ok()).unwrap_or(1);
                        let codecs = &mut media[i].codecs;
                        codecs.retain(|c| c.payload_type != payload_type);
                        codecs.push(Codec {
                            payload_type,
                            encoding,
                            clock_rate,
                            channels,
                        });
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if first {
        return Err(error("empty body"));
    }
    for (i, line) in media.iter_mut().enumerate() {
        line.address = media_address[i].or(session_address);
        line.direction = media_direction[i].unwrap_or(session_direction);
        if line.rtcp_mux {
            line.rtcp_port = line.port;
        } else if let Some(port) = explicit_rtcp[i] {
            line.rtcp_port = port;
        }
        if line.port != 0 && line.address.is_none() {
            return Err(error(format!("m= line {i} has no connection address")));
        }
    }
    Ok(SessionDescription {
        origin_version,
        media,
        signaling_ip: None,
    })
}

/// How to rewrite one SDP body for the other leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// The media proxy's advertised address for that leg.
    pub address: IpAddr,
    /// RTP port per `m=` line (RTCP is RTP + 1); None leaves the line as it is.
    pub ports: Vec<Option<u16>>,
    /// New `o=` session version, for a new offer; None keeps it.
    pub origin_version: Option<u64>,
    /// New `o=` user name and session id (the session a phone already knows, when the
    /// party behind it changed: a transfer); None keeps them.
    pub origin_identity: Option<(String, String)>,
}

fn family(address: IpAddr) -> &'static str {
    if address.is_ipv4() { "IP4" } else { "IP6" }
}

/// Where the port (`4000` or `4000/2`) lies in an `m=` value, split into fields by white
/// space as [`parse`] reads it; None without a third field (the protocol).
fn port_field(value: &str) -> Option<std::ops::Range<usize>> {
    let mut fields: [Option<std::ops::Range<usize>>; 3] = [None, None, None];
    let mut found = 0;
    let mut start = None;
    for (i, c) in value.char_indices().chain([(value.len(), ' ')]) {
        if !c.is_whitespace() {
            start.get_or_insert(i);
        } else if let Some(begin) = start.take() {
            fields[found] = Some(begin..i);
            found += 1;
            if found == fields.len() {
                break;
            }
        }
    }
    let [_kind, port, Some(_protocol)] = fields else {
        return None;
    };
    port
}

/// Rewrites `c=`, `m=` ports, `a=rtcp:` and the `o=` version; copies everything else.
pub fn rewrite(sdp: &str, plan: &Rewrite) -> Result<String, SdpError> {
    let mut out = String::with_capacity(sdp.len() + 64);
    let mut media_index: Option<usize> = None;
    for (line, ending) in lines(sdp) {
        let port_of =
            |index: Option<usize>| index.and_then(|i| plan.ports.get(i).copied().flatten());
        let rewritten = if let Some(value) = line.strip_prefix("m=") {
            let index = media_index.map_or(0, |i| i + 1);
            media_index = Some(index);
            let Some(port) = port_field(value) else {
                return Err(error(format!("malformed m= line {value:?}")));
            };
            let (number, count) = match value[port.clone()].split_once('/') {
                Some((number, count)) => (number, Some(count)),
                None => (&value[port.clone()], None),
            };
            // Only the port changes; the separators around it stay as they came.
            let (before, after) = (&value[..port.start], &value[port.end..]);
            match (number, port_of(Some(index))) {
                ("0", _) | (_, None) => None,
                (_, Some(new)) => Some(match count {
                    Some(count) => format!("m={before}{new}/{count}{after}"),
                    None => format!("m={before}{new}{after}"),
                }),
            }
        } else if let Some(value) = line.strip_prefix("c=") {
            let address = parse_connection(value)?;
            // A hold address stays: the other side must see the hold. Lines of disabled
            // media or lines whose media we do not relay stay as well.
            let relayed = media_index.is_none() || port_of(media_index).is_some();
            (relayed && !address.is_unspecified())
                .then(|| format!("c=IN {} {}", family(plan.address), plan.address))
        } else if let Some(value) = line.strip_prefix("a=rtcp:") {
            port_of(media_index).map(|rtp| {
                let rtcp = rtp.saturating_add(1);
                if value.split_whitespace().nth(1).is_some() {
                    format!("a=rtcp:{rtcp} IN {} {}", family(plan.address), plan.address)
                } else {
                    format!("a=rtcp:{rtcp}")
                }
            })
        } else if let Some(value) = line
            .strip_prefix("o=")
            .filter(|_| plan.origin_version.is_some() || plan.origin_identity.is_some())
        {
            let mut parts: Vec<&str> = value.split(' ').collect();
            if parts.len() >= 6 {
                let version = plan.origin_version.map(|v| v.to_string());
                if let Some(version) = &version {
                    parts[2] = version;
                }
                if let Some((user, session)) = &plan.origin_identity {
                    parts[0] = user;
                    parts[1] = session;
                }
                Some(format!("o={}", parts.join(" ")))
            } else {
                None
            }
        } else {
            None
        };
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push_str(ending);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHONE: &str = "v=0\r\no=- 1234 1 IN IP4 10.0.0.7\r\ns=-\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\nm=audio 17616 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=X-nat:0\r\na=sendrecv\r\n";

    fn plan(ports: Vec<Option<u16>>) -> Rewrite {
        Rewrite {
            address: "203.0.113.5".parse().unwrap(),
            ports,
            origin_version: None,
            origin_identity: None,
        }
    }

    #[test]
    fn reads_what_the_relay_needs() {
        let sdp = parse(PHONE).unwrap();
        let audio = &sdp.media[0];
        assert_eq!(audio.kind, MediaKind::Audio);
        assert_eq!(audio.port, 17616);
        assert_eq!(audio.rtcp_port, 17617);
        assert_eq!(audio.address, Some("10.0.0.7".parse().unwrap()));
        let names: Vec<&str> = audio.codecs.iter().map(|c| c.encoding.as_str()).collect();
        assert_eq!(names, vec!["PCMU", "PCMA", "telephone-event"]);
        assert_eq!(sdp.origin_version, Some(1));
    }

    /// Found by the `sdp_rewrite` fuzz target: the reader split an `m=` line at any white
    /// space, the rewrite at single spaces only, so a line with two spaces (or a tab) read
    /// fine and was then refused, or worse, rewritten with the port in the wrong field.
    #[test]
    fn an_m_line_with_extra_white_space_keeps_it_and_gets_its_port() {
        for (line, expected) in [
            ("m=audio  17616 RTP/AVP 0", "m=audio  30000 RTP/AVP 0"),
            ("m=audio\t17616\tRTP/AVP 0", "m=audio\t30000\tRTP/AVP 0"),
            ("m= audio 17616/2 RTP/AVP 0", "m= audio 30000/2 RTP/AVP 0"),
        ] {
            let sdp = format!("v=0\r\nc=IN IP4 10.0.0.7\r\n{line}\r\n");
            assert_eq!(parse(&sdp).unwrap().media[0].port, 17616, "{line}");
            let out = rewrite(&sdp, &plan(vec![Some(30000)])).unwrap();
            assert!(out.contains(&format!("{expected}\r\n")), "{line}: {out}");
            assert_eq!(parse(&out).unwrap().media[0].port, 30000);
        }
        assert!(rewrite("v=0\r\nm=audio 4000\r\n", &plan(vec![Some(30000)])).is_err());
    }

    #[test]
    fn rewrites_only_what_must_change() {
        let out = rewrite(PHONE, &plan(vec![Some(30000)])).unwrap();
        assert_eq!(
            out,
            "v=0\r\no=- 1234 1 IN IP4 10.0.0.7\r\ns=-\r\nc=IN IP4 203.0.113.5\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=X-nat:0\r\na=sendrecv\r\n"
        );
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(parse("").unwrap_err().0.contains("empty"));
        assert!(parse("v=1\r\n").unwrap_err().0.contains("v=0"));
        let no_c = "v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        assert!(parse(no_c).unwrap_err().0.contains("no connection address"));
        let bad_port = PHONE.replace("17616", "x");
        assert!(parse(&bad_port).unwrap_err().0.contains("not a port"));
    }
}
