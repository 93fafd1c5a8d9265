//! One order can prove its names in different ways: wildcards by dns-01, the rest by http-01
//! through this host's nginx or a WebDAV server, or any name by dns-01 when the operator says
//! so. [`Router`] is the solver for such an order: it tells the ACME client which challenge
//! type each identifier takes and hands each challenge to the solver for its [`Method`].

use std::collections::HashMap;

use serde::Serialize;

use super::dav::DavSolver;
use super::dns::DnsSolver;
use super::preflight::PreflightSolver;
use crate::acme::{ChallengeSolver, ChallengeType, Identifier, PendingChallenge, SolverError};

/// How a name is proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// http-01: a token in the directory this host's nginx serves, checked through nginx.
    Webroot,
    /// http-01: a token put on a WebDAV server.
    Dav,
    /// dns-01 through the configured DNS provider.
    Dns,
}

impl Method {
    /// The ACME challenge type.
    pub fn challenge_type(self) -> ChallengeType {
        match self {
            Method::Webroot | Method::Dav => ChallengeType::Http01,
            Method::Dns => ChallengeType::Dns01,
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Webroot => "http-01",
            Method::Dav => "http-01 (webdav)",
            Method::Dns => "dns-01",
        })
    }
}

const HTTP01: &[ChallengeType] = &[ChallengeType::Http01];
const DNS01: &[ChallengeType] = &[ChallengeType::Dns01];
const NONE: &[ChallengeType] = &[];

/// The solver of an order whose names take different methods.
#[derive(Debug, Default)]
pub struct Router<'a> {
    /// Each name's method (wildcards as `*.name`).
    pub methods: HashMap<String, Method>,
    pub webroot: Option<PreflightSolver>,
    pub dav: Option<&'a DavSolver>,
    pub dns: Option<DnsSolver<'a>>,
}

impl Router<'_> {
    fn method(&self, identifier: &Identifier, wildcard: bool) -> Option<Method> {
        let value = identifier.value.to_ascii_lowercase();
        let key = if wildcard && !value.starts_with("*.") {
            format!("*.{value}")
        } else {
            value
        };
        self.methods.get(&key).copied()
    }

    fn missing(ch: &PendingChallenge, what: &str) -> SolverError {
        format!("no {what} solver for {}", ch.identifier.value).into()
    }
}

impl ChallengeSolver for Router<'_> {
    fn challenge_types(&self) -> &[ChallengeType] {
        HTTP01
    }

    fn challenge_types_for(&self, identifier: &Identifier, wildcard: bool) -> &[ChallengeType] {
        match self.method(identifier, wildcard) {
            Some(Method::Webroot | Method::Dav) => HTTP01,
            Some(Method::Dns) => DNS01,
            None => NONE,
        }
    }

    async fn fulfill(&self, ch: &PendingChallenge) -> Result<(), SolverError> {
        match self.method(&ch.identifier, ch.wildcard) {
            Some(Method::Webroot) => match &self.webroot {
                Some(s) => s.fulfill(ch).await,
                None => Err(Self::missing(ch, "http-01")),
            },
            Some(Method::Dav) => match self.dav {
                Some(s) => s.fulfill(ch).await,
                None => Err(Self::missing(ch, "WebDAV")),
            },
            Some(Method::Dns) => match &self.dns {
                Some(s) => s.fulfill(ch).await,
                None => Err(Self::missing(ch, "dns-01")),
            },
            None => Err(Self::missing(ch, "challenge")),
        }
    }

    async fn clear(&self, ch: &PendingChallenge) -> Result<(), SolverError> {
        match self.method(&ch.identifier, ch.wildcard) {
            Some(Method::Webroot) => match &self.webroot {
                Some(s) => s.clear(ch).await,
                None => Ok(()),
            },
            Some(Method::Dav) => match self.dav {
                Some(s) => s.clear(ch).await,
                None => Ok(()),
            },
            Some(Method::Dns) => match &self.dns {
                Some(s) => s.clear(ch).await,
                None => Ok(()),
            },
            None => Ok(()),
        }
    }
}
