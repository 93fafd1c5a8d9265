//! The integration tests, one binary (one link, one build): real pebble, nginx and packaging
//! tools where a test needs them, shared through `util`.
#![allow(clippy::unwrap_used, dead_code)]

mod util;

mod acme_hostile;
mod acme_pebble;
mod certbot;
mod dns;
mod enroll;
mod failures;
mod fleet;
mod fleet_store;
mod leave_out;
mod modern;
mod nginx_crossplane;
mod nginx_fuzz;
mod nginx_locations;
mod nginx_parse;
mod packaging;
mod proxy;
mod realworld;
mod remove;
mod renew;
mod resilience;
mod security;
mod stream_mail;
mod watch;
