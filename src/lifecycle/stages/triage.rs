//! Triage: what `enroll` does with each plan, decided from what the store knows and the clock
//! alone (a pure function: no nginx, no CA, no disk). The session gathers the [`Facts`], asks
//! [`triage`], and only for a [`Verdict::Current`] plan probes nginx to tell "up to date" from
//! "install again".

use time::OffsetDateTime;

use crate::acme::CertInfo;
use crate::lifecycle::lineage::{same_names, LineageMeta};
use crate::lifecycle::plan::Plan;
use crate::lifecycle::policy::Decision;

/// What the store holds for a plan's lineage.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub meta: &'a LineageMeta,
    /// The live certificate, if any.
    pub cert: Option<&'a CertInfo>,
    /// A version issued earlier, not installed yet, and still good to install.
    pub pending: bool,
    /// Another node of the fleet set out to order it and did not finish.
    pub unfinished: bool,
}

/// What to do with one plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing the CA could validate: left out, with what to change.
    Skip(String),
    /// Failed before and waiting until `until`, with why.
    Backoff {
        until: OffsetDateTime,
        reason: String,
    },
    /// Issued earlier but not installed: install it (no CA involved, no backoff).
    Install,
    /// Not due and for the plan's names: up to date if nginx serves it, else install it.
    Current,
    /// Order a certificate.
    Order,
}

/// Decides what to do with `plan`. A plan named on the command line is tried even in backoff;
/// a certificate whose names are not the plan's any more is ordered anew.
pub fn triage(plan: &Plan, facts: Facts<'_>, now: OffsetDateTime) -> Verdict {
    if let Some(e) = &plan.error {
        return Verdict::Skip(e.clone());
    }
    if facts.pending {
        return Verdict::Install;
    }
    let names_differ = facts
        .cert
        .is_some_and(|c| !same_names(&c.names, &plan.names));
    match facts.meta.renewal.decide(facts.cert, now) {
        Decision::Backoff { until, failures } if !plan.named => Verdict::Backoff {
            until,
            reason: format!(
                "{failures} failures in a row; last: {}",
                facts.meta.renewal.last_error.as_deref().unwrap_or("-")
            ),
        },
        Decision::NotDue { .. } if !names_differ && !facts.unfinished => Verdict::Current,
        _ => Verdict::Order,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::outcome::Failure;
    use time::Duration;

    fn plan(names: &[&str], named: bool) -> Plan {
        Plan {
            primary: names[0].to_owned(),
            names: names.iter().map(|n| n.to_string()).collect(),
            named,
            ..Plan::default()
        }
    }

    fn cert(names: &[&str], issued: OffsetDateTime, days: i64) -> CertInfo {
        CertInfo {
            serial_hex: "01".into(),
            not_before: issued,
            not_after: issued + Duration::days(days),
            names: names.iter().map(|n| n.to_string()).collect(),
            subject_cn: None,
            issuer_cn: None,
            ari_cert_id: None,
        }
    }

    fn failing(times: u32, now: OffsetDateTime) -> LineageMeta {
        let mut meta = LineageMeta::default();
        for _ in 0..times {
            meta.renewal
                .record_failure(&Failure::transient("connection refused"), now);
        }
        meta
    }

    /// Each row: the plan, the store's facts, and the verdict expected.
    #[test]
    fn each_plan_gets_one_verdict() {
        let now = OffsetDateTime::now_utc();
        let fresh = cert(&["a.test", "www.a.test"], now - Duration::days(1), 90);
        let old = cert(&["a.test", "www.a.test"], now - Duration::days(80), 90);
        let other_names = cert(&["a.test"], now - Duration::days(1), 90);
        let none = LineageMeta::default();
        let backing_off = failing(2, now);
        let mut broken = plan(&["a.test", "www.a.test"], false);
        broken.error = Some("a.test: no port-80 block".into());
        let ab = plan(&["a.test", "www.a.test"], false);
        let ab_named = plan(&["a.test", "www.a.test"], true);
        let facts = |meta, cert, pending| Facts {
            meta,
            cert,
            pending,
            unfinished: false,
        };
        let rows: Vec<(&str, &Plan, Facts<'_>, Verdict)> = vec![
            (
                "no server block the CA can reach",
                &broken,
                facts(&none, None, false),
                Verdict::Skip("a.test: no port-80 block".into()),
            ),
            (
                "never issued",
                &ab,
                facts(&none, None, false),
                Verdict::Order,
            ),
            (
                "issued, current",
                &ab,
                facts(&none, Some(&fresh), false),
                Verdict::Current,
            ),
            (
                "a third of its life left",
                &ab,
                facts(&none, Some(&old), false),
                Verdict::Order,
            ),
            (
                "the block's names changed",
                &ab,
                facts(&none, Some(&other_names), false),
                Verdict::Order,
            ),
            (
                "issued earlier, not installed",
                &ab,
                facts(&backing_off, Some(&old), true),
                Verdict::Install,
            ),
            (
                "current, but another node set out to renew it and died",
                &ab,
                Facts {
                    unfinished: true,
                    ..facts(&none, Some(&fresh), false)
                },
                Verdict::Order,
            ),
            (
                "named while backing off",
                &ab_named,
                facts(&backing_off, None, false),
                Verdict::Order,
            ),
        ];
        for (why, plan, facts, want) in rows {
            assert_eq!(triage(plan, facts, now), want, "{why}");
        }
        match triage(&ab, facts(&backing_off, None, false), now) {
            Verdict::Backoff { until, reason } => {
                assert!(until > now, "backoff ends in the future");
                assert!(
                    reason.starts_with("2 failures in a row; last: connection refused"),
                    "{reason}"
                );
            }
            other => panic!("a failing name backs off, got {other:?}"),
        }
    }
}
