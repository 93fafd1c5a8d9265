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
    let fetched;
    let mut eab = settings.eab_for(&directory);
    if meta.external_account_required && eab.is_none() && directory == settings.zerossl.directory {
        fetched = zerossl_eab(settings, &path).await?;
        eab = Some(&fetched);
    }
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

/// Upper bound for the EAB endpoint's answer.
pub const EAB_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The largest answer read from it.
const EAB_ANSWER_MAX: usize = 64 * 1024;

/// The EAB credentials ZeroSSL hands out for the account's email: kept next to the account
/// (`eab.json`, 0600) once fetched, fetched from its endpoint otherwise.
async fn zerossl_eab(settings: &Settings, account: &Path) -> Result<super::settings::Eab, Error> {
    let kept = account.with_file_name("eab.json");
    let parse = |bytes: &[u8]| -> Option<super::settings::Eab> {
        let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        Some(super::settings::Eab {
            kid: v["eab_kid"].as_str()?.to_owned(),
            key: crate::secret::Secret::new(v["eab_hmac_key"].as_str()?),
            algorithm: acme::EabAlgorithm::default(),
        })
    };
    if kept.exists() {
        let secret = crate::secret::read_secret(&kept).map_err(|e| Error::EabFetch {
            url: kept.display().to_string(),
            why: e.to_string(),
        })?;
        if let Some(eab) = parse(secret.expose()) {
            return Ok(eab);
        }
    }
    let url = settings.zerossl.eab_url.clone();
    let fail = |why: String| Error::EabFetch {
        url: url.clone(),
        why,
    };
    let email = settings.email.as_deref().ok_or_else(|| {
        fail("ZeroSSL hands out EAB credentials for an email address: pass --email (or give --eab-kid and --eab-hmac-key-file)".into())
    })?;
    contact_urls(&[email.to_owned()])?;
    let client = acme::net::client(&acme::net::Profile::new(EAB_FETCH_TIMEOUT))
        .map_err(|e| fail(e.to_string()))?;
    let body: String = format!("email={}", form_encode(email));
    let resp = client
        .post(&url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body)
        .send()
        .await
        .map_err(|e| fail(super::outcome::chain_text(&e)))?;
    let status = resp.status();
    let bytes = acme::net::read_capped(resp, EAB_ANSWER_MAX)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let answer: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| {
        fail(format!(
            "answered {status} with something else than JSON: {}",
            escaped(&String::from_utf8_lossy(&bytes))
        ))
    })?;
    let eab = parse(&bytes).filter(|_| answer["success"].as_bool() == Some(true));
    let Some(eab) = eab else {
        return Err(fail(format!(
            "answered {status} without credentials: {}",
            escaped(&answer.to_string())
        )));
    };
    let json = serde_json::json!({ "eab_kid": eab.kid, "eab_hmac_key": eab.key.expose_line().unwrap_or_default() });
    if let Some(dir) = kept.parent() {
        fsutil::create_dir_all_mode(dir, 0o700)
            .map_err(Error::io(format!("create {}", dir.display())))?;
    }
    fsutil::write_atomic(&kept, json.to_string().as_bytes(), fsutil::PRIVATE_MODE)
        .map_err(Error::io(format!("write {}", kept.display())))?;
    tracing::info!(
        "fetched EAB credentials for {email} from {url} (kept in {})",
        kept.display()
    );
    Ok(eab)
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Text from a remote party, shortened and with control characters escaped.
fn escaped(text: &str) -> String {
    acme::escape_controls(&text.chars().take(300).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_encoded() {
        assert_eq!(form_encode("a+b@c.example"), "a%2Bb%40c.example");
        assert_eq!(form_encode("x y\n"), "x+y%0A");
    }

    #[test]
    fn contact_urls_accept_addresses_and_refuse_others() {
        let ok = contact_urls(&["a@b.example".into(), "mailto:c@d.example".into()]).unwrap();
        assert_eq!(ok, vec!["mailto:a@b.example", "mailto:c@d.example"]);
        for bad in ["", "nobody", "a@b", "a b@c.d", "@c.d"] {
            assert!(contact_urls(&[bad.to_owned()]).is_err(), "{bad:?} accepted");
        }
    }
}
