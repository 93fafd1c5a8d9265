//! Notifications (`[notify]`): someone is told when a name fails or is refused (once per
//! failure streak, and again when it recovers) and when the certificate nginx actually serves
//! for a managed name expires within `notify_days`. Nothing is sent while all is well.
//!
//! Which events a run gives is a pure function of the run's outcomes, what nginx serves and
//! the memory of earlier runs (`notify.json` in the state directory); sending goes to a
//! webhook (a JSON POST) and/or an address through a sendmail-compatible program. A notifier
//! that fails is logged and never fails the run.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::outcome::{FailureKind, Outcome, Status};
use super::settings::NotifyConfig;

/// The memory of what was told, in the state directory.
pub const MEMORY_FILE: &str = "notify.json";
/// Upper bound for one webhook POST.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(15);
/// Upper bound for the sendmail program to take one message.
pub const SENDMAIL_TIMEOUT: Duration = Duration::from_secs(30);

/// What happened to a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// It failed (the first failure of a streak).
    Failed,
    /// It was refused before or by the CA (CAA, the public-address preflight, a failed
    /// validation): a change on the operator's side is needed.
    Refused,
    /// It works again after a streak of failures.
    Recovered,
    /// The certificate nginx serves for it expires soon.
    Expiring,
}

/// The certificate nginx serves for a name (from a TLS handshake with its SNI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Served {
    pub serial: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// The lineage's (primary) name.
    pub name: String,
    pub names: Vec<String>,
    pub status: EventKind,
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt: Option<OffsetDateTime>,
    /// What nginx serves for the name now, if anything.
    pub certificate: Option<Served>,
}

/// What earlier runs told, per name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// Names in a failure streak that was reported.
    #[serde(default)]
    pub failing: std::collections::BTreeSet<String>,
    /// Per name, the serial of the served certificate whose expiry was reported.
    #[serde(default)]
    pub expiry_reported: BTreeMap<String, String>,
}

impl Memory {
    /// Reads the memory (none yet, or unreadable: empty, so an event is sent again rather
    /// than never).
    pub fn load(state_dir: &Path) -> Memory {
        crate::fsutil::read_regular_limited(&state_dir.join(MEMORY_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Saves it atomically.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::fsutil::write_atomic(&state_dir.join(MEMORY_FILE), &json, 0o600)
    }
}

/// The events of a run: a failure starts a streak (one event), success after a streak ends it
/// (one event), a served certificate within `days` of its expiry is reported once per serial.
/// Skipped names (excluded, left alone, ordered by another node) change nothing.
pub fn events(
    memory: &mut Memory,
    outcomes: &[Outcome],
    served: &BTreeMap<String, Served>,
    now: OffsetDateTime,
    days: u32,
) -> Vec<Event> {
    let mut out = Vec::new();
    for o in outcomes {
        let certificate = served.get(&o.name).cloned();
        let event = |status, reason: Option<String>| Event {
            name: o.name.clone(),
            names: o.names.clone(),
            status,
            reason,
            next_attempt: o.next_renewal,
            certificate: certificate.clone(),
        };
        if o.failed() {
            if memory.failing.insert(o.name.clone()) {
                let refused = o
                    .error
                    .as_ref()
                    .is_some_and(|e| e.kind == FailureKind::Refused);
                let reason = o
                    .error
                    .as_ref()
                    .map(|e| e.message.clone())
                    .or(o.reason.clone());
                let kind = if refused {
                    EventKind::Refused
                } else {
                    EventKind::Failed
                };
                out.push(event(kind, reason));
            }
        } else if o.status != Status::Skipped
            && o.status != Status::Backoff
            && memory.failing.remove(&o.name)
        {
            out.push(event(
                EventKind::Recovered,
                Some(format!("{} again", o.status.as_str())),
            ));
        }
        if let Some(c) = &certificate {
            let left = c.not_after - now;
            if left < time::Duration::days(days.into()) {
                if memory.expiry_reported.get(&o.name) != Some(&c.serial) {
                    memory
                        .expiry_reported
                        .insert(o.name.clone(), c.serial.clone());
                    let reason = if left.is_negative() {
                        "the certificate nginx serves has expired".to_owned()
                    } else {
                        format!(
                            "the certificate nginx serves expires in {} day(s) (notify_days {days})",
                            left.whole_days()
                        )
                    };
                    out.push(event(EventKind::Expiring, Some(reason)));
                }
            } else {
                memory.expiry_reported.remove(&o.name);
            }
        }
    }
    out
}

/// Whether `text` looks like one email address (no spaces, no header-breaking characters).
pub fn is_address(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && text
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>' | ',' | ';' | '"'))
}

/// Why a notification was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("webhook {url}: {message}")]
    Webhook { url: String, message: String },
    #[error("{}: {message}", program.display())]
    Sendmail { program: PathBuf, message: String },
}

/// Sends the events; each failure is logged, none fails the run.
pub async fn send(config: &NotifyConfig, host: &str, events: &[Event]) {
    for e in events {
        if let Some(url) = &config.webhook {
            match post(url, host, e).await {
                Ok(()) => tracing::info!("notified {url}: {} {:?}", e.name, e.status),
                Err(err) => tracing::warn!("notification not delivered: {err}"),
            }
        }
        if let Some(to) = &config.email {
            match mail(&config.sendmail, to, host, e).await {
                Ok(()) => tracing::info!("mailed {to}: {} {:?}", e.name, e.status),
                Err(err) => tracing::warn!("notification not delivered: {err}"),
            }
        }
    }
}

async fn post(url: &str, host: &str, e: &Event) -> Result<(), NotifyError> {
    let err = |message: String| NotifyError::Webhook {
        url: url.to_owned(),
        message,
    };
    let client = crate::acme::net::client(&crate::acme::net::Profile::new(WEBHOOK_TIMEOUT))
        .map_err(|x| err(x.to_string()))?;
    let mut body = serde_json::to_value(e).map_err(|x| err(x.to_string()))?;
    body["host"] = serde_json::Value::String(host.to_owned());
    let resp = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|x| err(super::outcome::chain_text(&x)))?;
    if !resp.status().is_success() {
        return Err(err(format!("answered {}", resp.status())));
    }
    Ok(())
}

/// The message for an event: headers (To, Subject, Content-Type), a blank line, the body.
pub fn message(to: &str, host: &str, e: &Event) -> String {
    let what = match e.status {
        EventKind::Failed => "failed",
        EventKind::Refused => "was refused",
        EventKind::Recovered => "recovered",
        EventKind::Expiring => "serves a certificate that expires soon",
    };
    let mut body = format!(
        "To: {to}\nSubject: acme-nginx on {}: {} {what}\nContent-Type: text/plain; charset=utf-8\nAuto-Submitted: auto-generated\n\n",
        crate::acme::escape_controls(host),
        crate::acme::escape_controls(&e.name)
    );
    body += &format!(
        "names: {}\n",
        crate::acme::escape_controls(&e.names.join(" "))
    );
    if let Some(r) = &e.reason {
        body += &format!("why: {}\n", crate::acme::escape_controls(r));
    }
    if let Some(t) = e.next_attempt {
        body += &format!("next attempt: {t}\n");
    }
    match &e.certificate {
        Some(c) => {
            body += &format!(
                "nginx serves: serial {}, valid until {}\n",
                c.serial, c.not_after
            )
        }
        None => body += "nginx serves: no certificate for it\n",
    }
    body
}

async fn mail(program: &Path, to: &str, host: &str, e: &Event) -> Result<(), NotifyError> {
    let err = |message: String| NotifyError::Sendmail {
        program: program.to_path_buf(),
        message,
    };
    let text = message(to, host, e);
    let program = program.to_path_buf();
    let run =
        tokio::task::spawn_blocking(move || -> Result<std::process::ExitStatus, NotifyError> {
            let err = |message: String| NotifyError::Sendmail {
                program: program.clone(),
                message,
            };
            let mut child = std::process::Command::new(&program)
                .args(["-t", "-i"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|x| err(format!("cannot run it: {x}")))?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin
                    .write_all(text.as_bytes())
                    .map_err(|x| err(format!("writing the message: {x}")))?;
            }
            child.wait().map_err(|x| err(x.to_string()))
        });
    match tokio::time::timeout(SENDMAIL_TIMEOUT, run).await {
        Ok(Ok(Ok(status))) if status.success() => Ok(()),
        Ok(Ok(Ok(status))) => Err(err(format!("exited with {status}"))),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(j)) => Err(err(j.to_string())),
        Err(_) => Err(err(format!("took longer than {SENDMAIL_TIMEOUT:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::outcome::Failure;

    fn t(days: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap() + time::Duration::days(days)
    }

    fn outcome(status: Status, error: Option<Failure>) -> Outcome {
        let mut o = Outcome::new("a.test", &["a.test".into()], status);
        o.error = error;
        o
    }

    /// A streak is told once at its start and once at its end; a refusal says so; skipped
    /// names change nothing.
    #[test]
    fn a_failure_streak_is_told_once_and_its_end_once() {
        let mut m = Memory::default();
        let none = BTreeMap::new();
        let failed = outcome(Status::Failed, Some(Failure::transient("CA down")));
        let kinds = |m: &mut Memory, o: &Outcome| {
            events(m, std::slice::from_ref(o), &none, t(0), 14)
                .into_iter()
                .map(|e| (e.status, e.reason))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            kinds(&mut m, &failed),
            vec![(EventKind::Failed, Some("CA down".into()))]
        );
        assert_eq!(kinds(&mut m, &failed), vec![], "same streak");
        assert_eq!(kinds(&mut m, &outcome(Status::Skipped, None)), vec![]);
        assert_eq!(
            kinds(&mut m, &outcome(Status::Renewed, None)),
            vec![(EventKind::Recovered, Some("renewed again".into()))]
        );
        assert_eq!(kinds(&mut m, &outcome(Status::UpToDate, None)), vec![]);
        let mut refused = Failure::transient("CAA forbids");
        refused.kind = FailureKind::Refused;
        assert_eq!(
            kinds(&mut m, &outcome(Status::Failed, Some(refused))),
            vec![(EventKind::Refused, Some("CAA forbids".into()))]
        );
    }

    /// The served certificate is reported once per serial when within `days` of its expiry,
    /// and again for a new serial that is also close.
    #[test]
    fn an_expiring_served_certificate_is_told_once_per_serial() {
        let mut m = Memory::default();
        let ok = [outcome(Status::UpToDate, None)];
        let served = |serial: &str, days: i64| {
            BTreeMap::from([(
                "a.test".to_owned(),
                Served {
                    serial: serial.into(),
                    not_after: t(days),
                },
            )])
        };
        assert!(events(&mut m, &ok, &served("01", 30), t(0), 14).is_empty());
        let e = events(&mut m, &ok, &served("01", 10), t(0), 14);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].status, EventKind::Expiring);
        assert!(e[0].reason.as_ref().unwrap().contains("10 day(s)"), "{e:?}");
        assert!(events(&mut m, &ok, &served("01", 9), t(0), 14).is_empty());
        assert_eq!(events(&mut m, &ok, &served("02", 5), t(0), 14).len(), 1);
        assert!(events(&mut m, &ok, &served("03", 80), t(0), 14).is_empty());
        assert!(m.expiry_reported.is_empty());
    }

    /// A name with newlines cannot add headers to the mail.
    #[test]
    fn the_mail_escapes_what_it_is_given() {
        let e = Event {
            name: "a.test\nBcc: x@y.example".into(),
            names: vec!["a.test".into()],
            status: EventKind::Failed,
            reason: Some("bad\r\nthing".into()),
            next_attempt: None,
            certificate: None,
        };
        let text = message("ops@example.org", "web1", &e);
        assert!(!text.contains("\nBcc:"), "{text}");
        assert!(text.contains("why: bad\\u{d}\\u{a}thing"), "{text}");
        assert!(text.starts_with("To: ops@example.org\nSubject: acme-nginx on web1: "));
        assert!(is_address("ops@example.org"));
        for bad in ["ops", "a b@c.d", "a@b", "x@y.example\nBcc: z@w.example"] {
            assert!(!is_address(bad), "{bad:?}");
        }
    }
}
