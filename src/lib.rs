//! acme-nginx: TLS certificates from any ACME CA for the server blocks of a running nginx.
//!
//! The folders say the architecture; dependencies point down only:
//!
//! - [`lifecycle`]: the domain: from server blocks to live, renewed certificates (plans, runs,
//!   the choice of CA, the renewal policy, installing, status, metrics, notifications, the
//!   watch loop). It uses everything below.
//! - [`acme`]: an RFC 8555 client with no nginx in it, usable on its own.
//! - [`challenge`]: answering challenges (the http-01 webroot solver and its preflights, the
//!   public-address check, WebDAV, dns-01).
//! - [`nginx`]: reading, editing, testing, reloading and probing nginx.
//! - [`store`]: the state directory (lineages, accounts, lock, token journal).
//! - [`hooks`]: the user's pre/post/deploy hooks.
//! - [`fsutil`]: atomic, link-safe file writes.
//! - [`secret`]: the one way a secret file is read, and a type that never shows a secret.
//!
//! The command line lives in the binary (`src/cli/`): it parses, calls [`lifecycle`] or
//! [`acme`], and prints.

#[warn(missing_docs)]
pub mod acme;
pub mod challenge;
pub mod fsutil;
pub mod hooks;
pub mod lifecycle;
pub mod nginx;
pub mod secret;
pub mod store;
