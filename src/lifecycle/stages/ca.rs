//! Choosing the CA for a certificate, when several are configured: the order they are tried in
//! (the one that issued the lineage's certificate first, so `replaces` applies), what a name's
//! CAA records (RFC 8659) allow, and which failures at one CA let the next one be tried. Pure
//! decisions, tested in milliseconds; the order stage asks the CAs and DNS.

use super::super::outcome::{Failure, FailureKind};
use crate::challenge::dns::lookup::Caa;

/// The CAs to try for a lineage: the configured one that issued its current certificate
/// first, then the others in their configured order.
pub fn candidates<'a>(
    configured: impl Iterator<Item = &'a str>,
    issued_by: Option<&str>,
) -> Vec<String> {
    let configured: Vec<&str> = configured.collect();
    let mut out: Vec<String> = configured
        .iter()
        .filter(|d| Some(**d) == issued_by)
        .map(|d| (*d).to_owned())
        .collect();
    out.extend(
        configured
            .iter()
            .filter(|d| Some(**d) != issued_by)
            .map(|d| (*d).to_owned()),
    );
    out
}

/// A CA's CAA identities: the ones its directory lists (`meta.caaIdentities`), else the
/// configured ones (`[caa_identities]`), as lowercase domain names without a trailing dot.
/// Empty: unknown (CAA is then left to the CA).
pub fn identities(directory_lists: &[String], configured: Option<&Vec<String>>) -> Vec<String> {
    let from = if directory_lists.is_empty() {
        configured.map(Vec::as_slice).unwrap_or_default()
    } else {
        directory_lists
    };
    from.iter()
        .map(|i| i.trim_end_matches('.').to_ascii_lowercase())
        .collect()
}

/// Whether a name's relevant CAA record set lets a CA with `identities` issue for it (RFC 8659
/// section 4): no records, or no `issue` property (for a wildcard: no `issuewild`, else no
/// `issue`), lets anyone; otherwise one property must name one of the CA's identities. An
/// unknown property marked critical forbids everyone. `Err` holds the deciding record(s).
pub fn caa_allows(records: &[Caa], identities: &[String], wildcard: bool) -> Result<(), String> {
    const KNOWN: &[&str] = &["issue", "issuewild", "iodef", "issuemail", "issuevmc"];
    if let Some(c) = records
        .iter()
        .find(|c| c.critical && !KNOWN.iter().any(|k| c.tag.eq_ignore_ascii_case(k)))
    {
        return Err(format!("{c} (an unknown critical property)"));
    }
    let tagged = |tag: &str| -> Vec<&Caa> {
        records
            .iter()
            .filter(|c| c.tag.eq_ignore_ascii_case(tag))
            .collect()
    };
    let mut relevant = if wildcard {
        tagged("issuewild")
    } else {
        Vec::new()
    };
    if relevant.is_empty() {
        relevant = tagged("issue");
    }
    if relevant.is_empty() {
        return Ok(());
    }
    let allowed = relevant.iter().any(|c| {
        let domain = c.value.split(';').next().unwrap_or("").trim();
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        !domain.is_empty() && identities.contains(&domain)
    });
    if allowed {
        Ok(())
    } else {
        Err(relevant
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", "))
    }
}

/// How long before a certificate's expiry a CA's rate limit still lets the renewal wait for
/// it (rather than go to the next CA).
pub const RATE_LIMIT_MARGIN: time::Duration = time::Duration::days(2);

/// Why a failure at one CA lets the next CA be tried, or `None` when it would fail there too
/// (a failed validation, a refused name: trying elsewhere spends another CA's allowance). A
/// rate limit falls over only past the renewal's deadline (the live certificate's expiry, less
/// [`RATE_LIMIT_MARGIN`]; a name without a certificate has none to wait with): before it, the
/// CA is still usable and the name waits for it (its `Retry-After` floors the backoff).
pub fn falls_over(
    f: &Failure,
    deadline: Option<time::OffsetDateTime>,
    now: time::OffsetDateTime,
) -> Option<String> {
    if f.kind == FailureKind::RateLimited {
        let until = f.retry_after.map(|d| now + d);
        let waits = match (until, deadline) {
            (Some(until), Some(deadline)) => until < deadline - RATE_LIMIT_MARGIN,
            _ => false,
        };
        return (!waits).then(|| match f.retry_after {
            Some(d) => format!(
                "it rate-limits this account (retry after {}s, past the renewal's deadline)",
                d.as_secs()
            ),
            None => "it rate-limits this account".to_owned(),
        });
    }
    f.outage.then(|| "it is not working".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caa(critical: bool, tag: &str, value: &str) -> Caa {
        Caa {
            critical,
            tag: tag.into(),
            value: value.into(),
        }
    }

    #[test]
    fn the_issuing_ca_comes_first_then_the_configured_order() {
        let cas = ["https://a/dir", "https://b/dir", "https://c/dir"];
        assert_eq!(
            candidates(cas.into_iter(), Some("https://b/dir")),
            vec!["https://b/dir", "https://a/dir", "https://c/dir"]
        );
        assert_eq!(
            candidates(cas.into_iter(), Some("https://gone/dir")),
            cas.to_vec()
        );
        assert_eq!(candidates(cas.into_iter(), None), cas.to_vec());
    }

    /// RFC 8659 section 4 as a table: records, identities, wildcard -> allowed.
    #[test]
    fn caa_records_decide_as_rfc_8659_says() {
        let le = vec!["letsencrypt.org".to_owned()];
        let cases: &[(&[Caa], bool, bool)] = &[
            (&[], false, true),
            (&[caa(false, "iodef", "mailto:x@y.example")], false, true),
            (&[caa(false, "issue", "letsencrypt.org")], false, true),
            (&[caa(false, "issue", "LetsEncrypt.org.")], false, true),
            (
                &[caa(
                    false,
                    "issue",
                    "letsencrypt.org; validationmethods=http-01",
                )],
                false,
                true,
            ),
            (&[caa(false, "issue", "sectigo.com")], false, false),
            (&[caa(false, "issue", ";")], false, false),
            (
                &[
                    caa(false, "issue", "sectigo.com"),
                    caa(false, "issue", "letsencrypt.org"),
                ],
                false,
                true,
            ),
            // issuewild governs wildcards when present, and nothing else.
            (
                &[
                    caa(false, "issue", "letsencrypt.org"),
                    caa(false, "issuewild", ";"),
                ],
                true,
                false,
            ),
            (
                &[
                    caa(false, "issue", "letsencrypt.org"),
                    caa(false, "issuewild", ";"),
                ],
                false,
                true,
            ),
            (
                &[
                    caa(false, "issue", "sectigo.com"),
                    caa(false, "issuewild", "letsencrypt.org"),
                ],
                true,
                true,
            ),
            // Without issuewild a wildcard follows issue.
            (&[caa(false, "issue", "sectigo.com")], true, false),
            // Unknown critical properties forbid; unknown others do not.
            (&[caa(true, "tbs", "x")], false, false),
            (&[caa(false, "tbs", "x")], false, true),
        ];
        for (records, wildcard, want) in cases {
            assert_eq!(
                caa_allows(records, &le, *wildcard).is_ok(),
                *want,
                "{records:?} wildcard={wildcard}"
            );
        }
        let why = caa_allows(&[caa(false, "issue", "sectigo.com")], &le, false).unwrap_err();
        assert_eq!(why, "CAA 0 issue \"sectigo.com\"");
    }

    #[test]
    fn identities_come_from_the_directory_else_the_configuration() {
        let conf = vec!["CA.Internal.example.".to_owned()];
        assert_eq!(
            identities(&["LetsEncrypt.org".into()], Some(&conf)),
            ["letsencrypt.org"]
        );
        assert_eq!(identities(&[], Some(&conf)), ["ca.internal.example"]);
        assert!(identities(&[], None).is_empty());
    }

    /// What counts as the CA not working, from the client's errors.
    #[test]
    fn outages_are_told_from_the_ca_errors() {
        use crate::acme::Error;
        let problem = |kind: &str| -> Box<crate::acme::Problem> {
            Box::new(
                serde_json::from_value(serde_json::json!({
                    "type": format!("urn:ietf:params:acme:error:{kind}"),
                    "detail": "x"
                }))
                .unwrap(),
            )
        };
        let outage = |e: Error| Failure::from_acme(&e).outage;
        assert!(outage(Error::Transport {
            url: "u".into(),
            message: "connection refused".into()
        }));
        assert!(outage(Error::Status {
            url: "u".into(),
            status: 503,
            body: String::new()
        }));
        assert!(outage(Error::Problem {
            url: "u".into(),
            status: 500,
            problem: problem("serverInternal")
        }));
        assert!(!outage(Error::Status {
            url: "u".into(),
            status: 404,
            body: String::new()
        }));
        assert!(!outage(Error::Problem {
            url: "u".into(),
            status: 403,
            problem: problem("unauthorized")
        }));
        assert!(!outage(Error::AuthorizationFailed {
            identifier: "a.test".into(),
            problem: problem("connection")
        }));
    }

    #[test]
    fn only_outages_and_rate_limits_past_the_deadline_fall_over() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let day = time::Duration::days(1);
        let mut f = Failure::transient("nginx -t failed");
        assert_eq!(falls_over(&f, None, now), None);
        f.outage = true;
        assert!(falls_over(&f, None, now).is_some());
        let refused = Failure {
            kind: FailureKind::Refused,
            ..Failure::transient("unauthorized")
        };
        assert_eq!(falls_over(&refused, None, now), None);
        let limited = |secs: u64| Failure {
            kind: FailureKind::RateLimited,
            retry_after: Some(std::time::Duration::from_secs(secs)),
            ..Failure::transient("too many")
        };
        // A first certificate has no deadline to wait with.
        assert_eq!(
            falls_over(&limited(60), None, now).as_deref(),
            Some("it rate-limits this account (retry after 60s, past the renewal's deadline)")
        );
        // A renewal with 20 days left waits an hour for its CA, not 19 days.
        assert_eq!(falls_over(&limited(3600), Some(now + day * 20), now), None);
        assert!(falls_over(&limited(19 * 86400), Some(now + day * 20), now).is_some());
        let unbounded = Failure {
            retry_after: None,
            ..limited(0)
        };
        assert!(falls_over(&unbounded, Some(now + day * 20), now).is_some());
    }
}
