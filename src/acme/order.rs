//! Orders (RFC 8555 section 7.4): create, authorize through a [`ChallengeSolver`], poll, finalize,
//! download the chain (and its alternates), and `sign`, which drives all of it for a set of names.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use tokio::time::Instant;

use super::account::Account;
use super::cert::CertInfo;
use super::client::MAX_CHAIN_BODY;
use super::error::Error;
use super::jws;
use super::solver::{ChallengeSolver, PendingChallenge};
use super::types::{
    Authorization, AuthorizationStatus, Challenge, Finalize, Identifier, NewOrder, Order,
    OrderStatus, Problem,
};

/// First wait between two polls of an authorization or order. Short, because a CA usually
/// validates within a second and every poll interval adds to the wall time of an order.
pub const POLL_FIRST_INTERVAL: Duration = Duration::from_millis(50);
/// Longest wait between two polls when the CA gives no Retry-After.
pub const POLL_MAX_INTERVAL: Duration = Duration::from_secs(5);
/// Longest Retry-After honoured while polling; a longer one is cut to this.
pub const POLL_MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Default time limit for a whole order, from newOrder to the downloaded chain.
pub const DEFAULT_ORDER_TIMEOUT: Duration = Duration::from_secs(300);

/// Options for one order.
#[derive(Debug, Clone)]
pub struct OrderOptions {
    /// A certificate profile the CA offers (directory `meta.profiles`).
    pub profile: Option<String>,
    /// The ARI CertID of the certificate this order replaces (RFC 9773 section 5).
    pub replaces: Option<String>,
    /// Prefer the chain whose topmost certificate was issued by this common name.
    pub preferred_chain: Option<String>,
    /// Time limit for the whole order.
    pub timeout: Duration,
}

impl Default for OrderOptions {
    fn default() -> Self {
        Self {
            profile: None,
            replaces: None,
            preferred_chain: None,
            timeout: DEFAULT_ORDER_TIMEOUT,
        }
    }
}

/// An issued certificate chain, parsed once when it is downloaded: everything after uses the
/// certificates and the leaf's facts from here instead of decoding the PEM again.
#[derive(Debug, Clone)]
pub struct CertificateChain {
    /// The chain as the CA sent it (PEM), leaf first.
    pub pem: String,
    /// The certificates (DER), leaf first; never empty.
    pub certificates: Vec<Vec<u8>>,
    /// The leaf's names, serial, validity and ARI CertID.
    pub leaf: CertInfo,
    /// The URL it was downloaded from.
    pub url: String,
    /// The order URL.
    pub order_url: String,
    /// How many alternate chains the CA offered.
    pub alternates: usize,
    /// The ARI CertID the CA recorded this order as replacing (RFC 9773), if it accepted one.
    pub replaces: Option<String>,
}

impl CertificateChain {
    /// Parses a PEM chain (leaf first); `url` names where it came from in errors.
    pub fn parse(pem: String, url: &str) -> Result<CertificateChain, Error> {
        let malformed = |message: String| Error::Malformed {
            url: url.to_owned(),
            message,
        };
        // Only certificates: a CA that slips a key or anything else into a chain is refused.
        let certificates =
            super::cert::pem_chain_strict(pem.as_bytes()).map_err(|e| malformed(e.to_string()))?;
        let leaf_der = certificates
            .first()
            .ok_or_else(|| malformed("the chain holds no certificate".into()))?;
        let leaf = CertInfo::from_der(leaf_der)?;
        Ok(CertificateChain {
            pem,
            certificates,
            leaf,
            url: url.to_owned(),
            order_url: String::new(),
            alternates: 0,
            replaces: None,
        })
    }

    /// The leaf certificate (DER).
    pub fn leaf_der(&self) -> &[u8] {
        &self.certificates[0]
    }

    /// The leaf certificate as PEM.
    pub fn leaf_pem(&self) -> String {
        super::cert::to_pem("CERTIFICATE", self.leaf_der())
    }

    /// The intermediates (everything after the leaf) as PEM.
    pub fn chain_pem(&self) -> String {
        self.certificates[1..]
            .iter()
            .map(|der| super::cert::to_pem("CERTIFICATE", der))
            .collect()
    }
}

/// A PEM text's `CERTIFICATE` blocks, each re-encoded as one canonical PEM block.
pub fn split_pem(pem: &str) -> Vec<String> {
    super::cert::pem_certificates(pem.as_bytes())
        .unwrap_or_default()
        .iter()
        .map(|der| super::cert::to_pem("CERTIFICATE", der))
        .collect()
}

/// An order at the CA and its last known state.
#[derive(Debug, Clone)]
pub struct OrderHandle {
    account: Account,
    /// The order URL.
    pub url: String,
    /// The order object as last fetched.
    pub state: Order,
}

impl Account {
    /// Places a new order.
    pub async fn new_order(
        &self,
        identifiers: Vec<Identifier>,
        profile: Option<String>,
        replaces: Option<String>,
    ) -> Result<OrderHandle, Error> {
        let url = self.client.directory().new_order.clone();
        let body = NewOrder {
            identifiers,
            profile,
            replaces,
            ..NewOrder::default()
        };
        let (state, resp): (Order, _) = self
            .client
            .post_json(self.signer(), &url, Some(&body))
            .await?;
        Ok(OrderHandle {
            account: self.clone(),
            url: resp.location()?,
            state,
        })
    }

    /// Gets a certificate for `names` with the CSR `csr_der`, answering challenges through
    /// `solver`. Every challenge handed to `solver.fulfill` is handed to `solver.clear` before
    /// this returns, whether the order succeeded, failed or timed out.
    pub async fn sign<S: ChallengeSolver>(
        &self,
        names: &[String],
        csr_der: &[u8],
        solver: &S,
        opts: &OrderOptions,
    ) -> Result<CertificateChain, Error> {
        let mut order = self.create_order(names, opts).await?;
        order.complete(names, csr_der, solver, opts).await
    }

    /// Places the order for `names` (with the options' profile and `replaces`). An order the
    /// CA refuses because of `replaces` is placed again without it; one the CA failed on
    /// (a 5xx problem) while looking up what it replaces is tried [`REPLACES_RETRIES`] more
    /// times, after [`REPLACES_RETRY_WAIT`] and then twice as long each time (a CA may not have
    /// indexed a certificate it issued a moment ago; pebble has that race), then without
    /// `replaces`.
    pub async fn create_order(
        &self,
        names: &[String],
        opts: &OrderOptions,
    ) -> Result<OrderHandle, Error> {
        let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::from_name(n)).collect();
        let place = || {
            self.new_order(
                identifiers.clone(),
                opts.profile.clone(),
                opts.replaces.clone(),
            )
        };
        // A CA that has not indexed the replaced certificate yet answers 5xx: asked again,
        // after REPLACES_RETRY_WAIT and then twice that, before `replaces` is dropped.
        let mut first = place().await;
        let mut wait = REPLACES_RETRY_WAIT;
        for _ in 0..REPLACES_RETRIES {
            match &first {
                Err(e) if opts.replaces.is_some() && server_failed(e) => {
                    tracing::warn!(
                        "the CA failed on an order with `replaces` ({e}); trying again in {} ms",
                        wait.as_millis()
                    );
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    first = place().await;
                }
                _ => break,
            }
        }
        let order = match first {
            Err(e) if opts.replaces.is_some() && (refusal_of_replaces(&e) || server_failed(&e)) => {
                tracing::warn!("the CA refused `replaces` ({e}); ordering without it");
                self.new_order(identifiers, opts.profile.clone(), None)
                    .await?
            }
            other => other?,
        };
        tracing::debug!(order = %order.url, status = %order.state.status, "order created");
        Ok(order)
    }

    /// An order this account placed earlier, fetched by its URL (to complete it after the
    /// process that placed it went away).
    ///
    /// The URL must be on the CA's origin (scheme, host and port of its directory): an order
    /// URL read back from storage another party could write is never sent a signed request
    /// elsewhere.
    pub async fn order(&self, url: &str) -> Result<OrderHandle, Error> {
        let directory = self.client.directory_url();
        let origin = |u: &str| reqwest::Url::parse(u).ok().map(|u| u.origin());
        if origin(url).is_none() || origin(url) != origin(directory) {
            return Err(Error::ForeignUrl {
                url: url.to_owned(),
                directory: directory.to_owned(),
            });
        }
        let (state, _) = self
            .client
            .post_json::<(), Order>(self.signer(), url, None)
            .await?;
        Ok(OrderHandle {
            account: self.clone(),
            url: url.to_owned(),
            state,
        })
    }
}

impl OrderHandle {
    /// Takes the order from wherever it is to a checked certificate: authorizations through
    /// `solver` while pending, finalization with `csr_der` once ready, download once valid.
    /// Every challenge handed to `solver.fulfill` is handed to `solver.clear` before this
    /// returns.
    pub async fn complete<S: ChallengeSolver>(
        &mut self,
        names: &[String],
        csr_der: &[u8],
        solver: &S,
        opts: &OrderOptions,
    ) -> Result<CertificateChain, Error> {
        let deadline = Instant::now() + opts.timeout;
        let order = self;
        order.validate_until(solver, deadline, opts.timeout).await?;
        if order.state.status == OrderStatus::Ready {
            order.finalize(csr_der).await?;
            order
                .poll_until(deadline, |s| {
                    !matches!(s, OrderStatus::Processing | OrderStatus::Ready)
                })
                .await?;
        }
        if order.state.status != OrderStatus::Valid {
            return Err(Error::OrderInvalid {
                url: order.url.clone(),
                problem: order.state.error.clone().map(Box::new),
            });
        }
        let chain = order.download(opts.preferred_chain.as_deref()).await?;
        super::cert::check_issued(
            &chain.certificates,
            names,
            csr_der,
            time::OffsetDateTime::now_utc(),
        )?;
        Ok(chain)
    }
}

/// How long before an order the CA failed on (5xx) while handling `replaces` is placed again.
pub const REPLACES_RETRY_WAIT: Duration = Duration::from_secs(1);
/// How many times an order with `replaces` the CA failed on (5xx) is placed again, the wait
/// doubling each time, before it is placed without `replaces`.
pub const REPLACES_RETRIES: usize = 2;

/// True when the CA answered with a server-side problem (HTTP 5xx).
fn server_failed(e: &Error) -> bool {
    matches!(e, Error::Problem { status, .. } if *status >= 500)
}

/// True when a newOrder error looks like the CA refusing the `replaces` field (RFC 9773 names
/// `alreadyReplaced`; some CAs answer `malformed` or `conflict`), not a rate limit or an outage.
fn refusal_of_replaces(e: &Error) -> bool {
    matches!(e, Error::Problem { status, .. } if (400..500).contains(status))
}

impl OrderHandle {
    /// The first half of [`OrderHandle::complete`]: while the order is pending, its
    /// authorizations are fulfilled through `solver` and validated; returns once the CA says
    /// the order is no longer pending (ready, or invalid). Every challenge handed to
    /// `solver.fulfill` is handed to `solver.clear` before this returns.
    pub async fn validate<S: ChallengeSolver>(
        &mut self,
        solver: &S,
        opts: &OrderOptions,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + opts.timeout;
        self.validate_until(solver, deadline, opts.timeout).await
    }

    async fn validate_until<S: ChallengeSolver>(
        &mut self,
        solver: &S,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), Error> {
        if self.state.status == OrderStatus::Pending {
            let mut started = Vec::new();
            let outcome =
                tokio::time::timeout_at(deadline, self.authorize(solver, &mut started, deadline))
                    .await;
            for ch in &started {
                if let Err(e) = solver.clear(ch).await {
                    tracing::warn!(identifier = %ch.identifier, "could not clear challenge: {e}");
                }
            }
            outcome.map_err(|_| Error::Timeout {
                what: "waiting for authorizations".into(),
                after: timeout,
            })??;
        }
        self.poll_until(deadline, |s| {
            !matches!(s, OrderStatus::Pending | OrderStatus::Processing)
        })
        .await
    }

    /// Re-fetches the order; returns the Retry-After the CA sent, if any.
    pub async fn refresh(&mut self) -> Result<Option<Duration>, Error> {
        let (state, resp) = self
            .account
            .client
            .post_json::<(), Order>(self.account.signer(), &self.url, None)
            .await?;
        self.state = state;
        Ok(resp.retry_after())
    }

    /// Fetches every authorization of the order, concurrently.
    pub async fn authorizations(&self) -> Result<Vec<(String, Authorization)>, Error> {
        let fetches = self.state.authorizations.iter().map(|url| async move {
            let (authz, _) = self
                .account
                .client
                .post_json::<(), Authorization>(self.account.signer(), url, None)
                .await?;
            Ok::<_, Error>((url.clone(), authz))
        });
        join_all(fetches).await.into_iter().collect()
    }

    /// Fulfils every pending authorization through `solver`, asks the CA to validate, and waits
    /// for the verdicts. Each challenge is pushed to `started` before `fulfill` is called.
    async fn authorize<S: ChallengeSolver>(
        &self,
        solver: &S,
        started: &mut Vec<PendingChallenge>,
        deadline: Instant,
    ) -> Result<(), Error> {
        let thumbprint = jws::thumbprint(&self.account.key);
        let mut todo = Vec::new();
        for (url, authz) in self.authorizations().await? {
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                _ => return Err(authorization_failure(&authz)),
            }
            let challenge = solver
                .challenge_types_for(&authz.identifier, authz.wildcard)
                .iter()
                .find_map(|kind| authz.challenges.iter().find(|c| &c.kind == kind))
                .ok_or_else(|| Error::NoSupportedChallenge {
                    identifier: authz.identifier.value.clone(),
                    offered: authz
                        .challenges
                        .iter()
                        .map(|c| c.kind.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            let token = challenge.token.clone().unwrap_or_default();
            if !jws::is_valid_token(&token) {
                return Err(Error::Malformed {
                    url: challenge.url.clone(),
                    message: format!(
                        "challenge token {token:?} is not base64url (RFC 8555 section 8.1)"
                    ),
                });
            }
            todo.push((
                url,
                PendingChallenge {
                    identifier: authz.identifier.clone(),
                    wildcard: authz.wildcard,
                    kind: challenge.kind.clone(),
                    key_authorization: format!("{token}.{thumbprint}"),
                    token,
                    url: challenge.url.clone(),
                },
            ));
        }
        if todo.is_empty() {
            return Ok(());
        }

        started.extend(todo.iter().map(|(_, ch)| ch.clone()));
        let fulfilled = join_all(todo.iter().map(|(_, ch)| solver.fulfill(ch))).await;
        for (result, (_, ch)) in fulfilled.into_iter().zip(&todo) {
            result.map_err(|e| Error::Solver {
                identifier: ch.identifier.value.clone(),
                message: e.to_string(),
            })?;
        }

        let client = &self.account.client;
        let empty = json!({});
        let responses = join_all(todo.iter().map(|(_, ch)| {
            client.post_json::<_, Challenge>(self.account.signer(), &ch.url, Some(&empty))
        }))
        .await;
        for r in responses {
            r?;
        }

        let verdicts = join_all(
            todo.iter()
                .map(|(url, _)| self.poll_authorization(url, deadline)),
        )
        .await;
        let mut first_failure = None;
        for verdict in verdicts {
            let authz = verdict?;
            if authz.status != AuthorizationStatus::Valid {
                let err = authorization_failure(&authz);
                tracing::warn!("{err}");
                first_failure.get_or_insert(err);
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// Polls an authorization until it leaves `pending`.
    async fn poll_authorization(
        &self,
        url: &str,
        deadline: Instant,
    ) -> Result<Authorization, Error> {
        let mut interval = POLL_FIRST_INTERVAL;
        loop {
            let (authz, resp) = self
                .account
                .client
                .post_json::<(), Authorization>(self.account.signer(), url, None)
                .await?;
            if authz.status != AuthorizationStatus::Pending {
                return Ok(authz);
            }
            wait(&mut interval, resp.retry_after(), deadline, url).await?;
        }
    }

    /// Polls the order until `done(status)`.
    pub async fn poll_until(
        &mut self,
        deadline: Instant,
        done: impl Fn(&OrderStatus) -> bool,
    ) -> Result<(), Error> {
        let mut interval = POLL_FIRST_INTERVAL;
        while !done(&self.state.status) {
            let url = self.url.clone();
            let retry_after = self.refresh().await?;
            if done(&self.state.status) {
                break;
            }
            wait(&mut interval, retry_after, deadline, &url).await?;
        }
        Ok(())
    }

    /// Sends the CSR to the finalize URL.
    pub async fn finalize(&mut self, csr_der: &[u8]) -> Result<(), Error> {
        let body = Finalize {
            csr: jws::b64(csr_der),
        };
        let (state, _) = self
            .account
            .client
            .post_json(self.account.signer(), &self.state.finalize, Some(&body))
            .await?;
        self.state = state;
        Ok(())
    }

    /// Downloads the certificate chain; with `preferred_issuer`, picks the first chain (default
    /// or alternate, RFC 8555 section 7.4.2) whose topmost certificate was issued by that name.
    pub async fn download(
        &self,
        preferred_issuer: Option<&str>,
    ) -> Result<CertificateChain, Error> {
        let url = self
            .state
            .certificate
            .clone()
            .ok_or_else(|| Error::Malformed {
                url: self.url.clone(),
                message: "order is valid but names no certificate URL".into(),
            })?;
        let (default, alternates) = self.fetch_chain(&url).await?;
        let chain = |mut chain: CertificateChain| {
            chain.order_url = self.url.clone();
            chain.alternates = alternates.len();
            chain.replaces = self.state.replaces.clone();
            chain
        };
        let Some(preferred) = preferred_issuer else {
            return Ok(chain(default));
        };
        if topmost_issuer_is(&default, preferred) {
            return Ok(chain(default));
        }
        for alt in &alternates {
            let (alt_chain, _) = self.fetch_chain(alt).await?;
            if topmost_issuer_is(&alt_chain, preferred) {
                return Ok(chain(alt_chain));
            }
        }
        tracing::info!(
            preferred,
            "no chain is issued by the preferred issuer; keeping the default chain"
        );
        Ok(chain(default))
    }

    async fn fetch_chain(&self, url: &str) -> Result<(CertificateChain, Vec<String>), Error> {
        let resp = self
            .account
            .client
            .post::<()>(self.account.signer(), url, None, MAX_CHAIN_BODY)
            .await?;
        let pem = String::from_utf8(resp.body.clone()).map_err(|_| Error::Malformed {
            url: url.to_owned(),
            message: "certificate chain is not UTF-8 PEM".into(),
        })?;
        Ok((CertificateChain::parse(pem, url)?, resp.links("alternate")))
    }
}

/// Waits before the next poll: the CA's Retry-After when given (capped), otherwise the backoff
/// interval, which then grows by half up to its maximum. Errs when the deadline would pass.
async fn wait(
    interval: &mut Duration,
    retry_after: Option<Duration>,
    deadline: Instant,
    url: &str,
) -> Result<(), Error> {
    let pause = retry_after.map_or(*interval, |r| r.min(POLL_MAX_RETRY_AFTER));
    *interval = (*interval * 3 / 2).min(POLL_MAX_INTERVAL);
    let until = Instant::now() + pause;
    if until > deadline {
        return Err(Error::Timeout {
            what: format!("polling {url}"),
            after: DEFAULT_ORDER_TIMEOUT,
        });
    }
    tokio::time::sleep_until(until).await;
    Ok(())
}

/// The error for an authorization that did not become valid, with the CA's own problem.
fn authorization_failure(authz: &Authorization) -> Error {
    let problem = authz
        .challenges
        .iter()
        .find_map(|c| c.error.clone())
        .unwrap_or_else(|| Problem {
            detail: Some(format!("authorization is {}", authz.status)),
            ..Problem::default()
        });
    Error::AuthorizationFailed {
        identifier: authz.identifier.value.clone(),
        problem: Box::new(problem),
    }
}

/// True when the last certificate of the chain was issued by (or is) `name`.
fn topmost_issuer_is(chain: &CertificateChain, name: &str) -> bool {
    let Some(top) = chain
        .certificates
        .last()
        .and_then(|der| CertInfo::from_der(der).ok())
    else {
        return false;
    };
    top.issuer_cn.as_deref() == Some(name) || top.subject_cn.as_deref() == Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_pem_keeps_blocks_in_order() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\r\n\n-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n";
        let blocks = split_pem(pem);
        assert_eq!(blocks.len(), 2);
        assert!(blocks[0].contains("AAAA") && blocks[1].contains("BBBB"));
    }

    #[test]
    fn a_chain_is_parsed_once_into_leaf_and_intermediates() {
        let key = crate::acme::KeyPair::generate(crate::acme::KeyType::P256);
        let cert = |cn: &str| {
            let mut params = rcgen::CertificateParams::new(vec![cn.to_owned()]).unwrap();
            params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x0a, 0x0b]));
            params.self_signed(&key).unwrap().pem()
        };
        let pem = format!("{}{}", cert("leaf.test"), cert("intermediate.test"));
        let chain = CertificateChain::parse(pem, "https://ca.test/cert/1").unwrap();
        assert_eq!(chain.certificates.len(), 2);
        assert_eq!(chain.leaf.names, vec!["leaf.test"]);
        assert_eq!(chain.leaf.serial_hex, "0a0b");
        assert_eq!(
            chain.leaf_pem(),
            super::super::cert::to_pem("CERTIFICATE", chain.leaf_der())
        );
        assert_eq!(split_pem(&chain.chain_pem()).len(), 1);
        let err = CertificateChain::parse("no pem".into(), "https://ca.test/cert/2").unwrap_err();
        assert!(err.to_string().contains("https://ca.test/cert/2"), "{err}");
    }

    #[tokio::test]
    async fn wait_grows_the_interval_and_respects_the_deadline() {
        let mut interval = Duration::from_millis(10);
        wait(
            &mut interval,
            None,
            Instant::now() + Duration::from_secs(5),
            "u",
        )
        .await
        .unwrap();
        assert_eq!(interval, Duration::from_millis(15));
        let err = wait(
            &mut interval,
            Some(Duration::from_secs(30)),
            Instant::now() + Duration::from_secs(1),
            "u",
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
    }
}
