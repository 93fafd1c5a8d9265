//! A pass's use of the fleet: bringing the fleet's certificates and failure memory to this
//! node, publishing what it obtained, reporting what it serves.

use super::{now, Fleet, FleetError, LineageRecord};
use crate::lifecycle::lineage::{live_cert, LineageMeta};
use crate::lifecycle::outcome::chain_text;
use crate::lifecycle::run::Run;
use crate::lifecycle::Error;
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
    pub(crate) async fn fleet_sync(&self) -> Result<(), Error> {
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
    pub(crate) async fn fleet_publish(&self, name: &str) -> Result<(), Error> {
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
    pub(crate) async fn fleet_report(&self, name: &str, serial: &str) {
        if let Some(fleet) = &self.fleet {
            if let Err(e) = fleet.report_serving(name, serial).await {
                tracing::warn!("fleet: cannot report {name}: {}", chain_text(&e));
            }
        }
    }

    /// Shares a lineage's failure memory with the fleet.
    pub(crate) async fn fleet_share_failure(&self, name: &str) {
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
    if !crate::lifecycle::lineage::same_names(&info.names, &rec.names) {
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
pub(crate) async fn publish_fresh(
    fleet: &Fleet,
    f: &crate::lifecycle::run::Fresh,
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
