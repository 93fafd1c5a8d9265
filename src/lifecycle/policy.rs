//! The renewal policy, in one place: when a certificate is due, and how long a name waits after
//! failures. [`RenewalState`] is what is remembered per lineage (persisted in its
//! `lineage.json`); [`RenewalState::decide`] is a pure function of that state, the live
//! certificate and the time, used by `enroll`, `renew`, `status`, `watch` and the metrics alike.
//!
//! - With an ARI window (RFC 9773) from the CA, a certificate is due at an instant picked at
//!   random inside it, once. A window that starts after the lifetime rule's instant or ends
//!   beyond `notAfter` is not trusted: the lifetime rule applies.
//! - Otherwise it is due with a third of its lifetime left (half for certificates of
//!   [`SHORT_LIVED`] or less).
//! - After failures a name backs off exponentially: from [`BACKOFF_FIRST`] for transient
//!   failures, from [`BACKOFF_REFUSED_FIRST`] when the CA refused the name (each retry would
//!   spend a failed validation), never beyond [`BACKOFF_MAX`], and never before the CA's
//!   `Retry-After`.

use std::time::Duration as StdDuration;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use super::outcome::{Failure, FailureKind};
use crate::acme::CertInfo;

/// First backoff after a transient failure; doubles with each further failure.
pub const BACKOFF_FIRST: Duration = Duration::minutes(5);
/// First backoff after the CA refused a name (Let's Encrypt allows 5 failed validations per
/// name per hour).
pub const BACKOFF_REFUSED_FIRST: Duration = Duration::hours(1);
/// Longest backoff.
pub const BACKOFF_MAX: Duration = Duration::hours(24);
/// Certificates of at most this lifetime renew at half their lifetime instead of a third.
pub const SHORT_LIVED: Duration = Duration::days(10);
/// The shortest wait before asking for renewalInfo again, whatever the CA's Retry-After says.
pub const ARI_RETRY_MIN: StdDuration = StdDuration::from_secs(60);
/// The longest wait before asking for renewalInfo again.
pub const ARI_RETRY_MAX: StdDuration = StdDuration::from_secs(86_400);

/// What is remembered about a lineage's renewals and failures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewalState {
    /// Failures in a row, and the last one.
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub last_error_at: Option<i64>,
    #[serde(default)]
    pub last_error_kind: Option<FailureKind>,
    /// The CA's Retry-After as an instant: no order before it.
    #[serde(default)]
    pub retry_not_before: Option<i64>,
    /// ARI: when to ask again, the window last seen, and the instant picked inside it.
    #[serde(default)]
    pub ari_next_check: Option<i64>,
    #[serde(default)]
    pub ari_window: Option<(i64, i64)>,
    #[serde(default)]
    pub renew_at: Option<i64>,
}

/// Why a certificate is (or will be) due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// There is no usable certificate.
    NoCertificate,
    /// The operator asked for it.
    Forced,
    /// The server blocks name other names than the certificate.
    NamesChanged,
    /// The CA's ARI window.
    Ari {
        start: OffsetDateTime,
        end: OffsetDateTime,
    },
    /// A third (or half) of the lifetime left.
    Lifetime { half: bool, days: i64 },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = |t: &OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        match self {
            Reason::NoCertificate => f.write_str("no usable live certificate"),
            Reason::Forced => f.write_str("forced"),
            Reason::NamesChanged => f.write_str("the server blocks name other names"),
            Reason::Ari { start, end } => write!(f, "ARI window {} to {}", t(start), t(end)),
            Reason::Lifetime { half, days } => write!(
                f,
                "lifetime rule: {} of {days} days left",
                if *half { "half" } else { "one third" }
            ),
        }
    }
}

/// When a certificate is due, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub at: OffsetDateTime,
    pub reason: Reason,
}

/// The policy's answer for one lineage now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Order a new certificate now.
    Due(Reason),
    /// Nothing to do until `at`.
    NotDue { at: OffsetDateTime, reason: Reason },
    /// Failed recently: wait until `until`.
    Backoff {
        until: OffsetDateTime,
        failures: u32,
    },
}

/// The lifetime rule: one third of the lifetime left, half for short-lived certificates.
pub fn lifetime_rule(cert: &CertInfo) -> Schedule {
    let lifetime = cert.lifetime();
    let half = lifetime <= SHORT_LIVED;
    let left = if half { lifetime / 2 } else { lifetime / 3 };
    Schedule {
        at: cert.not_after - left,
        reason: Reason::Lifetime {
            half,
            days: lifetime.whole_days(),
        },
    }
}

/// How long before notAfter renewal must have happened whatever a renewalInfo window says: a
/// tenth of the certificate's lifetime, at least a day.
pub fn ari_margin(cert: &CertInfo) -> Duration {
    let tenth: Duration = cert.lifetime() / 10;
    tenth.max(Duration::DAY)
}

fn at(unix: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(unix).ok()
}

impl RenewalState {
    /// Until when the lineage backs off, if it failed: exponential from the first backoff of
    /// the last failure's kind, capped, and never before the CA's Retry-After.
    pub fn backoff_until(&self) -> Option<OffsetDateTime> {
        if self.failures == 0 {
            return None;
        }
        let last = at(self.last_error_at?)?;
        let first = match self.last_error_kind {
            Some(FailureKind::Refused | FailureKind::RateLimited) => BACKOFF_REFUSED_FIRST,
            _ => BACKOFF_FIRST,
        };
        let factor = 1i32 << self.failures.saturating_sub(1).min(16);
        let until = last + (first * factor).min(BACKOFF_MAX);
        Some(match self.retry_not_before.and_then(at) {
            Some(floor) => until.max(floor),
            None => until,
        })
    }

    /// The ARI schedule, when a window is known and believable for this certificate. The CA
    /// may steer renewal later than our own lifetime rule as well as earlier: a window is
    /// honoured when it starts before notAfter minus [`ari_margin`]; renewal then happens in
    /// the part of the window before that margin (the instant picked in the whole window is
    /// mapped into that part). A window starting past the margin (a CA saying "renew in 2099")
    /// is not believed.
    pub fn ari_schedule(&self, cert: &CertInfo) -> Option<Schedule> {
        let (start, end) = self.ari_window?;
        let (start_t, end_t) = (at(start)?, at(end)?);
        let latest = (cert.not_after - ari_margin(cert)).unix_timestamp();
        if end < start || start > latest {
            return None;
        }
        let usable_end = end.min(latest);
        let picked = self
            .renew_at
            .filter(|t| (start..=end).contains(t))
            .unwrap_or(start);
        // The same relative place in the usable part as in the whole window.
        let picked = if end > start && usable_end < end {
            let scaled = i128::from(picked - start) * i128::from(usable_end - start)
                / i128::from(end - start);
            start + i64::try_from(scaled).unwrap_or(0)
        } else {
            picked
        };
        Some(Schedule {
            at: at(picked)?,
            reason: Reason::Ari {
                start: start_t,
                end: end_t,
            },
        })
    }

    /// When the certificate is due: the ARI window where believable, else the lifetime rule.
    pub fn schedule(&self, cert: &CertInfo) -> Schedule {
        self.ari_schedule(cert)
            .unwrap_or_else(|| lifetime_rule(cert))
    }

    /// The decision for a lineage whose live certificate is `cert` (None: there is none).
    pub fn decide(&self, cert: Option<&CertInfo>, now: OffsetDateTime) -> Decision {
        if let Some(until) = self.backoff_until().filter(|u| *u > now) {
            return Decision::Backoff {
                until,
                failures: self.failures,
            };
        }
        let Some(cert) = cert else {
            return Decision::Due(Reason::NoCertificate);
        };
        let s = self.schedule(cert);
        if s.at <= now || cert.not_after <= now {
            Decision::Due(s.reason)
        } else {
            Decision::NotDue {
                at: s.at,
                reason: s.reason,
            }
        }
    }

    /// When `watch` should look at this lineage again: when it becomes due, when ARI should be
    /// asked again, or when its backoff ends (whichever is first, never before the backoff).
    pub fn next_wakeup(&self, cert: Option<&CertInfo>, now: OffsetDateTime) -> OffsetDateTime {
        let mut t = cert.map_or(now, |c| self.schedule(c).at);
        if let Some(check) = self.ari_next_check.and_then(at) {
            t = t.min(check);
        }
        if let Some(b) = self.backoff_until() {
            t = t.max(b);
        }
        t
    }

    /// Remembers a failure.
    pub fn record_failure(&mut self, failure: &Failure, now: OffsetDateTime) {
        self.failures = self.failures.saturating_add(1);
        self.last_error = Some(failure.message.clone());
        self.last_error_at = Some(now.unix_timestamp());
        self.last_error_kind = Some(failure.kind);
        self.retry_not_before = failure.retry_after.map(|d| {
            now.unix_timestamp()
                .saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        });
    }

    /// Forgets the failure streak (and the CA's Retry-After), keeping the ARI state.
    pub fn forget_failures(&mut self) {
        self.failures = 0;
        self.last_error = None;
        self.last_error_at = None;
        self.last_error_kind = None;
        self.retry_not_before = None;
    }

    /// Forgets failures and the old certificate's ARI state after a new certificate.
    pub fn record_success(&mut self) {
        *self = RenewalState::default();
    }

    /// Remembers a renewalInfo answer: a new window gets a new random instant inside it; the
    /// next check follows the CA's Retry-After, clamped to [`ARI_RETRY_MIN`]..[`ARI_RETRY_MAX`].
    pub fn record_ari(
        &mut self,
        window: (OffsetDateTime, OffsetDateTime),
        retry_after: StdDuration,
        now: OffsetDateTime,
    ) {
        let w = (window.0.unix_timestamp(), window.1.unix_timestamp());
        if self.ari_window != Some(w) {
            self.renew_at = Some(random_in(w.0, w.1));
        }
        self.ari_window = Some(w);
        let wait = retry_after.clamp(ARI_RETRY_MIN, ARI_RETRY_MAX);
        self.ari_next_check = Some(now.unix_timestamp() + wait.as_secs() as i64);
    }

    /// True when renewalInfo should be asked now.
    pub fn ari_check_due(&self, now: OffsetDateTime) -> bool {
        self.ari_next_check
            .is_none_or(|t| t <= now.unix_timestamp())
    }
}

/// A random instant in `[start, end)` (the start when the window is empty or reversed).
pub fn random_in(start: i64, end: i64) -> i64 {
    use rand_core::RngCore;
    if end <= start {
        return start;
    }
    let span = (end - start) as u64;
    start + (rand_core::OsRng.next_u64() % span) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000;

    fn t(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(T0 + secs).unwrap()
    }

    fn cert(days: i64) -> CertInfo {
        CertInfo {
            serial_hex: "01".into(),
            not_before: t(0),
            not_after: t(0) + Duration::days(days),
            names: vec![],
            subject_cn: None,
            issuer_cn: None,
            ari_cert_id: None,
        }
    }

    fn failed(kind: FailureKind, failures: u32, retry_after: Option<i64>) -> RenewalState {
        RenewalState {
            failures,
            last_error: Some("x".into()),
            last_error_at: Some(T0),
            last_error_kind: Some(kind),
            retry_not_before: retry_after.map(|r| T0 + r),
            ..RenewalState::default()
        }
    }

    const DAY: i64 = 86_400;

    /// The decision table: (case, state, certificate lifetime in days, now, expected).
    #[test]
    fn decision_table() {
        let window = |s: i64, e: i64| RenewalState {
            ari_window: Some((T0 + s, T0 + e)),
            renew_at: Some(T0 + s + (e - s) / 2),
            ..RenewalState::default()
        };
        let cases: Vec<(&str, RenewalState, Option<i64>, i64, Decision)> = vec![
            (
                "no certificate",
                RenewalState::default(),
                None,
                0,
                Decision::Due(Reason::NoCertificate),
            ),
            (
                "90 days, day 10, no ARI: lifetime rule at day 60",
                RenewalState::default(),
                Some(90),
                10 * DAY,
                Decision::NotDue {
                    at: t(60 * DAY),
                    reason: Reason::Lifetime {
                        half: false,
                        days: 90,
                    },
                },
            ),
            (
                "90 days, day 61, no ARI: due",
                RenewalState::default(),
                Some(90),
                61 * DAY,
                Decision::Due(Reason::Lifetime {
                    half: false,
                    days: 90,
                }),
            ),
            (
                "6 days: half the lifetime",
                RenewalState::default(),
                Some(6),
                2 * DAY,
                Decision::NotDue {
                    at: t(3 * DAY),
                    reason: Reason::Lifetime {
                        half: true,
                        days: 6,
                    },
                },
            ),
            (
                "10 days is short-lived: due at day 5",
                RenewalState::default(),
                Some(10),
                5 * DAY,
                Decision::Due(Reason::Lifetime {
                    half: true,
                    days: 10,
                }),
            ),
            (
                "ARI window not yet open",
                window(50 * DAY, 52 * DAY),
                Some(90),
                10 * DAY,
                Decision::NotDue {
                    at: t(51 * DAY),
                    reason: Reason::Ari {
                        start: t(50 * DAY),
                        end: t(52 * DAY),
                    },
                },
            ),
            (
                "ARI window open, past the picked instant",
                window(50 * DAY, 52 * DAY),
                Some(90),
                51 * DAY + 1,
                Decision::Due(Reason::Ari {
                    start: t(50 * DAY),
                    end: t(52 * DAY),
                }),
            ),
            (
                "ARI window starting after the lifetime rule: the CA's later window",
                window(70 * DAY, 71 * DAY),
                Some(90),
                61 * DAY,
                Decision::NotDue {
                    at: t(70 * DAY + DAY / 2),
                    reason: Reason::Ari {
                        start: t(70 * DAY),
                        end: t(71 * DAY),
                    },
                },
            ),
            (
                "ARI window ending beyond the margin (9 of 90 days): renewal before the margin",
                window(10 * DAY, 100 * DAY),
                Some(90),
                20 * DAY,
                Decision::NotDue {
                    // The middle of 10..100 mapped into 10..81.
                    at: t(10 * DAY + 71 * DAY / 2),
                    reason: Reason::Ari {
                        start: t(10 * DAY),
                        end: t(100 * DAY),
                    },
                },
            ),
            (
                "acme2certifier: a 10-day certificate's window from 85 % to notAfter",
                window(8 * DAY + DAY / 2, 10 * DAY),
                Some(10),
                8 * DAY,
                Decision::NotDue {
                    // The middle of 8.5..10 days mapped into 8.5..9 (a day's margin).
                    at: t(8 * DAY + 3 * DAY / 4),
                    reason: Reason::Ari {
                        start: t(8 * DAY + DAY / 2),
                        end: t(10 * DAY),
                    },
                },
            ),
            (
                "ARI window starting past the margin (2099): not believed, lifetime rule",
                window(89 * DAY + 1, 46_000 * DAY),
                Some(90),
                61 * DAY,
                Decision::Due(Reason::Lifetime {
                    half: false,
                    days: 90,
                }),
            ),
            (
                "revoked: the CA moves the window into the past",
                window(-DAY, -1),
                Some(90),
                5 * DAY,
                Decision::Due(Reason::Ari {
                    start: t(-DAY),
                    end: t(-1),
                }),
            ),
            (
                "transient failure: 5 minutes",
                failed(FailureKind::Transient, 1, None),
                Some(90),
                60,
                Decision::Backoff {
                    until: t(300),
                    failures: 1,
                },
            ),
            (
                "transient failure: over after 5 minutes, the schedule again",
                failed(FailureKind::Transient, 1, None),
                None,
                301,
                Decision::Due(Reason::NoCertificate),
            ),
            (
                "third transient failure: 20 minutes",
                failed(FailureKind::Transient, 3, None),
                None,
                60,
                Decision::Backoff {
                    until: t(1200),
                    failures: 3,
                },
            ),
            (
                "refused by the CA: an hour",
                failed(FailureKind::Refused, 1, None),
                None,
                60,
                Decision::Backoff {
                    until: t(3600),
                    failures: 1,
                },
            ),
            (
                "many failures: capped at a day",
                failed(FailureKind::Transient, 40, None),
                None,
                60,
                Decision::Backoff {
                    until: t(DAY),
                    failures: 40,
                },
            ),
            (
                "rate limited: Retry-After floors the backoff",
                failed(FailureKind::RateLimited, 1, Some(3 * 3600)),
                None,
                2 * 3600,
                Decision::Backoff {
                    until: t(3 * 3600),
                    failures: 1,
                },
            ),
            (
                "rate limited with a short Retry-After: the backoff still holds",
                failed(FailureKind::RateLimited, 1, Some(10)),
                None,
                60,
                Decision::Backoff {
                    until: t(3600),
                    failures: 1,
                },
            ),
        ];
        for (case, state, days, now, want) in cases {
            let c = days.map(cert);
            assert_eq!(state.decide(c.as_ref(), t(now)), want, "{case}");
        }
    }

    #[test]
    fn failures_and_success_are_recorded() {
        let mut s = RenewalState::default();
        let f = Failure {
            kind: FailureKind::RateLimited,
            message: "slow down".into(),
            retry_after: Some(StdDuration::from_secs(7200)),
            outage: false,
        };
        s.record_failure(&f, t(0));
        s.record_failure(&f, t(0));
        assert_eq!(s.failures, 2);
        assert_eq!(s.retry_not_before, Some(T0 + 7200));
        assert_eq!(s.backoff_until(), Some(t(7200)));
        s.record_success();
        assert_eq!(s, RenewalState::default());
    }

    #[test]
    fn ari_answers_pick_an_instant_and_clamp_retry_after() {
        let mut s = RenewalState::default();
        s.record_ari((t(1000), t(2000)), StdDuration::from_secs(1), t(0));
        let picked = s.renew_at.unwrap();
        assert!((T0 + 1000..T0 + 2000).contains(&picked));
        assert_eq!(s.ari_next_check, Some(T0 + 60), "Retry-After clamped up");
        s.record_ari(
            (t(1000), t(2000)),
            StdDuration::from_secs(30 * 86_400),
            t(0),
        );
        assert_eq!(s.renew_at, Some(picked), "same window, same instant");
        assert_eq!(
            s.ari_next_check,
            Some(T0 + 86_400),
            "Retry-After clamped down"
        );
        assert!(!s.ari_check_due(t(100)));
        assert!(s.ari_check_due(t(86_400)));
        for _ in 0..100 {
            assert!((1000..2000).contains(&random_in(1000, 2000)));
        }
        assert_eq!(random_in(7, 7), 7);
        assert_eq!(random_in(9, 7), 9);
    }

    #[test]
    fn next_wakeup_respects_ari_checks_and_backoff() {
        let c = cert(90);
        let mut s = RenewalState {
            ari_next_check: Some(T0 + 3600),
            ..RenewalState::default()
        };
        assert_eq!(s.next_wakeup(Some(&c), t(0)), t(3600));
        s.ari_next_check = None;
        assert_eq!(s.next_wakeup(Some(&c), t(0)), t(60 * DAY));
        let f = failed(FailureKind::Transient, 1, None);
        assert_eq!(f.next_wakeup(None, t(0)), t(300));
    }
}
