//! Asking nginx itself, over loopback, what it serves: a challenge file over plain HTTP with a
//! name's Host header, and the certificate it presents over TLS for a name's SNI: directly, or
//! on a mail listener after the protocol's STARTTLS (SMTP `EHLO`/`STARTTLS`, IMAP
//! `a STARTTLS`, POP3 `STLS`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::discovery::{Listen, MailProtocol, ServerBlock};

/// Time limit for one loopback probe (HTTP GET or TLS handshake).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest HTTP answer read by a probe.
const PROBE_MAX_BYTES: usize = 64 * 1024;

/// Why a probe got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("reading from {addr} failed")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} did not start TLS: it said {said:?}")]
    Starttls { addr: SocketAddr, said: String },
    #[error("{addr} did not answer with HTTP")]
    NotHttp { addr: SocketAddr },
    #[error("no answer from {addr} within {}s", PROBE_TIMEOUT.as_secs())]
    Timeout { addr: SocketAddr },
    #[error("TLS handshake with {addr} for {name} failed: {message}")]
    Tls {
        addr: SocketAddr,
        name: String,
        message: String,
    },
    #[error("{addr} sent no certificate")]
    NoCertificate { addr: SocketAddr },
}

/// The Host header value for a name: IPv6 literals in brackets (RFC 9110 section 7.2).
pub fn host_header(name: &str) -> String {
    if name.parse::<Ipv6Addr>().is_ok() {
        format!("[{name}]")
    } else {
        name.to_owned()
    }
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

/// Where a probe connects: an address, and whether the listener there expects a PROXY
/// protocol header first (`listen ... proxy_protocol`, behind a load balancer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub proxy_protocol: bool,
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            proxy_protocol: false,
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.proxy_protocol {
            write!(f, "{} (PROXY protocol)", self.addr)
        } else {
            write!(f, "{}", self.addr)
        }
    }
}

/// How a listener gets to TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsStart {
    /// `listen ... ssl`: the handshake first.
    Direct,
    /// A mail listener with `starttls on|only`: the protocol's STARTTLS, then the handshake.
    Starttls(MailProtocol),
}

/// The TLS listeners of a block reachable over loopback: its `ssl` listeners, and a STARTTLS
/// mail server's plain ones.
pub fn tls_listeners(block: &ServerBlock) -> Vec<(Endpoint, TlsStart)> {
    block
        .listen
        .iter()
        .filter_map(|l| {
            let start = match (l.ssl, block.starttls) {
                (true, _) => TlsStart::Direct,
                (false, Some(p)) => TlsStart::Starttls(p),
                (false, None) => return None,
            };
            Some((endpoint_for(l)?, start))
        })
        .collect()
}

/// The loopback endpoint of a listener, with its PROXY protocol expectation.
pub fn endpoint_for(listen: &Listen) -> Option<Endpoint> {
    Some(Endpoint {
        addr: loopback_for(listen)?,
        proxy_protocol: listen.proxy_protocol,
    })
}

/// Connects to `to`, sending the PROXY protocol v1 header a load balancer would (this
/// connection's own addresses) when the listener expects one.
async fn connect(to: Endpoint) -> Result<TcpStream, ProbeError> {
    let addr = to.addr;
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|source| ProbeError::Connect { addr, source })?;
    if to.proxy_protocol {
        let local = s
            .local_addr()
            .map_err(|source| ProbeError::Io { addr, source })?;
        let family = if addr.is_ipv6() { "TCP6" } else { "TCP4" };
        let header = format!(
            "PROXY {family} {} {} {} {}\r\n",
            local.ip(),
            addr.ip(),
            local.port(),
            addr.port()
        );
        s.write_all(header.as_bytes())
            .await
            .map_err(|source| ProbeError::Io { addr, source })?;
    }
    Ok(s)
}

/// An HTTP answer from a probe.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// `GET path` with `Host: host` (bracketed when an IPv6 literal) over plain HTTP to `addr`.
pub async fn http_get(
    to: impl Into<Endpoint>,
    host: &str,
    path: &str,
) -> Result<HttpAnswer, ProbeError> {
    let to = to.into();
    let addr = to.addr;
    let probe = async {
        let mut s = connect(to).await?;
        let req = format!(
            "GET {path} HTTP/1.0\r\nHost: {}\r\nUser-Agent: {}\r\nConnection: close\r\n\r\n",
            host_header(host),
            crate::acme::USER_AGENT
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|source| ProbeError::Io { addr, source })?;
        let mut buf = Vec::new();
        (&mut s)
            .take(PROBE_MAX_BYTES as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(|source| ProbeError::Io { addr, source })?;
        let head_end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or(ProbeError::NotHttp { addr })?;
        let head = String::from_utf8_lossy(&buf[..head_end]);
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or(ProbeError::NotHttp { addr })?;
        Ok(HttpAnswer {
            status,
            body: buf[head_end + 4..].to_vec(),
        })
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .map_err(|_| ProbeError::Timeout { addr })?
}

/// Accepts any certificate: the caller compares what it got with what it expects. With
/// `rsa_only` it offers only RSA signature schemes, so a server holding an ECDSA and an RSA
/// certificate must present the RSA one.
#[derive(Debug)]
struct CaptureAny(Arc<rustls::crypto::CryptoProvider>, bool);

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
        let all = self.0.signature_verification_algorithms.supported_schemes();
        if !self.1 {
            return all;
        }
        all.into_iter()
            .filter(|s| {
                matches!(
                    s,
                    rustls::SignatureScheme::RSA_PKCS1_SHA256
                        | rustls::SignatureScheme::RSA_PKCS1_SHA384
                        | rustls::SignatureScheme::RSA_PKCS1_SHA512
                        | rustls::SignatureScheme::RSA_PSS_SHA256
                        | rustls::SignatureScheme::RSA_PSS_SHA384
                        | rustls::SignatureScheme::RSA_PSS_SHA512
                )
            })
            .collect()
    }
}

/// The leaf certificate (DER) nginx serves at `addr` for SNI `name`. The handshake proves the
/// server holds the key (its signature is checked against the certificate).
pub async fn served_certificate(
    at: impl Into<Endpoint>,
    name: &str,
) -> Result<Vec<u8>, ProbeError> {
    served_leaf(at.into(), name, false).await
}

/// Like [`served_certificate`], offering only RSA signature schemes: the RSA certificate of a
/// block that serves an ECDSA and an RSA one.
pub async fn served_rsa_certificate(
    at: impl Into<Endpoint>,
    name: &str,
) -> Result<Vec<u8>, ProbeError> {
    served_leaf(at.into(), name, true).await
}

/// The leaf a TLS listener serves for SNI `name`, reached as `start` says (see
/// [`tls_listeners`]); `rsa_only` as in [`served_rsa_certificate`].
pub async fn served_certificate_on(
    at: Endpoint,
    start: TlsStart,
    name: &str,
    rsa_only: bool,
) -> Result<Vec<u8>, ProbeError> {
    match start {
        TlsStart::Direct => served_leaf(at, name, rsa_only).await,
        TlsStart::Starttls(p) => served_leaf_after(at, name, rsa_only, Some(p)).await,
    }
}

/// Reads one reply line (up to CRLF), byte by byte so nothing of the TLS handshake that
/// follows is consumed.
async fn read_line(s: &mut TcpStream, addr: SocketAddr) -> Result<String, ProbeError> {
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        let n = s
            .read(&mut b)
            .await
            .map_err(|source| ProbeError::Io { addr, source })?;
        if n == 0 || line.len() > 4096 {
            return Err(ProbeError::Starttls {
                addr,
                said: String::from_utf8_lossy(&line).into_owned(),
            });
        }
        if b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_owned());
        }
        line.push(b[0]);
    }
}

/// Speaks a mail protocol up to its STARTTLS: the server's greeting, the command, its yes.
async fn starttls(s: &mut TcpStream, addr: SocketAddr, p: MailProtocol) -> Result<(), ProbeError> {
    let refused = |said: String| ProbeError::Starttls { addr, said };
    // An SMTP reply is lines `CODE-text` ending with `CODE text`.
    async fn smtp_reply(s: &mut TcpStream, addr: SocketAddr) -> Result<String, ProbeError> {
        loop {
            let line = read_line(s, addr).await?;
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return Ok(line);
            }
        }
    }
    let io = |source| ProbeError::Io { addr, source };
    match p {
        MailProtocol::Smtp => {
            let greeting = smtp_reply(s, addr).await?;
            if !greeting.starts_with("220") {
                return Err(refused(greeting));
            }
            s.write_all(b"EHLO acme-nginx.invalid\r\n")
                .await
                .map_err(io)?;
            let ehlo = smtp_reply(s, addr).await?;
            if !ehlo.starts_with("250") {
                return Err(refused(ehlo));
            }
            s.write_all(b"STARTTLS\r\n").await.map_err(io)?;
            let go = smtp_reply(s, addr).await?;
            if !go.starts_with("220") {
                return Err(refused(go));
            }
        }
        MailProtocol::Imap => {
            let greeting = read_line(s, addr).await?;
            if !greeting.starts_with("* OK") {
                return Err(refused(greeting));
            }
            s.write_all(b"a STARTTLS\r\n").await.map_err(io)?;
            loop {
                let line = read_line(s, addr).await?;
                if line.starts_with("a OK") {
                    break;
                }
                if line.starts_with("a ") {
                    return Err(refused(line));
                }
            }
        }
        MailProtocol::Pop3 => {
            let greeting = read_line(s, addr).await?;
            if !greeting.starts_with("+OK") {
                return Err(refused(greeting));
            }
            s.write_all(b"STLS\r\n").await.map_err(io)?;
            let go = read_line(s, addr).await?;
            if !go.starts_with("+OK") {
                return Err(refused(go));
            }
        }
    }
    Ok(())
}

async fn served_leaf(at: Endpoint, name: &str, rsa_only: bool) -> Result<Vec<u8>, ProbeError> {
    served_leaf_after(at, name, rsa_only, None).await
}

async fn served_leaf_after(
    at: Endpoint,
    name: &str,
    rsa_only: bool,
    mail: Option<MailProtocol>,
) -> Result<Vec<u8>, ProbeError> {
    let addr = at.addr;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ProbeError::Tls {
            addr,
            name: name.to_owned(),
            message: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CaptureAny(provider, rsa_only)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let server_name =
        rustls::pki_types::ServerName::try_from(name.to_owned()).map_err(|e| ProbeError::Tls {
            addr,
            name: name.to_owned(),
            message: e.to_string(),
        })?;
    let probe = async {
        let mut tcp = connect(at).await?;
        if let Some(p) = mail {
            starttls(&mut tcp, addr, p).await?;
        }
        let tls = connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| ProbeError::Tls {
                addr,
                name: name.to_owned(),
                message: e.to_string(),
            })?;
        let (_, session) = tls.get_ref();
        session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .ok_or(ProbeError::NoCertificate { addr })
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .map_err(|_| ProbeError::Timeout { addr })?
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
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(host_header("::1"), "[::1]");
        assert_eq!(host_header("2001:db8::7"), "[2001:db8::7]");
        assert_eq!(host_header("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_header("a.example"), "a.example");
    }
}
