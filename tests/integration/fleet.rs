//! Fleet mode end to end: three nginx nodes behind haproxy (round robin, on pebble's http-01
//! port), a 3-member etcd cluster, `acme-nginx watch` as the agent on the other nodes.

use std::time::{Duration, Instant};

use crate::util::fleet::{FleetBed, NAME};
use crate::util::{assert_exit, by_name, json};

#[test]
fn one_enroll_gives_every_node_the_certificate_and_a_node_that_does_not_serve_is_named() {
    let mut bed = FleetBed::start();
    bed.start_agent(1);
    bed.start_agent(2);
    // Node 1 has the site; the agents of nodes 2 and 3 answer the challenge from their
    // default servers (published through etcd), so any node the balancer picks serves it.
    bed.add_site(0);
    let out = bed.cmd(0, "enroll", &[]);
    assert_exit(&out, 0);
    let report = json(&out);
    assert_eq!(by_name(&report, NAME)["status"], "issued", "{report}");
    let leaf = bed.live_leaf(0);

    // Nodes 2 and 3 get the site: their agents install the fleet's certificate, no order.
    let orders = bed.pebble.log().matches("POST /order-plz").count();
    bed.add_site(1);
    bed.add_site(2);
    let took = bed.wait_all_serve(&leaf, Duration::from_secs(30));
    eprintln!("fleet: nodes 2 and 3 serve the certificate {took:?} after their site appeared");
    assert_eq!(bed.pebble.log().matches("POST /order-plz").count(), orders);

    // A renewal on node 1 reaches every node through the agents' watch.
    let out = bed.cmd(0, "renew", &["--force", NAME]);
    assert_exit(&out, 0);
    let issued = Instant::now();
    let renewed = bed.live_leaf(0);
    assert_ne!(renewed, leaf);
    bed.wait_all_serve(&renewed, Duration::from_secs(30));
    eprintln!(
        "fleet: issuance to the last of 3 nodes serving: {:?}",
        issued.elapsed()
    );

    // status --fleet: every node reported the current serial.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let st = json(&bed.cmd(0, "status", &["--fleet"]));
        let lagging = st["lineages"][0]["nodes"]
            .as_array()
            .is_none_or(|n| n.len() != 3 || n.iter().any(|n| n["lagging"] == true));
        if !lagging {
            break st;
        }
        assert!(Instant::now() < deadline, "{st}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["lineages"][0]["name"], NAME);

    // etcd holds no private key in clear.
    let record =
        String::from_utf8(bed.etcd.raw_get(&format!("/acme-nginx/lineages/{NAME}"))).unwrap();
    assert!(
        record.contains("\"key_sealed\":\"sealed-v1:") && !record.contains("PRIVATE KEY"),
        "{record}"
    );
    let accounts = std::process::Command::new(crate::util::bin("etcdctl"))
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &bed.etcd.endpoints().join(","),
            "get",
            "--prefix",
            "/acme-nginx/accounts/",
        ])
        .output()
        .unwrap();
    let accounts = String::from_utf8_lossy(&accounts.stdout);
    assert!(
        accounts.contains("sealed-v1:") && !accounts.contains("PRIVATE KEY"),
        "{accounts}"
    );

    // Node 3's agent stops: the fleet-wide preflight names it, before the CA validates.
    bed.stop_agent(2);
    let out = bed.cmd(0, "renew", &["--force", NAME]);
    assert_exit(&out, 1);
    let error = by_name(&json(&out), NAME)["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.contains("n3 (127.0.0.1:") && error.contains("not every node"),
        "{error}"
    );
}
