//! Errors that stop a whole run (exit 2). Failures of single names are not errors: they are
//! [`super::Outcome`]s with status `failed`.

use std::path::PathBuf;

use crate::hooks::HookFailure;
use crate::nginx::transaction::ChangeError;
use crate::{acme, nginx, store};

/// Why a run could not go on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Nginx(#[from] nginx::LoadError),
    #[error(transparent)]
    NginxControl(#[from] nginx::CtlError),
    #[error(transparent)]
    Change(#[from] ChangeError),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("cannot reach the CA at {directory}")]
    Ca {
        directory: String,
        #[source]
        source: acme::Error,
    },
    #[error(transparent)]
    Acme(#[from] acme::Error),
    #[error("{}: not a usable account state", path.display())]
    AccountState {
        path: PathBuf,
        #[source]
        source: acme::Error,
    },
    #[error("{name} is in no server block that can be enrolled{why}")]
    UnknownName { name: String, why: String },
    #[error("no certificate lineage holds {0} (see `acme-nginx status`)")]
    NoLineage(String),
    #[error("certbot's state cannot be imported: {0}")]
    Certbot(String),
    #[error("the fleet's shared store: {0}")]
    Fleet(#[from] super::fleet::FleetError),
    #[error("no account yet at {directory}: read the terms of service at {tos} and pass --agree-tos (or set agree_tos = true in the config file)")]
    TermsNotAgreed { directory: String, tos: String },
    #[error("the CA at {directory} requires external account binding: pass --eab-kid and --eab-hmac-key-file (for another than the preferred CA: an [eab.\"{directory}\"] table)")]
    EabRequired { directory: String },
    #[error("cannot get EAB credentials from {url}: {why}")]
    EabFetch { url: String, why: String },
    #[error("{0:?} is not an email address")]
    BadEmail(String),
    #[error("the pre-hook failed, nothing was ordered")]
    PreHook(#[source] HookFailure),
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// nginx fails `nginx -t`, or does not run, before anything was changed: nothing is
    /// ordered.
    #[error("{what}; acme-nginx changed nothing and ordered nothing{hint}")]
    NginxNotReady { what: String, hint: String },
    /// The throwaway certificate a configuration edit is rehearsed with could not be made.
    #[error("cannot make the throwaway certificate to rehearse the edits with: {0}")]
    Rehearsal(String),
    #[error("cannot watch the configuration files")]
    Watch(#[source] notify::Error),
}

impl Error {
    /// True when the error says the CA cannot be used now (its directory does not load, or
    /// it answers with an outage): another CA may be tried.
    pub fn is_ca_outage(&self) -> bool {
        match self {
            Error::Ca { .. } => true,
            Error::Acme(e) => e.is_outage(),
            _ => false,
        }
    }

    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
