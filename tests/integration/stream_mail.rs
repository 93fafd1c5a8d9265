//! TLS beyond http: a `stream` server (TLS in front of a local echo backend) and `mail` servers
//! (SMTP with STARTTLS, IMAP over TLS, `auth_http` at a local stand-in) on a real nginx, with
//! their snakeoil certificates: a failing `nginx -t` rolls the edit back, enroll proves each
//! name on every listener (STARTTLS included) and the backend is still proxied, a forced renewal
//! reaches every listener, and remove restores the snakeoil lines byte for byte. On Debian's
//! nginx 1.22 (dynamic modules, the name comment) and nginx 1.31 (stream `server_name`).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};

use acme_nginx::nginx::discovery::MailProtocol;
use acme_nginx::nginx::probe::{served_certificate_on, Endpoint, TlsStart};

use crate::util::{assert_exit, bin, by_name, free_port, json, leaf, modern_nginx, Bed};

/// A TCP backend that answers one line with the same line, then closes.
fn echo_backend() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_ok() {
                    let mut conn = conn;
                    let _ = conn.write_all(format!("echo: {line}").as_bytes());
                }
            });
        }
    });
    port
}

/// nginx's mail `auth_http` stand-in (only a login would reach it; the proofs do not log in).
fn auth_stand_in() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(
                b"HTTP/1.0 200 OK\r\nAuth-Status: Invalid login\r\nAuth-Wait: 1\r\n\r\n",
            );
        }
    });
    port
}

/// A self-signed snakeoil pair, as distributions ship for mail and stream servers.
fn snakeoil(dir: &Path) -> (String, String) {
    let key = acme_nginx::acme::KeyPair::generate(acme_nginx::acme::KeyType::P256);
    let mut params = rcgen::CertificateParams::new(vec!["snakeoil.invalid".to_owned()]).unwrap();
    params.serial_number = Some(crate::util::serial());
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (dir.join("snakeoil.pem"), dir.join("snakeoil.key"));
    fs::write(&c, cert.pem()).unwrap();
    fs::write(&k, key.to_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

struct Ports {
    stream: u16,
    smtp: u16,
    imaps: u16,
    imap: u16,
    pop3: u16,
}

fn leaf_on(port: u16, start: TlsStart, name: &str) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let at = Endpoint::from(SocketAddr::from(([127, 0, 0, 1], port)));
    rt.block_on(served_certificate_on(at, start, name, false))
        .unwrap()
}

/// What each listener serves now: the stream server for stream.test; for mail.test SMTP,
/// IMAP and POP3 after their STARTTLS, and IMAPS.
fn served(p: &Ports) -> [Vec<u8>; 5] {
    [
        leaf_on(p.stream, TlsStart::Direct, "stream.test"),
        leaf_on(p.smtp, TlsStart::Starttls(MailProtocol::Smtp), "mail.test"),
        leaf_on(p.imaps, TlsStart::Direct, "mail.test"),
        leaf_on(p.imap, TlsStart::Starttls(MailProtocol::Imap), "mail.test"),
        leaf_on(p.pop3, TlsStart::Starttls(MailProtocol::Pop3), "mail.test"),
    ]
}

/// One line through the stream server's TLS to the echo backend and back.
fn through_stream(port: u16) -> String {
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", "stream.test"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"ping\n").unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stream_and_mail(nginx: &Path, modules: &str, stream_name: &str) {
    let keep = tempfile::tempdir().unwrap();
    let (cert, key) = snakeoil(keep.path());
    let ports = Ports {
        stream: free_port(),
        smtp: free_port(),
        imaps: free_port(),
        imap: free_port(),
        pop3: free_port(),
    };
    let (echo, auth) = (echo_backend(), auth_stand_in());
    let main = format!(
        "{modules}stream {{\n    server {{\n        listen 127.0.0.1:{st} ssl;\n        {stream_name}\n        \
         ssl_certificate {cert};\n        ssl_certificate_key {key};\n        proxy_pass 127.0.0.1:{echo};\n    }}\n}}\n\
         mail {{\n    server_name mail.test;\n    auth_http 127.0.0.1:{auth}/auth;\n    \
         ssl_certificate {cert};\n    ssl_certificate_key {key};\n    \
         server {{\n        listen 127.0.0.1:{smtp};\n        protocol smtp;\n        starttls on;\n        smtp_auth plain;\n    }}\n    \
         server {{\n        listen 127.0.0.1:{imaps} ssl;\n        protocol imap;\n    }}\n    \
         server {{\n        listen 127.0.0.1:{imap};\n        protocol imap;\n        starttls only;\n    }}\n    \
         server {{\n        listen 127.0.0.1:{pop3};\n        protocol pop3;\n        starttls on;\n    }}\n}}\n",
        st = ports.stream,
        smtp = ports.smtp,
        imaps = ports.imaps,
        imap = ports.imap,
        pop3 = ports.pop3,
    );
    let http = "server {\n    listen {port};\n    server_name mail.test;\n    \
                location /.well-known/acme-challenge/ { alias {dir}/acme/; }\n}\n";
    let bed = Bed::start_main(nginx, &main, http);
    fs::create_dir_all(bed.nginx.dir.path().join("acme")).unwrap();
    let original = fs::read_to_string(&bed.nginx.conf).unwrap();
    let snake = served(&ports);
    assert!(through_stream(ports.stream).contains("echo: ping"));

    // scan lists them with their context, names and certificate.
    let out = bed.cmd("scan", &[]);
    assert_exit(&out, 0);
    let scan = json(&out);
    let servers = scan["servers"].as_array().unwrap();
    let stream = servers.iter().find(|s| s["context"] == "stream").unwrap();
    assert_eq!(stream["enrollable"], serde_json::json!(["stream.test"]));
    assert_eq!(stream["ssl_certificate"], cert.as_str());
    let mail: Vec<_> = servers.iter().filter(|s| s["context"] == "mail").collect();
    let starttls: Vec<&serde_json::Value> = mail.iter().map(|s| &s["starttls"]).collect();
    assert_eq!(
        starttls,
        [
            &"smtp".into(),
            &serde_json::Value::Null,
            &"imap".into(),
            &"pop3".into()
        ]
    );

    // nginx -t refusing the edit: every file back as it was, the snakeoil still served.
    let wrapper = bed.nginx_wrapper("echo 'emerg: refused by the test' >&2; exit 1");
    let out = bed.cmd("enroll", &["--nginx-bin", wrapper.to_str().unwrap()]);
    assert_exit(&out, 1);
    assert_eq!(fs::read_to_string(&bed.nginx.conf).unwrap(), original);
    assert!(served(&ports) == snake, "the snakeoil is still served");

    // enroll: both names, proven on every listener, the backend still proxied.
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 0);
    let report = json(&out);
    for name in ["stream.test", "mail.test"] {
        let status = &by_name(&report, name)["status"];
        assert!(status == "installed" || status == "issued", "{report}");
    }
    let live = |name: &str| leaf(&bed.live(name).join("fullchain.pem"));
    let both =
        |stream: Vec<u8>, mail: Vec<u8>| [stream, mail.clone(), mail.clone(), mail.clone(), mail];
    let first = both(live("stream.test"), live("mail.test"));
    assert!(
        served(&ports) == first,
        "every listener serves the new certificates"
    );
    assert!(through_stream(ports.stream).contains("echo: ping"));
    // The mail servers inherited the certificate from mail {}: each got its own lines (and
    // the http block its HTTPS listener).
    let conf = fs::read_to_string(&bed.nginx.conf).unwrap();
    assert_eq!(
        conf.matches("mail.test/live/fullchain.pem").count(),
        5,
        "{conf}"
    );

    // A forced renewal reaches every listener.
    let out = bed.cmd("renew", &["--force"]);
    assert_exit(&out, 0);
    let report = json(&out);
    for name in ["stream.test", "mail.test"] {
        assert_eq!(by_name(&report, name)["status"], "renewed", "{report}");
    }
    let renewed = both(live("stream.test"), live("mail.test"));
    assert!(renewed[0] != first[0] && renewed[1] != first[1]);
    assert!(
        served(&ports) == renewed,
        "every listener serves the renewal"
    );

    // remove: the snakeoil lines back, byte for byte.
    let out = bed.cmd("remove", &["stream.test", "mail.test"]);
    assert_exit(&out, 0);
    assert_eq!(fs::read_to_string(&bed.nginx.conf).unwrap(), original);
    assert!(served(&ports) == snake, "the snakeoil is served again");
    assert!(through_stream(ports.stream).contains("echo: ping"));
}

#[test]
fn stream_and_mail_servers_on_debian_nginx_with_the_name_comment() {
    stream_and_mail(
        &bin("nginx"),
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
         load_module /usr/lib/nginx/modules/ngx_mail_module.so;\n",
        "# acme-nginx: server_name stream.test",
    );
}

#[test]
fn stream_and_mail_servers_on_nginx_mainline_with_stream_server_name() {
    stream_and_mail(&modern_nginx(), "", "server_name stream.test;");
}
