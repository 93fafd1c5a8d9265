//! A small etcd v3 client over etcd's JSON gateway (`POST /v3/kv/range`, `/v3/kv/put`,
//! `/v3/kv/txn`, `/v3/lease/*`, `/v3/watch`), on the reqwest client acme-nginx already has: the
//! key-value calls fleet mode needs, create-if-absent transactions, leases kept alive while a
//! node works, and watches. Every call goes to the first endpoint that answers (a member that
//! is down is skipped); a cluster without quorum answers with an error or not at all, and the
//! call fails within [`ETCD_TIMEOUT`] with a message that says so. Keys and values are bytes
//! (base64 on the wire, as the gateway wants).

#[cfg(test)]
pub(crate) mod fake;

use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

/// How long one etcd call may take (a cluster without quorum never answers a write).
pub const ETCD_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound for connecting to one etcd endpoint before the next is tried.
pub const ETCD_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest answer read from etcd (a prefix holding every lineage of a fleet).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// A failed etcd call.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("no etcd endpoint answered ({tried}): {last}; etcd answers only while most of its members are up (quorum), so nothing is ordered until it does")]
    Unreachable { tried: String, last: String },
    #[error("etcd at {endpoint} refused {call}: {message}")]
    Refused {
        endpoint: String,
        call: String,
        message: String,
    },
    #[error("etcd at {endpoint} answered {call} with something that is not the JSON expected: {message}")]
    Malformed {
        endpoint: String,
        call: String,
        message: String,
    },
    #[error("cannot build the etcd client: {0}")]
    Client(String),
}

/// One key-value pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

/// A change a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(Kv),
    Delete(String),
}

/// How to reach the cluster.
#[derive(Debug, Clone, Default)]
pub struct EtcdConfig {
    /// `http(s)://host:port` of each member.
    pub endpoints: Vec<String>,
    /// Extra trust anchors (PEM) for the members' HTTPS.
    pub ca_pem: Option<Vec<u8>>,
    /// etcd's user and password (its own authentication), if enabled.
    pub user: Option<(String, crate::secret::Secret)>,
    /// A client certificate and key (PEM) for members that require one (`--client-cert-auth`).
    pub client_cert: Option<(Vec<u8>, crate::secret::Secret)>,
}

/// A client of one etcd cluster.
#[derive(Debug)]
pub struct Etcd {
    endpoints: Vec<String>,
    http: reqwest::Client,
    user: Option<(String, crate::secret::Secret)>,
    token: Mutex<Option<String>>,
    /// Unit tests: every call answered by an in-memory cluster instead.
    #[cfg(test)]
    fake: Option<std::sync::Arc<fake::FakeCluster>>,
}

fn b64(data: &[u8]) -> String {
    STANDARD.encode(data)
}

fn unb64(v: &Value) -> Vec<u8> {
    v.as_str()
        .and_then(|s| STANDARD.decode(s).ok())
        .unwrap_or_default()
}

/// The gateway writes 64-bit numbers as strings.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kv_of(v: &Value) -> Kv {
    Kv {
        key: String::from_utf8_lossy(&unb64(&v["key"])).into_owned(),
        value: unb64(&v["value"]),
        create_revision: int(&v["create_revision"]),
        mod_revision: int(&v["mod_revision"]),
        lease: int(&v["lease"]),
    }
}

/// The end of the key range holding every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Etcd {
    /// A client for the cluster (no call is made yet).
    pub fn new(config: &EtcdConfig) -> Result<Etcd, EtcdError> {
        if config.endpoints.is_empty() {
            return Err(EtcdError::Client("no etcd endpoint given".into()));
        }
        // Per-request timeouts (watches stream for as long as they last); never a proxy: the
        // cluster is the fleet's own.
        let http = crate::acme::net::client(&crate::acme::net::Profile {
            timeout: None,
            connect_timeout: ETCD_CONNECT_TIMEOUT,
            redirects: crate::acme::net::Redirects::Refuse,
            proxy: false,
            extra_roots_pem: config.ca_pem.as_deref(),
            client_cert: config
                .client_cert
                .as_ref()
                .map(|(c, k)| (c.as_slice(), k.expose())),
        })
        .map_err(|e| EtcdError::Client(e.to_string()))?;
        Ok(Etcd {
            endpoints: config
                .endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_owned())
                .collect(),
            http,
            user: config.user.clone(),
            token: Mutex::new(None),
            #[cfg(test)]
            fake: None,
        })
    }

    /// A client of an in-memory cluster (unit tests).
    #[cfg(test)]
    pub(crate) fn fake(cluster: std::sync::Arc<fake::FakeCluster>) -> Etcd {
        let mut etcd = Etcd::new(&EtcdConfig {
            endpoints: vec!["http://fake.invalid".into()],
            ..EtcdConfig::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        etcd.fake = Some(cluster);
        etcd
    }

    fn token(&self) -> Option<String> {
        self.token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A gateway request: `body` as JSON to `path` on `endpoint`, with the auth token when
    /// there is one.
    fn post(&self, endpoint: &str, path: &str, body: &Value) -> reqwest::RequestBuilder {
        let req = self
            .http
            .post(format!("{endpoint}{path}"))
            .header("Content-Type", "application/json")
            .body(body.to_string());
        match self.token() {
            Some(t) => req.header("Authorization", t),
            None => req,
        }
    }

    /// POSTs `body` to `path` on the first endpoint that answers (authenticated first when a
    /// user is configured).
    async fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        if self.user.is_none() {
            return self.call_raw(path, body).await;
        }
        if self.token().is_none() {
            self.authenticate().await?;
        }
        match self.call_raw(path, body).await {
            // etcd's simple tokens expire (--auth-token-ttl): authenticate again, once.
            Err(EtcdError::Refused { message, .. }) if message.contains("invalid auth token") => {
                self.authenticate().await?;
                self.call_raw(path, body).await
            }
            other => other,
        }
    }

    async fn call_raw(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        #[cfg(test)]
        if let Some(cluster) = &self.fake {
            return cluster.call(path, body);
        }
        let mut last = String::new();
        for endpoint in &self.endpoints {
            let req = self.post(endpoint, path, body).timeout(ETCD_TIMEOUT);
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{endpoint}: {}", crate::acme::error_chain(&e));
                    continue;
                }
            };
            let status = resp.status();
            let bytes = match crate::acme::net::read_capped(resp, MAX_ANSWER).await {
                Ok(b) => b,
                Err(e) => {
                    last = format!("{endpoint}: {e}");
                    continue;
                }
            };
            let value: Value =
                serde_json::from_slice(&bytes).map_err(|e| EtcdError::Malformed {
                    endpoint: endpoint.clone(),
                    call: path.to_owned(),
                    message: e.to_string(),
                })?;
            if !status.is_success() || value.get("error").is_some() {
                let message = value["message"]
                    .as_str()
                    .or(value["error"].as_str())
                    .unwrap_or("no message")
                    .to_owned();
                // A member without a leader cannot serve; another may.
                if message.contains("no leader") || message.contains("timed out") {
                    last = format!("{endpoint}: {message} (the cluster may have lost its quorum)");
                    continue;
                }
                return Err(EtcdError::Refused {
                    endpoint: endpoint.clone(),
                    call: path.to_owned(),
                    message: crate::acme::escape_controls(&message),
                });
            }
            return Ok(value);
        }
        Err(EtcdError::Unreachable {
            tried: self.endpoints.join(", "),
            last,
        })
    }

    async fn authenticate(&self) -> Result<(), EtcdError> {
        let Some((user, password)) = &self.user else {
            return Ok(());
        };
        // An expired token sent along would be refused too.
        *self
            .token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        let v = self
            .call_raw(
                "/v3/auth/authenticate",
                &json!({"name": user, "password": password.expose_line().unwrap_or_default()}),
            )
            .await?;
        *self
            .token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            v["token"].as_str().map(str::to_owned);
        Ok(())
    }

    /// The value of one key.
    pub async fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        let v = self
            .call("/v3/kv/range", &json!({"key": b64(key.as_bytes())}))
            .await?;
        Ok(v["kvs"].as_array().and_then(|a| a.first()).map(kv_of))
    }

    /// Every key under `prefix`, and the store's revision then (to watch from).
    pub async fn get_prefix(&self, prefix: &str) -> Result<(Vec<Kv>, i64), EtcdError> {
        let v = self
            .call(
                "/v3/kv/range",
                &json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix))}),
            )
            .await?;
        let kvs = v["kvs"]
            .as_array()
            .map(|a| a.iter().map(kv_of).collect())
            .unwrap_or_default();
        Ok((kvs, int(&v["header"]["revision"])))
    }

    /// Sets a key (attached to `lease` when given, so it goes when the lease does).
    pub async fn put(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<(), EtcdError> {
        let mut body = json!({"key": b64(key.as_bytes()), "value": b64(value)});
        if let Some(l) = lease {
            body["lease"] = json!(l.to_string());
        }
        self.call("/v3/kv/put", &body).await.map(drop)
    }

    /// Deletes a key (absent is fine).
    pub async fn delete(&self, key: &str) -> Result<(), EtcdError> {
        self.call("/v3/kv/deleterange", &json!({"key": b64(key.as_bytes())}))
            .await
            .map(drop)
    }

    /// Deletes every key under a prefix.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<(), EtcdError> {
        self.call(
            "/v3/kv/deleterange",
            &json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix))}),
        )
        .await
        .map(drop)
    }

    /// Sets a key only if it does not exist: Ok(None) when it was set, Ok(Some(holder)) with
    /// what is there otherwise (one transaction).
    pub async fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<i64>,
    ) -> Result<Option<Kv>, EtcdError> {
        let k = b64(key.as_bytes());
        let mut put = json!({"key": k, "value": b64(value)});
        if let Some(l) = lease {
            put["lease"] = json!(l.to_string());
        }
        let v = self
            .call(
                "/v3/kv/txn",
                &json!({
                    "compare": [{"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
                    "success": [{"request_put": put}],
                    "failure": [{"request_range": {"key": k}}],
                }),
            )
            .await?;
        if v["succeeded"].as_bool() == Some(true) {
            return Ok(None);
        }
        Ok(v["responses"]
            .as_array()
            .and_then(|r| r.first())
            .and_then(|r| r["response_range"]["kvs"].as_array())
            .and_then(|a| a.first())
            .map(kv_of))
    }

    /// A new lease of `ttl`.
    pub async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let v = self
            .call(
                "/v3/lease/grant",
                &json!({"TTL": ttl.as_secs().to_string()}),
            )
            .await?;
        Ok(int(&v["ID"]))
    }

    /// Renews a lease; the TTL it has now (0: it had expired).
    pub async fn keep_alive(&self, lease: i64) -> Result<i64, EtcdError> {
        let v = self
            .call("/v3/lease/keepalive", &json!({"ID": lease.to_string()}))
            .await?;
        Ok(int(&v["result"]["TTL"]))
    }

    /// Ends a lease now, deleting its keys.
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", &json!({"ID": lease.to_string()}))
            .await
            .map(drop)
    }

    /// Watches every key under `prefix` from `start_revision`, handing each event to
    /// `on_event` until it returns false or the stream ends (an error then).
    pub async fn watch(
        &self,
        prefix: &str,
        start_revision: i64,
        mut on_event: impl FnMut(Event) -> bool,
    ) -> Result<(), EtcdError> {
        let body = json!({"create_request": {
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix)),
            "start_revision": start_revision.to_string(),
        }});
        let mut last = String::new();
        for endpoint in &self.endpoints {
            let mut resp = match self.post(endpoint, "/v3/watch", &body).send().await {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => {
                    last = format!("{endpoint}: status {}", r.status());
                    continue;
                }
                Err(e) => {
                    last = format!("{endpoint}: {}", crate::acme::error_chain(&e));
                    continue;
                }
            };
            // One JSON object per message, concatenated.
            let mut buf: Vec<u8> = Vec::new();
            loop {
                let chunk = match resp.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        last = format!("{endpoint}: {}", crate::acme::error_chain(&e));
                        break;
                    }
                };
                buf.extend_from_slice(&chunk);
                let mut stream = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
                let mut consumed = 0;
                while let Some(Ok(msg)) = stream.next() {
                    consumed = stream.byte_offset();
                    for e in msg["result"]["events"].as_array().into_iter().flatten() {
                        let kv = kv_of(&e["kv"]);
                        let event = if e["type"].as_str() == Some("DELETE") {
                            Event::Delete(kv.key)
                        } else {
                            Event::Put(kv)
                        };
                        if !on_event(event) {
                            return Ok(());
                        }
                    }
                }
                buf.drain(..consumed);
                if buf.len() > MAX_ANSWER {
                    return Err(EtcdError::Malformed {
                        endpoint: endpoint.clone(),
                        call: "/v3/watch".into(),
                        message: "a watch message larger than the cap".into(),
                    });
                }
            }
        }
        Err(EtcdError::Unreachable {
            tried: self.endpoints.join(", "),
            last: format!("the watch ended: {last}"),
        })
    }
}

/// A lock held by this node: a key created only if absent, attached to a lease that a
/// background task keeps alive. Dropping it without [`Lock::release`] (a crash) lets the lease
/// run out, and another node may take the lock after the TTL.
#[derive(Debug)]
pub struct Lock {
    pub key: String,
    pub lease: i64,
    keeper: tokio::task::JoinHandle<()>,
}

/// The outcome of asking for a lock.
#[derive(Debug)]
pub enum Acquired {
    /// Ours until released (or until the lease runs out, should this process die).
    Held(Lock),
    /// Another owner holds it.
    HeldBy(String),
}

impl Acquired {
    /// The lock, when it is ours.
    pub fn held(self) -> Option<Lock> {
        match self {
            Acquired::Held(l) => Some(l),
            Acquired::HeldBy(_) => None,
        }
    }

    /// Who holds it, when it is not ours.
    pub fn holder(&self) -> Option<&str> {
        match self {
            Acquired::Held(_) => None,
            Acquired::HeldBy(h) => Some(h),
        }
    }
}

impl Lock {
    /// Takes `key` for `owner` with a lease of `ttl`, or says who holds it.
    pub async fn acquire(
        etcd: std::sync::Arc<Etcd>,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Acquired, EtcdError> {
        let lease = etcd.grant(ttl).await?;
        if let Some(holder) = etcd
            .put_if_absent(key, owner.as_bytes(), Some(lease))
            .await?
        {
            etcd.revoke(lease).await.ok();
            return Ok(Acquired::HeldBy(
                String::from_utf8_lossy(&holder.value).into_owned(),
            ));
        }
        let keeper = {
            let etcd = etcd.clone();
            tokio::spawn(async move {
                let every = (ttl / 3).max(Duration::from_millis(500));
                loop {
                    tokio::time::sleep(every).await;
                    match etcd.keep_alive(lease).await {
                        Ok(0) => {
                            tracing::warn!("the etcd lease {lease} expired");
                            return;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!("cannot renew the etcd lease {lease}: {e}"),
                    }
                }
            })
        };
        Ok(Acquired::Held(Lock {
            key: key.to_owned(),
            lease,
            keeper,
        }))
    }

    /// Gives the lock up now.
    pub async fn release(self, etcd: &Etcd) -> Result<(), EtcdError> {
        self.keeper.abort();
        etcd.revoke(self.lease).await
    }

    /// Stops keeping the lease alive without giving it up (what a crash does), for tests.
    pub fn abandon(self) {
        self.keeper.abort();
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_end_after_the_prefix() {
        assert_eq!(prefix_end("/acme-nginx/"), b"/acme-nginx0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[test]
    fn gateway_numbers_are_strings_or_numbers() {
        assert_eq!(int(&json!("42")), 42);
        assert_eq!(int(&json!(7)), 7);
        assert_eq!(int(&json!(null)), 0);
        let kv = kv_of(&json!({"key": b64(b"k"), "value": b64(b"v"), "mod_revision": "3"}));
        assert_eq!(
            (kv.key.as_str(), kv.value.as_slice(), kv.mod_revision),
            ("k", &b"v"[..], 3)
        );
    }
}
