//! `acme-nginx scan`: what acme-nginx sees in the nginx configuration.

use acme_nginx::lifecycle::plan::Proving;
use acme_nginx::nginx::discovery::{Context as Where, Scan, ServerBlock};
use clap::Args;
use serde::Serialize;

use super::options::Options;
use super::{output, CliError, CmdResult, Context, Exit};

#[derive(Debug, Args)]
pub struct ScanArgs {
    #[command(flatten)]
    pub options: Options,
}

/// The JSON output: the scan, each server block carrying how each of its names would be
/// proven and which names an exclude pattern leaves out. Computed while it is written (a tree
/// of 10,000 blocks would otherwise hold a map per block).
#[derive(Serialize)]
struct ScanOutput<'a> {
    nginx_conf: &'a std::path::Path,
    user: &'a str,
    group: &'a str,
    pid_file: &'a std::path::Path,
    servers: Servers<'a>,
    warnings: &'a [String],
}

/// The names exclude patterns left out, with the pattern, by block index: only the blocks that
/// have some (a per-block list would cost every block of a large tree its empty list).
type Excluded = std::collections::BTreeMap<usize, Vec<(String, String)>>;

/// The names `excluded` holds for block `i` (none for most).
fn excluded_in(excluded: &Excluded, i: usize) -> &[(String, String)] {
    excluded.get(&i).map_or(&[], Vec::as_slice)
}

/// The server blocks with their names' methods and exclusions.
struct Servers<'a> {
    scan: &'a Scan,
    proving: &'a Proving<'a>,
    /// The names an exclude pattern left out, with the pattern, by block index.
    excluded: Excluded,
    owners: std::cell::RefCell<Owners>,
}

/// One server block as `scan --json` shows it.
#[derive(Serialize)]
struct ServerOut<'a> {
    #[serde(flatten)]
    block: &'a ServerBlock,
    /// The first certificate and key in effect (the block keeps them once, in its lists).
    ssl_certificate: Option<&'a str>,
    ssl_certificate_key: Option<&'a str>,
    /// Each name a certificate would hold and how it would be proven.
    challenges: NameMap,
    /// Each name an exclude pattern leaves out, with the pattern.
    excluded: NameMap,
    /// Each name the operator's DNS credentials may not prove here, with why.
    dns_refused: NameMap,
    /// The user owning the file that defines the block (who decides what it asks for).
    file_owner: Option<String>,
}

/// The user name (or uid) owning each configuration file, looked up once per file and once
/// per user (a tree of 10,000 blocks has far fewer files and owners).
#[derive(Default)]
struct Owners {
    files: std::collections::HashMap<std::path::PathBuf, Option<String>>,
    users: std::collections::HashMap<u32, String>,
}

impl Owners {
    fn of(&mut self, path: &std::path::Path) -> Option<String> {
        use std::os::unix::fs::MetadataExt as _;
        if let Some(known) = self.files.get(path) {
            return known.clone();
        }
        let owner = std::fs::metadata(path).ok().map(|m| {
            let uid = m.uid();
            self.users
                .entry(uid)
                .or_insert_with(|| {
                    nix::unistd::User::from_uid(uid.into())
                        .ok()
                        .flatten()
                        .map_or_else(|| uid.to_string(), |u| u.name)
                })
                .clone()
        });
        self.files.insert(path.to_path_buf(), owner.clone());
        owner
    }
}

/// Names and one value each, written as a JSON object in order.
struct NameMap(Vec<(String, String)>);

impl Serialize for NameMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl Serialize for Servers<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let blocks = self.scan.servers.iter().enumerate();
        s.collect_seq(blocks.map(|(i, block)| {
            let challenges = self
                .proving
                .block_names(block)
                .into_iter()
                .map(|n| {
                    let m = self.proving.method_in(&n, block).to_string();
                    (n, m)
                })
                .collect();
            ServerOut {
                block,
                ssl_certificate: block.ssl_certificate(),
                ssl_certificate_key: block.ssl_certificate_key(),
                challenges: NameMap(challenges),
                excluded: NameMap(excluded_in(&self.excluded, i).to_vec()),
                dns_refused: NameMap(self.proving.dns_refused(block)),
                file_owner: self.owners.borrow_mut().of(&block.file),
            }
        }))
    }
}

pub fn run(ctx: &Context, args: ScanArgs) -> CmdResult {
    let settings = args.options.settings(ctx)?;
    let proving = settings.proving();
    let (config, mut scan) = args.options.nginx_paths()?.load_with(false)?;
    // The tree is large and the process ends here: leave it to the OS instead of freeing
    // a hundred thousand nodes one by one.
    std::mem::forget(config);
    // A name an exclude pattern leaves out is not enrollable, whatever the block says (and the
    // table and the JSON say which pattern left it out).
    let excluded: Excluded = scan
        .servers
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let out = proving.excluded_names(s);
            (!out.is_empty())
                .then(|| (i, out.into_iter().map(|(n, p)| (n, p.to_owned())).collect()))
        })
        .collect();
    for s in &mut scan.servers {
        s.enrollable.retain(|n| proving.excluded_by(n).is_none());
    }
    if ctx.json {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let out_value = ScanOutput {
            nginx_conf: &scan.nginx_conf,
            user: &scan.user,
            group: &scan.group,
            pid_file: &scan.pid_file,
            servers: Servers {
                scan: &scan,
                proving: &proving,
                excluded,
                owners: Default::default(),
            },
            warnings: &scan.warnings,
        };
        serde_json::to_writer(&mut out, &out_value)
            .map_err(std::io::Error::from)
            .and_then(|()| std::io::Write::write_all(&mut out, b"\n"))
            .and_then(|()| std::io::Write::flush(&mut out))
            .map_err(CliError::Output)?;
    } else {
        table(&scan, &proving, &excluded)?;
    }
    Ok(Exit::Ok)
}

/// How a block's names are proven: one method, or each name's when they differ; names an
/// exclude pattern leaves out say `excluded (GLOB)`, a block the operator marked says
/// `ignored (marker at FILE:LINE)`.
fn challenges(s: &ServerBlock, proving: &Proving<'_>, excluded: &[(String, String)]) -> String {
    if let Some(at) = &s.ignored {
        return format!("ignored (marker at {at})");
    }
    let names = proving.block_names(s);
    let methods: Vec<String> = names
        .iter()
        .map(|n| proving.method_in(n, s).to_string())
        .collect();
    let one_method = methods.first().filter(|m| methods.iter().all(|x| x == *m));
    match (one_method, excluded) {
        (_, []) if names.is_empty() => "-".into(),
        (Some(m), []) => m.clone(),
        (None, [(_, pattern)]) if names.is_empty() => format!("excluded ({pattern})"),
        _ => names
            .iter()
            .zip(&methods)
            .map(|(n, m)| format!("{n}: {m}"))
            .chain(excluded.iter().map(|(n, p)| format!("{n}: excluded ({p})")))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn table(scan: &Scan, proving: &Proving<'_>, excluded: &Excluded) -> Result<(), CliError> {
    output::line(format!(
        "nginx: {}  user: {}:{}  pid file: {}",
        scan.nginx_conf.display(),
        scan.user,
        scan.group,
        scan.pid_file.display()
    ))?;
    let rows: Vec<[String; 7]> = scan
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let excluded = excluded_in(excluded, i);
            [
                s.enrollable
                    .first()
                    .or(s.server_names.first())
                    .cloned()
                    .unwrap_or_else(|| "-".into()),
                s.location(),
                if s.server_names.is_empty() {
                    "-".into()
                } else {
                    s.server_names.join(" ")
                },
                {
                    let listen = s
                        .listen
                        .iter()
                        .map(|l| l.raw.clone())
                        .collect::<Vec<_>>()
                        .join(", ");
                    match (s.context, s.starttls) {
                        (Where::Http, _) => listen,
                        (c, Some(p)) => format!("{}: {listen} (starttls {p:?})", c.as_str()),
                        (c, None) => format!("{}: {listen}", c.as_str()),
                    }
                },
                match (&s.acme_challenge_dir, &s.acme_challenge_reason) {
                    (Some(d), _) => d.display().to_string(),
                    (None, _) if s.acme_challenge_stateless.is_some() => format!(
                        "stateless (account {})",
                        s.acme_challenge_stateless.as_deref().unwrap_or_default()
                    ),
                    (None, Some(r)) => format!("- ({})", output::one_line(r)),
                    (None, None) => "-".into(),
                },
                challenges(s, proving, excluded),
                s.ssl_certificate().unwrap_or("-").to_owned(),
            ]
        })
        .collect();
    let header = [
        "SERVER",
        "FILE:LINE",
        "NAMES",
        "LISTEN",
        "CHALLENGE DIR",
        "CHALLENGE",
        "CERTIFICATE",
    ];
    output::table(header, &rows, 60)?;
    for s in &scan.servers {
        if let Some(advice) = &s.advice {
            output::line(format!("note: {}: {advice}", s.location()))?;
        }
        let names = proving.block_names(s);
        let refused = proving.dns_refused(s);
        for (name, why) in &refused {
            output::line(format!(
                "note: {}: {name} takes no dns-01 here: {}",
                s.location(),
                output::one_line(why)
            ))?;
        }
        for k in s.skipped.iter().filter(|k| {
            let n = k.name.to_ascii_lowercase();
            !names.contains(&n) && !refused.iter().any(|(r, _)| *r == n)
        }) {
            output::line(format!(
                "note: {}: skipping {:?}: {}",
                s.location(),
                k.name,
                k.reason
            ))?;
        }
    }
    for w in &scan.warnings {
        output::line(format!("warning: {w}"))?;
    }
    Ok(())
}
