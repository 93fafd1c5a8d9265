//! `renew` and `status` against pebble 2.10 (ARI) and a real nginx master.

use std::fs;

use crate::util::{assert_exit, by_name, json, leaf, run, Bed};
use acme_nginx::acme::CertInfo;

const BLOCKS: &str = "server {\n  listen 127.0.0.1:{port};\n  server_name a.renew.test;\n  \
    location /.well-known/acme-challenge/ { alias {dir}/acme-a/; }\n}\n\
    server {\n  listen 127.0.0.1:{port};\n  server_name b.renew.test;\n  \
    location /.well-known/acme-challenge/ { alias {dir}/acme-b/; }\n}\n";

#[test]
fn renew_follows_ari_forces_with_replaces_and_backs_off_a_broken_name() {
    let bed = Bed::start(BLOCKS);
    for d in ["acme-a", "acme-b"] {
        fs::create_dir_all(bed.nginx.dir.path().join(d)).unwrap();
    }
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 0);
    let first_a = leaf(&bed.live("a.renew.test").join("fullchain.pem"));
    let first_id = CertInfo::from_der(&first_a).unwrap().ari_cert_id.unwrap();

    // Fresh certificates: the ARI window has not begun, nothing renews.
    let out = bed.cmd("renew", &[]);
    assert_exit(&out, 0);
    let report = json(&out);
    for name in ["a.renew.test", "b.renew.test"] {
        let c = by_name(&report, name);
        assert_eq!(c["status"], "not-due", "{c}");
        assert!(
            c["reason"].as_str().unwrap().starts_with("ARI window"),
            "{c}"
        );
    }
    assert_eq!(
        leaf(&bed.live("a.renew.test").join("fullchain.pem")),
        first_a
    );

    // --force renews both, with `replaces` accepted by pebble, after one reload.
    let master = bed.nginx.pid();
    let metrics = bed.state.path().join("metrics.prom");
    let out = bed.cmd(
        "renew",
        &["--force", "--metrics-file", metrics.to_str().unwrap()],
    );
    assert_exit(&out, 0);
    let report = json(&out);
    let a = by_name(&report, "a.renew.test");
    assert_eq!(a["status"], "renewed", "{a}");
    if crate::util::pebble_finds_replaces(&first_a) {
        assert_eq!(
            a["replaces"],
            first_id.as_str(),
            "pebble recorded the order as replacing the old certificate"
        );
    } else {
        crate::util::assert_replaces(&a, &out.stderr, &first_a);
    }
    let new_a = leaf(&bed.live("a.renew.test").join("fullchain.pem"));
    assert_ne!(new_a, first_a);
    assert_eq!(bed.served("a.renew.test"), new_a);
    assert_eq!(
        bed.served("b.renew.test"),
        leaf(&bed.live("b.renew.test").join("fullchain.pem"))
    );
    assert_eq!(bed.nginx.pid(), master);
    let text = fs::read_to_string(&metrics).unwrap();
    for metric in [
        "acme_nginx_certificate_expiry_timestamp_seconds{name=\"a.renew.test\"}",
        "acme_nginx_certificate_next_renewal_timestamp_seconds{name=\"b.renew.test\"}",
        "acme_nginx_certificate_last_success_timestamp_seconds{name=\"a.renew.test\"}",
        "acme_nginx_certificate_last_result{name=\"a.renew.test\"} 1",
    ] {
        assert!(text.contains(metric), "{metric} missing from\n{text}");
    }

    // Break a.renew.test: its challenge directory becomes a file.
    let acme_a = bed.nginx.dir.path().join("acme-a");
    fs::remove_dir_all(&acme_a).unwrap();
    fs::write(&acme_a, "not a directory").unwrap();
    let out = bed.cmd(
        "renew",
        &["--force", "--metrics-file", metrics.to_str().unwrap()],
    );
    assert_exit(&out, 1);
    let report = json(&out);
    assert_eq!(
        by_name(&report, "a.renew.test")["status"],
        "failed",
        "{report}"
    );
    assert_eq!(
        by_name(&report, "b.renew.test")["status"],
        "renewed",
        "{report}"
    );
    assert_eq!(
        bed.served("a.renew.test"),
        new_a,
        "the old certificate stays live"
    );
    assert!(fs::read_to_string(&metrics)
        .unwrap()
        .contains("acme_nginx_certificate_last_result{name=\"a.renew.test\"} 0"));

    // The broken name backs off; the other still renews.
    let out = bed.cmd("renew", &["--force"]);
    assert_exit(&out, 0);
    let report = json(&out);
    let a = by_name(&report, "a.renew.test");
    assert_eq!(a["status"], "backoff", "{a}");
    assert!(a["next_renewal"].as_str().is_some());
    assert_eq!(
        by_name(&report, "b.renew.test")["status"],
        "renewed",
        "{report}"
    );

    // status reports all of it.
    let out = bed.cmd("status", &[]);
    assert_exit(&out, 0);
    let report = json(&out);
    let a = by_name(&report, "a.renew.test");
    assert_eq!(a["failures"], 1);
    assert!(a["last_error"].as_str().unwrap().contains("acme-a"), "{a}");
    assert!(a["reason"].as_str().unwrap().contains("backing off"), "{a}");
    let b = by_name(&report, "b.renew.test");
    assert!(
        b["server_blocks"][0]
            .as_str()
            .unwrap()
            .contains("nginx.conf:"),
        "{b}"
    );
    assert!(b["serial"].as_str().is_some() && b["next_renewal"].as_str().is_some());
}

#[test]
fn revoked_certificate_is_renewed_at_once_by_ari() {
    let bed = Bed::start(BLOCKS);
    for d in ["acme-a", "acme-b"] {
        fs::create_dir_all(bed.nginx.dir.path().join(d)).unwrap();
    }
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 0);
    let old_b = leaf(&bed.live("b.renew.test").join("fullchain.pem"));
    // Revoke b with the account enroll created.
    let account = fs::read_dir(bed.state.path().join("accounts"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("account.json");
    let out = run(bed
        .pebble
        .cli()
        .arg("revoke")
        .arg("--state")
        .arg(&account)
        .arg("--cert")
        .arg(bed.live("b.renew.test").join("cert.pem")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bed.cmd("renew", &[]);
    assert_exit(&out, 0);
    let report = json(&out);
    assert_eq!(
        by_name(&report, "a.renew.test")["status"],
        "not-due",
        "{report}"
    );
    assert_eq!(
        by_name(&report, "b.renew.test")["status"],
        "renewed",
        "{report}"
    );
    assert_ne!(leaf(&bed.live("b.renew.test").join("fullchain.pem")), old_b);
}

/// A CA's ARI window that starts later than the default rule's instant is followed (pebble
/// suggests the last days of a 10-day certificate; the default rule would renew at half its
/// lifetime): the next renewal is inside the window, before the margin near expiry.
#[test]
fn a_later_ari_window_from_the_ca_is_followed() {
    let bed = Bed::start_with(
        crate::util::free_port(),
        "server {\n  listen 127.0.0.1:{port};\n  server_name late.renew.test;\n  \
         location /.well-known/acme-challenge/ { alias {dir}/acme/; }\n}\n",
        |o| crate::util::PebbleOptions {
            validity_secs: 10 * 86400,
            ..o
        },
    );
    fs::create_dir_all(bed.nginx.dir.path().join("acme")).unwrap();
    // Pebble gives an order that names no profile a random one (its six-day profile included):
    // this test needs the 10-day default.
    assert_exit(&bed.cmd("enroll", &["--profile", "default"]), 0);
    let out = bed.cmd("renew", &[]);
    assert_exit(&out, 0);
    let c = by_name(&json(&out), "late.renew.test");
    assert_eq!(c["status"], "not-due", "{c}");
    let reason = c["reason"].as_str().unwrap();
    let (start, end) = reason
        .strip_prefix("ARI window ")
        .and_then(|w| w.split_once(" to "))
        .unwrap_or_else(|| panic!("{c}"));
    let parse = |t: &str| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap()
    };
    let (start, end) = (parse(start), parse(end));
    let next = parse(c["next_renewal"].as_str().unwrap());
    let info =
        CertInfo::from_der(&leaf(&bed.live("late.renew.test").join("fullchain.pem"))).unwrap();
    let lifetime = info.not_after - info.not_before;
    let default_rule = info.not_before + lifetime / 2;
    assert!(start > default_rule, "the CA's window starts later: {c}");
    let margin = std::cmp::max(time::Duration::days(1), lifetime / 10);
    assert!(
        start <= next && next <= end && next <= info.not_after - margin,
        "renewal inside the window, before the margin: {c}"
    );
}
