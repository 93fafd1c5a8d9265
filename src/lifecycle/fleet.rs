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
//! edits, `nginx -t`, reload, TLS proof) and reports it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::policy::RenewalState;
use crate::acme::AccountState;
use crate::store::etcd::{Etcd, EtcdConfig, EtcdError, Lock};
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

fn now() -> i64 {
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

    fn json<T: for<'de> Deserialize<'de>>(&self, key: &str, value: &[u8]) -> Result<T, FleetError> {
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
    pub async fn lock(&self, name: &str) -> Result<Result<Lock, String>, FleetError> {
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

// --- the lifecycle's use of the shared store ---------------------------------------------------

use super::lineage::{live_cert, LineageMeta};
use super::outcome::chain_text;
use super::run::Run;
use super::Error;
use crate::store::{self as local, Issued};

impl Run {
    /// The fleet's shared store, in fleet mode.
    pub fn fleet(&self) -> Option<&Fleet> {
        self.fleet.as_ref()
    }

    /// Brings the fleet's certificates to this node: every lineage record newer than what this
    /// node has becomes a local version waiting to be installed (checked first: the key must be
    /// the certificate's), the fleet's failure memory replaces an older local one, and a local
    /// certificate newer than its record (a publish that failed) is published again.
    pub(super) async fn fleet_sync(&self) -> Result<(), Error> {
        let Some(fleet) = &self.fleet else {
            return Ok(());
        };
        if !self.mode.writes_state() {
            return Ok(());
        }
        fleet.register().await?;
        let records = fleet.lineages().await?;
        for (name, rec, key_pem) in &records {
            let l = self.store.lineage(name);
            let mut meta: LineageMeta = l.load_meta()?;
            let local_serial = live_cert(&l).map(|c| c.info.serial_hex);
            // The fleet's record wins unless this node's certificate is strictly newer (two
            // renewals can fall in the same second).
            let newer = meta.issued_at.is_none_or(|t| rec.issued_at >= t);
            if local_serial.as_deref() != Some(rec.serial.as_str()) && newer {
                if let Err(why) = check_record(rec, key_pem) {
                    tracing::warn!("fleet: the record of {name} is not installed: {why}");
                    continue;
                }
                let version = l.install(&Issued {
                    key_pem,
                    cert_pem: &rec.cert_pem,
                    chain_pem: &rec.chain_pem,
                })?;
                meta.names = rec.names.clone();
                meta.directory = rec.directory.clone();
                meta.key_type = rec.key_type.clone();
                meta.issued_at = Some(rec.issued_at);
                meta.pending_version = Some(version);
                meta.renewal.record_success();
                self.save_meta(name, &meta)?;
                tracing::info!(
                    "fleet: {name} (serial {}, ordered by {}) stored as version {version}, to install",
                    rec.serial,
                    rec.node
                );
            }
            if let Some(shared) = fleet.renewal(name).await? {
                if shared.last_error_at > meta.renewal.last_error_at {
                    let mut meta: LineageMeta = l.load_meta()?;
                    meta.renewal.failures = shared.failures;
                    meta.renewal.last_error = shared.last_error;
                    meta.renewal.last_error_at = shared.last_error_at;
                    meta.renewal.last_error_kind = shared.last_error_kind;
                    meta.renewal.retry_not_before = shared.retry_not_before;
                    self.save_meta(name, &meta)?;
                }
            }
        }
        for l in self.store.lineages() {
            let meta: LineageMeta = l.load_meta()?;
            let published = records
                .iter()
                .find(|(n, _, _)| *n == l.name)
                .map(|(_, r, _)| (r.issued_at, r.serial.clone()));
            let serial = live_cert(&l).map(|c| c.info.serial_hex);
            let ours_newer = match (&published, meta.issued_at, &serial) {
                (_, None, _) | (_, _, None) => false,
                (None, Some(_), Some(_)) => true,
                (Some((at, s)), Some(t), Some(ours)) => ours != s && t > *at,
            };
            if ours_newer {
                if let Err(e) = self.fleet_publish(&l.name).await {
                    tracing::warn!("fleet: cannot publish {}: {}", l.name, chain_text(&e));
                }
            }
        }
        Ok(())
    }

    /// Publishes a lineage's live certificate and key as the fleet's.
    pub(super) async fn fleet_publish(&self, name: &str) -> Result<(), Error> {
        let Some(fleet) = &self.fleet else {
            return Ok(());
        };
        let l = self.store.lineage(name);
        let meta: LineageMeta = l.load_meta()?;
        let read = |f: &str| {
            std::fs::read_to_string(l.live_file(f))
                .map_err(Error::io(format!("read {}", l.live_file(f).display())))
        };
        let (key_pem, cert_pem, chain_pem) = (
            read(local::PRIVKEY)?,
            read(local::CERT)?,
            read(local::CHAIN)?,
        );
        let serial = live_cert(&l).map(|c| c.info.serial_hex).unwrap_or_default();
        let record = LineageRecord {
            names: meta.names.clone(),
            directory: meta.directory.clone(),
            key_type: meta.key_type.clone(),
            issued_at: meta.issued_at.unwrap_or_default(),
            serial,
            cert_pem,
            chain_pem,
            key_sealed: String::new(),
            node: fleet.node.clone(),
        };
        fleet.publish_lineage(name, record, &key_pem).await?;
        tracing::info!("fleet: published {name}");
        Ok(())
    }

    /// Records in the fleet that this node serves `serial` for a lineage (failures only
    /// logged: what nginx serves is not changed by them).
    pub(super) async fn fleet_report(&self, name: &str, serial: &str) {
        if let Some(fleet) = &self.fleet {
            if let Err(e) = fleet.report_serving(name, serial).await {
                tracing::warn!("fleet: cannot report {name}: {}", chain_text(&e));
            }
        }
    }

    /// Shares a lineage's failure memory with the fleet.
    pub(super) async fn fleet_share_failure(&self, name: &str) {
        let (Some(fleet), Ok(meta)) = (&self.fleet, self.meta(name)) else {
            return;
        };
        if let Err(e) = fleet.publish_renewal(name, &meta.renewal).await {
            tracing::warn!(
                "fleet: cannot share the failure of {name}: {}",
                chain_text(&e)
            );
        }
    }
}

/// Checks a record from another node before it goes live: the key is the certificate's, the
/// chain parses, the names are the certificate's.
fn check_record(rec: &LineageRecord, key_pem: &str) -> Result<(), String> {
    let key = crate::acme::KeyPair::from_pem(key_pem).map_err(|e| e.to_string())?;
    let ders = crate::acme::cert::pem_chain_strict(
        format!("{}{}", rec.cert_pem, rec.chain_pem).as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let leaf = ders.first().ok_or("no certificate")?;
    if !crate::acme::cert::key_matches(leaf, &key).map_err(|e| e.to_string())? {
        return Err("its key is not the certificate's".into());
    }
    let info = crate::acme::CertInfo::from_der(leaf).map_err(|e| e.to_string())?;
    if !super::lineage::same_names(&info.names, &rec.names) {
        return Err(format!(
            "the certificate names {} but the record {}",
            info.names.join(", "),
            rec.names.join(", ")
        ));
    }
    if info.serial_hex != rec.serial {
        return Err("the record's serial is not the certificate's".into());
    }
    Ok(())
}

/// Publishes a certificate this node just obtained (before it is installed here).
pub(super) async fn publish_fresh(
    fleet: &Fleet,
    f: &super::run::Fresh,
    directory: &str,
) -> Result<(), FleetError> {
    let ders = crate::acme::cert::pem_certificates(f.chain.pem.as_bytes()).unwrap_or_default();
    let info = ders
        .first()
        .and_then(|d| crate::acme::CertInfo::from_der(d).ok());
    let record = LineageRecord {
        names: f.plan.names.clone(),
        directory: directory.to_owned(),
        key_type: f.key_type.to_string(),
        issued_at: now(),
        serial: info.map(|i| i.serial_hex).unwrap_or_default(),
        cert_pem: f.chain.leaf_pem(),
        chain_pem: ders
            .iter()
            .skip(1)
            .map(|d| crate::acme::cert::to_pem("CERTIFICATE", d))
            .collect(),
        key_sealed: String::new(),
        node: fleet.node.clone(),
    };
    fleet
        .publish_lineage(&f.plan.lineage(), record, &f.key_pem)
        .await
}

// --- the agent: `watch` on every node of a fleet -------------------------------------------------

use std::collections::HashMap;

use crate::challenge::fleet::ChallengeRecord;
use crate::store::etcd::Event;

/// How long the agent waits before watching again after etcd went away.
pub const AGENT_RETRY: Duration = Duration::from_secs(2);

/// The agent's part of `watch` in a fleet: registers this node, writes every published
/// http-01 answer into the challenge directory nginx serves the name from here (and removes it
/// when it is withdrawn), and signals `lineages_changed` when another node publishes a
/// certificate (the watch loop then installs it). Runs until the process ends; etcd going away
/// only pauses it.
pub async fn agent(
    settings: super::Settings,
    fleet: Fleet,
    lineages_changed: tokio::sync::mpsc::UnboundedSender<()>,
) {
    let mut written: HashMap<String, PathBuf> = HashMap::new();
    loop {
        if let Err(e) = run_agent(&settings, &fleet, &lineages_changed, &mut written).await {
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
    settings: &super::Settings,
    fleet: &Fleet,
    lineages_changed: &tokio::sync::mpsc::UnboundedSender<()>,
    written: &mut HashMap<String, PathBuf>,
) -> Result<(), FleetError> {
    let challenges = fleet.key("challenges/");
    let lineages = fleet.key("lineages/");
    let (current, revision) = fleet.etcd.get_prefix(&challenges).await?;
    fleet.register().await?;
    for kv in current {
        answer(settings, &kv.key, &kv.value, written);
    }
    // A publish missed while away is installed by the pass this triggers.
    lineages_changed.send(()).ok();
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
                answer(settings, &kv.key, &kv.value, written);
            }
            Event::Delete(key) if key.starts_with(&challenges) => {
                if let Some(path) = written.remove(key.trim_start_matches(&challenges)) {
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
                lineages_changed.send(()).ok();
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
fn answer(
    settings: &super::Settings,
    key: &str,
    value: &[u8],
    written: &mut HashMap<String, PathBuf>,
) {
    let rec: ChallengeRecord = match serde_json::from_slice(value) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("fleet agent: {key} is not an answer: {e}");
            return;
        }
    };
    if !crate::acme::jws::is_valid_token(&rec.token) {
        tracing::warn!("fleet agent: {key} holds a token that is not base64url; not written");
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
    if let Some((uid, gid, _)) = super::run::worker_identity(&scan) {
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
    match solver.write_token(&ch) {
        Ok(path) => {
            tracing::info!(
                "fleet agent: answering {} from {}",
                rec.name,
                path.display()
            );
            written.insert(rec.token, path);
        }
        Err(e) => tracing::warn!("fleet agent: cannot write the answer for {}: {e}", rec.name),
    }
}

// --- `status --fleet` ----------------------------------------------------------------------------

/// One node's view of a lineage.
#[derive(Debug, Clone, Serialize)]
pub struct NodeServing {
    pub node: String,
    /// The serial it reported serving, and since when (unix time).
    pub serial: Option<String>,
    pub since: Option<i64>,
    /// It does not serve the fleet's current certificate.
    pub lagging: bool,
}

/// A lineage across the fleet.
#[derive(Debug, Clone, Serialize)]
pub struct FleetLineage {
    pub name: String,
    pub names: Vec<String>,
    pub serial: String,
    pub issued_at: i64,
    pub ordered_by: String,
    pub nodes: Vec<NodeServing>,
}

/// A node of the fleet.
#[derive(Debug, Clone, Serialize)]
pub struct FleetNode {
    pub name: String,
    pub address: String,
    pub seen: i64,
    /// It has not reported for [`NODE_STALE_AFTER`].
    pub stale: bool,
}

/// What the fleet's shared store says: every lineage and what each node serves of it.
#[derive(Debug, Clone, Serialize)]
pub struct FleetStatus {
    pub lineages: Vec<FleetLineage>,
    pub nodes: Vec<FleetNode>,
}

/// Reads the fleet's state (no lock, nothing written).
pub async fn fleet_status(config: &FleetConfig) -> Result<FleetStatus, FleetError> {
    let fleet = Fleet::open(config)?;
    let nodes = fleet.nodes().await?;
    let serving = fleet.serving().await?;
    let now = now();
    let stale_after = i64::try_from(NODE_STALE_AFTER.as_secs()).unwrap_or(i64::MAX);
    let lineages = fleet
        .lineages()
        .await?
        .into_iter()
        .map(|(name, rec, _)| FleetLineage {
            nodes: nodes
                .iter()
                .map(|(node, _)| {
                    let s = serving
                        .iter()
                        .find(|(n, l, _)| n == node && *l == name)
                        .map(|(_, _, s)| s);
                    NodeServing {
                        node: node.clone(),
                        serial: s.map(|s| s.serial.clone()),
                        since: s.map(|s| s.since),
                        lagging: s.is_none_or(|s| s.serial != rec.serial),
                    }
                })
                .collect(),
            name,
            names: rec.names,
            serial: rec.serial,
            issued_at: rec.issued_at,
            ordered_by: rec.node,
        })
        .collect();
    Ok(FleetStatus {
        lineages,
        nodes: nodes
            .into_iter()
            .map(|(name, i)| FleetNode {
                stale: now - i.seen > stale_after,
                name,
                address: i.address,
                seen: i.seen,
            })
            .collect(),
    })
}

/// Prometheus lines for the fleet: per lineage and node, whether it lags; per node, when it
/// last reported.
pub fn fleet_metrics(status: &FleetStatus) -> String {
    let label = |s: &str| s.replace(['\\', '"', '\n'], "_");
    let mut out = String::from(
        "# HELP acme_nginx_fleet_lagging 1 when the node does not serve the fleet's current certificate.\n\
         # TYPE acme_nginx_fleet_lagging gauge\n",
    );
    for l in &status.lineages {
        for n in &l.nodes {
            out.push_str(&format!(
                "acme_nginx_fleet_lagging{{name=\"{}\",node=\"{}\"}} {}\n",
                label(&l.name),
                label(&n.node),
                u8::from(n.lagging)
            ));
        }
    }
    out.push_str(
        "# HELP acme_nginx_fleet_node_seen_timestamp_seconds When the node last reported.\n\
         # TYPE acme_nginx_fleet_node_seen_timestamp_seconds gauge\n",
    );
    for n in &status.nodes {
        out.push_str(&format!(
            "acme_nginx_fleet_node_seen_timestamp_seconds{{node=\"{}\"}} {}\n",
            label(&n.name),
            n.seen
        ));
    }
    out
}

// --- orders across a node's death ----------------------------------------------------------------

/// An order in progress (`orders/NAME`): its URL and the certificate key, sealed, so that a node
/// taking over after the orderer died completes it (the CA may already have issued) instead of
/// ordering a second certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OrderRecord {
    pub url: String,
    pub names: Vec<String>,
    pub key_sealed: String,
    pub node: String,
    pub created: i64,
}

impl Fleet {
    /// The order a node left for a lineage, with its key (PEM), if any.
    pub async fn pending_order(
        &self,
        lineage: &str,
    ) -> Result<Option<(OrderRecord, String)>, FleetError> {
        let key = self.key(&format!("orders/{lineage}"));
        let Some(kv) = self.etcd.get(&key).await? else {
            return Ok(None);
        };
        let rec: OrderRecord = self.json(&key, &kv.value)?;
        let pem = String::from_utf8_lossy(&self.key.open(&key, &rec.key_sealed)?).into_owned();
        Ok(Some((rec, pem)))
    }

    /// Records an order before it is authorized and finalized.
    pub async fn record_order(
        &self,
        lineage: &str,
        url: &str,
        names: &[String],
        key_pem: &str,
    ) -> Result<(), FleetError> {
        let key = self.key(&format!("orders/{lineage}"));
        let rec = OrderRecord {
            url: url.to_owned(),
            names: names.to_vec(),
            key_sealed: self.key.seal(&key, key_pem.as_bytes()),
            node: self.node.clone(),
            created: now(),
        };
        let json = serde_json::to_vec(&rec).map_err(|e| FleetError::Record {
            key: key.clone(),
            message: e.to_string(),
        })?;
        self.etcd.put(&key, &json, None).await?;
        Ok(())
    }

    /// Forgets a lineage's order (it was completed and published, or it failed).
    pub async fn forget_order(&self, lineage: &str) -> Result<(), FleetError> {
        Ok(self
            .etcd
            .delete(&self.key(&format!("orders/{lineage}")))
            .await?)
    }
}

/// Orders a lineage's certificate as the fleet's one orderer: an order another node left (it
/// died) is completed with that node's key; otherwise a new order is placed and recorded
/// before it is authorized. Returns the chain and the key it certifies.
pub(super) async fn order_once<S: crate::acme::ChallengeSolver>(
    fleet: &Fleet,
    account: &crate::acme::Account,
    lineage: &str,
    names: &[String],
    key: crate::acme::KeyPair,
    solver: &S,
    opts: &crate::acme::OrderOptions,
) -> Result<(crate::acme::CertificateChain, crate::acme::KeyPair), super::Failure> {
    use super::Failure;
    use crate::acme::{create_csr, KeyPair};
    let fleet_err =
        |e: FleetError| Failure::transient(format!("the fleet's shared store: {}", chain_text(&e)));
    if let Some((rec, pem)) = fleet.pending_order(lineage).await.map_err(fleet_err)? {
        let resumable = super::lineage::same_names(&rec.names, names);
        if let (true, Ok(k)) = (resumable, KeyPair::from_pem(&pem)) {
            match account.order(&rec.url).await {
                Ok(mut order) => {
                    tracing::info!(
                        "fleet: completing the order {} that node {} left for {lineage}",
                        rec.url,
                        rec.node
                    );
                    let csr = create_csr(&k, names).map_err(|e| Failure::from_acme(&e))?;
                    match order.complete(names, &csr.der, solver, opts).await {
                        Ok(chain) => return Ok((chain, k)),
                        Err(e) => tracing::warn!(
                            "fleet: the order node {} left cannot be completed ({e}); ordering anew",
                            rec.node
                        ),
                    }
                }
                Err(e) => tracing::warn!("fleet: the order node {} left is gone ({e})", rec.node),
            }
        }
        fleet.forget_order(lineage).await.map_err(fleet_err)?;
    }
    let mut order = account
        .create_order(names, opts)
        .await
        .map_err(|e| Failure::from_acme(&e))?;
    fleet
        .record_order(lineage, &order.url, names, &key.to_pem())
        .await
        .map_err(fleet_err)?;
    let csr = create_csr(&key, names).map_err(|e| Failure::from_acme(&e))?;
    match order.complete(names, &csr.der, solver, opts).await {
        Ok(chain) => Ok((chain, key)),
        Err(e) => {
            // A failed order is not resumed by the next node.
            if let Err(f) = fleet.forget_order(lineage).await {
                tracing::warn!("fleet: {}", chain_text(&f));
            }
            Err(Failure::from_acme(&e))
        }
    }
}
