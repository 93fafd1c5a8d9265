//! `acme-nginx renew`: renew what the renewal policy says is due (see
//! [`acme_nginx::lifecycle::Session::renew`]), and write the metrics file.

use std::path::PathBuf;

use acme_nginx::lifecycle::metrics::{write_failed_run, write_metrics};
use acme_nginx::lifecycle::{Mode, Outcome, Session};
use acme_nginx::store::Store;
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
    let settings = args.options.settings(ctx)?;
    let state = Store {
        root: settings.state_dir.clone(),
    };
    let result = match Session::open(settings, mode).await {
        Ok(run) => run.renew(&args.names, args.force).await,
        Err(e) => Err(e),
    };
    // The metrics say what this run really did, also when it could not run at all.
    let outcomes = match (result, &args.metrics_file) {
        (Ok(outcomes), Some(path)) => {
            write_metrics(&state, path, &outcomes)?;
            outcomes
        }
        (Ok(outcomes), None) => outcomes,
        (Err(e), Some(path)) => {
            if let Err(m) = write_failed_run(&state, path) {
                tracing::warn!("{}", output::error_chain(&m));
            }
            return Err(e.into());
        }
        (Err(e), None) => return Err(e.into()),
    };
    print(ctx, &outcomes)?;
    Ok(Exit::of_named(&outcomes, &args.names))
}

fn print(ctx: &Context, outcomes: &[Outcome]) -> Result<(), CliError> {
    if ctx.json {
        return output::json(&serde_json::json!({ "certificates": outcomes }));
    }
    output::outcomes(outcomes)
}
