//! `watch` as a service: it enrolls a server block added to a watched include file within
//! seconds, survives a broken intermediate configuration, and stops cleanly on SIGTERM.

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::{Nginx, Pebble, PebbleOptions};

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// `acme-nginx -v watch` for this nginx and pebble, with its own state directory (terms agreed
/// in its config file) and its log in `STATE/watch.log`.
fn start_watch(
    pebble: &Pebble,
    nginx: &Nginx,
    dir: &Path,
    https: u16,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    crate::util::ChildGuard,
) {
    let state = tempfile::tempdir().unwrap();
    fs::write(state.path().join("config.toml"), "agree_tos = true\n").unwrap();
    let log = state.path().join("watch.log");
    let child = pebble
        .cli()
        .args(["-v", "watch", "--nginx-conf"])
        .arg(&nginx.conf)
        .arg("--nginx-prefix")
        .arg(nginx.dir.path())
        .arg("--state-dir")
        .arg(state.path())
        .arg("--config-file")
        .arg(state.path().join("config.toml"))
        .arg("--hooks-dir")
        .arg(dir.join("hooks"))
        .args(["--https-port", &https.to_string()])
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (state, log, crate::util::ChildGuard(child))
}

fn site(name: &str, dir: &Path, port: u16) -> String {
    format!(
        "server {{\n    listen 127.0.0.1:{port};\n    server_name {name};\n    \
         location /.well-known/acme-challenge/ {{ alias {}/acme/; }}\n}}\n",
        dir.display()
    )
}

#[test]
fn watch_enrolls_new_blocks_and_stops_on_sigterm() {
    // The sites directory exists before nginx starts, with its first site on nginx's port.
    let www = tempfile::tempdir().unwrap();
    fs::set_permissions(
        www.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let dir = www.path().to_path_buf();
    let sites = dir.join("sites");
    fs::create_dir_all(&sites).unwrap();
    fs::create_dir_all(dir.join("acme")).unwrap();
    let port = crate::util::free_port();
    fs::write(
        sites.join("first.conf"),
        site("first.watch.test", &dir, port),
    )
    .unwrap();
    let nginx = Nginx::start_on(port, &format!("include {}/*.conf;\n", sites.display()));
    let pebble = Pebble::start(PebbleOptions::http_port(nginx.port));
    let https = crate::util::free_port();
    let (state, log, mut guard) = start_watch(&pebble, &nginx, &dir, https);
    let live = |name: &str| {
        state
            .path()
            .join("certs")
            .join(name)
            .join("live/fullchain.pem")
    };
    wait_for(
        "the first site's certificate",
        Duration::from_secs(30),
        || live("first.watch.test").exists(),
    );

    // A broken intermediate file: watch waits and keeps running.
    fs::write(
        sites.join("new.conf"),
        "server {\n    listen 127.0.0.1:1;\n",
    )
    .unwrap();
    let start = Instant::now();
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("does not parse")
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no parse error logged: {}",
            fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        guard.0.try_wait().unwrap().is_none(),
        "watch exited on a broken config: {}",
        fs::read_to_string(&log).unwrap()
    );

    // The finished file: enrolled within seconds, served over TLS.
    let start = Instant::now();
    fs::write(sites.join("new.conf"), site("new.watch.test", &dir, port)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{https}").parse().unwrap();
    wait_for(
        "nginx to serve the new site's certificate",
        Duration::from_secs(30),
        || {
            let Ok(pem) = fs::read(live("new.watch.test")) else {
                return false;
            };
            let leaf = acme_nginx::acme::pem_certificates(&pem).unwrap().remove(0);
            rt.block_on(acme_nginx::nginx::probe::served_certificate(
                addr,
                "new.watch.test",
            ))
            .is_ok_and(|served| served == leaf)
        },
    );
    let took = start.elapsed();
    eprintln!("new server block enrolled {took:?} after the file was written");
    eprintln!("{}", fs::read_to_string(&log).unwrap_or_default());

    // SIGTERM: a clean exit, no stray tokens.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(guard.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = guard.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "watch did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "{status}: {}",
        fs::read_to_string(&log).unwrap()
    );
    assert!(
        fs::read_dir(dir.join("acme")).unwrap().next().is_none(),
        "stray tokens"
    );
}

#[test]
fn watch_started_on_a_broken_configuration_picks_up_the_fix() {
    let www = tempfile::tempdir().unwrap();
    fs::set_permissions(
        www.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let dir = www.path().to_path_buf();
    let sites = dir.join("sites");
    fs::create_dir_all(sites.join("more")).unwrap();
    fs::create_dir_all(dir.join("acme")).unwrap();
    let port = crate::util::free_port();
    fs::write(sites.join("first.conf"), site("fix.watch.test", &dir, port)).unwrap();
    let nginx = Nginx::start_on(
        port,
        &format!(
            "include {s}/*.conf;\ninclude {s}/more/*.conf;\n",
            s = sites.display()
        ),
    );
    // Broken after nginx started: a second file in the nested include directory.
    fs::write(sites.join("more/broken.conf"), "server {\n").unwrap();
    let pebble = Pebble::start(PebbleOptions::http_port(nginx.port));
    let (state, log, _guard) = start_watch(&pebble, &nginx, &dir, crate::util::free_port());
    wait_for(
        "the parse error in the log",
        Duration::from_secs(30),
        || {
            fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("does not parse")
        },
    );
    // The fix lands in the nested directory a broken scan could not have listed.
    fs::remove_file(sites.join("more/broken.conf")).unwrap();
    let live = state.path().join("certs/fix.watch.test/live/fullchain.pem");
    wait_for(
        "the certificate after the fix",
        Duration::from_secs(30),
        || live.exists(),
    );
}
