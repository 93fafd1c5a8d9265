//! dns-01: a TXT record `_acme-challenge.NAME` holding the challenge digest, made through a
//! provider ([`rfc2136`] dynamic updates with TSIG, the [`powerdns`] HTTP API, or a [`hook`]
//! command), at the end of the CNAME chain the name starts (acme-dns style delegation, found by
//! a lookup), in the zone that holds it (found from the SOA, or the provider's zone list). The
//! CA is asked to validate only once every authoritative server of that zone returns the value,
//! asked directly ([`lookup`]), within the propagation deadline. Each record is journaled before
//! it is made, so a killed run's records are removed by the next run, and removed after the
//! validation whatever happened. Several values on one name (a wildcard and its base name)
//! coexist: records are added and removed one value at a time.

pub mod hook;
pub mod lookup;
pub mod powerdns;
pub mod rfc2136;
pub mod tsig;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use hickory_proto::rr::Name;
use serde::{Deserialize, Serialize};

use crate::acme::{ChallengeSolver, ChallengeType, PendingChallenge, SolverError};
use crate::store::Store;
use hook::{DnsHook, HookCallError};
use lookup::{LookupError, NameServer, Resolver};
use powerdns::{ApiError, PowerDns};
use rfc2136::{Rfc2136, UpdateError};
use tsig::{KeyFileError, TsigKey};

/// How long to wait, by default, for every authoritative server to return a new TXT value.
pub const DEFAULT_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(120);
/// The first pause between two rounds of asking the authoritative servers; it doubles up to
/// [`PROPAGATION_POLL_MAX`].
pub const PROPAGATION_POLL_FIRST: Duration = Duration::from_millis(100);
/// The longest pause between two rounds.
pub const PROPAGATION_POLL_MAX: Duration = Duration::from_secs(2);

/// Which provider makes the records, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderConfig {
    /// RFC 2136 updates sent to `server` (`HOST[:PORT]`), signed with the TSIG key in the
    /// BIND-format file `tsig_key` (unsigned without one).
    Rfc2136 {
        server: String,
        tsig_key: Option<PathBuf>,
    },
    /// The PowerDNS HTTP API at `api_url`, with the key in `api_key_file`.
    PowerDns {
        api_url: String,
        api_key_file: PathBuf,
    },
    /// `command add|del NAME VALUE`.
    Hook { command: String },
}

impl ProviderConfig {
    /// The provider's short name (`rfc2136`, `powerdns`, `hook`), as scan shows it.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderConfig::Rfc2136 { .. } => "rfc2136",
            ProviderConfig::PowerDns { .. } => "powerdns",
            ProviderConfig::Hook { .. } => "hook",
        }
    }
}

/// A DNS solver's whole configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    pub provider: ProviderConfig,
    /// The zone to update, when it cannot or should not be looked up.
    pub zone: Option<String>,
    /// Zones a `_acme-challenge` CNAME may point into (an acme-dns style delegation), beside
    /// names whose first label is `_acme-challenge` (lowercase, no trailing dot).
    pub delegation_zones: Vec<String>,
    /// The resolver lookups go to and the port authoritative servers are asked on (the
    /// system's resolver and 53 by default).
    pub resolver: Option<Resolver>,
    pub propagation_timeout: Duration,
}

/// Why a record could not be made, found, or seen.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error("{what}: {message}")]
    Config { what: String, message: String },
    /// A `_acme-challenge` CNAME pointing where root's key must not write.
    #[error("{cname} is a CNAME to {target}, which is neither an _acme-challenge name nor inside a delegation zone ([dns] delegation_zones); no update is sent there")]
    CnameRefused { cname: String, target: String },
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error(transparent)]
    Update(#[from] UpdateError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Hook(#[from] HookCallError),
    #[error("{0:?} is not a DNS name")]
    BadName(String),
    #[error("after {} s, the TXT value for {name} is still missing at {}: {}", after.as_secs(), if lagging.len() == 1 { "an authoritative server of the zone ".to_owned() + zone } else { format!("{} authoritative servers of the zone {zone}", lagging.len()) }, lagging.iter().map(|(ns, why)| format!("{} at {} ({why})", ns.name, ns.addr)).collect::<Vec<_>>().join("; "))]
    Propagation {
        zone: String,
        name: String,
        after: Duration,
        lagging: Vec<(NameServer, String)>,
    },
}

/// One TXT value made for a challenge: journaled before it is made, removed afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxtRecord {
    /// The zone (with its trailing dot).
    pub zone: String,
    /// The record's name (with its trailing dot): `_acme-challenge.NAME.` or the end of the
    /// CNAME chain it starts.
    pub name: String,
    pub value: String,
    /// The identifier validated.
    pub domain: String,
}

enum Provider {
    Rfc2136(Rfc2136),
    PowerDns(PowerDns),
    Hook(DnsHook),
}

/// A configured DNS provider with its resolver.
pub struct Dns {
    provider: Provider,
    config: DnsConfig,
    resolver: Resolver,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns")
            .field("provider", &self.config.provider.kind())
            .field("resolver", &self.resolver)
            .finish()
    }
}

fn name(text: &str) -> Result<Name, DnsError> {
    let mut n = Name::from_ascii(text).map_err(|_| DnsError::BadName(text.to_owned()))?;
    n.set_fqdn(true);
    Ok(n)
}

impl Dns {
    /// Reads what the configuration names (the TSIG key, the API key) and resolves the update
    /// server.
    pub async fn new(config: &DnsConfig) -> Result<Dns, DnsError> {
        let provider = match &config.provider {
            ProviderConfig::Rfc2136 { server, tsig_key } => {
                let addr = match lookup::parse_server(server, lookup::DNS_PORT) {
                    Some(a) => a,
                    None => resolve_host(server).await?,
                };
                let key = tsig_key.as_deref().map(TsigKey::read).transpose()?;
                Provider::Rfc2136(Rfc2136 { server: addr, key })
            }
            ProviderConfig::PowerDns {
                api_url,
                api_key_file,
            } => {
                let key =
                    crate::secret::read_secret(api_key_file).map_err(|e| DnsError::Config {
                        what: "the PowerDNS API key".into(),
                        message: e.to_string(),
                    })?;
                Provider::PowerDns(PowerDns::new(api_url, &key)?)
            }
            ProviderConfig::Hook { command } => Provider::Hook(DnsHook {
                command: command.clone(),
            }),
        };
        Ok(Dns {
            provider,
            resolver: config.resolver.unwrap_or_else(Resolver::system),
            config: config.clone(),
        })
    }

    /// The resolver lookups go to.
    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// Where the TXT value for `domain` goes: `_acme-challenge.DOMAIN.` (or the end of its
    /// CNAME chain) and the zone that holds it.
    pub async fn locate(&self, domain: &str, value: &str) -> Result<TxtRecord, DnsError> {
        let base = name(&format!("_acme-challenge.{}", domain.trim_end_matches('.')))?;
        let target = self.resolver.follow_cname(&base).await?;
        let delegated = target != base;
        if delegated {
            self.check_cname_target(&base, &target)?;
            tracing::info!("{base} is a CNAME: updating {target} instead");
        }
        let zone = match (&self.config.zone, &self.provider) {
            (Some(z), _) => name(z)?,
            (None, Provider::PowerDns(api)) => name(&api.zone_of(&target.to_ascii()).await?)?,
            (None, _) => self.resolver.find_zone(&target).await?,
        };
        if delegated {
            // Whose zone the signed update goes to is asked of that zone's own servers.
            self.resolver.confirm_zone(&zone).await?;
        }
        Ok(TxtRecord {
            zone: zone.to_ascii(),
            name: target.to_ascii(),
            value: value.to_owned(),
            domain: domain.to_owned(),
        })
    }

    /// A `_acme-challenge` CNAME is followed only to a name whose first label is
    /// `_acme-challenge`, or into a delegation zone the operator configured: whoever controls
    /// a name's DNS must not steer root's signed updates at any name the key can change
    /// (`_dmarc`, an SPF apex, a DKIM selector).
    fn check_cname_target(&self, cname: &Name, target: &Name) -> Result<(), DnsError> {
        let t = target.to_ascii().trim_end_matches('.').to_ascii_lowercase();
        let challenge_label = t.split('.').next() == Some("_acme-challenge");
        let inside = self
            .config
            .delegation_zones
            .iter()
            .any(|z| t == *z || t.ends_with(&format!(".{z}")));
        if challenge_label || inside {
            return Ok(());
        }
        Err(DnsError::CnameRefused {
            cname: cname.to_ascii(),
            target: target.to_ascii(),
        })
    }

    /// Makes the record.
    pub async fn add(&self, r: &TxtRecord) -> Result<(), DnsError> {
        self.change(r, true).await
    }

    /// Removes the record (absent is fine).
    pub async fn remove(&self, r: &TxtRecord) -> Result<(), DnsError> {
        self.change(r, false).await
    }

    async fn change(&self, r: &TxtRecord, add: bool) -> Result<(), DnsError> {
        match &self.provider {
            Provider::Rfc2136(u) => {
                let (zone, n) = (name(&r.zone)?, name(&r.name)?);
                if add {
                    u.add(&zone, &n, &r.value).await?;
                } else {
                    u.remove(&zone, &n, &r.value).await?;
                }
            }
            Provider::PowerDns(api) => api.change(&r.zone, &r.name, &r.value, add).await?,
            Provider::Hook(h) => h.call(add, &r.name, &r.value, &r.zone, &r.domain).await?,
        }
        Ok(())
    }

    /// Waits until every authoritative server of the record's zone returns its value.
    pub async fn wait_propagated(&self, r: &TxtRecord) -> Result<(), DnsError> {
        let zone = name(&r.zone)?;
        let n = name(&r.name)?;
        let servers = self.resolver.name_servers(&zone).await?;
        let deadline = tokio::time::Instant::now() + self.config.propagation_timeout;
        let mut pause = PROPAGATION_POLL_FIRST;
        let mut waiting: Vec<(NameServer, String)> = servers
            .into_iter()
            .map(|s| (s, "not asked yet".to_owned()))
            .collect();
        loop {
            let answers = futures_util::future::join_all(
                waiting.iter().map(|(s, _)| lookup::txt_values(s.addr, &n)),
            )
            .await;
            let mut still = Vec::new();
            for ((server, _), answer) in waiting.into_iter().zip(answers) {
                match answer {
                    Ok(values) if values.contains(&r.value) => {}
                    Ok(values) if values.is_empty() => still.push((server, "no TXT record".into())),
                    Ok(values) => still.push((server, format!("{} other value(s)", values.len()))),
                    Err(e) => {
                        let text = e.to_string();
                        let prefix = format!("{}: ", server.addr);
                        let why = text.strip_prefix(&prefix).unwrap_or(&text).to_owned();
                        still.push((server, why));
                    }
                }
            }
            if still.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(DnsError::Propagation {
                    zone: r.zone.clone(),
                    name: r.name.clone(),
                    after: self.config.propagation_timeout,
                    lagging: still,
                });
            }
            waiting = still;
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(PROPAGATION_POLL_MAX);
        }
    }
}

/// The address of an update server given by name (port 53 unless `NAME:PORT`).
async fn resolve_host(server: &str) -> Result<SocketAddr, DnsError> {
    let with_port = if server
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        server.to_owned()
    } else {
        format!("{server}:{}", lookup::DNS_PORT)
    };
    let config = |message: String| DnsError::Config {
        what: format!("the DNS update server {server:?}"),
        message,
    };
    let mut addrs = tokio::net::lookup_host(&with_port)
        .await
        .map_err(|e| config(e.to_string()))?;
    addrs.next().ok_or_else(|| config("has no address".into()))
}

const DNS01: &[ChallengeType] = &[ChallengeType::Dns01];

/// The dns-01 solver: locate, journal, add, wait for every authoritative server; clear removes.
#[derive(Debug)]
pub struct DnsSolver<'a> {
    dns: &'a Dns,
    journal: Option<Store>,
    made: Mutex<HashMap<String, TxtRecord>>,
}

impl<'a> DnsSolver<'a> {
    /// Records are journaled in `journal` (none for a dry run).
    pub fn new(dns: &'a Dns, journal: Option<Store>) -> Self {
        Self {
            dns,
            journal,
            made: Mutex::new(HashMap::new()),
        }
    }

    fn made(&self) -> std::sync::MutexGuard<'_, HashMap<String, TxtRecord>> {
        self.made
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ChallengeSolver for DnsSolver<'_> {
    fn challenge_types(&self) -> &[ChallengeType] {
        DNS01
    }

    async fn fulfill(&self, ch: &PendingChallenge) -> Result<(), SolverError> {
        let record = self
            .dns
            .locate(&ch.identifier.value, &ch.dns_txt_value())
            .await?;
        if let Some(store) = &self.journal {
            store.journal_dns(&record)?;
        }
        self.made().insert(ch.url.clone(), record.clone());
        self.dns.add(&record).await?;
        self.dns.wait_propagated(&record).await?;
        Ok(())
    }

    async fn clear(&self, ch: &PendingChallenge) -> Result<(), SolverError> {
        let Some(record) = self.made().remove(&ch.url) else {
            return Ok(());
        };
        self.dns.remove(&record).await?;
        if let Some(store) = &self.journal {
            store.unjournal_dns(&record)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The PowerDNS API key is read as a secret: a file others can read is refused before any
    /// request, naming it; the key never shows in the solver's Debug output.
    #[tokio::test]
    async fn an_api_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pdns-key");
        std::fs::write(&path, "k3y-value\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let config = DnsConfig {
            provider: ProviderConfig::PowerDns {
                api_url: "http://127.0.0.1:1".into(),
                api_key_file: path.clone(),
            },
            zone: None,
            delegation_zones: Vec::new(),
            resolver: None,
            propagation_timeout: Duration::from_secs(1),
        };
        let err = Dns::new(&config).await.unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let dns = Dns::new(&config).await.unwrap();
        assert!(!format!("{dns:?}").contains("k3y-value"), "{dns:?}");
    }
}
