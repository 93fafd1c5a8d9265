//! http-01 through WebDAV, for a web server that is not this host (or several behind a
//! balancer): each token is `PUT` to `URL/TOKEN` (with basic authentication when configured)
//! and `DELETE`d afterwards. Before the CA is asked, the token is fetched from the name itself,
//! at every address the name has, on the port the CA validates on.

use crate::acme::net;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::dns::lookup::Resolver;
use crate::acme::{ChallengeSolver, ChallengeType, PendingChallenge, SolverError};
use crate::nginx::probe::{host_header, http_get};

/// How long one WebDAV request may take.
pub const DAV_TIMEOUT: Duration = Duration::from_secs(30);

/// Where tokens are put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DavConfig {
    /// The collection URL the challenge directory is served from.
    pub url: String,
    pub user: Option<String>,
    pub password_file: Option<std::path::PathBuf>,
}

/// A WebDAV server that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DavError {
    #[error("the WebDAV password: {0}")]
    Password(#[from] crate::secret::SecretFileError),
    #[error("the WebDAV password file {} is not text", path.display())]
    PasswordText { path: std::path::PathBuf },
    #[error("WebDAV client: {0}")]
    Client(String),
}

/// The WebDAV http-01 solver.
#[derive(Debug)]
pub struct DavSolver {
    base: String,
    auth: Option<(String, crate::secret::Secret)>,
    http: reqwest::Client,
    resolver: Resolver,
    http_port: u16,
}

const HTTP01: &[ChallengeType] = &[ChallengeType::Http01];

impl DavSolver {
    /// A solver putting tokens under `config.url`; the preflight looks names up through
    /// `resolver` and fetches on `http_port`.
    pub fn new(config: &DavConfig, resolver: Resolver, http_port: u16) -> Result<Self, DavError> {
        let password = match &config.password_file {
            Some(p) => Some(read_password(p)?),
            None => None,
        };
        let auth = config.user.clone().map(|u| {
            (
                u,
                password.unwrap_or_else(|| crate::secret::Secret::new("")),
            )
        });
        let http = net::client(&net::Profile::new(DAV_TIMEOUT))
            .map_err(|e| DavError::Client(e.to_string()))?;
        Ok(Self {
            base: config.url.trim_end_matches('/').to_owned(),
            auth,
            http,
            resolver,
            http_port,
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        token: &str,
        body: Option<String>,
    ) -> Result<u16, SolverError> {
        let url = format!("{}/{token}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if let Some((u, p)) = &self.auth {
            req = req.basic_auth(u, p.expose_line());
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("WebDAV {method} {url}: {}", crate::acme::error_chain(&e)))?;
        Ok(resp.status().as_u16())
    }

    /// Fetches the token from every address of the name.
    async fn preflight(&self, ch: &PendingChallenge) -> Result<(), SolverError> {
        let host = &ch.identifier.value;
        let path = ch.http_path();
        let addrs: Vec<SocketAddr> = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, self.http_port)],
            Err(_) => {
                let mut name = hickory_proto::rr::Name::from_ascii(host)
                    .map_err(|e| format!("{host:?} is not a DNS name: {e}"))?;
                name.set_fqdn(true);
                self.resolver
                    .addresses(&name)
                    .await?
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, self.http_port))
                    .collect()
            }
        };
        if addrs.is_empty() {
            return Err(format!("{host} has no address (asked {})", self.resolver.server).into());
        }
        for addr in addrs {
            let answer = http_get(addr, host, &path).await.map_err(|e| {
                format!(
                    "preflight of http://{}{path} at {addr} failed: {e}",
                    host_header(host)
                )
            })?;
            if answer.status != 200 || answer.body.trim_ascii() != ch.key_authorization.as_bytes() {
                return Err(format!(
                    "the token put to {}/{} is not served: http://{}{path} at {addr} answered {}",
                    self.base,
                    ch.token,
                    host_header(host),
                    answer.status
                )
                .into());
            }
        }
        Ok(())
    }
}

fn read_password(path: &Path) -> Result<crate::secret::Secret, DavError> {
    let secret = crate::secret::read_secret(path)?;
    let line = secret.expose_line().ok_or_else(|| DavError::PasswordText {
        path: path.to_path_buf(),
    })?;
    Ok(crate::secret::Secret::new(line))
}

impl ChallengeSolver for DavSolver {
    fn challenge_types(&self) -> &[ChallengeType] {
        HTTP01
    }

    async fn fulfill(&self, ch: &PendingChallenge) -> Result<(), SolverError> {
        let status = self
            .send(
                reqwest::Method::PUT,
                &ch.token,
                Some(ch.key_authorization.clone()),
            )
            .await?;
        if !(200..300).contains(&status) {
            return Err(format!("WebDAV PUT {}/{} answered {status}", self.base, ch.token).into());
        }
        self.preflight(ch).await
    }

    async fn clear(&self, ch: &PendingChallenge) -> Result<(), SolverError> {
        let status = self.send(reqwest::Method::DELETE, &ch.token, None).await?;
        if (200..300).contains(&status) || status == 404 {
            Ok(())
        } else {
            Err(format!("WebDAV DELETE {}/{} answered {status}", self.base, ch.token).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The WebDAV password is read as a secret: a file others can read is refused, naming it.
    #[test]
    fn a_password_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dav-password");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let config = DavConfig {
            url: "http://127.0.0.1:1/dav".into(),
            user: Some("acme".into()),
            password_file: Some(path.clone()),
        };
        let err = DavSolver::new(&config, Resolver::system(), 80).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert!(!format!("{err:?}").contains("s3cret"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let solver = DavSolver::new(&config, Resolver::system(), 80).unwrap();
        assert!(!format!("{solver:?}").contains("s3cret"), "{solver:?}");
    }
}
