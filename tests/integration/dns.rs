//! dns-01 end to end: a real BIND (`named`) is the authoritative server of the test zones and
//! the DNS pebble resolves and validates with; acme-nginx updates it with TSIG-signed RFC 2136
//! messages (or through a hook calling `nsupdate`), waits for it, and removes its records.

use std::fs;
use std::time::{Duration, Instant};

use crate::util::dns::{Bind, Zone};
use crate::util::{assert_exit, json, Bed};
use acme_nginx::acme::CertInfo;

const WILDCARD_BLOCK: &str = "server {\n    listen 127.0.0.1:{port};\n    \
    server_name example.test *.example.test;\n    location / { return 200 \"ok\\n\"; }\n}\n";

fn dns_bed(bind: &Bind, servers: &str) -> Bed {
    let addr = bind.resolver();
    Bed::start_with(crate::util::free_port(), servers, |o| {
        let mut o = o;
        o.dns_server = Some(addr);
        o
    })
}

fn args(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

fn served_names(bed: &Bed, sni: &str) -> Vec<String> {
    let der = bed.served(sni);
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64_encode(&der)
    );
    CertInfo::from_pem(pem.as_bytes()).unwrap().names
}

fn base64_encode(der: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(der)
}

/// example.test, whose `_acme-challenge.cname` is delegated to another zone (acme-dns style).
fn zones() -> [Zone<'static>; 2] {
    [
        Zone {
            name: "example.test",
            records: "@ A 127.0.0.1\n* A 127.0.0.1\n_acme-challenge.cname CNAME cname.acme.delegated.test.\n",
            extra_ns: &[],
        },
        Zone::loopback("delegated.test"),
    ]
}

const CNAME_BLOCK: &str =
    "server {\n    listen 127.0.0.1:{port};\n    server_name cname.example.test;\n    \
    location / { return 200 \"ok\\n\"; }\n}\n";

#[test]
fn wildcard_and_base_name_in_one_certificate_through_rfc2136() {
    let bind = Bind::start(&zones());
    let bed = dns_bed(&bind, &format!("{WILDCARD_BLOCK}{CNAME_BLOCK}"));
    // Without a DNS solver the wildcard is left out, with the reason.
    let scan = bed.cmd("scan", &[]);
    assert_exit(&scan, 0);
    assert!(
        json(&scan)["servers"][0]["skipped"]
            .to_string()
            .contains("needs dns-01"),
        "{}",
        json(&scan)
    );
    // One name takes dns-01 by the configuration file; its record is delegated by a CNAME.
    fs::write(
        bed.config_file(),
        "[challenges]\n\"cname.example.test\" = \"dns-01\"\n",
    )
    .unwrap();
    let mut flags = bind.flags();
    let scan = bed.cmd("scan", &args(&flags));
    assert_exit(&scan, 0);
    let challenges = &json(&scan)["servers"][0]["challenges"];
    assert_eq!(challenges["example.test"], "http-01", "{challenges}");
    assert_eq!(challenges["*.example.test"], "dns-01", "{challenges}");

    // The CNAME points into a zone the operator delegates challenges to.
    flags.extend(["--dns-delegation-zone".into(), "delegated.test".into()]);
    let out = bed.cmd("enroll", &args(&flags));
    assert_exit(&out, 0);
    let report = json(&out);
    let cert = crate::util::by_name(&report, "example.test");
    assert_eq!(cert["status"], "issued", "{report}");
    assert_eq!(
        cert["names"],
        serde_json::json!(["example.test", "*.example.test"])
    );
    assert_eq!(
        crate::util::by_name(&report, "cname.example.test")["status"],
        "issued"
    );

    // nginx serves it for a name only the wildcard covers.
    let mut names = served_names(&bed, "a.example.test");
    names.sort();
    assert_eq!(names, vec!["*.example.test", "example.test"]);
    // The TXT records are gone, and so is the journal of them.
    assert!(bind.dig("_acme-challenge.example.test", "TXT").is_empty());
    assert!(!bed.state.path().join("dns.journal").exists());
    // Pebble validated the wildcard through BIND: named logged the signed updates.
    let log = bind.log();
    assert!(
        log.contains("acme-update")
            && log.contains("adding an RR at '_acme-challenge.example.test' TXT"),
        "{log}"
    );
    // The delegated name was updated in the other zone, never the CNAME's owner.
    assert!(
        log.contains("adding an RR at 'cname.acme.delegated.test' TXT"),
        "{log}"
    );
    assert!(
        !log.contains("'_acme-challenge.cname.example.test' TXT"),
        "{log}"
    );

    // A second run has nothing to do.
    let again = bed.cmd("enroll", &args(&flags));
    assert_exit(&again, 0);
    let again = json(&again);
    assert!(
        again["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == "up-to-date"),
        "{again}"
    );
}

#[test]
fn a_hook_calling_nsupdate_proves_names_and_a_failing_hook_fails_only_its_name() {
    let bind = Bind::start(&zones());
    let servers = "server {\n    listen 127.0.0.1:{port};\n    server_name hook.example.test;\n    \
                   location / { return 200 \"ok\\n\"; }\n}\n\
                   server {\n    listen 127.0.0.1:{port};\n    server_name fails.example.test;\n    \
                   location / { return 200 \"ok\\n\"; }\n}\n";
    let bed = dns_bed(&bind, &format!("{servers}{CNAME_BLOCK}"));
    let log = bed.state.path().join("hook.log");
    let hook = bed.state.path().join("dns-hook");
    fs::write(
        &hook,
        format!(
            "#!/bin/sh\n\
             echo \"$1 $2 $CERTBOT_DOMAIN $CERTBOT_VALIDATION\" >> {log}\n\
             case \"$CERTBOT_DOMAIN\" in fails.*) echo 'provider says no' >&2; exit 3;; esac\n\
             if [ \"$1\" = add ]; then op=\"update add $2 60 TXT \\\"$3\\\"\"; else op=\"update delete $2 TXT \\\"$3\\\"\"; fi\n\
             printf 'server 127.0.0.1 {port}\\n%s\\nsend\\n' \"$op\" | nsupdate -k {key}\n",
            log = log.display(),
            port = bind.port,
            key = bind.key_file.display()
        ),
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut fs::metadata(&hook).unwrap().permissions(),
        0o700,
    );
    fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let mut flags = vec![
        "--dns".to_owned(),
        "hook".into(),
        "--dns-hook".into(),
        hook.display().to_string(),
    ];
    flags.extend(bind.lookup_flags());
    flags.extend(["--challenge".into(), "dns-01".into()]);
    flags.extend(["--dns-delegation-zone".into(), "delegated.test".into()]);

    let out = bed.cmd("enroll", &args(&flags));
    assert_exit(&out, 1);
    let report = json(&out);
    let by = |n: &str| crate::util::by_name(&report, n);
    assert_eq!(by("hook.example.test")["status"], "issued", "{report}");
    assert_eq!(by("cname.example.test")["status"], "issued", "{report}");
    let failed = by("fails.example.test");
    assert_eq!(failed["status"], "failed");
    let message = failed["error"].as_str().unwrap();
    assert!(
        message.contains("provider says no") && message.contains("exit status: 3"),
        "{message}"
    );
    let calls = fs::read_to_string(&log).unwrap();
    // Each add has its del; the CNAME's target was updated; the failing add got no del
    // (nothing was made)... but the solver still asked to clear it, which is harmless.
    for name in [
        "_acme-challenge.hook.example.test.",
        "cname.acme.delegated.test.",
    ] {
        assert!(calls.contains(&format!("add {name}")), "{calls}");
        assert!(calls.contains(&format!("del {name}")), "{calls}");
    }
    assert!(bind
        .dig("_acme-challenge.hook.example.test", "TXT")
        .is_empty());
    assert!(bind.dig("cname.acme.delegated.test", "TXT").is_empty());
}

#[test]
fn a_wrong_tsig_secret_fails_only_the_names_that_need_dns() {
    let bind = Bind::start(&[Zone::loopback("example.test")]);
    let servers = format!(
        "{WILDCARD_BLOCK}server {{\n    listen 127.0.0.1:{{port}};\n    server_name plain.example.test;\n    \
         location / {{ return 200 \"ok\\n\"; }}\n}}\n"
    );
    let bed = dns_bed(&bind, &servers);
    let text = fs::read_to_string(&bind.key_file).unwrap();
    let wrong = bed.state.path().join("wrong.key");
    let secret = text.split('"').nth(3).unwrap();
    crate::util::write_secret(
        &wrong,
        text.replace(secret, "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA=="),
    );
    let mut flags = bind.flags();
    let at = flags.iter().position(|f| f == "--dns-tsig-key").unwrap();
    flags[at + 1] = wrong.display().to_string();

    let out = bed.cmd("enroll", &args(&flags));
    assert_exit(&out, 1);
    let report = json(&out);
    let by = |n: &str| crate::util::by_name(&report, n);
    assert_eq!(by("plain.example.test")["status"], "issued", "{report}");
    let failed = by("example.test");
    assert_eq!(failed["status"], "failed", "{report}");
    let message = failed["error"].as_str().unwrap();
    eprintln!("{message}");
    assert!(
        message.contains("NOTAUTH")
            && message.contains("BADSIG")
            && message.contains("_acme-challenge.example.test"),
        "{message}"
    );
    assert!(bind.dig("_acme-challenge.example.test", "TXT").is_empty());
}

#[test]
fn a_killed_run_leaves_a_record_the_next_run_removes_and_a_lagging_server_is_named() {
    // lagging.test has a second name server where nothing answers.
    let bind = Bind::start(&[Zone {
        name: "lagging.test",
        records: "@ A 127.0.0.1\n* A 127.0.0.1\n",
        extra_ns: &[("ns2", "127.0.0.2")],
    }]);
    let servers = "server {\n    listen 127.0.0.1:{port};\n    server_name *.lagging.test;\n    \
                   location / { return 200 \"ok\\n\"; }\n}\n";
    let bed = dns_bed(&bind, servers);
    let flags = bind.flags();

    // Killed while it waits for ns2: the record stays.
    let mut child = bed.command("enroll", &args(&flags)).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while bind.dig("_acme-challenge.lagging.test", "TXT").is_empty() {
        assert!(Instant::now() < deadline, "the record never appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    assert_eq!(bind.dig("_acme-challenge.lagging.test", "TXT").len(), 1);
    assert!(bed.state.path().join("dns.journal").exists());

    // The next run removes it first, then times out on ns2, naming it, and leaves nothing.
    let mut next = flags.clone();
    next.extend(["--dns-propagation-timeout".into(), "2".into()]);
    let out = bed.cmd("enroll", &args(&next));
    assert_exit(&out, 1);
    let report = json(&out);
    let message = crate::util::by_name(&report, "*.lagging.test")["error"]
        .as_str()
        .unwrap()
        .to_owned();
    eprintln!("{message}");
    assert!(
        message.contains("ns2.lagging.test.")
            && message.contains("127.0.0.2")
            && message.contains("after 2 s"),
        "{message}"
    );
    assert!(
        bind.dig("_acme-challenge.lagging.test", "TXT").is_empty(),
        "{}",
        bind.log()
    );
    assert!(!bed.state.path().join("dns.journal").exists());
    let log = bind.log();
    assert!(log.matches("deleting an RR").count() >= 2, "{log}");
}

#[test]
fn a_base_name_and_its_wildcard_both_by_dns_01_through_the_powerdns_api() {
    let pdns = crate::util::dns::PowerDns::start("pdns.test");
    // fresh.pdns.test is ordered only with the wrong key below: a name the CA never validated.
    let servers = "server {\n    listen 127.0.0.1:{port};\n    server_name .pdns.test;\n    \
                   location / { return 200 \"ok\\n\"; }\n}\n\
                   server {\n    listen 127.0.0.1:{port};\n    server_name fresh.pdns.test;\n    \
                   location / { return 200 \"ok\\n\"; }\n}\n";
    let addr = pdns.addr();
    let bed = Bed::start_with(crate::util::free_port(), servers, |mut o| {
        o.dns_server = Some(addr);
        o
    });
    // Both names take dns-01: two TXT values on one name, added and removed through the API.
    let mut flags = pdns.flags();
    flags.extend(["--challenge".into(), "dns-01".into()]);
    let mut first = args(&flags);
    first.push("pdns.test");
    let out = bed.cmd("enroll", &first);
    assert_exit(&out, 0);
    let report = json(&out);
    let cert = crate::util::by_name(&report, "pdns.test");
    assert_eq!(cert["status"], "issued", "{report}\n{}", pdns.log());
    assert_eq!(
        cert["names"],
        serde_json::json!(["pdns.test", "*.pdns.test"])
    );
    let mut names = served_names(&bed, "www.pdns.test");
    names.sort();
    assert_eq!(names, vec!["*.pdns.test", "pdns.test"]);
    // Nothing is left in the zone.
    let zone = crate::util::run_ok(
        std::process::Command::new("curl")
            .args(["-sS", "-H", "X-API-Key: acme-nginx-test-api-key"])
            .arg(format!(
                "{}/api/v1/servers/localhost/zones/pdns.test.",
                pdns.api_url
            )),
    );
    assert!(zone.contains("\"ns1.pdns.test.\""), "{zone}");
    assert!(!zone.contains("_acme-challenge"), "{zone}");
    // A wrong API key fails the name with the API's answer.
    fs::write(&pdns.api_key_file, "wrong\n").unwrap();
    let mut again = flags.clone();
    again.push("fresh.pdns.test".into());
    let out = bed.cmd("enroll", &args(&again));
    assert_exit(&out, 1);
    let message = crate::util::by_name(&json(&out), "fresh.pdns.test")["error"].to_string();
    assert!(message.contains("answered 401"), "{message}");
}

#[test]
fn webdav_http_01_puts_tokens_on_another_web_server() {
    let bind = Bind::start(&zones());
    // "web1": the machine that answers port 80 for the name, with a WebDAV upload location
    // (nginx's dav module, basic authentication) over the directory it serves challenges from.
    let web1 = crate::util::Nginx::start(
        "server {\n    listen 127.0.0.1:{port} default_server;\n    server_name dav.example.test;\n    \
         location /.well-known/acme-challenge/ { root {dir}/www; }\n    \
         location /upload/ {\n        alias {dir}/www/.well-known/acme-challenge/;\n        \
         dav_methods PUT DELETE;\n        create_full_put_path on;\n        dav_access user:rw all:r;\n        \
         auth_basic acme;\n        auth_basic_user_file {dir}/htpasswd;\n    }\n}\n",
    );
    let www = web1.dir.path().join("www/.well-known/acme-challenge");
    fs::create_dir_all(&www).unwrap();
    fs::create_dir_all(web1.dir.path().join("tmp")).unwrap();
    if let Some(user) = crate::util::worker_user() {
        let u = nix::unistd::User::from_name(user).unwrap().unwrap();
        for d in [
            web1.dir.path().join("www"),
            web1.dir.path().join("www/.well-known"),
            www.clone(),
            web1.dir.path().join("tmp"),
        ] {
            nix::unistd::chown(&d, Some(u.uid), Some(u.gid)).unwrap();
        }
    }
    fs::write(web1.dir.path().join("htpasswd"), "acme:{PLAIN}s3cret\n").unwrap();
    // This host: the block that gets the certificate, on a port of its own.
    // A second name, ordered only with the wrong password below (a name the CA never
    // validated, so no earlier authorization can stand in for the refused PUT).
    let servers = "server {\n    listen 127.0.0.1:{port};\n    server_name dav.example.test;\n    \
                   location / { return 200 \"ok\\n\"; }\n}\n\
                   server {\n    listen 127.0.0.1:{port};\n    server_name dav2.example.test;\n    \
                   location / { return 200 \"ok\\n\"; }\n}\n";
    let (resolver, web1_port) = (bind.resolver(), web1.port);
    let bed = Bed::start_with(crate::util::free_port(), servers, |mut o| {
        o.dns_server = Some(resolver);
        o.http_port = web1_port;
        o
    });
    let password = bed.state.path().join("dav-password");
    crate::util::write_secret(&password, "s3cret\n");
    let mut flags = vec![
        "--http-dav".to_owned(),
        format!("http://127.0.0.1:{}/upload", web1.port),
        "--http-dav-user".into(),
        "acme".into(),
        "--http-dav-password-file".into(),
        password.display().to_string(),
    ];
    flags.extend(bind.lookup_flags());

    let scan = bed.cmd("scan", &args(&flags));
    assert_eq!(
        json(&scan)["servers"][0]["challenges"]["dav.example.test"],
        "http-01 (webdav)"
    );
    let mut first = args(&flags);
    first.push("dav.example.test");
    let out = bed.cmd("enroll", &first);
    assert_exit(&out, 0);
    let report = json(&out);
    assert_eq!(
        crate::util::by_name(&report, "dav.example.test")["status"],
        "issued",
        "{report}"
    );
    assert_eq!(
        served_names(&bed, "dav.example.test"),
        vec!["dav.example.test"]
    );
    // The tokens were deleted from web1; this host's configuration got no challenge snippet.
    assert_eq!(fs::read_dir(&www).unwrap().count(), 0);
    assert!(!fs::read_to_string(&bed.nginx.conf)
        .unwrap()
        .contains("acme-challenge"));

    // A wrong password: the PUT is refused, the name fails with the server's answer.
    fs::write(&password, "wrong\n").unwrap();
    flags.push("dav2.example.test".into());
    let out = bed.cmd("enroll", &args(&flags));
    assert_exit(&out, 1);
    let message = crate::util::by_name(&json(&out), "dav2.example.test")["error"].to_string();
    assert!(message.contains("answered 401"), "{message}");
}

/// A tenant writes one included file asking for its own wildcard and another zone's
/// (`*.acme-delegate.test`, the operator's). dns-01 proves with the operator's key, so the
/// tenant's file gets no wildcard at all by default (each left out, saying why, with no update
/// sent), its plain name still taking http-01; with `--dns-allow-zone example.test` its own
/// zone's wildcard is issued and the other zone's never touched: BIND logs no update there.
#[test]
fn a_tenant_cannot_borrow_the_operators_dns_key_for_other_zones() {
    use std::os::unix::fs::PermissionsExt as _;
    let bind = Bind::start(&[
        Zone::loopback("example.test"),
        Zone::loopback("acme-delegate.test"),
    ]);
    let tenant = tempfile::tempdir().unwrap();
    fs::set_permissions(tenant.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let site = tenant.path().join("cust.conf");
    fs::write(
        &site,
        "server {\n    listen 127.0.0.1:{port};\n    \
         server_name cust.example.test *.cust.example.test *.acme-delegate.test;\n    \
         location / { return 200 \"ok\\n\"; }\n}\n",
    )
    .unwrap();
    // The tenant owns it (it can write it): nobody, as the tests run as root.
    nix::unistd::chown(&site, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let port = crate::util::free_port();
    let text = fs::read_to_string(&site)
        .unwrap()
        .replace("{port}", &port.to_string());
    fs::write(&site, text).unwrap();
    let addr = bind.resolver();
    let bed = Bed::start_with(port, &format!("include {};\n", site.display()), |mut o| {
        o.dns_server = Some(addr);
        o
    });
    let mut flags = bind.flags();
    flags.extend(["--challenge".into(), "dns-01".into()]);

    let scan = json(&bed.cmd("scan", &args(&flags)));
    let block = &scan["servers"][0];
    assert_eq!(block["file_owner"], "nobody", "{block}");
    assert!(
        block["dns_refused"]["*.acme-delegate.test"]
            .as_str()
            .is_some_and(|r| r.contains("not to root")),
        "{block}"
    );
    let out = bed.cmd("enroll", &args(&flags));
    assert_exit(&out, 0);
    let report = json(&out);
    for wildcard in ["*.cust.example.test", "*.acme-delegate.test"] {
        let w = crate::util::by_name(&report, wildcard);
        assert_eq!(w["status"], "skipped", "{report}");
        assert!(
            w["reason"]
                .as_str()
                .unwrap_or("")
                .contains("operator's DNS key"),
            "{w}"
        );
    }
    assert_eq!(
        crate::util::by_name(&report, "cust.example.test")["status"],
        "issued"
    );
    assert!(!bind.log().contains("adding an RR"), "{}", bind.log());

    // The operator allows its own zone for dns-01: the tenant's wildcard there, never the
    // other zone's.
    let mut allowed = flags.clone();
    allowed.extend(["--dns-allow-zone".into(), "example.test".into()]);
    let out = bed.cmd("enroll", &args(&allowed));
    assert_exit(&out, 0);
    let names = served_names(&bed, "cust.example.test");
    assert!(
        names.contains(&"*.cust.example.test".to_owned()),
        "{names:?}"
    );
    assert!(
        !names.contains(&"*.acme-delegate.test".to_owned()),
        "{names:?}"
    );
    let log = bind.log();
    assert!(
        log.contains("adding an RR at '_acme-challenge.cust.example.test' TXT"),
        "{log}"
    );
    assert!(!log.contains("acme-delegate.test' TXT"), "{log}");
}

/// The owner of a name's DNS points `_acme-challenge` at a record of another zone the
/// operator's key can change (`_dmarc.acme-delegate.test`, where a second TXT record makes
/// receivers ignore DMARC): the name fails, naming the CNAME, and BIND logs no update there.
/// A CNAME to another `_acme-challenge` name is followed as before.
#[test]
fn a_cname_steers_updates_only_to_challenge_names_or_delegation_zones() {
    let bind = Bind::start(&[
        Zone {
            name: "example.test",
            records: "@ A 127.0.0.1\n* A 127.0.0.1\n\
                _acme-challenge.evil CNAME _dmarc.acme-delegate.test.\n\
                _acme-challenge.ok CNAME _acme-challenge.ok.acme-delegate.test.\n",
            extra_ns: &[],
        },
        Zone::loopback("acme-delegate.test"),
    ]);
    let bed = dns_bed(
        &bind,
        "server {\n    listen 127.0.0.1:{port};\n    server_name evil.example.test;\n}\n\
         server {\n    listen 127.0.0.1:{port};\n    server_name ok.example.test;\n}\n",
    );
    let mut flags = bind.flags();
    flags.extend(["--challenge".into(), "dns-01".into()]);
    let out = bed.cmd("enroll", &args(&flags));
    assert_exit(&out, 1);
    let report = json(&out);
    let evil = crate::util::by_name(&report, "evil.example.test");
    assert_eq!(evil["status"], "failed", "{report}");
    let message = evil["error"].as_str().unwrap_or_default();
    assert!(
        message.contains(
            "_acme-challenge.evil.example.test. is a CNAME to _dmarc.acme-delegate.test."
        ),
        "{message}"
    );
    assert_eq!(
        crate::util::by_name(&report, "ok.example.test")["status"],
        "issued"
    );
    let log = bind.log();
    assert!(!log.contains("'_dmarc.acme-delegate.test' TXT"), "{log}");
    assert!(
        log.contains("adding an RR at '_acme-challenge.ok.acme-delegate.test' TXT"),
        "{log}"
    );
}
