//! The settings of a run, resolved (flags over the configuration file over defaults happen in
//! the command line; here every value is final), and the run's [`Mode`].

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

pub use super::plan::Challenge;
use crate::acme::{self, KeyType};
use crate::challenge::dav::DavConfig;
use crate::challenge::dns::lookup::Resolver;
use crate::challenge::dns::DnsConfig;
use crate::hooks::Hooks;
use crate::nginx;

/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/acme-nginx";
/// The default hook directory (holding `pre.d`, `post.d`, `deploy.d`).
pub const DEFAULT_HOOKS_DIR: &str = "/etc/acme-nginx/hooks";
/// The default location of the challenge snippet `enroll` includes.
/// Outside nginx's own directories, so no `include snippets/*.conf` or `conf.d/*.conf` of a
/// real configuration picks it up by accident (checked at run time as well).
pub const DEFAULT_SNIPPET: &str = "/etc/acme-nginx/nginx/acme-challenge.conf";
/// The port the CA validates http-01 on (RFC 8555 section 8.3: always 80; another one only for
/// test beds whose CA is told so).
pub const DEFAULT_HTTP_PORT: u16 = 80;
/// The default HTTPS port for new listeners.
pub const DEFAULT_HTTPS_PORT: u16 = 443;
/// Orders in flight at once.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// A notification is sent when the certificate nginx serves for a managed name expires within
/// this many days.
pub const DEFAULT_NOTIFY_DAYS: u32 = 14;
/// The sendmail-compatible program notifications by email go through.
pub const DEFAULT_SENDMAIL: &str = "/usr/sbin/sendmail";

/// What a run may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Order, store, install, reload, verify.
    Live,
    /// Order from the CA's staging directory where it has one; change nothing on disk.
    DryRun,
    /// Order and store, but neither edit nor reload nginx.
    NoInstall,
}

impl Mode {
    /// True when the run writes the state directory.
    pub fn writes_state(self) -> bool {
        self != Mode::DryRun
    }

    /// True when the run may edit and reload nginx.
    pub fn edits_nginx(self) -> bool {
        self == Mode::Live
    }
}

/// ZeroSSL's ACME directory: it requires external account binding, and hands out credentials
/// for an email address at [`ZEROSSL_EAB_URL`].
pub const ZEROSSL_DIRECTORY: &str = "https://acme.zerossl.com/v2/DV90";
/// ZeroSSL's documented endpoint for EAB credentials by email
/// (`POST email=ADDRESS` -> `{"success": true, "eab_kid": ..., "eab_hmac_key": ...}`).
pub const ZEROSSL_EAB_URL: &str = "https://api.zerossl.com/acme/eab-credentials-email";

/// Where a CA that hands out EAB credentials per email (ZeroSSL) is, and its endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZeroSsl {
    /// Its directory URL (another one only for test beds).
    pub directory: String,
    /// Its EAB endpoint (another one only for test beds).
    pub eab_url: String,
}

impl Default for ZeroSsl {
    fn default() -> Self {
        ZeroSsl {
            directory: ZEROSSL_DIRECTORY.to_owned(),
            eab_url: ZEROSSL_EAB_URL.to_owned(),
        }
    }
}

/// An external account binding: key id, MAC key, algorithm.
#[derive(Debug, Clone)]
pub struct Eab {
    pub kid: String,
    pub key: crate::secret::Secret,
    pub algorithm: acme::EabAlgorithm,
}

/// Who is told when a name fails or the served certificate nears its expiry (`[notify]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyConfig {
    /// A URL that gets a JSON POST per event.
    pub webhook: Option<String>,
    /// An address mailed through `sendmail`.
    pub email: Option<String>,
    /// The sendmail-compatible program (`-t`: recipients from the headers).
    pub sendmail: PathBuf,
    /// Days before the served certificate's expiry from which it is reported.
    pub days: u32,
}

/// Every setting of a run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The preferred CA's directory URL.
    pub directory: String,
    /// The CAs tried, in order, when the preferred one cannot issue a name (down, rate limited,
    /// or not allowed by the name's CAA records).
    pub fallback_directories: Vec<String>,
    /// The CAA identities of CAs whose directory lists none (`[caa_identities]`: URL -> domains).
    pub caa_identities: BTreeMap<String, Vec<String>>,
    pub client_config: acme::ClientConfig,
    pub state_dir: PathBuf,
    pub nginx: nginx::Paths,
    pub email: Option<String>,
    pub agree_tos: bool,
    /// External account binding at the preferred CA.
    pub eab: Option<Eab>,
    /// External account bindings of other CAs, by directory URL (`[eab."URL"]`).
    pub eab_by_directory: BTreeMap<String, Eab>,
    /// ZeroSSL's directory and EAB endpoint: without a binding for it, one is fetched for the
    /// account's email.
    pub zerossl: ZeroSsl,
    /// The certificates' key type; None: the type the block serves now, else ECDSA P-256.
    pub key_type: Option<KeyType>,
    pub profile: Option<String>,
    pub preferred_chain: Option<String>,
    /// The port the CA connects to for http-01.
    pub http_port: u16,
    pub https_port: u16,
    pub redirect: bool,
    /// Named blocks whose certificate another mechanism picks are taken over (see
    /// [`crate::nginx::discovery::ServerBlock::managed_elsewhere`]).
    pub take_over: bool,
    /// A name nginx answers only over HTTPS gets a marked port-80 block (`--http-route`).
    pub http_route: bool,
    pub hooks: Hooks,
    /// The challenge snippet included into blocks that serve no challenge directory.
    pub snippet: PathBuf,
    /// The directory that snippet serves.
    pub challenge_dir: PathBuf,
    pub concurrency: usize,
    /// Keep the private key across renewals.
    pub reuse_key: bool,
    /// The challenge names take unless `challenges` says otherwise (wildcards always dns-01).
    pub challenge: Challenge,
    /// Per-name challenge choices (lowercase names).
    pub challenges: BTreeMap<String, Challenge>,
    /// The DNS solver, when one is configured.
    pub dns: Option<DnsConfig>,
    /// The zones dns-01 may prove names in with the operator's DNS credentials (lowercase, no
    /// trailing dot); empty: names of blocks in files only root can write, and names
    /// `[challenges]` lists.
    pub dns_zones: Vec<String>,
    /// The WebDAV server http-01 tokens go to instead of this host's nginx.
    pub dav: Option<DavConfig>,
    /// The resolver for lookups (DNS solver, WebDAV preflight, CAA, the public-address
    /// preflight); the system's when None.
    pub resolver: Option<Resolver>,
    /// Before any order, each http-01 name's public A/AAAA addresses must lead to this nginx.
    pub public_preflight: bool,
    /// Notifications, when configured.
    pub notify: Option<NotifyConfig>,
    /// Names never enrolled: globs, case-insensitive.
    pub exclude: Vec<String>,
    /// Fleet mode: the shared store in etcd.
    pub fleet: Option<super::fleet::FleetConfig>,
}

impl Settings {
    /// Settings with every default, for a CA directory.
    pub fn with_defaults(directory: &str) -> Self {
        let state_dir = PathBuf::from(DEFAULT_STATE_DIR);
        Self {
            directory: directory.to_owned(),
            fallback_directories: Vec::new(),
            caa_identities: BTreeMap::new(),
            client_config: acme::ClientConfig::default(),
            challenge_dir: state_dir.join("challenge"),
            state_dir,
            nginx: nginx::Paths::default(),
            email: None,
            agree_tos: false,
            eab: None,
            eab_by_directory: BTreeMap::new(),
            zerossl: ZeroSsl::default(),
            key_type: None,
            profile: None,
            preferred_chain: None,
            http_port: DEFAULT_HTTP_PORT,
            https_port: DEFAULT_HTTPS_PORT,
            redirect: false,
            take_over: false,
            http_route: false,
            hooks: Hooks {
                dir: Some(DEFAULT_HOOKS_DIR.into()),
                ..Hooks::default()
            },
            snippet: DEFAULT_SNIPPET.into(),
            concurrency: DEFAULT_CONCURRENCY,
            reuse_key: false,
            challenge: Challenge::Http01,
            challenges: BTreeMap::new(),
            dns: None,
            dns_zones: Vec::new(),
            dav: None,
            resolver: None,
            public_preflight: false,
            notify: None,
            exclude: Vec::new(),
            fleet: None,
        }
    }

    /// How names are proven: what [`crate::lifecycle::plan::Proving`] needs from the settings.
    pub fn proving(&self) -> super::plan::Proving<'_> {
        super::plan::Proving {
            dns: self.dns.is_some(),
            dav: self.dav.is_some(),
            default: self.challenge,
            per_name: &self.challenges,
            exclude: &self.exclude,
            dns_zones: &self.dns_zones,
        }
    }

    /// Every CA, preferred first.
    pub fn directories(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.directory.as_str())
            .chain(self.fallback_directories.iter().map(String::as_str))
    }

    /// The external account binding for a CA.
    pub fn eab_for(&self, directory: &str) -> Option<&Eab> {
        self.eab_by_directory
            .get(directory)
            .or(self.eab.as_ref().filter(|_| directory == self.directory))
    }

    /// The resolver lookups go to.
    pub fn resolver(&self) -> Resolver {
        self.resolver.unwrap_or_else(Resolver::system)
    }

    /// A dry run against Let's Encrypt production goes to its staging directory instead.
    /// The other CAs are left out: a dry run orders only from a staging directory, and an
    /// order from a fallback would be real.
    pub fn use_staging_for_dry_run(&mut self) {
        if self.directory == acme::LETSENCRYPT_PRODUCTION {
            self.directory = acme::LETSENCRYPT_STAGING.to_owned();
        }
        self.fallback_directories.clear();
    }
}

/// The snippet `enroll` includes: the ACME challenge location served from `challenge_dir`.
pub fn snippet_text(challenge_dir: &Path) -> String {
    format!(
        "# The ACME http-01 challenge location, included by acme-nginx into server blocks that\n\
         # serve no challenge directory of their own.\n\
         location ^~ /.well-known/acme-challenge/ {{\n    alias {}/;\n    default_type text/plain;\n    try_files $uri =404;\n}}\n",
        challenge_dir.display().to_string().trim_end_matches('/')
    )
}

/// The snippet of a stateless fleet: every token under `/.well-known/acme-challenge/` is
/// answered with `TOKEN.THUMBPRINT` of the account, without a file. The regex location sits
/// inside a `^~` prefix location, so no regex location of the block can take the URI first
/// (as with the directory snippet).
pub fn stateless_snippet_text(thumbprint: &str) -> String {
    format!(
        "# The ACME http-01 challenge location, included by acme-nginx into server blocks that\n\
         # serve no challenge directory of their own. Stateless: every token is answered with\n\
         # TOKEN.THUMBPRINT of the account, without a file.\n\
         location ^~ /.well-known/acme-challenge/ {{\n    default_type text/plain;\n    \
         location ~ \"^/\\.well-known/acme-challenge/([-_A-Za-z0-9]+)$\" {{\n        \
         return 200 \"$1.{thumbprint}\";\n    }}\n    return 404;\n}}\n"
    )
}

/// Whether `text` is a challenge snippet acme-nginx wrote (for any challenge directory, or
/// stateless for any account), as it wrote it: only such a file is rewritten when the mode,
/// the directory or the account changes.
pub fn is_our_snippet(text: &str) -> bool {
    let arg = |prefix: &str, suffix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix)?.strip_suffix(suffix))
            .map(str::to_owned)
    };
    arg("alias ", "/;").is_some_and(|dir| text == snippet_text(Path::new(&dir)))
        || arg("return 200 \"$1.", "\";").is_some_and(|t| text == stateless_snippet_text(&t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nginx::discovery::{scan, BuildDefaults};
    use crate::nginx::Config;

    /// A dry run never orders from a production CA, fallbacks included.
    #[test]
    fn a_dry_run_uses_staging_and_no_fallback() {
        let mut s = Settings::with_defaults(acme::LETSENCRYPT_PRODUCTION);
        s.fallback_directories = vec![ZEROSSL_DIRECTORY.to_owned()];
        s.use_staging_for_dry_run();
        assert_eq!(
            s.directories().collect::<Vec<_>>(),
            [acme::LETSENCRYPT_STAGING]
        );
    }

    #[test]
    fn shipped_snippet_is_the_one_enroll_writes() {
        let shipped = include_str!("../../nginx/acme-challenge.conf");
        assert_eq!(
            shipped,
            snippet_text(&Path::new(DEFAULT_STATE_DIR).join("challenge"))
        );
    }

    #[test]
    fn snippet_serves_the_challenge_dir() {
        let text = snippet_text(Path::new("/var/lib/acme-nginx/challenge/"));
        let cfg = Config::parse_str(
            Path::new("s.conf"),
            format!("http {{ server {{ listen 80; server_name a.test; {text} }} }}").as_bytes(),
        )
        .unwrap();
        let s = scan(&cfg, &BuildDefaults::default());
        assert_eq!(
            s.servers[0].acme_challenge_dir.as_deref(),
            Some(Path::new("/var/lib/acme-nginx/challenge"))
        );
    }

    /// The stateless snippet, included in a block whose regexes would otherwise take dotted
    /// paths, answers every token for its account; both snippets are recognised as ours.
    #[test]
    fn stateless_snippet_answers_for_the_account() {
        let thumb = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
        let text = stateless_snippet_text(thumb);
        let cfg = Config::parse_str(
            Path::new("s.conf"),
            format!(
                "http {{ server {{ listen 80; server_name a.test; location ~ /\\. {{ deny all; }} {text} }} }}"
            )
            .as_bytes(),
        )
        .unwrap();
        let s = scan(&cfg, &BuildDefaults::default());
        assert_eq!(
            s.servers[0].acme_challenge_stateless.as_deref(),
            Some(thumb)
        );
        assert_eq!(s.servers[0].acme_challenge_dir, None);
        assert!(is_our_snippet(&text));
        assert!(is_our_snippet(&snippet_text(Path::new(
            "/var/lib/acme-nginx/challenge"
        ))));
        assert!(is_our_snippet(&snippet_text(Path::new("/elsewhere/"))));
        assert!(!is_our_snippet(&text.replace("404", "403")));
        assert!(!is_our_snippet(
            &snippet_text(Path::new("/srv/acme")).replace("try_files", "# try_files")
        ));
    }
}
