//! Certificates and CSRs: making a CSR for a set of names (rcgen, signed by our own key type),
//! reading names back from a CSR, and reading what a client needs from an issued certificate
//! (names, validity, serial, issuer, the RFC 9773 CertID).

use std::net::IpAddr;

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::error::Error;
use super::jws::b64;
use super::key::KeyPair;

/// A CSR, in both encodings.
#[derive(Debug, Clone)]
pub struct Csr {
    pub der: Vec<u8>,
    pub pem: String,
}

/// Makes a CSR for `names` (DNS names or IP addresses; the first is also the subject CN when it fits).
pub fn create_csr(key: &KeyPair, names: &[String]) -> Result<Csr, Error> {
    if names.is_empty() {
        return Err(Error::Certificate("a CSR needs at least one name".into()));
    }
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| Error::Certificate(format!("invalid name: {e}")))?;
    if names[0].parse::<IpAddr>().is_err() && names[0].len() <= 64 {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
    }
    let csr = params
        .serialize_request(key)
        .map_err(|e| Error::Certificate(format!("cannot sign CSR: {e}")))?;
    let pem = csr
        .pem()
        .map_err(|e| Error::Certificate(format!("cannot encode CSR: {e}")))?;
    Ok(Csr {
        der: csr.der().to_vec(),
        pem,
    })
}

/// Decodes every `-----BEGIN CERTIFICATE-----` block of a PEM text, in order.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Certificate(format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Certificate("no PEM certificate found".into()));
    }
    Ok(certs)
}

/// Decodes a CSR given as PEM (`CERTIFICATE REQUEST`) or DER.
pub fn csr_der(data: &[u8]) -> Result<Vec<u8>, Error> {
    if data.starts_with(b"-----") || data.iter().take(64).any(|b| *b == b'-') {
        for item in rustls_pemfile::read_all(&mut &data[..]) {
            if let Ok(rustls_pemfile::Item::Csr(der)) = item {
                return Ok(der.to_vec());
            }
        }
        return Err(Error::Certificate(
            "no PEM CERTIFICATE REQUEST block found".into(),
        ));
    }
    Ok(data.to_vec())
}

/// The names a CSR asks for: its subjectAltName entries, or the subject CN when there are none.
pub fn csr_names(der: &[u8]) -> Result<Vec<String>, Error> {
    let (_, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| Error::Certificate(format!("invalid CSR: {e}")))?;
    let mut names = Vec::new();
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                names.extend(san.general_names.iter().filter_map(general_name));
            }
        }
    }
    if names.is_empty() {
        names.extend(
            csr.certification_request_info
                .subject
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_owned)),
        );
    }
    if names.is_empty() {
        return Err(Error::Certificate(
            "the CSR names no DNS name or IP address".into(),
        ));
    }
    Ok(names)
}

fn general_name(name: &GeneralName<'_>) -> Option<String> {
    match name {
        GeneralName::DNSName(n) => Some(n.to_ascii_lowercase()),
        GeneralName::IPAddress(b) => match b.len() {
            4 => <[u8; 4]>::try_from(*b)
                .ok()
                .map(|a| IpAddr::from(a).to_string()),
            16 => <[u8; 16]>::try_from(*b)
                .ok()
                .map(|a| IpAddr::from(a).to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// What a client needs to know about an issued certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// Serial number, colon-free lowercase hex of its DER content bytes.
    pub serial_hex: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// DNS names and IP addresses from subjectAltName.
    pub names: Vec<String>,
    pub subject_cn: Option<String>,
    pub issuer_cn: Option<String>,
    /// The RFC 9773 CertID, when the certificate has an Authority Key Identifier.
    pub ari_cert_id: Option<String>,
}

impl CertInfo {
    /// Parses a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, Error> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| Error::Certificate(format!("invalid certificate: {e}")))?;
        let serial = cert.tbs_certificate.raw_serial();
        let names = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(general_name)
                    .collect()
            })
            .unwrap_or_default();
        let aki = cert
            .extensions()
            .iter()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|k| k.0)
                }
                _ => None,
            });
        let cn = |name: &x509_parser::x509::X509Name<'_>| {
            name.iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned)
        };
        Ok(Self {
            serial_hex: serial.iter().map(|b| format!("{b:02x}")).collect(),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            names,
            subject_cn: cn(cert.subject()),
            issuer_cn: cn(cert.issuer()),
            ari_cert_id: aki.map(|aki| ari_cert_id(aki, serial)),
        })
    }

    /// Parses the first certificate of a PEM chain.
    pub fn from_pem(pem: &[u8]) -> Result<Self, Error> {
        let certs = pem_certificates(pem)?;
        Self::from_der(&certs[0])
    }

    /// The validity period.
    pub fn lifetime(&self) -> time::Duration {
        self.not_after - self.not_before
    }
}

/// RFC 9773 section 4.1: base64url(AKI keyIdentifier) "." base64url(DER serial content bytes).
pub fn ari_cert_id(authority_key_id: &[u8], serial_der_bytes: &[u8]) -> String {
    format!("{}.{}", b64(authority_key_id), b64(serial_der_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::key::KeyType;

    /// RFC 9773 section 4.1's example: AKI 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01:C8:D4,
    /// serial 00:87:65:43:21.
    #[test]
    fn rfc9773_cert_id_example() {
        let aki = [
            0x69, 0x88, 0x5B, 0x6B, 0x87, 0x46, 0x40, 0x41, 0xE1, 0xB3, 0x7B, 0x84, 0x7B, 0xA0,
            0xAE, 0x2C, 0xDE, 0x01, 0xC8, 0xD4,
        ];
        let serial = [0x00, 0x87, 0x65, 0x43, 0x21];
        assert_eq!(
            ari_cert_id(&aki, &serial),
            "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
        );
    }

    #[test]
    fn csr_round_trip_keeps_dns_and_ip_names() {
        let key = KeyPair::generate(KeyType::P384);
        let names = vec![
            "www.example.org".to_owned(),
            "example.org".to_owned(),
            "192.0.2.7".to_owned(),
            "2001:db8::1".to_owned(),
        ];
        let csr = create_csr(&key, &names).unwrap();
        assert!(csr.pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert_eq!(csr_der(csr.pem.as_bytes()).unwrap(), csr.der);
        assert_eq!(csr_der(&csr.der).unwrap(), csr.der);
        assert_eq!(csr_names(&csr.der).unwrap(), names);
        // The CSR carries our public key.
        let (_, parsed) = X509CertificationRequest::from_der(&csr.der).unwrap();
        let spki = &parsed
            .certification_request_info
            .subject_pki
            .subject_public_key
            .data;
        assert_eq!(spki.as_ref(), rcgen::PublicKeyData::der_bytes(&key));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let key = KeyPair::generate(KeyType::P256);
        assert!(create_csr(&key, &[]).is_err());
        assert!(csr_names(b"\x30\x03\x02\x01\x00").is_err());
        assert!(csr_der(b"-----BEGIN NOTHING-----\n-----END NOTHING-----\n").is_err());
        assert!(pem_certificates(b"").is_err());
        assert!(CertInfo::from_der(b"garbage").is_err());
    }

    #[test]
    fn cert_info_reads_a_self_signed_certificate() {
        let key = KeyPair::generate(KeyType::P256);
        let mut params =
            rcgen::CertificateParams::new(vec!["a.test".into(), "127.0.0.1".into()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x00, 0x87, 0x65]));
        let cert = params.self_signed(&key).unwrap();
        let info = CertInfo::from_pem(cert.pem().as_bytes()).unwrap();
        assert_eq!(info.names, vec!["a.test", "127.0.0.1"]);
        assert!(info.not_after > info.not_before);
        assert!(info.serial_hex.ends_with("8765"), "{}", info.serial_hex);
    }
}
