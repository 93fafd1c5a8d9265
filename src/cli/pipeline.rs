//! The one path from plans to live certificates, shared by `enroll`, `renew` and `watch`:
//! the pre-hook, the challenge snippet where a block needs it, concurrent orders through the
//! preflight solver, versioned install, minimal edits, `nginx -t` with rollback, one reload,
//! a TLS check of every HTTPS listener, deploy hooks, and the post-hook.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use futures_util::stream::{self, StreamExt};

use super::enroll::{
    account, lineage_files, nginx_ctl, now_unix, snippet_text, still_good, worker_identity,
    Outcome, Plan, Settings,
};
use super::scan::load;
use super::{rfc3339, CliError};
use crate::acme::{self, Account, CertInfo, KeyPair, OrderOptions};
use crate::challenge::preflight::{check_reachable, ChallengeRoute, PreflightSolver};
use crate::fsutil;
use crate::hooks::{DeployInfo, Stage};
use crate::nginx::discovery::Scan;
use crate::nginx::edit::{self, InstallSpec};
use crate::nginx::reload::{loopback_for, served_certificate};
use crate::nginx::Config;
use crate::store::{self, Issued, Store};

/// A prepared certificate: what `deploy` installs.
#[derive(Debug, Clone)]
pub struct Fresh {
    pub plan: Plan,
    pub key_pem: String,
    pub chain: acme::CertificateChain,
    /// "issued" or "renewed".
    pub status: &'static str,
}

/// A certificate waiting for the reload: its plan, the live version before it (for a
/// rollback), its status word and its leaf (DER) to compare with what nginx serves.
type Staged = (Plan, Option<u32>, &'static str, Option<Vec<u8>>);

/// One run of enroll or renew.
#[derive(Debug)]
pub struct Job {
    pub settings: Settings,
    pub store: Option<Store>,
    pub dry_run: bool,
    pub no_install: bool,
}

impl Job {
    fn outcome(&self, plan: &Plan, scan: &Scan, status: &str, error: Option<String>) -> Outcome {
        let lineage = self.store.as_ref().map(|s| s.lineage(&plan.primary));
        let info = lineage
            .as_ref()
            .and_then(|l| l.live_fullchain())
            .and_then(|p| CertInfo::from_pem(&p).ok());
        let (fullchain, key) = lineage.as_ref().map(lineage_files).unzip();
        Outcome {
            name: plan.primary.clone(),
            names: plan.names.clone(),
            status: status.to_owned(),
            not_after: info.map(|i| rfc3339(i.not_after)),
            fullchain: fullchain.filter(|p| p.exists()),
            key: key.filter(|p| p.exists()),
            server_blocks: plan
                .blocks
                .iter()
                .map(|i| scan.servers[*i].location())
                .collect(),
            error,
            replaces: (status == "renewed")
                .then(|| lineage.as_ref().and_then(|l| l.meta().last_replaces))
                .flatten(),
            next_renewal: None,
            reason: None,
        }
    }

    /// Orders what has no current certificate, installs what is current but not yet in nginx,
    /// and reports the rest as up to date (`enroll` and `watch`).
    pub async fn enroll(
        &self,
        cfg: Config,
        scan: Scan,
        plans: Vec<Plan>,
    ) -> Result<Vec<Outcome>, CliError> {
        let mut outcomes = Vec::new();
        let mut to_order = Vec::new();
        let mut install_only = Vec::new();
        for plan in plans {
            if let Some(e) = &plan.error {
                outcomes.push(self.outcome(&plan, &scan, "failed", Some(e.clone())));
                continue;
            }
            let good = self
                .store
                .as_ref()
                .and_then(|s| still_good(&s.lineage(&plan.primary), &plan.names));
            match good {
                Some(_) if self.no_install || self.points_at_live(&plan, &scan) => {
                    outcomes.push(self.outcome(&plan, &scan, "up-to-date", None));
                }
                Some(_) => install_only.push(plan),
                None => to_order.push(plan),
            }
        }
        if to_order.is_empty() && install_only.is_empty() {
            return Ok(outcomes);
        }
        outcomes.extend(self.execute(cfg, scan, to_order, install_only).await?);
        Ok(outcomes)
    }

    /// Orders, installs and deploys, between the pre-hook (only when something is ordered) and
    /// the post-hook (always). The one path shared by `enroll` and `renew`.
    pub async fn execute(
        &self,
        mut cfg: Config,
        mut scan: Scan,
        to_order: Vec<Plan>,
        install_only: Vec<Plan>,
    ) -> Result<Vec<Outcome>, CliError> {
        let hooks = &self.settings.hooks;
        if !to_order.is_empty() {
            let failures = hooks.run(Stage::Pre, None).await;
            if let Some(f) = failures.first() {
                let _ = hooks.run(Stage::Post, None).await;
                return Err(CliError::fatal(format!(
                    "the pre-hook failed, nothing was ordered: {f}"
                )));
            }
        }
        let result = self
            .order_and_deploy(&mut cfg, &mut scan, to_order, install_only)
            .await;
        let _ = hooks.run(Stage::Post, None).await;
        if let Ok(outcomes) = &result {
            for o in outcomes.iter().filter(|o| o.failed()) {
                self.record_failure(&o.name, o.error.as_deref().unwrap_or("failed"));
            }
        }
        result
    }

    fn points_at_live(&self, plan: &Plan, scan: &Scan) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        let (fullchain, key) = lineage_files(&store.lineage(&plan.primary));
        plan.install_blocks.iter().all(|i| {
            let s = &scan.servers[*i];
            s.ssl_certificate.as_deref() == Some(&*fullchain.to_string_lossy())
                && s.ssl_certificate_key.as_deref() == Some(&*key.to_string_lossy())
        })
    }

    async fn order_and_deploy(
        &self,
        cfg: &mut Config,
        scan: &mut Scan,
        to_order: Vec<Plan>,
        install_only: Vec<Plan>,
    ) -> Result<Vec<Outcome>, CliError> {
        let mut outcomes = Vec::new();
        let mut to_order = to_order;
        if !to_order.is_empty() {
            let needs_snippet: Vec<usize> = to_order
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    p.challenge_block
                        .is_some_and(|b| scan.servers[b].acme_challenge_dir.is_none())
                })
                .map(|(i, _)| i)
                .collect();
            if !needs_snippet.is_empty() {
                let failed = self
                    .add_snippet(cfg, scan, &to_order, &needs_snippet)
                    .await?;
                for (i, e) in failed.into_iter().rev() {
                    let plan = to_order.remove(i);
                    outcomes.push(self.outcome(&plan, scan, "failed", Some(e)));
                }
            }
        }
        let fresh = if to_order.is_empty() {
            Vec::new()
        } else {
            self.obtain(scan, to_order, &mut outcomes).await?
        };
        if self.dry_run {
            for f in &fresh {
                let mut o = self.outcome(&f.plan, scan, "dry-run", None);
                o.not_after = CertInfo::from_pem(f.chain.pem.as_bytes())
                    .ok()
                    .map(|i| rfc3339(i.not_after));
                outcomes.push(o);
            }
            return Ok(outcomes);
        }
        outcomes.extend(self.deploy(cfg, scan, fresh, install_only).await?);
        Ok(outcomes)
    }

    /// Includes the challenge snippet into blocks that serve no challenge directory, tests,
    /// reloads and re-scans. Returns the plans (by index) that still cannot answer.
    async fn add_snippet(
        &self,
        cfg: &mut Config,
        scan: &mut Scan,
        plans: &[Plan],
        which: &[usize],
    ) -> Result<Vec<(usize, String)>, CliError> {
        let mut failed = Vec::new();
        let mut edits = Vec::new();
        let mut editing = Vec::new();
        for &i in which {
            let block = &scan.servers[plans[i].challenge_block.expect("filtered")];
            let reason = block.acme_challenge_reason.clone().unwrap_or_default();
            if reason.starts_with("server-level") {
                failed.push((
                    i,
                    format!(
                        "{}: {reason}; a location cannot override it",
                        block.location()
                    ),
                ));
                continue;
            }
            if self.dry_run || self.no_install {
                failed.push((i, format!("{}: serves no challenge directory ({reason}) and this run may not edit nginx", block.location())));
                continue;
            }
            match edit::include_edit(cfg, block, &self.settings.snippet) {
                Ok(e) => {
                    edits.push(e);
                    editing.push(i);
                }
                Err(e) => failed.push((i, e.0)),
            }
        }
        if edits.is_empty() {
            return Ok(failed);
        }
        if !self.settings.snippet.exists() {
            let parent = self.settings.snippet.parent().unwrap_or(Path::new("/"));
            fsutil::create_dir_all_mode(parent, 0o755)
                .map_err(|e| CliError::fatal(format!("cannot create {}: {e}", parent.display())))?;
            super::write_output(
                &self.settings.snippet,
                snippet_text(&self.settings.challenge_dir).as_bytes(),
                fsutil::PUBLIC_MODE,
                "challenge snippet",
            )?;
        }
        fsutil::create_dir_all_mode(&self.settings.challenge_dir, 0o755).map_err(|e| {
            CliError::fatal(format!(
                "cannot create {}: {e}",
                self.settings.challenge_dir.display()
            ))
        })?;
        let ctl = nginx_ctl(&self.settings, cfg, scan)?;
        let applied = edit::apply(cfg, &edits, &self.backup_dir())
            .map_err(|e| CliError::fatal(format!("cannot edit nginx's configuration: {e}")))?;
        if let Err(msg) = ctl.test_config().await {
            applied.restore().map_err(|e| {
                CliError::fatal(format!(
                    "nginx -t failed and restoring the configuration failed too: {e}"
                ))
            })?;
            failed.extend(editing.iter().map(|&i| {
                (
                    i,
                    format!(
                        "including {} was refused by nginx -t: {msg}",
                        self.settings.snippet.display()
                    ),
                )
            }));
            return Ok(failed);
        }
        if let Err(msg) = ctl.reload().await {
            let _ = applied.restore();
            return Err(CliError::fatal(msg));
        }
        let (new_cfg, new_scan) = load(&self.settings.nginx)?;
        *cfg = new_cfg;
        *scan = new_scan;
        for &i in &editing {
            let block = plans[i].challenge_block.and_then(|b| scan.servers.get(b));
            if block.is_none_or(|b| b.acme_challenge_dir.is_none()) {
                failed.push((i, "the challenge snippet was included but the block still serves no challenge directory".into()));
            }
        }
        failed.sort();
        Ok(failed)
    }

    /// Orders the plans' certificates concurrently.
    async fn obtain(
        &self,
        scan: &Scan,
        plans: Vec<Plan>,
        outcomes: &mut Vec<Outcome>,
    ) -> Result<Vec<Fresh>, CliError> {
        let client = acme::Client::new(&self.settings.directory, &self.settings.client_config)
            .await
            .map_err(|e| CliError::fatal(format!("cannot reach the CA: {e}")))?;
        let account = account(&self.settings, self.store.as_ref(), client).await?;
        let identity = worker_identity(scan);
        let owner = identity.as_ref().map(|(u, g, _)| (*u, *g));
        let results: Vec<(Plan, Result<Fresh, String>)> = stream::iter(plans)
            .map(|plan| {
                let account = &account;
                let identity = identity.as_ref();
                async move {
                    let r = self.obtain_one(account, scan, &plan, owner, identity).await;
                    (plan, r)
                }
            })
            .buffer_unordered(self.settings.concurrency)
            .collect()
            .await;
        let mut fresh = Vec::new();
        for (plan, r) in results {
            match r {
                Ok(f) => fresh.push(f),
                Err(e) => outcomes.push(self.outcome(&plan, scan, "failed", Some(e))),
            }
        }
        fresh.sort_by(|a, b| a.plan.primary.cmp(&b.plan.primary));
        Ok(fresh)
    }

    fn record_failure(&self, name: &str, error: &str) {
        if let Some(store) = &self.store {
            let l = store.lineage(name);
            let mut meta = l.meta();
            if meta.names.is_empty() {
                // No lineage yet: nothing to remember a failure on.
                return;
            }
            meta.last_error = Some(error.to_owned());
            meta.last_error_at = Some(now_unix());
            meta.failures += 1;
            let _ = l.save_meta(&meta);
        }
    }

    async fn obtain_one(
        &self,
        account: &Account,
        scan: &Scan,
        plan: &Plan,
        owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
        identity: Option<&(nix::unistd::Uid, nix::unistd::Gid, Vec<nix::unistd::Gid>)>,
    ) -> Result<Fresh, String> {
        let block = &scan.servers[plan.challenge_block.ok_or("no challenge block")?];
        let dir = block.acme_challenge_dir.clone().ok_or_else(|| {
            format!(
                "{}: {}",
                block.location(),
                block.acme_challenge_reason.clone().unwrap_or_default()
            )
        })?;
        if let Some((uid, _, groups)) = identity {
            check_reachable(&dir, *uid, groups)
                .map_err(|e| format!("{}: {e}", block.location()))?;
        }
        let listener = block
            .listen
            .iter()
            .filter(|l| !l.ssl)
            .find_map(loopback_for)
            .ok_or_else(|| {
                format!(
                    "{}: no plain-HTTP listener reachable over loopback",
                    block.location()
                )
            })?;
        let routes: HashMap<String, ChallengeRoute> = plan
            .names
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    ChallengeRoute {
                        dir: dir.clone(),
                        listener,
                        block: block.location(),
                    },
                )
            })
            .collect();
        let solver = PreflightSolver::new(routes, owner, self.store.clone());
        let key = self.certificate_key(plan);
        let csr = acme::create_csr(&key, &plan.names).map_err(|e| e.to_string())?;
        let opts = OrderOptions {
            profile: self.settings.profile.clone(),
            replaces: self.replaces(plan),
            preferred_chain: self.settings.preferred_chain.clone(),
            ..OrderOptions::default()
        };
        let chain = account
            .sign(&plan.names, &csr.der, &solver, &opts)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Fresh {
            plan: plan.clone(),
            key_pem: key.to_pem(),
            chain,
            status: if self
                .store
                .as_ref()
                .and_then(|s| s.lineage(&plan.primary).live_fullchain())
                .is_some()
            {
                "renewed"
            } else {
                "issued"
            },
        })
    }

    /// A new key per certificate, or the live one when `reuse_key` is set.
    fn certificate_key(&self, plan: &Plan) -> KeyPair {
        if self.settings.reuse_key {
            if let Some(k) = self
                .store
                .as_ref()
                .and_then(|s| s.lineage(&plan.primary).live_key())
                .and_then(|p| KeyPair::from_pem(&p).ok())
            {
                return k;
            }
        }
        KeyPair::generate(self.settings.key_type)
    }

    /// The ARI CertID of the live certificate this order replaces, if any.
    fn replaces(&self, plan: &Plan) -> Option<String> {
        let pem = self
            .store
            .as_ref()?
            .lineage(&plan.primary)
            .live_fullchain()?;
        CertInfo::from_pem(&pem).ok()?.ari_cert_id
    }

    fn backup_dir(&self) -> PathBuf {
        self.settings
            .state_dir
            .join("backups")
            .join(now_unix().to_string())
    }

    /// Installs fresh certificates and points blocks at lineages, then `nginx -t`, one reload,
    /// a TLS check of every HTTPS listener, and deploy hooks. Rolls back what nginx refuses.
    pub async fn deploy(
        &self,
        cfg: &Config,
        scan: &Scan,
        fresh: Vec<Fresh>,
        install_only: Vec<Plan>,
    ) -> Result<Vec<Outcome>, CliError> {
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| CliError::fatal("no state directory"))?;
        let mut outcomes = Vec::new();
        // 1. New versions in the store (nginx does not see them until a reload, or sees the new
        //    pair at once when its block already points at the live link).
        let mut staged: Vec<Staged> = Vec::new();
        for f in fresh {
            let lineage = store.lineage(&f.plan.primary);
            let previous = lineage.live_version();
            let issued = Issued {
                key_pem: &f.key_pem,
                cert_pem: &f.chain.leaf_pem(),
                chain_pem: &f.chain.chain_pem(),
            };
            if let Err(e) = lineage.install(&issued) {
                outcomes.push(self.outcome(
                    &f.plan,
                    scan,
                    "failed",
                    Some(format!("cannot store the certificate: {e}")),
                ));
                continue;
            }
            let leaf = acme::cert::pem_certificates(f.chain.pem.as_bytes())
                .ok()
                .and_then(|mut v| (!v.is_empty()).then(|| v.remove(0)));
            let mut meta = lineage.meta();
            meta.names = f.plan.names.clone();
            meta.directory = self.settings.directory.clone();
            meta.key_type = self.settings.key_type.to_string();
            meta.server_blocks = f
                .plan
                .blocks
                .iter()
                .map(|i| scan.servers[*i].location())
                .collect();
            meta.issued_at = Some(now_unix());
            meta.last_replaces = f.chain.replaces.clone();
            meta.last_error = None;
            meta.last_error_at = None;
            meta.failures = 0;
            meta.ari_next_check = None;
            meta.ari_window = None;
            meta.renew_at = None;
            let _ = lineage.save_meta(&meta);
            staged.push((f.plan, previous, f.status, leaf));
        }
        for plan in install_only {
            let leaf = store
                .lineage(&plan.primary)
                .live_fullchain()
                .and_then(|p| acme::cert::pem_certificates(&p).ok())
                .and_then(|mut v| (!v.is_empty()).then(|| v.remove(0)));
            let live = store.lineage(&plan.primary).live_version();
            staged.push((plan, live, "installed", leaf));
        }
        if staged.is_empty() {
            return Ok(outcomes);
        }
        if self.no_install {
            for (plan, _, status, _) in &staged {
                self.run_deploy_hooks(store, plan).await;
                outcomes.push(self.outcome(plan, scan, status, None));
            }
            return Ok(outcomes);
        }
        // 2. Edits for blocks that do not point at their lineage yet.
        let mut edits = Vec::new();
        let mut refused: Vec<usize> = Vec::new();
        for (k, (plan, _, _, _)) in staged.iter().enumerate() {
            let (fullchain, key) = lineage_files(&store.lineage(&plan.primary));
            let spec = InstallSpec {
                fullchain,
                key,
                https_port: self.settings.https_port,
                redirect: self.settings.redirect,
            };
            for &b in &plan.install_blocks {
                match edit::install_edits(cfg, &scan.servers[b], &spec) {
                    Ok(e) => edits.extend(e),
                    Err(e) => {
                        refused.push(k);
                        outcomes.push(self.outcome(plan, scan, "failed", Some(e.0)));
                        break;
                    }
                }
            }
        }
        for k in refused.iter().rev() {
            let (plan, previous, _, _) = staged.remove(*k);
            self.roll_back(store, &plan, previous);
        }
        if staged.is_empty() {
            return Ok(outcomes);
        }
        let ctl = nginx_ctl(&self.settings, cfg, scan)?;
        let applied = edit::apply(cfg, &edits, &self.backup_dir())
            .map_err(|e| CliError::fatal(format!("cannot edit nginx's configuration: {e}")))?;
        // 3. nginx -t: on failure everything goes back as it was.
        if let Err(msg) = ctl.test_config().await {
            let restored = applied.restore();
            for (plan, previous, _, _) in &staged {
                self.roll_back(store, plan, *previous);
                let mut error = format!(
                    "nginx -t refused the new configuration (restored byte for byte): {msg}"
                );
                if let Err(e) = &restored {
                    error.push_str(&format!("; restoring failed: {e}"));
                }
                outcomes.push(self.outcome(plan, scan, "failed", Some(error)));
            }
            return Ok(outcomes);
        }
        // 4. One reload for everything.
        if let Err(msg) = ctl.reload().await {
            let _ = applied.restore();
            for (plan, previous, _, _) in &staged {
                self.roll_back(store, plan, *previous);
                outcomes.push(self.outcome(plan, scan, "failed", Some(msg.clone())));
            }
            return Ok(outcomes);
        }
        // 5. Verify what nginx serves, then deploy hooks.
        let (_, new_scan) = load(&self.settings.nginx)?;
        for (plan, _, status, leaf) in &staged {
            match self.verify(&new_scan, plan, leaf.as_deref()).await {
                Ok(()) => {
                    self.run_deploy_hooks(store, plan).await;
                    outcomes.push(self.outcome(plan, &new_scan, status, None));
                }
                Err(e) => outcomes.push(self.outcome(plan, &new_scan, "failed", Some(e))),
            }
        }
        Ok(outcomes)
    }

    fn roll_back(&self, store: &Store, plan: &Plan, previous: Option<u32>) {
        let lineage = store.lineage(&plan.primary);
        let result = match previous {
            Some(v) => lineage.point_live_at(v),
            None => std::fs::remove_file(lineage.live()),
        };
        if let Err(e) = result {
            tracing::warn!("cannot roll back {}: {e}", plan.primary);
        }
    }

    /// Every HTTPS listener of the plan's blocks must serve the expected leaf for its name.
    async fn verify(&self, scan: &Scan, plan: &Plan, leaf: Option<&[u8]>) -> Result<(), String> {
        let leaf = leaf.ok_or("no certificate to verify")?;
        let mut checked = 0;
        for server in scan
            .servers
            .iter()
            .filter(|s| s.enrollable.first() == Some(&plan.primary))
        {
            for l in server.listen.iter().filter(|l| l.ssl) {
                let Some(addr) = loopback_for(l) else {
                    continue;
                };
                let served = served_certificate(addr, &plan.primary).await?;
                if served != leaf {
                    return Err(format!(
                        "nginx at {addr} still serves another certificate for {} (server block {})",
                        plan.primary,
                        server.location()
                    ));
                }
                checked += 1;
            }
        }
        if checked == 0 {
            return Err(format!(
                "no HTTPS listener serves {} after the reload",
                plan.primary
            ));
        }
        Ok(())
    }

    async fn run_deploy_hooks(&self, store: &Store, plan: &Plan) {
        let l = store.lineage(&plan.primary);
        let info = DeployInfo {
            name: plan.primary.clone(),
            domains: plan.names.clone(),
            lineage: l.live(),
            cert: l.live_file(store::CERT),
            key: l.live_file(store::PRIVKEY),
            chain: l.live_file(store::CHAIN),
            fullchain: l.live_file(store::FULLCHAIN),
        };
        for f in self.settings.hooks.run(Stage::Deploy, Some(&info)).await {
            eprintln!("warning: deploy hook for {}: {f}", plan.primary);
        }
    }
}
