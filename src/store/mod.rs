//! The state directory: accounts (one per CA directory URL), certificate lineages, the locks
//! that keep two runs (and two writers) apart, and the journal of challenge tokens written (so a run killed mid-order
//! is cleaned up by the next one). Everything here is files on disk; what the files mean (the
//! renewal policy, plans) belongs to [`crate::lifecycle`].

mod error;
pub mod etcd;
mod journal;
mod lineage;
mod lock;
pub mod seal;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use error::Error;
pub use lineage::{
    lineage_dir_name, Issued, Lineage, CERT, CHAIN, FULLCHAIN, KEEP_VERSIONS, PRIVKEY,
};
pub use lock::{InstallLock, StateLock, INSTALL_LOCK_WAIT, LOCK_WAIT};

use crate::fsutil;

/// Mode of the state directory itself: others may pass through (nginx's workers reach the
/// challenge directory below it) but not list it; accounts are 0700 and keys 0600 below.
pub const STATE_DIR_MODE: u32 = 0o711;

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
}

/// An older state directory was made 0700, which keeps nginx's workers out of the challenge
/// directory: one of ours (owned by us) gets search permission for others, set on its
/// descriptor.
fn open_up_old_state_dir(root: &Path) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let dir = fs::File::open(root).map_err(Error::io("open", root))?;
    let meta = dir.metadata().map_err(Error::io("inspect", root))?;
    if meta.is_dir()
        && meta.uid() == nix::unistd::geteuid().as_raw()
        && meta.mode() & 0o7777 == 0o700
    {
        nix::sys::stat::fchmod(
            &dir,
            nix::sys::stat::Mode::from_bits_truncate(STATE_DIR_MODE),
        )
        .map_err(|e| Error::io("open up", root)(e.into()))?;
    }
    Ok(())
}

impl Store {
    /// Opens (creating) a state directory with mode 0700.
    pub fn open(root: &Path) -> Result<Self, Error> {
        let mk =
            |p: &Path, mode| fsutil::create_dir_all_mode(p, mode).map_err(Error::io("create", p));
        mk(root, STATE_DIR_MODE)?;
        open_up_old_state_dir(root)?;
        mk(&root.join("certs"), 0o755)?;
        mk(&root.join("accounts"), 0o700)?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Opens an existing state directory without creating anything (for read-only commands).
    pub fn existing(root: &Path) -> Result<Self, Error> {
        match fs::metadata(root) {
            Ok(m) if m.is_dir() => Ok(Self {
                root: root.to_path_buf(),
            }),
            Ok(_) => Err(Error::Io {
                action: "open",
                path: root.to_path_buf(),
                source: io::Error::other("not a directory"),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(Error::Missing(root.to_path_buf()))
            }
            Err(e) => Err(Error::io("open", root)(e)),
        }
    }

    /// Where the account for a CA directory URL lives.
    pub fn account_path(&self, directory_url: &str) -> PathBuf {
        let digest = Sha256::digest(directory_url.as_bytes());
        let id: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        self.root.join("accounts").join(id).join("account.json")
    }

    /// The lineage for a primary name (not created).
    pub fn lineage(&self, name: &str) -> Lineage {
        Lineage {
            name: name.to_owned(),
            dir: self.root.join("certs").join(lineage_dir_name(name)),
        }
    }

    /// Deletes a lineage's directory (versions, live link, metadata).
    pub fn remove_lineage(&self, l: &Lineage) -> Result<(), Error> {
        match fs::remove_dir_all(&l.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &l.dir)(e)),
        }
    }

    /// Every lineage on disk (a directory holding `lineage.json`), by name.
    pub fn lineages(&self) -> Vec<Lineage> {
        let mut out: Vec<Lineage> = fs::read_dir(self.root.join("certs"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.path().join(lineage::META_FILE).is_file())
            .map(|e| {
                let dir_name = e.file_name().to_string_lossy().into_owned();
                // A wildcard's lineage lives in `_.NAME` (no host name starts with `_.`).
                let name = match dir_name.strip_prefix("_.") {
                    Some(base) => format!("*.{base}"),
                    None => dir_name,
                };
                Lineage {
                    name,
                    dir: e.path(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Where backups of edited nginx files go.
    pub fn backups_dir(&self) -> PathBuf {
        self.root.join("backups")
    }
}
