//! Structured views of the headers the core acts on: Via (RFC 3261 section 20.42, RFC 3581
//! `rport`) and name-addr headers (From, To, Contact, Route, Record-Route).

use std::fmt;

use super::uri::{Uri, host_text, split_host_port};

/// Parameters `;name[=value]` as they appear after a header value.
pub type Params = Vec<(String, Option<String>)>;

fn parse_params(text: &str) -> Params {
    text.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((name, value)) => (
                name.trim().to_ascii_lowercase(),
                Some(value.trim().to_owned()),
            ),
            None => (p.to_ascii_lowercase(), None),
        })
        .collect()
}

fn param<'a>(params: &'a Params, name: &str) -> Option<Option<&'a str>> {
    params
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_deref())
}

fn write_params(f: &mut fmt::Formatter<'_>, params: &Params) -> fmt::Result {
    for (name, value) in params {
        match value {
            Some(value) => write!(f, ";{name}={value}")?,
            None => write!(f, ";{name}")?,
        }
    }
    Ok(())
}

/// One Via value: `SIP/2.0/UDP host:port;branch=...;rport;received=...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub params: Params,
}

impl Via {
    /// Parses one Via value, tolerating linear whitespace around the `/` separators
    /// (RFC 4475 section 3.1.1.1).
    pub fn parse(text: &str) -> Option<Self> {
        let (name, rest) = text.split_once('/')?;
        let (version, rest) = rest.split_once('/')?;
        if !name.trim().eq_ignore_ascii_case("SIP") || version.trim() != "2.0" {
            return None;
        }
        let (transport, rest) = rest.trim_start().split_once(char::is_whitespace)?;
        let rest = rest.trim();
        let (sent_by, params) = rest.split_once(';').unwrap_or((rest, ""));
        let (host, port) = split_host_port(sent_by)?;
        if host.is_empty() || transport.is_empty() {
            return None;
        }
        Some(Self {
            transport: transport.to_ascii_uppercase(),
            host,
            port,
            params: parse_params(params),
        })
    }

    pub fn branch(&self) -> Option<&str> {
        param(&self.params, "branch").flatten()
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        param(&self.params, name)
    }

    /// Sets (or adds) a parameter.
    pub fn set_param(&mut self, name: &str, value: Option<String>) {
        match self
            .params
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(entry) => entry.1 = value,
            None => self.params.push((name.to_owned(), value)),
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, host_text(&self.host))?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        write_params(f, &self.params)
    }
}

/// Records where a request really came from on its top Via: `received` when the address
/// differs from the sent-by host (RFC 3261 section 18.2.1) and `rport` filled in when the
/// client asked for it (RFC 3581 section 4), so responses reach phones behind NAT and tell
/// them their public address. Returns false when the top Via does not parse.
pub fn stamp_via(headers: &mut super::message::Headers, source: std::net::SocketAddr) -> bool {
    let Some(mut via) = headers.values("Via").next().and_then(Via::parse) else {
        return false;
    };
    let source_ip = source.ip().to_string();
    let asked_rport = via.param("rport").is_some();
    if asked_rport {
        via.set_param("rport", Some(source.port().to_string()));
    }
    if asked_rport || via.host != source_ip {
        via.set_param("received", Some(source_ip));
    }
    headers.replace_first_value("Via", &via.to_string());
    true
}

/// `"Display" <uri>;params` or `uri;params` (From, To, Contact, Route, Record-Route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    pub display: Option<String>,
    pub uri: Uri,
    pub params: Params,
    /// Whether the URI was written inside angle brackets.
    pub bracketed: bool,
}

impl NameAddr {
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Some(open) = text.find('<') {
            let close = open + text[open..].find('>')?;
            let display = text[..open].trim().trim_matches('"').trim();
            let uri = Uri::parse(&text[open + 1..close]).ok()?;
            Some(Self {
                display: (!display.is_empty()).then(|| display.to_owned()),
                uri,
                params: parse_params(&text[close + 1..]),
                bracketed: true,
            })
        } else {
            // addr-spec form: parameters after the URI belong to the header (section 20.10).
            let (uri, params) = text.split_once(';').unwrap_or((text, ""));
            Some(Self {
                display: None,
                uri: Uri::parse(uri).ok()?,
                params: parse_params(params),
                bracketed: false,
            })
        }
    }

    pub fn tag(&self) -> Option<&str> {
        param(&self.params, "tag").flatten()
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        param(&self.params, name)
    }

    pub fn set_tag(&mut self, tag: &str) {
        match self.params.iter_mut().find(|(n, _)| n == "tag") {
            Some(entry) => entry.1 = Some(tag.to_owned()),
            None => self.params.push(("tag".into(), Some(tag.to_owned()))),
        }
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(display) = &self.display {
            write!(f, "\"{display}\" ")?;
        }
        write!(f, "<{}>", self.uri)?;
        write_params(f, &self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_with_rport_and_ipv6() {
        let via = Via::parse("SIP/2.0/udp [2001:db8::1]:5062;branch=z9hG4bK74bf9;rport").unwrap();
        assert_eq!(via.transport, "UDP");
        assert_eq!(via.host, "2001:db8::1");
        assert_eq!(via.port, Some(5062));
        assert_eq!(via.branch(), Some("z9hG4bK74bf9"));
        assert_eq!(via.param("rport"), Some(None));
        let mut via = via;
        via.set_param("rport", Some("40000".into()));
        via.set_param("received", Some("198.51.100.7".into()));
        assert_eq!(
            via.to_string(),
            "SIP/2.0/UDP [2001:db8::1]:5062;branch=z9hG4bK74bf9;rport=40000;received=198.51.100.7"
        );
        assert!(Via::parse("SIP/3.0/UDP h").is_none());
        assert!(Via::parse("garbage").is_none());
    }

    #[test]
    fn stamping_rfc3581_rport_and_received() {
        use crate::sip::message::Headers;
        let mut headers = Headers::new();
        headers.push(
            "Via",
            "SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bKa;rport, SIP/2.0/UDP p;branch=z9hG4bKb",
        );
        assert!(stamp_via(
            &mut headers,
            "198.51.100.7:40123".parse().unwrap()
        ));
        assert_eq!(
            headers.get("Via"),
            Some(
                "SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bKa;rport=40123;received=198.51.100.7, SIP/2.0/UDP p;branch=z9hG4bKb"
            )
        );
        let mut plain = Headers::new();
        plain.push("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKc");
        stamp_via(&mut plain, "192.0.2.1:5060".parse().unwrap());
        assert_eq!(
            plain.get("Via"),
            Some("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKc"),
            "nothing to add"
        );
    }

    #[test]
    fn name_addr_forms() {
        let to =
            NameAddr::parse("\"Bob, Jr.\" <sip:bob@biloxi.com;transport=tcp>;tag=a6c85cf").unwrap();
        assert_eq!(to.display.as_deref(), Some("Bob, Jr."));
        assert_eq!(to.uri.param("transport"), Some(Some("tcp")));
        assert_eq!(to.tag(), Some("a6c85cf"));
        let bare = NameAddr::parse("sip:alice@atlanta.com;tag=88sja8x").unwrap();
        assert_eq!(bare.tag(), Some("88sja8x"));
        assert!(bare.uri.params.is_empty());
        let contact = NameAddr::parse("<sip:alice@10.0.0.1:5060>;expires=3600;q=0.7").unwrap();
        assert_eq!(contact.param("expires"), Some(Some("3600")));
        assert_eq!(
            contact.to_string(),
            "<sip:alice@10.0.0.1:5060>;expires=3600;q=0.7"
        );
        assert!(NameAddr::parse("<tel:123>").is_none());
    }
}
