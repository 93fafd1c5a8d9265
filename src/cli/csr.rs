//! `acme-nginx csr`: a fresh private key (0600) and a CSR for some names.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::{write_output, CliError, CmdResult, Context, EXIT_OK};
use crate::acme::{create_csr, KeyPair, KeyType};
use crate::fsutil::{PRIVATE_MODE, PUBLIC_MODE};

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
        return Err(CliError::fatal(format!(
            "{} exists already; a private key is never overwritten",
            args.key_out.display()
        )));
    }
    let names = validate_names(&args.domains)?;
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
        ctx.print_json(&json!({"names": names, "key": args.key_out, "csr": args.out, "key_type": args.key_type.to_string()}));
    } else {
        println!(
            "wrote {} ({} key) and {} for {}",
            args.key_out.display(),
            args.key_type,
            args.out.display(),
            names.join(", ")
        );
    }
    Ok(EXIT_OK)
}

/// Lowercases, deduplicates (keeping order) and checks names: DNS names (wildcards allowed) or IPs.
pub fn validate_names(names: &[String]) -> Result<Vec<String>, CliError> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        let n = name.trim().trim_end_matches('.').to_ascii_lowercase();
        if !is_valid_name(&n) {
            return Err(CliError::fatal(format!(
                "{name:?} is not a DNS name or IP address"
            )));
        }
        if !out.contains(&n) {
            out.push(n);
        }
    }
    if out.is_empty() {
        return Err(CliError::fatal("no names given"));
    }
    Ok(out)
}

/// A DNS name (LDH labels, optional leading `*.`) or an IP address.
pub fn is_valid_name(n: &str) -> bool {
    n.parse::<std::net::IpAddr>().is_ok() || crate::acme::types::is_valid_dns_name(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_and_checked() {
        let n = validate_names(&[
            "WWW.Example.org.".into(),
            "www.example.org".into(),
            "*.example.org".into(),
            "::1".into(),
        ])
        .unwrap();
        assert_eq!(n, vec!["www.example.org", "*.example.org", "::1"]);
        for bad in [
            "",
            "a..b",
            "-a.b",
            "a b",
            "ex*ample.org",
            &format!("{}.org", "a".repeat(64)),
        ] {
            assert!(
                validate_names(&[bad.to_owned()]).is_err(),
                "{bad:?} accepted"
            );
        }
    }
}
