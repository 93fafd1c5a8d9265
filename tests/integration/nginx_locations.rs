//! Location matching against a real nginx: for each generated server block, `scan` predicts the
//! directory nginx serves `/.well-known/acme-challenge/TOKEN` from (or that it serves none); a
//! real nginx master then answers the request and must agree.

use std::fs;
use std::path::PathBuf;

use crate::util::Nginx;
use acme_nginx::nginx::discovery::{scan, BuildDefaults, PROBE_TOKEN};
use acme_nginx::nginx::{Config, DiskSource};

/// Server bodies; `{d}` is the case's own directory. `true`: nginx serves a file from disk.
const CASES: &[(&str, bool)] = &[
    ("location /.well-known/acme-challenge/ { alias {d}/a1/; }", true),
    ("root {d}/r; location / { }", true),
    ("location /.well-known/acme-challenge/ { alias {d}/a/; } location ~ /\\.well-known { root {d}/re; }", true),
    ("location ^~ /.well-known/acme-challenge/ { alias {d}/a/; } location ~ /\\.well-known { root {d}/re; }", true),
    ("location = /.well-known/acme-challenge/{token} { root {d}/exact; } location ~ . { root {d}/re; }", true),
    ("location /.well-known/acme-challenge/ { alias {d}/exact/x; }", false),
    ("location / { root {d}/outer; location /.well-known/ { root {d}/nested; } }", true),
    ("location / { location ~ acme { root {d}/in; } } location ~ well { root {d}/out; }", true),
    ("location / { alias {d}/al/; location /.well-known/ { } }", true),
    ("location /.well-known { alias {d}/noslash; }", true),
    ("location ~* /\\.WELL-KNOWN/ { root {d}/first; } location ~ /\\.well-known/ { root {d}/second; }", true),
    ("root {rel};", true),
    ("root {d}/tf; location / { try_files $uri =404; }", true),
    ("root {d}/ab; auth_basic \"realm\";", true),
    ("location /.well-known/acme-challenge/ { alias {d}/a/; } location ~ /\\. { deny all; }", false),
    ("location / { proxy_pass http://127.0.0.1:9; }", false),
    ("location /.well-known/ { return 404; }", false),
    ("return 301 https://$host$request_uri;", false),
    ("location /.well-known/ { internal; root {d}/int; }", false),
    ("root {d}/p; auth_basic \"realm\"; auth_basic_user_file {d}/htpasswd;", false),
    ("root {d}/x; location / { try_files /index.html @app; } location @app { return 418; }", false),
    // try_files is not inherited: the server's does not apply inside a location.
    ("root {d}/stf; try_files /nothing =404; location / { }", true),
    ("root {d}/stf2; try_files /nothing =404;", false),
    // PCRE look-arounds (nginxconfig.io, h5bp): dot-files denied except .well-known.
    ("root {d}/la; location ~ /\\.(?!well-known) { deny all; }", true),
    ("root {d}/lb; location ~ /\\.(?=well-known) { return 403; }", false),
    ("root {d}/lc; location ~* ^/(?:\\.well-known)(?<rest>/.*)$ { root {d}/named; }", true),
];

#[test]
fn scan_agrees_with_nginx_on_the_challenge_directory() {
    let mut body = String::new();
    for (i, (case, _)) in CASES.iter().enumerate() {
        let server = case
            .replace("{d}", &format!("{{dir}}/case{i}"))
            .replace("{rel}", &format!("case{i}/rel"))
            .replace("{token}", PROBE_TOKEN);
        body.push_str(&format!(
            "server {{\n listen 127.0.0.1:{{port}};\n server_name case{i}.test;\n {server}\n}}\n"
        ));
    }
    let nginx = Nginx::start(&body);
    fs::write(nginx.dir.path().join("htpasswd"), "u:x\n").unwrap();
    for i in 0..CASES.len() {
        fs::create_dir_all(nginx.dir.path().join(format!("case{i}"))).unwrap();
        fs::write(nginx.dir.path().join(format!("case{i}/htpasswd")), "u:x\n").unwrap();
    }
    let cfg = Config::load(&nginx.conf, &DiskSource).unwrap();
    let defaults = BuildDefaults {
        prefix: nginx.dir.path().to_path_buf(),
        ..BuildDefaults::default()
    };
    let result = scan(&cfg, &defaults);
    assert_eq!(result.servers.len(), CASES.len());
    let mut failures = Vec::new();
    for (i, ((case, serves), server)) in CASES.iter().zip(&result.servers).enumerate() {
        assert_eq!(server.server_names, vec![format!("case{i}.test")]);
        if let Some(dir) = &server.acme_challenge_dir {
            let file: PathBuf = dir.join(PROBE_TOKEN);
            fs::create_dir_all(dir).unwrap();
            fs::write(&file, format!("predicted-{i}")).unwrap();
        }
        let (status, got) = nginx.get(
            &format!("case{i}.test"),
            &format!("/.well-known/acme-challenge/{PROBE_TOKEN}"),
        );
        let agrees = match (&server.acme_challenge_dir, serves) {
            (Some(_), true) => status == 200 && got == format!("predicted-{i}"),
            (None, false) => status != 200,
            _ => false,
        };
        if !agrees {
            failures.push(format!(
                "case {i} `{case}`: scan says {:?} ({:?}); nginx answered {status} {got:?}",
                server.acme_challenge_dir, server.acme_challenge_reason
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
