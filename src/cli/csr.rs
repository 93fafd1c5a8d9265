//! `acme-nginx csr`: a fresh private key (0600) and a CSR for some names.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use acme_nginx::acme::normalize_names;
use acme_nginx::acme::{create_csr, KeyPair, KeyType};
use acme_nginx::fsutil::{PRIVATE_MODE, PUBLIC_MODE};

use super::{output, write_output, CliError, CmdResult, Context, Exit};

#[derive(Debug, Args)]
pub struct CsrArgs {
    /// A DNS name or IP address (repeatable; the first is the subject CN).
    #[arg(long = "domain", short = 'd', value_name = "NAME", required = true)]
    pub domains: Vec<String>,
    /// Where to write the new private key (PKCS#8 PEM, mode 0600). Must not exist.
    #[arg(long, value_name = "FILE")]
    pub key_out: PathBuf,
    /// Where to write the CSR (PEM).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Certificate key type.
    #[arg(long, default_value = "p256", value_name = "p256|p384")]
    pub key_type: KeyType,
}

pub fn run(ctx: &Context, args: CsrArgs) -> CmdResult {
    if args.key_out.symlink_metadata().is_ok() {
        return Err(CliError::Usage(format!(
            "{} exists already; a private key is never overwritten",
            args.key_out.display()
        )));
    }
    let names = normalize_names(&args.domains)?;
    let key = KeyPair::generate(args.key_type);
    let csr = create_csr(&key, &names)?;
    write_output(
        &args.key_out,
        key.to_pem().as_bytes(),
        PRIVATE_MODE,
        "private key",
    )?;
    write_output(&args.out, csr.pem.as_bytes(), PUBLIC_MODE, "CSR")?;
    if ctx.json {
        output::json(
            &json!({"names": names, "key": args.key_out, "csr": args.out, "key_type": args.key_type.to_string()}),
        )?;
    } else {
        output::line(format!(
            "wrote {} ({} key) and {} for {}",
            args.key_out.display(),
            args.key_type,
            args.out.display(),
            names.join(", ")
        ))?;
    }
    Ok(Exit::Ok)
}
