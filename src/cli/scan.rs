//! `acme-nginx scan`: what acme-nginx sees in the nginx configuration.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{CliError, CmdResult, Context, EXIT_OK};
use crate::nginx::discovery::{self, BuildDefaults, Scan};
use crate::nginx::{Config, DiskSource, DumpSource};

/// Where the nginx configuration comes from (shared by scan, enroll, renew, watch).
#[derive(Debug, Clone, Args)]
pub struct NginxArgs {
    /// The main nginx configuration file.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/etc/nginx/nginx.conf",
        env = "ACME_NGINX_CONF"
    )]
    pub nginx_conf: PathBuf,
    /// The nginx binary (for `nginx -V`, `-t`, `-T`).
    #[arg(
        long,
        value_name = "PATH",
        default_value = "nginx",
        env = "ACME_NGINX_BIN"
    )]
    pub nginx_bin: PathBuf,
    /// Read the configuration from `nginx -T` output in FILE ("-" for stdin) instead of from
    /// disk, to check against exactly what a running nginx loaded.
    #[arg(long, value_name = "FILE")]
    pub nginx_dump: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    #[command(flatten)]
    pub nginx: NginxArgs,
}

/// Finds the nginx binary: as given when it has a slash, else on PATH or in the sbin folders.
pub fn nginx_binary(bin: &Path) -> Option<PathBuf> {
    if bin.components().count() > 1 {
        return bin.is_file().then(|| bin.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// Parses the configuration and scans it.
pub fn load(args: &NginxArgs) -> Result<(Config, Scan), CliError> {
    let defaults = nginx_binary(&args.nginx_bin)
        .map(|b| BuildDefaults::probe(&b))
        .unwrap_or_default();
    let config = match &args.nginx_dump {
        Some(dump) => {
            let bytes = if dump.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                    .map_err(|e| CliError::fatal(format!("cannot read stdin: {e}")))?;
                buf
            } else {
                std::fs::read(dump)
                    .map_err(|e| CliError::fatal(format!("cannot read {}: {e}", dump.display())))?
            };
            let source = DumpSource::parse(&bytes);
            let main = source.main.clone().ok_or_else(|| {
                CliError::fatal("no \"# configuration file PATH:\" line in the nginx -T output")
            })?;
            Config::load(&main, &source)
        }
        None => Config::load(&args.nginx_conf, &DiskSource),
    }
    .map_err(CliError::fatal)?;
    let scan = discovery::scan(&config, &defaults);
    Ok((config, scan))
}

pub fn run(ctx: &Context, args: ScanArgs) -> CmdResult {
    let (config, scan) = load(&args.nginx)?;
    // The tree is large and the process ends here: leave it to the OS instead of freeing
    // a hundred thousand nodes one by one.
    std::mem::forget(config);
    if ctx.json {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        serde_json::to_writer(&mut out, &scan)
            .map_err(std::io::Error::from)
            .and_then(|()| std::io::Write::write_all(&mut out, b"\n"))
            .and_then(|()| std::io::Write::flush(&mut out))
            .map_err(|e| CliError::fatal(format!("cannot write the scan: {e}")))?;
    } else {
        print_table(&scan);
    }
    Ok(EXIT_OK)
}

fn print_table(scan: &Scan) {
    println!(
        "nginx: {}  user: {}:{}  pid file: {}",
        scan.nginx_conf.display(),
        scan.user,
        scan.group,
        scan.pid_file.display()
    );
    let rows: Vec<[String; 6]> = scan
        .servers
        .iter()
        .map(|s| {
            [
                s.enrollable
                    .first()
                    .or(s.server_names.first())
                    .cloned()
                    .unwrap_or_else(|| "-".into()),
                s.location(),
                if s.server_names.is_empty() {
                    "-".into()
                } else {
                    s.server_names.join(" ")
                },
                s.listen
                    .iter()
                    .map(|l| l.raw.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
                match (&s.acme_challenge_dir, &s.acme_challenge_reason) {
                    (Some(d), _) => d.display().to_string(),
                    (None, Some(r)) => format!("- ({r})"),
                    (None, None) => "-".into(),
                },
                s.ssl_certificate.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = [
        "SERVER",
        "FILE:LINE",
        "NAMES",
        "LISTEN",
        "CHALLENGE DIR",
        "CERTIFICATE",
    ];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count()).min(60);
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(&header.map(String::from));
    for r in &rows {
        line(r);
    }
    for s in &scan.servers {
        for k in &s.skipped {
            println!(
                "note: {}: skipping {:?}: {}",
                s.location(),
                k.name,
                k.reason
            );
        }
    }
    for w in &scan.warnings {
        println!("warning: {w}");
    }
}
