//! Key pairs for both jobs a client has: signing JWS requests as an account and signing CSRs for
//! a certificate. ECDSA P-256 and P-384 (RustCrypto's p256/p384) and RSA 2048/3072/4096
//! (aws-lc-rs, AWS-LC's constant-time RSA, PKCS#1 v1.5 with SHA-256: RS256, as certbot's account
//! keys and the RSA certificates older clients need); rcgen sees our keys through its
//! `SigningKey` trait.
//!
//! RustCrypto's `rsa` crate is not used: its private-key operations leak timing
//! (RUSTSEC-2023-0071, the Marvin attack, no fixed release); `deny.toml` bans it.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;

use p256::ecdsa::signature::Signer;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rand_core::OsRng;

use super::error::Error;

/// The algorithm and size of a key pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// ECDSA P-256 with SHA-256 (`ES256`).
    #[default]
    P256,
    /// ECDSA P-384 with SHA-384 (`ES384`).
    P384,
    /// RSA with a 2048-bit modulus (`RS256`).
    Rsa2048,
    /// RSA with a 3072-bit modulus (`RS256`).
    Rsa3072,
    /// RSA with a 4096-bit modulus (`RS256`).
    Rsa4096,
}

impl KeyType {
    /// The JWS `alg` for this curve.
    pub fn jws_alg(self) -> &'static str {
        match self {
            Self::P256 => "ES256",
            Self::P384 => "ES384",
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 => "RS256",
        }
    }

    /// True for the RSA key types.
    pub fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096)
    }

    fn rsa_size(self) -> aws_lc_rs::rsa::KeySize {
        use aws_lc_rs::rsa::KeySize;
        match self {
            Self::Rsa3072 => KeySize::Rsa3072,
            Self::Rsa4096 => KeySize::Rsa4096,
            _ => KeySize::Rsa2048,
        }
    }

    /// The JWK `crv` for this curve.
    pub fn jwk_crv(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 => "",
        }
    }
}

/// A key type name that is none of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown key type {0:?}: expected p256, p384, rsa2048, rsa3072 or rsa4096")]
pub struct UnknownKeyType(pub String);

impl std::str::FromStr for KeyType {
    type Err = UnknownKeyType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "p256" | "p-256" | "ec256" | "es256" => Ok(Self::P256),
            "p384" | "p-384" | "ec384" | "es384" => Ok(Self::P384),
            "rsa2048" | "rsa" => Ok(Self::Rsa2048),
            "rsa3072" => Ok(Self::Rsa3072),
            "rsa4096" => Ok(Self::Rsa4096),
            other => Err(UnknownKeyType(other.to_owned())),
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::P256 => "p256",
            Self::P384 => "p384",
            Self::Rsa2048 => "rsa2048",
            Self::Rsa3072 => "rsa3072",
            Self::Rsa4096 => "rsa4096",
        })
    }
}

#[derive(Clone)]
enum Inner {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    Rsa(Arc<aws_lc_rs::rsa::KeyPair>),
}

/// An ECDSA private key with its public point.
#[derive(Clone)]
pub struct KeyPair {
    inner: Inner,
    /// Uncompressed SEC1 public point (0x04 || x || y).
    public: Vec<u8>,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print private material.
        write!(f, "KeyPair({})", self.key_type())
    }
}

impl KeyPair {
    /// A fresh random key of the given type.
    pub fn generate(kind: KeyType) -> Self {
        match kind {
            KeyType::P256 => Self::from_p256(p256::ecdsa::SigningKey::random(&mut OsRng)),
            KeyType::P384 => Self::from_p384(p384::ecdsa::SigningKey::random(&mut OsRng)),
            rsa_type => {
                // Generation fails only for a broken random source.
                let k = aws_lc_rs::rsa::KeyPair::generate(rsa_type.rsa_size())
                    .unwrap_or_else(|e| panic!("RSA key generation failed: {e}"));
                Self::from_rsa(k)
            }
        }
    }

    fn from_rsa(k: aws_lc_rs::rsa::KeyPair) -> Self {
        // The PKCS#1 RSAPublicKey DER: what X.509's subjectPublicKey holds for RSA.
        let public = k.public_key().as_ref().to_vec();
        Self {
            inner: Inner::Rsa(Arc::new(k)),
            public,
        }
    }

    /// The RSA modulus and public exponent (big-endian, no leading zeros), for an RSA key.
    pub fn rsa_public(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        match &self.inner {
            Inner::Rsa(k) => {
                let public = k.public_key();
                Some((
                    public.modulus().big_endian_without_leading_zero().to_vec(),
                    public.exponent().big_endian_without_leading_zero().to_vec(),
                ))
            }
            _ => None,
        }
    }

    fn from_p256(k: p256::ecdsa::SigningKey) -> Self {
        let public = k
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        Self {
            inner: Inner::P256(k),
            public,
        }
    }

    fn from_p384(k: p384::ecdsa::SigningKey) -> Self {
        let public = k
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        Self {
            inner: Inner::P384(k),
            public,
        }
    }

    /// Loads a PKCS#8 PEM private key (`BEGIN PRIVATE KEY`) or a SEC1 one (`BEGIN EC PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        if let Ok(k) = p384::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return Ok(Self::from_p384(k));
        }
        if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return Ok(Self::from_p256(k));
        }
        if let Ok(k) = p384::SecretKey::from_sec1_pem(pem) {
            return Ok(Self::from_p384(k.into()));
        }
        if let Ok(k) = p256::SecretKey::from_sec1_pem(pem) {
            return Ok(Self::from_p256(k.into()));
        }
        if let Ok((label, der)) = p256::pkcs8::der::pem::decode_vec(pem.trim().as_bytes()) {
            let rsa = match label {
                "PRIVATE KEY" => aws_lc_rs::rsa::KeyPair::from_pkcs8(&der).ok(),
                "RSA PRIVATE KEY" => aws_lc_rs::rsa::KeyPair::from_der(&der).ok(),
                _ => None,
            };
            if let Some(k) = rsa {
                return Self::checked_rsa(k);
            }
        }
        Err(Error::Key(
            "not a PEM ECDSA P-256/P-384 or RSA private key (PKCS#8, SEC1 or PKCS#1)".into(),
        ))
    }

    /// Loads a private key from a JWK (RFC 7517/7518): RSA (`n`, `e`, `d`, `p`, `q`, as
    /// certbot's `private_key.json` holds its account key) or EC P-256/P-384 (`crv`, `d`).
    pub fn from_jwk(jwk: &serde_json::Value) -> Result<Self, Error> {
        let part = |name: &str| -> Result<Vec<u8>, Error> {
            let text = jwk[name]
                .as_str()
                .ok_or_else(|| Error::Key(format!("the JWK has no \"{name}\"")))?;
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(text.trim_end_matches('='))
                .map_err(|_| Error::Key(format!("the JWK's \"{name}\" is not base64url")))
        };
        match jwk["kty"].as_str() {
            Some("RSA") => {
                // RFC 7518 section 6.3.2: with any private parameter beyond `d`, all of them
                // (the CRT values too) are present; certbot writes all eight.
                let public = |name: &str| -> Result<Vec<u8>, Error> {
                    let mut b = part(name)?;
                    let zeros = b.iter().take_while(|&&x| x == 0).count();
                    b.drain(..zeros);
                    Ok(b)
                };
                let components = aws_lc_rs::rsa::KeyPairComponents {
                    public_key: aws_lc_rs::rsa::PublicKeyComponents {
                        n: public("n")?,
                        e: public("e")?,
                    },
                    d: part("d")?,
                    p: part("p")?,
                    q: part("q")?,
                    dP: part("dp")?,
                    dQ: part("dq")?,
                    qInv: part("qi")?,
                };
                let k = aws_lc_rs::rsa::KeyPair::from_components(&components)
                    .map_err(|e| Error::Key(format!("the RSA JWK is not a valid key: {e}")))?;
                Self::checked_rsa(k)
            }
            Some("EC") => {
                let d = part("d")?;
                match jwk["crv"].as_str() {
                    Some("P-256") => p256::ecdsa::SigningKey::from_slice(&d)
                        .map(Self::from_p256)
                        .map_err(|e| Error::Key(format!("the P-256 JWK is not a valid key: {e}"))),
                    Some("P-384") => p384::ecdsa::SigningKey::from_slice(&d)
                        .map(Self::from_p384)
                        .map_err(|e| Error::Key(format!("the P-384 JWK is not a valid key: {e}"))),
                    other => Err(Error::Key(format!("JWK curve {other:?} is not supported"))),
                }
            }
            other => Err(Error::Key(format!(
                "JWK key type {other:?} is not supported"
            ))),
        }
    }

    fn checked_rsa(k: aws_lc_rs::rsa::KeyPair) -> Result<Self, Error> {
        let bits = k.public_modulus_len() * 8;
        if !(2048..=8192).contains(&bits) {
            return Err(Error::Key(format!(
                "RSA keys of {bits} bits are refused (2048 to 8192)"
            )));
        }
        Ok(Self::from_rsa(k))
    }

    /// The private key as PKCS#8 PEM.
    pub fn to_pem(&self) -> String {
        let pem = match &self.inner {
            Inner::P256(k) => k.to_pkcs8_pem(LineEnding::LF),
            Inner::P384(k) => k.to_pkcs8_pem(LineEnding::LF),
            Inner::Rsa(k) => {
                return match k.as_der() {
                    Ok(der) => p256::pkcs8::der::pem::encode_string(
                        "PRIVATE KEY",
                        LineEnding::LF,
                        der.as_ref(),
                    )
                    .unwrap_or_else(|e| format!("<pkcs8 encoding failed: {e}>")),
                    Err(e) => format!("<pkcs8 encoding failed: {e}>"),
                };
            }
        };
        // Encoding a valid in-memory key cannot fail; keep a clear message should it ever.
        pem.map(|z| z.to_string())
            .unwrap_or_else(|e| format!("<pkcs8 encoding failed: {e}>"))
    }

    /// The curve.
    pub fn key_type(&self) -> KeyType {
        match &self.inner {
            Inner::P256(_) => KeyType::P256,
            Inner::P384(_) => KeyType::P384,
            Inner::Rsa(k) => match k.public_modulus_len() * 8 {
                0..=2048 => KeyType::Rsa2048,
                2049..=3072 => KeyType::Rsa3072,
                _ => KeyType::Rsa4096,
            },
        }
    }

    /// Signs `msg`, returning the fixed-size `r || s` form JWS uses (RFC 7518 section 3.4).
    pub fn sign_raw(&self, msg: &[u8]) -> Vec<u8> {
        match &self.inner {
            Inner::P256(k) => {
                let s: p256::ecdsa::Signature = k.sign(msg);
                s.to_bytes().to_vec()
            }
            Inner::P384(k) => {
                let s: p384::ecdsa::Signature = k.sign(msg);
                s.to_bytes().to_vec()
            }
            Inner::Rsa(_) => self.sign_rsa(msg),
        }
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 (RS256; the same bytes in a JWS and in a CSR).
    fn sign_rsa(&self, msg: &[u8]) -> Vec<u8> {
        match &self.inner {
            Inner::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                let rng = aws_lc_rs::rand::SystemRandom::new();
                // Signing with a valid key into a buffer of the modulus' size cannot fail;
                // an empty signature would be refused by whoever checks it.
                match k.sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &rng, msg, &mut sig) {
                    Ok(()) => sig,
                    Err(e) => {
                        tracing::error!("RSA signing failed: {e}");
                        Vec::new()
                    }
                }
            }
            _ => Vec::new(),
        }
    }

    /// Signs `msg`, returning the DER form X.509 uses.
    pub fn sign_der(&self, msg: &[u8]) -> Vec<u8> {
        match &self.inner {
            Inner::P256(k) => {
                let s: p256::ecdsa::Signature = k.sign(msg);
                s.to_der().as_bytes().to_vec()
            }
            Inner::P384(k) => {
                let s: p384::ecdsa::Signature = k.sign(msg);
                s.to_der().as_bytes().to_vec()
            }
            Inner::Rsa(_) => self.sign_rsa(msg),
        }
    }

    /// The public key's affine coordinates `(x, y)`, big-endian and fixed size.
    pub fn public_xy(&self) -> (&[u8], &[u8]) {
        let coords = &self.public[1..];
        coords.split_at(coords.len() / 2)
    }

    /// Verifies a raw `r || s` signature; used by tests and by callers that check a round trip.
    pub fn verify_raw(&self, msg: &[u8], sig: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier;
        match &self.inner {
            Inner::P256(k) => p256::ecdsa::Signature::from_slice(sig)
                .map(|s| k.verifying_key().verify(msg, &s).is_ok())
                .unwrap_or(false),
            Inner::P384(k) => p384::ecdsa::Signature::from_slice(sig)
                .map(|s| k.verifying_key().verify(msg, &s).is_ok())
                .unwrap_or(false),
            Inner::Rsa(k) => aws_lc_rs::signature::UnparsedPublicKey::new(
                &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                k.public_key().as_ref(),
            )
            .verify(msg, sig)
            .is_ok(),
        }
    }
}

impl rcgen::PublicKeyData for KeyPair {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self.inner {
            Inner::P256(_) => &rcgen::PKCS_ECDSA_P256_SHA256,
            Inner::P384(_) => &rcgen::PKCS_ECDSA_P384_SHA384,
            Inner::Rsa(_) => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

impl rcgen::SigningKey for KeyPair {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(self.sign_der(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_keeps_the_curve_and_key() {
        for kind in [KeyType::P256, KeyType::P384] {
            let k = KeyPair::generate(kind);
            let pem = k.to_pem();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
            let back = KeyPair::from_pem(&pem).unwrap();
            assert_eq!(back.key_type(), kind);
            assert_eq!(back.public, k.public);
            let sig = back.sign_raw(b"hello");
            assert_eq!(sig.len(), if kind == KeyType::P256 { 64 } else { 96 });
            assert!(k.verify_raw(b"hello", &sig));
            assert!(!k.verify_raw(b"hellO", &sig));
        }
    }

    #[test]
    fn garbage_pem_is_an_error() {
        assert!(KeyPair::from_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        .is_err());
        assert!(KeyPair::from_pem("").is_err());
    }

    #[test]
    fn key_type_names() {
        assert_eq!("P384".parse::<KeyType>().unwrap(), KeyType::P384);
        assert_eq!("ec256".parse::<KeyType>().unwrap(), KeyType::P256);
        assert_eq!("rsa2048".parse::<KeyType>().unwrap(), KeyType::Rsa2048);
        assert_eq!("RSA4096".parse::<KeyType>().unwrap(), KeyType::Rsa4096);
        assert!("rsa1024".parse::<KeyType>().is_err());
    }

    #[test]
    fn rsa_keys_round_trip_sign_and_verify() {
        let k = KeyPair::generate(KeyType::Rsa2048);
        assert_eq!(k.key_type(), KeyType::Rsa2048);
        let pem = k.to_pem();
        let back = KeyPair::from_pem(&pem).unwrap();
        assert_eq!(back.key_type(), KeyType::Rsa2048);
        let sig = back.sign_raw(b"hello");
        assert_eq!(sig.len(), 256);
        assert!(k.verify_raw(b"hello", &sig));
        assert!(!k.verify_raw(b"hellO", &sig));
        let (n, e) = k.rsa_public().unwrap();
        assert_eq!((n.len(), e), (256, vec![1, 0, 1]));
    }

    #[test]
    fn an_rsa_jwk_without_its_crt_values_names_the_missing_one() {
        let k = KeyPair::generate(KeyType::Rsa2048);
        let (n, e) = k.rsa_public().unwrap();
        let jwk = serde_json::json!({
            "kty": "RSA", "n": super::super::jws::b64(n), "e": super::super::jws::b64(e),
            "d": "AQAB", "p": "AQAB", "q": "AQAB",
        });
        let err = KeyPair::from_jwk(&jwk).unwrap_err().to_string();
        assert!(err.contains("\"dp\""), "{err}");
    }

    #[test]
    fn pkcs1_rsa_pem_is_read() {
        // `openssl genrsa -traditional` writes PKCS#1 (BEGIN RSA PRIVATE KEY); re-wrap ours so.
        let k = KeyPair::generate(KeyType::Rsa2048);
        let (_, pkcs8) = p256::pkcs8::der::pem::decode_vec(k.to_pem().as_bytes()).unwrap();
        let info = p256::pkcs8::PrivateKeyInfo::try_from(pkcs8.as_slice()).unwrap();
        let pkcs1 = p256::pkcs8::der::pem::encode_string(
            "RSA PRIVATE KEY",
            LineEnding::LF,
            info.private_key,
        )
        .unwrap();
        let back = KeyPair::from_pem(&pkcs1).unwrap();
        assert_eq!(back.rsa_public(), k.rsa_public());
    }
}
