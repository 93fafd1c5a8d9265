//! `acme-nginx fleet forget NODE`: a node that is gone for good leaves the fleet's shared store
//! (its record and what it reported serving), so the preflight stops asking it
//! ([`acme_nginx::lifecycle::fleet::forget_node`]).

use clap::{Args, Subcommand};
use serde_json::json;

use super::options::Options;
use super::{output, CliError, CmdResult, Context, Exit};

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Forget a node that is gone for good (its record and its reports).
    Forget(Box<ForgetArgs>),
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// The node's name (as `status --fleet` lists it).
    #[arg(value_name = "NODE")]
    pub node: String,
    #[command(flatten)]
    pub options: Options,
}

pub async fn run(ctx: &Context, command: FleetCommand) -> CmdResult {
    let FleetCommand::Forget(args) = command;
    let settings = args.options.settings(ctx)?;
    let config = settings.fleet.as_ref().ok_or_else(|| {
        CliError::Usage(
            "fleet forget needs the fleet's settings (--etcd, or a [fleet] table)".into(),
        )
    })?;
    let known = acme_nginx::lifecycle::fleet::forget_node(config, &args.node)
        .await
        .map_err(|e| match e {
            acme_nginx::lifecycle::fleet::ForgetError::ThisNode(_) => {
                CliError::Usage(e.to_string())
            }
            acme_nginx::lifecycle::fleet::ForgetError::Fleet(f) => CliError::Lifecycle(f.into()),
        })?;
    if ctx.json {
        output::json(&json!({ "node": args.node, "forgotten": known }))?;
    } else if known {
        output::line(format!(
            "{}: forgotten (its record and its reports are gone from the fleet)",
            args.node
        ))?;
    } else {
        output::line(format!(
            "{}: no such node in the fleet; nothing to forget",
            args.node
        ))?;
    }
    Ok(Exit::Ok)
}
