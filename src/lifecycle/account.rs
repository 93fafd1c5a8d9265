//! The ACME account behind every order: one per CA directory in the state directory, created on
//! first use when the terms of service were agreed to.

use std::path::Path;

use super::{Error, Settings};
use crate::acme::{self, Account, AccountState, KeyPair, KeyType, NewAccountOptions};
use crate::fsutil;
use crate::store::Store;

/// `mailto:` URLs for plain addresses; refuses what cannot be an address.
pub fn contact_urls(emails: &[String]) -> Result<Vec<String>, Error> {
    emails
        .iter()
        .map(|e| {
            let addr = e.strip_prefix("mailto:").unwrap_or(e).trim();
            let valid = addr.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty() && domain.contains('.') && !addr.contains([',', ' ', '<', '>'])
            });
            if valid {
                Ok(format!("mailto:{addr}"))
            } else {
                Err(Error::BadEmail(e.clone()))
            }
        })
        .collect()
}

/// Reads an account state file (only reads: it is never opened for writing here).
pub fn read_state(path: &Path) -> Result<AccountState, Error> {
    let data = fsutil::read_limited(path).map_err(Error::io(format!(
        "read the account state {}",
        path.display()
    )))?;
    serde_json::from_slice(&data).map_err(|e| Error::AccountState {
        path: path.to_path_buf(),
        source: acme::Error::State(e.to_string()),
    })
}

/// Saves an account state file atomically with mode 0600.
pub fn write_state(path: &Path, state: &AccountState) -> Result<(), Error> {
    let json = serde_json::to_vec_pretty(state).map_err(|e| Error::AccountState {
        path: path.to_path_buf(),
        source: acme::Error::State(e.to_string()),
    })?;
    if let Some(parent) = path.parent() {
        fsutil::create_dir_all_mode(parent, 0o700)
            .map_err(Error::io(format!("create {}", parent.display())))?;
    }
    fsutil::write_atomic(path, &json, fsutil::PRIVATE_MODE).map_err(Error::io(format!(
        "write the account state {}",
        path.display()
    )))
}

/// Loads the account for the settings' CA from the store, or creates it when the terms were
/// agreed to (saved only when `save`). A saved account the CA no longer knows
/// (`accountDoesNotExist`: the CA lost or purged it) is registered afresh with the same contacts,
/// since its terms were agreed to when it was made, instead of failing every run.
pub async fn load_or_create(
    settings: &Settings,
    store: &Store,
    save: bool,
    client: acme::Client,
) -> Result<Account, Error> {
    let directory = client.directory_url().to_owned();
    let path = store.account_path(&directory);
    let mut agreed_before = None;
    if path.exists() {
        let state = read_state(&path)?;
        let account =
            Account::from_state(client.clone(), &state).map_err(|source| Error::AccountState {
                path: path.clone(),
                source,
            })?;
        match account.fetch().await {
            Ok(_) => return Ok(account),
            Err(e) if e.is_acme("accountDoesNotExist") => {
                tracing::warn!(
                    "the CA no longer knows the account {} ({}); registering a new one",
                    account.url(),
                    path.display()
                );
                agreed_before = Some(state.contact.clone());
            }
            Err(e) => return Err(e.into()),
        }
    }
    let meta = client.directory().meta.clone();
    if !settings.agree_tos && agreed_before.is_none() {
        return Err(Error::TermsNotAgreed {
            directory: directory.clone(),
            tos: meta
                .terms_of_service
                .unwrap_or_else(|| "(the CA publishes none)".into()),
        });
    }
    let eab = settings.eab_for(&directory);
    if meta.external_account_required && eab.is_none() {
        return Err(Error::EabRequired {
            directory: directory.clone(),
        });
    }
    let contact = match (&settings.email, agreed_before) {
        (Some(email), _) => contact_urls(std::slice::from_ref(email))?,
        (None, Some(old)) => old,
        (None, None) => Vec::new(),
    };
    let opts = NewAccountOptions {
        contact,
        terms_of_service_agreed: true,
        eab: eab.map(|e| {
            (
                e.kid.clone(),
                e.key.expose_line().unwrap_or_default().to_owned(),
            )
        }),
        eab_algorithm: eab.map(|e| e.algorithm).unwrap_or_default(),
    };
    let (account, _) = Account::create(client, KeyPair::generate(KeyType::P384), &opts).await?;
    if save {
        write_state(&path, &account.to_state())?;
    }
    Ok(account)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_urls_accept_addresses_and_refuse_others() {
        let ok = contact_urls(&["a@b.example".into(), "mailto:c@d.example".into()]).unwrap();
        assert_eq!(ok, vec!["mailto:a@b.example", "mailto:c@d.example"]);
        for bad in ["", "nobody", "a@b", "a b@c.d", "@c.d"] {
            assert!(contact_urls(&[bad.to_owned()]).is_err(), "{bad:?} accepted");
        }
    }
}
