//! Install: a new version in the lineage, the server-block edits, one change transaction
//! (`nginx -t`, reload, restore on failure), the TLS proof ([`super::verify`]) that nginx serves
//! the new leaf, and the deploy hooks. A certificate nginx refuses is rolled back to the version
//! that was live before; an intent written first lets the next run roll back whatever a crash
//! in between leaves.

use std::path::Path;

use time::OffsetDateTime;

use super::order::Fresh;
use super::{record, verify};
use crate::acme;
use crate::lifecycle::env::Env;
use crate::lifecycle::intent::Intent;
use crate::lifecycle::lineage::{LineageMeta, Replaced};
use crate::lifecycle::outcome::{chain_text, Failure, Outcome, Status};
use crate::lifecycle::plan::Plan;
use crate::lifecycle::Error;
use crate::nginx::discovery::Scan;
use crate::nginx::edit::{self, Edit, EditRefused, InstallSpec};
use crate::nginx::transaction::{self, Change, ChangeError, NewFile};
use crate::nginx::Config;
use crate::store::{self, Issued};

/// A certificate waiting for the reload.
struct Staged {
    plan: Plan,
    /// The live version before this run, for a rollback.
    previous: Option<u32>,
    /// The version being installed, when it is not the live one of before.
    version: Option<u32>,
    status: Status,
    /// The leaf (DER) nginx must serve afterwards.
    leaf: Option<Vec<u8>>,
    /// The lines this install replaces in its blocks, remembered once it is served so that
    /// `remove` can put them back.
    replaced: Vec<Replaced>,
}

fn first_cert(pem: &[u8]) -> Option<Vec<u8>> {
    acme::pem_certificates(pem)
        .ok()
        .and_then(|v| v.into_iter().next())
}

/// Stores fresh certificates (and switches to versions issued earlier but not installed),
/// points blocks at lineages, then one change transaction, a TLS check of every HTTPS
/// listener, and deploy hooks. An intent written first lets the next run roll back whatever a
/// crash in between leaves.
pub(crate) async fn deploy(
    env: &Env,
    cfg: &Config,
    scan: &Scan,
    fresh: Vec<Fresh>,
    install_only: Vec<Plan>,
) -> Result<Vec<Outcome>, Error> {
    let mut outcomes = Vec::new();
    if fresh.is_empty() && install_only.is_empty() {
        return Ok(outcomes);
    }
    let mut intent = Intent {
        lineages: fresh
            .iter()
            .map(|f| &f.plan)
            .chain(&install_only)
            .map(|p| (p.lineage(), env.store.lineage(&p.lineage()).live_version()))
            .collect(),
        ..Intent::default()
    };
    env.store.write_intent(&intent)?;
    let result = deploy_under_intent(
        env,
        cfg,
        scan,
        fresh,
        install_only,
        &mut intent,
        &mut outcomes,
    )
    .await;
    match result {
        // Every staged lineage is settled (served, or rolled back with its version pending).
        Ok(()) => {
            env.store.clear_intent()?;
            Ok(outcomes)
        }
        // Stopped half-way: roll back now what the intent names, as the next run would.
        Err(e) => {
            if let Err(r) = crate::lifecycle::intent::recover(&env.store) {
                tracing::warn!("{}", chain_text(&r));
            }
            Err(e)
        }
    }
}

async fn deploy_under_intent(
    env: &Env,
    cfg: &Config,
    scan: &Scan,
    fresh: Vec<Fresh>,
    install_only: Vec<Plan>,
    intent: &mut Intent,
    outcomes: &mut Vec<Outcome>,
) -> Result<(), Error> {
    let mut staged = Vec::new();
    for f in fresh {
        match store_version(env, scan, &f) {
            Ok(s) => staged.push(s),
            Err(e) => {
                let mut o = env.outcome(&f.plan, Status::Failed);
                o.error = Some(Failure::transient(format!(
                    "cannot store the certificate: {}",
                    chain_text(&e)
                )));
                outcomes.push(o);
            }
        }
    }
    for plan in install_only {
        let lineage = env.store.lineage(&plan.lineage());
        let previous = lineage.live_version();
        let meta = env.meta(&plan.lineage())?;
        let version = match env.pending_install(&plan, &meta) {
            Some(v) => {
                lineage.point_live_at(v)?;
                Some(v)
            }
            None => None,
        };
        staged.push(Staged {
            leaf: lineage.live_fullchain().and_then(|p| first_cert(&p)),
            previous,
            version,
            status: Status::Installed,
            plan,
            replaced: Vec::new(),
        });
    }
    if staged.is_empty() {
        return Ok(());
    }
    if !env.mode.edits_nginx() {
        for s in &staged {
            settle(env, s, true)?;
            record::run_deploy_hooks(env, &s.plan).await;
            outcomes.push(env.outcome(&s.plan, s.status));
        }
        return Ok(());
    }
    // Edits for blocks that do not point at their lineage yet.
    let mut change = Change::default();
    let mut kept = Vec::new();
    let mut moved_blocks: Vec<usize> = Vec::new();
    for mut s in staged {
        match edits_for(env, cfg, scan, &s.plan) {
            Ok(mut e) => {
                // A block certbot set up keeps working once certbot is purged: its shared
                // TLS settings are copied and the block points at the copies.
                for &b in &s.plan.install_blocks {
                    // Once per block (a hybrid block's two certificates share it).
                    if moved_blocks.contains(&b) {
                        continue;
                    }
                    moved_blocks.push(b);
                    let block = &scan.servers[b];
                    let (moves, copies) = certbot_shared_moves(&env.store.root, cfg, block);
                    if !moves.is_empty() {
                        e.extend(edit::move_path_edits(cfg, block, &moves));
                        change.add_new_files(copies);
                    }
                }
                s.replaced = e
                    .iter()
                    .filter(|e| e.end > e.start)
                    .map(|e| Replaced {
                        file: cfg.files[e.file].path.clone(),
                        offset: e.start,
                        original: String::from_utf8_lossy(&cfg.files[e.file].text[e.start..e.end])
                            .into_owned(),
                        inserted: e.text.clone(),
                    })
                    .collect();
                change.edits.extend(e);
                kept.push(s);
            }
            Err(why) => outcomes.push(fail_and_roll_back(env, &s, why.0)),
        }
    }
    if kept.is_empty() {
        return Ok(());
    }
    let ctl = env.settings.nginx.ctl(cfg, scan)?;
    let backups = transaction::new_backup_dir(&env.store.backups_dir());
    let (edited, created) = change.touched(cfg);
    intent.backup_dir = Some(backups.clone());
    intent.edited = edited;
    intent.created = created;
    env.store.write_intent(intent)?;
    let kept = match transaction::commit(&ctl, cfg, &change, &backups, true).await {
        Ok(_) => kept,
        // One block's refusal must not fail the others: each is tried alone.
        Err(e @ ChangeError::Rejected { .. })
            if kept.len() > 1 && e.restore_failure().is_none() =>
        {
            one_block_at_a_time(env, &ctl, kept, &backups, outcomes).await?
        }
        Err(e) => {
            let message = chain_text(&e);
            for s in &kept {
                outcomes.push(fail_and_roll_back(env, s, message.clone()));
            }
            return Ok(());
        }
    };
    if kept.is_empty() {
        return Ok(());
    }
    // Verify what nginx serves, then deploy hooks.
    let (_, new_scan) = env.reread()?;
    for s in &kept {
        match verify::verify(&new_scan, &s.plan, s.leaf.as_deref()).await {
            Ok(()) => {
                settle(env, s, true)?;
                if let Some(info) = s
                    .leaf
                    .as_deref()
                    .and_then(|d| acme::CertInfo::from_der(d).ok())
                {
                    env.coordinator
                        .report(&s.plan.lineage(), &info.serial_hex)
                        .await;
                }
                record::run_deploy_hooks(env, &s.plan).await;
                let mut o = env.outcome(&s.plan, s.status);
                o.server_blocks = s.plan.block_locations.clone();
                outcomes.push(o);
            }
            Err(e) => {
                let mut o = env.outcome(&s.plan, Status::Failed);
                o.error = Some(Failure::transient(chain_text(&e)));
                outcomes.push(o);
            }
        }
    }
    Ok(())
}

/// After nginx refused the change for all staged certificates together: each one's edits
/// alone (on the configuration as the ones accepted before left it), `nginx -t` each, and
/// one reload for the accepted. Returns the accepted; the refused fail with nginx's words,
/// which name the file at fault.
async fn one_block_at_a_time(
    env: &Env,
    ctl: &crate::nginx::NginxCtl,
    kept: Vec<Staged>,
    backups: &std::path::Path,
    outcomes: &mut Vec<Outcome>,
) -> Result<Vec<Staged>, Error> {
    let mut accepted = Vec::new();
    let mut applied = Vec::new();
    for s in kept {
        // Our edits only insert and replace lines inside blocks: the blocks keep their
        // order, so the plan's block indices hold in the re-read configuration (their line
        // numbers do not).
        let (cfg_now, scan_now) = env.reread()?;
        let change = match edits_for(env, &cfg_now, &scan_now, &s.plan) {
            Ok(edits) => Change {
                edits,
                ..Change::default()
            },
            Err(why) => {
                outcomes.push(fail_and_roll_back(env, &s, why.0));
                continue;
            }
        };
        match transaction::commit(ctl, &cfg_now, &change, backups, false).await {
            Ok(a) => {
                applied.push(a);
                accepted.push(s);
            }
            Err(e) => outcomes.push(fail_and_roll_back(env, &s, chain_text(&e))),
        }
    }
    if accepted.is_empty() {
        return Ok(accepted);
    }
    if let Err(e) = ctl.reload().await {
        let mut message = format!("the reload failed: {}", chain_text(&e));
        for a in applied.iter().rev() {
            if let Err(r) = a.restore() {
                message.push_str(&format!("; restoring failed: {r}"));
            }
        }
        for s in &accepted {
            outcomes.push(fail_and_roll_back(env, s, message.clone()));
        }
        return Ok(Vec::new());
    }
    Ok(accepted)
}

/// The edits that point a plan's install blocks (indices into `scan`) at its lineage.
fn edits_for(env: &Env, cfg: &Config, scan: &Scan, plan: &Plan) -> Result<Vec<Edit>, EditRefused> {
    let l = env.store.lineage(&plan.lineage());
    let files = (l.live_file(store::FULLCHAIN), l.live_file(store::PRIVKEY));
    edits_at(env, cfg, scan, plan, files)
}

/// The edits that point a plan's install blocks at the certificate and key `files` (the
/// lineage's live files; a throwaway pair when the edit is rehearsed).
pub(crate) fn edits_at(
    env: &Env,
    cfg: &Config,
    scan: &Scan,
    plan: &Plan,
    (fullchain, key): (std::path::PathBuf, std::path::PathBuf),
) -> Result<Vec<Edit>, EditRefused> {
    let spec = InstallSpec {
        fullchain,
        key,
        https_port: env.settings.https_port,
        redirect: env.settings.redirect,
        slot: plan.slot(),
    };
    let mut edits = Vec::new();
    for &b in &plan.install_blocks {
        let block = scan
            .servers
            .get(b)
            .ok_or_else(|| EditRefused("its server block is gone".to_owned()))?;
        edits.extend(edit::install_edits(cfg, block, &spec)?);
    }
    Ok(edits)
}

/// Records how a staged certificate ended: installed (nothing pending any more, and the
/// failure streak of an earlier install that nginx refused is over), or not (its version
/// stays pending, to be installed again without a new order).
fn settle(env: &Env, s: &Staged, installed: bool) -> Result<(), Error> {
    let mut meta = env.meta(&s.plan.lineage())?;
    let pending = if installed { None } else { s.version };
    let ends_streak = installed && meta.renewal.failures > 0;
    if (installed && !s.replaced.is_empty()) || ends_streak {
        meta.replaced.extend(s.replaced.iter().cloned());
        meta.pending_version = pending;
        if ends_streak {
            meta.renewal.record_success();
        }
        env.save_meta(&s.plan.lineage(), &meta)?;
    } else if meta.pending_version != pending {
        meta.pending_version = pending;
        env.save_meta(&s.plan.lineage(), &meta)?;
    }
    Ok(())
}

/// Writes a fresh certificate as the lineage's new live version and resets its renewal
/// state.
fn store_version(env: &Env, scan: &Scan, f: &Fresh) -> Result<Staged, Error> {
    let lineage = env.store.lineage(&f.plan.lineage());
    let previous = lineage.live_version();
    let mut meta: LineageMeta = lineage.load_meta()?;
    let version = lineage.install(&Issued {
        key_pem: &f.key_pem,
        cert_pem: &f.chain.leaf_pem(),
        chain_pem: &f.chain.chain_pem(),
    })?;
    meta.names = f.plan.names.clone();
    meta.directory = f.directory.clone();
    meta.key_type = f.key_type.to_string();
    meta.server_blocks = f
        .plan
        .blocks
        .iter()
        .map(|i| scan.servers[*i].location())
        .collect();
    meta.issued_at = Some(OffsetDateTime::now_utc().unix_timestamp());
    meta.last_replaces = f.chain.replaces.clone();
    meta.renewal.record_success();
    meta.pending_version = None;
    env.save_meta(&f.plan.lineage(), &meta)?;
    Ok(Staged {
        plan: f.plan.clone(),
        previous,
        version: Some(version),
        status: f.status,
        leaf: Some(f.chain.leaf_der().to_vec()),
        replaced: Vec::new(),
    })
}

/// A failed outcome for a staged certificate, after pointing its lineage back at what was
/// live before (a rollback that fails is part of the message).
fn fail_and_roll_back(env: &Env, s: &Staged, message: String) -> Outcome {
    let lineage = env.store.lineage(&s.plan.lineage());
    let rolled_back = match (s.version, s.previous) {
        (None, _) => Ok(()),
        (Some(_), Some(v)) => lineage.point_live_at(v),
        (Some(_), None) => lineage.remove_live(),
    };
    let mut message = message;
    if let Err(e) = rolled_back {
        message.push_str(&format!(
            "; rolling the lineage back failed too: {}",
            chain_text(&e)
        ));
    }
    // The issued certificate is kept and installed again by the next run, without an order.
    if let Err(e) = settle(env, s, false) {
        message.push_str(&format!(
            "; remembering the pending version failed: {}",
            chain_text(&e)
        ));
    }
    let mut o = env.outcome(&s.plan, Status::Failed);
    o.error = Some(Failure::transient(message));
    o
}

/// certbot's shared nginx files, copied into the state directory when a block uses them.
const CERTBOT_SHARED_FILES: &[&str] = &["options-ssl-nginx.conf", "ssl-dhparams.pem"];

/// certbot's shared nginx files (`options-ssl-nginx.conf`, `ssl-dhparams.pem`) that a block's
/// own lines name (`include`, `ssl_dhparam`), wherever certbot keeps them: the moves to copies
/// in `STATE/certbot/`, and the copies, to be created inside the same change transaction (so
/// a change nginx refuses leaves none). Each is read without following a link another user
/// could plant, must be a regular file under the size cap, and is copied 0644 only when the
/// source is world-readable (else 0600). A file that cannot be read so is not moved, with a
/// warning: purging certbot would then break the block, and the warning says so.
pub(crate) fn certbot_shared_moves(
    state_dir: &Path,
    cfg: &crate::nginx::Config,
    block: &crate::nginx::discovery::ServerBlock,
) -> (Vec<(String, String)>, Vec<NewFile>) {
    let copies_dir = state_dir.join("certbot");
    let mut moves = Vec::new();
    let mut files = Vec::new();
    for path in edit::own_paths(cfg, block, &["include", "ssl_dhparam"]) {
        let p = Path::new(&path);
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !CERTBOT_SHARED_FILES.contains(&name) || p.starts_with(state_dir) {
            continue;
        }
        let copy = copies_dir.join(name);
        match crate::fsutil::read_for_copy(p) {
            Ok((contents, mode)) => {
                moves.push((path.clone(), copy.display().to_string()));
                files.push(NewFile {
                    path: copy,
                    contents,
                    mode,
                });
            }
            Err(e) => tracing::warn!(
                "{}: {path} (certbot's) is not copied, so removing certbot would break this block: {e}",
                block.location()
            ),
        }
    }
    (moves, files)
}
