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
                "node {node} of the fleet published a certificate for it meanwhile; it is installed at the next pass"
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
