//! The http-01 webroot solver: one file per token, named by the token, holding the key
//! authorization, owned by nginx's worker user with mode 0644, created without following symlinks
//! and removed again by `clear`.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};

use crate::acme::jws::is_valid_token;
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
        if !dir.is_dir() {
            fsutil::create_dir_all_mode(dir, DIR_MODE)
                .map_err(|e| format!("cannot create challenge directory {}: {e}", dir.display()))?;
        }
        // A leftover (or a planted symlink) under the token's name goes first; unlink never follows.
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot replace {}: {e}", path.display()).into()),
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(TOKEN_MODE)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| format!("cannot write token file {}: {e}", path.display()))?;
        f.set_permissions(fs::Permissions::from_mode(TOKEN_MODE))?;
        if let Some((uid, gid)) = self.owner {
            nix::unistd::fchown(&f, Some(uid), Some(gid))
                .map_err(|e| format!("cannot chown {} to {uid}:{gid}: {e}", path.display()))?;
        }
        f.write_all(ch.key_authorization.as_bytes())
            .map_err(|e| format!("cannot write token file {}: {e}", path.display()))?;
        Ok(path)
    }

    /// Removes the token file; a missing file is fine.
    pub fn remove_token(&self, ch: &PendingChallenge) -> Result<(), SolverError> {
        let path = self.token_path(ch)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot remove token file {}: {e}", path.display()).into()),
        }
    }
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
    use std::os::unix::fs::{symlink, MetadataExt};

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
}
