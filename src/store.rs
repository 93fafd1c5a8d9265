//! The state directory: accounts (one per CA directory URL), certificate lineages, the lock that
//! keeps two runs apart, and the journal of challenge tokens written (so a run killed mid-order
//! is cleaned up by the next one).
//!
//! A lineage is `certs/NAME/` with `versions/NNNN/{privkey,cert,chain,fullchain}.pem` and one
//! `live` symlink to the current version. A new version is written in full under a temporary
//! name, renamed into place, and only then is `live` replaced by rename: nginx and every reader
//! see the old pair or the new pair, never a mix, whenever the process dies.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil::{self, PRIVATE_MODE, PUBLIC_MODE};

/// How many versions of a lineage are kept (the live one included).
pub const KEEP_VERSIONS: usize = 5;
/// How long a second run waits for the lock before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// File names inside a version directory.
pub const PRIVKEY: &str = "privkey.pem";
pub const CERT: &str = "cert.pem";
pub const CHAIN: &str = "chain.pem";
pub const FULLCHAIN: &str = "fullchain.pem";

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
}

/// What is remembered about a lineage besides its files.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LineageMeta {
    /// The certificate's names, primary first.
    pub names: Vec<String>,
    /// The CA directory it came from.
    pub directory: String,
    pub key_type: String,
    /// Server blocks using it (`file:line`).
    #[serde(default)]
    pub server_blocks: Vec<String>,
    /// Unix time of the last successful issuance.
    #[serde(default)]
    pub issued_at: Option<i64>,
    /// The last error and when it happened, for backoff and `status`.
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub last_error_at: Option<i64>,
    #[serde(default)]
    pub failures: u32,
    /// ARI: when to ask again, and the window last seen.
    #[serde(default)]
    pub ari_next_check: Option<i64>,
    #[serde(default)]
    pub ari_window: Option<(i64, i64)>,
    /// The instant picked inside the window for renewal.
    #[serde(default)]
    pub renew_at: Option<i64>,
    /// The CertID the CA recorded the last order as replacing.
    #[serde(default)]
    pub last_replaces: Option<String>,
}

/// One certificate lineage.
#[derive(Debug, Clone)]
pub struct Lineage {
    pub name: String,
    pub dir: PathBuf,
}

/// The pieces of one issued certificate.
#[derive(Debug, Clone)]
pub struct Issued<'a> {
    pub key_pem: &'a str,
    pub cert_pem: &'a str,
    pub chain_pem: &'a str,
}

impl Store {
    /// Opens (creating) a state directory with mode 0700.
    pub fn open(root: &Path) -> io::Result<Self> {
        fsutil::create_dir_all_mode(root, 0o700)?;
        fsutil::create_dir_all_mode(&root.join("certs"), 0o755)?;
        fsutil::create_dir_all_mode(&root.join("accounts"), 0o700)?;
        Ok(Self {
            root: root.to_path_buf(),
        })
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

    /// Every lineage on disk.
    pub fn lineages(&self) -> Vec<Lineage> {
        let mut out: Vec<Lineage> = fs::read_dir(self.root.join("certs"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.path().join("lineage.json").is_file())
            .map(|e| Lineage {
                name: e.file_name().to_string_lossy().into_owned(),
                dir: e.path(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Takes the state lock, waiting up to `wait`. The error names the holder.
    pub fn lock(&self, wait: Duration) -> Result<StateLock, String> {
        use nix::fcntl::{Flock, FlockArg};
        let path = self.root.join("lock");
        let deadline = std::time::Instant::now() + wait;
        loop {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(mut lock) => {
                    let _ = lock.set_len(0);
                    let _ = writeln!(lock, "{}", std::process::id());
                    return Ok(StateLock { _lock: lock });
                }
                Err((_, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
                    if std::time::Instant::now() >= deadline {
                        let holder = fs::read_to_string(&path).unwrap_or_default();
                        let holder = holder.trim();
                        return Err(format!(
                            "another acme-nginx run (pid {}) holds {}; try again when it has finished",
                            if holder.is_empty() { "unknown" } else { holder },
                            path.display()
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err((_, errno)) => return Err(format!("cannot lock {}: {errno}", path.display())),
            }
        }
    }

    fn journal_path(&self) -> PathBuf {
        self.root.join("tokens.journal")
    }

    /// Records a token path before it is written.
    pub fn journal_token(&self, path: &Path) -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.journal_path())?;
        writeln!(f, "{}", path.display())?;
        f.sync_data()
    }

    /// Removes every token an earlier run recorded (it may have been killed before clearing
    /// them) and empties the journal. Returns the paths removed.
    pub fn sweep_tokens(&self) -> io::Result<Vec<PathBuf>> {
        let text = match fs::read_to_string(self.journal_path()) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut removed = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let p = PathBuf::from(line);
            // Only files named like a token; never follow a link (remove_file does not).
            let is_token = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(crate::acme::jws::is_valid_token);
            if is_token && fs::remove_file(&p).is_ok() {
                removed.push(p);
            }
        }
        fs::remove_file(self.journal_path())?;
        Ok(removed)
    }
}

/// The held state lock; released on drop.
#[derive(Debug)]
pub struct StateLock {
    _lock: nix::fcntl::Flock<fs::File>,
}

/// A lineage directory name: the name itself when it is a plain host name (wildcards as `_.`).
pub fn lineage_dir_name(name: &str) -> String {
    let safe: String = name
        .replace('*', "_")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.is_empty() || safe.chars().all(|c| c == '.') {
        format!("_{safe}")
    } else {
        safe
    }
}

impl Lineage {
    /// The `live` link.
    pub fn live(&self) -> PathBuf {
        self.dir.join("live")
    }

    /// A file in the live version (what nginx is configured with).
    pub fn live_file(&self, name: &str) -> PathBuf {
        self.live().join(name)
    }

    /// The lineage metadata (default when absent or unreadable).
    pub fn meta(&self) -> LineageMeta {
        fs::read(self.dir.join("lineage.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Saves the metadata atomically.
    pub fn save_meta(&self, meta: &LineageMeta) -> io::Result<()> {
        fsutil::create_dir_all_mode(&self.dir, 0o755)?;
        let json = serde_json::to_vec_pretty(meta).map_err(io::Error::other)?;
        fsutil::write_atomic(&self.dir.join("lineage.json"), &json, PUBLIC_MODE)
    }

    /// The live certificate chain (leaf first), if there is one.
    pub fn live_fullchain(&self) -> Option<Vec<u8>> {
        fs::read(self.live_file(FULLCHAIN)).ok()
    }

    /// The live private key, if there is one.
    pub fn live_key(&self) -> Option<String> {
        fs::read_to_string(self.live_file(PRIVKEY)).ok()
    }

    fn versions_dir(&self) -> PathBuf {
        self.dir.join("versions")
    }

    /// Version numbers present, ascending.
    pub fn versions(&self) -> Vec<u32> {
        let mut v: Vec<u32> = fs::read_dir(self.versions_dir())
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        v.sort_unstable();
        v
    }

    /// The version `live` points at.
    pub fn live_version(&self) -> Option<u32> {
        let target = fs::read_link(self.live()).ok()?;
        target.file_name()?.to_str()?.parse().ok()
    }

    /// Writes a new version completely, then points `live` at it (atomic rename of a symlink).
    /// Returns the new version number.
    pub fn install(&self, issued: &Issued<'_>) -> io::Result<u32> {
        let versions = self.versions_dir();
        fsutil::create_dir_all_mode(&versions, 0o755)?;
        self.remove_incomplete()?;
        let next = self.versions().last().map_or(1, |v| v + 1);
        let name = format!("{next:04}");
        let tmp = versions.join(format!(".{name}.tmp"));
        fsutil::create_dir_all_mode(&tmp, 0o755)?;
        let fullchain = format!("{}{}", ensure_newline(issued.cert_pem), issued.chain_pem);
        fsutil::write_atomic(&tmp.join(PRIVKEY), issued.key_pem.as_bytes(), PRIVATE_MODE)?;
        fsutil::write_atomic(&tmp.join(CERT), issued.cert_pem.as_bytes(), PUBLIC_MODE)?;
        fsutil::write_atomic(&tmp.join(CHAIN), issued.chain_pem.as_bytes(), PUBLIC_MODE)?;
        fsutil::write_atomic(&tmp.join(FULLCHAIN), fullchain.as_bytes(), PUBLIC_MODE)?;
        fs::rename(&tmp, versions.join(&name))?;
        fsutil::sync_dir(&versions.join(&name))?;
        self.point_live_at(next)?;
        self.prune()?;
        Ok(next)
    }

    /// Points `live` at a version (used by install, and to roll back).
    pub fn point_live_at(&self, version: u32) -> io::Result<()> {
        let link_tmp = self.dir.join(format!(".live.tmp-{}", std::process::id()));
        let _ = fs::remove_file(&link_tmp);
        symlink(
            Path::new("versions").join(format!("{version:04}")),
            &link_tmp,
        )?;
        fs::rename(&link_tmp, self.live())?;
        fsutil::sync_dir(&self.live())
    }

    /// Removes half-written versions left by a killed run.
    fn remove_incomplete(&self) -> io::Result<()> {
        for e in fs::read_dir(self.versions_dir())?.flatten() {
            let n = e.file_name();
            if n.to_string_lossy().ends_with(".tmp") {
                fs::remove_dir_all(e.path())?;
            }
        }
        Ok(())
    }

    /// Keeps the newest versions (and always the live one).
    fn prune(&self) -> io::Result<()> {
        let live = self.live_version();
        let versions = self.versions();
        let excess = versions.len().saturating_sub(KEEP_VERSIONS);
        for v in versions.into_iter().take(excess) {
            if Some(v) != live {
                fs::remove_dir_all(self.versions_dir().join(format!("{v:04}")))?;
            }
        }
        Ok(())
    }
}

fn ensure_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_owned()
    } else {
        format!("{s}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn issued(n: &str) -> (String, String, String) {
        (
            format!("KEY {n}\n"),
            format!("CERT {n}\n"),
            format!("CHAIN {n}\n"),
        )
    }

    #[test]
    fn install_swaps_live_and_keeps_modes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let l = store.lineage("a.example.org");
        let (k, c, ch) = issued("1");
        assert_eq!(
            l.install(&Issued {
                key_pem: &k,
                cert_pem: &c,
                chain_pem: &ch
            })
            .unwrap(),
            1
        );
        assert_eq!(
            fs::read_to_string(l.live_file(FULLCHAIN)).unwrap(),
            "CERT 1\nCHAIN 1\n"
        );
        let mode = fs::metadata(l.live_file(PRIVKEY))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let (k, c, ch) = issued("2");
        assert_eq!(
            l.install(&Issued {
                key_pem: &k,
                cert_pem: &c,
                chain_pem: &ch
            })
            .unwrap(),
            2
        );
        assert_eq!(l.live_version(), Some(2));
        assert_eq!(fs::read_to_string(l.live_file(PRIVKEY)).unwrap(), "KEY 2\n");
        // Roll back.
        l.point_live_at(1).unwrap();
        assert_eq!(fs::read_to_string(l.live_file(CERT)).unwrap(), "CERT 1\n");
    }

    #[test]
    fn incomplete_versions_are_removed_and_old_ones_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let l = store.lineage("b.example.org");
        for i in 0..(KEEP_VERSIONS + 2) {
            let (k, c, ch) = issued(&i.to_string());
            l.install(&Issued {
                key_pem: &k,
                cert_pem: &c,
                chain_pem: &ch,
            })
            .unwrap();
        }
        assert_eq!(l.versions().len(), KEEP_VERSIONS);
        fs::create_dir_all(l.dir.join("versions/.0099.tmp")).unwrap();
        let (k, c, ch) = issued("x");
        l.install(&Issued {
            key_pem: &k,
            cert_pem: &c,
            chain_pem: &ch,
        })
        .unwrap();
        assert!(!l.dir.join("versions/.0099.tmp").exists());
    }

    #[test]
    fn lock_excludes_a_second_holder_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let held = store.lock(Duration::ZERO).unwrap();
        let err = store.lock(Duration::from_millis(200)).unwrap_err();
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        drop(held);
        store.lock(Duration::ZERO).unwrap();
    }

    #[test]
    fn token_journal_sweeps_only_token_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let token = dir.path().join("tok_en-1");
        let other = dir.path().join("not.a.token");
        fs::write(&token, "x").unwrap();
        fs::write(&other, "x").unwrap();
        store.journal_token(&token).unwrap();
        store.journal_token(&other).unwrap();
        assert_eq!(store.sweep_tokens().unwrap(), vec![token.clone()]);
        assert!(!token.exists() && other.exists());
        assert!(store.sweep_tokens().unwrap().is_empty());
    }

    #[test]
    fn dir_names_are_safe() {
        assert_eq!(lineage_dir_name("*.example.org"), "_.example.org");
        assert_eq!(lineage_dir_name("../x"), ".._x");
        assert_eq!(lineage_dir_name("::1"), "__1");
        assert_eq!(lineage_dir_name(".."), "_..");
        assert_eq!(lineage_dir_name(""), "_");
    }
}
