//! The http-01 solver `enroll` uses: tokens written into each name's challenge directory (as
//! nginx's worker user, journaled so a killed run is cleaned up), then fetched back from nginx
//! itself over loopback with the name's Host header before the CA is asked to validate. A
//! mismatch stops that order with a message naming the server block, without spending a failed
//! validation at the CA.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};

use super::webroot::WebrootSolver;
use crate::acme::{ChallengeSolver, ChallengeType, PendingChallenge, SolverError};
use crate::nginx::probe::http_get;
use crate::store::Store;

/// Where nginx serves one name's challenges.
#[derive(Debug, Clone)]
pub struct ChallengeRoute {
    pub answer: Answer,
    /// A plain-HTTP listener of the server block, reached over loopback.
    pub listener: crate::nginx::probe::Endpoint,
    /// `file:line` of the server block, for messages.
    pub block: String,
}

/// How nginx answers a name's challenges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// From token files in this directory.
    Dir(PathBuf),
    /// Stateless: every token with `TOKEN.THUMBPRINT` of this account (no file).
    Stateless { thumbprint: String },
}

/// Webroot solver plus a loopback check through nginx.
#[derive(Debug)]
pub struct PreflightSolver {
    webroot: WebrootSolver,
    routes: HashMap<String, ChallengeRoute>,
    store: Option<Store>,
    /// In a fleet: the answer is published for every node, and checked through each.
    fleet: Option<super::fleet::FleetCheck>,
}

const HTTP01: &[ChallengeType] = &[ChallengeType::Http01];

impl PreflightSolver {
    /// Tokens owned by `owner` (nginx's worker user and group), journaled in `store`.
    pub fn new(
        routes: HashMap<String, ChallengeRoute>,
        owner: Option<(Uid, Gid)>,
        store: Option<Store>,
    ) -> Self {
        let mut webroot = WebrootSolver::per_name();
        for (name, r) in &routes {
            if let Answer::Dir(dir) = &r.answer {
                webroot = webroot.with_dir_for(name, dir);
            }
        }
        if let Some((u, g)) = owner {
            webroot = webroot.with_owner(u, g);
        }
        Self {
            webroot,
            routes,
            store,
            fleet: None,
        }
    }

    /// Publishes answers for a fleet's other nodes and checks them there too.
    pub fn with_fleet(mut self, fleet: super::fleet::FleetCheck) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// Writes a probe token where nginx serves the name's challenges (journaled like a
    /// challenge token), for the public-address preflight; where nginx answers statelessly,
    /// nothing is written and the probe's expected answer becomes what nginx will say.
    pub fn write_probe(&self, probe: &mut PendingChallenge) -> Result<(), SolverError> {
        match &self.route(probe)?.answer {
            Answer::Stateless { thumbprint } => {
                probe.key_authorization = format!("{}.{thumbprint}", probe.token);
            }
            Answer::Dir(dir) => {
                if let Some(store) = &self.store {
                    store.journal_token(&dir.join(&probe.token))?;
                }
                self.webroot.write_token(probe)?;
            }
        }
        Ok(())
    }

    /// Removes a probe token.
    pub fn remove_probe(&self, probe: &PendingChallenge) -> Result<(), SolverError> {
        match self.route(probe)?.answer {
            Answer::Stateless { .. } => Ok(()),
            Answer::Dir(_) => self.webroot.remove_token(probe),
        }
    }

    fn route(&self, ch: &PendingChallenge) -> Result<&ChallengeRoute, SolverError> {
        self.routes
            .get(&ch.identifier.value.to_ascii_lowercase())
            .ok_or_else(|| format!("no server block serves {}", ch.identifier.value).into())
    }
}

impl ChallengeSolver for PreflightSolver {
    fn challenge_types(&self) -> &[ChallengeType] {
        HTTP01
    }

    async fn fulfill(&self, ch: &PendingChallenge) -> Result<(), SolverError> {
        let route = self.route(ch)?;
        let written = match &route.answer {
            Answer::Stateless { thumbprint } => {
                // Nothing to write or publish: nginx (every node's) answers from the account.
                if ch.key_authorization != format!("{}.{thumbprint}", ch.token) {
                    return Err(format!(
                        "the stateless challenge location of the server block {} answers for the account with thumbprint {thumbprint}, not for the account this order is placed with; the CA would be answered wrongly",
                        route.block
                    )
                    .into());
                }
                "what the stateless challenge location answers".to_owned()
            }
            Answer::Dir(dir) => {
                if let Some(fleet) = &self.fleet {
                    fleet.publish(ch).await?;
                }
                if let Some(store) = &self.store {
                    store.journal_token(&dir.join(&ch.token))?;
                }
                self.webroot.write_token(ch)?;
                format!("the token written to {}", dir.display())
            }
        };
        let path = ch.http_path();
        let answer = http_get(route.listener, &ch.identifier.value, &path)
            .await
            .map_err(|e| {
                format!(
                    "preflight of http://{}{path} through nginx at {} failed: {e} (server block {})",
                    crate::nginx::probe::host_header(&ch.identifier.value),
                    route.listener,
                    route.block
                )
            })?;
        if answer.status != 200 || answer.body.trim_ascii() != ch.key_authorization.as_bytes() {
            let body = String::from_utf8_lossy(&answer.body);
            let body: String = body.chars().take(80).collect();
            return Err(format!(
                "nginx does not serve the challenge: http://{}{path} via {} answered {} {:?} instead of {written}; check the server block at {}",
                ch.identifier.value,
                route.listener,
                answer.status,
                body.trim(),
                route.block
            )
            .into());
        }
        if let Some(fleet) = &self.fleet {
            fleet.check_nodes(ch).await?;
        }
        Ok(())
    }

    async fn clear(&self, ch: &PendingChallenge) -> Result<(), SolverError> {
        if let Ok(ChallengeRoute {
            answer: Answer::Stateless { .. },
            ..
        }) = self.route(ch)
        {
            return Ok(());
        }
        if let Some(fleet) = &self.fleet {
            if let Err(e) = fleet.withdraw(ch).await {
                tracing::warn!(
                    "fleet: the answer for {} stays until its lease ends: {e}",
                    ch.identifier
                );
            }
        }
        self.webroot.remove_token(ch)
    }
}

/// nginx's worker user cannot enter a directory on the way to the challenge directory.
#[derive(Debug, thiserror::Error)]
#[error("nginx's worker user (uid {uid}) cannot enter {} (mode {mode:o}, owner {owner}:{group}), so it cannot serve challenge files from {}", blocking.display(), dir.display())]
pub struct Unreachable {
    pub uid: Uid,
    pub blocking: PathBuf,
    pub mode: u32,
    pub owner: u32,
    pub group: u32,
    pub dir: PathBuf,
}

/// Checks that `user` (uid and groups) can reach files in `dir`: every ancestor must grant it
/// search permission. Names the first one that does not. Directories that do not exist yet are
/// created later with mode 0755 and are fine.
pub fn check_reachable(dir: &Path, uid: Uid, gids: &[Gid]) -> Result<(), Unreachable> {
    use std::os::unix::fs::MetadataExt;
    if uid.is_root() {
        return Ok(());
    }
    let mut p = PathBuf::new();
    for comp in dir.components() {
        p.push(comp);
        let Ok(meta) = std::fs::metadata(&p) else {
            break;
        };
        let mode = meta.mode();
        let bit = if meta.uid() == uid.as_raw() {
            mode & 0o100
        } else if gids.iter().any(|g| g.as_raw() == meta.gid()) {
            mode & 0o010
        } else {
            mode & 0o001
        };
        if bit == 0 {
            return Err(Unreachable {
                uid,
                blocking: p,
                mode: mode & 0o7777,
                owner: meta.uid(),
                group: meta.gid(),
                dir: dir.to_path_buf(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stateless route answers only for its account: a challenge of another account fails
    /// before nginx or the CA is asked, and nothing is written or journaled.
    #[tokio::test]
    async fn a_stateless_route_refuses_another_accounts_challenge() {
        use crate::acme::{ChallengeSolver, Identifier};
        let thumb = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
        let route = ChallengeRoute {
            answer: Answer::Stateless {
                thumbprint: thumb.into(),
            },
            listener: "127.0.0.1:9"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
            block: "/etc/nginx/sites-enabled/a:1".into(),
        };
        let solver =
            PreflightSolver::new(HashMap::from([("a.test".to_owned(), route)]), None, None);
        let mut ch = PendingChallenge {
            identifier: Identifier::from_name("a.test"),
            wildcard: false,
            kind: ChallengeType::Http01,
            token: "tok".into(),
            key_authorization: "tok.another-account-thumbprint".into(),
            url: String::new(),
        };
        let err = solver.fulfill(&ch).await.unwrap_err().to_string();
        assert!(
            err.contains(thumb) && err.contains("not for the account"),
            "{err}"
        );
        solver.clear(&ch).await.unwrap();
        // The public-address probe expects what nginx will answer, and writes nothing.
        ch.key_authorization = "random".into();
        solver.write_probe(&mut ch).unwrap();
        assert_eq!(ch.key_authorization, format!("tok.{thumb}"));
        solver.remove_probe(&ch).unwrap();
    }

    #[test]
    fn unreachable_ancestor_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let closed = dir.path().join("closed");
        let inner = closed.join("acme");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        // A user that owns nothing here and is in no group of these directories.
        let (uid, gid) = (Uid::from_raw(65534), Gid::from_raw(65534));
        let err = check_reachable(&inner, uid, &[gid]).unwrap_err();
        assert_eq!(err.blocking, closed);
        assert!(
            err.to_string().contains(&closed.display().to_string()),
            "{err}"
        );
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o711)).unwrap();
        check_reachable(&inner, uid, &[gid]).unwrap();
        // Not yet created below an open directory: fine.
        check_reachable(&inner.join("new/deeper"), uid, &[gid]).unwrap();
    }
}
