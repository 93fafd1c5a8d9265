//! The certificate lifecycle: from nginx's server blocks to live, verified, renewed
//! certificates. This is the domain layer the command line calls; it knows nothing of argument
//! parsing or printing, and returns typed [`Outcome`]s and [`Error`]s.
//!
//! - [`settings`]: the resolved settings of a run and its [`Mode`];
//! - [`plan`]: server blocks grouped into one certificate per primary name;
//! - [`policy`]: the one renewal policy (ARI window, lifetime rule, backoff), a pure decision;
//! - [`session`]: one run holding the run lock (and the install lock while it writes), its
//!   passes (`enroll`, `renew`, `remove`, `import-certbot`, a fleet's install of what another
//!   node published) as a sequence of [`stages`] sharing one [`env::Env`] (settings, store,
//!   coordinator, the CA client built once);
//! - [`intent`]: what an install is about to change, so a killed run is rolled back by the next;
//! - [`certbot`]: taking over certbot's certificates without new orders;
//! - [`coordinator`]: who else orders these lineages: nobody (a solo host) or a fleet;
//! - [`fleet`]: nodes sharing accounts and certificates through etcd;
//! - [`remove`]: taking certificates out of their blocks again, restoring what was there;
//! - [`status`] and [`metrics`]: what the state says, for people and for Prometheus;
//! - [`notify`]: telling someone when names fail, recover, or nginx serves a certificate near
//!   its expiry;
//! - [`watch`]: the long-running service loop.

pub mod account;
pub mod certbot;
pub mod coordinator;
pub mod env;
mod error;
pub mod fleet;
pub mod intent;
pub mod lineage;
pub mod metrics;
pub mod notify;
pub mod outcome;
pub mod plan;
pub mod policy;
pub mod remove;
mod renew;
pub mod session;
pub mod settings;
pub mod stages;
pub mod status;
pub mod watch;

pub use coordinator::Coordinator;
pub use error::Error;
pub use outcome::{Failure, FailureKind, Outcome, Status};
pub use plan::Plan;
pub use policy::{Decision, Reason, RenewalState};
pub use session::Session;
pub use settings::{Mode, Settings};
