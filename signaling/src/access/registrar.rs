//! Registrar bindings (RFC 3261 section 10.3): address-of-record to contacts, with expiry,
//! several contacts per user, `Expires: 0` and `Contact: *` removal, Call-ID/CSeq ordering
//! and `Min-Expires`. Pure: the caller passes `now` and the parsed request parts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::sip::header::NameAddr;
use crate::sip::message::Headers;

/// Registration policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    pub(crate) min_expires: u32,
    pub(crate) max_expires: u32,
    pub(crate) default_expires: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_expires: 60,
            max_expires: 7200,
            default_expires: 3600,
        }
    }
}

/// One registered contact.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Binding {
    /// The Contact value as the phone sent it (URI and parameters).
    pub(crate) contact: NameAddr,
    pub(crate) expires_at: Instant,
    pub(crate) call_id: String,
    pub(crate) cseq: u32,
    /// Where the REGISTER came from: requests to this contact go there (the phone may be
    /// behind NAT, RFC 3581 / RFC 5626 style).
    pub(crate) source: SocketAddr,
    pub(crate) transport: &'static str,
    pub(crate) q: f32,
}

impl Binding {
    pub(crate) fn remaining(&self, now: Instant) -> u32 {
        self.expires_at.saturating_duration_since(now).as_secs() as u32
    }
}

/// Why a REGISTER was refused, with the response it gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RegisterError {
    #[error("Invalid Contact")]
    BadContact,
    #[error("Wildcard Contact needs Expires: 0 and no other contact")]
    BadWildcard,
    #[error("Interval Too Brief")]
    TooBrief { min_expires: u32 },
    #[error("Out of order REGISTER")]
    OutOfOrder,
}

impl RegisterError {
    /// The SIP status code of the answer.
    pub(crate) fn status(&self) -> u16 {
        match self {
            Self::BadContact | Self::BadWildcard => 400,
            Self::TooBrief { .. } => 423,
            Self::OutOfOrder => 500,
        }
    }
}

/// What a REGISTER carries, already parsed.
#[derive(Debug, Clone)]
pub(crate) struct RegisterRequest<'a> {
    pub(crate) aor: String,
    pub(crate) headers: &'a Headers,
    pub(crate) call_id: &'a str,
    pub(crate) cseq: u32,
    pub(crate) source: SocketAddr,
    pub(crate) transport: &'static str,
}

/// All bindings.
#[derive(Debug, Default)]
pub(crate) struct Registrar {
    policy: Policy,
    bindings: HashMap<String, Vec<Binding>>,
}

/// One live registration, as the admin endpoint shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct RegistrationSummary {
    pub(crate) user: String,
    pub(crate) contact: String,
    pub(crate) source: String,
    pub(crate) transport: &'static str,
    pub(crate) expires_in_s: u32,
}

impl Registrar {
    /// Every live binding, by user.
    pub(crate) fn summary(&self, now: Instant) -> Vec<RegistrationSummary> {
        let mut out: Vec<RegistrationSummary> = self
            .bindings
            .iter()
            .flat_map(|(user, bindings)| {
                bindings
                    .iter()
                    .filter(|b| b.expires_at > now)
                    .map(|b| RegistrationSummary {
                        user: user.clone(),
                        contact: b.contact.to_string(),
                        source: b.source.to_string(),
                        transport: b.transport,
                        expires_in_s: b.remaining(now),
                    })
            })
            .collect();
        out.sort_by(|a, b| (&a.user, &a.contact).cmp(&(&b.user, &b.contact)));
        out
    }

    pub(crate) fn new(policy: Policy) -> Self {
        Self {
            policy,
            bindings: HashMap::new(),
        }
    }

    /// Applies a REGISTER; returns the bindings of the AoR after it (for the 200's Contacts).
    pub(crate) fn register(
        &mut self,
        now: Instant,
        request: &RegisterRequest<'_>,
    ) -> Result<Vec<Binding>, RegisterError> {
        let header_expires = request
            .headers
            .get("Expires")
            .and_then(|v| v.trim().parse::<u32>().ok());
        let contacts: Vec<&str> = request.headers.values("Contact").collect();
        let current = self.bindings.entry(request.aor.clone()).or_default();
        current.retain(|b| b.expires_at > now);
        if contacts.iter().any(|c| c.trim() == "*") {
            if contacts.len() != 1 || header_expires != Some(0) {
                return Err(RegisterError::BadWildcard);
            }
            if current
                .iter()
                .any(|b| b.call_id == request.call_id && request.cseq <= b.cseq)
            {
                return Err(RegisterError::OutOfOrder);
            }
            current.clear();
            return Ok(Vec::new());
        }
        let mut updates = Vec::with_capacity(contacts.len());
        for text in contacts {
            let contact = NameAddr::parse(text).ok_or(RegisterError::BadContact)?;
            let expires = contact
                .param("expires")
                .flatten()
                .and_then(|v| v.parse::<u32>().ok())
                .or(header_expires)
                .unwrap_or(self.policy.default_expires);
            if expires != 0 && expires < self.policy.min_expires {
                return Err(RegisterError::TooBrief {
                    min_expires: self.policy.min_expires,
                });
            }
            updates.push((contact, expires.min(self.policy.max_expires)));
        }
        for (contact, _) in &updates {
            let key = contact.uri.to_string();
            if let Some(existing) = current.iter().find(|b| b.contact.uri.to_string() == key)
                && existing.call_id == request.call_id
                && request.cseq <= existing.cseq
            {
                return Err(RegisterError::OutOfOrder);
            }
        }
        for (contact, expires) in updates {
            let key = contact.uri.to_string();
            current.retain(|b| b.contact.uri.to_string() != key);
            if expires == 0 {
                continue;
            }
            let q = contact
                .param("q")
                .flatten()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1.0);
            current.push(Binding {
                contact,
                expires_at: now + Duration::from_secs(u64::from(expires)),
                call_id: request.call_id.to_owned(),
                cseq: request.cseq,
                source: request.source,
                transport: request.transport,
                q,
            });
        }
        Ok(current.clone())
    }

    /// Live contacts of an AoR, highest q first.
    pub(crate) fn lookup(&self, now: Instant, aor: &str) -> Vec<Binding> {
        let mut live: Vec<Binding> = self
            .bindings
            .get(aor)
            .map(|b| b.iter().filter(|b| b.expires_at > now).cloned().collect())
            .unwrap_or_default();
        live.sort_by(|a, b| b.q.total_cmp(&a.q));
        live
    }

    /// Drops expired bindings; returns how many AoRs remain registered.
    pub(crate) fn purge(&mut self, now: Instant) -> usize {
        self.bindings.retain(|_, bindings| {
            bindings.retain(|b| b.expires_at > now);
            !bindings.is_empty()
        });
        self.bindings.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(contacts: &[&str], expires: Option<&str>) -> Headers {
        let mut headers = Headers::new();
        for contact in contacts {
            headers.push("Contact", *contact);
        }
        if let Some(expires) = expires {
            headers.push("Expires", expires);
        }
        headers
    }

    fn request<'a>(headers: &'a Headers, call_id: &'a str, cseq: u32) -> RegisterRequest<'a> {
        RegisterRequest {
            aor: "sip:alice@example.com".into(),
            headers,
            call_id,
            cseq,
            source: "198.51.100.7:40000".parse().unwrap(),
            transport: "udp",
        }
    }

    #[test]
    fn registers_several_contacts_with_their_own_expiry() {
        let now = Instant::now();
        let mut registrar = Registrar::new(Policy::default());
        let h = headers(
            &[
                "<sip:alice@10.0.0.1>;q=0.5",
                "<sip:alice@10.0.0.2>;expires=120;q=0.9",
            ],
            Some("600"),
        );
        let bound = registrar.register(now, &request(&h, "c1", 1)).unwrap();
        assert_eq!(bound.len(), 2);
        let found = registrar.lookup(now, "sip:alice@example.com");
        assert_eq!(found[0].contact.uri.host, "10.0.0.2", "highest q first");
        assert_eq!(found[0].remaining(now), 120);
        assert_eq!(found[1].remaining(now), 600);
        assert_eq!(found[0].source, "198.51.100.7:40000".parse().unwrap());
        // After 121 s only the longer binding is left.
        assert_eq!(
            registrar
                .lookup(now + Duration::from_secs(121), "sip:alice@example.com")
                .len(),
            1
        );
        assert_eq!(registrar.purge(now + Duration::from_secs(601)), 0);
    }

    #[test]
    fn refreshes_unregisters_and_wildcards() {
        let now = Instant::now();
        let mut registrar = Registrar::new(Policy::default());
        let h = headers(&["<sip:alice@10.0.0.1>"], None);
        registrar.register(now, &request(&h, "c1", 1)).unwrap();
        assert_eq!(
            registrar.lookup(now, "sip:alice@example.com")[0].remaining(now),
            3600
        );
        let refresh = headers(&["<sip:alice@10.0.0.1>"], Some("300"));
        registrar
            .register(now, &request(&refresh, "c1", 2))
            .unwrap();
        assert_eq!(
            registrar.lookup(now, "sip:alice@example.com")[0].remaining(now),
            300
        );
        let remove = headers(&["<sip:alice@10.0.0.1>"], Some("0"));
        assert!(
            registrar
                .register(now, &request(&remove, "c1", 3))
                .unwrap()
                .is_empty()
        );
        registrar.register(now, &request(&h, "c2", 1)).unwrap();
        let star = headers(&["*"], Some("0"));
        assert!(
            registrar
                .register(now, &request(&star, "c3", 1))
                .unwrap()
                .is_empty()
        );
        assert!(registrar.lookup(now, "sip:alice@example.com").is_empty());
    }

    #[test]
    fn refusals_carry_their_status() {
        let now = Instant::now();
        let mut registrar = Registrar::new(Policy::default());
        let brief = headers(&["<sip:alice@10.0.0.1>"], Some("10"));
        let error = registrar
            .register(now, &request(&brief, "c1", 1))
            .unwrap_err();
        assert_eq!(error, RegisterError::TooBrief { min_expires: 60 });
        assert_eq!(error.status(), 423);
        let star = headers(&["*"], Some("60"));
        assert_eq!(
            registrar
                .register(now, &request(&star, "c1", 1))
                .unwrap_err()
                .status(),
            400
        );
        let h = headers(&["<sip:alice@10.0.0.1>"], None);
        registrar.register(now, &request(&h, "c1", 5)).unwrap();
        assert_eq!(
            registrar.register(now, &request(&h, "c1", 5)).unwrap_err(),
            RegisterError::OutOfOrder
        );
        let bad = headers(&["<tel:123>"], None);
        assert_eq!(
            registrar
                .register(now, &request(&bad, "c9", 1))
                .unwrap_err()
                .status(),
            400
        );
        let capped = headers(&["<sip:alice@10.0.0.3>"], Some("999999"));
        registrar.register(now, &request(&capped, "c4", 1)).unwrap();
        let found = registrar.lookup(now, "sip:alice@example.com");
        assert!(found.iter().all(|b| b.remaining(now) <= 7200));
    }
}
