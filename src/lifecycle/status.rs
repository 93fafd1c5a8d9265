//! What the state directory says about every lineage: serial, expiry, the next renewal and why
//! (the renewal policy's decision), the server blocks using it, and the last error. Reads only:
//! a missing state directory is an empty list, never created.

use serde::Serialize;
use time::OffsetDateTime;

use super::lineage::{live_cert, matches, users, LineageMeta};
use super::policy::Decision;
use super::{Error, Settings};
use crate::store::{self, Store};

/// One lineage, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StatusLine {
    pub name: String,
    pub names: Vec<String>,
    pub serial: Option<String>,
    /// The directory of the CA that issued the certificate (empty when unknown).
    pub directory: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_after: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_renewal: Option<OffsetDateTime>,
    pub reason: Option<String>,
    pub server_blocks: Vec<String>,
    pub last_error: Option<String>,
    pub failures: u32,
    /// No server block uses it (when the configuration could be read): `remove --orphans`
    /// deletes it.
    pub orphan: bool,
}

/// The status of the named lineages (all when `wanted` is empty).
pub fn status(settings: &Settings, wanted: &[String]) -> Result<Vec<StatusLine>, Error> {
    let store = match Store::existing(&settings.state_dir) {
        Ok(s) => s,
        Err(store::Error::Missing(_)) if wanted.is_empty() => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    // The configuration only adds the blocks using each lineage: a broken one is no error here.
    let scan = settings.nginx.load_with(false).ok().map(|(_, s)| s);
    let now = OffsetDateTime::now_utc();
    let mut lines = Vec::new();
    for l in store.lineages() {
        let meta: LineageMeta = l.load_meta()?;
        if !matches(&l, &meta, wanted) {
            continue;
        }
        let info = live_cert(&l).map(|c| c.info);
        let (next, reason) = match meta.renewal.decide(info.as_ref(), now) {
            Decision::Backoff { until, failures } => (
                Some(until),
                Some(format!("backing off after {failures} failures")),
            ),
            Decision::NotDue { at, reason } => (Some(at), Some(reason.to_string())),
            Decision::Due(reason) => (Some(now), Some(format!("due now: {reason}"))),
        };
        lines.push(StatusLine {
            name: l.name.clone(),
            names: meta.names.clone(),
            serial: info.as_ref().map(|i| i.serial_hex.clone()),
            directory: meta.directory.clone(),
            not_after: info.as_ref().map(|i| i.not_after),
            next_renewal: next,
            reason,
            server_blocks: scan.as_ref().map(|s| users(s, &l)).unwrap_or_default(),
            last_error: meta.renewal.last_error.clone(),
            failures: meta.renewal.failures,
            orphan: scan.as_ref().is_some_and(|s| users(s, &l).is_empty()),
        });
    }
    for w in wanted {
        if !lines.iter().any(|s| {
            s.name.eq_ignore_ascii_case(w) || s.names.iter().any(|n| n.eq_ignore_ascii_case(w))
        }) {
            return Err(Error::NoLineage(w.clone()));
        }
    }
    Ok(lines)
}
