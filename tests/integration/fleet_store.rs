//! The fleet's shared store against a real 3-member etcd cluster: key-value calls, create-if-
//! absent locks on leases (a crashed holder's lock frees itself after the TTL), watches, one
//! member down, quorum lost and back, and sealed values unreadable in etcd's raw data.

use std::sync::Arc;
use std::time::{Duration, Instant};

use acme_nginx::store::etcd::{Etcd, EtcdConfig, Event, Lock};
use acme_nginx::store::seal::FleetKey;

use crate::util::etcd::EtcdCluster;

fn client(c: &EtcdCluster) -> Arc<Etcd> {
    Arc::new(
        Etcd::new(&EtcdConfig {
            endpoints: c.endpoints(),
            ..EtcdConfig::default()
        })
        .unwrap(),
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn kv_locks_watches_and_faults_on_a_three_member_cluster() {
    let mut cluster = EtcdCluster::start(3);
    let etcd = client(&cluster);
    let rt = rt();
    rt.block_on(async {
        etcd.put("/t/lineages/a", b"1", None).await.unwrap();
        etcd.put("/t/lineages/b", b"2", None).await.unwrap();
        etcd.put("/t/other", b"3", None).await.unwrap();
        let (kvs, revision) = etcd.get_prefix("/t/lineages/").await.unwrap();
        assert_eq!(
            kvs.iter()
                .map(|k| (k.key.as_str(), k.value.as_slice()))
                .collect::<Vec<_>>(),
            vec![("/t/lineages/a", &b"1"[..]), ("/t/lineages/b", &b"2"[..])]
        );
        assert!(revision > 0);
        assert_eq!(etcd.get("/t/missing").await.unwrap(), None);

        // One lock holder at a time; the loser learns who holds it.
        let ttl = Duration::from_secs(2);
        let held = Lock::acquire(etcd.clone(), "/t/locks/a", "node1", ttl)
            .await
            .unwrap()
            .held()
            .unwrap();
        assert_eq!(
            Lock::acquire(etcd.clone(), "/t/locks/a", "node2", ttl)
                .await
                .unwrap()
                .holder(),
            Some("node1")
        );
        // Kept alive past its TTL while held...
        tokio::time::sleep(ttl * 2).await;
        assert!(Lock::acquire(etcd.clone(), "/t/locks/a", "node2", ttl)
            .await
            .unwrap()
            .holder()
            .is_some());
        // ...and free within the TTL after its holder crashed (no release).
        held.abandon();
        let start = Instant::now();
        let taken = loop {
            if let Some(l) = Lock::acquire(etcd.clone(), "/t/locks/a", "node2", ttl)
                .await
                .unwrap()
                .held()
            {
                break l;
            }
            assert!(
                start.elapsed() < ttl * 3,
                "the crashed holder's lock never expired"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        taken.release(&etcd).await.unwrap();
        assert_eq!(etcd.get("/t/locks/a").await.unwrap(), None);

        // A watch sees what is written after its start revision.
        let (_, rev) = etcd.get_prefix("/t/lineages/").await.unwrap();
        let watcher = {
            let etcd = etcd.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                etcd.watch("/t/lineages/", rev + 1, |e| {
                    seen.push(e);
                    seen.len() < 2
                })
                .await
                .map(|()| seen)
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        etcd.put("/t/lineages/c", b"new", None).await.unwrap();
        etcd.delete("/t/lineages/a").await.unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            matches!(&seen[0], Event::Put(kv) if kv.key == "/t/lineages/c" && kv.value == b"new")
        );
        assert_eq!(seen[1], Event::Delete("/t/lineages/a".into()));
    });

    // One member down (quorum kept): everything works through the others.
    cluster.stop_member(0);
    rt.block_on(async {
        etcd.put("/t/one-down", b"ok", None).await.unwrap();
        assert_eq!(etcd.get("/t/one-down").await.unwrap().unwrap().value, b"ok");
    });
    // Quorum lost: calls fail within the timeout, saying so.
    cluster.stop_member(1);
    rt.block_on(async {
        let start = Instant::now();
        let err = etcd.put("/t/no-quorum", b"x", None).await.unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            start.elapsed()
        );
        let text = err.to_string();
        assert!(text.contains("no etcd endpoint answered"), "{text}");
    });
    // Back: the data is there and writes work again.
    cluster.start_member(0);
    cluster.start_member(1);
    cluster.wait_healthy();
    rt.block_on(async {
        let start = Instant::now();
        loop {
            match etcd.put("/t/back", b"y", None).await {
                Ok(()) => break,
                Err(e) => assert!(start.elapsed() < Duration::from_secs(20), "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(etcd.get("/t/one-down").await.unwrap().unwrap().value, b"ok");
    });
}

#[test]
fn sealed_keys_are_not_readable_in_etcd() {
    let cluster = EtcdCluster::start(3);
    let etcd = client(&cluster);
    let key = FleetKey::from_bytes(&[42; 32]).unwrap();
    let pem = acme_nginx::acme::KeyPair::generate(acme_nginx::acme::KeyType::P256).to_pem();
    let path = "/t/lineages/a/0001/privkey";
    rt().block_on(etcd.put(path, key.seal(path, pem.as_bytes()).as_bytes(), None))
        .unwrap();
    let raw = cluster.raw_get(path);
    let raw = String::from_utf8_lossy(&raw);
    assert!(
        raw.starts_with("sealed-v1:") && !raw.contains("PRIVATE KEY"),
        "{raw}"
    );
    assert_eq!(key.open(path, raw.trim_end()).unwrap(), pem.as_bytes());
    let other = FleetKey::from_bytes(&[43; 32]).unwrap();
    assert!(other.open(path, raw.trim_end()).is_err());
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate it signs (PEM files and
/// texts).
struct Tls {
    ca: std::path::PathBuf,
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
    client_cert: String,
    client_key: String,
}

fn tls_material(dir: &std::path::Path) -> Tls {
    use acme_nginx::acme::{KeyPair, KeyType};
    let ca_key = KeyPair::generate(KeyType::P256);
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.serial_number = Some(crate::util::serial());
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "etcd test CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let leaf = |names: Vec<String>, cn: &str| {
        let key = KeyPair::generate(KeyType::P256);
        let mut p = rcgen::CertificateParams::new(names).unwrap();
        p.serial_number = Some(crate::util::serial());
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.to_pem())
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into()], "etcd");
    let (client_cert, client_key) = leaf(Vec::new(), "acme-nginx");
    let t = Tls {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert,
        client_key,
    };
    std::fs::write(&t.ca, ca_cert.pem()).unwrap();
    std::fs::write(&t.server_cert, server_cert).unwrap();
    std::fs::write(&t.server_key, server_key).unwrap();
    t
}

#[test]
fn etcd_with_tls_and_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_material(dir.path());
    let (client, peer) = (crate::util::free_port(), crate::util::free_port());
    let log = dir.path().join("etcd.log");
    let mut child = std::process::Command::new(crate::util::bin("etcd"))
        .args(["--name", "t"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &format!("https://127.0.0.1:{client}"),
            "--advertise-client-urls",
            &format!("https://127.0.0.1:{client}"),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-cluster",
            &format!("t=http://127.0.0.1:{peer}"),
            "--client-cert-auth",
        ])
        .arg("--trusted-ca-file")
        .arg(&tls.ca)
        .arg("--cert-file")
        .arg(&tls.server_cert)
        .arg("--key-file")
        .arg(&tls.server_key)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    crate::util::wait_for_port(client, &mut child, "etcd", &log);
    let _guard = crate::util::ChildGuard(child);
    let ca_pem = std::fs::read(&tls.ca).unwrap();
    let endpoints = vec![format!("https://127.0.0.1:{client}")];
    let with_cert = Etcd::new(&EtcdConfig {
        endpoints: endpoints.clone(),
        ca_pem: Some(ca_pem.clone()),
        client_cert: Some((
            tls.client_cert.into_bytes(),
            acme_nginx::secret::Secret::new(tls.client_key.into_bytes()),
        )),
        ..EtcdConfig::default()
    })
    .unwrap();
    let without = Etcd::new(&EtcdConfig {
        endpoints,
        ca_pem: Some(ca_pem),
        ..EtcdConfig::default()
    })
    .unwrap();
    rt().block_on(async {
        // The member needs a moment to elect itself after it listens.
        let start = Instant::now();
        loop {
            match with_cert.put("/t/tls", b"ok", None).await {
                Ok(()) => break,
                Err(e) => assert!(start.elapsed() < Duration::from_secs(20), "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(with_cert.get("/t/tls").await.unwrap().unwrap().value, b"ok");
        let err = without.get("/t/tls").await.unwrap_err().to_string();
        assert!(err.contains("no etcd endpoint answered"), "{err}");
    });
}

#[test]
fn etcd_users_authenticate_and_expired_tokens_are_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (crate::util::free_port(), crate::util::free_port());
    let log = dir.path().join("etcd.log");
    let mut child = std::process::Command::new(crate::util::bin("etcd"))
        .args(["--name", "a"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &format!("http://127.0.0.1:{client}"),
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{client}"),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-cluster",
            &format!("a=http://127.0.0.1:{peer}"),
            // Tokens live one second: the client must authenticate again.
            "--auth-token",
            "simple",
            "--auth-token-ttl",
            "1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    crate::util::wait_for_port(client, &mut child, "etcd", &log);
    let _guard = crate::util::ChildGuard(child);
    let endpoint = format!("http://127.0.0.1:{client}");
    let etcdctl = |args: &[&str]| {
        let start = Instant::now();
        loop {
            let out = std::process::Command::new(crate::util::bin("etcdctl"))
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &endpoint])
                .args(args)
                .output()
                .unwrap();
            if out.status.success() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    etcdctl(&["user", "add", "root:s3cret"]);
    etcdctl(&["auth", "enable"]);
    let config = |user: Option<(&str, &str)>| EtcdConfig {
        endpoints: vec![endpoint.clone()],
        user: user.map(|(u, p)| (u.to_owned(), acme_nginx::secret::Secret::new(p))),
        ..EtcdConfig::default()
    };
    let with_user = Etcd::new(&config(Some(("root", "s3cret")))).unwrap();
    let anonymous = Etcd::new(&config(None)).unwrap();
    let wrong = Etcd::new(&config(Some(("root", "nope")))).unwrap();
    rt().block_on(async {
        with_user.put("/t/auth", b"ok", None).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        // The token expired meanwhile.
        assert_eq!(
            with_user.get("/t/auth").await.unwrap().unwrap().value,
            b"ok"
        );
        let err = anonymous.get("/t/auth").await.unwrap_err().to_string();
        assert!(err.contains("refused"), "{err}");
        let err = wrong.get("/t/auth").await.unwrap_err().to_string();
        assert!(err.contains("authentication failed"), "{err}");
    });
}
