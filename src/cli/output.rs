//! Printing: aligned tables, JSON, times, and error chains. Text that came from elsewhere (the
//! CA's problem details, nginx's messages, file names) is printed with control characters
//! escaped, so nothing can drive the terminal or forge lines in the journal. Every write reports
//! its error, so a closed pipe ends a command quietly instead of panicking.

use std::fmt::Write as _;
use std::io::{self, Write};

use serde::Serialize;
use time::OffsetDateTime;

use super::CliError;

/// Writes one line on stdout.
pub fn line(text: impl std::fmt::Display) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    writeln!(out, "{}", escape_controls(&text.to_string())).map_err(CliError::Output)
}

/// Writes a value as pretty JSON on stdout (JSON escapes control characters itself).
pub fn json(value: &impl Serialize) -> Result<(), CliError> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    serde_json::to_writer_pretty(&mut out, value)
        .map_err(io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(CliError::Output)
}

/// Prints rows under a header as aligned columns (each at most `max_width` wide for alignment).
pub fn table<const N: usize>(
    header: [&str; N],
    rows: &[[String; N]],
    max_width: usize,
) -> Result<(), CliError> {
    let mut widths = header.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count()).min(max_width);
        }
    }
    let render = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        parts.join("  ").trim_end().to_owned()
    };
    line(render(&header.map(String::from)))?;
    for r in rows {
        line(render(r))?;
    }
    Ok(())
}

/// A time as RFC 3339 ("-" for none).
pub fn time(t: Option<OffsetDateTime>) -> String {
    t.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .unwrap_or_else(|| "-".into())
}

/// An error and all its causes, `: `-separated, control characters escaped.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    escape_controls(&acme_nginx::lifecycle::outcome::chain_text(e))
}

/// Control characters (C0 but newline and tab, DEL, C1) as `\u{..}`; newlines that would
/// forge a new log line are kept only between our own lines, so a foreign text is one line.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\n' || c == '\t' || !c.is_control() {
            out.push(c);
        } else {
            write!(out, "\\u{{{:x}}}", c as u32).ok();
        }
    }
    out
}

/// A foreign text on one line: every control character escaped, newlines too.
pub fn one_line(text: &str) -> String {
    escape_controls(&text.replace('\n', "\\n").replace('\r', "\\r"))
}

/// The one outcome table of enroll, renew, remove and import-certbot: the name, the status,
/// when (the next attempt for a name that is not done - skipped, failed, in backoff, not due -
/// else the end of the certificate it has), and why (the error or the reason; for a done name,
/// its certificate file or the blocks it was removed from). Errors are repeated on stderr.
pub fn outcomes(outcomes: &[acme_nginx::lifecycle::Outcome]) -> Result<(), CliError> {
    use acme_nginx::lifecycle::Status;
    let rows: Vec<[String; 4]> = outcomes
        .iter()
        .map(|o| {
            let pending = matches!(
                o.status,
                Status::Skipped | Status::Failed | Status::Backoff | Status::NotDue
            );
            let when = match (pending, o.next_renewal, o.not_after) {
                (true, Some(next), _) => format!("next {}", time(Some(next))),
                (_, _, Some(end)) => format!("until {}", time(Some(end))),
                _ => "-".into(),
            };
            let why = o
                .error
                .as_ref()
                .map(|e| e.message.clone())
                .or(o.reason.clone())
                .or(o.fullchain.as_ref().map(|p| p.display().to_string()))
                .unwrap_or_else(|| o.server_blocks.join(", "));
            [
                o.name.clone(),
                o.status.to_string(),
                when,
                one_line(if why.is_empty() { "-" } else { &why }),
            ]
        })
        .collect();
    table(["NAME", "STATUS", "WHEN", "WHY / FILE"], &rows, 60)?;
    for o in outcomes {
        if let Some(e) = &o.error {
            eprintln!("error: {}: {}", o.name, one_line(&e.message));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("a\x1b[31mred\x07"), "a\\u{1b}[31mred\\u{7}");
        assert_eq!(escape_controls("osc \u{9d}x"), "osc \\u{9d}x");
        assert_eq!(one_line("two\nlines\r"), "two\\nlines\\r");
        assert_eq!(escape_controls("plain: ok"), "plain: ok");
    }
}
