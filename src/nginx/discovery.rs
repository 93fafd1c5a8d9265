//! Discovery: every `server` block of the `http` context in document order (includes expanded in
//! place), with its names (and which of them can be enrolled), listeners, certificates and the
//! directory it serves `/.well-known/acme-challenge/` from; then the TLS servers of the
//! `stream` and `mail` contexts (their names from `server_name`, or on nginx before 1.25.5 a
//! stream server's `# acme-nginx: server_name NAME...` comment); plus the global facts a client
//! needs (worker user and group, pid file).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::location::{serve, Serving};
use super::parser::{Config, Directive, FileId};

/// Below this many server blocks discovery runs on the calling thread.
const PARALLEL_MIN_SERVERS: usize = 256;

/// Maps `items` with `f` on every core (server blocks are independent), keeping their order.
/// A panic in a worker is carried over to the caller.
fn in_order_on_all_cores<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if items.len() < PARALLEL_MIN_SERVERS || threads < 2 {
        return items.iter().map(f).collect();
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(items.len().div_ceil(threads))
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// The URI probed for the challenge directory (a token of the usual shape).
pub const PROBE_TOKEN: &str = "acme-nginx-probe_0123456789-ABCDEFGHIJ";

/// Facts nginx was compiled with (`nginx -V`); Debian's values by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildDefaults {
    pub prefix: PathBuf,
    pub pid_path: PathBuf,
    pub user: String,
    pub group: String,
}

impl Default for BuildDefaults {
    fn default() -> Self {
        Self {
            prefix: PathBuf::from("/usr/share/nginx"),
            pid_path: PathBuf::from("/run/nginx.pid"),
            user: "nobody".into(),
            group: "nogroup".into(),
        }
    }
}

impl BuildDefaults {
    /// Reads `--prefix=`, `--pid-path=`, `--user=`, `--group=` from `nginx -V` output; what is
    /// absent keeps nginx's own defaults (prefix /usr/local/nginx, pid logs/nginx.pid, nobody).
    pub fn from_nginx_v(output: &str) -> Self {
        let arg = |name: &str| {
            output
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .map(|v| v.trim_matches(['\'', '"']).to_owned())
        };
        let prefix = PathBuf::from(arg("--prefix=").unwrap_or_else(|| "/usr/local/nginx".into()));
        let pid_path = arg("--pid-path=").map_or_else(
            || prefix.join("logs/nginx.pid"),
            |p| {
                let p = PathBuf::from(p);
                if p.is_absolute() {
                    p
                } else {
                    prefix.join(p)
                }
            },
        );
        let user = arg("--user=").unwrap_or_else(|| "nobody".into());
        let group = arg("--group=").unwrap_or_else(|| {
            if user == "nobody" {
                "nogroup".into()
            } else {
                user.clone()
            }
        });
        Self {
            prefix,
            pid_path,
            user,
            group,
        }
    }

    /// Asks the nginx binary (`nginx -V`); Debian's defaults when it cannot be run.
    pub fn probe(nginx: &Path) -> Self {
        match std::process::Command::new(nginx).arg("-V").output() {
            Ok(out) if out.status.success() => {
                Self::from_nginx_v(&String::from_utf8_lossy(&out.stderr))
            }
            _ => Self::default(),
        }
    }
}

/// One `listen` directive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listen {
    /// Address as written (`*`, `127.0.0.1`, `[::]`, `unix:/path`).
    pub address: String,
    pub port: u16,
    pub ssl: bool,
    pub default_server: bool,
    pub ipv6: bool,
    /// The directive's arguments as written.
    pub raw: String,
    /// True for the `listen *:80` nginx uses when a server has none.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub implicit: bool,
    /// `proxy_protocol`: every connection must start with a PROXY protocol header (a load
    /// balancer in front adds it); probes over loopback send one too.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub proxy_protocol: bool,
}

impl Listen {
    /// Parses `listen` arguments.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Option<Self> {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let first = *args.first()?;
        let (address, port) = if first.starts_with("unix:") {
            (first.to_owned(), 0)
        } else if let Some(rest) = first.strip_prefix('[') {
            let (host, after) = rest.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok()?,
                None if after.is_empty() => 80,
                None => return None,
            };
            (format!("[{host}]"), port)
        } else if let Ok(port) = first.parse::<u16>() {
            ("*".to_owned(), port)
        } else if let Some((host, port)) = first.rsplit_once(':') {
            (host.to_owned(), port.parse().ok()?)
        } else {
            (first.to_owned(), 80)
        };
        let flag = |f: &str| args[1..].contains(&f);
        Some(Self {
            ipv6: address.starts_with('['),
            ssl: flag("ssl") || flag("quic"),
            default_server: flag("default_server") || flag("default"),
            raw: args.join(" "),
            address,
            port,
            implicit: false,
            proxy_protocol: flag("proxy_protocol"),
        })
    }
}

/// The context a server block is in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Context {
    /// `http { server { ... } }`: answers http-01, gets HTTPS listeners.
    #[default]
    Http,
    /// `stream { server { ... } }`: TLS in front of any TCP service.
    Stream,
    /// `mail { server { ... } }`: SMTP, IMAP or POP3 over TLS or with STARTTLS.
    Mail,
}

impl Context {
    pub fn as_str(self) -> &'static str {
        match self {
            Context::Http => "http",
            Context::Stream => "stream",
            Context::Mail => "mail",
        }
    }
}

/// A mail protocol (what a STARTTLS proof speaks before its handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MailProtocol {
    Smtp,
    Imap,
    Pop3,
}

impl MailProtocol {
    /// The protocol a `protocol` directive names, else the one nginx detects from a listener's
    /// well-known port.
    fn of(protocol: Option<&str>, ports: impl Iterator<Item = u16>) -> Option<MailProtocol> {
        match protocol {
            Some("smtp") => return Some(MailProtocol::Smtp),
            Some("imap") => return Some(MailProtocol::Imap),
            Some("pop3") => return Some(MailProtocol::Pop3),
            Some(_) => return None,
            None => {}
        }
        ports.into_iter().find_map(|p| match p {
            25 | 465 | 587 => Some(MailProtocol::Smtp),
            143 | 993 => Some(MailProtocol::Imap),
            110 | 995 => Some(MailProtocol::Pop3),
            _ => None,
        })
    }
}

/// The comment that names a stream server on nginx versions without stream `server_name`
/// (before 1.25.5): `# acme-nginx: server_name NAME...` inside the server block.
pub const NAME_MARKER: &str = "# acme-nginx: server_name";

/// A name that will not be enrolled, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

/// One server block.
#[derive(Debug, Clone, Serialize)]
pub struct ServerBlock {
    pub file: PathBuf,
    pub line: u32,
    #[serde(skip)]
    pub file_id: FileId,
    /// Byte range of the block in its file.
    #[serde(skip)]
    pub span: (usize, usize),
    pub server_names: Vec<String>,
    pub enrollable: Vec<String>,
    pub skipped: Vec<Skipped>,
    pub listen: Vec<Listen>,
    /// Every `ssl_certificate` in effect (several for RSA + ECDSA).
    pub ssl_certificates: Vec<String>,
    pub ssl_certificate_keys: Vec<String>,
    pub acme_challenge_dir: Option<PathBuf>,
    /// Why there is no challenge directory (null when there is one).
    pub acme_challenge_reason: Option<String>,
    /// Stateless http-01: the JWK thumbprint the block's challenge location answers every
    /// token with (`return 200 "$1.THUMBPRINT"`), where there is no directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme_challenge_stateless: Option<Box<str>>,
    /// True when a server-level `return`/`rewrite` answers the challenge URI before any
    /// location is chosen (an included challenge location could not win).
    pub challenge_answered_at_server_level: bool,
    /// `file:line` of the block's `# acme-nginx: ignore` marker: none of its names is enrolled.
    pub ignored: Option<String>,
    /// Why another mechanism picks this block's certificate (nginx's own ACME module, a
    /// variable `ssl_certificate`): acme-nginx leaves it alone unless told to take it over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_elsewhere: Option<String>,
    /// `http`, `stream` or `mail`.
    pub context: Context,
    /// A mail server that offers STARTTLS (`starttls on|only`): the protocol its plain
    /// listeners are proven with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starttls: Option<MailProtocol>,
    /// What a stream or mail server lacks to be enrolled (no TLS, no names).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
}

impl ServerBlock {
    /// The first `ssl_certificate` in effect (its own or inherited from `http`).
    pub fn ssl_certificate(&self) -> Option<&str> {
        self.ssl_certificates.first().map(String::as_str)
    }

    /// The first `ssl_certificate_key` in effect.
    pub fn ssl_certificate_key(&self) -> Option<&str> {
        self.ssl_certificate_keys.first().map(String::as_str)
    }

    /// True for a block of the `http` context.
    pub fn is_http(&self) -> bool {
        self.context == Context::Http
    }

    /// True when a listener of this block speaks TLS, directly or after STARTTLS.
    pub fn serves_tls(&self) -> bool {
        self.listen.iter().any(|l| l.ssl) || self.starttls.is_some()
    }

    /// `file:line`, for messages.
    pub fn location(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

/// The result of a scan.
#[derive(Debug, Clone, Serialize)]
pub struct Scan {
    pub nginx_conf: PathBuf,
    pub user: String,
    pub group: String,
    pub pid_file: PathBuf,
    pub servers: Vec<ServerBlock>,
    pub warnings: Vec<String>,
}

/// The worker user's uid, primary gid and groups.
pub type Identity = (nix::unistd::Uid, nix::unistd::Gid, Vec<nix::unistd::Gid>);

impl Scan {
    /// The uid, primary gid and groups of the user nginx's workers run as (`user`), when the
    /// system knows that user.
    pub fn worker_identity(&self) -> Option<Identity> {
        let user = nix::unistd::User::from_name(&self.user).ok().flatten()?;
        let gid = nix::unistd::Group::from_name(&self.group)
            .ok()
            .flatten()
            .map_or(user.gid, |g| g.gid);
        let cname = std::ffi::CString::new(self.user.clone()).ok()?;
        let mut groups = nix::unistd::getgrouplist(&cname, gid).unwrap_or_default();
        groups.push(gid);
        Some((user.uid, gid, groups))
    }
}

/// Sorts the names of a server block into those that can be enrolled (exact host names and IP
/// addresses, lowercase, deduplicated, in order) and those that cannot, with the reason.
pub fn classify_names(names: &[String]) -> (Vec<String>, Vec<Skipped>) {
    let mut ok: Vec<String> = Vec::new();
    let mut skipped = Vec::new();
    let mut skip = |name: &str, reason: &str| {
        skipped.push(Skipped {
            name: name.to_owned(),
            reason: reason.to_owned(),
        })
    };
    for raw in names {
        let name = raw.to_ascii_lowercase();
        let name = name.trim_end_matches('.');
        let candidate = if raw.is_empty() {
            skip(raw, "empty name (requests without a Host header)");
            continue;
        } else if raw == "_" {
            skip(raw, "catch-all placeholder \"_\"");
            continue;
        } else if raw.starts_with('~') {
            skip(raw, "regular expression");
            continue;
        } else if raw.starts_with('$') {
            skip(raw, "variable name");
            continue;
        } else if let Some(base) = name.strip_prefix('.') {
            skip(
                &format!("*.{base}"),
                "wildcard part of a \".name\" (needs dns-01)",
            );
            base.to_owned()
        } else if name.starts_with("*.") {
            skip(raw, "wildcard (needs dns-01)");
            continue;
        } else if name.contains('*') {
            skip(raw, "wildcard that no certificate can name");
            continue;
        } else {
            name.to_owned()
        };
        if candidate.parse::<std::net::IpAddr>().is_ok() {
            if !ok.contains(&candidate) {
                ok.push(candidate);
            }
            continue;
        }
        if candidate == "localhost" || candidate.ends_with(".localhost") {
            skip(raw, "localhost");
        } else if !candidate.contains('.') {
            skip(raw, "not a fully qualified domain name");
        } else if !crate::acme::is_valid_dns_name(&candidate) {
            skip(raw, "not a valid DNS name");
        } else if !ok.contains(&candidate) {
            ok.push(candidate);
        }
    }
    (ok, skipped)
}

/// Scans a parsed configuration.
pub fn scan(cfg: &Config, defaults: &BuildDefaults) -> Scan {
    let mut warnings = Vec::new();
    let main = cfg.expanded(cfg.root());
    let mut user = defaults.user.clone();
    let mut group = defaults.group.clone();
    let mut pid_file = defaults.pid_path.clone();
    for d in &main {
        match d.name.as_str() {
            "user" => {
                if let Some(u) = d.args.first() {
                    user = u.to_string();
                    group = d.args.get(1).unwrap_or(u).to_string();
                }
            }
            "pid" => {
                if let Some(p) = d.args.first() {
                    let p = PathBuf::from(p);
                    pid_file = if p.is_absolute() {
                        p
                    } else {
                        defaults.prefix.join(p)
                    };
                }
            }
            _ => {}
        }
    }
    let mut servers = Vec::new();
    let https: Vec<&Directive> = main
        .iter()
        .copied()
        .filter(|d| d.name == "http" && d.block.is_some())
        .collect();
    if https.len() > 1 {
        warnings.push(
            "more than one http block: nginx refuses that (\"http\" directive is duplicate)".into(),
        );
    }
    if https.is_empty() {
        warnings.push("no http block: nothing to enroll".into());
    }
    // Blocks in a context nginx rejects (an http{} reached through an include inside http{},
    // a server{} inside a server or location): said where they are, as nginx -t would.
    cfg.walk(|d, parents| {
        let misplaced = match d.name.as_str() {
            "http" => !parents.is_empty(),
            "server" if d.block.is_some() => parents
                .last()
                .is_some_and(|p| matches!(p.name.as_str(), "server" | "location" | "if")),
            _ => false,
        };
        if misplaced {
            let (line, col) = cfg.line_col(d.file, d.start);
            warnings.push(format!(
                "{}:{line}:{col}: \"{}\" directive is not allowed here (nginx -t refuses it; its server blocks are not enrolled)",
                cfg.files[d.file].path.display(),
                d.name
            ));
        }
    });
    for http in https {
        let http_children = cfg.expanded(http.children());
        let http_settings: Vec<&Directive> = http_children
            .iter()
            .copied()
            .filter(|d| d.name != "server")
            .collect();
        let http_certs = conf_paths(cfg, &http_children, "ssl_certificate");
        let http_keys = conf_paths(cfg, &http_children, "ssl_certificate_key");
        let blocks: Vec<&Directive> = http_children
            .iter()
            .copied()
            .filter(|d| d.name == "server" && d.block.is_some())
            .collect();
        let one = |server: &&Directive| {
            server_block(
                cfg,
                &http_settings,
                server,
                &http_certs,
                &http_keys,
                defaults,
            )
        };
        servers.extend(in_order_on_all_cores(&blocks, one));
    }
    for (name, context) in [("stream", Context::Stream), ("mail", Context::Mail)] {
        for top in main.iter().filter(|d| d.name == name && d.block.is_some()) {
            let children = cfg.expanded(top.children());
            let settings: Vec<&Directive> = children
                .iter()
                .copied()
                .filter(|d| d.name != "server")
                .collect();
            for server in children
                .iter()
                .filter(|d| d.name == "server" && d.block.is_some())
            {
                servers.push(tls_server_block(cfg, context, &settings, server));
            }
        }
    }
    Scan {
        nginx_conf: cfg.files[cfg.main].path.clone(),
        user,
        group,
        pid_file,
        servers,
        warnings,
    }
}

/// A server block of the `stream` or `mail` context: its names (`server_name`, inherited from
/// `mail {}` for mail; else the [`NAME_MARKER`] comment), listeners, STARTTLS (mail), and its
/// certificate (its own or the context's). One that speaks no TLS, or has no names, is listed
/// with what it lacks and enrolls nothing.
fn tls_server_block(
    cfg: &Config,
    context: Context,
    settings: &[&Directive],
    server: &Directive,
) -> ServerBlock {
    let children = cfg.expanded(server.children());
    let names_in = |list: &[&Directive]| -> Vec<String> {
        list.iter()
            .filter(|d| d.name == "server_name")
            .flat_map(|d| d.args.iter().map(|a| a.to_string()))
            .collect()
    };
    let mut server_names = names_in(&children);
    if server_names.is_empty() && context == Context::Mail {
        server_names = names_in(settings);
    }
    if server_names.is_empty() {
        server_names = name_marker(cfg, server);
    }
    let listen: Vec<Listen> = children
        .iter()
        .filter(|d| d.name == "listen")
        .filter_map(|d| {
            let mut l = Listen::parse(&d.args)?;
            // No TLS over UDP (nginx has no DTLS).
            l.ssl &= !d.args.iter().any(|a| a == "udp");
            Some(l)
        })
        .collect();
    let setting = |name: &str| -> Option<String> {
        children
            .iter()
            .chain(settings)
            .find(|d| d.name == name)
            .and_then(|d| d.args.first().map(|a| a.to_string()))
    };
    let starttls = match (context, setting("starttls").as_deref()) {
        (Context::Mail, Some("on" | "only")) => MailProtocol::of(
            setting("protocol").as_deref(),
            listen.iter().map(|l| l.port),
        ),
        _ => None,
    };
    let mut certs = conf_paths(cfg, &children, "ssl_certificate");
    let mut keys = conf_paths(cfg, &children, "ssl_certificate_key");
    if certs.is_empty() {
        certs = conf_paths(cfg, settings, "ssl_certificate");
    }
    if keys.is_empty() {
        keys = conf_paths(cfg, settings, "ssl_certificate_key");
    }
    let (mut enrollable, mut skipped) = classify_names(&server_names);
    let tls = listen.iter().any(|l| l.ssl) || starttls.is_some();
    let ctx = context.as_str();
    let advice = if !tls {
        Some(match context {
            Context::Mail if setting("starttls").is_some_and(|v| v != "off") => {
                "a mail server offering STARTTLS whose protocol is not known: add `protocol smtp|imap|pop3;`"
                    .to_owned()
            }
            _ => format!("a {ctx} server without TLS (no `listen ... ssl`): nothing to certify"),
        })
    } else if server_names.is_empty() {
        Some(match context {
            Context::Stream => format!(
                "a TLS stream server without names: add `server_name NAME;` (nginx 1.25.5 and later) or a `{NAME_MARKER} NAME` line inside it"
            ),
            _ => format!(
                "a TLS mail server without names: add `server_name NAME;` to it or to mail {{}}, or a `{NAME_MARKER} NAME` line inside it"
            ),
        })
    } else {
        None
    };
    if !tls {
        skipped.extend(enrollable.drain(..).map(|n| Skipped {
            name: n,
            reason: format!("the {ctx} server speaks no TLS"),
        }));
    }
    let ignored = ignore_marker(cfg, server);
    if let Some(at) = &ignored {
        let reason = format!("the block is marked `{IGNORE_MARKER}` (at {at})");
        skipped.extend(enrollable.drain(..).map(|n| Skipped {
            name: n,
            reason: reason.clone(),
        }));
    }
    let managed_elsewhere = managed_elsewhere(cfg, &children, &certs);
    ServerBlock {
        file: cfg.files[server.file].path.clone(),
        line: server.line,
        file_id: server.file,
        span: (server.start, server.end),
        server_names,
        enrollable,
        skipped,
        listen,
        ssl_certificates: certs,
        ssl_certificate_keys: keys,
        acme_challenge_dir: None,
        acme_challenge_reason: Some(format!(
            "a {ctx} server: its names are proven through the http server nginx answers them with on the CA's port, or by dns-01"
        )),
        acme_challenge_stateless: None,
        challenge_answered_at_server_level: false,
        ignored,
        managed_elsewhere,
        context,
        starttls,
        advice,
    }
}

/// The names a `# acme-nginx: server_name NAME...` comment inside `server` gives.
fn name_marker(cfg: &Config, server: &Directive) -> Vec<String> {
    let file = &cfg.files[server.file];
    file.markers
        .iter()
        .filter(|m| {
            (server.start..server.end).contains(&m.offset)
                && m.words.first().is_some_and(|w| w == "server_name")
        })
        .flat_map(|m| {
            m.words[1..]
                .iter()
                .map(|w| w.trim_end_matches(';').to_owned())
        })
        .filter(|w| !w.is_empty())
        .collect()
}

fn directive_args(list: &[&Directive], name: &str) -> Vec<String> {
    list.iter()
        .filter(|d| d.name == name)
        .filter_map(|d| d.args.first().map(|a| a.to_string()))
        .collect()
}

/// Certificate paths as nginx opens them: relative ones against the conf prefix; `data:` and
/// variables stay as written.
fn conf_paths(cfg: &Config, list: &[&Directive], name: &str) -> Vec<String> {
    directive_args(list, name)
        .into_iter()
        .map(|p| {
            if p.starts_with('/')
                || p.starts_with("data:")
                || p.contains('$')
                || cfg.conf_prefix.as_os_str().is_empty()
            {
                p
            } else {
                cfg.conf_prefix.join(p).to_string_lossy().into_owned()
            }
        })
        .collect()
}

fn server_block(
    cfg: &Config,
    http_settings: &[&Directive],
    server: &Directive,
    http_certs: &[String],
    http_keys: &[String],
    defaults: &BuildDefaults,
) -> ServerBlock {
    let children = cfg.expanded(server.children());
    let server_names: Vec<String> = children
        .iter()
        .filter(|d| d.name == "server_name")
        .flat_map(|d| d.args.iter().map(|a| a.to_string()))
        .collect();
    let mut listen: Vec<Listen> = children
        .iter()
        .filter(|d| d.name == "listen")
        .filter_map(|d| Listen::parse(&d.args))
        .collect();
    if !children.iter().any(|d| d.name == "listen") {
        listen.push(Listen {
            address: "*".into(),
            port: 80,
            ssl: false,
            default_server: false,
            ipv6: false,
            raw: "*:80".into(),
            implicit: true,
            proxy_protocol: false,
        });
    }
    let (mut enrollable, mut skipped) = classify_names(if server_names.is_empty() {
        &[]
    } else {
        &server_names
    });
    let ignored = ignore_marker(cfg, server);
    if let Some(at) = &ignored {
        // The operator's word: no name of this block is enrolled, each says why.
        let reason = format!("the block is marked `{IGNORE_MARKER}` (at {at})");
        skipped = server_names
            .iter()
            .map(|n| Skipped {
                name: n.clone(),
                reason: reason.clone(),
            })
            .collect();
        enrollable.clear();
    }
    let mut certs = conf_paths(cfg, &children, "ssl_certificate");
    let mut keys = conf_paths(cfg, &children, "ssl_certificate_key");
    if certs.is_empty() {
        certs = http_certs.to_vec();
    }
    if keys.is_empty() {
        keys = http_keys.to_vec();
    }
    let uri = format!("/.well-known/acme-challenge/{PROBE_TOKEN}");
    let mut server_level = false;
    let mut stateless = None;
    let (dir, reason) = match serve(cfg, http_settings, server, &uri, &defaults.prefix) {
        // A directory only when the token names the file (an alias to one fixed file does not).
        Serving::File(p) if p.file_name().is_some_and(|n| n == PROBE_TOKEN) => {
            (p.parent().map(Path::to_path_buf), None)
        }
        Serving::File(p) => (
            None,
            Some(format!("every token maps to the one file {}", p.display())),
        ),
        Serving::NoFile(reason) => (None, Some(reason)),
        Serving::ServerLevel(reason) => {
            server_level = true;
            (None, Some(reason))
        }
        Serving::Stateless { thumbprint, .. } => {
            stateless = Some(thumbprint.into_boxed_str());
            (None, None)
        }
    };
    let managed_elsewhere = managed_elsewhere(cfg, &children, &certs);
    ServerBlock {
        file: cfg.files[server.file].path.clone(),
        line: server.line,
        file_id: server.file,
        span: (server.start, server.end),
        server_names,
        enrollable,
        skipped,
        listen,
        ssl_certificates: certs,
        ssl_certificate_keys: keys,
        acme_challenge_dir: dir,
        acme_challenge_reason: reason,
        acme_challenge_stateless: stateless,
        challenge_answered_at_server_level: server_level,
        ignored,
        managed_elsewhere,
        context: Context::Http,
        starttls: None,
        advice: None,
    }
}

/// Why a block's certificate is picked by something other than a fixed pair of files: nginx's
/// ACME module (`acme_certificate`), or a variable `ssl_certificate` (a `map` choosing one per
/// name: replacing it with one fixed certificate would serve a tenant added later the wrong
/// one).
fn managed_elsewhere(cfg: &Config, children: &[&Directive], certs: &[String]) -> Option<String> {
    if let Some(d) = children.iter().find(|d| d.name == "acme_certificate") {
        return Some(format!(
            "nginx's ACME module manages its certificate (acme_certificate {} at {}:{})",
            d.args.join(" "),
            cfg.files[d.file].path.display(),
            d.line
        ));
    }
    certs.iter().find(|c| c.contains('$')).map(|c| {
        format!("its ssl_certificate is chosen per request ({c}); one fixed certificate would replace that choice")
    })
}

/// The comment that leaves a server block out of enrollment, written anywhere inside it.
pub const IGNORE_MARKER: &str = "# acme-nginx: ignore";

/// `file:line` of the ignore marker inside a server block, if it has one: a comment line
/// `# acme-nginx: ignore` (spaces and case do not matter) between the block's braces.
fn ignore_marker(cfg: &Config, server: &Directive) -> Option<String> {
    let file = &cfg.files[server.file];
    file.markers
        .iter()
        .find(|m| {
            (server.start..server.end).contains(&m.offset)
                && m.words.first().is_some_and(|w| w == "ignore")
        })
        .map(|m| format!("{}:{}", file.path.display(), m.line))
}

/// The server block nginx hands a plain-HTTP request for `host` on `port` to, as
/// ngx_http_find_virtual_server picks it among the blocks listening there: an exact name, then
/// the longest leading wildcard (`*.example.org`, `.example.org`), then the longest trailing
/// wildcard (`www.example.*`), then the first regex (`~...`) that matches, and otherwise the
/// port's default server (marked `default_server`, else the first block listening on it).
pub fn server_for_host(scan: &Scan, host: &str, port: u16) -> Option<usize> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let on_port: Vec<usize> = (0..scan.servers.len())
        .filter(|&i| {
            scan.servers[i].is_http()
                && scan.servers[i]
                    .listen
                    .iter()
                    .any(|l| !l.ssl && l.port == port && !l.address.starts_with("unix:"))
        })
        .collect();
    let names = |i: usize| {
        scan.servers[i]
            .server_names
            .iter()
            .map(|n| n.to_ascii_lowercase())
    };
    if let Some(&i) = on_port.iter().find(|&&i| names(i).any(|n| n == host)) {
        return Some(i);
    }
    let leading = |n: &str| -> Option<usize> {
        let suffix = n.strip_prefix("*.").map(|s| format!(".{s}"));
        match (suffix, n.strip_prefix('.')) {
            (Some(sfx), _) if host.ends_with(&sfx) => Some(sfx.len()),
            (None, Some(base)) if host == base || host.ends_with(&format!(".{base}")) => {
                Some(base.len() + 1)
            }
            _ => None,
        }
    };
    let best_leading = on_port
        .iter()
        .filter_map(|&i| {
            names(i)
                .filter_map(|n| leading(&n))
                .max()
                .map(|len| (len, i))
        })
        .max_by_key(|(len, i)| (*len, std::cmp::Reverse(*i)));
    if let Some((_, i)) = best_leading {
        return Some(i);
    }
    let trailing = |n: &str| {
        n.strip_suffix(".*")
            .filter(|p| host.starts_with(&format!("{p}.")))
            .map(str::len)
    };
    let best_trailing = on_port
        .iter()
        .filter_map(|&i| {
            names(i)
                .filter_map(|n| trailing(&n))
                .max()
                .map(|len| (len, i))
        })
        .max_by_key(|(len, i)| (*len, std::cmp::Reverse(*i)));
    if let Some((_, i)) = best_trailing {
        return Some(i);
    }
    for &i in &on_port {
        for n in &scan.servers[i].server_names {
            if let Some(re) = n.strip_prefix('~') {
                if super::pcre::is_match(re, false, &host).unwrap_or(false) {
                    return Some(i);
                }
            }
        }
    }
    on_port
        .iter()
        .copied()
        .find(|&i| {
            scan.servers[i]
                .listen
                .iter()
                .any(|l| l.port == port && l.default_server)
        })
        .or_else(|| on_port.first().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    /// Stream and mail servers: names from `server_name` (inherited from `mail {}` for mail) or
    /// the comment, STARTTLS and its protocol (named or from the port), certificates inherited
    /// from the context, and what a server that cannot be enrolled lacks.
    #[test]
    fn stream_and_mail_servers_are_found_with_their_names_and_tls() {
        let cfg = Config::parse_str(
            Path::new("/etc/nginx/nginx.conf"),
            br#"
http { server { listen 80; server_name web.test; } }
stream {
    ssl_certificate /etc/ssl/stream.pem;
    ssl_certificate_key /etc/ssl/stream.key;
    server {
        listen 8443 ssl;
        # acme-nginx: server_name mqtt.test broker.test
        proxy_pass 127.0.0.1:1883;
    }
    server { listen 9443 ssl; server_name db.test; ssl_certificate /etc/ssl/db.pem; ssl_certificate_key /etc/ssl/db.key; proxy_pass 127.0.0.1:5432; }
    server { listen 5353 udp; proxy_pass 127.0.0.1:53; }
    server { listen 7443 ssl; proxy_pass 127.0.0.1:7000; }
}
mail {
    server_name mail.test;
    auth_http 127.0.0.1:9000/auth;
    ssl_certificate /etc/ssl/mail.pem;
    ssl_certificate_key /etc/ssl/mail.key;
    server { listen 587; protocol smtp; starttls on; }
    server { listen 143; starttls only; }
    server { listen 993 ssl; protocol imap; }
    server { listen 110; protocol pop3; }
}
"#,
        )
        .unwrap();
        let scan = scan(&cfg, &BuildDefaults::default());
        let by_line = |line: u32| scan.servers.iter().find(|x| x.line == line).unwrap();
        assert_eq!(scan.servers[0].context, Context::Http);
        let mqtt = by_line(6);
        assert_eq!(mqtt.context, Context::Stream);
        assert_eq!(mqtt.enrollable, s(&["mqtt.test", "broker.test"]));
        assert_eq!(mqtt.ssl_certificate(), Some("/etc/ssl/stream.pem"));
        assert!(mqtt.serves_tls() && mqtt.advice.is_none());
        let db = by_line(11);
        assert_eq!(db.enrollable, s(&["db.test"]));
        assert_eq!(db.ssl_certificate(), Some("/etc/ssl/db.pem"));
        let udp = by_line(12);
        assert!(!udp.serves_tls());
        assert!(
            udp.advice.as_ref().unwrap().contains("without TLS"),
            "{udp:?}"
        );
        let nameless = by_line(13);
        assert!(nameless.enrollable.is_empty());
        assert!(
            nameless.advice.as_ref().unwrap().contains(NAME_MARKER),
            "{nameless:?}"
        );
        let smtp = by_line(20);
        assert_eq!(smtp.context, Context::Mail);
        assert_eq!(smtp.enrollable, s(&["mail.test"]));
        assert_eq!(smtp.starttls, Some(MailProtocol::Smtp));
        assert_eq!(smtp.ssl_certificate(), Some("/etc/ssl/mail.pem"));
        assert_eq!(by_line(21).starttls, Some(MailProtocol::Imap), "port 143");
        let imaps = by_line(22);
        assert_eq!((imaps.starttls, imaps.serves_tls()), (None, true));
        let pop3 = by_line(23);
        assert!(!pop3.serves_tls() && pop3.enrollable.is_empty());
        assert_eq!(pop3.skipped[0].reason, "the mail server speaks no TLS");
        // The port-80 rule never picks a stream or mail server.
        assert_eq!(server_for_host(&scan, "mail.test", 587), None);
        assert_eq!(server_for_host(&scan, "mail.test", 80), Some(0));
    }

    #[test]
    fn parallel_map_keeps_order() {
        let items: Vec<usize> = (0..1000).collect();
        assert_eq!(
            in_order_on_all_cores(&items, |i| i * 2),
            items.iter().map(|i| i * 2).collect::<Vec<_>>()
        );
        let few = [1, 2, 3];
        assert_eq!(in_order_on_all_cores(&few, |i| i + 1), vec![2, 3, 4]);
    }

    #[test]
    fn names_are_classified() {
        let (ok, skipped) = classify_names(&s(&[
            "Example.ORG",
            "www.example.org",
            "example.org",
            "",
            "_",
            "~^(?<x>.+)\\.test$",
            "*.example.org",
            ".example.net",
            "www.example.*",
            "localhost",
            "intranet",
            "192.0.2.1",
            "::1",
            "$hostname",
            "bad_name.example",
        ]));
        assert_eq!(
            ok,
            s(&[
                "example.org",
                "www.example.org",
                "example.net",
                "192.0.2.1",
                "::1"
            ])
        );
        let reasons: Vec<(&str, &str)> = skipped
            .iter()
            .map(|k| (k.name.as_str(), k.reason.as_str()))
            .collect();
        assert!(reasons.contains(&("", "empty name (requests without a Host header)")));
        assert!(reasons.contains(&("_", "catch-all placeholder \"_\"")));
        assert!(reasons
            .iter()
            .any(|(n, r)| n.starts_with('~') && *r == "regular expression"));
        assert!(reasons.contains(&("*.example.org", "wildcard (needs dns-01)")));
        assert!(reasons.contains(&(
            "*.example.net",
            "wildcard part of a \".name\" (needs dns-01)"
        )));
        assert!(reasons.contains(&("localhost", "localhost")));
        assert!(reasons.contains(&("intranet", "not a fully qualified domain name")));
        assert!(reasons.contains(&("www.example.*", "wildcard that no certificate can name")));
        assert!(reasons.contains(&("bad_name.example", "not a valid DNS name")));
    }

    #[test]
    fn listen_forms() {
        let l = |a: &str| Listen::parse(&s(&a.split(' ').collect::<Vec<_>>())).unwrap();
        assert_eq!((l("80").address, l("80").port), ("*".into(), 80));
        let x = l("127.0.0.1:8443 ssl default_server");
        assert_eq!(
            (x.address.as_str(), x.port, x.ssl, x.default_server, x.ipv6),
            ("127.0.0.1", 8443, true, true, false)
        );
        let x = l("[::]:443 ssl ipv6only=on");
        assert_eq!(
            (x.address.as_str(), x.port, x.ssl, x.ipv6),
            ("[::]", 443, true, true)
        );
        assert_eq!(l("[::1]").port, 80);
        assert_eq!(l("localhost").address, "localhost");
        assert_eq!(l("unix:/run/x.sock").port, 0);
        assert!(Listen::parse(&s(&["a:b"])).is_none());
    }

    #[test]
    fn build_defaults_from_nginx_v() {
        let v = "nginx version: nginx/1.22.1\nbuilt with OpenSSL\nconfigure arguments: --with-cc-opt='-g' --prefix=/usr/share/nginx --conf-path=/etc/nginx/nginx.conf --pid-path=/run/nginx.pid --with-http_ssl_module";
        let d = BuildDefaults::from_nginx_v(v);
        assert_eq!(d.prefix, PathBuf::from("/usr/share/nginx"));
        assert_eq!(d.pid_path, PathBuf::from("/run/nginx.pid"));
        assert_eq!((d.user.as_str(), d.group.as_str()), ("nobody", "nogroup"));
        let d = BuildDefaults::from_nginx_v("configure arguments: --user=nginx");
        assert_eq!(d.pid_path, PathBuf::from("/usr/local/nginx/logs/nginx.pid"));
        assert_eq!((d.user.as_str(), d.group.as_str()), ("nginx", "nginx"));
    }

    #[test]
    fn scan_finds_servers_with_inherited_certificates_and_globals() {
        let src = "user www-data adm; pid /run/x.pid;\nhttp {\n ssl_certificate /c/http.pem; ssl_certificate_key /c/http.key;\n \
                   server { listen 80; listen [::]:443 ssl; server_name a.example.org _; root /srv/a; }\n \
                   server { server_name b.example.org; ssl_certificate /c/b.pem; location / { proxy_pass http://x; } }\n}\n\
                   stream { server { listen 12345; } }";
        let cfg = Config::parse_str(Path::new("/etc/nginx/nginx.conf"), src.as_bytes()).unwrap();
        let scan = scan(&cfg, &BuildDefaults::default());
        assert_eq!(
            (scan.user.as_str(), scan.group.as_str()),
            ("www-data", "adm")
        );
        assert_eq!(scan.pid_file, PathBuf::from("/run/x.pid"));
        assert_eq!(scan.servers.len(), 3);
        // The stream server is listed after the http ones, as what it is, enrolling nothing.
        let stream = &scan.servers[2];
        assert_eq!(stream.context, Context::Stream);
        assert!(!stream.is_http() && stream.enrollable.is_empty());
        let a = &scan.servers[0];
        assert_eq!(a.line, 4);
        assert_eq!(a.enrollable, s(&["a.example.org"]));
        assert_eq!(a.ssl_certificate(), Some("/c/http.pem"));
        assert_eq!(
            a.acme_challenge_dir,
            Some(PathBuf::from("/srv/a/.well-known/acme-challenge"))
        );
        assert!(a.listen[1].ipv6 && a.listen[1].ssl);
        let b = &scan.servers[1];
        assert_eq!(b.ssl_certificate(), Some("/c/b.pem"));
        assert_eq!(b.ssl_certificate_key(), Some("/c/http.key"));
        assert!(b.listen[0].implicit);
        assert!(b.acme_challenge_dir.is_none());
        assert!(b
            .acme_challenge_reason
            .as_deref()
            .unwrap()
            .contains("proxy_pass"));
    }

    #[test]
    fn the_block_nginx_picks_for_a_host_on_a_port() {
        let cfg = Config::parse_str(
            Path::new("/etc/nginx/nginx.conf"),
            b"http {\n\
              server { listen 80; server_name first.test; }\n\
              server { listen 80 default_server; server_name _; }\n\
              server { listen 80; server_name *.wild.test .dot.test; }\n\
              server { listen 80; server_name www.trail.*; }\n\
              server { listen 80; server_name ~^(?<sub>.+)\\.re\\.test$; }\n\
              server { listen 443 ssl; server_name tls.test; }\n\
              server { listen 8080; server_name other.test; }\n\
            }\n",
        )
        .unwrap();
        let s = scan(&cfg, &BuildDefaults::default());
        let pick = |h: &str| server_for_host(&s, h, 80);
        assert_eq!(pick("first.test"), Some(0));
        assert_eq!(pick("FIRST.test."), Some(0));
        assert_eq!(pick("a.wild.test"), Some(2));
        assert_eq!(pick("dot.test"), Some(2));
        assert_eq!(pick("x.dot.test"), Some(2));
        assert_eq!(pick("www.trail.org"), Some(3));
        assert_eq!(pick("a.re.test"), Some(4));
        // Names no port-80 block carries go to the default server.
        assert_eq!(pick("tls.test"), Some(1));
        assert_eq!(pick("other.test"), Some(1));
        assert_eq!(server_for_host(&s, "other.test", 8080), Some(6));
        assert_eq!(server_for_host(&s, "x.test", 81), None);
    }

    #[test]
    fn blocks_in_contexts_nginx_rejects_are_reported_where_they_are() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("site.conf"),
            "http {\n  server { listen 80; server_name inner.test; }\n}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("nginx.conf"),
            "http {\n  include site.conf;\n  server { listen 80; server_name a.test;\n    server { listen 81; }\n  }\n}\n",
        )
        .unwrap();
        let cfg = Config::load(&dir.path().join("nginx.conf"), &crate::nginx::DiskSource).unwrap();
        let s = scan(&cfg, &BuildDefaults::default());
        let text = s.warnings.join("\n");
        assert!(
            text.contains("site.conf:1:1: \"http\" directive is not allowed here"),
            "{text}"
        );
        assert!(
            text.contains("nginx.conf:4:5: \"server\" directive is not allowed here"),
            "{text}"
        );
    }
}
