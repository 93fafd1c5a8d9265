//! What happened to each certificate in a run: a typed [`Status`] and, for a failure, a
//! [`Failure`] that keeps its kind and the CA's `Retry-After` so the renewal policy can back off
//! correctly.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use time::OffsetDateTime;

use crate::acme;

/// The state of one certificate after a run (serialized kebab-case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// A first certificate was issued and is served.
    Issued,
    /// A new certificate replaced the live one and is served.
    Renewed,
    /// A current certificate was installed into server blocks that did not use it yet.
    Installed,
    /// Current and served; nothing to do.
    UpToDate,
    /// Not due for renewal yet.
    NotDue,
    /// Waiting after earlier failures.
    Backoff,
    /// This run failed for this certificate.
    Failed,
    /// A dry run obtained it from the staging directory.
    DryRun,
    /// Left alone (e.g. no server block uses the name any more).
    Skipped,
    /// Taken out of its server blocks (and deleted, unless kept).
    Removed,
}

impl Status {
    /// The word shown in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Issued => "issued",
            Status::Renewed => "renewed",
            Status::Installed => "installed",
            Status::UpToDate => "up-to-date",
            Status::NotDue => "not-due",
            Status::Backoff => "backoff",
            Status::Failed => "failed",
            Status::DryRun => "dry-run",
            Status::Skipped => "skipped",
            Status::Removed => "removed",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long a failure should keep a name from being tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// Likely to pass on a retry soon: network, CA server errors, our own preflight, nginx.
    Transient,
    /// The CA refused the name (failed validation, CAA, rejected identifier): retrying soon
    /// spends the CA's failed-validation limit for nothing.
    Refused,
    /// The CA's rate limit; its `Retry-After` floors the backoff.
    RateLimited,
}

/// Why a certificate failed in this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    /// The full message, with its causes.
    pub message: String,
    /// The CA's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
    /// The CA was not working (no answer, 5xx, `serverInternal`, a deadline passed): another
    /// CA may issue the name.
    pub outage: bool,
}

/// Problem types after which a retry needs a change on the operator's side.
const REFUSED_PROBLEMS: &[&str] = &[
    "unauthorized",
    "caa",
    "dns",
    "connection",
    "incorrectResponse",
    "rejectedIdentifier",
    "unsupportedIdentifier",
    "badCSR",
    "tls",
];

impl Failure {
    /// A transient failure with this message.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Transient,
            message: message.into(),
            retry_after: None,
            outage: false,
        }
    }

    /// A failure from the ACME client, classified by the CA's problem type.
    pub fn from_acme(e: &acme::Error) -> Self {
        let message = chain_text(e);
        let (kind, retry_after) = match e {
            acme::Error::RateLimited { retry_after, .. } => {
                (FailureKind::RateLimited, *retry_after)
            }
            acme::Error::AuthorizationFailed { .. } => (FailureKind::Refused, None),
            _ if REFUSED_PROBLEMS.iter().any(|p| e.is_acme(p)) => (FailureKind::Refused, None),
            _ if e.is_acme("rateLimited") => (FailureKind::RateLimited, None),
            _ => (FailureKind::Transient, None),
        };
        Self {
            kind,
            message,
            retry_after,
            outage: e.is_outage(),
        }
    }

    /// A CA that cannot be used at all (its directory does not load, its account cannot be
    /// made): the next CA is tried.
    pub fn outage(message: impl Into<String>) -> Self {
        Self {
            outage: true,
            ..Self::transient(message)
        }
    }
}

/// An error and its causes as one line.
pub fn chain_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

impl Serialize for Failure {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.message)
    }
}

/// What happened to one certificate.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The primary name (the lineage's name).
    pub name: String,
    pub names: Vec<String>,
    pub status: Status,
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_after: Option<OffsetDateTime>,
    pub fullchain: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `file:line` of the server blocks involved.
    pub server_blocks: Vec<String>,
    pub error: Option<Failure>,
    /// For a renewal: the ARI CertID the CA recorded as replaced (RFC 9773).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    /// For renew and status: when the next renewal is due, and why.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub next_renewal: Option<OffsetDateTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Outcome {
    /// An outcome with only a name and a status.
    pub fn new(name: &str, names: &[String], status: Status) -> Self {
        Self {
            name: name.to_owned(),
            names: names.to_vec(),
            status,
            not_after: None,
            fullchain: None,
            key: None,
            server_blocks: Vec::new(),
            error: None,
            replaces: None,
            next_renewal: None,
            reason: None,
        }
    }

    /// True when this certificate failed in this run, or waits in backoff with no certificate
    /// at all: the run's exit code says "some names failed".
    pub fn failed(&self) -> bool {
        self.status == Status::Failed
            || (self.status == Status::Backoff && self.fullchain.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::Problem;

    fn problem(kind: &str) -> Box<Problem> {
        Box::new(
            serde_json::from_value(serde_json::json!({
                "type": format!("urn:ietf:params:acme:error:{kind}"),
                "detail": "x"
            }))
            .unwrap(),
        )
    }

    #[test]
    fn acme_errors_are_classified_for_the_backoff() {
        let rl = acme::Error::RateLimited {
            url: "u".into(),
            problem: problem("rateLimited"),
            retry_after: Some(Duration::from_secs(3600)),
        };
        let f = Failure::from_acme(&rl);
        assert_eq!(f.kind, FailureKind::RateLimited);
        assert_eq!(f.retry_after, Some(Duration::from_secs(3600)));
        let auth = acme::Error::AuthorizationFailed {
            identifier: "a.test".into(),
            problem: problem("unauthorized"),
        };
        assert_eq!(Failure::from_acme(&auth).kind, FailureKind::Refused);
        let caa = acme::Error::OrderInvalid {
            url: "u".into(),
            problem: Some(problem("caa")),
        };
        assert_eq!(Failure::from_acme(&caa).kind, FailureKind::Refused);
        let net = acme::Error::Transport {
            url: "u".into(),
            message: "connection refused".into(),
        };
        assert_eq!(Failure::from_acme(&net).kind, FailureKind::Transient);
        let internal = acme::Error::Problem {
            url: "u".into(),
            status: 500,
            problem: problem("serverInternal"),
        };
        assert_eq!(Failure::from_acme(&internal).kind, FailureKind::Transient);
    }

    #[test]
    fn statuses_serialize_kebab_case() {
        assert_eq!(
            serde_json::to_value(Status::UpToDate).unwrap(),
            serde_json::json!("up-to-date")
        );
        for s in [Status::NotDue, Status::DryRun, Status::Backoff] {
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
    }
}
