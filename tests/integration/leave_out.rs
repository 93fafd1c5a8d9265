//! Leaving blocks and names out: `--exclude` globs, `exclude = [...]` in the configuration file
//! and the `# acme-nginx: ignore` marker, against a real nginx and pebble.

use std::fs;

use crate::util::{assert_exit, by_name, json, Bed};

const BLOCKS: &str = "server {\n    listen 127.0.0.1:{port};\n    server_name www.leave.test db.internal.leave.test;\n    \
    location / { return 200 \"ok\\n\"; }\n}\n\
    server {\n    listen 127.0.0.1:{port};\n    server_name plain.leave.test;\n    # acme-nginx: ignore (served elsewhere)\n    \
    location / { return 200 \"plain\\n\"; }\n}\n\
    server {\n    listen 127.0.0.1:{port};\n    server_name api.leave.test;\n    location / { return 200 \"api\\n\"; }\n}\n";

#[test]
fn excluded_names_and_ignored_blocks_are_never_enrolled() {
    let bed = Bed::start(BLOCKS);
    fs::write(bed.config_file(), "exclude = [\"*.internal.leave.test\"]\n").unwrap();

    let scan = bed.cmd("scan", &["--exclude", "API.leave.test"]);
    assert_exit(&scan, 0);
    let scan = json(&scan);
    // Each block carries its own names' fate; an excluded name is never listed as enrollable.
    let first = &scan["servers"][0];
    assert_eq!(
        first["excluded"]["db.internal.leave.test"],
        "*.internal.leave.test"
    );
    assert_eq!(first["enrollable"], serde_json::json!(["www.leave.test"]));
    assert_eq!(first["challenges"]["www.leave.test"], "http-01");
    assert!(
        first["challenges"]["db.internal.leave.test"].is_null(),
        "{first}"
    );
    assert_eq!(
        scan["servers"][2]["excluded"]["api.leave.test"],
        "API.leave.test"
    );
    assert_eq!(scan["servers"][2]["enrollable"], serde_json::json!([]));
    let ignored = scan["servers"][1]["skipped"][0]["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", scan["servers"][1]));
    assert!(
        ignored.contains("# acme-nginx: ignore") && ignored.contains("nginx.conf:22"),
        "{ignored}"
    );

    let table = bed.cmd_text("scan", &["--exclude", "API.leave.test"]);
    assert_exit(&table, 0);
    let text = String::from_utf8_lossy(&table.stdout);
    for wanted in [
        "db.internal.leave.test: excluded (*.internal.leave.test)",
        "excluded (API.leave.test)",
        "ignored (marker at ",
    ] {
        assert!(text.contains(wanted), "{wanted:?} not in:\n{text}");
    }

    let out = bed.cmd("enroll", &["--exclude", "API.leave.test"]);
    assert_exit(&out, 0);
    let report = json(&out);
    let www = by_name(&report, "www.leave.test");
    assert_eq!(www["status"], "issued", "{report}");
    assert_eq!(www["names"], serde_json::json!(["www.leave.test"]));
    assert_eq!(
        report["certificates"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    let conf = fs::read_to_string(&bed.nginx.conf).unwrap();
    let plain_block = conf.split("server {").nth(2).unwrap();
    let api_block = conf.split("server {").nth(3).unwrap();
    assert!(!plain_block.contains("ssl"), "{plain_block}");
    assert!(!api_block.contains("ssl"), "{api_block}");
    // Only the certificate's own name was ordered.
    let log = bed.pebble.log();
    assert!(
        !log.contains("internal.leave.test")
            && !log.contains("api.leave.test")
            && !log.contains("plain.leave.test")
    );

    // Asking for an excluded or ignored name says why.
    let out = bed.cmd("enroll", &["api.leave.test", "--exclude", "api.*"]);
    assert_exit(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("excluded by the pattern \"api.*\""));
    let out = bed.cmd("enroll", &["plain.leave.test"]);
    assert_exit(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("acme-nginx: ignore"));
}
