//! The one way acme-nginx changes nginx: write new files and apply edits (with backups), run
//! `nginx -t`, reload, and on any failure put every file back byte for byte and remove every file
//! the change created, reporting a restore that itself failed. If `nginx -t` passed before a
//! change, it passes after a failed one.
//!
//! The controller is a trait so the failure paths are unit-tested without an nginx.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};

use super::ctl::{CtlError, NginxCtl};
use super::edit::{self, Applied, Edit};
use super::Config;
use crate::fsutil;

/// Backups of earlier runs kept in the backup directory (the newest; older ones are pruned).
pub const KEEP_BACKUPS: usize = 20;

/// What a change transaction needs from nginx.
pub trait Control {
    /// `nginx -t` on the configuration as it is on disk now.
    fn test(&self) -> impl Future<Output = Result<(), CtlError>>;
    /// Reload and wait until it has taken effect.
    fn reload(&self) -> impl Future<Output = Result<(), CtlError>>;
}

impl Control for NginxCtl {
    fn test(&self) -> impl Future<Output = Result<(), CtlError>> {
        self.test_config()
    }

    fn reload(&self) -> impl Future<Output = Result<(), CtlError>> {
        NginxCtl::reload(self)
    }
}

/// A file the change creates (it must not exist yet; an existing one is left as it is).
#[derive(Debug, Clone)]
pub struct NewFile {
    pub path: PathBuf,
    pub contents: Vec<u8>,
    pub mode: u32,
}

/// One change of nginx's configuration.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub edits: Vec<Edit>,
    pub new_files: Vec<NewFile>,
}

impl Change {
    /// The real paths (symlinks resolved) of the files the edits rewrite, and the new files that
    /// do not exist yet: what a crash in the middle could leave changed.
    pub fn touched(&self, cfg: &Config) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let edited = edit::render_edits(cfg, &self.edits)
            .into_keys()
            .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
            .collect();
        let created = self
            .new_files
            .iter()
            .filter(|f| f.path.symlink_metadata().is_err())
            .map(|f| f.path.clone())
            .collect();
        (edited, created)
    }
}

pub use super::edit::backup_of;

/// Why a change did not take effect; in every case the files are back as they were, unless
/// `restore` says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The files could not be written (nothing is left changed).
    #[error("cannot change nginx's configuration")]
    Apply(#[source] io::Error),
    /// `nginx -t` refused the changed configuration.
    #[error("nginx -t refused the change; the configuration was put back{}", restore_text(.restore.as_ref()))]
    Rejected {
        #[source]
        cause: CtlError,
        restore: Option<io::Error>,
    },
    /// The reload failed.
    #[error("the reload failed; the configuration was put back{}", restore_text(.restore.as_ref()))]
    Reload {
        #[source]
        cause: CtlError,
        restore: Option<io::Error>,
    },
}

fn restore_text(e: Option<&io::Error>) -> String {
    e.map(|e| {
        format!(" — EXCEPT that restoring failed: {e}; fix it by hand before the next reload")
    })
    .unwrap_or_default()
}

impl ChangeError {
    /// nginx's own words, when nginx refused.
    pub fn nginx_message(&self) -> Option<&str> {
        match self {
            ChangeError::Rejected {
                cause: CtlError::Rejected(m),
                ..
            } => Some(m),
            _ => None,
        }
    }

    /// A restore that itself failed (the configuration may be left changed).
    pub fn restore_failure(&self) -> Option<&io::Error> {
        match self {
            ChangeError::Rejected { restore, .. } | ChangeError::Reload { restore, .. } => {
                restore.as_ref()
            }
            ChangeError::Apply(_) => None,
        }
    }
}

/// Applies `change`, tests it, and (with `reload`) reloads nginx. Returns what was changed, for
/// a later rollback.
pub async fn commit<C: Control>(
    ctl: &C,
    cfg: &Config,
    change: &Change,
    backup_dir: &Path,
    reload: bool,
) -> Result<Applied, ChangeError> {
    let mut applied = write_new_files(&change.new_files).map_err(ChangeError::Apply)?;
    match edit::apply(cfg, &change.edits, backup_dir) {
        Ok(a) => applied.originals = a.originals,
        Err(e) => {
            let e = match applied.restore() {
                Ok(()) => e,
                Err(r) => io::Error::new(e.kind(), format!("{e}; and {r}")),
            };
            return Err(ChangeError::Apply(e));
        }
    }
    if let Err(cause) = ctl.test().await {
        let restore = applied.restore().err();
        return Err(ChangeError::Rejected { cause, restore });
    }
    if reload {
        if let Err(cause) = ctl.reload().await {
            let restore = applied.restore().err();
            return Err(ChangeError::Reload { cause, restore });
        }
    }
    Ok(applied)
}

fn write_new_files(files: &[NewFile]) -> io::Result<Applied> {
    let mut applied = Applied::default();
    for f in files {
        if f.path.symlink_metadata().is_ok() {
            continue;
        }
        let result = f
            .path
            .parent()
            .map_or(Ok(()), |p| fsutil::create_dir_all_mode(p, 0o755))
            .and_then(|()| fsutil::write_atomic(&f.path, &f.contents, f.mode));
        if let Err(e) = result {
            // Best effort: the error that matters is the write's.
            if let Err(r) = applied.restore() {
                tracing::warn!("{r}");
            }
            return Err(io::Error::new(
                e.kind(),
                format!("cannot write {}: {e}", f.path.display()),
            ));
        }
        applied.created.push(f.path.clone());
    }
    Ok(applied)
}

/// A new, unique backup directory under `root` for one run (`SECONDS.NANOS-PID`), after pruning
/// all but the newest [`KEEP_BACKUPS`] earlier ones.
pub fn new_backup_dir(root: &Path) -> PathBuf {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    prune_backups(root, KEEP_BACKUPS.saturating_sub(1));
    root.join(format!(
        "{}.{:09}-{}",
        now.as_secs(),
        now.subsec_nanos(),
        std::process::id()
    ))
}

/// Removes all but the newest `keep` backup directories (names sort by time).
fn prune_backups(root: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    let excess = dirs.len().saturating_sub(keep);
    for d in dirs.into_iter().take(excess) {
        if let Err(e) = std::fs::remove_dir_all(&d) {
            tracing::warn!("cannot prune the old backup {}: {e}", d.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nginx::discovery::{scan, BuildDefaults};
    use crate::nginx::edit::{install_edits, InstallSpec};
    use crate::nginx::DiskSource;
    use std::cell::RefCell;

    /// A controller whose answers are scripted; `on_test` runs inside `test` (to sabotage).
    struct Fake {
        test_ok: bool,
        reload_ok: bool,
        calls: RefCell<Vec<&'static str>>,
        on_test: Box<dyn Fn()>,
    }

    impl Fake {
        fn new(test_ok: bool, reload_ok: bool) -> Self {
            Self {
                test_ok,
                reload_ok,
                calls: RefCell::new(Vec::new()),
                on_test: Box::new(|| {}),
            }
        }
    }

    impl Control for Fake {
        async fn test(&self) -> Result<(), CtlError> {
            self.calls.borrow_mut().push("test");
            (self.on_test)();
            if self.test_ok {
                Ok(())
            } else {
                Err(CtlError::Rejected("emerg: unknown directive".into()))
            }
        }

        async fn reload(&self) -> Result<(), CtlError> {
            self.calls.borrow_mut().push("reload");
            if self.reload_ok {
                Ok(())
            } else {
                Err(CtlError::ReloadTimeout { log: String::new() })
            }
        }
    }

    struct Setup {
        dir: tempfile::TempDir,
        cfg: Config,
        change: Change,
        site: PathBuf,
        original: String,
        snippet: PathBuf,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("site.conf");
        let original = "server {\n    listen 80;\n    server_name a.test;\n}\n".to_string();
        std::fs::write(&site, &original).unwrap();
        std::fs::write(
            dir.path().join("nginx.conf"),
            "http { include site.conf; }\n",
        )
        .unwrap();
        let cfg = Config::load(&dir.path().join("nginx.conf"), &DiskSource).unwrap();
        let s = scan(&cfg, &BuildDefaults::default());
        let spec = InstallSpec {
            fullchain: "/l/fullchain.pem".into(),
            key: "/l/privkey.pem".into(),
            https_port: 443,
            redirect: false,
            slot: 0,
        };
        let snippet = dir.path().join("snippets/new.conf");
        let change = Change {
            edits: install_edits(&cfg, &s.servers[0], &spec).unwrap(),
            new_files: vec![NewFile {
                path: snippet.clone(),
                contents: b"# new\n".to_vec(),
                mode: 0o644,
            }],
        };
        Setup {
            dir,
            cfg,
            change,
            site,
            original,
            snippet,
        }
    }

    fn run<C: Control>(ctl: &C, s: &Setup, reload: bool) -> Result<Applied, ChangeError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(commit(
            ctl,
            &s.cfg,
            &s.change,
            &s.dir.path().join("backup"),
            reload,
        ))
    }

    #[test]
    fn success_tests_then_reloads_and_can_be_rolled_back() {
        let s = setup();
        let fake = Fake::new(true, true);
        let applied = run(&fake, &s, true).unwrap();
        assert_eq!(*fake.calls.borrow(), ["test", "reload"]);
        assert!(std::fs::read_to_string(&s.site)
            .unwrap()
            .contains("ssl_certificate /l/fullchain.pem;"));
        assert!(s.snippet.exists());
        applied.restore().unwrap();
        assert_eq!(std::fs::read_to_string(&s.site).unwrap(), s.original);
        assert!(!s.snippet.exists());
    }

    #[test]
    fn refused_change_is_restored_byte_for_byte_and_created_files_removed() {
        let s = setup();
        let fake = Fake::new(false, true);
        let err = run(&fake, &s, true).unwrap_err();
        assert_eq!(*fake.calls.borrow(), ["test"], "no reload after a refusal");
        assert_eq!(err.nginx_message(), Some("emerg: unknown directive"));
        assert!(err.restore_failure().is_none());
        assert_eq!(std::fs::read_to_string(&s.site).unwrap(), s.original);
        assert!(!s.snippet.exists());
    }

    #[test]
    fn failed_reload_is_restored() {
        let s = setup();
        let fake = Fake::new(true, false);
        let err = run(&fake, &s, true).unwrap_err();
        assert!(matches!(err, ChangeError::Reload { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&s.site).unwrap(), s.original);
        assert!(!s.snippet.exists());
    }

    #[test]
    fn a_restore_that_fails_is_reported() {
        let s = setup();
        let mut fake = Fake::new(false, true);
        let site = s.site.clone();
        // While nginx -t runs, the edited file is replaced by a directory: it cannot be put back.
        fake.on_test = Box::new(move || {
            std::fs::remove_file(&site).unwrap();
            std::fs::create_dir(&site).unwrap();
        });
        let err = run(&fake, &s, true).unwrap_err();
        let restore = err.restore_failure().expect("restore failure reported");
        assert!(restore.to_string().contains("site.conf"), "{restore}");
        assert!(err.to_string().contains("restoring failed"), "{err}");
    }

    #[test]
    fn a_file_changed_on_disk_is_not_edited() {
        let s = setup();
        std::fs::write(&s.site, "server { listen 81; }\n").unwrap();
        let fake = Fake::new(true, true);
        let err = run(&fake, &s, true).unwrap_err();
        assert!(matches!(err, ChangeError::Apply(_)), "{err}");
        assert!(fake.calls.borrow().is_empty());
        assert_eq!(
            std::fs::read_to_string(&s.site).unwrap(),
            "server { listen 81; }\n"
        );
        assert!(!s.snippet.exists(), "the created file is removed again");
    }

    #[test]
    fn backup_dirs_are_unique_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..(KEEP_BACKUPS + 5) {
            let d = new_backup_dir(dir.path());
            assert!(seen.insert(d.clone()), "{} twice", d.display());
            std::fs::create_dir_all(&d).unwrap();
        }
        let left = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(left, KEEP_BACKUPS);
    }
}
