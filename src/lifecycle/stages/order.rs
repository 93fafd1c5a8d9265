//! Order: the solvers the plans need (built once per session), one claim per lineage from the
//! coordinator, then concurrent orders through the preflight solvers; each certificate comes
//! back as a [`Fresh`] for the install stage.

use std::collections::HashMap;

use futures_util::stream::{self, StreamExt};

use crate::acme::{self, Account, KeyPair, OrderOptions};
use crate::challenge::dav::{DavError, DavSolver};
use crate::challenge::dns::lookup::Resolver;
use crate::challenge::dns::{Dns, DnsError, DnsSolver};
use crate::challenge::preflight::{check_reachable, ChallengeRoute, PreflightSolver};
use crate::challenge::route::{Method, Router};
use crate::lifecycle::coordinator::Obtained;
use crate::lifecycle::env::Env;
use crate::lifecycle::lineage::live_cert;
use crate::lifecycle::outcome::{chain_text, Failure, Outcome, Status};
use crate::lifecycle::plan::{self, Plan};
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
}

/// The run's DNS and WebDAV solvers, or why they cannot be used.
#[derive(Debug)]
struct Solvers {
    dns: Option<Result<Dns, DnsError>>,
    dav: Option<Result<DavSolver, DavError>>,
    /// The other hosts (name, address) that must serve http-01 answers too (a fleet's nodes).
    peers: Vec<(String, String)>,
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

/// Orders the plans' certificates concurrently.
pub(crate) async fn obtain(
    env: &Env,
    scan: &Scan,
    plans: Vec<Plan>,
    outcomes: &mut Vec<Outcome>,
) -> Result<Vec<Fresh>, Error> {
    let client = env.ca().await?.clone();
    let account = env
        .coordinator
        .account(&env.settings, &env.store, env.mode.writes_state(), client)
        .await?;
    let identity = scan.worker_identity();
    let short_lived = account
        .client()
        .directory()
        .meta
        .profiles
        .contains_key(plan::IP_PROFILE);
    let (plans, no_ip): (Vec<Plan>, Vec<Plan>) = plans
        .into_iter()
        .partition(|p| !p.ip_literal || short_lived);
    for plan in no_ip {
        let mut o = env.outcome(&plan, Status::Skipped);
        o.reason = Some(format!(
            "an IP address certificate needs the CA's \"{}\" profile, which {} does not offer",
            plan::IP_PROFILE,
            env.settings.directory
        ));
        outcomes.push(o);
    }
    // One orderer per lineage: a fleet node claims it (its lock) first.
    let mut claims = Vec::new();
    let mut mine = Vec::new();
    for plan in plans {
        let local = live_cert(&env.store.lineage(&plan.lineage())).map(|c| c.info.serial_hex);
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
    let solvers = solvers(env, &plans).await;
    let results: Vec<(Plan, Result<Fresh, Failure>)> = stream::iter(plans)
        .map(|plan| {
            let account = &account;
            let identity = identity.as_ref();
            let solvers = &solvers;
            async move {
                let r = match env.coordinator.intend(&plan.lineage(), &plan.names).await {
                    Ok(()) => obtain_one(env, account, scan, &plan, identity, solvers).await,
                    Err(e) => Err(e),
                };
                (plan, r)
            }
        })
        .buffer_unordered(env.settings.concurrency.max(1))
        .collect()
        .await;
    let mut fresh = Vec::new();
    for (plan, r) in results {
        match r {
            Ok(f) => {
                // Published before the lock goes: the fleet never orders it twice.
                env.coordinator
                    .publish(&env.store, f.obtained(), &env.settings.directory)
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
    let resolver = env.settings.resolver.unwrap_or_else(Resolver::system);
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
    Solvers { dns, dav, peers }
}

async fn obtain_one(
    env: &Env,
    account: &Account,
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
    let solver = router;
    let key = certificate_key(env, scan, plan);
    let opts = OrderOptions {
        profile: if plan.ip_literal {
            Some(plan::IP_PROFILE.to_owned())
        } else {
            env.settings.profile.clone()
        },
        replaces: replaces(env, plan),
        preferred_chain: env
            .meta(&plan.lineage())
            .ok()
            .and_then(|m| m.preferred_chain)
            .or(env.settings.preferred_chain.clone()),
        ..OrderOptions::default()
    };
    let (chain, key) = env
        .coordinator
        .order(account, &plan.lineage(), &plan.names, key, &solver, &opts)
        .await?;
    let renewed = env
        .store
        .lineage(&plan.lineage())
        .live_fullchain()
        .is_some();
    Ok(Fresh {
        plan: plan.clone(),
        lineage: plan.lineage(),
        key_type: key.key_type(),
        key_pem: key.to_pem(),
        chain,
        status: if renewed {
            Status::Renewed
        } else {
            Status::Issued
        },
    })
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
    let dir = block.acme_challenge_dir.clone().ok_or_else(|| {
        Failure::transient(format!(
            "{}: {}",
            block.location(),
            block.acme_challenge_reason.clone().unwrap_or_default()
        ))
    })?;
    if let Some((uid, _, groups)) = identity {
        check_reachable(&dir, *uid, groups)
            .map_err(|e| Failure::transient(format!("{}: {e}", block.location())))?;
    }
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
                dir: dir.clone(),
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
