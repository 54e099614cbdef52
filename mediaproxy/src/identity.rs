//! Who a gRPC client is, under mutual TLS: the common name (CN) of its certificate's subject.
//!
//! A client's owner name is qualified by it (`<CN>:<owner>`), so two clients with different
//! certificates can never hold, renew, see or release each other's calls, whatever owner names
//! they send. Only the subject CN is read (a short walk through the certificate's DER, RFC 5280
//! section 4.1); the TLS layer has already verified the certificate against `--tls-client-ca`.

/// One DER element: its tag, its content and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        rest = &rest[count..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The subject's common name of a DER certificate.
pub(crate) fn common_name(certificate: &[u8]) -> Option<String> {
    const CONTEXT_VERSION: u8 = 0xa0;
    const COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];
    let (_, certificate, _) = element(certificate)?;
    let (_, tbs, _) = element(certificate)?;
    let (tag, _, after_version) = element(tbs)?;
    let fields = if tag == CONTEXT_VERSION {
        after_version
    } else {
        tbs
    };
    // serialNumber, signature, issuer, validity, then subject.
    let (_, _, rest) = element(fields)?;
    let (_, _, rest) = element(rest)?;
    let (_, _, rest) = element(rest)?;
    let (_, _, rest) = element(rest)?;
    let (_, mut subject, _) = element(rest)?;
    while !subject.is_empty() {
        let (_, mut set, next) = element(subject)?;
        subject = next;
        while !set.is_empty() {
            let (_, attribute, next) = element(set)?;
            set = next;
            let (_, oid, value) = element(attribute)?;
            if oid == COMMON_NAME {
                let (_, text, _) = element(value)?;
                return std::str::from_utf8(text).ok().map(str::to_owned);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_common_name_is_read_not_the_issuers() {
        let ca = testkit::Ca::new("test");
        let leaf = ca
            .leaf("signaling-east")
            .names(&["localhost"])
            .organization("ops")
            .sign();
        assert_eq!(
            common_name(&leaf.cert_der).as_deref(),
            Some("signaling-east")
        );
        assert_eq!(common_name(ca.der()).as_deref(), Some("test CA"));
        assert_eq!(common_name(b"\x30\x03\x02\x01"), None, "truncated DER");
        assert_eq!(common_name(&[]), None);
    }
}
