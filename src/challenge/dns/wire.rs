//! DNS exchanges: one message to one server over TCP (RFC 7766: a two-byte length before each
//! message, so answers are never truncated), optionally signed with TSIG (RFC 8945), whose
//! answer must then carry a valid signature. The messages themselves are hickory's.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::tsig::TsigError;
use hickory_proto::rr::{Name, RecordType, TSigner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one exchange (connect, send, answer) may take.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed exchange with a DNS server.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("{server}: {source}")]
    Io {
        server: SocketAddr,
        source: std::io::Error,
    },
    #[error("{server}: no answer within {} s", EXCHANGE_TIMEOUT.as_secs())]
    Timeout { server: SocketAddr },
    #[error("{server}: cannot build the message: {message}")]
    Encode { server: SocketAddr, message: String },
    #[error("{server}: malformed answer: {message}")]
    Malformed { server: SocketAddr, message: String },
    #[error("{server}: the answer's TSIG signature does not verify: {message}")]
    BadSignature { server: SocketAddr, message: String },
}

/// The current time in seconds since the epoch, for TSIG.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Sends `msg` to `server` and reads its answer. With `tsig`, the message is signed and a
/// signed answer must verify; an unsigned error answer (a server that does not know the key
/// or rejects the signature answers so) is returned as it is, for its response code.
pub async fn exchange(
    server: SocketAddr,
    mut msg: Message,
    tsig: Option<&TSigner>,
) -> Result<Message, ExchangeError> {
    let encode = |e: hickory_proto::ProtoError| ExchangeError::Encode {
        server,
        message: e.to_string(),
    };
    let mut verifier = match tsig {
        Some(signer) => msg.finalize(signer, now_secs()).map_err(encode)?,
        None => None,
    };
    let bytes = msg.to_vec().map_err(encode)?;
    let len = u16::try_from(bytes.len()).map_err(|_| ExchangeError::Encode {
        server,
        message: "message longer than 65535 bytes".into(),
    })?;
    let io = |source| ExchangeError::Io { server, source };
    let answer = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let mut stream = TcpStream::connect(server).await.map_err(io)?;
        let mut out = Vec::with_capacity(bytes.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&bytes);
        stream.write_all(&out).await.map_err(io)?;
        let n = stream.read_u16().await.map_err(io)?;
        let mut buf = vec![0; usize::from(n)];
        stream.read_exact(&mut buf).await.map_err(io)?;
        Ok::<_, ExchangeError>(buf)
    })
    .await
    .map_err(|_| ExchangeError::Timeout { server })??;
    let malformed = |message: String| ExchangeError::Malformed { server, message };
    let reply = Message::from_vec(&answer).map_err(|e| malformed(e.to_string()))?;
    if reply.id != msg.id {
        return Err(malformed(format!(
            "answer id {} for query id {}",
            reply.id, msg.id
        )));
    }
    match verifier.as_mut() {
        Some(v) if reply.signature.is_some() => match v.verify(&answer) {
            Ok(_) => Ok(reply),
            // A server that rejects our signature signs its refusal with the error only.
            Err(_) if reply.response_code != ResponseCode::NoError => Ok(reply),
            Err(e) => Err(ExchangeError::BadSignature {
                server,
                message: e.to_string(),
            }),
        },
        Some(_) if reply.response_code == ResponseCode::NoError => {
            Err(ExchangeError::BadSignature {
                server,
                message: "the answer to a signed request is not signed".into(),
            })
        }
        _ => Ok(reply),
    }
}

/// A query for `name`/`rtype`; `recurse` asks a resolver to recurse.
pub fn query(name: &Name, rtype: RecordType, recurse: bool) -> Message {
    let mut msg = Message::query();
    msg.add_query(Query::query(name.clone(), rtype));
    msg.metadata.recursion_desired = recurse;
    msg
}

/// The response code of an answer by its mnemonic and meaning, with the TSIG error the answer
/// carries, if any: `NOTAUTH (Not authorized; TSIG BADSIG)`.
pub fn rcode_text(reply: &Message) -> String {
    let code = reply.response_code;
    let mnemonic = match code {
        ResponseCode::NoError => "NOERROR".to_owned(),
        ResponseCode::FormErr => "FORMERR".to_owned(),
        ResponseCode::ServFail => "SERVFAIL".to_owned(),
        ResponseCode::NXDomain => "NXDOMAIN".to_owned(),
        ResponseCode::NotImp => "NOTIMP".to_owned(),
        ResponseCode::Refused => "REFUSED".to_owned(),
        ResponseCode::YXDomain => "YXDOMAIN".to_owned(),
        ResponseCode::YXRRSet => "YXRRSET".to_owned(),
        ResponseCode::NXRRSet => "NXRRSET".to_owned(),
        ResponseCode::NotAuth => "NOTAUTH".to_owned(),
        ResponseCode::NotZone => "NOTZONE".to_owned(),
        other => format!("RCODE {}", u16::from(other)),
    };
    let tsig = reply
        .signature
        .as_ref()
        .and_then(|s| s.data.error)
        .map(|e| match e {
            TsigError::BadSig => {
                "; TSIG BADSIG: the key's secret does not match the server's".to_owned()
            }
            TsigError::BadKey => "; TSIG BADKEY: the server does not know this key".to_owned(),
            TsigError::BadTime => "; TSIG BADTIME: the clocks differ too much".to_owned(),
            other => format!("; TSIG error {}", u16::from(other)),
        })
        .unwrap_or_default();
    format!("{mnemonic} ({code}{tsig})")
}
