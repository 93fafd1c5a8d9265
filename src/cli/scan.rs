//! `acme-nginx scan`: what acme-nginx sees in the nginx configuration.

use acme_nginx::nginx::discovery::Scan;
use clap::Args;

use super::options::Options;
use super::{output, CliError, CmdResult, Context, Exit};

#[derive(Debug, Args)]
pub struct ScanArgs {
    #[command(flatten)]
    pub options: Options,
}

pub fn run(ctx: &Context, args: ScanArgs) -> CmdResult {
    let (config, scan) = args.options.nginx_paths()?.load_with(false)?;
    // The tree is large and the process ends here: leave it to the OS instead of freeing
    // a hundred thousand nodes one by one.
    std::mem::forget(config);
    if ctx.json {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        serde_json::to_writer(&mut out, &scan)
            .map_err(std::io::Error::from)
            .and_then(|()| std::io::Write::write_all(&mut out, b"\n"))
            .and_then(|()| std::io::Write::flush(&mut out))
            .map_err(CliError::Output)?;
    } else {
        table(&scan)?;
    }
    Ok(Exit::Ok)
}

fn table(scan: &Scan) -> Result<(), CliError> {
    output::line(format!(
        "nginx: {}  user: {}:{}  pid file: {}",
        scan.nginx_conf.display(),
        scan.user,
        scan.group,
        scan.pid_file.display()
    ))?;
    let rows: Vec<[String; 6]> = scan
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
        "CERTIFICATE",
    ];
    output::table(header, &rows, 60)?;
    for s in &scan.servers {
        for k in &s.skipped {
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
