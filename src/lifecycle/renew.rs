//! The renew pass: for every lineage (or the named ones) ask the CA's renewalInfo when it is
//! time to, let the renewal policy decide, and order what is due through the same path as
//! `enroll`. Nothing here talks to the CA unless renewalInfo is due or a certificate is.

use time::OffsetDateTime;

use super::lineage::{live_cert, matches, users, LineageMeta};
use super::outcome::{Failure, Outcome, Status};
use super::policy::{Decision, RenewalState};
use super::session::Session;
use super::stages::prepare;
use super::Error;
use crate::acme;
use crate::store::{self, Lineage};

impl Session {
    /// The lineages named by `wanted` (all when empty), with their metadata; a wanted name no
    /// lineage holds is an error.
    pub fn lineages(&self, wanted: &[String]) -> Result<Vec<(Lineage, LineageMeta)>, Error> {
        let mut all = Vec::new();
        for l in self.env.store.lineages() {
            let meta = l.load_meta()?;
            all.push((l, meta));
        }
        for w in wanted {
            if !all
                .iter()
                .any(|(l, m)| matches(l, m, std::slice::from_ref(w)))
            {
                return Err(Error::NoLineage(w.clone()));
            }
        }
        Ok(all
            .into_iter()
            .filter(|(l, m)| matches(l, m, wanted))
            .collect())
    }

    /// Renews what is due (everything with `force`) among the lineages named, or all of them.
    /// A lineage in failure backoff waits unless it is named.
    pub async fn renew(&self, wanted: &[String], force: bool) -> Result<Vec<Outcome>, Error> {
        let outcomes = self.renew_lineages(wanted, force).await?;
        self.env.let_go_install();
        super::stages::record::tell(&self.env, &outcomes).await;
        Ok(outcomes)
    }

    async fn renew_lineages(&self, wanted: &[String], force: bool) -> Result<Vec<Outcome>, Error> {
        // The fleet's certificates first: a renewal another node made is installed, not
        // ordered again. Without etcd nothing is ordered (the others may be ordering).
        self.env.coordinator.sync(&self.env.store).await?;
        let lineages = self.lineages(wanted)?;
        prepare::remove_leftover_records(&self.env).await;
        // A part of the configuration that does not parse must not stop the renewal of the
        // blocks that do: it is left out, and lineages only it could place are reported.
        let (mut cfg, mut scan, unreadable) = self.env.settings.nginx.load_lenient()?;
        for e in &unreadable {
            tracing::warn!("left out of this renewal: {e}");
        }
        if unreadable.is_empty() {
            prepare::refresh_snippet(&self.env, &mut cfg, &mut scan).await?;
        }
        // The CA is only needed for renewalInfo and orders: when it cannot be reached, the
        // lifetime rule decides, and only a due certificate makes the run fail.
        let client = match self.env.ca().await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(
                    "{}; using the lifetime rule instead of renewalInfo",
                    super::outcome::chain_text(&e)
                );
                None
            }
        };
        // What another node set out to renew and did not finish (it died): renewed now, due
        // or not, so the fleet finishes what any node started.
        let unfinished = self.env.coordinator.unfinished().await?;
        let now = OffsetDateTime::now_utc();
        let named = !wanted.is_empty();
        let mut outcomes = Vec::new();
        let mut due = Vec::new();
        let mut install_only = Vec::new();
        for (l, mut meta) in lineages {
            // Issued before but never installed: install it, no order, whatever the schedule.
            if meta.pending_version.is_some() {
                let plan = self.env.plan_for_lineage(&scan, &l.name);
                if let Some(plan) = plan.filter(|p| self.env.pending_install(p, &meta).is_some()) {
                    tracing::info!("installing {}, issued earlier but not installed", l.name);
                    install_only.push(plan);
                    continue;
                }
            }
            let live = live_cert(&l);
            if let (Some(client), Some(live)) = (&client, &live) {
                let wants_ari = force || meta.renewal.ari_check_due(now);
                if client.directory().renewal_info.is_some() && wants_ari {
                    match acme::renewal_info(client, &live.leaf_der).await {
                        Ok(Some(ri)) => {
                            meta.renewal.record_ari(
                                (ri.window_start, ri.window_end),
                                ri.retry_after,
                                now,
                            );
                            self.env.save_meta(&l.name, &meta)?;
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(
                            "{}: renewalInfo failed, using the lifetime rule: {e}",
                            l.name
                        ),
                    }
                }
            }
            let cert = live.as_ref().map(|c| &c.info);
            let mut decision = meta.renewal.decide(cert, now);
            if named && matches!(decision, Decision::Backoff { .. }) {
                // Named by the operator: the schedule decides, not the backoff.
                let fresh = RenewalState {
                    failures: 0,
                    ..meta.renewal.clone()
                };
                decision = fresh.decide(cert, now);
            }
            let mut base = Outcome::new(&l.name, &meta.names, Status::NotDue);
            base.fullchain = Some(l.live_file(store::FULLCHAIN));
            base.key = Some(l.live_file(store::PRIVKEY));
            base.server_blocks = users(&scan, &l);
            base.not_after = cert.map(|c| c.not_after);
            let left_by = unfinished
                .iter()
                .find(|(n, _)| *n == l.name)
                .map(|(_, node)| node);
            match decision {
                Decision::Backoff { until, failures } => outcomes.push(Outcome {
                    status: Status::Backoff,
                    next_renewal: Some(until),
                    reason: Some(format!("{failures} failures in a row")),
                    ..base
                }),
                _ if force => due.push((l, "forced".to_owned())),
                _ if left_by.is_some() => {
                    let node = left_by.map_or("", String::as_str);
                    due.push((
                        l,
                        format!("node {node} of the fleet set out to renew it and did not finish"),
                    ));
                }
                Decision::Due(reason) => due.push((l, reason.to_string())),
                Decision::NotDue { at, reason } => outcomes.push(Outcome {
                    next_renewal: Some(at),
                    reason: Some(reason.to_string()),
                    ..base
                }),
            }
        }
        // The names come from the server blocks now: a block whose names changed gets them.
        let mut to_order = Vec::new();
        for (l, reason) in due {
            match self.env.plan_for_lineage(&scan, &l.name) {
                Some(p) => {
                    tracing::info!("renewing {} ({reason})", l.name);
                    to_order.push(p);
                }
                _ if !unreadable.is_empty() => {
                    let meta: LineageMeta = l.load_meta()?;
                    let mut o = Outcome::new(&l.name, &meta.names, Status::Failed);
                    let files: Vec<String> = unreadable.iter().map(|e| e.to_string()).collect();
                    o.error = Some(Failure::transient(format!(
                        "due ({reason}) but no server block that could be read uses it; these parts of the configuration do not parse: {}",
                        files.join("; ")
                    )));
                    outcomes.push(o);
                }
                _ => {
                    let meta: LineageMeta = l.load_meta()?;
                    let mut o = Outcome::new(&l.name, &meta.names, Status::Skipped);
                    o.reason = Some("no server block uses this name any more".into());
                    outcomes.push(o);
                }
            }
        }
        if !to_order.is_empty() || !install_only.is_empty() {
            outcomes.extend(self.execute(cfg, scan, to_order, install_only).await?);
        }
        outcomes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(outcomes)
    }
}
