//! The configuration file (`/etc/acme-nginx/config.toml`): the same settings as the flags of
//! `enroll`, `renew` and `watch`; a flag given on the command line wins.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::CliError;

/// The default configuration file.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/acme-nginx/config.toml";
/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/acme-nginx";
/// The default hook directory (holding `pre.d`, `post.d`, `deploy.d`).
pub const DEFAULT_HOOKS_DIR: &str = "/etc/acme-nginx/hooks";
/// The default location of the challenge snippet `enroll` includes.
pub const DEFAULT_SNIPPET: &str = "/etc/nginx/snippets/acme-challenge.conf";

/// Every setting of the file; all optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub directory: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub email: Option<String>,
    #[serde(default)]
    pub agree_tos: Option<bool>,
    pub eab_kid: Option<String>,
    pub eab_hmac_key: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub nginx_conf: Option<PathBuf>,
    pub nginx_bin: Option<PathBuf>,
    pub nginx_prefix: Option<PathBuf>,
    pub key_type: Option<String>,
    pub profile: Option<String>,
    pub https_port: Option<u16>,
    pub redirect: Option<bool>,
    pub pre_hook: Option<String>,
    pub post_hook: Option<String>,
    pub deploy_hook: Option<String>,
    pub hooks_dir: Option<PathBuf>,
    pub challenge_snippet: Option<PathBuf>,
    pub challenge_dir: Option<PathBuf>,
    pub concurrency: Option<usize>,
    /// Keep the private key across renewals (default: a new key each time).
    pub reuse_key: Option<bool>,
    /// Prefer the chain issued by this common name.
    pub preferred_chain: Option<String>,
}

impl FileConfig {
    /// Reads the file. A missing default file is an empty configuration; a missing file named
    /// with `--config-file`, or any unreadable or invalid file, is an error naming it.
    pub fn load(path: Option<&Path>) -> Result<Self, CliError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Self::default())
            }
            Err(e) => {
                return Err(CliError::fatal(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        toml::from_str(&text).map_err(|e| CliError::fatal(format!("{}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_settings_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "agree_tos = true\nemail = \"a@b.example\"\nhttps_port = 8443\n",
        )
        .unwrap();
        let c = FileConfig::load(Some(&p)).unwrap();
        assert_eq!(c.agree_tos, Some(true));
        assert_eq!(c.https_port, Some(8443));
        std::fs::write(&p, "agree_to = true\n").unwrap();
        let e = FileConfig::load(Some(&p)).unwrap_err();
        assert!(
            e.message.contains("unknown field") && e.message.contains("c.toml"),
            "{e}"
        );
        assert!(FileConfig::load(Some(&dir.path().join("missing.toml"))).is_err());
    }
}
