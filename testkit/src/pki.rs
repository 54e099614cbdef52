//! A test certificate authority: the CA of a test's mutual TLS, and the server and client
//! certificates it signs, in memory ([`Ca`]) or as PEM files in a scratch folder ([`Pki`]).

use crate::scratch::Scratch;

/// A self-signed CA whose common name is `<name> CA`.
pub struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
    der: Vec<u8>,
}

/// A certificate the CA signed, and its private key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
}

/// A certificate about to be signed: [`Ca::leaf`], then the builder's settings, then
/// [`LeafRequest::sign`].
pub struct LeafRequest<'a> {
    ca: &'a Ca,
    common_name: String,
    names: Vec<String>,
    organization: Option<String>,
    expired: bool,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("a key pair");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("a self-signed CA");
        Self {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The CA's certificate, DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// A certificate for the subject common name `cn`, valid for no host name until
    /// [`LeafRequest::names`] says which.
    pub fn leaf(&self, cn: &str) -> LeafRequest<'_> {
        LeafRequest {
            ca: self,
            common_name: cn.to_owned(),
            names: Vec::new(),
            organization: None,
            expired: false,
        }
    }
}

impl LeafRequest<'_> {
    /// Host names or IP addresses the certificate is valid for.
    pub fn names(mut self, names: &[&str]) -> Self {
        self.names = names.iter().map(|n| (*n).to_owned()).collect();
        self
    }

    /// An organization name in the subject, before the common name.
    pub fn organization(mut self, organization: &str) -> Self {
        self.organization = Some(organization.to_owned());
        self
    }

    /// Valid only in 2020: expired for any test run.
    pub fn expired(mut self) -> Self {
        self.expired = true;
        self
    }

    pub fn sign(self) -> Leaf {
        let key = rcgen::KeyPair::generate().expect("a key pair");
        let mut params = rcgen::CertificateParams::new(self.names).expect("valid names");
        if let Some(organization) = self.organization {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, organization);
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, self.common_name);
        if self.expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params
            .signed_by(&key, &self.ca.issuer)
            .expect("signed by the CA");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        }
    }
}

/// A CA and what it signs, as PEM files in a scratch folder: `ca.pem`, and `<cn>.pem` with
/// `<cn>.key` for each certificate issued.
pub struct Pki {
    dir: Scratch,
    ca: Ca,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let dir = Scratch::new(&format!("pki-{name}"));
        let ca = Ca::new(name);
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("ca.pem written");
        Self { dir, ca }
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// Issues `<cn>.pem` and `<cn>.key`, valid for 127.0.0.1 and localhost; returns them.
    pub fn issue(&self, cn: &str) -> Leaf {
        self.issue_for(cn, &["localhost", "127.0.0.1"])
    }

    /// Issues `<cn>.pem` and `<cn>.key`, valid for `names` (host names or IP addresses).
    pub fn issue_for(&self, cn: &str, names: &[&str]) -> Leaf {
        self.write(cn, self.ca.leaf(cn).names(names).sign())
    }

    /// Writes `leaf` as `<file>.pem` and `<file>.key`; returns it.
    pub fn write(&self, file: &str, leaf: Leaf) -> Leaf {
        std::fs::write(self.dir.join(&format!("{file}.pem")), &leaf.cert_pem).expect("written");
        std::fs::write(self.dir.join(&format!("{file}.key")), &leaf.key_pem).expect("written");
        leaf
    }

    /// The path of one of the folder's files, as a command-line argument.
    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().expect("UTF-8 path").to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pki_writes_a_ca_and_the_certificates_it_signs() {
        let pki = Pki::new("testkit-self-test");
        let leaf = pki.issue("server");
        assert!(leaf.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(leaf.key_pem.contains("PRIVATE KEY"));
        for file in ["ca.pem", "server.pem", "server.key"] {
            let text = std::fs::read_to_string(pki.path(file)).unwrap();
            assert!(text.starts_with("-----BEGIN "), "{file}");
        }
        assert_ne!(leaf.cert_der, pki.ca().der(), "signed, not self-signed");
    }
}
