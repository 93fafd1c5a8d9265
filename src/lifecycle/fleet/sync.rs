//! A pass's use of the fleet: bringing the fleet's certificates and failure memory to this
//! node, publishing what it obtained, reporting what it serves.

use super::{now, Fleet, FleetError, LineageRecord};
use crate::acme::{CertificateChain, KeyType};
use crate::lifecycle::lineage::{live_cert, LineageMeta};
use crate::lifecycle::outcome::chain_text;
use crate::lifecycle::policy::{RenewalState, BACKOFF_MAX};
use crate::lifecycle::Error;
use crate::store::{self as local, Issued};

/// Brings the fleet's certificates to this node: every lineage record newer than what this
/// node has becomes a local version waiting to be installed (checked first: sealed with the
/// fleet key, a version above any this node saw, the key the certificate's, a certificate not
/// older than the one served here), the fleet's failure memory (bounded, and only a streak
/// newer than this node's certificate) replaces an older local one and goes when the fleet's
/// record goes, and a local certificate newer than its record (a publish that failed) is published
/// again.
pub(crate) async fn sync(fleet: &Fleet, store: &local::Store) -> Result<(), Error> {
    fleet.register().await?;
    let records = fleet.lineages().await?;
    for (name, version, rec, key_pem) in &records {
        let l = store.lineage(name);
        take_record(store, name, *version, rec, key_pem)?;
        let mut meta: LineageMeta = l.load_meta()?;
        match fleet.renewal(name).await? {
            Some(shared) => {
                let shared = bounded(shared, time::OffsetDateTime::now_utc());
                // Newer than what this node remembers, and not from before the certificate it
                // has (that streak is over).
                if shared.last_error_at > meta.renewal.last_error_at
                    && shared.last_error_at > meta.issued_at
                {
                    meta.renewal.failures = shared.failures;
                    meta.renewal.last_error = shared.last_error;
                    meta.renewal.last_error_at = shared.last_error_at;
                    meta.renewal.last_error_kind = shared.last_error_kind;
                    meta.renewal.retry_not_before = shared.retry_not_before;
                    meta.failure_from_fleet = true;
                    l.save_meta(&meta)?;
                }
            }
            // The copy goes with the record: it never outlives it.
            None if meta.failure_from_fleet => {
                meta.renewal.forget_failures();
                meta.failure_from_fleet = false;
                l.save_meta(&meta)?;
                tracing::info!(
                    "fleet: the fleet no longer remembers failures of {name}; neither does this node"
                );
            }
            None => {}
        }
    }
    for l in store.lineages() {
        let Some(ours) = live_cert(&l).map(|c| c.info) else {
            continue;
        };
        let published = records.iter().find(|(n, ..)| *n == l.name);
        let ours_newer = match published {
            None => l.load_meta::<LineageMeta>()?.issued_at.is_some(),
            Some((_, _, rec, _)) => {
                rec.serial != ours.serial_hex
                    && crate::acme::CertInfo::from_pem(rec.cert_pem.as_bytes())
                        .is_ok_and(|theirs| ours.not_before > theirs.not_before)
            }
        };
        if ours_newer {
            if let Err(e) = publish_live(fleet, &l).await {
                tracing::warn!("fleet: cannot publish {}: {}", l.name, chain_text(&e));
            }
        }
    }
    Ok(())
}

/// Brings to this node what other nodes published since (their lineage records, checked as
/// [`sync`] checks them), as local versions waiting to be installed; returns the lineages
/// stored. It leaves the rest of a pass's sync (failure memory, publishing again) to the pass:
/// it runs beside one, under the install lock only, and never takes a record this node wrote
/// (the pass that published it installs it).
pub(crate) async fn sync_published(
    fleet: &Fleet,
    store: &local::Store,
) -> Result<Vec<String>, Error> {
    let mut stored = Vec::new();
    for (name, version, rec, key_pem) in fleet.lineages().await? {
        if rec.node != fleet.node && take_record(store, &name, version, &rec, &key_pem)? {
            stored.push(name);
        }
    }
    Ok(stored)
}

/// Stores another node's record of a lineage as a local version waiting to be installed, when
/// it is newer than what this node has and passes the checks of [`accept_record`]; a record
/// refused for another reason than its age is reported. Returns true when it was stored.
fn take_record(
    store: &local::Store,
    name: &str,
    version: u64,
    rec: &LineageRecord,
    key_pem: &str,
) -> Result<bool, Error> {
    let l = store.lineage(name);
    let mut meta: LineageMeta = l.load_meta()?;
    let live = live_cert(&l).map(|c| c.info);
    if live.as_ref().map(|c| c.serial_hex.as_str()) == Some(rec.serial.as_str()) {
        return Ok(false);
    }
    match accept_record(rec, version, key_pem, &meta, live.as_ref()) {
        Err(RecordRejected::Older) => Ok(false),
        Err(why) => {
            tracing::warn!(
                "fleet: the record of {name} (version {version}) is not installed: {}",
                chain_text(&why)
            );
            Ok(false)
        }
        Ok(()) => {
            let stored = l.install(&Issued {
                key_pem,
                cert_pem: &rec.cert_pem,
                chain_pem: &rec.chain_pem,
            })?;
            meta.names = rec.names.clone();
            meta.directory = rec.directory.clone();
            meta.key_type = rec.key_type.clone();
            meta.issued_at = Some(rec.issued_at);
            meta.pending_version = Some(stored);
            meta.fleet_version = Some(version);
            meta.renewal.record_success();
            l.save_meta(&meta)?;
            tracing::info!(
                "fleet: {name} (serial {}, version {version}, ordered by {}) stored as version {stored}, to install",
                rec.serial,
                rec.node
            );
            Ok(true)
        }
    }
}

/// Failure memory from the fleet, bounded as the local one is: no failure in the future, and
/// no wait longer than the longest backoff past the last failure (a record that says otherwise
/// is wrong, whoever wrote it).
fn bounded(mut shared: RenewalState, now: time::OffsetDateTime) -> RenewalState {
    let now = now.unix_timestamp();
    let last = shared.last_error_at.map(|t| t.min(now));
    shared.last_error_at = last;
    let latest = last.unwrap_or(now) + BACKOFF_MAX.whole_seconds();
    shared.retry_not_before = shared.retry_not_before.map(|t| t.min(latest));
    shared
}

/// Publishes a lineage's live certificate and key as the fleet's.
async fn publish_live(fleet: &Fleet, l: &local::Lineage) -> Result<(), Error> {
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
    let Some(live) = live_cert(l) else {
        return Err(Error::Fleet(FleetError::Record {
            key: l.name.clone(),
            message: "the live certificate does not parse".into(),
        }));
    };
    let record = LineageRecord {
        names: meta.names.clone(),
        directory: meta.directory.clone(),
        key_type: meta.key_type.clone(),
        issued_at: meta.issued_at.unwrap_or_default(),
        serial: live.info.serial_hex,
        cert_pem,
        chain_pem,
        key_sealed: String::new(),
        node: fleet.node.clone(),
    };
    let version = fleet.publish_lineage(&l.name, record, &key_pem).await?;
    remember_version(l, version)?;
    tracing::info!("fleet: published {} (version {version})", l.name);
    Ok(())
}

/// Why another node's record is not installed here.
#[derive(Debug, thiserror::Error)]
pub enum RecordRejected {
    /// Not newer than what this node has: nothing to do.
    #[error("not newer than the certificate this node has")]
    Older,
    #[error("version {version} is older than version {seen} this node already saw (a replay)")]
    Replayed { version: u64, seen: u64 },
    #[error("its certificate was issued before the one this node serves (notBefore {theirs} < {ours}); never rolled back")]
    Rollback {
        theirs: time::OffsetDateTime,
        ours: time::OffsetDateTime,
    },
    #[error("its key or chain does not parse: {0}")]
    Unreadable(#[source] crate::acme::Error),
    #[error("its key is not the certificate's")]
    NotTheKey,
    #[error("the certificate names {cert} but the record {record}")]
    Names { cert: String, record: String },
    #[error("the record's serial is not the certificate's")]
    Serial,
}

/// Whether another node's record may go live here: a version above any this node saw, a
/// certificate not issued before the one it serves, and a sound record.
fn accept_record(
    rec: &LineageRecord,
    version: u64,
    key_pem: &str,
    meta: &LineageMeta,
    live: Option<&crate::acme::CertInfo>,
) -> Result<(), RecordRejected> {
    if let Some(seen) = meta.fleet_version {
        if version < seen {
            return Err(RecordRejected::Replayed { version, seen });
        }
        if version == seen {
            // The record this node installed or published: another certificate here is
            // newer (published at the end of the sync).
            return Err(RecordRejected::Older);
        }
    }
    check_record(rec, key_pem)?;
    let theirs = crate::acme::CertInfo::from_pem(rec.cert_pem.as_bytes())
        .map_err(RecordRejected::Unreadable)?;
    if let Some(ours) = live {
        if theirs.not_before < ours.not_before {
            return Err(RecordRejected::Rollback {
                theirs: theirs.not_before,
                ours: ours.not_before,
            });
        }
    }
    Ok(())
}

/// Checks a record from another node before it goes live: the key is the certificate's, the
/// chain parses (certificates only), the names and serial are the certificate's.
fn check_record(rec: &LineageRecord, key_pem: &str) -> Result<(), RecordRejected> {
    let key = crate::acme::KeyPair::from_pem(key_pem).map_err(RecordRejected::Unreadable)?;
    let chain = CertificateChain::parse(format!("{}{}", rec.cert_pem, rec.chain_pem), &rec.node)
        .map_err(RecordRejected::Unreadable)?;
    if !crate::acme::key_matches(chain.leaf_der(), &key).map_err(RecordRejected::Unreadable)? {
        return Err(RecordRejected::NotTheKey);
    }
    if !crate::lifecycle::lineage::same_names(&chain.leaf.names, &rec.names) {
        return Err(RecordRejected::Names {
            cert: chain.leaf.names.join(", "),
            record: rec.names.join(", "),
        });
    }
    if chain.leaf.serial_hex != rec.serial {
        return Err(RecordRejected::Serial);
    }
    Ok(())
}

/// A certificate this node just obtained, as the fleet records it.
#[derive(Debug, Clone, Copy)]
pub struct Obtained<'a> {
    pub lineage: &'a str,
    pub names: &'a [String],
    pub key_type: KeyType,
    pub key_pem: &'a str,
    pub chain: &'a CertificateChain,
}

/// Publishes a certificate this node just obtained (before it is installed here).
pub(crate) async fn publish_fresh(
    fleet: &Fleet,
    store: &local::Store,
    obtained: Obtained<'_>,
    directory: &str,
) -> Result<(), FleetError> {
    let chain = obtained.chain;
    let record = LineageRecord {
        names: obtained.names.to_vec(),
        directory: directory.to_owned(),
        key_type: obtained.key_type.to_string(),
        issued_at: now(),
        serial: chain.leaf.serial_hex.clone(),
        cert_pem: chain.leaf_pem(),
        chain_pem: chain.chain_pem(),
        key_sealed: String::new(),
        node: fleet.node.clone(),
    };
    let version = fleet
        .publish_lineage(obtained.lineage, record, obtained.key_pem)
        .await?;
    // The streak is over fleet-wide (a record left behind is older than the certificate, and
    // no node copies it).
    if let Err(e) = fleet.forget_renewal(obtained.lineage).await {
        tracing::warn!(
            "fleet: the failure memory of {} is left in etcd: {}",
            obtained.lineage,
            chain_text(&e)
        );
    }
    // Published either way; a version not remembered only weakens the replay check here.
    if let Err(e) = remember_version(&store.lineage(obtained.lineage), version) {
        tracing::warn!("fleet: {}", chain_text(&e));
    }
    Ok(())
}

/// Remembers the version of the record this node published, so a replay of an older one is
/// refused here too.
fn remember_version(l: &local::Lineage, version: u64) -> Result<(), local::Error> {
    let mut meta: LineageMeta = l.load_meta()?;
    meta.fleet_version = Some(version);
    l.save_meta(&meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::etcd::fake::FakeCluster;
    use crate::store::seal::FleetKey;
    use std::sync::Arc;
    use time::{Duration, OffsetDateTime};

    /// A record of a self-signed certificate for `name`, as node `node` publishes it.
    fn signed_record(name: &str, node: &str) -> (LineageRecord, String) {
        let key = crate::acme::KeyPair::generate(KeyType::P256);
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x51, 7]));
        let cert = params.self_signed(&key).unwrap();
        let info = crate::acme::CertInfo::from_der(cert.der()).unwrap();
        let record = LineageRecord {
            names: vec![name.to_owned()],
            directory: "https://ca.test/dir".into(),
            key_type: "p256".into(),
            issued_at: 1,
            serial: info.serial_hex,
            cert_pem: cert.pem(),
            chain_pem: String::new(),
            key_sealed: String::new(),
            node: node.into(),
        };
        (record, key.to_pem())
    }

    /// Two nodes of one fleet (one key) on an in-memory etcd.
    fn two_nodes() -> (Fleet, Fleet) {
        let cluster = Arc::new(FakeCluster::default());
        let key = || FleetKey::from_bytes(&[7; 32]).unwrap();
        let alpha = Fleet::fake(cluster.clone(), "alpha", key());
        (alpha, Fleet::fake(cluster, "bravo", key()))
    }

    /// The install beside a pass takes what other nodes published, once, and never a record
    /// this node wrote (the pass that published it installs it).
    #[tokio::test]
    async fn an_install_beside_a_pass_takes_only_what_other_nodes_published() {
        let (alpha, bravo) = two_nodes();
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a_store, b_store) = (
            local::Store::open(a_dir.path()).unwrap(),
            local::Store::open(b_dir.path()).unwrap(),
        );
        let (record, key_pem) = signed_record("a.test", "alpha");
        alpha
            .publish_lineage("a.test", record.clone(), &key_pem)
            .await
            .unwrap();
        assert!(sync_published(&alpha, &a_store).await.unwrap().is_empty());
        assert_eq!(
            sync_published(&bravo, &b_store).await.unwrap(),
            vec!["a.test".to_owned()]
        );
        let meta: LineageMeta = b_store.lineage("a.test").load_meta().unwrap();
        let pending = meta.pending_version.expect("stored to install");
        let stored =
            crate::lifecycle::lineage::version_cert(&b_store.lineage("a.test"), pending).unwrap();
        assert_eq!(stored.info.serial_hex, record.serial);
        assert!(
            sync_published(&bravo, &b_store).await.unwrap().is_empty(),
            "once"
        );
        // A record whose key is not the certificate's is not taken.
        let (forged, _) = signed_record("b.test", "alpha");
        let (_, other_key) = signed_record("b.test", "alpha");
        alpha
            .publish_lineage("b.test", forged, &other_key)
            .await
            .unwrap();
        assert!(sync_published(&bravo, &b_store).await.unwrap().is_empty());
    }

    /// Another node's failure memory is copied while the fleet holds it (a streak newer than
    /// this node's certificate only) and forgotten when the fleet's record goes.
    #[tokio::test]
    async fn a_copied_failure_memory_never_outlives_the_fleets_record() {
        let (alpha, bravo) = two_nodes();
        let dir = tempfile::tempdir().unwrap();
        let store = local::Store::open(dir.path()).unwrap();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let (mut record, key_pem) = signed_record("a.test", "alpha");
        record.issued_at = now - 600;
        alpha
            .publish_lineage("a.test", record, &key_pem)
            .await
            .unwrap();
        let failed_at = |at: i64| RenewalState {
            failures: 3,
            last_error: Some("rateLimited".into()),
            last_error_at: Some(at),
            retry_not_before: Some(now + 600),
            ..RenewalState::default()
        };
        let meta = || -> LineageMeta { store.lineage("a.test").load_meta().unwrap() };
        // A streak from before the certificate: over.
        alpha
            .publish_renewal("a.test", &failed_at(now - 3600))
            .await
            .unwrap();
        sync(&bravo, &store).await.unwrap();
        assert_eq!(meta().renewal.failures, 0);
        // A streak since: copied.
        alpha
            .publish_renewal("a.test", &failed_at(now - 60))
            .await
            .unwrap();
        sync(&bravo, &store).await.unwrap();
        assert_eq!(meta().renewal.failures, 3);
        assert!(meta().failure_from_fleet);
        // Gone from the fleet (a success, or deleted): gone here.
        alpha.forget_renewal("a.test").await.unwrap();
        sync(&bravo, &store).await.unwrap();
        assert_eq!(meta().renewal.failures, 0);
        assert_eq!(meta().renewal.retry_not_before, None);
        assert!(!meta().failure_from_fleet);
    }

    #[test]
    fn fleet_failure_memory_is_bounded() {
        let now = OffsetDateTime::now_utc();
        let t = now.unix_timestamp();
        let forged = RenewalState {
            failures: 9,
            last_error_at: Some(t + 10 * 365 * 86_400),
            retry_not_before: Some(t + 10 * 365 * 86_400),
            ..RenewalState::default()
        };
        let b = bounded(forged, now);
        assert_eq!(b.last_error_at, Some(t), "no failure in the future");
        assert_eq!(b.retry_not_before, Some(t + BACKOFF_MAX.whole_seconds()));
        let fair = RenewalState {
            failures: 1,
            last_error_at: Some(t - 60),
            retry_not_before: Some(t + 240),
            ..RenewalState::default()
        };
        assert_eq!(bounded(fair.clone(), now), fair);
        assert!(BACKOFF_MAX <= Duration::days(1));
    }
}
