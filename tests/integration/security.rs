//! Root next to users it does not trust: the web-root owner (nginx's worker user, `www-data`,
//! played with `runuser`) plants or races symlinks, or forges an nginx master; acme-nginx must
//! never write, remove or signal outside what it checked. Real nginx master, real pebble.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{assert_exit, json, worker_user, Bed, GroupGuard};

/// A site whose document root belongs to the worker user.
const SITE: &str = "server {\n    listen 127.0.0.1:{port};\n    server_name site.sec.test;\n    \
    root {dir}/site;\n}\n";

/// Runs a shell command as the worker user, in a process group of its own (so the guard can
/// end the shell that runuser starts, not only runuser).
fn as_worker(script: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new("runuser");
    c.args(["-u", "www-data", "--", "sh", "-c", script])
        .process_group(0);
    c
}

fn owned_site(bed: &Bed) -> std::path::PathBuf {
    let site = bed.nginx.dir.path().join("site");
    fs::create_dir_all(&site).unwrap();
    let www = nix::unistd::User::from_name("www-data").unwrap().unwrap();
    nix::unistd::chown(&site, Some(www.uid), Some(www.gid)).unwrap();
    site
}

/// A directory of root's the attacker would like a file in (a hook directory, say).
fn victim(bed: &Bed) -> std::path::PathBuf {
    let v = bed.state.path().join("victim");
    fs::create_dir_all(&v).unwrap();
    fs::set_permissions(&v, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(bed.state.path(), fs::Permissions::from_mode(0o755)).unwrap();
    v
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        out.push(e.path().display().to_string());
        if e.path().is_dir() {
            out.extend(files_in(&e.path()));
        }
    }
    out
}

#[test]
fn a_symlink_planted_in_the_web_root_is_refused() {
    if worker_user().is_none() {
        return; // needs root to play the worker user
    }
    let bed = Bed::start(SITE);
    let site = owned_site(&bed);
    let victim = victim(&bed);
    let plant = format!("ln -s {} {}/.well-known", victim.display(), site.display());
    assert!(as_worker(&plant).status().unwrap().success());

    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 1);
    let error = json(&out)["certificates"][0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.contains(".well-known") && error.contains("symlink"),
        "{error}"
    );
    assert!(files_in(&victim).is_empty(), "{:?}", files_in(&victim));
    assert!(
        !bed.pebble.log().contains("incorrectResponse"),
        "no validation was spent"
    );
}

#[test]
fn a_racing_symlink_swap_never_gets_a_file_outside_the_web_root() {
    if worker_user().is_none() {
        return;
    }
    let bed = Bed::start(SITE);
    let site = owned_site(&bed);
    let victim = victim(&bed);
    // The attacker flips .well-known between a real directory and a link to the victim as
    // fast as it can for the whole run.
    let race = format!(
        "cd {s}; while :; do rm -rf .well-known; mkdir -p .well-known/acme-challenge; \
         rm -rf .well-known; ln -s {v} .well-known; done",
        s = site.display(),
        v = victim.display()
    );
    let attacker = GroupGuard(
        as_worker(&race)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Watch the victim directory the whole time: nothing may appear there, even briefly.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = {
        let (stop, victim) = (stop.clone(), victim.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seen.extend(files_in(&victim));
            }
            seen
        })
    };
    let start = Instant::now();
    let mut runs = 0;
    while runs < 3 || start.elapsed() < Duration::from_secs(3) {
        let out = bed.cmd("enroll", &["site.sec.test"]);
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        runs += 1;
        if runs > 10 {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(attacker);
    let seen = seen.join().unwrap();
    assert!(
        seen.is_empty(),
        "files appeared in the victim directory: {seen:?}"
    );
}

#[test]
fn a_forged_master_of_another_user_is_not_signalled() {
    if worker_user().is_none() {
        return;
    }
    let bed = Bed::start(SITE);
    owned_site(&bed);
    // A process of www-data's that calls itself an nginx master; the pid file names it.
    let mut fake = GroupGuard(
        Command::new("runuser")
            .args(["-u", "www-data", "--", "bash", "-c"])
            .arg("exec -a 'nginx: master process /usr/sbin/nginx' sleep 60")
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    let fake_pid = loop {
        // runuser may fork: find the forged process by its name and owner.
        let www = nix::unistd::User::from_name("www-data").unwrap().unwrap();
        let found = fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            use std::os::unix::fs::MetadataExt;
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let owner = fs::metadata(format!("/proc/{pid}")).ok()?.uid();
            (cmd.starts_with(b"nginx: master process /usr/sbin/nginx") && owner == www.uid.as_raw())
                .then_some(pid)
        });
        if let Some(p) = found {
            break p;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "forged master did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    fs::write(
        bed.nginx.dir.path().join("nginx.pid"),
        format!("{fake_pid}\n"),
    )
    .unwrap();
    fs::create_dir_all(bed.nginx.dir.path().join("site/.well-known/acme-challenge")).unwrap();

    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 1);
    let error = json(&out)["certificates"][0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("is not an nginx master"), "{error}");
    assert!(
        fake.0.try_wait().unwrap().is_none(),
        "the forged master was signalled"
    );
    fs::write(
        bed.nginx.dir.path().join("nginx.pid"),
        format!("{}\n", bed.nginx.pid()),
    )
    .unwrap();
}

#[test]
fn a_site_file_swapped_for_a_link_while_it_is_edited_never_gets_root_files_chowned() {
    if worker_user().is_none() {
        return;
    }
    let sites = tempfile::tempdir().unwrap();
    fs::set_permissions(sites.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let port = crate::util::free_port();
    let conf = sites.path().join("site.conf");
    fs::write(
        &conf,
        format!(
            "server {{\n    listen 127.0.0.1:{port};\n    server_name race.sec.test;\n    \
             location /.well-known/acme-challenge/ {{ alias {}/acme/; }}\n}}\n",
            sites.path().display()
        ),
    )
    .unwrap();
    fs::create_dir_all(sites.path().join("acme")).unwrap();
    let www = nix::unistd::User::from_name("www-data").unwrap().unwrap();
    for p in [sites.path(), conf.as_path()] {
        nix::unistd::chown(p, Some(www.uid), Some(www.gid)).unwrap();
    }
    let bed = Bed::start_on(
        port,
        &format!("include {}/*.conf;\n", sites.path().display()),
    );
    let victim = bed.state.path().join("victim-secret");
    fs::write(&victim, "root only\n").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
    // The directory's owner flips site.conf between its real text and a link to root's file.
    let race = format!(
        "cd {s}; cp site.conf good.txt; while :; do cp good.txt n.tmp; mv -f n.tmp site.conf; \
         ln -sf {v} l.tmp; mv -f l.tmp site.conf; done",
        s = sites.path().display(),
        v = victim.display()
    );
    let attacker = GroupGuard(
        as_worker(&race)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    let mut runs = 0;
    while runs < 3 || (start.elapsed() < Duration::from_secs(4) && runs < 20) {
        let out = bed.cmd("enroll", &[]);
        assert!(out.status.code().is_some(), "no crash");
        runs += 1;
    }
    drop(attacker);
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(&victim).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (0, 0o600),
        "root's file was chowned"
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "root only\n");
}

/// Every kind of secret file acme-nginx reads at start (the EAB key, etcd's password and
/// client key, the fleet key), written three wrong ways (readable by others, a symbolic link
/// to a good file, owned by another user): each refused, the message naming the file and the
/// fix, the secret itself never shown. The same file written right is accepted.
#[test]
fn secret_files_of_every_kind_are_checked_before_use() {
    if !nix::unistd::geteuid().is_root() {
        return; // chown to another user needs root
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0xMg==";
    let good = d.join("good");
    crate::util::write_secret(&good, secret);
    let cert = d.join("client.pem");
    fs::write(&cert, "not read: the key is refused first\n").unwrap();
    let kinds: Vec<(&str, Vec<String>)> = vec![
        (
            "--eab-hmac-key-file",
            vec!["enroll".into(), "--eab-kid".into(), "kid".into()],
        ),
        (
            "--etcd-password-file",
            vec![
                "status".into(),
                "--fleet".into(),
                "--etcd".into(),
                "http://127.0.0.1:1".into(),
                "--node".into(),
                "n1".into(),
                "--etcd-user".into(),
                "u".into(),
                "--fleet-key-file".into(),
                good.display().to_string(),
            ],
        ),
        (
            "--etcd-key-file",
            vec![
                "status".into(),
                "--fleet".into(),
                "--etcd".into(),
                "http://127.0.0.1:1".into(),
                "--node".into(),
                "n1".into(),
                "--etcd-cert-file".into(),
                cert.display().to_string(),
                "--fleet-key-file".into(),
                good.display().to_string(),
            ],
        ),
        (
            "--fleet-key-file",
            vec![
                "status".into(),
                "--fleet".into(),
                "--etcd".into(),
                "http://127.0.0.1:1".into(),
                "--node".into(),
                "n1".into(),
            ],
        ),
    ];
    for (flag, command) in kinds {
        for (how, expected) in [
            ("readable", "chmod 600"),
            ("link", "symbolic link"),
            ("theirs", "chown root"),
        ] {
            let path = d.join(format!("{}-{how}", flag.trim_start_matches('-')));
            match how {
                "readable" => {
                    fs::write(&path, secret).unwrap();
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
                }
                "link" => std::os::unix::fs::symlink(&good, &path).unwrap(),
                _ => {
                    crate::util::write_secret(&path, secret);
                    nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None)
                        .unwrap();
                }
            }
            let out = crate::util::acme_nginx_cmd()
                .args(&command)
                .arg(flag)
                .arg(&path)
                .args(["--state-dir"])
                .arg(d.join("state"))
                .args([
                    "--config-file",
                    "/dev/null",
                    "--nginx-conf",
                    "/nonexistent/nginx.conf",
                ])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{flag} {how}: {stderr}");
            assert!(
                stderr.contains(&path.display().to_string()) && stderr.contains(expected),
                "{flag} {how}: {stderr}"
            );
            assert!(
                !stderr.contains(secret),
                "{flag} {how} shows the secret: {stderr}"
            );
        }
    }
}
