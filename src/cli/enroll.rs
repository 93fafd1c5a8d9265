//! `acme-nginx enroll`: from an nginx configuration to live, verified HTTPS. Finds the server
//! blocks, orders one certificate per primary name through the challenge directory nginx
//! serves, installs it (versioned lineage, minimal block edit), tests and reloads nginx with a
//! signal, and proves by a TLS handshake that nginx serves it. Anything that fails is rolled
//! back: the old certificate stays live.
//!
//! The path from plans to live certificates is [`super::pipeline`], shared with `renew`.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;
use time::OffsetDateTime;

use super::config::{FileConfig, DEFAULT_HOOKS_DIR, DEFAULT_SNIPPET, DEFAULT_STATE_DIR};
use super::pipeline::Job;
use super::scan::{build_defaults, load, nginx_binary, NginxArgs};
use super::{CliError, CmdResult, Context, EXIT_OK, EXIT_PARTIAL};
use crate::acme::{self, Account, CertInfo, KeyPair, KeyType, NewAccountOptions};
use crate::fsutil;
use crate::hooks::Hooks;
use crate::nginx::discovery::Scan;
use crate::nginx::reload::{error_log_path, loopback_for, NginxCtl};
use crate::nginx::Config;
use crate::store::{self, Lineage, Store};

/// Orders in flight at once.
pub const DEFAULT_CONCURRENCY: usize = 4;

#[derive(Debug, Clone, Args)]
pub struct EnrollArgs {
    /// Names to enroll (the server blocks holding them); none: every enrollable name.
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub nginx: NginxArgs,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Show the plan and ask before changing anything (the default on a terminal) — never ask.
    #[arg(long)]
    pub non_interactive: bool,
    /// Get and store certificates but do not edit nginx's configuration or reload it.
    #[arg(long)]
    pub no_install: bool,
    /// Redirect plain HTTP to HTTPS (the ACME challenge excepted).
    #[arg(long)]
    pub redirect: bool,
    /// The HTTPS port to add listeners for [default: 443].
    #[arg(long, value_name = "PORT")]
    pub https_port: Option<u16>,
    /// Use the CA's staging directory and change nothing on disk.
    #[arg(long)]
    pub dry_run: bool,
}

/// Settings shared by enroll, renew and watch.
#[derive(Debug, Clone, Default, Args)]
pub struct CommonArgs {
    /// State directory (accounts, certificates, backups) [default: /var/lib/acme-nginx].
    #[arg(long, value_name = "DIR", env = "ACME_NGINX_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Configuration file [default: /etc/acme-nginx/config.toml].
    #[arg(long, value_name = "FILE", env = "ACME_NGINX_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
    /// Contact email for a new account.
    #[arg(long, value_name = "EMAIL")]
    pub email: Option<String>,
    /// Agree to the CA's terms of service when an account has to be created.
    #[arg(long)]
    pub agree_tos: bool,
    /// Certificate key type [default: p256].
    #[arg(long, value_name = "p256|p384")]
    pub key_type: Option<KeyType>,
    /// Certificate profile offered by the CA.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Command run once before the first order.
    #[arg(long, value_name = "CMD")]
    pub pre_hook: Option<String>,
    /// Command run once at the end, also after failures.
    #[arg(long, value_name = "CMD")]
    pub post_hook: Option<String>,
    /// Command run for each installed certificate after the verified reload.
    #[arg(long, value_name = "CMD")]
    pub deploy_hook: Option<String>,
    /// Directory holding pre.d/, post.d/, deploy.d/ [default: /etc/acme-nginx/hooks].
    #[arg(long, value_name = "DIR")]
    pub hooks_dir: Option<PathBuf>,
    /// The challenge snippet included into blocks that serve no challenge directory
    /// [default: /etc/nginx/snippets/acme-challenge.conf].
    #[arg(long, value_name = "FILE")]
    pub challenge_snippet: Option<PathBuf>,
    /// The directory that snippet serves [default: STATE/challenge].
    #[arg(long, value_name = "DIR")]
    pub challenge_dir: Option<PathBuf>,
    /// External account binding key id (for a new account).
    #[arg(long, value_name = "KID", requires = "eab_hmac_key")]
    pub eab_kid: Option<String>,
    /// External account binding HMAC key.
    #[arg(long, value_name = "B64", requires = "eab_kid")]
    pub eab_hmac_key: Option<String>,
}

/// Settings after flags, config file and defaults are merged (flags win).
#[derive(Debug, Clone)]
pub struct Settings {
    pub directory: String,
    pub client_config: acme::ClientConfig,
    pub state_dir: PathBuf,
    pub nginx: NginxArgs,
    pub email: Option<String>,
    pub agree_tos: bool,
    pub eab: Option<(String, String)>,
    pub key_type: KeyType,
    pub profile: Option<String>,
    pub preferred_chain: Option<String>,
    pub https_port: u16,
    pub redirect: bool,
    pub hooks: Hooks,
    pub snippet: PathBuf,
    pub challenge_dir: PathBuf,
    pub concurrency: usize,
    pub reuse_key: bool,
}

impl Settings {
    /// Merges flags over the config file over defaults.
    pub fn new(
        ctx: &Context,
        common: &CommonArgs,
        nginx: &NginxArgs,
        https_port: Option<u16>,
        redirect: bool,
    ) -> Result<Self, CliError> {
        let file = FileConfig::load(common.config_file.as_deref())?;
        let directory = ctx
            .explicit_directory
            .clone()
            .or(file.directory.clone())
            .unwrap_or_else(|| ctx.directory_url.clone());
        let client_config = match (&ctx.client_config.extra_roots_pem, &file.ca_file) {
            (None, Some(path)) => acme::ClientConfig::with_ca_file(path)?,
            _ => ctx.client_config.clone(),
        };
        let state_dir = common
            .state_dir
            .clone()
            .or(file.state_dir.clone())
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        let key_type = match (common.key_type, &file.key_type) {
            (Some(k), _) => k,
            (None, Some(k)) => k
                .parse()
                .map_err(|e: String| CliError::fatal(format!("config file key_type: {e}")))?,
            (None, None) => KeyType::P256,
        };
        let eab = common
            .eab_kid
            .clone()
            .zip(common.eab_hmac_key.clone())
            .or(file.eab_kid.clone().zip(file.eab_hmac_key.clone()));
        Ok(Self {
            directory,
            client_config,
            nginx: nginx.clone().or(NginxArgs {
                nginx_conf: file.nginx_conf.clone(),
                nginx_bin: file.nginx_bin.clone(),
                nginx_prefix: file.nginx_prefix.clone(),
                nginx_dump: None,
            }),
            email: common.email.clone().or(file.email.clone()),
            agree_tos: common.agree_tos || file.agree_tos.unwrap_or(false),
            eab,
            key_type,
            profile: common.profile.clone().or(file.profile.clone()),
            preferred_chain: file.preferred_chain.clone(),
            https_port: https_port.or(file.https_port).unwrap_or(443),
            redirect: redirect || file.redirect.unwrap_or(false),
            hooks: Hooks {
                pre: common.pre_hook.clone().or(file.pre_hook.clone()),
                post: common.post_hook.clone().or(file.post_hook.clone()),
                deploy: common.deploy_hook.clone().or(file.deploy_hook.clone()),
                dir: Some(
                    common
                        .hooks_dir
                        .clone()
                        .or(file.hooks_dir.clone())
                        .unwrap_or_else(|| DEFAULT_HOOKS_DIR.into()),
                ),
                timeout: None,
            },
            snippet: common
                .challenge_snippet
                .clone()
                .or(file.challenge_snippet.clone())
                .unwrap_or_else(|| DEFAULT_SNIPPET.into()),
            challenge_dir: common
                .challenge_dir
                .clone()
                .or(file.challenge_dir.clone())
                .unwrap_or_else(|| state_dir.join("challenge")),
            state_dir,
            concurrency: file.concurrency.unwrap_or(DEFAULT_CONCURRENCY).max(1),
            reuse_key: file.reuse_key.unwrap_or(false),
        })
    }
}

impl Settings {
    /// A dry run against Let's Encrypt production goes to its staging directory instead.
    pub fn use_staging_for_dry_run(&mut self) {
        if self.directory == acme::LETSENCRYPT_PRODUCTION {
            self.directory = acme::LETSENCRYPT_STAGING.to_owned();
        }
    }
}

/// Opens the state directory, takes its lock and removes challenge tokens an earlier, killed
/// run left behind. A dry run opens nothing (it changes nothing on disk).
pub fn open_state(
    settings: &Settings,
    dry_run: bool,
) -> Result<(Option<Store>, Option<store::StateLock>), CliError> {
    if dry_run {
        return Ok((None, None));
    }
    let store = Store::open(&settings.state_dir).map_err(|e| {
        CliError::fatal(format!(
            "cannot open the state directory {}: {e}",
            settings.state_dir.display()
        ))
    })?;
    let lock = store.lock(store::LOCK_WAIT).map_err(CliError::fatal)?;
    match store.sweep_tokens() {
        Ok(removed) if !removed.is_empty() => tracing::info!(
            "removed {} challenge tokens left by an earlier run",
            removed.len()
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot sweep old challenge tokens: {e}"),
    }
    Ok((Some(store), Some(lock)))
}

/// Enrolls every server block that has no current certificate yet (what `watch` runs when the
/// configuration changes).
pub async fn enroll_pass(settings: &Settings) -> Result<Vec<Outcome>, CliError> {
    let (store, _lock) = open_state(settings, false)?;
    let (cfg, scan) = load(&settings.nginx)?;
    let plans = plans(&scan, &[])?;
    let job = Job {
        settings: settings.clone(),
        store,
        dry_run: false,
        no_install: false,
    };
    job.enroll(cfg, scan, plans).await
}

/// What happened to one certificate.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub name: String,
    pub names: Vec<String>,
    /// issued | renewed | installed | up-to-date | failed | dry-run | skipped
    pub status: String,
    pub not_after: Option<String>,
    pub fullchain: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_blocks: Vec<String>,
    pub error: Option<String>,
    /// For a renewal: the ARI CertID the CA recorded as replaced (RFC 9773).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    /// For renew and status: when the next renewal is due, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_renewal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Outcome {
    pub(super) fn failed(&self) -> bool {
        self.status == "failed"
    }
}

/// One certificate to get: its names and the server blocks involved.
#[derive(Debug, Clone)]
pub struct Plan {
    pub primary: String,
    pub names: Vec<String>,
    /// Indices into the scan's servers.
    pub blocks: Vec<usize>,
    /// The block whose plain-HTTP listener answers the challenge.
    pub challenge_block: Option<usize>,
    /// The blocks that get the certificate.
    pub install_blocks: Vec<usize>,
    pub error: Option<String>,
}

/// Groups server blocks into plans: one certificate per primary name. With `wanted` names,
/// only the blocks holding one of them; a wanted name in no block is an error.
pub fn plans(scan: &Scan, wanted: &[String]) -> Result<Vec<Plan>, CliError> {
    let wanted: Vec<String> = wanted
        .iter()
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    for w in &wanted {
        if !scan.servers.iter().any(|s| s.enrollable.contains(w)) {
            let why = scan
                .servers
                .iter()
                .flat_map(|s| s.skipped.iter().map(move |k| (s, k)))
                .find(|(_, k)| k.name.eq_ignore_ascii_case(w))
                .map(|(s, k)| format!(" ({} skips it: {})", s.location(), k.reason))
                .unwrap_or_default();
            return Err(CliError::fatal(format!(
                "{w} is in no server block that can be enrolled{why}"
            )));
        }
    }
    let mut by_primary: BTreeMap<String, Plan> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (i, s) in scan.servers.iter().enumerate() {
        if s.enrollable.is_empty()
            || (!wanted.is_empty() && !s.enrollable.iter().any(|n| wanted.contains(n)))
        {
            continue;
        }
        let primary = s.enrollable[0].clone();
        let plan = by_primary.entry(primary.clone()).or_insert_with(|| {
            order.push(primary.clone());
            Plan {
                primary: primary.clone(),
                names: Vec::new(),
                blocks: Vec::new(),
                challenge_block: None,
                install_blocks: Vec::new(),
                error: None,
            }
        });
        for n in &s.enrollable {
            if !plan.names.contains(n) {
                plan.names.push(n.clone());
            }
        }
        plan.blocks.push(i);
    }
    let mut out = Vec::new();
    for primary in order {
        let mut plan = by_primary.remove(&primary).expect("inserted above");
        let plain = |i: &usize| {
            scan.servers[*i]
                .listen
                .iter()
                .any(|l| !l.ssl && loopback_for(l).is_some())
        };
        let ssl = |i: &usize| scan.servers[*i].listen.iter().any(|l| l.ssl);
        plan.challenge_block = plan.blocks.iter().copied().find(|i| plain(i));
        let with_ssl: Vec<usize> = plan.blocks.iter().copied().filter(|i| ssl(i)).collect();
        plan.install_blocks = if with_ssl.is_empty() {
            plan.challenge_block.into_iter().collect()
        } else {
            with_ssl
        };
        if plan.challenge_block.is_none() {
            plan.error = Some(format!(
                "no server block for {} listens on plain HTTP, so nginx cannot answer http-01",
                plan.primary
            ));
        }
        out.push(plan);
    }
    Ok(out)
}

pub(super) fn lineage_files(l: &Lineage) -> (PathBuf, PathBuf) {
    (l.live_file(store::FULLCHAIN), l.live_file(store::PRIVKEY))
}

/// True when the lineage holds a certificate for exactly these names with more than a third of
/// its lifetime left.
pub fn still_good(l: &Lineage, names: &[String]) -> Option<CertInfo> {
    let pem = l.live_fullchain()?;
    let info = CertInfo::from_pem(&pem).ok()?;
    let mut have = info.names.clone();
    let mut want = names.to_vec();
    have.sort();
    want.sort();
    if have != want {
        return None;
    }
    let left = info.not_after - OffsetDateTime::now_utc();
    (left > info.lifetime() / 3).then_some(info)
}

pub(super) fn nginx_ctl(
    settings: &Settings,
    cfg: &Config,
    scan: &Scan,
) -> Result<NginxCtl, CliError> {
    let bin = nginx_binary(&settings.nginx.bin()).ok_or_else(|| {
        CliError::fatal(format!(
            "nginx binary {} not found",
            settings.nginx.bin().display()
        ))
    })?;
    let defaults = build_defaults(&settings.nginx);
    Ok(NginxCtl {
        bin,
        conf: settings.nginx.conf(),
        prefix: settings.nginx.nginx_prefix.clone(),
        pid_file: scan.pid_file.clone(),
        error_log: error_log_path(cfg, &defaults.prefix),
    })
}

/// The nginx worker user's uid, primary gid and groups.
pub fn worker_identity(
    scan: &Scan,
) -> Option<(nix::unistd::Uid, nix::unistd::Gid, Vec<nix::unistd::Gid>)> {
    let user = nix::unistd::User::from_name(&scan.user).ok().flatten()?;
    let gid = nix::unistd::Group::from_name(&scan.group)
        .ok()
        .flatten()
        .map_or(user.gid, |g| g.gid);
    let cname = std::ffi::CString::new(scan.user.clone()).ok()?;
    let mut groups = nix::unistd::getgrouplist(&cname, gid).unwrap_or_default();
    groups.push(gid);
    Some((user.uid, gid, groups))
}

/// Loads the account for the settings' CA, creating it when allowed.
pub async fn account(
    settings: &Settings,
    store: Option<&Store>,
    client: acme::Client,
) -> Result<Account, CliError> {
    if let Some(store) = store {
        let path = store.account_path(&settings.directory);
        if path.exists() {
            let state = super::read_state(&path)?;
            return Account::from_state(client, &state)
                .map_err(|e| CliError::fatal(format!("{}: {e}", path.display())));
        }
    }
    let meta = client.directory().meta.clone();
    if !settings.agree_tos {
        let tos = meta
            .terms_of_service
            .unwrap_or_else(|| "(the CA publishes none)".into());
        return Err(CliError::fatal(format!(
            "no account yet at {}: read the terms of service at {tos} and pass --agree-tos (or set agree_tos = true in the config file)",
            settings.directory
        )));
    }
    if meta.external_account_required && settings.eab.is_none() {
        return Err(CliError::fatal(
            "the CA requires external account binding: pass --eab-kid and --eab-hmac-key",
        ));
    }
    let contact =
        super::account::contact_urls(&settings.email.clone().into_iter().collect::<Vec<_>>())?;
    let opts = NewAccountOptions {
        contact,
        terms_of_service_agreed: true,
        eab: settings.eab.clone(),
    };
    let (account, _) = Account::create(client, KeyPair::generate(KeyType::P384), &opts).await?;
    if let Some(store) = store {
        let path = store.account_path(&settings.directory);
        fsutil::create_dir_all_mode(path.parent().unwrap_or(Path::new("/")), 0o700)
            .map_err(|e| CliError::fatal(format!("cannot create {}: {e}", path.display())))?;
        super::write_state(&path, &account.to_state())?;
    }
    Ok(account)
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

pub(super) fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

pub async fn run(ctx: &Context, args: EnrollArgs) -> CmdResult {
    let mut settings = Settings::new(
        ctx,
        &args.common,
        &args.nginx,
        args.https_port,
        args.redirect,
    )?;
    if args.dry_run {
        settings.use_staging_for_dry_run();
    }
    let (store, _lock) = open_state(&settings, args.dry_run)?;
    let (cfg, scan) = load(&settings.nginx)?;
    let plans = plans(&scan, &args.names)?;
    if plans.is_empty() {
        let msg = "no server block has a name that can be enrolled (see `acme-nginx scan`)";
        if ctx.json {
            ctx.print_json(&serde_json::json!({"certificates": [], "message": msg}));
        } else {
            println!("{msg}");
        }
        return Ok(EXIT_OK);
    }
    let interactive = !args.non_interactive && !ctx.json && std::io::stdin().is_terminal();
    if interactive && !confirm(&plans, &scan)? {
        return Err(CliError::fatal("cancelled"));
    }
    let job = Job {
        settings,
        store,
        dry_run: args.dry_run,
        no_install: args.no_install,
    };
    let outcomes = job.enroll(cfg, scan, plans).await?;
    report(ctx, &outcomes, args.dry_run);
    Ok(if outcomes.iter().any(Outcome::failed) {
        EXIT_PARTIAL
    } else {
        EXIT_OK
    })
}

fn confirm(plans: &[Plan], scan: &Scan) -> Result<bool, CliError> {
    println!("acme-nginx will get these certificates:");
    for p in plans {
        let blocks: Vec<String> = p
            .blocks
            .iter()
            .map(|i| scan.servers[*i].location())
            .collect();
        println!(
            "  {}  ({})  from {}",
            p.primary,
            p.names.join(", "),
            blocks.join(", ")
        );
    }
    print!("Proceed? [y/N] ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::fatal(e.to_string()))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

fn report(ctx: &Context, outcomes: &[Outcome], dry_run: bool) {
    if ctx.json {
        ctx.print_json(&serde_json::json!({ "dry_run": dry_run, "certificates": outcomes }));
        return;
    }
    let rows: Vec<[String; 4]> = outcomes
        .iter()
        .map(|o| {
            [
                o.name.clone(),
                o.status.clone(),
                o.not_after.clone().unwrap_or_else(|| "-".into()),
                o.fullchain
                    .as_ref()
                    .map_or("-".into(), |p| p.display().to_string()),
            ]
        })
        .collect();
    let header = ["NAME", "STATUS", "VALID UNTIL", "FILE"];
    super::print_table(header, &rows, 200);
    for o in outcomes.iter().filter(|o| o.error.is_some()) {
        eprintln!(
            "error: {}: {}",
            o.name,
            o.error.as_deref().unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nginx::discovery::{scan, BuildDefaults};

    fn scan_of(src: &str) -> Scan {
        let cfg = Config::parse_str(Path::new("/etc/nginx/nginx.conf"), src.as_bytes()).unwrap();
        scan(&cfg, &BuildDefaults::default())
    }

    #[test]
    fn blocks_are_grouped_by_primary_name() {
        let s = scan_of(
            "http {\n server { listen 80; server_name a.example.org www.a.example.org; return 301 https://$host$request_uri; }\n \
             server { listen 443 ssl; server_name a.example.org www.a.example.org; }\n \
             server { listen 80; server_name b.example.org; }\n \
             server { listen 443 ssl; server_name c.example.org; }\n \
             server { listen 80; server_name _; }\n}",
        );
        let p = plans(&s, &[]).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].primary, "a.example.org");
        assert_eq!(p[0].names, vec!["a.example.org", "www.a.example.org"]);
        assert_eq!(
            (p[0].challenge_block, p[0].install_blocks.clone()),
            (Some(0), vec![1])
        );
        assert_eq!(
            (p[1].challenge_block, p[1].install_blocks.clone()),
            (Some(2), vec![2])
        );
        assert!(p[2].error.as_deref().unwrap().contains("plain HTTP"));
        let only_b = plans(&s, &["B.example.org".into()]).unwrap();
        assert_eq!(only_b.len(), 1);
        let err = plans(&s, &["_".into()]).unwrap_err();
        assert!(err.message.contains("skips it"), "{err}");
        assert!(plans(&s, &["nope.example.org".into()]).is_err());
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
}
