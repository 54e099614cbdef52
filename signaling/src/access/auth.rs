//! HTTP Digest authentication for SIP (RFC 3261 section 22, RFC 7616 algorithms as RFC 8760
//! applies them to SIP): MD5 and SHA-256, `qop=auth`, nonces that expire.
//!
//! Nonces are `<issued unix seconds, hex>.<salt>.<MAC>`: a random salt makes every challenge's
//! nonce unique (two phones challenged in the same second must not share one, or the second's
//! first nonce count would look like a replay), and the MAC is HMAC-SHA-256 keyed by a
//! per-process secret over the time, the salt and the realm: nothing is stored per challenge. The
//! response is checked first, in constant time, against the user's password or stored HA1;
//! only a right response then has its nonce judged. A right response over a nonce that
//! expired, that another process issued (a restart), or whose nonce count was already used
//! (a replay, RFC 7616 section 3.4: the count must grow) answers `stale=true`, so the phone
//! retries with a fresh nonce without asking its user again and a replayer gets nothing.
//! Nonce counts are the only state: the highest count seen per live nonce, bounded.
//! Pure: the caller passes the time.

use std::collections::HashMap;

use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Live nonces whose counts are remembered; past this the oldest half is forgotten (their
/// next use answers stale, which costs a phone one more round trip, never a failure).
const MAX_NONCES: usize = 262_144;

/// Digest algorithms offered and accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Sha256 => "SHA-256",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_uppercase().as_str() {
            "MD5" => Some(Self::Md5),
            "SHA-256" => Some(Self::Sha256),
            _ => None,
        }
    }

    pub(crate) fn hash(self, data: &str) -> String {
        match self {
            Self::Md5 => hex(&Md5::digest(data.as_bytes())),
            Self::Sha256 => hex(&Sha256::digest(data.as_bytes())),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a user's answers are checked against: the password, or the HA1 hashes stored in
/// its place (`MD5(user:realm:password)`, `SHA-256(user:realm:password)`, lower-case hex).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Secret<'a> {
    pub(crate) password: Option<&'a str>,
    pub(crate) ha1_md5: Option<&'a str>,
    pub(crate) ha1_sha256: Option<&'a str>,
}

impl Secret<'_> {
    fn ha1(&self, algorithm: Algorithm, username: &str, realm: &str) -> Option<String> {
        if let Some(password) = self.password {
            return Some(algorithm.hash(&format!("{username}:{realm}:{password}")));
        }
        match algorithm {
            Algorithm::Md5 => self.ha1_md5,
            Algorithm::Sha256 => self.ha1_sha256,
        }
        .map(str::to_ascii_lowercase)
    }
}

/// What checking an Authorization header concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The credentials are right; the authenticated user name.
    Authenticated(String),
    /// Right password, but the nonce expired, is not this process's or its count was
    /// used already: challenge again with `stale=true`.
    Stale(&'static str),
    /// Wrong or unusable credentials; the reason is for logs, never for the peer.
    Rejected(&'static str),
}

/// Parsed `Digest` credentials (Authorization or Proxy-Authorization).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Credentials {
    pub(crate) username: String,
    pub(crate) realm: String,
    pub(crate) nonce: String,
    pub(crate) uri: String,
    pub(crate) response: String,
    pub(crate) algorithm: Option<String>,
    pub(crate) qop: Option<String>,
    pub(crate) nc: Option<String>,
    pub(crate) cnonce: Option<String>,
}

impl Credentials {
    /// Parses `Digest username="..", realm="..", ...`; None if not Digest or incomplete.
    pub(crate) fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(char::is_whitespace)?;
        if !scheme.eq_ignore_ascii_case("Digest") {
            return None;
        }
        let mut credentials = Self::default();
        for (name, value) in parse_auth_params(rest) {
            match name.to_ascii_lowercase().as_str() {
                "username" => credentials.username = value,
                "realm" => credentials.realm = value,
                "nonce" => credentials.nonce = value,
                "uri" => credentials.uri = value,
                "response" => credentials.response = value.to_ascii_lowercase(),
                "algorithm" => credentials.algorithm = Some(value),
                "qop" => credentials.qop = Some(value),
                "nc" => credentials.nc = Some(value),
                "cnonce" => credentials.cnonce = Some(value),
                _ => {}
            }
        }
        let complete = !credentials.username.is_empty()
            && !credentials.nonce.is_empty()
            && !credentials.response.is_empty();
        complete.then_some(credentials)
    }
}

/// Splits `a="x, y", b=z` into pairs, honouring quotes.
fn parse_auth_params(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((name, after)) = rest.split_once('=') else {
            break;
        };
        let name = name.trim().trim_start_matches(',').trim().to_owned();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        pairs.push((name, value));
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    pairs
}

/// Issues challenges and checks answers for one realm.
pub(crate) struct DigestAuth {
    realm: String,
    secret: [u8; 32],
    nonce_lifetime: u64,
    /// Per live nonce, the highest nonce count accepted (0: used without `qop`).
    counts: HashMap<String, (u64, u32)>,
}

impl std::fmt::Debug for DigestAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestAuth")
            .field("realm", &self.realm)
            .field("nonce_lifetime", &self.nonce_lifetime)
            .finish_non_exhaustive()
    }
}

impl DigestAuth {
    /// A realm with a random nonce secret; nonces live `nonce_lifetime_secs`.
    pub(crate) fn new(realm: &str, nonce_lifetime_secs: u64) -> Result<Self, getrandom::Error> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)?;
        Ok(Self::with_secret(realm, secret, nonce_lifetime_secs))
    }

    pub(crate) fn with_secret(realm: &str, secret: [u8; 32], nonce_lifetime_secs: u64) -> Self {
        Self {
            realm: realm.to_owned(),
            secret,
            nonce_lifetime: nonce_lifetime_secs,
            counts: HashMap::new(),
        }
    }

    pub(crate) fn realm(&self) -> &str {
        &self.realm
    }

    fn mac(&self, issued: u64, salt: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret)
            .expect("HMAC takes keys of any length");
        mac.update(&issued.to_be_bytes());
        mac.update(salt.as_bytes());
        mac.update(b"\0");
        mac.update(self.realm.as_bytes());
        mac
    }

    /// Whether `nonce` is one this process issued, and when.
    fn issued(&self, nonce: &str, now: u64) -> Option<u64> {
        let mut parts = nonce.split('.');
        let (issued, salt, tag) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let issued = u64::from_str_radix(issued, 16).ok()?;
        let tag = unhex(tag)?;
        if tag.len() != 16 || issued > now + 5 {
            return None;
        }
        self.mac(issued, salt).verify_truncated_left(&tag).ok()?;
        Some(issued)
    }

    /// Nonces whose counts are remembered (bounded by `MAX_NONCES`).
    #[cfg(test)]
    pub(crate) fn nonces_tracked(&self) -> usize {
        self.counts.len()
    }

    /// Accepts `count` for `nonce` if it is higher than any accepted before.
    fn count(&mut self, now: u64, nonce: &str, issued: u64, count: u32) -> bool {
        if let Some((_, highest)) = self.counts.get_mut(nonce) {
            if count <= *highest {
                return false;
            }
            *highest = count;
            return true;
        }
        if self.counts.len() >= MAX_NONCES {
            let lifetime = self.nonce_lifetime;
            self.counts
                .retain(|_, (issued, _)| now.saturating_sub(*issued) <= lifetime);
            if self.counts.len() >= MAX_NONCES {
                let mut ages: Vec<u64> = self.counts.values().map(|(i, _)| *i).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                self.counts.retain(|_, (issued, _)| *issued > cut);
            }
        }
        self.counts.insert(nonce.to_owned(), (issued, count));
        true
    }

    /// A fresh nonce for `now` (unix seconds), unique to this challenge.
    pub(crate) fn nonce(&self, now: u64) -> String {
        let mut salt = [0u8; 8];
        // The salt need not be secret, only unique: a failing OS source leaves it zero and
        // the nonce still bound by the MAC.
        let _ = getrandom::fill(&mut salt);
        let salt = hex(&salt);
        let tag = self.mac(now, &salt).finalize().into_bytes();
        format!("{now:x}.{salt}.{}", hex(&tag[..16]))
    }

    /// The `WWW-Authenticate`/`Proxy-Authenticate` values to send, each with `qop="auth"`:
    /// MD5 first, then SHA-256 (RFC 8760). MD5 leads because many deployed phones (and SIPp)
    /// answer only the first challenge and know only MD5; see docs/decisions.md.
    pub(crate) fn challenges(&self, now: u64, stale: bool) -> Vec<String> {
        let nonce = self.nonce(now);
        [Algorithm::Md5, Algorithm::Sha256]
            .iter()
            .map(|algorithm| {
                let mut value = format!(
                    "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"",
                    self.realm,
                    algorithm.as_str()
                );
                if stale {
                    value.push_str(", stale=true");
                }
                value
            })
            .collect()
    }

    /// Checks credentials against the user's secret (`None`: unknown user, which costs the
    /// same hashing as a known one).
    pub(crate) fn verify(
        &mut self,
        now: u64,
        method: &str,
        credentials: &Credentials,
        secret: Option<Secret<'_>>,
    ) -> Verdict {
        if credentials.realm != self.realm {
            return Verdict::Rejected("wrong realm");
        }
        let algorithm = match credentials.algorithm.as_deref() {
            None => Algorithm::Md5,
            Some(text) => match Algorithm::parse(text) {
                Some(algorithm) => algorithm,
                None => return Verdict::Rejected("unsupported algorithm"),
            },
        };
        let known = secret.is_some();
        let ha1 = secret
            .and_then(|s| s.ha1(algorithm, &credentials.username, &credentials.realm))
            // An unknown user (or one without a hash for this algorithm) is checked against
            // a hash nobody answers to, so that it takes as long as a known one.
            .unwrap_or_else(|| algorithm.hash(&format!("{}:\0unknown", credentials.realm)));
        let ha2 = algorithm.hash(&format!("{method}:{}", credentials.uri));
        let (expected, count) = match credentials.qop.as_deref() {
            Some(qop) if qop.eq_ignore_ascii_case("auth") => {
                let (Some(nc), Some(cnonce)) = (&credentials.nc, &credentials.cnonce) else {
                    return Verdict::Rejected("qop without nc or cnonce");
                };
                let Ok(count) = u32::from_str_radix(nc, 16) else {
                    return Verdict::Rejected("unreadable nonce count");
                };
                if nc.len() != 8 || count == 0 {
                    return Verdict::Rejected("unreadable nonce count");
                }
                let expected = algorithm.hash(&format!(
                    "{ha1}:{}:{nc}:{cnonce}:auth:{ha2}",
                    credentials.nonce
                ));
                (expected, count)
            }
            Some(_) => return Verdict::Rejected("unsupported qop"),
            None => (
                algorithm.hash(&format!("{ha1}:{}:{ha2}", credentials.nonce)),
                0,
            ),
        };
        let right: bool = expected
            .as_bytes()
            .ct_eq(credentials.response.as_bytes())
            .into();
        if !right || !known {
            return Verdict::Rejected(if known {
                "wrong response"
            } else {
                "unknown user"
            });
        }
        let Some(issued) = self.issued(&credentials.nonce, now) else {
            return Verdict::Stale("not our nonce");
        };
        if now.saturating_sub(issued) > self.nonce_lifetime {
            return Verdict::Stale("expired nonce");
        }
        if !self.count(now, &credentials.nonce, issued, count) {
            return Verdict::Stale("nonce count used already");
        }
        Verdict::Authenticated(credentials.username.clone())
    }
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 2617 section 3.5's example (MD5, qop=auth), still the reference vector.
    #[test]
    fn rfc2617_md5_vector() {
        let header = r#"Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let credentials = Credentials::parse(header).unwrap();
        let ha1 = Algorithm::Md5.hash("Mufasa:testrealm@host.com:Circle Of Life");
        let ha2 = Algorithm::Md5.hash("GET:/dir/index.html");
        let response = Algorithm::Md5.hash(&format!(
            "{ha1}:{}:00000001:0a4f113b:auth:{ha2}",
            credentials.nonce
        ));
        assert_eq!(response, credentials.response);
    }

    fn answer(auth: &DigestAuth, nonce: &str, algorithm: Algorithm, password: &str) -> Credentials {
        let ha1 = algorithm.hash(&format!("alice:{}:{password}", auth.realm()));
        let ha2 = algorithm.hash("REGISTER:sip:example.com");
        Credentials {
            username: "alice".into(),
            realm: auth.realm().into(),
            nonce: nonce.into(),
            uri: "sip:example.com".into(),
            response: algorithm.hash(&format!("{ha1}:{nonce}:00000001:abc:auth:{ha2}")),
            algorithm: Some(algorithm.as_str().into()),
            qop: Some("auth".into()),
            nc: Some("00000001".into()),
            cnonce: Some("abc".into()),
        }
    }

    fn password(text: &str) -> Option<Secret<'_>> {
        Some(Secret {
            password: Some(text),
            ..Secret::default()
        })
    }

    fn with_count(mut credentials: Credentials, auth: &DigestAuth, nc: &str) -> Credentials {
        let ha1 = Algorithm::Md5.hash(&format!("alice:{}:secret", auth.realm()));
        let ha2 = Algorithm::Md5.hash("REGISTER:sip:example.com");
        credentials.nc = Some(nc.into());
        credentials.response =
            Algorithm::Md5.hash(&format!("{ha1}:{}:{nc}:abc:auth:{ha2}", credentials.nonce));
        credentials
    }

    #[test]
    fn sha256_and_md5_answers_are_checked() {
        let mut auth = DigestAuth::with_secret("example.com", [7; 32], 300);
        for algorithm in [Algorithm::Sha256, Algorithm::Md5] {
            let nonce = auth.nonce(1000 + algorithm as u64);
            let wrong = answer(&auth, &nonce, algorithm, "guess");
            assert_eq!(
                auth.verify(1010, "REGISTER", &wrong, password("secret")),
                Verdict::Rejected("wrong response")
            );
            let good = answer(&auth, &nonce, algorithm, "secret");
            assert_eq!(
                auth.verify(1010, "REGISTER", &good, password("secret")),
                Verdict::Authenticated("alice".into())
            );
        }
        let good = answer(&auth, &auth.nonce(1002), Algorithm::Sha256, "secret");
        assert_eq!(
            auth.verify(1010, "REGISTER", &good, None),
            Verdict::Rejected("unknown user")
        );
        assert_eq!(
            auth.verify(1010, "INVITE", &good, password("secret")),
            Verdict::Rejected("wrong response")
        );
    }

    #[test]
    fn stored_ha1_hashes_check_like_the_password() {
        let mut auth = DigestAuth::with_secret("example.com", [7; 32], 300);
        let md5 = Algorithm::Md5.hash("alice:example.com:secret");
        let sha = Algorithm::Sha256
            .hash("alice:example.com:secret")
            .to_uppercase();
        let stored = Secret {
            password: None,
            ha1_md5: Some(&md5),
            ha1_sha256: Some(&sha),
        };
        for (n, algorithm) in [Algorithm::Md5, Algorithm::Sha256].into_iter().enumerate() {
            let good = answer(&auth, &auth.nonce(1000 + n as u64), algorithm, "secret");
            assert_eq!(
                auth.verify(1010, "REGISTER", &good, Some(stored)),
                Verdict::Authenticated("alice".into())
            );
        }
        // Only an MD5 hash stored: a SHA-256 answer cannot be right.
        let md5_only = Secret {
            ha1_sha256: None,
            ..stored
        };
        let good = answer(&auth, &auth.nonce(1003), Algorithm::Sha256, "secret");
        assert_eq!(
            auth.verify(1010, "REGISTER", &good, Some(md5_only)),
            Verdict::Rejected("wrong response")
        );
    }

    #[test]
    fn expired_nonces_are_stale_and_forged_ones_too_only_when_the_response_is_right() {
        let mut auth = DigestAuth::with_secret("example.com", [7; 32], 300);
        let nonce = auth.nonce(1000);
        let good = answer(&auth, &nonce, Algorithm::Sha256, "secret");
        assert_eq!(
            auth.verify(1301, "REGISTER", &good, password("secret")),
            Verdict::Stale("expired nonce")
        );
        // Another process's nonce (a restart) with the right password: stale, no failure.
        let other = DigestAuth::with_secret("example.com", [8; 32], 300);
        let foreign = answer(&auth, &other.nonce(1000), Algorithm::Sha256, "secret");
        assert_eq!(
            auth.verify(1010, "REGISTER", &foreign, password("secret")),
            Verdict::Stale("not our nonce")
        );
        let forged = answer(&auth, "3e8.00.00112233", Algorithm::Sha256, "guess");
        assert_eq!(
            auth.verify(1010, "REGISTER", &forged, password("secret")),
            Verdict::Rejected("wrong response")
        );
        // A nonce with a tag changed in its last byte is not ours.
        let mut tampered = nonce.clone();
        let last = if tampered.ends_with('0') { '1' } else { '0' };
        tampered.pop();
        tampered.push(last);
        let tampered = answer(&auth, &tampered, Algorithm::Sha256, "secret");
        assert_eq!(
            auth.verify(1010, "REGISTER", &tampered, password("secret")),
            Verdict::Stale("not our nonce")
        );
        let challenges = auth.challenges(1301, true);
        assert!(challenges[0].contains("algorithm=MD5") && challenges[0].contains("stale=true"));
        assert!(challenges[1].contains("algorithm=SHA-256"));
    }

    #[test]
    fn a_replayed_nonce_count_is_stale_and_a_growing_one_is_accepted() {
        let mut auth = DigestAuth::with_secret("example.com", [7; 32], 300);
        let nonce = auth.nonce(1000);
        let first = answer(&auth, &nonce, Algorithm::Md5, "secret");
        assert_eq!(
            auth.verify(1001, "REGISTER", &first, password("secret")),
            Verdict::Authenticated("alice".into())
        );
        assert_eq!(
            auth.verify(1002, "REGISTER", &first, password("secret")),
            Verdict::Stale("nonce count used already"),
            "the same request sent again by someone who captured it"
        );
        let third = with_count(first.clone(), &auth, "00000003");
        assert_eq!(
            auth.verify(1003, "REGISTER", &third, password("secret")),
            Verdict::Authenticated("alice".into())
        );
        let second = with_count(first, &auth, "00000002");
        assert_eq!(
            auth.verify(1004, "REGISTER", &second, password("secret")),
            Verdict::Stale("nonce count used already")
        );
        assert_eq!(auth.nonces_tracked(), 1);
        assert_ne!(
            auth.nonce(1000),
            auth.nonce(1000),
            "every challenge its own nonce"
        );
    }

    #[test]
    fn an_answer_without_qop_uses_its_nonce_once() {
        let mut auth = DigestAuth::with_secret("example.com", [7; 32], 300);
        let nonce = auth.nonce(1000);
        let ha1 = Algorithm::Md5.hash("alice:example.com:secret");
        let ha2 = Algorithm::Md5.hash("REGISTER:sip:example.com");
        let credentials = Credentials {
            username: "alice".into(),
            realm: "example.com".into(),
            nonce: nonce.clone(),
            uri: "sip:example.com".into(),
            response: Algorithm::Md5.hash(&format!("{ha1}:{nonce}:{ha2}")),
            ..Credentials::default()
        };
        assert_eq!(
            auth.verify(1001, "REGISTER", &credentials, password("secret")),
            Verdict::Authenticated("alice".into())
        );
        assert_eq!(
            auth.verify(1002, "REGISTER", &credentials, password("secret")),
            Verdict::Stale("nonce count used already")
        );
    }

    #[test]
    fn the_nonce_table_is_bounded() {
        let mut auth = DigestAuth::with_secret("example.com", [7; 32], 300);
        for n in 0..(MAX_NONCES as u64 + 10) {
            let nonce = format!("{n}");
            assert!(auth.count(n / 1000, &nonce, n / 1000, 1));
        }
        assert!(auth.nonces_tracked() <= MAX_NONCES);
    }

    #[test]
    fn credentials_parse_quoted_and_escaped_values() {
        let parsed = Credentials::parse(r#"Digest username="a\"b", realm="r", nonce="n", uri="sip:x", response="ABC", algorithm=SHA-256"#).unwrap();
        assert_eq!(parsed.username, "a\"b");
        assert_eq!(parsed.response, "abc");
        assert_eq!(parsed.algorithm.as_deref(), Some("SHA-256"));
        assert!(Credentials::parse("Basic dXNlcjpwYXNz").is_none());
        assert!(Credentials::parse(r#"Digest username="a""#).is_none());
    }
}
