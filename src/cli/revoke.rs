//! `acme-nginx revoke`: revoke a certificate with the account key.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use acme_nginx::acme::pem_certificates;
use acme_nginx::acme::CertInfo;

use super::{output, read_input, CliError, CmdResult, Context, Exit};

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The account state file.
    #[arg(long, value_name = "FILE")]
    pub state: PathBuf,
    /// The certificate (PEM; the first certificate of a chain is revoked).
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// CRL reason code: 0 unspecified, 1 keyCompromise, 3 affiliationChanged, 4 superseded,
    /// 5 cessationOfOperation.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=10))]
    pub reason: Option<u8>,
}

pub async fn run(ctx: &Context, args: RevokeArgs) -> CmdResult {
    let pem = read_input(&args.cert, "certificate")?;
    let bad = |e| CliError::Usage(format!("{}: {e}", args.cert.display()));
    let der = pem_certificates(&pem)
        .map_err(bad)?
        .into_iter()
        .next()
        .ok_or_else(|| CliError::Usage(format!("{}: no certificate in it", args.cert.display())))?;
    let info = CertInfo::from_der(&der).map_err(bad)?;
    let account = ctx.load_account(&args.state).await?;
    account.revoke(&der, args.reason).await?;
    if ctx.json {
        output::json(
            &json!({"revoked": info.serial_hex, "names": info.names, "reason": args.reason}),
        )?;
    } else {
        output::line(format!(
            "revoked certificate {} for {}",
            info.serial_hex,
            info.names.join(", ")
        ))?;
    }
    Ok(Exit::Ok)
}
