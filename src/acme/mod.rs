//! A complete RFC 8555 (ACME) client, usable as a library on its own: it knows nothing of nginx,
//! of where certificates are installed, or of hooks. Challenges are answered through the
//! [`ChallengeSolver`] trait.
//!
//! ```no_run
//! # async fn demo(solver: impl acme_nginx::acme::ChallengeSolver) -> Result<(), acme_nginx::acme::Error> {
//! use acme_nginx::acme::{Account, Client, ClientConfig, KeyPair, KeyType, NewAccountOptions, OrderOptions};
//! let client = Client::new("https://acme-staging-v02.api.letsencrypt.org/directory", &ClientConfig::default()).await?;
//! let opts = NewAccountOptions { terms_of_service_agreed: true, ..Default::default() };
//! let (account, _) = Account::create(client, KeyPair::generate(KeyType::P384), &opts).await?;
//! let names = vec!["example.org".to_string()];
//! let csr = acme_nginx::acme::create_csr(&KeyPair::generate(KeyType::P256), &names)?;
//! let chain = account.sign(&names, &csr.der, &solver, &OrderOptions::default()).await?;
//! println!("{}", chain.pem);
//! # Ok(()) }
//! ```

mod account;
mod cert;
mod client;
mod error;
mod jws;
mod key;
pub mod net;
mod order;
mod solver;
mod types;

// The public surface, flat: the types a client of the library needs, each re-exported once.
pub use account::{renewal_info, Account, AccountState, NewAccountOptions, RenewalInfo};
pub use cert::{
    create_csr, csr_der, csr_names, key_matches, normalize_names, pem_certificates,
    pem_chain_strict, public_key_type, to_pem, CertInfo, Csr,
};
pub use client::{
    tls_config, Client, ClientConfig, MAX_INLINE_RETRY_WAIT, MAX_RATE_RETRIES, USER_AGENT,
};
pub use error::Error;
pub use jws::{
    b64, decode_b64, is_valid_token, key_authorization, thumbprint, EabAlgorithm,
    UnknownEabAlgorithm,
};
pub use key::{KeyPair, KeyType, UnknownKeyType};
pub use order::{
    split_pem, CertificateChain, OrderHandle, OrderOptions, REPLACES_RETRIES, REPLACES_RETRY_WAIT,
};
pub use solver::{ChallengeSolver, PendingChallenge, SolverError};
pub use types::{
    escape_controls, is_valid_dns_name, AccountResource, AccountStatus, ChallengeType, Identifier,
    Problem,
};

pub(crate) use client::error_chain;

/// Let's Encrypt's production directory, the default CA.
pub const LETSENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (`--staging`).
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
