//! Entry points for the fuzz targets in `fuzz/` (`cargo fuzz`): the paths that read what a
//! stranger sends (a SIP datagram, a TCP stream, an SDP body, a digest `Authorization`). Not
//! an API; public only so the fuzz crate can reach them. Each asserts the property its
//! target checks, so a violation is a crash the fuzzer keeps.

use std::net::IpAddr;

use crate::access::auth::{Credentials, DigestAuth, Secret};
use crate::sdp::{Rewrite, parse as parse_sdp, rewrite};
use crate::sip::message::{Frame, Message, frame, parse};

fn to_bytes(message: &Message) -> Vec<u8> {
    match message {
        Message::Request(request) => request.to_bytes(),
        Message::Response(response) => response.to_bytes(),
    }
}

/// The parser never panics, and what it accepts it writes back in a form that parses to the
/// same message: write, parse, write is stable.
pub fn sip_message(data: &[u8]) {
    let Ok(message) = parse(data) else {
        return;
    };
    let written = to_bytes(&message);
    let again = parse(&written).unwrap_or_else(|error| {
        panic!(
            "a message we wrote does not parse ({error}):\n{}",
            String::from_utf8_lossy(&written)
        )
    });
    assert_eq!(
        to_bytes(&again),
        written,
        "writing, parsing and writing again changed the message"
    );
}

/// A TCP stream cut into messages as the connection reader does: every frame lies inside
/// the buffer and moves it on, keep-alives are only CRLFs, and each message goes to the
/// parser like a datagram.
pub fn tcp_framer(data: &[u8]) {
    let mut rest = data;
    loop {
        match frame(rest) {
            Frame::Complete(len) => {
                assert!(
                    len > 0 && len <= rest.len(),
                    "frame of {len} in {}",
                    rest.len()
                );
                let _ = parse(&rest[..len]);
                rest = &rest[len..];
            }
            Frame::KeepAlive(len) => {
                assert!(len > 0 && len <= rest.len());
                assert!(rest[..len].iter().all(|b| matches!(b, b'\r' | b'\n')));
                rest = &rest[len..];
            }
            Frame::Incomplete | Frame::Invalid(_) => return,
        }
    }
}

/// What the rewrite may change: `c=`, `m=` ports, `a=rtcp:`, the `o=` version.
const MAY_CHANGE: [&str; 4] = ["c=", "m=", "a=rtcp:", "o="];

/// An SDP body the reader accepts is rewritten through the proxy (a port per active media
/// line, a new `o=` version), and the result reads again with the same media lines; every
/// line not rewritten is copied byte for byte.
pub fn sdp_rewrite(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(before) = parse_sdp(text) else {
        return;
    };
    for address in ["203.0.113.5", "2001:db8::99"] {
        let plan = Rewrite {
            address: address.parse::<IpAddr>().expect("an address"),
            ports: before
                .media
                .iter()
                .enumerate()
                .map(|(i, m)| (m.port != 0).then_some(30_000 + 2 * (i as u16 % 1000)))
                .collect(),
            origin_version: before.origin_version.map(|v| v.wrapping_add(1)),
            origin_identity: None,
        };
        let out = rewrite(text, &plan)
            .unwrap_or_else(|error| panic!("the reader took it, the rewrite did not: {error}"));
        let old_lines: Vec<&str> = text.split_inclusive('\n').collect();
        let new_lines: Vec<&str> = out.split_inclusive('\n').collect();
        assert_eq!(old_lines.len(), new_lines.len(), "line count");
        for (old, new) in old_lines.iter().zip(&new_lines) {
            if !MAY_CHANGE.iter().any(|p| old.starts_with(p)) {
                assert_eq!(old, new, "a line that must not change changed");
            }
        }
        let after = parse_sdp(&out)
            .unwrap_or_else(|error| panic!("the rewrite does not read again: {error}\n{out}"));
        assert_eq!(after.media.len(), before.media.len(), "media lines");
        for (old, new) in before.media.iter().zip(&after.media) {
            assert_eq!(new.codecs, old.codecs, "codecs");
            assert_eq!(new.direction, old.direction, "direction");
        }
    }
}

/// The `Authorization` parser, and the check of what it parsed against a password and
/// against stored hashes; never a panic, and never authenticated without the password.
pub fn digest_credentials(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(credentials) = Credentials::parse(text) else {
        return;
    };
    let mut auth = DigestAuth::with_secret("example.com", [7; 32], 300);
    let password = Secret {
        password: Some("secret"),
        ..Secret::default()
    };
    let hashes = Secret {
        password: None,
        ha1_md5: Some("0123456789abcdef0123456789abcdef"),
        ha1_sha256: None,
    };
    for method in ["REGISTER", "INVITE"] {
        for secret in [Some(password), Some(hashes), None] {
            let verdict = auth.verify(1000, method, &credentials, secret);
            // A nonce this process never issued cannot authenticate anyone.
            assert!(
                !matches!(verdict, crate::access::auth::Verdict::Authenticated(_)),
                "authenticated with a nonce never issued: {text}"
            );
        }
    }
}
