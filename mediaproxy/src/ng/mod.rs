//! rtpengine's "ng" control protocol, so that Kamailio's and OpenSIPS's `rtpengine` modules
//! can drive this proxy unmodified (docs/ng.md).
//!
//! A request is `COOKIE SP DICT`: the cookie is everything before the first space, the
//! dictionary bencode (first byte `d`) or JSON (`{`); the reply is `COOKIE SP DICT` in the
//! request's encoding ([`codec`]). Clients retransmit the same datagram (Kamailio: 5 times, 1 s
//! apart), so replies are kept per client address and cookie ([`ReplyCache`]): a
//! retransmission gets the byte-identical reply and does nothing again.
//!
//! This module is the protocol without sockets: [`Ng::handle`] takes a datagram and its
//! source and gives the datagram to send back, if any; the listener (`server`) only moves
//! bytes. Commands so far: `ping`. Every other command is answered `result: error` with the
//! words rtpengine uses (`Unrecognized command`), so a client fails over cleanly.

pub(crate) mod codec;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use self::codec::{CodecError, Value};

/// The largest request taken (a UDP datagram's payload can be no larger).
pub(crate) const MAX_DATAGRAM: usize = 65_507;
/// How long a reply is kept for retransmissions: 30 to 60 s, as rtpengine does.
pub(crate) const CACHE_GENERATION: Duration = Duration::from_secs(30);
/// Most replies in one generation of the cache.
pub(crate) const MAX_CACHED: usize = 65_536;

/// The encoding of a request, which its reply uses too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Bencode,
    Json,
}

/// Why a datagram got no reply at all (counted by reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// No space: no cookie to answer under.
    NoCookie,
    /// Larger than any UDP payload.
    Oversize,
}

impl Dropped {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::NoCookie => "no_cookie",
            Self::Oversize => "oversize",
        }
    }
}

/// What became of one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answer with these bytes; `command` and `result` label the metrics.
    Reply {
        data: Vec<u8>,
        command: &'static str,
        result: &'static str,
    },
    /// A retransmission: the cached reply again.
    Cached(Vec<u8>),
    Dropped(Dropped),
}

/// The commands this proxy knows, as their metric labels.
const COMMANDS: [&str; 1] = ["ping"];

/// Replies kept per client address and cookie, in two generations: a reply lives 30 to 60 s.
#[derive(Debug, Default)]
pub(crate) struct ReplyCache {
    current: HashMap<(SocketAddr, Vec<u8>), Vec<u8>>,
    previous: HashMap<(SocketAddr, Vec<u8>), Vec<u8>>,
    rotated: Option<Instant>,
}

impl ReplyCache {
    fn rotate(&mut self, now: Instant) {
        match self.rotated {
            Some(at) if now.saturating_duration_since(at) < CACHE_GENERATION => {}
            Some(_) => {
                self.previous = std::mem::take(&mut self.current);
                self.rotated = Some(now);
            }
            None => self.rotated = Some(now),
        }
    }

    fn get(&self, key: &(SocketAddr, Vec<u8>)) -> Option<&Vec<u8>> {
        self.current.get(key).or_else(|| self.previous.get(key))
    }

    /// Keeps `reply`; a generation that fills up (a flood of new cookies) ages early, so the
    /// cache never holds more than twice [`MAX_CACHED`] replies.
    fn put(&mut self, key: (SocketAddr, Vec<u8>), reply: Vec<u8>) {
        if self.current.len() >= MAX_CACHED {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, reply);
    }
}

/// The ng front-end's state: its reply cache.
#[derive(Debug, Default)]
pub(crate) struct Ng {
    cache: ReplyCache,
}

impl Ng {
    /// One datagram from `from`, at `now`.
    pub(crate) fn handle(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) -> Outcome {
        if datagram.len() > MAX_DATAGRAM {
            return Outcome::Dropped(Dropped::Oversize);
        }
        let Some(space) = datagram.iter().position(|b| *b == b' ') else {
            return Outcome::Dropped(Dropped::NoCookie);
        };
        let (cookie, body) = (&datagram[..space], &datagram[space + 1..]);
        if cookie.is_empty() {
            return Outcome::Dropped(Dropped::NoCookie);
        }
        self.cache.rotate(now);
        let key = (from, cookie.to_vec());
        if let Some(reply) = self.cache.get(&key) {
            return Outcome::Cached(reply.clone());
        }
        let (encoding, decoded) = match body.first() {
            Some(b'{') => (Encoding::Json, codec::decode_json(body)),
            Some(b'd') => (Encoding::Bencode, codec::decode_bencode(body)),
            // rtpengine's words for a payload that is neither.
            _ => (
                Encoding::Bencode,
                Err(CodecError::Json("Invalid NG data format".into())),
            ),
        };
        let (reply, command, result) = match decoded {
            Ok(request) => answer(&request),
            Err(error) => {
                tracing::debug!(peer = %from, %error, "unreadable ng request");
                (
                    error_reply("Failed to decode dictionary"),
                    "none",
                    "malformed",
                )
            }
        };
        let mut data = cookie.to_vec();
        data.push(b' ');
        data.extend(match encoding {
            Encoding::Bencode => reply.to_bencode(),
            Encoding::Json => reply.to_json(),
        });
        self.cache.put(key, data.clone());
        Outcome::Reply {
            data,
            command,
            result,
        }
    }
}

/// The reply to a decoded request, its command's label and the result's.
fn answer(request: &Value) -> (Value, &'static str, &'static str) {
    let Some(command) = request.get("command").and_then(Value::as_text) else {
        return (error_reply("No command given"), "none", "error");
    };
    match command.as_str() {
        "ping" => (
            Value::dict(vec![("result", Value::text("pong"))]),
            COMMANDS[0],
            "ok",
        ),
        other => {
            tracing::info!(command = other, "ng command not supported");
            (error_reply("Unrecognized command"), "other", "error")
        }
    }
}

/// `result: error` with rtpengine's `error-reason`.
fn error_reply(reason: &str) -> Value {
    Value::dict(vec![
        ("result", Value::text("error")),
        ("error-reason", Value::text(reason)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40_000);

    fn reply(outcome: Outcome) -> Vec<u8> {
        match outcome {
            Outcome::Reply { data, .. } | Outcome::Cached(data) => data,
            Outcome::Dropped(why) => panic!("dropped: {why:?}"),
        }
    }

    #[test]
    fn ping_is_answered_pong_in_the_requests_encoding() {
        let mut ng = Ng::default();
        let now = Instant::now();
        assert_eq!(
            reply(ng.handle(now, CLIENT, b"5323_1 d7:command4:pinge")),
            b"5323_1 d6:result4:ponge".to_vec()
        );
        let json = reply(ng.handle(now, CLIENT, br#"abc {"command":"ping"}"#));
        assert_eq!(json, br#"abc {"result":"pong"}"#.to_vec());
    }

    #[test]
    fn a_retransmission_gets_the_same_bytes_from_the_cache_per_client_for_30_to_60_s() {
        let mut ng = Ng::default();
        let start = Instant::now();
        let first = ng.handle(start, CLIENT, b"c1 d7:command5:offere");
        assert!(matches!(
            first,
            Outcome::Reply {
                result: "error",
                ..
            }
        ));
        let again = ng.handle(
            start + Duration::from_secs(5),
            CLIENT,
            b"c1 d7:command5:offere",
        );
        assert_eq!(reply(again), reply(first.clone()));
        // Another client with the same cookie is another request (Kamailios sharing a
        // server id must not get each other's replies).
        let other = SocketAddr::new(CLIENT.ip(), 40_001);
        assert!(matches!(
            ng.handle(start, other, b"c1 d7:command4:pinge"),
            Outcome::Reply { result: "ok", .. }
        ));
        // Two generations later it is forgotten.
        ng.handle(
            start + Duration::from_secs(31),
            CLIENT,
            b"x d7:command4:pinge",
        );
        ng.handle(
            start + Duration::from_secs(62),
            CLIENT,
            b"y d7:command4:pinge",
        );
        assert!(matches!(
            ng.handle(
                start + Duration::from_secs(62),
                CLIENT,
                b"c1 d7:command5:offere"
            ),
            Outcome::Reply { .. }
        ));
    }

    #[test]
    fn garbage_gets_rtpengines_words_or_nothing() {
        let mut ng = Ng::default();
        let now = Instant::now();
        assert_eq!(
            ng.handle(now, CLIENT, b"nocookie"),
            Outcome::Dropped(Dropped::NoCookie)
        );
        assert_eq!(
            ng.handle(now, CLIENT, b" d7:command4:pinge"),
            Outcome::Dropped(Dropped::NoCookie)
        );
        let big = vec![b'x'; MAX_DATAGRAM + 1];
        assert_eq!(
            ng.handle(now, CLIENT, &big),
            Outcome::Dropped(Dropped::Oversize)
        );
        for (request, reason) in [
            (&b"k1 d7:command"[..], "Failed to decode dictionary"),
            (b"k2 hello", "Failed to decode dictionary"),
            (b"k3 d4:sdp_3:abce", "No command given"),
            (b"k4 d7:command7:unknowne", "Unrecognized command"),
        ] {
            let answer = reply(ng.handle(now, CLIENT, request));
            let body = &answer[3..];
            let value = codec::decode_bencode(body).unwrap();
            assert_eq!(value.get("result"), Some(&Value::text("error")));
            assert_eq!(
                value.get("error-reason"),
                Some(&Value::text(reason)),
                "{request:?}"
            );
        }
    }
}
