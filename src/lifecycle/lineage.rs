//! What the lifecycle remembers about a lineage ([`LineageMeta`], stored as the lineage's
//! `lineage.json`), and reading its live certificate.

use serde::{Deserialize, Serialize};

use super::policy::RenewalState;
use crate::acme::{self, CertInfo};
use crate::nginx::discovery::Scan;
use crate::store::{self, Lineage};

/// A lineage's metadata.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LineageMeta {
    /// The certificate's names, primary first.
    #[serde(default)]
    pub names: Vec<String>,
    /// The CA directory it came from.
    #[serde(default)]
    pub directory: String,
    #[serde(default)]
    pub key_type: String,
    /// Server blocks using it (`file:line`).
    #[serde(default)]
    pub server_blocks: Vec<String>,
    /// Unix time of the last successful issuance.
    #[serde(default)]
    pub issued_at: Option<i64>,
    /// The CertID the CA recorded the last order as replacing.
    #[serde(default)]
    pub last_replaces: Option<String>,
    /// A version issued and stored but not live: its install failed or was interrupted. It is
    /// installed again (no new order) while it is valid.
    #[serde(default)]
    pub pending_version: Option<u32>,
    /// Renewal schedule and failure memory.
    #[serde(flatten)]
    pub renewal: RenewalState,
    /// This lineage's own choice of chain (certbot's `preferred_chain`), over the setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_chain: Option<String>,
    /// This lineage keeps its key across renewals (certbot's `reuse_key`), besides the setting.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reuse_key: bool,
    /// The certbot renewal configuration this lineage was imported from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<std::path::PathBuf>,
    /// The configuration lines installs replaced (not inserted), for `remove` to put back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<Replaced>,
    /// In a fleet: the highest version of this lineage's record this node published or
    /// installed; an older version seen later is a replay and is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_version: Option<u64>,
    /// In a fleet: the failure memory above is a copy of the fleet's (another node failed), so
    /// it goes when the fleet's record goes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failure_from_fleet: bool,
}

/// Lines of a configuration file an install replaced: what was there and what it wrote.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Replaced {
    pub file: std::path::PathBuf,
    /// Where the original text started when it was replaced (later edits may move it).
    pub offset: usize,
    pub original: String,
    pub inserted: String,
}

/// The live certificate of a lineage, parsed, with its leaf as DER.
#[derive(Debug, Clone)]
pub struct LiveCert {
    pub info: CertInfo,
    pub leaf_der: Vec<u8>,
}

/// Reads the lineage's live certificate (None when there is none or it does not parse).
pub fn live_cert(l: &Lineage) -> Option<LiveCert> {
    cert_in(&l.live_file(store::FULLCHAIN))
}

/// The leaf of a chain file, parsed.
fn cert_in(fullchain: &std::path::Path) -> Option<LiveCert> {
    let pem = std::fs::read(fullchain).ok()?;
    let leaf_der = acme::pem_certificates(&pem).ok()?.into_iter().next()?;
    Some(LiveCert {
        info: CertInfo::from_der(&leaf_der).ok()?,
        leaf_der,
    })
}

/// A stored version's certificate, when it exists and parses.
pub fn version_cert(l: &Lineage, version: u32) -> Option<LiveCert> {
    cert_in(&l.version_file(version, store::FULLCHAIN))
}

/// True when the lineage is named by one of `wanted` (its own name or one of its names).
pub fn matches(l: &Lineage, meta: &LineageMeta, wanted: &[String]) -> bool {
    wanted.is_empty()
        || wanted.iter().any(|w| {
            w.eq_ignore_ascii_case(&l.name) || meta.names.iter().any(|n| n.eq_ignore_ascii_case(w))
        })
}

/// Server blocks that use a lineage's live files.
pub fn users(scan: &Scan, l: &Lineage) -> Vec<String> {
    let fullchain = l.live_file(store::FULLCHAIN).display().to_string();
    scan.servers
        .iter()
        .filter(|s| s.ssl_certificates.contains(&fullchain))
        .map(|s| s.location())
        .collect()
}

/// Same names, in any order.
pub fn same_names(a: &[String], b: &[String]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort();
    b.sort();
    a == b
}
