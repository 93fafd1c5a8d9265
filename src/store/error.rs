//! Errors of the state directory: each names the file or directory involved.

use std::io;
use std::path::{Path, PathBuf};

/// What can go wrong with the state directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A state file exists but cannot be understood (never silently replaced by a default).
    #[error("{} is corrupt (move it away to start that lineage afresh)", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// Another run holds one of the state directory's locks.
    #[error("another acme-nginx run (pid {holder}) holds {}; try again when it has finished", path.display())]
    Locked { path: PathBuf, holder: String },
    /// The state directory does not exist (read-only commands do not create it).
    #[error("the state directory {} does not exist (nothing has been enrolled yet)", .0.display())]
    Missing(PathBuf),
}

impl Error {
    /// A mapper for `map_err` that names the action and path.
    pub fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
}
