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

pub mod account;
pub mod cert;
pub mod client;
pub mod error;
pub mod jws;
pub mod key;
pub mod net;
pub mod order;
pub mod solver;
pub mod types;

pub use account::{renewal_info, Account, AccountState, NewAccountOptions, RenewalInfo};
pub use cert::{create_csr, CertInfo, Csr};
pub use client::{Client, ClientConfig};
pub use error::Error;
pub use key::{KeyPair, KeyType};
pub use order::{CertificateChain, OrderHandle, OrderOptions};
pub use solver::{ChallengeSolver, PendingChallenge, SolverError};
pub use types::{ChallengeType, Identifier, Problem};

/// Let's Encrypt's production directory, the default CA.
pub const LETSENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (`--staging`).
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
