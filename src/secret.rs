//! Secrets: the one way a secret file is read (TSIG keys, the PowerDNS API key, the WebDAV and
//! etcd passwords, etcd's client key, the fleet key, the EAB HMAC key), and a type that holds
//! a secret without ever showing it (no `Display`, no `Serialize`, a redacted `Debug`), so it
//! cannot reach a log line, `--json`, the metrics or an error chain by accident.
//!
//! A secret file must be what only root (or the user acme-nginx runs as) controls: opened
//! without following a symlink (nor one planted in a directory another user can write), a
//! regular file, owned by root or the running user, readable and writable by its owner only,
//! and small. Anything else is refused with a message naming the file and the fix: a secret
//! another user can read is no longer secret, and one another user can write lets them choose
//! what root signs with.

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// The largest secret file read (a TSIG key file, a password, a PEM private key).
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// A secret's bytes. Shown by nothing; read with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

impl Secret {
    /// A secret from bytes already in memory (a value given on the command line).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }

    /// The bytes, for the one place that uses them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The bytes as text without a trailing newline (a password or API key file), when it is
    /// UTF-8.
    pub fn expose_line(&self) -> Option<&str> {
        std::str::from_utf8(&self.0)
            .ok()
            .map(|s| s.trim_end_matches(['\r', '\n']))
    }
}

/// What is wrong with a secret file.
#[derive(Debug, thiserror::Error)]
pub enum SecretProblem {
    #[error("cannot open it: {0}")]
    Open(String),
    #[error("it is a symbolic link (or lies below one another user could have planted); name the file itself")]
    Link,
    #[error("it is not a regular file")]
    NotRegular,
    #[error("it belongs to uid {uid}, not to root or the user acme-nginx runs as; chown root it")]
    Owner { uid: u32 },
    #[error("mode {mode:o} lets other users read or change it; chmod 600 it")]
    Mode { mode: u32 },
    #[error("it is larger than {MAX_SECRET_FILE} bytes")]
    TooLarge,
}

/// A secret file acme-nginx refuses to use, and why.
#[derive(Debug, thiserror::Error)]
#[error("the secret file {}: {problem}", path.display())]
pub struct SecretFileError {
    pub path: PathBuf,
    pub problem: SecretProblem,
}

/// Reads a secret file, checked as the module says.
pub fn read_secret(path: &Path) -> Result<Secret, SecretFileError> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::Mode;
    let fail = |problem| SecretFileError {
        path: path.to_path_buf(),
        problem,
    };
    let absolute =
        std::path::absolute(path).map_err(|e| fail(SecretProblem::Open(e.to_string())))?;
    let (dir, name) = match (absolute.parent(), absolute.file_name()) {
        (Some(d), Some(n)) => (d, n),
        _ => return Err(fail(SecretProblem::NotRegular)),
    };
    let dirfd = crate::fsutil::open_dir_safely(dir, None).map_err(|e| match e {
        crate::fsutil::DirError::UntrustedSymlink { .. } => fail(SecretProblem::Link),
        other => fail(SecretProblem::Open(other.to_string())),
    })?;
    let fd = openat(
        &dirfd,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        nix::errno::Errno::ELOOP => fail(SecretProblem::Link),
        e => fail(SecretProblem::Open(std::io::Error::from(e).to_string())),
    })?;
    let file = std::fs::File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| fail(SecretProblem::Open(e.to_string())))?;
    if !meta.is_file() {
        return Err(fail(SecretProblem::NotRegular));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(fail(SecretProblem::Owner { uid: meta.uid() }));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(fail(SecretProblem::Mode {
            mode: meta.mode() & 0o7777,
        }));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(SecretProblem::Open(e.to_string())))?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(fail(SecretProblem::TooLarge));
    }
    Ok(Secret(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt as _;

    fn write(path: &Path, mode: u32) {
        fs::write(path, b"s3cret\n").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Each way a secret file can be wrong, refused with its reason; the good one is read.
    #[test]
    fn secret_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(&d.join("good"), 0o600);
        assert_eq!(
            read_secret(&d.join("good")).unwrap().expose_line(),
            Some("s3cret")
        );
        write(&d.join("readable"), 0o644);
        write(&d.join("group"), 0o640);
        std::os::unix::fs::symlink(d.join("good"), d.join("link")).unwrap();
        nix::unistd::mkfifo(
            &d.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let giant = fs::File::create(d.join("giant")).unwrap();
        giant.set_len(MAX_SECRET_FILE + 1).unwrap();
        fs::set_permissions(d.join("giant"), fs::Permissions::from_mode(0o600)).unwrap();
        type Expected = fn(&SecretProblem) -> bool;
        let cases: Vec<(&str, Expected)> = vec![
            ("readable", |p| {
                matches!(p, SecretProblem::Mode { mode: 0o644 })
            }),
            ("group", |p| {
                matches!(p, SecretProblem::Mode { mode: 0o640 })
            }),
            ("link", |p| matches!(p, SecretProblem::Link)),
            ("fifo", |p| matches!(p, SecretProblem::NotRegular)),
            ("giant", |p| matches!(p, SecretProblem::TooLarge)),
            ("missing", |p| matches!(p, SecretProblem::Open(_))),
        ];
        for (name, expected) in cases {
            let err = read_secret(&d.join(name)).unwrap_err();
            assert!(expected(&err.problem), "{name}: {err}");
            assert!(err
                .to_string()
                .contains(&d.join(name).display().to_string()));
        }
        // Another user's file (as root: chown to nobody).
        if nix::unistd::geteuid().is_root() {
            write(&d.join("theirs"), 0o600);
            nix::unistd::chown(
                &d.join("theirs"),
                Some(nix::unistd::Uid::from_raw(65534)),
                None,
            )
            .unwrap();
            let err = read_secret(&d.join("theirs")).unwrap_err();
            assert!(
                matches!(err.problem, SecretProblem::Owner { uid: 65534 }),
                "{err}"
            );
        }
    }

    #[test]
    fn a_secret_is_never_shown() {
        let s = Secret::new("hunter2");
        let shown = format!("{s:?} {:?}", Some(("kid", s.clone())));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("7 bytes redacted"), "{shown}");
    }
}
