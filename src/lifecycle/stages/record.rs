//! Record: what a session remembers and tells once the work is done: each failure in its
//! lineage's failure memory (shared with the fleet through the coordinator), and the deploy
//! hooks of a certificate nginx now serves, and the notifications of failures, recoveries and
//! served certificates near their expiry.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use crate::acme::CertInfo;
use crate::hooks::{DeployInfo, Stage};
use crate::lifecycle::env::Env;
use crate::lifecycle::notify;
use crate::lifecycle::outcome::{Outcome, Status};
use crate::lifecycle::plan::Plan;
use crate::lifecycle::Error;
use crate::nginx::probe::{served_certificate_on, tls_listeners};
use crate::store;

/// Records each failure in its lineage's failure memory (also for names that have no
/// certificate yet), so the next run backs off; the outcome then says when the next attempt is.
pub(crate) async fn remember(env: &Env, outcomes: &mut [Outcome]) -> Result<(), Error> {
    if !env.mode.writes_state() {
        return Ok(());
    }
    let now = OffsetDateTime::now_utc();
    for o in outcomes {
        if let (Status::Failed, Some(f)) = (o.status, &o.error) {
            let mut meta = env.meta(&o.name)?;
            if meta.names.is_empty() {
                meta.names = o.names.clone();
            }
            meta.renewal.record_failure(f, now);
            meta.failure_from_fleet = false;
            env.save_meta(&o.name, &meta)?;
            o.next_renewal = meta.renewal.backoff_until();
            env.coordinator.share_failure(&env.store, &o.name).await;
        }
    }
    Ok(())
}

pub(crate) async fn run_deploy_hooks(env: &Env, plan: &Plan) {
    let l = env.store.lineage(&plan.lineage());
    let info = DeployInfo {
        name: plan.lineage(),
        domains: plan.names.clone(),
        lineage: l.live(),
        cert: l.live_file(store::CERT),
        key: l.live_file(store::PRIVKEY),
        chain: l.live_file(store::CHAIN),
        fullchain: l.live_file(store::FULLCHAIN),
    };
    // Failures are logged by the hook runner: the certificate is live either way.
    env.settings.hooks.run(Stage::Deploy, &info.env()).await;
}

/// Tells whoever `[notify]` names about this run's failures, recoveries and served
/// certificates near their expiry (see [`crate::lifecycle::notify`]). A dry run tells nobody;
/// a notifier that fails is logged.
pub(crate) async fn tell(env: &Env, outcomes: &[Outcome]) {
    let Some(config) = &env.settings.notify else {
        return;
    };
    if !env.mode.writes_state() {
        return;
    }
    let served = served(env, outcomes).await;
    let dir = &env.settings.state_dir;
    let mut memory = notify::Memory::load(dir);
    let events = notify::events(
        &mut memory,
        outcomes,
        &served,
        OffsetDateTime::now_utc(),
        config.days,
    );
    if events.is_empty() {
        return;
    }
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    notify::send(config, &host, &events).await;
    if let Err(e) = memory.save(dir) {
        tracing::warn!(
            "cannot save {}: notifications may repeat: {e}",
            dir.join(notify::MEMORY_FILE).display()
        );
    }
}

/// The certificate nginx serves for each outcome's managed name: a TLS handshake with its
/// SNI on the first HTTPS listener of its blocks, as the configuration reads now.
async fn served(env: &Env, outcomes: &[Outcome]) -> BTreeMap<String, notify::Served> {
    let mut out = BTreeMap::new();
    let Ok((_, scan)) = env.reread() else {
        return out;
    };
    let Ok(plans) = env.plans(&scan, &[]) else {
        return out;
    };
    for plan in plans {
        let lineage = plan.lineage();
        if !outcomes.iter().any(|o| o.name == lineage) {
            continue;
        }
        let listeners = plan
            .blocks
            .iter()
            .filter_map(|&i| scan.servers.get(i))
            .flat_map(tls_listeners);
        for (at, start) in listeners {
            let served =
                served_certificate_on(at, start, &plan.probe_name(), plan.variant.is_some()).await;
            if let Some(info) = served.ok().and_then(|der| CertInfo::from_der(&der).ok()) {
                out.insert(
                    lineage,
                    notify::Served {
                        serial: info.serial_hex,
                        not_after: info.not_after,
                    },
                );
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::coordinator::Coordinator;
    use crate::lifecycle::outcome::Failure;
    use crate::lifecycle::settings::{Mode, Settings};
    use crate::lifecycle::stages::triage::{triage, Facts, Verdict};
    use crate::store::Store;

    fn env(dir: &std::path::Path, mode: Mode) -> Env {
        let mut settings = Settings::with_defaults("https://ca.test/directory");
        settings.state_dir = dir.to_path_buf();
        let store = Store::open(dir).unwrap();
        Env::new(settings, mode, store, Coordinator::Solo)
    }

    fn failed(name: &str) -> Outcome {
        let mut o = Outcome::new(name, &[name.to_owned()], Status::Failed);
        o.error = Some(Failure::transient("connection refused"));
        o
    }

    fn plan(name: &str) -> Plan {
        Plan {
            primary: name.to_owned(),
            names: vec![name.to_owned()],
            ..Plan::default()
        }
    }

    /// record -> triage: a failure is remembered, and the next session's triage waits for the
    /// backoff instead of ordering again; a name named on the command line is still tried.
    #[tokio::test]
    async fn a_remembered_failure_makes_the_next_triage_back_off() {
        let dir = tempfile::tempdir().unwrap();
        let env = env(dir.path(), Mode::Live);
        let now = OffsetDateTime::now_utc();
        let verdict = |plan: &Plan| {
            let meta = env.meta("a.test").unwrap();
            triage(
                plan,
                Facts {
                    meta: &meta,
                    cert: None,
                    pending: false,
                    unfinished: false,
                },
                now,
            )
        };
        assert_eq!(verdict(&plan("a.test")), Verdict::Order);
        let mut outcomes = [failed("a.test")];
        remember(&env, &mut outcomes).await.unwrap();
        let meta = env.meta("a.test").unwrap();
        assert_eq!(meta.names, vec!["a.test"], "a name with no certificate yet");
        match verdict(&plan("a.test")) {
            Verdict::Backoff { until, reason } => {
                assert!(until > now);
                assert!(reason.contains("connection refused"), "{reason}");
                // The failed outcome already said when the next attempt would be.
                assert_eq!(outcomes[0].next_renewal, Some(until));
            }
            other => panic!("expected a backoff, got {other:?}"),
        }
        let named = Plan {
            named: true,
            ..plan("a.test")
        };
        assert_eq!(verdict(&named), Verdict::Order);
        // Successes and other statuses change nothing.
        remember(
            &env,
            &mut [Outcome::new("b.test", &["b.test".into()], Status::Issued)],
        )
        .await
        .unwrap();
        assert_eq!(env.meta("b.test").unwrap().renewal.failures, 0);
    }

    /// A dry run remembers nothing: the next real run is not held back by it.
    #[tokio::test]
    async fn a_dry_run_remembers_no_failure() {
        let dir = tempfile::tempdir().unwrap();
        let env = env(dir.path(), Mode::DryRun);
        remember(&env, &mut [failed("a.test")]).await.unwrap();
        assert_eq!(env.meta("a.test").unwrap().renewal.failures, 0);
    }
}
