//! `acme-nginx assets --out DIR` (hidden): the man pages and shell completions, generated from
//! the clap definitions, for the packages.

use std::path::PathBuf;

use clap::{Args, CommandFactory};

use super::{Cli, CliError, CmdResult, Exit};

#[derive(Debug, Args)]
pub struct AssetsArgs {
    /// Directory to write `man/` and `completions/` into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn run(args: AssetsArgs) -> CmdResult {
    let err = |e: std::io::Error| CliError::Io {
        what: format!("write assets into {}", args.out.display()),
        source: e,
    };
    let man = args.out.join("man");
    let completions = args.out.join("completions");
    std::fs::create_dir_all(&man).map_err(err)?;
    std::fs::create_dir_all(&completions).map_err(err)?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd.clone(), &man).map_err(err)?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "acme-nginx", &completions)
            .map_err(err)?;
    }
    Ok(Exit::Ok)
}
