//! The coordinator: what a session asks of whoever else may be ordering the same lineages.
//!
//! A solo host has no one else: its coordinator claims every lineage, orders directly, and has
//! nothing to sync, publish or report. A fleet node shares accounts, certificates, ordering
//! locks, orders in progress, failure memory and what it serves through etcd
//! ([`super::fleet`]). Sessions and their stages call these methods and never branch on fleet
//! mode themselves; a dry run coordinates as a solo host (it never takes a lock, publishes or
//! shares an account: a staging certificate is never the fleet's).

use super::account;
pub use super::fleet::Obtained;
use super::fleet::{self, Fleet};
use super::outcome::{chain_text, Failure};
use super::settings::{Mode, Settings};
use super::Error;
use crate::acme::{self, Account, CertificateChain, ChallengeSolver, KeyPair, OrderOptions};
use crate::challenge::fleet::FleetCheck;
use crate::challenge::preflight::PreflightSolver;
use crate::store::etcd::{Acquired, Lock};
use crate::store::Store;

/// Who else orders this host's lineages.
#[derive(Debug)]
pub enum Coordinator {
    /// Nobody: this host alone.
    Solo,
    /// The nodes of a fleet, through its shared store.
    Fleet(Fleet),
}

/// Whether this node may order a lineage now.
#[derive(Debug)]
pub enum Claim {
    /// Yes; in a fleet, under this lock (released with [`Coordinator::release`]).
    Mine(Option<Lock>),
    /// Another node published a certificate for it since this pass synced: install that.
    PublishedBy(String),
    /// Another node holds the ordering lock.
    OrderedBy(String),
}

impl Claim {
    /// Why this node does not order the lineage, for the outcome's reason; `None` when it does.
    pub fn reason(&self) -> Option<String> {
        match self {
            Claim::Mine(_) => None,
            Claim::PublishedBy(node) => Some(format!(
                "node {node} of the fleet published a certificate for it meanwhile; this node's agent installs it, or else the next pass"
            )),
            Claim::OrderedBy(node) => Some(format!(
                "node {node} of the fleet is ordering it; it is installed here once published"
            )),
        }
    }
}

impl Coordinator {
    /// The coordinator the settings describe. A dry run checks the fleet settings (the key
    /// file, the endpoints) but coordinates as a solo host.
    pub fn open(settings: &Settings, mode: Mode) -> Result<Coordinator, Error> {
        let Some(config) = &settings.fleet else {
            return Ok(Coordinator::Solo);
        };
        let fleet = Fleet::open(config)?;
        Ok(if mode.writes_state() {
            Coordinator::Fleet(fleet)
        } else {
            Coordinator::Solo
        })
    }

    /// Whether every node answers http-01 statelessly (`[fleet] challenge = "stateless"`).
    pub fn stateless(&self) -> bool {
        matches!(self, Coordinator::Fleet(f) if f.stateless)
    }

    /// The fleet's shared store, for `status --fleet` and the agent.
    pub fn fleet(&self) -> Option<&Fleet> {
        match self {
            Coordinator::Solo => None,
            Coordinator::Fleet(f) => Some(f),
        }
    }

    /// Brings what other nodes published (certificates as pending versions, failure memory)
    /// into the local store, and publishes what this node has that the fleet lacks. Without
    /// etcd this fails: the others may be ordering.
    pub async fn sync(&self, store: &Store) -> Result<(), Error> {
        match self {
            Coordinator::Solo => Ok(()),
            Coordinator::Fleet(f) => fleet::sync(f, store).await,
        }
    }

    /// Brings only what other nodes published (certificates, as pending versions) into the
    /// local store, for an install beside a running pass; returns the lineages stored.
    pub async fn sync_published(&self, store: &Store) -> Result<Vec<String>, Error> {
        match self {
            Coordinator::Solo => Ok(Vec::new()),
            Coordinator::Fleet(f) => fleet::sync_published(f, store).await,
        }
    }

    /// The account to order with: the store's (created when the terms were agreed to); in a
    /// fleet, the fleet's one account (this node's becomes it when none is published).
    pub async fn account(
        &self,
        settings: &Settings,
        store: &Store,
        save: bool,
        client: acme::Client,
    ) -> Result<Account, Error> {
        match self {
            Coordinator::Solo => account::load_or_create(settings, store, save, client).await,
            Coordinator::Fleet(f) => {
                let directory = client.directory_url().to_owned();
                let path = store.account_path(&directory);
                let shared = match f.account(&directory).await? {
                    Some(shared) => shared,
                    None => {
                        let ours =
                            account::load_or_create(settings, store, save, client.clone()).await?;
                        let state = ours.to_state();
                        // Another node may have published first: then its account is used.
                        let shared = f.publish_account(&state).await?;
                        if shared == state {
                            return Ok(ours);
                        }
                        shared
                    }
                };
                if save && account::read_state(&path).ok().as_ref() != Some(&shared) {
                    account::write_state(&path, &shared)?;
                }
                Account::from_state(client, &shared)
                    .map_err(|source| Error::AccountState { path, source })
            }
        }
    }

    /// Asks to order a lineage. A fleet node takes the lineage's ordering lock, then checks
    /// that nobody published a certificate for it since `local_serial` (what this node has).
    pub async fn claim(&self, lineage: &str, local_serial: Option<&str>) -> Result<Claim, Error> {
        let Coordinator::Fleet(fleet) = self else {
            return Ok(Claim::Mine(None));
        };
        match fleet.lock(lineage).await? {
            Acquired::HeldBy(holder) => Ok(Claim::OrderedBy(holder)),
            Acquired::Held(lock) => match fleet.record_of(lineage).await? {
                Some((serial, node)) if Some(serial.as_str()) != local_serial => {
                    if let Err(e) = lock.release(&fleet.etcd).await {
                        tracing::warn!("fleet: a lock is left to expire: {e}");
                    }
                    Ok(Claim::PublishedBy(node))
                }
                _ => Ok(Claim::Mine(Some(lock))),
            },
        }
    }

    /// Records, under a claim, that this node sets out to order `lineage`: should it die
    /// before publishing, another node completes it. A failure to record is an error: the
    /// order is not placed.
    pub async fn intend(&self, lineage: &str, names: &[String]) -> Result<(), Failure> {
        let Coordinator::Fleet(fleet) = self else {
            return Ok(());
        };
        fleet.record_intent(lineage, names).await.map_err(|e| {
            Failure::transient(format!("the fleet's shared store: {}", chain_text(&e)))
        })
    }

    /// Forgets the intent of an order that failed (the failure memory decides what next).
    pub async fn abandon(&self, lineage: &str) {
        let Coordinator::Fleet(fleet) = self else {
            return;
        };
        if let Err(e) = fleet.forget_intent(lineage).await {
            tracing::warn!("fleet: {}", chain_text(&e));
        }
    }

    /// The lineages another node set out to order and did not finish, with that node: they
    /// are ordered now (resuming the order it recorded) whatever the renewal policy says.
    pub async fn unfinished(&self) -> Result<Vec<(String, String)>, Error> {
        let Coordinator::Fleet(fleet) = self else {
            return Ok(Vec::new());
        };
        Ok(fleet
            .unfinished()
            .await?
            .into_iter()
            .map(|(lineage, rec)| (lineage, rec.node))
            .collect())
    }

    /// Lets go of the claims taken (a failure only lets the lock expire with its lease).
    pub async fn release(&self, claims: Vec<Claim>) {
        let Coordinator::Fleet(fleet) = self else {
            return;
        };
        for claim in claims {
            if let Claim::Mine(Some(lock)) = claim {
                if let Err(e) = lock.release(&fleet.etcd).await {
                    tracing::warn!("fleet: a lock is left to expire: {e}");
                }
            }
        }
    }

    /// The other nodes of the fleet (name, `HOST:PORT`) that must serve http-01 answers too
    /// (none on a solo host). Asked once per session; a failure is logged and leaves none.
    pub async fn other_nodes(&self) -> Vec<(String, String)> {
        let Coordinator::Fleet(fleet) = self else {
            return Vec::new();
        };
        match fleet.nodes().await {
            Ok(nodes) => nodes
                .into_iter()
                .filter(|(n, _)| *n != fleet.node)
                .map(|(n, i)| (n, i.address))
                .collect(),
            Err(e) => {
                tracing::warn!("fleet: the other nodes are not known: {}", chain_text(&e));
                Vec::new()
            }
        }
    }

    /// The http-01 solver of this host, made to publish each answer for the fleet's agents and
    /// to check that every one of `peers` serves it too (a solo host's solver as it is).
    pub fn answered_everywhere(
        &self,
        solver: PreflightSolver,
        peers: &[(String, String)],
    ) -> PreflightSolver {
        match self {
            Coordinator::Solo => solver,
            Coordinator::Fleet(fleet) => solver.with_fleet(FleetCheck::new(
                fleet.etcd.clone(),
                fleet.fleet_key().clone(),
                fleet.key("challenges/"),
                fleet.node.clone(),
                peers.to_vec(),
            )),
        }
    }

    /// Orders a certificate for `names` with `key`. A fleet node completes an order another
    /// node left for the lineage (with that node's key) or records its own before authorizing
    /// it, so the fleet never orders twice. Returns the chain and the key it certifies.
    pub async fn order<S: ChallengeSolver>(
        &self,
        account: &Account,
        lineage: &str,
        names: &[String],
        key: KeyPair,
        solver: &S,
        opts: &OrderOptions,
    ) -> Result<(CertificateChain, KeyPair), Failure> {
        match self {
            Coordinator::Fleet(fleet) => {
                fleet::order_once(fleet, account, lineage, names, key, solver, opts).await
            }
            Coordinator::Solo => {
                let csr = acme::create_csr(&key, names).map_err(|e| Failure::from_acme(&e))?;
                let chain = account
                    .sign(names, &csr.der, solver, opts)
                    .await
                    .map_err(|e| Failure::from_acme(&e))?;
                Ok((chain, key))
            }
        }
    }

    /// Publishes a certificate this node obtained, before it is installed here (and before the
    /// lock goes, so the fleet never orders it twice). A failure is logged: the next pass's
    /// sync publishes it.
    pub async fn publish(&self, store: &Store, obtained: Obtained<'_>, directory: &str) {
        let Coordinator::Fleet(fleet) = self else {
            return;
        };
        match fleet::publish_fresh(fleet, store, obtained, directory).await {
            Ok(()) => {
                if let Err(e) = fleet.forget_intent(obtained.lineage).await {
                    tracing::warn!("fleet: {}", chain_text(&e));
                }
                if let Err(e) = fleet.forget_order(obtained.lineage).await {
                    tracing::warn!("fleet: {}", chain_text(&e));
                }
            }
            Err(e) => tracing::warn!(
                "fleet: cannot publish {} now (published at the next pass): {}",
                obtained.lineage,
                chain_text(&e)
            ),
        }
    }

    /// Records that this node serves `serial` for a lineage (failures only logged: what nginx
    /// serves is not changed by them).
    pub async fn report(&self, lineage: &str, serial: &str) {
        let Coordinator::Fleet(fleet) = self else {
            return;
        };
        if let Err(e) = fleet.report_serving(lineage, serial).await {
            tracing::warn!("fleet: cannot report {lineage}: {}", chain_text(&e));
        }
    }

    /// Shares a lineage's failure memory (as the store holds it now) with the other nodes.
    pub async fn share_failure(&self, store: &Store, lineage: &str) {
        let Coordinator::Fleet(fleet) = self else {
            return;
        };
        let meta: super::lineage::LineageMeta = match store.lineage(lineage).load_meta() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("fleet: cannot share the failure of {lineage}: {e}");
                return;
            }
        };
        if let Err(e) = fleet.publish_renewal(lineage, &meta.renewal).await {
            tracing::warn!(
                "fleet: cannot share the failure of {lineage}: {}",
                chain_text(&e)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    //! The fleet side of the coordinator against an in-memory etcd: who may order, what is
    //! taken over after a node's death, what is installed instead of ordered, and what is
    //! ignored because it was not written with the fleet key. Milliseconds each; the fleet bed
    //! (three etcd members, three nginx nodes, pebble) tests the same with real parts.

    use super::*;
    use crate::lifecycle::fleet::{IntentRecord, LineageRecord};
    use crate::store::etcd::fake::FakeCluster;
    use crate::store::seal::FleetKey;
    use std::sync::Arc;

    const LINEAGE: &str = "www.fleet.test";

    fn node(cluster: &Arc<FakeCluster>, name: &str, key: u8) -> Coordinator {
        let key = FleetKey::from_bytes(&[key; 32]).unwrap_or_else(|| panic!("a 32-byte key"));
        Coordinator::Fleet(Fleet::fake(cluster.clone(), name, key))
    }

    fn fleet(c: &Coordinator) -> &Fleet {
        c.fleet().unwrap_or_else(|| panic!("a fleet node"))
    }

    fn names() -> Vec<String> {
        vec![LINEAGE.to_owned()]
    }

    fn holder(claim: &Claim) -> Option<&str> {
        match claim {
            Claim::OrderedBy(n) | Claim::PublishedBy(n) => Some(n),
            Claim::Mine(_) => None,
        }
    }

    fn record(serial: &str, node: &str) -> LineageRecord {
        LineageRecord {
            names: names(),
            directory: "https://ca.test/dir".into(),
            key_type: "p256".into(),
            issued_at: 1,
            serial: serial.into(),
            cert_pem: String::new(),
            chain_pem: String::new(),
            key_sealed: String::new(),
            node: node.into(),
        }
    }

    /// The orderer dies after recording its intent: while its lock lives nobody else orders;
    /// once its lease runs out the next node's pass sees the unfinished renewal (ordered then
    /// whatever its own policy says) and gets the lock.
    #[tokio::test]
    async fn a_renewal_whose_orderer_died_is_taken_over_when_its_lock_expires() {
        let cluster = Arc::new(FakeCluster::default());
        let (alpha, bravo) = (node(&cluster, "alpha", 7), node(&cluster, "bravo", 7));
        assert!(bravo.unfinished().await.unwrap().is_empty());
        let Claim::Mine(Some(lock)) = alpha.claim(LINEAGE, None).await.unwrap() else {
            panic!("alpha is the first to ask")
        };
        alpha.intend(LINEAGE, &names()).await.unwrap();
        let left = vec![(LINEAGE.to_owned(), "alpha".to_owned())];
        assert_eq!(bravo.unfinished().await.unwrap(), left);
        let claim = bravo.claim(LINEAGE, None).await.unwrap();
        assert!(matches!(claim, Claim::OrderedBy(_)), "{claim:?}");
        assert_eq!(holder(&claim), Some("alpha"));
        assert!(claim.reason().is_some_and(|r| r.contains("alpha")));
        // alpha dies: its lease is not renewed and runs out.
        let lease = lock.lease;
        lock.abandon();
        cluster.expire(lease);
        assert_eq!(bravo.unfinished().await.unwrap(), left);
        let claim = bravo.claim(LINEAGE, None).await.unwrap();
        assert!(matches!(claim, Claim::Mine(Some(_))), "{claim:?}");
        assert!(claim.reason().is_none());
        // bravo finishes it (publishes, then lets go): nothing is unfinished any more, and
        // alpha, back, installs what bravo published instead of ordering again.
        fleet(&bravo)
            .publish_lineage(LINEAGE, record("0b", "bravo"), "KEY")
            .await
            .unwrap();
        bravo.abandon(LINEAGE).await;
        bravo.release(vec![claim]).await;
        assert!(alpha.unfinished().await.unwrap().is_empty());
        let claim = alpha.claim(LINEAGE, Some("0a")).await.unwrap();
        assert!(
            matches!(claim, Claim::PublishedBy(ref n) if n == "bravo"),
            "{claim:?}"
        );
        // A node that already has the published certificate may order its next renewal.
        let claim = alpha.claim(LINEAGE, Some("0b")).await.unwrap();
        assert!(matches!(claim, Claim::Mine(Some(_))), "{claim:?}");
    }

    /// A released lock is free at once; a lock whose holder lives is never taken.
    #[tokio::test]
    async fn locks_go_to_one_node_at_a_time() {
        let cluster = Arc::new(FakeCluster::default());
        let nodes: Vec<Coordinator> = ["alpha", "bravo", "charlie"]
            .iter()
            .map(|n| node(&cluster, n, 7))
            .collect();
        let mut claims = Vec::new();
        for n in &nodes {
            claims.push(n.claim(LINEAGE, None).await.unwrap());
        }
        let mine = claims
            .iter()
            .filter(|c| matches!(c, Claim::Mine(_)))
            .count();
        assert_eq!(mine, 1, "{claims:?}");
        assert!(claims[1..].iter().all(|c| holder(c) == Some("alpha")));
        nodes[0].release(claims).await;
        let claim = nodes[2].claim(LINEAGE, None).await.unwrap();
        assert!(matches!(claim, Claim::Mine(Some(_))), "{claim:?}");
    }

    /// Intents past their deadline, or not written with the fleet key, are never taken over;
    /// a stale one is removed.
    #[tokio::test]
    async fn stale_and_forged_intents_are_not_taken_over() {
        let cluster = Arc::new(FakeCluster::default());
        let (bravo, forger) = (node(&cluster, "bravo", 7), node(&cluster, "mallory", 9));
        let stale = IntentRecord {
            names: names(),
            node: "alpha".into(),
            deadline: 1,
        };
        let key = fleet(&bravo).key(&format!("intents/{LINEAGE}"));
        fleet(&bravo).put_record(&key, 1, &stale).await.unwrap();
        assert!(bravo.unfinished().await.unwrap().is_empty());
        assert!(fleet(&bravo).etcd.get(&key).await.unwrap().is_none());
        // Someone with etcd access but another key: ignored, and left for the operator to see.
        forger.intend("other.fleet.test", &names()).await.unwrap();
        assert!(bravo.unfinished().await.unwrap().is_empty());
        assert!(fleet(&bravo).orderers_of(LINEAGE).await.unwrap().is_empty());
        let forged = fleet(&bravo).key("intents/other.fleet.test");
        assert!(fleet(&bravo).etcd.get(&forged).await.unwrap().is_some());
        // Nor does a forged certificate record make a node install instead of order.
        fleet(&forger)
            .publish_lineage(LINEAGE, record("66", "mallory"), "KEY")
            .await
            .unwrap();
        let claim = bravo.claim(LINEAGE, Some("0a")).await.unwrap();
        assert!(matches!(claim, Claim::Mine(Some(_))), "{claim:?}");
    }

    /// The order a dead orderer recorded is what the next one completes (same URL, same
    /// certificate key); a record not written with the fleet key is ignored.
    #[tokio::test]
    async fn a_recorded_order_is_resumed_with_its_key() {
        let cluster = Arc::new(FakeCluster::default());
        let (alpha, bravo, forger) = (
            node(&cluster, "alpha", 7),
            node(&cluster, "bravo", 7),
            node(&cluster, "mallory", 9),
        );
        let url = "https://ca.test/order/1";
        fleet(&alpha)
            .record_order(LINEAGE, url, &names(), "CERTIFICATE KEY PEM")
            .await
            .unwrap();
        let (rec, pem) = fleet(&bravo).pending_order(LINEAGE).await.unwrap().unwrap();
        assert_eq!((rec.url.as_str(), rec.node.as_str()), (url, "alpha"));
        assert_eq!((rec.names, pem.as_str()), (names(), "CERTIFICATE KEY PEM"));
        // Read with another key, the record counts as absent.
        assert!(fleet(&forger)
            .pending_order(LINEAGE)
            .await
            .unwrap()
            .is_none());
        fleet(&bravo).forget_order(LINEAGE).await.unwrap();
        assert!(fleet(&alpha)
            .pending_order(LINEAGE)
            .await
            .unwrap()
            .is_none());
        // An order record forged by someone with etcd access but not the key (an attacker's
        // URL) is never resumed: nothing is signed and sent there.
        fleet(&forger)
            .record_order(LINEAGE, "http://attacker.test/", &names(), "PEM")
            .await
            .unwrap();
        assert!(fleet(&bravo)
            .pending_order(LINEAGE)
            .await
            .unwrap()
            .is_none());
    }

    /// A solo host claims everything, has nothing unfinished and no one else to ask.
    #[tokio::test]
    async fn a_solo_host_orders_alone() {
        let solo = Coordinator::Solo;
        let claim = solo.claim(LINEAGE, None).await.unwrap();
        assert!(matches!(claim, Claim::Mine(None)), "{claim:?}");
        assert!(solo.unfinished().await.unwrap().is_empty());
        assert!(solo.other_nodes().await.is_empty());
        solo.intend(LINEAGE, &names()).await.unwrap();
    }
}
