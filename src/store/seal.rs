//! Sealing secrets kept in shared storage: private keys (account and certificate keys) are
//! stored in etcd only as XChaCha20-Poly1305 ciphertexts under the fleet key, a 32-byte key
//! file every node holds (base64, mode 0600), so a backup or snapshot of etcd does not leak
//! them. The etcd key a value lives under is its associated data: a sealed value copied under
//! another key does not open.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};

/// What a sealed value starts with (the format's version).
const PREFIX: &str = "sealed-v1:";
/// What a sealed record starts with: `record-v1:VERSION:BASE64`.
const RECORD_PREFIX: &str = "record-v1:";

/// A fleet key that cannot be used, or a value that does not open.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the fleet key file {}: {message}", path.display())]
    KeyFile { path: PathBuf, message: String },
    #[error(
        "a sealed value under {key} does not open with this fleet key (another key, or changed)"
    )]
    Open { key: String },
    #[error("the value under {key} is not sealed")]
    NotSealed { key: String },
}

impl SealError {
    /// True for a value that is not what a holder of this fleet key wrote (not sealed, or
    /// sealed with another key, under another key or version): someone with write access to
    /// etcd but not the fleet key, or a node with another fleet key.
    pub fn is_untrusted(&self) -> bool {
        matches!(self, SealError::Open { .. } | SealError::NotSealed { .. })
    }
}

/// The fleet key.
#[derive(Clone)]
pub struct FleetKey(XChaCha20Poly1305);

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetKey(<redacted>)")
    }
}

impl FleetKey {
    /// Reads a key file: 32 random bytes in base64 (`head -c 32 /dev/urandom | base64`). A
    /// file other users may read is refused.
    pub fn read(path: &Path) -> Result<FleetKey, SealError> {
        let bad = |message: String| SealError::KeyFile {
            path: path.to_path_buf(),
            message,
        };
        let secret = crate::secret::read_secret(path).map_err(|e| bad(e.problem.to_string()))?;
        let text = String::from_utf8_lossy(secret.expose());
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|e| bad(format!("not base64: {e}")))?;
        FleetKey::from_bytes(&bytes).ok_or_else(|| {
            bad(format!(
                "{} bytes; a fleet key is 32 (head -c 32 /dev/urandom | base64)",
                bytes.len()
            ))
        })
    }

    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<FleetKey> {
        (bytes.len() == 32).then(|| FleetKey(XChaCha20Poly1305::new(bytes.into())))
    }

    /// Seals `plaintext` for the storage key `key`.
    pub fn seal(&self, key: &str, plaintext: &[u8]) -> String {
        format!("{PREFIX}{}", self.encrypt(key.as_bytes(), plaintext))
    }

    /// Seals a whole record stored under `key` at `version` (a counter or a time the reader
    /// compares): both are the associated data, so a record copied under another key, or
    /// given another version, does not open, and no field of it can be changed or forged
    /// without the fleet key.
    pub fn seal_record(&self, key: &str, version: u64, plaintext: &[u8]) -> Vec<u8> {
        let sealed = self.encrypt(&record_aad(key, version), plaintext);
        format!("{RECORD_PREFIX}{version}:{sealed}").into_bytes()
    }

    /// Opens a record sealed for `key`: its version and its contents.
    pub fn open_record(&self, key: &str, value: &[u8]) -> Result<(u64, Vec<u8>), SealError> {
        let not_sealed = || SealError::NotSealed {
            key: key.to_owned(),
        };
        let text = std::str::from_utf8(value).map_err(|_| not_sealed())?;
        let (version, b64) = text
            .strip_prefix(RECORD_PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .ok_or_else(not_sealed)?;
        let version: u64 = version.parse().map_err(|_| not_sealed())?;
        let plain = self.decrypt(key, &record_aad(key, version), b64.trim())?;
        Ok((version, plain))
    }

    /// Opens a value sealed for `key`.
    pub fn open(&self, key: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let b64 = sealed
            .strip_prefix(PREFIX)
            .ok_or_else(|| SealError::NotSealed {
                key: key.to_owned(),
            })?;
        self.decrypt(key, key.as_bytes(), b64)
    }

    /// A fresh nonce and the ciphertext of `plaintext` with `aad`, base64.
    fn encrypt(&self, aad: &[u8], plaintext: &[u8]) -> String {
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .0
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend(sealed);
        STANDARD.encode(out)
    }

    /// The plaintext of what [`FleetKey::encrypt`] made with `aad` (`key` names the value in
    /// errors).
    fn decrypt(&self, key: &str, aad: &[u8], b64: &str) -> Result<Vec<u8>, SealError> {
        let data = STANDARD
            .decode(b64)
            .ok()
            .filter(|d| d.len() > 24)
            .ok_or_else(|| SealError::NotSealed {
                key: key.to_owned(),
            })?;
        let (nonce, ct) = data.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().map_err(|_| SealError::NotSealed {
            key: key.to_owned(),
        })?;
        self.0
            .decrypt(&XNonce::from(nonce), Payload { msg: ct, aad })
            .map_err(|_| SealError::Open {
                key: key.to_owned(),
            })
    }
}

/// The associated data of a record: where it lives and its version.
fn record_aad(key: &str, version: u64) -> Vec<u8> {
    format!("{key}\n{version}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn sealed_values_open_only_with_their_key_and_place() {
        let k = FleetKey::from_bytes(&[7; 32]).unwrap();
        let pem = b"-----BEGIN PRIVATE KEY-----\nsecret\n";
        let sealed = k.seal("/acme-nginx/account", pem);
        assert!(sealed.starts_with(PREFIX));
        assert!(!sealed.contains("PRIVATE"));
        assert_ne!(sealed, k.seal("/acme-nginx/account", pem), "nonces repeat");
        assert_eq!(k.open("/acme-nginx/account", &sealed).unwrap(), pem);
        // Moved under another key, or opened with another fleet key: refused.
        assert!(k.open("/acme-nginx/other", &sealed).is_err());
        let other = FleetKey::from_bytes(&[8; 32]).unwrap();
        assert!(other.open("/acme-nginx/account", &sealed).is_err());
        assert!(matches!(
            k.open("/acme-nginx/account", "plain"),
            Err(SealError::NotSealed { .. })
        ));
    }

    #[test]
    fn records_open_only_with_their_key_place_and_version() {
        let k = FleetKey::from_bytes(&[7; 32]).unwrap();
        let rec = br#"{"serial":"0a"}"#;
        let sealed = k.seal_record("/f/lineages/a.test", 3, rec);
        let text = String::from_utf8(sealed.clone()).unwrap();
        assert!(text.starts_with("record-v1:3:"), "{text}");
        assert!(!text.contains("serial"));
        assert_eq!(
            k.open_record("/f/lineages/a.test", &sealed).unwrap(),
            (3, rec.to_vec())
        );
        // Another place, a version changed in the clear, another fleet key, a forged
        // plain record: none opens, and each is untrusted.
        let moved = k.open_record("/f/lineages/b.test", &sealed).unwrap_err();
        let bumped = text.replacen("record-v1:3:", "record-v1:9:", 1);
        let bumped = k
            .open_record("/f/lineages/a.test", bumped.as_bytes())
            .unwrap_err();
        let other = FleetKey::from_bytes(&[8; 32]).unwrap();
        let stranger = other
            .open_record("/f/lineages/a.test", &sealed)
            .unwrap_err();
        let forged = k.open_record("/f/lineages/a.test", rec).unwrap_err();
        for e in [moved, bumped, stranger, forged] {
            assert!(e.is_untrusted(), "{e}");
        }
    }

    #[test]
    fn key_files_must_be_private_and_32_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fleet.key");
        std::fs::write(&p, format!("{}\n", STANDARD.encode([1u8; 32]))).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(FleetKey::read(&p)
            .unwrap_err()
            .to_string()
            .contains("chmod 600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        FleetKey::read(&p).unwrap();
        std::fs::write(&p, STANDARD.encode([1u8; 16])).unwrap();
        assert!(FleetKey::read(&p)
            .unwrap_err()
            .to_string()
            .contains("16 bytes"));
    }
}
