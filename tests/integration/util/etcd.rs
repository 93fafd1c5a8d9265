//! A real etcd cluster for the fleet tests: Debian's `etcd` (3.4), three members on loopback
//! ports, each in its own data directory, stopped and restarted by pid.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{bin, free_port, ChildGuard};

/// A running cluster.
pub struct EtcdCluster {
    pub dir: TempDir,
    pub client_ports: Vec<u16>,
    peer_ports: Vec<u16>,
    members: Vec<Option<ChildGuard>>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster is healthy.
    pub fn start(n: usize) -> EtcdCluster {
        let dir = tempfile::tempdir().unwrap();
        let client_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let peer_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut c = EtcdCluster {
            dir,
            client_ports,
            peer_ports,
            members: (0..n).map(|_| None).collect(),
        };
        for i in 0..n {
            c.start_member(i);
        }
        c.wait_healthy();
        c
    }

    /// `http://127.0.0.1:PORT` of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.client_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    /// Starts (or restarts, on its data) member `i`.
    pub fn start_member(&mut self, i: usize) {
        let cluster: Vec<String> = self
            .peer_ports
            .iter()
            .enumerate()
            .map(|(j, p)| format!("m{j}=http://127.0.0.1:{p}"))
            .collect();
        let data = self.dir.path().join(format!("m{i}"));
        let log = self.dir.path().join(format!("m{i}.log"));
        let child = Command::new(bin("etcd"))
            .args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", self.client_ports[i]),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", self.client_ports[i]),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", self.peer_ports[i]),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", self.peer_ports[i]),
                "--initial-cluster",
                &cluster.join(","),
                "--initial-cluster-token",
                "acme-nginx-test",
                "--initial-cluster-state",
                "new",
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ])
            .stdout(Stdio::null())
            .stderr(
                fs::File::options()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        self.members[i] = Some(ChildGuard(child));
    }

    /// Stops member `i` (SIGKILL, by pid).
    pub fn stop_member(&mut self, i: usize) {
        self.members[i] = None;
    }

    /// Waits until every running member reports itself healthy.
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for (i, port) in self.client_ports.iter().enumerate() {
            if self.members[i].is_none() {
                continue;
            }
            loop {
                let out = Command::new("curl")
                    .args(["-s", "--max-time", "1"])
                    .arg(format!("http://127.0.0.1:{port}/health"))
                    .output()
                    .unwrap();
                if String::from_utf8_lossy(&out.stdout).contains("\"health\":\"true\"") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd member {i} is not healthy: {}",
                    fs::read_to_string(self.dir.path().join(format!("m{i}.log")))
                        .unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// `etcdctl get KEY --print-value-only` against the cluster: the raw stored value.
    pub fn raw_get(&self, key: &str) -> Vec<u8> {
        let out = Command::new(bin("etcdctl"))
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.endpoints().join(","),
                "get",
                key,
                "--print-value-only",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}
