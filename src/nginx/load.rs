//! Where the configuration comes from and how it is read: the main file, the nginx binary (for
//! `nginx -V` build defaults and `nginx -t`), the prefix, or an `nginx -T` dump; parsing plus
//! discovery in one call.

use std::path::{Path, PathBuf};

use super::ctl::{error_log_path, NginxCtl};
use super::discovery::{self, BuildDefaults, Scan};
use super::{Config, DiskSource, DumpSource, ParseError};

/// The default main configuration file.
pub const DEFAULT_CONF: &str = "/etc/nginx/nginx.conf";
/// Where the nginx binary is looked for besides PATH.
const SBIN_DIRS: [&str; 3] = ["/usr/sbin", "/usr/local/sbin", "/sbin"];

/// Which nginx, and which configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paths {
    /// The main configuration file [default: /etc/nginx/nginx.conf].
    pub conf: Option<PathBuf>,
    /// The nginx binary [default: `nginx` on PATH or in the sbin directories].
    pub bin: Option<PathBuf>,
    /// `nginx -p PREFIX`, when the running nginx was started with one.
    pub prefix: Option<PathBuf>,
    /// Read the configuration from this `nginx -T` output ("-" for stdin) instead of disk.
    pub dump: Option<PathBuf>,
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("cannot read the nginx -T output {}", path.display())]
    Dump {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no \"# configuration file PATH:\" line in the nginx -T output")]
    DumpWithoutMain,
    #[error("nginx binary {} not found", .0.display())]
    NoBinary(PathBuf),
}

impl Paths {
    /// The main configuration file.
    pub fn conf(&self) -> PathBuf {
        self.conf
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONF))
    }

    /// The nginx binary as given (a bare name is looked up when run).
    pub fn bin(&self) -> PathBuf {
        self.bin.clone().unwrap_or_else(|| PathBuf::from("nginx"))
    }

    /// The nginx binary's path: as given when it has a slash, else on PATH or in the sbin
    /// directories.
    pub fn binary(&self) -> Option<PathBuf> {
        let bin = self.bin();
        if bin.components().count() > 1 {
            return bin.is_file().then_some(bin);
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(SBIN_DIRS.map(PathBuf::from))
            .map(|d| d.join(&bin))
            .find(|p| p.is_file())
    }

    /// nginx's build defaults (`nginx -V`), with the prefix overridden by `prefix`.
    pub fn build_defaults(&self) -> BuildDefaults {
        let mut defaults = self
            .binary()
            .map(|b| BuildDefaults::probe(&b))
            .unwrap_or_default();
        if let Some(prefix) = &self.prefix {
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

    /// Parses the configuration (keeping the texts, so it can be edited) and scans it.
    pub fn load(&self) -> Result<(Config, Scan), LoadError> {
        self.load_with(true)
    }

    /// Like [`Paths::load`]; without `keep_text` the tree cannot be rendered or edited.
    pub fn load_with(&self, keep_text: bool) -> Result<(Config, Scan), LoadError> {
        let defaults = self.build_defaults();
        let config = match &self.dump {
            Some(dump) => {
                let bytes = if dump.as_os_str() == "-" {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map(|_| buf)
                } else {
                    std::fs::read(dump)
                }
                .map_err(|source| LoadError::Dump {
                    path: dump.clone(),
                    source,
                })?;
                let source = DumpSource::parse(&bytes);
                let main = source.main.clone().ok_or(LoadError::DumpWithoutMain)?;
                Config::load_with(&main, &source, keep_text)?
            }
            None => Config::load_with(&self.conf(), &DiskSource, keep_text)?,
        };
        let scan = discovery::scan(&config, &defaults);
        Ok((config, scan))
    }

    /// Like [`Paths::load`], but included files that do not parse are left out and returned
    /// (the main file must parse). From disk only.
    pub fn load_lenient(&self) -> Result<(Config, Scan, Vec<ParseError>), LoadError> {
        if self.dump.is_some() {
            let (c, s) = self.load()?;
            return Ok((c, s, Vec::new()));
        }
        let (config, skipped) = Config::load_lenient(&self.conf(), &DiskSource)?;
        let scan = discovery::scan(&config, &self.build_defaults());
        Ok((config, scan, skipped))
    }

    /// A controller for the running nginx of this configuration.
    pub fn ctl(&self, cfg: &Config, scan: &Scan) -> Result<NginxCtl, LoadError> {
        let bin = self
            .binary()
            .ok_or_else(|| LoadError::NoBinary(self.bin()))?;
        let defaults = self.build_defaults();
        Ok(NginxCtl {
            bin,
            conf: self.conf(),
            prefix: self.prefix.clone(),
            pid_file: scan.pid_file.clone(),
            error_log: error_log_path(cfg, &defaults.prefix),
        })
    }
}
