//! The stages of a session, in the order they run. Each takes the session's
//! [`Env`](super::env::Env) and small typed inputs and returns typed outputs; a stage may use a
//! later one (install proves its work with verify and ends with record's deploy hooks), never
//! the session.
//!
//! - [`triage`]: per plan, order, install, skip or wait: a pure function of the store's facts
//!   and the clock;
//! - [`prepare`]: nginx must pass `nginx -t` and run; challenge snippets in and out; DNS records
//!   a killed run left;
//! - [`rehearse`]: each plan's install edit, with a throwaway pair, through `nginx -t` in a
//!   private mount namespace, before anything is ordered;
//! - [`order`]: claims from the coordinator, the solvers, the public-address preflight,
//!   concurrent orders at the first usable CA ([`ca`]: the CAs' order, CAA, which failures fall
//!   over), [`order::Fresh`] certificates;
//! - [`install`]: versions, edits, one change transaction, rollback;
//! - [`verify`]: the TLS proof that nginx serves a certificate;
//! - [`record`]: failure memory and deploy hooks.

pub mod ca;
pub mod install;
pub mod order;
pub mod prepare;
pub mod record;
pub mod rehearse;
pub mod triage;
pub mod verify;
