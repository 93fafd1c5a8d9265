//! http-01 across a fleet: the answer is published in etcd (on a lease of its own, so it goes
//! if the orderer dies) for every node's agent to write into its own challenge directory, and
//! before the CA is asked, the token is fetched through every node (its own address, the
//! name's Host header), naming the node that does not serve it. The CA validates through the
//! balancer, which may pick any node.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::acme::{PendingChallenge, SolverError};
use crate::nginx::probe::{host_header, http_get};
use crate::store::etcd::Etcd;
use crate::store::seal::FleetKey;

/// The lease of a published answer.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(120);
/// How long every node gets to serve a published token.
pub const FLEET_PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(15);

/// A published http-01 answer (`PREFIX/challenges/TOKEN`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChallengeRecord {
    pub name: String,
    pub token: String,
    pub key_authorization: String,
    /// The node that published it: agents serve it only while that node is the one ordering
    /// the name (its intent, recorded under the lineage's lock).
    pub node: String,
}

impl ChallengeRecord {
    /// Whether an agent may serve this answer: a token in RFC 8555's base64url alphabet and
    /// length, a key authorization that is that token, a dot and a SHA-256 JWK thumbprint
    /// (43 base64url characters), and a name that is a DNS name or an IP address.
    pub fn is_well_formed(&self) -> bool {
        let thumbprint = self
            .key_authorization
            .strip_prefix(self.token.as_str())
            .and_then(|rest| rest.strip_prefix('.'));
        crate::acme::is_valid_token(&self.token)
            && thumbprint.is_some_and(|t| t.len() == 43 && crate::acme::is_valid_token(t))
            && (crate::acme::is_valid_dns_name(&self.name)
                || self.name.parse::<std::net::IpAddr>().is_ok())
    }
}

/// Where the fleet's answers go, and the nodes that must serve them.
#[derive(Debug)]
pub struct FleetCheck {
    pub etcd: Arc<Etcd>,
    /// Answers are sealed with it: an agent serves only what a holder of the fleet key
    /// published.
    key: FleetKey,
    /// `PREFIX/challenges/`.
    pub key_prefix: String,
    /// This node's name, in every answer it publishes.
    pub node: String,
    /// The other nodes: name and `HOST:PORT`.
    pub nodes: Vec<(String, String)>,
    leases: Mutex<HashMap<String, i64>>,
}

impl FleetCheck {
    pub fn new(
        etcd: Arc<Etcd>,
        key: FleetKey,
        key_prefix: String,
        node: String,
        nodes: Vec<(String, String)>,
    ) -> Self {
        Self {
            etcd,
            key,
            key_prefix,
            node,
            nodes,
            leases: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes the answer for the agents.
    pub async fn publish(&self, ch: &PendingChallenge) -> Result<(), SolverError> {
        let lease = self.etcd.grant(CHALLENGE_TTL).await?;
        self.leases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(ch.token.clone(), lease);
        let record = ChallengeRecord {
            name: ch.identifier.value.clone(),
            token: ch.token.clone(),
            key_authorization: ch.key_authorization.clone(),
            node: self.node.clone(),
        };
        let json = serde_json::to_vec(&record)?;
        let key = format!("{}{}", self.key_prefix, ch.token);
        // Versioned by time: the lease ends it anyway.
        let version = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0);
        self.etcd
            .put(
                &key,
                &self.key.seal_record(&key, version, &json),
                Some(lease),
            )
            .await?;
        Ok(())
    }

    /// Withdraws the answer (its lease and key).
    pub async fn withdraw(&self, ch: &PendingChallenge) -> Result<(), SolverError> {
        let lease = self
            .leases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&ch.token);
        if let Some(l) = lease {
            self.etcd.revoke(l).await?;
        }
        Ok(())
    }

    /// Waits until every other node serves the token, or names those that do not.
    pub async fn check_nodes(&self, ch: &PendingChallenge) -> Result<(), SolverError> {
        let path = ch.http_path();
        let host = &ch.identifier.value;
        let deadline = tokio::time::Instant::now() + FLEET_PREFLIGHT_TIMEOUT;
        let mut failing = Vec::new();
        for (node, address) in &self.nodes {
            let addr: Option<SocketAddr> = tokio::net::lookup_host(address.as_str())
                .await
                .ok()
                .and_then(|mut a| a.next());
            let Some(addr) = addr else {
                failing.push(format!("{node} ({address}): the address does not resolve"));
                continue;
            };
            loop {
                let why = match http_get(addr, host, &path).await {
                    Ok(a)
                        if a.status == 200
                            && a.body.trim_ascii() == ch.key_authorization.as_bytes() =>
                    {
                        None
                    }
                    Ok(a) => Some(format!("answered {}", a.status)),
                    Err(e) => Some(e.to_string()),
                };
                let Some(why) = why else {
                    break;
                };
                if tokio::time::Instant::now() >= deadline {
                    failing.push(format!("{node} ({address}): {why}"));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if failing.is_empty() {
            return Ok(());
        }
        Err(format!(
            "not every node of the fleet serves http://{}{path} (the CA may ask any of them): {}",
            host_header(host),
            failing.join("; ")
        )
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_answers_are_served() {
        let token = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA";
        let thumb = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
        let rec = |name: &str, token: &str, ka: &str| ChallengeRecord {
            name: name.into(),
            token: token.into(),
            key_authorization: ka.into(),
            node: "n1".into(),
        };
        assert!(rec("a.test", token, &format!("{token}.{thumb}")).is_well_formed());
        assert!(rec("127.0.0.1", token, &format!("{token}.{thumb}")).is_well_formed());
        for (why, bad) in [
            (
                "another token",
                rec("a.test", token, &format!("x{token}.{thumb}")),
            ),
            ("no thumbprint", rec("a.test", token, token)),
            (
                "short thumbprint",
                rec("a.test", token, &format!("{token}.abc")),
            ),
            (
                "html",
                rec(
                    "a.test",
                    token,
                    &format!("{token}.<script>alert(1)</script>xxxxxxxxxxxxxxxx"),
                ),
            ),
            (
                "path in the token",
                rec(
                    "a.test",
                    "../../x",
                    "../../x.NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs",
                ),
            ),
            ("not a name", rec("a b", token, &format!("{token}.{thumb}"))),
        ] {
            assert!(!bad.is_well_formed(), "{why}");
        }
    }
}
