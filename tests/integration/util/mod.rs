//! The test bed: real pebble, pebble-challtestsrv and nginx processes on loopback, each in its
//! own temporary directory, each killed (by its own pid) when its guard drops. Binaries come
//! from `tests/testbed/setup.sh` ($ACME_NGINX_TESTBED, default `.testbed/` in the repo).

pub mod dns;
pub mod etcd;
pub mod fleet;
pub mod netns;

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use acme_nginx::acme::{self, KeyPair, KeyType};
use tempfile::TempDir;

/// How long a child process gets to start listening.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// The pebble EAB keys configured when `eab` is on (kid, base64url HMAC key).
pub const EAB_KEYS: &[(&str, &str)] = &[
    (
        "kid-1",
        "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W",
    ),
    (
        "kid-2",
        "b10lLJs8l1GPIzsLP0s6pMt8O0XVGnfTaCeROxQM0BIt2XrJMDHJZBM5NuQmQJQH",
    ),
];

/// A random positive serial number (rcgen without its crypto feature needs one given).
pub fn serial() -> rcgen::SerialNumber {
    use rand_core::RngCore;
    let mut b = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut b);
    b[0] &= 0x7f;
    rcgen::SerialNumber::from_slice(&b)
}

pub fn testbed_dir() -> PathBuf {
    std::env::var_os("ACME_NGINX_TESTBED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".testbed"))
}

/// Writes a secret file as acme-nginx requires one: mode 0600 (owned by whoever runs the tests).
pub fn write_secret(path: &Path, contents: impl AsRef<[u8]>) {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut f, contents.as_ref()).unwrap();
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// Finds a binary: the test bed first, then the usual system places.
pub fn bin(name: &str) -> PathBuf {
    let mut places = vec![
        testbed_dir().join("root/usr/bin"),
        testbed_dir().join("root/usr/sbin"),
    ];
    places.extend(
        [
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ]
        .map(PathBuf::from),
    );
    for dir in places {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found: run tests/testbed/setup.sh (as root) first");
}

/// A free TCP port on 127.0.0.1, never one handed out before in this test process: a port
/// chosen now and bound later (an HTTPS port acme-nginx adds) must not go to another test's
/// listener meanwhile.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn wait_for_port(port: u16, child: &mut Child, what: &str, log: &Path) {
    let start = Instant::now();
    while start.elapsed() < STARTUP_TIMEOUT {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited with {status}: {}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{what} did not listen on {port}: {}",
        fs::read_to_string(log).unwrap_or_default()
    );
}

/// A child process killed by its own pid when dropped.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Already gone is fine: the guard only makes sure.
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// How long an nginx master gets to stop its workers and exit.
const NGINX_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A process group started by a test (a shell loop run as another user through `runuser`, say):
/// on drop the whole group gets SIGKILL, so no grandchild outlives the test.
#[derive(Debug)]
pub struct GroupGuard(pub Child);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        let pgid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        killpg(pgid, Signal::SIGKILL).ok();
        self.0.wait().ok();
    }
}

/// An nginx master in its own process group, stopped the way nginx stops: SIGTERM to the master,
/// which stops its workers and exits; only if it has not exited in time does the whole group get
/// SIGKILL, so no worker is ever left behind reparented to init.
#[derive(Debug)]
pub struct NginxGuard(pub Child);

impl Drop for NginxGuard {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, killpg, Signal};
        use nix::unistd::Pid;
        let pid = Pid::from_raw(self.0.id() as i32);
        if kill(pid, Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + NGINX_STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Workers share the master's process group; whatever is left of it goes now.
        killpg(pid, Signal::SIGKILL).ok();
        self.0.wait().ok();
        let deadline = Instant::now() + NGINX_STOP_TIMEOUT;
        while killpg(pid, None).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Pebble settings.
#[derive(Debug, Clone)]
pub struct PebbleOptions {
    /// The port pebble's VA connects to for http-01 (point it at nginx).
    pub http_port: u16,
    /// Percentage of nonces pebble rejects.
    pub nonce_reject: u32,
    /// Require external account binding.
    pub eab: bool,
    /// Validity of default-profile certificates.
    pub validity_secs: u64,
    /// Alternate root chains pebble offers (Link rel="alternate").
    pub alternate_roots: u32,
    /// The DNS server pebble resolves and validates with (a real authoritative server);
    /// pebble-challtestsrv, resolving every name to loopback, when None.
    pub dns_server: Option<std::net::SocketAddr>,
    /// The CAA identities pebble lists in its directory (pebble.letsencrypt.org when empty).
    pub caa_identities: Vec<String>,
}

impl PebbleOptions {
    pub fn http_port(http_port: u16) -> Self {
        Self {
            http_port,
            nonce_reject: 5,
            eab: false,
            validity_secs: 90 * 86400,
            alternate_roots: 0,
            dns_server: None,
            caa_identities: Vec::new(),
        }
    }
}

/// A running pebble with its DNS server (pebble-challtestsrv, every name at 127.0.0.1).
pub struct Pebble {
    pub directory: String,
    /// The port pebble validates http-01 on (what acme-nginx is told with ACME_NGINX_HTTP_PORT).
    pub http_port: u16,
    /// Trust anchor for pebble's own HTTPS (what `--ca-file` takes).
    pub ca_file: PathBuf,
    pub management: String,
    pub dns_management: String,
    /// pebble-challtestsrv's DNS server (what `--dns-resolver` takes to see its records).
    pub dns: std::net::SocketAddr,
    pub dir: TempDir,
    _pebble: ChildGuard,
    _dns: ChildGuard,
}

/// Writes a test CA and a localhost certificate it signs; returns (ca.pem, cert.pem, key.pem).
pub fn make_tls_cert(dir: &Path, names: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate(KeyType::P256);
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.serial_number = Some(serial());
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "acme-nginx test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate(KeyType::P256);
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    params.serial_number = Some(serial());
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (ca, crt, k) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    fs::write(&ca, ca_cert.pem()).unwrap();
    fs::write(&crt, cert.pem()).unwrap();
    fs::write(&k, key.to_pem()).unwrap();
    (ca, crt, k)
}

impl Pebble {
    pub fn start(opts: PebbleOptions) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = make_tls_cert(dir.path(), &["localhost", "127.0.0.1"]);
        let (dns_port, dns_mgmt) = (free_port(), free_port());
        let dns_log = dir.path().join("challtestsrv.log");
        let mut dns = Command::new(bin("pebble-challtestsrv"))
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", ""])
            .stdout(fs::File::create(&dns_log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(dns_mgmt, &mut dns, "pebble-challtestsrv", &dns_log);
        let dns = ChildGuard(dns);

        let (port, mgmt) = (free_port(), free_port());
        let mut eab_keys = String::new();
        for (i, (kid, k)) in EAB_KEYS.iter().enumerate() {
            let _ = write!(
                eab_keys,
                "{}\"{kid}\": \"{k}\"",
                if i > 0 { ", " } else { "" }
            );
        }
        let config = format!(
            r#"{{"pebble": {{
  "listenAddress": "127.0.0.1:{port}",
  "managementListenAddress": "127.0.0.1:{mgmt}",
  "certificate": "{cert}", "privateKey": "{key}",
  "httpPort": {http}, "tlsPort": {tls},
  "ocspResponderURL": "",
  "externalAccountBindingRequired": {eab},
  "externalAccountMACKeys": {{ {eab_keys} }},
  "domainBlocklist": ["blocked-domain.example"],
  "caaIdentities": {caa},
  "certificateValidityPeriod": {validity},
  "profiles": {{
    "default": {{"description": "The default profile", "validityPeriod": {validity}}},
    "shortlived": {{"description": "Six days", "validityPeriod": 518400}}
  }}
}}}}"#,
            cert = cert.display(),
            key = key.display(),
            http = opts.http_port,
            tls = free_port(),
            eab = opts.eab,
            validity = opts.validity_secs,
            caa = serde_json::to_string(&opts.caa_identities).unwrap(),
        );
        let cfg = dir.path().join("pebble.json");
        fs::write(&cfg, config).unwrap();
        let log = dir.path().join("pebble.log");
        let mut child = Command::new(bin("pebble"))
            .arg("-config")
            .arg(&cfg)
            .args([
                "-dnsserver",
                &opts
                    .dns_server
                    .map_or(format!("127.0.0.1:{dns_port}"), |a| a.to_string()),
            ])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", opts.nonce_reject.to_string())
            .env("PEBBLE_AUTHZREUSE", "0")
            .env("PEBBLE_ALTERNATE_ROOTS", opts.alternate_roots.to_string())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, &mut child, "pebble", &log);
        wait_for_port(mgmt, &mut child, "pebble management", &log);
        Pebble {
            directory: format!("https://127.0.0.1:{port}/dir"),
            http_port: opts.http_port,
            ca_file: ca,
            management: format!("https://127.0.0.1:{mgmt}"),
            dns_management: format!("http://127.0.0.1:{dns_mgmt}"),
            dns: std::net::SocketAddr::from(([127, 0, 0, 1], dns_port)),
            dir,
            _pebble: ChildGuard(child),
            _dns: dns,
        }
    }

    /// An HTTP client that trusts pebble's API certificate.
    pub fn http(&self) -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pem = fs::read(&self.ca_file).unwrap();
        let tls = acme::tls_config(Some(&pem)).unwrap();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .unwrap()
    }

    /// Pebble's issuing root (PEM), for `openssl verify`.
    pub async fn root_pem(&self) -> String {
        self.root_pem_n(0).await
    }

    /// Pebble's root number `n` (0 is the default chain's, others are alternates).
    pub async fn root_pem_n(&self, n: u32) -> String {
        self.http()
            .get(format!("{}/roots/{n}", self.management))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Writes the root next to pebble's files and returns its path.
    pub async fn root_file(&self) -> PathBuf {
        let p = self.dir.path().join("issuer-root.pem");
        fs::write(&p, self.root_pem().await).unwrap();
        p
    }

    /// A library client for this pebble.
    pub async fn client(&self) -> acme::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cfg = acme::ClientConfig::with_ca_file(&self.ca_file).unwrap();
        acme::Client::new(&self.directory, &cfg).await.unwrap()
    }

    /// A fresh account on this pebble.
    pub async fn account(&self) -> acme::Account {
        let opts = acme::NewAccountOptions {
            contact: vec!["mailto:test@example.org".into()],
            terms_of_service_agreed: true,
            ..Default::default()
        };
        acme::Account::create(self.client().await, KeyPair::generate(KeyType::P384), &opts)
            .await
            .unwrap()
            .0
    }

    /// Posts `body` (JSON) to pebble-challtestsrv's management `path` (`add-a`, `add-caa`, ...).
    pub fn mock_dns(&self, path: &str, body: &str) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let status = rt.block_on(async {
            self.http()
                .post(format!("{}/{path}", self.dns_management))
                .body(body.to_owned())
                .send()
                .await
                .unwrap()
                .status()
        });
        assert!(status.is_success(), "challtestsrv {path} {body}: {status}");
    }

    /// How many orders pebble created (its log says "There are now N orders in the db").
    pub fn orders(&self) -> usize {
        self.log().matches("orders in the db").count()
    }

    /// The text of pebble's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// An `acme-nginx` command with `--directory`, `--ca-file` and `--http-port` set for this
    /// pebble, and its pebble-challtestsrv as the resolver for lookups (CAA before each
    /// order): the test names are in no other DNS, and the machine's resolver may not answer.
    pub fn cli(&self) -> Command {
        let mut c = acme_nginx_cmd();
        c.env("ACME_NGINX_DIRECTORY", &self.directory)
            .env("ACME_NGINX_CA_FILE", &self.ca_file)
            .env("ACME_NGINX_HTTP_PORT", self.http_port.to_string())
            .env("ACME_NGINX_DNS_RESOLVER", self.dns.to_string());
        c
    }
}

/// The `acme-nginx` binary under test, with no CA settings from the environment, and the
/// public-address preflight off: the test names are in no public DNS (the tests of that
/// preflight turn it on with `--public-preflight true` and a resolver of their own).
pub fn acme_nginx_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_acme-nginx"));
    c.env_remove("ACME_NGINX_DIRECTORY")
        .env_remove("ACME_NGINX_CA_FILE")
        .env_remove("ACME_NGINX_HTTP_PORT")
        .env_remove("ACME_NGINX_DNS_RESOLVER")
        .env("ACME_NGINX_PUBLIC_PREFLIGHT", "false");
    c
}

/// haproxy running the configuration `cfg`, once it listens on `port` (its log beside `cfg`);
/// stopped when the guard drops.
pub fn start_haproxy(cfg: &Path, port: u16) -> ChildGuard {
    let log = cfg.with_file_name("haproxy.log");
    let mut child = Command::new(bin("haproxy"))
        .args(["-db", "-f"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_port(port, &mut child, "haproxy", &log);
    ChildGuard(child)
}

/// Every file below `dir` (a missing directory has none).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Runs a command, returning its output (never panics on a failing exit).
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

/// Runs a command and asserts it exits 0; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A running nginx master (daemon off, so it is our child) with its own prefix directory.
pub struct Nginx {
    pub dir: TempDir,
    pub port: u16,
    pub conf: PathBuf,
    /// The nginx binary this master runs (Debian's, or the mainline one the bed builds).
    pub bin: PathBuf,
    child: NginxGuard,
}

/// nginx mainline (1.31, with nginx's ACME module) built from `../shared/nginx-src/` by
/// `tests/testbed/setup.sh`: newer syntax (`http2 on`, `listen ... quic`) and coexistence with
/// the module.
pub fn modern_nginx() -> PathBuf {
    let p = testbed_dir().join("nginx-1.31/sbin/nginx");
    assert!(
        p.is_file(),
        "{} not built: run tests/testbed/setup.sh",
        p.display()
    );
    p
}

/// The worker user tests use: `www-data` as root, else no `user` directive.
pub fn worker_user() -> Option<&'static str> {
    nix::unistd::getuid().is_root().then_some("www-data")
}

impl Nginx {
    /// Starts nginx with `http_body` inside `http { }`; `{port}` in it is replaced by the port
    /// and `{dir}` by the prefix directory.
    pub fn start(http_body: &str) -> Nginx {
        Self::start_on(free_port(), http_body)
    }

    /// Like [`Nginx::start`], on a given port.
    pub fn start_on(port: u16, http_body: &str) -> Nginx {
        Self::start_bin(&bin("nginx"), port, "", http_body)
    }

    /// Starts the nginx binary `nginx_bin` with `main` at the top of its configuration
    /// (`load_module` lines) and `http_body` inside `http { }`.
    pub fn start_bin(nginx_bin: &Path, port: u16, main: &str, http_body: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        // Workers must reach the prefix (tempdir is 0700).
        fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let body = http_body
            .replace("{port}", &port.to_string())
            .replace("{dir}", &dir.path().display().to_string());
        let user = worker_user()
            .map(|u| format!("user {u};\n"))
            .unwrap_or_default();
        let conf = dir.path().join("nginx.conf");
        fs::write(
            &conf,
            format!(
                "{main}{user}worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  \
                 fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n{body}\n}}\n",
                d = dir.path().display()
            ),
        )
        .unwrap();
        let log = dir.path().join("error.log");
        let child = Command::new(nginx_bin)
            .process_group(0)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Guarded before waiting: a start that times out must not leave nginx running.
        let mut child = NginxGuard(child);
        wait_for_port(port, &mut child.0, "nginx", &log);
        Nginx {
            dir,
            port,
            conf,
            bin: nginx_bin.to_path_buf(),
            child,
        }
    }

    /// The master's pid.
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// True when `nginx -t` accepts the configuration as it is on disk now.
    pub fn config_passes(&self) -> bool {
        run(Command::new(&self.bin)
            .arg("-p")
            .arg(self.dir.path())
            .arg("-c")
            .arg(&self.conf)
            .args(["-t", "-q"]))
        .status
        .success()
    }

    /// Plain HTTP GET over loopback with a Host header; returns (status, body).
    pub fn get(&self, host: &str, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        let status = buf
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }
}

/// `openssl verify` of a chain file against a root; returns (success, output).
pub fn openssl_verify(root: &Path, chain_pem: &str, dir: &Path) -> (bool, String) {
    let blocks = acme_nginx::acme::split_pem(chain_pem);
    let leaf = dir.join("verify-leaf.pem");
    let untrusted = dir.join("verify-untrusted.pem");
    fs::write(&leaf, &blocks[0]).unwrap();
    fs::write(&untrusted, blocks[1..].concat()).unwrap();
    let mut cmd = Command::new("openssl");
    cmd.arg("verify").arg("-CAfile").arg(root);
    if blocks.len() > 1 {
        cmd.arg("-untrusted").arg(&untrusted);
    }
    let out = cmd.arg(&leaf).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Names that pebble-challtestsrv resolves to 127.0.0.1 (any name does; these read well).
pub fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{prefix}{i}.acme-nginx.test"))
        .collect()
}

/// Asserts a command's exit code, showing its stderr when it differs.
#[track_caller]
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stderr: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A command's stdout as JSON.
#[track_caller]
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}; stderr: {}", String::from_utf8_lossy(&out.stderr)))
}

/// The entry of a report's `certificates` array for a name (Null when absent).
pub fn by_name(report: &serde_json::Value, name: &str) -> serde_json::Value {
    report["certificates"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name).cloned())
        .unwrap_or(serde_json::Value::Null)
}

/// The leaf certificate (DER) of a PEM chain file.
pub fn leaf(fullchain: &Path) -> Vec<u8> {
    acme::pem_certificates(&fs::read(fullchain).unwrap())
        .unwrap()
        .remove(0)
}

/// What the enroll, renew and watch tests share: a real nginx master with the given server
/// blocks (`{port}` plain HTTP, `{https}` the HTTPS port acme-nginx adds, `{dir}` nginx's
/// prefix), a pebble validating through it, and a state directory.
pub struct Bed {
    pub nginx: Nginx,
    pub pebble: Pebble,
    pub https_port: u16,
    pub state: TempDir,
}

impl Bed {
    pub fn start(servers: &str) -> Bed {
        Self::start_on(free_port(), servers)
    }

    /// Like [`Bed::start`], with nginx's plain-HTTP port chosen by the caller (for site files
    /// written before nginx starts).
    pub fn start_on(port: u16, servers: &str) -> Bed {
        Self::start_with(port, servers, |o| o)
    }

    /// Like [`Bed::start`], on nginx mainline (see [`modern_nginx`]) with `main` at the top of
    /// its configuration (`load_module` lines).
    pub fn start_modern(main: &str, servers: &str) -> Bed {
        Self::start_nginx(&modern_nginx(), free_port(), main, servers, |o| o)
    }

    /// Like [`Bed::start`], on the nginx binary `nginx_bin` with `main` at the top of its
    /// configuration (`load_module` lines, `stream {}` and `mail {}` blocks).
    pub fn start_main(nginx_bin: &Path, main: &str, servers: &str) -> Bed {
        Self::start_nginx(nginx_bin, free_port(), main, servers, |o| o)
    }

    /// Like [`Bed::start_on`], with pebble's options changed by `pebble`.
    pub fn start_with(
        port: u16,
        servers: &str,
        pebble: impl FnOnce(PebbleOptions) -> PebbleOptions,
    ) -> Bed {
        Self::start_nginx(&bin("nginx"), port, "", servers, pebble)
    }

    fn start_nginx(
        nginx_bin: &Path,
        port: u16,
        main: &str,
        servers: &str,
        pebble: impl FnOnce(PebbleOptions) -> PebbleOptions,
    ) -> Bed {
        let https_port = free_port();
        let nginx = Nginx::start_bin(
            nginx_bin,
            port,
            main,
            &servers.replace("{https}", &https_port.to_string()),
        );
        let pebble = Pebble::start(pebble(PebbleOptions::http_port(nginx.port)));
        let state = tempfile::tempdir().unwrap();
        fs::write(
            state.path().join("config.toml"),
            "# every setting comes from flags\n",
        )
        .unwrap();
        Bed {
            nginx,
            pebble,
            https_port,
            state,
        }
    }

    /// Runs `acme-nginx --json SUB` with the bed's settings (see [`Bed::command`]).
    pub fn cmd(&self, sub: &str, extra: &[&str]) -> Output {
        run(&mut self.command(sub, extra))
    }

    /// Runs `acme-nginx SUB` (text output, as a person reads it) with the bed's settings.
    pub fn cmd_text(&self, sub: &str, extra: &[&str]) -> Output {
        run(&mut self.command_as(false, sub, extra))
    }

    /// `acme-nginx --json SUB` with the bed's nginx, state, config file and hook directory
    /// (enroll also gets --non-interactive --agree-tos), not yet started.
    pub fn command(&self, sub: &str, extra: &[&str]) -> Command {
        self.command_as(true, sub, extra)
    }

    fn command_as(&self, json: bool, sub: &str, extra: &[&str]) -> Command {
        let dir = self.nginx.dir.path();
        let mut cmd = self.pebble.cli();
        if json {
            cmd.arg("--json");
        }
        cmd.env("ACME_NGINX_BIN", &self.nginx.bin);
        cmd.arg(sub)
            .arg("--nginx-conf")
            .arg(&self.nginx.conf)
            .arg("--nginx-prefix")
            .arg(dir)
            .arg("--state-dir")
            .arg(self.state.path())
            .arg("--config-file")
            .arg(self.config_file())
            .arg("--hooks-dir")
            .arg(dir.join("hooks"));
        if sub == "enroll" {
            cmd.args(["--non-interactive", "--agree-tos"])
                .arg("--challenge-snippet")
                .arg(dir.join("snippets/acme-challenge.conf"));
        }
        if sub != "status" {
            cmd.args(["--https-port", &self.https_port.to_string()]);
        }
        cmd.args(extra);
        cmd
    }

    /// Runs `acme-nginx SUB` as a person at a terminal would (`--non-interactive` left out):
    /// in a pseudo-terminal made by util-linux's `script`, with `answers` typed in. Returns
    /// what the terminal showed (stdout) and the exit code.
    pub fn interactive(&self, sub: &str, extra: &[&str], answers: &str) -> Output {
        let cmd = self.command_as(false, sub, extra);
        let quote =
            |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', "'\\''"));
        let line: Vec<String> = std::iter::once(quote(cmd.get_program()))
            .chain(
                cmd.get_args()
                    .filter(|a| *a != "--non-interactive")
                    .map(quote),
            )
            .collect();
        let mut script = Command::new("script");
        script.args(["-q", "-e", "-c", &line.join(" "), "/dev/null"]);
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => script.env(k, v),
                None => script.env_remove(k),
            };
        }
        let mut child = script
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(answers.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn config_file(&self) -> PathBuf {
        self.state.path().join("config.toml")
    }

    /// An nginx wrapper that runs `action` (shell) instead of `nginx -t` once the live
    /// configuration carries acme-nginx's edit: only in this host's mount namespace, so the
    /// rehearsal before ordering (a private namespace, where the edit is a bind mount) passes.
    pub fn nginx_wrapper(&self, action: &str) -> PathBuf {
        let host_ns = fs::read_link("/proc/self/ns/mnt").unwrap();
        let wrapper = self.state.path().join("nginx-wrapper");
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh
if [ \"$(readlink /proc/self/ns/mnt)\" = '{ns}' ] && grep -q 'managed by acme-nginx' {conf}; then\n  \
                 for a in \"$@\"; do if [ \"$a\" = -t ]; then {action}; fi; done\nfi\nexec {nginx} \"$@\"\n",
                ns = host_ns.display(),
                conf = self.nginx.conf.display(),
                nginx = self.nginx.bin.display()
            ),
        )
        .unwrap();
        fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        wrapper
    }

    /// A lineage directory.
    pub fn lineage(&self, name: &str) -> PathBuf {
        self.state.path().join("certs").join(name)
    }

    /// A lineage's `live` link.
    pub fn live(&self, name: &str) -> PathBuf {
        self.lineage(name).join("live")
    }

    /// The leaf nginx serves over TLS for SNI `name` on the HTTPS port.
    pub fn served(&self, name: &str) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", self.https_port).parse().unwrap();
        rt.block_on(acme_nginx::nginx::probe::served_certificate(addr, name))
            .unwrap()
    }

    /// Like [`Bed::served`], None while nothing answers TLS there.
    pub fn try_served(&self, name: &str) -> Option<Vec<u8>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", self.https_port).parse().unwrap();
        rt.block_on(acme_nginx::nginx::probe::served_certificate(addr, name))
            .ok()
    }

    /// Pebble's root, as a file.
    pub fn root(&self) -> PathBuf {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(self.pebble.root_file())
    }
}

/// Whether pebble finds the order of the certificate `leaf_der` from the serial an RFC 9773
/// CertID carries, so that it accepts `replaces` for it. pebble keys its orders by the serial's
/// big-endian bytes without the DER sign byte (`SerialNumber.Bytes()`) but looks them up by the
/// bytes of the CertID, which RFC 9773 defines as the DER content bytes, sign byte included: a
/// serial whose DER content starts with 0x00 (about 1 in 256 of pebble's 63-bit serials) is not
/// found, pebble answers serverInternal, and acme-nginx orders without `replaces` (saying so).
pub fn pebble_finds_replaces(leaf_der: &[u8]) -> bool {
    !acme_nginx::acme::CertInfo::from_der(leaf_der)
        .unwrap()
        .serial_hex
        .starts_with("00")
}

/// Asserts what a renewal of `replaced` (the old leaf) reports about `replaces`: the CertID
/// when pebble can find the certificate by it, else that the refused `replaces` was dropped.
pub fn assert_replaces(renewed: &serde_json::Value, stderr: &[u8], replaced: &[u8]) {
    if pebble_finds_replaces(replaced) {
        assert!(renewed["replaces"].is_string(), "{renewed}");
    } else {
        assert!(renewed["replaces"].is_null(), "{renewed}");
        assert!(
            String::from_utf8_lossy(stderr).contains("ordering without it"),
            "{}",
            String::from_utf8_lossy(stderr)
        );
    }
}

/// Files under `dir` named like an ACME token (RFC 8555's 43 base64url characters of pebble's
/// tokens), hidden temporary ones included.
pub fn token_files(dir: &Path) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let name = name.trim_start_matches('.').trim_end_matches(".tmp");
            name.len() == 43 && acme_nginx::acme::is_valid_token(name)
        })
        .collect()
}
