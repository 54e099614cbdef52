//! Matching messages to transactions (RFC 3261 sections 17.1.3 and 17.2.3).

use crate::ids::BRANCH_COOKIE;
use crate::sip::header::{NameAddr, Via};
use crate::sip::message::{Headers, Method, Request, Response};

/// The key of one transaction. Client and server keys never collide: they carry their side.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key(String);

/// The method a transaction is keyed by: an ACK belongs to the INVITE it acknowledges.
fn keyed_method(method: &Method) -> &str {
    match method {
        Method::Ack => "INVITE",
        other => other.as_str(),
    }
}

fn top_via(headers: &Headers) -> Option<Via> {
    headers.values("Via").next().and_then(Via::parse)
}

impl Key {
    /// A client transaction: the branch of the top Via and the CSeq method (17.1.3). A
    /// CANCEL shares its INVITE's branch and is told apart by the method.
    pub(crate) fn client(branch: &str, method: &Method) -> Self {
        Self(format!("c {branch} {}", keyed_method(method)))
    }

    /// The client key a response belongs to.
    pub(crate) fn of_response(response: &Response) -> Option<Self> {
        let via = top_via(&response.headers)?;
        let cseq = response.cseq()?;
        Some(Self::client(via.branch()?, &cseq.method))
    }

    /// A server transaction (17.2.3): the branch, the sent-by of the top Via and the method
    /// (ACK as INVITE). A branch without the RFC 3261 cookie comes from an RFC 2543 peer:
    /// then the Request-URI, From tag, Call-ID, CSeq number and the whole top Via identify
    /// it, as section 17.2.3 describes for backwards compatibility.
    pub(crate) fn server(request: &Request) -> Option<Self> {
        let via = top_via(&request.headers)?;
        let method = keyed_method(&request.method);
        let sent_by = format!(
            "{}:{}",
            via.host.to_ascii_lowercase(),
            via.port.unwrap_or(0)
        );
        match via.branch() {
            Some(branch) if branch.starts_with(BRANCH_COOKIE) => {
                Some(Self(format!("s {branch} {sent_by} {method}")))
            }
            _ => {
                let cseq = request.cseq()?;
                let from_tag = request
                    .headers
                    .get("From")
                    .and_then(NameAddr::parse)
                    .and_then(|f| f.tag().map(str::to_owned))
                    .unwrap_or_default();
                // The ACK of a non-2xx repeats the INVITE's Request-URI and top Via.
                let raw_via = request.headers.values("Via").next().unwrap_or_default();
                Some(Self(format!(
                    "2543 {} {from_tag} {} {} {raw_via} {method}",
                    request.uri,
                    request.call_id(),
                    cseq.number
                )))
            }
        }
    }

    /// The INVITE server transaction a CANCEL targets (RFC 3261 section 9.2: same branch,
    /// sent-by and, for RFC 2543 peers, the same identifying fields).
    pub(crate) fn cancelled_invite(cancel: &Request) -> Option<Self> {
        let mut invite = cancel.clone();
        invite.method = Method::Invite;
        Self::server(&invite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{Message, parse};

    fn request(text: &str) -> Request {
        match parse(text.replace('\n', "\r\n").as_bytes()).unwrap() {
            Message::Request(r) => r,
            Message::Response(_) => unreachable!(),
        }
    }

    fn message(method: &str, cseq: &str, via: &str) -> Request {
        request(&format!(
            "{method} sip:bob@192.0.2.2 SIP/2.0\nVia: {via}\nFrom: <sip:alice@192.0.2.1>;tag=f1\nTo: <sip:bob@192.0.2.2>\nCall-ID: k1\nCSeq: {cseq}\nContent-Length: 0\n\n"
        ))
    }

    #[test]
    fn an_ack_and_a_cancel_find_their_invite_rfc3261_17_2_3() {
        let via = "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776";
        let invite = Key::server(&message("INVITE", "1 INVITE", via));
        assert_eq!(invite, Key::server(&message("ACK", "1 ACK", via)));
        let cancel = message("CANCEL", "1 CANCEL", via);
        assert_ne!(
            Key::server(&cancel),
            invite,
            "the CANCEL is its own transaction"
        );
        assert_eq!(Key::cancelled_invite(&cancel), invite);
        // Same branch from another sent-by is another transaction.
        let other = "SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK776";
        assert_ne!(Key::server(&message("INVITE", "1 INVITE", other)), invite);
    }

    #[test]
    fn rfc2543_peers_are_matched_by_their_identifying_fields() {
        let via = "SIP/2.0/UDP 192.0.2.1:5060";
        let invite = Key::server(&message("INVITE", "4 INVITE", via)).unwrap();
        assert_eq!(
            Key::server(&message("ACK", "4 ACK", via)),
            Some(invite.clone())
        );
        assert_ne!(
            Key::server(&message("INVITE", "5 INVITE", via)),
            Some(invite)
        );
    }
}
