//! Choosing the CA for a certificate, when several are configured: the order they are tried in
//! (the one that issued the lineage's certificate first, so `replaces` applies), what a name's
//! CAA records (RFC 8659) allow, which failures at one CA let the next one be tried, and the
//! loop that goes through them (`order_at_first_usable`). The loop asks the world through
//! `CaPort` (the CAs, their accounts, DNS, the order itself): the order stage implements it
//! for a run, the tests here with fakes, table-driven, in milliseconds.

use time::OffsetDateTime;

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
pub fn caa_allows(records: &[Caa], identities: &[String], wildcard: bool) -> Result<(), CaaDenial> {
    const KNOWN: &[&str] = &["issue", "issuewild", "iodef", "issuemail", "issuevmc"];
    if let Some(c) = records
        .iter()
        .find(|c| c.critical && !KNOWN.iter().any(|k| c.tag.eq_ignore_ascii_case(k)))
    {
        return Err(CaaDenial(format!("{c} (an unknown critical property)")));
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
        Err(CaaDenial(
            relevant
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ))
    }
}

/// A CAA lookup that could not be made, and why (the CA then checks the records itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CaaLookupFailed(pub String);

/// The CAA record(s) that keep a CA from issuing for a name, as they read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CaaDenial(pub String);

/// A name whose CAA records do not let a CA issue: where the records are and which decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the CAA records of {name} (at {at}) do not allow it: {denial} (its CAA identities: {})", identities.join(", "))]
pub struct CaaRefusal {
    pub name: String,
    pub at: String,
    pub denial: CaaDenial,
    pub identities: Vec<String>,
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

/// What a CA's directory tells the loop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaFacts {
    /// Its CAA identities (see [`identities`]); empty: unknown.
    pub identities: Vec<String>,
    /// It offers the short-lived profile IP address certificates need.
    pub ip_profile: bool,
}

/// What choosing a CA asks of the world.
pub(crate) trait CaPort {
    /// What an order gives back.
    type Issued;
    /// Why a CA is not asked again in this run, if it was found not working.
    fn down(&self, directory: &str) -> Option<String>;
    /// Remembers that a CA is not working, for the rest of the run.
    fn mark_down(&self, directory: &str, why: String);
    /// Opens a CA (its directory, the account there); a failure with `outage` set when it
    /// does not answer.
    async fn open(&self, directory: &str) -> Result<CaFacts, Failure>;
    /// The relevant CAA record set of a name and where it was found (`None`: no records);
    /// `Err`: the lookup failed, why.
    async fn caa(&self, name: &str) -> Result<Option<(String, Vec<Caa>)>, CaaLookupFailed>;
    /// Orders the certificate at a CA, with ARI's `replaces` when `replaces` (the issuer).
    async fn order(&self, directory: &str, replaces: bool) -> Result<Self::Issued, Failure>;
}

/// The certificate a loop orders.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wanted<'a> {
    pub lineage: &'a str,
    pub names: &'a [String],
    pub ip_literal: bool,
    /// The configured CA that issued the live certificate.
    pub issued_by: Option<&'a str>,
    /// The live certificate's expiry (a rate limit before it is waited for).
    pub deadline: Option<OffsetDateTime>,
}

/// Orders at the first usable CA of `directories` (preferred first; the issuer of the live
/// certificate before all): one that is not down, opens, offers what the certificate needs,
/// is allowed by every name's CAA records, and issues. A failure that would fail elsewhere too
/// (a refused validation, a rate limit the renewal can wait out) ends the loop. Returns what
/// was issued and where; a failure says why each CA was passed over.
pub(crate) async fn order_at_first_usable<P: CaPort>(
    port: &P,
    directories: &[&str],
    w: &Wanted<'_>,
    now: OffsetDateTime,
) -> Result<(P::Issued, String), Failure> {
    let several = directories.len() > 1;
    // Why each CA passed over was not used, for the message when none could be.
    let mut passed: Vec<String> = Vec::new();
    let mut last: Option<Failure> = None;
    let mut all_refused = true;
    for directory in candidates(directories.iter().copied(), w.issued_by) {
        if let Some(why) = port.down(&directory) {
            passed.push(format!("{directory}: not working in this run ({why})"));
            all_refused = false;
            continue;
        }
        let facts = match port.open(&directory).await {
            Ok(f) => f,
            Err(f) => {
                if f.outage {
                    port.mark_down(&directory, f.message.clone());
                }
                passed.push(format!("{directory}: {}", f.message));
                all_refused = false;
                last = Some(f);
                continue;
            }
        };
        if w.ip_literal && !facts.ip_profile {
            passed.push(format!(
                "{directory}: offers no \"{}\" profile for IP addresses",
                super::super::plan::IP_PROFILE
            ));
            all_refused = false;
            continue;
        }
        if let Err(why) = caa_check(port, w.names, &facts.identities).await {
            tracing::warn!("{}: not ordered at {directory}: {why}", w.lineage);
            passed.push(format!("{directory}: {why}"));
            continue;
        }
        all_refused = false;
        if !passed.is_empty() {
            tracing::warn!(
                "{}: ordering at {directory}, since {}",
                w.lineage,
                passed.join("; ")
            );
        }
        // ARI's `replaces` names a certificate of this CA: never sent to another.
        let replaces = w.issued_by == Some(directory.as_str());
        match port.order(&directory, replaces).await {
            Ok(issued) => return Ok((issued, directory)),
            Err(f) => match falls_over(&f, w.deadline, now) {
                Some(why) if several => {
                    if f.outage {
                        port.mark_down(&directory, f.message.clone());
                    }
                    tracing::warn!(
                        "{}: {directory} cannot issue it now, {why}: {}; the next CA is tried",
                        w.lineage,
                        f.message
                    );
                    passed.push(format!("{directory}: {why}: {}", f.message));
                    last = Some(f);
                }
                _ => return Err(f),
            },
        }
    }
    Err(match last {
        Some(f) if passed.len() == 1 => f,
        last => {
            let mut f = Failure::transient(format!(
                "no configured CA can issue it now: {}",
                passed.join("; ")
            ));
            if all_refused {
                f.kind = FailureKind::Refused;
            } else if let Some(l) = last {
                f.kind = l.kind;
                f.retry_after = l.retry_after;
            }
            f
        }
    })
}

/// Whether the CAA records of every name let a CA with `identities` issue (not checked when
/// its identities are unknown: the CA checks itself; a lookup that fails is logged and left to
/// the CA). `Err` names the name, where the records are, and the records.
async fn caa_check<P: CaPort>(
    port: &P,
    names: &[String],
    identities: &[String],
) -> Result<(), CaaRefusal> {
    if identities.is_empty() {
        return Ok(());
    }
    for name in names
        .iter()
        .filter(|n| n.parse::<std::net::IpAddr>().is_err())
    {
        match port.caa(name).await {
            Ok(None) => {}
            Ok(Some((at, records))) => {
                if let Err(denial) = caa_allows(&records, identities, name.starts_with("*.")) {
                    return Err(CaaRefusal {
                        name: name.clone(),
                        at: at.to_string(),
                        denial,
                        identities: identities.to_vec(),
                    });
                }
            }
            Err(e) => tracing::warn!(
                "{name}: its CAA records cannot be looked up ({e}); the CA checks them"
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// What a fake CA does when opened and asked to order.
    #[derive(Clone)]
    struct FakeCa {
        open: Result<CaFacts, Failure>,
        /// One result per order, in turn (the last repeats).
        orders: Vec<Result<(), Failure>>,
    }

    /// CAs and DNS as the loop sees them, recording what it was asked.
    #[derive(Default)]
    struct Fake {
        cas: BTreeMap<String, FakeCa>,
        caa: BTreeMap<String, Result<Vec<Caa>, String>>,
        down: RefCell<BTreeMap<String, String>>,
        asked: RefCell<Vec<String>>,
    }

    impl CaPort for Fake {
        type Issued = String;

        fn down(&self, directory: &str) -> Option<String> {
            self.down.borrow().get(directory).cloned()
        }

        fn mark_down(&self, directory: &str, why: String) {
            self.down.borrow_mut().insert(directory.to_owned(), why);
        }

        async fn open(&self, directory: &str) -> Result<CaFacts, Failure> {
            self.asked.borrow_mut().push(format!("open {directory}"));
            self.cas[directory].open.clone()
        }

        async fn caa(&self, name: &str) -> Result<Option<(String, Vec<Caa>)>, CaaLookupFailed> {
            match self.caa.get(name) {
                None => Ok(None),
                Some(Ok(r)) => Ok(Some((name.to_owned(), r.clone()))),
                Some(Err(e)) => Err(CaaLookupFailed(e.clone())),
            }
        }

        async fn order(&self, directory: &str, replaces: bool) -> Result<String, Failure> {
            let n = self
                .asked
                .borrow()
                .iter()
                .filter(|a| a.starts_with(&format!("order {directory}")))
                .count();
            self.asked.borrow_mut().push(format!(
                "order {directory}{}",
                if replaces { " replaces" } else { "" }
            ));
            let orders = &self.cas[directory].orders;
            orders[n.min(orders.len() - 1)]
                .clone()
                .map(|()| format!("cert from {directory}"))
        }
    }

    fn ca(open: Result<CaFacts, Failure>, orders: Vec<Result<(), Failure>>) -> FakeCa {
        FakeCa { open, orders }
    }

    fn facts(id: &str) -> Result<CaFacts, Failure> {
        Ok(CaFacts {
            identities: vec![id.to_owned()],
            ip_profile: false,
        })
    }

    fn outage() -> Failure {
        Failure::outage("503 Service Unavailable")
    }

    fn kind(kind: FailureKind, retry: Option<u64>) -> Failure {
        Failure {
            kind,
            retry_after: retry.map(std::time::Duration::from_secs),
            ..Failure::transient(format!("{kind:?}"))
        }
    }

    /// One scenario: the CAs (A preferred, then B), the CAA records, the certificate wanted;
    /// what the loop asked, in order, and how it ended.
    struct Case {
        what: &'static str,
        a: FakeCa,
        b: Option<FakeCa>,
        caa: &'static [(&'static str, &'static [(&'static str, &'static str)])],
        issued_by: Option<&'static str>,
        deadline_days: Option<i64>,
        ip: bool,
        asked: &'static [&'static str],
        /// `Ok(directory)`, or `Err((kind, a piece of the message))`.
        ends: Result<&'static str, (FailureKind, &'static str)>,
    }

    /// The loop through the CAs, table-driven against fake CAs and DNS: which CA is asked, in
    /// what order, with `replaces` only at the issuer, and which failures end it.
    #[tokio::test]
    async fn the_first_usable_ca_issues() {
        use FailureKind::*;
        let ok = || ca(facts("a.example"), vec![Ok(())]);
        let b_ok = || ca(facts("b.example"), vec![Ok(())]);
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let cases = [
            Case {
                what: "the preferred CA issues",
                a: ok(),
                b: Some(b_ok()),
                caa: &[],
                issued_by: None,
                deadline_days: None,
                ip: false,
                asked: &["open A", "order A"],
                ends: Ok("A"),
            },
            Case {
                what: "a CA that does not open is passed over and marked down",
                a: ca(Err(outage()), vec![]),
                b: Some(b_ok()),
                caa: &[],
                issued_by: None,
                deadline_days: None,
                ip: false,
                asked: &["open A", "open B", "order B"],
                ends: Ok("B"),
            },
            Case {
                what: "an outage during the order falls over",
                a: ca(facts("a.example"), vec![Err(outage())]),
                b: Some(b_ok()),
                caa: &[],
                issued_by: None,
                deadline_days: None,
                ip: false,
                asked: &["open A", "order A", "open B", "order B"],
                ends: Ok("B"),
            },
            Case {
                what: "a failed validation is not tried at another CA",
                a: ca(facts("a.example"), vec![Err(kind(Refused, None))]),
                b: Some(b_ok()),
                caa: &[],
                issued_by: None,
                deadline_days: None,
                ip: false,
                asked: &["open A", "order A"],
                ends: Err((Refused, "Refused")),
            },
            Case {
                what: "a renewal waits out a rate limit that ends before its deadline",
                a: ca(facts("a.example"), vec![Err(kind(RateLimited, Some(3600)))]),
                b: Some(b_ok()),
                caa: &[],
                issued_by: Some("A"),
                deadline_days: Some(20),
                ip: false,
                asked: &["open A", "order A replaces"],
                ends: Err((RateLimited, "RateLimited")),
            },
            Case {
                what: "a first certificate goes elsewhere when rate limited",
                a: ca(facts("a.example"), vec![Err(kind(RateLimited, Some(3600)))]),
                b: Some(b_ok()),
                caa: &[],
                issued_by: None,
                deadline_days: None,
                ip: false,
                asked: &["open A", "order A", "open B", "order B"],
                ends: Ok("B"),
            },
            Case {
                what: "a renewal goes to its issuer first, with replaces; elsewhere without",
                a: ok(),
                b: Some(ca(facts("b.example"), vec![Err(outage())])),
                caa: &[],
                issued_by: Some("B"),
                deadline_days: Some(20),
                ip: false,
                asked: &["open B", "order B replaces", "open A", "order A"],
                ends: Ok("A"),
            },
            Case {
                what: "CAA passes over a CA it does not name, without an order there",
                a: ok(),
                b: Some(b_ok()),
                caa: &[("x.test", &[("issue", "b.example")])],
                issued_by: None,
                deadline_days: None,
                ip: false,
                asked: &["open A", "open B", "order B"],
                ends: Ok("B"),
            },
            Case {
                what: "CAA allowing no CA fails before any order, as refused",
                a: ok(),
                b: Some(b_ok()),
                caa: &[("x.test", &[("issue", ";")])],
                issued_by: None,
                deadline_days: None,
                ip: false,
                asked: &["open A", "open B"],
                ends: Err((Refused, "no configured CA can issue it now")),
            },
            Case {
                what: "a CA without the IP profile is passed over for an IP address",
                a: ok(),
                b: Some(ca(
                    Ok(CaFacts {
                        identities: vec![],
                        ip_profile: true,
                    }),
                    vec![Ok(())],
                )),
                caa: &[],
                issued_by: None,
                deadline_days: None,
                ip: true,
                asked: &["open A", "open B", "order B"],
                ends: Ok("B"),
            },
            Case {
                what: "one CA: its own failure, not a summary",
                a: ca(facts("a.example"), vec![Err(outage())]),
                b: None,
                caa: &[],
                issued_by: None,
                deadline_days: None,
                ip: false,
                asked: &["open A", "order A"],
                ends: Err((Transient, "503 Service Unavailable")),
            },
            Case {
                what: "every CA down: the summary names each",
                a: ca(Err(outage()), vec![]),
                b: Some(ca(facts("b.example"), vec![Err(outage())])),
                caa: &[],
                issued_by: None,
                deadline_days: None,
                ip: false,
                asked: &["open A", "open B", "order B"],
                ends: Err((
                    Transient,
                    "A: 503 Service Unavailable; B: it is not working",
                )),
            },
        ];
        for c in cases {
            let mut fake = Fake::default();
            fake.cas.insert("A".into(), c.a.clone());
            let mut dirs = vec!["A"];
            if let Some(b) = &c.b {
                fake.cas.insert("B".into(), b.clone());
                dirs.push("B");
            }
            for (name, records) in c.caa {
                let records = records
                    .iter()
                    .map(|(tag, value)| Caa {
                        critical: false,
                        tag: (*tag).into(),
                        value: (*value).into(),
                    })
                    .collect();
                fake.caa.insert((*name).into(), Ok(records));
            }
            let names = vec!["x.test".to_owned()];
            let w = Wanted {
                lineage: "x.test",
                names: &names,
                ip_literal: c.ip,
                issued_by: c.issued_by,
                deadline: c.deadline_days.map(|d| now + time::Duration::days(d)),
            };
            let got = order_at_first_usable(&fake, &dirs, &w, now).await;
            assert_eq!(*fake.asked.borrow(), c.asked, "{}", c.what);
            match (got, c.ends) {
                (Ok((cert, dir)), Ok(want)) => {
                    assert_eq!(dir, want, "{}", c.what);
                    assert_eq!(cert, format!("cert from {want}"), "{}", c.what);
                }
                (Err(f), Err((kind, text))) => {
                    assert_eq!(f.kind, kind, "{}: {}", c.what, f.message);
                    assert!(f.message.contains(text), "{}: {}", c.what, f.message);
                }
                (got, want) => panic!("{}: got {got:?}, want {want:?}", c.what),
            }
        }
    }

    /// A CA found down is not asked again by the next certificate of the run; a CAA lookup
    /// that fails leaves the check to the CA.
    #[tokio::test]
    async fn a_ca_found_down_stays_down_and_a_failed_caa_lookup_orders() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let mut fake = Fake::default();
        fake.cas.insert("A".into(), ca(Err(outage()), vec![]));
        fake.cas
            .insert("B".into(), ca(facts("b.example"), vec![Ok(())]));
        fake.caa.insert("x.test".into(), Err("SERVFAIL".into()));
        let names = vec!["x.test".to_owned()];
        let w = Wanted {
            lineage: "x.test",
            names: &names,
            ip_literal: false,
            issued_by: None,
            deadline: None,
        };
        for _ in 0..2 {
            let (_, dir) = order_at_first_usable(&fake, &["A", "B"], &w, now)
                .await
                .unwrap();
            assert_eq!(dir, "B");
        }
        let opened_a = fake
            .asked
            .borrow()
            .iter()
            .filter(|a| *a == "open A")
            .count();
        assert_eq!(opened_a, 1, "{:?}", fake.asked.borrow());
    }

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
        assert_eq!(why.to_string(), "CAA 0 issue \"sectigo.com\"");
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
