//! The state directory's two locks (`flock`, each file holding its holder's pid for the message
//! a waiting run prints):
//!
//! - the **run lock** (`STATE/lock`): one pass at a time decides and orders (it is what keeps
//!   two runs of one host from ordering the same lineage);
//! - the **install lock** (`STATE/install.lock`): one writer at a time of lineages' versions and
//!   metadata, of nginx's files, and of reloads. A pass holds it except while it waits on
//!   someone else (the CA, a hook), so a fleet node's agent can install a certificate another
//!   node published while a pass of its own is ordering.
//!
//! Waiting is asynchronous: in `watch` the pass and the agent share one thread.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use super::{Error, Store};

/// How long a second run waits for the run lock before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);
/// How long a writer waits for the install lock. Its holders keep it for a change transaction,
/// a reload and a TLS check of the listeners (a few seconds), never while they wait on the CA.
pub const INSTALL_LOCK_WAIT: Duration = Duration::from_secs(60);
/// How often a waiting run tries a lock again.
const LOCK_RETRY: Duration = Duration::from_millis(20);

/// The held run lock; released on drop.
#[derive(Debug)]
pub struct StateLock {
    _lock: Flock<fs::File>,
}

/// The held install lock; released on drop.
#[derive(Debug)]
pub struct InstallLock {
    _lock: Flock<fs::File>,
}

impl Store {
    /// Takes the run lock, waiting up to `wait`. The error names the holder.
    pub async fn lock(&self, wait: Duration) -> Result<StateLock, Error> {
        let lock = flock(&self.root.join("lock"), wait).await?;
        Ok(StateLock { _lock: lock })
    }

    /// Takes the install lock, waiting up to `wait`. The error names the holder.
    pub async fn install_lock(&self, wait: Duration) -> Result<InstallLock, Error> {
        let lock = flock(&self.root.join("install.lock"), wait).await?;
        Ok(InstallLock { _lock: lock })
    }
}

/// An exclusive `flock` on `path` (created, never through a link), waiting up to `wait`
/// without blocking the thread.
async fn flock(path: &Path, wait: Duration) -> Result<Flock<fs::File>, Error> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags_nofollow()
            .open(path)
            .map_err(Error::io("open", path))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                // The pid is only a hint for the message of a waiting run.
                lock.set_len(0)
                    .and_then(|()| writeln!(lock, "{}", std::process::id()))
                    .map_err(Error::io("write", path))?;
                return Ok(lock);
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                if tokio::time::Instant::now() >= deadline {
                    let holder = fs::read_to_string(path).unwrap_or_default();
                    let holder = holder.trim();
                    return Err(Error::Locked {
                        path: path.to_path_buf(),
                        holder: if holder.is_empty() {
                            "unknown".into()
                        } else {
                            holder.into()
                        },
                    });
                }
                tokio::time::sleep(LOCK_RETRY).await;
            }
            Err((_, errno)) => return Err(Error::io("lock", path)(std::io::Error::from(errno))),
        }
    }
}

/// `O_NOFOLLOW` for the lock file: a link planted under its name is refused.
trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}

impl NoFollow for fs::OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(nix::libc::O_NOFOLLOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lock_excludes_a_second_holder_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let held = store.lock(Duration::ZERO).await.unwrap();
        let err = store.lock(Duration::from_millis(200)).await.unwrap_err();
        assert!(
            err.to_string().contains(&std::process::id().to_string()),
            "{err}"
        );
        drop(held);
        store.lock(Duration::ZERO).await.unwrap();
    }

    /// The two locks are apart (an install goes on beside a pass), and a waiter on one thread
    /// gets the lock as soon as a task on the same thread lets it go.
    #[tokio::test(flavor = "current_thread")]
    async fn the_install_lock_is_apart_from_the_run_lock_and_waited_for_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let _run = store.lock(Duration::ZERO).await.unwrap();
        let install = store.install_lock(Duration::ZERO).await.unwrap();
        assert!(store.install_lock(Duration::ZERO).await.is_err());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let holder = tokio::spawn(async move {
            rx.await.ok();
            drop(install);
        });
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move { store.install_lock(Duration::from_secs(30)).await })
        };
        tx.send(()).unwrap();
        holder.await.unwrap();
        waiter.await.unwrap().unwrap();
    }
}
