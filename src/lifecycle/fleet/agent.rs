//! The agent: the fleet's part of `watch` on every node.

use std::path::PathBuf;
use std::time::Duration;

use super::{Fleet, FleetError};
use crate::lifecycle::outcome::chain_text;
use std::collections::HashMap;

use crate::challenge::fleet::ChallengeRecord;
use crate::store::etcd::Event;

/// The most answers an agent serves at once for one name (an order has one http-01
/// challenge per name; a few orders may overlap across nodes).
pub const MAX_ANSWERS_PER_NAME: usize = 8;
/// How long the agent waits before watching again after etcd went away.
pub const AGENT_RETRY: Duration = Duration::from_secs(2);

/// What the agent tells the rest of `watch`.
#[derive(Debug, Clone)]
pub struct AgentSignals {
    /// A node published a certificate: install it now, beside any pass.
    pub published: tokio::sync::mpsc::UnboundedSender<()>,
    /// A pass is wanted: after etcd was away (a publish may have been missed), or, in a
    /// stateless fleet, an account was published (the challenge snippet follows it).
    pub pass: tokio::sync::mpsc::UnboundedSender<()>,
}

/// The agent's part of `watch` in a fleet: registers this node, writes every published
/// http-01 answer into the challenge directory nginx serves the name from here (and removes it
/// when it is withdrawn), and signals when another node publishes a certificate. Runs until the
/// process ends; etcd going away only pauses it.
pub async fn agent(settings: crate::lifecycle::Settings, fleet: Fleet, signals: AgentSignals) {
    let mut written: HashMap<String, (String, PathBuf)> = HashMap::new();
    // Answers a killed agent left: journaled before they were written, removed now.
    let store = crate::store::Store::open(&settings.state_dir).unwrap_or_else(|e| {
        tracing::warn!("fleet agent: {}", chain_text(&e));
        crate::store::Store {
            root: settings.state_dir.clone(),
        }
    });
    match store.take_journal_in(&store.agent_journal()) {
        Ok(left) => {
            for path in left {
                match crate::challenge::webroot::remove_token_file(&path) {
                    Ok(false) => {}
                    Ok(true) => tracing::info!(
                        "fleet agent: removed the answer {} an earlier agent left",
                        path.display()
                    ),
                    Err(e) => tracing::warn!("fleet agent: {}", chain_text(&e)),
                }
            }
        }
        Err(e) => tracing::warn!("fleet agent: {}", chain_text(&e)),
    }
    loop {
        if let Err(e) = run_agent(&settings, &store, &fleet, &signals, &mut written).await {
            tracing::warn!(
                "fleet agent: {}; watching again in {} s",
                chain_text(&e),
                AGENT_RETRY.as_secs()
            );
        }
        tokio::time::sleep(AGENT_RETRY).await;
    }
}

async fn run_agent(
    settings: &crate::lifecycle::Settings,
    store: &crate::store::Store,
    fleet: &Fleet,
    signals: &AgentSignals,
    written: &mut HashMap<String, (String, PathBuf)>,
) -> Result<(), FleetError> {
    let challenges = fleet.key("challenges/");
    let lineages = fleet.key("lineages/");
    let accounts = fleet.key("accounts/");
    let (current, revision) = fleet.etcd.get_prefix(&challenges).await?;
    fleet.register().await?;
    for kv in current {
        answer(settings, store, fleet, &kv.key, &kv.value, written).await;
    }
    // A publish missed while away is installed by the pass this triggers.
    signals.pass.send(()).ok();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watch = {
        let etcd = fleet.etcd.clone();
        let prefix = fleet.prefix.clone();
        tokio::spawn(async move {
            etcd.watch(&prefix, revision + 1, |e| tx.send(e).is_ok())
                .await
        })
    };
    while let Some(event) = rx.recv().await {
        match event {
            Event::Put(kv) if kv.key.starts_with(&challenges) => {
                answer(settings, store, fleet, &kv.key, &kv.value, written).await;
            }
            Event::Delete(key) if key.starts_with(&challenges) => {
                if let Some((_, path)) = written.remove(key.trim_start_matches(&challenges)) {
                    if let Err(e) = crate::challenge::webroot::remove_token_file(&path) {
                        tracing::warn!("fleet agent: {}", chain_text(&e));
                    }
                }
            }
            Event::Put(kv) if kv.key.starts_with(&lineages) => {
                tracing::info!(
                    "fleet agent: {} was published",
                    kv.key.trim_start_matches(&lineages)
                );
                signals.published.send(()).ok();
            }
            // Stateless: the challenge snippet answers for the fleet's account, so a pass
            // brings it in line when an account is published.
            Event::Put(kv) if fleet.stateless && kv.key.starts_with(&accounts) => {
                tracing::info!("fleet agent: an account was published; the challenge snippet is brought in line");
                signals.pass.send(()).ok();
            }
            _ => {}
        }
    }
    match watch.await {
        Ok(r) => r.map_err(FleetError::from),
        Err(e) => Err(FleetError::Record {
            key: fleet.prefix.clone(),
            message: format!("the watch stopped: {e}"),
        }),
    }
}

/// Writes one published answer where this node's nginx serves the name's challenges: the
/// directory of the block nginx picks for the name on the validation port, else the directory
/// acme-nginx's snippet serves.
async fn answer(
    settings: &crate::lifecycle::Settings,
    store: &crate::store::Store,
    fleet: &Fleet,
    key: &str,
    value: &[u8],
    written: &mut HashMap<String, (String, PathBuf)>,
) {
    // Only what a holder of the fleet key published, under its own token, well formed.
    let rec: ChallengeRecord = match fleet.open_record(key, value) {
        Ok((_, r)) => r,
        Err(e) if e.is_untrusted() => {
            super::report_untrusted(key);
            return;
        }
        Err(e) => {
            tracing::warn!("fleet agent: {key} is not an answer: {e}");
            return;
        }
    };
    if !rec.is_well_formed() || !key.ends_with(&format!("/{}", rec.token)) {
        tracing::warn!(
            "fleet agent: {key} is not a well-formed http-01 answer for its token; not written"
        );
        return;
    }
    // For the fleet's own account, and a name the publishing node set out to order (its
    // intent, recorded under the lineage's lock before the order): nothing else is served,
    // whoever sealed it.
    match fleet.account_thumbprints().await {
        Ok(prints)
            if prints
                .iter()
                .any(|t| rec.key_authorization.ends_with(&format!(".{t}"))) => {}
        Ok(_) => {
            tracing::warn!(
                "fleet agent: {key} answers for an account that is not the fleet's; not written"
            );
            return;
        }
        Err(e) => {
            tracing::warn!(
                "fleet agent: {key} not written: the fleet's accounts cannot be read: {}",
                chain_text(&e)
            );
            return;
        }
    }
    match fleet.orderers_of(&rec.name).await {
        Ok(nodes) if nodes.contains(&rec.node) => {}
        Ok(nodes) if nodes.is_empty() => {
            tracing::warn!(
                "fleet agent: {key} answers for {}, which no node of the fleet is ordering; not written",
                rec.name
            );
            return;
        }
        Ok(nodes) => {
            tracing::warn!(
                "fleet agent: {key} was published by node {}, but {} is ordering {}; not written",
                rec.node,
                nodes.join(", "),
                rec.name
            );
            return;
        }
        Err(e) => {
            tracing::warn!(
                "fleet agent: {key} not written: the fleet's intents cannot be read: {}",
                chain_text(&e)
            );
            return;
        }
    }
    if written.values().filter(|(n, _)| *n == rec.name).count() >= MAX_ANSWERS_PER_NAME {
        tracing::warn!(
            "fleet agent: {} already has {MAX_ANSWERS_PER_NAME} answers published; {key} is not written",
            rec.name
        );
        return;
    }
    let scan = match settings.nginx.load_lenient() {
        Ok((_, scan, _)) => scan,
        Err(e) => {
            tracing::warn!("fleet agent: cannot read nginx's configuration: {e}");
            return;
        }
    };
    let dir = crate::nginx::discovery::server_for_host(&scan, &rec.name, settings.http_port)
        .and_then(|i| scan.servers[i].acme_challenge_dir.clone())
        .unwrap_or_else(|| settings.challenge_dir.clone());
    let mut solver = crate::challenge::WebrootSolver::per_name().with_dir_for(&rec.name, &dir);
    if let Some((uid, gid, _)) = scan.worker_identity() {
        solver = solver.with_owner(uid, gid);
    }
    let ch = crate::acme::PendingChallenge {
        identifier: crate::acme::Identifier::from_name(&rec.name),
        wildcard: false,
        kind: crate::acme::ChallengeType::Http01,
        token: rec.token.clone(),
        key_authorization: rec.key_authorization.clone(),
        url: String::new(),
    };
    // Journaled first: an agent killed now has its answer removed when it starts again.
    if let Err(e) = store.journal_token_in(&store.agent_journal(), &dir.join(&rec.token)) {
        tracing::warn!(
            "fleet agent: not answering {}: {}",
            rec.name,
            chain_text(&e)
        );
        return;
    }
    match solver.write_token(&ch) {
        Ok(path) => {
            tracing::info!(
                "fleet agent: answering {} from {}",
                rec.name,
                path.display()
            );
            written.insert(rec.token, (rec.name, path));
        }
        Err(e) => tracing::warn!("fleet agent: cannot write the answer for {}: {e}", rec.name),
    }
}
