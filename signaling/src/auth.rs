//! HTTP Digest authentication for SIP (RFC 3261 section 22, RFC 7616 algorithms as RFC 8760
//! applies them to SIP): MD5 and SHA-256, `qop=auth`, nonces that expire.
//!
//! Nonces are stateless: `<issued unix seconds, hex>.<MAC>` where the MAC is SHA-256 over a
//! per-process secret, the time and the realm. A nonce this server did not issue fails; an
//! expired but genuine one answers `stale=true` so the phone retries with the new nonce
//! without asking the user again. Pure: the caller passes the time.

use md5::Md5;
use sha2::{Digest, Sha256};

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

    fn hash(self, data: &str) -> String {
        match self {
            Self::Md5 => hex(&Md5::digest(data.as_bytes())),
            Self::Sha256 => hex(&Sha256::digest(data.as_bytes())),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What checking an Authorization header concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The credentials are right; the authenticated user name.
    Authenticated(String),
    /// Right password, but the nonce expired: challenge again with `stale=true`.
    Stale,
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
#[derive(Clone)]
pub(crate) struct DigestAuth {
    realm: String,
    secret: [u8; 32],
    nonce_lifetime: u64,
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
        }
    }

    pub(crate) fn realm(&self) -> &str {
        &self.realm
    }

    fn mac(&self, issued: u64) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.secret);
        hasher.update(issued.to_be_bytes());
        hasher.update(self.realm.as_bytes());
        hex(&hasher.finalize()[..16])
    }

    /// A fresh nonce for `now` (unix seconds).
    pub(crate) fn nonce(&self, now: u64) -> String {
        format!("{now:x}.{}", self.mac(now))
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

    /// Checks credentials against the user's password (`None`: unknown user).
    pub(crate) fn verify(
        &self,
        now: u64,
        method: &str,
        credentials: &Credentials,
        password: Option<&str>,
    ) -> Verdict {
        let Some(password) = password else {
            return Verdict::Rejected("unknown user");
        };
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
        let Some((issued, mac)) = credentials.nonce.split_once('.') else {
            return Verdict::Rejected("not our nonce");
        };
        let Ok(issued) = u64::from_str_radix(issued, 16) else {
            return Verdict::Rejected("not our nonce");
        };
        if mac != self.mac(issued) || issued > now + 5 {
            return Verdict::Rejected("not our nonce");
        }
        let ha1 = algorithm.hash(&format!(
            "{}:{}:{password}",
            credentials.username, credentials.realm
        ));
        let ha2 = algorithm.hash(&format!("{method}:{}", credentials.uri));
        let expected = match credentials.qop.as_deref() {
            Some(qop) if qop.eq_ignore_ascii_case("auth") => {
                let (Some(nc), Some(cnonce)) = (&credentials.nc, &credentials.cnonce) else {
                    return Verdict::Rejected("qop without nc or cnonce");
                };
                algorithm.hash(&format!(
                    "{ha1}:{}:{nc}:{cnonce}:auth:{ha2}",
                    credentials.nonce
                ))
            }
            Some(_) => return Verdict::Rejected("unsupported qop"),
            None => algorithm.hash(&format!("{ha1}:{}:{ha2}", credentials.nonce)),
        };
        if expected != credentials.response {
            return Verdict::Rejected("wrong response");
        }
        if now.saturating_sub(issued) > self.nonce_lifetime {
            return Verdict::Stale;
        }
        Verdict::Authenticated(credentials.username.clone())
    }
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

    #[test]
    fn sha256_and_md5_answers_are_checked() {
        let auth = DigestAuth::with_secret("example.com", [7; 32], 300);
        let nonce = auth.nonce(1000);
        for algorithm in [Algorithm::Sha256, Algorithm::Md5] {
            let good = answer(&auth, &nonce, algorithm, "secret");
            assert_eq!(
                auth.verify(1010, "REGISTER", &good, Some("secret")),
                Verdict::Authenticated("alice".into())
            );
            let wrong = answer(&auth, &nonce, algorithm, "guess");
            assert_eq!(
                auth.verify(1010, "REGISTER", &wrong, Some("secret")),
                Verdict::Rejected("wrong response")
            );
        }
        let good = answer(&auth, &nonce, Algorithm::Sha256, "secret");
        assert_eq!(
            auth.verify(1010, "REGISTER", &good, None),
            Verdict::Rejected("unknown user")
        );
        assert_eq!(
            auth.verify(1010, "INVITE", &good, Some("secret")),
            Verdict::Rejected("wrong response")
        );
    }

    #[test]
    fn expired_nonces_are_stale_and_forged_ones_rejected() {
        let auth = DigestAuth::with_secret("example.com", [7; 32], 300);
        let nonce = auth.nonce(1000);
        let good = answer(&auth, &nonce, Algorithm::Sha256, "secret");
        assert_eq!(
            auth.verify(1301, "REGISTER", &good, Some("secret")),
            Verdict::Stale
        );
        let other = DigestAuth::with_secret("example.com", [8; 32], 300);
        let forged = answer(&auth, &other.nonce(1000), Algorithm::Sha256, "secret");
        assert_eq!(
            auth.verify(1010, "REGISTER", &forged, Some("secret")),
            Verdict::Rejected("not our nonce")
        );
        let challenges = auth.challenges(1301, true);
        assert!(challenges[0].contains("algorithm=MD5") && challenges[0].contains("stale=true"));
        assert!(challenges[1].contains("algorithm=SHA-256"));
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
