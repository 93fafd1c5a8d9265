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

pub use agent::{agent, AgentSignals, AGENT_RETRY};
pub(super) use order::order_once;
pub use order::{IntentRecord, OrderRecord, INTENT_DEADLINE};
pub use status::{
    fleet_metrics, fleet_status, forget_node, FleetLineage, FleetNode, FleetStatus, ForgetError,
    NodeServing,
};
pub use sync::Obtained;
pub(super) use sync::{publish_fresh, sync, sync_published};

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
/// A node that has not reported for this long is flagged by `status --fleet` (the default of
/// `silent_after`).
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
    /// How long without a report before `status --fleet` marks a node silent.
    pub silent_after: Duration,
    /// Stateless http-01: every node's challenge location answers `TOKEN.THUMBPRINT` of the
    /// fleet's account, so no answer is published and no token file written.
    pub stateless: bool,
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

impl FleetError {
    /// True for a record that was not written by a holder of the fleet key (ignored and
    /// reported, never acted on).
    pub fn is_untrusted(&self) -> bool {
        matches!(self, FleetError::Seal(e) if e.is_untrusted())
    }
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
    /// http-01 answered statelessly by every node (nothing published).
    pub stateless: bool,
}

/// Why a node's address cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("the fleet address {0:?} is not HOST:PORT")]
    NotHostPort(String),
    #[error("the fleet address {address:?}: {host} does not resolve here ({message}); set `address` in the [fleet] table (or --fleet-address) to HOST:PORT the other nodes reach this node's nginx at")]
    Unresolved {
        address: String,
        host: String,
        message: String,
    },
    #[error("this host has no address but loopback for the other nodes to reach it by; set `address` in the [fleet] table (or --fleet-address) to HOST:PORT")]
    NoAddress,
}

/// This node's address as the other nodes reach it: `address` when given (its host must
/// resolve), else the host's primary address (the first non-loopback IPv4 address of an
/// interface that is up, else such an IPv6 one) and the port nginx answers the name on.
pub fn node_address(address: Option<&str>, http_port: u16) -> Result<String, AddressError> {
    if let Some(a) = address {
        let (host, port) = a
            .rsplit_once(':')
            .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            .ok_or_else(|| AddressError::NotHostPort(a.to_owned()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.parse::<std::net::IpAddr>().is_err() {
            use std::net::ToSocketAddrs;
            let first = (host, port.parse::<u16>().unwrap_or(80))
                .to_socket_addrs()
                .map(|mut it| it.next());
            let message = match first {
                Ok(Some(_)) => None,
                Ok(None) => Some("no address".to_owned()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(message) = message {
                return Err(AddressError::Unresolved {
                    address: a.to_owned(),
                    host: host.to_owned(),
                    message,
                });
            }
        }
        return Ok(a.to_owned());
    }
    let interfaces = crate::challenge::public::interface_addresses();
    let ip = primary_address(&interfaces).ok_or(AddressError::NoAddress)?;
    Ok(std::net::SocketAddr::new(ip, http_port).to_string())
}

/// The first non-loopback, non-link-local IPv4 address of an interface that is up, else such
/// an IPv6 address.
fn primary_address(interfaces: &[(std::net::IpAddr, bool)]) -> Option<std::net::IpAddr> {
    let usable = |ip: &std::net::IpAddr| match ip {
        std::net::IpAddr::V4(v4) => {
            !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified()
        }
        std::net::IpAddr::V6(v6) => {
            !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    };
    let up = || {
        interfaces
            .iter()
            .filter(|(ip, up)| *up && usable(ip))
            .map(|(ip, _)| *ip)
    };
    up().find(std::net::IpAddr::is_ipv4).or_else(|| up().next())
}

/// Logs a record that does not open with the fleet key: written by someone with etcd access
/// but not the key (or a node with another key). It is left out, never acted on.
pub(crate) fn report_untrusted(key: &str) {
    tracing::warn!(
        "fleet: {key} was not written with this fleet key (a forgery, or another fleet key); ignored"
    );
}

/// The version of records that are versioned by time: when they were written.
pub(crate) fn now_version() -> u64 {
    u64::try_from(now()).unwrap_or_default()
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
            stateless: config.stateless,
        })
    }

    /// A node of a fleet whose store is an in-memory cluster (unit tests).
    #[cfg(test)]
    pub(crate) fn fake(
        cluster: Arc<crate::store::etcd::fake::FakeCluster>,
        node: &str,
        key: FleetKey,
    ) -> Fleet {
        Fleet {
            etcd: Arc::new(Etcd::fake(cluster)),
            key,
            prefix: DEFAULT_PREFIX.to_owned(),
            node: node.to_owned(),
            address: format!("{node}.test:80"),
            stateless: false,
        }
    }

    /// A full key under the prefix.
    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// Opens a record: sealed under the fleet key for its etcd key and version (see
    /// [`crate::store::seal`]); anything else is untrusted.
    pub(crate) fn open_record<T: for<'de> Deserialize<'de>>(
        &self,
        key: &str,
        value: &[u8],
    ) -> Result<(u64, T), FleetError> {
        let (version, plain) = self.key.open_record(key, value)?;
        let rec = serde_json::from_slice(&plain).map_err(|e| FleetError::Record {
            key: key.to_owned(),
            message: e.to_string(),
        })?;
        Ok((version, rec))
    }

    /// A record sealed for `key` at `version`.
    pub(crate) fn seal_record<T: Serialize>(
        &self,
        key: &str,
        version: u64,
        rec: &T,
    ) -> Result<Vec<u8>, FleetError> {
        let json = serde_json::to_vec(rec).map_err(|e| FleetError::Record {
            key: key.to_owned(),
            message: e.to_string(),
        })?;
        Ok(self.key.seal_record(key, version, &json))
    }

    /// Writes a record sealed for its key at `version`.
    pub(crate) async fn put_record<T: Serialize>(
        &self,
        key: &str,
        version: u64,
        rec: &T,
    ) -> Result<(), FleetError> {
        let sealed = self.seal_record(key, version, rec)?;
        Ok(self.etcd.put(key, &sealed, None).await?)
    }

    /// The fleet key, for the challenge publisher.
    pub fn fleet_key(&self) -> &FleetKey {
        &self.key
    }

    /// Opens every record under a prefix; a record that does not open is reported and left
    /// out, never acted on.
    async fn records<T: for<'de> Deserialize<'de>>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, u64, T)>, FleetError> {
        let (kvs, _) = self.etcd.get_prefix(prefix).await?;
        let mut out = Vec::new();
        for kv in kvs {
            match self.open_record(&kv.key, &kv.value) {
                Ok((version, rec)) => {
                    out.push((kv.key.trim_start_matches(prefix).to_owned(), version, rec))
                }
                Err(e) if e.is_untrusted() => report_untrusted(&kv.key),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Opens one record, if present; an untrusted one is reported and counts as absent.
    async fn record<T: for<'de> Deserialize<'de>>(
        &self,
        key: &str,
    ) -> Result<Option<(u64, T)>, FleetError> {
        let Some(kv) = self.etcd.get(key).await? else {
            return Ok(None);
        };
        match self.open_record(key, &kv.value) {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.is_untrusted() => {
                report_untrusted(key);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn account_key(&self, directory: &str) -> String {
        let digest = Sha256::digest(directory.as_bytes());
        let id: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        self.key(&format!("accounts/{id}"))
    }

    /// The fleet's account for a CA directory, if one was published.
    pub async fn account(&self, directory: &str) -> Result<Option<AccountState>, FleetError> {
        let key = self.account_key(directory);
        Ok(self.record(&key).await?.map(|(_, a)| a))
    }

    /// The JWK thumbprints of the fleet's accounts (one per CA): a challenge answer's key
    /// authorization must end with one of them.
    pub async fn account_thumbprints(&self) -> Result<Vec<String>, FleetError> {
        let prefix = self.key("accounts/");
        Ok(self
            .records::<AccountState>(&prefix)
            .await?
            .into_iter()
            .filter_map(|(_, _, a)| crate::acme::KeyPair::from_pem(&a.private_key_pem).ok())
            .map(|k| crate::acme::thumbprint(&k))
            .collect())
    }

    /// Publishes an account unless another node did first; returns the fleet's account (ours,
    /// or the one that won).
    pub async fn publish_account(&self, state: &AccountState) -> Result<AccountState, FleetError> {
        let key = self.account_key(&state.directory);
        let sealed = self.seal_record(&key, 1, state)?;
        match self.etcd.put_if_absent(&key, &sealed, None).await? {
            None => Ok(state.clone()),
            // Another node's, or (untrusted) a forgery that stops accounts from being shared
            // until it is deleted: an error either way, never used.
            Some(winner) => self.open_record(&key, &winner.value).map(|(_, a)| a),
        }
    }

    /// Every lineage record that opens, with its version and its key opened (PEM).
    pub async fn lineages(&self) -> Result<Vec<(String, u64, LineageRecord, String)>, FleetError> {
        let prefix = self.key("lineages/");
        let mut out = Vec::new();
        for (name, version, rec) in self.records::<LineageRecord>(&prefix).await? {
            let key = format!("{prefix}{name}");
            let key_pem =
                String::from_utf8_lossy(&self.key.open(&key, &rec.key_sealed)?).into_owned();
            out.push((name, version, rec, key_pem));
        }
        Ok(out)
    }

    /// Publishes a lineage's current certificate (its key sealed) as the record's next
    /// version: above the version of the record it replaces and not below the current time in
    /// seconds, so a replayed older record is recognised by every node that saw a newer one,
    /// even after the record was deleted or overwritten by someone without the fleet key.
    /// Returns the version.
    pub async fn publish_lineage(
        &self,
        name: &str,
        mut record: LineageRecord,
        key_pem: &str,
    ) -> Result<u64, FleetError> {
        let key = self.key(&format!("lineages/{name}"));
        let previous = self
            .record::<LineageRecord>(&key)
            .await?
            .map_or(0, |(v, _)| v);
        record.key_sealed = self.key.seal(&key, key_pem.as_bytes());
        let version = (previous + 1).max(now_version());
        self.put_record(&key, version, &record).await?;
        Ok(version)
    }

    /// The serial and orderer of a lineage's record, if there is one that opens.
    pub async fn record_of(&self, name: &str) -> Result<Option<(String, String)>, FleetError> {
        let key = self.key(&format!("lineages/{name}"));
        Ok(self
            .record::<LineageRecord>(&key)
            .await?
            .map(|(_, rec)| (rec.serial, rec.node)))
    }

    /// The shared failure memory of a lineage (its version is when it was written).
    pub async fn renewal(&self, name: &str) -> Result<Option<RenewalState>, FleetError> {
        let key = self.key(&format!("renewal/{name}"));
        Ok(self.record(&key).await?.map(|(_, r)| r))
    }

    /// Shares a lineage's failure memory.
    pub async fn publish_renewal(
        &self,
        name: &str,
        state: &RenewalState,
    ) -> Result<(), FleetError> {
        let key = self.key(&format!("renewal/{name}"));
        self.put_record(&key, now_version(), state).await?;
        Ok(())
    }

    /// Forgets a lineage's shared failure memory (a certificate was issued: the streak is over).
    pub async fn forget_renewal(&self, name: &str) -> Result<(), FleetError> {
        Ok(self
            .etcd
            .delete(&self.key(&format!("renewal/{name}")))
            .await?)
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
        self.put_record(&key, now_version(), &info).await?;
        Ok(())
    }

    /// Every node that registered, by name.
    pub async fn nodes(&self) -> Result<Vec<(String, NodeInfo)>, FleetError> {
        let prefix = self.key("nodes/");
        Ok(self
            .records::<NodeInfo>(&prefix)
            .await?
            .into_iter()
            .map(|(name, _, info)| (name, info))
            .collect())
    }

    /// Forgets a node that is gone for good: its record and what it reported serving. The
    /// preflight stops asking it, `status --fleet` stops listing it. A node that still runs
    /// registers again at its next pass.
    pub async fn forget_node(&self, node: &str) -> Result<bool, FleetError> {
        let key = self.key(&format!("nodes/{node}"));
        let known = self.etcd.get(&key).await?.is_some();
        self.etcd.delete(&key).await?;
        self.etcd
            .delete_prefix(&self.key(&format!("serving/{node}/")))
            .await?;
        Ok(known)
    }

    /// The keys under the prefix that do not open with the fleet key (locks, which hold only a
    /// node's name, aside): written by someone without it, ignored everywhere.
    pub async fn untrusted(&self) -> Result<Vec<String>, FleetError> {
        let (kvs, _) = self.etcd.get_prefix(&self.prefix).await?;
        let locks = self.key("locks/");
        Ok(kvs
            .into_iter()
            .filter(|kv| !kv.key.starts_with(&locks))
            .filter(|kv| self.key.open_record(&kv.key, &kv.value).is_err())
            .map(|kv| kv.key)
            .collect())
    }

    /// Records what this node serves for a lineage.
    pub async fn report_serving(&self, lineage: &str, serial: &str) -> Result<(), FleetError> {
        let key = self.key(&format!("serving/{}/{lineage}", self.node));
        let serving = Serving {
            serial: serial.to_owned(),
            since: now(),
        };
        self.put_record(&key, now_version(), &serving).await?;
        self.register().await
    }

    /// What every node reported serving: (node, lineage, serving).
    pub async fn serving(&self) -> Result<Vec<(String, String, Serving)>, FleetError> {
        let prefix = self.key("serving/");
        let mut out = Vec::new();
        for (rest, _, serving) in self.records::<Serving>(&prefix).await? {
            let Some((node, lineage)) = rest.split_once('/') else {
                continue;
            };
            out.push((node.to_owned(), lineage.to_owned(), serving));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_address_is_the_primary_non_loopback_one() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let table = [
            (
                vec![(ip("127.0.0.1"), true), (ip("192.0.2.7"), true)],
                Some(ip("192.0.2.7")),
            ),
            (
                vec![(ip("192.0.2.7"), false), (ip("198.51.100.2"), true)],
                Some(ip("198.51.100.2")),
            ),
            (
                vec![(ip("2001:db8::5"), true), (ip("203.0.113.9"), true)],
                Some(ip("203.0.113.9")),
            ),
            (
                vec![(ip("fe80::1"), true), (ip("2001:db8::5"), true)],
                Some(ip("2001:db8::5")),
            ),
            (
                vec![
                    (ip("127.0.0.1"), true),
                    (ip("169.254.3.3"), true),
                    (ip("::1"), true),
                ],
                None,
            ),
        ];
        for (interfaces, want) in table {
            assert_eq!(primary_address(&interfaces), want, "{interfaces:?}");
        }
    }

    #[test]
    fn a_given_address_must_be_host_port_and_resolve() {
        assert_eq!(
            node_address(Some("192.0.2.7:80"), 1).unwrap(),
            "192.0.2.7:80"
        );
        assert_eq!(
            node_address(Some("[2001:db8::1]:80"), 1).unwrap(),
            "[2001:db8::1]:80"
        );
        assert_eq!(
            node_address(Some("localhost:8080"), 1).unwrap(),
            "localhost:8080"
        );
        assert!(matches!(
            node_address(Some("web-bravo"), 80),
            Err(AddressError::NotHostPort(_))
        ));
        let e = node_address(Some("no-such-node.invalid:80"), 80).unwrap_err();
        assert!(matches!(e, AddressError::Unresolved { .. }), "{e}");
        assert!(e.to_string().contains("set `address`"), "{e}");
    }
}
