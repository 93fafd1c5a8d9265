//! Prometheus text format for node_exporter's textfile collector: per lineage, when the live
//! certificate expires, when it renews next (the renewal policy's schedule), when the last
//! certificate was issued, and whether the last attempt succeeded. Written atomically.

use std::fmt::Write as _;
use std::path::Path;

use super::lineage::{live_cert, LineageMeta};
use super::outcome::{Outcome, Status};
use super::Error;
use crate::fsutil;
use crate::store::Store;

/// Writes the metrics file after a run that could not run at all: every lineage's last result
/// is a failure (the file must never keep saying all is well).
pub fn write_failed_run(store: &Store, path: &Path) -> Result<(), Error> {
    let outcomes: Vec<Outcome> = store
        .lineages()
        .iter()
        .map(|l| Outcome::new(&l.name, &[], Status::Failed))
        .collect();
    write_metrics(store, path, &outcomes)
}

/// Writes the metrics file: the result of this run's `outcomes` where there is one, else the
/// last remembered result.
pub fn write_metrics(store: &Store, path: &Path, outcomes: &[Outcome]) -> Result<(), Error> {
    let mut expiry = String::new();
    let mut next = String::new();
    let mut success = String::new();
    let mut result = String::new();
    for l in store.lineages() {
        let meta: LineageMeta = l.load_meta()?;
        let label = format!("name=\"{}\"", l.name.replace(['\\', '"', '\n'], "_"));
        if let Some(c) = live_cert(&l) {
            let at = meta.renewal.schedule(&c.info).at;
            // Writing to a String cannot fail.
            writeln!(
                expiry,
                "acme_nginx_certificate_expiry_timestamp_seconds{{{label}}} {}",
                c.info.not_after.unix_timestamp()
            )
            .ok();
            writeln!(
                next,
                "acme_nginx_certificate_next_renewal_timestamp_seconds{{{label}}} {}",
                at.unix_timestamp()
            )
            .ok();
        }
        if let Some(t) = meta.issued_at {
            writeln!(
                success,
                "acme_nginx_certificate_last_success_timestamp_seconds{{{label}}} {t}"
            )
            .ok();
        }
        let ok = match outcomes.iter().find(|o| o.name == l.name) {
            Some(o) => o.status != Status::Failed,
            None => meta.renewal.failures == 0,
        };
        writeln!(
            result,
            "acme_nginx_certificate_last_result{{{label}}} {}",
            u8::from(ok)
        )
        .ok();
    }
    let text = format!(
        "# HELP acme_nginx_certificate_expiry_timestamp_seconds When the live certificate expires.\n\
         # TYPE acme_nginx_certificate_expiry_timestamp_seconds gauge\n{expiry}\
         # HELP acme_nginx_certificate_next_renewal_timestamp_seconds When the next renewal is due.\n\
         # TYPE acme_nginx_certificate_next_renewal_timestamp_seconds gauge\n{next}\
         # HELP acme_nginx_certificate_last_success_timestamp_seconds When the last certificate was issued.\n\
         # TYPE acme_nginx_certificate_last_success_timestamp_seconds gauge\n{success}\
         # HELP acme_nginx_certificate_last_result 1 when the last attempt succeeded, 0 when it failed.\n\
         # TYPE acme_nginx_certificate_last_result gauge\n{result}"
    );
    fsutil::write_atomic_in_safe_dir(path, text.as_bytes(), fsutil::PUBLIC_MODE)
        .map_err(Error::io(format!("write metrics to {}", path.display())))
}
