//! What an operator says about calls: media modes, static routes, trusted networks and users.
//! These are the settings the call core reads; `config` parses them from flags, environment
//! and files, and this module stays free of the command-line machinery so the core need not
//! depend on it.

use std::net::SocketAddr;
use std::str::FromStr;

use serde::Deserialize;

use crate::sip::uri::Uri;

/// Per-call media handling (docs/architecture.md, "Media modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaMode {
    /// SDP untouched, no relay.
    Direct,
    /// Through the media proxy.
    #[serde(alias = "bypass")]
    Relay,
    /// Relay plus a live audio tap.
    #[serde(alias = "reflecting")]
    Reflect,
}

impl MediaMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Relay => "relay",
            Self::Reflect => "reflect",
        }
    }
}

impl FromStr for MediaMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "direct" => Ok(Self::Direct),
            "relay" | "bypass" => Ok(Self::Relay),
            "reflect" | "reflecting" => Ok(Self::Reflect),
            _ => Err(format!("{text:?} is not direct, relay or reflect")),
        }
    }
}

/// `PREFIX=SIP-URI`: requests whose Request-URI user starts with PREFIX go to the URI. A
/// `;media=direct|relay|reflect` parameter on the URI sets the media mode of calls on this
/// route, `;record=yes|no` whether they are recorded (both are removed from the URI that is
/// sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: String,
    pub target: Uri,
    pub media_mode: Option<MediaMode>,
    /// Record calls on this route (overrides --record).
    pub record: Option<bool>,
    /// Where requests on this route are sent: the target's IP address, or its host name
    /// resolved (A/AAAA) when the configuration is loaded.
    pub address: Option<SocketAddr>,
}

impl Route {
    /// Resolves the target host (a no-op for IP addresses). SRV/NAPTR are not used.
    pub fn resolve(&mut self) -> Result<(), String> {
        let port = self.target.port.unwrap_or(5060);
        if let Some(ip) = self.target.ip() {
            self.address = Some(SocketAddr::new(ip, port));
            return Ok(());
        }
        use std::net::ToSocketAddrs;
        let found = (self.target.host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.target.host))?
            .next()
            .ok_or_else(|| format!("{} has no address", self.target.host))?;
        self.address = Some(found);
        Ok(())
    }
}

impl FromStr for Route {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (prefix, target) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not PREFIX=SIP-URI"))?;
        let mut target = Uri::parse(target).map_err(|e| e.to_string())?;
        let media_mode = match target.param("media") {
            Some(Some(mode)) => Some(mode.parse::<MediaMode>()?),
            Some(None) => return Err("media= needs direct, relay or reflect".into()),
            None => None,
        };
        let record = match target.param("record") {
            Some(Some(value)) => {
                Some(parse_bool(value).ok_or_else(|| format!("record={value} is not yes or no"))?)
            }
            Some(None) => Some(true),
            None => None,
        };
        target
            .params
            .retain(|(name, _)| name != "media" && name != "record");
        Ok(Self {
            prefix: prefix.trim().to_owned(),
            target,
            media_mode,
            record,
            address: None,
        })
    }
}

/// `yes`/`no`, `true`/`false`, `on`/`off`, `1`/`0`, in any case.
fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Some(true),
        "no" | "false" | "off" | "0" => Some(false),
        _ => None,
    }
}

impl<'de> Deserialize<'de> for Route {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

pub use service_kit::config::Cidr;

/// One user of the users file: a `password`, or in its place the HA1 hashes digest needs
/// (`ha1` = MD5 of `user:realm:password`, `ha1-sha256` = SHA-256 of the same, hex), so the
/// file need not hold passwords. A hash is bound to the realm: changing `--realm` needs new
/// hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct User {
    pub password: Option<String>,
    pub ha1: Option<String>,
    pub ha1_sha256: Option<String>,
    /// Media mode for calls from this user (overrides --media-mode).
    pub media_mode: Option<MediaMode>,
    /// Record calls from this user (overrides the route's `;record=` and --record).
    pub record: Option<bool>,
    /// Forward every call to this user to another user or number (routed like any call).
    pub forward: Option<String>,
    /// Forward calls this user's devices refuse busy (486, 600).
    pub forward_busy: Option<String>,
    /// Forward calls this user does not answer within `forward-no-answer-after`.
    pub forward_no_answer: Option<String>,
    /// Seconds of ringing before `forward-no-answer` [default: 20].
    pub forward_no_answer_after: Option<u64>,
}
