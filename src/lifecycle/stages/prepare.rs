//! Prepare: before anything is ordered, nginx must pass `nginx -t` and run; blocks that serve
//! no challenge directory get the challenge snippet (and, where a server-level `return` answers
//! everything, a rewrite that lets challenge requests through), and a block whose names all
//! failed gets it taken out again; DNS records a killed run left are removed.

use crate::challenge::dns::{Dns, TxtRecord};
use crate::lifecycle::env::Env;
use crate::lifecycle::outcome::chain_text;
use crate::lifecycle::plan::Plan;
use crate::lifecycle::settings::is_our_snippet;
use crate::lifecycle::Error;
use crate::nginx::discovery::Scan;
use crate::nginx::edit;
use crate::nginx::transaction::{self, Change, ChangeError, NewFile};
use crate::nginx::Config;

/// nginx must pass `nginx -t` and run before anything is ordered: the challenge is proven
/// through the running nginx, and a run must never leave nginx worse than it found it. A
/// configuration that fails only because the certificates it names do not exist yet gets
/// the way out in the message.
pub(crate) async fn check_nginx(env: &Env, cfg: &Config, scan: &Scan) -> Result<(), Error> {
    let ctl = env.settings.nginx.ctl(cfg, scan)?;
    if let Err(e) = ctl.test_config().await {
        let text = e.to_string();
        let missing_cert = text.contains("no \"ssl_certificate\" is defined")
            || (text.contains("cannot load certificate") && text.contains("No such file"));
        let quic = text.contains("\"listen ... quic\"");
        let hint =
            if missing_cert && quic {
                format!(
                "\nA `listen ... quic` (HTTP/3) listener needs a certificate from the start{}. \
                 Comment out the quic listen line (and `add_header Alt-Svc`) until the block has \
                 a certificate, so that nginx -t passes; acme-nginx then gets the certificate \
                 through the port-80 block, and the quic line can come back.",
                quic_listener(&text).map(|at| format!(" (the one at {at})")).unwrap_or_default()
            )
            } else if missing_cert {
                "\nThe configuration names certificates that do not exist yet. Take the \
             certificate lines (and `ssl` on the listen lines) out of the HTTPS blocks, or \
             disable those blocks, so that nginx -t passes; acme-nginx then gets the \
             certificates through the port-80 blocks and adds the HTTPS listeners and \
             certificate lines itself."
                    .to_owned()
            } else {
                String::new()
            };
        return Err(Error::NginxNotReady {
            what: format!("nginx refuses its configuration as it is ({text})"),
            hint,
        });
    }
    ctl.master_running().map_err(|e| Error::NginxNotReady {
        what: format!("nginx is not running ({e})"),
        hint: String::new(),
    })?;
    Ok(())
}

/// For plans whose names nginx answers on no plain-HTTP port (`--http-route`): a marked
/// server block right after the (first) HTTPS block, listening on the HTTP port at the same
/// addresses, answering challenges through the snippet and redirecting everything else to
/// HTTPS; one change transaction (`nginx -t`, reload). Returns whether anything was added;
/// the caller reads the configuration and plans again. A refusal is returned as nginx's words.
pub(crate) async fn add_http_routes(
    env: &Env,
    cfg: &Config,
    scan: &Scan,
    plans: &[Plan],
) -> Result<Result<bool, RouteRefused>, Error> {
    let port = env.settings.http_port;
    let mut change = Change::default();
    for plan in plans.iter().filter(|p| p.needs_http_route) {
        let Some(block) = plan.blocks.first().map(|&b| &scan.servers[b]) else {
            continue;
        };
        let mut addresses: Vec<String> = Vec::new();
        for l in block
            .listen
            .iter()
            .filter(|l| l.ssl && !l.address.starts_with("unix:"))
        {
            let a = match l.address.as_str() {
                "*" | "0.0.0.0" => port.to_string(),
                a => format!("{a}:{port}"),
            };
            if !addresses.contains(&a) {
                addresses.push(a);
            }
        }
        if addresses.is_empty() {
            addresses.push(port.to_string());
        }
        let text = &cfg.files[block.file_id].text;
        let line_start = text[..block.span.0]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let indent: String = text[line_start..block.span.0]
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .map(|&b| b as char)
            .collect();
        let mark = edit::MARK;
        let mut lines = vec![format!("server {{ {mark}")];
        lines.extend(addresses.iter().map(|a| format!("    listen {a}; {mark}")));
        lines.push(format!("    server_name {}; {mark}", plan.names.join(" ")));
        lines.push(format!(
            "    include {}; {mark}",
            env.settings.snippet.display()
        ));
        let https = match env.settings.https_port {
            443 => String::new(),
            p => format!(":{p}"),
        };
        lines.push(format!(
            "    location / {{ return 301 https://$host{https}$request_uri; }} {mark}"
        ));
        lines.push(format!("}} {mark}"));
        let body: String = lines.iter().map(|l| format!("\n{indent}{l}")).collect();
        change.edits.push(edit::Edit {
            file: block.file_id,
            start: block.span.1,
            end: block.span.1,
            text: body,
        });
    }
    if change.edits.is_empty() {
        return Ok(Ok(false));
    }
    // As for snippet includes: a new snippet file an include glob matches would be loaded
    // there too.
    if env.settings.snippet.symlink_metadata().is_err() {
        if let Some(at) = edit::include_that_would_load(cfg, &env.settings.snippet) {
            return Ok(Err(RouteRefused::SnippetLoadedElsewhere {
                snippet: env.settings.snippet.clone(),
                port,
                at,
            }));
        }
    }
    with_snippet(env, &mut change).await?;
    let ctl = env.settings.nginx.ctl(cfg, scan)?;
    let backups = transaction::new_backup_dir(&env.store.backups_dir());
    match transaction::commit(&ctl, cfg, &change, &backups, true).await {
        Ok(_) => Ok(Ok(true)),
        Err(e @ ChangeError::Rejected { .. }) if e.restore_failure().is_none() => {
            Ok(Err(RouteRefused::Rejected {
                port,
                nginx: e.nginx_message().unwrap_or_default().to_owned(),
            }))
        }
        Err(e) => Err(e.into()),
    }
}

/// Why the port-80 blocks `--http-route` asks for are not added (the names then fail, saying
/// so, before any order).
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum RouteRefused {
    #[error("the challenge snippet {} the port-{port} block includes would also be loaded by the include at {at}; set challenge_snippet to a path no include matches", snippet.display())]
    SnippetLoadedElsewhere {
        snippet: std::path::PathBuf,
        port: u16,
        at: String,
    },
    #[error("the port-{port} block --http-route adds was refused by nginx -t: {nginx}")]
    Rejected { port: u16, nginx: String },
}

/// Adds the challenge snippet to `change` (created by the transaction where it does not
/// exist yet) and makes the directory it serves.
async fn with_snippet(env: &Env, change: &mut Change) -> Result<(), Error> {
    change.new_files.push(NewFile {
        path: env.settings.snippet.clone(),
        contents: env.snippet_contents().await?.into_bytes(),
        mode: crate::fsutil::PUBLIC_MODE,
    });
    if env.coordinator.stateless() {
        return Ok(());
    }
    crate::fsutil::create_dir_all_mode(&env.settings.challenge_dir, 0o755).map_err(Error::io(
        format!("create {}", env.settings.challenge_dir.display()),
    ))
}

/// Brings acme-nginx's own challenge snippet in line with the mode and the account (a fleet
/// made stateless or published again, another fleet account): one change transaction
/// (`nginx -t`, reload, re-scan) when nginx loads the file, an atomic write when nothing does
/// yet. A snippet someone else edited is left as it is (saying so in a stateless fleet); a
/// refusal is logged and changes nothing (the names it concerns then fail their preflight,
/// saying why). True when the configuration was changed and re-read.
pub(crate) async fn refresh_snippet(
    env: &Env,
    cfg: &mut Config,
    scan: &mut Scan,
) -> Result<bool, Error> {
    let path = &env.settings.snippet;
    if !env.mode.edits_nginx() {
        return Ok(false);
    }
    let loaded = cfg.files.iter().position(|f| f.path == *path);
    let current = match loaded {
        Some(i) => String::from_utf8_lossy(&cfg.files[i].text).into_owned(),
        None => match std::fs::read_to_string(path) {
            Ok(t) => t,
            // Not written yet: it is, with the right text, when a block first includes it.
            Err(_) => return Ok(false),
        },
    };
    let wanted = match env.snippet_contents().await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(
                "{}: the challenge snippet cannot be brought up to date: {}",
                path.display(),
                chain_text(&e)
            );
            return Ok(false);
        }
    };
    if current == wanted {
        return Ok(false);
    }
    if !is_our_snippet(&current) {
        // An operator's own snippet is theirs; it matters only when the fleet is stateless
        // (the other nodes answer for the account, this one may not).
        if env.coordinator.stateless() {
            tracing::warn!(
                "{} is not a challenge snippet acme-nginx writes (edited by hand?); left as it is, so it may not answer statelessly for the fleet's account",
                path.display()
            );
        }
        return Ok(false);
    }
    let Some(file) = loaded else {
        crate::fsutil::write_atomic(path, wanted.as_bytes(), crate::fsutil::PUBLIC_MODE)
            .map_err(Error::io(format!("write {}", path.display())))?;
        return Ok(false);
    };
    let change = Change {
        edits: vec![edit::Edit {
            file,
            start: 0,
            end: cfg.files[file].text.len(),
            text: wanted,
        }],
        ..Change::default()
    };
    let ctl = env.settings.nginx.ctl(cfg, scan)?;
    let backups = transaction::new_backup_dir(&env.store.backups_dir());
    match transaction::commit(&ctl, cfg, &change, &backups, true).await {
        Ok(_) => {
            tracing::info!(
                "{}: the challenge snippet now {}",
                path.display(),
                if env.coordinator.stateless() {
                    "answers statelessly for the fleet's account"
                } else {
                    "serves the challenge directory"
                }
            );
            let (new_cfg, new_scan) = env.reread()?;
            *cfg = new_cfg;
            *scan = new_scan;
            Ok(true)
        }
        Err(e @ ChangeError::Rejected { .. }) if e.restore_failure().is_none() => {
            tracing::warn!(
                "{}: the challenge snippet was not brought up to date: {}",
                path.display(),
                chain_text(&e)
            );
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// `file:line` nginx names after "in" in its refusal, if any.
fn quic_listener(text: &str) -> Option<&str> {
    let (_, after) = text.split_once("directive in ")?;
    after.split_whitespace().next()
}

/// Includes the challenge snippet into blocks that serve no challenge directory, tests,
/// reloads and re-scans (one change transaction). Returns the plans (by index) that still
/// cannot answer, with why.
pub(crate) async fn add_snippet(
    env: &Env,
    cfg: &mut Config,
    scan: &mut Scan,
    plans: &[Plan],
    which: &[usize],
) -> Result<Vec<(usize, String)>, Error> {
    let mut failed = Vec::new();
    let mut change = Change::default();
    let mut editing = Vec::new();
    for &i in which {
        let Some(block) = plans[i].challenge_block.map(|b| &scan.servers[b]) else {
            continue;
        };
        let reason = block.acme_challenge_reason.clone().unwrap_or_default();
        if !env.mode.edits_nginx() {
            failed.push((
                i,
                format!(
                    "{}: serves no challenge directory ({reason}) and this run may not edit nginx",
                    block.location()
                ),
            ));
            continue;
        }
        // A block whose server-level return or rewrite answers every request first gets,
        // before it, a rewrite that lets challenge URIs through to the snippet's location.
        let override_edit = if block.challenge_answered_at_server_level {
            Some(edit::challenge_rewrite_edit(cfg, block))
        } else {
            None
        };
        let edits =
            edit::include_edit(cfg, block, &env.settings.snippet).and_then(
                |inc| match override_edit {
                    Some(rw) => rw.map(|rw| vec![rw, inc]),
                    None => Ok(vec![inc]),
                },
            );
        match edits {
            // Another plan answered through the same block (its default server) has it.
            Ok(e) if change.edits.iter().any(|x| e.contains(x)) => editing.push(i),
            Ok(e) => {
                change.edits.extend(e);
                editing.push(i);
            }
            Err(e) => failed.push((i, e.0)),
        }
    }
    if change.edits.is_empty() {
        return Ok(failed);
    }
    // A new snippet file that an include glob of the configuration matches would be loaded
    // there too (a location where none is allowed, a duplicate one): refuse before writing.
    let snippet_is_new = env.settings.snippet.symlink_metadata().is_err();
    if snippet_is_new {
        if let Some(at) = edit::include_that_would_load(cfg, &env.settings.snippet) {
            let why = format!(
                "the challenge snippet {} would also be loaded by the include at {at}; set challenge_snippet to a path no include matches",
                env.settings.snippet.display()
            );
            failed.extend(editing.iter().map(|&i| (i, why.clone())));
            failed.sort_by_key(|(i, _)| *i);
            return Ok(failed);
        }
    }
    with_snippet(env, &mut change).await?;
    let ctl = env.settings.nginx.ctl(cfg, scan)?;
    let backups = transaction::new_backup_dir(&env.store.backups_dir());
    match transaction::commit(&ctl, cfg, &change, &backups, true).await {
        Ok(_) => {}
        Err(e @ ChangeError::Rejected { .. }) if e.restore_failure().is_none() => {
            let msg = e.nginx_message().unwrap_or_default().to_owned();
            failed.extend(editing.iter().map(|&i| {
                (
                    i,
                    format!(
                        "including {} was refused by nginx -t: {msg}",
                        env.settings.snippet.display()
                    ),
                )
            }));
            return Ok(failed);
        }
        Err(e) => return Err(e.into()),
    }
    let (new_cfg, new_scan) = env.reread()?;
    *cfg = new_cfg;
    *scan = new_scan;
    for &i in &editing {
        let block = plans[i].challenge_block.and_then(|b| scan.servers.get(b));
        if block
            .is_none_or(|b| b.acme_challenge_dir.is_none() && b.acme_challenge_stateless.is_none())
        {
            failed.push((i, "the challenge snippet was included but the block still serves no challenge directory".into()));
        }
    }
    failed.sort_by_key(|(i, _)| *i);
    Ok(failed)
}

/// Takes the snippet include (and the challenge rewrite) this run added out of `blocks`
/// again: one change transaction, then a re-scan. A failure is logged: the include it
/// leaves passed nginx -t and does no harm but to serve the challenge directory.
pub(crate) async fn remove_snippet(
    env: &Env,
    cfg: &mut Config,
    scan: &mut Scan,
    blocks: &[usize],
) -> Result<(), Error> {
    let snippet = env.settings.snippet.to_string_lossy().into_owned();
    let mut change = Change::default();
    for &b in blocks {
        change
            .edits
            .extend(edit::remove_marked(cfg, &scan.servers[b], |d| {
                (d.name == "include" && d.args.first().is_some_and(|a| *a == snippet))
                    || edit::is_challenge_rewrite(d)
            }));
    }
    if change.edits.is_empty() {
        return Ok(());
    }
    let ctl = env.settings.nginx.ctl(cfg, scan)?;
    let backups = transaction::new_backup_dir(&env.store.backups_dir());
    match transaction::commit(&ctl, cfg, &change, &backups, true).await {
        Ok(_) => {
            let (c, s) = env.reread()?;
            *cfg = c;
            *scan = s;
        }
        Err(e) => tracing::warn!(
            "cannot take the challenge snippet out of the failed names' blocks again: {}",
            crate::lifecycle::outcome::chain_text(&e)
        ),
    }
    Ok(())
}

/// Removes the DNS records an earlier run made and did not remove (it was killed during
/// the validation, or the removal failed); a record that still cannot be removed stays
/// journaled for the next run.
pub(crate) async fn remove_leftover_records(env: &Env) {
    if !env.mode.writes_state() {
        return;
    }
    let records: Vec<TxtRecord> = match env.store.dns_journal() {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("{}", chain_text(&e));
            return;
        }
    };
    if records.is_empty() {
        return;
    }
    let Some(config) = &env.settings.dns else {
        tracing::warn!(
            "{} DNS record(s) left by an earlier run cannot be removed: no DNS solver is configured now",
            records.len()
        );
        return;
    };
    let dns = match Dns::new(config).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(
                "cannot remove the DNS records an earlier run left: {}",
                chain_text(&e)
            );
            return;
        }
    };
    for r in records {
        match dns.remove(&r).await {
            Ok(()) => {
                tracing::info!("removed the TXT record {} {:?} left by an earlier run", r.name, r.value);
                if let Err(e) = env.store.unjournal_dns(&r) {
                    tracing::warn!("{}", chain_text(&e));
                }
            }
            Err(e) => tracing::warn!(
                "cannot remove the TXT record {} left by an earlier run (kept for the next run): {}",
                r.name,
                chain_text(&e)
            ),
        }
    }
}
