//! File writes that survive crashes and do not follow symlinks: a temp file in the target's own
//! directory (created exclusively, never through a link), fsync, rename over the target, fsync of
//! the directory. Used for account state, keys, certificates and edited nginx files alike.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode for private keys and account state.
pub const PRIVATE_MODE: u32 = 0o600;
/// Mode for certificates and other public files.
pub const PUBLIC_MODE: u32 = 0o644;

/// Largest file read through [`read_limited`] (state files, CSRs, certificates, keys).
pub const MAX_SMALL_FILE: u64 = 4 * 1024 * 1024;

fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut rnd = [0u8; 6];
    getrandom(&mut rnd);
    let suffix: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".tmp-{suffix}"));
    Ok(path.with_file_name(tmp))
}

fn getrandom(buf: &mut [u8]) {
    use rand_core::RngCore;
    rand_core::OsRng.fill_bytes(buf);
}

/// Writes `data` to `path` atomically with `mode`. The target is replaced by rename, so a
/// symlink at `path` is replaced, never followed.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_owned(path, data, mode, None)
}

/// Like [`write_atomic`], with the owner set on the temporary file's descriptor before the
/// rename: nothing is ever chowned or chmodded by path, so a link swapped in by the
/// directory's owner cannot redirect it.
pub fn write_atomic_owned(
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let tmp = temp_path(path)?;
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        if let Some((uid, gid)) = owner {
            nix::unistd::fchown(&f, Some(uid.into()), Some(gid.into()))?;
        }
        // The umask may have narrowed the mode (and fchown clears set-id bits); set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsyncs the directory holding `path`, so a rename in it is durable.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Reads a file of at most [`MAX_SMALL_FILE`] bytes, read-only (never truncates, never creates).
pub fn read_limited(path: &Path) -> io::Result<Vec<u8>> {
    let f = File::open(path)?;
    let mut buf = Vec::new();
    f.take(MAX_SMALL_FILE + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_SMALL_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_SMALL_FILE} bytes"),
        ));
    }
    Ok(buf)
}

/// Creates `dir` and its missing parents with `mode` (existing ones are left as they are).
pub fn create_dir_all_mode(dir: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(mode).create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn write_atomic_sets_mode_and_replaces_links_instead_of_following_them() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let target = dir.path().join("state.json");
        symlink(&victim, &target).unwrap();
        write_atomic(&target, b"new", PRIVATE_MODE).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert!(!fs::symlink_metadata(&target)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temp files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn write_atomic_into_missing_directory_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_atomic(&dir.path().join("no/such/file"), b"x", PUBLIC_MODE).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn read_limited_refuses_huge_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        let f = File::create(&p).unwrap();
        f.set_len(MAX_SMALL_FILE + 10).unwrap();
        assert!(read_limited(&p).is_err());
        fs::write(&p, b"small").unwrap();
        assert_eq!(read_limited(&p).unwrap(), b"small");
    }
}
