//! Order: the solvers the plans need (built once per session), one claim per lineage from the
//! coordinator, then concurrent orders through the preflight solvers; each certificate comes
//! back as a [`Fresh`] for the install stage.

use std::collections::{BTreeMap, HashMap};

use futures_util::stream::{self, StreamExt};
use tokio::sync::OnceCell;

use crate::acme::{self, Account, KeyPair, OrderOptions};
use crate::challenge::dav::{DavError, DavSolver};
use crate::challenge::dns::lookup::Caa;
use crate::challenge::dns::{Dns, DnsError, DnsSolver};
use crate::challenge::preflight::{check_reachable, Answer, ChallengeRoute, PreflightSolver};
use crate::challenge::public::PublicCheck;
use crate::challenge::route::{Method, Router};
use crate::lifecycle::coordinator::Obtained;
use crate::lifecycle::env::Env;
use crate::lifecycle::lineage::live_cert;
use crate::lifecycle::outcome::{chain_text, Failure, FailureKind, Outcome, Status};
use crate::lifecycle::plan::{self, Plan};
use crate::lifecycle::stages::ca;
use crate::lifecycle::Error;
use crate::nginx::discovery::{Identity, Scan};
use crate::nginx::probe::endpoint_for;
use crate::store::Store;

/// A certificate obtained in this run, waiting to be installed.
#[derive(Debug, Clone)]
pub struct Fresh {
    pub plan: Plan,
    /// The plan's lineage name.
    pub lineage: String,
    pub key_pem: String,
    pub key_type: acme::KeyType,
    pub chain: acme::CertificateChain,
    /// Issued or Renewed.
    pub status: Status,
    /// The directory of the CA that issued it.
    pub directory: String,
}

/// The run's DNS and WebDAV solvers, or why they cannot be used.
#[derive(Debug)]
struct Solvers {
    dns: Option<Result<Dns, DnsError>>,
    dav: Option<Result<DavSolver, DavError>>,
    /// The other hosts (name, address) that must serve http-01 answers too (a fleet's nodes).
    peers: Vec<(String, String)>,
    /// The public-address preflight, when on and some name takes http-01 here.
    public: Option<PublicCheck>,
}

impl Fresh {
    /// The certificate as the coordinator publishes it.
    pub fn obtained(&self) -> Obtained<'_> {
        Obtained {
            lineage: self.lineage.as_str(),
            names: &self.plan.names,
            key_type: self.key_type,
            key_pem: &self.key_pem,
            chain: &self.chain,
        }
    }
}

/// The CAs of a run, preferred first: each one's account is made the first time a plan is
/// ordered there; a CA found not working is not asked again in this run.
struct Cas<'e> {
    env: &'e Env,
    accounts: Vec<(String, OnceCell<Account>)>,
    /// Directory -> why it is not used for the rest of the run.
    down: std::sync::Mutex<BTreeMap<String, String>>,
}

impl<'e> Cas<'e> {
    fn new(env: &'e Env) -> Cas<'e> {
        Cas {
            env,
            accounts: env
                .settings
                .directories()
                .map(|d| (d.to_owned(), OnceCell::new()))
                .collect(),
            down: Default::default(),
        }
    }

    /// The client of a CA not found down in this run (a directory that does not load marks it
    /// down: it is not fetched again).
    async fn client(&self, directory: &str) -> Option<&acme::Client> {
        if self.down(directory).is_some() {
            return None;
        }
        match self.env.ca_at(directory).await {
            Ok(c) => Some(c),
            Err(e) => {
                self.mark_down(directory, chain_text(&e));
                None
            }
        }
    }

    /// The account at a CA (made, or loaded, the first time). A CA that does not answer is
    /// marked down.
    async fn account(&self, directory: &str) -> Result<&Account, Error> {
        if let Some(why) = self.down(directory) {
            return Err(Error::Ca {
                directory: directory.to_owned(),
                source: acme::Error::State(format!("not working in this run: {why}")),
            });
        }
        let Some((_, cell)) = self.accounts.iter().find(|(d, _)| d == directory) else {
            return Err(Error::Ca {
                directory: directory.to_owned(),
                source: acme::Error::State("not one of the configured CAs".into()),
            });
        };
        let env = self.env;
        let r = cell
            .get_or_try_init(|| async {
                let client = env.ca_at(directory).await?.clone();
                env.coordinator
                    .account(&env.settings, &env.store, env.mode.writes_state(), client)
                    .await
            })
            .await;
        if let Err(e) = &r {
            if e.is_ca_outage() {
                self.mark_down(directory, chain_text(e));
            }
        }
        r
    }

    fn mark_down(&self, directory: &str, why: String) {
        if let Ok(mut down) = self.down.lock() {
            down.entry(directory.to_owned()).or_insert(why);
        }
    }

    fn down(&self, directory: &str) -> Option<String> {
        self.down.lock().ok()?.get(directory).cloned()
    }
}

/// The serial each lineage to order served when the session decided to order it.
#[derive(Debug, Default)]
pub(crate) struct Seen(Vec<(String, Option<String>)>);

impl Seen {
    /// What the plans' lineages serve now.
    pub(crate) fn now(env: &Env, plans: &[Plan]) -> Seen {
        Seen(
            plans
                .iter()
                .map(|p| {
                    let serial =
                        live_cert(&env.store.lineage(&p.lineage())).map(|c| c.info.serial_hex);
                    (p.lineage(), serial)
                })
                .collect(),
        )
    }

    /// Why a lineage is not ordered after all: another certificate went live since the
    /// decision (a fleet node's agent installed one another node published).
    pub(crate) fn changed(&self, lineage: &str, live: Option<&str>) -> Option<String> {
        let (_, then) = self.0.iter().find(|(l, _)| l == lineage)?;
        (then.as_deref() != live).then(|| {
            format!(
                "certificate {} was installed while this run waited (another node of the fleet renewed it); not ordered again",
                live.unwrap_or("-")
            )
        })
    }
}

/// Orders the plans' certificates concurrently.
pub(crate) async fn obtain(
    env: &Env,
    scan: &Scan,
    plans: Vec<Plan>,
    seen: &Seen,
    outcomes: &mut Vec<Outcome>,
) -> Result<Vec<Fresh>, Error> {
    let cas = Cas::new(env);
    // The preferred CA's account first: a run that cannot have one (terms not agreed, a
    // binding missing) stops here, unless the CA is down and another one is configured.
    if let Err(e) = cas.account(&env.settings.directory).await {
        if !e.is_ca_outage() || env.settings.fallback_directories.is_empty() {
            return Err(e);
        }
        tracing::warn!(
            "the preferred CA {} cannot be used now ({}); the next one is tried",
            env.settings.directory,
            chain_text(&e)
        );
    }
    let identity = scan.worker_identity();
    let mut ip_capable = Vec::new();
    if plans.iter().any(|p| p.ip_literal) {
        for d in env.settings.directories() {
            if let Some(client) = cas.client(d).await {
                if client
                    .directory()
                    .meta
                    .profiles
                    .contains_key(plan::IP_PROFILE)
                {
                    ip_capable.push(d.to_owned());
                }
            }
        }
    }
    let (plans, no_ip): (Vec<Plan>, Vec<Plan>) = plans
        .into_iter()
        .partition(|p| !p.ip_literal || !ip_capable.is_empty());
    for plan in no_ip {
        let mut o = env.outcome(&plan, Status::Skipped);
        o.reason = Some(format!(
            "an IP address certificate needs the CA's \"{}\" profile, which {} does not offer",
            plan::IP_PROFILE,
            env.settings.directories().collect::<Vec<_>>().join(", ")
        ));
        outcomes.push(o);
    }
    // One orderer per lineage: a fleet node claims it (its lock) first.
    let mut claims = Vec::new();
    let mut mine = Vec::new();
    for plan in plans {
        let local = live_cert(&env.store.lineage(&plan.lineage())).map(|c| c.info.serial_hex);
        if let Some(why) = seen.changed(&plan.lineage(), local.as_deref()) {
            let mut o = env.outcome(&plan, Status::Skipped);
            o.reason = Some(why);
            outcomes.push(o);
            continue;
        }
        let claim = env
            .coordinator
            .claim(&plan.lineage(), local.as_deref())
            .await?;
        match claim.reason() {
            None => {
                claims.push(claim);
                mine.push(plan);
            }
            Some(why) => {
                let mut o = env.outcome(&plan, Status::Skipped);
                o.reason = Some(why);
                outcomes.push(o);
            }
        }
    }
    let plans = mine;
    // The CA's work is waited on without the install lock (an agent installs what another
    // node published meanwhile); the certificates are stored and published under it.
    env.let_go_install();
    let solvers = solvers(env, &plans).await;
    let results: Vec<(Plan, Result<Fresh, Failure>)> = stream::iter(plans)
        .map(|plan| {
            let cas = &cas;
            let identity = identity.as_ref();
            let solvers = &solvers;
            async move {
                let r = match env.coordinator.intend(&plan.lineage(), &plan.names).await {
                    Ok(()) => obtain_one(env, cas, scan, &plan, identity, solvers).await,
                    Err(e) => Err(e),
                };
                (plan, r)
            }
        })
        .buffer_unordered(env.settings.concurrency.max(1))
        .collect()
        .await;
    env.hold_install_to_keep("storing what the CA issued")
        .await?;
    let mut fresh = Vec::new();
    for (plan, r) in results {
        match r {
            Ok(f) => {
                // Published before the lock goes: the fleet never orders it twice.
                env.coordinator
                    .publish(&env.store, f.obtained(), &f.directory)
                    .await;
                fresh.push(f)
            }
            Err(e) => {
                env.coordinator.abandon(&plan.lineage()).await;
                let mut o = env.outcome(&plan, Status::Failed);
                o.error = Some(e);
                outcomes.push(o);
            }
        }
    }
    env.coordinator.release(claims).await;
    fresh.sort_by_key(|f| f.plan.lineage());
    Ok(fresh)
}

/// The DNS and WebDAV solvers the plans need, made once for the run (a key file that
/// cannot be read fails the names that need it, not the others).
async fn solvers(env: &Env, plans: &[Plan]) -> Solvers {
    let needs = |m: Method| plans.iter().any(|p| p.methods.values().any(|x| *x == m));
    let resolver = env.settings.resolver();
    let dns = match &env.settings.dns {
        Some(config) if needs(Method::Dns) => Some(Dns::new(config).await),
        _ => None,
    };
    let dav = match &env.settings.dav {
        Some(config) if needs(Method::Dav) => {
            Some(DavSolver::new(config, resolver, env.settings.http_port))
        }
        _ => None,
    };
    let peers = env.coordinator.other_nodes().await;
    let public = (env.settings.public_preflight && needs(Method::Webroot)).then(|| {
        let peer_ips: Vec<std::net::IpAddr> = peers
            .iter()
            .filter_map(|(_, a)| a.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
            .collect();
        PublicCheck::new(resolver, env.settings.http_port, &peer_ips)
    });
    Solvers {
        dns,
        dav,
        peers,
        public,
    }
}

async fn obtain_one(
    env: &Env,
    cas: &Cas<'_>,
    scan: &Scan,
    plan: &Plan,
    identity: Option<&Identity>,
    solvers: &Solvers,
) -> Result<Fresh, Failure> {
    let journal = env.mode.writes_state().then(|| env.store.clone());
    let mut router = Router {
        methods: plan.methods.iter().map(|(n, m)| (n.clone(), *m)).collect(),
        ..Router::default()
    };
    if plan.uses_webroot() {
        let solver = webroot_solver(env, scan, plan, identity, journal.clone())?;
        if let Some(public) = &solvers.public {
            for name in plan
                .names
                .iter()
                .filter(|n| plan.methods.get(*n) == Some(&Method::Webroot))
                .filter(|n| n.parse::<std::net::IpAddr>().is_err())
            {
                let started = std::time::Instant::now();
                let reached = public.check(&solver, name).await.map_err(|e| Failure {
                    kind: FailureKind::Refused,
                    ..Failure::transient(chain_text(&e))
                })?;
                tracing::debug!(
                    "{name}: public-address preflight passed in {:?}",
                    started.elapsed()
                );
                if !reached.is_empty() {
                    tracing::info!(
                        "{name}: its public address(es) {} answer with this nginx's probe token",
                        reached
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
        }
        router.webroot = Some(env.coordinator.answered_everywhere(solver, &solvers.peers));
    }
    if plan.methods.values().any(|m| *m == Method::Dav) {
        match &solvers.dav {
            Some(Ok(dav)) => router.dav = Some(dav),
            Some(Err(e)) => return Err(Failure::transient(chain_text(e))),
            None => return Err(Failure::transient("no WebDAV server is configured")),
        }
    }
    if plan.methods.values().any(|m| *m == Method::Dns) {
        match &solvers.dns {
            Some(Ok(dns)) => router.dns = Some(DnsSolver::new(dns, journal)),
            Some(Err(e)) => return Err(Failure::transient(chain_text(e))),
            None => return Err(Failure::transient("no DNS solver is configured")),
        }
    }
    let key = certificate_key(env, scan, plan);
    let live = live_cert(&env.store.lineage(&plan.lineage()));
    let meta = env.meta(&plan.lineage()).ok();
    let issued_by = meta
        .as_ref()
        .map(|m| m.directory.clone())
        .filter(|d| !d.is_empty() && live.is_some());
    let port = RunCas {
        env,
        cas,
        plan,
        key: &key,
        solver: &router,
        preferred_chain: meta
            .and_then(|m| m.preferred_chain)
            .or(env.settings.preferred_chain.clone()),
    };
    let directories: Vec<&str> = env.settings.directories().collect();
    let lineage = plan.lineage();
    let wanted = ca::Wanted {
        lineage: &lineage,
        names: &plan.names,
        ip_literal: plan.ip_literal,
        issued_by: issued_by.as_deref(),
        deadline: live.as_ref().map(|c| c.info.not_after),
    };
    let now = time::OffsetDateTime::now_utc();
    let ((chain, key), directory) =
        ca::order_at_first_usable(&port, &directories, &wanted, now).await?;
    Ok(Fresh {
        plan: plan.clone(),
        lineage,
        key_type: key.key_type(),
        key_pem: key.to_pem(),
        chain,
        status: if live.is_some() {
            Status::Renewed
        } else {
            Status::Issued
        },
        directory,
    })
}

/// The CAs of a run as [`ca::order_at_first_usable`] asks them: their accounts (made once),
/// the resolver for CAA, the coordinator's order with this plan's key and solvers.
struct RunCas<'r, 'e> {
    env: &'e Env,
    cas: &'r Cas<'e>,
    plan: &'r Plan,
    key: &'r KeyPair,
    solver: &'r Router<'r>,
    preferred_chain: Option<String>,
}

impl ca::CaPort for RunCas<'_, '_> {
    type Issued = (acme::CertificateChain, KeyPair);

    fn down(&self, directory: &str) -> Option<String> {
        self.cas.down(directory)
    }

    fn mark_down(&self, directory: &str, why: String) {
        self.cas.mark_down(directory, why);
    }

    async fn open(&self, directory: &str) -> Result<ca::CaFacts, Failure> {
        let account = self.cas.account(directory).await.map_err(|e| {
            if e.is_ca_outage() {
                Failure::outage(chain_text(&e))
            } else {
                Failure::transient(chain_text(&e))
            }
        })?;
        let meta = &account.client().directory().meta;
        Ok(ca::CaFacts {
            identities: ca::identities(
                &meta.caa_identities,
                self.env.settings.caa_identities.get(directory),
            ),
            ip_profile: meta.profiles.contains_key(plan::IP_PROFILE),
        })
    }

    async fn caa(&self, name: &str) -> Result<Option<(String, Vec<Caa>)>, ca::CaaLookupFailed> {
        let resolver = self.env.settings.resolver();
        let dns_name =
            hickory_proto::rr::Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
                .map_err(|e| ca::CaaLookupFailed(e.to_string()))?;
        match resolver.caa(&dns_name).await {
            Ok(found) => Ok(found
                .map(|(at, records)| (at.to_ascii().trim_end_matches('.').to_owned(), records))),
            Err(e) => Err(ca::CaaLookupFailed(format!("at {}: {e}", resolver.server))),
        }
    }

    async fn order(&self, directory: &str, replaces: bool) -> Result<Self::Issued, Failure> {
        let account = self
            .cas
            .account(directory)
            .await
            .map_err(|e| Failure::transient(chain_text(&e)))?;
        let plan = self.plan;
        let opts = OrderOptions {
            profile: if plan.ip_literal {
                Some(plan::IP_PROFILE.to_owned())
            } else {
                self.env.settings.profile.clone()
            },
            replaces: if replaces {
                self::replaces(self.env, plan)
            } else {
                None
            },
            preferred_chain: self.preferred_chain.clone(),
            ..OrderOptions::default()
        };
        self.env
            .coordinator
            .order(
                account,
                &plan.lineage(),
                &plan.names,
                self.key.clone(),
                self.solver,
                &opts,
            )
            .await
    }
}

/// The http-01 solver through this host's nginx for a plan's names that take it: tokens
/// in the challenge block's directory, checked through nginx.
fn webroot_solver(
    env: &Env,
    scan: &Scan,
    plan: &Plan,
    identity: Option<&Identity>,
    journal: Option<Store>,
) -> Result<PreflightSolver, Failure> {
    let block = &scan.servers[plan
        .challenge_block
        .ok_or_else(|| Failure::transient("no challenge block"))?];
    let answer = match (&block.acme_challenge_stateless, &block.acme_challenge_dir) {
        (Some(thumbprint), _) => Answer::Stateless {
            thumbprint: thumbprint.to_string(),
        },
        (None, Some(dir)) if env.coordinator.stateless() => {
            return Err(Failure::transient(format!(
                "{}: the fleet answers http-01 statelessly ([fleet] challenge = \"stateless\"), but this block serves challenges from its own directory {}, where no other node would have the token; take that challenge location out (acme-nginx's stateless location then answers) or set challenge = \"published\"",
                block.location(),
                dir.display()
            )))
        }
        (None, Some(dir)) => {
            if let Some((uid, _, groups)) = identity {
                check_reachable(dir, *uid, groups)
                    .map_err(|e| Failure::transient(format!("{}: {e}", block.location())))?;
            }
            Answer::Dir(dir.clone())
        }
        (None, None) => {
            return Err(Failure::transient(format!(
                "{}: {}",
                block.location(),
                block.acme_challenge_reason.clone().unwrap_or_default()
            )))
        }
    };
    let listener = block
        .listen
        .iter()
        .filter(|l| !l.ssl && l.port == env.settings.http_port)
        .find_map(endpoint_for)
        .ok_or_else(|| {
            Failure::transient(format!(
                "{}: no plain-HTTP listener reachable over loopback",
                block.location()
            ))
        })?;
    let routes: HashMap<String, ChallengeRoute> = plan
        .names
        .iter()
        .filter(|n| plan.methods.get(*n) == Some(&Method::Webroot))
        .map(|n| {
            let route = ChallengeRoute {
                answer: answer.clone(),
                listener,
                block: block.location(),
            };
            (n.clone(), route)
        })
        .collect();
    let owner = identity.map(|(u, g, _)| (*u, *g));
    Ok(PreflightSolver::new(routes, owner, journal))
}

/// A new key per certificate, or the live one when `reuse_key` is set.
fn certificate_key(env: &Env, scan: &Scan, plan: &Plan) -> KeyPair {
    let lineage_reuses = env.meta(&plan.lineage()).is_ok_and(|m| m.reuse_key);
    if env.settings.reuse_key || lineage_reuses {
        if let Some(k) = env
            .store
            .lineage(&plan.lineage())
            .live_key()
            .and_then(|p| KeyPair::from_pem(&p).ok())
        {
            return k;
        }
    }
    KeyPair::generate(key_type_for(env, scan, plan))
}

/// The key type of a plan's certificate: the RSA one of a hybrid block's second pair;
/// else the one the lineage has (a renewal keeps it); else the setting (`--key-type`,
/// `key_type`); else the type of the certificate the block serves now (a block serving RSA
/// stays RSA for the clients that need it); else ECDSA P-256.
fn key_type_for(env: &Env, scan: &Scan, plan: &Plan) -> acme::KeyType {
    if let Some(k) = plan.variant {
        return k;
    }
    let kept = env
        .meta(&plan.lineage())
        .ok()
        .filter(|m| m.issued_at.is_some())
        .and_then(|m| m.key_type.parse::<acme::KeyType>().ok());
    kept.or(env.settings.key_type)
        .or_else(|| served_key_type(scan, plan))
        .unwrap_or_default()
}

/// The key type of the one certificate the plan's first block serves now (a block serving
/// two is a hybrid: its first pair is ECDSA, its second RSA).
fn served_key_type(scan: &Scan, plan: &Plan) -> Option<acme::KeyType> {
    let block = &scan.servers[*plan.install_blocks.first()?];
    let [path] = block.ssl_certificates.as_slice() else {
        return None;
    };
    let pem = crate::fsutil::read_regular_limited(std::path::Path::new(path)).ok()?;
    let der = acme::pem_certificates(&pem).ok()?.into_iter().next()?;
    acme::public_key_type(&der)
}

/// The ARI CertID of the live certificate this order replaces, if any.
fn replaces(env: &Env, plan: &Plan) -> Option<String> {
    live_cert(&env.store.lineage(&plan.lineage()))?
        .info
        .ari_cert_id
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lineage is not ordered when what it serves changed since the decision; one that
    /// served nothing and still does, or serves the same, is.
    #[test]
    fn a_certificate_installed_since_the_decision_stops_the_order() {
        let seen = Seen(vec![
            ("a.test".into(), Some("0a".into())),
            ("new.test".into(), None),
        ]);
        assert_eq!(seen.changed("a.test", Some("0a")), None);
        assert_eq!(seen.changed("new.test", None), None);
        let why = seen.changed("a.test", Some("0b")).unwrap();
        assert!(
            why.contains("0b") && why.contains("not ordered again"),
            "{why}"
        );
        assert!(seen.changed("new.test", Some("0c")).is_some());
        // A lineage the session did not decide on is not its business.
        assert_eq!(seen.changed("other.test", Some("0d")), None);
    }
}
