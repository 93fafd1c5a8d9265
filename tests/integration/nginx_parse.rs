//! The parser and `scan` on configuration trees: includes, globs, cycles, missing files,
//! `nginx -T` input, and byte-for-byte round trips of every file nginx's Debian package ships.

use std::path::{Path, PathBuf};

use crate::util::{acme_nginx_cmd, run, run_ok};
use acme_nginx::nginx::{Config, DiskSource};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/nginx")
        .join(name)
}

fn scan_json(args: &[&str]) -> Value {
    serde_json::from_str(&run_ok(
        acme_nginx_cmd().args(["--json", "scan"]).args(args),
    ))
    .unwrap()
}

#[test]
fn includes_globs_and_inheritance() {
    let conf = fixture("includes/nginx.conf");
    let scan = scan_json(&["--nginx-conf", conf.to_str().unwrap()]);
    assert_eq!(scan["user"], "www-data");
    assert_eq!(scan["pid_file"], "/run/test-nginx.pid");
    let servers = scan["servers"].as_array().unwrap();
    // sites/* expands in sorted order: a.example.org before b.example.org.
    assert_eq!(servers.len(), 2);
    assert_eq!(
        servers[0]["server_names"],
        serde_json::json!(["a.example.org", "www.a.example.org"])
    );
    assert_eq!(
        servers[0]["file"],
        fixture("includes/sites/a.example.org").to_str().unwrap()
    );
    assert_eq!(servers[0]["line"], 1);
    assert_eq!(
        servers[0]["acme_challenge_dir"],
        "/srv/a/.well-known/acme-challenge"
    );
    // ssl_certificate inherited from an included http-level file.
    assert_eq!(
        servers[0]["ssl_certificate"],
        fixture("includes/http.pem").to_str().unwrap()
    );
    // The challenge location comes from a snippet included inside the server block.
    assert_eq!(servers[1]["acme_challenge_dir"], "/var/lib/acme-challenge");
    assert_eq!(
        servers[1]["enrollable"],
        serde_json::json!(["b.example.org"])
    );
}

#[test]
fn include_cycle_is_reported_at_the_include() {
    let out = run(acme_nginx_cmd()
        .args(["scan", "--nginx-conf"])
        .arg(fixture("cycle/nginx.conf")));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let b = fixture("cycle/b.conf");
    assert!(
        err.contains(&format!("{}:3:3: include cycle", b.display())),
        "{err}"
    );
}

#[test]
fn missing_include_names_file_line_column() {
    let out = run(acme_nginx_cmd()
        .args(["scan", "--nginx-conf"])
        .arg(fixture("missing/nginx.conf")));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let main = fixture("missing/nginx.conf");
    assert!(
        err.contains(&format!(
            "{}:3:5: cannot open included file",
            main.display()
        )),
        "{err}"
    );
    assert!(err.contains("does-not-exist.conf"), "{err}");
}

#[test]
fn syntax_error_exit_2_with_location() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, "http {\n  server {\n    listen 80\n  }\n}\n").unwrap();
    let out = run(acme_nginx_cmd().args(["scan", "--nginx-conf"]).arg(&conf));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:4:3: unexpected \"}}\"", conf.display())),
        "{err}"
    );
}

#[test]
fn nginx_t_dump_gives_the_same_scan_as_the_disk() {
    let conf = fixture("includes/nginx.conf");
    let out = std::process::Command::new(crate::util::bin("nginx"))
        .arg("-T")
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nginx -T: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump.txt");
    std::fs::write(&dump, &out.stdout).unwrap();
    let from_disk = scan_json(&["--nginx-conf", conf.to_str().unwrap()]);
    let from_dump = scan_json(&["--nginx-dump", dump.to_str().unwrap()]);
    assert_eq!(from_disk["servers"], from_dump["servers"]);
}

#[test]
fn every_file_round_trips_byte_for_byte() {
    let mut roots = vec![fixture("includes/nginx.conf")];
    if Path::new("/etc/nginx/nginx.conf").exists() {
        roots.push(PathBuf::from("/etc/nginx/nginx.conf"));
    }
    let mut checked = 0;
    for root in roots {
        let cfg = Config::load(&root, &DiskSource).unwrap();
        for (id, f) in cfg.files.iter().enumerate() {
            assert_eq!(cfg.render(id).unwrap(), f.text, "{}", f.path.display());
            checked += 1;
        }
    }
    assert!(checked >= 7, "only {checked} files checked");
}

/// Globs of many files are parsed on several threads; order, sharing and cycle detection must
/// not change.
#[test]
fn large_globs_keep_order_sharing_and_cycle_detection() {
    let dir = tempfile::tempdir().unwrap();
    let sites = dir.path().join("sites");
    std::fs::create_dir(&sites).unwrap();
    std::fs::write(
        dir.path().join("nginx.conf"),
        "http { include sites/*.conf; }\n",
    )
    .unwrap();
    for i in 0..40 {
        let extra = if i == 3 {
            "include sites/s07.conf;"
        } else {
            ""
        };
        std::fs::write(
            sites.join(format!("s{i:02}.conf")),
            format!("server {{ server_name s{i}.example.org; }} {extra}\n"),
        )
        .unwrap();
    }
    let cfg = Config::load(&dir.path().join("nginx.conf"), &DiskSource).unwrap();
    let mut names = Vec::new();
    cfg.walk(|d, _| {
        if d.name == "server_name" {
            names.push(d.args[0].to_string());
        }
    });
    let mut want: Vec<String> = (0..40).map(|i| format!("s{i}.example.org")).collect();
    want.insert(4, "s7.example.org".into());
    assert_eq!(names, want);
    // s07 is parsed once and shared.
    assert_eq!(
        cfg.files
            .iter()
            .filter(|f| f.path.ends_with("s07.conf"))
            .count(),
        1
    );

    // A cycle between two files of the same glob is still found.
    std::fs::write(sites.join("s10.conf"), "include sites/s11.conf;\n").unwrap();
    std::fs::write(sites.join("s11.conf"), "include sites/s10.conf;\n").unwrap();
    let err = Config::load(&dir.path().join("nginx.conf"), &DiskSource).unwrap_err();
    assert!(err.message.contains("include cycle"), "{err}");
    // A syntax error in one file of the batch names that file.
    std::fs::write(sites.join("s11.conf"), "server {\n").unwrap();
    let err = Config::load(&dir.path().join("nginx.conf"), &DiskSource).unwrap_err();
    assert!(err.file.ends_with("s11.conf") && err.line == 2, "{err}");
}
