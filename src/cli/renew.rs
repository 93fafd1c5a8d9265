//! `acme-nginx renew`: renew what the renewal policy says is due (see
//! [`acme_nginx::lifecycle::Run::renew`]), and write the metrics file.

use std::path::PathBuf;

use acme_nginx::lifecycle::metrics::write_metrics;
use acme_nginx::lifecycle::{Mode, Outcome, Run};
use clap::Args;

use super::options::Options;
use super::{output, CliError, CmdResult, Context, Exit};

#[derive(Debug, Clone, Args)]
pub struct RenewArgs {
    /// Lineages to consider (by any of their names); none: all.
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub options: Options,
    /// Renew now, whatever the window says (a lineage in failure backoff still waits unless named).
    #[arg(long)]
    pub force: bool,
    /// Use the CA's staging directory and change nothing on disk.
    #[arg(long)]
    pub dry_run: bool,
    /// Write Prometheus metrics (node_exporter's textfile format) to this file.
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
}

pub async fn run(ctx: &Context, args: RenewArgs) -> CmdResult {
    let mode = if args.dry_run {
        Mode::DryRun
    } else {
        Mode::Live
    };
    let run = Run::open(args.options.settings(ctx)?, mode)?;
    let outcomes = run.renew(&args.names, args.force).await?;
    if let Some(path) = &args.metrics_file {
        write_metrics(run.store(), path, &outcomes)?;
    }
    print(ctx, &outcomes)?;
    Ok(Exit::of(&outcomes))
}

fn print(ctx: &Context, outcomes: &[Outcome]) -> Result<(), CliError> {
    if ctx.json {
        return output::json(&serde_json::json!({ "certificates": outcomes }));
    }
    for o in outcomes {
        let detail = o
            .next_renewal
            .map(|n| format!("next {}", output::time(Some(n))))
            .or(o
                .not_after
                .map(|n| format!("valid until {}", output::time(Some(n)))))
            .unwrap_or_default();
        let why = o
            .reason
            .clone()
            .or(o.error.as_ref().map(|e| e.message.clone()))
            .unwrap_or_default();
        output::line(format!(
            "{:<30} {:<10} {:<32} {}",
            o.name,
            o.status,
            detail,
            output::one_line(&why)
        ))?;
    }
    Ok(())
}
