//! Key pairs for both jobs a client has: signing JWS requests as an account and signing CSRs for
//! a certificate. ECDSA P-256 and P-384 (RustCrypto's p256/p384) and RSA 2048/3072/4096
//! (RustCrypto's rsa, PKCS#1 v1.5 with SHA-256: RS256, as certbot's account keys and the RSA
//! certificates older clients need); rcgen sees our keys through its `SigningKey` trait.

use std::fmt;

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

    fn rsa_bits(self) -> usize {
        match self {
            Self::Rsa3072 => 3072,
            Self::Rsa4096 => 4096,
            _ => 2048,
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

impl std::str::FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "p256" | "p-256" | "ec256" | "es256" => Ok(Self::P256),
            "p384" | "p-384" | "ec384" | "es384" => Ok(Self::P384),
            "rsa2048" | "rsa" => Ok(Self::Rsa2048),
            "rsa3072" => Ok(Self::Rsa3072),
            "rsa4096" => Ok(Self::Rsa4096),
            other => Err(format!(
                "unknown key type {other:?}: expected p256, p384, rsa2048, rsa3072 or rsa4096"
            )),
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
    Rsa(Box<rsa::RsaPrivateKey>),
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
                // Generation fails only for a broken random source or absurd sizes.
                let k = rsa::RsaPrivateKey::new(&mut OsRng, rsa_type.rsa_bits())
                    .unwrap_or_else(|e| panic!("RSA key generation failed: {e}"));
                Self::from_rsa(k)
            }
        }
    }

    fn from_rsa(k: rsa::RsaPrivateKey) -> Self {
        use rsa::pkcs1::EncodeRsaPublicKey;
        let public = k
            .to_public_key()
            .to_pkcs1_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default();
        Self {
            inner: Inner::Rsa(Box::new(k)),
            public,
        }
    }

    /// The RSA modulus and public exponent (big-endian), for an RSA key.
    pub fn rsa_public(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        use rsa::traits::PublicKeyParts;
        match &self.inner {
            Inner::Rsa(k) => Some((k.n().to_bytes_be(), k.e().to_bytes_be())),
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
        if let Ok(k) = rsa::RsaPrivateKey::from_pkcs8_pem(pem) {
            return Self::checked_rsa(k);
        }
        {
            use rsa::pkcs1::DecodeRsaPrivateKey;
            if let Ok(k) = rsa::RsaPrivateKey::from_pkcs1_pem(pem) {
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
            super::jws::decode_b64(text)
                .map_err(|_| Error::Key(format!("the JWK's \"{name}\" is not base64url")))
        };
        match jwk["kty"].as_str() {
            Some("RSA") => {
                let big = |name: &str| part(name).map(|b| rsa::BigUint::from_bytes_be(&b));
                let k = rsa::RsaPrivateKey::from_components(
                    big("n")?,
                    big("e")?,
                    big("d")?,
                    vec![big("p")?, big("q")?],
                )
                .map_err(|e| Error::Key(format!("the RSA JWK is not a valid key: {e}")))?;
                k.validate()
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

    fn checked_rsa(k: rsa::RsaPrivateKey) -> Result<Self, Error> {
        use rsa::traits::PublicKeyParts;
        let bits = k.n().bits();
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
            Inner::Rsa(k) => k.to_pkcs8_pem(LineEnding::LF),
        };
        // Encoding a valid in-memory key cannot fail; keep a clear message should it ever.
        pem.map(|z| z.to_string())
            .unwrap_or_else(|e| format!("<pkcs8 encoding failed: {e}>"))
    }

    /// The curve.
    pub fn key_type(&self) -> KeyType {
        use rsa::traits::PublicKeyParts;
        match &self.inner {
            Inner::P256(_) => KeyType::P256,
            Inner::P384(_) => KeyType::P384,
            Inner::Rsa(k) => match k.n().bits() {
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
        use rsa::signature::{SignatureEncoding, Signer as _};
        match &self.inner {
            Inner::Rsa(k) => rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new((**k).clone())
                .sign(msg)
                .to_vec(),
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
            Inner::Rsa(k) => {
                let vk = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(k.to_public_key());
                rsa::pkcs1v15::Signature::try_from(sig)
                    .map(|s| rsa::signature::Verifier::verify(&vk, msg, &s).is_ok())
                    .unwrap_or(false)
            }
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
}
