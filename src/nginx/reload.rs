//! Talking to the running nginx: `nginx -t` on the edited configuration, SIGHUP to the master
//! whose pid the pid file names (after checking it is an nginx master), waiting for the new
//! workers, and asking nginx itself over loopback what it serves: a challenge file over HTTP, a
//! certificate over TLS with SNI.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::discovery::Listen;

/// How long a reload may take before it is reported as not taken effect.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `nginx -t` may take.
pub const CONFIG_TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Time limit for one loopback probe (HTTP GET or TLS handshake).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest HTTP answer read by a probe.
const PROBE_MAX_BYTES: usize = 64 * 1024;

/// How to run the nginx binary for this configuration.
#[derive(Debug, Clone)]
pub struct NginxCtl {
    pub bin: PathBuf,
    pub conf: PathBuf,
    /// `-p PREFIX`, when the running nginx was started with one.
    pub prefix: Option<PathBuf>,
    pub pid_file: PathBuf,
    pub error_log: Option<PathBuf>,
}

impl NginxCtl {
    fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.bin);
        if let Some(p) = &self.prefix {
            c.arg("-p").arg(p);
        }
        c.arg("-c").arg(&self.conf);
        c
    }

    /// Runs `nginx -t`; the error is nginx's own message.
    pub async fn test_config(&self) -> Result<(), String> {
        let mut cmd = self.command();
        cmd.arg("-t").arg("-q").kill_on_drop(true);
        let out = tokio::time::timeout(CONFIG_TEST_TIMEOUT, cmd.output())
            .await
            .map_err(|_| "nginx -t did not finish".to_owned())?
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// The master's pid, checked to be an nginx master process.
    pub fn master_pid(&self) -> Result<Pid, String> {
        let text = std::fs::read_to_string(&self.pid_file).map_err(|e| {
            format!(
                "cannot read the nginx pid file {}: {e} (is nginx running?)",
                self.pid_file.display()
            )
        })?;
        let pid: i32 = text
            .trim()
            .parse()
            .map_err(|_| format!("{} does not hold a pid", self.pid_file.display()))?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map_err(|_| format!("no process {pid} (stale {})", self.pid_file.display()))?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.starts_with("nginx: master process") {
            return Err(format!(
                "process {pid} named by {} is not an nginx master ({:?})",
                self.pid_file.display(),
                cmdline.trim()
            ));
        }
        Ok(Pid::from_raw(pid))
    }

    /// Sends SIGHUP and waits until the reload has taken effect: the master has started new
    /// workers, and every old worker has exited or is shutting down (until then an old worker
    /// may still accept connections with the old configuration).
    pub async fn reload(&self) -> Result<(), String> {
        let master = self.master_pid()?;
        let before = children(master);
        kill(master, Signal::SIGHUP)
            .map_err(|e| format!("cannot signal nginx master {master}: {e}"))?;
        let deadline = tokio::time::Instant::now() + RELOAD_TIMEOUT;
        loop {
            let now = children(master);
            let new_worker = now.iter().any(|p| !before.contains(p) && is_worker(*p));
            let old_retired = before.iter().all(|p| !now.contains(p) || is_retiring(*p));
            if new_worker && old_retired {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "nginx did not switch to new workers within {}s after SIGHUP; the reload did not take effect{}",
                    RELOAD_TIMEOUT.as_secs(),
                    self.error_log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The last lines of nginx's error log, for messages.
    pub fn error_log_tail(&self) -> String {
        let Some(path) = &self.error_log else {
            return String::new();
        };
        let Ok(text) = std::fs::read(path) else {
            return String::new();
        };
        let text = String::from_utf8_lossy(&text[text.len().saturating_sub(4096)..]).into_owned();
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        if lines.is_empty() {
            return String::new();
        }
        let mut lines = lines;
        lines.reverse();
        format!("; {} says:\n  {}", path.display(), lines.join("\n  "))
    }
}

/// The child processes of a pid.
fn children(parent: Pid) -> HashSet<i32> {
    let mut out = HashSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces and parentheses).
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok())
            == Some(parent.as_raw())
        {
            out.insert(pid);
        }
    }
    out
}

/// An old worker that closed its listeners (nginx renames it when it starts shutting down).
fn is_retiring(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).map_or(true, |c| {
        let c = String::from_utf8_lossy(&c);
        c.contains("shutting down") || !c.starts_with("nginx: worker process")
    })
}

fn is_worker(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.starts_with(b"nginx: worker process"))
}

/// The loopback address to reach a listener on.
pub fn loopback_for(listen: &Listen) -> Option<SocketAddr> {
    if listen.address.starts_with("unix:") {
        return None;
    }
    let host = listen.address.trim_start_matches('[').trim_end_matches(']');
    let ip = match host {
        "*" | "0.0.0.0" | "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        "::" => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other.parse().ok()?,
    };
    // Only ever loopback or this host's own addresses: a listener on a specific address is
    // reached at that address.
    Some(SocketAddr::new(ip, listen.port))
}

/// An HTTP answer from a probe.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// `GET path` with `Host: host` over plain HTTP to `addr`.
pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> Result<HttpAnswer, String> {
    let probe = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let req = format!(
            "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: {}\r\nConnection: close\r\n\r\n",
            crate::acme::client::USER_AGENT
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        (&mut s)
            .take(PROBE_MAX_BYTES as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        let head_end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("no HTTP header in the answer")?;
        let head = String::from_utf8_lossy(&buf[..head_end]);
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or("no HTTP status in the answer")?;
        Ok(HttpAnswer {
            status,
            body: buf[head_end + 4..].to_vec(),
        })
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .map_err(|_| format!("no answer from {addr} within {}s", PROBE_TIMEOUT.as_secs()))?
}

/// Accepts any certificate: the caller compares what it got with what it expects.
#[derive(Debug)]
struct CaptureAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for CaptureAny {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The leaf certificate (DER) nginx serves at `addr` for SNI `name`. The handshake proves the
/// server holds the key (its signature is checked against the certificate).
pub async fn served_certificate(addr: SocketAddr, name: &str) -> Result<Vec<u8>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CaptureAny(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned())
        .map_err(|e| format!("{name}: {e}"))?;
    let probe = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let tls = connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {addr} for {name} failed: {e}"))?;
        let (_, session) = tls.get_ref();
        session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .ok_or_else(|| format!("{addr} sent no certificate"))
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .map_err(|_| {
            format!(
                "no TLS answer from {addr} within {}s",
                PROBE_TIMEOUT.as_secs()
            )
        })?
}

/// The error log nginx writes to, from the main context's `error_log` (else the prefix default).
pub fn error_log_path(cfg: &super::Config, prefix: &Path) -> Option<PathBuf> {
    let main = cfg.expanded(cfg.root());
    let arg = main
        .iter()
        .rev()
        .find(|d| d.name == "error_log")
        .and_then(|d| d.args.first().map(|a| a.to_string()));
    match arg {
        Some(a) if a == "stderr" || a.starts_with("syslog:") || a.starts_with("memory:") => None,
        Some(a) if a.starts_with('/') => Some(PathBuf::from(a)),
        Some(a) => Some(prefix.join(a)),
        None => Some(prefix.join("logs/error.log")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_for_listeners() {
        let l = |a: &str| loopback_for(&Listen::parse(&[a]).unwrap());
        assert_eq!(l("443"), Some("127.0.0.1:443".parse().unwrap()));
        assert_eq!(l("[::]:443"), Some("[::1]:443".parse().unwrap()));
        assert_eq!(l("127.0.0.2:8443"), Some("127.0.0.2:8443".parse().unwrap()));
        assert_eq!(l("unix:/run/x.sock"), None);
    }

    #[test]
    fn pid_file_must_name_an_nginx_master() {
        let dir = tempfile::tempdir().unwrap();
        let pid = dir.path().join("pid");
        std::fs::write(&pid, format!("{}\n", std::process::id())).unwrap();
        let ctl = NginxCtl {
            bin: "nginx".into(),
            conf: "/x".into(),
            prefix: None,
            pid_file: pid.clone(),
            error_log: None,
        };
        assert!(ctl
            .master_pid()
            .unwrap_err()
            .contains("not an nginx master"));
        std::fs::write(&pid, "garbage").unwrap();
        assert!(ctl
            .master_pid()
            .unwrap_err()
            .contains("does not hold a pid"));
    }
}
