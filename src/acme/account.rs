//! Accounts (RFC 8555 section 7.3): create, find by key, update contact, key rollover, deactivate,
//! revocation and ARI lookups; and the serializable account state (`to_state` / `from_state`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::cert::CertInfo;
use super::client::{Client, MAX_JSON_BODY};
use super::error::Error;
use super::jws::{self, b64, Signer};
use super::key::KeyPair;
use super::types::{
    AccountResource, AccountStatus, AccountUpdate, NewAccount, RenewalInfoResource, Revocation,
};

/// How long to wait before asking again when the CA's renewalInfo carries no Retry-After
/// (RFC 9773 section 4.3.3 suggests six hours).
pub const DEFAULT_ARI_RETRY_AFTER: Duration = Duration::from_secs(6 * 3600);

/// What an account needs to be used again later; serialized as JSON with mode 0600.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    /// The directory URL of the CA.
    pub directory: String,
    /// The account URL (`kid`).
    pub account_url: String,
    /// The account private key, PKCS#8 PEM.
    pub private_key_pem: String,
    /// Contact URLs (`mailto:`).
    #[serde(default)]
    pub contact: Vec<String>,
}

/// Options for creating an account.
#[derive(Clone, Default)]
pub struct NewAccountOptions {
    /// Contact URLs (`mailto:...`).
    pub contact: Vec<String>,
    /// Agree to the CA's terms of service.
    pub terms_of_service_agreed: bool,
    /// External account binding: key id and base64url HMAC key.
    pub eab: Option<(String, String)>,
    /// The MAC algorithm of the binding.
    pub eab_algorithm: jws::EabAlgorithm,
}

impl std::fmt::Debug for NewAccountOptions {
    /// The EAB HMAC key is a secret: never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAccountOptions")
            .field("contact", &self.contact)
            .field("terms_of_service_agreed", &self.terms_of_service_agreed)
            .field(
                "eab",
                &self.eab.as_ref().map(|(kid, _)| (kid, "<redacted>")),
            )
            .finish()
    }
}

/// A renewalInfo answer (RFC 9773).
#[derive(Debug, Clone)]
pub struct RenewalInfo {
    /// The start of the suggested renewal window.
    pub window_start: OffsetDateTime,
    /// The end of the suggested renewal window.
    pub window_end: OffsetDateTime,
    /// A page explaining the window, when the CA gives one.
    pub explanation_url: Option<String>,
    /// When to ask again.
    pub retry_after: Duration,
}

/// An ACME account bound to a client.
#[derive(Debug, Clone)]
pub struct Account {
    pub(crate) client: Client,
    pub(crate) key: KeyPair,
    pub(crate) url: String,
    contact: Vec<String>,
}

impl Account {
    /// Registers a new account (or returns the existing one for this key, as RFC 8555 allows).
    pub async fn create(
        client: Client,
        key: KeyPair,
        opts: &NewAccountOptions,
    ) -> Result<(Self, AccountResource), Error> {
        let new_account_url = client.directory().new_account.clone();
        let eab = match &opts.eab {
            Some((kid, hmac)) => Some(jws::external_account_binding(
                &key,
                kid,
                hmac,
                opts.eab_algorithm,
                &new_account_url,
            )?),
            None => None,
        };
        let body = NewAccount {
            contact: &opts.contact,
            terms_of_service_agreed: opts.terms_of_service_agreed,
            only_return_existing: false,
            external_account_binding: eab,
        };
        let (resource, resp): (AccountResource, _) = client
            .post_json(Signer::Jwk(&key), &new_account_url, Some(&body))
            .await?;
        let url = resp.location()?;
        Ok((
            Self {
                client,
                key,
                url,
                contact: resource.contact.clone(),
            },
            resource,
        ))
    }

    /// Finds the existing account of `key` (`onlyReturnExisting`); the CA answers
    /// `accountDoesNotExist` when there is none.
    pub async fn find(client: Client, key: KeyPair) -> Result<(Self, AccountResource), Error> {
        let url = client.directory().new_account.clone();
        let body = NewAccount {
            only_return_existing: true,
            ..NewAccount::default()
        };
        let (resource, resp): (AccountResource, _) = client
            .post_json(Signer::Jwk(&key), &url, Some(&body))
            .await?;
        let url = resp.location()?;
        Ok((
            Self {
                client,
                key,
                url,
                contact: resource.contact.clone(),
            },
            resource,
        ))
    }

    /// Restores an account from its state. The client must be for the same directory.
    pub fn from_state(client: Client, state: &AccountState) -> Result<Self, Error> {
        if client.directory_url() != state.directory {
            return Err(Error::State(format!(
                "the account belongs to {}, not to {}",
                state.directory,
                client.directory_url()
            )));
        }
        if state.account_url.is_empty() {
            return Err(Error::State("no account URL".into()));
        }
        Ok(Self {
            key: KeyPair::from_pem(&state.private_key_pem)?,
            client,
            url: state.account_url.clone(),
            contact: state.contact.clone(),
        })
    }

    /// The state to persist.
    pub fn to_state(&self) -> AccountState {
        AccountState {
            directory: self.client.directory_url().to_owned(),
            account_url: self.url.clone(),
            private_key_pem: self.key.to_pem(),
            contact: self.contact.clone(),
        }
    }

    /// The account URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The account key.
    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    /// The client this account talks through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn signer(&self) -> Signer<'_> {
        Signer::Kid(&self.key, &self.url)
    }

    /// Fetches the account object.
    pub async fn fetch(&self) -> Result<AccountResource, Error> {
        let (r, _) = self
            .client
            .post_json::<(), _>(self.signer(), &self.url, None)
            .await?;
        Ok(r)
    }

    /// Replaces the contact list.
    pub async fn update_contact(&mut self, contact: Vec<String>) -> Result<AccountResource, Error> {
        let body = AccountUpdate {
            contact: Some(&contact),
            status: None,
        };
        let (r, _): (AccountResource, _) = self
            .client
            .post_json(self.signer(), &self.url, Some(&body))
            .await?;
        self.contact = r.contact.clone();
        Ok(r)
    }

    /// Rolls the account over to `new_key` (RFC 8555 section 7.3.5). On success this account
    /// signs with the new key; persist `to_state()` right away.
    pub async fn rollover(&mut self, new_key: KeyPair) -> Result<(), Error> {
        let url = self.client.directory().key_change.clone();
        let inner = jws::key_change_inner(&new_key, &self.key, &self.url, &url)?;
        self.client
            .post(self.signer(), &url, Some(&inner), MAX_JSON_BODY)
            .await?;
        self.key = new_key;
        Ok(())
    }

    /// Deactivates the account (RFC 8555 section 7.3.6). It cannot be used afterwards.
    pub async fn deactivate(&self) -> Result<AccountResource, Error> {
        let body = AccountUpdate {
            contact: None,
            status: Some(AccountStatus::Deactivated),
        };
        let (r, _) = self
            .client
            .post_json(self.signer(), &self.url, Some(&body))
            .await?;
        Ok(r)
    }

    /// Revokes a certificate this account holds (RFC 8555 section 7.6), with an optional CRL
    /// reason code (RFC 5280: 0 unspecified, 1 keyCompromise, 4 superseded, 5 cessationOfOperation).
    pub async fn revoke(&self, cert_der: &[u8], reason: Option<u8>) -> Result<(), Error> {
        if let Some(r) = reason {
            if r == 7 || r > 10 {
                return Err(Error::Certificate(format!(
                    "{r} is not a CRL reason code (RFC 5280 section 5.3.1)"
                )));
            }
        }
        let url = self.client.directory().revoke_cert.clone();
        let body = Revocation {
            certificate: b64(cert_der),
            reason,
        };
        self.client
            .post(self.signer(), &url, Some(&body), MAX_JSON_BODY)
            .await?;
        Ok(())
    }

    /// The CA's suggested renewal window for a certificate (RFC 9773), or `None` when the CA does
    /// not offer renewalInfo or the certificate has no Authority Key Identifier.
    pub async fn renewal_info(&self, cert_der: &[u8]) -> Result<Option<RenewalInfo>, Error> {
        renewal_info(&self.client, cert_der).await
    }
}

/// See [`Account::renewal_info`]; renewalInfo is an unauthenticated GET.
pub async fn renewal_info(client: &Client, cert_der: &[u8]) -> Result<Option<RenewalInfo>, Error> {
    let Some(base) = client.directory().renewal_info.clone() else {
        return Ok(None);
    };
    let Some(cert_id) = CertInfo::from_der(cert_der)?.ari_cert_id else {
        return Ok(None);
    };
    let url = format!("{}/{}", base.trim_end_matches('/'), cert_id);
    let resp = client.get(&url, MAX_JSON_BODY).await?;
    let r: RenewalInfoResource = resp.json()?;
    let parse = |s: &str| {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(|e| {
            Error::Malformed {
                url: url.clone(),
                message: format!("suggestedWindow time {s:?}: {e}"),
            }
        })
    };
    let (start, end) = (
        parse(&r.suggested_window.start)?,
        parse(&r.suggested_window.end)?,
    );
    if end < start {
        return Err(Error::Malformed {
            url,
            message: "suggestedWindow ends before it starts".into(),
        });
    }
    Ok(Some(RenewalInfo {
        window_start: start,
        window_end: end,
        explanation_url: r.explanation_url,
        retry_after: resp.retry_after().unwrap_or(DEFAULT_ARI_RETRY_AFTER),
    }))
}
