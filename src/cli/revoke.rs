//! `acme-nginx revoke`: revoke a certificate with the account key.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::{read_input, CmdResult, Context, EXIT_OK};
use crate::acme::cert::pem_certificates;
use crate::acme::CertInfo;

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
    let der = pem_certificates(&pem)?.remove(0);
    let info = CertInfo::from_der(&der)?;
    let account = ctx.load_account(&args.state).await?;
    account.revoke(&der, args.reason).await?;
    if ctx.json {
        ctx.print_json(
            &json!({"revoked": info.serial_hex, "names": info.names, "reason": args.reason}),
        );
    } else {
        println!(
            "revoked certificate {} for {}",
            info.serial_hex,
            info.names.join(", ")
        );
    }
    Ok(EXIT_OK)
}
