//! rtpengine's ng control protocol, as much as the benchmark needs: bencoded dictionaries over
//! UDP, each message prefixed by a cookie (`offer`, `answer`, `delete`).

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::time::Duration;

use anyhow::{Context, bail};

/// A bencoded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bencode {
    Bytes(Vec<u8>),
    Int(i64),
    List(Vec<Self>),
    Dict(BTreeMap<Vec<u8>, Self>),
}

impl Bencode {
    pub(crate) fn text(text: &str) -> Self {
        Self::Bytes(text.as_bytes().to_vec())
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Bytes(bytes) => {
                out.extend_from_slice(bytes.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(bytes);
            }
            Self::Int(value) => out.extend_from_slice(format!("i{value}e").as_bytes()),
            Self::List(items) => {
                out.push(b'l');
                for item in items {
                    item.encode(out);
                }
                out.push(b'e');
            }
            Self::Dict(entries) => {
                // Keys in sorted order, as bencode requires (BTreeMap keeps them so).
                out.push(b'd');
                for (key, value) in entries {
                    Self::Bytes(key.clone()).encode(out);
                    value.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// Decodes one value from the start of `input`; returns it and the rest.
    pub(crate) fn decode(input: &[u8]) -> anyhow::Result<(Self, &[u8])> {
        match input.first() {
            Some(b'i') => {
                let end = input
                    .iter()
                    .position(|&b| b == b'e')
                    .context("unterminated int")?;
                let value = std::str::from_utf8(&input[1..end])?.parse()?;
                Ok((Self::Int(value), &input[end + 1..]))
            }
            Some(b'l') => {
                let mut rest = &input[1..];
                let mut items = Vec::new();
                while rest.first() != Some(&b'e') {
                    let (item, after) = Self::decode(rest)?;
                    items.push(item);
                    rest = after;
                }
                Ok((Self::List(items), &rest[1..]))
            }
            Some(b'd') => {
                let mut rest = &input[1..];
                let mut entries = BTreeMap::new();
                while rest.first() != Some(&b'e') {
                    let (key, after) = Self::decode(rest)?;
                    let Self::Bytes(key) = key else {
                        bail!("dictionary key is not a string");
                    };
                    let (value, after) = Self::decode(after)?;
                    entries.insert(key, value);
                    rest = after;
                }
                Ok((Self::Dict(entries), &rest[1..]))
            }
            Some(b'0'..=b'9') => {
                let colon = input.iter().position(|&b| b == b':').context("no colon")?;
                let len: usize = std::str::from_utf8(&input[..colon])?.parse()?;
                let start = colon + 1;
                let bytes = input.get(start..start + len).context("short string")?;
                Ok((Self::Bytes(bytes.to_vec()), &input[start + len..]))
            }
            _ => bail!("not bencode"),
        }
    }

    /// A string entry of a dictionary.
    pub(crate) fn get_text(&self, key: &str) -> Option<String> {
        match self {
            Self::Dict(entries) => match entries.get(key.as_bytes()) {
                Some(Self::Bytes(bytes)) => Some(String::from_utf8_lossy(bytes).into_owned()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A client of one rtpengine's ng port.
pub(crate) struct NgClient {
    socket: UdpSocket,
    /// Unique to this client (its local port): rtpengine answers a cookie it has seen before
    /// from its reply cache (its retransmission handling), so two clients counting from the
    /// same start would get each other's replies.
    prefix: String,
    counter: u64,
}

impl NgClient {
    pub(crate) fn connect(address: &str) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.connect(address)?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        let prefix = format!("bench{}-", socket.local_addr()?.port());
        Ok(Self {
            socket,
            prefix,
            counter: 0,
        })
    }

    /// Sends one command (entries of the dictionary) and returns the reply dictionary.
    pub(crate) fn request(&mut self, entries: &[(&str, &str)]) -> anyhow::Result<Bencode> {
        self.counter += 1;
        let cookie = format!("{}{}", self.prefix, self.counter);
        let dict = Bencode::Dict(
            entries
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), Bencode::text(v)))
                .collect(),
        );
        let mut message = format!("{cookie} ").into_bytes();
        dict.encode(&mut message);
        let mut buffer = vec![0u8; 65536];
        for _ in 0..3 {
            self.socket.send(&message)?;
            let Ok(len) = self.socket.recv(&mut buffer) else {
                continue;
            };
            let reply = &buffer[..len];
            let Some(body) = reply.strip_prefix(format!("{cookie} ").as_bytes()) else {
                continue;
            };
            let (value, _) = Bencode::decode(body)?;
            if !matches!(value.get_text("result").as_deref(), Some("ok" | "pong")) {
                bail!(
                    "rtpengine answered {:?}: {:?}",
                    value.get_text("result"),
                    value.get_text("error-reason")
                );
            }
            return Ok(value);
        }
        bail!("rtpengine did not answer on its ng port")
    }

    /// Pings until rtpengine answers (it takes a moment to start).
    pub(crate) fn wait_ready(&mut self, attempts: usize) -> anyhow::Result<()> {
        for _ in 0..attempts {
            if self.request(&[("command", "ping")]).is_ok() {
                return Ok(());
            }
            // Refused until it listens: wait before the next try.
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("rtpengine never answered ping")
    }
}

/// A one-line-per-field SDP offering PCMU on `port` of `ip`.
pub(crate) fn sdp(ip: std::net::Ipv4Addr, port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )
}

/// The audio port of an SDP.
pub(crate) fn audio_port(sdp: &str) -> Option<u16> {
    sdp.lines()
        .find_map(|line| line.strip_prefix("m=audio "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|port| port.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// rtpengine answers a repeated cookie from its reply cache, so two clients (the calls'
    /// and the churn's) must never send the same one.
    #[test]
    fn two_clients_never_share_a_cookie() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let address = server.local_addr().unwrap().to_string();
        let recorder = std::thread::spawn(move || {
            let mut cookies = Vec::new();
            let mut buffer = [0u8; 2048];
            for _ in 0..4 {
                let (len, from) = server.recv_from(&mut buffer).unwrap();
                let text = String::from_utf8_lossy(&buffer[..len]).into_owned();
                let cookie = text.split_once(' ').unwrap().0.to_owned();
                let reply = format!("{cookie} d6:result4:ponge");
                server.send_to(reply.as_bytes(), from).unwrap();
                cookies.push(cookie);
            }
            cookies
        });
        let mut first = NgClient::connect(&address).unwrap();
        let mut second = NgClient::connect(&address).unwrap();
        for _ in 0..2 {
            first.request(&[("command", "ping")]).unwrap();
            second.request(&[("command", "ping")]).unwrap();
        }
        let mut cookies = recorder.join().unwrap();
        cookies.sort();
        cookies.dedup();
        assert_eq!(cookies.len(), 4, "{cookies:?}");
    }

    #[test]
    fn bencode_round_trips() {
        let value = Bencode::Dict(
            [
                (b"command".to_vec(), Bencode::text("offer")),
                (b"n".to_vec(), Bencode::Int(-3)),
                (
                    b"flags".to_vec(),
                    Bencode::List(vec![Bencode::text("a"), Bencode::text("bc")]),
                ),
            ]
            .into(),
        );
        let mut out = Vec::new();
        value.encode(&mut out);
        assert_eq!(out, b"d7:command5:offer5:flagsl1:a2:bce1:ni-3ee".to_vec());
        let (back, rest) = Bencode::decode(&out).unwrap();
        assert!(rest.is_empty());
        assert_eq!(back, value);
        assert_eq!(back.get_text("command").as_deref(), Some("offer"));
    }

    #[test]
    fn finds_the_audio_port() {
        assert_eq!(
            audio_port(&sdp(std::net::Ipv4Addr::LOCALHOST, 30004)),
            Some(30004)
        );
        assert_eq!(audio_port("v=0\r\n"), None);
    }
}
