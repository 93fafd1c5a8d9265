//! Errors of the ACME client. The CA's own words (problem `type` and `detail`, with subproblems)
//! are kept verbatim and shown to the user; each variant names the URL or identifier involved.

use std::time::Duration;

use super::types::Problem;

/// Everything that can go wrong while talking to an ACME CA.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The CA answered with a problem document.
    #[error("{url}: {problem}")]
    Problem {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// The problem document.
        problem: Box<Problem>,
    },
    /// `urn:ietf:params:acme:error:rateLimited`, or HTTP 429/503 whose Retry-After was too far away.
    #[error("{url}: rate limited: {problem}{}", retry_after_text(*.retry_after))]
    RateLimited {
        /// The URL.
        url: String,
        /// The problem document.
        problem: Box<Problem>,
        /// The Retry-After the server sent, when it sent one.
        retry_after: Option<Duration>,
    },
    /// The CA kept rejecting our nonces.
    #[error("{url}: the CA rejected {attempts} nonces in a row: {problem}")]
    BadNonce {
        /// The URL.
        url: String,
        /// How many nonces were rejected.
        attempts: u32,
        /// The problem document.
        problem: Box<Problem>,
    },
    /// The request never got an HTTP answer (DNS, TCP, TLS, timeout).
    #[error("{url}: request failed: {message}")]
    Transport {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// An HTTP status the protocol does not allow here, without a problem document.
    #[error("{url}: unexpected HTTP status {status}: {body}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// The response body.
        body: String,
    },
    /// A response body that is not the JSON object expected.
    #[error("{url}: malformed response: {message}")]
    Malformed {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A response body over its size cap.
    #[error("{url}: response body is larger than {limit} bytes; refusing to read more")]
    TooLarge {
        /// The URL.
        url: String,
        /// The size cap in bytes.
        limit: usize,
    },
    /// A URL handed to the client (an order URL kept elsewhere) that is not on the CA's
    /// origin: nothing signed is sent there.
    #[error("{url} is not on the CA's origin ({directory}); refusing to send it a signed request")]
    ForeignUrl {
        /// The URL.
        url: String,
        /// The CA's directory URL.
        directory: String,
    },
    /// Something took longer than its deadline.
    #[error("timed out after {after:?} while {what}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// The deadline.
        after: Duration,
    },
    /// A challenge failed validation at the CA.
    #[error("authorization for {identifier} failed: {problem}")]
    AuthorizationFailed {
        /// The identifier.
        identifier: String,
        /// The problem document.
        problem: Box<Problem>,
    },
    /// The order became invalid.
    #[error("order {url} is invalid{}", problem_text(.problem.as_deref()))]
    OrderInvalid {
        /// The URL.
        url: String,
        /// The problem document.
        problem: Option<Box<Problem>>,
    },
    /// The challenge solver could not provision or found a problem before validation.
    #[error("{identifier}: {message}")]
    Solver {
        /// The identifier.
        identifier: String,
        /// What went wrong.
        message: String,
    },
    /// The CA offered no challenge type the solver can fulfil.
    #[error("{identifier}: no supported challenge (offered: {offered})")]
    NoSupportedChallenge {
        /// The identifier.
        identifier: String,
        /// The challenge types offered.
        offered: String,
    },
    /// Key parsing, generation or signing.
    #[error("key: {0}")]
    Key(String),
    /// The certificate the CA issued does not match the order, or its chain does not hold
    /// together: it is not installed.
    #[error("refusing the certificate the CA issued: {0}")]
    BadIssuance(String),
    /// Certificate or CSR parsing.
    #[error("certificate: {0}")]
    Certificate(String),
    /// TLS configuration for talking to the CA (bad --ca-file, ...).
    #[error("TLS setup: {0}")]
    Tls(String),
    /// Account state that cannot be used.
    #[error("account state: {0}")]
    State(String),
}

fn retry_after_text(d: Option<Duration>) -> String {
    d.map(|d| format!(" (retry after {}s)", d.as_secs()))
        .unwrap_or_default()
}

fn problem_text(p: Option<&Problem>) -> String {
    p.map(|p| format!(": {p}")).unwrap_or_default()
}

impl Error {
    /// The CA's problem document, when this error carries one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Problem { problem, .. }
            | Error::RateLimited { problem, .. }
            | Error::BadNonce { problem, .. }
            | Error::AuthorizationFailed { problem, .. } => Some(problem),
            Error::OrderInvalid { problem, .. } => problem.as_deref(),
            _ => None,
        }
    }

    /// True when the CA's problem type is `urn:ietf:params:acme:error:NAME`.
    pub fn is_acme(&self, name: &str) -> bool {
        self.problem().is_some_and(|p| p.is(name))
    }

    /// True when the error says the CA is not working rather than anything about the order:
    /// no HTTP answer (connection, TLS, request timeout), a deadline passed waiting for it, a
    /// 5xx status or `serverInternal`, nonces it keeps rejecting, answers it cannot have meant.
    /// Another CA may issue meanwhile.
    pub fn is_outage(&self) -> bool {
        match self {
            Error::Transport { .. }
            | Error::Timeout { .. }
            | Error::BadNonce { .. }
            | Error::Malformed { .. } => true,
            Error::Status { status, .. } => *status >= 500,
            Error::Problem {
                status, problem, ..
            } => *status >= 500 || problem.is("serverInternal"),
            _ => false,
        }
    }
}
