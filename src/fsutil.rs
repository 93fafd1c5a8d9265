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
        // The temporary file is ours and unfinished; the error that matters is the write's.
        fs::remove_file(&tmp).ok();
    }
    result
}

/// Like [`write_atomic`], for a file in a directory other users may control (a
/// node_exporter textfile directory): the directory is reached by [`open_dir_safely`] (no
/// symlink another user could plant is followed), and the temporary file, its rename and the
/// fsync all happen relative to that directory's descriptor, so swapping a directory on the
/// way for a link to another one cannot redirect the write.
pub fn write_atomic_in_safe_dir(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    use nix::fcntl::{openat, renameat, OFlag};
    use nix::sys::stat::Mode;
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) if !d.as_os_str().is_empty() => (d.to_path_buf(), n),
        (_, Some(n)) => (std::env::current_dir()?, n),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "path has no file name",
            ))
        }
    };
    let dir = std::path::absolute(&dir)?;
    let dirfd = open_dir_safely(&dir, None).map_err(|e| io::Error::other(e.to_string()))?;
    let tmp = temp_path(Path::new(name))?;
    let fd = openat(
        &dirfd,
        &tmp,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode),
    )
    .map_err(io::Error::from)?;
    let result = (|| {
        let mut f = File::from(fd);
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        renameat(&dirfd, &tmp, &dirfd, name).map_err(io::Error::from)?;
        nix::unistd::fsync(&dirfd).map_err(io::Error::from)
    })();
    if result.is_err() {
        nix::unistd::unlinkat(&dirfd, &tmp, nix::unistd::UnlinkatFlags::NoRemoveDir).ok();
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

/// Reads a public file (a certificate nginx serves) of at most [`MAX_SMALL_FILE`] bytes: only
/// a regular file (a FIFO or a device is refused without blocking on it).
pub fn read_regular_limited(path: &Path) -> io::Result<Vec<u8>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    read_regular(f, &meta, path)
}

/// The bytes of an opened file that must be a regular file of at most [`MAX_SMALL_FILE`]
/// bytes (`meta` is its own metadata; `path` names it in errors).
fn read_regular(f: File, meta: &fs::Metadata, path: &Path) -> io::Result<Vec<u8>> {
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let mut buf = Vec::new();
    f.take(MAX_SMALL_FILE + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_SMALL_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than {MAX_SMALL_FILE} bytes", path.display()),
        ));
    }
    Ok(buf)
}

/// Reads another tool's file to copy it: the directory is walked without following a link
/// another user could plant ([`open_dir_safely`]), the file itself is opened without
/// following a link, must be a regular file (a FIFO or a device is refused without blocking
/// on it) and at most [`MAX_SMALL_FILE`] bytes. Returns the bytes and the mode a copy should
/// have: 0644 only when the source is world-readable, else 0600.
pub fn read_for_copy(path: &Path) -> io::Result<(Vec<u8>, u32)> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::Mode;
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => (d, n),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a file path",
            ))
        }
    };
    let dirfd = open_dir_safely(dir, None).map_err(|e| io::Error::other(e.to_string()))?;
    let fd = openat(
        &dirfd,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("{}: {e}", path.display()),
        )
    })?;
    let f = File::from(fd);
    let meta = f.metadata()?;
    let buf = read_regular(f, &meta, path)?;
    let mode = if meta.permissions().mode() & 0o004 != 0 {
        PUBLIC_MODE
    } else {
        0o600
    };
    Ok((buf, mode))
}

/// Creates `dir` and its missing parents with `mode` (existing ones are left as they are).
pub fn create_dir_all_mode(dir: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(mode).create(dir)
}

/// Most symlinks followed while resolving one trusted path (as the kernel's own limit).
const MAX_SYMLINK_HOPS: usize = 40;

/// Why a directory could not be opened safely.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// A symlink inside a directory another user can write: refused, whatever it points at.
    #[error("{} is a symlink inside {}, which uid {owner} can write; refusing to follow it", link.display(), parent.display())]
    UntrustedSymlink {
        link: PathBuf,
        parent: PathBuf,
        owner: u32,
    },
    /// Not a directory (a file, a device, ...).
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// More symlinks than a path may hold.
    #[error("too many symlinks resolving {}", .0.display())]
    TooManyLinks(PathBuf),
    /// The path is not absolute.
    #[error("{} is not an absolute path", .0.display())]
    NotAbsolute(PathBuf),
    /// A system call failed.
    #[error("cannot open {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// True when only root (or we) can change what a directory holds: owned by root or by us,
/// not writable by group (unless the group is root) or others.
pub fn dir_is_trusted(st: &nix::sys::stat::FileStat) -> bool {
    let me = nix::unistd::geteuid().as_raw();
    let mode = st.st_mode;
    (st.st_uid == 0 || st.st_uid == me)
        && mode & 0o002 == 0
        && (mode & 0o020 == 0 || st.st_gid == 0)
}

/// Opens the directory at `path` and returns its descriptor, without ever following a symlink
/// that another user could have planted: a symlink is followed only while every directory walked
/// through so far is trusted ([`dir_is_trusted`]); below the first directory another user can
/// write, every
/// component is opened with `O_NOFOLLOW`, and a symlink there is refused with a message naming
/// it. With `create`, missing directories are made (mode `create_mode`) the same way, relative
/// to their parent's descriptor. Everything done afterwards relative to the returned descriptor
/// (create, write, fchown, unlink) stays in the directory that was checked, whatever is renamed
/// or swapped meanwhile.
pub fn open_dir_safely(path: &Path, create: Option<u32>) -> Result<std::os::fd::OwnedFd, DirError> {
    use nix::fcntl::{openat, readlinkat, OFlag};
    use nix::sys::stat::{fstat, fstatat, mkdirat, Mode, SFlag};
    use std::collections::VecDeque;
    use std::ffi::OsString;
    use std::path::Component;

    if !path.is_absolute() {
        return Err(DirError::NotAbsolute(path.to_path_buf()));
    }
    let io_err = |p: &Path, e: nix::errno::Errno| DirError::Io {
        path: p.to_path_buf(),
        source: io::Error::from(e),
    };
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let open_root = || {
        openat(nix::fcntl::AT_FDCWD, "/", dir_flags, Mode::empty())
            .map_err(|e| io_err(Path::new("/"), e))
    };
    let mut fd = open_root()?;
    let mut here = PathBuf::from("/");
    // The names to walk, `..` kept (it is resolved by the walk, never lexically).
    let names = |p: &Path| -> VecDeque<OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect()
    };
    let mut todo = names(path);
    let mut hops = 0;
    // Once the walk has passed through an entry another user could have replaced, nothing
    // below it is trusted, even a directory of root's inside it.
    let mut tainted = false;
    while let Some(name) = todo.pop_front() {
        let parent_st = fstat(&fd).map_err(|e| io_err(&here, e))?;
        if name == ".." {
            if tainted || !dir_is_trusted(&parent_st) {
                return Err(DirError::UntrustedSymlink {
                    link: here.join(".."),
                    parent: here.clone(),
                    owner: parent_st.st_uid,
                });
            }
            here.pop();
            fd = openat(&fd, "..", dir_flags, Mode::empty()).map_err(|e| io_err(&here, e))?;
            continue;
        }
        let next = here.join(&name);
        let st = match fstatat(
            &fd,
            name.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Some(st),
            Err(nix::errno::Errno::ENOENT) if create.is_some() => None,
            Err(e) => return Err(io_err(&next, e)),
        };
        // An entry is safe from others when its directory is trusted, or when the directory is
        // sticky (like /tmp) and the entry belongs to root or to us (only its owner may rename
        // or remove it there).
        let me = nix::unistd::geteuid().as_raw();
        let sticky = parent_st.st_mode & 0o1000 != 0;
        let protected = dir_is_trusted(&parent_st)
            || (sticky
                && st
                    .as_ref()
                    .is_some_and(|st| st.st_uid == 0 || st.st_uid == me));
        tainted |= !protected;
        let trusted = !tainted;
        match st {
            None => {
                let mode = Mode::from_bits_truncate(create.unwrap_or(0o755));
                match mkdirat(&fd, name.as_os_str(), mode) {
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                    Err(e) => return Err(io_err(&next, e)),
                }
            }
            Some(st)
                if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
                    == SFlag::S_IFLNK =>
            {
                if !trusted {
                    return Err(DirError::UntrustedSymlink {
                        link: next,
                        parent: here,
                        owner: parent_st.st_uid,
                    });
                }
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(DirError::TooManyLinks(path.to_path_buf()));
                }
                let target =
                    PathBuf::from(readlinkat(&fd, name.as_os_str()).map_err(|e| io_err(&next, e))?);
                let mut parts = names(&target);
                if target.is_absolute() {
                    fd = open_root()?;
                    here = PathBuf::from("/");
                    tainted = false;
                }
                while let Some(p) = parts.pop_back() {
                    todo.push_front(p);
                }
                continue;
            }
            Some(st)
                if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
                    != SFlag::S_IFDIR =>
            {
                return Err(DirError::NotADirectory(next));
            }
            Some(_) => {}
        }
        fd = openat(&fd, name.as_os_str(), dir_flags, Mode::empty()).map_err(|e| match e {
            nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR => {
                DirError::NotADirectory(next.clone())
            }
            e => io_err(&next, e),
        })?;
        here = next;
    }
    Ok(fd)
}

/// Why a file or directory is not safe to run programs from: a user other than root (and
/// us) owns it, or its group or everyone may write it.
pub fn writable_by_others(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return Some(format!("cannot be inspected: {e}")),
    };
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Some(format!("belongs to uid {}, not to root", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Some(format!(
            "is writable by {} (mode {:o})",
            if meta.mode() & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
            meta.mode() & 0o7777
        ));
    }
    None
}

/// Why a program file must not run: it (after symlinks) or the directory it really lives in could
/// be written by another user.
pub fn unsafe_to_run(path: &Path) -> Option<String> {
    let real = match std::fs::canonicalize(path) {
        Ok(r) => r,
        Err(e) => return Some(format!("{}: {e}", path.display())),
    };
    if let Some(why) = writable_by_others(&real) {
        return Some(format!("{} {why}", real.display()));
    }
    let parent = real.parent()?;
    writable_by_others(parent).map(|why| format!("{} {why}", parent.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// The metrics file's directory: when another user owns a directory on the way, a link
    /// they plant there is refused instead of followed (nothing is written where it points);
    /// a plain directory is written into atomically, with the mode asked for.
    #[test]
    fn metrics_writes_refuse_a_link_another_user_planted() {
        if !nix::unistd::geteuid().is_root() {
            return; // chown to another user needs root
        }
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let victim = dir.path().join("victim");
        fs::create_dir(&victim).unwrap();
        symlink(&victim, theirs.join("textfile")).unwrap();
        let err = write_atomic_in_safe_dir(&theirs.join("textfile/acme.prom"), b"x 1\n", 0o644)
            .unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(
            fs::read_dir(&victim).unwrap().next().is_none(),
            "written through the link"
        );
        fs::remove_file(theirs.join("textfile")).unwrap();
        fs::create_dir(theirs.join("textfile")).unwrap();
        write_atomic_in_safe_dir(&theirs.join("textfile/acme.prom"), b"x 1\n", 0o644).unwrap();
        let meta = fs::metadata(theirs.join("textfile/acme.prom")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(
            fs::read(theirs.join("textfile/acme.prom")).unwrap(),
            b"x 1\n"
        );
    }

    /// Copies of another tool's files: a link, a FIFO (without blocking on it) and an oversized
    /// file are refused; the copy's mode is 0644 only for a world-readable source.
    #[test]
    fn read_for_copy_refuses_links_fifos_and_giants() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("public"), b"p").unwrap();
        fs::set_permissions(d.join("public"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(d.join("private"), b"s").unwrap();
        fs::set_permissions(d.join("private"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            read_for_copy(&d.join("public")).unwrap(),
            (b"p".to_vec(), 0o644)
        );
        assert_eq!(
            read_for_copy(&d.join("private")).unwrap(),
            (b"s".to_vec(), 0o600)
        );
        symlink(d.join("private"), d.join("link")).unwrap();
        assert!(read_for_copy(&d.join("link")).is_err());
        nix::unistd::mkfifo(
            &d.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let err = read_for_copy(&d.join("fifo")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let giant = File::create(d.join("giant")).unwrap();
        giant.set_len(MAX_SMALL_FILE + 1).unwrap();
        let err = read_for_copy(&d.join("giant")).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }

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

    #[test]
    fn safe_dirs_follow_trusted_links_only() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
        // A trusted link (in a directory only we can write) is followed.
        fs::create_dir_all(root.join("real/acme")).unwrap();
        symlink(root.join("real"), root.join("www")).unwrap();
        open_dir_safely(&root.join("www/acme"), None).unwrap();
        // Missing directories are created.
        open_dir_safely(&root.join("real/new/deeper"), Some(0o755)).unwrap();
        assert!(root.join("real/new/deeper").is_dir());
        // A directory another user can write: a link in it is refused, naming it.
        let open = root.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        symlink(root.join("real"), open.join("acme")).unwrap();
        let err = open_dir_safely(&open.join("acme"), None).unwrap_err();
        assert!(matches!(err, DirError::UntrustedSymlink { .. }), "{err}");
        assert!(err.to_string().contains("open/acme"), "{err}");
        // ... also when the link is deeper, and for `..` below it.
        fs::create_dir(open.join("d")).unwrap();
        symlink("/etc", open.join("d/x")).unwrap();
        assert!(open_dir_safely(&open.join("d/x"), Some(0o755)).is_err());
        assert!(open_dir_safely(&open.join("d/../../real"), None).is_err());
        // A regular file is not a directory.
        fs::write(root.join("real/file"), "x").unwrap();
        assert!(matches!(
            open_dir_safely(&root.join("real/file"), None).unwrap_err(),
            DirError::NotADirectory(_)
        ));
        assert!(matches!(
            open_dir_safely(Path::new("rel/ative"), None).unwrap_err(),
            DirError::NotAbsolute(_)
        ));
    }
}
