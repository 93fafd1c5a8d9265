//! A session: one run of enroll, renew, remove, import-certbot or a watch pass. It takes the
//! state directory's run lock and install lock (letting the latter go while it waits on the CA
//! or a hook), completes or rolls back what a killed run left, builds the
//! collaborators once ([`Env`]: settings, store, coordinator, CA client) and runs the work as a
//! sequence of stages, each in its own file under [`super::stages`]:
//!
//! triage (pure decisions) -> prepare (nginx ready, challenge snippets) -> order (claims,
//! solvers, concurrent orders) -> install (versions, edits, one change transaction) -> verify
//! (TLS proof on every listener) -> record (failure memory, hooks).
//!
//! Stages receive the [`Env`] and typed inputs; none calls back into the session.

use time::OffsetDateTime;

use super::coordinator::Coordinator;
use super::env::Env;
use super::lineage::live_cert;
use super::outcome::{chain_text, Failure, Outcome, Status};
use super::plan::Plan;
use super::settings::{Mode, Settings};
use super::stages::triage::{triage, Facts, Verdict};
use super::stages::{install, order, prepare, record, rehearse, verify};
use super::Error;
use crate::acme;
use crate::challenge::webroot::remove_token_file;
use crate::hooks::Stage;
use crate::nginx::discovery::Scan;
use crate::nginx::Config;
use crate::store::{self, StateLock, Store};

/// One run, holding the state directory's run lock (not in a dry run) and, in its [`Env`], the
/// install lock while it writes.
#[derive(Debug)]
pub struct Session {
    pub(super) env: Env,
    _lock: Option<StateLock>,
}

impl Session {
    /// Opens the state directory, takes its run lock and its install lock (completing or
    /// rolling back what a killed run left) and removes challenge tokens an earlier, killed run
    /// left behind. A dry run creates, locks and writes nothing (it reads what is there: the
    /// account and the lineages).
    pub async fn open(mut settings: Settings, mode: Mode) -> Result<Session, Error> {
        if mode == Mode::DryRun {
            settings.use_staging_for_dry_run();
            let store = Store {
                root: settings.state_dir.clone(),
            };
            let coordinator = Coordinator::open(&settings, mode)?;
            return Ok(Session {
                env: Env::new(settings, mode, store, coordinator),
                _lock: None,
            });
        }
        let store = Store::open(&settings.state_dir)?;
        let lock = store.lock(store::LOCK_WAIT).await?;
        let coordinator = Coordinator::open(&settings, mode)?;
        let env = Env::new(settings, mode, store, coordinator);
        env.hold_install().await?;
        for token in env.store.take_journal()? {
            match remove_token_file(&token) {
                Ok(false) => {}
                Ok(true) => tracing::info!(
                    "removed challenge token {} left by an earlier run",
                    token.display()
                ),
                Err(e) => tracing::warn!("{}", chain_text(&e)),
            }
        }
        Ok(Session {
            env,
            _lock: Some(lock),
        })
    }

    /// Lets this session add the port-80 blocks `--http-route` adds (an operator who said yes
    /// when asked).
    pub fn allow_http_routes(&mut self) {
        self.env.settings.http_route = true;
    }

    /// The settings of this session.
    pub fn settings(&self) -> &Settings {
        &self.env.settings
    }

    /// The mode of this session.
    pub fn mode(&self) -> Mode {
        self.env.mode
    }

    /// Who else orders these lineages (the fleet's shared store for `status --fleet`).
    pub fn coordinator(&self) -> &Coordinator {
        &self.env.coordinator
    }

    /// The state directory.
    pub fn store(&self) -> &Store {
        &self.env.store
    }

    /// Reads and scans nginx's configuration.
    pub fn load(&self) -> Result<(Config, Scan), Error> {
        self.env.load()
    }

    /// The plans for the named server blocks (all when `wanted` is empty).
    pub fn plans(&self, scan: &Scan, wanted: &[String]) -> Result<Vec<Plan>, Error> {
        self.env.plans(scan, wanted)
    }

    /// Orders what the policy says is due (or has no certificate for these names), installs
    /// what is current but not yet used by its blocks, and reports the rest (`enroll`, `watch`).
    pub async fn enroll(
        &self,
        cfg: Config,
        scan: Scan,
        plans: Vec<Plan>,
    ) -> Result<Vec<Outcome>, Error> {
        let outcomes = self.enroll_plans(cfg, scan, plans).await?;
        self.env.let_go_install();
        record::tell(&self.env, &outcomes).await;
        Ok(outcomes)
    }

    async fn enroll_plans(
        &self,
        cfg: Config,
        scan: Scan,
        plans: Vec<Plan>,
    ) -> Result<Vec<Outcome>, Error> {
        let routed = self.env.settings.http_route
            && self.env.mode.edits_nginx()
            && plans.iter().any(|p| p.needs_http_route);
        if plans.iter().any(|p| p.error.is_none()) || routed {
            prepare::check_nginx(&self.env, &cfg, &scan).await?;
        }
        let (cfg, scan, plans) = if routed {
            self.with_http_routes(cfg, scan, plans).await?
        } else {
            (cfg, scan, plans)
        };
        prepare::remove_leftover_records(&self.env).await;
        self.env.coordinator.sync(&self.env.store).await?;
        // The challenge snippet as the mode and account want it (a fleet made stateless):
        // the blocks it serves answer differently, so the plans are made again.
        let (mut cfg, mut scan, mut plans) = (cfg, scan, plans);
        if prepare::refresh_snippet(&self.env, &mut cfg, &mut scan).await? {
            plans = self.env.plans(&scan, &named(&plans))?;
        }
        let unfinished = self.env.coordinator.unfinished().await?;
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
            let lineage = self.env.store.lineage(&plan.lineage());
            let meta = self.env.meta(&plan.lineage())?;
            let cert = live_cert(&lineage).map(|c| c.info);
            let facts = Facts {
                meta: &meta,
                cert: cert.as_ref(),
                pending: self.env.pending_install(&plan, &meta).is_some(),
                unfinished: unfinished.iter().any(|(n, _)| *n == plan.lineage()),
            };
            let verdict = triage(&plan, facts, now);
            if let (Verdict::Order, true, Some(until)) = (
                &verdict,
                plan.named,
                meta.renewal.backoff_until().filter(|u| *u > now),
            ) {
                tracing::warn!(
                    "{}: tried because it was named, although it is backing off after {} failure(s) in a row (last: {}; next attempt otherwise {})",
                    plan.lineage(),
                    meta.renewal.failures,
                    meta.renewal.last_error.as_deref().unwrap_or("-"),
                    until
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default()
                );
            }
            match verdict {
                Verdict::Skip(why) => {
                    let mut o = self.env.outcome(&plan, Status::Skipped);
                    o.reason = Some(why);
                    outcomes.push(o);
                }
                Verdict::Backoff { until, reason } => {
                    let mut o = self.env.outcome(&plan, Status::Backoff);
                    o.next_renewal = Some(until);
                    o.reason = Some(reason);
                    outcomes.push(o);
                }
                Verdict::Install => install_only.push(plan),
                Verdict::Current => {
                    // Installed means: the blocks name the live files and nginx serves them
                    // (a run killed before its reload left the first without the second).
                    if !self.env.mode.edits_nginx()
                        || (verify::points_at_live(&self.env, &plan, &scan)
                            && verify::serves_live(&self.env, &plan, &scan).await)
                    {
                        if let Some(c) = &cert {
                            self.env
                                .coordinator
                                .report(&plan.lineage(), &c.serial_hex)
                                .await;
                        }
                        outcomes.push(self.env.outcome(&plan, Status::UpToDate));
                    } else {
                        install_only.push(plan);
                    }
                }
                Verdict::Order => to_order.push(plan),
            }
        }
        if !to_order.is_empty() || !install_only.is_empty() {
            outcomes.extend(self.execute(cfg, scan, to_order, install_only).await?);
        }
        Ok(outcomes)
    }

    /// Adds the port-80 blocks `--http-route` asks for, then reads the configuration and
    /// plans again (the names now have a challenge block); a refusal fails those plans with
    /// nginx's words.
    async fn with_http_routes(
        &self,
        cfg: Config,
        scan: Scan,
        mut plans: Vec<Plan>,
    ) -> Result<(Config, Scan, Vec<Plan>), Error> {
        match prepare::add_http_routes(&self.env, &cfg, &scan, &plans).await? {
            Ok(true) => {
                let (cfg, scan) = self.env.reread()?;
                let plans = self.env.plans(&scan, &named(&plans))?;
                Ok((cfg, scan, plans))
            }
            Ok(false) => Ok((cfg, scan, plans)),
            Err(why) => {
                for p in plans.iter_mut().filter(|p| p.needs_http_route) {
                    p.error = Some(why.to_string());
                }
                Ok((cfg, scan, plans))
            }
        }
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
        let hooks = &self.env.settings.hooks;
        let ordered: Vec<String> = to_order
            .iter()
            .flat_map(|p| p.names.iter().cloned())
            .collect();
        // What each lineage to order serves now: a certificate installed while the session
        // waits (on a hook, on the CA) is not ordered again.
        let seen = order::Seen::now(&self.env, &to_order);
        if !to_order.is_empty() {
            self.env.let_go_install();
            let mut failures = hooks.run(Stage::Pre, &[]).await;
            if !failures.is_empty() {
                hooks
                    .run(Stage::Post, &crate::hooks::post_env(&[], &ordered))
                    .await;
                return Err(Error::PreHook(failures.remove(0)));
            }
        }
        let (mut to_order, mut install_only) = (to_order, install_only);
        let waited = !to_order.is_empty();
        let result = match self.env.hold_install().await.and_then(|()| {
            if !waited {
                return Ok(());
            }
            self.follow_changes(
                &mut cfg,
                &mut scan,
                to_order.iter_mut().chain(install_only.iter_mut()),
                &mut [],
                "while the pre-hook ran",
            )
        }) {
            Ok(()) => {
                self.order_and_deploy(&mut cfg, &mut scan, to_order, install_only, &seen)
                    .await
            }
            Err(e) => Err(e),
        };
        self.env.let_go_install();
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
        let mut outcomes = result?;
        self.env
            .hold_install_to_keep("remembering this run's failures")
            .await?;
        record::remember(&self.env, &mut outcomes).await?;
        Ok(outcomes)
    }

    async fn order_and_deploy(
        &self,
        cfg: &mut Config,
        scan: &mut Scan,
        to_order: Vec<Plan>,
        install_only: Vec<Plan>,
        seen: &order::Seen,
    ) -> Result<Vec<Outcome>, Error> {
        let mut outcomes = Vec::new();
        // Nothing is ordered for a plan whose install edit nginx would refuse.
        let mut to_order =
            rehearse::rehearse(&self.env, cfg, scan, to_order, &mut outcomes).await?;
        let needs_snippet: Vec<usize> = (0..to_order.len())
            .filter(|i| {
                to_order[*i].uses_webroot()
                    && to_order[*i].challenge_block.is_some_and(|b| {
                        scan.servers[b].acme_challenge_dir.is_none()
                            && scan.servers[b].acme_challenge_stateless.is_none()
                    })
            })
            .collect();
        // The blocks that got the snippet in this run, with the plans answered through them.
        let mut added: Vec<(usize, Vec<String>)> = Vec::new();
        if !needs_snippet.is_empty() {
            let failed =
                prepare::add_snippet(&self.env, cfg, scan, &to_order, &needs_snippet).await?;
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
                let mut o = self.env.outcome(&plan, Status::Failed);
                o.error = Some(Failure::transient(message));
                outcomes.push(o);
            }
        }
        if self.env.mode == Mode::DryRun && self.env.settings.directory != acme::LETSENCRYPT_STAGING
        {
            // A dry run orders only from a staging directory: elsewhere an order is real.
            for plan in to_order {
                let mut o = self.env.outcome(&plan, Status::DryRun);
                o.reason = Some(format!(
                    "no order placed: {} has no staging directory acme-nginx knows, and an order there would be real",
                    self.env.settings.directory
                ));
                outcomes.push(o);
            }
            return Ok(outcomes);
        }
        let mut install_only = install_only;
        let mut fresh = Vec::new();
        if !to_order.is_empty() {
            fresh = order::obtain(&self.env, scan, to_order, seen, &mut outcomes).await?;
            // The install lock was let go while the CA worked: a fleet agent's install may
            // have edited nginx's files meanwhile, and edits planned against the old text
            // would be refused. What is left is planned against the files as they are now.
            self.follow_changes(
                cfg,
                scan,
                fresh
                    .iter_mut()
                    .map(|f| &mut f.plan)
                    .chain(install_only.iter_mut()),
                &mut added,
                "while the CA worked",
            )?;
        }
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
            prepare::remove_snippet(&self.env, cfg, scan, &undo).await?;
        }
        if self.env.mode == Mode::DryRun {
            for f in &fresh {
                let mut o = self.env.outcome(&f.plan, Status::DryRun);
                o.not_after = Some(f.chain.leaf.not_after);
                outcomes.push(o);
            }
            return Ok(outcomes);
        }
        outcomes.extend(install::deploy(&self.env, cfg, scan, fresh, install_only).await?);
        Ok(outcomes)
    }
}

impl Session {
    /// After the install lock was let go: when nginx's files changed meanwhile (a fleet
    /// agent's install), reads them again and points the plans (same lineage, same names) and
    /// the blocks that got the snippet (the same block of the same file) at what they are now,
    /// so the edits still to come are planned against the files as they are. When one of them
    /// is not there any more the old plans stand (an edit the files no longer allow is then
    /// refused and rolled back, its certificate kept to install).
    fn follow_changes<'p>(
        &self,
        cfg: &mut Config,
        scan: &mut Scan,
        plans: impl IntoIterator<Item = &'p mut Plan>,
        added: &mut [(usize, Vec<String>)],
        meanwhile: &str,
    ) -> Result<(), Error> {
        if !self.env.mode.edits_nginx() || !cfg.changed_on_disk() {
            return Ok(());
        }
        let mut plans: Vec<&mut Plan> = plans.into_iter().collect();
        let (new_cfg, new_scan) = self.env.reread()?;
        let again: Option<Vec<Plan>> = plans
            .iter()
            .map(|p| {
                self.env
                    .plan_for_lineage(&new_scan, &p.lineage())
                    .filter(|n| super::lineage::same_names(&n.names, &p.names))
            })
            .collect();
        let blocks: Option<Vec<usize>> = added
            .iter()
            .map(|(b, _)| same_block(scan, &new_scan, *b))
            .collect();
        let (Some(again), Some(blocks)) = (again, blocks) else {
            tracing::warn!(
                "nginx's files changed {meanwhile} and a block this run planned for is not there any more; the run goes on as planned"
            );
            return Ok(());
        };
        tracing::info!(
            "nginx's files changed {meanwhile}; what is left is planned against them as they are now"
        );
        for (p, n) in plans.iter_mut().zip(again) {
            **p = n;
        }
        for ((b, _), n) in added.iter_mut().zip(blocks) {
            *b = n;
        }
        (*cfg, *scan) = (new_cfg, new_scan);
        Ok(())
    }
}

/// Block `b` of `old` in `new`: the block at the same place among its file's blocks (an
/// install's edits change lines inside blocks, never how many there are).
fn same_block(old: &Scan, new: &Scan, b: usize) -> Option<usize> {
    let file = &old.servers.get(b)?.file;
    let nth = old.servers[..b].iter().filter(|s| s.file == *file).count();
    new.servers
        .iter()
        .enumerate()
        .filter(|(_, s)| s.file == *file)
        .nth(nth)
        .map(|(i, _)| i)
}

impl Session {
    /// Installs the certificates other nodes of the fleet published since, beside whatever
    /// pass runs here: it holds the install lock only (a pass lets it go while it waits on the
    /// CA or a hook, and plans its own install against nginx's files as they are when it takes
    /// it again), stores each newer record as [`super::fleet`]'s sync checks it, and installs
    /// it as a pass would (its blocks pointed at the lineage, `nginx -t`, a reload, the TLS
    /// check, deploy hooks).
    pub async fn install_published(settings: Settings) -> Result<Vec<Outcome>, Error> {
        let store = Store::open(&settings.state_dir)?;
        let coordinator = Coordinator::open(&settings, Mode::Live)?;
        let env = Env::new(settings, Mode::Live, store, coordinator);
        env.hold_install().await?;
        let stored = env.coordinator.sync_published(&env.store).await?;
        if stored.is_empty() {
            return Ok(Vec::new());
        }
        let (cfg, scan, _) = env.settings.nginx.load_lenient()?;
        let mut install_only = Vec::new();
        for name in stored {
            let meta = env.meta(&name)?;
            match env.plan_for_lineage(&scan, &name) {
                Some(plan) if env.pending_install(&plan, &meta).is_some() => {
                    install_only.push(plan)
                }
                _ => tracing::info!(
                    "fleet: {name} is stored; no server block that could be read here uses it with its names"
                ),
            }
        }
        let outcomes = install::deploy(&env, &cfg, &scan, Vec::new(), install_only).await?;
        env.let_go_install();
        record::tell(&env, &outcomes).await;
        Ok(outcomes)
    }
}

/// The names the operator named, to plan them again after a change (none: every block).
fn named(plans: &[Plan]) -> Vec<String> {
    if plans.iter().any(|p| p.named) {
        plans.iter().flat_map(|p| p.names.iter().cloned()).collect()
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nginx::discovery::{scan, BuildDefaults};

    fn scanned(src: &str) -> Scan {
        let cfg = Config::parse_str(
            std::path::Path::new("/etc/nginx/nginx.conf"),
            src.as_bytes(),
        )
        .unwrap();
        scan(&cfg, &BuildDefaults::default())
    }

    /// A block is found again at its place among its file's blocks after an install edited
    /// lines inside blocks; a block that is gone is not found.
    #[test]
    fn a_block_is_found_again_after_an_install_edited_its_file() {
        let old = scanned(
            "http {\n server { listen 80; server_name a.test; }\n server { listen 80; server_name b.test; }\n}\n",
        );
        let edited = scanned(
            "http {\n server { listen 80; server_name a.test;\n  listen 443 ssl; # acme-nginx\n  ssl_certificate /x; # acme-nginx\n }\n server { listen 80; server_name b.test; }\n}\n",
        );
        assert_eq!(same_block(&old, &edited, 1), Some(1));
        assert_eq!(edited.servers[1].server_names, old.servers[1].server_names);
        assert_eq!(same_block(&old, &edited, 0), Some(0));
        let fewer = scanned("http {\n server { listen 80; server_name a.test; }\n}\n");
        assert_eq!(same_block(&old, &fewer, 1), None);
        assert_eq!(same_block(&old, &fewer, 7), None);
    }
}
