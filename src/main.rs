//! The `acme-nginx` binary: parse arguments, run the command, map the result to an exit code.

use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    cli::main()
}
