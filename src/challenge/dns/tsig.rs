//! TSIG keys (RFC 8945) in BIND's key-file format, as `tsig-keygen` writes them and
//! `nsupdate -k` and `named.conf` read them:
//!
//! ```text
//! key "acme-update" {
//!         algorithm hmac-sha256;
//!         secret "pP3b6a4...=";
//! };
//! ```

use std::path::{Path, PathBuf};

use base64::Engine;
use hickory_proto::dnssec::DnsSecError;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{Name, TSigner};

/// The signature time window (seconds either way) a signed update allows, as BIND's
/// `nsupdate` uses.
pub const TSIG_FUDGE: u16 = 300;

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("the TSIG key file: {0}")]
    Read(#[from] crate::secret::SecretFileError),
    #[error("{}: {problem}", path.display())]
    Invalid {
        path: PathBuf,
        problem: KeyParseError,
    },
}

/// What is wrong with the text of a key file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyParseError {
    #[error("no `key \"NAME\" {{ algorithm ...; secret \"...\"; }};` statement")]
    NoKey,
    #[error("`key` without a name")]
    NoName,
    #[error("`key \"{0}\"` is not followed by `{{`")]
    NoBlock(String),
    #[error("the key has no `algorithm`")]
    NoAlgorithm,
    #[error("TSIG algorithm {0:?} is not supported (use hmac-sha256, hmac-sha384 or hmac-sha512)")]
    Algorithm(String),
    #[error("the key has no `secret`")]
    NoSecret,
    #[error("the key's secret is not base64: {0}")]
    SecretNotBase64(String),
    #[error("the key's secret is empty")]
    EmptySecret,
    #[error("the key name {name:?} is not a DNS name: {message}")]
    BadName { name: String, message: String },
}

/// A parsed TSIG key.
#[derive(Clone)]
pub struct TsigKey {
    pub name: Name,
    pub algorithm: TsigAlgorithm,
    secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl TsigKey {
    /// Reads a key file (the first `key` statement in it).
    pub fn read(path: &Path) -> Result<TsigKey, KeyFileError> {
        let secret = crate::secret::read_secret(path)?;
        let text = String::from_utf8_lossy(secret.expose());
        TsigKey::parse(&text).map_err(|problem| KeyFileError::Invalid {
            path: path.to_path_buf(),
            problem,
        })
    }

    /// Parses the text of a key file.
    pub fn parse(text: &str) -> Result<TsigKey, KeyParseError> {
        let tokens = tokens(text);
        let mut it = tokens.iter().map(String::as_str).peekable();
        while let Some(t) = it.next() {
            if t != "key" {
                continue;
            }
            let name = it.next().ok_or(KeyParseError::NoName)?;
            if it.next() != Some("{") {
                return Err(KeyParseError::NoBlock(name.to_owned()));
            }
            let (mut algorithm, mut secret) = (None, None);
            loop {
                match it.next() {
                    Some("}") | None => break,
                    Some("algorithm") => algorithm = it.next(),
                    Some("secret") => secret = it.next(),
                    Some(_) => {}
                }
            }
            let algorithm = algorithm.ok_or(KeyParseError::NoAlgorithm)?;
            let algorithm = match algorithm.to_ascii_lowercase().as_str() {
                "hmac-sha256" => TsigAlgorithm::HmacSha256,
                "hmac-sha384" => TsigAlgorithm::HmacSha384,
                "hmac-sha512" => TsigAlgorithm::HmacSha512,
                other => return Err(KeyParseError::Algorithm(other.to_owned())),
            };
            let secret = secret.ok_or(KeyParseError::NoSecret)?;
            let secret = base64::engine::general_purpose::STANDARD
                .decode(secret)
                .map_err(|e| KeyParseError::SecretNotBase64(e.to_string()))?;
            if secret.is_empty() {
                return Err(KeyParseError::EmptySecret);
            }
            let name = Name::from_ascii(name).map_err(|e| KeyParseError::BadName {
                name: name.to_owned(),
                message: e.to_string(),
            })?;
            return Ok(TsigKey {
                name,
                algorithm,
                secret,
            });
        }
        Err(KeyParseError::NoKey)
    }

    /// The signer for messages.
    pub fn signer(&self) -> Result<TSigner, DnsSecError> {
        TSigner::new(
            self.secret.clone(),
            self.algorithm.clone(),
            self.name.clone(),
            TSIG_FUDGE,
        )
    }
}

/// The tokens of a BIND configuration text: words, quoted strings (unquoted), `{`, `}`; `;`
/// and comments (`#`, `//`, `/* */`) dropped.
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut Vec<String>| {
        if !word.is_empty() {
            out.push(std::mem::take(word));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '#' => {
                flush(&mut word, &mut out);
                chars.by_ref().find(|&c| c == '\n');
            }
            '/' if chars.peek() == Some(&'/') => {
                flush(&mut word, &mut out);
                chars.by_ref().find(|&c| c == '\n');
            }
            '/' if chars.peek() == Some(&'*') => {
                flush(&mut word, &mut out);
                chars.next();
                let mut prev = ' ';
                for c in chars.by_ref() {
                    if prev == '*' && c == '/' {
                        break;
                    }
                    prev = c;
                }
            }
            '"' => {
                flush(&mut word, &mut out);
                let s: String = chars.by_ref().take_while(|&c| c != '"').collect();
                out.push(s);
            }
            '{' | '}' => {
                flush(&mut word, &mut out);
                out.push(c.to_string());
            }
            ';' => flush(&mut word, &mut out),
            c if c.is_whitespace() => flush(&mut word, &mut out),
            c => word.push(c),
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key file others can read (or a link, or another user's) is refused as a secret
    /// file, naming it; the same text with mode 0600 is read.
    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tsig.key");
        let text = "key \"acme-update\" { algorithm hmac-sha256; secret \"AAEC\"; };\n";
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = TsigKey::read(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(TsigKey::read(&path).is_ok());
    }

    #[test]
    fn tsig_keygen_output_parses() {
        // `tsig-keygen -a hmac-sha512 acme-update` (BIND 9.18), secret shortened.
        let text = "key \"acme-update\" {\n\talgorithm hmac-sha512;\n\tsecret \"c2VjcmV0LXNlY3JldA==\";\n};\n";
        let k = TsigKey::parse(text).unwrap();
        assert_eq!(k.name.to_ascii(), "acme-update");
        assert_eq!(k.algorithm, TsigAlgorithm::HmacSha512);
        assert_eq!(k.secret, b"secret-secret");
        assert!(!format!("{k:?}").contains("c2Vj"), "secret in Debug output");
    }

    #[test]
    fn comments_and_layout_do_not_matter() {
        let text = "# made by hand\n/* a\n block */ key acme. { // the key\n secret \"AAEC\"; algorithm HMAC-SHA256; };";
        let k = TsigKey::parse(text).unwrap();
        assert_eq!(k.algorithm, TsigAlgorithm::HmacSha256);
        assert_eq!(k.secret, vec![0, 1, 2]);
    }

    #[test]
    fn bad_key_files_say_what_is_wrong() {
        let not_base64 = |e: &KeyParseError| matches!(e, KeyParseError::SecretNotBase64(_));
        for (text, expect, is) in [
            (
                "",
                "no `key",
                (|e| *e == KeyParseError::NoKey) as fn(&KeyParseError) -> bool,
            ),
            ("key \"k\" { secret \"AAEC\"; };", "no `algorithm`", |e| {
                *e == KeyParseError::NoAlgorithm
            }),
            (
                "key \"k\" { algorithm hmac-md5; secret \"AAEC\"; };",
                "not supported",
                |e| *e == KeyParseError::Algorithm("hmac-md5".into()),
            ),
            (
                "key \"k\" { algorithm hmac-sha256; };",
                "no `secret`",
                |e| *e == KeyParseError::NoSecret,
            ),
            (
                "key \"k\" { algorithm hmac-sha256; secret \"!!\"; };",
                "not base64",
                not_base64,
            ),
            ("key \"k\" algorithm", "not followed by", |e| {
                *e == KeyParseError::NoBlock("k".into())
            }),
        ] {
            let err = TsigKey::parse(text).unwrap_err();
            assert!(is(&err), "{text:?}: {err:?}");
            assert!(err.to_string().contains(expect), "{text:?}: {err}");
        }
    }
}
