//! `HTTPS_PROXY`: the ACME traffic goes through an HTTP CONNECT proxy when the environment
//! names one (reqwest's system proxy support); the loopback checks of nginx do not.

use crate::util::{assert_exit, by_name, json, Bed};

/// A CONNECT proxy on loopback that records each target it tunnels to.
fn connect_proxy() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().unwrap());
                let mut first = String::new();
                reader.read_line(&mut first).unwrap();
                loop {
                    let mut l = String::new();
                    if reader.read_line(&mut l).unwrap() == 0 || l == "\r\n" {
                        break;
                    }
                }
                let target = first.split_whitespace().nth(1).unwrap_or("").to_owned();
                log.lock().unwrap().push(first.trim().to_owned());
                let upstream = std::net::TcpStream::connect(&target).unwrap();
                let mut c = client;
                c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .unwrap();
                let (mut c2, mut u2) = (c.try_clone().unwrap(), upstream.try_clone().unwrap());
                let mut up = upstream;
                std::thread::spawn(move || std::io::copy(&mut u2, &mut c2).ok());
                std::io::copy(&mut reader, &mut up).ok();
            });
        }
    });
    (port, seen)
}

#[test]
fn https_proxy_carries_the_acme_traffic() {
    let bed = Bed::start(
        "server {\n    listen 127.0.0.1:{port};\n    server_name proxied.leave.test;\n    \
         location / { return 200 \"ok\\n\"; }\n}\n",
    );
    let (port, seen) = connect_proxy();
    let out = crate::util::run(
        bed.command("enroll", &[])
            .env("HTTPS_PROXY", format!("http://127.0.0.1:{port}"))
            .env_remove("NO_PROXY")
            .env_remove("no_proxy"),
    );
    assert_exit(&out, 0);
    assert_eq!(
        by_name(&json(&out), "proxied.leave.test")["status"],
        "issued"
    );
    // Every request to the CA went through the proxy; the checks of nginx itself did not.
    let seen = seen.lock().unwrap().clone();
    let ca = bed
        .pebble
        .directory
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        !seen.is_empty() && seen.iter().all(|l| *l == format!("CONNECT {ca} HTTP/1.1")),
        "{seen:?}"
    );
}
