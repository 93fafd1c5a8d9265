//! The one place HTTP clients are made and their answers read: the ACME CA's, and the clients
//! the rest of acme-nginx builds on the same stack (etcd's JSON gateway, a WebDAV server,
//! PowerDNS's API). Each gets a [`Profile`]: its timeouts, whether it follows redirects (only
//! the CA, and only as RFC 8555 allows), whether it goes through the environment's proxy (only
//! the CA and the operator's services, never etcd inside the fleet), its TLS roots and client
//! certificate. [`read_capped`] reads an answer up to the cap its caller sets for it.

use std::time::Duration;

use super::client::{redirect_allowed, tls_config_with_client, USER_AGENT};
use super::error::Error;

/// Which redirects a client follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirects {
    /// None: a redirect is an answer like any other.
    Refuse,
    /// The CA's: a few, never from HTTPS down to plain HTTP (RFC 8555 section 6.1).
    Acme,
}

/// How a client talks to one kind of server.
#[derive(Debug, Clone)]
pub struct Profile<'a> {
    /// Upper bound for one exchange, connect to last byte (`None`: only the connect timeout,
    /// for streamed answers such as etcd's watches, which set their own per request).
    pub timeout: Option<Duration>,
    /// Upper bound for establishing the TCP and TLS connection.
    pub connect_timeout: Duration,
    /// Which redirects are followed.
    pub redirects: Redirects,
    /// Go through `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` from the environment.
    pub proxy: bool,
    /// PEM certificates trusted besides the system's roots.
    pub extra_roots_pem: Option<&'a [u8]>,
    /// A client certificate chain and key (PEM) for servers that ask for one.
    pub client_cert: Option<(&'a [u8], &'a [u8])>,
}

impl Profile<'_> {
    /// A profile with this timeout: no redirects, the proxy from the environment, the
    /// system's roots, a 10 s connect timeout.
    pub fn new(timeout: Duration) -> Profile<'static> {
        Profile {
            timeout: Some(timeout),
            connect_timeout: CONNECT_TIMEOUT,
            redirects: Redirects::Refuse,
            proxy: true,
            extra_roots_pem: None,
            client_cert: None,
        }
    }
}

/// Upper bound for establishing a TCP and TLS connection, unless a profile says otherwise.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for a profile.
pub fn client(profile: &Profile<'_>) -> Result<reqwest::Client, Error> {
    let tls = tls_config_with_client(profile.extra_roots_pem, profile.client_cert)?;
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .user_agent(USER_AGENT)
        .connect_timeout(profile.connect_timeout);
    if let Some(t) = profile.timeout {
        builder = builder.timeout(t);
    }
    if !profile.proxy {
        builder = builder.no_proxy();
    }
    builder = builder.redirect(match profile.redirects {
        Redirects::Refuse => reqwest::redirect::Policy::none(),
        Redirects::Acme => reqwest::redirect::Policy::custom(|attempt| {
            let first = attempt.previous().first().map(|u| u.scheme() == "http");
            match redirect_allowed(
                first.unwrap_or(false),
                attempt.url().scheme(),
                attempt.previous().len(),
            ) {
                Ok(()) => attempt.follow(),
                Err(why) => attempt.error(why),
            }
        }),
    });
    builder.build().map_err(|e| Error::Tls(e.to_string()))
}

/// Why an answer's body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Over the profile's cap.
    #[error("the answer is larger than {limit} bytes")]
    TooLarge {
        /// The cap.
        limit: usize,
    },
    /// The connection failed while the body arrived.
    #[error("the answer broke off: {0}")]
    Transport(String),
}

/// Reads an answer's body, refusing one larger than `limit` (by its Content-Length before
/// reading, and by what arrives).
pub async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| BodyError::Transport(super::client::error_chain(&e)))?
    {
        if out.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
