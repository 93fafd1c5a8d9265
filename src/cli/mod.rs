//! The command line (binary only): clap definitions (stage one), the global settings (stage two),
//! and one page per command: its arguments, one call into the library, and the rendering. This
//! is the only place that prints, and that maps outcomes and errors to the exit codes:
//! 0 everything succeeded, 1 some names failed (the others succeeded), 2 nothing could run.

mod account;
mod assets;
mod context;
mod csr;
mod enroll;
mod fleet;
mod import_certbot;
mod options;
mod output;
mod remove;
mod renew;
mod revoke;
mod scan;
mod sign;
mod status;
mod watch;

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

pub use context::{read_input, write_output, Context};

use acme_nginx::acme;
use acme_nginx::lifecycle::{self, Outcome};
use clap::{Args, Parser, Subcommand};

/// What a command ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything succeeded.
    Ok = 0,
    /// Some names failed, the others succeeded.
    Partial = 1,
    /// The command could not run.
    Fatal = 2,
}

impl Exit {
    /// Partial when any outcome failed.
    pub fn of(outcomes: &[Outcome]) -> Exit {
        if outcomes.iter().any(Outcome::failed) {
            Exit::Partial
        } else {
            Exit::Ok
        }
    }

    /// Like [`Exit::of`], and Partial when names were given on the command line and none of
    /// them got anywhere (each skipped or failed): a summary line on stderr says so.
    pub fn of_named(outcomes: &[Outcome], named: &[String]) -> Exit {
        use acme_nginx::lifecycle::Status;
        let nothing = |o: &&Outcome| matches!(o.status, Status::Skipped | Status::Failed);
        let skipped = outcomes
            .iter()
            .filter(|o| o.status == Status::Skipped)
            .count();
        if !named.is_empty()
            && !outcomes.is_empty()
            && outcomes.iter().filter(nothing).count() == outcomes.len()
        {
            eprintln!(
                "error: none of the names given ({}) was done: {} skipped, {} failed (reasons above)",
                named.join(", "),
                skipped,
                outcomes.len() - skipped
            );
            return Exit::Partial;
        }
        Exit::of(outcomes)
    }
}

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
    /// ACME directory URL of the CA [default: Let's Encrypt production]. Repeat it for CAs
    /// tried in order when the first cannot issue a name (down, rate limited, CAA).
    #[arg(long, global = true, env = "ACME_NGINX_DIRECTORY", value_name = "URL")]
    pub directory: Vec<String>,
    /// Use Let's Encrypt's staging directory.
    #[arg(long, global = true, conflicts_with = "directory")]
    pub staging: bool,
    /// Extra trust anchor (PEM) for the CA's own HTTPS certificate (pebble, step-ca).
    #[arg(long, global = true, env = "ACME_NGINX_CA_FILE", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Never ask: no confirmation prompt, whatever the terminal (for scripts and units).
    #[arg(long, global = true)]
    pub non_interactive: bool,
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
    Scan(Box<scan::ScanArgs>),
    /// Get, install and verify certificates for nginx's server blocks.
    Enroll(Box<enroll::EnrollArgs>),
    /// Renew the certificates that are due (ARI window, else a third of the lifetime left).
    Renew(Box<renew::RenewArgs>),
    /// Take over certbot's certificates (no new orders): import them and point nginx at them.
    ImportCertbot(Box<import_certbot::ImportCertbotArgs>),
    /// Take certificates out of nginx (restoring what their blocks had) and delete them.
    Remove(Box<remove::RemoveArgs>),
    /// Show every certificate, when it renews next and why.
    Status(Box<status::StatusArgs>),
    /// Run as a service: enroll new server blocks as they appear, renew on time.
    Watch(Box<watch::WatchArgs>),
    /// Fleet housekeeping: forget a node that is gone for good.
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
    /// Write man pages and shell completions (for packaging).
    #[command(hide = true)]
    Assets(assets::AssetsArgs),
}

/// An error that ends a command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Lifecycle(#[from] lifecycle::Error),
    #[error(transparent)]
    Acme(#[from] acme::Error),
    #[error(transparent)]
    Nginx(#[from] acme_nginx::nginx::LoadError),
    /// The CA refused the names of a single-order command (`sign`): exit 1.
    #[error("the order failed")]
    OrderFailed(#[source] acme::Error),
    #[error("{0}")]
    Usage(String),
    /// A secret file acme-nginx refuses to use (wrong owner, mode, type, a link).
    #[error(transparent)]
    Secret(#[from] acme_nginx::secret::SecretFileError),
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// Writing to stdout failed (a closed pipe ends the command quietly).
    #[error("cannot write the output")]
    Output(#[source] io::Error),
}

impl CliError {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> CliError {
        let what = what.into();
        move |source| CliError::Io { what, source }
    }

    fn exit(&self) -> Exit {
        match self {
            CliError::OrderFailed(_) => Exit::Partial,
            CliError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe => Exit::Ok,
            _ => Exit::Fatal,
        }
    }
}

/// The result of a command.
pub type CmdResult = Result<Exit, CliError>;

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
        .with_writer(io::stderr)
        .with_target(false);
    // Under systemd the journal adds its own timestamps and reads no colours. A second
    // subscriber (only in tests) keeps the first.
    let installed = if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().with_ansi(false).try_init()
    } else {
        builder.try_init()
    };
    installed.ok();
}

/// Parses the command line, runs the command, and maps the result to the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.global);
    // Fails only when a provider is installed already, which is what is wanted.
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Fatal as u8);
        }
    };
    let result = runtime.block_on(async {
        let ctx = Context::from_args(&cli.global)?;
        match cli.command {
            Command::Account(cmd) => account::run(&ctx, cmd).await,
            Command::Csr(args) => csr::run(&ctx, args),
            Command::Sign(args) => sign::run(&ctx, args).await,
            Command::Revoke(args) => revoke::run(&ctx, args).await,
            Command::Scan(args) => scan::run(&ctx, *args),
            Command::Enroll(args) => enroll::run(&ctx, *args).await,
            Command::Renew(args) => renew::run(&ctx, *args).await,
            Command::ImportCertbot(args) => import_certbot::run(&ctx, *args).await,
            Command::Remove(args) => remove::run(&ctx, *args).await,
            Command::Status(args) => status::run(&ctx, *args).await,
            Command::Fleet(command) => fleet::run(&ctx, command).await,
            Command::Watch(args) => watch::run(&ctx, *args).await,
            Command::Assets(args) => assets::run(args),
        }
    });
    let exit = match result {
        Ok(exit) => exit,
        Err(e) => {
            if e.exit() != Exit::Ok {
                eprintln!("error: {}", output::error_chain(&e));
            }
            e.exit()
        }
    };
    ExitCode::from(exit as u8)
}
