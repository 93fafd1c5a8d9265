//! Record: what a session remembers and tells once the work is done: each failure in its
//! lineage's failure memory (shared with the fleet through the coordinator), and the deploy
//! hooks of a certificate nginx now serves.

use time::OffsetDateTime;

use crate::hooks::{DeployInfo, Stage};
use crate::lifecycle::env::Env;
use crate::lifecycle::outcome::{Outcome, Status};
use crate::lifecycle::plan::Plan;
use crate::lifecycle::Error;
use crate::store;

/// Records each failure in its lineage's failure memory (also for names that have no
/// certificate yet), so the next run backs off.
pub(crate) async fn remember(env: &Env, outcomes: &[Outcome]) -> Result<(), Error> {
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
            env.save_meta(&o.name, &meta)?;
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
