//! The packages: both built by `packaging/build.sh`; the .deb checked by lintian and installed
//! into a temporary root with dpkg (maintainer scripts run with DPKG_ROOT), then purged, which
//! must leave nothing behind; the .rpm's files and scripts listed with `rpm -qp` and installed
//! into a temporary root; the systemd units checked by `systemd-analyze verify`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds both packages once per test run; returns (deb, rpm).
fn packages() -> &'static (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        crate::util::run_ok(&mut Command::new(repo().join("packaging/build.sh")));
        let find = |dir: &str, ext: &str| {
            std::fs::read_dir(repo().join(dir))
                .unwrap()
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == ext))
                .max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap())
                .unwrap()
        };
        (
            find("target/debian", "deb"),
            find("target/generate-rpm", "rpm"),
        )
    })
}

fn out(cmd: &mut Command) -> String {
    crate::util::run_ok(cmd)
}

#[test]
fn deb_contents_conffiles_and_lintian() {
    let (deb, _) = packages();
    let contents = out(Command::new("dpkg-deb").arg("-c").arg(deb));
    for path in [
        "./usr/bin/acme-nginx",
        "./etc/acme-nginx/config.toml",
        "./etc/acme-nginx/nginx/acme-challenge.conf",
        "./lib/systemd/system/acme-nginx-renew.timer",
        "./lib/systemd/system/acme-nginx-watch.service",
        "./lib/systemd/system/nginx.service.d/acme-nginx.conf",
        "./usr/share/man/man1/acme-nginx.1.gz",
        "./usr/share/man/man1/acme-nginx-enroll.1.gz",
        "./usr/share/bash-completion/completions/acme-nginx",
        "./usr/share/doc/acme-nginx/hooks/README.md",
    ] {
        assert!(
            contents.contains(path),
            "{path} missing from the .deb:\n{contents}"
        );
    }
    let conffiles = out(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Package"));
    assert_eq!(conffiles.trim(), "acme-nginx");
    let dir = tempfile::tempdir().unwrap();
    out(Command::new("dpkg-deb").arg("-e").arg(deb).arg(dir.path()));
    let conf = std::fs::read_to_string(dir.path().join("conffiles")).unwrap();
    assert!(
        conf.contains("/etc/acme-nginx/config.toml")
            && conf.contains("/etc/acme-nginx/nginx/acme-challenge.conf"),
        "{conf}"
    );
    for script in ["postinst", "prerm", "postrm"] {
        assert!(dir.path().join(script).exists(), "{script} missing");
    }
    let lint = Command::new("lintian")
        .args(["--fail-on", "error", "--suppress-tags", "no-manual-page"])
        .arg(deb)
        .output()
        .unwrap();
    assert!(
        lint.status.success(),
        "lintian:\n{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
}

#[test]
fn deb_installs_into_a_root_and_purge_leaves_nothing() {
    let (deb, _) = packages();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(r.join("var/lib/dpkg/available"), "").unwrap();
    let before = tree(r);
    let dpkg = |args: &[&str]| {
        let mut c = Command::new("dpkg");
        c.arg(format!("--root={}", r.display()))
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--force-not-root",
            ])
            .args(args);
        c
    };
    let installed =
        out(dpkg(&["-i", deb.to_str().unwrap()]).env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"));
    assert!(
        installed.contains("Setting up acme-nginx") || r.join("usr/bin/acme-nginx").exists(),
        "{installed}"
    );
    assert!(r.join("usr/bin/acme-nginx").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| std::fs::metadata(r.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("var/lib/acme-nginx"), 0o711, "state directory mode");
    assert_eq!(mode("etc/acme-nginx/hooks/deploy.d"), 0o755);
    assert_eq!(mode("usr/bin/acme-nginx"), 0o755);
    // The installed binary runs.
    let v = out(Command::new(r.join("usr/bin/acme-nginx")).arg("--version"));
    assert!(v.starts_with("acme-nginx "), "{v}");
    out(&mut dpkg(&["--purge", "acme-nginx"]));
    let after = tree(r);
    let left: Vec<&String> = after
        .iter()
        .filter(|p| !before.contains(p) && !p.starts_with("var/lib/dpkg"))
        .collect();
    assert!(left.is_empty(), "purge left {left:?}");
}

/// Every path below `root`, relative, sorted.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn rpm_files_scripts_and_install_into_a_root() {
    let (_, rpm) = packages();
    let files = out(Command::new("rpm").arg("-qpl").arg(rpm));
    for path in [
        "/usr/bin/acme-nginx",
        "/etc/acme-nginx/config.toml",
        "/etc/acme-nginx/nginx/acme-challenge.conf",
        "/usr/lib/systemd/system/acme-nginx-renew.timer",
        "/usr/share/man/man1/acme-nginx.1.gz",
    ] {
        assert!(
            files.contains(path),
            "{path} missing from the .rpm:\n{files}"
        );
    }
    let config = out(Command::new("rpm").arg("-qpc").arg(rpm));
    assert!(config.contains("/etc/acme-nginx/config.toml"), "{config}");
    let scripts = out(Command::new("rpm").args(["-qp", "--scripts"]).arg(rpm));
    assert!(
        scripts.contains("postinstall scriptlet") && scripts.contains("acme-nginx-renew.timer"),
        "{scripts}"
    );
    assert!(scripts.contains("preuninstall scriptlet"), "{scripts}");
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    out(Command::new("rpm").args(["--root", r, "--initdb"]));
    out(Command::new("rpm")
        .args(["--root", r, "-i", "--nodeps", "--noscripts"])
        .arg(rpm));
    assert!(root.path().join("usr/bin/acme-nginx").exists());
    out(Command::new("rpm").args(["--root", r, "-e", "--noscripts", "acme-nginx"]));
    assert!(!root.path().join("usr/bin/acme-nginx").exists());
}

#[test]
fn systemd_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_acme-nginx"));
    let units = repo().join("packaging/systemd");
    let mut names = Vec::new();
    for e in std::fs::read_dir(&units).unwrap().flatten() {
        let p = e.path();
        if p.is_file() {
            let text = std::fs::read_to_string(&p)
                .unwrap()
                .replace("/usr/bin/acme-nginx", bin.to_str().unwrap());
            std::fs::write(dir.path().join(p.file_name().unwrap()), text).unwrap();
            names.push(dir.path().join(p.file_name().unwrap()));
        }
    }
    assert!(names.len() >= 4, "{names:?}");
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&names)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&verify.stderr);
    // Units that name nginx.service or network-online.target may warn on a machine without
    // them; anything about our own units is an error.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("acme-nginx"))
        .collect();
    assert!(
        verify.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
    let timer = std::fs::read_to_string(units.join("acme-nginx-renew.timer")).unwrap();
    assert!(
        timer.contains("Persistent=true") && timer.contains("RandomizedDelaySec="),
        "{timer}"
    );
}

/// Runs a maintainer script of the built .deb as on a real system, inside a private mount
/// namespace: /etc, /var/lib and /run are private copies, `systemctl` and `acme-nginx` are
/// recorders on PATH. Returns (exit code, stdout, the recorded calls).
fn run_script_isolated(script: &str, arg: &str, config: &str) -> (i32, String, String) {
    let (deb, _) = packages();
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("control");
    out(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&ctl));
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let calls = dir.path().join("calls");
    for (name, code) in [("systemctl", 0), ("acme-nginx", 1)] {
        let p = bin.join(name);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\necho \"{name} $*\" >> {}\nexit {code}\n",
                calls.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let config_file = dir.path().join("config.toml");
    std::fs::write(&config_file, config).unwrap();
    let inner = format!(
        "set -e; mkdir -p {d}/etc; cp -a /etc/. {d}/etc/; mount --bind {d}/etc /etc; \
         mkdir -p /etc/acme-nginx; cp {cfg} /etc/acme-nginx/config.toml; \
         mount -t tmpfs none /var/lib; mount -t tmpfs none /run; mkdir -p /run/systemd/system; \
         PATH={bin}:$PATH {ctl}/{script} {arg}; echo \"exit=$?\"; ls -ld /var/lib/acme-nginx 2>&1 | cut -c1-10",
        d = dir.path().display(),
        cfg = config_file.display(),
        bin = bin.display(),
        ctl = ctl.display(),
    );
    let o = Command::new("unshare")
        .args(["-m", "sh", "-c", &inner])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let calls = std::fs::read_to_string(&calls).unwrap_or_default();
    (
        o.status.code().unwrap_or(-1),
        format!("{stdout}{}", String::from_utf8_lossy(&o.stderr)),
        calls,
    )
}

#[test]
fn postinst_enables_the_timer_and_enrolls_only_when_configured() {
    assert!(
        nix::unistd::getuid().is_root(),
        "the maintainer-script test needs root (unshare, mount)"
    );
    // Configured (agreeing is enough, no email needed): the timer is enabled and a first
    // enroll runs; its failure does not fail the install.
    let (code, output, calls) = run_script_isolated("postinst", "configure", "agree_tos = true\n");
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("exit=0") && output.contains("drwx--x--x"),
        "{output}"
    );
    assert!(
        calls.contains("systemctl enable --now acme-nginx-renew.timer"),
        "{calls}"
    );
    assert!(
        calls.contains("acme-nginx enroll --non-interactive"),
        "{calls}"
    );
    assert!(output.contains("the first enrollment failed"), "{output}");
    // Not configured: no enroll, the one command to run is printed.
    let (code, output, calls) = run_script_isolated("postinst", "configure", "#agree_tos = true\n");
    assert_eq!(code, 0, "{output}");
    assert!(!calls.contains("acme-nginx enroll"), "{calls}");
    assert!(
        output.contains("acme-nginx enroll --agree-tos "),
        "{output}"
    );
    // Removal stops the units.
    let (code, output, calls) = run_script_isolated("prerm", "remove", "");
    assert_eq!(code, 0, "{output}");
    assert!(
        calls.contains("systemctl disable --now acme-nginx-renew.timer acme-nginx-watch.service"),
        "{calls}"
    );
}
