//! Where configuration text comes from: the disk (as nginx reads it), or the output of
//! `nginx -T` (every file nginx loaded, each after a `# configuration file PATH:` line), so a
//! scan can be checked against exactly what the running nginx read.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// Reads files and expands globs.
pub trait Source: Sync {
    /// The bytes of a file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// The paths matching a glob pattern, sorted (as glob(3) sorts them for nginx).
    fn glob(&self, pattern: &Path) -> io::Result<Vec<PathBuf>>;
}

/// The real filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskSource;

/// The largest configuration file read (nginx has no limit; a hostile include could point at
/// something endless).
pub const MAX_CONFIG_FILE: u64 = 16 * 1024 * 1024;

impl Source for DiskSource {
    /// Reads a regular file of at most [`MAX_CONFIG_FILE`] bytes. Symlinks are followed (sites
    /// are linked from sites-enabled), but what they reach must be a regular file: a link to
    /// `/dev/zero` or a FIFO is refused without reading or blocking on it.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
            .open(path)?;
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        if meta.len() > MAX_CONFIG_FILE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {MAX_CONFIG_FILE} bytes"),
            ));
        }
        let mut buf = Vec::with_capacity(meta.len() as usize);
        f.take(MAX_CONFIG_FILE + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > MAX_CONFIG_FILE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {MAX_CONFIG_FILE} bytes"),
            ));
        }
        Ok(buf)
    }

    fn glob(&self, pattern: &Path) -> io::Result<Vec<PathBuf>> {
        let pattern = pattern.to_string_lossy();
        let paths = glob::glob(&pattern)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let mut out: Vec<PathBuf> = paths
            .filter_map(Result::ok)
            .filter(|p| !p.is_dir())
            .collect();
        out.sort();
        Ok(out)
    }
}

/// A source with no files: `include` fails (used to parse a lone text).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoIncludes;

impl Source for NoIncludes {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} (includes are not followed here)", path.display()),
        ))
    }

    fn glob(&self, _pattern: &Path) -> io::Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }
}

/// The files of an `nginx -T` dump.
#[derive(Debug, Clone, Default)]
pub struct DumpSource {
    pub files: BTreeMap<PathBuf, Vec<u8>>,
    /// The first file of the dump: the main configuration.
    pub main: Option<PathBuf>,
}

const DUMP_HEADER: &[u8] = b"# configuration file ";

impl DumpSource {
    /// Splits `nginx -T` output into its files. Lines before the first header (nginx's own
    /// "syntax is ok" messages) are ignored.
    pub fn parse(dump: &[u8]) -> Self {
        let mut out = Self::default();
        let mut current: Option<(PathBuf, Vec<u8>)> = None;
        for line in dump.split_inclusive(|b| *b == b'\n') {
            let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
            if let Some(rest) = trimmed.strip_prefix(DUMP_HEADER) {
                if let Some(path) = rest.strip_suffix(b":") {
                    if let Some((p, text)) = current.take() {
                        out.finish(p, text);
                    }
                    let path = PathBuf::from(String::from_utf8_lossy(path).into_owned());
                    out.main.get_or_insert_with(|| path.clone());
                    current = Some((path, Vec::new()));
                    continue;
                }
            }
            if let Some((_, text)) = current.as_mut() {
                text.extend_from_slice(line);
            }
        }
        if let Some((p, text)) = current.take() {
            out.finish(p, text);
        }
        out
    }

    fn finish(&mut self, path: PathBuf, mut text: Vec<u8>) {
        // nginx -T adds one line feed after each file's content.
        if text.ends_with(b"\n") {
            text.pop();
        }
        self.files.insert(path, text);
    }
}

impl Source for DumpSource {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not in the nginx -T output"))
    }

    fn glob(&self, pattern: &Path) -> io::Result<Vec<PathBuf>> {
        let pat = glob::Pattern::new(&pattern.to_string_lossy())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let opts = glob::MatchOptions {
            require_literal_separator: true,
            require_literal_leading_dot: true,
            ..glob::MatchOptions::new()
        };
        Ok(self
            .files
            .keys()
            .filter(|p| pat.matches_path_with(p, opts))
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_is_split_into_files() {
        let dump = b"nginx: the configuration file /e/n.conf syntax is ok\n# configuration file /e/n.conf:\nhttp { include /e/c/*.conf; }\n\n# configuration file /e/c/a.conf:\nserver { }\n\n# configuration file /e/c/b.conf:\nserver { }\n";
        let d = DumpSource::parse(dump);
        assert_eq!(d.main.as_deref(), Some(Path::new("/e/n.conf")));
        assert_eq!(
            d.read(Path::new("/e/n.conf")).unwrap(),
            b"http { include /e/c/*.conf; }\n"
        );
        assert_eq!(
            d.glob(Path::new("/e/c/*.conf")).unwrap(),
            vec![PathBuf::from("/e/c/a.conf"), PathBuf::from("/e/c/b.conf")]
        );
        assert!(d.read(Path::new("/nope")).is_err());
    }

    #[test]
    fn disk_glob_is_sorted_and_skips_directories() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["b.conf", "a.conf", "c.txt"] {
            std::fs::write(dir.path().join(n), "").unwrap();
        }
        std::fs::create_dir(dir.path().join("d.conf")).unwrap();
        let got = DiskSource.glob(&dir.path().join("*.conf")).unwrap();
        assert_eq!(
            got,
            vec![dir.path().join("a.conf"), dir.path().join("b.conf")]
        );
    }

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let zero = dir.path().join("zero.conf");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let err = DiskSource.read(&zero).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let fifo = dir.path().join("fifo.conf");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = DiskSource.read(&fifo).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let big = dir.path().join("big.conf");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_CONFIG_FILE + 1)
            .unwrap();
        assert!(DiskSource
            .read(&big)
            .unwrap_err()
            .to_string()
            .contains("larger than"));
        let ok = dir.path().join("ok.conf");
        std::fs::write(&ok, "events {}\n").unwrap();
        std::os::unix::fs::symlink(&ok, dir.path().join("link.conf")).unwrap();
        assert_eq!(
            DiskSource.read(&dir.path().join("link.conf")).unwrap(),
            b"events {}\n"
        );
    }
}
