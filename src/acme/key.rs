//! ECDSA key pairs (P-256 and P-384) for both jobs a client has: signing JWS requests as an account
//! and signing CSRs for a certificate. One crypto stack (RustCrypto's p256/p384) serves both; rcgen
//! sees our keys through its `SigningKey` trait.

use std::fmt;

use p256::ecdsa::signature::Signer;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rand_core::OsRng;

use super::error::Error;

/// The curve of a key pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// ECDSA P-256 with SHA-256 (`ES256`).
    #[default]
    P256,
    /// ECDSA P-384 with SHA-384 (`ES384`).
    P384,
}

impl KeyType {
    /// The JWS `alg` for this curve.
    pub fn jws_alg(self) -> &'static str {
        match self {
            Self::P256 => "ES256",
            Self::P384 => "ES384",
        }
    }

    /// The JWK `crv` for this curve.
    pub fn jwk_crv(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
        }
    }
}

impl std::str::FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "p256" | "p-256" | "ec256" | "es256" => Ok(Self::P256),
            "p384" | "p-384" | "ec384" | "es384" => Ok(Self::P384),
            other => Err(format!("unknown key type {other:?}: expected p256 or p384")),
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::P256 => "p256",
            Self::P384 => "p384",
        })
    }
}

#[derive(Clone)]
enum Inner {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
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
        Err(Error::Key(
            "not a PEM ECDSA P-256 or P-384 private key (PKCS#8 or SEC1)".into(),
        ))
    }

    /// The private key as PKCS#8 PEM.
    pub fn to_pem(&self) -> String {
        let pem = match &self.inner {
            Inner::P256(k) => k.to_pkcs8_pem(LineEnding::LF),
            Inner::P384(k) => k.to_pkcs8_pem(LineEnding::LF),
        };
        // Encoding a valid in-memory key cannot fail; keep a clear message should it ever.
        pem.map(|z| z.to_string())
            .unwrap_or_else(|e| format!("<pkcs8 encoding failed: {e}>"))
    }

    /// The curve.
    pub fn key_type(&self) -> KeyType {
        match self.inner {
            Inner::P256(_) => KeyType::P256,
            Inner::P384(_) => KeyType::P384,
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
        assert!("rsa2048".parse::<KeyType>().is_err());
    }
}
