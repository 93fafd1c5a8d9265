//! `remove`: a certificate taken out of nginx again. Every line acme-nginx inserted into the
//! blocks that use it goes (HTTPS listeners, certificate lines, redirect, challenge snippet and
//! rewrite), every line it replaced is put back as it was (byte for byte; a line edited by hand
//! since is left and reported), then one change transaction (`nginx -t`, reload), a check that
//! no block serves the certificate any more, an optional revocation, and the lineage deleted
//! (or kept). Lineages no block uses (orphans) are removed without touching nginx.

use super::lineage::{live_cert, matches, users, LineageMeta};
use super::outcome::{chain_text, Failure, Outcome, Status};
use super::{Error, Session};
use crate::acme;
use crate::nginx::edit::{self, Edit};
use crate::nginx::probe::{served_certificate_on, tls_listeners};
use crate::nginx::transaction::{self, Change};
use crate::store::{self, Lineage};

/// The CRL reason `remove --revoke` gives (RFC 5280: cessationOfOperation).
pub const REVOKE_REASON: u8 = 5;

/// What `remove` does besides taking the certificate out of nginx.
#[derive(Debug, Clone, Copy, Default)]
pub struct RemoveOptions {
    /// Revoke the certificate first.
    pub revoke: bool,
    /// Keep the lineage's files.
    pub keep_lineage: bool,
    /// Also remove every lineage no server block uses.
    pub orphans: bool,
}

impl Session {
    /// Removes the lineages named (by lineage or certificate name; a hybrid block's RSA
    /// lineage goes with its primary) and, with `orphans`, those no block uses.
    pub async fn remove(
        &self,
        wanted: &[String],
        opts: RemoveOptions,
    ) -> Result<Vec<Outcome>, Error> {
        let (cfg, scan) = self.load()?;
        let all = self.env.store.lineages();
        let mut targets: Vec<(Lineage, LineageMeta)> = Vec::new();
        for w in wanted {
            let mut found = false;
            for l in &all {
                let meta: LineageMeta = l.load_meta()?;
                let (primary, _) = super::plan::split_lineage(&l.name);
                let companion = primary.eq_ignore_ascii_case(w) && l.name != primary;
                if matches(l, &meta, std::slice::from_ref(w)) || companion {
                    found = true;
                    if !targets.iter().any(|(t, _)| t.name == l.name) {
                        targets.push((l.clone(), meta));
                    }
                }
            }
            if !found {
                return Err(Error::NoLineage(w.clone()));
            }
        }
        if opts.orphans {
            for l in &all {
                if users(&scan, l).is_empty() && !targets.iter().any(|(t, _)| t.name == l.name) {
                    let meta: LineageMeta = l.load_meta()?;
                    targets.push((l.clone(), meta));
                }
            }
        }
        let mut outcomes = Vec::new();
        if targets.is_empty() {
            return Ok(outcomes);
        }
        let leaves: Vec<Option<Vec<u8>>> = targets
            .iter()
            .map(|(l, _)| live_cert(l).map(|c| c.leaf_der))
            .collect();
        // The blocks serving one of them; a block that also serves a lineage not removed is
        // left alone (its listeners are shared), and that lineage's removal fails.
        let target_paths: Vec<String> = targets
            .iter()
            .map(|(l, _)| l.live_file(store::FULLCHAIN).display().to_string())
            .collect();
        let mut refused: Vec<(String, String)> = Vec::new();
        let mut blocks = Vec::new();
        for (i, s) in scan.servers.iter().enumerate() {
            let ours: Vec<&String> = s
                .ssl_certificates
                .iter()
                .filter(|c| target_paths.contains(c))
                .collect();
            if ours.is_empty() {
                continue;
            }
            let state = self.env.store.root.display().to_string();
            if let Some(other) = s
                .ssl_certificates
                .iter()
                .find(|c| c.starts_with(&state) && !target_paths.contains(c))
            {
                for c in ours {
                    refused.push((
                        c.clone(),
                        format!(
                            "{} also serves {other}, which is not being removed: remove both",
                            s.location()
                        ),
                    ));
                }
                continue;
            }
            blocks.push(i);
        }
        let mut change = Change::default();
        let mut by_hand = Vec::new();
        if self.env.mode.edits_nginx() {
            let mut restores: Vec<Edit> = Vec::new();
            for (l, meta) in &targets {
                let path = l.live_file(store::FULLCHAIN).display().to_string();
                if refused.iter().any(|(p, _)| *p == path) {
                    continue;
                }
                for r in meta.replaced.iter().rev() {
                    match edit::restore_edit(&cfg, &r.file, r.offset, &r.inserted, &r.original) {
                        Some(e) if !restores.contains(&e) => restores.push(e),
                        Some(_) => {}
                        None => by_hand.push(format!(
                            "{}: the lines acme-nginx wrote in place of {:?} were edited since and are left as they are",
                            r.file.display(),
                            r.original.trim()
                        )),
                    }
                }
            }
            for &b in &blocks {
                change
                    .edits
                    .extend(edit::remove_all_marked(&cfg, &scan.servers[b], &restores));
            }
            change.edits.extend(restores);
        }
        for w in &by_hand {
            tracing::warn!("{w}");
        }
        if !change.edits.is_empty() {
            let ctl = self.env.settings.nginx.ctl(&cfg, &scan)?;
            let backups = transaction::new_backup_dir(&self.env.store.backups_dir());
            if let Err(e) = transaction::commit(&ctl, &cfg, &change, &backups, true).await {
                // nginx is as it was; nothing is deleted.
                let message = chain_text(&e);
                for (l, meta) in &targets {
                    let mut o = Outcome::new(&l.name, &meta.names, Status::Failed);
                    o.error = Some(Failure::transient(format!(
                        "taking it out of nginx failed, nothing changed: {message}"
                    )));
                    outcomes.push(o);
                }
                return Ok(outcomes);
            }
        }
        // No block serves the removed certificates any more (checked where nginx listens on
        // loopback-reachable HTTPS addresses).
        let (_, new_scan) = self.env.reread()?;
        for ((l, meta), leaf) in targets.iter().zip(&leaves) {
            let path = l.live_file(store::FULLCHAIN).display().to_string();
            let mut o = Outcome::new(&l.name, &meta.names, Status::Removed);
            o.server_blocks = users(&scan, l);
            if let Some((_, why)) = refused.iter().find(|(p, _)| *p == path) {
                o.status = Status::Failed;
                o.error = Some(Failure::transient(why.clone()));
                outcomes.push(o);
                continue;
            }
            if let Some(still) = self.still_served(&new_scan, meta, leaf.as_deref()).await {
                o.status = Status::Failed;
                o.error = Some(Failure::transient(format!(
                    "nginx still serves it at {still} after the edits; the lineage is kept"
                )));
                outcomes.push(o);
                continue;
            }
            if !by_hand.is_empty() {
                o.reason = Some(by_hand.join("; "));
            }
            if opts.revoke {
                if let Some(der) = leaf {
                    if let Err(e) = self.revoke(der).await {
                        o.status = Status::Failed;
                        o.error = Some(Failure::from_acme(&e));
                        outcomes.push(o);
                        continue;
                    }
                }
            }
            if !opts.keep_lineage {
                self.env.store.remove_lineage(l)?;
                o.fullchain = None;
                o.key = None;
            } else {
                o.fullchain = Some(l.live_file(store::FULLCHAIN)).filter(|p| p.exists());
                o.key = Some(l.live_file(store::PRIVKEY)).filter(|p| p.exists());
            }
            outcomes.push(o);
        }
        Ok(outcomes)
    }

    /// An address where a block still serves `leaf` for one of the names, if any.
    async fn still_served(
        &self,
        scan: &crate::nginx::discovery::Scan,
        meta: &LineageMeta,
        leaf: Option<&[u8]>,
    ) -> Option<String> {
        let leaf = leaf?;
        let name = meta.names.first()?;
        let sni = match name.strip_prefix("*.") {
            Some(base) => format!("{}.{base}", super::plan::PROBE_LABEL),
            None => name.clone(),
        };
        for s in &scan.servers {
            for (at, start) in tls_listeners(s) {
                let addr = at.addr;
                // An old worker that is shutting down after a reload may still answer for a
                // moment: only a listener that keeps serving it counts.
                let deadline = tokio::time::Instant::now() + super::stages::verify::VERIFY_SETTLE;
                loop {
                    match served_certificate_on(at, start, &sni, false).await {
                        Ok(served) if served == leaf => {}
                        _ => break,
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Some(format!("{addr} ({})", s.location()));
                    }
                    tokio::time::sleep(super::stages::verify::VERIFY_RETRY).await;
                }
            }
        }
        None
    }

    /// Revokes a certificate with the account (reason cessationOfOperation); one the CA
    /// already revoked counts as done.
    async fn revoke(&self, leaf: &[u8]) -> Result<(), acme::Error> {
        let client = self
            .env
            .ca()
            .await
            .map_err(|e| acme::Error::Certificate(chain_text(&e)))?
            .clone();
        let account = self
            .env
            .coordinator
            .account(&self.env.settings, &self.env.store, true, client)
            .await
            .map_err(|e| acme::Error::Certificate(chain_text(&e)))?;
        match account.revoke(leaf, Some(REVOKE_REASON)).await {
            Err(acme::Error::Problem { problem, .. })
                if problem.kind.as_deref() == Some("urn:ietf:params:acme:error:alreadyRevoked") =>
            {
                Ok(())
            }
            other => other,
        }
    }
}
