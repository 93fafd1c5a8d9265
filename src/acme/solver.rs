//! The `ChallengeSolver` trait: how an order's challenges get provisioned and cleaned up. The ACME
//! client calls `fulfill` for each challenge before asking the CA to validate it, and `clear` for
//! every fulfilled challenge afterwards, whatever happened in between (validation failure, timeout,
//! another challenge failing).

use std::future::Future;

use super::jws;
use super::types::{ChallengeType, Identifier};

/// The error a solver reports: its own words, shown to the user with the identifier.
pub type SolverError = Box<dyn std::error::Error + Send + Sync>;

/// One challenge the CA wants answered, with everything needed to answer it.
#[derive(Debug, Clone)]
pub struct PendingChallenge {
    /// The identifier being validated (for a wildcard authorization, the base name).
    pub identifier: Identifier,
    /// True when the authorization is for `*.identifier`.
    pub wildcard: bool,
    /// The type.
    pub kind: ChallengeType,
    /// The challenge token, already checked to be base64url (safe as a file name).
    pub token: String,
    /// `token.thumbprint` (RFC 8555 section 8.1).
    pub key_authorization: String,
    /// The challenge URL at the CA.
    pub url: String,
}

impl PendingChallenge {
    /// The value a dns-01 TXT record must hold.
    pub fn dns_txt_value(&self) -> String {
        jws::dns01_digest(&self.key_authorization)
    }

    /// The name of the dns-01 TXT record (`_acme-challenge.NAME.`).
    pub fn dns_record_name(&self) -> String {
        format!(
            "_acme-challenge.{}.",
            self.identifier.value.trim_end_matches('.')
        )
    }

    /// The http-01 URL path (`/.well-known/acme-challenge/TOKEN`).
    pub fn http_path(&self) -> String {
        format!("/.well-known/acme-challenge/{}", self.token)
    }
}

/// Provisions challenge responses.
pub trait ChallengeSolver: Send + Sync {
    /// The challenge types this solver can answer, most preferred first.
    fn challenge_types(&self) -> &[ChallengeType];

    /// The challenge types for one authorization, most preferred first; by default
    /// [`challenge_types`](Self::challenge_types). A solver that answers some identifiers one
    /// way and others another (dns-01 for wildcards, http-01 for the rest) overrides this.
    fn challenge_types_for(&self, _identifier: &Identifier, _wildcard: bool) -> &[ChallengeType] {
        self.challenge_types()
    }

    /// Makes the response available. An error stops the order before the CA is asked to
    /// validate anything, so a solver may check its own work here (a preflight).
    fn fulfill(
        &self,
        challenge: &PendingChallenge,
    ) -> impl Future<Output = Result<(), SolverError>> + Send;

    /// Removes what `fulfill` made. Called once for each challenge `fulfill` was called for, even
    /// when `fulfill` failed or was interrupted, so it must accept finding nothing to remove.
    fn clear(
        &self,
        challenge: &PendingChallenge,
    ) -> impl Future<Output = Result<(), SolverError>> + Send;
}
