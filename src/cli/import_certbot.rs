//! `acme-nginx import-certbot`: take over certbot's certificates without new orders (see
//! [`acme_nginx::lifecycle::Session::import_certbot`]).

use std::path::PathBuf;

use acme_nginx::lifecycle::certbot::DEFAULT_CERTBOT_DIR;
use acme_nginx::lifecycle::{Mode, Outcome, Session, Status};
use clap::Args;

use super::options::Options;
use super::{output, CliError, CmdResult, Context, Exit};

#[derive(Debug, Clone, Args)]
pub struct ImportCertbotArgs {
    /// certbot's configuration directory (read only).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CERTBOT_DIR)]
    pub certbot_dir: PathBuf,
    #[command(flatten)]
    pub options: Options,
    /// Show what would be imported and changed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// After importing, stop and disable certbot's systemd timer (`certbot.timer`).
    #[arg(long)]
    pub disable_certbot_timer: bool,
}

pub async fn run(ctx: &Context, args: ImportCertbotArgs) -> CmdResult {
    let mode = if args.dry_run {
        Mode::DryRun
    } else {
        Mode::Live
    };
    let run = Session::open(args.options.settings(ctx)?, mode).await?;
    let outcomes = run.import_certbot(&args.certbot_dir).await?;
    let imported = outcomes
        .iter()
        .any(|o| matches!(o.status, Status::Installed | Status::UpToDate));
    let timer = if imported && !args.dry_run {
        Some(if args.disable_certbot_timer {
            disable_timer().await
        } else {
            "acme-nginx renews these now: stop certbot's renewals with `systemctl disable --now certbot.timer` (or pass --disable-certbot-timer)".to_owned()
        })
    } else {
        None
    };
    print(ctx, &outcomes, timer.as_deref())?;
    Ok(Exit::of(&outcomes))
}

async fn disable_timer() -> String {
    let out = tokio::process::Command::new("systemctl")
        .args(["disable", "--now", "certbot.timer"])
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => "certbot.timer is stopped and disabled".to_owned(),
        Ok(o) => format!(
            "could not disable certbot.timer: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("could not run systemctl to disable certbot.timer: {e}"),
    }
}

fn print(ctx: &Context, outcomes: &[Outcome], timer: Option<&str>) -> Result<(), CliError> {
    if ctx.json {
        return output::json(
            &serde_json::json!({ "certificates": outcomes, "certbot_timer": timer }),
        );
    }
    if outcomes.is_empty() {
        output::line("certbot has no renewal configuration to import")?;
    }
    output::outcomes(outcomes)?;
    if let Some(t) = timer {
        output::line(t)?;
    }
    Ok(())
}
