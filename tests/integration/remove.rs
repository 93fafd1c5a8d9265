//! `remove`: certificates taken out of nginx again, the blocks as they were before enrollment,
//! against a real nginx and pebble.

use std::fs;

use crate::util::{assert_exit, by_name, json, make_tls_cert, Bed};

fn statuses(out: &std::process::Output) -> Vec<(String, String)> {
    json(out)["certificates"]
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

#[test]
fn remove_puts_blocks_back_as_they_were_and_orphans_go_too() {
    let port = crate::util::free_port();
    let https = crate::util::free_port();
    let dir = tempfile::tempdir().unwrap();
    let (_, old_cert, old_key) = make_tls_cert(dir.path(), &["b.rm.test"]);
    let blocks = format!(
        "server {{\n    listen 127.0.0.1:{{port}};\n    server_name a.rm.test;\n    location / {{ return 200 \"a\\n\"; }}\n}}\n\
         server {{\n    listen 127.0.0.1:{{port}};\n    listen 127.0.0.1:{https} ssl;\n    server_name b.rm.test;\n    \
         ssl_certificate {c}; # the old one\n    ssl_certificate_key {k};\n    location / {{ return 200 \"b\\n\"; }}\n}}\n\
         server {{\n    listen 127.0.0.1:{{port}};\n    server_name c.rm.test;\n    location / {{ return 200 \"c\\n\"; }}\n}}\n",
        c = old_cert.display(),
        k = old_key.display()
    );
    let mut bed = Bed::start_on(port, &blocks);
    bed.https_port = https;
    let original = fs::read_to_string(&bed.nginx.conf).unwrap();
    let old_leaf = crate::util::leaf(&old_cert);
    assert_eq!(bed.served("b.rm.test"), old_leaf);

    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 0);
    assert!(
        statuses(&out).iter().all(|(_, s)| s == "issued"),
        "{:?}",
        statuses(&out)
    );
    assert_ne!(bed.served("b.rm.test"), old_leaf);
    assert_ne!(fs::read_to_string(&bed.nginx.conf).unwrap(), original);

    // Remove a and b: the file is byte for byte what it was, except c's block.
    let out = bed.cmd("remove", &["a.rm.test", "b.rm.test"]);
    assert_exit(&out, 0);
    assert_eq!(
        statuses(&out),
        vec![
            ("a.rm.test".into(), "removed".into()),
            ("b.rm.test".into(), "removed".into())
        ]
    );
    let now = fs::read_to_string(&bed.nginx.conf).unwrap();
    let block = |text: &str, i: usize| text.split("server {").nth(i).unwrap().to_owned();
    assert_eq!(block(&now, 1), block(&original, 1));
    assert_eq!(block(&now, 2), block(&original, 2));
    assert_ne!(block(&now, 3), block(&original, 3));
    // b serves its old certificate again; a answers plain HTTP; the lineages are gone.
    assert_eq!(bed.served("b.rm.test"), old_leaf);
    assert_eq!(bed.nginx.get("a.rm.test", "/").0, 200);
    assert!(!bed.lineage("a.rm.test").exists() && !bed.lineage("b.rm.test").exists());

    // c's block disappears from the configuration (by hand): its lineage is an orphan.
    let c_start = now.rfind("server {").unwrap();
    let http_end = now.trim_end().rfind('}').unwrap();
    let without_c = format!("{}{}", &now[..c_start], &now[http_end..]);
    fs::write(&bed.nginx.conf, &without_c).unwrap();
    // While nginx still serves it (not reloaded yet), remove keeps it.
    let c_leaf = crate::util::leaf(&bed.live("c.rm.test").join("fullchain.pem"));
    let out = bed.cmd("remove", &["--orphans"]);
    assert_exit(&out, 1);
    assert!(
        json(&out).to_string().contains("still serves it"),
        "{}",
        json(&out)
    );
    assert!(bed.lineage("c.rm.test").exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(bed.nginx.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while bed.served("c.rm.test") == c_leaf {
        assert!(std::time::Instant::now() < deadline, "nginx did not reload");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = bed.cmd("status", &[]);
    assert_exit(&status, 0);
    assert_eq!(by_name(&json(&status), "c.rm.test")["orphan"], true);
    // --revoke --keep-lineage: revoked at the CA, files kept.
    let out = bed.cmd("remove", &["--orphans", "--revoke", "--keep-lineage"]);
    assert_exit(&out, 0);
    assert_eq!(statuses(&out), vec![("c.rm.test".into(), "removed".into())]);
    assert!(bed.live("c.rm.test").join("fullchain.pem").exists());
    let account = fs::read_dir(bed.state.path().join("accounts"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("account.json"))
        .find(|p| p.is_file())
        .unwrap();
    let again = bed
        .pebble
        .cli()
        .args(["revoke", "--state"])
        .arg(&account)
        .arg("--cert")
        .arg(bed.live("c.rm.test").join("fullchain.pem"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("alreadyRevoked"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // Nothing left to remove; an unknown name is an error.
    let out = bed.cmd("remove", &["nope.rm.test"]);
    assert_exit(&out, 2);
}
