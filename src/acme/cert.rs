//! Certificates and CSRs: making a CSR for a set of names (rcgen, signed by our own key type),
//! reading names back from a CSR, and reading what a client needs from an issued certificate
//! (names, validity, serial, issuer, the RFC 9773 CertID).

use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
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
    /// DER encoding.
    pub der: Vec<u8>,
    /// PEM encoding.
    pub pem: String,
}

/// Makes a CSR for `names` (DNS names or IP addresses; the first is also the subject CN when it fits).
pub fn create_csr(key: &KeyPair, names: &[String]) -> Result<Csr, Error> {
    if names.is_empty() {
        return Err(Error::Certificate("a CSR needs at least one name".into()));
    }
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| Error::Certificate(format!("invalid name: {e}")))?;
    // RFC 8555 section 7.4: the CSR names only the order's identifiers. rcgen's default subject
    // ("CN=rcgen self signed cert") would be one more name; the subject is empty, or the CN is
    // the first name when it is a DNS name that fits (64 characters).
    params.distinguished_name = rcgen::DistinguishedName::new();
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
    let certs = CertificateDer::pem_slice_iter(pem)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Certificate(format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Certificate("no PEM certificate found".into()));
    }
    Ok(certs)
}

/// Decodes a certificate chain that must hold nothing but `CERTIFICATE` blocks (a CA that
/// slips a key or anything else into a chain is refused), leaf first.
pub fn pem_chain_strict(pem: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    let sections = <(SectionKind, Vec<u8>)>::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Certificate(format!("invalid PEM: {e}")))?;
    // Sections of a kind the decoder does not know are skipped by it: count the markers too.
    let markers = pem
        .split(|b| *b == b'\n')
        .filter(|l| l.starts_with(b"-----BEGIN "))
        .count();
    if markers != sections.len() {
        return Err(Error::Certificate(format!(
            "the chain holds {markers} PEM blocks of which only {} could be decoded",
            sections.len()
        )));
    }
    let mut out = Vec::new();
    for (kind, der) in sections {
        if kind != SectionKind::Certificate {
            return Err(Error::Certificate(format!(
                "the chain holds a {kind:?} block; only certificates are accepted"
            )));
        }
        out.push(der);
    }
    if out.is_empty() {
        return Err(Error::Certificate("no PEM certificate found".into()));
    }
    Ok(out)
}

/// Encodes DER as a PEM block with `label`, 64 characters a line.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Decodes a CSR given as PEM (`CERTIFICATE REQUEST`) or DER.
pub fn csr_der(data: &[u8]) -> Result<Vec<u8>, Error> {
    // DER is a SEQUENCE (0x30); anything else must be PEM text. (Looking for a '-' among the
    // first bytes, as before, took DER whose key bytes happen to hold 0x2d for PEM.)
    if data.first() != Some(&0x30) {
        return CertificateSigningRequestDer::from_pem_slice(data)
            .map(|c| c.as_ref().to_vec())
            .map_err(|e| {
                Error::Certificate(format!("no usable PEM CERTIFICATE REQUEST block: {e}"))
            });
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
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// DNS names and IP addresses from subjectAltName.
    pub names: Vec<String>,
    /// The subject common name, if any.
    pub subject_cn: Option<String>,
    /// The issuer common name, if any.
    pub issuer_cn: Option<String>,
    /// The RFC 9773 CertID, when the certificate has an Authority Key Identifier.
    pub ari_cert_id: Option<String>,
}

/// The key type of a certificate's public key (a DER certificate), when it is one this client
/// can issue: ECDSA P-256 or P-384, or RSA (rounded up to 2048, 3072 or 4096 bits).
pub fn public_key_type(der: &[u8]) -> Option<super::key::KeyType> {
    use super::key::KeyType;
    use x509_parser::public_key::PublicKey;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let spki = cert.public_key();
    match spki.parsed().ok()? {
        PublicKey::RSA(rsa) => Some(match rsa.key_size() {
            0..=2048 => KeyType::Rsa2048,
            2049..=3072 => KeyType::Rsa3072,
            _ => KeyType::Rsa4096,
        }),
        PublicKey::EC(_) => {
            let curve = spki.algorithm.parameters.as_ref()?.as_oid().ok()?;
            match curve.to_id_string().as_str() {
                "1.2.840.10045.3.1.7" => Some(KeyType::P256),
                "1.3.132.0.34" => Some(KeyType::P384),
                _ => None,
            }
        }
        _ => None,
    }
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

/// Lowercases, deduplicates (keeping order) and checks names: DNS names (wildcards allowed) or
/// IP addresses.
pub fn normalize_names(names: &[String]) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        let n = name.trim().trim_end_matches('.').to_ascii_lowercase();
        let valid = n.parse::<std::net::IpAddr>().is_ok() || super::types::is_valid_dns_name(&n);
        if !valid {
            return Err(Error::Certificate(format!(
                "{name:?} is not a DNS name or IP address"
            )));
        }
        if !out.contains(&n) {
            out.push(n);
        }
    }
    if out.is_empty() {
        return Err(Error::Certificate("no names given".into()));
    }
    Ok(out)
}

/// How far in the future an issued certificate's notBefore may lie (clock skew between us and
/// the CA).
pub const NOT_BEFORE_SKEW: time::Duration = time::Duration::minutes(10);

/// True when `key` is the private key of the certificate `cert_der` (their public keys are the
/// same).
pub fn key_matches(cert_der: &[u8], key: &super::KeyPair) -> Result<bool, Error> {
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| Error::Certificate(format!("invalid certificate: {e}")))?;
    let csr = create_csr(key, &["key-check.invalid".to_owned()])?;
    let (_, req) = X509CertificationRequest::from_der(&csr.der)
        .map_err(|e| Error::Certificate(format!("invalid CSR: {e}")))?;
    Ok(cert.public_key().raw == req.certification_request_info.subject_pki.raw)
}

/// Checks what a CA returned before it goes live: the chain holds only certificates, the leaf's
/// names are exactly the order's (no more, no fewer), its public key is the CSR's, it is valid
/// now (a notBefore at most [`NOT_BEFORE_SKEW`] ahead), and each certificate is signed by the
/// next one in the chain.
pub fn check_issued(
    ders: &[Vec<u8>],
    names: &[String],
    csr_der: &[u8],
    now: OffsetDateTime,
) -> Result<(), Error> {
    let bad = |why: String| Error::BadIssuance(why);
    if ders.is_empty() {
        return Err(bad("the chain holds no certificate".into()));
    }
    let certs: Vec<X509Certificate<'_>> = ders
        .iter()
        .map(|d| X509Certificate::from_der(d).map(|(_, c)| c))
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("a certificate of the chain does not parse: {e}")))?;
    let leaf = &certs[0];
    let info = CertInfo::from_der(&ders[0])?;
    let mut have: Vec<String> = info.names.iter().map(|n| n.to_ascii_lowercase()).collect();
    let mut want: Vec<String> = names
        .iter()
        .map(|n| {
            let n = n.trim_end_matches('.').to_ascii_lowercase();
            n.parse::<IpAddr>().map_or(n, |ip| ip.to_string())
        })
        .collect();
    have.sort();
    have.dedup();
    want.sort();
    want.dedup();
    if have != want {
        return Err(bad(format!(
            "it names {} but the order was for {}",
            have.join(", "),
            want.join(", ")
        )));
    }
    let (_, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|e| Error::Certificate(format!("invalid CSR: {e}")))?;
    if leaf.public_key().raw != csr.certification_request_info.subject_pki.raw {
        return Err(bad("its public key is not the CSR's".into()));
    }
    if info.not_before > now + NOT_BEFORE_SKEW {
        return Err(bad(format!("it is not valid before {}", info.not_before)));
    }
    if info.not_after <= now {
        return Err(bad(format!("it expired at {}", info.not_after)));
    }
    for (i, pair) in certs.windows(2).enumerate() {
        pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .map_err(|e| {
                bad(format!(
                    "certificate {} of the chain is not signed by certificate {}: {e}",
                    i + 1,
                    i + 2
                ))
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::key::KeyType;

    fn serial() -> rcgen::SerialNumber {
        use rand_core::RngCore;
        let mut b = [0u8; 16];
        rand_core::OsRng.fill_bytes(&mut b);
        b[0] &= 0x7f;
        rcgen::SerialNumber::from_slice(&b)
    }

    /// A CA (PEM) and, for `names`, a leaf for `leaf_key` valid from `nb` to `na` (offsets from
    /// now), signed by that CA.
    fn issue(
        names: &[&str],
        leaf_key: &KeyPair,
        nb: time::Duration,
        na: time::Duration,
    ) -> (String, String) {
        let ca_key = KeyPair::generate(KeyType::P256);
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.serial_number = Some(serial());
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.serial_number = Some(serial());
        let now = OffsetDateTime::now_utc();
        p.not_before = now + nb;
        p.not_after = now + na;
        let leaf = p.signed_by(leaf_key, &issuer).unwrap();
        (leaf.pem(), ca_cert.pem())
    }

    #[test]
    fn issued_certificates_are_checked_before_they_go_live() {
        let key = KeyPair::generate(KeyType::P256);
        let names = vec!["a.test".to_string(), "www.a.test".to_string()];
        let csr = create_csr(&key, &names).unwrap();
        let day = time::Duration::days(1);
        let now = OffsetDateTime::now_utc();
        // As a download does: the PEM parsed strictly into a chain, then checked.
        let check = |chain: &str| {
            let chain =
                super::super::CertificateChain::parse(chain.to_owned(), "https://ca.test/c")?;
            check_issued(&chain.certificates, &names, &csr.der, now)
        };
        let (leaf, ca) = issue(&["a.test", "www.a.test"], &key, -day, 90 * day);
        check(&format!("{leaf}{ca}")).unwrap();
        let refused = |chain: String, why: &str| {
            let e = check(&chain).unwrap_err().to_string();
            assert!(e.contains(why), "{why:?} not in {e}");
        };
        let (more, ca2) = issue(&["a.test", "www.a.test", "evil.test"], &key, -day, 90 * day);
        refused(format!("{more}{ca2}"), "evil.test");
        let (fewer, ca3) = issue(&["a.test"], &key, -day, 90 * day);
        refused(format!("{fewer}{ca3}"), "order was for");
        let other = KeyPair::generate(KeyType::P256);
        let (stranger, ca4) = issue(&["a.test", "www.a.test"], &other, -day, 90 * day);
        refused(format!("{stranger}{ca4}"), "public key");
        let (future, ca5) = issue(&["a.test", "www.a.test"], &key, day, 90 * day);
        refused(format!("{future}{ca5}"), "not valid before");
        let (expired, ca6) = issue(&["a.test", "www.a.test"], &key, -90 * day, -day);
        refused(format!("{expired}{ca6}"), "expired");
        // The right leaf with another CA's certificate as its chain.
        refused(format!("{leaf}{ca2}"), "not signed by");
        refused(
            format!(
                "{leaf}{ca}-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                "AAAA"
            ),
            "PrivateKey",
        );
        refused(
            format!("{leaf}-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n{ca}"),
            "",
        );
    }

    #[test]
    fn csr_subject_names_only_the_order() {
        let key = KeyPair::generate(KeyType::P256);
        let subject = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            let csr = create_csr(&key, &names).unwrap();
            let (_, req) = X509CertificationRequest::from_der(&csr.der).unwrap();
            let cns: Vec<String> = req
                .certification_request_info
                .subject
                .iter_common_name()
                .filter_map(|c| c.as_str().ok().map(str::to_owned))
                .collect();
            (
                cns,
                req.certification_request_info.subject.iter().count(),
                csr_names(&csr.der).unwrap(),
            )
        };
        assert_eq!(
            subject(&["a.test", "b.test"]),
            (
                vec!["a.test".to_string()],
                1,
                vec!["a.test".to_string(), "b.test".to_string()]
            )
        );
        let ip = subject(&["192.0.2.1"]);
        assert_eq!((ip.0.len(), ip.1), (0, 0), "an IP CSR has an empty subject");
        let long = format!("{}.example.org", "a".repeat(60));
        let l = subject(&[&long, "b.test"]);
        assert_eq!(
            (l.0.len(), l.1),
            (0, 0),
            "a name over 64 characters is not a CN"
        );
        assert_eq!(l.2, vec![long, "b.test".to_string()]);
    }

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
    fn der_csrs_whose_bytes_hold_a_dash_are_still_der() {
        // A hyphenated name puts a '-' among the first bytes of the DER (the subject comes
        // before the key), deterministically; a PEM detector looking for '-' must not bite.
        let names = vec!["x-y.example.org".to_owned()];
        let csr = create_csr(&KeyPair::generate(KeyType::P256), &names).unwrap();
        assert!(
            csr.der.iter().take(64).any(|b| *b == b'-'),
            "the subject no longer comes first"
        );
        assert_eq!(csr_der(&csr.der).unwrap(), csr.der);
        let commented = format!("# a CSR\n{}", csr.pem);
        assert_eq!(csr_der(commented.as_bytes()).unwrap(), csr.der);
        assert!(csr_der(b"garbage").is_err());
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
    fn public_key_type_names_each_key_we_issue() {
        for kt in [KeyType::P256, KeyType::P384, KeyType::Rsa2048] {
            let key = KeyPair::generate(kt);
            let mut params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
            params.serial_number = Some(rcgen::SerialNumber::from_slice(&[7]));
            let cert = params.self_signed(&key).unwrap();
            assert_eq!(public_key_type(cert.der()), Some(kt), "{kt}");
        }
        assert_eq!(public_key_type(b"not a certificate"), None);
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

    #[test]
    fn names_are_normalized_and_checked() {
        let n = normalize_names(&[
            "WWW.Example.org.".into(),
            "www.example.org".into(),
            "*.example.org".into(),
            "::1".into(),
        ])
        .unwrap();
        assert_eq!(n, vec!["www.example.org", "*.example.org", "::1"]);
        for bad in [
            "",
            "a..b",
            "-a.b",
            "a b",
            "ex*ample.org",
            &format!("{}.org", "a".repeat(64)),
        ] {
            assert!(
                normalize_names(&[bad.to_owned()]).is_err(),
                "{bad:?} accepted"
            );
        }
    }
}
