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
}

pub fn run(ctx: &Context, args: StatusArgs) -> CmdResult {
    let settings = args.options.settings(ctx)?;
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
        "  serial {}  valid until {}",
        s.serial.as_deref().unwrap_or("-"),
        output::time(s.not_after)
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
