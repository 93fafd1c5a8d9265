//! A fleet on loopback: a 3-member etcd cluster, three nginx masters (the nodes, each with its
//! own state directory), haproxy in front of them on pebble's http-01 port (round robin, as a
//! load balancer), pebble, and a fleet key. Each node's `acme-nginx` commands and `watch`
//! agents are built here.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::etcd::EtcdCluster;
use super::{free_port, run, ChildGuard, Nginx, Pebble, PebbleOptions};

/// The name the fleet serves.
pub const NAME: &str = "fleet.test";

/// The block every node has from the start: the default server, which serves its challenge
/// directory (where the agent writes published answers for names it has no block for yet).
const DEFAULT_BLOCK: &str = "server {\n    listen 127.0.0.1:{port} default_server;\n    server_name _;\n    \
    location /.well-known/acme-challenge/ { alias {dir}/acme/; }\n    location / { return 404; }\n}\n";

/// The default server of a stateless fleet: no challenge location of its own.
const STATELESS_DEFAULT_BLOCK: &str =
    "server {\n    listen 127.0.0.1:{port} default_server;\n    server_name _;\n    \
    location / { return 404; }\n}\n";

/// The site's block.
pub fn site_block(port: u16) -> String {
    block_for(port, NAME)
}

/// A block for `name`.
pub fn block_for(port: u16, name: &str) -> String {
    format!(
        "server {{\n    listen 127.0.0.1:{port};\n    server_name {name};\n    \
         location /.well-known/acme-challenge/ {{ alias {{dir}}/acme/; }}\n    location / {{ return 200 \"fleet\\n\"; }}\n}}\n"
    )
}

/// A block for `name` with no challenge location (acme-nginx includes its snippet).
fn stateless_block_for(port: u16, name: &str) -> String {
    format!(
        "server {{\n    listen 127.0.0.1:{port};\n    server_name {name};\n    \
         location / {{ return 200 \"fleet\\n\"; }}\n}}\n"
    )
}

/// One node.
pub struct Node {
    pub name: String,
    pub nginx: Nginx,
    pub https_port: u16,
    pub state: TempDir,
    agent: Option<ChildGuard>,
}

/// The fleet test bed.
pub struct FleetBed {
    pub etcd: EtcdCluster,
    pub nodes: Vec<Node>,
    pub pebble: Pebble,
    pub key_dir: TempDir,
    /// Every node answers http-01 statelessly (`--fleet-challenge stateless`).
    pub stateless: bool,
    _balancer: ChildGuard,
}

impl FleetBed {
    pub fn start() -> FleetBed {
        FleetBed::start_as(false)
    }

    /// A fleet whose nodes answer http-01 statelessly: no block has a challenge location of
    /// its own, and every node's commands and agent say `--fleet-challenge stateless`.
    pub fn start_stateless() -> FleetBed {
        FleetBed::start_as(true)
    }

    fn start_as(stateless: bool) -> FleetBed {
        let etcd = EtcdCluster::start(3);
        let key_dir = tempfile::tempdir().unwrap();
        let key = key_dir.path().join("fleet.key");
        let bytes: Vec<u8> = (0..32).map(|_| rand_byte()).collect();
        fs::write(&key, base64_encode(&bytes)).unwrap();
        fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let nodes: Vec<Node> = (1..=3)
            .map(|i| {
                let nginx = Nginx::start(if stateless {
                    STATELESS_DEFAULT_BLOCK
                } else {
                    DEFAULT_BLOCK
                });
                if !stateless {
                    fs::create_dir_all(nginx.dir.path().join("acme")).unwrap();
                }
                Node {
                    name: format!("n{i}"),
                    nginx,
                    https_port: free_port(),
                    state: tempfile::tempdir().unwrap(),
                    agent: None,
                }
            })
            .collect();
        // haproxy in front of the three nginx, on the port pebble validates http-01 on.
        let port = free_port();
        let cfg = key_dir.path().join("haproxy.cfg");
        let servers: String = nodes
            .iter()
            .map(|n| format!("  server {} 127.0.0.1:{}\n", n.name, n.nginx.port))
            .collect();
        fs::write(
            &cfg,
            format!(
                "defaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
                 frontend fe\n  bind 127.0.0.1:{port}\n  default_backend nodes\n\
                 backend nodes\n  balance roundrobin\n{servers}"
            ),
        )
        .unwrap();
        let balancer = super::start_haproxy(&cfg, port);
        let mut opts = PebbleOptions::http_port(port);
        opts.nonce_reject = 0;
        let pebble = Pebble::start(opts);
        FleetBed {
            etcd,
            nodes,
            pebble,
            key_dir,
            stateless,
            _balancer: balancer,
        }
    }

    pub fn key_file(&self) -> PathBuf {
        self.key_dir.path().join("fleet.key")
    }

    /// The fleet's shared store as node `node` opens it (with the fleet key), for a test that
    /// does what a node does.
    pub fn fleet_as(&self, node: &str) -> acme_nginx::lifecycle::fleet::Fleet {
        acme_nginx::lifecycle::fleet::Fleet::open(&acme_nginx::lifecycle::fleet::FleetConfig {
            etcd: acme_nginx::store::etcd::EtcdConfig {
                endpoints: self.etcd.endpoints(),
                ..Default::default()
            },
            prefix: "/acme-nginx/".into(),
            node: node.into(),
            key_file: self.key_file(),
            address: String::new(),
            silent_after: acme_nginx::lifecycle::fleet::NODE_STALE_AFTER,
            stateless: false,
        })
        .unwrap()
    }

    /// `acme-nginx SUB` on node `i` (0-based) with its settings and the fleet's.
    pub fn command(&self, i: usize, sub: &str, extra: &[&str]) -> Command {
        let n = &self.nodes[i];
        let dir = n.nginx.dir.path();
        let config = n.state.path().join("config.toml");
        if !config.exists() {
            fs::write(&config, "# every setting comes from flags\n").unwrap();
        }
        let mut cmd = self.pebble.cli();
        // A subcommand of a command ("fleet forget") comes before the options.
        cmd.arg("--json")
            .args(sub.split(' '))
            .arg("--nginx-conf")
            .arg(&n.nginx.conf)
            .arg("--nginx-prefix")
            .arg(dir)
            .arg("--state-dir")
            .arg(n.state.path())
            .arg("--config-file")
            .arg(&config)
            .arg("--hooks-dir")
            .arg(dir.join("hooks"))
            .args(["--http-port", &n.nginx.port.to_string()])
            .args(["--etcd", &self.etcd.endpoints().join(",")])
            .args(["--node", &n.name])
            .arg("--fleet-key-file")
            .arg(self.key_file())
            .args(["--fleet-address", &format!("127.0.0.1:{}", n.nginx.port)]);
        if sub != "status" {
            cmd.args(["--https-port", &n.https_port.to_string()]);
        }
        if self.stateless {
            cmd.args(["--fleet-challenge", "stateless"]);
        }
        if sub == "enroll" || sub == "watch" {
            cmd.args(["--non-interactive", "--agree-tos"])
                .arg("--challenge-snippet")
                .arg(dir.join("snippets/acme-challenge.conf"));
        }
        cmd.args(extra);
        cmd
    }

    pub fn cmd(&self, i: usize, sub: &str, extra: &[&str]) -> Output {
        let out = run(self
            .command(i, sub, extra)
            .env("ACME_NGINX_LOG", "acme_nginx=info"));
        let log = self.nodes[i].state.path().join("commands.log");
        let mut f = fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        std::io::Write::write_all(&mut f, format!("== {sub} {extra:?}\n").as_bytes()).unwrap();
        std::io::Write::write_all(&mut f, &out.stderr).unwrap();
        out
    }

    /// Starts node `i`'s agent (`acme-nginx watch`) and waits until it registered.
    pub fn start_agent(&mut self, i: usize) {
        self.start_agent_with(i, &[]);
    }

    /// Starts node `i`'s agent with more options and waits until it registered.
    pub fn start_agent_with(&mut self, i: usize, extra: &[&str]) {
        let log = self.nodes[i].state.path().join("agent.log");
        let child: Child = self
            .command(i, "watch", extra)
            .env("ACME_NGINX_LOG", "acme_nginx=info")
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
        self.nodes[i].agent = Some(ChildGuard(child));
        let key = format!("/acme-nginx/nodes/{}", self.nodes[i].name);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.etcd.raw_get(&key).is_empty() {
            assert!(
                Instant::now() < deadline,
                "agent {i} did not register: {}",
                self.agent_log(i)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops node `i`'s agent (SIGKILL, by pid).
    pub fn stop_agent(&mut self, i: usize) {
        self.nodes[i].agent = None;
    }

    pub fn agent_log(&self, i: usize) -> String {
        fs::read_to_string(self.nodes[i].state.path().join("agent.log")).unwrap_or_default()
    }

    /// Adds the site's block to node `i`'s configuration (an agent sees the change).
    pub fn add_site(&self, i: usize) {
        self.add_sites(i, &[NAME]);
    }

    /// Adds a block for each name to node `i`'s configuration, in one write.
    pub fn add_sites(&self, i: usize, names: &[&str]) {
        let n = &self.nodes[i];
        let conf = fs::read_to_string(&n.nginx.conf).unwrap();
        let block: String = names
            .iter()
            .map(|name| {
                if self.stateless {
                    stateless_block_for(n.nginx.port, name)
                } else {
                    block_for(n.nginx.port, name)
                }
            })
            .collect::<String>()
            .replace("{dir}", &n.nginx.dir.path().display().to_string());
        let at = conf.trim_end().rfind('}').unwrap();
        fs::write(
            &n.nginx.conf,
            format!("{}{block}{}", &conf[..at], &conf[at..]),
        )
        .unwrap();
    }

    /// The leaf node `i` serves for the name over TLS, if it answers.
    pub fn served(&self, i: usize) -> Option<Vec<u8>> {
        self.served_for(i, NAME)
    }

    /// The leaf node `i` serves for `name` over TLS, if it answers.
    pub fn served_for(&self, i: usize, name: &str) -> Option<Vec<u8>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", self.nodes[i].https_port)
            .parse()
            .unwrap();
        rt.block_on(acme_nginx::nginx::probe::served_certificate(addr, name))
            .ok()
    }

    /// A bed where node 1 enrolled the site and every node serves it: agents on nodes 2 and 3
    /// (node 1 runs commands only), the site on all three.
    pub fn enrolled() -> FleetBed {
        let mut bed = FleetBed::start();
        bed.start_agent(1);
        bed.start_agent(2);
        bed.add_site(0);
        crate::util::assert_exit(&bed.cmd(0, "enroll", &[]), 0);
        bed.add_site(1);
        bed.add_site(2);
        bed.wait_all_serve(&bed.live_leaf(0), Duration::from_secs(30));
        bed
    }

    /// Waits until every node serves `leaf`; how long it took.
    pub fn wait_all_serve(&self, leaf: &[u8], within: Duration) -> Duration {
        let start = Instant::now();
        self.wait_served("the certificate", within, |served| {
            served
                .iter()
                .all(|s| s.as_deref() == Some(leaf))
                .then_some(())
        });
        start.elapsed()
    }

    /// Waits until every node serves one and the same leaf, other than `old` when given;
    /// returns it.
    pub fn wait_all_serve_new(&self, old: Option<&[u8]>, within: Duration) -> Vec<u8> {
        self.wait_served("the same new certificate", within, |served| {
            let leaf = served[0].as_ref()?;
            (Some(leaf.as_slice()) != old && served.iter().all(|s| *s == served[0]))
                .then(|| leaf.clone())
        })
    }

    /// Asks every node for the leaf it serves until `done` makes something of the answers;
    /// fails after `within` with node 1's commands and the agents' logs.
    fn wait_served<T>(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&[Option<Vec<u8>>]) -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            let served: Vec<_> = (0..self.nodes.len()).map(|i| self.served(i)).collect();
            if let Some(t) = done(&served) {
                return t;
            }
            assert!(
                start.elapsed() < within,
                "not every node serves {what}; node 1's commands:\n{}\nagents:\n{}\n---\n{}\n---\n{}",
                fs::read_to_string(self.nodes[0].state.path().join("commands.log")).unwrap_or_default(),
                self.agent_log(0),
                self.agent_log(1),
                self.agent_log(2)
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Node `i`'s live leaf.
    pub fn live_leaf(&self, i: usize) -> Vec<u8> {
        self.live_leaf_for(i, NAME)
    }

    /// Node `i`'s live leaf of a lineage.
    pub fn live_leaf_for(&self, i: usize, name: &str) -> Vec<u8> {
        super::leaf(
            &self.nodes[i]
                .state
                .path()
                .join("certs")
                .join(name)
                .join("live/fullchain.pem"),
        )
    }
}

fn rand_byte() -> u8 {
    let mut b = [0u8; 1];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    b[0]
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}
