//! Controlling the running nginx: `nginx -t` on the configuration as it is on disk, SIGHUP to
//! the master whose pid the pid file names (after checking that the process runs the very nginx
//! binary `nginx -t` ran and belongs to root or to us), and waiting until the new workers run and
//! the old ones have retired.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::Config;

/// How long a reload may take before it is reported as not taken effect.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `nginx -t` may take.
pub const CONFIG_TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The exit status of the rehearsal script when a bind mount failed (not nginx's verdict).
const OVERLAY_FAILED: i32 = 125;
/// Run by `sh -c` inside the private mount namespace: `COPY FILE`... `--` then the nginx
/// command; each copy is bind-mounted over its file, then nginx replaces the shell.
const OVERLAY_SCRIPT: &str = r#"while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
  mount --bind -- "$1" "$2" || exit 125
  shift 2
done
shift
exec "$@""#;

/// What `nginx -t` said, without the time stamp and pid each log line starts with
/// (`2026/12/07 12:14:34 [emerg] 25484#25484: words` becomes `[emerg] words`).
fn nginx_words(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let words: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| unstamped(line).unwrap_or_else(|| line.to_owned()))
        .collect();
    words.join("\n")
}

/// `[level] words` of one nginx log line, when it has the log's time stamp and pid.
fn unstamped(line: &str) -> Option<String> {
    let (date, rest) = line.split_once(' ')?;
    let (clock, rest) = rest.split_once(' ')?;
    let stamp_like = date.len() == 10 && date.as_bytes()[4] == b'/' && clock.len() == 8;
    let (level, rest) = rest.strip_prefix('[')?.split_once("] ")?;
    let (pid, words) = rest.split_once(": ")?;
    (stamp_like && pid.contains('#')).then(|| format!("[{level}] {words}"))
}

/// Whether this process may make a private mount namespace (asked once).
async fn rehearsal_possible() -> bool {
    static POSSIBLE: tokio::sync::OnceCell<bool> = tokio::sync::OnceCell::const_new();
    *POSSIBLE
        .get_or_init(|| async {
            let probe = tokio::process::Command::new("unshare")
                .args(["--mount", "--propagation", "private", "--", "true"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await;
            let ok = probe.is_ok_and(|s| s.success());
            if !ok {
                tracing::info!(
                    "cannot make a private mount namespace here: configuration edits are tested \
                     only when they are made"
                );
            }
            ok
        })
        .await
}

/// How often the worker processes are looked at while a reload is under way.
const RELOAD_POLL: Duration = Duration::from_millis(10);

/// Why nginx could not be tested or reloaded.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot run {}", bin.display())]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nginx -t did not finish within {}s", CONFIG_TEST_TIMEOUT.as_secs())]
    TestTimeout,
    /// A changed configuration cannot be tested here without changing the live files (see
    /// [`NginxCtl::test_with`]).
    #[error("this host cannot test a configuration change before making it (no private mount namespace)")]
    NoRehearsal,
    /// `nginx -t` failed; nginx's own words.
    #[error("nginx -t failed: {0}")]
    Rejected(String),
    #[error("cannot read the nginx pid file {} (is nginx running?)", path.display())]
    PidFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} does not hold a pid", path.display())]
    BadPid { path: PathBuf },
    #[error("no process {pid} (stale {})", path.display())]
    NoProcess { pid: i32, path: PathBuf },
    /// The pid file names a process that is not the nginx master we manage.
    #[error("process {pid} named by {} is not an nginx master of {}: {why}", path.display(), bin.display())]
    NotMaster {
        pid: i32,
        path: PathBuf,
        bin: PathBuf,
        why: String,
    },
    #[error("cannot signal nginx master {pid}")]
    Signal {
        pid: i32,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("nginx did not switch to new workers within {}s after SIGHUP; the reload did not take effect{log}", RELOAD_TIMEOUT.as_secs())]
    ReloadTimeout { log: String },
    /// The master refused the configuration at the reload (its own words from the error log).
    #[error("nginx refused the configuration when reloading, and keeps the old one: {0}")]
    ReloadRefused(String),
}

/// How to run the nginx binary for this configuration.
#[derive(Debug, Clone)]
pub struct NginxCtl {
    pub bin: PathBuf,
    pub conf: PathBuf,
    /// `-p PREFIX`, when the running nginx was started with one.
    pub prefix: Option<PathBuf>,
    pub pid_file: PathBuf,
    pub error_log: Option<PathBuf>,
}

impl NginxCtl {
    fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.bin);
        if let Some(p) = &self.prefix {
            c.arg("-p").arg(p);
        }
        c.arg("-c").arg(&self.conf);
        c
    }

    /// Runs `nginx -t`; a refusal carries nginx's own message.
    pub async fn test_config(&self) -> Result<(), CtlError> {
        let mut cmd = self.command();
        cmd.arg("-t").arg("-q").kill_on_drop(true);
        let out = tokio::time::timeout(CONFIG_TEST_TIMEOUT, cmd.output())
            .await
            .map_err(|_| CtlError::TestTimeout)?
            .map_err(|source| CtlError::Spawn {
                bin: self.bin.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(CtlError::Rejected(nginx_words(&out.stderr)))
        }
    }

    /// Runs `nginx -t` on the configuration as it would be with each `(copy, file)` pair's copy
    /// in place of the file, without touching any file: nginx runs in a private mount
    /// namespace (util-linux `unshare`) where each file is a bind mount of its copy; the
    /// mounts vanish with the process. [`CtlError::NoRehearsal`] when this host cannot do
    /// that (no `unshare`, no right to mount: a container without CAP_SYS_ADMIN).
    pub async fn test_with(&self, overlays: &[(PathBuf, PathBuf)]) -> Result<(), CtlError> {
        if !rehearsal_possible().await {
            return Err(CtlError::NoRehearsal);
        }
        let mut cmd = tokio::process::Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(OVERLAY_SCRIPT)
            .arg("sh");
        for (copy, file) in overlays {
            cmd.arg(copy).arg(file);
        }
        cmd.arg("--").arg(&self.bin);
        if let Some(p) = &self.prefix {
            cmd.arg("-p").arg(p);
        }
        cmd.arg("-c").arg(&self.conf).args(["-t", "-q"]);
        cmd.kill_on_drop(true);
        let out = tokio::time::timeout(CONFIG_TEST_TIMEOUT, cmd.output())
            .await
            .map_err(|_| CtlError::TestTimeout)?
            .map_err(|source| CtlError::Spawn {
                bin: PathBuf::from("unshare"),
                source,
            })?;
        match out.status.code() {
            Some(0) => Ok(()),
            Some(OVERLAY_FAILED) => {
                tracing::debug!(
                    "rehearsal mounts failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                Err(CtlError::NoRehearsal)
            }
            _ => Err(CtlError::Rejected(nginx_words(&out.stderr))),
        }
    }

    /// The master's pid, checked to be an nginx master running our nginx binary, owned by root
    /// (or by the user running acme-nginx, for unprivileged test beds).
    pub fn master_pid(&self) -> Result<Pid, CtlError> {
        let path = self.pid_file.clone();
        let text = std::fs::read_to_string(&path).map_err(|source| CtlError::PidFile {
            path: path.clone(),
            source,
        })?;
        let pid: i32 = text
            .trim()
            .parse()
            .ok()
            .filter(|p| *p > 1)
            .ok_or_else(|| CtlError::BadPid { path: path.clone() })?;
        let not_master = |why: String| CtlError::NotMaster {
            pid,
            path: path.clone(),
            bin: self.bin.clone(),
            why,
        };
        let cmdline =
            std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|_| CtlError::NoProcess {
                pid,
                path: path.clone(),
            })?;
        if !cmdline.starts_with(b"nginx: master process") {
            let shown = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            return Err(not_master(format!(
                "its command line is {:?}",
                shown.trim()
            )));
        }
        check_owner_and_exe(pid, &self.bin).map_err(|e| not_master(e.0))?;
        Ok(Pid::from_raw(pid))
    }

    /// Whether the pid file names a running nginx master (no ownership or binary check: for
    /// telling the operator nginx is down, never for signalling).
    pub fn master_running(&self) -> Result<(), CtlError> {
        match self.master_pid() {
            Err(CtlError::NotMaster { why, .. }) if why.starts_with("its command line") => {
                Err(CtlError::NotMaster {
                    pid: 0,
                    path: self.pid_file.clone(),
                    bin: self.bin.clone(),
                    why,
                })
            }
            Ok(_) | Err(CtlError::NotMaster { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sends SIGHUP and waits until the reload has taken effect: the master has started new
    /// workers, and every old worker has exited or is shutting down (until then an old worker
    /// may still accept connections with the old configuration).
    pub async fn reload(&self) -> Result<(), CtlError> {
        let master = self.master_pid()?;
        let before = children(master);
        let log_start = self.error_log_len();
        kill(master, Signal::SIGHUP).map_err(|source| CtlError::Signal {
            pid: master.as_raw(),
            source,
        })?;
        let deadline = tokio::time::Instant::now() + RELOAD_TIMEOUT;
        loop {
            let now = children(master);
            let new_worker = now.iter().any(|p| !before.contains(p) && is_worker(*p));
            let old_retired = before.iter().all(|p| !now.contains(p) || is_retiring(*p));
            if new_worker && old_retired {
                return Ok(());
            }
            // A master that refuses the new configuration (it changed after nginx -t) says so
            // in its error log and keeps the old one: no need to wait for the deadline.
            if let Some(line) = self.emerg_since(log_start) {
                return Err(CtlError::ReloadRefused(line));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CtlError::ReloadTimeout {
                    log: self.error_log_tail(),
                });
            }
            tokio::time::sleep(RELOAD_POLL).await;
        }
    }

    fn error_log_len(&self) -> Option<u64> {
        let path = self.error_log.as_ref()?;
        std::fs::metadata(path).ok().map(|m| m.len())
    }

    /// The first `[emerg]` line nginx wrote to its error log after offset `start`.
    fn emerg_since(&self, start: Option<u64>) -> Option<String> {
        use std::io::{Read, Seek, SeekFrom};
        let (path, start) = (self.error_log.as_ref()?, start?);
        let mut f = std::fs::File::open(path).ok()?;
        f.seek(SeekFrom::Start(start)).ok()?;
        let mut text = Vec::new();
        f.take(64 * 1024).read_to_end(&mut text).ok()?;
        String::from_utf8_lossy(&text)
            .lines()
            .find(|l| l.contains("[emerg]"))
            .map(str::to_owned)
    }

    /// The last lines of nginx's error log, for messages.
    pub fn error_log_tail(&self) -> String {
        let Some(path) = &self.error_log else {
            return String::new();
        };
        let Ok(text) = std::fs::read(path) else {
            return String::new();
        };
        let text = String::from_utf8_lossy(&text[text.len().saturating_sub(4096)..]).into_owned();
        let mut lines: Vec<&str> = text.lines().rev().take(5).collect();
        if lines.is_empty() {
            return String::new();
        }
        lines.reverse();
        format!("; {} says:\n  {}", path.display(), lines.join("\n  "))
    }
}

/// Why a process is not the master acme-nginx may signal.
#[derive(Debug)]
struct NotOurs(String);

/// The process must belong to root or to us, and run the same binary as `bin` (a process of
/// another user that names itself "nginx: master process" is not signalled).
fn check_owner_and_exe(pid: i32, bin: &Path) -> Result<(), NotOurs> {
    use std::os::unix::fs::MetadataExt;
    let proc_dir = format!("/proc/{pid}");
    let owner = std::fs::metadata(&proc_dir)
        .map_err(|e| NotOurs(format!("cannot inspect {proc_dir}: {e}")))?
        .uid();
    let me = nix::unistd::geteuid().as_raw();
    if owner != 0 && owner != me {
        return Err(NotOurs(format!("it belongs to uid {owner}, not to root")));
    }
    let exe = std::fs::read_link(format!("{proc_dir}/exe"))
        .map_err(|e| NotOurs(format!("cannot read its executable: {e}")))?;
    // After a package upgrade the running binary shows as "PATH (deleted)".
    let exe_text = exe.to_string_lossy();
    let exe = PathBuf::from(exe_text.strip_suffix(" (deleted)").unwrap_or(&exe_text));
    let want = std::fs::canonicalize(bin).unwrap_or_else(|_| bin.to_path_buf());
    let have = std::fs::canonicalize(&exe).unwrap_or(exe);
    if have != want {
        return Err(NotOurs(format!("it runs {}", have.display())));
    }
    Ok(())
}

/// The child processes of a pid.
fn children(parent: Pid) -> HashSet<i32> {
    let mut out = HashSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces and parentheses).
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok())
            == Some(parent.as_raw())
        {
            out.insert(pid);
        }
    }
    out
}

/// An old worker that closed its listeners (nginx renames it when it starts shutting down).
fn is_retiring(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).map_or(true, |c| {
        let c = String::from_utf8_lossy(&c);
        c.contains("shutting down") || !c.starts_with("nginx: worker process")
    })
}

fn is_worker(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.starts_with(b"nginx: worker process"))
}

/// The error log nginx writes to, from the main context's `error_log` (else the prefix default).
pub fn error_log_path(cfg: &Config, prefix: &Path) -> Option<PathBuf> {
    let main = cfg.expanded(cfg.root());
    let arg = main
        .iter()
        .rev()
        .find(|d| d.name == "error_log")
        .and_then(|d| d.args.first().map(|a| a.to_string()));
    match arg {
        Some(a) if a == "stderr" || a.starts_with("syslog:") || a.starts_with("memory:") => None,
        Some(a) if a.starts_with('/') => Some(PathBuf::from(a)),
        Some(a) => Some(prefix.join(a)),
        None => Some(prefix.join("logs/error.log")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_words_drop_the_stamp_and_pid() {
        let err = b"2026/12/07 12:14:34 [emerg] 25484#25484: BIO_new_file(\"/x\") failed\n\
                    nginx: configuration file /etc/nginx/nginx.conf test failed\n";
        assert_eq!(
            nginx_words(err),
            "[emerg] BIO_new_file(\"/x\") failed\nnginx: configuration file /etc/nginx/nginx.conf test failed"
        );
        assert_eq!(
            nginx_words(b"nginx: [emerg] unknown directive \"x\""),
            "nginx: [emerg] unknown directive \"x\""
        );
    }

    fn ctl(pid: &Path, bin: &str) -> NginxCtl {
        NginxCtl {
            bin: bin.into(),
            conf: "/x".into(),
            prefix: None,
            pid_file: pid.to_path_buf(),
            error_log: None,
        }
    }

    #[test]
    fn pid_file_must_name_an_nginx_master() {
        let dir = tempfile::tempdir().unwrap();
        let pid = dir.path().join("pid");
        std::fs::write(&pid, format!("{}\n", std::process::id())).unwrap();
        let err = ctl(&pid, "nginx").master_pid().unwrap_err();
        assert!(matches!(err, CtlError::NotMaster { .. }), "{err}");
        std::fs::write(&pid, "garbage").unwrap();
        let err = ctl(&pid, "nginx").master_pid().unwrap_err();
        assert!(matches!(err, CtlError::BadPid { .. }), "{err}");
        std::fs::write(&pid, "1").unwrap();
        assert!(matches!(
            ctl(&pid, "nginx").master_pid().unwrap_err(),
            CtlError::BadPid { .. }
        ));
    }

    #[test]
    fn a_process_running_another_binary_is_not_our_master() {
        // This test process runs the test binary, not /usr/sbin/nginx.
        let err = check_owner_and_exe(std::process::id() as i32, Path::new("/usr/sbin/nginx"))
            .unwrap_err();
        assert!(err.0.contains("it runs"), "{}", err.0);
        let me = std::env::current_exe().unwrap();
        check_owner_and_exe(std::process::id() as i32, &me).unwrap();
    }

    #[test]
    fn an_emerg_written_after_the_signal_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("error.log");
        std::fs::write(&log, "2026/01/01 [emerg] an old one\n").unwrap();
        let mut c = ctl(&dir.path().join("pid"), "nginx");
        c.error_log = Some(log.clone());
        let start = c.error_log_len();
        assert_eq!(
            c.emerg_since(start),
            None,
            "what was there before does not count"
        );
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(
            &mut f,
            b"2026/01/02 [notice] signal 1\n2026/01/02 [emerg] unexpected end of file\n",
        )
        .unwrap();
        assert_eq!(
            c.emerg_since(start).as_deref(),
            Some("2026/01/02 [emerg] unexpected end of file")
        );
    }
}
