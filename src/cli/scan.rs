//! `acme-nginx scan`: what acme-nginx sees in the nginx configuration.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{CliError, CmdResult, Context, EXIT_OK};
use crate::nginx::discovery::{self, BuildDefaults, Scan};
use crate::nginx::{Config, DiskSource, DumpSource};

/// Where the nginx configuration comes from (shared by scan, enroll, renew, watch).
#[derive(Debug, Clone, Default, Args)]
pub struct NginxArgs {
    /// The main nginx configuration file [default: /etc/nginx/nginx.conf].
    #[arg(long, value_name = "PATH", env = "ACME_NGINX_CONF")]
    pub nginx_conf: Option<PathBuf>,
    /// The nginx binary, for `nginx -V` and `nginx -t` [default: nginx on PATH].
    #[arg(long, value_name = "PATH", env = "ACME_NGINX_BIN")]
    pub nginx_bin: Option<PathBuf>,
    /// nginx's prefix (`nginx -p`), when the running nginx was started with one.
    #[arg(long, value_name = "DIR")]
    pub nginx_prefix: Option<PathBuf>,
    /// Read the configuration from `nginx -T` output in FILE ("-" for stdin) instead of from
    /// disk, to check against exactly what a running nginx loaded.
    #[arg(long, value_name = "FILE")]
    pub nginx_dump: Option<PathBuf>,
}

impl NginxArgs {
    /// The main configuration file.
    pub fn conf(&self) -> PathBuf {
        self.nginx_conf
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/nginx/nginx.conf"))
    }

    /// The nginx binary as given (a name is looked up on PATH when run).
    pub fn bin(&self) -> PathBuf {
        self.nginx_bin
            .clone()
            .unwrap_or_else(|| PathBuf::from("nginx"))
    }

    /// Fills what is unset from another source (a config file): self wins.
    pub fn or(self, other: NginxArgs) -> NginxArgs {
        NginxArgs {
            nginx_conf: self.nginx_conf.or(other.nginx_conf),
            nginx_bin: self.nginx_bin.or(other.nginx_bin),
            nginx_prefix: self.nginx_prefix.or(other.nginx_prefix),
            nginx_dump: self.nginx_dump.or(other.nginx_dump),
        }
    }
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

/// nginx's build defaults (`nginx -V`), with the prefix overridden by `--nginx-prefix`.
pub fn build_defaults(args: &NginxArgs) -> BuildDefaults {
    let mut defaults = nginx_binary(&args.bin())
        .map(|b| BuildDefaults::probe(&b))
        .unwrap_or_default();
    if let Some(prefix) = &args.nginx_prefix {
        let pid_rel = defaults
            .pid_path
            .strip_prefix(&defaults.prefix)
            .map(Path::to_path_buf)
            .ok();
        defaults.prefix = prefix.clone();
        if let Some(rel) = pid_rel {
            defaults.pid_path = prefix.join(rel);
        }
    }
    defaults
}

/// Parses the configuration and scans it.
pub fn load(args: &NginxArgs) -> Result<(Config, Scan), CliError> {
    load_with(args, true)
}

/// Like [`load`]; without `keep_text` the tree cannot be rendered or edited (read-only scans).
pub fn load_with(args: &NginxArgs, keep_text: bool) -> Result<(Config, Scan), CliError> {
    let defaults = build_defaults(args);
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
            Config::load_with(&main, &source, keep_text)
        }
        None => Config::load_with(&args.conf(), &DiskSource, keep_text),
    }
    .map_err(CliError::fatal)?;
    let scan = discovery::scan(&config, &defaults);
    Ok((config, scan))
}

pub fn run(ctx: &Context, args: ScanArgs) -> CmdResult {
    let (config, scan) = load_with(&args.nginx, false)?;
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
    super::print_table(header, &rows, 60);
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
