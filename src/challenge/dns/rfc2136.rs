//! RFC 2136 dynamic updates signed with TSIG: adds and removes single TXT records (other values
//! on the same name stay, so a wildcard and its base name can be validated together). Works
//! with BIND, Knot, PowerDNS and the managed DNS services that speak RFC 2136.

use std::net::SocketAddr;

use hickory_proto::op::{update_message, Message, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordSet};

use super::tsig::TsigKey;
use super::wire::{self, exchange, ExchangeError};

/// The TTL of the TXT records added (short: they live for one validation).
pub const TXT_TTL: u32 = 60;

/// A refused or failed update.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error("{server} refused the update of {name} in zone {zone}: {rcode}")]
    Refused {
        server: SocketAddr,
        zone: String,
        name: String,
        rcode: String,
    },
    #[error("{name} is not in the zone {zone}")]
    NotInZone { name: String, zone: String },
    #[error("the TSIG key cannot sign: {0}")]
    Key(String),
}

/// Updates through one primary server.
#[derive(Debug, Clone)]
pub struct Rfc2136 {
    pub server: SocketAddr,
    pub key: Option<TsigKey>,
}

/// The update message that adds (or, with `remove`, deletes) one TXT value of `name`.
pub fn txt_update(zone: &Name, name: &Name, value: &str, remove: bool) -> Message {
    let mut record = Record::from_rdata(
        name.clone(),
        TXT_TTL,
        RData::TXT(TXT::new(vec![value.to_owned()])),
    );
    record.dns_class = DNSClass::IN;
    let rrset = RecordSet::from(record);
    if remove {
        update_message::delete_by_rdata(rrset, zone.clone(), false)
    } else {
        update_message::append(rrset, zone.clone(), false, false)
    }
}

impl Rfc2136 {
    /// Adds the TXT value.
    pub async fn add(&self, zone: &Name, name: &Name, value: &str) -> Result<(), UpdateError> {
        self.send(zone, name, value, false).await
    }

    /// Removes the TXT value (nothing to remove is fine).
    pub async fn remove(&self, zone: &Name, name: &Name, value: &str) -> Result<(), UpdateError> {
        self.send(zone, name, value, true).await
    }

    async fn send(
        &self,
        zone: &Name,
        name: &Name,
        value: &str,
        remove: bool,
    ) -> Result<(), UpdateError> {
        if !zone.zone_of(name) {
            return Err(UpdateError::NotInZone {
                name: name.to_ascii(),
                zone: zone.to_ascii(),
            });
        }
        let signer = match &self.key {
            Some(k) => Some(k.signer().map_err(UpdateError::Key)?),
            None => None,
        };
        let msg = txt_update(zone, name, value, remove);
        let reply = exchange(self.server, msg, signer.as_ref()).await?;
        if reply.response_code != ResponseCode::NoError {
            return Err(UpdateError::Refused {
                server: self.server,
                zone: zone.to_ascii(),
                name: name.to_ascii(),
                rcode: wire::rcode_text(&reply),
            });
        }
        Ok(())
    }
}
