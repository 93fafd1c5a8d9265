//! Real-world layouts (`tests/realworld/*/layout.toml`): nginx configurations written by others
//! (Debian's packages, application docs, generators, certbot's edits), each run against a real
//! nginx and pebble with the package's default paths, re-rooted under a temporary directory.
//! Each layout states what must happen (names issued and served, names rightly refused, plain
//! HTTP behaviour that must still hold); every layout also checks the invariants: `nginx -t`
//! passes after every run, the master is the same process, only marked lines were added, no
//! token is left, a second run places no order, and no order is placed for a refused name.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::util::{
    bin, free_port, make_tls_cert, openssl_verify, worker_user, NginxGuard, Pebble, PebbleOptions,
};
use acme_nginx::nginx::edit::MARK;

#[derive(Debug, Deserialize)]
struct Layout {
    /// Where the configuration comes from (package and path, URL and commit, generator).
    source: String,
    /// What was changed to run it here beyond re-rooting paths and ports ("none" when verbatim).
    adapted: String,
    /// Target path under the root (e.g. `etc/nginx/sites-enabled/site`) -> file of this layout,
    /// or `@debian-default` for Debian's own default site.
    files: BTreeMap<String, String>,
    /// Directories to create under the root (web roots).
    #[serde(default)]
    dirs: Vec<String>,
    /// nginx modules the layout uses beyond the core (`http_gzip_static_module`): a build
    /// without one runs no such layout, and says so.
    #[serde(default)]
    needs_modules: Vec<String>,
    /// The nginx version that removed a directive the layout uses (`ssl on`): a newer nginx
    /// runs no such layout, and says so.
    #[serde(default)]
    removed_in: Option<String>,
    /// Hard links made after the files are written: [new name, existing file].
    #[serde(default)]
    hardlinks: Vec<(String, String)>,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
struct Expect {
    /// Whether `nginx -t` passes on the layout as it is (false: acme-nginx must refuse to run).
    #[serde(default = "yes")]
    nginx_t_before: bool,
    /// The exit code of the first enroll.
    exit: i32,
    /// Primary names that get a certificate, served over TLS.
    #[serde(default)]
    issued: Vec<String>,
    /// Names that must not be ordered (skipped or refused, with a reason).
    #[serde(default)]
    refused: Vec<String>,
    /// Plain-HTTP answers that must hold after enrollment: [host, path, status].
    #[serde(default)]
    http: Vec<(String, String, u16)>,
}

fn yes() -> bool {
    true
}

fn layouts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/realworld")
}

fn debian_etc_nginx() -> PathBuf {
    std::env::var_os("ACME_NGINX_TESTBED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".testbed"))
        .join("corpus/nginx-common/etc/nginx")
}

/// The ports a layout's listeners are moved to.
struct Ports {
    http: u16,
    https: u16,
    other: u16,
}

/// Moves absolute paths under `root` and the well-known ports to the test's ports.
fn adapt(text: &str, root: &Path, p: &Ports) -> String {
    let mut out = String::with_capacity(text.len() + 256);
    for line in text.split_inclusive('\n') {
        let mut l = line.to_owned();
        // `tmp` first: the root itself is under /tmp, and later passes write it.
        for top in [
            "tmp", "etc", "var", "run", "usr", "home", "srv", "opt", "data", "www",
        ] {
            let from = format!("/{top}/");
            let to = format!("{}/{top}/", root.display());
            let mut res = String::new();
            let mut rest = l.as_str();
            while let Some(i) = rest.find(&from) {
                let before = rest[..i].chars().last();
                let at_token_start = before.is_none_or(|c| {
                    c.is_whitespace() || c == '"' || c == '\'' || c == ':' || c == '='
                });
                res.push_str(&rest[..i]);
                res.push_str(if at_token_start { &to } else { &from });
                rest = &rest[i + from.len()..];
            }
            res.push_str(rest);
            l = res;
        }
        let trimmed = l.trim_start();
        if trimmed.starts_with("listen") {
            for (port, to) in [("443", p.https), ("80", p.http), ("8080", p.other)] {
                for (a, b) in [
                    (format!(" {port} "), format!(" {to} ")),
                    (format!(" {port};"), format!(" {to};")),
                    (format!(":{port} "), format!(":{to} ")),
                    (format!(":{port};"), format!(":{to};")),
                ] {
                    l = l.replace(&a, &b);
                }
            }
        }
        out.push_str(&l);
    }
    out
}

fn copy_tree(from: &Path, to: &Path, root: &Path, ports: &Ports) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &target, root, ports);
        } else {
            let text = fs::read_to_string(e.path()).unwrap_or_default();
            fs::write(&target, adapt(&text, root, ports)).unwrap();
        }
    }
}

fn files_under(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else if let Ok(t) = fs::read_to_string(&p) {
            out.insert(p, t);
        }
    }
    out
}

/// nginx's prefix in the re-rooted tree (Debian's is /usr/share/nginx): where a block with no
/// `root` serves `html` from, as acme-nginx is told with --nginx-prefix.
fn prefix_of(conf: &Path) -> PathBuf {
    conf.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(|root| root.join("usr/share/nginx"))
        .unwrap()
}

/// Whether some process's parent is `pid` (read from /proc/*/stat).
fn has_child(pid: u32) -> bool {
    fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok())
            == Some(pid)
    })
}

fn nginx_t(nginx_bin: &Path, conf: &Path) -> (bool, String) {
    let out = Command::new(nginx_bin)
        .arg("-p")
        .arg(prefix_of(conf))
        .arg("-c")
        .arg(conf)
        .args(["-t", "-q"])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn get(port: u16, host: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok();
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok();
    buf.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Runs one layout; returns what went against its expectation (empty: as expected), and
/// whether nginx was left failing `nginx -t`.
fn run_layout(name: &str, layout: &Layout, nginx_bin: &Path) -> (Vec<String>, bool) {
    let mut wrong = Vec::new();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    fs::create_dir_all(&root).unwrap();
    for p in [work.path(), root.as_path()] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let ports = Ports {
        http: free_port(),
        https: free_port(),
        other: free_port(),
    };
    copy_tree(&debian_etc_nginx(), &root.join("etc/nginx"), &root, &ports);
    for d in [
        "etc/nginx/sites-enabled",
        "etc/nginx/conf.d",
        "etc/nginx/modules-enabled",
        "var/www/html",
        "var/log/nginx",
        // An nginx built with the default paths logs there before reading its configuration.
        "usr/share/nginx/logs",
        "run",
        "var/cache/nginx",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(layout.dirs.iter().cloned())
    {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(
        root.join("var/www/html/index.nginx-debian.html"),
        "Welcome to nginx!\n",
    )
    .unwrap();
    let here = layouts_dir().join(name);
    for (target, src) in &layout.files {
        if src == "@remove" {
            fs::remove_file(root.join(target)).unwrap();
            continue;
        }
        let text = if src == "@debian-default" {
            fs::read_to_string(debian_etc_nginx().join("sites-available/default")).unwrap()
        } else {
            fs::read_to_string(here.join(src)).unwrap()
        };
        let path = root.join(target);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, adapt(&text, &root, &ports)).unwrap();
    }
    for (link, existing) in &layout.hardlinks {
        fs::hard_link(root.join(existing), root.join(link)).unwrap();
    }
    let conf = root.join("etc/nginx/nginx.conf");
    // Certificates the layout names exist as on the host it came from (self-signed here).
    if layout.expect.nginx_t_before {
        let cfg = acme_nginx::nginx::Config::load(&conf, &acme_nginx::nginx::DiskSource);
        if let Ok(cfg) = cfg {
            let mut wanted: Vec<(PathBuf, PathBuf)> = Vec::new();
            cfg.walk(|d, _| {
                if d.name == "ssl_certificate" || d.name == "ssl_certificate_key" {
                    if let Some(a) = d.args.first() {
                        // A relative path is relative to the configuration's directory.
                        let p = root.join("etc/nginx").join(a.as_str());
                        if !a.contains('$') && !p.exists() {
                            wanted.push((p, PathBuf::from(d.name.as_str())));
                        }
                    }
                }
                if d.name == "ssl_dhparam" || d.name == "ssl_trusted_certificate" {
                    if let Some(a) = d.args.first() {
                        wanted.push((PathBuf::from(a.as_str()), PathBuf::from(d.name.as_str())));
                    }
                }
            });
            let certs = work.path().join("certs");
            fs::create_dir_all(&certs).unwrap();
            let (ca, cert, key) = make_tls_cert(&certs, &["localhost"]);
            for (p, kind) in wanted {
                if p.exists() {
                    continue;
                }
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                let from = match kind.to_str().unwrap() {
                    "ssl_certificate_key" => &key,
                    "ssl_dhparam" => {
                        let made = Command::new("openssl")
                            .args(["dhparam", "-dsaparam", "-out"])
                            .arg(&p)
                            .arg("2048")
                            .output()
                            .unwrap();
                        assert!(made.status.success(), "openssl dhparam");
                        continue;
                    }
                    "ssl_trusted_certificate" => &ca,
                    _ => &cert,
                };
                fs::copy(from, &p).unwrap();
            }
        }
    }
    let (ok_before, why) = nginx_t(nginx_bin, &conf);
    if ok_before != layout.expect.nginx_t_before {
        wrong.push(format!("nginx -t before: {ok_before} ({why})"));
        return (wrong, false);
    }
    let log = work.path().join("nginx.stderr");
    let mut nginx = None;
    if ok_before {
        let child = Command::new(nginx_bin)
            .process_group(0)
            .arg("-p")
            .arg(prefix_of(&conf))
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // Guarded before waiting: a start that fails must not leave nginx running.
        let mut guard = NginxGuard(child);
        let child = &mut guard.0;
        // nginx listens on the http port, or (layouts without one) on another.
        let start = std::time::Instant::now();
        // nginx opens its sockets, then writes its pid file, then forks its workers: a worker
        // (a child of the master) is the sign the pid file acme-nginx reads is there.
        let master = child.id();
        while ![ports.http, ports.https, ports.other]
            .iter()
            .any(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
            || !has_child(master)
        {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20)
                    && child.try_wait().ok().flatten().is_none(),
                "{name}: nginx did not start: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        nginx = Some(guard);
    }
    let pebble = Pebble::start(PebbleOptions::http_port(ports.http));
    let before = files_under(&root.join("etc/nginx"));
    let state = root.join("var/lib/acme-nginx");
    let enroll = || {
        let mut c = pebble.cli();
        c.env("ACME_NGINX_BIN", nginx_bin)
            .args([
                "--json",
                "enroll",
                "--non-interactive",
                "--agree-tos",
                "--nginx-conf",
            ])
            .arg(&conf)
            .arg("--nginx-prefix")
            .arg(root.join("usr/share/nginx"))
            .arg("--state-dir")
            .arg(&state)
            .args(["--config-file", "/dev/null"])
            .arg("--challenge-snippet")
            .arg(root.join("etc/acme-nginx/nginx/acme-challenge.conf"))
            .arg("--hooks-dir")
            .arg(root.join("etc/acme-nginx/hooks"))
            .args(["--https-port", &ports.https.to_string()]);
        c.output().unwrap()
    };
    let out = enroll();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let status_of = |r: &serde_json::Value, n: &str| -> String {
        r["certificates"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == n))
            .map(|c| c["status"].as_str().unwrap_or("").to_owned())
            .unwrap_or_else(|| "absent".into())
    };
    if out.status.code() != Some(layout.expect.exit) {
        wrong.push(format!(
            "exit {:?}, expected {}: {} {}",
            out.status.code(),
            layout.expect.exit,
            String::from_utf8_lossy(&out.stderr).trim(),
            report
        ));
    }
    let (ok_after, why) = nginx_t(nginx_bin, &conf);
    let left_failing = !ok_after && ok_before;
    if left_failing {
        wrong.push(format!("nginx -t fails after the run: {why}"));
    }
    for n in &layout.expect.issued {
        let st = status_of(&report, n);
        if st != "issued" {
            wrong.push(format!("{n}: {st}, expected issued ({report})"));
            continue;
        }
        // Served over TLS with SNI, and the chain verifies against pebble's root.
        let live = state.join("certs").join(n).join("live/fullchain.pem");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", ports.https).parse().unwrap();
        let served = rt.block_on(acme_nginx::nginx::probe::served_certificate(addr, n));
        let leaf = fs::read(&live)
            .ok()
            .and_then(|p| acme_nginx::acme::pem_certificates(&p).ok())
            .map(|mut v| v.remove(0));
        if served.ok() != leaf {
            wrong.push(format!("{n}: nginx does not serve the issued certificate"));
        }
        let root_pem = rt.block_on(pebble.root_file());
        let (ok, text) = openssl_verify(
            &root_pem,
            &fs::read_to_string(&live).unwrap_or_default(),
            work.path(),
        );
        if !ok {
            wrong.push(format!("{n}: chain does not verify: {text}"));
        }
    }
    for n in &layout.expect.refused {
        let st = status_of(&report, n);
        if !matches!(st.as_str(), "skipped" | "absent") {
            wrong.push(format!("{n}: {st}, expected skipped"));
        }
        // A skipped name says why.
        let reason = report["certificates"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == n.as_str()))
            .and_then(|c| c["reason"].as_str())
            .unwrap_or("");
        if st == "skipped" && reason.is_empty() {
            wrong.push(format!("{n}: skipped without a reason"));
        }
        if n.contains('.') && pebble.log().contains(n.as_str()) {
            wrong.push(format!("{n}: an order was placed for a refused name"));
        }
    }
    for (host, path, status) in &layout.expect.http {
        let got = get(ports.http, host, path);
        if got != *status {
            wrong.push(format!("http://{host}{path}: {got}, expected {status}"));
        }
    }
    // Only marked lines were added; a replaced line is one our marked line stands for.
    let after = files_under(&root.join("etc/nginx"));
    for (path, text) in &after {
        let old = before.get(path).map(String::as_str).unwrap_or("");
        let added: Vec<&str> = text
            .lines()
            .filter(|l| !old.lines().any(|o| o == *l))
            .collect();
        let removed = old
            .lines()
            .filter(|l| !text.lines().any(|n| n == *l))
            .count();
        if added.iter().any(|l| !l.contains(MARK)) {
            wrong.push(format!(
                "{}: unmarked lines added: {added:?}",
                path.display()
            ));
        }
        if removed > added.len() {
            wrong.push(format!("{}: {removed} lines removed", path.display()));
        }
    }
    // No token left in any challenge directory.
    for dir in [state.join("challenge")]
        .into_iter()
        .chain(layout.dirs.iter().map(|d| root.join(d)))
    {
        let tokens: Vec<_> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.path().is_file()
                    && acme_nginx::acme::is_valid_token(&e.file_name().to_string_lossy())
            })
            .collect();
        if !tokens.is_empty() {
            wrong.push(format!("stray tokens in {}", dir.display()));
        }
    }
    // A second run places no order and changes nothing.
    if ok_before {
        let orders = pebble.log().matches("POST /order-plz").count();
        if orders < layout.expect.issued.len() {
            wrong.push(format!(
                "pebble's log shows {orders} orders for {} issued names: the order count below would prove nothing",
                layout.expect.issued.len()
            ));
        }
        let again = enroll();
        let report2: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap_or_default();
        for c in report2["certificates"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let st = c["status"].as_str().unwrap_or("");
            let failed_before = status_of(&report, c["name"].as_str().unwrap_or("")) == "failed";
            let quiet =
                matches!(st, "up-to-date" | "skipped") || (failed_before && st == "backoff");
            if !quiet {
                wrong.push(format!("second run: {} is {st}", c["name"]));
            }
        }
        if pebble.log().matches("POST /order-plz").count() != orders {
            wrong.push("second run placed an order".into());
        }
        if let Some(guard) = nginx.as_mut() {
            if guard.0.try_wait().ok().flatten().is_some() {
                wrong.push("the nginx master exited".into());
            }
        }
        let (ok, why) = nginx_t(nginx_bin, &conf);
        if !ok {
            wrong.push(format!("nginx -t fails after the second run: {why}"));
        }
    } else if pebble.log().contains("POST /order-plz") {
        wrong.push("an order was placed although nginx -t failed before the run".into());
    }
    drop(nginx);
    (wrong, left_failing)
}

/// Every layout on Debian 12's nginx (1.22).
#[test]
fn real_world_layouts() {
    run_layouts("nginx 1.22", &bin("nginx"));
}

/// Every layout on nginx mainline (1.31), built by the test bed: newer nginx, same outcomes
/// (a layout says where they differ).
#[test]
fn real_world_layouts_on_nginx_mainline() {
    run_layouts("nginx 1.31", &crate::util::modern_nginx());
}

/// `1.25.1` as numbers.
fn version(v: &str) -> Vec<u32> {
    v.split('.').map(|n| n.parse().unwrap_or(0)).collect()
}

/// The version `nginx -V` prints (`nginx version: nginx/1.22.1`).
fn version_of(nginx_v: &str) -> Vec<u32> {
    let v = nginx_v
        .split("nginx/")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("0");
    version(v)
}

fn run_layouts(which: &str, nginx_bin: &Path) {
    if worker_user().is_none() {
        return; // Debian's nginx.conf runs its workers as www-data: needs root
    }
    let mut names: Vec<String> = fs::read_dir(layouts_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("layout.toml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if let Ok(only) = std::env::var("REALWORLD_ONLY") {
        names.retain(|n| n.contains(&only));
    }
    let built_with =
        String::from_utf8_lossy(&Command::new(nginx_bin).arg("-V").output().unwrap().stderr)
            .into_owned();
    let mut failures = Vec::new();
    let mut skipped = 0;
    let mut left_failing = 0;
    for name in &names {
        let text = fs::read_to_string(layouts_dir().join(name).join("layout.toml")).unwrap();
        let layout: Layout = toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            !layout.source.is_empty() && !layout.adapted.is_empty(),
            "{name}: source"
        );
        let lacking: Vec<&String> = layout
            .needs_modules
            .iter()
            .filter(|m| !built_with.contains(&format!("--with-{m}")))
            .collect();
        if let Some(v) = &layout.removed_in {
            if version_of(&built_with) >= version(v) {
                eprintln!(
                    "realworld ({which}) {name:<28} not run: uses a directive nginx {v} removed"
                );
                skipped += 1;
                continue;
            }
        }
        if !lacking.is_empty() {
            eprintln!(
                "realworld ({which}) {name:<28} not run: this nginx is built without {lacking:?}"
            );
            skipped += 1;
            continue;
        }
        let (wrong, failing) = run_layout(name, &layout, nginx_bin);
        left_failing += usize::from(failing);
        eprintln!(
            "realworld ({which}) {name:<28} {}",
            if wrong.is_empty() {
                "as expected".to_owned()
            } else {
                format!("NOT as expected: {}", wrong.join("; "))
            }
        );
        if !wrong.is_empty() {
            failures.push(name.clone());
        }
    }
    eprintln!(
        "realworld ({which}): {} of {} layouts as expected ({skipped} not run), nginx left failing after {left_failing}",
        names.len() - failures.len() - skipped,
        names.len() - skipped
    );
    assert!(
        failures.is_empty(),
        "layouts not as expected on {which}: {failures:?}"
    );
}
