//! `acme-nginx remove`: take certificates out of nginx again and delete them (see
//! [`acme_nginx::lifecycle::Session::remove`]).

use acme_nginx::lifecycle::remove::RemoveOptions;
use acme_nginx::lifecycle::{Mode, Outcome, Session};
use clap::Args;

use super::options::Options;
use super::{output, CliError, CmdResult, Context, Exit};

#[derive(Debug, Clone, Args)]
pub struct RemoveArgs {
    /// Certificates to remove (a lineage name or any of its names).
    #[arg(value_name = "NAME", required_unless_present = "orphans")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub options: Options,
    /// Also remove every certificate no server block uses (`status` lists them as orphans).
    #[arg(long)]
    pub orphans: bool,
    /// Revoke each certificate first (reason cessationOfOperation).
    #[arg(long)]
    pub revoke: bool,
    /// Keep the certificate files (only take them out of nginx).
    #[arg(long)]
    pub keep_lineage: bool,
}

pub async fn run(ctx: &Context, args: RemoveArgs) -> CmdResult {
    let run = Session::open(args.options.settings(ctx)?, Mode::Live).await?;
    let outcomes = run
        .remove(
            &args.names,
            RemoveOptions {
                revoke: args.revoke,
                keep_lineage: args.keep_lineage,
                orphans: args.orphans,
            },
        )
        .await?;
    print(ctx, &outcomes)?;
    Ok(Exit::of(&outcomes))
}

fn print(ctx: &Context, outcomes: &[Outcome]) -> Result<(), CliError> {
    if ctx.json {
        return output::json(&serde_json::json!({ "certificates": outcomes }));
    }
    if outcomes.is_empty() {
        return output::line("nothing to remove");
    }
    output::outcomes(outcomes)?;
    Ok(())
}
