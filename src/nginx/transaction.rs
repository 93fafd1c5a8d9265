//! The one way acme-nginx changes nginx: write new files and apply edits (with backups), run
//! `nginx -t`, reload, and on any failure put every file back byte for byte and remove every file
//! the change created, reporting a restore that itself failed. If `nginx -t` passed before a
//! change, it passes after a failed one.
//!
//! Before it touches anything a change writes a journal ([`JOURNAL`] in its backup directory:
//! each file it rewrites with the bytes it had, each file it creates) and removes it when the
//! change is settled. A process killed in between leaves the journal, and [`recover`] (run by the
//! next session before anything else) puts those files back, whatever the change was for: an
//! install, a removal, an import, a challenge snippet.
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
/// The journal of a change in progress, inside its backup directory.
pub const JOURNAL: &str = "transaction.json";

/// What a change in progress may have changed: enough to undo it without the process that
/// made it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
struct Journal {
    /// Each file the change rewrites.
    edited: Vec<Edited>,
    /// Each file it creates.
    created: Vec<Created>,
}

/// A file a change rewrites: put back only while it holds exactly what the change wrote (a
/// file someone changed since, or a path that now leads elsewhere, is left alone).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
struct Edited {
    /// The real path (links resolved when the change was journaled).
    path: PathBuf,
    /// Its bytes before the change (base64).
    old: String,
    /// SHA-256 (hex) of what the change writes.
    new_sha256: String,
}

/// A file a change creates: removed only while it holds what the change wrote.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
struct Created {
    path: PathBuf,
    sha256: String,
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Journal {
    /// The journal of `change`. Each file it edits must hold, at its real path, what the
    /// configuration was read as (the check `edit::apply` makes again): a file swapped since
    /// (for a link to another file, say) refuses the change before anything is written.
    fn of(cfg: &Config, change: &Change) -> io::Result<Journal> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut edited = Vec::new();
        for (p, (old, new)) in edit::render_edits(cfg, &change.edits) {
            let real = std::fs::canonicalize(&p)?;
            if let Some(why) = edit::hard_linked(&real) {
                return Err(io::Error::other(why));
            }
            if std::fs::read(&real)? != old {
                return Err(io::Error::other(format!(
                    "{} changed on disk since it was read; not editing it",
                    p.display()
                )));
            }
            edited.push(Edited {
                path: real,
                old: b64.encode(old),
                new_sha256: sha256_hex(&new),
            });
        }
        let created = change
            .new_files
            .iter()
            .filter(|f| f.path.symlink_metadata().is_err())
            .map(|f| Created {
                path: f.path.clone(),
                sha256: sha256_hex(&f.contents),
            })
            .collect();
        Ok(Journal { edited, created })
    }

    fn write(&self, backup_dir: &Path) -> io::Result<PathBuf> {
        fsutil::create_dir_all_mode(backup_dir, 0o700)?;
        let path = backup_dir.join(JOURNAL);
        let json = serde_json::to_vec(self).map_err(io::Error::other)?;
        fsutil::write_atomic(&path, &json, 0o600)?;
        Ok(path)
    }
}

/// What [`recover`] put back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Files rewritten with the bytes they had before the interrupted change.
    pub restored: Vec<PathBuf>,
    /// Files the interrupted change had created, removed.
    pub removed: Vec<PathBuf>,
}

/// Undoes every change a killed process left journaled in the backup directories under
/// `root`: edited files get their former bytes back (where they differ), created files are
/// removed, and the journal goes. A journal that cannot be read or a file that cannot be
/// restored is an error, and the journal stays for the next attempt.
pub fn recover(root: &Path) -> io::Result<Recovered> {
    use base64::Engine as _;
    let mut done = Recovered::default();
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(done);
    };
    let mut journals: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path().join(JOURNAL))
        .filter(|p| p.is_file())
        .collect();
    journals.sort();
    for path in journals {
        let bad = |e: &dyn std::fmt::Display| {
            io::Error::other(format!("the change journal {}: {e}", path.display()))
        };
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(std::fs::File::open(&path)?, MAX_JOURNAL + 1),
            &mut bytes,
        )?;
        if bytes.len() as u64 > MAX_JOURNAL {
            return Err(bad(&format!("larger than {MAX_JOURNAL} bytes")));
        }
        let journal: Journal = serde_json::from_slice(&bytes).map_err(|e| bad(&e))?;
        for e in &journal.edited {
            let old = base64::engine::general_purpose::STANDARD
                .decode(&e.old)
                .map_err(|e| bad(&e))?;
            // Only what this change wrote is put back: never through a path that now leads
            // to another file, never over someone's later edit.
            let Ok(current) = std::fs::symlink_metadata(&e.path).and_then(|m| {
                if m.is_file() {
                    std::fs::read(&e.path)
                } else {
                    Err(io::Error::other("not a regular file"))
                }
            }) else {
                tracing::warn!(
                    "{} is no longer the file the interrupted change edited; left as it is",
                    e.path.display()
                );
                continue;
            };
            if current == old {
                continue;
            }
            if sha256_hex(&current) != e.new_sha256 {
                tracing::warn!(
                    "{} changed since the interrupted change; left as it is",
                    e.path.display()
                );
                continue;
            }
            edit::write_like(&e.path, &old).map_err(|err| {
                io::Error::new(err.kind(), format!("restore {}: {err}", e.path.display()))
            })?;
            done.restored.push(e.path.clone());
        }
        for f in &journal.created {
            let ours = std::fs::symlink_metadata(&f.path).is_ok_and(|m| m.is_file())
                && std::fs::read(&f.path).is_ok_and(|d| sha256_hex(&d) == f.sha256);
            if !ours {
                continue;
            }
            match std::fs::remove_file(&f.path) {
                Ok(()) => done.removed.push(f.path.clone()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("remove {}: {e}", f.path.display()),
                    ))
                }
            }
        }
        std::fs::remove_file(&path)?;
    }
    Ok(done)
}

/// The largest change journal read back.
const MAX_JOURNAL: u64 = 64 * 1024 * 1024;

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
    /// Adds files to create, each path once (the first copy wins).
    pub fn add_new_files(&mut self, files: Vec<NewFile>) {
        for f in files {
            if !self.new_files.iter().any(|n| n.path == f.path) {
                self.new_files.push(f);
            }
        }
    }

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
    let journal = Journal::of(cfg, change)
        .and_then(|j| j.write(backup_dir))
        .map_err(ChangeError::Apply)?;
    let result = commit_journaled(ctl, cfg, change, backup_dir, reload).await;
    // Settled: done, or put back. A restore that failed keeps the journal for the next run.
    if result
        .as_ref()
        .err()
        .and_then(ChangeError::restore_failure)
        .is_none()
    {
        if let Err(e) = std::fs::remove_file(&journal) {
            tracing::warn!(
                "cannot remove the change journal {}: {e}",
                journal.display()
            );
        }
    }
    result
}

async fn commit_journaled<C: Control>(
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
    // A backup with a journal belongs to a change not yet undone: never pruned.
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .filter(|d| !d.join(JOURNAL).exists())
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

    /// A controller whose `nginx -t` never answers: the change is stopped there, as a process
    /// killed while nginx tests would be.
    struct Hangs;

    impl Control for Hangs {
        async fn test(&self) -> Result<(), CtlError> {
            std::future::pending().await
        }

        async fn reload(&self) -> Result<(), CtlError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_change_killed_half_way_is_undone_by_recover() {
        let t = setup();
        let root = t.dir.path().join("backups");
        let backups = root.join("1.0-1");
        // Dropping the commit future mid-way leaves what a SIGKILL would: files changed,
        // nothing restored, the journal.
        let killed = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            commit(&Hangs, &t.cfg, &t.change, &backups, true),
        )
        .await;
        assert!(killed.is_err(), "the change was still in nginx -t");
        assert_ne!(std::fs::read_to_string(&t.site).unwrap(), t.original);
        assert!(t.snippet.exists());
        assert!(backups.join(JOURNAL).exists());
        // The journal keeps its backup from being pruned.
        prune_backups(&root, 0);
        assert!(backups.join(JOURNAL).exists());

        let done = recover(&root).unwrap();
        assert_eq!(std::fs::read_to_string(&t.site).unwrap(), t.original);
        assert!(!t.snippet.exists());
        assert_eq!(done.restored, vec![std::fs::canonicalize(&t.site).unwrap()]);
        assert_eq!(done.removed, vec![t.snippet.clone()]);
        assert!(!backups.join(JOURNAL).exists());
        // Nothing left to undo.
        assert_eq!(recover(&root).unwrap(), Recovered::default());
    }

    /// The journal puts back only what its change wrote: a file swapped for a link to another
    /// file, or edited by someone since, is left alone (no write through the link).
    #[tokio::test]
    async fn recover_never_writes_through_a_swapped_path_or_over_a_later_edit() {
        for swap in [true, false] {
            let t = setup();
            let root = t.dir.path().join("backups");
            let killed = tokio::time::timeout(
                std::time::Duration::from_millis(50),
                commit(&Hangs, &t.cfg, &t.change, &root.join("1.0-1"), true),
            )
            .await;
            assert!(killed.is_err());
            let victim = t.dir.path().join("victim");
            std::fs::write(&victim, "root only\n").unwrap();
            if swap {
                std::fs::remove_file(&t.site).unwrap();
                std::os::unix::fs::symlink(&victim, &t.site).unwrap();
            } else {
                std::fs::write(&t.site, "edited by hand\n").unwrap();
            }
            let done = recover(&root).unwrap();
            assert!(done.restored.is_empty(), "swap {swap}: {done:?}");
            assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root only\n");
            if !swap {
                assert_eq!(
                    std::fs::read_to_string(&t.site).unwrap(),
                    "edited by hand\n"
                );
            }
        }
    }

    /// A file that is not what the configuration was read as (here: swapped for a link to
    /// another file) refuses the change before anything is written.
    #[tokio::test]
    async fn a_file_swapped_before_the_change_is_not_journaled_or_edited() {
        let t = setup();
        let victim = t.dir.path().join("victim");
        std::fs::write(&victim, "root only\n").unwrap();
        std::fs::remove_file(&t.site).unwrap();
        std::os::unix::fs::symlink(&victim, &t.site).unwrap();
        let backups = t.dir.path().join("backups/1.0-1");
        let err = commit(&Fake::new(true, true), &t.cfg, &t.change, &backups, true)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("cannot change"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root only\n");
        assert!(!backups.join(JOURNAL).exists());
        assert!(!t.snippet.exists());
    }

    #[tokio::test]
    async fn a_settled_change_leaves_no_journal() {
        for (test_ok, reload_ok) in [(true, true), (false, true), (true, false)] {
            let t = setup();
            let backups = t.dir.path().join("backups/1.0-1");
            let _ = commit(
                &Fake::new(test_ok, reload_ok),
                &t.cfg,
                &t.change,
                &backups,
                true,
            )
            .await;
            assert!(
                !backups.join(JOURNAL).exists(),
                "test {test_ok}, reload {reload_ok}: a journal is left"
            );
        }
    }
}
