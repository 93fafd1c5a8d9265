//! The settings of `scan`, `enroll`, `renew`, `status` and `watch`: one type that is both the
//! command-line flags and the configuration file (`/etc/acme-nginx/config.toml`), so the two
//! cannot drift. Flags win over the file, the file over the defaults.

use std::path::{Path, PathBuf};

use acme_nginx::acme::{self, KeyType};
use acme_nginx::hooks::Hooks;
use acme_nginx::lifecycle::settings::{
    DEFAULT_CONCURRENCY, DEFAULT_HOOKS_DIR, DEFAULT_HTTPS_PORT, DEFAULT_HTTP_PORT, DEFAULT_SNIPPET,
    DEFAULT_STATE_DIR,
};
use acme_nginx::lifecycle::Settings;
use acme_nginx::nginx;
use clap::Args;
use serde::{Deserialize, Serialize};

use super::{CliError, Context};

/// The default configuration file.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/acme-nginx/config.toml";

/// Every setting, as flag and as configuration-file key (the same name with `_`).
#[derive(Debug, Clone, Default, Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// The CA's directory (a file key; the flag is the global --directory).
    #[arg(skip)]
    pub directory: Option<String>,
    /// Extra trust anchor for the CA (a file key; the flag is the global --ca-file).
    #[arg(skip)]
    pub ca_file: Option<PathBuf>,
    /// Configuration file [default: /etc/acme-nginx/config.toml].
    #[arg(long, value_name = "FILE", env = "ACME_NGINX_CONFIG_FILE")]
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    /// State directory (accounts, certificates, backups) [default: /var/lib/acme-nginx].
    #[arg(long, value_name = "DIR", env = "ACME_NGINX_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// The main nginx configuration file [default: /etc/nginx/nginx.conf].
    #[arg(
        long,
        value_name = "PATH",
        env = "ACME_NGINX_CONF",
        help_heading = "nginx"
    )]
    pub nginx_conf: Option<PathBuf>,
    /// The nginx binary, for `nginx -V` and `nginx -t` [default: nginx on PATH].
    #[arg(
        long,
        value_name = "PATH",
        env = "ACME_NGINX_BIN",
        help_heading = "nginx"
    )]
    pub nginx_bin: Option<PathBuf>,
    /// nginx's prefix (`nginx -p`), when the running nginx was started with one.
    #[arg(long, value_name = "DIR", help_heading = "nginx")]
    pub nginx_prefix: Option<PathBuf>,
    /// Read the configuration from `nginx -T` output in FILE ("-" for stdin) instead of from
    /// disk, to check against exactly what a running nginx loaded.
    #[arg(long, value_name = "FILE", help_heading = "nginx")]
    #[serde(skip)]
    pub nginx_dump: Option<PathBuf>,
    /// The port the CA validates http-01 on: only a server block nginx answers on this port
    /// can serve the challenge [default: 80; another port only for test beds].
    #[arg(
        long,
        value_name = "PORT",
        env = "ACME_NGINX_HTTP_PORT",
        help_heading = "nginx"
    )]
    pub http_port: Option<u16>,
    /// The HTTPS port to add listeners for [default: 443].
    #[arg(long, value_name = "PORT", help_heading = "nginx")]
    pub https_port: Option<u16>,
    /// Redirect plain HTTP to HTTPS (the ACME challenge excepted) in blocks acme-nginx edits.
    #[arg(long, help_heading = "nginx")]
    #[serde(default)]
    pub redirect: bool,
    /// The challenge snippet included into blocks that serve no challenge directory
    /// [default: /etc/acme-nginx/nginx/acme-challenge.conf].
    #[arg(long, value_name = "FILE", help_heading = "nginx")]
    pub challenge_snippet: Option<PathBuf>,
    /// The directory that snippet serves [default: STATE/challenge].
    #[arg(long, value_name = "DIR", help_heading = "nginx")]
    pub challenge_dir: Option<PathBuf>,

    /// Contact email for a new account.
    #[arg(long, value_name = "EMAIL", help_heading = "Account")]
    pub email: Option<String>,
    /// Agree to the CA's terms of service when an account has to be created.
    #[arg(long, help_heading = "Account")]
    #[serde(default)]
    pub agree_tos: bool,
    /// External account binding key id (for a new account).
    #[arg(
        long,
        value_name = "KID",
        requires = "eab_hmac_key",
        help_heading = "Account"
    )]
    pub eab_kid: Option<String>,
    /// External account binding HMAC key.
    #[arg(
        long,
        value_name = "B64",
        requires = "eab_kid",
        help_heading = "Account"
    )]
    pub eab_hmac_key: Option<String>,

    /// Certificate key type [default: p256].
    #[arg(
        long,
        value_name = "p256|p384|rsa2048|rsa3072|rsa4096",
        help_heading = "Certificates"
    )]
    pub key_type: Option<KeyType>,
    /// Certificate profile offered by the CA.
    #[arg(long, value_name = "NAME", help_heading = "Certificates")]
    pub profile: Option<String>,
    /// Prefer the chain whose topmost certificate is issued by this common name.
    #[arg(long, value_name = "CN", help_heading = "Certificates")]
    pub preferred_chain: Option<String>,
    /// Keep the private key across renewals (default: a new key each time).
    #[arg(long, help_heading = "Certificates")]
    #[serde(default)]
    pub reuse_key: bool,
    /// Orders in flight at once [default: 4].
    #[arg(long, value_name = "N", help_heading = "Certificates")]
    pub concurrency: Option<usize>,

    /// Command run once before the first order.
    #[arg(long, value_name = "CMD", help_heading = "Hooks")]
    pub pre_hook: Option<String>,
    /// Command run once at the end, also after failures.
    #[arg(long, value_name = "CMD", help_heading = "Hooks")]
    pub post_hook: Option<String>,
    /// Command run for each installed certificate after the verified reload.
    #[arg(long, value_name = "CMD", help_heading = "Hooks")]
    pub deploy_hook: Option<String>,
    /// Directory holding pre.d/, post.d/, deploy.d/ [default: /etc/acme-nginx/hooks].
    #[arg(long, value_name = "DIR", help_heading = "Hooks")]
    pub hooks_dir: Option<PathBuf>,
}

/// Fills each unset field of `$a` from `$b`.
macro_rules! or_fields {
    ($a:ident, $b:ident; $($f:ident),*; $($flag:ident),*) => {
        Options {
            $($f: $a.$f.or($b.$f),)*
            $($flag: $a.$flag || $b.$flag,)*
        }
    };
}

impl Options {
    /// These options (flags) over the configuration file's.
    fn over(self, file: Options) -> Options {
        or_fields!(self, file;
            directory, ca_file, config_file, state_dir, nginx_conf, nginx_bin, nginx_prefix,
            nginx_dump, http_port, https_port, challenge_snippet, challenge_dir, email, eab_kid,
            eab_hmac_key, key_type, profile, preferred_chain, concurrency, pre_hook, post_hook,
            deploy_hook, hooks_dir;
            redirect, agree_tos, reuse_key)
    }

    /// Reads the configuration file. A missing default file is an empty configuration; a
    /// missing file named with `--config-file`, or any unreadable or invalid file, is an error
    /// naming it.
    pub fn load_file(path: Option<&Path>) -> Result<Options, CliError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Options::default())
            }
            Err(e) => return Err(CliError::io(format!("read {}", path.display()))(e)),
        };
        toml::from_str(&text).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
    }

    /// Where nginx is (flags over file), without building full settings.
    pub fn nginx_paths(&self) -> Result<nginx::Paths, CliError> {
        let file = Options::load_file(self.config_file.as_deref())?;
        Ok(paths(&self.clone().over(file)))
    }

    /// The run's settings: flags over the file over defaults.
    pub fn settings(&self, ctx: &Context) -> Result<Settings, CliError> {
        let file = Options::load_file(self.config_file.as_deref())?;
        let o = self.clone().over(file);
        let directory = ctx
            .explicit_directory
            .clone()
            .or(o.directory.clone())
            .unwrap_or_else(|| ctx.directory_url.clone());
        let client_config = match (&ctx.ca_file, &o.ca_file) {
            (None, Some(path)) => acme::ClientConfig::with_ca_file(path)?,
            _ => ctx.client_config.clone(),
        };
        let state_dir = o
            .state_dir
            .clone()
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        Ok(Settings {
            directory,
            client_config,
            nginx: paths(&o),
            email: o.email,
            agree_tos: o.agree_tos,
            eab: o.eab_kid.zip(o.eab_hmac_key),
            key_type: o.key_type.unwrap_or_default(),
            profile: o.profile,
            preferred_chain: o.preferred_chain,
            http_port: o.http_port.unwrap_or(DEFAULT_HTTP_PORT),
            https_port: o.https_port.unwrap_or(DEFAULT_HTTPS_PORT),
            redirect: o.redirect,
            hooks: Hooks {
                pre: o.pre_hook,
                post: o.post_hook,
                deploy: o.deploy_hook,
                dir: Some(o.hooks_dir.unwrap_or_else(|| DEFAULT_HOOKS_DIR.into())),
                timeout: None,
            },
            snippet: o
                .challenge_snippet
                .unwrap_or_else(|| DEFAULT_SNIPPET.into()),
            challenge_dir: o
                .challenge_dir
                .unwrap_or_else(|| state_dir.join("challenge")),
            state_dir,
            concurrency: o.concurrency.unwrap_or(DEFAULT_CONCURRENCY).max(1),
            reuse_key: o.reuse_key,
        })
    }
}

fn paths(o: &Options) -> nginx::Paths {
    nginx::Paths {
        conf: o.nginx_conf.clone(),
        bin: o.nginx_bin.clone(),
        prefix: o.nginx_prefix.clone(),
        dump: o.nginx_dump.clone(),
    }
}

#[cfg(test)]
#[path = "options_tests.rs"]
mod tests;
