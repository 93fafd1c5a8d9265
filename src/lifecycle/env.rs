//! What a session's stages share, built once per session: the resolved settings and mode, the
//! state directory, the coordinator (solo or fleet) and the CA client, whose directory is fetched
//! at most once however many stages need it. Stages receive `&Env`; none of them reaches back
//! into the session that called it.

use time::OffsetDateTime;
use tokio::sync::OnceCell;

use super::coordinator::Coordinator;
use super::lineage::{live_cert, same_names, LineageMeta};
use super::outcome::{Outcome, Status};
use super::plan::{self, Plan};
use super::settings::{Mode, Settings};
use super::Error;
use crate::acme;
use crate::nginx::discovery::Scan;
use crate::nginx::Config;
use crate::store::{self, Store};

/// The collaborators of one session.
#[derive(Debug)]
pub struct Env {
    pub settings: Settings,
    pub mode: Mode,
    pub store: Store,
    /// Who else orders these lineages: nobody, or the nodes of a fleet.
    pub coordinator: Coordinator,
    /// The CA clients, preferred first, each made (one directory fetch) the first time a stage
    /// needs it.
    cas: Vec<(String, OnceCell<acme::Client>)>,
    /// In a stateless fleet: the JWK thumbprint of the fleet's account at the preferred CA,
    /// read (or the account made) the first time the challenge snippet is written.
    thumbprint: OnceCell<String>,
    /// The install lock while this session holds it (see [`crate::store::InstallLock`]).
    install: std::sync::Mutex<Option<store::InstallLock>>,
}

impl Env {
    /// The collaborators for these settings (no CA request yet).
    pub fn new(mut settings: Settings, mode: Mode, store: Store, coordinator: Coordinator) -> Env {
        // With another CA to try, a CA that answers "503, retry in 30 s" is passed over at
        // once rather than waited for.
        if !settings.fallback_directories.is_empty() {
            settings.client_config.max_inline_retry_wait = Some(std::time::Duration::ZERO);
        }
        let cas = settings
            .directories()
            .map(|d| (d.to_owned(), OnceCell::new()))
            .collect();
        Env {
            settings,
            mode,
            store,
            coordinator,
            cas,
            thumbprint: OnceCell::new(),
            install: std::sync::Mutex::new(None),
        }
    }

    /// Takes the install lock (a session that writes nothing takes none), then completes or
    /// rolls back what a holder killed while holding it left: a half-done change of nginx's
    /// files, an install's lineages. Holding it already is fine.
    pub(crate) async fn hold_install(&self) -> Result<(), Error> {
        if !self.mode.writes_state() || self.holds_install() {
            return Ok(());
        }
        let lock = self.store.install_lock(store::INSTALL_LOCK_WAIT).await?;
        recover_installs(&self.store)?;
        if let Ok(mut held) = self.install.lock() {
            *held = Some(lock);
        }
        Ok(())
    }

    /// Takes the install lock again once the CA's work is done, waiting as long as it takes:
    /// what the CA issued (or the failures to remember) must not be dropped because an
    /// install took long (a deploy hook may run for minutes), or the next run would ask the
    /// CA again. Every [`store::INSTALL_LOCK_WAIT`] the wait is logged with its holder.
    pub(crate) async fn hold_install_to_keep(&self, what: &str) -> Result<(), Error> {
        loop {
            match self.hold_install().await {
                Err(Error::Store(store::Error::Locked { path, holder })) => tracing::warn!(
                    "{what} waits for {} (held by pid {holder}); still waiting",
                    path.display()
                ),
                done => return done,
            }
        }
    }

    /// Lets the install lock go while this session waits on someone else (the CA, a hook), so
    /// a fleet node's agent can install what another node published meanwhile. What the
    /// session read of lineages before may be stale when it takes the lock again.
    pub(crate) fn let_go_install(&self) {
        if let Ok(mut held) = self.install.lock() {
            held.take();
        }
    }

    fn holds_install(&self) -> bool {
        self.install.lock().is_ok_and(|held| held.is_some())
    }

    /// The challenge snippet acme-nginx writes: the location serving `challenge_dir`; in a
    /// stateless fleet, the location answering every token for the fleet's account.
    pub async fn snippet_contents(&self) -> Result<String, Error> {
        if !self.coordinator.stateless() {
            return Ok(super::settings::snippet_text(&self.settings.challenge_dir));
        }
        let thumbprint = self
            .thumbprint
            .get_or_try_init(|| async {
                let client = self.ca().await?.clone();
                let account = self
                    .coordinator
                    .account(
                        &self.settings,
                        &self.store,
                        self.mode.writes_state(),
                        client,
                    )
                    .await?;
                Ok::<_, Error>(acme::thumbprint(account.key()))
            })
            .await?;
        Ok(super::settings::stateless_snippet_text(thumbprint))
    }

    /// The preferred CA's client (see [`Env::ca_at`]).
    pub async fn ca(&self) -> Result<&acme::Client, Error> {
        self.ca_at(&self.settings.directory).await
    }

    /// The client of one of the settings' CAs: its directory is fetched the first time, then
    /// kept for the session. A failure is not kept (a later stage asks again).
    pub async fn ca_at(&self, directory: &str) -> Result<&acme::Client, Error> {
        let cell = self
            .cas
            .iter()
            .find(|(d, _)| d == directory)
            .map(|(_, c)| c)
            .ok_or_else(|| Error::Ca {
                directory: directory.to_owned(),
                source: acme::Error::State("not one of the configured CAs".into()),
            })?;
        cell.get_or_try_init(|| async {
            acme::Client::new(directory, &self.settings.client_config)
                .await
                .map_err(|source| Error::Ca {
                    directory: directory.to_owned(),
                    source,
                })
        })
        .await
    }

    /// Reads and scans nginx's configuration.
    pub fn load(&self) -> Result<(Config, Scan), Error> {
        Ok(self.settings.nginx.load()?)
    }

    /// The plans for the named server blocks (all when `wanted` is empty). A plan whose
    /// blocks live in a file nginx's edit could not change for all its names (hard links)
    /// fails here, before anything is ordered for it.
    pub fn plans(&self, scan: &Scan, wanted: &[String]) -> Result<Vec<Plan>, Error> {
        let mut plans = plan::plans(
            scan,
            wanted,
            self.settings.http_port,
            &self.settings.proving(),
        )?;
        if self.mode.edits_nginx() {
            for p in plans.iter_mut().filter(|p| p.error.is_none()) {
                p.error = p
                    .install_blocks
                    .iter()
                    .find_map(|&i| crate::nginx::edit::hard_linked(&scan.servers[i].file));
            }
        }
        // Blocks whose certificate nginx's ACME module or a variable picks are left alone,
        // unless named and taken over.
        let take_over = self.settings.take_over;
        for p in plans.iter_mut().filter(|p| p.error.is_none()) {
            p.error = p.install_blocks.iter().find_map(|&i| {
                let s = &scan.servers[i];
                let why = s.managed_elsewhere.as_ref()?;
                (!(take_over && p.named)).then(|| {
                    format!(
                        "{}: left alone: {why}; name it with --take-over to replace it",
                        s.location()
                    )
                })
            });
        }
        Ok(plans)
    }

    /// The plan of the server blocks that use a lineage now (the RSA lineage of a hybrid block
    /// maps to that block's second plan).
    pub(crate) fn plan_for_lineage(&self, scan: &Scan, name: &str) -> Option<Plan> {
        let (primary, rsa) = plan::split_lineage(name);
        self.plans(scan, &[primary.to_owned()])
            .ok()?
            .into_iter()
            .find(|p| p.primary == primary && p.variant.is_some() == rsa)
    }

    pub(crate) fn meta(&self, name: &str) -> Result<LineageMeta, Error> {
        Ok(self.store.lineage(name).load_meta()?)
    }

    pub(crate) fn save_meta(&self, name: &str, meta: &LineageMeta) -> Result<(), Error> {
        if self.mode.writes_state() {
            self.store.lineage(name).save_meta(meta)?;
        }
        Ok(())
    }

    /// The version issued for this plan but not installed yet, when it is still good to
    /// install: present, valid for a while, and for the plan's names.
    pub(crate) fn pending_install(&self, plan: &Plan, meta: &LineageMeta) -> Option<u32> {
        let v = meta.pending_version?;
        let l = self.store.lineage(&plan.lineage());
        let cert = super::lineage::version_cert(&l, v)?;
        let valid = cert.info.not_after > OffsetDateTime::now_utc() + time::Duration::hours(1);
        (valid && same_names(&cert.info.names, &plan.names)).then_some(v)
    }

    /// An outcome for a plan, with what its lineage holds now.
    pub(crate) fn outcome(&self, plan: &Plan, status: Status) -> Outcome {
        let lineage = self.store.lineage(&plan.lineage());
        let live = live_cert(&lineage);
        let mut o = Outcome::new(&plan.lineage(), &plan.names, status);
        o.not_after = live.as_ref().map(|c| c.info.not_after);
        o.fullchain = Some(lineage.live_file(store::FULLCHAIN)).filter(|p| p.exists());
        o.key = Some(lineage.live_file(store::PRIVKEY)).filter(|p| p.exists());
        o.server_blocks = plan.block_locations.clone();
        if status == Status::Renewed {
            o.replaces = lineage
                .load_meta::<LineageMeta>()
                .ok()
                .and_then(|m| m.last_replaces);
        }
        o
    }

    /// Reads the configuration again after a change, leaving out included files that do not
    /// parse (they were reported when the run started).
    pub(crate) fn reread(&self) -> Result<(Config, Scan), Error> {
        let (cfg, scan, _) = self.settings.nginx.load_lenient()?;
        Ok((cfg, scan))
    }
}

/// Completes or rolls back what a holder of the install lock left when it was killed: a change
/// of nginx's files left half-done is undone first (whatever it was for), then an install's
/// lineages are pointed back (its intent). Called with the install lock held.
fn recover_installs(store: &Store) -> Result<(), Error> {
    let recovered =
        crate::nginx::transaction::recover(&store.backups_dir()).map_err(Error::io(format!(
            "undo the nginx change an earlier run left unfinished (journal in {})",
            store.backups_dir().display()
        )))?;
    for f in &recovered.restored {
        tracing::warn!(
            "an earlier run was interrupted while changing {}: put back as it was",
            f.display()
        );
    }
    for f in &recovered.removed {
        tracing::warn!(
            "an earlier run was interrupted after creating {}: removed",
            f.display()
        );
    }
    super::intent::recover(store)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::{KeyPair, KeyType};
    use crate::store::Issued;

    /// A self-signed certificate for `names`, valid from a day ago for `days`.
    fn cert(key: &KeyPair, names: &[&str], days: i64) -> String {
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let now = OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(days);
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&[1, 2, 3]));
        p.self_signed(key).unwrap().pem()
    }

    /// A version issued earlier but not installed is installed again (no order) only while it
    /// is still good: present, valid for more than an hour, for the plan's names.
    #[test]
    fn a_pending_version_is_installed_only_while_it_is_good() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::with_defaults("https://ca.test/directory");
        settings.state_dir = dir.path().to_path_buf();
        let env = Env::new(
            settings,
            Mode::Live,
            Store::open(dir.path()).unwrap(),
            Coordinator::Solo,
        );
        let plan = Plan {
            primary: "a.test".into(),
            names: vec!["a.test".into(), "www.a.test".into()],
            ..Plan::default()
        };
        let key = KeyPair::generate(KeyType::P256);
        let l = env.store.lineage("a.test");
        let version = |names: &[&str], days: i64| {
            l.install(&Issued {
                key_pem: &key.to_pem(),
                cert_pem: &cert(&key, names, days),
                chain_pem: "",
            })
            .unwrap()
        };
        let good = version(&["a.test", "www.a.test"], 30);
        let other_names = version(&["a.test"], 30);
        let expired = version(&["a.test", "www.a.test"], 0);
        let pending = |v: Option<u32>| {
            let meta = LineageMeta {
                pending_version: v,
                ..LineageMeta::default()
            };
            env.pending_install(&plan, &meta)
        };
        assert_eq!(pending(Some(good)), Some(good));
        assert_eq!(pending(Some(other_names)), None, "names differ");
        assert_eq!(pending(Some(expired)), None, "expires within the hour");
        assert_eq!(pending(Some(99)), None, "no such version");
        assert_eq!(pending(None), None);
    }
}
