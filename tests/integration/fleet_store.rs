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
            .unwrap();
        assert_eq!(
            Lock::acquire(etcd.clone(), "/t/locks/a", "node2", ttl)
                .await
                .unwrap()
                .unwrap_err(),
            "node1"
        );
        // Kept alive past its TTL while held...
        tokio::time::sleep(ttl * 2).await;
        assert!(Lock::acquire(etcd.clone(), "/t/locks/a", "node2", ttl)
            .await
            .unwrap()
            .is_err());
        // ...and free within the TTL after its holder crashed (no release).
        held.abandon();
        let start = Instant::now();
        let taken = loop {
            if let Ok(l) = Lock::acquire(etcd.clone(), "/t/locks/a", "node2", ttl)
                .await
                .unwrap()
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
