//! `acme-nginx scan`: what acme-nginx sees in the nginx configuration.

use std::collections::BTreeMap;

use acme_nginx::lifecycle::plan::Proving;
use acme_nginx::nginx::discovery::Scan;
use clap::Args;
use serde::Serialize;

use super::options::Options;
use super::{output, CliError, CmdResult, Context, Exit};

#[derive(Debug, Args)]
pub struct ScanArgs {
    #[command(flatten)]
    pub options: Options,
}

/// The JSON output: the scan, and how each name would be proven.
#[derive(Serialize)]
struct ScanOutput<'a> {
    #[serde(flatten)]
    scan: &'a Scan,
    /// Per server block (same order), each name and its challenge.
    challenges: Vec<BTreeMap<String, String>>,
    /// Per server block, the names an exclude pattern leaves out, with the pattern.
    excluded: Vec<BTreeMap<String, String>>,
}

pub fn run(ctx: &Context, args: ScanArgs) -> CmdResult {
    let settings = args.options.settings(ctx)?;
    let proving = settings.proving();
    let (config, scan) = args.options.nginx_paths()?.load_with(false)?;
    // The tree is large and the process ends here: leave it to the OS instead of freeing
    // a hundred thousand nodes one by one.
    std::mem::forget(config);
    if ctx.json {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let out_value = ScanOutput {
            scan: &scan,
            challenges: scan
                .servers
                .iter()
                .map(|s| {
                    proving
                        .block_names(s)
                        .into_iter()
                        .map(|n| {
                            let m = proving.method_for(&n).to_string();
                            (n, m)
                        })
                        .collect()
                })
                .collect(),
            excluded: scan
                .servers
                .iter()
                .map(|s| {
                    proving
                        .excluded_names(s)
                        .into_iter()
                        .map(|(n, p)| (n, p.to_owned()))
                        .collect()
                })
                .collect(),
        };
        serde_json::to_writer(&mut out, &out_value)
            .map_err(std::io::Error::from)
            .and_then(|()| std::io::Write::write_all(&mut out, b"\n"))
            .and_then(|()| std::io::Write::flush(&mut out))
            .map_err(CliError::Output)?;
    } else {
        table(&scan, &proving)?;
    }
    Ok(Exit::Ok)
}

/// How a block's names are proven: one method, or each name's when they differ.
fn challenges(s: &acme_nginx::nginx::discovery::ServerBlock, proving: &Proving<'_>) -> String {
    let names = proving.block_names(s);
    let methods: Vec<String> = names
        .iter()
        .map(|n| proving.method_for(n).to_string())
        .collect();
    match methods.first() {
        None => "-".into(),
        Some(first) if methods.iter().all(|m| m == first) => first.clone(),
        Some(_) => names
            .iter()
            .zip(&methods)
            .map(|(n, m)| format!("{n}: {m}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn table(scan: &Scan, proving: &Proving<'_>) -> Result<(), CliError> {
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
        .map(|s| {
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
                s.listen
                    .iter()
                    .map(|l| l.raw.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
                match (&s.acme_challenge_dir, &s.acme_challenge_reason) {
                    (Some(d), _) => d.display().to_string(),
                    (None, Some(r)) => format!("- ({})", output::one_line(r)),
                    (None, None) => "-".into(),
                },
                challenges(s, proving),
                s.ssl_certificate.clone().unwrap_or_else(|| "-".into()),
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
        let names = proving.block_names(s);
        for k in s
            .skipped
            .iter()
            .filter(|k| !names.contains(&k.name.to_ascii_lowercase()))
        {
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
