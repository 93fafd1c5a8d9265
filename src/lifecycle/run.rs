//! A run: the settings, the [`Mode`], the state directory and its lock. `enroll` decides per plan
//! (through the renewal policy) what to order and what only to install, then one path orders
//! through the preflight solver and installs: the pre-hook, the challenge snippet where a block
//! needs it, concurrent orders, versioned install, `nginx -t`, one reload, TLS verification,
//! deploy hooks, the post-hook, and the failure memory.

use std::collections::HashMap;

use futures_util::stream::{self, StreamExt};
use time::OffsetDateTime;

use super::coordinator::{Coordinator, Obtained};
use super::lineage::{live_cert, same_names, LineageMeta};
use super::outcome::chain_text;
use super::outcome::{Failure, Outcome, Status};
use super::plan::{self, Plan};
use super::policy::Decision;
use super::settings::{snippet_text, Mode, Settings};
use super::Error;
use crate::acme::{self, Account, KeyPair, OrderOptions};
use crate::challenge::dav::DavSolver;
use crate::challenge::dns::lookup::Resolver;
use crate::challenge::dns::{Dns, DnsSolver, TxtRecord};
use crate::challenge::preflight::{check_reachable, ChallengeRoute, PreflightSolver};
use crate::challenge::route::{Method, Router};
use crate::challenge::webroot::remove_token_file;
use crate::hooks::Stage;
use crate::nginx::discovery::Scan;
use crate::nginx::edit;
use crate::nginx::probe::loopback_for;
use crate::nginx::transaction::{self, Change, ChangeError, NewFile};
use crate::nginx::Config;
use crate::store::{self, StateLock, Store};

/// A certificate obtained in this run, waiting to be installed.
#[derive(Debug, Clone)]
pub struct Fresh {
    pub plan: Plan,
    /// The plan's lineage name.
    pub lineage: String,
    pub key_pem: String,
    pub key_type: acme::KeyType,
    pub chain: acme::CertificateChain,
    /// Issued or Renewed.
    pub status: Status,
}

/// The run's DNS and WebDAV solvers, or why they cannot be used.
#[derive(Debug)]
struct Solvers {
    dns: Option<Result<Dns, String>>,
    dav: Option<Result<DavSolver, String>>,
    /// In a fleet: the other nodes (name, address) that must serve http-01 answers too.
    fleet_nodes: Option<Vec<(String, String)>>,
}

use crate::nginx::discovery::Identity;

/// One run of enroll, renew or watch.
#[derive(Debug)]
pub struct Run {
    pub settings: Settings,
    pub mode: Mode,
    pub(super) store: Store,
    /// Who else orders these lineages: nobody, or the nodes of a fleet.
    pub(super) coordinator: Coordinator,
    _lock: Option<StateLock>,
}

impl Fresh {
    /// The certificate as the coordinator publishes it.
    pub fn obtained(&self) -> Obtained<'_> {
        Obtained {
            lineage: self.lineage.as_str(),
            names: &self.plan.names,
            key_type: self.key_type,
            key_pem: &self.key_pem,
            chain: &self.chain,
        }
    }
}

impl Run {
    /// Opens the state directory, takes its lock and removes challenge tokens an earlier,
    /// killed run left behind. A dry run creates, locks and writes nothing (it reads what is
    /// there: the account and the lineages).
    pub fn open(mut settings: Settings, mode: Mode) -> Result<Run, Error> {
        if mode == Mode::DryRun {
            settings.use_staging_for_dry_run();
            let store = Store {
                root: settings.state_dir.clone(),
            };
            let coordinator = Coordinator::open(&settings, mode)?;
            return Ok(Run {
                settings,
                mode,
                store,
                coordinator,
                _lock: None,
            });
        }
        let store = Store::open(&settings.state_dir)?;
        let lock = store.lock(store::LOCK_WAIT)?;
        super::intent::recover(&store)?;
        for token in store.take_journal()? {
            match remove_token_file(&token) {
                Ok(()) => tracing::info!(
                    "removed challenge token {} left by an earlier run",
                    token.display()
                ),
                Err(e) => tracing::warn!("{}", super::outcome::chain_text(&e)),
            }
        }
        let coordinator = Coordinator::open(&settings, mode)?;
        Ok(Run {
            settings,
            mode,
            store,
            coordinator,
            _lock: Some(lock),
        })
    }

    /// Who else orders these lineages (the fleet's shared store for `status --fleet`).
    pub fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }

    /// The state directory.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Reads and scans nginx's configuration.
    pub fn load(&self) -> Result<(Config, Scan), Error> {
        Ok(self.settings.nginx.load()?)
    }

    /// Reads the configuration again after a change, leaving out included files that do not
    /// parse (they were reported when the run started).
    pub(super) fn reread(&self) -> Result<(Config, Scan), Error> {
        let (cfg, scan, _) = self.settings.nginx.load_lenient()?;
        Ok((cfg, scan))
    }

    /// The plans for the named server blocks (all when `wanted` is empty).
    pub fn plans(&self, scan: &Scan, wanted: &[String]) -> Result<Vec<Plan>, Error> {
        plan::plans(
            scan,
            wanted,
            self.settings.http_port,
            &self.settings.proving(),
        )
    }

    pub(super) fn meta(&self, name: &str) -> Result<LineageMeta, Error> {
        Ok(self.store.lineage(name).load_meta()?)
    }

    pub(super) fn save_meta(&self, name: &str, meta: &LineageMeta) -> Result<(), Error> {
        if self.mode.writes_state() {
            self.store.lineage(name).save_meta(meta)?;
        }
        Ok(())
    }

    /// Orders what the policy says is due (or has no certificate for these names), installs
    /// what is current but not yet used by its blocks, and reports the rest (`enroll`, `watch`).
    pub async fn enroll(
        &self,
        cfg: Config,
        scan: Scan,
        plans: Vec<Plan>,
    ) -> Result<Vec<Outcome>, Error> {
        if plans.iter().any(|p| p.error.is_none()) {
            self.check_nginx(&cfg, &scan).await?;
        }
        self.remove_leftover_records().await;
        self.coordinator.sync(&self.store).await?;
        let now = OffsetDateTime::now_utc();
        let mut outcomes = Vec::new();
        let mut to_order = Vec::new();
        let mut install_only = Vec::new();
        for plan in plans {
            for (name, why) in &plan.left_out {
                let mut o = Outcome::new(name, std::slice::from_ref(name), Status::Skipped);
                o.reason = Some(why.clone());
                o.server_blocks = plan.block_locations.clone();
                outcomes.push(o);
            }
            if let Some(e) = &plan.error {
                // Nothing the CA could validate: left out, with what to change.
                let mut o = self.outcome(&plan, Status::Skipped);
                o.reason = Some(e.clone());
                outcomes.push(o);
                continue;
            }
            let meta = self.meta(&plan.lineage())?;
            if self.pending_install(&plan, &meta).is_some() {
                // Issued earlier, not installed: install it (no CA involved, no backoff).
                install_only.push(plan);
                continue;
            }
            let cert = live_cert(&self.store.lineage(&plan.lineage())).map(|c| c.info);
            let names_differ = cert
                .as_ref()
                .is_some_and(|c| !same_names(&c.names, &plan.names));
            match meta.renewal.decide(cert.as_ref(), now) {
                Decision::Backoff { until, failures } if !plan.named => {
                    let mut o = self.outcome(&plan, Status::Backoff);
                    o.next_renewal = Some(until);
                    o.reason = Some(format!(
                        "{failures} failures in a row; last: {}",
                        meta.renewal.last_error.as_deref().unwrap_or("-")
                    ));
                    outcomes.push(o);
                }
                Decision::NotDue { .. } if !names_differ => {
                    // Installed means: the blocks name the live files and nginx serves them
                    // (a run killed before its reload left the first without the second).
                    if !self.mode.edits_nginx()
                        || (self.points_at_live(&plan, &scan)
                            && self.serves_live(&plan, &scan).await)
                    {
                        if let Some(c) = &cert {
                            self.coordinator
                                .report(&plan.lineage(), &c.serial_hex)
                                .await;
                        }
                        outcomes.push(self.outcome(&plan, Status::UpToDate));
                    } else {
                        install_only.push(plan);
                    }
                }
                _ => to_order.push(plan),
            }
        }
        if !to_order.is_empty() || !install_only.is_empty() {
            outcomes.extend(self.execute(cfg, scan, to_order, install_only).await?);
        }
        Ok(outcomes)
    }

    /// Orders, installs and deploys, between the pre-hook (only when something is ordered) and
    /// the post-hook (always); then remembers failures and successes.
    pub(super) async fn execute(
        &self,
        mut cfg: Config,
        mut scan: Scan,
        to_order: Vec<Plan>,
        install_only: Vec<Plan>,
    ) -> Result<Vec<Outcome>, Error> {
        let hooks = &self.settings.hooks;
        let ordered: Vec<String> = to_order
            .iter()
            .flat_map(|p| p.names.iter().cloned())
            .collect();
        if !to_order.is_empty() {
            let mut failures = hooks.run(Stage::Pre, &[]).await;
            if !failures.is_empty() {
                hooks
                    .run(Stage::Post, &crate::hooks::post_env(&[], &ordered))
                    .await;
                return Err(Error::PreHook(failures.remove(0)));
            }
        }
        let result = self
            .order_and_deploy(&mut cfg, &mut scan, to_order, install_only)
            .await;
        // The post hook learns what was renewed and what failed (everything ordered, when the
        // run itself failed). Its failures are logged by the hook runner; they change no
        // certificate.
        let names_with = |statuses: &[Status]| -> Vec<String> {
            result
                .as_ref()
                .map(|outcomes| {
                    outcomes
                        .iter()
                        .filter(|o| statuses.contains(&o.status))
                        .flat_map(|o| o.names.iter().cloned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let renewed = names_with(&[Status::Issued, Status::Renewed]);
        let failed = if result.is_err() {
            ordered
        } else {
            names_with(&[Status::Failed])
        };
        hooks
            .run(Stage::Post, &crate::hooks::post_env(&renewed, &failed))
            .await;
        let outcomes = result?;
        self.remember(&outcomes).await?;
        Ok(outcomes)
    }

    /// nginx must pass `nginx -t` and run before anything is ordered: the challenge is proven
    /// through the running nginx, and a run must never leave nginx worse than it found it. A
    /// configuration that fails only because the certificates it names do not exist yet gets
    /// the way out in the message.
    async fn check_nginx(&self, cfg: &Config, scan: &Scan) -> Result<(), Error> {
        let ctl = self.settings.nginx.ctl(cfg, scan)?;
        if let Err(e) = ctl.test_config().await {
            let text = e.to_string();
            let missing_cert = text.contains("no \"ssl_certificate\" is defined")
                || (text.contains("cannot load certificate") && text.contains("No such file"));
            let hint = if missing_cert {
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

    /// Records each failure in its lineage's failure memory (also for names that have no
    /// certificate yet), so the next run backs off.
    async fn remember(&self, outcomes: &[Outcome]) -> Result<(), Error> {
        if !self.mode.writes_state() {
            return Ok(());
        }
        let now = OffsetDateTime::now_utc();
        for o in outcomes {
            if let (Status::Failed, Some(f)) = (o.status, &o.error) {
                let mut meta = self.meta(&o.name)?;
                if meta.names.is_empty() {
                    meta.names = o.names.clone();
                }
                meta.renewal.record_failure(f, now);
                self.save_meta(&o.name, &meta)?;
                self.coordinator.share_failure(&self.store, &o.name).await;
            }
        }
        Ok(())
    }

    /// The version issued for this plan but not installed yet, when it is still good to
    /// install: present, valid for a while, and for the plan's names.
    pub(super) fn pending_install(&self, plan: &Plan, meta: &LineageMeta) -> Option<u32> {
        let v = meta.pending_version?;
        let l = self.store.lineage(&plan.lineage());
        let cert = super::lineage::version_cert(&l, v)?;
        let valid = cert.info.not_after > OffsetDateTime::now_utc() + time::Duration::hours(1);
        (valid && same_names(&cert.info.names, &plan.names)).then_some(v)
    }

    /// False when an HTTPS listener of the plan's blocks answers with another certificate than
    /// the live one. A listener that cannot be reached from here (an address of another
    /// interface) proves nothing either way and does not make the name reinstalled every run.
    async fn serves_live(&self, plan: &Plan, scan: &Scan) -> bool {
        let Some(live) = live_cert(&self.store.lineage(&plan.lineage())) else {
            return false;
        };
        !matches!(
            super::install::verify(scan, plan, Some(&live.leaf_der)).await,
            Err(super::install::VerifyError::Other { .. })
        )
    }

    fn points_at_live(&self, plan: &Plan, scan: &Scan) -> bool {
        let l = self.store.lineage(&plan.lineage());
        let (fullchain, key) = (l.live_file(store::FULLCHAIN), l.live_file(store::PRIVKEY));
        plan.install_blocks.iter().all(|i| {
            let s = &scan.servers[*i];
            s.ssl_certificates.get(plan.slot()).map(String::as_str)
                == Some(&*fullchain.to_string_lossy())
                && s.ssl_certificate_keys.get(plan.slot()).map(String::as_str)
                    == Some(&*key.to_string_lossy())
        })
    }

    async fn order_and_deploy(
        &self,
        cfg: &mut Config,
        scan: &mut Scan,
        mut to_order: Vec<Plan>,
        install_only: Vec<Plan>,
    ) -> Result<Vec<Outcome>, Error> {
        let mut outcomes = Vec::new();
        let needs_snippet: Vec<usize> = (0..to_order.len())
            .filter(|i| {
                to_order[*i].uses_webroot()
                    && to_order[*i]
                        .challenge_block
                        .is_some_and(|b| scan.servers[b].acme_challenge_dir.is_none())
            })
            .collect();
        // The blocks that got the snippet in this run, with the plans answered through them.
        let mut added: Vec<(usize, Vec<String>)> = Vec::new();
        if !needs_snippet.is_empty() {
            let failed = self
                .add_snippet(cfg, scan, &to_order, &needs_snippet)
                .await?;
            for &i in &needs_snippet {
                let (Some(b), false) = (
                    to_order[i].challenge_block,
                    failed.iter().any(|(f, _)| *f == i),
                ) else {
                    continue;
                };
                match added.iter_mut().find(|(block, _)| *block == b) {
                    Some((_, names)) => names.push(to_order[i].lineage()),
                    None => added.push((b, vec![to_order[i].lineage()])),
                }
            }
            for (i, message) in failed.into_iter().rev() {
                let plan = to_order.remove(i);
                let mut o = self.outcome(&plan, Status::Failed);
                o.error = Some(Failure::transient(message));
                outcomes.push(o);
            }
        }
        if self.mode == Mode::DryRun && self.settings.directory != acme::LETSENCRYPT_STAGING {
            // A dry run orders only from a staging directory: elsewhere an order is real.
            for plan in to_order {
                let mut o = self.outcome(&plan, Status::DryRun);
                o.reason = Some(format!(
                    "no order placed: {} has no staging directory acme-nginx knows, and an order there would be real",
                    self.settings.directory
                ));
                outcomes.push(o);
            }
            return Ok(outcomes);
        }
        let fresh = if to_order.is_empty() {
            Vec::new()
        } else {
            self.obtain(scan, to_order, &mut outcomes).await?
        };
        // A block whose every name failed gets back what it was before this run: the snippet
        // it got could shadow a webroot another tool renews through.
        let undo: Vec<usize> = added
            .iter()
            .filter(|(_, names)| {
                names.iter().all(|n| {
                    outcomes
                        .iter()
                        .any(|o| &o.name == n && o.status == Status::Failed)
                })
            })
            .map(|(b, _)| *b)
            .collect();
        if !undo.is_empty() {
            self.remove_snippet(cfg, scan, &undo).await?;
        }
        if self.mode == Mode::DryRun {
            for f in &fresh {
                let mut o = self.outcome(&f.plan, Status::DryRun);
                o.not_after = Some(f.chain.leaf.not_after);
                outcomes.push(o);
            }
            return Ok(outcomes);
        }
        outcomes.extend(self.deploy(cfg, scan, fresh, install_only).await?);
        Ok(outcomes)
    }

    /// Includes the challenge snippet into blocks that serve no challenge directory, tests,
    /// reloads and re-scans (one change transaction). Returns the plans (by index) that still
    /// cannot answer, with why.
    async fn add_snippet(
        &self,
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
            if !self.mode.edits_nginx() {
                failed.push((i, format!("{}: serves no challenge directory ({reason}) and this run may not edit nginx", block.location())));
                continue;
            }
            // A block whose server-level return or rewrite answers every request first gets,
            // before it, a rewrite that lets challenge URIs through to the snippet's location.
            let override_edit = if block.challenge_answered_at_server_level {
                Some(edit::challenge_rewrite_edit(cfg, block))
            } else {
                None
            };
            let edits = edit::include_edit(cfg, block, &self.settings.snippet).and_then(|inc| {
                match override_edit {
                    Some(rw) => rw.map(|rw| vec![rw, inc]),
                    None => Ok(vec![inc]),
                }
            });
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
        let snippet_is_new = self.settings.snippet.symlink_metadata().is_err();
        if snippet_is_new {
            if let Some(at) = edit::include_that_would_load(cfg, &self.settings.snippet) {
                let why = format!(
                    "the challenge snippet {} would also be loaded by the include at {at}; set challenge_snippet to a path no include matches",
                    self.settings.snippet.display()
                );
                failed.extend(editing.iter().map(|&i| (i, why.clone())));
                failed.sort_by_key(|(i, _)| *i);
                return Ok(failed);
            }
        }
        change.new_files.push(NewFile {
            path: self.settings.snippet.clone(),
            contents: snippet_text(&self.settings.challenge_dir).into_bytes(),
            mode: crate::fsutil::PUBLIC_MODE,
        });
        crate::fsutil::create_dir_all_mode(&self.settings.challenge_dir, 0o755).map_err(
            Error::io(format!("create {}", self.settings.challenge_dir.display())),
        )?;
        let ctl = self.settings.nginx.ctl(cfg, scan)?;
        let backups = transaction::new_backup_dir(&self.store.backups_dir());
        match transaction::commit(&ctl, cfg, &change, &backups, true).await {
            Ok(_) => {}
            Err(e @ ChangeError::Rejected { .. }) if e.restore_failure().is_none() => {
                let msg = e.nginx_message().unwrap_or_default().to_owned();
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
            Err(e) => return Err(e.into()),
        }
        let (new_cfg, new_scan) = self.reread()?;
        *cfg = new_cfg;
        *scan = new_scan;
        for &i in &editing {
            let block = plans[i].challenge_block.and_then(|b| scan.servers.get(b));
            if block.is_none_or(|b| b.acme_challenge_dir.is_none()) {
                failed.push((i, "the challenge snippet was included but the block still serves no challenge directory".into()));
            }
        }
        failed.sort_by_key(|(i, _)| *i);
        Ok(failed)
    }

    /// Takes the snippet include (and the challenge rewrite) this run added out of `blocks`
    /// again: one change transaction, then a re-scan. A failure is logged: the include it
    /// leaves passed nginx -t and does no harm but to serve the challenge directory.
    async fn remove_snippet(
        &self,
        cfg: &mut Config,
        scan: &mut Scan,
        blocks: &[usize],
    ) -> Result<(), Error> {
        let snippet = self.settings.snippet.to_string_lossy().into_owned();
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
        let ctl = self.settings.nginx.ctl(cfg, scan)?;
        let backups = transaction::new_backup_dir(&self.store.backups_dir());
        match transaction::commit(&ctl, cfg, &change, &backups, true).await {
            Ok(_) => {
                let (c, s) = self.reread()?;
                *cfg = c;
                *scan = s;
            }
            Err(e) => tracing::warn!(
                "cannot take the challenge snippet out of the failed names' blocks again: {}",
                super::outcome::chain_text(&e)
            ),
        }
        Ok(())
    }

    /// Orders the plans' certificates concurrently.
    async fn obtain(
        &self,
        scan: &Scan,
        plans: Vec<Plan>,
        outcomes: &mut Vec<Outcome>,
    ) -> Result<Vec<Fresh>, Error> {
        let client = acme::Client::new(&self.settings.directory, &self.settings.client_config)
            .await
            .map_err(|source| Error::Ca {
                directory: self.settings.directory.clone(),
                source,
            })?;
        let account = self
            .coordinator
            .account(
                &self.settings,
                &self.store,
                self.mode.writes_state(),
                client,
            )
            .await?;
        let identity = scan.worker_identity();
        let short_lived = account
            .client()
            .directory()
            .meta
            .profiles
            .contains_key(plan::IP_PROFILE);
        let (plans, no_ip): (Vec<Plan>, Vec<Plan>) = plans
            .into_iter()
            .partition(|p| !p.ip_literal || short_lived);
        for plan in no_ip {
            let mut o = self.outcome(&plan, Status::Skipped);
            o.reason = Some(format!(
                "an IP address certificate needs the CA's \"{}\" profile, which {} does not offer",
                plan::IP_PROFILE,
                self.settings.directory
            ));
            outcomes.push(o);
        }
        // One orderer per lineage: a fleet node claims it (its lock) first.
        let mut claims = Vec::new();
        let mut mine = Vec::new();
        for plan in plans {
            let local = live_cert(&self.store.lineage(&plan.lineage())).map(|c| c.info.serial_hex);
            let claim = self
                .coordinator
                .claim(&plan.lineage(), local.as_deref())
                .await?;
            match claim.reason() {
                None => {
                    claims.push(claim);
                    mine.push(plan);
                }
                Some(why) => {
                    let mut o = self.outcome(&plan, Status::Skipped);
                    o.reason = Some(why);
                    outcomes.push(o);
                }
            }
        }
        let plans = mine;
        let solvers = self.solvers(&plans).await;
        let results: Vec<(Plan, Result<Fresh, Failure>)> = stream::iter(plans)
            .map(|plan| {
                let account = &account;
                let identity = identity.as_ref();
                let solvers = &solvers;
                async move {
                    let r = self
                        .obtain_one(account, scan, &plan, identity, solvers)
                        .await;
                    (plan, r)
                }
            })
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        let mut fresh = Vec::new();
        for (plan, r) in results {
            match r {
                Ok(f) => {
                    // Published before the lock goes: the fleet never orders it twice.
                    self.coordinator
                        .publish(f.obtained(), &self.settings.directory)
                        .await;
                    fresh.push(f)
                }
                Err(e) => {
                    let mut o = self.outcome(&plan, Status::Failed);
                    o.error = Some(e);
                    outcomes.push(o);
                }
            }
        }
        self.coordinator.release(claims).await;
        fresh.sort_by_key(|f| f.plan.lineage());
        Ok(fresh)
    }

    /// The DNS and WebDAV solvers the plans need, made once for the run (a key file that
    /// cannot be read fails the names that need it, not the others).
    async fn solvers(&self, plans: &[Plan]) -> Solvers {
        let needs = |m: Method| plans.iter().any(|p| p.methods.values().any(|x| *x == m));
        let resolver = self.settings.resolver.unwrap_or_else(Resolver::system);
        let dns = match &self.settings.dns {
            Some(config) if needs(Method::Dns) => {
                Some(Dns::new(config).await.map_err(|e| chain_text(&e)))
            }
            _ => None,
        };
        let dav = match &self.settings.dav {
            Some(config) if needs(Method::Dav) => Some(
                DavSolver::new(config, resolver, self.settings.http_port)
                    .map_err(|e| chain_text(&e)),
            ),
            _ => None,
        };
        let fleet_nodes = self.coordinator.other_nodes().await;
        Solvers {
            dns,
            dav,
            fleet_nodes,
        }
    }

    /// Removes the DNS records an earlier run made and did not remove (it was killed during
    /// the validation, or the removal failed); a record that still cannot be removed stays
    /// journaled for the next run.
    pub async fn remove_leftover_records(&self) {
        if !self.mode.writes_state() {
            return;
        }
        let records: Vec<TxtRecord> = match self.store.dns_journal() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("{}", chain_text(&e));
                return;
            }
        };
        if records.is_empty() {
            return;
        }
        let Some(config) = &self.settings.dns else {
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
                    if let Err(e) = self.store.unjournal_dns(&r) {
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

    async fn obtain_one(
        &self,
        account: &Account,
        scan: &Scan,
        plan: &Plan,
        identity: Option<&Identity>,
        solvers: &Solvers,
    ) -> Result<Fresh, Failure> {
        let journal = self.mode.writes_state().then(|| self.store.clone());
        let mut router = Router {
            methods: plan.methods.iter().map(|(n, m)| (n.clone(), *m)).collect(),
            ..Router::default()
        };
        if plan.uses_webroot() {
            let mut solver = self.webroot_solver(scan, plan, identity, journal.clone())?;
            if let Some(nodes) = &solvers.fleet_nodes {
                if let Some(check) = self.coordinator.challenge_check(nodes) {
                    solver = solver.with_fleet(check);
                }
            }
            router.webroot = Some(solver);
        }
        if plan.methods.values().any(|m| *m == Method::Dav) {
            match &solvers.dav {
                Some(Ok(dav)) => router.dav = Some(dav),
                Some(Err(e)) => return Err(Failure::transient(e.clone())),
                None => return Err(Failure::transient("no WebDAV server is configured")),
            }
        }
        if plan.methods.values().any(|m| *m == Method::Dns) {
            match &solvers.dns {
                Some(Ok(dns)) => router.dns = Some(DnsSolver::new(dns, journal)),
                Some(Err(e)) => return Err(Failure::transient(e.clone())),
                None => return Err(Failure::transient("no DNS solver is configured")),
            }
        }
        let solver = router;
        let key = self.certificate_key(plan);
        let opts = OrderOptions {
            profile: if plan.ip_literal {
                Some(plan::IP_PROFILE.to_owned())
            } else {
                self.settings.profile.clone()
            },
            replaces: self.replaces(plan),
            preferred_chain: self
                .meta(&plan.lineage())
                .ok()
                .and_then(|m| m.preferred_chain)
                .or(self.settings.preferred_chain.clone()),
            ..OrderOptions::default()
        };
        let (chain, key) = self
            .coordinator
            .order(account, &plan.lineage(), &plan.names, key, &solver, &opts)
            .await?;
        let renewed = self
            .store
            .lineage(&plan.lineage())
            .live_fullchain()
            .is_some();
        Ok(Fresh {
            plan: plan.clone(),
            lineage: plan.lineage(),
            key_type: key.key_type(),
            key_pem: key.to_pem(),
            chain,
            status: if renewed {
                Status::Renewed
            } else {
                Status::Issued
            },
        })
    }

    /// The http-01 solver through this host's nginx for a plan's names that take it: tokens
    /// in the challenge block's directory, checked through nginx.
    fn webroot_solver(
        &self,
        scan: &Scan,
        plan: &Plan,
        identity: Option<&Identity>,
        journal: Option<Store>,
    ) -> Result<PreflightSolver, Failure> {
        let block = &scan.servers[plan
            .challenge_block
            .ok_or_else(|| Failure::transient("no challenge block"))?];
        let dir = block.acme_challenge_dir.clone().ok_or_else(|| {
            Failure::transient(format!(
                "{}: {}",
                block.location(),
                block.acme_challenge_reason.clone().unwrap_or_default()
            ))
        })?;
        if let Some((uid, _, groups)) = identity {
            check_reachable(&dir, *uid, groups)
                .map_err(|e| Failure::transient(format!("{}: {e}", block.location())))?;
        }
        let listener = block
            .listen
            .iter()
            .filter(|l| !l.ssl && l.port == self.settings.http_port)
            .find_map(loopback_for)
            .ok_or_else(|| {
                Failure::transient(format!(
                    "{}: no plain-HTTP listener reachable over loopback",
                    block.location()
                ))
            })?;
        let routes: HashMap<String, ChallengeRoute> = plan
            .names
            .iter()
            .filter(|n| plan.methods.get(*n) == Some(&Method::Webroot))
            .map(|n| {
                let route = ChallengeRoute {
                    dir: dir.clone(),
                    listener,
                    block: block.location(),
                };
                (n.clone(), route)
            })
            .collect();
        let owner = identity.map(|(u, g, _)| (*u, *g));
        Ok(PreflightSolver::new(routes, owner, journal))
    }

    /// A new key per certificate, or the live one when `reuse_key` is set.
    fn certificate_key(&self, plan: &Plan) -> KeyPair {
        let lineage_reuses = self.meta(&plan.lineage()).is_ok_and(|m| m.reuse_key);
        if self.settings.reuse_key || lineage_reuses {
            if let Some(k) = self
                .store
                .lineage(&plan.lineage())
                .live_key()
                .and_then(|p| KeyPair::from_pem(&p).ok())
            {
                return k;
            }
        }
        KeyPair::generate(self.key_type_for(plan))
    }

    /// The key type of a plan's certificate: the RSA one of a hybrid block's second pair;
    /// else the one the lineage has (a renewal keeps it); else the setting (ECDSA for the first
    /// pair of a hybrid block, whose second pair is the RSA one).
    fn key_type_for(&self, plan: &Plan) -> acme::KeyType {
        if let Some(k) = plan.variant {
            return k;
        }
        let kept = self
            .meta(&plan.lineage())
            .ok()
            .filter(|m| m.issued_at.is_some())
            .and_then(|m| m.key_type.parse::<acme::KeyType>().ok());
        match kept {
            Some(k) => k,
            None => self.settings.key_type,
        }
    }

    /// The ARI CertID of the live certificate this order replaces, if any.
    fn replaces(&self, plan: &Plan) -> Option<String> {
        live_cert(&self.store.lineage(&plan.lineage()))?
            .info
            .ari_cert_id
    }

    /// An outcome for a plan, with what its lineage holds now.
    pub(super) fn outcome(&self, plan: &Plan, status: Status) -> Outcome {
        let lineage = self.store.lineage(&plan.lineage());
        let live = live_cert(&lineage);
        let mut o = Outcome::new(&plan.lineage(), &plan.names, status);
        o.not_after = live.as_ref().map(|c| c.info.not_after);
        o.fullchain = Some(lineage.live_file(store::FULLCHAIN)).filter(|p| p.exists());
        o.key = Some(lineage.live_file(store::PRIVKEY)).filter(|p| p.exists());
        o.server_blocks = plan.block_locations.clone();
        if status == Status::Renewed {
            o.replaces = lineage
                .load_meta::<LineageMeta>()
                .ok()
                .and_then(|m| m.last_replaces);
        }
        o
    }
}
