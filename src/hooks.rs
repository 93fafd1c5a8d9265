//! The user's hooks: `--pre-hook`, `--post-hook` and `--deploy-hook` commands, and every
//! executable in the hook directories (`pre.d`, `post.d`, `deploy.d`) in name order, skipping
//! editor and package-manager leftovers. Each hook runs under a time limit with its output sent
//! to the log; deploy hooks get the certificate's paths in certbot's variables too, so existing
//! certbot deploy hooks work unchanged.
//!
//! A hook file runs as root, so like run-parts, cron and sudo we refuse to run one that another
//! user could have written: the file, the stage directory and the hook directory must belong to
//! root (or to the user running acme-nginx) and must not be writable by group or others. The
//! `--pre/post/deploy-hook` commands are the operator's own and run as given.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// How long one hook may run before it is killed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(300);

/// The three moments hooks run at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Once before the first order.
    Pre,
    /// Once at the end, also after failures.
    Post,
    /// For each installed certificate, after the verified reload.
    Deploy,
}

impl Stage {
    fn dir_name(self) -> &'static str {
        match self {
            Stage::Pre => "pre.d",
            Stage::Post => "post.d",
            Stage::Deploy => "deploy.d",
        }
    }
}

/// Hook configuration.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub pre: Option<String>,
    pub post: Option<String>,
    pub deploy: Option<String>,
    /// The directory holding `pre.d/`, `post.d/`, `deploy.d/`.
    pub dir: Option<PathBuf>,
    pub timeout: Option<Duration>,
}

/// What a deploy hook is told about the certificate.
#[derive(Debug, Clone)]
pub struct DeployInfo {
    pub name: String,
    pub domains: Vec<String>,
    /// The lineage directory (certbot's RENEWED_LINEAGE).
    pub lineage: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub chain: PathBuf,
    pub fullchain: PathBuf,
}

impl DeployInfo {
    /// The environment a deploy hook gets.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let domains = self.domains.join(" ");
        vec![
            ("ACME_NGINX_NAME", self.name.clone()),
            ("ACME_NGINX_DOMAINS", domains.clone()),
            ("ACME_NGINX_CERT", self.cert.display().to_string()),
            ("ACME_NGINX_KEY", self.key.display().to_string()),
            ("ACME_NGINX_CHAIN", self.chain.display().to_string()),
            ("ACME_NGINX_FULLCHAIN", self.fullchain.display().to_string()),
            ("RENEWED_LINEAGE", self.lineage.display().to_string()),
            ("RENEWED_DOMAINS", domains),
        ]
    }
}

/// The post hook's environment: the names whose certificate was renewed or issued in this
/// run (`RENEWED_DOMAINS`) and the names that failed (`FAILED_DOMAINS`, as certbot's), each
/// space-separated.
pub fn post_env(renewed: &[String], failed: &[String]) -> Vec<(&'static str, String)> {
    vec![
        ("RENEWED_DOMAINS", renewed.join(" ")),
        ("FAILED_DOMAINS", failed.join(" ")),
    ]
}

/// True for files a hook directory should not run: hidden files, editor backups and swap files,
/// and the leftovers of dpkg and rpm.
pub fn is_leftover(name: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        "~",
        ".bak",
        ".swp",
        ".swo",
        ".tmp",
        ".orig",
        ".rej",
        ".dpkg-old",
        ".dpkg-new",
        ".dpkg-dist",
        ".dpkg-bak",
        ".dpkg-tmp",
        ".ucf-old",
        ".ucf-new",
        ".ucf-dist",
        ".rpmnew",
        ".rpmsave",
        ".rpmorig",
    ];
    name.starts_with('.') || name.starts_with('#') || SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// Why a hook did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot start")]
    Start(#[source] std::io::Error),
    #[error("killed after {}s", .0.as_secs())]
    Timeout(Duration),
    #[error("cannot wait for it")]
    Wait(#[source] std::io::Error),
    #[error("exited with {status}{}", if .tail.is_empty() { String::new() } else { format!(": {}", .tail) })]
    Exit {
        status: std::process::ExitStatus,
        tail: String,
    },
    /// Not run: another user could have written it.
    #[error("not run: {0}")]
    Unsafe(String),
}

/// A hook that failed.
#[derive(Debug, thiserror::Error)]
#[error("hook {hook}: {error}")]
pub struct HookFailure {
    pub hook: String,
    #[source]
    pub error: HookError,
}

impl Hooks {
    /// The commands for a stage: the flag's command first, then the directory's executables.
    pub fn commands(&self, stage: Stage) -> Vec<HookCommand> {
        let mut out = Vec::new();
        let flag = match stage {
            Stage::Pre => &self.pre,
            Stage::Post => &self.post,
            Stage::Deploy => &self.deploy,
        };
        if let Some(cmd) = flag.as_ref().filter(|c| !c.trim().is_empty()) {
            out.push(HookCommand::Shell(cmd.clone()));
        }
        if let Some(dir) = &self.dir {
            let stage_dir = dir.join(stage.dir_name());
            let files = executables(&stage_dir);
            if files.is_empty() {
                return out;
            }
            let dirs_unsafe = [dir.as_path(), stage_dir.as_path()]
                .into_iter()
                .find_map(|d| {
                    crate::fsutil::writable_by_others(d).map(|why| format!("{} {why}", d.display()))
                });
            out.extend(files.into_iter().map(|p| {
                match dirs_unsafe
                    .clone()
                    .or_else(|| crate::fsutil::unsafe_to_run(&p))
                {
                    Some(why) => HookCommand::Unsafe(p, why),
                    None => HookCommand::File(p),
                }
            }));
        }
        out
    }

    /// Runs a stage's hooks in order, with `env` added to their environment (a deploy hook's
    /// [`DeployInfo::env`], the post hook's [`post_env`]). Every hook runs; the failures are
    /// returned.
    pub async fn run(&self, stage: Stage, env: &[(&'static str, String)]) -> Vec<HookFailure> {
        let mut failures = Vec::new();
        for cmd in self.commands(stage) {
            if let Err(error) = cmd.run(env, self.timeout.unwrap_or(HOOK_TIMEOUT)).await {
                tracing::warn!(hook = %cmd, "{error}");
                failures.push(HookFailure {
                    hook: cmd.to_string(),
                    error,
                });
            }
        }
        failures
    }
}

/// Executable regular files of a directory, in name order, leftovers skipped.
fn executables(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| !is_leftover(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .filter(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .collect();
    out.sort();
    out
}

/// One hook to run.
#[derive(Debug, Clone)]
pub enum HookCommand {
    /// A command line, run by `/bin/sh -c`.
    Shell(String),
    /// An executable file.
    File(PathBuf),
    /// An executable file that is not run, and why.
    Unsafe(PathBuf, String),
}

impl std::fmt::Display for HookCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HookCommand::Shell(c) => write!(f, "{c:?}"),
            HookCommand::File(p) | HookCommand::Unsafe(p, _) => write!(f, "{}", p.display()),
        }
    }
}

impl HookCommand {
    async fn run(
        &self,
        env: &[(&'static str, String)],
        timeout: Duration,
    ) -> Result<(), HookError> {
        let mut cmd = match self {
            HookCommand::Unsafe(_, why) => return Err(HookError::Unsafe(why.clone())),
            HookCommand::Shell(c) => {
                let mut cmd = tokio::process::Command::new("/bin/sh");
                cmd.arg("-c").arg(c);
                cmd
            }
            HookCommand::File(p) => tokio::process::Command::new(p),
        };
        cmd.envs(env.iter().map(|(k, v)| (*k, v)));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(HookError::Start)?;
        let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
        let wait = async {
            let (mut o, mut e) = (Vec::new(), Vec::new());
            // Output is only logged: a read error loses log lines, not the hook's result.
            let read_out = async {
                if let Some(s) = out.as_mut() {
                    s.read_to_end(&mut o).await.ok();
                }
            };
            let read_err = async {
                if let Some(s) = err.as_mut() {
                    s.read_to_end(&mut e).await.ok();
                }
            };
            tokio::join!(read_out, read_err);
            (child.wait().await, o, e)
        };
        let (status, stdout, stderr) = tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| HookError::Timeout(timeout))?;
        for line in String::from_utf8_lossy(&stdout)
            .lines()
            .chain(String::from_utf8_lossy(&stderr).lines())
        {
            tracing::info!(hook = %self, "{line}");
        }
        let status = status.map_err(HookError::Wait)?;
        if status.success() {
            Ok(())
        } else {
            let tail = String::from_utf8_lossy(&stderr)
                .trim()
                .lines()
                .last()
                .unwrap_or("")
                .to_owned();
            Err(HookError::Exit { status, tail })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn leftovers_are_skipped() {
        for n in [
            "a~",
            ".hidden",
            "x.dpkg-old",
            "x.dpkg-dist",
            "x.rpmnew",
            "x.rpmsave",
            "x.swp",
            "#x#",
            "x.bak",
        ] {
            assert!(is_leftover(n), "{n}");
        }
        for n in ["10-reload", "deploy.sh", "notify"] {
            assert!(!is_leftover(n), "{n}");
        }
    }

    #[tokio::test]
    async fn hooks_run_in_order_with_variables_and_failures_reported() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let deploy_d = dir.path().join("deploy.d");
        std::fs::create_dir(&deploy_d).unwrap();
        for (name, exec) in [
            ("20-second", true),
            ("10-first", true),
            ("15-not-exec", false),
            ("30-x.dpkg-old", true),
        ] {
            let p = deploy_d.join(name);
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\necho {name} $RENEWED_DOMAINS $ACME_NGINX_NAME >> {}\n",
                    log.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(
                &p,
                std::fs::Permissions::from_mode(if exec { 0o755 } else { 0o644 }),
            )
            .unwrap();
        }
        let hooks = Hooks {
            deploy: Some(format!(
                "echo flag $ACME_NGINX_FULLCHAIN >> {}; exit 3",
                log.display()
            )),
            dir: Some(dir.path().to_path_buf()),
            ..Hooks::default()
        };
        let info = DeployInfo {
            name: "a.test".into(),
            domains: vec!["a.test".into(), "b.test".into()],
            lineage: "/l".into(),
            cert: "/l/cert.pem".into(),
            key: "/l/privkey.pem".into(),
            chain: "/l/chain.pem".into(),
            fullchain: "/l/fullchain.pem".into(),
        };
        let failures = hooks.run(Stage::Deploy, &info.env()).await;
        assert_eq!(failures.len(), 1);
        assert!(
            failures[0].to_string().contains("exit status: 3"),
            "{}",
            failures[0]
        );
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "flag /l/fullchain.pem\n10-first a.test b.test a.test\n20-second a.test b.test a.test\n"
        );
    }

    #[tokio::test]
    async fn a_hanging_hook_is_killed() {
        let hooks = Hooks {
            pre: Some("sleep 30".into()),
            timeout: Some(Duration::from_millis(200)),
            ..Hooks::default()
        };
        let failures = hooks.run(Stage::Pre, &[]).await;
        assert!(
            failures[0].to_string().contains("killed"),
            "{}",
            failures[0]
        );
    }

    #[tokio::test]
    async fn hook_files_others_could_write_do_not_run() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let log = dir.path().join("log");
        let pre_d = dir.path().join("pre.d");
        std::fs::create_dir(&pre_d).unwrap();
        std::fs::set_permissions(&pre_d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let write = |name: &str, mode: u32| {
            let p = pre_d.join(name);
            std::fs::write(&p, format!("#!/bin/sh\necho {name} >> {}\n", log.display())).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write("10-ok", 0o755);
        write("20-group-writable", 0o775);
        write("30-world-writable", 0o757);
        let hooks = Hooks {
            dir: Some(dir.path().to_path_buf()),
            ..Hooks::default()
        };
        let failures = hooks.run(Stage::Pre, &[]).await;
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "10-ok\n");
        assert_eq!(failures.len(), 2);
        assert!(
            failures[0].to_string().contains("20-group-writable"),
            "{}",
            failures[0]
        );
        assert!(
            failures[0].to_string().contains("writable by its group"),
            "{}",
            failures[0]
        );
        assert!(
            failures[1].to_string().contains("writable by everyone"),
            "{}",
            failures[1]
        );
        // A stage directory others can write: nothing in it runs.
        std::fs::set_permissions(&pre_d, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::remove_file(&log).unwrap();
        let failures = hooks.run(Stage::Pre, &[]).await;
        assert!(!log.exists());
        assert_eq!(failures.len(), 3);
        assert!(
            failures[0]
                .to_string()
                .contains("pre.d is writable by everyone"),
            "{}",
            failures[0]
        );
    }
}
