//! A pass's use of the fleet: bringing the fleet's certificates and failure memory to this
//! node, publishing what it obtained, reporting what it serves.

use super::{now, Fleet, FleetError, LineageRecord};
use crate::acme::{CertificateChain, KeyType};
use crate::lifecycle::lineage::{live_cert, LineageMeta};
use crate::lifecycle::outcome::chain_text;
use crate::lifecycle::Error;
use crate::store::{self as local, Issued};

/// Brings the fleet's certificates to this node: every lineage record newer than what this
/// node has becomes a local version waiting to be installed (checked first: the key must be the
/// certificate's), the fleet's failure memory replaces an older local one, and a local
/// certificate newer than its record (a publish that failed) is published again.
pub(crate) async fn sync(fleet: &Fleet, store: &local::Store) -> Result<(), Error> {
    fleet.register().await?;
    let records = fleet.lineages().await?;
    for (name, rec, key_pem) in &records {
        let l = store.lineage(name);
        let mut meta: LineageMeta = l.load_meta()?;
        let local_serial = live_cert(&l).map(|c| c.info.serial_hex);
        // The fleet's record wins unless this node's certificate is strictly newer (two
        // renewals can fall in the same second).
        let newer = meta.issued_at.is_none_or(|t| rec.issued_at >= t);
        if local_serial.as_deref() != Some(rec.serial.as_str()) && newer {
            if let Err(why) = check_record(rec, key_pem) {
                tracing::warn!(
                    "fleet: the record of {name} is not installed: {}",
                    chain_text(&why)
                );
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
            l.save_meta(&meta)?;
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
                l.save_meta(&meta)?;
            }
        }
    }
    for l in store.lineages() {
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
            if let Err(e) = publish_live(fleet, &l).await {
                tracing::warn!("fleet: cannot publish {}: {}", l.name, chain_text(&e));
            }
        }
    }
    Ok(())
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
    fleet.publish_lineage(&l.name, record, &key_pem).await?;
    tracing::info!("fleet: published {}", l.name);
    Ok(())
}

/// Why another node's record is not installed here.
#[derive(Debug, thiserror::Error)]
pub enum RecordRejected {
    #[error("its key or chain does not parse: {0}")]
    Unreadable(#[source] crate::acme::Error),
    #[error("its key is not the certificate's")]
    NotTheKey,
    #[error("the certificate names {cert} but the record {record}")]
    Names { cert: String, record: String },
    #[error("the record's serial is not the certificate's")]
    Serial,
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
    fleet
        .publish_lineage(obtained.lineage, record, obtained.key_pem)
        .await
}
