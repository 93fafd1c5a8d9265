//! `enroll` end to end: a real nginx master (our child, workers as www-data when root) and a real
//! pebble whose http-01 port is nginx's, with pebble-challtestsrv resolving every name to
//! loopback.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::util::{assert_exit, json, leaf, openssl_verify, run, Bed};
use acme_nginx::acme::CertInfo;
use acme_nginx::nginx::edit::MARK;
use serde_json::Value;

fn statuses(v: &Value) -> Vec<(String, String)> {
    v["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn without_our_lines(text: &str) -> String {
    text.split_inclusive('\n')
        .filter(|l| !l.contains(MARK))
        .collect()
}

fn dir_empty(p: &Path) -> bool {
    fs::read_dir(p)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

const TWO_BLOCKS: &str = "server {\n    listen 127.0.0.1:{port};\n    server_name a.enroll.test;\n    \
    location /.well-known/acme-challenge/ { alias {dir}/acme-a/; }\n}\n\
    server {\n    listen 127.0.0.1:{port};\n    server_name b.enroll.test www.b.enroll.test;\n    root {dir}/www;\n    \
    location / { try_files $uri =404; }\n    location ~ /\\. { deny all; }\n}\n";

#[test]
fn enroll_two_blocks_then_nothing_to_do() {
    let bed = Bed::start(TWO_BLOCKS);
    fs::create_dir_all(bed.nginx.dir.path().join("acme-a")).unwrap();
    let original = fs::read_to_string(&bed.nginx.conf).unwrap();
    let master = bed.nginx.pid();

    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 0);
    let report = json(&out);
    assert_eq!(
        statuses(&report),
        vec![
            ("a.enroll.test".into(), "issued".into()),
            ("b.enroll.test".into(), "issued".into())
        ]
    );

    // Both names answer over TLS with the installed certificate; the chain verifies.
    let root = bed.root();
    for name in ["a.enroll.test", "b.enroll.test"] {
        let live = bed.lineage(name).join("live");
        assert_eq!(
            bed.served(name),
            leaf(&live.join("fullchain.pem")),
            "{name}"
        );
        let chain = fs::read_to_string(live.join("fullchain.pem")).unwrap();
        let (ok, text) = openssl_verify(&root, &chain, bed.state.path());
        assert!(ok, "{name}: {text}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(live.join("privkey.pem"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
    let b = CertInfo::from_pem(
        &fs::read(bed.lineage("b.enroll.test").join("live/fullchain.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(b.names.len(), 2);

    // The master is the same process (a reload, not a restart); the challenge dirs are empty.
    assert_eq!(bed.nginx.pid(), master);
    assert!(dir_empty(&bed.nginx.dir.path().join("acme-a")));
    let snippet_dir = bed.state.path().join("challenge");
    assert!(
        dir_empty(&snippet_dir),
        "tokens left in {}",
        snippet_dir.display()
    );

    // The edited file differs from the original only by inserted lines.
    let edited = fs::read_to_string(&bed.nginx.conf).unwrap();
    assert_ne!(edited, original);
    assert_eq!(without_our_lines(&edited), original);
    assert!(
        edited.contains("include "),
        "the block without a challenge location got the snippet"
    );

    // Second run: nothing to do, no edit, no reload.
    let before = fs::read(&bed.nginx.conf).unwrap();
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 0);
    let report = json(&out);
    assert_eq!(
        statuses(&report),
        vec![
            ("a.enroll.test".into(), "up-to-date".into()),
            ("b.enroll.test".into(), "up-to-date".into())
        ]
    );
    assert!(report["certificates"][0]["not_after"].as_str().is_some());
    assert_eq!(fs::read(&bed.nginx.conf).unwrap(), before);
    let versions = fs::read_dir(bed.lineage("a.enroll.test").join("versions"))
        .unwrap()
        .count();
    assert_eq!(versions, 1, "no new order");
}

#[test]
fn nginx_t_rejection_is_rolled_back_byte_for_byte() {
    // A plain default server on the HTTPS port with no name to enroll: adding `listen ... ssl`
    // to the other block makes that socket TLS, and nginx -t fails ("no ssl_certificate is
    // defined for the listen ... ssl directive"). Found by the rehearsal: no order either.
    let bed = Bed::start(
        "server { listen 127.0.0.1:{https} default_server; server_name _; return 204; }\n\
         server {\n  listen 127.0.0.1:{port};\n  server_name roll.enroll.test;\n  \
         location /.well-known/acme-challenge/ { alias {dir}/acme/; }\n  location / { return 200 \"plain\"; }\n}\n",
    );
    let original = fs::read(&bed.nginx.conf).unwrap();
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 1);
    let report = json(&out);
    let cert = report["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "roll.enroll.test")
        .unwrap();
    assert_eq!(cert["status"], "failed");
    assert!(
        cert["error"].as_str().unwrap().contains("nginx -t"),
        "{cert}"
    );
    assert_eq!(
        fs::read(&bed.nginx.conf).unwrap(),
        original,
        "not restored byte for byte"
    );
    // nginx still serves as before.
    assert_eq!(
        bed.nginx.get("roll.enroll.test", "/"),
        (200, "plain".into())
    );
    // No live certificate is left pointing at the refused version.
    assert!(!bed.lineage("roll.enroll.test").join("live").exists());
    assert_eq!(bed.pebble.log().matches("POST /order-plz").count(), 0);
}

#[test]
fn preflight_failure_fails_that_name_only() {
    // bad.enroll.test answers the challenge with 404 from an `if` that no static analysis
    // follows: only the loopback preflight can notice. perm.enroll.test serves from a directory
    // nginx's workers cannot enter (checked when the workers are www-data).
    let bed = Bed::start(
        "server {\n  listen 127.0.0.1:{port};\n  server_name good.enroll.test;\n  \
         location /.well-known/acme-challenge/ { alias {dir}/acme/; }\n}\n\
         server {\n  listen 127.0.0.1:{port};\n  server_name bad.enroll.test;\n  \
         if ($host = bad.enroll.test) { return 404; }\n  \
         location /.well-known/acme-challenge/ { alias {dir}/acme-bad/; }\n}\n\
         server {\n  listen 127.0.0.1:{port};\n  server_name perm.enroll.test;\n  \
         location /.well-known/acme-challenge/ { alias {dir}/closed/acme/; }\n}\n",
    );
    let closed = bed.nginx.dir.path().join("closed");
    fs::create_dir_all(closed.join("acme")).unwrap();
    let root = crate::util::worker_user().is_some();
    if root {
        fs::set_permissions(&closed, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    }
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 1);
    let report = json(&out);
    let find = |name: &str| {
        report["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(find("good.enroll.test")["status"], "issued");
    let bad = find("bad.enroll.test");
    assert_eq!(bad["status"], "failed");
    let err = bad["error"].as_str().unwrap();
    assert!(
        err.contains("answered 404")
            && err.contains("check the server block at")
            && err.contains("nginx.conf:"),
        "the error names the answer and the block: {err}"
    );
    assert!(
        dir_empty(&bed.nginx.dir.path().join("acme-bad")),
        "preflight token left behind"
    );
    if root {
        let perm = find("perm.enroll.test");
        let err = perm["error"].as_str().unwrap();
        assert!(
            err.contains(&format!("cannot enter {}", closed.display())),
            "{err}"
        );
    }
    let served = bed.served("good.enroll.test");
    assert_eq!(
        served,
        leaf(&bed.lineage("good.enroll.test").join("live/fullchain.pem"))
    );
}

#[test]
fn hooks_run_in_order_with_variables() {
    let bed = Bed::start(
        "server {\n  listen 127.0.0.1:{port};\n  server_name hook.enroll.test;\n  \
         location /.well-known/acme-challenge/ { alias {dir}/acme/; }\n}\n",
    );
    let log = bed.state.path().join("hooks.log");
    let hooks = bed.nginx.dir.path().join("hooks");
    fs::create_dir_all(hooks.join("deploy.d")).unwrap();
    let script = hooks.join("deploy.d/10-log");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"dir $RENEWED_LINEAGE $RENEWED_DOMAINS\" >> {}\n",
            log.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let leftover = hooks.join("deploy.d/10-log.dpkg-old");
    fs::write(
        &leftover,
        format!("#!/bin/sh\necho leftover >> {}\n", log.display()),
    )
    .unwrap();
    fs::set_permissions(
        &leftover,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let l = log.display();
    let out = bed.cmd("enroll", &[
        "--pre-hook",
        &format!("echo pre >> {l}"),
        "--post-hook",
        &format!("echo \"post [$RENEWED_DOMAINS] [$FAILED_DOMAINS]\" >> {l}"),
        "--deploy-hook",
        &format!("echo \"deploy $ACME_NGINX_NAME $ACME_NGINX_DOMAINS $(test -s $ACME_NGINX_FULLCHAIN && echo ok)\" >> {l}"),
    ]);
    assert_exit(&out, 0);
    let lineage = bed.lineage("hook.enroll.test").join("live");
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        format!(
            "pre\ndeploy hook.enroll.test hook.enroll.test ok\ndir {} hook.enroll.test\npost [hook.enroll.test] []\n",
            lineage.display()
        )
    );
}

#[test]
fn tokens_belong_to_the_worker_user() {
    // Tokens live only while the order runs: a thread watches the challenge directory and
    // records the owner and mode of every token it sees. nginx sends challenge answers at 200
    // bytes a second, so each token lives for more than a second (the preflight's fetch and
    // the CA's), however loaded the machine: the watcher cannot miss them.
    let bed = Bed::start(
        "server {\n  listen 127.0.0.1:{port};\n  server_name own.enroll.test;\n  \
         location /.well-known/acme-challenge/ { alias {dir}/acme/; limit_rate 200; }\n}\n",
    );
    let acme_dir = bed.nginx.dir.path().join("acme");
    fs::create_dir_all(&acme_dir).unwrap();
    // Watch the directory while enroll runs and record the owner and mode of every token.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let watcher = {
        let (stop, seen, dir) = (stop.clone(), seen.clone(), acme_dir.clone());
        std::thread::spawn(move || {
            use std::os::unix::fs::MetadataExt;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Tokens, not the temporary file each is written as (owned by us until its
                // owner is set on the descriptor, before it is renamed to the token's name).
                let tokens = fs::read_dir(&dir).into_iter().flatten().flatten();
                for e in tokens.filter(|e| !e.file_name().to_string_lossy().starts_with('.')) {
                    if let Ok(m) = e.metadata() {
                        seen.lock()
                            .unwrap()
                            .push((m.uid(), m.gid(), m.mode() & 0o777));
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    let out = bed.cmd("enroll", &[]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    assert_exit(&out, 0);
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty(), "no token observed");
    let (uid, gid) = match crate::util::worker_user() {
        Some(u) => {
            let user = nix::unistd::User::from_name(u).unwrap().unwrap();
            let group = nix::unistd::Group::from_name(u)
                .unwrap()
                .map_or(user.gid, |g| g.gid);
            (user.uid.as_raw(), group.as_raw())
        }
        None => (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        ),
    };
    for (u, g, mode) in seen.iter() {
        assert_eq!((*u, *g, *mode), (uid, gid, 0o644));
    }
    assert!(dir_empty(&acme_dir));
}

#[test]
fn killed_run_is_completed_by_the_next_one() {
    let bed = Bed::start(
        "server {\n  listen 127.0.0.1:{port};\n  server_name kill.enroll.test;\n  \
         location /.well-known/acme-challenge/ { alias {dir}/acme/; }\n}\n",
    );
    let acme_dir = bed.nginx.dir.path().join("acme");
    fs::create_dir_all(&acme_dir).unwrap();
    // Kill the run with SIGKILL as soon as a token appears, that is in the middle of the order.
    let mut child = bed
        .command("enroll", &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let mut killed_with_token = false;
    while start.elapsed() < std::time::Duration::from_secs(20) {
        if !dir_empty(&acme_dir) {
            child.kill().unwrap();
            killed_with_token = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let _ = child.wait();
    // Whether or not the kill landed mid-order, the next run must finish cleanly.
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 0);
    assert!(
        dir_empty(&acme_dir),
        "stray tokens after the second run (killed with a token: {killed_with_token})"
    );
    let live = bed.lineage("kill.enroll.test").join("live");
    // Key and certificate match (no mix): openssl compares the public keys.
    let pubkey = |args: &[&str], input: &Path| {
        crate::util::run_ok(Command::new("openssl").args(args).arg(input))
    };
    assert_eq!(
        pubkey(&["pkey", "-pubout", "-in"], &live.join("privkey.pem")),
        pubkey(
            &["x509", "-noout", "-pubkey", "-in"],
            &live.join("cert.pem")
        )
    );
    assert_eq!(
        bed.served("kill.enroll.test"),
        leaf(&live.join("fullchain.pem"))
    );
}

#[test]
fn concurrent_runs_wait_or_name_the_holder() {
    let bed = Bed::start(
        "server {\n  listen 127.0.0.1:{port};\n  server_name lock.enroll.test;\n  \
         location /.well-known/acme-challenge/ { alias {dir}/acme/; }\n}\n",
    );
    // Hold the state lock with a pre-hook that sleeps past the lock wait of the second run.
    let first = {
        bed.command("enroll", &["--pre-hook", "sleep 7"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    std::thread::sleep(std::time::Duration::from_millis(800));
    let second = bed.cmd("enroll", &[]);
    assert_eq!(second.status.code(), Some(2));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains(&format!("pid {}", first.id())), "{err}");
    let status = {
        let mut f = first;
        f.wait().unwrap()
    };
    assert!(status.success());
}

#[test]
fn names_select_blocks_and_unknown_names_exit_2() {
    let bed = Bed::start(TWO_BLOCKS);
    fs::create_dir_all(bed.nginx.dir.path().join("acme-a")).unwrap();
    let out = bed.cmd("enroll", &["nope.enroll.test"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.enroll.test"));
    let out = bed.cmd("enroll", &["www.b.enroll.test"]);
    assert_exit(&out, 0);
    assert_eq!(
        statuses(&json(&out)),
        vec![("b.enroll.test".into(), "issued".into())]
    );
}

#[test]
fn without_agree_tos_exit_2_with_the_terms_url() {
    let bed = Bed::start(
        "server {\n  listen 127.0.0.1:{port};\n  server_name tos.enroll.test;\n  \
         location /.well-known/acme-challenge/ { alias {dir}/acme/; }\n}\n",
    );
    let dir = bed.nginx.dir.path();
    let out = run(bed
        .pebble
        .cli()
        .arg("enroll")
        .arg("--non-interactive")
        .arg("--nginx-conf")
        .arg(&bed.nginx.conf)
        .arg("--nginx-prefix")
        .arg(dir)
        .arg("--state-dir")
        .arg(bed.state.path())
        .arg("--config-file")
        .arg(bed.config_file())
        .arg("--hooks-dir")
        .arg(dir.join("hooks")));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--agree-tos") && err.contains("terms of service"),
        "{err}"
    );
}

#[test]
fn redirect_spares_the_challenge_and_dry_run_changes_nothing() {
    let bed = Bed::start(
        "server {\n  listen 127.0.0.1:{port};\n  server_name redir.enroll.test;\n  \
         location /.well-known/acme-challenge/ { alias {dir}/acme/; }\n  location / { return 200 \"page\"; }\n}\n",
    );
    let original = fs::read(&bed.nginx.conf).unwrap();

    // --dry-run: pebble has no staging directory, so no order is placed (an order would be
    // real), and nothing on disk changes.
    let dry_state = bed.state.path().join("dry");
    let out = run(bed
        .pebble
        .cli()
        .args([
            "--json",
            "enroll",
            "--non-interactive",
            "--agree-tos",
            "--dry-run",
            "--nginx-conf",
        ])
        .arg(&bed.nginx.conf)
        .arg("--nginx-prefix")
        .arg(bed.nginx.dir.path())
        .arg("--state-dir")
        .arg(&dry_state)
        .arg("--config-file")
        .arg(bed.config_file()));
    assert_exit(&out, 0);
    assert_eq!(
        statuses(&json(&out)),
        vec![("redir.enroll.test".into(), "dry-run".into())]
    );
    assert!(json(&out)["certificates"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("no order placed"));
    assert!(!bed.pebble.log().contains("redir.enroll.test"), "no order");
    assert!(!dry_state.exists(), "dry run created the state directory");
    assert_eq!(fs::read(&bed.nginx.conf).unwrap(), original);

    let out = bed.cmd("enroll", &["--redirect"]);
    assert_exit(&out, 0);
    let (status, _) = bed.nginx.get("redir.enroll.test", "/page");
    assert_eq!(
        status,
        301,
        "plain HTTP is redirected: {}",
        fs::read_to_string(&bed.nginx.conf).unwrap()
    );
    let (status, _) = bed
        .nginx
        .get("redir.enroll.test", "/.well-known/acme-challenge/missing");
    assert_eq!(status, 404, "the challenge is not redirected");
    // A renewal still validates through the redirected block: force a new order by removing
    // the lineage's names (a different set of names means a new certificate).
    let out = bed.cmd("enroll", &["--redirect"]);
    assert_eq!(
        statuses(&json(&out)),
        vec![("redir.enroll.test".into(), "up-to-date".into())]
    );
}

#[test]
fn config_file_settings_apply_and_flags_win() {
    let bed = Bed::start(
        "server {\n  listen 127.0.0.1:{port};\n  server_name conf.enroll.test;\n  \
         location /.well-known/acme-challenge/ { alias {dir}/acme/; }\n}\n",
    );
    let config = bed.state.path().join("config.toml");
    fs::write(&config, format!("agree_tos = true\nemail = \"ops@example.org\"\nkey_type = \"p384\"\nhttps_port = 1\nstate_dir = \"{}\"\n", bed.state.path().display())).unwrap();
    // No --agree-tos and no --state-dir on the command line: both come from the file; the
    // file's https_port (1) is overridden by the flag.
    let dir = bed.nginx.dir.path();
    let out = run(bed
        .pebble
        .cli()
        .args(["--json", "enroll", "--non-interactive", "--nginx-conf"])
        .arg(&bed.nginx.conf)
        .arg("--nginx-prefix")
        .arg(dir)
        .arg("--config-file")
        .arg(&config)
        .arg("--hooks-dir")
        .arg(dir.join("hooks"))
        .args(["--https-port", &bed.https_port.to_string()]));
    assert_exit(&out, 0);
    let key = fs::read_to_string(bed.lineage("conf.enroll.test").join("live/privkey.pem")).unwrap();
    assert_eq!(
        acme_nginx::acme::KeyPair::from_pem(&key)
            .unwrap()
            .key_type(),
        acme_nginx::acme::KeyType::P384
    );
    // A broken config file is an error naming it.
    fs::write(&config, "agree_tos = maybe\n").unwrap();
    let out = run(bed
        .pebble
        .cli()
        .args(["enroll", "--non-interactive", "--config-file"])
        .arg(&config));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.toml"));
}

#[test]
fn ipv6_listeners_get_https_too() {
    // The block listens on IPv4 and IPv6 loopback; enroll adds `listen ... ssl` for both and
    // verifies the handshake on both.
    let bed = Bed::start(
        "server {\n  listen 127.0.0.1:{port};\n  listen [::1]:{port};\n  server_name six.enroll.test;\n  \
         location /.well-known/acme-challenge/ { alias {dir}/acme/; }\n}\n",
    );
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 0);
    let conf = fs::read_to_string(&bed.nginx.conf).unwrap();
    assert!(
        conf.contains(&format!("listen [::1]:{} ssl; {MARK}", bed.https_port)),
        "{conf}"
    );
    assert!(
        conf.contains(&format!("listen 127.0.0.1:{} ssl; {MARK}", bed.https_port)),
        "{conf}"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let v6 = rt
        .block_on(acme_nginx::nginx::probe::served_certificate(
            format!("[::1]:{}", bed.https_port)
                .parse::<std::net::SocketAddr>()
                .unwrap(),
            "six.enroll.test",
        ))
        .unwrap();
    assert_eq!(v6, leaf(&bed.live("six.enroll.test").join("fullchain.pem")));
}

#[test]
fn no_install_stores_the_certificate_and_leaves_nginx_alone() {
    let bed = Bed::start(
        "server {\n  listen 127.0.0.1:{port};\n  server_name store.enroll.test;\n  \
         location /.well-known/acme-challenge/ { alias {dir}/acme/; }\n}\n",
    );
    let original = fs::read(&bed.nginx.conf).unwrap();
    let out = bed.cmd("enroll", &["--no-install"]);
    assert_exit(&out, 0);
    assert_eq!(
        statuses(&json(&out)),
        vec![("store.enroll.test".into(), "issued".into())]
    );
    assert_eq!(fs::read(&bed.nginx.conf).unwrap(), original);
    assert!(bed.live("store.enroll.test").join("privkey.pem").exists());
    // Later, without --no-install, the stored certificate is installed without a new order.
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 0);
    assert_eq!(
        statuses(&json(&out)),
        vec![("store.enroll.test".into(), "installed".into())]
    );
    assert_eq!(
        fs::read_dir(bed.lineage("store.enroll.test").join("versions"))
            .unwrap()
            .count(),
        1
    );
    assert_eq!(
        bed.served("store.enroll.test"),
        leaf(&bed.live("store.enroll.test").join("fullchain.pem"))
    );
}

#[test]
fn an_ip_address_gets_a_short_lived_certificate_of_its_own() {
    let bed = Bed::start(
        "server {\n    listen 127.0.0.1:{port};\n    server_name 127.0.0.1;\n    \
         location /.well-known/acme-challenge/ { alias {dir}/acme-ip/; }\n}\n\
         server {\n    listen 127.0.0.1:{port};\n    server_name mixed.enroll.test 127.0.0.2;\n    \
         location /.well-known/acme-challenge/ { alias {dir}/acme-ip/; }\n}\n",
    );
    fs::create_dir_all(bed.nginx.dir.path().join("acme-ip")).unwrap();
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 0);
    let report = json(&out);
    assert_eq!(
        crate::util::by_name(&report, "127.0.0.1")["status"],
        "issued",
        "{report}"
    );
    assert_eq!(
        crate::util::by_name(&report, "mixed.enroll.test")["status"],
        "issued"
    );
    let mixed_ip = crate::util::by_name(&report, "127.0.0.2");
    assert_eq!(mixed_ip["status"], "skipped");
    assert!(mixed_ip["reason"].as_str().unwrap().contains("DNS names"));
    // Its own lineage, the IP alone, short-lived (pebble's "shortlived" profile is six days).
    let info =
        CertInfo::from_pem(&fs::read(bed.lineage("127.0.0.1").join("live/fullchain.pem")).unwrap())
            .unwrap();
    assert_eq!(info.names, vec!["127.0.0.1".to_string()]);
    assert!(
        info.lifetime() <= time::Duration::days(7),
        "{:?}",
        info.lifetime()
    );
    let mixed = CertInfo::from_pem(
        &fs::read(bed.lineage("mixed.enroll.test").join("live/fullchain.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(mixed.names, vec!["mixed.enroll.test".to_string()]);
}

#[test]
fn a_block_serving_ecdsa_and_rsa_keeps_both_with_an_rsa_certificate_of_its_own() {
    let pre = tempfile::tempdir().unwrap();
    let (_, ec_cert, ec_key) = crate::util::make_tls_cert(pre.path(), &["localhost"]);
    let (rsa_cert, rsa_key) = (pre.path().join("rsa.pem"), pre.path().join("rsa.key"));
    crate::util::run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(&rsa_key)
            .arg("-out")
            .arg(&rsa_cert),
    );
    let bed = Bed::start(&format!(
        "server {{\n    listen 127.0.0.1:{{port}};\n    listen 127.0.0.1:{{https}} ssl;\n    \
         server_name hyb.enroll.test;\n    \
         ssl_certificate {};\n    ssl_certificate_key {};\n    \
         ssl_certificate {};\n    ssl_certificate_key {};\n    \
         location /.well-known/acme-challenge/ {{ alias {{dir}}/acme-h/; }}\n}}\n",
        ec_cert.display(),
        ec_key.display(),
        rsa_cert.display(),
        rsa_key.display()
    ));
    fs::create_dir_all(bed.nginx.dir.path().join("acme-h")).unwrap();
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 0);
    assert_eq!(
        statuses(&json(&out)),
        vec![
            ("hyb.enroll.test".into(), "issued".into()),
            ("hyb.enroll.test_rsa".into(), "issued".into())
        ]
    );
    // Clients offering ECDSA get the ECDSA certificate; RSA-only clients the RSA one.
    assert_eq!(
        bed.served("hyb.enroll.test"),
        leaf(&bed.live("hyb.enroll.test").join("fullchain.pem"))
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", bed.https_port).parse().unwrap();
    let rsa_served = rt
        .block_on(acme_nginx::nginx::probe::served_rsa_certificate(
            addr,
            "hyb.enroll.test",
        ))
        .unwrap();
    assert_eq!(
        rsa_served,
        leaf(&bed.live("hyb.enroll.test_rsa").join("fullchain.pem"))
    );
    let key = fs::read_to_string(bed.live("hyb.enroll.test_rsa").join("privkey.pem")).unwrap();
    assert_eq!(
        acme_nginx::acme::KeyPair::from_pem(&key)
            .unwrap()
            .key_type(),
        acme_nginx::acme::KeyType::Rsa2048
    );
    // Both pairs are ours now, and a second run has nothing to do.
    let conf = fs::read_to_string(&bed.nginx.conf).unwrap();
    assert_eq!(conf.matches("ssl_certificate ").count(), 2, "{conf}");
    assert!(!conf.contains(&rsa_cert.display().to_string()), "{conf}");
    let out = bed.cmd("enroll", &[]);
    assert_eq!(
        statuses(&json(&out)),
        vec![
            ("hyb.enroll.test".into(), "up-to-date".into()),
            ("hyb.enroll.test_rsa".into(), "up-to-date".into())
        ]
    );
}

/// A name nginx serves only over HTTPS (a 443-only site, as PeerTube ships) is skipped saying
/// why, in the JSON and in the table a person reads; named on the command line and skipped,
/// the run exits 1 with a summary line. Nothing is ordered for it.
#[test]
fn a_skipped_name_says_why_and_a_named_one_fails_the_run() {
    let pre = tempfile::tempdir().unwrap();
    let (_, cert, key) = crate::util::make_tls_cert(pre.path(), &["only443.enroll.test"]);
    let bed = Bed::start(&format!(
        "server {{\n    listen 127.0.0.1:{{https}} ssl;\n    server_name only443.enroll.test;\n    \
         ssl_certificate {};\n    ssl_certificate_key {};\n    location / {{ return 200; }}\n}}\n\
         server {{\n    listen 127.0.0.1:{{port}};\n    server_name plain.enroll.test;\n}}\n",
        cert.display(),
        key.display()
    ));
    // The CA validates on a port nginx does not listen on (this host answers only HTTPS).
    let port = crate::util::free_port().to_string();
    let out = bed.cmd("enroll", &["only443.enroll.test", "--http-port", &port]);
    assert_exit(&out, 1);
    let report = json(&out);
    let only = crate::util::by_name(&report, "only443.enroll.test");
    assert_eq!(only["status"], "skipped", "{report}");
    let reason = only["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("no plain-HTTP port"), "{report}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("none of the names given (only443.enroll.test) was done: 1 skipped"),
        "{stderr}"
    );
    assert_eq!(bed.pebble.log().matches("POST /order-plz").count(), 0);

    // The table a person reads carries the same reason; not named, a skipped name does not
    // fail the run.
    let out = bed.cmd_text("enroll", &["--http-port", &port]);
    assert_exit(&out, 0);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("only443.enroll.test"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("skipped") && line.contains("no plain-HTTP port"),
        "{text}"
    );
}

/// A site file with two hard links (installed with `ln`, as Home Assistant's docs do): an edit
/// would replace one name's file and leave the other with the old text, so the name is
/// skipped before anything is ordered, saying which file and what to do; both names keep
/// their text.
#[test]
fn a_hard_linked_site_file_is_refused_before_ordering() {
    let port = crate::util::free_port();
    let sites = tempfile::tempdir().unwrap();
    for d in ["sites-available", "sites-enabled"] {
        fs::create_dir(sites.path().join(d)).unwrap();
    }
    let available = sites.path().join("sites-available/hass");
    let text = format!(
        "server {{\n    listen 127.0.0.1:{port};\n    server_name hass.enroll.test;\n    \
         location / {{ return 200; }}\n}}\n"
    );
    fs::write(&available, &text).unwrap();
    let enabled = sites.path().join("sites-enabled/hass");
    fs::hard_link(&available, &enabled).unwrap();
    let bed = Bed::start_on(
        port,
        &format!("include {}/sites-enabled/*;\n", sites.path().display()),
    );
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 0);
    let report = json(&out);
    let hass = crate::util::by_name(&report, "hass.enroll.test");
    assert_eq!(hass["status"], "skipped", "{report}");
    let reason = hass["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("has 2 hard links") && reason.contains("ln -sf"),
        "{reason}"
    );
    assert_eq!(bed.pebble.log().matches("POST /order-plz").count(), 0);
    assert_eq!(fs::read_to_string(&available).unwrap(), text);
    assert_eq!(fs::read_to_string(&enabled).unwrap(), text);

    // Done as the message says: the enabled name becomes a symbolic link, and enroll edits the
    // one file both names show.
    fs::remove_file(&enabled).unwrap();
    std::os::unix::fs::symlink(&available, &enabled).unwrap();
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 0);
    assert_eq!(
        crate::util::by_name(&json(&out), "hass.enroll.test")["status"],
        "issued"
    );
    assert!(fs::read_to_string(&enabled)
        .unwrap()
        .contains("ssl_certificate "));
    assert!(fs::symlink_metadata(&enabled)
        .unwrap()
        .file_type()
        .is_symlink());
}

/// A block serving an RSA certificate gets an RSA certificate at its first enroll (clients
/// that speak only RSA keep working: an RSA-only TLS 1.2 handshake succeeds before and
/// after); `--key-type` still decides when given.
#[test]
fn the_first_enroll_keeps_the_key_type_the_block_serves() {
    let pre = tempfile::tempdir().unwrap();
    let (cert, key) = (pre.path().join("rsa.pem"), pre.path().join("rsa.key"));
    crate::util::run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    let block = |name: &str| {
        format!(
            "server {{\n    listen 127.0.0.1:{{port}};\n    listen 127.0.0.1:{{https}} ssl;\n    \
             server_name {name};\n    ssl_certificate {};\n    ssl_certificate_key {};\n    \
             location / {{ return 200; }}\n}}\n",
            cert.display(),
            key.display()
        )
    };
    let bed = Bed::start(&(block("rsa.enroll.test") + &block("ec.enroll.test")));
    // An RSA-only client (TLS 1.2, ECDHE-RSA only) is served.
    let rsa_only = |name: &str| {
        Command::new("openssl")
            .args([
                "s_client",
                "-tls1_2",
                "-cipher",
                "ECDHE-RSA-AES128-GCM-SHA256",
            ])
            .args(["-servername", name, "-connect"])
            .arg(format!("127.0.0.1:{}", bed.https_port))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(rsa_only("rsa.enroll.test"));
    let out = bed.cmd("enroll", &["rsa.enroll.test"]);
    assert_exit(&out, 0);
    let out = bed.cmd("enroll", &["ec.enroll.test", "--key-type", "p256"]);
    assert_exit(&out, 0);
    let served = |name: &str| acme_nginx::acme::public_key_type(&bed.served(name));
    assert_eq!(
        served("rsa.enroll.test"),
        Some(acme_nginx::acme::KeyType::Rsa2048)
    );
    assert!(rsa_only("rsa.enroll.test"), "RSA-only clients lost");
    assert_eq!(
        served("ec.enroll.test"),
        Some(acme_nginx::acme::KeyType::P256)
    );
    assert!(
        !rsa_only("ec.enroll.test"),
        "the handshake check accepts anything"
    );
}

/// An edit nginx would refuse is found before ordering: nginx -t on the configuration as it
/// would be (rehearsed in a private mount namespace, the live files untouched) refuses it,
/// the name fails quoting nginx, and no order is placed. Here the block names a DH parameter
/// file that is gone (certbot's, purged): harmless while the block has no certificate, fatal
/// once it has one.
#[test]
fn an_edit_nginx_would_refuse_fails_before_any_order() {
    let bed = Bed::start(
        "server {\n    listen 127.0.0.1:{port};\n    server_name refuse.enroll.test;\n    \
         ssl_dhparam {dir}/gone-ssl-dhparams.pem;\n    location / { return 200; }\n}\n",
    );
    let before = fs::read_to_string(&bed.nginx.conf).unwrap();
    let out = bed.cmd("enroll", &["refuse.enroll.test"]);
    assert_exit(&out, 1);
    let report = json(&out);
    let r = crate::util::by_name(&report, "refuse.enroll.test");
    assert_eq!(r["status"], "failed", "{report}");
    let message = r["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("tested before ordering") && message.contains("gone-ssl-dhparams.pem"),
        "{message}"
    );
    assert_eq!(bed.pebble.log().matches("POST /order-plz").count(), 0);
    assert_eq!(fs::read_to_string(&bed.nginx.conf).unwrap(), before);
    // The rehearsal's mounts were private to it: the live file is what nginx itself reads.
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains("rehearsal-"), "{mounts}");
}

/// nginxconfig.io's documented state before certbot runs: the HTTPS listener is there, plain
/// (`listen PORT; # ssl http2;`), with `ssl off;`. enroll makes that listener `ssl` instead
/// of adding a duplicate one (which nginx refuses), serves the certificate on it, and
/// `remove` gives the file back byte for byte.
#[test]
fn a_plain_listener_on_the_https_port_is_made_ssl_and_given_back_by_remove() {
    let bed = Bed::start(
        "server {\n    listen 127.0.0.1:{port};\n    listen 127.0.0.1:{https}; # ssl http2;\n    \
         ssl off;\n    server_name cfgio.enroll.test;\n    location / { return 200; }\n}\n",
    );
    let original = fs::read_to_string(&bed.nginx.conf).unwrap();
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 0);
    assert_eq!(
        crate::util::by_name(&json(&out), "cfgio.enroll.test")["status"],
        "issued"
    );
    let conf = fs::read_to_string(&bed.nginx.conf).unwrap();
    assert_eq!(
        conf.matches(&format!("listen 127.0.0.1:{}", bed.https_port))
            .count(),
        1,
        "{conf}"
    );
    assert_eq!(
        leaf(&bed.live("cfgio.enroll.test").join("fullchain.pem")),
        bed.served("cfgio.enroll.test")
    );
    let out = bed.cmd("remove", &["cfgio.enroll.test"]);
    assert_exit(&out, 0);
    assert_eq!(fs::read_to_string(&bed.nginx.conf).unwrap(), original);
}

/// A block whose certificate a variable picks per request (a `map` of tenants) is left alone,
/// saying why, with no order: one fixed certificate would serve a tenant added later the wrong
/// one. Named with `--take-over`, it is replaced on purpose.
#[test]
fn a_variable_certificate_is_left_alone_unless_taken_over() {
    let pre = tempfile::tempdir().unwrap();
    let (_, cert, key) = crate::util::make_tls_cert(pre.path(), &["var.enroll.test"]);
    let bed = Bed::start(&format!(
        "map $ssl_server_name $tenant_cert {{ default {}; }}\n\
         map $ssl_server_name $tenant_key {{ default {}; }}\n\
         server {{\n    listen 127.0.0.1:{{port}};\n    listen 127.0.0.1:{{https}} ssl;\n    \
         server_name var.enroll.test;\n    ssl_certificate $tenant_cert;\n    \
         ssl_certificate_key $tenant_key;\n    location / {{ return 200; }}\n}}\n",
        cert.display(),
        key.display()
    ));
    let before = fs::read_to_string(&bed.nginx.conf).unwrap();
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 0);
    let report = json(&out);
    let v = crate::util::by_name(&report, "var.enroll.test");
    assert_eq!(v["status"], "skipped", "{report}");
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("$tenant_cert") && reason.contains("--take-over"),
        "{reason}"
    );
    assert_eq!(fs::read_to_string(&bed.nginx.conf).unwrap(), before);
    assert_eq!(bed.pebble.log().matches("POST /order-plz").count(), 0);

    let out = bed.cmd("enroll", &["var.enroll.test", "--take-over"]);
    assert_exit(&out, 0);
    assert_eq!(
        crate::util::by_name(&json(&out), "var.enroll.test")["status"],
        "issued"
    );
    assert_eq!(
        leaf(&bed.live("var.enroll.test").join("fullchain.pem")),
        bed.served("var.enroll.test")
    );
}

/// One reload per run when the block already serves the challenge: the install's.
#[test]
fn a_block_that_serves_the_challenge_is_enrolled_with_one_reload() {
    let bed = Bed::start(
        "server {\n    listen 127.0.0.1:{port};\n    server_name once.enroll.test;\n    \
         location /.well-known/acme-challenge/ { alias {dir}/acme/; }\n}\n",
    );
    fs::create_dir_all(bed.nginx.dir.path().join("acme")).unwrap();
    let log = bed.nginx.dir.path().join("error.log");
    let hups = || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("signal 1 (SIGHUP) received")
            .count()
    };
    let before = hups();
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 0);
    assert_eq!(hups() - before, 1, "reloads in one enroll");
}

/// A port-80 listener behind a load balancer that speaks the PROXY protocol
/// (`listen ... proxy_protocol`; haproxy with `send-proxy` in front, on the port the CA
/// validates on): the preflight through nginx sends a PROXY header too, so the name is proven
/// and issued as the CA sees it through the balancer, and the TLS proof works the same way.
#[test]
fn a_proxy_protocol_listener_is_probed_as_the_balancer_reaches_it() {
    let (port, front) = (crate::util::free_port(), crate::util::free_port());
    let bed = Bed::start_with(
        port,
        "server {\n    listen 127.0.0.1:{port} proxy_protocol;\n    server_name pp.enroll.test;\n    \
         location / { return 200 \"behind\\n\"; }\n}\n",
        |mut o| {
            o.http_port = front;
            o
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    fs::write(
        &cfg,
        format!(
            "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
             frontend fe\n  bind 127.0.0.1:{front}\n  default_backend nginx\n\
             backend nginx\n  server n 127.0.0.1:{port} send-proxy\n"
        ),
    )
    .unwrap();
    let _balancer = crate::util::start_haproxy(&cfg, front);
    // nginx's own port is where acme-nginx finds the block (the balancer has the public one).
    let out = bed.cmd("enroll", &["--http-port", &port.to_string()]);
    assert_exit(&out, 0);
    assert_eq!(
        crate::util::by_name(&json(&out), "pp.enroll.test")["status"],
        "issued",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A name nginx answers only over HTTPS, with `--http-route`: acme-nginx adds a marked port-80
/// block after it (challenges answered, the rest redirected to HTTPS), tested and reloaded
/// before the order; the name is issued, plain HTTP redirects, a second run changes nothing.
#[test]
fn http_route_gives_a_443_only_site_its_port_80_block() {
    let pre = tempfile::tempdir().unwrap();
    let (_, cert, key) = crate::util::make_tls_cert(pre.path(), &["route.enroll.test"]);
    // The CA validates on a port nginx does not listen on yet.
    let validation = crate::util::free_port();
    let bed = Bed::start_with(
        crate::util::free_port(),
        &format!(
            "server {{\n    listen 127.0.0.1:{{port}};\n    server_name other.enroll.test;\n}}\n\
             server {{\n    listen 127.0.0.1:{{https}} ssl;\n    server_name route.enroll.test;\n    \
             ssl_certificate {};\n    ssl_certificate_key {};\n    location / {{ return 200 \"tls\\n\"; }}\n}}\n",
            cert.display(),
            key.display()
        ),
        |mut o| {
            o.http_port = validation;
            o
        },
    );
    let out = bed.cmd("enroll", &["route.enroll.test"]);
    assert_exit(&out, 1);
    let reason = crate::util::by_name(&json(&out), "route.enroll.test")["reason"].to_string();
    assert!(reason.contains("--http-route"), "{reason}");

    // At a terminal, enroll offers the route: declined, nothing is added.
    let original = fs::read_to_string(&bed.nginx.conf).unwrap();
    let out = bed.interactive("enroll", &["route.enroll.test"], "y\nn\n");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(
        screen.contains("nginx answers route.enroll.test only over HTTPS")
            && screen.contains("as --http-route does? [y/N]"),
        "{screen}"
    );
    assert_exit(&out, 1);
    assert_eq!(fs::read_to_string(&bed.nginx.conf).unwrap(), original);
    // Accepted: the block is added, the name issued.
    let out = bed.interactive("enroll", &["route.enroll.test"], "y\ny\n");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert_exit(&out, 0);
    assert!(
        screen.contains("route.enroll.test") && screen.contains("issued"),
        "{screen}"
    );
    let conf = fs::read_to_string(&bed.nginx.conf).unwrap();
    assert!(
        conf.contains(&format!("listen 127.0.0.1:{validation}; {MARK}")),
        "{conf}"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answer = rt
        .block_on(acme_nginx::nginx::probe::http_get(
            std::net::SocketAddr::from(([127, 0, 0, 1], validation)),
            "route.enroll.test",
            "/",
        ))
        .unwrap();
    assert_eq!(answer.status, 301);
    assert_eq!(
        leaf(&bed.live("route.enroll.test").join("fullchain.pem")),
        bed.served("route.enroll.test")
    );
    let before = fs::read_to_string(&bed.nginx.conf).unwrap();
    let out = bed.cmd("enroll", &["route.enroll.test", "--http-route"]);
    assert_exit(&out, 0);
    assert_eq!(
        crate::util::by_name(&json(&out), "route.enroll.test")["status"],
        "up-to-date"
    );
    assert_eq!(fs::read_to_string(&bed.nginx.conf).unwrap(), before);
}

/// The certificate comes from one file of a glob include that also holds locations (a shared
/// TLS-plus-locations snippet): in this block only, the include is split into one include per
/// file, the certificate's file written in place without its certificate lines (its locations
/// kept), all marked; the other files stay included, nothing else changes, and `remove` gives
/// the file back byte for byte.
#[test]
fn a_glob_include_carrying_the_certificate_is_split_in_this_block_only() {
    let shared = tempfile::tempdir().unwrap();
    let (_, cert, key) = crate::util::make_tls_cert(shared.path(), &["glob.enroll.test"]);
    let snippets = shared.path().join("snippets");
    fs::create_dir(&snippets).unwrap();
    fs::write(
        snippets.join("a-tls.conf"),
        format!(
            "ssl_certificate {};\nssl_certificate_key {};\nlocation /a {{\n    return 200 \"a\\n\";\n}}\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    fs::write(
        snippets.join("b.conf"),
        "location /b { return 200 \"b\\n\"; }\n",
    )
    .unwrap();
    let bed = Bed::start(&format!(
        "server {{\n    listen 127.0.0.1:{{port}};\n    listen 127.0.0.1:{{https}} ssl;\n    \
         server_name glob.enroll.test;\n    include {}/*.conf;\n}}\n",
        snippets.display()
    ));
    let original = fs::read_to_string(&bed.nginx.conf).unwrap();
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 0);
    assert_eq!(
        crate::util::by_name(&json(&out), "glob.enroll.test")["status"],
        "issued",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conf = fs::read_to_string(&bed.nginx.conf).unwrap();
    assert!(
        conf.contains(&format!("include {}/b.conf; {MARK}", snippets.display())),
        "{conf}"
    );
    assert!(conf.contains(&format!("location /a {{ {MARK}")), "{conf}");
    assert_eq!(bed.nginx.get("glob.enroll.test", "/a"), (200, "a\n".into()));
    assert_eq!(bed.nginx.get("glob.enroll.test", "/b"), (200, "b\n".into()));
    assert_eq!(
        leaf(&bed.live("glob.enroll.test").join("fullchain.pem")),
        bed.served("glob.enroll.test")
    );
    // The shared files are untouched.
    assert!(fs::read_to_string(snippets.join("a-tls.conf"))
        .unwrap()
        .contains("ssl_certificate "));
    let out = bed.cmd("remove", &["glob.enroll.test"]);
    assert_exit(&out, 0);
    assert_eq!(fs::read_to_string(&bed.nginx.conf).unwrap(), original);
}

/// A block that already answers http-01 statelessly for the host's account (acme.sh's
/// documented `return 200 "$1.THUMBPRINT"` location) is enrolled without a token file being
/// written, and nothing is added to it but the certificate.
#[test]
fn a_block_answering_statelessly_for_the_account_gets_no_token_file() {
    let bed = Bed::start(
        "server {\n  listen 127.0.0.1:{port};\n  server_name stateless.enroll.test;\n  \
         location / { return 200 \"site\\n\"; }\n}\n",
    );
    // The account first: its thumbprint goes into the block.
    let store = acme_nginx::store::Store {
        root: bed.state.path().to_path_buf(),
    };
    let account = store.account_path(&bed.pebble.directory);
    fs::create_dir_all(account.parent().unwrap()).unwrap();
    let out = crate::util::run(
        bed.pebble
            .cli()
            .args(["account", "register", "--agree-tos", "--state"])
            .arg(&account),
    );
    assert_exit(&out, 0);
    let state: acme_nginx::acme::AccountState =
        serde_json::from_slice(&fs::read(&account).unwrap()).unwrap();
    let thumbprint = acme_nginx::acme::thumbprint(
        &acme_nginx::acme::KeyPair::from_pem(&state.private_key_pem).unwrap(),
    );
    let conf = fs::read_to_string(&bed.nginx.conf).unwrap();
    let stateless = format!(
        "  location ~ ^/\\.well-known/acme-challenge/([-_a-zA-Z0-9]+)$ {{\n    \
         default_type text/plain;\n    return 200 \"$1.{thumbprint}\";\n  }}\n"
    );
    fs::write(
        &bed.nginx.conf,
        conf.replacen("  location / {", &format!("{stateless}  location / {{"), 1),
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(bed.nginx.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let scan = json(&bed.cmd("scan", &[]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let probe = "/.well-known/acme-challenge/probe-token";
    while bed.nginx.get("stateless.enroll.test", probe)
        != (200, format!("probe-token.{thumbprint}"))
    {
        assert!(std::time::Instant::now() < deadline, "nginx did not reload");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        scan["servers"][0]["acme_challenge_stateless"], thumbprint,
        "{scan}"
    );
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 0);
    assert_eq!(
        crate::util::by_name(&json(&out), "stateless.enroll.test")["status"],
        "issued"
    );
    // No challenge directory was made, no token file written; the stateless location stays.
    let files: Vec<_> = crate::util::token_files(bed.nginx.dir.path())
        .into_iter()
        .chain(crate::util::token_files(bed.state.path()))
        .collect();
    assert!(files.is_empty(), "{files:?}");
    assert!(!bed.state.path().join("challenge").exists());
    assert!(fs::read_to_string(&bed.nginx.conf)
        .unwrap()
        .contains(&stateless));
}
