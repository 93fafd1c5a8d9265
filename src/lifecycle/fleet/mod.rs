//! Fleet mode: several nginx nodes behind one name share their accounts and certificates
//! through etcd. What lives there (under the fleet's prefix):
//!
//! - `accounts/ID`: the account for a CA directory, its private key sealed;
//! - `lineages/NAME`: the current certificate of a lineage (chain in clear, key sealed), its
//!   names, key type and issue time; `renewal/NAME`: its failure memory;
//! - `locks/NAME`: the node ordering it now (a key on a lease the node keeps alive);
//! - `challenges/TOKEN`: http-01 answers every node's agent writes into its own challenge
//!   directory while an order is validated;
//! - `nodes/NODE`: each node's address (for the fleet-wide preflight) and last report, and
//!   `serving/NODE/NAME`: the serial it serves and since when.
//!
//! Private keys are sealed with the fleet key ([`crate::store::seal`]). A node orders a lineage
//! only under its lock; every node installs what the lineage record holds (the normal install:
//! edits, `nginx -t`, reload, TLS proof) and reports it. Here: the store's records and calls;
//! `sync` what a pass does with them, `order` orders that survive a node's death, `agent`
//! the `watch` side, `status` `status --fleet`.

mod agent;
mod order;
mod status;
mod sync;

pub use agent::{agent, AGENT_RETRY};
pub(super) use order::order_once;
pub use order::OrderRecord;
pub use status::{fleet_metrics, fleet_status, FleetLineage, FleetNode, FleetStatus, NodeServing};
pub use sync::Obtained;
pub(super) use sync::{publish_fresh, sync};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::policy::RenewalState;
use crate::acme::AccountState;
use crate::store::etcd::{Acquired, Etcd, EtcdConfig, EtcdError, Lock};
use crate::store::seal::{FleetKey, SealError};

/// The lease of an ordering lock: a node that dies mid-order lets go of it this long after its
/// last renewal (the lease is renewed every third of it while the node works).
pub const LOCK_TTL: Duration = Duration::from_secs(10);
/// A node that has not reported for this long is flagged by `status --fleet`.
pub const NODE_STALE_AFTER: Duration = Duration::from_secs(36 * 3600);
/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/acme-nginx/";

/// Fleet settings.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub etcd: EtcdConfig,
    /// Key prefix (ends with `/`).
    pub prefix: String,
    /// This node's name.
    pub node: String,
    pub key_file: PathBuf,
    /// `HOST:PORT` where the other nodes (and the orderer's preflight) reach this node's nginx
    /// over plain HTTP.
    pub address: String,
}

/// A failure of the shared store.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("the fleet record {key} is not what acme-nginx writes: {message}")]
    Record { key: String, message: String },
}

/// A lineage's current certificate, as the fleet shares it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LineageRecord {
    pub names: Vec<String>,
    pub directory: String,
    pub key_type: String,
    /// Unix time of issuance (the newest record wins).
    pub issued_at: i64,
    pub serial: String,
    /// The leaf and its chain (PEM).
    pub cert_pem: String,
    pub chain_pem: String,
    /// The private key, sealed for this record's key.
    pub key_sealed: String,
    /// The node that ordered it.
    pub node: String,
}

/// What a node reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub address: String,
    /// Unix time of its last report.
    pub seen: i64,
}

/// What a node serves for a lineage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Serving {
    pub serial: String,
    pub since: i64,
}

/// The shared store of a fleet.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub etcd: Arc<Etcd>,
    key: FleetKey,
    pub prefix: String,
    pub node: String,
    pub address: String,
}

pub(crate) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Fleet {
    /// Reads the fleet key and prepares the etcd client (no call yet).
    pub fn open(config: &FleetConfig) -> Result<Fleet, FleetError> {
        let mut prefix = config.prefix.clone();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Fleet {
            etcd: Arc::new(Etcd::new(&config.etcd)?),
            key: FleetKey::read(&config.key_file)?,
            prefix,
            node: config.node.clone(),
            address: config.address.clone(),
        })
    }

    /// A full key under the prefix.
    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    pub(crate) fn json<T: for<'de> Deserialize<'de>>(
        &self,
        key: &str,
        value: &[u8],
    ) -> Result<T, FleetError> {
        serde_json::from_slice(value).map_err(|e| FleetError::Record {
            key: key.to_owned(),
            message: e.to_string(),
        })
    }

    fn account_key(&self, directory: &str) -> String {
        let digest = Sha256::digest(directory.as_bytes());
        let id: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        self.key(&format!("accounts/{id}"))
    }

    /// The fleet's account for a CA directory, if one was published.
    pub async fn account(&self, directory: &str) -> Result<Option<AccountState>, FleetError> {
        let key = self.account_key(directory);
        let Some(kv) = self.etcd.get(&key).await? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&kv.value);
        let plain = self.key.open(&key, &text)?;
        self.json(&key, &plain).map(Some)
    }

    /// Publishes an account unless another node did first; returns the fleet's account (ours,
    /// or the one that won).
    pub async fn publish_account(&self, state: &AccountState) -> Result<AccountState, FleetError> {
        let key = self.account_key(&state.directory);
        let json = serde_json::to_vec(state).map_err(|e| FleetError::Record {
            key: key.clone(),
            message: e.to_string(),
        })?;
        let sealed = self.key.seal(&key, &json);
        match self
            .etcd
            .put_if_absent(&key, sealed.as_bytes(), None)
            .await?
        {
            None => Ok(state.clone()),
            Some(winner) => {
                let plain = self
                    .key
                    .open(&key, &String::from_utf8_lossy(&winner.value))?;
                self.json(&key, &plain)
            }
        }
    }

    /// Every lineage record, with its key opened (PEM).
    pub async fn lineages(&self) -> Result<Vec<(String, LineageRecord, String)>, FleetError> {
        let prefix = self.key("lineages/");
        let (kvs, _) = self.etcd.get_prefix(&prefix).await?;
        let mut out = Vec::new();
        for kv in kvs {
            let name = kv.key.trim_start_matches(&prefix).to_owned();
            let rec: LineageRecord = self.json(&kv.key, &kv.value)?;
            let key_pem =
                String::from_utf8_lossy(&self.key.open(&kv.key, &rec.key_sealed)?).into_owned();
            out.push((name, rec, key_pem));
        }
        Ok(out)
    }

    /// Publishes a lineage's current certificate (its key sealed).
    pub async fn publish_lineage(
        &self,
        name: &str,
        mut record: LineageRecord,
        key_pem: &str,
    ) -> Result<(), FleetError> {
        let key = self.key(&format!("lineages/{name}"));
        record.key_sealed = self.key.seal(&key, key_pem.as_bytes());
        let json = serde_json::to_vec(&record).map_err(|e| FleetError::Record {
            key: key.clone(),
            message: e.to_string(),
        })?;
        self.etcd.put(&key, &json, None).await?;
        Ok(())
    }

    /// The serial and orderer of a lineage's record, if there is one.
    pub async fn record_of(&self, name: &str) -> Result<Option<(String, String)>, FleetError> {
        let key = self.key(&format!("lineages/{name}"));
        match self.etcd.get(&key).await? {
            Some(kv) => {
                let rec: LineageRecord = self.json(&key, &kv.value)?;
                Ok(Some((rec.serial, rec.node)))
            }
            None => Ok(None),
        }
    }

    /// The shared failure memory of a lineage.
    pub async fn renewal(&self, name: &str) -> Result<Option<RenewalState>, FleetError> {
        let key = self.key(&format!("renewal/{name}"));
        match self.etcd.get(&key).await? {
            Some(kv) => self.json(&key, &kv.value).map(Some),
            None => Ok(None),
        }
    }

    /// Shares a lineage's failure memory.
    pub async fn publish_renewal(
        &self,
        name: &str,
        state: &RenewalState,
    ) -> Result<(), FleetError> {
        let key = self.key(&format!("renewal/{name}"));
        let json = serde_json::to_vec(state).map_err(|e| FleetError::Record {
            key: key.clone(),
            message: e.to_string(),
        })?;
        self.etcd.put(&key, &json, None).await?;
        Ok(())
    }

    /// Takes the ordering lock of a lineage, or says which node holds it.
    pub async fn lock(&self, name: &str) -> Result<Acquired, FleetError> {
        Ok(Lock::acquire(
            self.etcd.clone(),
            &self.key(&format!("locks/{name}")),
            &self.node,
            LOCK_TTL,
        )
        .await?)
    }

    /// Records this node (its address, now).
    pub async fn register(&self) -> Result<(), FleetError> {
        let info = NodeInfo {
            address: self.address.clone(),
            seen: now(),
        };
        let key = self.key(&format!("nodes/{}", self.node));
        let json = serde_json::to_vec(&info).map_err(|e| FleetError::Record {
            key: key.clone(),
            message: e.to_string(),
        })?;
        self.etcd.put(&key, &json, None).await?;
        Ok(())
    }

    /// Every node that registered, by name.
    pub async fn nodes(&self) -> Result<Vec<(String, NodeInfo)>, FleetError> {
        let prefix = self.key("nodes/");
        let (kvs, _) = self.etcd.get_prefix(&prefix).await?;
        kvs.into_iter()
            .map(|kv| {
                let name = kv.key.trim_start_matches(&prefix).to_owned();
                self.json(&kv.key, &kv.value).map(|i| (name, i))
            })
            .collect()
    }

    /// Records what this node serves for a lineage.
    pub async fn report_serving(&self, lineage: &str, serial: &str) -> Result<(), FleetError> {
        let key = self.key(&format!("serving/{}/{lineage}", self.node));
        let json = serde_json::to_vec(&Serving {
            serial: serial.to_owned(),
            since: now(),
        })
        .map_err(|e| FleetError::Record {
            key: key.clone(),
            message: e.to_string(),
        })?;
        self.etcd.put(&key, &json, None).await?;
        self.register().await
    }

    /// What every node reported serving: (node, lineage, serving).
    pub async fn serving(&self) -> Result<Vec<(String, String, Serving)>, FleetError> {
        let prefix = self.key("serving/");
        let (kvs, _) = self.etcd.get_prefix(&prefix).await?;
        let mut out = Vec::new();
        for kv in kvs {
            let rest = kv.key.trim_start_matches(&prefix);
            let Some((node, lineage)) = rest.split_once('/') else {
                continue;
            };
            out.push((
                node.to_owned(),
                lineage.to_owned(),
                self.json(&kv.key, &kv.value)?,
            ));
        }
        Ok(out)
    }
}
