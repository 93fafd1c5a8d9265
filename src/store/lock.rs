//! The state lock: one run at a time per state directory (`flock` on `STATE/lock`, holding the
//! holder's pid for the message a second run prints).

use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use super::{Error, Store};

/// How long a second run waits for the lock before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);
/// How often a waiting run tries the lock again.
const LOCK_RETRY: Duration = Duration::from_millis(100);

/// The held state lock; released on drop.
#[derive(Debug)]
pub struct StateLock {
    _lock: Flock<fs::File>,
}

impl Store {
    /// Takes the state lock, waiting up to `wait`. The error names the holder.
    pub fn lock(&self, wait: Duration) -> Result<StateLock, Error> {
        let path = self.root.join("lock");
        let deadline = Instant::now() + wait;
        loop {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags_nofollow()
                .open(&path)
                .map_err(Error::io("open", &path))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(mut lock) => {
                    // The pid is only a hint for the message of a waiting run.
                    lock.set_len(0)
                        .and_then(|()| writeln!(lock, "{}", std::process::id()))
                        .map_err(Error::io("write", &path))?;
                    return Ok(StateLock { _lock: lock });
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    if Instant::now() >= deadline {
                        let holder = fs::read_to_string(&path).unwrap_or_default();
                        let holder = holder.trim();
                        return Err(Error::Locked {
                            path,
                            holder: if holder.is_empty() {
                                "unknown".into()
                            } else {
                                holder.into()
                            },
                        });
                    }
                    std::thread::sleep(LOCK_RETRY);
                }
                Err((_, errno)) => {
                    return Err(Error::io("lock", &path)(std::io::Error::from(errno)))
                }
            }
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

    #[test]
    fn lock_excludes_a_second_holder_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let held = store.lock(Duration::ZERO).unwrap();
        let err = store.lock(Duration::from_millis(200)).unwrap_err();
        assert!(
            err.to_string().contains(&std::process::id().to_string()),
            "{err}"
        );
        drop(held);
        store.lock(Duration::ZERO).unwrap();
    }
}
