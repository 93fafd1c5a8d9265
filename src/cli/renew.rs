//! `acme-nginx renew` and `acme-nginx status`: keeping lineages fresh without a person.
//!
//! A certificate is renewed at a random instant inside the CA's ARI window (RFC 9773) once the
//! window has begun, or, where the CA offers no renewalInfo, when a third of its lifetime is left
//! (half for certificates of ten days or less). Failures back off exponentially, remembered in
//! the lineage, so a broken name does not hammer the CA while the others still renew. The
//! renewal itself goes through the same path as `enroll` ([`Job::execute`]).

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;
use time::{Duration, OffsetDateTime};

use super::enroll::{open_state, plans, CommonArgs, Outcome, Settings};
use super::pipeline::Job;
use super::scan::{load, NginxArgs};
use super::{rfc3339, CliError, CmdResult, Context, EXIT_OK, EXIT_PARTIAL};
use crate::acme::{self, CertInfo};
use crate::fsutil;
use crate::nginx::discovery::Scan;
use crate::store::{self, Lineage, LineageMeta, Store};

/// First backoff after a failure; doubles with each further failure.
pub const BACKOFF_FIRST: Duration = Duration::minutes(5);
/// Longest backoff.
pub const BACKOFF_MAX: Duration = Duration::hours(24);
/// Certificates of at most this lifetime renew at half their lifetime instead of a third.
pub const SHORT_LIVED: Duration = Duration::days(10);

#[derive(Debug, Clone, Args)]
pub struct RenewArgs {
    /// Lineages to consider (by any of their names); none: all.
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub nginx: NginxArgs,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Renew now, whatever the window says (a lineage in failure backoff still waits unless named).
    #[arg(long)]
    pub force: bool,
    /// Use the CA's staging directory and change nothing on disk.
    #[arg(long)]
    pub dry_run: bool,
    /// Write Prometheus metrics (node_exporter's textfile format) to this file.
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
    /// The HTTPS port for blocks that need new listeners [default: 443].
    #[arg(long, value_name = "PORT")]
    pub https_port: Option<u16>,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Lineages to show (by any of their names); none: all.
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub nginx: NginxArgs,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Also write Prometheus metrics to this file.
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
}

/// When a certificate is due, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub at: OffsetDateTime,
    pub reason: String,
}

/// The lifetime rule: one third of the lifetime left, half for short-lived certificates.
pub fn lifetime_rule(info: &CertInfo) -> Schedule {
    let lifetime = info.lifetime();
    let (left, words) = if lifetime <= SHORT_LIVED {
        (lifetime / 2, "half")
    } else {
        (lifetime / 3, "one third")
    };
    Schedule {
        at: info.not_after - left,
        reason: format!(
            "lifetime rule: {words} of {} days left",
            lifetime.whole_days()
        ),
    }
}

/// The schedule from an ARI window: the instant picked inside it.
pub fn ari_schedule(meta: &LineageMeta) -> Option<Schedule> {
    let (start, end) = meta.ari_window?;
    let at = meta
        .renew_at
        .filter(|t| (start..=end).contains(t))
        .unwrap_or(start);
    Some(Schedule {
        at: OffsetDateTime::from_unix_timestamp(at).ok()?,
        reason: format!(
            "ARI window {} to {}",
            rfc3339(OffsetDateTime::from_unix_timestamp(start).ok()?),
            rfc3339(OffsetDateTime::from_unix_timestamp(end).ok()?)
        ),
    })
}

/// A random instant in `[start, end)` (the whole window when it is empty).
pub fn random_in(start: i64, end: i64) -> i64 {
    use rand_core::RngCore;
    let span = (end - start).max(1) as u64;
    start + (rand_core::OsRng.next_u64() % span) as i64
}

/// Until when a lineage backs off after failures.
pub fn backoff_until(meta: &LineageMeta) -> Option<OffsetDateTime> {
    if meta.failures == 0 {
        return None;
    }
    let at = OffsetDateTime::from_unix_timestamp(meta.last_error_at?).ok()?;
    let factor = 1i32 << (meta.failures.saturating_sub(1).min(16));
    Some(at + (BACKOFF_FIRST * factor).min(BACKOFF_MAX))
}

fn matches(l: &Lineage, meta: &LineageMeta, wanted: &[String]) -> bool {
    wanted.is_empty()
        || wanted.iter().any(|w| {
            w.eq_ignore_ascii_case(&l.name) || meta.names.iter().any(|n| n.eq_ignore_ascii_case(w))
        })
}

fn selected(store: &Store, wanted: &[String]) -> Result<Vec<(Lineage, LineageMeta)>, CliError> {
    let all: Vec<(Lineage, LineageMeta)> = store
        .lineages()
        .into_iter()
        .map(|l| {
            let m = l.meta();
            (l, m)
        })
        .collect();
    for w in wanted {
        if !all
            .iter()
            .any(|(l, m)| matches(l, m, std::slice::from_ref(w)))
        {
            return Err(CliError::fatal(format!(
                "no certificate lineage holds {w} (see `acme-nginx status`)"
            )));
        }
    }
    Ok(all
        .into_iter()
        .filter(|(l, m)| matches(l, m, wanted))
        .collect())
}

fn live_info(l: &Lineage) -> Option<(CertInfo, Vec<u8>)> {
    let pem = l.live_fullchain()?;
    let der = acme::cert::pem_certificates(&pem)
        .ok()?
        .into_iter()
        .next()?;
    Some((CertInfo::from_der(&der).ok()?, der))
}

/// Server blocks that use a lineage's live files.
fn users(scan: &Scan, l: &Lineage) -> Vec<String> {
    let fullchain = l.live_file(store::FULLCHAIN).display().to_string();
    scan.servers
        .iter()
        .filter(|s| s.ssl_certificates.contains(&fullchain))
        .map(|s| s.location())
        .collect()
}

pub async fn run(ctx: &Context, args: RenewArgs) -> CmdResult {
    let mut settings = Settings::new(ctx, &args.common, &args.nginx, args.https_port, false)?;
    if args.dry_run {
        settings.use_staging_for_dry_run();
    }
    let outcomes = renew_pass(&settings, &args.names, args.force, args.dry_run).await?;
    if let Some(path) = &args.metrics_file {
        let store = Store::open(&settings.state_dir).map_err(|e| {
            CliError::fatal(format!(
                "cannot open the state directory {}: {e}",
                settings.state_dir.display()
            ))
        })?;
        write_metrics(&store, path, &outcomes)?;
    }
    print(ctx, &outcomes);
    Ok(if outcomes.iter().any(|o| o.status == "failed") {
        EXIT_PARTIAL
    } else {
        EXIT_OK
    })
}

/// Renews what is due (everything with `force`) among the lineages named, or all of them.
pub async fn renew_pass(
    settings: &Settings,
    names: &[String],
    force: bool,
    dry_run: bool,
) -> Result<Vec<Outcome>, CliError> {
    // A dry run reads the lineages but takes no lock and writes nothing.
    let (locked, _lock) = open_state(settings, dry_run)?;
    let store = locked.unwrap_or_else(|| Store {
        root: settings.state_dir.clone(),
    });
    let args = RenewPass {
        names,
        force,
        dry_run,
    };
    let lineages = selected(&store, args.names)?;
    let (cfg, scan) = load(&settings.nginx)?;
    let client = acme::Client::new(&settings.directory, &settings.client_config)
        .await
        .map_err(|e| CliError::fatal(format!("cannot reach the CA: {e}")))?;
    let now = OffsetDateTime::now_utc();
    let mut outcomes = Vec::new();
    let mut due = Vec::new();
    for (l, mut meta) in lineages {
        let base = Outcome {
            name: l.name.clone(),
            names: meta.names.clone(),
            status: String::new(),
            not_after: None,
            fullchain: Some(l.live_file(store::FULLCHAIN)),
            key: Some(l.live_file(store::PRIVKEY)),
            server_blocks: users(&scan, &l),
            error: meta.last_error.clone(),
            replaces: None,
            next_renewal: None,
            reason: None,
        };
        let named = !args.names.is_empty();
        if let Some(until) = backoff_until(&meta).filter(|u| *u > now && !named) {
            outcomes.push(Outcome {
                status: "backoff".into(),
                next_renewal: Some(rfc3339(until)),
                reason: Some(format!("{} failures in a row", meta.failures)),
                ..base
            });
            continue;
        }
        let Some((info, der)) = live_info(&l) else {
            due.push((l, "no usable live certificate".to_owned()));
            continue;
        };
        // ARI first (respecting the CA's Retry-After), then the lifetime rule.
        let mut schedule = None;
        if client.directory().renewal_info.is_some() {
            let check_now = args.force
                || meta
                    .ari_next_check
                    .is_none_or(|t| t <= now.unix_timestamp());
            if check_now {
                match acme::renewal_info(&client, &der).await {
                    Ok(Some(ri)) => {
                        let window = (
                            ri.window_start.unix_timestamp(),
                            ri.window_end.unix_timestamp(),
                        );
                        if meta.ari_window != Some(window) {
                            meta.renew_at = Some(random_in(window.0, window.1));
                        }
                        meta.ari_window = Some(window);
                        meta.ari_next_check =
                            Some(now.unix_timestamp() + ri.retry_after.as_secs() as i64);
                        if !args.dry_run {
                            let _ = l.save_meta(&meta);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(
                        "{}: renewalInfo failed, using the lifetime rule: {e}",
                        l.name
                    ),
                }
            }
            schedule = ari_schedule(&meta);
        }
        let schedule = schedule.unwrap_or_else(|| lifetime_rule(&info));
        if args.force || schedule.at <= now {
            due.push((
                l,
                if args.force {
                    "forced".into()
                } else {
                    schedule.reason
                },
            ));
        } else {
            outcomes.push(Outcome {
                status: "not-due".into(),
                not_after: Some(rfc3339(info.not_after)),
                next_renewal: Some(rfc3339(schedule.at)),
                reason: Some(schedule.reason),
                ..base
            });
        }
    }
    // The names come from the server blocks now: a block whose names changed gets them.
    let mut to_order = Vec::new();
    for (l, reason) in due {
        match plans(&scan, std::slice::from_ref(&l.name)) {
            Ok(mut p) if !p.is_empty() => {
                let plan = p.remove(0);
                tracing::info!("renewing {} ({reason})", l.name);
                to_order.push(plan);
            }
            _ => outcomes.push(Outcome {
                name: l.name.clone(),
                names: l.meta().names,
                status: "skipped".into(),
                not_after: None,
                fullchain: None,
                key: None,
                server_blocks: Vec::new(),
                error: None,
                replaces: None,
                next_renewal: None,
                reason: Some("no server block uses this name any more".into()),
            }),
        }
    }
    let job = Job {
        settings: settings.clone(),
        store: if args.dry_run {
            None
        } else {
            Some(store.clone())
        },
        dry_run: args.dry_run,
        no_install: false,
    };
    if !to_order.is_empty() {
        outcomes.extend(job.execute(cfg, scan, to_order, Vec::new()).await?);
    }
    outcomes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(outcomes)
}

/// The options of one renew pass.
struct RenewPass<'a> {
    names: &'a [String],
    force: bool,
    dry_run: bool,
}

fn print(ctx: &Context, outcomes: &[Outcome]) {
    if ctx.json {
        ctx.print_json(&serde_json::json!({ "certificates": outcomes }));
        return;
    }
    for o in outcomes {
        let detail = o
            .next_renewal
            .as_ref()
            .map(|n| format!("next {n}"))
            .or(o.not_after.as_ref().map(|n| format!("valid until {n}")))
            .unwrap_or_default();
        println!(
            "{:<30} {:<10} {:<32} {}",
            o.name,
            o.status,
            detail,
            o.reason.clone().or(o.error.clone()).unwrap_or_default()
        );
    }
}

/// One line of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusLine {
    pub name: String,
    pub names: Vec<String>,
    pub serial: Option<String>,
    pub not_after: Option<String>,
    pub next_renewal: Option<String>,
    pub reason: Option<String>,
    pub server_blocks: Vec<String>,
    pub last_error: Option<String>,
    pub failures: u32,
}

pub fn status(ctx: &Context, args: StatusArgs) -> CmdResult {
    let settings = Settings::new(ctx, &args.common, &args.nginx, None, false)?;
    let store = Store::open(&settings.state_dir).map_err(|e| {
        CliError::fatal(format!(
            "cannot open the state directory {}: {e}",
            settings.state_dir.display()
        ))
    })?;
    let lineages = selected(&store, &args.names)?;
    let scan = load(&settings.nginx).ok().map(|(_, s)| s);
    let lines: Vec<StatusLine> = lineages
        .iter()
        .map(|(l, meta)| {
            let info = live_info(l).map(|(i, _)| i);
            let schedule = match (backoff_until(meta), &info) {
                (Some(b), _) if b > OffsetDateTime::now_utc() => Some(Schedule {
                    at: b,
                    reason: format!("backing off after {} failures", meta.failures),
                }),
                (_, Some(i)) => Some(ari_schedule(meta).unwrap_or_else(|| lifetime_rule(i))),
                (_, None) => None,
            };
            StatusLine {
                name: l.name.clone(),
                names: meta.names.clone(),
                serial: info.as_ref().map(|i| i.serial_hex.clone()),
                not_after: info.as_ref().map(|i| rfc3339(i.not_after)),
                next_renewal: schedule.as_ref().map(|s| rfc3339(s.at)),
                reason: schedule.map(|s| s.reason),
                server_blocks: scan.as_ref().map(|s| users(s, l)).unwrap_or_default(),
                last_error: meta.last_error.clone(),
                failures: meta.failures,
            }
        })
        .collect();
    if let Some(path) = &args.metrics_file {
        write_metrics(&store, path, &[])?;
    }
    if ctx.json {
        ctx.print_json(&serde_json::json!({ "certificates": lines }));
    } else {
        for s in &lines {
            println!("{}  ({})", s.name, s.names.join(", "));
            println!(
                "  serial {}  valid until {}",
                s.serial.as_deref().unwrap_or("-"),
                s.not_after.as_deref().unwrap_or("-")
            );
            println!(
                "  next renewal {} ({})",
                s.next_renewal.as_deref().unwrap_or("-"),
                s.reason.as_deref().unwrap_or("-")
            );
            println!(
                "  used by {}",
                if s.server_blocks.is_empty() {
                    "-".into()
                } else {
                    s.server_blocks.join(", ")
                }
            );
            if let Some(e) = &s.last_error {
                println!("  last error ({} in a row): {e}", s.failures);
            }
        }
    }
    Ok(EXIT_OK)
}

/// Writes Prometheus text format, atomically: expiry, next renewal, last success and result per
/// lineage (the result of this run where there was one, else the last remembered).
pub fn write_metrics(
    store: &Store,
    path: &std::path::Path,
    outcomes: &[Outcome],
) -> Result<(), CliError> {
    use std::fmt::Write as _;
    let mut expiry = String::new();
    let mut next = String::new();
    let mut success = String::new();
    let mut result = String::new();
    for l in store.lineages() {
        let meta = l.meta();
        let label = format!("name=\"{}\"", l.name.replace(['\\', '"', '\n'], "_"));
        let info = live_info(&l).map(|(i, _)| i);
        if let Some(i) = &info {
            let _ = writeln!(
                expiry,
                "acme_nginx_certificate_expiry_timestamp_seconds{{{label}}} {}",
                i.not_after.unix_timestamp()
            );
            let at = ari_schedule(&meta).unwrap_or_else(|| lifetime_rule(i)).at;
            let _ = writeln!(
                next,
                "acme_nginx_certificate_next_renewal_timestamp_seconds{{{label}}} {}",
                at.unix_timestamp()
            );
        }
        if let Some(t) = meta.issued_at {
            let _ = writeln!(
                success,
                "acme_nginx_certificate_last_success_timestamp_seconds{{{label}}} {t}"
            );
        }
        let ok = match outcomes.iter().find(|o| o.name == l.name) {
            Some(o) => o.status != "failed",
            None => meta.failures == 0,
        };
        let _ = writeln!(
            result,
            "acme_nginx_certificate_last_result{{{label}}} {}",
            u8::from(ok)
        );
    }
    let text = format!(
        "# HELP acme_nginx_certificate_expiry_timestamp_seconds When the live certificate expires.\n\
         # TYPE acme_nginx_certificate_expiry_timestamp_seconds gauge\n{expiry}\
         # HELP acme_nginx_certificate_next_renewal_timestamp_seconds When the next renewal is due.\n\
         # TYPE acme_nginx_certificate_next_renewal_timestamp_seconds gauge\n{next}\
         # HELP acme_nginx_certificate_last_success_timestamp_seconds When the last certificate was issued.\n\
         # TYPE acme_nginx_certificate_last_success_timestamp_seconds gauge\n{success}\
         # HELP acme_nginx_certificate_last_result 1 when the last attempt succeeded, 0 when it failed.\n\
         # TYPE acme_nginx_certificate_last_result gauge\n{result}"
    );
    fsutil::write_atomic(path, text.as_bytes(), fsutil::PUBLIC_MODE)
        .map_err(|e| CliError::fatal(format!("cannot write metrics to {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(days: i64) -> CertInfo {
        let nb = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        CertInfo {
            serial_hex: "01".into(),
            not_before: nb,
            not_after: nb + Duration::days(days),
            names: vec![],
            subject_cn: None,
            issuer_cn: None,
            ari_cert_id: None,
        }
    }

    #[test]
    fn lifetime_rule_thirds_and_halves() {
        let c = cert(90);
        assert_eq!(lifetime_rule(&c).at, c.not_after - Duration::days(30));
        let c = cert(6);
        assert_eq!(lifetime_rule(&c).at, c.not_after - Duration::days(3));
        assert!(lifetime_rule(&c).reason.contains("half"));
    }

    #[test]
    fn ari_schedule_uses_the_picked_instant_inside_the_window() {
        let mut m = LineageMeta {
            ari_window: Some((1000, 2000)),
            renew_at: Some(1500),
            ..LineageMeta::default()
        };
        assert_eq!(ari_schedule(&m).unwrap().at.unix_timestamp(), 1500);
        m.renew_at = Some(5000);
        assert_eq!(ari_schedule(&m).unwrap().at.unix_timestamp(), 1000);
        for _ in 0..100 {
            let r = random_in(1000, 2000);
            assert!((1000..2000).contains(&r));
        }
        assert_eq!(random_in(7, 7), 7);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let mut m = LineageMeta {
            failures: 1,
            last_error_at: Some(1_700_000_000),
            ..LineageMeta::default()
        };
        let at = |m: &LineageMeta| backoff_until(m).unwrap().unix_timestamp() - 1_700_000_000;
        assert_eq!(at(&m), 300);
        m.failures = 3;
        assert_eq!(at(&m), 1200);
        m.failures = 40;
        assert_eq!(at(&m), 86400);
        m.failures = 0;
        assert!(backoff_until(&m).is_none());
    }
}
