//! `acme-nginx sign`: the seed's `acme_sign` example: an existing account and CSR, http-01 tokens
//! written into a webroot directory, the chain written to `--out`. The state and CSR are only read.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use acme_nginx::acme::OrderOptions;
use acme_nginx::acme::{csr_der, csr_names, normalize_names};
use acme_nginx::challenge::WebrootSolver;
use acme_nginx::fsutil::PUBLIC_MODE;

use super::{output, read_input, write_output, CliError, CmdResult, Context, Exit};

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The account state file (only read).
    #[arg(long, value_name = "FILE")]
    pub state: PathBuf,
    /// The CSR (PEM or DER; only read).
    #[arg(long, value_name = "FILE")]
    pub csr: PathBuf,
    /// Where to write the certificate chain (PEM, leaf first).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The directory nginx serves /.well-known/acme-challenge/ from.
    #[arg(long, value_name = "DIR")]
    pub webroot: PathBuf,
    /// The names to order; they must be the CSR's names [default: the CSR's names].
    #[arg(long = "domain", short = 'd', value_name = "NAME")]
    pub domains: Vec<String>,
    /// Certificate profile offered by the CA.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Prefer the chain whose topmost certificate is issued by this common name.
    #[arg(long, value_name = "CN")]
    pub preferred_chain: Option<String>,
}

pub async fn run(ctx: &Context, args: SignArgs) -> CmdResult {
    let bad_csr = |e| CliError::Usage(format!("{}: not a usable CSR: {e}", args.csr.display()));
    let csr = csr_der(&read_input(&args.csr, "CSR")?).map_err(bad_csr)?;
    let csr_names = csr_names(&csr).map_err(bad_csr)?;
    let names = if args.domains.is_empty() {
        csr_names
    } else {
        let mut given =
            normalize_names(&args.domains).map_err(|e| CliError::Usage(e.to_string()))?;
        let mut wanted = csr_names.clone();
        given.sort();
        wanted.sort();
        if given != wanted {
            return Err(CliError::Usage(format!(
                "--domain names ({}) differ from the CSR's names ({})",
                given.join(", "),
                csr_names.join(", ")
            )));
        }
        csr_names
    };
    let account = ctx.load_account(&args.state).await?;
    let solver = WebrootSolver::new(&args.webroot);
    let opts = OrderOptions {
        profile: args.profile,
        preferred_chain: args.preferred_chain,
        ..OrderOptions::default()
    };
    let chain = account
        .sign(&names, &csr, &solver, &opts)
        .await
        .map_err(CliError::OrderFailed)?;
    write_output(&args.out, chain.pem.as_bytes(), PUBLIC_MODE, "certificate")?;
    let info = &chain.leaf;
    if ctx.json {
        output::json(&json!({
            "names": names,
            "certificate": args.out,
            "serial": info.serial_hex,
            "not_after": info.not_after.unix_timestamp(),
            "order": chain.order_url,
        }))?;
    } else {
        output::line(format!(
            "wrote {} for {} (valid until {})",
            args.out.display(),
            names.join(", "),
            output::time(Some(info.not_after))
        ))?;
    }
    Ok(Exit::Ok)
}
