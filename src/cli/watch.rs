//! `acme-nginx watch`: the long-running service. It watches nginx's configuration files and the
//! directories holding them and their includes (editors replace files; globs gain files), and
//! after a quiet moment re-scans; once `nginx -t` accepts the configuration it enrolls server
//! blocks whose names have no certificate. It also wakes for renewals at the times `renew`
//! computes. SIGTERM ends it between jobs (so no token is left behind), SIGHUP re-reads its
//! configuration file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use notify::{RecursiveMode, Watcher};
use time::OffsetDateTime;
use tokio::signal::unix::{signal, SignalKind};

use super::enroll::{enroll_pass, CommonArgs, Settings};
use super::renew::{ari_schedule, backoff_until, lifetime_rule, renew_pass};
use super::scan::{load, NginxArgs};
use super::{CliError, CmdResult, Context, EXIT_OK};
use crate::acme::CertInfo;
use crate::nginx::Config;
use crate::store::Store;

/// Quiet time after the last file event before the configuration is read again.
pub const DEBOUNCE: Duration = Duration::from_millis(500);
/// The longest sleep between two renewal checks, whatever the schedule says.
pub const MAX_RENEW_SLEEP: Duration = Duration::from_secs(12 * 3600);
/// The shortest sleep between renewal checks (a due lineage in backoff must not spin).
pub const MIN_RENEW_SLEEP: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub nginx: NginxArgs,
    #[command(flatten)]
    pub common: CommonArgs,
    /// The HTTPS port for new listeners [default: 443].
    #[arg(long, value_name = "PORT")]
    pub https_port: Option<u16>,
    /// Redirect plain HTTP to HTTPS in blocks it enrolls.
    #[arg(long)]
    pub redirect: bool,
}

/// The directories to watch: those of every loaded file and of every include pattern.
pub fn watched_dirs(cfg: &Config, main: &Path) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    if let Some(p) = main.parent() {
        dirs.insert(p.to_path_buf());
    }
    for f in &cfg.files {
        if let Some(p) = f.path.parent() {
            dirs.insert(p.to_path_buf());
        }
    }
    cfg.walk(|d, _| {
        if d.name == "include" {
            if let Some(arg) = d.args.first() {
                let full = if Path::new(arg.as_str()).is_absolute() {
                    PathBuf::from(arg.as_str())
                } else {
                    cfg.conf_prefix.join(arg.as_str())
                };
                // The deepest directory of the pattern without glob characters.
                let mut dir = full.parent().map(Path::to_path_buf).unwrap_or_default();
                while dir.to_string_lossy().contains(['*', '?', '[']) {
                    dir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
                }
                if dir.is_dir() {
                    dirs.insert(dir);
                }
            }
        }
    });
    dirs
}

/// When the next renewal check is due, across all lineages.
fn next_renewal(store: &Store) -> Duration {
    let now = OffsetDateTime::now_utc();
    let mut next =
        now + time::Duration::try_from(MAX_RENEW_SLEEP).unwrap_or(time::Duration::hours(12));
    for l in store.lineages() {
        let meta = l.meta();
        let Some(info) = l.live_fullchain().and_then(|p| CertInfo::from_pem(&p).ok()) else {
            continue;
        };
        let mut at = ari_schedule(&meta)
            .unwrap_or_else(|| lifetime_rule(&info))
            .at;
        if let Some(check) = meta
            .ari_next_check
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
        {
            at = at.min(check);
        }
        if let Some(b) = backoff_until(&meta) {
            at = at.max(b);
        }
        next = next.min(at);
    }
    let wait = (next - now).max(time::Duration::ZERO);
    Duration::try_from(wait)
        .unwrap_or(MAX_RENEW_SLEEP)
        .clamp(MIN_RENEW_SLEEP, MAX_RENEW_SLEEP)
}

pub async fn run(ctx: &Context, args: WatchArgs) -> CmdResult {
    let mut settings = Settings::new(
        ctx,
        &args.common,
        &args.nginx,
        args.https_port,
        args.redirect,
    )?;
    let mut sigterm = signal(SignalKind::terminate())
        .map_err(|e| CliError::fatal(format!("cannot handle SIGTERM: {e}")))?;
    let mut sigint = signal(SignalKind::interrupt())
        .map_err(|e| CliError::fatal(format!("cannot handle SIGINT: {e}")))?;
    let mut sighup = signal(SignalKind::hangup())
        .map_err(|e| CliError::fatal(format!("cannot handle SIGHUP: {e}")))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            let _ = tx.send(());
        }
    })
    .map_err(|e| CliError::fatal(format!("cannot watch files: {e}")))?;
    let mut watching: BTreeSet<PathBuf> = BTreeSet::new();
    tracing::info!(
        "watching {} for new server blocks",
        settings.nginx.conf().display()
    );
    let mut config_changed = true;
    let mut renew_due = true;
    loop {
        if config_changed {
            config_changed = false;
            match load(&settings.nginx) {
                Ok((cfg, _)) => {
                    let dirs = watched_dirs(&cfg, &settings.nginx.conf());
                    for d in watching.difference(&dirs) {
                        let _ = watcher.unwatch(d);
                    }
                    for d in dirs.difference(&watching) {
                        if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
                            tracing::warn!("cannot watch {}: {e}", d.display());
                        }
                    }
                    watching = dirs;
                    enroll_if_valid(&settings).await;
                }
                Err(e) => tracing::warn!(
                    "the nginx configuration does not parse; waiting for the next change: {e}"
                ),
            }
        }
        if renew_due {
            renew_due = false;
            match renew_pass(&settings, &[], false, false).await {
                Ok(outcomes) => log_outcomes("renew", &outcomes, "not-due"),
                Err(e) => tracing::warn!("renewal pass failed: {e}"),
            }
        }
        let sleep = Store::open(&settings.state_dir)
            .map(|s| next_renewal(&s))
            .unwrap_or(MAX_RENEW_SLEEP);
        tokio::select! {
            Some(()) = rx.recv() => {
                // Debounce: wait until the files have been quiet for a moment.
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                config_changed = true;
            }
            _ = tokio::time::sleep(sleep) => renew_due = true,
            _ = sighup.recv() => {
                match Settings::new(ctx, &args.common, &args.nginx, args.https_port, args.redirect) {
                    Ok(s) => {
                        tracing::info!("SIGHUP: configuration file read again");
                        settings = s;
                        config_changed = true;
                    }
                    Err(e) => tracing::warn!("SIGHUP: keeping the old settings: {e}"),
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    tracing::info!("stopping");
    Ok(EXIT_OK)
}

/// Enrolls new server blocks once `nginx -t` accepts the configuration as it is on disk.
async fn enroll_if_valid(settings: &Settings) {
    let Some(bin) = super::scan::nginx_binary(&settings.nginx.bin()) else {
        tracing::warn!("nginx binary not found");
        return;
    };
    let ctl = crate::nginx::reload::NginxCtl {
        bin,
        conf: settings.nginx.conf(),
        prefix: settings.nginx.nginx_prefix.clone(),
        pid_file: PathBuf::new(),
        error_log: None,
    };
    if let Err(e) = ctl.test_config().await {
        tracing::warn!("nginx -t refuses the configuration; waiting for the next change: {e}");
        return;
    }
    match enroll_pass(settings).await {
        Ok(outcomes) => log_outcomes("enroll", &outcomes, "up-to-date"),
        Err(e) => tracing::warn!("enroll pass failed: {e}"),
    }
}

/// Logs what a pass did, leaving out the lineages in the quiet `idle` state.
fn log_outcomes(pass: &str, outcomes: &[super::enroll::Outcome], idle: &str) {
    for o in outcomes.iter().filter(|o| o.status != idle) {
        let error = o
            .error
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        tracing::info!("{pass} {}: {}{error}", o.name, o.status);
    }
}
