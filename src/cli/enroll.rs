//! `acme-nginx enroll`: from an nginx configuration to live, verified HTTPS (see
//! [`acme_nginx::lifecycle::Session::enroll`]). Interactive runs show the plan and ask first.

use std::io::{BufRead, IsTerminal, Write};

use acme_nginx::lifecycle::{Mode, Outcome, Plan, Session};
use clap::Args;

use super::options::Options;
use super::{output, CliError, CmdResult, Context, Exit};

#[derive(Debug, Clone, Args)]
pub struct EnrollArgs {
    /// Names to enroll (the server blocks holding them); none: every enrollable name.
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub options: Options,
    /// Get and store certificates but do not edit nginx's configuration or reload it.
    #[arg(long)]
    pub no_install: bool,
    /// Use the CA's staging directory and change nothing on disk.
    #[arg(long, conflicts_with = "no_install")]
    pub dry_run: bool,
}

pub async fn run(ctx: &Context, args: EnrollArgs) -> CmdResult {
    let mode = match (args.dry_run, args.no_install) {
        (true, _) => Mode::DryRun,
        (false, true) => Mode::NoInstall,
        (false, false) => Mode::Live,
    };
    let mut run = Session::open(args.options.settings(ctx)?, mode).await?;
    let (cfg, scan) = run.load()?;
    let plans = run.plans(&scan, &args.names)?;
    if plans.is_empty() {
        let msg = "no server block has a name that can be enrolled (see `acme-nginx scan`)";
        if ctx.json {
            output::json(&serde_json::json!({"certificates": [], "message": msg}))?;
        } else {
            output::line(msg)?;
        }
        return Ok(Exit::Ok);
    }
    let interactive = !ctx.non_interactive && !ctx.json && std::io::stdin().is_terminal();
    if interactive && !confirm(&plans)? {
        return Err(CliError::Usage("cancelled".into()));
    }
    let unrouted: Vec<&Plan> = plans.iter().filter(|p| p.needs_http_route).collect();
    if interactive && !run.settings().http_route && mode == Mode::Live && !unrouted.is_empty() {
        output::line(format!(
            "nginx answers {} only over HTTPS, but the CA validates http-01 on port {}.",
            unrouted
                .iter()
                .map(|p| p.primary.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            run.settings().http_port
        ))?;
        if ask(&format!(
            "Add a marked port-{} server block for each (challenges answered, the rest redirected to HTTPS; tested with nginx -t), as --http-route does? [y/N] ",
            run.settings().http_port
        ))? {
            run.allow_http_routes();
        }
    }
    let outcomes = run.enroll(cfg, scan, plans).await?;
    report(ctx, &outcomes, mode == Mode::DryRun)?;
    Ok(Exit::of_named(&outcomes, &args.names))
}

fn confirm(plans: &[Plan]) -> Result<bool, CliError> {
    output::line("acme-nginx will get these certificates:")?;
    for p in plans {
        output::line(format!(
            "  {}  ({})  from {}",
            p.primary,
            p.names.join(", "),
            p.block_locations.join(", ")
        ))?;
    }
    ask("Proceed? [y/N] ")
}

/// Asks a yes/no question on the terminal; only an explicit yes is yes.
fn ask(question: &str) -> Result<bool, CliError> {
    let mut out = std::io::stdout().lock();
    write!(out, "{question}")
        .and_then(|()| out.flush())
        .map_err(CliError::Output)?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(CliError::io("read the answer"))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// The outcome table (or JSON), and each error on stderr.
pub fn report(ctx: &Context, outcomes: &[Outcome], dry_run: bool) -> Result<(), CliError> {
    if ctx.json {
        return output::json(&serde_json::json!({ "dry_run": dry_run, "certificates": outcomes }));
    }
    output::outcomes(outcomes)
}
