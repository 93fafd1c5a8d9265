//! The settings of `scan`, `enroll`, `renew`, `status` and `watch`: one type that is both the
//! command-line flags and the configuration file (`/etc/acme-nginx/config.toml`), so the two
//! cannot drift. Flags win over the file, the file over the defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use acme_nginx::acme::{self, KeyType};
use acme_nginx::challenge::dav::DavConfig;
use acme_nginx::challenge::dns::lookup::{self, Resolver};
use acme_nginx::challenge::dns::{DnsConfig, ProviderConfig, DEFAULT_PROPAGATION_TIMEOUT};
use acme_nginx::hooks::Hooks;
use acme_nginx::lifecycle::fleet::{FleetConfig, DEFAULT_PREFIX, NODE_STALE_AFTER};
use acme_nginx::lifecycle::settings::{
    Challenge, Eab, NotifyConfig, ZeroSsl, DEFAULT_CONCURRENCY, DEFAULT_HOOKS_DIR,
    DEFAULT_HTTPS_PORT, DEFAULT_HTTP_PORT, DEFAULT_NOTIFY_DAYS, DEFAULT_SENDMAIL, DEFAULT_SNIPPET,
    DEFAULT_STATE_DIR,
};
use acme_nginx::lifecycle::Settings;
use acme_nginx::nginx;
use acme_nginx::store::etcd::EtcdConfig;
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use super::{CliError, Context};

/// The default configuration file.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/acme-nginx/config.toml";

/// Every setting, as flag and as configuration-file key (the same name with `_`).
#[derive(Debug, Clone, Default, Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// The CA's directory, or a list of them, preferred first (a file key; the flag is the
    /// global --directory, repeated).
    #[arg(skip)]
    pub directory: Option<Directories>,
    /// The CAA identities (issuer domain names) of CAs whose directory lists none: the file's
    /// `[caa_identities]` table, `"DIRECTORY-URL" = ["ca.example"]`.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub caa_identities: BTreeMap<String, Vec<String>>,
    /// External account bindings of other CAs than the preferred one: the file's
    /// `[eab."DIRECTORY-URL"]` tables (`kid`, `hmac_key_file`, `algorithm`).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub eab: BTreeMap<String, CaEab>,
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
    /// Take over the certificates of the named blocks that another mechanism picks (nginx's
    /// ACME module, whose directives are then commented out; a variable ssl_certificate),
    /// which are otherwise left alone. Only for names given on the command line.
    #[arg(long, help_heading = "nginx")]
    #[serde(skip)]
    pub take_over: bool,
    /// For a name nginx answers only over HTTPS, add a marked port-80 server block after its
    /// block (challenges answered, everything else redirected to HTTPS), tested by nginx -t
    /// like any edit.
    #[arg(long, help_heading = "nginx")]
    #[serde(default)]
    pub http_route: bool,
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
    /// External account binding key id (for a new account; with --eab-hmac-key-file).
    #[arg(long, value_name = "KID", help_heading = "Account")]
    pub eab_kid: Option<String>,
    /// External account binding HMAC key, base64url, in a file only root can read (read as
    /// a secret: a regular file of root's, mode 0600, no symlink).
    #[arg(
        long,
        value_name = "FILE",
        requires = "eab_kid",
        conflicts_with = "eab_hmac_key",
        help_heading = "Account"
    )]
    pub eab_hmac_key_file: Option<PathBuf>,
    /// Deprecated: the HMAC key on the command line, where every local user sees it (`ps`);
    /// use --eab-hmac-key-file.
    #[arg(
        long,
        value_name = "B64",
        requires = "eab_kid",
        help_heading = "Account"
    )]
    pub eab_hmac_key: Option<String>,
    /// The MAC algorithm of the external account binding [default: HS256].
    #[arg(
        long,
        value_name = "ALG",
        value_parser = ["HS256", "HS384", "HS512"],
        help_heading = "Account"
    )]
    pub eab_algorithm: Option<String>,

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

    /// The challenge names take: http-01, or dns-01 (needs a DNS solver) [default: http-01;
    /// wildcards always take dns-01].
    #[arg(long, value_name = "http-01|dns-01", help_heading = "Challenges")]
    pub challenge: Option<Challenge>,
    /// The challenge of single names (the file's `[challenges]` table: `"NAME" = "dns-01"`).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub challenges: BTreeMap<String, Challenge>,
    /// Put http-01 tokens on this WebDAV collection (`URL/TOKEN`) instead of serving them
    /// from this host's nginx: for names served by other machines.
    #[arg(long, value_name = "URL", help_heading = "Challenges")]
    pub http_dav: Option<String>,
    /// The WebDAV user (basic authentication).
    #[arg(
        long,
        value_name = "USER",
        requires = "http_dav",
        help_heading = "Challenges"
    )]
    pub http_dav_user: Option<String>,
    /// A file holding the WebDAV password.
    #[arg(
        long,
        value_name = "FILE",
        requires = "http_dav_user",
        help_heading = "Challenges"
    )]
    pub http_dav_password_file: Option<PathBuf>,
    #[command(flatten)]
    #[serde(default)]
    pub dns: DnsOptions,

    #[command(flatten)]
    #[serde(default)]
    pub fleet: FleetOptions,

    /// Never enroll names matching this glob (`*.internal.example.org`; repeatable; added to
    /// the file's `exclude` list). A block holding `# acme-nginx: ignore` is left out whole.
    #[arg(long, value_name = "NAME", help_heading = "Certificates")]
    #[serde(default)]
    pub exclude: Vec<String>,

    /// Before any order, check that each http-01 name's public A and AAAA records lead to
    /// this nginx (an address of this host, or one that answers a probe token with the name's
    /// Host header) [default: true; false for hosts whose DNS is not public yet].
    #[arg(
        long,
        value_name = "BOOL",
        env = "ACME_NGINX_PUBLIC_PREFLIGHT",
        help_heading = "Challenges"
    )]
    pub public_preflight: Option<bool>,
    /// The resolver for CAA and address lookups (a file key; the flag is --dns-resolver).
    #[arg(skip)]
    pub dns_resolver: Option<String>,

    #[command(flatten)]
    #[serde(default)]
    pub notify: NotifyOptions,
}

/// One CA directory or several, preferred first (the file's `directory`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged, expecting = "a directory URL or a list of directory URLs")]
pub enum Directories {
    One(String),
    Many(Vec<String>),
}

impl Directories {
    fn list(&self) -> Vec<String> {
        match self {
            Directories::One(d) => vec![d.clone()],
            Directories::Many(v) => v.clone(),
        }
    }
}

/// The external account binding of one CA (`[eab."DIRECTORY-URL"]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaEab {
    pub kid: String,
    pub hmac_key_file: PathBuf,
    #[serde(default)]
    pub algorithm: Option<String>,
}

/// Notifications: flags `--notify-*`, the file's `[notify]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyOptions {
    /// A URL that gets a JSON POST when a name fails, is refused, recovers, or the served
    /// certificate nears its expiry.
    #[arg(
        id = "notify_webhook",
        long = "notify-webhook",
        value_name = "URL",
        help_heading = "Notifications"
    )]
    pub webhook: Option<String>,
    /// An address mailed on the same events, through the sendmail program.
    #[arg(
        id = "notify_email",
        long = "notify-email",
        value_name = "ADDRESS",
        help_heading = "Notifications"
    )]
    pub email: Option<String>,
    /// The sendmail-compatible program (run with -t) [default: /usr/sbin/sendmail].
    #[arg(
        id = "notify_sendmail",
        long = "notify-sendmail",
        value_name = "PATH",
        help_heading = "Notifications"
    )]
    pub sendmail: Option<PathBuf>,
    /// Report the certificate nginx serves for a managed name when it expires within this
    /// many days [default: 14].
    #[arg(
        id = "notify_days",
        long = "notify-days",
        value_name = "DAYS",
        help_heading = "Notifications"
    )]
    pub days: Option<u32>,
}

impl NotifyOptions {
    fn over(self, file: NotifyOptions) -> NotifyOptions {
        NotifyOptions {
            webhook: self.webhook.or(file.webhook),
            email: self.email.or(file.email),
            sendmail: self.sendmail.or(file.sendmail),
            days: self.days.or(file.days),
        }
    }

    fn config(&self) -> Result<Option<NotifyConfig>, CliError> {
        if self.webhook.is_none() && self.email.is_none() {
            return Ok(None);
        }
        if let Some(url) = &self.webhook {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(CliError::Usage(format!(
                    "the notification webhook {url:?} (--notify-webhook, or webhook in [notify]) is not an http(s) URL"
                )));
            }
        }
        if let Some(email) = &self.email {
            if !acme_nginx::lifecycle::notify::is_address(email) {
                return Err(CliError::Usage(format!(
                    "--notify-email {email:?} is not an email address"
                )));
            }
        }
        Ok(Some(NotifyConfig {
            webhook: self.webhook.clone(),
            email: self.email.clone(),
            sendmail: self
                .sendmail
                .clone()
                .unwrap_or_else(|| DEFAULT_SENDMAIL.into()),
            days: self.days.unwrap_or(DEFAULT_NOTIFY_DAYS),
        }))
    }
}

/// Fleet mode: flags `--etcd`, `--node`, `--fleet-*`, `--etcd-*`; the file's `[fleet]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FleetOptions {
    /// etcd endpoints of the fleet's shared store (`http://10.0.0.1:2379`, comma-separated or
    /// repeated); enables fleet mode.
    #[arg(
        id = "fleet_etcd",
        long = "etcd",
        value_name = "URL",
        value_delimiter = ',',
        help_heading = "Fleet"
    )]
    #[serde(default)]
    pub etcd: Vec<String>,
    /// This node's name in the fleet [default: the host name].
    #[arg(
        id = "fleet_node",
        long = "node",
        value_name = "NAME",
        help_heading = "Fleet"
    )]
    pub node: Option<String>,
    /// The key prefix in etcd [default: /acme-nginx/].
    #[arg(
        id = "fleet_prefix",
        long = "fleet-prefix",
        value_name = "PREFIX",
        help_heading = "Fleet"
    )]
    pub prefix: Option<String>,
    /// The fleet key every node holds (32 random bytes, base64, mode 0600): private keys are
    /// stored in etcd sealed with it.
    #[arg(
        id = "fleet_key_file",
        long = "fleet-key-file",
        value_name = "FILE",
        help_heading = "Fleet"
    )]
    pub key_file: Option<PathBuf>,
    /// Where the other nodes reach this node's nginx over plain HTTP [default: the host's
    /// primary non-loopback address and HTTP_PORT; a host name given must resolve].
    #[arg(
        id = "fleet_address",
        long = "fleet-address",
        value_name = "HOST:PORT",
        help_heading = "Fleet"
    )]
    pub address: Option<String>,
    /// Extra trust anchor (PEM) for etcd's HTTPS.
    #[arg(
        id = "fleet_etcd_ca_file",
        long = "etcd-ca-file",
        value_name = "FILE",
        help_heading = "Fleet"
    )]
    pub etcd_ca_file: Option<PathBuf>,
    /// A client certificate (PEM) for etcd members that require one.
    #[arg(
        id = "fleet_etcd_cert_file",
        long = "etcd-cert-file",
        value_name = "FILE",
        requires = "fleet_etcd_key_file",
        help_heading = "Fleet"
    )]
    pub etcd_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        id = "fleet_etcd_key_file",
        long = "etcd-key-file",
        value_name = "FILE",
        requires = "fleet_etcd_cert_file",
        help_heading = "Fleet"
    )]
    pub etcd_key_file: Option<PathBuf>,
    /// etcd user (etcd's own authentication).
    #[arg(
        id = "fleet_etcd_user",
        long = "etcd-user",
        value_name = "USER",
        help_heading = "Fleet"
    )]
    pub etcd_user: Option<String>,
    /// A file holding the etcd user's password.
    #[arg(
        id = "fleet_etcd_password_file",
        long = "etcd-password-file",
        value_name = "FILE",
        help_heading = "Fleet"
    )]
    pub etcd_password_file: Option<PathBuf>,
    /// Seconds without a report after which `status --fleet` marks a node silent
    /// [default: 129600, 36 hours].
    #[arg(
        id = "fleet_silent_after",
        long = "fleet-silent-after",
        value_name = "SECONDS",
        help_heading = "Fleet"
    )]
    pub silent_after: Option<u64>,
    /// How every node answers http-01 [default: published]: `published` (the orderer
    /// publishes each answer, every node's agent writes it as a file) or `stateless` (every
    /// node's challenge location answers TOKEN.THUMBPRINT of the fleet account: no token is
    /// distributed or written anywhere).
    #[arg(
        id = "fleet_challenge",
        long = "fleet-challenge",
        value_name = "published|stateless",
        help_heading = "Fleet"
    )]
    pub challenge: Option<FleetChallenge>,
}

/// How a fleet answers http-01 (`[fleet] challenge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FleetChallenge {
    /// Each answer published in etcd and written as a file by every node's agent.
    Published,
    /// Answered by every node's nginx from the account's thumbprint, without files.
    Stateless,
}

impl FleetOptions {
    fn over(self, file: FleetOptions) -> FleetOptions {
        FleetOptions {
            etcd: if self.etcd.is_empty() {
                file.etcd
            } else {
                self.etcd
            },
            node: self.node.or(file.node),
            prefix: self.prefix.or(file.prefix),
            key_file: self.key_file.or(file.key_file),
            address: self.address.or(file.address),
            etcd_ca_file: self.etcd_ca_file.or(file.etcd_ca_file),
            etcd_cert_file: self.etcd_cert_file.or(file.etcd_cert_file),
            etcd_key_file: self.etcd_key_file.or(file.etcd_key_file),
            etcd_user: self.etcd_user.or(file.etcd_user),
            etcd_password_file: self.etcd_password_file.or(file.etcd_password_file),
            silent_after: self.silent_after.or(file.silent_after),
            challenge: self.challenge.or(file.challenge),
        }
    }

    /// The fleet's configuration; None without etcd endpoints.
    fn config(&self, http_port: u16) -> Result<Option<FleetConfig>, CliError> {
        if self.etcd.is_empty() {
            return Ok(None);
        }
        let key_file = self.key_file.clone().ok_or_else(|| {
            CliError::Usage(
                "--etcd needs --fleet-key-file (or `key_file` in the [fleet] table): private keys are stored in etcd sealed with it".into(),
            )
        })?;
        let node = match &self.node {
            Some(n) => n.clone(),
            None => nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .map_err(|e| {
                    CliError::Usage(format!("no --node given and the host name is unknown: {e}"))
                })?,
        };
        let ca_pem = self
            .etcd_ca_file
            .as_ref()
            .map(|p| std::fs::read(p).map_err(CliError::io(format!("read {}", p.display()))))
            .transpose()?;
        let user = match (&self.etcd_user, &self.etcd_password_file) {
            (Some(u), Some(p)) => {
                let password = acme_nginx::secret::read_secret(p).map_err(CliError::Secret)?;
                let line = password.expose_line().ok_or_else(|| {
                    CliError::Usage(format!(
                        "the etcd password file {} is not text",
                        p.display()
                    ))
                })?;
                Some((u.clone(), acme_nginx::secret::Secret::new(line)))
            }
            (Some(_), None) => {
                return Err(CliError::Usage(
                    "--etcd-user needs --etcd-password-file".into(),
                ))
            }
            _ => None,
        };
        let read =
            |p: &PathBuf| std::fs::read(p).map_err(CliError::io(format!("read {}", p.display())));
        let client_cert = match (&self.etcd_cert_file, &self.etcd_key_file) {
            (Some(c), Some(k)) => Some((
                read(c)?,
                acme_nginx::secret::read_secret(k).map_err(CliError::Secret)?,
            )),
            (None, None) => None,
            _ => {
                return Err(CliError::Usage(
                    "an etcd client certificate needs both etcd_cert_file and etcd_key_file".into(),
                ))
            }
        };
        Ok(Some(FleetConfig {
            etcd: EtcdConfig {
                endpoints: self.etcd.clone(),
                ca_pem,
                user,
                client_cert,
            },
            prefix: self
                .prefix
                .clone()
                .unwrap_or_else(|| DEFAULT_PREFIX.to_owned()),
            address: acme_nginx::lifecycle::fleet::node_address(self.address.as_deref(), http_port)
                .map_err(|e| CliError::Usage(e.to_string()))?,
            node,
            key_file,
            silent_after: self
                .silent_after
                .map_or(NODE_STALE_AFTER, std::time::Duration::from_secs),
            stateless: self.challenge == Some(FleetChallenge::Stateless),
        }))
    }
}

/// The DNS providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsProvider {
    /// RFC 2136 dynamic updates (BIND, Knot, PowerDNS, ...), signed with TSIG.
    Rfc2136,
    /// The PowerDNS HTTP API.
    Powerdns,
    /// A command: `CMD add|del NAME VALUE`.
    Hook,
}

/// The DNS solver: flags `--dns-*`, the file's `[dns]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsOptions {
    /// The DNS provider that makes dns-01 TXT records (enables wildcard names).
    #[arg(
        id = "dns_provider",
        long = "dns",
        visible_alias = "dns-provider",
        value_name = "rfc2136|powerdns|hook",
        help_heading = "DNS"
    )]
    pub provider: Option<DnsProvider>,
    /// rfc2136: the primary server updates go to.
    #[arg(
        id = "dns_server",
        long = "dns-server",
        value_name = "HOST[:PORT]",
        help_heading = "DNS"
    )]
    pub server: Option<String>,
    /// rfc2136: the TSIG key file, in BIND's format (`tsig-keygen` output).
    #[arg(
        id = "dns_tsig_key",
        long = "dns-tsig-key",
        value_name = "FILE",
        help_heading = "DNS"
    )]
    pub tsig_key: Option<PathBuf>,
    /// The zone to update, instead of the one found from the SOA (or the PowerDNS zone list).
    #[arg(
        id = "dns_zone",
        long = "dns-zone",
        value_name = "ZONE",
        help_heading = "DNS"
    )]
    pub zone: Option<String>,
    /// The zones whose names dns-01 may prove with these credentials (repeat the flag; in the
    /// file `zones = [...]`). When set, a name outside them is never proven by dns-01; when
    /// not, dns-01 proves only names of server blocks in files root owns and no other user
    /// can write, and the names `[challenges]` lists.
    #[arg(
        id = "dns_allow_zone",
        long = "dns-zones",
        visible_alias = "dns-allow-zone",
        value_name = "ZONE",
        help_heading = "DNS"
    )]
    #[serde(default)]
    pub zones: Vec<String>,
    /// A zone `_acme-challenge` CNAMEs may point into (acme-dns style delegation; repeat the
    /// flag; in the file `delegation_zones = [...]`). Without it a CNAME is followed only to a
    /// name whose first label is `_acme-challenge`.
    #[arg(
        id = "dns_delegation_zone",
        long = "dns-delegation-zones",
        visible_alias = "dns-delegation-zone",
        value_name = "ZONE",
        help_heading = "DNS"
    )]
    #[serde(default)]
    pub delegation_zones: Vec<String>,
    /// powerdns: the API's base URL (`http://127.0.0.1:8081`).
    #[arg(
        id = "dns_api_url",
        long = "dns-api-url",
        value_name = "URL",
        help_heading = "DNS"
    )]
    pub api_url: Option<String>,
    /// powerdns: a file holding the API key.
    #[arg(
        id = "dns_api_key_file",
        long = "dns-api-key-file",
        value_name = "FILE",
        help_heading = "DNS"
    )]
    pub api_key_file: Option<PathBuf>,
    /// hook: the command run as `CMD add|del NAME VALUE`.
    #[arg(
        id = "dns_hook",
        long = "dns-hook",
        value_name = "CMD",
        help_heading = "DNS"
    )]
    pub hook: Option<String>,
    /// The resolver lookups go to: DNS solver, CAA, the public-address preflight [default: the
    /// first nameserver of /etc/resolv.conf].
    #[arg(
        id = "dns_resolver",
        long = "dns-resolver",
        value_name = "IP[:PORT]",
        env = "ACME_NGINX_DNS_RESOLVER",
        help_heading = "DNS"
    )]
    pub resolver: Option<String>,
    /// The port authoritative servers are asked on [default: 53; another only for test beds].
    #[arg(
        id = "dns_authoritative_port",
        long = "dns-authoritative-port",
        value_name = "PORT",
        help_heading = "DNS"
    )]
    pub authoritative_port: Option<u16>,
    /// Seconds to wait for every authoritative server to return a new record [default: 120].
    #[arg(
        id = "dns_propagation_timeout",
        long = "dns-propagation-timeout",
        value_name = "SECS",
        help_heading = "DNS"
    )]
    pub propagation_timeout: Option<u64>,
}

impl DnsOptions {
    fn over(self, file: DnsOptions) -> DnsOptions {
        DnsOptions {
            provider: self.provider.or(file.provider),
            server: self.server.or(file.server),
            tsig_key: self.tsig_key.or(file.tsig_key),
            zone: self.zone.or(file.zone),
            zones: if self.zones.is_empty() {
                file.zones
            } else {
                self.zones
            },
            delegation_zones: if self.delegation_zones.is_empty() {
                file.delegation_zones
            } else {
                self.delegation_zones
            },
            api_url: self.api_url.or(file.api_url),
            api_key_file: self.api_key_file.or(file.api_key_file),
            hook: self.hook.or(file.hook),
            resolver: self.resolver.or(file.resolver),
            authoritative_port: self.authoritative_port.or(file.authoritative_port),
            propagation_timeout: self.propagation_timeout.or(file.propagation_timeout),
        }
    }

    /// The resolver override, if any.
    fn resolver(&self) -> Result<Option<Resolver>, CliError> {
        let port = self.authoritative_port.unwrap_or(lookup::DNS_PORT);
        match &self.resolver {
            Some(text) => {
                let server = lookup::parse_server(text, lookup::DNS_PORT).ok_or_else(|| {
                    CliError::Usage(format!(
                        "--dns-resolver {text:?}: not an IP address with an optional port"
                    ))
                })?;
                Ok(Some(Resolver {
                    server,
                    authoritative_port: port,
                }))
            }
            None if self.authoritative_port.is_some() => Ok(Some(Resolver {
                authoritative_port: port,
                ..Resolver::system()
            })),
            None => Ok(None),
        }
    }

    /// The DNS solver's configuration; None without a provider. A provider without what it
    /// needs, or provider settings without a provider, is a usage error.
    fn config(&self) -> Result<Option<DnsConfig>, CliError> {
        let need = |what: &str, flag: &str| {
            CliError::Usage(format!(
                "--dns {what} needs --dns-{flag} (or `{}` in the [dns] table)",
                flag.replace('-', "_")
            ))
        };
        let provider = match self.provider {
            None => {
                if self.server.is_some()
                    || self.tsig_key.is_some()
                    || self.api_url.is_some()
                    || self.api_key_file.is_some()
                    || self.hook.is_some()
                {
                    return Err(CliError::Usage(
                        "DNS provider settings without a provider: add --dns rfc2136|powerdns|hook (or `provider` in the [dns] table)".into(),
                    ));
                }
                return Ok(None);
            }
            Some(DnsProvider::Rfc2136) => ProviderConfig::Rfc2136 {
                server: self
                    .server
                    .clone()
                    .ok_or_else(|| need("rfc2136", "server"))?,
                tsig_key: self.tsig_key.clone(),
            },
            Some(DnsProvider::Powerdns) => ProviderConfig::PowerDns {
                api_url: self
                    .api_url
                    .clone()
                    .ok_or_else(|| need("powerdns", "api-url"))?,
                api_key_file: self
                    .api_key_file
                    .clone()
                    .ok_or_else(|| need("powerdns", "api-key-file"))?,
            },
            Some(DnsProvider::Hook) => ProviderConfig::Hook {
                command: self.hook.clone().ok_or_else(|| need("hook", "hook"))?,
            },
        };
        Ok(Some(DnsConfig {
            provider,
            zone: self.zone.clone(),
            delegation_zones: self
                .delegation_zones
                .iter()
                .map(|z| z.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            resolver: self.resolver()?,
            propagation_timeout: self
                .propagation_timeout
                .map_or(DEFAULT_PROPAGATION_TIMEOUT, Duration::from_secs),
        }))
    }
}

/// The external account binding: the key id, and the HMAC key from its file (read as a
/// secret) or, deprecated, from the option itself.
fn eab(o: &Options) -> Result<Option<Eab>, CliError> {
    let binding = eab_binding(
        o.eab_kid.as_deref(),
        o.eab_hmac_key_file.as_deref(),
        o.eab_hmac_key.as_deref(),
    )?;
    let algorithm = eab_algorithm(o.eab_algorithm.as_deref())?;
    Ok(binding.map(|(kid, key)| Eab {
        kid,
        key,
        algorithm,
    }))
}

/// ZeroSSL's directory and EAB endpoint; test beds stand in for them with
/// `ACME_NGINX_ZEROSSL_DIRECTORY` and `ACME_NGINX_ZEROSSL_EAB_URL`.
fn zerossl() -> ZeroSsl {
    let default = ZeroSsl::default();
    ZeroSsl {
        directory: std::env::var("ACME_NGINX_ZEROSSL_DIRECTORY").unwrap_or(default.directory),
        eab_url: std::env::var("ACME_NGINX_ZEROSSL_EAB_URL").unwrap_or(default.eab_url),
    }
}

fn eab_algorithm(text: Option<&str>) -> Result<acme::EabAlgorithm, CliError> {
    text.map(str::parse)
        .transpose()
        .map(Option::unwrap_or_default)
        .map_err(|e: acme::UnknownEabAlgorithm| CliError::Usage(e.to_string()))
}

/// The `[eab."URL"]` tables, each key file read as a secret.
fn eab_by_directory(o: &Options) -> Result<BTreeMap<String, Eab>, CliError> {
    o.eab
        .iter()
        .map(|(url, e)| {
            let (kid, key) = eab_binding(Some(&e.kid), Some(&e.hmac_key_file), None)?
                .ok_or_else(|| CliError::Usage(format!("[eab.{url:?}] has no key")))?;
            let algorithm = eab_algorithm(e.algorithm.as_deref())
                .map_err(|e| CliError::Usage(format!("[eab.{url:?}] algorithm: {e}")))?;
            Ok((
                url.clone(),
                Eab {
                    kid,
                    key,
                    algorithm,
                },
            ))
        })
        .collect()
}

/// An external account binding from its key id and its HMAC key: from the key file (read as
/// a secret) or, deprecated, the value itself; both or neither.
pub fn eab_binding(
    kid: Option<&str>,
    key_file: Option<&Path>,
    key: Option<&str>,
) -> Result<Option<(String, acme_nginx::secret::Secret)>, CliError> {
    let key = match (key_file, key) {
        (Some(file), _) => {
            let secret = acme_nginx::secret::read_secret(file)?;
            let line = secret.expose_line().ok_or_else(|| {
                CliError::Usage(format!(
                    "the EAB HMAC key file {} is not text",
                    file.display()
                ))
            })?;
            Some(acme_nginx::secret::Secret::new(line.trim()))
        }
        (None, Some(value)) => Some(acme_nginx::secret::Secret::new(value)),
        (None, None) => None,
    };
    match (kid, key) {
        (Some(kid), Some(key)) => Ok(Some((kid.to_owned(), key))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(CliError::Usage(
            "--eab-kid needs --eab-hmac-key-file (the HMAC key)".into(),
        )),
        (None, Some(_)) => Err(CliError::Usage(
            "an EAB HMAC key needs --eab-kid (the key id)".into(),
        )),
    }
}

/// Fills each unset field of `$a` from `$b`.
macro_rules! or_fields {
    ($a:ident, $b:ident; $($f:ident),*; $($flag:ident),*) => {
        Options {
            $($f: $a.$f.or($b.$f),)*
            $($flag: $a.$flag || $b.$flag,)*
            challenges: if $a.challenges.is_empty() { $b.challenges } else { $a.challenges },
            exclude: $b.exclude.into_iter().chain($a.exclude).collect(),
            fleet: $a.fleet.over($b.fleet),
            dns: $a.dns.over($b.dns),
            notify: $a.notify.over($b.notify),
            caa_identities: if $a.caa_identities.is_empty() { $b.caa_identities } else { $a.caa_identities },
            eab: if $a.eab.is_empty() { $b.eab } else { $a.eab },
        }
    };
}

impl Options {
    /// These options (flags) over the configuration file's.
    fn over(self, file: Options) -> Options {
        or_fields!(self, file;
            directory, ca_file, config_file, state_dir, nginx_conf, nginx_bin, nginx_prefix,
            nginx_dump, http_port, https_port, challenge_snippet, challenge_dir, email, eab_kid,
            eab_hmac_key, eab_hmac_key_file, key_type, profile, preferred_chain, concurrency, pre_hook, post_hook,
            deploy_hook, hooks_dir, challenge, http_dav, http_dav_user, http_dav_password_file,
            eab_algorithm, public_preflight, dns_resolver;
            redirect, agree_tos, reuse_key, take_over, http_route)
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
        if self.eab_hmac_key.is_some() {
            tracing::warn!(
                "--eab-hmac-key puts the key where every local user sees it (ps, /proc); \
                 put it in a file only root can read and pass --eab-hmac-key-file"
            );
        }
        let o = self.clone().over(file);
        let eab = eab(&o)?;
        let mut directories = if ctx.explicit_directories.is_empty() {
            o.directory
                .as_ref()
                .map(Directories::list)
                .unwrap_or_default()
        } else {
            ctx.explicit_directories.clone()
        };
        if directories.is_empty() {
            directories.push(ctx.directory_url.clone());
        }
        for d in &directories {
            if !(d.starts_with("https://") || d.starts_with("http://")) {
                return Err(CliError::Usage(format!(
                    "directory {d:?} is not an http(s) URL"
                )));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        directories.retain(|d| seen.insert(d.clone()));
        let directory = directories.remove(0);
        let resolver = match (&o.dns.resolver, &o.dns_resolver) {
            (Some(_), _) => o.dns.resolver()?,
            (None, Some(_)) => DnsOptions {
                resolver: o.dns_resolver.clone(),
                ..DnsOptions::default()
            }
            .resolver()?,
            (None, None) => None,
        };
        let client_config = match (&ctx.ca_file, &o.ca_file) {
            (None, Some(path)) => acme::ClientConfig::with_ca_file(path)?,
            _ => ctx.client_config.clone(),
        };
        let state_dir = o
            .state_dir
            .clone()
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        let dns = o.dns.config()?;
        let challenge = o.challenge.unwrap_or_default();
        let challenges: BTreeMap<String, Challenge> = o
            .challenges
            .iter()
            .map(|(n, c)| (n.trim_end_matches('.').to_ascii_lowercase(), *c))
            .collect();
        if dns.is_none() {
            let asked = (challenge == Challenge::Dns01)
                .then(|| "--challenge dns-01".to_owned())
                .or_else(|| {
                    challenges
                        .iter()
                        .find(|(_, c)| **c == Challenge::Dns01)
                        .map(|(n, _)| format!("[challenges] {n:?} = \"dns-01\""))
                });
            if let Some(asked) = asked {
                return Err(CliError::Usage(format!(
                    "{asked} needs a DNS solver: add --dns rfc2136|powerdns|hook (or a [dns] table)"
                )));
            }
        }
        let dav = o.http_dav.clone().map(|url| DavConfig {
            url,
            user: o.http_dav_user.clone(),
            password_file: o.http_dav_password_file.clone(),
        });
        Ok(Settings {
            directory,
            fallback_directories: directories,
            caa_identities: o
                .caa_identities
                .iter()
                .map(|(url, ids)| {
                    let ids = ids
                        .iter()
                        .map(|i| i.trim_end_matches('.').to_ascii_lowercase())
                        .collect();
                    (url.clone(), ids)
                })
                .collect(),
            eab_by_directory: eab_by_directory(&o)?,
            zerossl: zerossl(),
            public_preflight: o.public_preflight.unwrap_or(true),
            notify: o.notify.config()?,
            client_config,
            nginx: paths(&o),
            email: o.email,
            agree_tos: o.agree_tos,
            eab,
            key_type: o.key_type,
            profile: o.profile,
            preferred_chain: o.preferred_chain,
            http_port: o.http_port.unwrap_or(DEFAULT_HTTP_PORT),
            https_port: o.https_port.unwrap_or(DEFAULT_HTTPS_PORT),
            redirect: o.redirect,
            take_over: o.take_over,
            http_route: o.http_route,
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
            challenge,
            challenges,
            resolver,
            dns_zones: o
                .dns
                .zones
                .iter()
                .map(|z| z.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            dns,
            dav,
            exclude: o.exclude,
            fleet: o.fleet.config(o.http_port.unwrap_or(DEFAULT_HTTP_PORT))?,
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
