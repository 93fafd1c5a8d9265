//! `status --fleet`: what the shared store says about every lineage and node.

use serde::Serialize;

use super::{now, Fleet, FleetConfig, FleetError};

/// One node's view of a lineage.
#[derive(Debug, Clone, Serialize)]
pub struct NodeServing {
    pub node: String,
    /// The serial it reported serving, and since when (unix time).
    pub serial: Option<String>,
    pub since: Option<i64>,
    /// It does not serve the fleet's current certificate.
    pub lagging: bool,
}

/// A lineage across the fleet.
#[derive(Debug, Clone, Serialize)]
pub struct FleetLineage {
    pub name: String,
    pub names: Vec<String>,
    pub serial: String,
    pub issued_at: i64,
    pub ordered_by: String,
    pub nodes: Vec<NodeServing>,
}

/// A node of the fleet.
#[derive(Debug, Clone, Serialize)]
pub struct FleetNode {
    pub name: String,
    pub address: String,
    pub seen: i64,
    /// It has not reported for the fleet's `silent_after` (36 hours unless set).
    pub stale: bool,
}

/// What the fleet's shared store says: every lineage and what each node serves of it.
#[derive(Debug, Clone, Serialize)]
pub struct FleetStatus {
    pub lineages: Vec<FleetLineage>,
    pub nodes: Vec<FleetNode>,
    /// Keys that do not open with the fleet key: ignored by every node.
    pub untrusted: Vec<String>,
}

/// Reads the fleet's state (no lock, nothing written).
pub async fn fleet_status(config: &FleetConfig) -> Result<FleetStatus, FleetError> {
    let fleet = Fleet::open(config)?;
    let nodes = fleet.nodes().await?;
    let serving = fleet.serving().await?;
    let now = now();
    let stale_after = i64::try_from(config.silent_after.as_secs()).unwrap_or(i64::MAX);
    let lineages = fleet
        .lineages()
        .await?
        .into_iter()
        .map(|(name, _, rec, _)| FleetLineage {
            nodes: nodes
                .iter()
                .map(|(node, _)| {
                    let s = serving
                        .iter()
                        .find(|(n, l, _)| n == node && *l == name)
                        .map(|(_, _, s)| s);
                    NodeServing {
                        node: node.clone(),
                        serial: s.map(|s| s.serial.clone()),
                        since: s.map(|s| s.since),
                        lagging: s.is_none_or(|s| s.serial != rec.serial),
                    }
                })
                .collect(),
            name,
            names: rec.names,
            serial: rec.serial,
            issued_at: rec.issued_at,
            ordered_by: rec.node,
        })
        .collect();
    Ok(FleetStatus {
        untrusted: fleet.untrusted().await?,
        lineages,
        nodes: nodes
            .into_iter()
            .map(|(name, i)| FleetNode {
                stale: now - i.seen > stale_after,
                name,
                address: i.address,
                seen: i.seen,
            })
            .collect(),
    })
}

/// Prometheus lines for the fleet: per lineage and node, whether it lags; per node, when it
/// last reported.
pub fn fleet_metrics(status: &FleetStatus) -> String {
    let label = |s: &str| s.replace(['\\', '"', '\n'], "_");
    let mut out = String::from(
        "# HELP acme_nginx_fleet_lagging 1 when the node does not serve the fleet's current certificate.\n\
         # TYPE acme_nginx_fleet_lagging gauge\n",
    );
    for l in &status.lineages {
        for n in &l.nodes {
            out.push_str(&format!(
                "acme_nginx_fleet_lagging{{name=\"{}\",node=\"{}\"}} {}\n",
                label(&l.name),
                label(&n.node),
                u8::from(n.lagging)
            ));
        }
    }
    out.push_str(
        "# HELP acme_nginx_fleet_node_seen_timestamp_seconds When the node last reported.\n\
         # TYPE acme_nginx_fleet_node_seen_timestamp_seconds gauge\n",
    );
    for n in &status.nodes {
        out.push_str(&format!(
            "acme_nginx_fleet_node_seen_timestamp_seconds{{node=\"{}\"}} {}\n",
            label(&n.name),
            n.seen
        ));
    }
    out
}

/// Forgets a node that is gone for good (see [`Fleet::forget_node`]). Refuses this node
/// itself: it would register again at its next pass. Returns whether the node was known.
pub async fn forget_node(config: &FleetConfig, node: &str) -> Result<bool, ForgetError> {
    if node == config.node {
        return Err(ForgetError::ThisNode(node.to_owned()));
    }
    let fleet = Fleet::open(config)?;
    Ok(fleet.forget_node(node).await?)
}

/// Why a node cannot be forgotten.
#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    #[error("{0} is this node: it registers again at its next pass; stop it, then forget it from another node")]
    ThisNode(String),
    #[error(transparent)]
    Fleet(#[from] FleetError),
}
