//! One certificate lineage: `certs/NAME/` with `versions/NNNN/{privkey,cert,chain,fullchain}.pem`
//! and one `live` symlink to the current version. A new version is written in full under a
//! temporary name, renamed into place, and only then is `live` replaced by rename: nginx and every
//! reader see the old pair or the new pair, never a mix, whenever the process dies. Beside them,
//! `lineage.json` holds what the lifecycle remembers about the lineage (its type is the
//! lifecycle's; the store only reads and writes it atomically).

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Error;
use crate::fsutil::{self, PRIVATE_MODE, PUBLIC_MODE};

/// How many versions of a lineage are kept (the live one included).
pub const KEEP_VERSIONS: usize = 5;

/// File names inside a version directory.
pub const PRIVKEY: &str = "privkey.pem";
pub const CERT: &str = "cert.pem";
pub const CHAIN: &str = "chain.pem";
pub const FULLCHAIN: &str = "fullchain.pem";
/// The lineage's metadata file.
pub(super) const META_FILE: &str = "lineage.json";

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

    /// The metadata file's path.
    pub fn meta_path(&self) -> PathBuf {
        self.dir.join(META_FILE)
    }

    /// The lineage metadata: the default when there is none yet, an error when the file exists
    /// but cannot be read or parsed (a corrupt file is never silently replaced by a default).
    pub fn load_meta<T: DeserializeOwned + Default>(&self) -> Result<T, Error> {
        let path = self.meta_path();
        match fsutil::read_limited(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| Error::Corrupt { path, source })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(Error::io("read", &path)(e)),
        }
    }

    /// Saves the metadata atomically.
    pub fn save_meta<T: Serialize>(&self, meta: &T) -> Result<(), Error> {
        fsutil::create_dir_all_mode(&self.dir, 0o755).map_err(Error::io("create", &self.dir))?;
        let path = self.meta_path();
        let json = serde_json::to_vec_pretty(meta).map_err(|source| Error::Corrupt {
            path: path.clone(),
            source,
        })?;
        fsutil::write_atomic(&path, &json, PUBLIC_MODE).map_err(Error::io("write", &path))
    }

    /// A file of a given version (live or not).
    pub fn version_file(&self, version: u32, name: &str) -> PathBuf {
        self.versions_dir().join(format!("{version:04}")).join(name)
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
    pub fn install(&self, issued: &Issued<'_>) -> Result<u32, Error> {
        self.install_files(issued)
            .map_err(Error::io("install a new version in", &self.dir))
    }

    fn install_files(&self, issued: &Issued<'_>) -> io::Result<u32> {
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
        self.swap_live(next)?;
        self.prune()?;
        Ok(next)
    }

    /// Points `live` at a version (used by install, and to roll back).
    pub fn point_live_at(&self, version: u32) -> Result<(), Error> {
        self.swap_live(version)
            .map_err(Error::io("point the live link at a version in", &self.dir))
    }

    /// Removes the live link (rolls back a lineage's first version).
    pub fn remove_live(&self) -> Result<(), Error> {
        let live = self.live();
        match fs::remove_file(&live) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &live)(e)),
        }
    }

    fn swap_live(&self, version: u32) -> io::Result<()> {
        let link_tmp = self.dir.join(format!(".live.tmp-{}", std::process::id()));
        match fs::remove_file(&link_tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
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
    use crate::store::Store;
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
    fn dir_names_are_safe() {
        assert_eq!(lineage_dir_name("*.example.org"), "_.example.org");
        assert_eq!(lineage_dir_name("../x"), ".._x");
        assert_eq!(lineage_dir_name("::1"), "__1");
        assert_eq!(lineage_dir_name(".."), "_..");
        assert_eq!(lineage_dir_name(""), "_");
    }

    #[test]
    fn corrupt_metadata_is_an_error_not_a_default() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let l = store.lineage("c.example.org");
        let none: Vec<String> = l.load_meta().unwrap();
        assert!(none.is_empty());
        l.save_meta(&vec!["a".to_string()]).unwrap();
        assert_eq!(l.load_meta::<Vec<String>>().unwrap(), vec!["a"]);
        fs::write(l.meta_path(), b"{not json").unwrap();
        let err = l.load_meta::<Vec<String>>().unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("lineage.json"), "{err}");
    }
}
