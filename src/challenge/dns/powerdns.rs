//! The PowerDNS Authoritative HTTP API: the zone that holds a name is found among the server's
//! zones (the longest one that is a suffix of the name, not the apex guessed from the name), and
//! TXT values are added to and taken from the record set with `PATCH` (`REPLACE` with the other
//! values kept, `DELETE` when none is left). Changes to one server are made one at a time, so
//! two values added at once both stay.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

use super::rfc2136::TXT_TTL;

/// How long one API request may take.
pub const API_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest API answer read (a zone with its records).
const MAX_API_BODY: usize = 16 * 1024 * 1024;

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("PowerDNS API {url}: {message}")]
    Http { url: String, message: String },
    #[error("PowerDNS API {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("no zone of the PowerDNS server at {api} holds {name} (zones: {zones})")]
    NoZone {
        api: String,
        name: String,
        zones: String,
    },
}

/// A PowerDNS server's API.
#[derive(Debug)]
pub struct PowerDns {
    /// `http(s)://host:port` (an `/api/v1` suffix is accepted).
    base: String,
    key: crate::secret::Secret,
    http: reqwest::Client,
    /// One change at a time (a read-modify-write of a record set).
    changing: Mutex<()>,
}

#[derive(Debug, Deserialize)]
struct Zone {
    name: String,
    #[serde(default)]
    rrsets: Vec<RrSet>,
}

#[derive(Debug, Deserialize)]
struct RrSet {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    records: Vec<ApiRecord>,
}

#[derive(Debug, Deserialize)]
struct ApiRecord {
    content: String,
}

impl PowerDns {
    /// A client for the API at `url` with the key `key`.
    pub fn new(url: &str, key: &crate::secret::Secret) -> Result<PowerDns, ApiError> {
        let base = url
            .trim_end_matches('/')
            .trim_end_matches("/api/v1")
            .to_owned();
        let http = crate::acme::net::client(&crate::acme::net::Profile::new(API_TIMEOUT)).map_err(
            |e| ApiError::Http {
                url: base.clone(),
                message: e.to_string(),
            },
        )?;
        Ok(PowerDns {
            base,
            key: crate::secret::Secret::new(
                String::from_utf8_lossy(key.expose()).trim().to_owned(),
            ),
            http,
            changing: Mutex::new(()),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/servers/localhost{path}", self.base)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Vec<u8>, ApiError> {
        let http = |e: reqwest::Error| ApiError::Http {
            url: url.to_owned(),
            message: crate::acme::error_chain(&e),
        };
        let mut req = self
            .http
            .request(method, url)
            .header("X-API-Key", self.key.expose());
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.map_err(http)?;
        let status = resp.status().as_u16();
        let bytes = crate::acme::net::read_capped(resp, MAX_API_BODY)
            .await
            .map_err(|e| ApiError::Http {
                url: url.to_owned(),
                message: e.to_string(),
            })?;
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&bytes);
            return Err(ApiError::Status {
                url: url.to_owned(),
                status,
                body: crate::acme::escape_controls(
                    text.chars().take(300).collect::<String>().trim(),
                ),
            });
        }
        Ok(bytes)
    }

    async fn get<T: for<'de> Deserialize<'de>>(&self, url: &str) -> Result<T, ApiError> {
        let bytes = self.call(reqwest::Method::GET, url, None).await?;
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Http {
            url: url.to_owned(),
            message: format!("not the JSON expected: {e}"),
        })
    }

    /// The server's zone that holds `fqdn` (with its trailing dot): the longest suffix.
    pub async fn zone_of(&self, fqdn: &str) -> Result<String, ApiError> {
        let zones: Vec<Zone> = self.get(&self.url("/zones")).await?;
        let fqdn_l = fqdn.to_ascii_lowercase();
        zones
            .iter()
            .map(|z| z.name.to_ascii_lowercase())
            .filter(|z| fqdn_l == *z || fqdn_l.ends_with(&format!(".{z}")) || z == ".")
            .max_by_key(String::len)
            .ok_or_else(|| ApiError::NoZone {
                api: self.base.clone(),
                name: fqdn.to_owned(),
                zones: zones
                    .iter()
                    .map(|z| z.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Adds (`add`) or removes one TXT value of `fqdn` in `zone`, keeping the others.
    pub async fn change(
        &self,
        zone: &str,
        fqdn: &str,
        value: &str,
        add: bool,
    ) -> Result<(), ApiError> {
        let _one_at_a_time = self.changing.lock().await;
        let zone_url = self.url(&format!("/zones/{zone}"));
        let current: Zone = self.get(&zone_url).await?;
        let quoted = format!("\"{value}\"");
        let mut contents: Vec<String> = current
            .rrsets
            .iter()
            .filter(|r| r.kind == "TXT" && r.name.eq_ignore_ascii_case(fqdn))
            .flat_map(|r| r.records.iter().map(|c| c.content.clone()))
            .collect();
        let had = contents.contains(&quoted);
        match (add, had) {
            (true, true) | (false, false) => return Ok(()),
            (true, false) => contents.push(quoted),
            (false, true) => contents.retain(|c| *c != quoted),
        }
        let rrset = if contents.is_empty() {
            json!({"name": fqdn, "type": "TXT", "changetype": "DELETE"})
        } else {
            json!({
                "name": fqdn, "type": "TXT", "ttl": TXT_TTL, "changetype": "REPLACE",
                "records": contents.iter().map(|c| json!({"content": c, "disabled": false})).collect::<Vec<_>>(),
            })
        };
        self.call(
            reqwest::Method::PATCH,
            &zone_url,
            Some(json!({ "rrsets": [rrset] })),
        )
        .await
        .map(drop)
    }
}
