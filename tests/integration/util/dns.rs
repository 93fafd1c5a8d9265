//! A real authoritative DNS server for the dns-01 tests: BIND 9 (`named` from Debian) on a
//! loopback port, with test zones that a TSIG key may update, and `dig`/`nsupdate` to look at
//! it from outside acme-nginx.

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{bin, free_port, wait_for_port, ChildGuard};

/// The name of the TSIG key the zones accept updates signed with.
pub const KEY_NAME: &str = "acme-update";

/// A running `named` (authoritative for the test zones) and a second, recursive one that
/// forwards those zones to it and follows CNAMEs across them, as a CA's resolver does.
pub struct Bind {
    pub port: u16,
    /// The recursive resolver's port (what pebble and acme-nginx's lookups use).
    pub resolver_port: u16,
    pub dir: TempDir,
    /// The TSIG key file (BIND's format, from `tsig-keygen`).
    pub key_file: PathBuf,
    _named: ChildGuard,
    _resolver: ChildGuard,
}

/// A zone: its name and its records after the SOA and NS lines (`$ORIGIN` is the zone).
pub struct Zone<'a> {
    pub name: &'a str,
    pub records: &'a str,
    /// Extra name servers (NAME ADDRESS) besides ns1 at 127.0.0.1.
    pub extra_ns: &'a [(&'a str, &'a str)],
}

impl Zone<'_> {
    /// A zone whose every name (and the apex) is at 127.0.0.1.
    pub fn loopback(name: &str) -> Zone<'_> {
        Zone {
            name,
            records: "@ A 127.0.0.1\n* A 127.0.0.1\n",
            extra_ns: &[],
        }
    }
}

impl Bind {
    /// Starts named with `zones`, each updatable with the key [`KEY_NAME`].
    pub fn start(zones: &[Zone<'_>]) -> Bind {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = free_port();
        let key = Command::new(bin("tsig-keygen"))
            .args(["-a", "hmac-sha256", KEY_NAME])
            .output()
            .unwrap();
        assert!(key.status.success());
        let key_file = d.join("acme-update.key");
        super::write_secret(&key_file, &key.stdout);
        let mut conf = format!(
            "options {{\n directory \"{d}\";\n listen-on port {port} {{ 127.0.0.1; }};\n \
             listen-on-v6 {{ none; }};\n pid-file \"{d}/named.pid\";\n session-keyfile \"{d}/session.key\";\n \
             recursion no;\n dnssec-validation no;\n notify no;\n allow-query {{ any; }};\n}};\n\
             controls {{ }};\ninclude \"{k}\";\n",
            d = d.display(),
            k = key_file.display()
        );
        for z in zones {
            let mut ns = format!("@ NS ns1.{n}.\nns1.{n}. A 127.0.0.1\n", n = z.name);
            for (name, addr) in z.extra_ns {
                ns.push_str(&format!(
                    "@ NS {name}.{n}.\n{name}.{n}. A {addr}\n",
                    n = z.name
                ));
            }
            let file = d.join(format!("{}.zone", z.name));
            fs::write(
                &file,
                format!(
                    "$ORIGIN {n}.\n$TTL 60\n@ SOA ns1.{n}. hostmaster.{n}. 1 60 60 600 60\n{ns}{}",
                    z.records,
                    n = z.name
                ),
            )
            .unwrap();
            conf.push_str(&format!(
                "zone \"{n}\" {{ type primary; file \"{f}\"; allow-update {{ key \"{KEY_NAME}\"; }}; }};\n",
                n = z.name,
                f = file.display()
            ));
        }
        let named = start_named(d, "named", &conf, port);
        // The resolver caches nothing: every validation sees the authoritative data.
        let resolver_port = free_port();
        let rd = d.join("resolver");
        fs::create_dir(&rd).unwrap();
        let mut rconf = format!(
            "options {{\n directory \"{d}\";\n listen-on port {resolver_port} {{ 127.0.0.1; }};\n \
             listen-on-v6 {{ none; }};\n pid-file \"{d}/named.pid\";\n session-keyfile \"{d}/session.key\";\n \
             recursion yes;\n allow-recursion {{ any; }};\n dnssec-validation no;\n max-cache-ttl 0;\n max-ncache-ttl 0;\n}};\n\
             controls {{ }};\n",
            d = rd.display()
        );
        for z in zones {
            rconf.push_str(&format!(
                "zone \"{n}\" {{ type forward; forward only; forwarders {{ 127.0.0.1 port {port}; }}; }};\n",
                n = z.name
            ));
        }
        let resolver = start_named(&rd, "resolver", &rconf, resolver_port);
        let log = d.join("named.log");
        let bind = Bind {
            port,
            resolver_port,
            dir,
            key_file,
            _named: named,
            _resolver: resolver,
        };
        // Listening comes before the zones are loaded: wait for each SOA.
        let deadline = Instant::now() + Duration::from_secs(20);
        for z in zones {
            while bind.dig(z.name, "SOA").is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "named did not load {}: {}",
                    z.name,
                    fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        bind
    }

    /// The recursive resolver.
    pub fn resolver(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.resolver_port))
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `dig +short` of a name and type, asked directly.
    pub fn dig(&self, name: &str, rtype: &str) -> Vec<String> {
        let out = Command::new(bin("dig"))
            .args([
                "+short",
                "+norecurse",
                "+time=2",
                "+tries=1",
                "@127.0.0.1",
                "-p",
            ])
            .arg(self.port.to_string())
            .args([name, rtype])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with(';'))
            .map(|l| l.trim_matches('"').to_owned())
            .collect()
    }

    /// The flags that point acme-nginx's rfc2136 solver (and its lookups) at this server.
    pub fn flags(&self) -> Vec<String> {
        let mut f = vec![
            "--dns".into(),
            "rfc2136".into(),
            "--dns-server".into(),
            self.addr().to_string(),
        ];
        f.extend(["--dns-tsig-key".into(), self.key_file.display().to_string()]);
        f.extend(self.lookup_flags());
        f
    }

    /// The lookup flags alone (resolver and authoritative port).
    pub fn lookup_flags(&self) -> Vec<String> {
        vec![
            "--dns-resolver".into(),
            self.resolver().to_string(),
            "--dns-authoritative-port".into(),
            self.port.to_string(),
        ]
    }

    /// named's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }
}

/// Starts `named -g` with `conf` written into `dir`, and waits for its port.
fn start_named(dir: &std::path::Path, what: &str, conf: &str, port: u16) -> ChildGuard {
    let conf_file = dir.join("named.conf");
    fs::write(&conf_file, conf).unwrap();
    let log = dir.join("named.log");
    let child = Command::new(bin("named"))
        .args(["-g", "-c"])
        .arg(&conf_file)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Guarded before waiting: a start that times out must not leave named running.
    let mut guard = ChildGuard(child);
    wait_for_port(port, &mut guard.0, what, &log);
    guard
}

/// A running PowerDNS Authoritative server (sqlite3 backend) with its HTTP API, serving one
/// zone whose every name is at 127.0.0.1.
pub struct PowerDns {
    pub port: u16,
    pub api_url: String,
    pub api_key_file: PathBuf,
    pub dir: TempDir,
    _server: ChildGuard,
}

impl PowerDns {
    pub fn start(zone: &str) -> PowerDns {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (port, api_port) = (free_port(), free_port());
        let db = d.join("pdns.sqlite3");
        let schema =
            fs::read_to_string("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql")
                .unwrap();
        let mut sqlite = Command::new(bin("sqlite3"))
            .arg(&db)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(sqlite.stdin.as_mut().unwrap(), schema.as_bytes()).unwrap();
        drop(sqlite.stdin.take());
        assert!(sqlite.wait().unwrap().success());
        let key = "acme-nginx-test-api-key";
        fs::write(
            d.join("pdns.conf"),
            format!(
                "launch=gsqlite3\ngsqlite3-database={db}\nlocal-address=127.0.0.1\nlocal-port={port}\n\
                 api=yes\napi-key={key}\nwebserver=yes\nwebserver-address=127.0.0.1\nwebserver-port={api_port}\n\
                 webserver-allow-from=127.0.0.0/8\nsocket-dir={d}\nguardian=no\ndaemon=no\ndisable-syslog=yes\n\
                 cache-ttl=0\nnegquery-cache-ttl=0\nquery-cache-ttl=0\nzone-cache-refresh-interval=0\n",
                db = db.display(),
                d = d.display()
            ),
        )
        .unwrap();
        let pdnsutil = |args: &[&str]| {
            let out = Command::new(bin("pdnsutil"))
                .arg(format!("--config-dir={}", d.display()))
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "pdnsutil {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        pdnsutil(&["create-zone", zone, &format!("ns1.{zone}")]);
        pdnsutil(&["add-record", zone, "ns1", "A", "127.0.0.1"]);
        pdnsutil(&["add-record", zone, "@", "A", "127.0.0.1"]);
        pdnsutil(&["add-record", zone, "*", "A", "127.0.0.1"]);
        let log = d.join("pdns.log");
        let mut child = Command::new(bin("pdns_server"))
            .arg(format!("--config-dir={}", d.display()))
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_for_port(api_port, &mut child, "pdns_server API", &log);
        let guard = ChildGuard(child);
        let api_key_file = d.join("api-key");
        super::write_secret(&api_key_file, format!("{key}\n"));
        PowerDns {
            port,
            api_url: format!("http://127.0.0.1:{api_port}"),
            api_key_file,
            dir,
            _server: guard,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The flags that point acme-nginx's powerdns solver (and its lookups) at this server.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--dns".into(),
            "powerdns".into(),
            "--dns-api-url".into(),
            self.api_url.clone(),
            "--dns-api-key-file".into(),
            self.api_key_file.display().to_string(),
            "--dns-resolver".into(),
            self.addr().to_string(),
            "--dns-authoritative-port".into(),
            self.port.to_string(),
        ]
    }

    /// pdns's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("pdns.log")).unwrap_or_default()
    }
}
