//! Rehearse: before anything is ordered, the install edit each plan will make is built with a
//! throwaway self-signed pair and tested by `nginx -t` on the configuration as it would be,
//! never touching the live files (nginx runs in a private mount namespace where each edited
//! file is a bind mount of its rehearsal copy; see [`NginxCtl::test_with`]). A plan whose edit
//! cannot be built, or that nginx refuses, fails here with the reason in nginx's words, and no
//! order is spent on it. Where the host cannot rehearse (a container without the right to
//! mount), the edit is tested when it is made, as before.

use std::path::{Path, PathBuf};

use crate::acme::{KeyPair, KeyType};
use crate::fsutil;
use crate::lifecycle::env::Env;
use crate::lifecycle::outcome::{Failure, Outcome, Status};
use crate::lifecycle::plan::Plan;
use crate::lifecycle::stages::install;
use crate::lifecycle::Error;
use crate::nginx::ctl::CtlError;
use crate::nginx::discovery::Scan;
use crate::nginx::edit::{self, Edit};
use crate::nginx::{Config, NginxCtl};

/// The plans whose install edit nginx accepts (or that cannot be rehearsed here); the others
/// fail into `outcomes`.
pub(crate) async fn rehearse(
    env: &Env,
    cfg: &Config,
    scan: &Scan,
    plans: Vec<Plan>,
    outcomes: &mut Vec<Outcome>,
) -> Result<Vec<Plan>, Error> {
    if !env.mode.edits_nginx() || plans.is_empty() {
        return Ok(plans);
    }
    let ctl = env.settings.nginx.ctl(cfg, scan)?;
    let scratch = Scratch::new(&env.store.root)?;
    let pair = scratch.throwaway_pair()?;
    let mut tried: Vec<(Plan, Vec<Edit>)> = Vec::new();
    for plan in plans {
        match install::edits_at(env, cfg, scan, &plan, pair.clone()) {
            Ok(edits) => tried.push((plan, edits)),
            Err(why) => outcomes.push(refused(
                env,
                &plan,
                format!("its certificate could not be installed: {}", why.0),
            )),
        }
    }
    let all: Vec<Edit> = tried.iter().flat_map(|(_, e)| e.iter().cloned()).collect();
    match test(&ctl, cfg, &all, &scratch).await {
        Ok(()) => return Ok(tried.into_iter().map(|(p, _)| p).collect()),
        Err(CtlError::NoRehearsal) => return Ok(tried.into_iter().map(|(p, _)| p).collect()),
        Err(CtlError::Rejected(words)) if tried.len() == 1 => {
            let (plan, _) = tried.remove(0);
            outcomes.push(refused(env, &plan, rejected(&words)));
            return Ok(Vec::new());
        }
        Err(CtlError::Rejected(_)) => {}
        Err(e) => {
            // Not nginx's verdict on the edit: the install tests it again when it is made.
            tracing::warn!("could not rehearse the configuration edits: {e}");
            return Ok(tried.into_iter().map(|(p, _)| p).collect());
        }
    }
    // Refused together: each plan's edit alone says which.
    let mut kept = Vec::new();
    for (plan, edits) in tried {
        match test(&ctl, cfg, &edits, &scratch).await {
            Err(CtlError::Rejected(words)) => outcomes.push(refused(env, &plan, rejected(&words))),
            _ => kept.push(plan),
        }
    }
    Ok(kept)
}

fn rejected(words: &str) -> String {
    format!("nginx -t refuses the edit this certificate needs (tested before ordering, nothing was changed): {words}")
}

fn refused(env: &Env, plan: &Plan, message: String) -> Outcome {
    let mut o = env.outcome(plan, Status::Failed);
    o.error = Some(Failure::transient(message));
    o
}

/// `nginx -t` with `edits` applied to rehearsal copies of the files they change.
async fn test(
    ctl: &NginxCtl,
    cfg: &Config,
    edits: &[Edit],
    scratch: &Scratch,
) -> Result<(), CtlError> {
    if edits.is_empty() {
        return Ok(());
    }
    let mut overlays = Vec::new();
    for (i, (path, (_, new))) in edit::render_edits(cfg, edits).into_iter().enumerate() {
        let copy = scratch.dir.join(format!("file-{i}"));
        let real = std::fs::canonicalize(&path);
        let written = fsutil::write_atomic(&copy, &new, 0o600);
        match (real, written) {
            (Ok(real), Ok(())) => overlays.push((copy, real)),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("cannot rehearse the edit of {}: {e}", path.display());
                return Err(CtlError::NoRehearsal);
            }
        }
    }
    ctl.test_with(&overlays).await
}

/// A private directory in the state directory for one rehearsal, removed with it.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(state: &Path) -> Result<Scratch, Error> {
        let dir = state.join(format!("rehearsal-{}", std::process::id()));
        // One left by a killed run with this pid is ours to reuse.
        if dir.symlink_metadata().is_ok() {
            std::fs::remove_dir_all(&dir)
                .map_err(Error::io(format!("remove the leftover {}", dir.display())))?;
        }
        fsutil::create_dir_all_mode(&dir, 0o700)
            .map_err(Error::io(format!("create {}", dir.display())))?;
        Ok(Scratch { dir })
    }

    /// A self-signed certificate and its key, standing for the one the CA will issue.
    fn throwaway_pair(&self) -> Result<(PathBuf, PathBuf), Error> {
        let key = KeyPair::generate(KeyType::P256);
        let mut params =
            rcgen::CertificateParams::new(vec!["acme-nginx-rehearsal.invalid".to_owned()])
                .map_err(|e| Error::Rehearsal(e.to_string()))?;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[1]));
        let cert = params
            .self_signed(&key)
            .map_err(|e| Error::Rehearsal(e.to_string()))?;
        let (fullchain, privkey) = (self.dir.join("fullchain.pem"), self.dir.join("privkey.pem"));
        fsutil::write_atomic(&fullchain, cert.pem().as_bytes(), 0o600)
            .and_then(|()| fsutil::write_atomic(&privkey, key.to_pem().as_bytes(), 0o600))
            .map_err(Error::io(format!("write {}", self.dir.display())))?;
        Ok((fullchain, privkey))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!("cannot remove {}: {e}", self.dir.display());
        }
    }
}
