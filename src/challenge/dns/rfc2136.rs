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
    #[error("the TSIG key cannot sign")]
    Key(#[source] hickory_proto::dnssec::DnsSecError),
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

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Name;

    /// What BIND 9.18's `nsupdate -k KEY` sent for
    /// `update add _acme-challenge.example.test. 60 TXT "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"`
    /// in zone example.test (captured from a TCP listener; the key is below).
    const NSUPDATE: &str = "\
         309428000001000000010001076578616d706c65047465737400000600010f5f61636d652d6368616c6c656e6765c00c\
         001000010000003c002c2b4c6f71586359563871354f4e624a5178626d52375343544e6f337469415844666f77796a78\
         416a457558300b61636d652d7570646174650000fa00ff00000000003d0b686d61632d7368613235360000006b0c27fd\
         012c002048258173e26c9bbebb09ed540b4f0e7fabcfee55432d7b51947ca7aee9965419309400000000";
    const KEY: &str = "key \"acme-update\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ=\";\n};\n";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn our_signed_update_is_the_one_nsupdate_sends() {
        let theirs = unhex(NSUPDATE);
        let key = TsigKey::parse(KEY).unwrap();
        let signer = key.signer().unwrap();
        // Our key reading and hickory's TSIG agree with BIND's signature.
        let (_, time, _) = signer.verify_message_byte(&theirs, None, true).unwrap();
        // The same update, signed by us at the same time with the same id: the same bytes.
        let parsed = Message::from_vec(&theirs).unwrap();
        let zone = Name::from_ascii("example.test.").unwrap();
        let name = Name::from_ascii("_acme-challenge.example.test.").unwrap();
        let mut ours = txt_update(
            &zone,
            &name,
            "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0",
            false,
        );
        ours.metadata.id = parsed.id;
        ours.finalize(&signer, time).unwrap();
        assert_eq!(ours.to_vec().unwrap(), theirs);
        // A wrong secret does not verify.
        let wrong = TsigKey::parse(&KEY.replace("c2Vj", "d3Jv")).unwrap();
        assert!(wrong
            .signer()
            .unwrap()
            .verify_message_byte(&theirs, None, true)
            .is_err());
    }
}
