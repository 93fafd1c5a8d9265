//! acme-nginx: TLS certificates from any ACME CA for the server blocks of a running nginx.
//!
//! The folders say the architecture: [`acme`] is an RFC 8555 client with no nginx in it;
//! [`challenge`] answers challenges (the http-01 webroot solver); [`nginx`] reads, edits and
//! reloads nginx; [`store`] keeps certificate lineages on disk; [`hooks`] runs the user's hooks;
//! [`cli`] ties them together, one file per command.

pub mod acme;
pub mod challenge;
pub mod cli;
pub mod fsutil;
pub mod hooks;
pub mod nginx;
pub mod store;
