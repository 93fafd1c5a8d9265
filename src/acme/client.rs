//! The HTTP side of ACME: the directory, a nonce pool fed by every `Replay-Nonce`, signed POST and
//! POST-as-GET with transparent `badNonce` retries, `Retry-After` handling, response size caps and
//! timeouts. Everything above this module speaks in typed requests and responses.

use rustls::pki_types::pem::PemObject;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, CONTENT_TYPE, LINK, LOCATION, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::Error;
use super::jws::{self, Signer};
use super::types::{Directory, Problem};

/// The User-Agent of every request (RFC 8555 section 6.1 asks clients to send one).
pub const USER_AGENT: &str = concat!("acme-nginx/", env!("CARGO_PKG_VERSION"));

/// Upper bound for one HTTP exchange, connect to last byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for establishing the TCP + TLS connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JSON response accepted (directories, orders, authorizations, problems).
pub const MAX_JSON_BODY: usize = 256 * 1024;
/// Largest certificate chain accepted.
pub const MAX_CHAIN_BODY: usize = 1024 * 1024;
/// How many `badNonce` rejections in a row one request survives. At 60% rejection the chance of
/// exhausting 40 tries is 0.6^40 ≈ 1e-9.
pub const MAX_BAD_NONCE_RETRIES: u32 = 40;
/// A 429/503 whose Retry-After is at most this long is waited out and retried in place.
pub const MAX_INLINE_RETRY_WAIT: Duration = Duration::from_secs(60);
/// How many times a 429/503 is retried in place.
pub const MAX_RATE_RETRIES: u32 = 3;
/// How many unused nonces are kept.
const NONCE_POOL_SIZE: usize = 32;

/// Settings for the connection to the CA.
#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    /// Extra trust anchors (PEM) for the CA's own TLS certificate, added to the system roots.
    pub extra_roots_pem: Option<Vec<u8>>,
    /// The longest `Retry-After` of a 429 or 503 waited out in place before the request is
    /// tried again ([`MAX_INLINE_RETRY_WAIT`] when unset). Zero: the error is returned at once
    /// (a caller with another CA to try).
    pub max_inline_retry_wait: Option<Duration>,
}

impl ClientConfig {
    /// Reads the extra trust anchors from a PEM file.
    pub fn with_ca_file(path: &Path) -> Result<Self, Error> {
        let pem = std::fs::read(path)
            .map_err(|e| Error::Tls(format!("cannot read CA file {}: {e}", path.display())))?;
        Ok(Self {
            extra_roots_pem: Some(pem),
            ..Self::default()
        })
    }
}

/// An HTTP response, read completely (within its cap).
#[derive(Debug, Clone)]
pub struct Response {
    /// The URL.
    pub url: String,
    /// The status.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The response body.
    pub body: Vec<u8>,
}

impl Response {
    /// The `Location` header.
    pub fn location(&self) -> Result<String, Error> {
        self.headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| Error::Malformed {
                url: self.url.clone(),
                message: "no Location header".into(),
            })
    }

    /// `Retry-After` as a duration from now (delta-seconds or HTTP-date).
    pub fn retry_after(&self) -> Option<Duration> {
        parse_retry_after(
            self.headers.get(RETRY_AFTER)?.to_str().ok()?,
            SystemTime::now(),
        )
    }

    /// Targets of `Link` headers with the given relation.
    pub fn links(&self, rel: &str) -> Vec<String> {
        self.headers
            .get_all(LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_link_header)
            .filter(|(_, r)| r.eq_ignore_ascii_case(rel))
            .map(|(url, _)| url)
            .collect()
    }

    /// The body parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| Error::Malformed {
            url: self.url.clone(),
            message: format!("invalid JSON: {e}"),
        })
    }

    /// The body as a problem document, when it is one.
    fn problem(&self) -> Option<Problem> {
        let ct = self
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !(ct.contains("json") || self.body.starts_with(b"{")) {
            return None;
        }
        serde_json::from_slice::<Problem>(&self.body)
            .ok()
            .filter(|p| p.kind.is_some() || p.detail.is_some())
    }

    fn body_text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        match text.char_indices().nth(300) {
            Some((i, _)) => format!("{}…", &text[..i]),
            None => text.to_owned(),
        }
    }

    /// Turns a 4xx/5xx into the matching error.
    fn into_error(self) -> Error {
        let retry_after = self.retry_after();
        match self.problem() {
            Some(problem) if problem.is("rateLimited") || self.status == 429 => {
                Error::RateLimited {
                    url: self.url,
                    problem: Box::new(problem),
                    retry_after,
                }
            }
            Some(problem) => Error::Problem {
                url: self.url,
                status: self.status,
                problem: Box::new(problem),
            },
            None => Error::Status {
                body: self.body_text(),
                url: self.url,
                status: self.status,
            },
        }
    }
}

/// Parses `Retry-After`: delta-seconds or an HTTP-date (RFC 9110 section 10.2.3).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses one `Link` header value into `(target, rel)` pairs (RFC 8288), tolerating several links
/// per value and several relation types per link.
pub fn parse_link_header(value: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find('<') {
        let Some(end) = rest[start..].find('>') else {
            break;
        };
        let target = rest[start + 1..start + end].trim().to_owned();
        rest = &rest[start + end + 1..];
        // Parameters run to the next ',' outside a quoted string.
        let mut in_quotes = false;
        let params_end = rest
            .char_indices()
            .find(|&(_, c)| {
                if c == '"' {
                    in_quotes = !in_quotes;
                }
                c == ',' && !in_quotes
            })
            .map_or(rest.len(), |(i, _)| i);
        let params = &rest[..params_end];
        for param in params.split(';') {
            let Some((name, val)) = param.split_once('=') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("rel") {
                for rel in val.trim().trim_matches('"').split_ascii_whitespace() {
                    out.push((target.clone(), rel.to_owned()));
                }
            }
        }
        rest = &rest[params_end..];
    }
    out
}

/// Builds the rustls configuration: system roots plus any extra anchors, ring as the provider.
pub fn tls_config(extra_roots_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, Error> {
    tls_config_with_client(extra_roots_pem, None)
}

/// Like [`tls_config`], presenting a client certificate (PEM chain and PEM private key) to
/// servers that ask for one (an etcd cluster with `--client-cert-auth`).
pub fn tls_config_with_client(
    extra_roots_pem: Option<&[u8]>,
    client: Option<(&[u8], &[u8])>,
) -> Result<rustls::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A broken system anchor is not ours to fix; skip it as browsers do.
        roots.add(cert).ok();
    }
    if let Some(pem) = extra_roots_pem {
        let mut added = 0;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| Error::Tls(format!("CA file: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::Tls(format!("CA file: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(Error::Tls("CA file holds no PEM certificate".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let Some((cert_pem, key_pem)) = client else {
        return Ok(builder.with_no_client_auth());
    };
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("client certificate: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls(
            "the client certificate file holds no PEM certificate".into(),
        ));
    }
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| Error::Tls(format!("client key: {e}")))?;
    builder
        .with_client_auth_cert(certs, key)
        .map_err(|e| Error::Tls(format!("client certificate and key: {e}")))
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    max_inline_retry_wait: Duration,
    directory_url: String,
    directory: Directory,
    nonces: Mutex<Vec<String>>,
}

/// A connection to one ACME directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Fetches the directory and prepares the client.
    pub async fn new(directory_url: &str, config: &ClientConfig) -> Result<Self, Error> {
        let http = super::net::client(&super::net::Profile {
            timeout: Some(REQUEST_TIMEOUT),
            connect_timeout: CONNECT_TIMEOUT,
            redirects: super::net::Redirects::Acme,
            proxy: true,
            extra_roots_pem: config.extra_roots_pem.as_deref(),
            client_cert: None,
        })?;
        let resp = send(&http, Method::GET, directory_url, None, MAX_JSON_BODY).await?;
        if resp.status != 200 {
            return Err(resp.into_error());
        }
        let directory: Directory = resp.json()?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                max_inline_retry_wait: config
                    .max_inline_retry_wait
                    .unwrap_or(MAX_INLINE_RETRY_WAIT),
                directory_url: directory_url.to_owned(),
                directory,
                nonces: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The directory URL this client was made for.
    pub fn directory_url(&self) -> &str {
        &self.inner.directory_url
    }

    /// The CA's directory.
    pub fn directory(&self) -> &Directory {
        &self.inner.directory
    }

    fn keep_nonce(&self, resp: &Response) {
        let Some(nonce) = resp
            .headers
            .get("replay-nonce")
            .and_then(|v| v.to_str().ok())
        else {
            return;
        };
        if let Ok(mut pool) = self.inner.nonces.lock() {
            if pool.len() >= NONCE_POOL_SIZE {
                pool.remove(0);
            }
            pool.push(nonce.to_owned());
        }
    }

    async fn nonce(&self) -> Result<String, Error> {
        if let Some(n) = self.inner.nonces.lock().ok().and_then(|mut p| p.pop()) {
            return Ok(n);
        }
        let url = &self.inner.directory.new_nonce;
        let resp = send(&self.inner.http, Method::HEAD, url, None, MAX_JSON_BODY).await?;
        if !(resp.status == 200 || resp.status == 204) {
            return Err(resp.into_error());
        }
        resp.headers
            .get("replay-nonce")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| Error::Malformed {
                url: url.clone(),
                message: "no Replay-Nonce header".into(),
            })
    }

    /// A signed POST (payload `Some`) or POST-as-GET (payload `None`). Retries `badNonce` with a
    /// fresh nonce and waits out short `Retry-After`s on 429/503. Any other 4xx/5xx is an error.
    pub async fn post<T: Serialize + ?Sized>(
        &self,
        signer: Signer<'_>,
        url: &str,
        payload: Option<&T>,
        limit: usize,
    ) -> Result<Response, Error> {
        let mut bad_nonces = 0;
        let mut rate_retries = 0;
        loop {
            let nonce = self.nonce().await?;
            let body = jws::sign(signer, Some(&nonce), url, payload)?;
            let body = serde_json::to_vec(&body).map_err(|e| Error::Key(e.to_string()))?;
            let resp = send(&self.inner.http, Method::POST, url, Some(body), limit).await?;
            self.keep_nonce(&resp);
            if resp.status < 400 {
                return Ok(resp);
            }
            let problem = resp.problem();
            if problem.as_ref().is_some_and(|p| p.is("badNonce")) {
                bad_nonces += 1;
                if bad_nonces < MAX_BAD_NONCE_RETRIES {
                    tracing::debug!(
                        url,
                        attempt = bad_nonces,
                        "badNonce, retrying with a fresh nonce"
                    );
                    continue;
                }
                return Err(Error::BadNonce {
                    url: url.to_owned(),
                    attempts: bad_nonces,
                    problem: Box::new(problem.unwrap_or_default()),
                });
            }
            if matches!(resp.status, 429 | 503) && rate_retries < MAX_RATE_RETRIES {
                let limit = self.inner.max_inline_retry_wait;
                if let Some(wait) = resp
                    .retry_after()
                    .filter(|d| *d <= limit && !limit.is_zero())
                {
                    rate_retries += 1;
                    tracing::info!(
                        url,
                        wait_secs = wait.as_secs(),
                        "CA asked to retry later; waiting"
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            return Err(resp.into_error());
        }
    }

    /// A signed POST whose answer is a JSON object.
    pub async fn post_json<T: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        signer: Signer<'_>,
        url: &str,
        payload: Option<&T>,
    ) -> Result<(R, Response), Error> {
        let resp = self.post(signer, url, payload, MAX_JSON_BODY).await?;
        Ok((resp.json()?, resp))
    }

    /// An unauthenticated GET (renewalInfo, CA roots). 4xx/5xx are errors.
    pub async fn get(&self, url: &str, limit: usize) -> Result<Response, Error> {
        let resp = send(&self.inner.http, Method::GET, url, None, limit).await?;
        self.keep_nonce(&resp);
        if resp.status >= 400 {
            return Err(resp.into_error());
        }
        Ok(resp)
    }
}

/// Sends one request and reads the body up to `limit` bytes.
async fn send(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<Vec<u8>>,
    limit: usize,
) -> Result<Response, Error> {
    let transport = |e: reqwest::Error| Error::Transport {
        url: url.to_owned(),
        message: error_chain(&e),
    };
    let mut req = http.request(method, url);
    if let Some(body) = body {
        req = req.header(CONTENT_TYPE, "application/jose+json").body(body);
    }
    let resp = req.send().await.map_err(transport)?;
    let status: StatusCode = resp.status();
    let headers = resp.headers().clone();
    let buf = super::net::read_capped(resp, limit)
        .await
        .map_err(|e| match e {
            super::net::BodyError::TooLarge { limit } => Error::TooLarge {
                url: url.to_owned(),
                limit,
            },
            super::net::BodyError::Transport(message) => Error::Transport {
                url: url.to_owned(),
                message,
            },
        })?;
    Ok(Response {
        url: url.to_owned(),
        status: status.as_u16(),
        headers,
        body: buf,
    })
}

/// The error and its sources on one line ("error sending request: connection refused").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// The most redirects followed for one request.
pub const MAX_REDIRECTS: usize = 3;

/// Whether a redirect may be followed: only to https (or to http when the CA was given as
/// plain http, as local test CAs are), never from https down to http, never to another scheme,
/// at most [`MAX_REDIRECTS`] in a row.
pub fn redirect_allowed(
    started_on_http: bool,
    scheme: &str,
    previous: usize,
) -> Result<(), RedirectRefused> {
    if previous > MAX_REDIRECTS {
        return Err(RedirectRefused(format!(
            "more than {MAX_REDIRECTS} redirects"
        )));
    }
    match scheme {
        "https" => Ok(()),
        "http" if started_on_http => Ok(()),
        "http" => Err(RedirectRefused(
            "refusing a redirect from https to plain http".into(),
        )),
        other => Err(RedirectRefused(format!(
            "refusing a redirect to a {other}: URL"
        ))),
    }
}

/// A redirect the client will not follow, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RedirectRefused(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers_with_several_links_and_rels() {
        let v = r#"<https://ca/cert/1/1>;rel="alternate", <https://ca/dir>;rel="index",<https://ca/cert/1/2>; rel="alternate up""#;
        let links = parse_link_header(v);
        assert_eq!(
            links,
            vec![
                ("https://ca/cert/1/1".to_owned(), "alternate".to_owned()),
                ("https://ca/dir".to_owned(), "index".to_owned()),
                ("https://ca/cert/1/2".to_owned(), "alternate".to_owned()),
                ("https://ca/cert/1/2".to_owned(), "up".to_owned()),
            ]
        );
        assert!(parse_link_header("<unterminated").is_empty());
        assert!(parse_link_header("garbage").is_empty());
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        // RFC 9110's example date is 784111777 seconds after the epoch.
        assert_eq!(
            parse_retry_after(
                "Sun, 06 Nov 1994 08:49:37 GMT",
                now - Duration::from_secs(30)
            ),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after(
                "Sun, 06 Nov 1994 08:49:37 GMT",
                now + Duration::from_secs(5)
            ),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn bad_ca_file_is_a_clear_error() {
        let err = tls_config(Some(b"not a pem")).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn redirects_stay_on_https_and_are_few() {
        assert!(redirect_allowed(false, "https", 1).is_ok());
        assert!(redirect_allowed(false, "http", 1)
            .unwrap_err()
            .0
            .contains("plain http"));
        assert!(redirect_allowed(true, "http", 1).is_ok());
        assert!(redirect_allowed(true, "file", 1)
            .unwrap_err()
            .0
            .contains("file:"));
        assert!(redirect_allowed(false, "ftp", 1).is_err());
        assert!(redirect_allowed(false, "https", MAX_REDIRECTS + 1)
            .unwrap_err()
            .0
            .contains("redirects"));
    }
}
