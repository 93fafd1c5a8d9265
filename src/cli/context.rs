//! Stage two of argument handling: the validated global settings every command gets, and the
//! small file helpers the commands share (reading inputs, writing outputs, naming the file in
//! every error).

use std::path::PathBuf;

use acme_nginx::acme::{self, ClientConfig};
use acme_nginx::lifecycle;

use super::{CliError, GlobalArgs};

/// Validated global settings (stage two of argument handling).
#[derive(Debug, Clone)]
pub struct Context {
    /// The directory URL given by `--directory`/`--staging`/environment, if any.
    pub explicit_directory: Option<String>,
    /// Every `--directory` given, preferred first (the first is `explicit_directory`).
    pub explicit_directories: Vec<String>,
    /// The directory to use when nothing else names one.
    pub directory_url: String,
    pub ca_file: Option<PathBuf>,
    pub client_config: ClientConfig,
    pub json: bool,
    pub non_interactive: bool,
}

impl Context {
    pub(super) fn from_args(g: &GlobalArgs) -> Result<Self, CliError> {
        let explicit_directories = match (g.directory.as_slice(), g.staging) {
            (_, true) => vec![acme::LETSENCRYPT_STAGING.to_owned()],
            (urls, false) => urls.to_vec(),
        };
        let explicit_directory = explicit_directories.first().cloned();
        let directory_url = explicit_directory
            .clone()
            .unwrap_or_else(|| acme::LETSENCRYPT_PRODUCTION.to_owned());
        if !(directory_url.starts_with("https://") || directory_url.starts_with("http://")) {
            return Err(CliError::Usage(format!(
                "--directory {directory_url:?} is not an http(s) URL"
            )));
        }
        let client_config = match &g.ca_file {
            Some(path) => ClientConfig::with_ca_file(path)?,
            None => ClientConfig::default(),
        };
        if let Some(bad) = explicit_directories
            .iter()
            .find(|d| !(d.starts_with("https://") || d.starts_with("http://")))
        {
            return Err(CliError::Usage(format!(
                "--directory {bad:?} is not an http(s) URL"
            )));
        }
        Ok(Self {
            explicit_directory,
            explicit_directories,
            directory_url,
            ca_file: g.ca_file.clone(),
            client_config,
            json: g.json,
            non_interactive: g.non_interactive,
        })
    }

    /// Connects to the CA's directory.
    pub async fn client(&self) -> Result<acme::Client, CliError> {
        self.client_for(&self.directory_url).await
    }

    /// Loads the account saved in a state file. The state names its CA; an explicit
    /// `--directory` that names another CA is an error.
    pub async fn load_account(
        &self,
        state_path: &std::path::Path,
    ) -> Result<acme::Account, CliError> {
        let state = lifecycle::account::read_state(state_path)?;
        if let Some(dir) = &self.explicit_directory {
            if dir != &state.directory {
                return Err(CliError::Usage(format!(
                    "{} holds an account at {}, but --directory names {dir}",
                    state_path.display(),
                    state.directory
                )));
            }
        }
        let client = self.client_for(&state.directory).await?;
        acme::Account::from_state(client, &state).map_err(|source| {
            lifecycle::Error::AccountState {
                path: state_path.to_path_buf(),
                source,
            }
            .into()
        })
    }

    /// Connects to a given directory.
    pub async fn client_for(&self, url: &str) -> Result<acme::Client, CliError> {
        acme::Client::new(url, &self.client_config)
            .await
            .map_err(|source| {
                lifecycle::Error::Ca {
                    directory: url.to_owned(),
                    source,
                }
                .into()
            })
    }
}

/// Reads a small input file, naming it in the error.
pub fn read_input(path: &std::path::Path, what: &str) -> Result<Vec<u8>, CliError> {
    acme_nginx::fsutil::read_limited(path)
        .map_err(CliError::io(format!("read {what} {}", path.display())))
}

/// Writes an output file atomically, naming it in the error.
pub fn write_output(
    path: &std::path::Path,
    data: &[u8],
    mode: u32,
    what: &str,
) -> Result<(), CliError> {
    acme_nginx::fsutil::write_atomic(path, data, mode)
        .map_err(CliError::io(format!("write {what} {}", path.display())))
}
