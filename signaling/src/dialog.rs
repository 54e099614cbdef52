//! SIP dialogs (RFC 3261 section 12): the state two user agents share, and the requests built
//! from it.
//!
//! A B2BUA call bridges two dialogs: the caller's, where we are the UAS ([`Dialog::uas`]),
//! and the callee's, where we are the UAC ([`Dialog::uac`], early until the callee's 2xx
//! [`Dialog::confirm`]s it). Every in-dialog request (BYE, re-INVITE, OPTIONS, the ACK of a
//! 2xx) is built by [`Dialog::request`] from the dialog's Call-ID, tags, CSeq, route set and
//! remote target, never by hand.

use std::net::SocketAddr;

use crate::sip::header::NameAddr;
use crate::sip::message::{Headers, Method, Request, Response};
use crate::sip::uri::host_text;
use crate::sip::{Peer, SipCallId, Transport};

/// Our own Via for a request leaving by `transport` with `branch` (RFC 3261 section 8.1.1.7),
/// asking for `rport` (RFC 3581).
pub(crate) fn via(local: SocketAddr, transport: Transport, branch: &str) -> String {
    format!(
        "SIP/2.0/{} {}:{};branch={branch};rport",
        transport.as_str(),
        host_text(&local.ip().to_string()),
        local.port()
    )
}

/// Our Contact: where the peer sends requests of the dialog.
pub(crate) fn contact(local: SocketAddr) -> String {
    format!(
        "<sip:{}:{}>",
        host_text(&local.ip().to_string()),
        local.port()
    )
}

/// The To or From value with `tag` set (replacing any tag it had).
fn with_tag(value: &str, tag: &str) -> String {
    match NameAddr::parse(value) {
        Some(mut name) => {
            name.params.retain(|(n, _)| n != "tag");
            name.set_tag(tag);
            name.to_string()
        }
        None => format!("{value};tag={tag}"),
    }
}

fn tag_of(value: Option<&str>) -> Option<String> {
    value
        .and_then(NameAddr::parse)
        .and_then(|n| n.tag().map(str::to_owned))
}

/// Why an in-dialog request was refused before reaching the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DialogError {
    /// RFC 3261 section 12.2.2: a CSeq lower than the last one is answered 500.
    #[error("CSeq out of order")]
    CSeqOutOfOrder,
}

impl DialogError {
    pub(crate) fn status(self) -> u16 {
        match self {
            Self::CSeqOutOfOrder => 500,
        }
    }
}

/// One dialog, seen from our side.
#[derive(Debug, Clone)]
pub(crate) struct Dialog {
    pub(crate) call_id: SipCallId,
    pub(crate) local_tag: String,
    pub(crate) remote_tag: Option<String>,
    /// Our URI as the From of our requests (name-addr without tag).
    local_uri: String,
    /// The peer's URI as the To of our requests (name-addr without tag).
    remote_uri: String,
    pub(crate) local_cseq: u32,
    pub(crate) remote_cseq: Option<u32>,
    /// Route set, in the order our requests carry it (RFC 3261 sections 12.1.1, 12.1.2).
    pub(crate) route_set: Vec<String>,
    /// Request-URI of our requests: the peer's Contact.
    pub(crate) remote_target: String,
    /// Where the peer's messages come from and ours go when no route set says otherwise.
    pub(crate) peer: Peer,
}

impl Dialog {
    /// The dialog of a request we answer (RFC 3261 section 12.1.1): the Record-Route in order
    /// is the route set, the Contact the remote target, its CSeq the remote sequence.
    pub(crate) fn uas(request: &Request, local_tag: String, peer: Peer) -> Self {
        let from = request.headers.get("From").unwrap_or("");
        let remote_target = request
            .headers
            .get("Contact")
            .and_then(NameAddr::parse)
            .map(|c| c.uri.to_string())
            .or_else(|| NameAddr::parse(from).map(|f| f.uri.to_string()))
            .unwrap_or_else(|| request.uri.clone());
        Self {
            call_id: SipCallId::new(request.call_id()),
            local_tag,
            remote_tag: tag_of(Some(from)),
            local_uri: without_tag(request.headers.get("To").unwrap_or("")),
            remote_uri: without_tag(from),
            local_cseq: 0,
            remote_cseq: request.cseq().map(|c| c.number),
            route_set: request
                .headers
                .values("Record-Route")
                .map(str::to_owned)
                .collect(),
            remote_target,
            peer,
        }
    }

    /// The early dialog of a request we send: `local_uri` and `remote_uri` are the From and To
    /// (name-addr, no tags), `request_uri` the first remote target.
    pub(crate) fn uac(
        call_id: SipCallId,
        local_tag: String,
        local_uri: String,
        remote_uri: String,
        request_uri: String,
        local_cseq: u32,
        peer: Peer,
    ) -> Self {
        Self {
            call_id,
            local_tag,
            remote_tag: None,
            local_uri,
            remote_uri,
            local_cseq,
            remote_cseq: None,
            route_set: Vec::new(),
            remote_target: request_uri,
            peer,
        }
    }

    /// Our From: our URI with our tag.
    pub(crate) fn local_header(&self) -> String {
        with_tag(&self.local_uri, &self.local_tag)
    }

    /// Our To: the peer's URI with its tag once known.
    pub(crate) fn remote_header(&self) -> String {
        match &self.remote_tag {
            Some(tag) => with_tag(&self.remote_uri, tag),
            None => self.remote_uri.clone(),
        }
    }

    /// An early dialog from a provisional response (RFC 3261 section 12.1.2): the peer's To
    /// tag, and its Contact and Record-Route when it gives them (the PRACK of a reliable
    /// provisional travels on them).
    pub(crate) fn early(&mut self, response: &Response) {
        if let Some(tag) = tag_of(response.headers.get("To")) {
            self.remote_tag = Some(tag);
        }
        self.learn_target(response);
        let route_set = route_set_of(response);
        if !route_set.is_empty() {
            self.route_set = route_set;
        }
    }

    /// The callee's 2xx makes the dialog (RFC 3261 section 12.1.2): its To tag, its Contact
    /// as the remote target, its Record-Route reversed as the route set.
    pub(crate) fn confirm(&mut self, response: &Response) {
        self.remote_tag = tag_of(response.headers.get("To"));
        self.learn_target(response);
        self.route_set = route_set_of(response);
    }

    /// The response's Contact, when it has one, as the remote target.
    fn learn_target(&mut self, response: &Response) {
        if let Some(target) = response
            .headers
            .get("Contact")
            .and_then(NameAddr::parse)
            .map(|c| c.uri.to_string())
        {
            self.remote_target = target;
        }
    }

    /// Checks an in-dialog request's CSeq (RFC 3261 section 12.2.2) and remembers it. ACK and
    /// CANCEL repeat the CSeq of their INVITE and are not checked.
    pub(crate) fn receive(&mut self, request: &Request) -> Result<(), DialogError> {
        if matches!(request.method, Method::Ack | Method::Cancel) {
            return Ok(());
        }
        let Some(number) = request.cseq().map(|c| c.number) else {
            return Ok(());
        };
        if let Some(last) = self.remote_cseq
            && number < last
        {
            return Err(DialogError::CSeqOutOfOrder);
        }
        self.remote_cseq = Some(number);
        Ok(())
    }

    /// Where a request of this dialog goes: the first hop of the route set when it is a
    /// loose router with an IP address (RFC 3261 section 12.2.1.1), else the dialog's peer.
    /// (Strict routers and host names are not supported: the request then goes to the peer.)
    pub(crate) fn next_hop(&self) -> Peer {
        let Some(first) = self.route_set.first().and_then(|r| NameAddr::parse(r)) else {
            return self.peer;
        };
        if first.uri.param("lr").is_none() {
            return self.peer;
        }
        let Some(ip) = first.uri.ip() else {
            return self.peer;
        };
        let transport = if first.uri.transport() == "tcp" {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        Peer {
            transport,
            addr: SocketAddr::new(ip, first.uri.port.unwrap_or(5060)),
        }
    }

    /// A request within the dialog (RFC 3261 section 12.2.1.1) and where it goes. `cseq`
    /// None takes the next local CSeq; the ACK of a 2xx passes its INVITE's.
    pub(crate) fn request(
        &mut self,
        method: Method,
        cseq: Option<u32>,
        local: SocketAddr,
        branch: &str,
    ) -> (Peer, Request) {
        let cseq = cseq.unwrap_or_else(|| {
            self.local_cseq += 1;
            self.local_cseq
        });
        let peer = self.next_hop();
        let mut headers = Headers::new();
        headers.push("Via", via(local, peer.transport, branch));
        headers.push("Max-Forwards", "70");
        for route in &self.route_set {
            headers.push("Route", route.as_str());
        }
        headers.push("From", self.local_header());
        headers.push("To", self.remote_header());
        headers.push("Call-ID", self.call_id.to_string());
        headers.push("CSeq", format!("{cseq} {method}"));
        let request = Request {
            method,
            uri: self.remote_target.clone(),
            headers,
            body: Vec::new(),
        };
        (peer, request)
    }
}

impl Dialog {
    /// An INVITE of this dialog (the initial one of an early dialog, or a re-INVITE) with our
    /// Contact and `body` of `content_type`.
    pub(crate) fn invite(
        &mut self,
        local: SocketAddr,
        branch: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (Peer, Request) {
        let (peer, mut invite) = self.request(Method::Invite, None, local, branch);
        invite.headers.push("Contact", contact(local));
        if !body.is_empty() {
            invite.headers.push("Content-Type", content_type);
        }
        invite.body = body;
        (peer, invite)
    }
}

/// A response's Record-Route reversed: the route set of the UAC's dialog (RFC 3261 section
/// 12.1.2).
fn route_set_of(response: &Response) -> Vec<String> {
    let mut route_set: Vec<String> = response
        .headers
        .values("Record-Route")
        .map(str::to_owned)
        .collect();
    route_set.reverse();
    route_set
}

fn without_tag(value: &str) -> String {
    match NameAddr::parse(value) {
        Some(mut name) => {
            name.params.retain(|(n, _)| n != "tag");
            name.to_string()
        }
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{Message, parse};

    fn peer(port: u16) -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: SocketAddr::from(([192, 0, 2, 1], port)),
        }
    }

    fn message(text: &str) -> Message {
        parse(text.replace('\n', "\r\n").as_bytes()).unwrap()
    }

    fn invite() -> Request {
        let Message::Request(request) = message(
            "INVITE sip:bob@192.0.2.9 SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.1:5061;branch=z9hG4bK1\nRecord-Route: <sip:192.0.2.50;lr>\nRecord-Route: <sip:192.0.2.51;lr>\nFrom: \"Alice\" <sip:alice@example.com>;tag=a1\nTo: <sip:bob@example.com>\nCall-ID: d1\nCSeq: 7 INVITE\nContact: <sip:alice@192.0.2.1:5061>\nContent-Length: 0\n\n",
        ) else {
            unreachable!()
        };
        request
    }

    #[test]
    fn the_uas_dialog_sends_its_requests_back_along_the_route_set_rfc3261_12_1_1() {
        let local: SocketAddr = "192.0.2.9:5060".parse().unwrap();
        let mut dialog = Dialog::uas(&invite(), "ours".into(), peer(5061));
        let (to, bye) = dialog.request(Method::Bye, None, local, "z9hG4bKb1");
        assert_eq!(
            to.addr,
            "192.0.2.50:5060".parse().unwrap(),
            "first loose route"
        );
        assert_eq!(bye.uri, "sip:alice@192.0.2.1:5061");
        assert_eq!(
            bye.headers.all("Route").collect::<Vec<_>>(),
            ["<sip:192.0.2.50;lr>", "<sip:192.0.2.51;lr>"]
        );
        assert_eq!(
            bye.headers.get("From"),
            Some("<sip:bob@example.com>;tag=ours")
        );
        assert_eq!(
            bye.headers.get("To"),
            Some("\"Alice\" <sip:alice@example.com>;tag=a1")
        );
        assert_eq!(bye.headers.get("CSeq"), Some("1 BYE"));
        let (_, options) = dialog.request(Method::Options, None, local, "z9hG4bKb2");
        assert_eq!(options.headers.get("CSeq"), Some("2 OPTIONS"));
    }

    #[test]
    fn the_uac_dialog_is_confirmed_by_the_2xx_rfc3261_12_1_2() {
        let local: SocketAddr = "192.0.2.9:5060".parse().unwrap();
        let mut dialog = Dialog::uac(
            "b-leg".into(),
            "mine".into(),
            "<sip:alice@192.0.2.9:5060>".into(),
            "<sip:bob@example.com>".into(),
            "sip:bob@192.0.2.2".into(),
            1,
            peer(5062),
        );
        let Message::Response(ok) = message(
            "SIP/2.0 200 OK\nVia: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKi\nRecord-Route: <sip:192.0.2.61;lr>\nRecord-Route: <sip:192.0.2.60;lr>\nFrom: <sip:alice@192.0.2.9:5060>;tag=mine\nTo: <sip:bob@example.com>;tag=theirs\nCall-ID: b-leg\nCSeq: 1 INVITE\nContact: <sip:bob@192.0.2.2:5070>\nContent-Length: 0\n\n",
        ) else {
            unreachable!()
        };
        dialog.confirm(&ok);
        let (to, ack) = dialog.request(Method::Ack, Some(1), local, "z9hG4bKa");
        assert_eq!(to.addr, "192.0.2.60:5060".parse().unwrap(), "reversed");
        assert_eq!(ack.uri, "sip:bob@192.0.2.2:5070");
        assert_eq!(ack.headers.get("CSeq"), Some("1 ACK"));
        assert_eq!(
            ack.headers.get("To"),
            Some("<sip:bob@example.com>;tag=theirs")
        );
        let (_, bye) = dialog.request(Method::Bye, None, local, "z9hG4bKb");
        assert_eq!(bye.headers.get("CSeq"), Some("2 BYE"));
    }

    #[test]
    fn a_request_with_an_older_cseq_is_refused_rfc3261_12_2_2() {
        let mut dialog = Dialog::uas(&invite(), "ours".into(), peer(5061));
        let mut request = invite();
        request.headers.set("CSeq", "6 INVITE");
        assert_eq!(dialog.receive(&request), Err(DialogError::CSeqOutOfOrder));
        request.headers.set("CSeq", "8 INVITE");
        assert_eq!(dialog.receive(&request), Ok(()));
        request.method = Method::Ack;
        request.headers.set("CSeq", "1 ACK");
        assert_eq!(dialog.receive(&request), Ok(()), "ACK is not checked");
    }
}
