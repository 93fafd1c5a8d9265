//! Orders across a node's death: an order in progress is recorded so a node taking over
//! completes it.

use serde::{Deserialize, Serialize};

use super::{now, Fleet, FleetError};
use crate::lifecycle::outcome::chain_text;

/// An order in progress (`orders/NAME`): its URL and the certificate key, sealed, so that a node
/// taking over after the orderer died completes it (the CA may already have issued) instead of
/// ordering a second certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OrderRecord {
    pub url: String,
    pub names: Vec<String>,
    pub key_sealed: String,
    pub node: String,
    pub created: i64,
}

/// A renewal a node set out to do (`intents/NAME`), recorded under the lineage's lock before
/// anything is asked of the CA. Should that node die, whichever node next finds it with the
/// lock free completes it, due or not by its own policy; it goes when the certificate is
/// published or the order failed (the failure memory then decides).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IntentRecord {
    pub names: Vec<String>,
    pub node: String,
    /// Unix time after which it is stale (ignored and removed).
    pub deadline: i64,
}

/// How long an unfinished renewal is taken over by other nodes.
pub const INTENT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl Fleet {
    /// Records that this node is about to order a lineage (under its lock).
    pub async fn record_intent(&self, lineage: &str, names: &[String]) -> Result<(), FleetError> {
        let key = self.key(&format!("intents/{lineage}"));
        let rec = IntentRecord {
            names: names.to_vec(),
            node: self.node.clone(),
            deadline: now() + INTENT_DEADLINE.as_secs() as i64,
        };
        self.put_record(&key, super::now_version(), &rec).await?;
        Ok(())
    }

    /// The renewals nodes set out to do and did not finish: lineage and the node. Stale ones
    /// are removed.
    pub async fn unfinished(&self) -> Result<Vec<(String, IntentRecord)>, FleetError> {
        let prefix = self.key("intents/");
        let mut out = Vec::new();
        for (lineage, _, rec) in self.records::<IntentRecord>(&prefix).await? {
            if rec.deadline < now() {
                self.forget_intent(&lineage).await?;
                continue;
            }
            out.push((lineage, rec));
        }
        Ok(out)
    }

    /// The nodes that set out to order a certificate holding `name` (intents that have not
    /// expired; one, unless a renewal is being taken over). Reads only.
    pub async fn orderers_of(&self, name: &str) -> Result<Vec<String>, FleetError> {
        let prefix = self.key("intents/");
        Ok(self
            .records::<IntentRecord>(&prefix)
            .await?
            .into_iter()
            .filter(|(_, _, i)| i.deadline >= now() && i.names.iter().any(|n| n == name))
            .map(|(_, _, i)| i.node)
            .collect())
    }

    /// Forgets a lineage's intent (done, or failed).
    pub async fn forget_intent(&self, lineage: &str) -> Result<(), FleetError> {
        Ok(self
            .etcd
            .delete(&self.key(&format!("intents/{lineage}")))
            .await?)
    }

    /// The order a node left for a lineage, with its key (PEM), if any.
    pub async fn pending_order(
        &self,
        lineage: &str,
    ) -> Result<Option<(OrderRecord, String)>, FleetError> {
        let key = self.key(&format!("orders/{lineage}"));
        let Some((_, rec)) = self.record::<OrderRecord>(&key).await? else {
            return Ok(None);
        };
        let pem = String::from_utf8_lossy(&self.key.open(&key, &rec.key_sealed)?).into_owned();
        Ok(Some((rec, pem)))
    }

    /// Records an order before it is authorized and finalized.
    pub async fn record_order(
        &self,
        lineage: &str,
        url: &str,
        names: &[String],
        key_pem: &str,
    ) -> Result<(), FleetError> {
        let key = self.key(&format!("orders/{lineage}"));
        let rec = OrderRecord {
            url: url.to_owned(),
            names: names.to_vec(),
            key_sealed: self.key.seal(&key, key_pem.as_bytes()),
            node: self.node.clone(),
            created: now(),
        };
        self.put_record(&key, super::now_version(), &rec).await?;
        Ok(())
    }

    /// Forgets a lineage's order (it was completed and published, or it failed).
    pub async fn forget_order(&self, lineage: &str) -> Result<(), FleetError> {
        Ok(self
            .etcd
            .delete(&self.key(&format!("orders/{lineage}")))
            .await?)
    }
}

/// Orders a lineage's certificate as the fleet's one orderer: an order another node left (it
/// died) is completed with that node's key; otherwise a new order is placed and recorded
/// before it is authorized. Returns the chain and the key it certifies.
pub(crate) async fn order_once<S: crate::acme::ChallengeSolver>(
    fleet: &Fleet,
    account: &crate::acme::Account,
    lineage: &str,
    names: &[String],
    key: crate::acme::KeyPair,
    solver: &S,
    opts: &crate::acme::OrderOptions,
) -> Result<(crate::acme::CertificateChain, crate::acme::KeyPair), crate::lifecycle::Failure> {
    use crate::acme::{create_csr, KeyPair};
    use crate::lifecycle::Failure;
    let fleet_err =
        |e: FleetError| Failure::transient(format!("the fleet's shared store: {}", chain_text(&e)));
    if let Some((rec, pem)) = fleet.pending_order(lineage).await.map_err(fleet_err)? {
        let resumable = crate::lifecycle::lineage::same_names(&rec.names, names);
        if let (true, Ok(k)) = (resumable, KeyPair::from_pem(&pem)) {
            match account.order(&rec.url).await {
                Ok(mut order) => {
                    tracing::info!(
                        "fleet: completing the order {} that node {} left for {lineage}",
                        rec.url,
                        rec.node
                    );
                    let csr = create_csr(&k, names).map_err(|e| Failure::from_acme(&e))?;
                    match order.complete(names, &csr.der, solver, opts).await {
                        Ok(chain) => return Ok((chain, k)),
                        Err(e) => tracing::warn!(
                            "fleet: the order node {} left cannot be completed ({e}); ordering anew",
                            rec.node
                        ),
                    }
                }
                Err(e) => tracing::warn!("fleet: the order node {} left is gone ({e})", rec.node),
            }
        }
        fleet.forget_order(lineage).await.map_err(fleet_err)?;
    }
    let mut order = account
        .create_order(names, opts)
        .await
        .map_err(|e| Failure::from_acme(&e))?;
    fleet
        .record_order(lineage, &order.url, names, &key.to_pem())
        .await
        .map_err(fleet_err)?;
    let csr = create_csr(&key, names).map_err(|e| Failure::from_acme(&e))?;
    match order.complete(names, &csr.der, solver, opts).await {
        Ok(chain) => Ok((chain, key)),
        Err(e) => {
            // A failed order is not resumed by the next node.
            if let Err(f) = fleet.forget_order(lineage).await {
                tracing::warn!("fleet: {}", chain_text(&f));
            }
            Err(Failure::from_acme(&e))
        }
    }
}
