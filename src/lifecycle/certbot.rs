//! `import-certbot`: taking over certbot's certificates without ordering new ones. Each
//! `renewal/NAME.conf` names its live files and its account; the current key and chain become
//! the first version of an acme-nginx lineage (the key is checked against the certificate),
//! certbot's account (an RSA key, RS256) becomes this state's account for its CA when there is
//! none yet, and the server blocks that use certbot's files are pointed at ours: certificate
//! lines through the normal install (`nginx -t`, reload, TLS proof that the same certificate is
//! served), `options-ssl-nginx.conf` and `ssl-dhparams.pem` copied into the state directory and
//! referenced there, `ssl_trusted_certificate` pointed at our chain. `/etc/letsencrypt` is only
//! read. A lineage no server block uses is left to certbot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::lineage::{live_cert, LineageMeta, Replaced};
use super::outcome::{chain_text, Failure, Outcome, Status};
use super::stages::install;
use super::{Error, Session};
use crate::acme::{self, AccountState, CertInfo, KeyPair};
use crate::nginx::edit::{self, Edit};
use crate::nginx::transaction::{self, Change};
use crate::store::{self, Issued};

/// Where certbot keeps its state.
pub const DEFAULT_CERTBOT_DIR: &str = "/etc/letsencrypt";
/// The largest certbot file read (a renewal configuration, a key, a chain).
const MAX_FILE: u64 = 1024 * 1024;

/// What is wrong with a renewal configuration's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfError {
    #[error("line {line}: not `key = value`: {text:?}")]
    NotKeyValue { line: usize, text: String },
    #[error("no `{0}` path")]
    Missing(&'static str),
}

/// Why one certbot lineage or account cannot be imported (the others still are).
#[derive(Debug, thiserror::Error)]
pub enum CertbotError {
    #[error("{}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: larger than {MAX_FILE} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("{}: {problem}", path.display())]
    Conf { path: PathBuf, problem: ConfError },
    #[error("{}: {error}", path.display())]
    Acme { path: PathBuf, error: acme::Error },
    #[error("{}: {message}", path.display())]
    Json { path: PathBuf, message: String },
    #[error("{} is not the key of {}", key.display(), cert.display())]
    NotTheKey { key: PathBuf, cert: PathBuf },
}

/// A certbot renewal configuration (`renewal/NAME.conf`): top-level keys and
/// `[renewalparams]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenewalConf {
    pub top: BTreeMap<String, String>,
    pub params: BTreeMap<String, String>,
}

impl RenewalConf {
    /// Parses certbot's configobj format (`key = value` lines, `[section]` headers, `#`
    /// comments).
    pub fn parse(text: &str) -> Result<RenewalConf, ConfError> {
        let mut conf = RenewalConf::default();
        let mut section = String::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(s) = line.strip_prefix('[') {
                section = s.trim_end_matches(']').trim().to_owned();
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| ConfError::NotKeyValue {
                line: i + 1,
                text: line.to_owned(),
            })?;
            let (k, v) = (k.trim().to_owned(), v.trim().trim_matches('"').to_owned());
            match section.as_str() {
                "" => conf.top.insert(k, v),
                "renewalparams" => conf.params.insert(k, v),
                _ => None,
            };
        }
        for key in ["cert", "privkey", "chain", "fullchain"] {
            if !conf.top.contains_key(key) {
                return Err(ConfError::Missing(key));
            }
        }
        Ok(conf)
    }

    fn path(&self, key: &str) -> PathBuf {
        PathBuf::from(self.top.get(key).map(String::as_str).unwrap_or_default())
    }

    /// The CA directory the certificate came from.
    pub fn server(&self) -> Option<&str> {
        self.params.get("server").map(String::as_str)
    }
}

/// A server block (index), the paths to point elsewhere in it (old, new), and the lineage
/// that remembers the change.
type BlockMoves = (usize, Vec<(String, String)>, String);

/// One certbot lineage, read and checked.
struct Lineage {
    name: String,
    conf: RenewalConf,
    key: KeyPair,
    leaf_pem: String,
    chain_pem: String,
    info: CertInfo,
}

/// Reads a file of certbot's (root's own directory, checked by the caller), capped.
fn read(path: &Path) -> Result<String, CertbotError> {
    let io = |error| CertbotError::Read {
        path: path.to_path_buf(),
        error,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_FILE {
        return Err(CertbotError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    std::fs::read_to_string(path).map_err(io)
}

fn load_lineage(name: &str, conf_path: &Path) -> Result<Lineage, CertbotError> {
    let conf = RenewalConf::parse(&read(conf_path)?).map_err(|problem| CertbotError::Conf {
        path: conf_path.to_path_buf(),
        problem,
    })?;
    let acme_err = |path: PathBuf| move |error| CertbotError::Acme { path, error };
    let (key_path, chain_path) = (conf.path("privkey"), conf.path("fullchain"));
    let key = KeyPair::from_pem(&read(&key_path)?).map_err(acme_err(key_path.clone()))?;
    let fullchain = read(&chain_path)?;
    // The strict parse refuses anything but certificates, and an empty chain.
    let chain = acme::CertificateChain::parse(fullchain, &chain_path.display().to_string())
        .map_err(acme_err(chain_path.clone()))?;
    if !acme::key_matches(chain.leaf_der(), &key).map_err(acme_err(chain_path.clone()))? {
        return Err(CertbotError::NotTheKey {
            key: key_path,
            cert: chain_path,
        });
    }
    Ok(Lineage {
        name: name.to_owned(),
        conf,
        key,
        leaf_pem: chain.leaf_pem(),
        chain_pem: chain.chain_pem(),
        info: chain.leaf,
    })
}

/// certbot's account `id` for `server`: `accounts/HOST/PATH/ID/{private_key,regr}.json`.
fn load_account(certbot: &Path, server: &str, id: &str) -> Result<AccountState, CertbotError> {
    let rest = server
        .split_once("://")
        .map_or(server, |(_, r)| r)
        .trim_end_matches('/');
    let dir = certbot.join("accounts").join(rest).join(id);
    let json = |path: PathBuf| -> Result<serde_json::Value, CertbotError> {
        serde_json::from_str(&read(&path)?).map_err(|e| CertbotError::Json {
            path,
            message: e.to_string(),
        })
    };
    let (key_path, regr_path) = (dir.join("private_key.json"), dir.join("regr.json"));
    let key = KeyPair::from_jwk(&json(key_path.clone())?).map_err(|error| CertbotError::Acme {
        path: key_path,
        error,
    })?;
    let regr = json(regr_path.clone())?;
    let url = regr["uri"].as_str().ok_or_else(|| CertbotError::Json {
        path: regr_path.clone(),
        message: "no account \"uri\"".into(),
    })?;
    let contact = regr["body"]["contact"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(AccountState {
        directory: server.to_owned(),
        account_url: url.to_owned(),
        private_key_pem: key.to_pem(),
        contact,
    })
}

impl Session {
    /// Imports certbot's lineages (those nginx blocks use) from `certbot`, installs them into
    /// their blocks and reports each. In a dry run, says what it would do and changes nothing.
    pub async fn import_certbot(&self, certbot: &Path) -> Result<Vec<Outcome>, Error> {
        if let Some(why) = crate::fsutil::writable_by_others(certbot) {
            return Err(Error::Certbot(format!("{} {why}", certbot.display())));
        }
        let renewal = certbot.join("renewal");
        let mut confs: Vec<PathBuf> = std::fs::read_dir(&renewal)
            .map_err(|e| Error::Certbot(format!("{}: {e}", renewal.display())))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect();
        confs.sort();
        let (cfg, scan) = self.load()?;
        let all_plans = self.plans(&scan, &[])?;
        let mut outcomes = Vec::new();
        let mut installs = Vec::new();
        let mut moves_for: Vec<BlockMoves> = Vec::new();
        for conf_path in confs {
            let name = conf_path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let failed = |why: String| {
                let mut o = Outcome::new(&name, std::slice::from_ref(&name), Status::Failed);
                o.error = Some(Failure::transient(why));
                o
            };
            // Imported before: nothing to do (the blocks point at ours since).
            if let Some(done) = self.env.store.lineages().into_iter().find(|l| {
                l.load_meta::<LineageMeta>().is_ok_and(|m| {
                    m.imported_from.as_deref() == Some(conf_path.as_path())
                        && m.pending_version.is_none()
                })
            }) {
                let meta: LineageMeta = done.load_meta()?;
                let mut o = Outcome::new(&done.name, &meta.names, Status::UpToDate);
                o.reason = Some(format!("imported from {} before", conf_path.display()));
                o.fullchain = Some(done.live_file(store::FULLCHAIN)).filter(|p| p.exists());
                outcomes.push(o);
                continue;
            }
            let lineage = match load_lineage(&name, &conf_path) {
                Ok(l) => l,
                Err(why) => {
                    outcomes.push(failed(why.to_string()));
                    continue;
                }
            };
            let paths: Vec<String> = ["fullchain", "cert"]
                .iter()
                .map(|k| lineage.conf.path(k).display().to_string())
                .collect();
            let blocks: Vec<usize> = (0..scan.servers.len())
                .filter(|&i| {
                    scan.servers[i]
                        .ssl_certificates
                        .iter()
                        .any(|c| paths.contains(c))
                })
                .collect();
            let Some(mut plan) = all_plans
                .iter()
                .find(|p| {
                    p.variant.is_none() && p.install_blocks.iter().any(|b| blocks.contains(b))
                })
                .cloned()
            else {
                let mut o = Outcome::new(&name, &lineage.info.names, Status::Skipped);
                o.reason =
                    Some("no server block uses certbot's files for it; left to certbot".into());
                outcomes.push(o);
                continue;
            };
            plan.install_blocks.retain(|b| blocks.contains(b));
            plan.names = lineage.info.names.clone();
            let ours = self.env.store.lineage(&plan.lineage());
            let meta: LineageMeta = ours.load_meta()?;
            if meta.issued_at.is_some() && meta.pending_version.is_none() {
                let mut o = self.env.outcome(&plan, Status::UpToDate);
                o.reason = Some(format!(
                    "already managed by acme-nginx{}",
                    if live_cert(&ours)
                        .is_some_and(|c| c.info.serial_hex == lineage.info.serial_hex)
                    {
                        " (imported from certbot)"
                    } else {
                        ""
                    }
                ));
                outcomes.push(o);
                continue;
            }
            let server = lineage
                .conf
                .server()
                .unwrap_or(self.env.settings.directory.as_str())
                .to_owned();
            if !self.env.mode.writes_state() {
                let mut o = self.env.outcome(&plan, Status::DryRun);
                o.reason = Some(format!(
                    "would import certbot's {} (serial {}, {}) from {} and point {} at it",
                    lineage.name,
                    lineage.info.serial_hex,
                    lineage.info.names.join(", "),
                    server,
                    plan.install_blocks
                        .iter()
                        .map(|&b| scan.servers[b].location())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                outcomes.push(o);
                continue;
            }
            // The account first: only the account that ordered a certificate may name it in
            // `replaces` at renewal.
            let account_path = self.env.store.account_path(&server);
            if !account_path.exists() {
                if let Some(id) = lineage.conf.params.get("account") {
                    match load_account(certbot, &server, id) {
                        Ok(state) => super::account::write_state(&account_path, &state)?,
                        Err(why) => tracing::warn!(
                            "certbot's account {id} is not imported ({why}); a new account renews {}",
                            lineage.name
                        ),
                    }
                }
            }
            let version = ours.install(&Issued {
                key_pem: &lineage.key.to_pem(),
                cert_pem: &lineage.leaf_pem,
                chain_pem: &lineage.chain_pem,
            })?;
            let mut meta = meta;
            meta.names = lineage.info.names.clone();
            meta.directory = server;
            meta.key_type = lineage.key.key_type().to_string();
            meta.issued_at = Some(lineage.info.not_before.unix_timestamp());
            meta.pending_version = Some(version);
            meta.imported_from = Some(conf_path.clone());
            meta.preferred_chain = lineage
                .conf
                .params
                .get("preferred_chain")
                .filter(|c| !c.is_empty())
                .cloned();
            meta.reuse_key = lineage
                .conf
                .params
                .get("reuse_key")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            meta.renewal.record_success();
            self.env.save_meta(&plan.lineage(), &meta)?;
            tracing::info!(
                "imported certbot's {} as version {version} of {}",
                lineage.name,
                plan.lineage()
            );
            // certbot's other files in these blocks: its shared TLS settings (copied) and the
            // chain (ours).
            let moves = vec![(
                lineage.conf.path("chain").display().to_string(),
                ours.live_file(store::CHAIN).display().to_string(),
            )];
            for &b in &plan.install_blocks {
                moves_for.push((b, moves.clone(), plan.lineage()));
            }
            installs.push(plan);
        }
        if installs.is_empty() {
            return Ok(outcomes);
        }
        self.move_certbot_paths(&cfg, &scan, &moves_for).await?;
        let (cfg, scan) = self.env.reread()?;
        outcomes.extend(self.execute(cfg, scan, Vec::new(), installs).await?);
        Ok(outcomes)
    }

    /// Copies certbot's shared nginx files into the state directory and points the blocks'
    /// references to certbot's files at ours (one change transaction); what was replaced is
    /// remembered in the lineages for `remove`.
    async fn move_certbot_paths(
        &self,
        cfg: &crate::nginx::Config,
        scan: &crate::nginx::discovery::Scan,
        moves_for: &[BlockMoves],
    ) -> Result<(), Error> {
        let mut change = Change::default();
        let mut per_lineage: Vec<(String, Vec<Edit>)> = Vec::new();
        for (b, moves, lineage) in moves_for {
            let block = &scan.servers[*b];
            let (shared, copies) =
                install::certbot_shared_moves(&self.env.settings.state_dir, cfg, block);
            let mut moves = moves.clone();
            moves.extend(shared);
            let edits = edit::move_path_edits(cfg, block, &moves);
            if edits.is_empty() {
                continue;
            }
            per_lineage.push((lineage.clone(), edits.clone()));
            change.edits.extend(edits);
            change.add_new_files(copies);
        }
        if change.edits.is_empty() {
            return Ok(());
        }
        let ctl = self.env.settings.nginx.ctl(cfg, scan)?;
        let backups = transaction::new_backup_dir(&self.env.store.backups_dir());
        transaction::commit(&ctl, cfg, &change, &backups, true)
            .await
            .map_err(|e| {
                Error::Certbot(format!(
                    "pointing the blocks at copies of certbot's files failed, nothing changed: {}",
                    chain_text(&e)
                ))
            })?;
        for (lineage, edits) in per_lineage {
            let mut meta = self.env.meta(&lineage)?;
            meta.replaced.extend(edits.iter().map(|e| Replaced {
                file: cfg.files[e.file].path.clone(),
                offset: e.start,
                original:
                    String::from_utf8_lossy(&cfg.files[e.file].text[e.start..e.end]).into_owned(),
                inserted: e.text.clone(),
            }));
            self.env.save_meta(&lineage, &meta)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout certbot 2.x writes (`renewal/example.org.conf`).
    const CONF: &str = "# renew_before_expiry = 30 days\nversion = 2.1.0\n\
        archive_dir = /etc/letsencrypt/archive/example.org\n\
        cert = /etc/letsencrypt/live/example.org/cert.pem\n\
        privkey = /etc/letsencrypt/live/example.org/privkey.pem\n\
        chain = /etc/letsencrypt/live/example.org/chain.pem\n\
        fullchain = /etc/letsencrypt/live/example.org/fullchain.pem\n\n\
        # Options used in the renewal process\n[renewalparams]\n\
        account = 0123456789abcdef0123456789abcdef\nauthenticator = nginx\ninstaller = nginx\n\
        server = https://acme-v02.api.letsencrypt.org/directory\nkey_type = ecdsa\n\
        preferred_chain = ISRG Root X1\nreuse_key = True\n";

    #[test]
    fn certbot_renewal_configurations_parse() {
        let c = RenewalConf::parse(CONF).unwrap();
        assert_eq!(
            c.path("fullchain"),
            Path::new("/etc/letsencrypt/live/example.org/fullchain.pem")
        );
        assert_eq!(
            c.server(),
            Some("https://acme-v02.api.letsencrypt.org/directory")
        );
        assert_eq!(c.params["preferred_chain"], "ISRG Root X1");
        assert_eq!(c.params["account"], "0123456789abcdef0123456789abcdef");
        let err = RenewalConf::parse("version = 2\ncert = /x\n").unwrap_err();
        assert_eq!(err, ConfError::Missing("privkey"));
        assert_eq!(err.to_string(), "no `privkey` path");
        let err = RenewalConf::parse("cert /x\n").unwrap_err();
        assert_eq!(
            err,
            ConfError::NotKeyValue {
                line: 1,
                text: "cert /x".into()
            }
        );
    }

    #[test]
    fn account_keys_come_from_jwks() {
        // An EC JWK made from a key we know: the same key comes back.
        let key = KeyPair::generate(acme::KeyType::P256);
        let pem = key.to_pem();
        let secret = {
            use p256::pkcs8::DecodePrivateKey;
            p256::SecretKey::from_pkcs8_pem(&pem).unwrap()
        };
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256",
            "d": acme::b64(secret.to_bytes()),
        });
        assert_eq!(KeyPair::from_jwk(&jwk).unwrap().to_pem(), pem);
        for bad in [
            serde_json::json!({"kty": "oct", "k": "AAAA"}),
            serde_json::json!({"kty": "RSA", "n": "AQAB"}),
            serde_json::json!({"kty": "EC", "crv": "P-521", "d": "AAAA"}),
        ] {
            assert!(KeyPair::from_jwk(&bad).is_err(), "{bad}");
        }
    }
}
