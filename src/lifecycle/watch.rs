//! The long-running service (`acme-nginx watch`). It watches nginx's configuration files and
//! the directories holding them and their includes (editors replace files; globs gain files);
//! after a quiet moment it reads the configuration again, and once `nginx -t` accepts it, enrolls
//! server blocks whose names have no certificate. It wakes for renewals when the renewal policy
//! says the next lineage needs attention. In a fleet, what another node publishes is installed
//! at once, beside any pass (the installer). SIGTERM and SIGINT end it between jobs (so no token is
//! left behind); SIGHUP re-reads its settings.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use time::OffsetDateTime;
use tokio::signal::unix::{signal, SignalKind};

use super::lineage::{live_cert, LineageMeta};
use super::outcome::{Outcome, Status};
use super::{Error, Mode, Session, Settings};
use crate::nginx::Config;
use crate::store::Store;

/// Quiet time after the last file event before the configuration is read again.
pub const DEBOUNCE: Duration = Duration::from_millis(500);
/// The longest a burst of file events can postpone reading the configuration (and so the
/// renewals waiting behind it).
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(5);
/// How quiet the fleet's publishes must be before the installer installs them (and requests
/// for a pass before the loop runs one): one run publishes its lineages milliseconds apart;
/// waiting longer only delays convergence.
pub const FLEET_DEBOUNCE: Duration = Duration::from_millis(50);
/// The longest a stream of publishes can postpone that install.
pub const FLEET_MAX_DEBOUNCE: Duration = Duration::from_secs(2);
/// How long stopping waits for an install of what another node published to finish (a
/// change transaction, a reload, the TLS check, deploy hooks).
pub const STOP_INSTALL_WAIT: Duration = Duration::from_secs(60);
/// The longest sleep between two renewal checks, whatever the schedule says.
pub const MAX_RENEW_SLEEP: Duration = Duration::from_secs(12 * 3600);
/// The shortest sleep between renewal checks (a due lineage in backoff must not spin).
pub const MIN_RENEW_SLEEP: Duration = Duration::from_secs(30);

/// Re-reads the settings on SIGHUP.
pub type Reloader =
    Box<dyn Fn() -> Result<Settings, Box<dyn std::error::Error + Send + Sync>> + Send>;

/// The directories to watch: the main file's, those of every loaded file and of every include
/// pattern.
pub fn watched_dirs(cfg: Option<&Config>, main: &Path) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    if let Some(p) = main.parent() {
        dirs.insert(p.to_path_buf());
    }
    let Some(cfg) = cfg else {
        return dirs;
    };
    for f in &cfg.files {
        if let Some(p) = f.path.parent() {
            dirs.insert(p.to_path_buf());
        }
    }
    for full in include_patterns(cfg) {
        // The deepest directory of the pattern without glob characters.
        let mut dir = full.parent().map(Path::to_path_buf).unwrap_or_default();
        while dir.to_string_lossy().contains(['*', '?', '[']) {
            dir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        }
        if dir.is_dir() {
            dirs.insert(dir);
        }
    }
    dirs
}

/// Every `include` pattern of the configuration as an absolute path (relative ones resolved
/// against nginx's conf prefix).
fn include_patterns(cfg: &Config) -> Vec<PathBuf> {
    let mut out = Vec::new();
    cfg.walk(|d, _| {
        if let (true, Some(arg)) = (d.name == "include", d.args.first()) {
            out.push(if Path::new(arg.as_str()).is_absolute() {
                PathBuf::from(arg.as_str())
            } else {
                cfg.conf_prefix.join(arg.as_str())
            });
        }
    });
    out
}

/// The files whose change matters: every loaded file, the main file, and whatever an include
/// pattern matches (a new site file). Other files in the watched directories (a log or pid
/// file next to nginx.conf, editor swap files) do not wake the loop.
#[derive(Debug, Default)]
pub struct Relevant {
    files: BTreeSet<PathBuf>,
    patterns: Vec<glob::Pattern>,
    /// The configuration could not be read: every event counts.
    everything: bool,
}

impl Relevant {
    pub fn of(cfg: Option<&Config>, main: &Path) -> Relevant {
        let Some(cfg) = cfg else {
            return Relevant {
                everything: true,
                ..Relevant::default()
            };
        };
        let mut files: BTreeSet<PathBuf> = cfg.files.iter().map(|f| f.path.clone()).collect();
        files.insert(main.to_path_buf());
        let patterns = include_patterns(cfg)
            .iter()
            .filter_map(|full| glob::Pattern::new(&full.to_string_lossy()).ok())
            .collect();
        Relevant {
            files,
            patterns,
            everything: false,
        }
    }

    /// True when a change of `path` may change the configuration. Include patterns match as
    /// nginx's glob does (a `*` does not match a leading dot: editors' and our own temporary
    /// files).
    pub fn matches(&self, path: &Path) -> bool {
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        self.everything
            || self.files.contains(path)
            || self
                .patterns
                .iter()
                .any(|p| p.matches_path_with(path, opts))
    }
}

/// How long until the renewal policy wants a look at some lineage.
fn next_renewal(store: &Store) -> Duration {
    let now = OffsetDateTime::now_utc();
    let mut next =
        now + time::Duration::try_from(MAX_RENEW_SLEEP).unwrap_or(time::Duration::hours(12));
    for l in store.lineages() {
        let Ok(meta) = l.load_meta::<LineageMeta>() else {
            // A corrupt lineage is reported by the renew pass; look again soon.
            next = now;
            continue;
        };
        let cert = live_cert(&l).map(|c| c.info);
        next = next.min(meta.renewal.next_wakeup(cert.as_ref(), now));
    }
    Duration::try_from((next - now).max(time::Duration::ZERO))
        .unwrap_or(MAX_RENEW_SLEEP)
        .clamp(MIN_RENEW_SLEEP, MAX_RENEW_SLEEP)
}

/// Runs until SIGTERM or SIGINT.
pub async fn watch(mut settings: Settings, reload: Reloader) -> Result<(), Error> {
    let sig = |kind: SignalKind| signal(kind).map_err(Error::io("handle signals"));
    let (mut sigterm, mut sigint, mut sighup) = (
        sig(SignalKind::terminate())?,
        sig(SignalKind::interrupt())?,
        sig(SignalKind::hangup())?,
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(e) = ev {
            if !matches!(e.kind, notify::EventKind::Access(_)) {
                // The receiver lives as long as the loop; a send can only fail while stopping.
                tx.send(e.paths).ok();
            }
        }
    })
    .map_err(Error::Watch)?;
    let mut watching: BTreeSet<PathBuf> = BTreeSet::new();
    let mut relevant = Relevant::default();
    // In a fleet, the agent answers published challenges and says when another node published
    // a certificate: the installer installs it at once, beside any pass of the loop.
    let (fleet_tx, mut fleet_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (settings_tx, settings_rx) = tokio::sync::watch::channel(settings.clone());
    let (mut agent, mut installing) = (None, None);
    match &settings.fleet {
        Some(config) => {
            let fleet = super::fleet::Fleet::open(config)?;
            tracing::info!("fleet: node {} at {}", fleet.node, fleet.address);
            let (published_tx, published_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
            let signals = super::fleet::AgentSignals {
                published: published_tx,
                pass: fleet_tx.clone(),
            };
            agent = Some(tokio::spawn(super::fleet::agent(
                settings.clone(),
                fleet,
                signals,
            )));
            installing = Some(tokio::spawn(installer(settings_rx, published_rx, fleet_tx)));
        }
        None => drop(fleet_tx),
    }
    tracing::info!(
        "watching {} for new server blocks",
        settings.nginx.conf().display()
    );
    let mut config_changed = true;
    let mut renew_due = true;
    loop {
        if config_changed {
            config_changed = false;
            let loaded = settings.nginx.load();
            // A broken configuration keeps what was watched, and what its readable parts
            // include (at least its own directory), so the fix is seen wherever it is made.
            let mut dirs = match &loaded {
                Ok((cfg, _)) => {
                    relevant = Relevant::of(Some(cfg), &settings.nginx.conf());
                    watched_dirs(Some(cfg), &settings.nginx.conf())
                }
                Err(_) => {
                    relevant = Relevant::of(None, &settings.nginx.conf());
                    let readable = settings.nginx.load_lenient().ok();
                    watched_dirs(readable.as_ref().map(|(c, _, _)| c), &settings.nginx.conf())
                }
            };
            if loaded.is_err() {
                dirs.extend(watching.iter().cloned());
            }
            for d in watching.difference(&dirs) {
                if let Err(e) = watcher.unwatch(d) {
                    tracing::debug!("cannot stop watching {}: {e}", d.display());
                }
            }
            for d in dirs.difference(&watching) {
                if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
                    tracing::warn!("cannot watch {}: {e}", d.display());
                }
            }
            watching = dirs;
            // Said only once the directories are watched: a fix made right after is seen.
            match &loaded {
                Ok(_) => enroll_if_valid(&settings).await,
                Err(e) => tracing::warn!(
                    "the nginx configuration does not parse; waiting for the next change: {e}"
                ),
            }
        }
        if renew_due {
            renew_due = false;
            match renew_pass(&settings).await {
                Ok(outcomes) => log_outcomes("renew", &outcomes, Status::NotDue),
                Err(e) => tracing::warn!("renewal pass failed: {}", super::outcome::chain_text(&e)),
            }
        }
        let sleep = Store::existing(&settings.state_dir)
            .map(|s| next_renewal(&s))
            .unwrap_or(MAX_RENEW_SLEEP);
        tokio::select! {
            Some(paths) = rx.recv() => {
                // Our own edits (an install) echo back as events: only the operator's count.
                if paths
                    .iter()
                    .any(|p| relevant.matches(p) && !crate::nginx::edit::is_our_write(p))
                {
                    debounce(&mut rx, DEBOUNCE, MAX_DEBOUNCE).await;
                    config_changed = true;
                }
            }
            _ = tokio::time::sleep(sleep) => renew_due = true,
            Some(()) = fleet_rx.recv() => {
                // A burst of requests for a pass is one pass.
                debounce(&mut fleet_rx, FLEET_DEBOUNCE, FLEET_MAX_DEBOUNCE).await;
                renew_due = true;
            }
            _ = sighup.recv() => match reload() {
                Ok(s) => {
                    tracing::info!("SIGHUP: settings read again");
                    settings_tx.send_replace(s.clone());
                    settings = s;
                    config_changed = true;
                }
                Err(e) => tracing::warn!("SIGHUP: keeping the old settings: {e}"),
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    tracing::info!("stopping");
    // The agent stops at once; an install under way is finished (the agent's end closes the
    // installer's channel), so stopping leaves nginx as an install leaves it.
    if let Some(a) = agent {
        a.abort();
    }
    if let Some(mut i) = installing {
        if tokio::time::timeout(STOP_INSTALL_WAIT, &mut i)
            .await
            .is_err()
        {
            tracing::warn!(
                "an install of what another node published did not finish within {} s; stopped (the next run rolls it back)",
                STOP_INSTALL_WAIT.as_secs()
            );
            i.abort();
        }
    }
    Ok(())
}

/// Installs what other nodes of the fleet publish as soon as it is published: a burst of
/// publishes (one run's lineages, milliseconds apart) is one install, run beside whatever pass
/// the loop is in (see [`Session::install_published`]). A failure becomes a pass of the loop.
async fn installer(
    settings: tokio::sync::watch::Receiver<Settings>,
    mut published: tokio::sync::mpsc::UnboundedReceiver<()>,
    pass: tokio::sync::mpsc::UnboundedSender<()>,
) {
    while published.recv().await.is_some() {
        debounce(&mut published, FLEET_DEBOUNCE, FLEET_MAX_DEBOUNCE).await;
        let current = settings.borrow().clone();
        match Session::install_published(current).await {
            Ok(outcomes) => log_outcomes("fleet install", &outcomes, Status::UpToDate),
            Err(e) => {
                tracing::warn!(
                    "fleet: what another node published is not installed yet: {}; a pass tries again",
                    super::outcome::chain_text(&e)
                );
                pass.send(()).ok();
            }
        }
    }
}

/// Waits until the events have been quiet for `quiet`, but never longer than `max` in all, so a
/// burst that never stops cannot postpone the work waiting behind it.
async fn debounce<T>(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>,
    quiet: Duration,
    max: Duration,
) {
    let deadline = tokio::time::Instant::now() + max;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return;
        }
        match tokio::time::timeout(quiet.min(left), rx.recv()).await {
            Ok(Some(_)) => continue,
            _ => return,
        }
    }
}

async fn renew_pass(settings: &Settings) -> Result<Vec<Outcome>, Error> {
    Session::open(settings.clone(), Mode::Live)
        .await?
        .renew(&[], false)
        .await
}

/// Enrolls new server blocks once `nginx -t` accepts the configuration as it is on disk (the
/// enroll pass checks that before it orders anything).
async fn enroll_if_valid(settings: &Settings) {
    let pass = async {
        let run = Session::open(settings.clone(), Mode::Live).await?;
        let (cfg, scan) = run.load()?;
        let plans = run.plans(&scan, &[])?;
        // enroll itself refuses to order while nginx -t fails or nginx does not run.
        run.enroll(cfg, scan, plans).await
    };
    match pass.await {
        Ok(outcomes) => log_outcomes("enroll", &outcomes, Status::UpToDate),
        Err(e @ Error::NginxNotReady { .. }) => {
            tracing::warn!("{e}; waiting for the next change")
        }
        Err(e) => tracing::warn!("enroll pass failed: {}", super::outcome::chain_text(&e)),
    }
}

/// Logs what a pass did, leaving out the lineages in the quiet `idle` state.
fn log_outcomes(pass: &str, outcomes: &[Outcome], idle: Status) {
    for o in outcomes.iter().filter(|o| o.status != idle) {
        let error = o
            .error
            .as_ref()
            .map(|e| format!(": {}", e.message))
            .unwrap_or_default();
        tracing::info!("{pass} {}: {}{error}", o.name, o.status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configuration_files_wake_the_loop() {
        let cfg = Config::parse_str(
            Path::new("/etc/nginx/nginx.conf"),
            b"http { include /etc/nginx/sites-enabled/*; include /etc/nginx/conf.d/*.conf; }",
        )
        .unwrap();
        let r = Relevant::of(Some(&cfg), Path::new("/etc/nginx/nginx.conf"));
        assert!(r.matches(Path::new("/etc/nginx/nginx.conf")));
        assert!(r.matches(Path::new("/etc/nginx/sites-enabled/new-site")));
        assert!(r.matches(Path::new("/etc/nginx/conf.d/x.conf")));
        assert!(!r.matches(Path::new("/etc/nginx/conf.d/x.conf.swp")));
        assert!(!r.matches(Path::new("/etc/nginx/sites-enabled/.new-site.tmp-0a1b2c")));
        assert!(!r.matches(Path::new("/etc/nginx/error.log")));
        assert!(Relevant::of(None, Path::new("/etc/nginx/nginx.conf")).matches(Path::new("/x")));
    }

    #[tokio::test]
    async fn an_endless_burst_of_events_cannot_postpone_work_beyond_the_limit() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let feeder = tokio::spawn(async move {
            while tx.send(()).is_ok() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let start = std::time::Instant::now();
        debounce(
            &mut rx,
            Duration::from_millis(50),
            Duration::from_millis(300),
        )
        .await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
        feeder.abort();
        // Quiet events: done after the quiet time.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let start = std::time::Instant::now();
        debounce(&mut rx, Duration::from_millis(50), Duration::from_secs(5)).await;
        assert!(start.elapsed() < Duration::from_secs(1));
        drop(tx);
    }
}
