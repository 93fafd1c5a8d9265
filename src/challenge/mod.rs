//! Answering ACME challenges on this host. The [`ChallengeSolver`] trait lives in the ACME module
//! (the client drives it); the solvers that touch this machine live here: the http-01 webroot
//! solver, which writes token files into the directory nginx serves
//! `/.well-known/acme-challenge/` from.

pub mod dav;
pub mod dns;
pub mod preflight;
pub mod route;
pub mod webroot;

pub use crate::acme::solver::{ChallengeSolver, PendingChallenge, SolverError};
pub use webroot::WebrootSolver;
