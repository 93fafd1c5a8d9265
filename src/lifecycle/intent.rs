//! The install intent: before an install changes anything, it writes what it is about to change
//! (the lineages and the live version each had, the nginx files it will rewrite with where their
//! backups go, the files it will create). A run killed anywhere in between leaves the intent
//! behind, and the next run rolls it back before doing anything else: every file is put back
//! from its backup, created files are removed, each lineage points at the version it had, and a
//! version that was issued but not installed is remembered as pending, so it is installed again
//! without a new order. A state that nginx does not serve is never reported as done.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::lineage::LineageMeta;
use super::outcome::chain_text;
use super::Error;
use crate::nginx::edit::write_like;
use crate::nginx::transaction::backup_of;
use crate::store::Store;

/// What one install is about to change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Intent {
    /// Each lineage and the version that was live before (None: it had none).
    pub lineages: Vec<(String, Option<u32>)>,
    /// Where the originals of edited files are backed up.
    pub backup_dir: Option<PathBuf>,
    /// The nginx files the change rewrites (real paths).
    pub edited: Vec<PathBuf>,
    /// The files it creates.
    pub created: Vec<PathBuf>,
}

/// Rolls back an install a killed run left unfinished. Returns true when there was one.
pub fn recover(store: &Store) -> Result<bool, Error> {
    let Some(intent) = store.read_intent::<Intent>()? else {
        return Ok(false);
    };
    tracing::warn!("an earlier run was interrupted while installing; rolling its changes back");
    if let Some(dir) = &intent.backup_dir {
        for real in &intent.edited {
            let backup = backup_of(dir, real);
            // No backup: the run died before it touched this file.
            let Ok(original) = std::fs::read(&backup) else {
                continue;
            };
            if std::fs::read(real).ok().as_deref() != Some(original.as_slice()) {
                write_like(real, &original).map_err(Error::io(format!(
                    "restore {} from {}",
                    real.display(),
                    backup.display()
                )))?;
                tracing::warn!("restored {}", real.display());
            }
        }
    }
    for f in &intent.created {
        match std::fs::remove_file(f) {
            Ok(()) => tracing::warn!("removed {}", f.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("remove {}", f.display()))(e)),
        }
    }
    for (name, previous) in &intent.lineages {
        let l = store.lineage(name);
        let now = l.live_version();
        if now == *previous {
            continue;
        }
        let mut meta: LineageMeta = l.load_meta()?;
        meta.pending_version = now.or(meta.pending_version);
        match previous {
            Some(v) => l.point_live_at(*v)?,
            None => l.remove_live()?,
        }
        l.save_meta(&meta)?;
        tracing::warn!(
            "{name}: live version back to {}; the interrupted one is installed again",
            previous.map_or("none".into(), |v| v.to_string())
        );
    }
    if let Err(e) = store.clear_intent() {
        tracing::warn!("{}", chain_text(&e));
    }
    Ok(true)
}
