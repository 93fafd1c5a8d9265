//! The `acme-nginx` binary: parse arguments, run the command, map the result to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = acme_nginx::cli::Cli::parse();
    ExitCode::from(acme_nginx::cli::run(cli))
}
