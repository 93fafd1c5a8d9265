//! The public-address preflight: before anything is ordered for an http-01 name, its A and
//! AAAA records (at the configured resolver) must lead to this nginx. An address of this host
//! is covered by the loopback preflight; any other address (a NAT, a load balancer, a proxy in
//! front, or an old host a stale record still names) must answer a probe token, written like a
//! challenge token, with the name's Host header on the CA's port. Otherwise the name fails
//! before an order is placed, naming the record, so no failed validation is spent at the CA
//! (CAs try IPv6 first: AAAA records are checked first and named first).

use std::net::{IpAddr, SocketAddr};

use hickory_proto::rr::Name;
use rand_core::{OsRng, RngCore};

use super::dns::lookup::{LookupError, Resolver};
use super::preflight::PreflightSolver;
use crate::acme::{b64, ChallengeType, Identifier, PendingChallenge};
use crate::nginx::probe::http_get;

/// Why a name's public addresses do not lead to this nginx.
#[derive(Debug, thiserror::Error)]
pub enum PublicError {
    #[error("{name} is not a DNS name: {message}")]
    BadName { name: String, message: String },
    #[error("the addresses of {name} cannot be looked up at {resolver}")]
    Lookup {
        name: String,
        resolver: SocketAddr,
        #[source]
        source: LookupError,
    },
    #[error("{name} has no A or AAAA record at {resolver}: the CA could not reach it (set public_preflight = false while its DNS is not public yet)")]
    NoAddress { name: String, resolver: SocketAddr },
    #[error("{name}: its {rtype} record {addr} does not lead to this nginx: http://{name}{path} at {at} {why}; the CA would connect there (fix or remove the record)")]
    Elsewhere {
        name: String,
        rtype: &'static str,
        addr: IpAddr,
        at: SocketAddr,
        path: String,
        why: String,
    },
    #[error("the probe token for {name} cannot be written: {message}")]
    Probe { name: String, message: String },
}

/// The addresses of this host's interfaces (any state).
pub fn interface_addresses() -> Vec<(IpAddr, bool)> {
    nix::ifaddrs::getifaddrs()
        .map(|it| {
            it.filter_map(|i| {
                let ip = i.address.as_ref().and_then(|a| {
                    a.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                })?;
                let up = i.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP);
                Some((ip, up))
            })
            .collect()
        })
        .unwrap_or_default()
}

/// The public-address check of one run: its resolver, the CA's port, the addresses that count
/// as this host (its interfaces, and a fleet's other nodes, which the fleet check covers).
#[derive(Debug, Clone)]
pub struct PublicCheck {
    pub resolver: Resolver,
    pub http_port: u16,
    pub covered: Vec<IpAddr>,
}

impl PublicCheck {
    /// A check whose covered addresses are this host's and `peers'`.
    pub fn new(resolver: Resolver, http_port: u16, peers: &[IpAddr]) -> PublicCheck {
        let mut covered: Vec<IpAddr> = interface_addresses().into_iter().map(|(a, _)| a).collect();
        covered.extend_from_slice(peers);
        PublicCheck {
            resolver,
            http_port,
            covered,
        }
    }

    /// Checks one name; returns the addresses other than this host's that answered the probe.
    pub async fn check(
        &self,
        solver: &PreflightSolver,
        name: &str,
    ) -> Result<Vec<IpAddr>, PublicError> {
        let host = Name::from_ascii(format!("{}.", name.trim_end_matches('.'))).map_err(|e| {
            PublicError::BadName {
                name: name.to_owned(),
                message: e.to_string(),
            }
        })?;
        let mut addrs =
            self.resolver
                .addresses(&host)
                .await
                .map_err(|source| PublicError::Lookup {
                    name: name.to_owned(),
                    resolver: self.resolver.server,
                    source,
                })?;
        if addrs.is_empty() {
            return Err(PublicError::NoAddress {
                name: name.to_owned(),
                resolver: self.resolver.server,
            });
        }
        // IPv6 first, as CAs try it first.
        addrs.sort_by_key(|a| a.is_ipv4());
        addrs.dedup();
        let others: Vec<IpAddr> = addrs
            .into_iter()
            .filter(|a| !a.is_loopback() && !self.covered.contains(a))
            .collect();
        if others.is_empty() {
            return Ok(others);
        }
        let mut probe = probe_challenge(name);
        solver
            .write_probe(&mut probe)
            .map_err(|e| PublicError::Probe {
                name: name.to_owned(),
                message: e.to_string(),
            })?;
        let result = self.fetch_all(name, &probe, &others).await;
        if let Err(e) = solver.remove_probe(&probe) {
            tracing::warn!("the probe token for {name} stays: {e}");
        }
        result.map(|()| others)
    }

    async fn fetch_all(
        &self,
        name: &str,
        probe: &PendingChallenge,
        addrs: &[IpAddr],
    ) -> Result<(), PublicError> {
        let path = probe.http_path();
        for addr in addrs {
            let at = SocketAddr::new(*addr, self.http_port);
            let why = match http_get(at, name, &path).await {
                Ok(a)
                    if a.status == 200
                        && a.body.trim_ascii() == probe.key_authorization.as_bytes() =>
                {
                    continue
                }
                Ok(a) => {
                    let body = String::from_utf8_lossy(&a.body);
                    let body: String = body.chars().take(60).collect();
                    format!(
                        "answered {} {:?} instead of the probe token",
                        a.status,
                        body.trim()
                    )
                }
                Err(e) => format!("could not be fetched: {}", crate::acme::error_chain(&e)),
            };
            return Err(PublicError::Elsewhere {
                name: name.to_owned(),
                rtype: if addr.is_ipv6() { "AAAA" } else { "A" },
                addr: *addr,
                at,
                path,
                why,
            });
        }
        Ok(())
    }
}

/// A challenge-shaped probe: a random token and answer nobody else knows.
fn probe_challenge(name: &str) -> PendingChallenge {
    let mut bytes = [0u8; 24];
    OsRng.fill_bytes(&mut bytes);
    let token = format!("acme-nginx-probe-{}", b64(bytes));
    OsRng.fill_bytes(&mut bytes);
    PendingChallenge {
        identifier: Identifier::from_name(name),
        wildcard: false,
        kind: ChallengeType::Http01,
        key_authorization: format!("{token}.{}", b64(bytes)),
        token,
        url: String::new(),
    }
}
