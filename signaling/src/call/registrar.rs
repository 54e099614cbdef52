//! The registrar glue (RFC 3261 section 10.3) and digest authentication (RFC 3261 section 22,
//! RFC 7616), and OPTIONS outside any dialog (section 11).

use std::time::Instant;

use super::messages::response;
use super::{ALLOW, Core, Output};
use crate::access::auth::{Credentials, Secret, Verdict};
use crate::access::guard::Ban;
use crate::access::registrar::{RegisterError, RegisterRequest};
use crate::sip::header::NameAddr;
use crate::sip::message::{Request, reason_phrase};
use crate::sip::{Peer, Transport};
use crate::transaction::TxId;

impl Core {
    pub(super) fn on_options(&mut self, now: Instant, tx: TxId, request: &Request) {
        let tag = self.ids.tag();
        let mut answer = response(request, 200, "OK", Some(&tag));
        answer.headers.push("Allow", ALLOW);
        answer.headers.push("Accept", "application/sdp");
        self.transactions.respond(now, tx, &answer);
    }

    fn challenge(
        &mut self,
        now: Instant,
        tx: TxId,
        request: &Request,
        unix: u64,
        stale: bool,
        proxy: bool,
    ) {
        let (status, header) = if proxy {
            (407, "Proxy-Authenticate")
        } else {
            (401, "WWW-Authenticate")
        };
        let tag = self.ids.tag();
        let mut answer = response(request, status, reason_phrase(status), Some(&tag));
        for challenge in self.auth.challenges(unix, stale) {
            answer.headers.push(header, challenge);
        }
        self.transactions.respond(now, tx, &answer);
    }

    /// Checks digest credentials; None when a challenge was sent instead.
    pub(super) fn authenticate(
        &mut self,
        now: Instant,
        from: Peer,
        tx: TxId,
        request: &Request,
        unix: u64,
        proxy: bool,
    ) -> Option<String> {
        let header = if proxy {
            "Proxy-Authorization"
        } else {
            "Authorization"
        };
        let credentials = request
            .headers
            .all(header)
            .filter_map(Credentials::parse)
            .find(|c| c.realm == self.auth.realm());
        let Some(credentials) = credentials else {
            self.challenge(now, tx, request, unix, false, proxy);
            return None;
        };
        let ip = from.addr.ip();
        let verdict = if self.guard.refuses(now, ip, &credentials.username) {
            // A guarded user answered from an address it never used: refused unchecked,
            // exactly as a wrong password is.
            Verdict::Rejected("user guarded against guessing")
        } else {
            let user = self.settings.users.get(&credentials.username);
            let secret = user.map(|u| Secret {
                password: u.password.as_deref(),
                ha1_md5: u.ha1.as_deref(),
                ha1_sha256: u.ha1_sha256.as_deref(),
            });
            self.auth
                .verify(unix, request.method.as_str(), &credentials, secret)
        };
        match verdict {
            Verdict::Authenticated(user) => {
                self.guard.succeeded(now, ip, &user);
                Some(user)
            }
            Verdict::Stale(why) => {
                tracing::debug!(peer = %from.addr, user = %credentials.username, why, "stale nonce, challenged again");
                self.challenge(now, tx, request, unix, true, proxy);
                None
            }
            Verdict::Rejected(why) => {
                tracing::info!(peer = %from.addr, user = %credentials.username, why, "authentication failed");
                let method = match request.method.as_str() {
                    "REGISTER" => "REGISTER",
                    "INVITE" => "INVITE",
                    _ => "other",
                };
                self.out.push_back(Output::AuthFailed { method });
                for ban in self.guard.failed(now, ip, &credentials.username) {
                    self.banned(ban);
                }
                self.challenge(now, tx, request, unix, false, proxy);
                None
            }
        }
    }

    /// Logs a ban once, as it begins, and counts it.
    fn banned(&mut self, ban: Ban) {
        match &ban {
            Ban::Source {
                source,
                failures,
                length,
            } => {
                tracing::warn!(%source, failures, ban = ?length, "source banned after failed authentications: everything it sends is dropped until the ban ends");
            }
            Ban::User {
                user,
                failures,
                length,
            } => {
                tracing::warn!(%user, failures, ban = ?length, "user guarded after failed authentications from addresses it never used: answers from those are refused until the guard ends");
            }
        }
        self.out.push_back(Output::Banned {
            scope: match ban {
                Ban::Source { .. } => "source",
                Ban::User { .. } => "user",
            },
        });
    }

    pub(super) fn on_register(
        &mut self,
        now: Instant,
        unix: u64,
        from: Peer,
        tx: TxId,
        request: &Request,
    ) {
        let Some(user) = self.authenticate(now, from, tx, request, unix, false) else {
            return;
        };
        let to_user = request
            .headers
            .get("To")
            .and_then(NameAddr::parse)
            .and_then(|to| to.uri.user);
        if to_user.as_deref() != Some(user.as_str()) {
            self.reply(now, tx, request, 403);
            return;
        }
        // Bindings expire lazily; the users file bounds how many AoRs there can be.
        self.registrar.purge(now);
        let cseq = request.cseq().map_or(0, |c| c.number);
        let transport = match from.transport {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        };
        let outcome = self.registrar.register(
            now,
            &RegisterRequest {
                aor: user.clone(),
                headers: &request.headers,
                call_id: request.call_id(),
                cseq,
                source: from.addr,
                transport,
            },
        );
        let tag = self.ids.tag();
        let answer = match outcome {
            Ok(bindings) => {
                let mut answer = response(request, 200, "OK", Some(&tag));
                for binding in &bindings {
                    let mut contact = binding.contact.clone();
                    contact.params.retain(|(n, _)| n != "expires");
                    answer.headers.push(
                        "Contact",
                        format!("{contact};expires={}", binding.remaining(now)),
                    );
                }
                tracing::info!(%user, contacts = bindings.len(), source = %from.addr, "registered");
                answer
            }
            Err(error) => {
                let mut answer = response(request, error.status(), &error.to_string(), Some(&tag));
                if let RegisterError::TooBrief { min_expires } = error {
                    answer.headers.push("Min-Expires", min_expires.to_string());
                }
                answer
            }
        };
        self.transactions.respond(now, tx, &answer);
    }
}
