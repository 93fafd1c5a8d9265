//! Looking names up the way a dns-01 solver needs: the zone that holds a name (from the SOA a
//! resolver returns), the zone's authoritative servers (its NS records and their addresses),
//! where `_acme-challenge.NAME` really lives (a CNAME chain, followed, never guessed), and the
//! TXT values each authoritative server returns, asked directly so no cache hides a lag.

use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use super::wire::{self, exchange, ExchangeError};

/// The longest CNAME chain followed from `_acme-challenge.NAME`.
pub const MAX_CNAME_CHAIN: usize = 8;
/// The port authoritative servers answer on.
pub const DNS_PORT: u16 = 53;

/// A failed lookup.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error("the resolver {server} answered {rcode} for {name} {rtype}")]
    Rcode {
        server: SocketAddr,
        name: String,
        rtype: RecordType,
        rcode: String,
    },
    #[error(
        "no zone holds {name}: the resolver {server} returned no SOA record for it or any parent"
    )]
    NoZone { name: String, server: SocketAddr },
    #[error("the zone {zone} has no NS records the resolver {server} can find")]
    NoNameServers { zone: String, server: SocketAddr },
    #[error(
        "the name servers of {zone} ({names}) have no addresses the resolver {server} can find"
    )]
    NoAddresses {
        zone: String,
        names: String,
        server: SocketAddr,
    },
    #[error("{name} starts a CNAME chain longer than {MAX_CNAME_CHAIN} (or a loop)")]
    CnameLoop { name: String },
    #[error("{zone} is not confirmed as a zone by its own name servers: {why}")]
    NotAZone { zone: String, why: String },
}

/// A CAA record (RFC 8659): its critical flag, property tag and value, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caa {
    pub critical: bool,
    pub tag: String,
    pub value: String,
}

impl std::fmt::Display for Caa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CAA {} {} {:?}",
            if self.critical { 128 } else { 0 },
            self.tag,
            self.value
        )
    }
}

/// An authoritative server of a zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameServer {
    /// Its name (from the NS record).
    pub name: Name,
    pub addr: SocketAddr,
}

impl std::fmt::Display for NameServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.addr)
    }
}

/// The resolver lookups go to, and the port the zones' authoritative servers are asked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolver {
    pub server: SocketAddr,
    pub authoritative_port: u16,
}

impl Resolver {
    /// The first `nameserver` of /etc/resolv.conf (127.0.0.1 when there is none, as the
    /// C library does), with authoritative servers asked on port 53.
    pub fn system() -> Resolver {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let ip = first_nameserver(&text).unwrap_or(IpAddr::from([127, 0, 0, 1]));
        Resolver {
            server: SocketAddr::new(ip, DNS_PORT),
            authoritative_port: DNS_PORT,
        }
    }

    /// Asks the resolver; an answer other than NOERROR and NXDOMAIN is an error.
    async fn ask(&self, name: &Name, rtype: RecordType) -> Result<Message, LookupError> {
        let reply = exchange(self.server, wire::query(name, rtype, true), None).await?;
        match reply.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => Ok(reply),
            _ => Err(LookupError::Rcode {
                server: self.server,
                name: name.to_ascii(),
                rtype,
                rcode: wire::rcode_text(&reply),
            }),
        }
    }

    /// Where the TXT records of `name` live: `name` itself, or the end of the CNAME chain it
    /// starts (the acme-dns pattern: `_acme-challenge.example.org CNAME x.acme.example.net`).
    pub async fn follow_cname(&self, name: &Name) -> Result<Name, LookupError> {
        let mut current = name.clone();
        for _ in 0..MAX_CNAME_CHAIN {
            let reply = self.ask(&current, RecordType::CNAME).await?;
            let next = reply.answers.iter().find_map(|r| match &r.data {
                RData::CNAME(c) if r.name == current => Some(c.0.clone()),
                _ => None,
            });
            match next {
                Some(n) => current = n,
                None => return Ok(current),
            }
        }
        Err(LookupError::CnameLoop {
            name: name.to_ascii(),
        })
    }

    /// The zone that holds `name`: the owner of the SOA record the resolver returns for it
    /// (in the answer for a zone apex, in the authority section otherwise), walking up the
    /// labels when an answer carries neither.
    pub async fn find_zone(&self, name: &Name) -> Result<Name, LookupError> {
        let mut candidate = name.clone();
        loop {
            let reply = self.ask(&candidate, RecordType::SOA).await?;
            let soa_owner = reply
                .answers
                .iter()
                .chain(&reply.authorities)
                .find(|r| matches!(r.data, RData::SOA(_)))
                .map(|r| r.name.clone());
            if let Some(zone) = soa_owner.filter(|z| z.zone_of(name)) {
                return Ok(zone);
            }
            if candidate.is_root() {
                return Err(LookupError::NoZone {
                    name: name.to_ascii(),
                    server: self.server,
                });
            }
            candidate = candidate.base_name();
        }
    }

    /// Confirms that `zone` is a zone by asking one of its own authoritative servers for its
    /// SOA (an authoritative answer, owned by the zone), instead of believing a recursive
    /// resolver's say-so.
    pub async fn confirm_zone(&self, zone: &Name) -> Result<(), LookupError> {
        let servers = self.name_servers(zone).await?;
        let mut last = None;
        for ns in servers {
            match exchange(ns.addr, wire::query(zone, RecordType::SOA, false), None).await {
                Ok(reply)
                    if reply.metadata.authoritative
                        && reply
                            .answers
                            .iter()
                            .any(|r| r.name == *zone && matches!(r.data, RData::SOA(_))) =>
                {
                    return Ok(());
                }
                Ok(_) => last = Some(format!("{ns} does not answer authoritatively for it")),
                Err(e) => last = Some(format!("{ns}: {e}")),
            }
        }
        Err(LookupError::NotAZone {
            zone: zone.to_ascii(),
            why: last.unwrap_or_else(|| "it has no name servers".into()),
        })
    }

    /// The authoritative servers of `zone`: its NS records, each at every address the
    /// resolver has for it (the answer's additional section first).
    pub async fn name_servers(&self, zone: &Name) -> Result<Vec<NameServer>, LookupError> {
        let reply = self.ask(zone, RecordType::NS).await?;
        let names: Vec<Name> = reply
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::NS(ns) => Some(ns.0.clone()),
                _ => None,
            })
            .collect();
        if names.is_empty() {
            return Err(LookupError::NoNameServers {
                zone: zone.to_ascii(),
                server: self.server,
            });
        }
        let mut out = Vec::new();
        for ns in &names {
            let mut addrs = addresses_in(&reply, ns);
            if addrs.is_empty() {
                for rtype in [RecordType::A, RecordType::AAAA] {
                    let r = self.ask(ns, rtype).await?;
                    addrs.extend(addresses_in(&r, ns));
                }
            }
            out.extend(addrs.into_iter().map(|ip| NameServer {
                name: ns.clone(),
                addr: SocketAddr::new(ip, self.authoritative_port),
            }));
        }
        if out.is_empty() {
            return Err(LookupError::NoAddresses {
                zone: zone.to_ascii(),
                names: names
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                server: self.server,
            });
        }
        out.dedup();
        Ok(out)
    }

    /// The relevant CAA record set of `name` (RFC 8659 section 3): the CAA records the
    /// resolver returns for the name (through its CNAME chain, which a resolver follows),
    /// else for its parent, and so on up to the top-level domain. Returns the name the
    /// records were found at and the records; `None` when no name on the way has any. A
    /// wildcard name is looked up from its base name.
    pub async fn caa(&self, name: &Name) -> Result<Option<(Name, Vec<Caa>)>, LookupError> {
        let mut current = name.clone();
        if current.is_wildcard() {
            current = current.base_name();
        }
        while current.num_labels() > 0 {
            let reply = self.ask(&current, RecordType::CAA).await?;
            let records: Vec<Caa> = reply
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::CAA(c) => Some(Caa {
                        critical: c.issuer_critical,
                        tag: c.tag.clone(),
                        value: String::from_utf8_lossy(&c.value).into_owned(),
                    }),
                    _ => None,
                })
                .collect();
            if !records.is_empty() {
                return Ok(Some((current, records)));
            }
            current = current.base_name();
        }
        Ok(None)
    }

    /// The addresses of a host name (A and AAAA), for fetching a token from the name itself.
    pub async fn addresses(&self, host: &Name) -> Result<Vec<IpAddr>, LookupError> {
        let target = self.follow_cname(host).await?;
        let mut out = Vec::new();
        for rtype in [RecordType::A, RecordType::AAAA] {
            let r = self.ask(&target, rtype).await?;
            out.extend(addresses_in(&r, &target));
        }
        Ok(out)
    }
}

/// The TXT values `server` holds for `name`, asked without recursion.
pub async fn txt_values(server: SocketAddr, name: &Name) -> Result<Vec<String>, LookupError> {
    let reply = exchange(server, wire::query(name, RecordType::TXT, false), None).await?;
    match reply.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        _ => {
            return Err(LookupError::Rcode {
                server,
                name: name.to_ascii(),
                rtype: RecordType::TXT,
                rcode: wire::rcode_text(&reply),
            })
        }
    }
    Ok(reply
        .answers
        .iter()
        .filter(|r| r.name == *name)
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|part| String::from_utf8_lossy(part))
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect())
}

/// The A and AAAA addresses `reply` gives for `name` in any section.
fn addresses_in(reply: &Message, name: &Name) -> Vec<IpAddr> {
    reply
        .answers
        .iter()
        .chain(&reply.additionals)
        .filter(|r| r.name == *name)
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// The first `nameserver` line of a resolv.conf text.
fn first_nameserver(text: &str) -> Option<IpAddr> {
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some("nameserver"))
            .then(|| words.next()?.split('%').next()?.parse().ok())
            .flatten()
    })
}

/// Parses `HOST[:PORT]` (an IP address; IPv6 in brackets with a port) with a default port.
pub fn parse_server(text: &str, default_port: u16) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    let ip = text.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, default_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_first_nameserver() {
        let text =
            "# generated\nsearch example.org\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n";
        assert_eq!(first_nameserver(text), Some("192.0.2.53".parse().unwrap()));
        assert_eq!(
            first_nameserver("nameserver fe80::1%eth0\n"),
            Some("fe80::1".parse().unwrap())
        );
        assert_eq!(first_nameserver("options ndots:2\n"), None);
    }

    #[test]
    fn servers_with_and_without_ports() {
        assert_eq!(
            parse_server("127.0.0.1", 53),
            Some("127.0.0.1:53".parse().unwrap())
        );
        assert_eq!(
            parse_server("127.0.0.1:5353", 53),
            Some("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(
            parse_server("[::1]:54", 53),
            Some("[::1]:54".parse().unwrap())
        );
        assert_eq!(parse_server("::1", 53), Some("[::1]:53".parse().unwrap()));
        assert_eq!(parse_server("ns1.example.org", 53), None);
    }
}
