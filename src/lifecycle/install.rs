//! Installing certificates: a new version in the lineage, the server-block edits, one change
//! transaction (`nginx -t`, reload, restore on failure), then a TLS handshake with every HTTPS
//! listener to prove nginx serves the new leaf, and the deploy hooks. A certificate nginx refuses
//! is rolled back to the version that was live before.

use time::OffsetDateTime;

use super::intent::Intent;
use super::lineage::{LineageMeta, Replaced};
use super::outcome::{chain_text, Failure, Outcome, Status};
use super::plan::Plan;
use super::run::{Fresh, Run};
use super::Error;
use crate::acme;
use crate::hooks::{DeployInfo, Stage};
use crate::nginx::discovery::Scan;
use crate::nginx::edit::{self, Edit, InstallSpec};
use crate::nginx::probe::{loopback_for, served_certificate, served_rsa_certificate, ProbeError};
use crate::nginx::transaction::{self, Change, ChangeError};
use crate::nginx::Config;
use crate::store::{self, Issued};

/// How long an old certificate may still be served right after a reload (an old worker that is
/// shutting down can hold its listening socket for a moment, more so on a loaded host).
pub(super) const VERIFY_SETTLE: std::time::Duration = std::time::Duration::from_secs(3);
/// How often the served certificate is asked again meanwhile.
pub(super) const VERIFY_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// A certificate waiting for the reload.
struct Staged {
    plan: Plan,
    /// The live version before this run, for a rollback.
    previous: Option<u32>,
    /// The version being installed, when it is not the live one of before.
    version: Option<u32>,
    status: Status,
    /// The leaf (DER) nginx must serve afterwards.
    leaf: Option<Vec<u8>>,
    /// The lines this install replaces in its blocks, remembered once it is served so that
    /// `remove` can put them back.
    replaced: Vec<Replaced>,
}

fn first_cert(pem: &[u8]) -> Option<Vec<u8>> {
    acme::cert::pem_certificates(pem)
        .ok()
        .and_then(|v| v.into_iter().next())
}

impl Run {
    /// Stores fresh certificates (and switches to versions issued earlier but not installed),
    /// points blocks at lineages, then one change transaction, a TLS check of every HTTPS
    /// listener, and deploy hooks. An intent written first lets the next run roll back whatever a
    /// crash in between leaves.
    pub(super) async fn deploy(
        &self,
        cfg: &Config,
        scan: &Scan,
        fresh: Vec<Fresh>,
        install_only: Vec<Plan>,
    ) -> Result<Vec<Outcome>, Error> {
        let mut outcomes = Vec::new();
        if fresh.is_empty() && install_only.is_empty() {
            return Ok(outcomes);
        }
        let mut intent = Intent {
            lineages: fresh
                .iter()
                .map(|f| &f.plan)
                .chain(&install_only)
                .map(|p| (p.lineage(), self.store.lineage(&p.lineage()).live_version()))
                .collect(),
            ..Intent::default()
        };
        self.store.write_intent(&intent)?;
        let result = self
            .deploy_under_intent(cfg, scan, fresh, install_only, &mut intent, &mut outcomes)
            .await;
        match result {
            // Every staged lineage is settled (served, or rolled back with its version pending).
            Ok(()) => {
                self.store.clear_intent()?;
                Ok(outcomes)
            }
            // Stopped half-way: roll back now what the intent names, as the next run would.
            Err(e) => {
                if let Err(r) = super::intent::recover(&self.store) {
                    tracing::warn!("{}", chain_text(&r));
                }
                Err(e)
            }
        }
    }

    async fn deploy_under_intent(
        &self,
        cfg: &Config,
        scan: &Scan,
        fresh: Vec<Fresh>,
        install_only: Vec<Plan>,
        intent: &mut Intent,
        outcomes: &mut Vec<Outcome>,
    ) -> Result<(), Error> {
        let mut staged = Vec::new();
        for f in fresh {
            match self.store_version(scan, &f) {
                Ok(s) => staged.push(s),
                Err(e) => {
                    let mut o = self.outcome(&f.plan, Status::Failed);
                    o.error = Some(Failure::transient(format!(
                        "cannot store the certificate: {}",
                        chain_text(&e)
                    )));
                    outcomes.push(o);
                }
            }
        }
        for plan in install_only {
            let lineage = self.store.lineage(&plan.lineage());
            let previous = lineage.live_version();
            let meta = self.meta(&plan.lineage())?;
            let version = match self.pending_install(&plan, &meta) {
                Some(v) => {
                    lineage.point_live_at(v)?;
                    Some(v)
                }
                None => None,
            };
            staged.push(Staged {
                leaf: lineage.live_fullchain().and_then(|p| first_cert(&p)),
                previous,
                version,
                status: Status::Installed,
                plan,
                replaced: Vec::new(),
            });
        }
        if staged.is_empty() {
            return Ok(());
        }
        if !self.mode.edits_nginx() {
            for s in &staged {
                self.settle(s, true)?;
                self.run_deploy_hooks(&s.plan).await;
                outcomes.push(self.outcome(&s.plan, s.status));
            }
            return Ok(());
        }
        // Edits for blocks that do not point at their lineage yet.
        let mut change = Change::default();
        let mut kept = Vec::new();
        for mut s in staged {
            match self.edits_for(cfg, scan, &s.plan) {
                Ok(e) => {
                    s.replaced = e
                        .iter()
                        .filter(|e| e.end > e.start)
                        .map(|e| Replaced {
                            file: cfg.files[e.file].path.clone(),
                            offset: e.start,
                            original: String::from_utf8_lossy(
                                &cfg.files[e.file].text[e.start..e.end],
                            )
                            .into_owned(),
                            inserted: e.text.clone(),
                        })
                        .collect();
                    change.edits.extend(e);
                    kept.push(s);
                }
                Err(why) => outcomes.push(self.fail_and_roll_back(&s, why)),
            }
        }
        if kept.is_empty() {
            return Ok(());
        }
        let ctl = self.settings.nginx.ctl(cfg, scan)?;
        let backups = transaction::new_backup_dir(&self.store.backups_dir());
        let (edited, created) = change.touched(cfg);
        intent.backup_dir = Some(backups.clone());
        intent.edited = edited;
        intent.created = created;
        self.store.write_intent(intent)?;
        let kept = match transaction::commit(&ctl, cfg, &change, &backups, true).await {
            Ok(_) => kept,
            // One block's refusal must not fail the others: each is tried alone.
            Err(e @ ChangeError::Rejected { .. })
                if kept.len() > 1 && e.restore_failure().is_none() =>
            {
                self.one_block_at_a_time(&ctl, kept, &backups, outcomes)
                    .await?
            }
            Err(e) => {
                let message = chain_text(&e);
                for s in &kept {
                    outcomes.push(self.fail_and_roll_back(s, message.clone()));
                }
                return Ok(());
            }
        };
        if kept.is_empty() {
            return Ok(());
        }
        // Verify what nginx serves, then deploy hooks.
        let (_, new_scan) = self.reread()?;
        for s in &kept {
            match verify(&new_scan, &s.plan, s.leaf.as_deref()).await {
                Ok(()) => {
                    self.settle(s, true)?;
                    if let Some(info) = s
                        .leaf
                        .as_deref()
                        .and_then(|d| acme::CertInfo::from_der(d).ok())
                    {
                        self.coordinator
                            .report(&s.plan.lineage(), &info.serial_hex)
                            .await;
                    }
                    self.run_deploy_hooks(&s.plan).await;
                    let mut o = self.outcome(&s.plan, s.status);
                    o.server_blocks = s.plan.block_locations.clone();
                    outcomes.push(o);
                }
                Err(e) => {
                    let mut o = self.outcome(&s.plan, Status::Failed);
                    o.error = Some(Failure::transient(chain_text(&e)));
                    outcomes.push(o);
                }
            }
        }
        Ok(())
    }

    /// After nginx refused the change for all staged certificates together: each one's edits
    /// alone (on the configuration as the ones accepted before left it), `nginx -t` each, and
    /// one reload for the accepted. Returns the accepted; the refused fail with nginx's words,
    /// which name the file at fault.
    async fn one_block_at_a_time(
        &self,
        ctl: &crate::nginx::NginxCtl,
        kept: Vec<Staged>,
        backups: &std::path::Path,
        outcomes: &mut Vec<Outcome>,
    ) -> Result<Vec<Staged>, Error> {
        let mut accepted = Vec::new();
        let mut applied = Vec::new();
        for s in kept {
            // Our edits only insert and replace lines inside blocks: the blocks keep their
            // order, so the plan's block indices hold in the re-read configuration (their line
            // numbers do not).
            let (cfg_now, scan_now) = self.reread()?;
            let change = match self.edits_for(&cfg_now, &scan_now, &s.plan) {
                Ok(edits) => Change {
                    edits,
                    ..Change::default()
                },
                Err(why) => {
                    outcomes.push(self.fail_and_roll_back(&s, why));
                    continue;
                }
            };
            match transaction::commit(ctl, &cfg_now, &change, backups, false).await {
                Ok(a) => {
                    applied.push(a);
                    accepted.push(s);
                }
                Err(e) => outcomes.push(self.fail_and_roll_back(&s, chain_text(&e))),
            }
        }
        if accepted.is_empty() {
            return Ok(accepted);
        }
        if let Err(e) = ctl.reload().await {
            let mut message = format!("the reload failed: {}", chain_text(&e));
            for a in applied.iter().rev() {
                if let Err(r) = a.restore() {
                    message.push_str(&format!("; restoring failed: {r}"));
                }
            }
            for s in &accepted {
                outcomes.push(self.fail_and_roll_back(s, message.clone()));
            }
            return Ok(Vec::new());
        }
        Ok(accepted)
    }

    /// The edits that point a plan's install blocks (indices into `scan`) at its lineage.
    fn edits_for(&self, cfg: &Config, scan: &Scan, plan: &Plan) -> Result<Vec<Edit>, String> {
        let spec = self.install_spec(plan);
        let mut edits = Vec::new();
        for &b in &plan.install_blocks {
            let block = scan
                .servers
                .get(b)
                .ok_or_else(|| "its server block is gone".to_owned())?;
            edits.extend(edit::install_edits(cfg, block, &spec).map_err(|e| e.0)?);
        }
        Ok(edits)
    }

    /// What a plan's blocks are pointed at: its lineage's live files, in its slot.
    fn install_spec(&self, plan: &Plan) -> InstallSpec {
        let l = self.store.lineage(&plan.lineage());
        InstallSpec {
            fullchain: l.live_file(store::FULLCHAIN),
            key: l.live_file(store::PRIVKEY),
            https_port: self.settings.https_port,
            redirect: self.settings.redirect,
            slot: plan.slot(),
        }
    }

    /// Records how a staged certificate ended: installed (nothing pending any more), or not
    /// (its version stays pending, to be installed again without a new order).
    fn settle(&self, s: &Staged, installed: bool) -> Result<(), Error> {
        let mut meta = self.meta(&s.plan.lineage())?;
        let pending = if installed { None } else { s.version };
        if installed && !s.replaced.is_empty() {
            meta.replaced.extend(s.replaced.iter().cloned());
            meta.pending_version = pending;
            self.save_meta(&s.plan.lineage(), &meta)?;
        } else if meta.pending_version != pending {
            meta.pending_version = pending;
            self.save_meta(&s.plan.lineage(), &meta)?;
        }
        Ok(())
    }

    /// Writes a fresh certificate as the lineage's new live version and resets its renewal
    /// state.
    fn store_version(&self, scan: &Scan, f: &Fresh) -> Result<Staged, Error> {
        let lineage = self.store.lineage(&f.plan.lineage());
        let previous = lineage.live_version();
        let mut meta: LineageMeta = lineage.load_meta()?;
        let version = lineage.install(&Issued {
            key_pem: &f.key_pem,
            cert_pem: &f.chain.leaf_pem(),
            chain_pem: &f.chain.chain_pem(),
        })?;
        meta.names = f.plan.names.clone();
        meta.directory = self.settings.directory.clone();
        meta.key_type = f.key_type.to_string();
        meta.server_blocks = f
            .plan
            .blocks
            .iter()
            .map(|i| scan.servers[*i].location())
            .collect();
        meta.issued_at = Some(OffsetDateTime::now_utc().unix_timestamp());
        meta.last_replaces = f.chain.replaces.clone();
        meta.renewal.record_success();
        meta.pending_version = None;
        self.save_meta(&f.plan.lineage(), &meta)?;
        Ok(Staged {
            plan: f.plan.clone(),
            previous,
            version: Some(version),
            status: f.status,
            leaf: Some(f.chain.leaf_der().to_vec()),
            replaced: Vec::new(),
        })
    }

    /// A failed outcome for a staged certificate, after pointing its lineage back at what was
    /// live before (a rollback that fails is part of the message).
    fn fail_and_roll_back(&self, s: &Staged, message: String) -> Outcome {
        let lineage = self.store.lineage(&s.plan.lineage());
        let rolled_back = match (s.version, s.previous) {
            (None, _) => Ok(()),
            (Some(_), Some(v)) => lineage.point_live_at(v),
            (Some(_), None) => lineage.remove_live(),
        };
        let mut message = message;
        if let Err(e) = rolled_back {
            message.push_str(&format!(
                "; rolling the lineage back failed too: {}",
                chain_text(&e)
            ));
        }
        // The issued certificate is kept and installed again by the next run, without an order.
        if let Err(e) = self.settle(s, false) {
            message.push_str(&format!(
                "; remembering the pending version failed: {}",
                chain_text(&e)
            ));
        }
        let mut o = self.outcome(&s.plan, Status::Failed);
        o.error = Some(Failure::transient(message));
        o
    }

    async fn run_deploy_hooks(&self, plan: &Plan) {
        let l = self.store.lineage(&plan.lineage());
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
        self.settings.hooks.run(Stage::Deploy, &info.env()).await;
    }
}

/// Why nginx is not proven to serve a new certificate.
#[derive(Debug, thiserror::Error)]
pub(super) enum VerifyError {
    #[error("no certificate to verify")]
    NoLeaf,
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("nginx at {addr} still serves another certificate for {name} (server block {block})")]
    Other {
        addr: std::net::SocketAddr,
        name: String,
        block: String,
    },
    #[error("no HTTPS listener serves {0} after the reload")]
    NoListener(String),
}

/// Every HTTPS listener of the plan's blocks must serve the expected leaf for its name.
pub(super) async fn verify(
    scan: &Scan,
    plan: &Plan,
    leaf: Option<&[u8]>,
) -> Result<(), VerifyError> {
    let leaf = leaf.ok_or(VerifyError::NoLeaf)?;
    let mut checked = 0;
    let probe_name = plan.probe_name();
    for server in plan.blocks.iter().filter_map(|&i| scan.servers.get(i)) {
        for l in server.listen.iter().filter(|l| l.ssl) {
            let Some(addr) = loopback_for(l) else {
                continue;
            };
            // An old worker that has begun shutting down may still hold its listening socket
            // for a moment: another certificate counts only after VERIFY_SETTLE.
            let deadline = tokio::time::Instant::now() + VERIFY_SETTLE;
            loop {
                let served = match plan.variant {
                    Some(_) => served_rsa_certificate(addr, &probe_name).await?,
                    None => served_certificate(addr, &probe_name).await?,
                };
                if served == leaf {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(VerifyError::Other {
                        addr,
                        name: plan.lineage(),
                        block: server.location(),
                    });
                }
                tokio::time::sleep(VERIFY_RETRY).await;
            }
            checked += 1;
        }
    }
    if checked == 0 {
        return Err(VerifyError::NoListener(plan.primary.clone()));
    }
    Ok(())
}
