//! The http-01 webroot solver: one file per token, named by the token, holding the key
//! authorization, owned by nginx's worker user with mode 0644, and removed again by `clear`.
//!
//! The challenge directory usually lies inside a web root that another user owns (a CMS running
//! as `www-data`, a site owner). Root never follows a symlink that user could plant: the
//! directory is opened with [`fsutil::open_dir_safely`] (links are followed only inside
//! directories nobody else can write), and the token is created, chowned and unlinked relative
//! to that directory's descriptor, never by path.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, Mode};
use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::acme::is_valid_token;
use crate::acme::{ChallengeSolver, ChallengeType, PendingChallenge, SolverError};
use crate::fsutil;

/// Mode of a token file: readable by the nginx workers, whoever they run as.
pub const TOKEN_MODE: u32 = 0o644;
/// Mode of a challenge directory this solver creates.
pub const DIR_MODE: u32 = 0o755;

/// Writes http-01 tokens into a directory (per identifier, or one default directory).
#[derive(Debug, Clone)]
pub struct WebrootSolver {
    default_dir: Option<PathBuf>,
    dirs: HashMap<String, PathBuf>,
    owner: Option<(Uid, Gid)>,
}

const HTTP01: &[ChallengeType] = &[ChallengeType::Http01];

impl WebrootSolver {
    /// Tokens for every identifier go to `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            default_dir: Some(dir.into()),
            dirs: HashMap::new(),
            owner: None,
        }
    }

    /// Tokens only for the identifiers given with [`WebrootSolver::with_dir_for`].
    pub fn per_name() -> Self {
        Self {
            default_dir: None,
            dirs: HashMap::new(),
            owner: None,
        }
    }

    /// Tokens for `name` go to `dir`.
    pub fn with_dir_for(mut self, name: &str, dir: impl Into<PathBuf>) -> Self {
        self.dirs.insert(name.to_ascii_lowercase(), dir.into());
        self
    }

    /// Token files get this owner (nginx's worker user and group).
    pub fn with_owner(mut self, uid: Uid, gid: Gid) -> Self {
        self.owner = Some((uid, gid));
        self
    }

    /// The directory tokens for `name` go to.
    pub fn dir_for(&self, name: &str) -> Option<&Path> {
        self.dirs
            .get(&name.to_ascii_lowercase())
            .or(self.default_dir.as_ref())
            .map(PathBuf::as_path)
    }

    fn token_path(&self, ch: &PendingChallenge) -> Result<PathBuf, SolverError> {
        // The ACME client checks tokens already; a solver that writes files checks again.
        if !is_valid_token(&ch.token) {
            return Err(format!("refusing token {:?}: not base64url", ch.token).into());
        }
        let dir = self
            .dir_for(&ch.identifier.value)
            .ok_or_else(|| format!("no webroot configured for {}", ch.identifier.value))?;
        Ok(dir.join(&ch.token))
    }

    /// Writes the token file; see the module documentation.
    pub fn write_token(&self, ch: &PendingChallenge) -> Result<PathBuf, SolverError> {
        let path = self.token_path(ch)?;
        let dir = path.parent().unwrap_or(Path::new("/"));
        let dirfd = fsutil::open_dir_safely(dir, Some(DIR_MODE))
            .map_err(|e| format!("challenge directory {}: {e}", dir.display()))?;
        write_token_at(
            &dirfd,
            &ch.token,
            ch.key_authorization.as_bytes(),
            self.owner,
        )
        .map_err(|e| format!("cannot write token file {}: {e}", path.display()))?;
        Ok(path)
    }

    /// Removes the token file; a missing file is fine.
    pub fn remove_token(&self, ch: &PendingChallenge) -> Result<(), SolverError> {
        let path = self.token_path(ch)?;
        remove_token_file(&path).map(|_| ()).map_err(|e| e.into())
    }
}

/// Why a token file could not be written or removed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Dir(#[from] fsutil::DirError),
    #[error("{}: not named like an ACME token; not touched", .0.display())]
    NotAToken(PathBuf),
    #[error("cannot remove token file {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
}

/// Creates `name` in the directory `dirfd` with `owner` and mode 0644: written as a hidden
/// temporary file (owner and mode set on its descriptor), then renamed over the name, so the
/// token never exists under its name with another owner or half written, and a leftover or a
/// planted link under that name is replaced without being followed.
fn write_token_at(
    dirfd: &OwnedFd,
    name: &str,
    contents: &[u8],
    owner: Option<(Uid, Gid)>,
) -> Result<(), nix::errno::Errno> {
    let temp = temp_name(name);
    match unlinkat(dirfd, temp.as_str(), UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e),
    }
    let fd = openat(
        dirfd,
        temp.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(TOKEN_MODE),
    )?;
    let written = (|| {
        if let Some((uid, gid)) = owner {
            fchown(&fd, Some(uid), Some(gid))?;
        }
        fchmod(&fd, Mode::from_bits_truncate(TOKEN_MODE))?;
        let mut file = std::fs::File::from(fd);
        file.write_all(contents).map_err(|e| {
            e.raw_os_error()
                .map_or(nix::errno::Errno::EIO, nix::errno::Errno::from_raw)
        })?;
        nix::fcntl::renameat(dirfd, temp.as_str(), dirfd, name)
    })();
    if written.is_err() {
        if let Err(e) = unlinkat(dirfd, temp.as_str(), UnlinkatFlags::NoRemoveDir) {
            tracing::warn!("the temporary token file {temp} stays: {e}");
        }
    }
    written
}

/// Removes a token file (only a file named like a token) through the safely opened directory
/// holding it; a missing file or directory is fine. Used by `clear` and by the sweep of a killed
/// run's journal. True when there was a file to remove.
pub fn remove_token_file(path: &Path) -> Result<bool, TokenError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| is_valid_token(n))
        .ok_or_else(|| TokenError::NotAToken(path.to_path_buf()))?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let dirfd = match fsutil::open_dir_safely(dir, None) {
        Ok(fd) => fd,
        Err(fsutil::DirError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(false)
        }
        Err(e) => return Err(e.into()),
    };
    // A run killed while writing leaves the hidden temporary file instead of (or besides) the
    // token: both go.
    let mut removed = false;
    for entry in [temp_name(name), name.to_owned()] {
        match unlinkat(&dirfd, entry.as_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) => removed = true,
            Err(nix::errno::Errno::ENOENT) => {}
            Err(source) => {
                return Err(TokenError::Remove {
                    path: dir.join(entry),
                    source,
                })
            }
        }
    }
    Ok(removed)
}

/// The hidden name a token is written under before it is renamed into place.
fn temp_name(token: &str) -> String {
    format!(".{token}.tmp")
}

impl ChallengeSolver for WebrootSolver {
    fn challenge_types(&self) -> &[ChallengeType] {
        HTTP01
    }

    async fn fulfill(&self, ch: &PendingChallenge) -> Result<(), SolverError> {
        self.write_token(ch).map(|_| ())
    }

    async fn clear(&self, ch: &PendingChallenge) -> Result<(), SolverError> {
        self.remove_token(ch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::Identifier;
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    fn challenge(token: &str) -> PendingChallenge {
        PendingChallenge {
            identifier: Identifier::from_name("a.test"),
            wildcard: false,
            kind: ChallengeType::Http01,
            token: token.into(),
            key_authorization: format!("{token}.thumb"),
            url: "https://ca/chall/1".into(),
        }
    }

    #[tokio::test]
    async fn writes_token_with_mode_and_owner_then_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let webroot = dir.path().join("new/acme");
        let me = (nix::unistd::getuid(), nix::unistd::getgid());
        let solver = WebrootSolver::new(&webroot).with_owner(me.0, me.1);
        let ch = challenge("tok_EN-1");
        solver.fulfill(&ch).await.unwrap();
        let path = webroot.join("tok_EN-1");
        assert_eq!(fs::read_to_string(&path).unwrap(), "tok_EN-1.thumb");
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, TOKEN_MODE);
        assert_eq!((meta.uid(), meta.gid()), (me.0.as_raw(), me.1.as_raw()));
        solver.clear(&ch).await.unwrap();
        assert!(!path.exists());
        // Clearing twice is fine.
        solver.clear(&ch).await.unwrap();
    }

    #[test]
    fn the_sweep_removes_the_temporary_file_of_a_killed_write() {
        let dir = tempfile::tempdir().unwrap();
        // Killed between creating the hidden file and renaming it: only the temporary is there.
        fs::write(dir.path().join(".tok-1.tmp"), "half").unwrap();
        assert!(remove_token_file(&dir.path().join("tok-1")).unwrap());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        // Nothing left: nothing removed.
        assert!(!remove_token_file(&dir.path().join("tok-1")).unwrap());
    }

    #[tokio::test]
    async fn refuses_path_tokens_and_does_not_follow_planted_links() {
        let dir = tempfile::tempdir().unwrap();
        let solver = WebrootSolver::new(dir.path());
        let err = solver.fulfill(&challenge("../../etc/x")).await.unwrap_err();
        assert!(err.to_string().contains("not base64url"), "{err}");

        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        symlink(&victim, dir.path().join("tok")).unwrap();
        solver.fulfill(&challenge("tok")).await.unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(
            fs::read_to_string(dir.path().join("tok")).unwrap(),
            "tok.thumb"
        );
    }

    #[tokio::test]
    async fn per_name_directories() {
        let dir = tempfile::tempdir().unwrap();
        let solver = WebrootSolver::per_name().with_dir_for("A.test", dir.path().join("a"));
        solver.fulfill(&challenge("t1")).await.unwrap();
        assert!(dir.path().join("a/t1").exists());
        let mut other = challenge("t2");
        other.identifier = Identifier::from_name("b.test");
        assert!(solver.fulfill(&other).await.is_err());
    }

    #[tokio::test]
    async fn a_planted_link_to_the_challenge_dir_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        // The web root belongs to someone else (world-writable here, as a stand-in).
        let webroot = dir.path().join("site");
        fs::create_dir(&webroot).unwrap();
        fs::set_permissions(&webroot, fs::Permissions::from_mode(0o777)).unwrap();
        let victim = dir.path().join("hooks");
        fs::create_dir(&victim).unwrap();
        symlink(&victim, webroot.join(".well-known")).unwrap();
        let solver = WebrootSolver::new(webroot.join(".well-known/acme-challenge"));
        let err = solver.fulfill(&challenge("tok")).await.unwrap_err();
        assert!(err.to_string().contains(".well-known"), "{err}");
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(
            fs::read_dir(&victim).unwrap().count(),
            0,
            "nothing created in the target"
        );
        // The sweep of a journaled path through the same link removes nothing there.
        fs::create_dir(victim.join("acme-challenge")).unwrap();
        fs::write(victim.join("acme-challenge/tok"), "root's file").unwrap();
        assert!(remove_token_file(&webroot.join(".well-known/acme-challenge/tok")).is_err());
        assert!(victim.join("acme-challenge/tok").exists());
        // Only token-named files are ever removed.
        assert!(matches!(
            remove_token_file(&dir.path().join("hooks/not.a.token")).unwrap_err(),
            TokenError::NotAToken(_)
        ));
    }
}
