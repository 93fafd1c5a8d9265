//! Minimal edits of server blocks: only inserted or replaced lines, every other byte of the file
//! unchanged. Edits are computed from the parse tree's spans, applied atomically (symlinked
//! files are edited where they point, keeping mode and owner), backed up, and restorable byte
//! for byte when `nginx -t` refuses the result.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::discovery::{Listen, ServerBlock};
use super::parser::{Config, Directive, FileId};
use crate::fsutil;

/// Marks every line acme-nginx writes.
pub const MARK: &str = "# managed by acme-nginx";

/// One replacement of `start..end` (an insertion when equal) in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub file: FileId,
    pub start: usize,
    pub end: usize,
    pub text: String,
}

/// What to put into a server block.
#[derive(Debug, Clone, Default)]
pub struct InstallSpec {
    pub fullchain: PathBuf,
    pub key: PathBuf,
    pub https_port: u16,
    pub redirect: bool,
    /// Which certificate pair of the block to set: 0 the first; 1 the second of a block that
    /// serves an ECDSA and an RSA certificate (the pair is added when the block has none).
    pub slot: usize,
}

/// Why a configuration file cannot be edited in place of all its names: it has hard links
/// (a site installed with `ln`, not `ln -s`). Edits replace a file atomically (a new inode), so
/// the other names would keep the old text. None when the file has one name (or cannot be
/// read: the edit itself then says why).
pub fn hard_linked(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let links = std::fs::metadata(path).ok()?.nlink();
    (links > 1).then(|| {
        format!(
            "{} has {links} hard links: an edit would leave the other names with the old text; \
             make them symbolic links (ln -sf) or a single file",
            path.display()
        )
    })
}

/// Why a block cannot be edited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditRefused(pub String);

impl std::fmt::Display for EditRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn text_of<'a>(cfg: &'a Config, d: &Directive) -> &'a [u8] {
    &cfg.files[d.file].text
}

fn find_server<'a>(cfg: &'a Config, block: &ServerBlock) -> Option<&'a Directive> {
    let mut found = None;
    cfg.walk(|d, _| {
        if found.is_none()
            && d.name == "server"
            && d.file == block.file_id
            && d.start == block.span.0
        {
            found = Some(d);
        }
    });
    found
}

/// The indentation of a block's children (from its first child on its own line), or the
/// block's own indentation plus four spaces.
fn child_indent(text: &[u8], server: &Directive) -> String {
    let line_indent = |offset: usize| -> Option<String> {
        let line_start = text[..offset]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let prefix = &text[line_start..offset];
        prefix
            .iter()
            .all(|b| *b == b' ' || *b == b'\t')
            .then(|| String::from_utf8_lossy(prefix).into_owned())
    };
    if let Some(first) = server.children().iter().find(|c| c.file == server.file) {
        if let Some(indent) = line_indent(first.start) {
            return indent;
        }
    }
    format!("{}    ", line_indent(server.start).unwrap_or_default())
}

/// Where new lines go: after the block's last own `listen` (or `server_name`), else after `{`.
/// After the directive's own trailing comment (certbot's "listen 80; # managed by Certbot"),
/// so an inserted line never takes a comment away from its directive.
fn insertion_point(text: &[u8], server: &Directive) -> usize {
    let own = || server.children().iter().filter(|c| c.file == server.file);
    own()
        .rfind(|c| c.name == "listen")
        .or_else(|| own().rfind(|c| c.name == "server_name"))
        .map_or_else(
            || server.block.as_ref().map_or(server.end, |b| b.open + 1),
            |d| end_of_trailing_comment(text, d.end),
        )
}

fn lines_at(indent: &str, lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| format!("\n{indent}{l} {MARK}"))
        .collect()
}

/// Our lines end in a comment: when the original line goes on after `at` (a one-line block),
/// break the line so the comment cannot swallow what follows.
fn end_line(mut text: String, file_text: &[u8], at: usize, indent: &str) -> String {
    let rest = &file_text[at.min(file_text.len())..];
    let line_rest = rest.split(|b| *b == b'\n').next().unwrap_or(&[]);
    if line_rest.iter().any(|b| !b.is_ascii_whitespace()) {
        text.push('\n');
        text.push_str(indent);
    }
    text
}

/// Where a directive ending at `end` really ends: after a comment that follows it on the same
/// line, if there is one (not including the line break).
fn end_of_trailing_comment(text: &[u8], end: usize) -> usize {
    let rest = &text[end.min(text.len())..];
    let line = rest.split(|b| *b == b'\n').next().unwrap_or(&[]);
    let skip = line
        .iter()
        .take_while(|b| **b == b' ' || **b == b'\t')
        .count();
    if line.get(skip) == Some(&b'#') {
        end + line.len()
    } else {
        end
    }
}

/// The HTTPS `listen` directives a block needs: one per plain-HTTP address it listens on.
pub fn https_listens(listen: &[Listen], https_port: u16) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    // A plain listener on the HTTPS port itself is made `ssl` where it stands (see
    // `install_edits`): it is neither a source of a new listener nor a reason for one.
    for l in listen
        .iter()
        .filter(|l| !l.ssl && l.port != https_port && !l.address.starts_with("unix:"))
    {
        let has = listen.iter().any(|o| {
            o.port == https_port
                && (o.address == l.address || (o.address == "*" && l.address == "0.0.0.0"))
        });
        if has {
            continue;
        }
        let addr = match l.address.as_str() {
            "*" | "0.0.0.0" => https_port.to_string(),
            a => format!("{a}:{https_port}"),
        };
        let line = format!("listen {addr} ssl;");
        if !out.contains(&line) {
            out.push(line);
        }
    }
    out
}

/// The edit replacing directive `d` of `text` (with the comment that ends its line, which
/// belongs to it) by `line`, marked.
fn replace_directive(text: &[u8], d: &Directive, line: &str, indent: &str) -> Edit {
    let end = end_of_trailing_comment(text, d.end);
    Edit {
        file: d.file,
        start: d.start,
        end,
        text: end_line(format!("{line} {MARK}"), text, end, indent),
    }
}

/// A block's own plain listeners on the HTTPS port (nginxconfig.io's state before a certificate:
/// `listen 443; # ssl http2;`) become `ssl` where they stand, and an `ssl off;` that would
/// contradict them is commented out; each edit marked, the original kept for `remove`.
fn plain_https_listeners_to_ssl(
    text: &[u8],
    own: &[&Directive],
    https_port: u16,
    indent: &str,
) -> Vec<Edit> {
    let mut edits = Vec::new();
    let mut converted = false;
    for d in own.iter().filter(|d| d.name == "listen") {
        let plain_https = Listen::parse(&d.args)
            .is_some_and(|l| !l.ssl && l.port == https_port && !l.address.starts_with("unix:"));
        if !plain_https {
            continue;
        }
        let written = String::from_utf8_lossy(&text[d.start..d.end]);
        let Some(without_semicolon) = written.strip_suffix(';') else {
            continue;
        };
        converted = true;
        let line = format!("{} ssl;", without_semicolon.trim_end());
        edits.push(replace_directive(text, d, &line, indent));
    }
    if converted {
        for d in own
            .iter()
            .filter(|d| d.name == "ssl" && d.args.first().is_some_and(|a| a == "off"))
        {
            edits.push(replace_directive(text, d, "# ssl off;", indent));
        }
    }
    edits
}

/// Edits that make a server block serve the certificate at `spec`'s paths: HTTPS listeners,
/// `ssl_certificate` and `ssl_certificate_key` (replacing the block's own ones), and with
/// `redirect` a redirect of plain HTTP except the ACME challenge. No edits when the block already
/// points at these paths.
pub fn install_edits(
    cfg: &Config,
    block: &ServerBlock,
    spec: &InstallSpec,
) -> Result<Vec<Edit>, EditRefused> {
    let server = find_server(cfg, block)
        .ok_or_else(|| EditRefused(format!("{}: server block not found", block.location())))?;
    let fullchain = spec.fullchain.display().to_string();
    let key = spec.key.display().to_string();
    if block.ssl_certificates.get(spec.slot).map(String::as_str) == Some(fullchain.as_str())
        && block
            .ssl_certificate_keys
            .get(spec.slot)
            .map(String::as_str)
            == Some(key.as_str())
    {
        return Ok(Vec::new());
    }
    // Certificates that come from a file the block includes (Debian's snippets/snakeoil.conf,
    // a shared TLS include): that include is turned off in this block only (the file, which
    // other blocks may use, is not touched) and its other directives are written in its place,
    // so the block keeps everything but the certificate.
    let own: Vec<&Directive> = server.children().iter().collect();
    let expanded = cfg.expanded(server.children());
    let is_cert = |d: &Directive| d.name == "ssl_certificate" || d.name == "ssl_certificate_key";
    let mut include_edits = Vec::new();
    let text = &cfg.files[server.file].text;
    let indent = child_indent(text, server);
    for inc in own.iter().filter(|d| d.name == "include" && spec.slot == 0) {
        let inside = cfg.expanded(std::slice::from_ref(*inc));
        if !inside.iter().any(|d| is_cert(d)) {
            continue;
        }
        // Each file the include stands for: the one(s) carrying the certificate are written
        // in its place (everything but the certificate lines, blocks included, each line
        // marked); the others stay included one by one, so a glob's other files and the
        // shared file itself are untouched.
        let mut lines = vec![format!("# {} {};", inc.name, inc.args.join(" "))];
        for &f in inc.includes.iter() {
            let file = &cfg.files[f];
            let own_directives = cfg.expanded(&file.directives);
            if !own_directives.iter().any(|d| is_cert(d)) {
                lines.push(format!("include {};", file.path.display()));
                continue;
            }
            for d in own_directives.iter().filter(|d| !is_cert(d)) {
                let src = &cfg.files[d.file].text;
                let written = String::from_utf8_lossy(&src[d.start..d.end]).into_owned();
                lines.extend(written.lines().map(str::to_owned));
            }
        }
        let end = end_of_trailing_comment(text, inc.end);
        let rendered: Vec<String> = lines.iter().map(|l| format!("{l} {MARK}")).collect();
        include_edits.push(Edit {
            file: server.file,
            start: inc.start,
            end,
            text: end_line(rendered.join(&format!("\n{indent}")), text, end, &indent),
        });
    }
    let mut edits = include_edits;
    // A stream or mail server keeps its listeners: only its certificate lines change.
    let http = block.is_http();
    if spec.slot == 0 && http {
        edits.extend(plain_https_listeners_to_ssl(
            text,
            &own,
            spec.https_port,
            &indent,
        ));
        // Taken over from nginx's ACME module (the plan allowed it): the module stops
        // renewing a certificate nobody would serve.
        for d in own.iter().filter(|d| d.name == "acme_certificate") {
            let line = format!("# acme_certificate {};", d.args.join(" "));
            edits.push(replace_directive(text, d, &line, &indent));
        }
    }
    let mut new_lines = if spec.slot == 0 && http {
        https_listens(&block.listen, spec.https_port)
    } else {
        Vec::new()
    };
    let cert_line = format!("ssl_certificate {fullchain};");
    let key_line = format!("ssl_certificate_key {key};");
    let mut replaced_cert = false;
    let mut replaced_key = false;
    let (mut certs_seen, mut keys_seen) = (0, 0);
    for d in own
        .iter()
        .filter(|d| d.name == "ssl_certificate" || d.name == "ssl_certificate_key")
    {
        let (line, done, seen) = if d.name == "ssl_certificate" {
            (&cert_line, &mut replaced_cert, &mut certs_seen)
        } else {
            (&key_line, &mut replaced_key, &mut keys_seen)
        };
        // Only this slot's pair is replaced; the block's other certificate (RSA beside
        // ECDSA) stays as it is.
        let index = *seen;
        *seen += 1;
        if index != spec.slot {
            continue;
        }
        *done = true;
        // A comment after the directive on its line belongs to it (certbot's
        // "# managed by Certbot"): it goes with the replaced directive.
        edits.push(replace_directive(text_of(cfg, server), d, line, &indent));
    }
    if !replaced_cert {
        new_lines.push(cert_line);
    }
    if !replaced_key {
        new_lines.push(key_line);
    }
    if spec.redirect
        && http
        && spec.slot == 0
        && !expanded
            .iter()
            .any(|d| d.name == "set" && d.args.first().is_some_and(|a| a == "$acme_nginx_redirect"))
    {
        new_lines.push("set $acme_nginx_redirect 0;".into());
        new_lines.push("if ($scheme = http) { set $acme_nginx_redirect 1; }".into());
        new_lines.push("if ($request_uri ~ \"^/\\.well-known/acme-challenge/\") { set $acme_nginx_redirect 0; }".into());
        let port = match spec.https_port {
            443 => String::new(),
            p => format!(":{p}"),
        };
        new_lines.push(format!(
            "if ($acme_nginx_redirect) {{ return 301 https://$host{port}$request_uri; }}"
        ));
    }
    if !new_lines.is_empty() {
        let at = insertion_point(text, server);
        edits.push(Edit {
            file: server.file,
            start: at,
            end: at,
            text: end_line(lines_at(&indent, &new_lines), text, at, &indent),
        });
    }
    Ok(edits)
}

/// The `include` (as `file:line`) whose pattern matches `path`, if any: a file written there
/// would be loaded where that include stands (a `location` at `http` level, a second copy in a
/// block that has one), whatever acme-nginx meant it for.
pub fn include_that_would_load(cfg: &Config, path: &Path) -> Option<String> {
    let mut found = None;
    cfg.walk(|d, _| {
        if found.is_some() || d.name != "include" {
            return;
        }
        let Some(arg) = d.args.first() else {
            return;
        };
        let full = if Path::new(arg.as_str()).is_absolute() {
            PathBuf::from(arg.as_str())
        } else {
            cfg.conf_prefix.join(arg.as_str())
        };
        let hit = glob::Pattern::new(&full.to_string_lossy())
            .map(|p| p.matches_path(path))
            .unwrap_or(full == path);
        if hit {
            let (line, _) = cfg.line_col(d.file, d.start);
            found = Some(format!("{}:{line}", cfg.files[d.file].path.display()));
        }
    });
    found
}

/// What acme-nginx puts first in a block whose server-level `return` or `rewrite` answers every
/// request: for challenge URIs only, it ends the server's rewrite phase (`break`) with the URI
/// unchanged (a `rewrite` would forbid the snippet's `alias`), so the challenge location
/// answers; every other URI is redirected as before.
pub const CHALLENGE_REWRITE: &str = "if ($uri ~ \"^/\\.well-known/acme-challenge/\") { break; }";

/// True for the [`CHALLENGE_REWRITE`] directive as parsed.
pub fn is_challenge_rewrite(d: &Directive) -> bool {
    d.name == "if"
        && d.args.iter().any(|a| a.contains("acme-challenge"))
        && d.children().len() == 1
        && d.children()[0].name == "break"
}

/// The edit that puts [`CHALLENGE_REWRITE`] first in a block (before any directive of the
/// rewrite module, which nginx runs in order).
pub fn challenge_rewrite_edit(cfg: &Config, block: &ServerBlock) -> Result<Edit, EditRefused> {
    let server = find_server(cfg, block)
        .ok_or_else(|| EditRefused(format!("{}: server block not found", block.location())))?;
    let text = &cfg.files[server.file].text;
    let at =
        server.block.as_ref().map(|b| b.open + 1).ok_or_else(|| {
            EditRefused(format!("{}: server block without a body", block.location()))
        })?;
    let indent = child_indent(text, server);
    Ok(Edit {
        file: server.file,
        start: at,
        end: at,
        text: end_line(
            lines_at(&indent, &[CHALLENGE_REWRITE.to_owned()]),
            text,
            at,
            &indent,
        ),
    })
}

/// Edits removing the lines acme-nginx inserted into a block (marked) whose directive `pick`
/// selects: each whole line, so the file is as it was before they were added.
pub fn remove_marked(
    cfg: &Config,
    block: &ServerBlock,
    pick: impl Fn(&Directive) -> bool,
) -> Vec<Edit> {
    let Some(server) = find_server(cfg, block) else {
        return Vec::new();
    };
    let text = &cfg.files[server.file].text;
    server
        .children()
        .iter()
        .filter(|d| d.file == server.file && pick(d))
        .filter_map(|d| {
            let start = text[..d.start]
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
            let end = text[d.end..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(text.len(), |i| d.end + i + 1);
            let line = &text[start..end];
            let only_ours = text[start..d.start].iter().all(|b| b.is_ascii_whitespace())
                && String::from_utf8_lossy(line).trim_end().ends_with(MARK);
            // The line break before it goes too (our lines are inserted as "\n" + line).
            let from = start.saturating_sub(1);
            only_ours.then(|| Edit {
                file: server.file,
                start: from,
                end: end.saturating_sub(1).max(from),
                text: String::new(),
            })
        })
        .collect()
}

/// The first arguments of a block's own directives (its lines, not included files) named
/// `names`: the files an `include` or `ssl_dhparam` there refers to, as written.
pub fn own_paths(cfg: &Config, block: &ServerBlock, names: &[&str]) -> Vec<String> {
    let Some(server) = find_server(cfg, block) else {
        return Vec::new();
    };
    server
        .children()
        .iter()
        .filter(|d| d.file == server.file && names.contains(&d.name.as_str()))
        .filter_map(|d| d.args.first().map(|a| a.to_string()))
        .collect()
}

/// Edits pointing the directives of a block (its own lines, not included files) whose first
/// argument is one of `moves`' old paths at the new path: `include`, `ssl_dhparam`,
/// `ssl_trusted_certificate` and the like naming another tool's files (certbot's
/// `/etc/letsencrypt/...`). Each becomes `NAME NEW; # managed by acme-nginx`.
pub fn move_path_edits(cfg: &Config, block: &ServerBlock, moves: &[(String, String)]) -> Vec<Edit> {
    let Some(server) = find_server(cfg, block) else {
        return Vec::new();
    };
    let text = text_of(cfg, server);
    let indent = child_indent(text, server);
    server
        .children()
        .iter()
        .filter(|d| d.file == server.file && d.block.is_none())
        .filter_map(|d| {
            let first = d.args.first()?;
            let first = first.to_string();
            let (_, new) = moves.iter().find(|(old, _)| *old == first)?;
            let mut args = vec![new.clone()];
            args.extend(d.args.iter().skip(1).map(|a| a.to_string()));
            let line = format!("{} {};", d.name, args.join(" "));
            Some(replace_directive(text, d, &line, &indent))
        })
        .collect()
}

/// The edit that puts `original` back where an install wrote `inserted` into `file`: at the
/// occurrence of `inserted` nearest to `offset` (where it was written; other edits since may
/// have moved it). None when the file no longer holds `inserted`: it was edited by hand since.
pub fn restore_edit(
    cfg: &Config,
    file: &Path,
    offset: usize,
    inserted: &str,
    original: &str,
) -> Option<Edit> {
    let id = cfg.files.iter().position(|f| f.path == file)?;
    let text = &cfg.files[id].text;
    let needle = inserted.as_bytes();
    if needle.is_empty() {
        return None;
    }
    let start = text
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .min_by_key(|i| i.abs_diff(offset))?;
    Some(Edit {
        file: id,
        start,
        end: start + needle.len(),
        text: original.to_owned(),
    })
}

/// Edits removing every line acme-nginx inserted into a block (marked `# managed by
/// acme-nginx`), except those overlapping `keep` (ranges other edits of the same change
/// rewrite).
pub fn remove_all_marked(cfg: &Config, block: &ServerBlock, keep: &[Edit]) -> Vec<Edit> {
    remove_marked(cfg, block, |_| true)
        .into_iter()
        .filter(|e| {
            !keep.iter().any(|k| {
                k.file == e.file
                    && k.start < e.end.max(e.start + 1)
                    && e.start < k.end.max(k.start + 1)
            })
        })
        .collect()
}

/// The edit that includes the challenge snippet in a block.
pub fn include_edit(
    cfg: &Config,
    block: &ServerBlock,
    snippet: &Path,
) -> Result<Edit, EditRefused> {
    let server = find_server(cfg, block)
        .ok_or_else(|| EditRefused(format!("{}: server block not found", block.location())))?;
    let text = &cfg.files[server.file].text;
    let at = insertion_point(text, server);
    let indent = child_indent(text, server);
    Ok(Edit {
        file: server.file,
        start: at,
        end: at,
        text: end_line(
            lines_at(&indent, &[format!("include {};", snippet.display())]),
            text,
            at,
            &indent,
        ),
    })
}

/// Applies edits to the texts in memory: path → (old text, new text).
pub fn render_edits(cfg: &Config, edits: &[Edit]) -> BTreeMap<PathBuf, (Vec<u8>, Vec<u8>)> {
    let mut by_file: BTreeMap<FileId, Vec<&Edit>> = BTreeMap::new();
    for e in edits {
        by_file.entry(e.file).or_default().push(e);
    }
    let mut out = BTreeMap::new();
    for (file, mut list) in by_file {
        list.sort_by(|a, b| b.start.cmp(&a.start).then(b.end.cmp(&a.end)));
        let old = cfg.files[file].text.clone();
        let mut new = old.clone();
        for e in list {
            new.splice(e.start..e.end, e.text.bytes());
        }
        out.insert(cfg.files[file].path.clone(), (old, new));
    }
    out
}

/// Files as they were before an [`apply`], to put back.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// Real path (symlinks resolved) → original bytes.
    pub originals: Vec<(PathBuf, Vec<u8>)>,
    /// Files the change created (removed again by [`Applied::restore`]).
    pub created: Vec<PathBuf>,
}

impl Applied {
    /// Puts every edited file back byte for byte and removes every created file; tries all of
    /// them and reports the first failure.
    pub fn restore(&self) -> io::Result<()> {
        let mut first_err = None;
        for (path, old) in &self.originals {
            if let Err(e) = write_like(path, old) {
                first_err.get_or_insert(io::Error::new(
                    e.kind(),
                    format!("cannot restore {}: {e}", path.display()),
                ));
            }
        }
        for path in &self.created {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_err.get_or_insert(io::Error::new(
                        e.kind(),
                        format!("cannot remove {}: {e}", path.display()),
                    ));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// True when nothing was changed.
    pub fn is_empty(&self) -> bool {
        self.originals.is_empty() && self.created.is_empty()
    }
}

/// Writes `data` over the file at `path` atomically, keeping its mode and owner (set on the new
/// file's descriptor before the rename, never by path).
pub fn write_like(path: &Path, data: &[u8]) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.file_type().is_file() {
        return Err(io::Error::other(format!(
            "{} is no longer a regular file",
            path.display()
        )));
    }
    fsutil::write_atomic_owned(
        path,
        data,
        meta.mode() & 0o7777,
        Some((meta.uid(), meta.gid())),
    )?;
    remember_write(path, data);
    Ok(())
}

/// What this process last wrote into each configuration file (its SHA-256), so that a
/// long-running process can tell its own edits from the operator's.
static OUR_WRITES: std::sync::Mutex<BTreeMap<PathBuf, [u8; 32]>> =
    std::sync::Mutex::new(BTreeMap::new());

fn remember_write(path: &Path, data: &[u8]) {
    use sha2::Digest;
    let digest: [u8; 32] = sha2::Sha256::digest(data).into();
    OUR_WRITES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(path.to_path_buf(), digest);
}

/// True when `path` holds exactly what this process last wrote there: a change event for it is
/// the echo of our own edit, not the operator's.
pub fn is_our_write(path: &Path) -> bool {
    use sha2::Digest;
    let ours = OUR_WRITES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(path)
        .copied();
    let Some(ours) = ours else {
        return false;
    };
    fs::read(path).is_ok_and(|data| <[u8; 32]>::from(sha2::Sha256::digest(&data)) == ours)
}

/// Writes the edited files (the targets of symlinks, not the links), after copying each original
/// into `backup_dir`. A file that changed on disk since it was parsed is refused. When any write
/// fails, the files already written are put back before the error is returned.
pub fn apply(cfg: &Config, edits: &[Edit], backup_dir: &Path) -> io::Result<Applied> {
    let mut applied = Applied::default();
    let result = (|| {
        for (path, (old, new)) in render_edits(cfg, edits) {
            let real = fs::canonicalize(&path)?;
            let current = fs::read(&real)?;
            if current != old {
                return Err(io::Error::other(format!(
                    "{} changed on disk since it was read; not editing it",
                    path.display()
                )));
            }
            let backup = backup_of(backup_dir, &real);
            if let Some(parent) = backup.parent() {
                fsutil::create_dir_all_mode(parent, 0o700)?;
            }
            // The first backup of a file in a run is its original: later changes of the same
            // run (one block at a time) keep it.
            if backup.symlink_metadata().is_err() {
                fsutil::write_atomic(&backup, &old, 0o600)?;
            }
            write_like(&real, &new)?;
            applied.originals.push((real, old));
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(applied),
        Err(e) => match applied.restore() {
            Ok(()) => Err(e),
            Err(r) => Err(io::Error::new(
                e.kind(),
                format!("{e}; putting back the files already written failed too: {r}"),
            )),
        },
    }
}

/// Where [`apply`] keeps the original of `real` inside a backup directory.
pub fn backup_of(backup_dir: &Path, real: &Path) -> PathBuf {
    backup_dir.join(real.strip_prefix("/").unwrap_or(real))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nginx::discovery::{scan, BuildDefaults};

    fn setup(src: &str) -> (Config, Vec<ServerBlock>) {
        let cfg = Config::parse_str(Path::new("/etc/nginx/nginx.conf"), src.as_bytes()).unwrap();
        let s = scan(&cfg, &BuildDefaults::default());
        (cfg, s.servers)
    }

    fn spec(redirect: bool) -> InstallSpec {
        InstallSpec {
            fullchain: "/var/lib/acme-nginx/certs/a.test/live/fullchain.pem".into(),
            key: "/var/lib/acme-nginx/certs/a.test/live/privkey.pem".into(),
            https_port: 443,
            redirect,
            slot: 0,
        }
    }

    fn edited(src: &str, redirect: bool) -> String {
        let (cfg, servers) = setup(src);
        let edits = install_edits(&cfg, &servers[0], &spec(redirect)).unwrap();
        let out = render_edits(&cfg, &edits);
        String::from_utf8(
            out.into_values()
                .next()
                .map(|(_, n)| n)
                .unwrap_or_else(|| src.as_bytes().to_vec()),
        )
        .unwrap()
    }

    #[test]
    fn inserts_listeners_and_certificate_after_the_last_listen() {
        let src = "http {\n    server {\n        listen 80;\n        listen [::]:80;\n        server_name a.test;\n    }\n}\n";
        let out = edited(src, false);
        let want = "http {\n    server {\n        listen 80;\n        listen [::]:80;\
            \n        listen 443 ssl; # managed by acme-nginx\
            \n        listen [::]:443 ssl; # managed by acme-nginx\
            \n        ssl_certificate /var/lib/acme-nginx/certs/a.test/live/fullchain.pem; # managed by acme-nginx\
            \n        ssl_certificate_key /var/lib/acme-nginx/certs/a.test/live/privkey.pem; # managed by acme-nginx\
            \n        server_name a.test;\n    }\n}\n";
        assert_eq!(out, want);
        // Only inserted lines: removing them gives the original back.
        let stripped: String = out
            .lines()
            .filter(|l| !l.contains(MARK))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(stripped, src);
    }

    #[test]
    fn replaces_own_certificates_and_keeps_existing_https_listeners() {
        let src = "http { server { listen 127.0.0.1:80; listen 127.0.0.1:443 ssl; server_name a.test;\n ssl_certificate /old/a.pem; ssl_certificate /old/rsa.pem; ssl_certificate_key /old/a.key; } }";
        let out = edited(src, false);
        assert!(
            out.contains(
                "ssl_certificate /var/lib/acme-nginx/certs/a.test/live/fullchain.pem; # managed"
            ),
            "{out}"
        );
        // The block's second certificate (RSA beside ECDSA) is its own pair: untouched.
        assert!(out.contains("ssl_certificate /old/rsa.pem;"), "{out}");
        assert!(!out.contains("# ssl_certificate /old/rsa.pem"), "{out}");
        assert!(
            !out.contains("listen 127.0.0.1:443 ssl; # managed"),
            "{out}"
        );
        assert_eq!(out.matches("ssl_certificate_key ").count(), 1, "{out}");
        // Parses, and a second round is a no-op.
        let (cfg, servers) = setup(&out);
        assert!(install_edits(&cfg, &servers[0], &spec(false))
            .unwrap()
            .is_empty());
    }

    /// nginxconfig.io's state before a certificate (`listen 443; # ssl http2;` beside port
    /// 80, `ssl off;`): the plain listener on the HTTPS port becomes `ssl` where it stands
    /// (no second, duplicate listener), `ssl off;` is commented out; both marked.
    #[test]
    fn a_plain_listener_on_the_https_port_becomes_ssl() {
        let src = "http { server {\n listen 80;\n listen 443; # ssl http2;\n listen [::]:443;\n ssl off;\n server_name a.test;\n} }";
        let out = edited(src, false);
        assert!(
            out.contains("listen 443 ssl; # managed by acme-nginx"),
            "{out}"
        );
        assert!(
            out.contains("listen [::]:443 ssl; # managed by acme-nginx"),
            "{out}"
        );
        assert_eq!(out.matches("listen 443").count(), 1, "{out}");
        assert!(out.contains("# ssl off; # managed by acme-nginx"), "{out}");
        assert!(
            !out.contains("# ssl http2"),
            "the old comment goes with its directive: {out}"
        );
        let (cfg, servers) = setup(&out);
        assert!(servers[0]
            .listen
            .iter()
            .filter(|l| l.port == 443)
            .all(|l| l.ssl));
        assert!(install_edits(&cfg, &servers[0], &spec(false))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn redirect_spares_the_challenge() {
        let out = edited("http { server { listen 80; server_name a.test; } }", true);
        assert!(out.contains("if ($request_uri ~ \"^/\\.well-known/acme-challenge/\") { set $acme_nginx_redirect 0; }"), "{out}");
        let (cfg, servers) = setup(&out);
        // The challenge location is still served: discovery ignores `if` blocks, as nginx's
        // rewrite sets the flag to 0 for challenge URIs.
        assert!(servers[0].acme_challenge_dir.is_some());
        assert!(install_edits(&cfg, &servers[0], &spec(true))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn certificate_from_an_included_file_is_replaced_in_this_block_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("snake.conf"),
            "ssl_certificate /s.pem; ssl_certificate_key /s.key;\nssl_session_timeout 1d;\n",
        )
        .unwrap();
        let site = "http { server { listen 80; server_name a.test; include snake.conf; } }";
        std::fs::write(dir.path().join("nginx.conf"), site).unwrap();
        let cfg = Config::load(&dir.path().join("nginx.conf"), &crate::nginx::DiskSource).unwrap();
        let s = scan(&cfg, &BuildDefaults::default());
        let edits = install_edits(&cfg, &s.servers[0], &spec(false)).unwrap();
        let out = render_edits(&cfg, &edits);
        let (_, new) = out.get(&dir.path().join("nginx.conf")).unwrap();
        let new = String::from_utf8(new.clone()).unwrap();
        assert!(
            new.contains("# include snake.conf; # managed by acme-nginx"),
            "{new}"
        );
        assert!(
            new.contains("ssl_session_timeout 1d; # managed by acme-nginx"),
            "{new}"
        );
        assert!(
            new.contains("ssl_certificate /var/lib/acme-nginx/certs/a.test/live/fullchain.pem;"),
            "{new}"
        );
        assert!(
            !out.contains_key(&dir.path().join("snake.conf")),
            "the shared file is untouched"
        );
        // It parses, serves the new certificate only, and a second round changes nothing.
        let cfg2 = Config::parse_str(&dir.path().join("nginx.conf"), new.as_bytes()).unwrap();
        let s2 = scan(&cfg2, &BuildDefaults::default());
        assert_eq!(s2.servers[0].ssl_certificates.len(), 1);
        assert!(install_edits(&cfg2, &s2.servers[0], &spec(false))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn apply_follows_symlinks_backs_up_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        let avail = dir.path().join("sites-available");
        let enabled = dir.path().join("sites-enabled");
        std::fs::create_dir_all(&avail).unwrap();
        std::fs::create_dir_all(&enabled).unwrap();
        let original = "server {\n\tlisten 80;\n\tserver_name a.test;\n}\n";
        std::fs::write(avail.join("a"), original).unwrap();
        std::os::unix::fs::symlink("../sites-available/a", enabled.join("a")).unwrap();
        std::fs::write(
            dir.path().join("nginx.conf"),
            "http { include sites-enabled/*; }",
        )
        .unwrap();
        let cfg = Config::load(&dir.path().join("nginx.conf"), &crate::nginx::DiskSource).unwrap();
        let s = scan(&cfg, &BuildDefaults::default());
        let edits = install_edits(&cfg, &s.servers[0], &spec(false)).unwrap();
        let applied = apply(&cfg, &edits, &dir.path().join("backup")).unwrap();
        assert!(std::fs::symlink_metadata(enabled.join("a"))
            .unwrap()
            .file_type()
            .is_symlink());
        let now = std::fs::read_to_string(avail.join("a")).unwrap();
        assert!(
            now.contains("\tlisten 443 ssl; # managed by acme-nginx\n"),
            "{now}"
        );
        let backup = dir.path().join("backup").join(
            std::fs::canonicalize(avail.join("a"))
                .unwrap()
                .strip_prefix("/")
                .unwrap(),
        );
        assert_eq!(std::fs::read_to_string(backup).unwrap(), original);
        applied.restore().unwrap();
        assert_eq!(std::fs::read_to_string(avail.join("a")).unwrap(), original);
    }

    #[test]
    fn a_failure_on_the_second_file_puts_the_first_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = "server {\n    listen 80;\n    server_name a.test;\n}\n";
        let b = "server {\n    listen 80;\n    server_name b.test;\n}\n";
        std::fs::write(dir.path().join("a.conf"), a).unwrap();
        std::fs::write(dir.path().join("b.conf"), b).unwrap();
        std::fs::write(
            dir.path().join("nginx.conf"),
            "http { include a.conf; include b.conf; }",
        )
        .unwrap();
        let cfg = Config::load(&dir.path().join("nginx.conf"), &crate::nginx::DiskSource).unwrap();
        let s = scan(&cfg, &BuildDefaults::default());
        let mut edits = install_edits(&cfg, &s.servers[0], &spec(false)).unwrap();
        edits.extend(install_edits(&cfg, &s.servers[1], &spec(false)).unwrap());
        // b.conf cannot be written any more: it became a directory after it was read.
        std::fs::remove_file(dir.path().join("b.conf")).unwrap();
        std::fs::create_dir(dir.path().join("b.conf")).unwrap();
        assert!(apply(&cfg, &edits, &dir.path().join("backup")).is_err());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.conf")).unwrap(),
            a
        );
    }

    #[test]
    fn includes_that_would_load_a_new_file_are_found() {
        let mut cfg = Config::parse_str(
            Path::new("/etc/nginx/nginx.conf"),
            b"http {\n include /etc/nginx/conf.d/*.conf;\n server { include snippets/*.conf; }\n}\n",
        )
        .unwrap();
        cfg.conf_prefix = "/etc/nginx".into();
        assert_eq!(
            include_that_would_load(&cfg, Path::new("/etc/nginx/conf.d/x.conf")).as_deref(),
            Some("/etc/nginx/nginx.conf:2")
        );
        // Relative patterns are relative to the main file's directory, as nginx does it.
        assert_eq!(
            include_that_would_load(&cfg, Path::new("/etc/nginx/snippets/acme-challenge.conf"))
                .as_deref(),
            Some("/etc/nginx/nginx.conf:3")
        );
        assert!(include_that_would_load(
            &cfg,
            Path::new("/etc/acme-nginx/nginx/acme-challenge.conf")
        )
        .is_none());
    }

    #[test]
    fn a_redirecting_block_gets_the_challenge_rewrite_first_and_it_can_be_removed_again() {
        let src = "http {\n    server {\n        if ($host = a.test) {\n            return 301 https://$host$request_uri;\n        }\n        listen 80;\n        server_name a.test;\n        return 404;\n    }\n}\n";
        let (cfg, servers) = setup(src);
        assert!(servers[0].challenge_answered_at_server_level);
        let snippet = Path::new("/etc/acme-nginx/nginx/acme-challenge.conf");
        let edits = vec![
            challenge_rewrite_edit(&cfg, &servers[0]).unwrap(),
            include_edit(&cfg, &servers[0], snippet).unwrap(),
        ];
        let out =
            String::from_utf8(render_edits(&cfg, &edits).into_values().next().unwrap().1).unwrap();
        assert!(
            out.starts_with("http {\n    server {\n        if ($uri ~ \"^/\\.well-known/acme-challenge/\") { break; } # managed by acme-nginx\n        if ($host"),
            "{out}"
        );
        let (cfg2, servers2) = setup(&out);
        assert!(!servers2[0].challenge_answered_at_server_level);
        // The return no longer answers first: the block's root (the snippet is not followed
        // by parse_str) serves the challenge.
        assert!(servers2[0].acme_challenge_dir.is_some());
        // Removing the marked lines gives the original back, byte for byte.
        let removal = remove_marked(&cfg2, &servers2[0], |d| {
            (d.name == "include"
                && d.args
                    .first()
                    .is_some_and(|a| a == snippet.to_str().unwrap()))
                || is_challenge_rewrite(d)
        });
        assert_eq!(removal.len(), 2);
        let back = String::from_utf8(
            render_edits(&cfg2, &removal)
                .into_values()
                .next()
                .unwrap()
                .1,
        )
        .unwrap();
        assert_eq!(back, src);
    }

    #[test]
    fn inserted_lines_keep_trailing_comments_with_their_directives() {
        let src = "http {\n    server {\n        listen 80; # managed by Certbot\n        server_name a.test;\n    }\n}\n";
        let out = edited(src, false);
        assert!(out.contains("        listen 80; # managed by Certbot\n        listen 443 ssl; # managed by acme-nginx\n"), "{out}");
        // The redirect names a non-standard HTTPS port.
        let (cfg, servers) = setup(src);
        let mut sp = spec(true);
        sp.https_port = 8443;
        let edits = install_edits(&cfg, &servers[0], &sp).unwrap();
        let out =
            String::from_utf8(render_edits(&cfg, &edits).into_values().next().unwrap().1).unwrap();
        assert!(
            out.contains("return 301 https://$host:8443$request_uri;"),
            "{out}"
        );
    }

    #[test]
    fn an_install_is_undone_byte_for_byte_and_hand_edits_are_left() {
        let src = "http {\n  server {\n    listen 80;\n    server_name a.test;\n    \
                   ssl_certificate /etc/ssl/old.pem; # theirs\n    ssl_certificate_key /etc/ssl/old.key;\n  }\n}\n";
        let (cfg, servers) = setup(src);
        let edits = install_edits(&cfg, &servers[0], &spec(true)).unwrap();
        let replaced: Vec<(usize, String, String)> = edits
            .iter()
            .filter(|e| e.end > e.start)
            .map(|e| {
                let original = String::from_utf8_lossy(&cfg.files[e.file].text[e.start..e.end]);
                (e.start, original.into_owned(), e.text.clone())
            })
            .collect();
        assert_eq!(replaced.len(), 2);
        let installed =
            String::from_utf8(render_edits(&cfg, &edits).into_values().next().unwrap().1).unwrap();
        let undo = |text: &str| {
            let (cfg, servers) = setup(text);
            let path = Path::new("/etc/nginx/nginx.conf");
            let restores: Vec<Edit> = replaced
                .iter()
                .filter_map(|(at, orig, ins)| restore_edit(&cfg, path, *at, ins, orig))
                .collect();
            let found = restores.len();
            let mut all = remove_all_marked(&cfg, &servers[0], &restores);
            all.extend(restores);
            let out = render_edits(&cfg, &all)
                .into_values()
                .next()
                .map(|(_, n)| n);
            (
                String::from_utf8(out.unwrap_or_else(|| text.as_bytes().to_vec())).unwrap(),
                found,
            )
        };
        assert_eq!(undo(&installed), (src.to_owned(), 2));
        // The key line was changed by hand since: it stays (and is reported by the caller).
        let by_hand = installed.replace(
            "privkey.pem; # managed by acme-nginx",
            "privkey.pem; # mine now",
        );
        let (text, found) = undo(&by_hand);
        assert_eq!(found, 1);
        assert!(text.contains("/etc/ssl/old.pem; # theirs"), "{text}");
        assert!(
            text.contains("privkey.pem; # mine now") && !text.contains("listen 443"),
            "{text}"
        );
    }
}
