//! Never without a certificate, never unnoticed: a second CA when the first is down or answers
//! 503 (renewals staying with the issuer, `replaces` never sent elsewhere), CAA records read
//! before each CA is asked, the public-address preflight against other hosts (a network
//! namespace: an address with nothing listening, and a NAT forwarding to this nginx), and
//! notifications to a webhook and through sendmail.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::netns::NetNs;
use crate::util::{assert_exit, by_name, free_port, json, leaf, Bed, Pebble, PebbleOptions};

/// A block listening on every address (the NAT of the preflight test reaches it from another
/// namespace), serving its own challenge directory.
fn site(names: &str) -> String {
    site_on("{port}", names)
}

/// Like [`site`], listening on `listen` only.
fn site_on(listen: &str, names: &str) -> String {
    format!(
        "server {{\n    listen {listen};\n    server_name {names};\n    \
         location /.well-known/acme-challenge/ {{ alias {{dir}}/acme/; }}\n    \
         location / {{ return 200 \"site\\n\"; }}\n}}\n"
    )
}

/// A stand-in that answers every request with `503 Service Unavailable` (a CA in an outage),
/// until dropped.
struct Unavailable {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Unavailable {
    fn start() -> Unavailable {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        let _ = read_request(&mut s);
                        let _ = s.write_all(
                            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Unavailable {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Unavailable {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one HTTP/1.1 request (headers, then a Content-Length body); returns the body.
fn read_request(s: &mut std::net::TcpStream) -> std::io::Result<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(s);
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(body)
}

/// A small HTTP endpoint: records every request body, answers each with 200 and `reply`
/// (JSON): a webhook receiver, or ZeroSSL's EAB endpoint.
struct Stub {
    url: String,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stub {
    fn start(reply: &str) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, flag) = (got.clone(), stop.clone());
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
            reply.len()
        );
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        if let Ok(body) = read_request(&mut s) {
                            sink.lock().unwrap().push(body);
                        }
                        let _ = s.write_all(answer.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Stub {
            url,
            got,
            stop,
            thread: Some(thread),
        }
    }

    /// The bodies received since the last call.
    fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.got.lock().unwrap())
    }

    /// The JSON bodies received since the last call.
    fn events(&self) -> Vec<serde_json::Value> {
        self.take()
            .iter()
            .map(|b| serde_json::from_slice(b).unwrap())
            .collect()
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One file trusting both pebbles' HTTPS certificates (what --ca-file takes).
fn both_roots(bed: &Bed, other: &Pebble) -> std::path::PathBuf {
    let path = bed.state.path().join("both-ca.pem");
    let mut pem = fs::read(&bed.pebble.ca_file).unwrap();
    pem.extend(fs::read(&other.ca_file).unwrap());
    fs::write(&path, pem).unwrap();
    path
}

fn status_of(bed: &Bed, name: &str) -> serde_json::Value {
    let out = bed.cmd("status", &[]);
    assert_exit(&out, 0);
    json(&out)["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name} in status"))
}

/// The preferred CA refuses connections, the second answers 503: the third issues, in the
/// same run, and says why. A renewal goes back to the CA that issued (with ARI's
/// `replaces`); when that CA is down, to the next, without `replaces`.
#[test]
fn a_ca_that_is_down_or_answers_503_is_passed_over_and_renewals_stay_with_the_issuer() {
    let bed = Bed::start(&site("fb.test"));
    fs::create_dir_all(bed.nginx.dir.path().join("acme")).unwrap();
    fs::write(bed.config_file(), "agree_tos = true\n").unwrap();
    let b = Pebble::start(PebbleOptions::http_port(bed.nginx.port));
    let roots = both_roots(&bed, &b);
    let roots = roots.to_str().unwrap();
    let dead = format!("https://127.0.0.1:{}/dir", free_port());
    let unavailable = Unavailable::start();
    let busy = format!("http://127.0.0.1:{}/dir", unavailable.port);
    let a = bed.pebble.directory.clone();

    let started = Instant::now();
    let out = bed.cmd(
        "enroll",
        &[
            "--ca-file",
            roots,
            "--directory",
            &dead,
            "--directory",
            &busy,
            "--directory",
            &b.directory,
        ],
    );
    let took = started.elapsed();
    assert_exit(&out, 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&dead) && stderr.contains(&busy), "{stderr}");
    assert!(stderr.contains("503"), "the 503 is named: {stderr}");
    assert_eq!(by_name(&json(&out), "fb.test")["status"], "issued");
    assert_eq!(status_of(&bed, "fb.test")["directory"], b.directory);
    assert_eq!((bed.pebble.orders(), b.orders()), (0, 1));
    eprintln!("falling over two unusable CAs took {took:?} for the whole enroll");

    // Renewal: the issuer first, with replaces.
    let ca = [
        "--ca-file",
        roots,
        "--directory",
        &a,
        "--directory",
        &b.directory,
    ];
    let issued = crate::util::leaf(&bed.live("fb.test").join("fullchain.pem"));
    let out = bed.cmd("renew", &[&["--force"][..], &ca].concat());
    assert_exit(&out, 0);
    let renewed = by_name(&json(&out), "fb.test");
    assert_eq!(renewed["status"], "renewed", "{renewed}");
    // Same CA: replaces sent (and dropped only where pebble cannot find the serial).
    crate::util::assert_replaces(&renewed, &out.stderr, &issued);
    assert_eq!((bed.pebble.orders(), b.orders()), (0, 2));

    // The issuer goes down: the next CA renews, and is never sent the other's CertID.
    let b_dir = b.directory.clone();
    drop(b);
    let out = bed.cmd(
        "renew",
        &[
            "--force",
            "--ca-file",
            roots,
            "--directory",
            &a,
            "--directory",
            &b_dir,
        ],
    );
    assert_exit(&out, 0);
    let renewed = by_name(&json(&out), "fb.test");
    assert_eq!(renewed["status"], "renewed", "{renewed}");
    assert!(
        renewed["replaces"].is_null(),
        "replaces never goes to another CA: {renewed}"
    );
    assert_eq!(bed.pebble.orders(), 1);
    assert_eq!(status_of(&bed, "fb.test")["directory"], a);
    assert_eq!(
        bed.served("fb.test"),
        leaf(&bed.live("fb.test").join("fullchain.pem"))
    );
}

/// CAA records are read before each CA is asked: a CA they do not name is passed over (the
/// record named), a name no CA may have fails without any order, and `issuewild` governs a
/// wildcard.
#[test]
fn caa_records_choose_the_ca_and_refuse_before_any_order() {
    let identity = |id: &'static str| {
        move |o| PebbleOptions {
            caa_identities: vec![id.to_owned()],
            ..o
        }
    };
    let blocks = format!(
        "{}{}{}",
        site("caa-b.test"),
        site("caa-none.test"),
        site("*.wild.test")
    );
    let bed = Bed::start_with(free_port(), &blocks, identity("ca-a.test"));
    fs::create_dir_all(bed.nginx.dir.path().join("acme")).unwrap();
    let b = Pebble::start(identity("CA-B.test.")(PebbleOptions::http_port(
        bed.nginx.port,
    )));
    fs::write(bed.config_file(), "agree_tos = true\n").unwrap();
    bed.pebble.mock_dns(
        "add-caa",
        r#"{"host": "caa-b.test.", "policies": [{"tag": "issue", "value": "ca-b.test"}]}"#,
    );
    bed.pebble.mock_dns(
        "add-caa",
        r#"{"host": "caa-none.test.", "policies": [{"tag": "issue", "value": ";"}]}"#,
    );
    bed.pebble.mock_dns(
        "add-caa",
        r#"{"host": "wild.test.", "policies": [{"tag": "issue", "value": "ca-a.test"}, {"tag": "issuewild", "value": ";"}]}"#,
    );
    let roots = both_roots(&bed, &b);
    let resolver = bed.pebble.dns.to_string();
    let out = bed.cmd(
        "enroll",
        &[
            "--ca-file",
            roots.to_str().unwrap(),
            "--directory",
            &bed.pebble.directory,
            "--directory",
            &b.directory,
            "--dns-resolver",
            &resolver,
            "--dns",
            "hook",
            "--dns-hook",
            "/bin/false",
        ],
    );
    assert_exit(&out, 1);
    let report = json(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        by_name(&report, "caa-b.test")["status"],
        "issued",
        "{report} {stderr}"
    );
    assert!(
        stderr.contains(&format!("not ordered at {}", bed.pebble.directory))
            && stderr.contains("CAA 0 issue \"ca-b.test\""),
        "{stderr}"
    );
    assert_eq!(status_of(&bed, "caa-b.test")["directory"], b.directory);
    let none = by_name(&report, "caa-none.test");
    assert_eq!(none["status"], "failed");
    let why = none["error"].as_str().unwrap();
    assert!(
        why.contains("no configured CA can issue it") && why.contains("CAA 0 issue \";\""),
        "{none}"
    );
    let wild = by_name(&report, "*.wild.test");
    assert_eq!(wild["status"], "failed");
    assert!(
        wild["error"].as_str().unwrap().contains("issuewild"),
        "{wild}"
    );
    // One order in all: caa-b.test at the second CA.
    assert_eq!((bed.pebble.orders(), b.orders()), (0, 1));
}

/// Before any order, each name's A and AAAA records must lead to this nginx: an address of
/// another host that forwards to it (a NAT) passes; an address where nothing listens fails
/// naming the record, AAAA first; a name without addresses fails. Nothing is ordered for them.
#[test]
fn public_addresses_that_do_not_lead_here_fail_before_any_order() {
    // Each name its own certificate: one block per name.
    let names = ["local", "nat", "gone", "v6", "none"];
    let blocks: String = names
        .iter()
        .map(|n| site(&format!("{n}.pf.test")))
        .collect();
    let bed = Bed::start(&blocks);
    fs::create_dir_all(bed.nginx.dir.path().join("acme")).unwrap();
    let ns = NetNs::create(41);
    let (dead, dead6) = ns.add_host(2);
    let (nat, _) = ns.add_host(3);
    let port = bed.nginx.port;
    let _forward = ns.forward((nat, port).into(), (ns.host_v4(), port).into());
    let p = &bed.pebble;
    p.mock_dns("set-default-ipv4", r#"{"ip": ""}"#);
    p.mock_dns(
        "add-a",
        r#"{"host": "local.pf.test.", "addresses": ["127.0.0.1"]}"#,
    );
    p.mock_dns(
        "add-a",
        &format!(r#"{{"host": "nat.pf.test.", "addresses": ["{nat}"]}}"#),
    );
    p.mock_dns(
        "add-a",
        &format!(r#"{{"host": "gone.pf.test.", "addresses": ["{dead}"]}}"#),
    );
    p.mock_dns(
        "add-a",
        r#"{"host": "v6.pf.test.", "addresses": ["127.0.0.1"]}"#,
    );
    p.mock_dns(
        "add-aaaa",
        &format!(r#"{{"host": "v6.pf.test.", "addresses": ["{dead6}"]}}"#),
    );
    let resolver = p.dns.to_string();
    let started = Instant::now();
    let out = bed.cmd(
        "enroll",
        &["--public-preflight", "true", "--dns-resolver", &resolver],
    );
    eprintln!(
        "enroll with the public preflight took {:?}",
        started.elapsed()
    );
    assert_exit(&out, 1);
    let report = json(&out);
    assert_eq!(by_name(&report, "local.pf.test")["status"], "issued");
    assert_eq!(by_name(&report, "nat.pf.test")["status"], "issued");
    let error = |n: &str| {
        let o = by_name(&report, n);
        assert_eq!(o["status"], "failed", "{o}");
        o["error"].as_str().unwrap().to_owned()
    };
    let gone = error("gone.pf.test");
    assert!(gone.contains(&format!("A record {dead}")), "{gone}");
    let v6 = error("v6.pf.test");
    assert!(v6.contains(&format!("AAAA record {dead6}")), "{v6}");
    let none = error("none.pf.test");
    assert!(none.contains("has no A or AAAA record"), "{none}");
    // Two orders: the two names that lead here.
    assert_eq!(bed.pebble.orders(), 2);
    // No probe token is left behind.
    let left: Vec<_> = fs::read_dir(bed.nginx.dir.path().join("acme"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A failure is told once per streak (webhook and mail), its end once, and a served
/// certificate near its expiry once; nothing while all is well; a notifier that fails is
/// logged and does not change the run's exit code.
#[test]
fn failures_recoveries_and_expiring_certificates_are_told_once() {
    let bed = Bed::start_with(
        free_port(),
        &site_on("127.0.0.1:{port}", "note.test"),
        |o| PebbleOptions {
            validity_secs: 10 * 86400,
            ..o
        },
    );
    fs::create_dir_all(bed.nginx.dir.path().join("acme")).unwrap();
    let hook = Stub::start("{}");
    let mailbox = bed.state.path().join("mailbox");
    let sendmail = bed.state.path().join("sendmail");
    fs::write(
        &sendmail,
        format!(
            "#!/bin/sh\necho \"== args: $*\" >> {m}\ncat >> {m}\n",
            m = mailbox.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&sendmail, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(
        bed.config_file(),
        format!(
            "[notify]\nwebhook = \"{}\"\nemail = \"ops@example.org\"\nsendmail = \"{}\"\ndays = 14\n",
            hook.url,
            sendmail.display()
        ),
    )
    .unwrap();
    // The CA's DNS points elsewhere: its validation fails.
    bed.pebble.mock_dns(
        "add-a",
        r#"{"host": "note.test.", "addresses": ["127.0.0.2"]}"#,
    );
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 1);
    let events = hook.events();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(
        (&e["name"], &e["status"]),
        (&"note.test".into(), &"refused".into())
    );
    assert!(
        e["reason"]
            .as_str()
            .unwrap()
            .contains("urn:ietf:params:acme:error:"),
        "{e}"
    );
    assert!(
        e["next_attempt"].is_string() && e["certificate"].is_null(),
        "{e}"
    );
    assert!(e["host"].is_string(), "{e}");
    let mail = fs::read_to_string(&mailbox).unwrap();
    assert!(
        mail.starts_with("== args: -t -i\nTo: ops@example.org\nSubject: acme-nginx on "),
        "{mail}"
    );
    assert!(mail.contains(": note.test was refused\n"), "{mail}");

    // The same streak: nothing more.
    let out = bed.cmd("enroll", &["note.test"]);
    assert_exit(&out, 1);
    assert_eq!(hook.events(), Vec::<serde_json::Value>::new());

    // It recovers; its 10-day certificate is within the 14 days: both told, once.
    bed.pebble.mock_dns("clear-a", r#"{"host": "note.test."}"#);
    let out = bed.cmd("enroll", &["note.test"]);
    assert_exit(&out, 0);
    let events = hook.events();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["recovered", "expiring"], "{events:?}");
    let served = acme_nginx::acme::CertInfo::from_der(&bed.served("note.test")).unwrap();
    assert_eq!(events[1]["certificate"]["serial"], served.serial_hex);
    let mails = fs::read_to_string(&mailbox).unwrap();
    assert_eq!(mails.matches("== args:").count(), 3, "{mails}");

    let out = bed.cmd("renew", &[]);
    assert_exit(&out, 0);
    assert_eq!(
        hook.events(),
        Vec::<serde_json::Value>::new(),
        "all is well"
    );

    // A notifier that fails is logged; the exit code is the names' own.
    bed.pebble.mock_dns(
        "add-a",
        r#"{"host": "note.test.", "addresses": ["127.0.0.2"]}"#,
    );
    let dead = format!("http://127.0.0.1:{}/hook", free_port());
    let out = bed.cmd(
        "renew",
        &[
            "--force",
            "--notify-webhook",
            &dead,
            "--notify-sendmail",
            "/bin/false",
        ],
    );
    assert_exit(&out, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("notification not delivered").count(),
        2,
        "{stderr}"
    );
}

/// ZeroSSL requires external account binding and hands credentials out by email: without a
/// binding given, they are fetched from its endpoint (a stand-in here), kept next to the account
/// (0600), and the account is made with them; without an email the run says what to pass.
#[test]
fn zerossl_eab_credentials_are_fetched_for_the_email() {
    let bed = Bed::start_with(free_port(), &site("zero.test"), |o| PebbleOptions {
        eab: true,
        ..o
    });
    fs::create_dir_all(bed.nginx.dir.path().join("acme")).unwrap();
    let (kid, key) = crate::util::EAB_KEYS[0];
    let endpoint = Stub::start(&format!(
        r#"{{"success": true, "eab_kid": "{kid}", "eab_hmac_key": "{key}"}}"#
    ));
    let enroll = |extra: &[&str]| {
        crate::util::run(
            bed.command("enroll", extra)
                .env("ACME_NGINX_ZEROSSL_DIRECTORY", &bed.pebble.directory)
                .env("ACME_NGINX_ZEROSSL_EAB_URL", &endpoint.url),
        )
    };
    let out = enroll(&[]);
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pass --email"), "{stderr}");
    assert!(endpoint.take().is_empty(), "nothing asked without an email");

    let out = enroll(&["--email", "ops+acme@example.org"]);
    assert_exit(&out, 0);
    assert_eq!(by_name(&json(&out), "zero.test")["status"], "issued");
    let asked = endpoint.take();
    assert_eq!(asked, vec![b"email=ops%2Bacme%40example.org".to_vec()]);
    let kept: Vec<_> = crate::util::walk(&bed.state.path().join("accounts"))
        .into_iter()
        .filter(|p| p.ends_with("eab.json"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        fs::metadata(&kept[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );
}
