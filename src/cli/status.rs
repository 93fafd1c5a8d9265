//! `acme-nginx status`: every lineage, when it renews next and why (read-only).

use std::path::PathBuf;

use acme_nginx::lifecycle::metrics::write_metrics;
use acme_nginx::lifecycle::status::{status, StatusLine};
use acme_nginx::store::Store;
use clap::Args;

use super::options::Options;
use super::{output, CliError, CmdResult, Context, Exit};

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Lineages to show (by any of their names); none: all.
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub options: Options,
    /// Also write Prometheus metrics to this file.
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
    /// The fleet's view (from etcd): per certificate, what each node serves; lagging and
    /// silent nodes flagged.
    #[arg(long)]
    pub fleet: bool,
}

pub async fn run(ctx: &Context, args: StatusArgs) -> CmdResult {
    let settings = args.options.settings(ctx)?;
    if args.fleet {
        return fleet(ctx, &settings, args.metrics_file.as_deref()).await;
    }
    let lines = status(&settings, &args.names)?;
    if let Some(path) = &args.metrics_file {
        let store = Store {
            root: settings.state_dir.clone(),
        };
        write_metrics(&store, path, &[])?;
    }
    if ctx.json {
        output::json(&serde_json::json!({ "certificates": lines }))?;
    } else {
        for s in &lines {
            print(s)?;
        }
    }
    Ok(Exit::Ok)
}

fn print(s: &StatusLine) -> Result<(), CliError> {
    output::line(format!("{}  ({})", s.name, s.names.join(", ")))?;
    output::line(format!(
        "  serial {}  valid until {}  from {}",
        s.serial.as_deref().unwrap_or("-"),
        output::time(s.not_after),
        if s.directory.is_empty() {
            "an unknown CA"
        } else {
            &s.directory
        }
    ))?;
    output::line(format!(
        "  next renewal {} ({})",
        output::time(s.next_renewal),
        s.reason.as_deref().unwrap_or("-")
    ))?;
    output::line(format!(
        "  used by {}",
        if s.orphan {
            "no server block (an orphan: `acme-nginx remove --orphans` deletes it)".into()
        } else if s.server_blocks.is_empty() {
            "-".into()
        } else {
            s.server_blocks.join(", ")
        }
    ))?;
    if let Some(e) = &s.last_error {
        output::line(format!(
            "  last error ({} in a row): {}",
            s.failures,
            output::one_line(e)
        ))?;
    }
    Ok(())
}

async fn fleet(
    ctx: &Context,
    settings: &acme_nginx::lifecycle::Settings,
    metrics_file: Option<&std::path::Path>,
) -> CmdResult {
    use acme_nginx::lifecycle::fleet::{fleet_metrics, fleet_status};
    let config = settings.fleet.as_ref().ok_or_else(|| {
        CliError::Usage("--fleet needs the fleet's settings (--etcd, or a [fleet] table)".into())
    })?;
    let st = fleet_status(config)
        .await
        .map_err(|e| CliError::Lifecycle(e.into()))?;
    if let Some(path) = metrics_file {
        acme_nginx::fsutil::write_atomic_in_safe_dir(
            path,
            fleet_metrics(&st).as_bytes(),
            acme_nginx::fsutil::PUBLIC_MODE,
        )
        .map_err(CliError::io(format!("write metrics to {}", path.display())))?;
    }
    if ctx.json {
        output::json(&st)?;
        return Ok(Exit::Ok);
    }
    let when = |t: i64| output::time(time::OffsetDateTime::from_unix_timestamp(t).ok());
    for key in &st.untrusted {
        output::line(format!(
            "untrusted record {key}: not written with this fleet key; ignored by every node"
        ))?;
    }
    for n in &st.nodes {
        output::line(format!(
            "node {}  {}  last report {}{}",
            n.name,
            n.address,
            when(n.seen),
            if n.stale {
                "  (silent for long: STALE)"
            } else {
                ""
            }
        ))?;
    }
    for l in &st.lineages {
        output::line(format!(
            "{}  ({})  serial {}  ordered by {} at {}",
            l.name,
            l.names.join(", "),
            l.serial,
            l.ordered_by,
            when(l.issued_at)
        ))?;
        for n in &l.nodes {
            output::line(format!(
                "  {:<16} {}{}",
                n.node,
                match (&n.serial, n.since) {
                    (Some(s), Some(t)) => format!("serves {s} since {}", when(t)),
                    _ => "has reported nothing".into(),
                },
                if n.lagging { "  LAGGING" } else { "" }
            ))?;
        }
    }
    Ok(Exit::Ok)
}
