//! Verify: a TLS handshake with SNI on every TLS listener of a plan's blocks (HTTPS, a stream
//! server's `ssl` listeners, a mail server's, after STARTTLS where it offers it) must return
//! the expected leaf; only then does a certificate count as installed.

use crate::lifecycle::env::Env;
use crate::lifecycle::lineage::live_cert;
use crate::lifecycle::plan::Plan;
use crate::nginx::discovery::Scan;
use crate::nginx::probe::{served_certificate_on, tls_listeners, ProbeError};
use crate::store;

/// How long an old certificate may still be served right after a reload (an old worker that is
/// shutting down can hold its listening socket for a moment, more so on a loaded host).
pub(crate) const VERIFY_SETTLE: std::time::Duration = std::time::Duration::from_secs(3);
/// How often the served certificate is asked again meanwhile.
pub(crate) const VERIFY_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// False when an HTTPS listener of the plan's blocks answers with another certificate than
/// the live one. A listener that cannot be reached from here (an address of another
/// interface) proves nothing either way and does not make the name reinstalled every run.
pub(crate) async fn serves_live(env: &Env, plan: &Plan, scan: &Scan) -> bool {
    let Some(live) = live_cert(&env.store.lineage(&plan.lineage())) else {
        return false;
    };
    !matches!(
        verify(scan, plan, Some(&live.leaf_der)).await,
        Err(VerifyError::Other { .. })
    )
}

pub(crate) fn points_at_live(env: &Env, plan: &Plan, scan: &Scan) -> bool {
    let l = env.store.lineage(&plan.lineage());
    let (fullchain, key) = (l.live_file(store::FULLCHAIN), l.live_file(store::PRIVKEY));
    plan.install_blocks.iter().all(|i| {
        let s = &scan.servers[*i];
        s.ssl_certificates.get(plan.slot()).map(String::as_str)
            == Some(&*fullchain.to_string_lossy())
            && s.ssl_certificate_keys.get(plan.slot()).map(String::as_str)
                == Some(&*key.to_string_lossy())
    })
}

/// Why nginx is not proven to serve a new certificate.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VerifyError {
    #[error("no certificate to verify")]
    NoLeaf,
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("nginx at {addr} still serves another certificate for {name} (server block {block})")]
    Other {
        addr: std::net::SocketAddr,
        name: String,
        block: String,
    },
    #[error("no TLS listener serves {0} after the reload")]
    NoListener(String),
}

/// Every HTTPS listener of the plan's blocks must serve the expected leaf for its name.
pub(crate) async fn verify(
    scan: &Scan,
    plan: &Plan,
    leaf: Option<&[u8]>,
) -> Result<(), VerifyError> {
    let leaf = leaf.ok_or(VerifyError::NoLeaf)?;
    let mut checked = 0;
    let probe_name = plan.probe_name();
    for server in plan.blocks.iter().filter_map(|&i| scan.servers.get(i)) {
        for (at, start) in tls_listeners(server) {
            let addr = at.addr;
            // An old worker that has begun shutting down may still hold its listening socket
            // for a moment: another certificate counts only after VERIFY_SETTLE.
            let deadline = tokio::time::Instant::now() + VERIFY_SETTLE;
            loop {
                let served =
                    served_certificate_on(at, start, &probe_name, plan.variant.is_some()).await?;
                if served == leaf {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(VerifyError::Other {
                        addr,
                        name: plan.lineage(),
                        block: server.location(),
                    });
                }
                tokio::time::sleep(VERIFY_RETRY).await;
            }
            checked += 1;
        }
    }
    if checked == 0 {
        return Err(VerifyError::NoListener(plan.primary.clone()));
    }
    Ok(())
}
