//! Answering ACME challenges. The [`ChallengeSolver`] trait lives in the ACME module (the client
//! drives it); the solvers live here: http-01 through this host's nginx (the webroot solver and
//! its preflight), http-01 through a WebDAV server ([`dav`]), dns-01 through RFC 2136, the
//! PowerDNS API or a hook ([`dns`]), and the [`route::Router`] that gives each name of an order
//! its method, and the public-address preflight ([`public`]) that checks a name's A/AAAA
//! records lead to this nginx before anything is ordered.

pub mod dav;
pub mod dns;
pub mod fleet;
pub mod preflight;
pub mod public;
pub mod route;
pub mod webroot;

pub use crate::acme::{ChallengeSolver, PendingChallenge, SolverError};
pub use webroot::WebrootSolver;
