//! SIP and SIPS URIs (RFC 3261 section 19.1), including IPv6 references (RFC 5118).

use std::fmt;
use std::net::IpAddr;

/// A parsed `sip:` or `sips:` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    pub secure: bool,
    /// The user part, still escaped as received.
    pub user: Option<String>,
    /// Host name, IPv4 address, or IPv6 address without brackets.
    pub host: String,
    pub port: Option<u16>,
    /// `;name[=value]` parameters in order.
    pub params: Vec<(String, Option<String>)>,
    /// `?headers` part, unparsed.
    pub headers: Option<String>,
}

/// Why a URI did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid SIP URI {uri:?}: {why}")]
pub struct UriError {
    pub uri: String,
    pub why: &'static str,
}

impl Uri {
    pub fn parse(text: &str) -> Result<Self, UriError> {
        let error = |why| UriError {
            uri: text.to_owned(),
            why,
        };
        let text = text.trim();
        let (secure, rest) = if let Some(rest) = strip_prefix_ignore_case(text, "sips:") {
            (true, rest)
        } else if let Some(rest) = strip_prefix_ignore_case(text, "sip:") {
            (false, rest)
        } else {
            return Err(error("scheme must be sip: or sips:"));
        };
        let (rest, headers) = match rest.split_once('?') {
            Some((rest, headers)) => (rest, Some(headers.to_owned())),
            None => (rest, None),
        };
        // The user part ends at the last '@' before any parameter.
        let (user, hostport_params) = match rest.rfind('@') {
            Some(at) => {
                let user = &rest[..at];
                // Drop a password (deprecated but legal).
                let user = user.split(':').next().unwrap_or(user);
                if user.is_empty() {
                    return Err(error("empty user part"));
                }
                (Some(user.to_owned()), &rest[at + 1..])
            }
            None => (None, rest),
        };
        let mut parts = hostport_params.split(';');
        let hostport = parts.next().unwrap_or("");
        let (host, port) = split_host_port(hostport).ok_or_else(|| error("bad host or port"))?;
        if host.is_empty() {
            return Err(error("empty host"));
        }
        let params = parts
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((name, value)) => (name.to_ascii_lowercase(), Some(value.to_owned())),
                None => (p.to_ascii_lowercase(), None),
            })
            .collect();
        Ok(Self {
            secure,
            user,
            host,
            port,
            params,
            headers,
        })
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// The `transport` parameter, lower-cased; UDP when absent.
    pub fn transport(&self) -> String {
        self.param("transport")
            .flatten()
            .map_or_else(|| "udp".to_owned(), str::to_ascii_lowercase)
    }

    /// The host as an IP address, if it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// A URI with just scheme, user and host:port (for AoR comparison).
    pub fn address_of_record(&self) -> String {
        let host = self.host.to_ascii_lowercase();
        match &self.user {
            Some(user) => format!("sip:{user}@{host}"),
            None => format!("sip:{host}"),
        }
    }
}

/// Splits `host[:port]`, with IPv6 in brackets; None when malformed.
pub fn split_host_port(text: &str) -> Option<(String, Option<u16>)> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match text.rsplit_once(':') {
        Some((host, port)) => {
            if host.contains(':') {
                return None; // a bare IPv6 address needs brackets
            }
            Some((host.to_owned(), Some(port.parse().ok()?)))
        }
        None => Some((text.to_owned(), None)),
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    if text.len() >= prefix.len() && text[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&text[prefix.len()..])
    } else {
        None
    }
}

/// Formats a host for a URI or Via: IPv6 in brackets.
pub fn host_text(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.secure { "sips:" } else { "sip:" })?;
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        f.write_str(&host_text(&self.host))?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        for (name, value) in &self.params {
            match value {
                Some(value) => write!(f, ";{name}={value}")?,
                None => write!(f, ";{name}")?,
            }
        }
        if let Some(headers) = &self.headers {
            write!(f, "?{headers}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_user_host_port_params() {
        let uri =
            Uri::parse("sip:alice:secret@atlanta.com:5070;transport=TCP;lr?subject=x").unwrap();
        assert_eq!(uri.user.as_deref(), Some("alice"));
        assert_eq!(uri.host, "atlanta.com");
        assert_eq!(uri.port, Some(5070));
        assert_eq!(uri.transport(), "tcp");
        assert_eq!(uri.param("lr"), Some(None));
        assert_eq!(uri.headers.as_deref(), Some("subject=x"));
        assert_eq!(
            uri.to_string(),
            "sip:alice@atlanta.com:5070;transport=TCP;lr?subject=x"
        );
    }

    #[test]
    fn parses_ipv6_references_rfc5118() {
        let uri = Uri::parse("sip:[2001:db8::10]:5060").unwrap();
        assert_eq!(uri.host, "2001:db8::10");
        assert_eq!(uri.port, Some(5060));
        assert_eq!(uri.to_string(), "sip:[2001:db8::10]:5060");
        let uri = Uri::parse("sips:bob@[::1]").unwrap();
        assert!(uri.secure);
        assert_eq!(uri.ip(), Some("::1".parse().unwrap()));
        assert!(Uri::parse("sip:2001:db8::10").is_err());
    }

    #[test]
    fn refuses_what_is_not_a_sip_uri() {
        assert!(Uri::parse("tel:+15551234").is_err());
        assert!(Uri::parse("sip:").is_err());
        assert!(Uri::parse("sip:@host").is_err());
        assert!(Uri::parse("sip:host:99999").is_err());
        assert_eq!(
            Uri::parse("SIP:Bob@Biloxi.COM")
                .unwrap()
                .address_of_record(),
            "sip:Bob@biloxi.com"
        );
    }
}
