//! The command line: clap definitions (stage one), a validated [`Context`] (stage two), and one
//! file per command. This is the only layer that ties the ACME client, the challenge solvers,
//! nginx, the store and the hooks together.
//!
//! Exit codes: 0 everything succeeded, 1 some names failed (the others succeeded),
//! 2 nothing could run (bad arguments, unreadable files, CA unreachable, ...).

mod account;
mod assets;
pub mod config;
mod csr;
pub mod enroll;
pub mod pipeline;
pub mod renew;
mod revoke;
pub mod scan;
mod sign;
pub mod watch;

use std::fmt;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::acme::{self, ClientConfig};
use crate::fsutil;

/// Exit code: everything succeeded.
pub const EXIT_OK: u8 = 0;
/// Exit code: some names failed, the others succeeded.
pub const EXIT_PARTIAL: u8 = 1;
/// Exit code: the command could not run.
pub const EXIT_FATAL: u8 = 2;

/// TLS certificates from any ACME CA for the server blocks of a running nginx.
#[derive(Debug, Parser)]
#[command(name = "acme-nginx", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// ACME directory URL of the CA [default: Let's Encrypt production].
    #[arg(long, global = true, env = "ACME_NGINX_DIRECTORY", value_name = "URL")]
    pub directory: Option<String>,
    /// Use Let's Encrypt's staging directory.
    #[arg(long, global = true, conflicts_with = "directory")]
    pub staging: bool,
    /// Extra trust anchor (PEM) for the CA's own HTTPS certificate (pebble, step-ca).
    #[arg(long, global = true, env = "ACME_NGINX_CA_FILE", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors in the log.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the ACME account.
    #[command(subcommand)]
    Account(account::AccountCommand),
    /// Make a private key and a CSR for some names.
    Csr(csr::CsrArgs),
    /// Get a CSR signed by the CA, answering http-01 from a webroot directory.
    Sign(sign::SignArgs),
    /// Revoke a certificate.
    Revoke(revoke::RevokeArgs),
    /// Show the server blocks of the nginx configuration, their names and challenge directories.
    Scan(scan::ScanArgs),
    /// Get, install and verify certificates for nginx's server blocks.
    Enroll(Box<enroll::EnrollArgs>),
    /// Renew the certificates that are due (ARI window, else a third of the lifetime left).
    Renew(Box<renew::RenewArgs>),
    /// Show every certificate, when it renews next and why.
    Status(Box<renew::StatusArgs>),
    /// Run as a service: enroll new server blocks as they appear, renew on time.
    Watch(Box<watch::WatchArgs>),
    /// Write man pages and shell completions (for packaging).
    #[command(hide = true)]
    Assets(assets::AssetsArgs),
}

/// An error that ends a command, with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    /// The command could not run (exit 2).
    pub fn fatal(message: impl fmt::Display) -> Self {
        Self {
            code: EXIT_FATAL,
            message: message.to_string(),
        }
    }

    /// The work was attempted and failed for some names (exit 1).
    pub fn failed(message: impl fmt::Display) -> Self {
        Self {
            code: EXIT_PARTIAL,
            message: message.to_string(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<acme::Error> for CliError {
    fn from(e: acme::Error) -> Self {
        Self::fatal(e)
    }
}

/// The result of a command.
pub type CmdResult = Result<u8, CliError>;

/// Validated global settings (stage two of argument handling).
#[derive(Debug, Clone)]
pub struct Context {
    /// The directory URL given by `--directory`/`--staging`/environment, if any.
    pub explicit_directory: Option<String>,
    /// The directory to use when nothing else names one.
    pub directory_url: String,
    pub client_config: ClientConfig,
    pub json: bool,
}

impl Context {
    fn from_args(g: &GlobalArgs) -> Result<Self, CliError> {
        let explicit_directory = match (&g.directory, g.staging) {
            (_, true) => Some(acme::LETSENCRYPT_STAGING.to_owned()),
            (Some(url), false) => Some(url.clone()),
            (None, false) => None,
        };
        let directory_url = explicit_directory
            .clone()
            .unwrap_or_else(|| acme::LETSENCRYPT_PRODUCTION.to_owned());
        if !(directory_url.starts_with("https://") || directory_url.starts_with("http://")) {
            return Err(CliError::fatal(format!(
                "--directory {directory_url:?} is not an http(s) URL"
            )));
        }
        let client_config = match &g.ca_file {
            Some(path) => ClientConfig::with_ca_file(path)?,
            None => ClientConfig::default(),
        };
        Ok(Self {
            explicit_directory,
            directory_url,
            client_config,
            json: g.json,
        })
    }

    /// Connects to the CA's directory.
    pub async fn client(&self) -> Result<acme::Client, CliError> {
        self.client_for(&self.directory_url).await
    }

    /// Connects to a given directory.
    pub async fn client_for(&self, url: &str) -> Result<acme::Client, CliError> {
        acme::Client::new(url, &self.client_config)
            .await
            .map_err(|e| CliError::fatal(format!("cannot reach the CA: {e}")))
    }

    /// Loads the account saved in a state file. The state names its CA; an explicit
    /// `--directory` that names another CA is an error.
    pub async fn load_account(&self, state_path: &Path) -> Result<acme::Account, CliError> {
        let state = read_state(state_path)?;
        if let Some(dir) = &self.explicit_directory {
            if dir != &state.directory {
                return Err(CliError::fatal(format!(
                    "{} holds an account at {}, but --directory names {dir}",
                    state_path.display(),
                    state.directory
                )));
            }
        }
        let client = self.client_for(&state.directory).await?;
        acme::Account::from_state(client, &state)
            .map_err(|e| CliError::fatal(format!("{}: {e}", state_path.display())))
    }

    /// Prints a JSON value on stdout (for `--json`).
    pub fn print_json(&self, value: &serde_json::Value) {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    }
}

/// Reads a small input file, naming it in the error.
pub fn read_input(path: &Path, what: &str) -> Result<Vec<u8>, CliError> {
    fsutil::read_limited(path)
        .map_err(|e| CliError::fatal(format!("cannot read {what} {}: {e}", path.display())))
}

/// Prints rows under a header as aligned columns (each at most `max_width` wide for alignment).
pub fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]], max_width: usize) {
    let mut widths = header.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count()).min(max_width);
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
    for r in rows {
        line(r);
    }
}

/// A time as RFC 3339.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Reads an account state file (only reads: it is never opened for writing here).
pub fn read_state(path: &Path) -> Result<acme::AccountState, CliError> {
    let data = read_input(path, "account state")?;
    serde_json::from_slice(&data).map_err(|e| {
        CliError::fatal(format!(
            "{}: not an acme-nginx account state: {e}",
            path.display()
        ))
    })
}

/// Saves an account state file atomically with mode 0600.
pub fn write_state(path: &Path, state: &acme::AccountState) -> Result<(), CliError> {
    let json = serde_json::to_vec_pretty(state).map_err(|e| CliError::fatal(e.to_string()))?;
    write_output(path, &json, fsutil::PRIVATE_MODE, "account state")
}

/// Writes an output file atomically, naming it in the error.
pub fn write_output(path: &Path, data: &[u8], mode: u32, what: &str) -> Result<(), CliError> {
    fsutil::write_atomic(path, data, mode)
        .map_err(|e| CliError::fatal(format!("cannot write {what} {}: {e}", path.display())))
}

fn init_tracing(g: &GlobalArgs) {
    let level = match (g.quiet, g.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ACME_NGINX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("acme_nginx={level}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // Under systemd the journal adds its own timestamps and reads no colours.
    let _ = if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().with_ansi(false).try_init()
    } else {
        builder.try_init()
    };
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> u8 {
    init_tracing(&cli.global);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return EXIT_FATAL;
        }
    };
    let result = runtime.block_on(async {
        let ctx = Context::from_args(&cli.global)?;
        match cli.command {
            Command::Account(cmd) => account::run(&ctx, cmd).await,
            Command::Csr(args) => csr::run(&ctx, args),
            Command::Sign(args) => sign::run(&ctx, args).await,
            Command::Revoke(args) => revoke::run(&ctx, args).await,
            Command::Scan(args) => scan::run(&ctx, args),
            Command::Enroll(args) => enroll::run(&ctx, *args).await,
            Command::Renew(args) => renew::run(&ctx, *args).await,
            Command::Status(args) => renew::status(&ctx, *args),
            Command::Watch(args) => watch::run(&ctx, *args).await,
            Command::Assets(args) => assets::run(args),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.code
        }
    }
}
