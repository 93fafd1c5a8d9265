//! The nginx configuration parser: directives with their spans, blocks, raw Lua blocks, and
//! `include` expanded like nginx does it (paths relative to the main config's directory, globs
//! in sorted order, cycles refused). The tree keeps byte ranges into each file's text, so any
//! file can be re-emitted byte for byte ([`Config::render`]) and edited by replacing ranges.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use compact_str::CompactString;

use super::lexer::{LexError, Lexer, Token, TokenKind};
use super::source::Source;

/// Index of a file in [`Config::files`].
pub type FileId = usize;

/// Deepest block nesting accepted; nginx has no such limit, but no real config comes close and
/// a hostile one must not exhaust the stack.
pub const MAX_DEPTH: usize = 64;
/// Deepest include nesting accepted.
pub const MAX_INCLUDE_DEPTH: usize = 32;
/// The most configuration text read in all (every file counted once), so memory stays bounded
/// whatever the includes point at.
pub const MAX_TOTAL_BYTES: u64 = 256 * 1024 * 1024;

/// A parse or include error, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub file: PathBuf,
    pub line: u32,
    pub col: u32,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            // The file as a whole (it cannot be read): no position to show.
            return write!(f, "{}: {}", self.file.display(), self.message);
        }
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

impl std::error::Error for ParseError {}

/// The spans of a parsed file do not tile it (a parser bug, never the input's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpanError(pub String);

/// A block's contents.
#[derive(Debug, Clone)]
pub struct Block {
    pub children: Vec<Directive>,
    /// Offset of the `{`.
    pub open: usize,
    /// Offset of the `}`.
    pub close: usize,
    /// For Lua blocks: the raw code between the braces (children is empty).
    pub raw: Option<Box<str>>,
}

/// One directive, with its block if it has one.
#[derive(Debug, Clone)]
pub struct Directive {
    /// Short strings (almost every name and argument) are stored inline, without an allocation.
    pub name: CompactString,
    /// Exactly as many as there are (no spare capacity: a large tree holds 150,000 of them).
    pub args: Box<[CompactString]>,
    pub file: FileId,
    /// Byte range from the name to just past the `;` or `}`.
    pub start: usize,
    pub end: usize,
    pub line: u32,
    pub col: u32,
    pub block: Option<Box<Block>>,
    /// For `include`: the files it expanded to, in order.
    pub includes: Box<[FileId]>,
}

impl Directive {
    /// The children of the block (empty for simple directives).
    pub fn children(&self) -> &[Directive] {
        self.block.as_ref().map_or(&[], |b| b.children.as_slice())
    }
}

/// One configuration file.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: Vec<u8>,
    pub directives: Vec<Directive>,
    /// acme-nginx's own comments (`# acme-nginx: WORDS`): each one's byte offset and line, and
    /// its words after `acme-nginx:`, lowercase. Kept when the text is not.
    pub markers: Vec<Marker>,
}

/// A `# acme-nginx: WORDS` comment line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub offset: usize,
    pub line: u32,
    pub words: Vec<String>,
}

/// The `# acme-nginx: ...` comment lines of a file's text.
pub fn markers(text: &[u8]) -> Vec<Marker> {
    let mut out = Vec::new();
    let (mut offset, mut line) = (0, 1);
    for l in text.split_inclusive(|b| *b == b'\n') {
        let trimmed = l.trim_ascii();
        if let Some(comment) = trimmed.strip_prefix(b"#") {
            let comment = String::from_utf8_lossy(comment).to_ascii_lowercase();
            if let Some(rest) = comment.trim_start().strip_prefix("acme-nginx:") {
                out.push(Marker {
                    offset,
                    line,
                    words: rest.split_whitespace().map(str::to_owned).collect(),
                });
            }
        }
        offset += l.len();
        line += 1;
    }
    out
}

/// A whole configuration: the main file and every file it includes.
#[derive(Debug, Clone)]
pub struct Config {
    pub main: FileId,
    pub files: Vec<SourceFile>,
    /// The directory relative includes resolve against (nginx's conf prefix).
    pub conf_prefix: PathBuf,
}

/// Names of directives whose block is raw Lua code (lua-nginx-module and friends).
pub fn is_lua_block(name: &str) -> bool {
    name.ends_with("_by_lua_block") || name == "lua_block"
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

struct Loader<'s> {
    source: &'s dyn Source,
    /// False for a lone text: `include` directives stay unexpanded.
    follow_includes: bool,
    /// False when only the tree is wanted (no render, no edits): texts are dropped as parsed.
    keep_text: bool,
    conf_prefix: PathBuf,
    files: Vec<SourceFile>,
    by_path: HashMap<PathBuf, FileId>,
    stack: Vec<PathBuf>,
    /// Bytes of text read so far.
    total: u64,
    /// Skip included files that do not parse (recording why) instead of failing.
    lenient: bool,
    skipped: Vec<ParseError>,
}

impl Config {
    /// True when a file of this configuration no longer holds the text it was read with (or
    /// cannot be read): edits planned against it would be refused, so it is read again.
    pub fn changed_on_disk(&self) -> bool {
        self.files
            .iter()
            .any(|f| std::fs::read(&f.path).map_or(true, |now| now != f.text))
    }

    /// Parses `main` and everything it includes, reading through `source`.
    pub fn load(main: &Path, source: &dyn Source) -> Result<Config, ParseError> {
        Self::load_with(main, source, true)
    }

    /// Like [`Config::load`]; with `keep_text` false the files' texts are dropped as soon as
    /// they are parsed (for a read-only scan: less memory, no render or edits possible).
    pub fn load_with(
        main: &Path,
        source: &dyn Source,
        keep_text: bool,
    ) -> Result<Config, ParseError> {
        Self::load_inner(main, source, keep_text, false).map(|(c, _)| c)
    }

    /// Like [`Config::load`], but an included file that does not parse is left out (as if its
    /// include matched nothing) and reported, instead of failing the whole configuration. For
    /// renewals, which must go on for the blocks that can be read. The main file must parse.
    pub fn load_lenient(
        main: &Path,
        source: &dyn Source,
    ) -> Result<(Config, Vec<ParseError>), ParseError> {
        Self::load_inner(main, source, true, true)
    }

    fn load_inner(
        main: &Path,
        source: &dyn Source,
        keep_text: bool,
        lenient: bool,
    ) -> Result<(Config, Vec<ParseError>), ParseError> {
        let conf_prefix = main.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut loader = Loader {
            source,
            follow_includes: true,
            keep_text,
            conf_prefix: conf_prefix.clone(),
            files: Vec::new(),
            by_path: HashMap::new(),
            stack: Vec::new(),
            total: 0,
            lenient: false,
            skipped: Vec::new(),
        };
        let text = source.read(main).map_err(|e| ParseError {
            file: main.to_path_buf(),
            line: 0,
            col: 0,
            message: format!("cannot read: {e}"),
        })?;
        loader.lenient = lenient;
        let main_id = loader.parse_file(main.to_path_buf(), text)?;
        Ok((
            Config {
                main: main_id,
                files: loader.files,
                conf_prefix,
            },
            loader.skipped,
        ))
    }

    /// Parses a single text; `include` directives are kept but not followed.
    pub fn parse_str(path: &Path, text: &[u8]) -> Result<Config, ParseError> {
        let source = super::source::NoIncludes;
        let mut loader = Loader {
            source: &source,
            follow_includes: false,
            keep_text: true,
            conf_prefix: PathBuf::new(),
            files: Vec::new(),
            by_path: HashMap::new(),
            stack: Vec::new(),
            total: 0,
            lenient: false,
            skipped: Vec::new(),
        };
        let id = loader.parse_file(path.to_path_buf(), text.to_vec())?;
        Ok(Config {
            main: id,
            files: loader.files,
            conf_prefix: PathBuf::new(),
        })
    }

    /// The main file's top-level directives.
    pub fn root(&self) -> &[Directive] {
        &self.files[self.main].directives
    }

    /// Re-emits a file from its tree: the text between directives, each directive's own bytes.
    /// Equal to the file's text for every file the parser accepted; an error means the spans
    /// do not tile the file (a parser bug).
    pub fn render(&self, file: FileId) -> Result<Vec<u8>, SpanError> {
        let f = &self.files[file];
        let mut out = Vec::with_capacity(f.text.len());
        let mut pos = 0;
        render_list(&f.text, &f.directives, &mut pos, &mut out)?;
        out.extend_from_slice(&f.text[pos..]);
        Ok(out)
    }

    /// Line and 1-based byte column of an offset in a file.
    pub fn line_col(&self, file: FileId, offset: usize) -> (u32, u32) {
        let text = &self.files[file].text[..offset.min(self.files[file].text.len())];
        let line = text.iter().filter(|b| **b == b'\n').count() as u32 + 1;
        let line_start = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        (line, (offset - line_start) as u32 + 1)
    }

    /// Visits every directive in document order with includes expanded in place, giving each
    /// with the chain of enclosing block directives.
    pub fn walk<'a>(&'a self, mut visit: impl FnMut(&'a Directive, &[&'a Directive])) {
        let mut parents = Vec::new();
        self.walk_list(self.root(), &mut parents, &mut visit);
    }

    fn walk_list<'a>(
        &'a self,
        list: &'a [Directive],
        parents: &mut Vec<&'a Directive>,
        visit: &mut impl FnMut(&'a Directive, &[&'a Directive]),
    ) {
        for d in list {
            visit(d, parents);
            if d.name == "include" {
                for &f in &d.includes {
                    self.walk_list(&self.files[f].directives, parents, visit);
                }
            }
            if let Some(b) = &d.block {
                parents.push(d);
                self.walk_list(&b.children, parents, visit);
                parents.pop();
            }
        }
    }

    /// The children of a block directive with `include`s replaced by what they include,
    /// recursively, in order.
    pub fn expanded<'a>(&'a self, list: &'a [Directive]) -> Vec<&'a Directive> {
        let mut out = Vec::new();
        self.expand_into(list, &mut out, 0);
        out
    }

    fn expand_into<'a>(
        &'a self,
        list: &'a [Directive],
        out: &mut Vec<&'a Directive>,
        depth: usize,
    ) {
        for d in list {
            if d.name == "include" && depth < MAX_INCLUDE_DEPTH {
                for &f in &d.includes {
                    self.expand_into(&self.files[f].directives, out, depth + 1);
                }
            } else {
                out.push(d);
            }
        }
    }
}

fn render_list(
    text: &[u8],
    list: &[Directive],
    pos: &mut usize,
    out: &mut Vec<u8>,
) -> Result<(), SpanError> {
    for d in list {
        if d.start < *pos || d.end > text.len() || d.start > d.end {
            return Err(SpanError(format!(
                "directive {} at {} overlaps what precedes it",
                d.name, d.start
            )));
        }
        out.extend_from_slice(&text[*pos..d.start]);
        match &d.block {
            Some(b) if b.raw.is_none() => {
                out.extend_from_slice(&text[d.start..=b.open]);
                *pos = b.open + 1;
                render_list(text, &b.children, pos, out)?;
                if b.close < *pos {
                    return Err(SpanError(format!(
                        "block of {} closes before its children end",
                        d.name
                    )));
                }
                out.extend_from_slice(&text[*pos..d.end]);
            }
            _ => out.extend_from_slice(&text[d.start..d.end]),
        }
        *pos = d.end;
    }
    Ok(())
}

/// Parses one file's text; `include` directives are left unexpanded (the loader links them).
pub fn parse_text(path: &Path, text: &[u8], file: FileId) -> Result<Vec<Directive>, ParseError> {
    let mut lexer = Lexer::new(text);
    parse_block(&mut lexer, file, path, 0, None).map_err(|e| match e {
        Failure::Lex(e) => ParseError {
            file: path.to_path_buf(),
            line: e.line,
            col: e.col,
            message: e.message,
        },
        Failure::Parse(e) => e,
    })
}

/// Parses directives until `}` (when `open` is Some) or the end of the file.
fn parse_block(
    lx: &mut Lexer<'_>,
    file: FileId,
    path: &Path,
    depth: usize,
    open: Option<&Token>,
) -> Result<Vec<Directive>, Failure> {
    let err = |line: u32, col: u32, message: String| {
        Failure::Parse(ParseError {
            file: path.to_path_buf(),
            line,
            col,
            message,
        })
    };
    let mut out = Vec::new();
    let mut words: Vec<Token> = Vec::new();
    loop {
        let Some(tok) = lx.next_token().map_err(Failure::Lex)? else {
            let (line, col) = lx.here();
            if !words.is_empty() {
                return Err(err(
                    line,
                    col,
                    "unexpected end of file, expecting \";\" or \"}\"".into(),
                ));
            }
            if let Some(open) = open {
                return Err(err(
                    line,
                    col,
                    format!(
                        "unexpected end of file, expecting \"}}\" to close the block opened at {}:{}",
                        open.line, open.col
                    ),
                ));
            }
            return Ok(out);
        };
        match tok.kind {
            TokenKind::Word => words.push(tok),
            TokenKind::Semicolon => {
                if words.is_empty() {
                    return Err(err(tok.line, tok.col, "unexpected \";\"".into()));
                }
                out.push(directive(&mut words, file, tok.end));
            }
            TokenKind::BlockStart => {
                if words.is_empty() {
                    return Err(err(tok.line, tok.col, "unexpected \"{\"".into()));
                }
                if depth + 1 >= MAX_DEPTH {
                    return Err(err(
                        tok.line,
                        tok.col,
                        format!("blocks nested deeper than {MAX_DEPTH}"),
                    ));
                }
                let block = if is_lua_block(&words[0].value) {
                    let close = lx.lua_block().map_err(Failure::Lex)?;
                    Block {
                        children: Vec::new(),
                        open: tok.start,
                        close,
                        raw: Some(
                            String::from_utf8_lossy(&lx_text(lx, tok.start + 1, close)).into(),
                        ),
                    }
                } else {
                    let children = parse_block(lx, file, path, depth + 1, Some(&tok))?;
                    Block {
                        children,
                        open: tok.start,
                        close: lx.offset() - 1,
                        raw: None,
                    }
                };
                let mut d = directive(&mut words, file, lx.offset());
                d.block = Some(Box::new(block));
                out.push(d);
            }
            TokenKind::BlockEnd => {
                out.shrink_to_fit();
                if !words.is_empty() {
                    return Err(err(
                        tok.line,
                        tok.col,
                        "unexpected \"}\", expecting \";\"".into(),
                    ));
                }
                if open.is_none() {
                    return Err(err(tok.line, tok.col, "unexpected \"}\"".into()));
                }
                return Ok(out);
            }
        }
    }
}

fn set_file_id(list: &mut [Directive], file: FileId) {
    for d in list {
        d.file = file;
        if let Some(b) = d.block.as_mut() {
            set_file_id(&mut b.children, file);
        }
    }
}

/// Below this many new files a glob is parsed on the calling thread.
const PARALLEL_PARSE_MIN_FILES: usize = 16;

/// Why a file of an include could not be loaded.
enum LoadFailure {
    /// Reading failed: reported at the include directive.
    Read(String),
    /// The file itself has a syntax error: reported where it is.
    Parse(ParseError),
}

/// A file's text (empty unless kept), its size, its markers and its directives.
type Loaded = Result<(Vec<u8>, u64, Vec<Marker>, Vec<Directive>), LoadFailure>;

/// Reads and parses files (no includes followed) on all cores, keeping their order.
fn read_and_parse_all(source: &dyn Source, paths: &[PathBuf], keep_text: bool) -> Vec<Loaded> {
    let one = |p: &PathBuf| -> Loaded {
        let text = source.read(p).map_err(|e| {
            LoadFailure::Read(format!("cannot open included file {}: {e}", p.display()))
        })?;
        let directives = parse_text(p, &text, FileId::MAX).map_err(LoadFailure::Parse)?;
        let size = text.len() as u64;
        let found = markers(&text);
        Ok((
            if keep_text { text } else { Vec::new() },
            size,
            found,
            directives,
        ))
    };
    if paths.len() < PARALLEL_PARSE_MIN_FILES {
        return paths.iter().map(one).collect();
    }
    // available_parallelism reads cgroup files: ask once.
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let threads =
        *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads < 2 {
        return paths.iter().map(one).collect();
    }
    let chunk = paths.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = paths
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(one).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

impl Loader<'_> {
    fn parse_file(&mut self, path: PathBuf, text: Vec<u8>) -> Result<FileId, ParseError> {
        let id = self.files.len();
        let directives = parse_text(&path, &text, id)?;
        let size = text.len() as u64;
        let found = markers(&text);
        self.attach(path, text, size, found, directives)
    }

    /// Adds a parsed file and links its includes (depth first, with cycle detection).
    fn attach(
        &mut self,
        path: PathBuf,
        text: Vec<u8>,
        size: u64,
        markers: Vec<Marker>,
        mut directives: Vec<Directive>,
    ) -> Result<FileId, ParseError> {
        let id = self.files.len();
        self.total += size;
        if self.total > MAX_TOTAL_BYTES {
            return Err(ParseError {
                file: path,
                line: 0,
                col: 0,
                message: format!(
                    "the configuration holds more than {MAX_TOTAL_BYTES} bytes in all; refusing to read more"
                ),
            });
        }
        set_file_id(&mut directives, id);
        self.files.push(SourceFile {
            path: path.clone(),
            text: Vec::new(),
            directives: Vec::new(),
            markers,
        });
        self.by_path.insert(path.clone(), id);
        if self.follow_includes {
            self.stack.push(path.clone());
            let linked = self.link(&mut directives, &path);
            self.stack.pop();
            linked?;
        }
        if self.keep_text {
            self.files[id].text = text;
        }
        self.files[id].directives = directives;
        Ok(id)
    }

    fn link(&mut self, list: &mut [Directive], path: &Path) -> Result<(), ParseError> {
        for d in list {
            if d.name == "include" {
                self.resolve_include(d, path)?;
            }
            if let Some(b) = d.block.as_mut() {
                self.link(&mut b.children, path)?;
            }
        }
        Ok(())
    }

    fn resolve_include(&mut self, d: &mut Directive, path: &Path) -> Result<(), ParseError> {
        let err = |message: String| ParseError {
            file: path.to_path_buf(),
            line: d.line,
            col: d.col,
            message,
        };
        if d.args.len() != 1 {
            return Err(err(format!(
                "\"include\" takes one argument, not {}",
                d.args.len()
            )));
        }
        let arg = d.args[0].as_str();
        let full = if Path::new(arg).is_absolute() {
            PathBuf::from(arg)
        } else {
            self.conf_prefix.join(arg)
        };
        let paths = if has_glob(arg) {
            self.source
                .glob(&full)
                .map_err(|e| err(format!("include {}: {e}", full.display())))?
        } else {
            vec![full]
        };
        if self.stack.len() >= MAX_INCLUDE_DEPTH {
            return Err(err(format!(
                "includes nested deeper than {MAX_INCLUDE_DEPTH}"
            )));
        }
        if let Some(p) = paths.iter().find(|p| self.stack.contains(p)) {
            let chain: Vec<String> = self
                .stack
                .iter()
                .skip_while(|s| *s != p)
                .chain(std::iter::once(p))
                .map(|s| s.display().to_string())
                .collect();
            return Err(err(format!("include cycle: {}", chain.join(" -> "))));
        }
        let mut fresh: Vec<PathBuf> = paths
            .iter()
            .filter(|p| !self.by_path.contains_key(*p))
            .cloned()
            .collect();
        fresh.dedup();
        let mut parsed: HashMap<PathBuf, Loaded> = fresh
            .iter()
            .cloned()
            .zip(read_and_parse_all(self.source, &fresh, self.keep_text))
            .collect();
        let mut ids = Vec::with_capacity(paths.len());
        for p in paths {
            // A file may have been attached meanwhile (included by an earlier one of the batch).
            if let Some(&id) = self.by_path.get(&p) {
                if self.stack.contains(&p) {
                    return Err(err(format!(
                        "include cycle: {} includes itself",
                        p.display()
                    )));
                }
                ids.push(id);
                continue;
            }
            let (text, size, found, directives) = match parsed.remove(&p) {
                Some(Ok(v)) => v,
                Some(Err(LoadFailure::Read(message))) => return Err(err(message)),
                Some(Err(LoadFailure::Parse(e))) if self.lenient => {
                    self.skipped.push(e);
                    continue;
                }
                Some(Err(LoadFailure::Parse(e))) => return Err(e),
                None => return Err(err(format!("{} vanished while loading", p.display()))),
            };
            ids.push(self.attach(p, text, size, found, directives)?);
        }
        d.includes = ids.into_boxed_slice();
        Ok(())
    }
}

fn lx_text(lx: &Lexer<'_>, from: usize, to: usize) -> Vec<u8> {
    lx.slice(from, to).to_vec()
}

enum Failure {
    Lex(LexError),
    Parse(ParseError),
}

fn directive(words: &mut Vec<Token>, file: FileId, end: usize) -> Directive {
    // Exact-size args: collecting in place from the token vector would keep its (larger) buffer.
    let mut args = Vec::with_capacity(words.len().saturating_sub(1));
    let mut it = words.drain(..);
    let first = it.next().expect("callers pass at least one word");
    args.extend(it.map(|t| t.value));
    Directive {
        name: first.value,
        args: args.into_boxed_slice(),
        file,
        start: first.start,
        end,
        line: first.line,
        col: first.col,
        block: None,
        includes: Box::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Config {
        Config::parse_str(Path::new("t.conf"), s.as_bytes()).unwrap()
    }

    fn parse_err(s: &str) -> ParseError {
        Config::parse_str(Path::new("t.conf"), s.as_bytes()).unwrap_err()
    }

    #[test]
    fn a_file_rewritten_or_gone_since_it_was_read_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nginx.conf");
        let text = "http { server { listen 80; } }\n";
        std::fs::write(&path, text).unwrap();
        let cfg = Config::parse_str(&path, text.as_bytes()).unwrap();
        assert!(!cfg.changed_on_disk());
        std::fs::write(&path, "http { server { listen 81; } }\n").unwrap();
        assert!(cfg.changed_on_disk());
        std::fs::remove_file(&path).unwrap();
        assert!(cfg.changed_on_disk());
    }

    #[test]
    fn directives_blocks_and_spans() {
        let src =
            "user www-data;\nhttp {\n  server { listen 80; server_name a.test \"b.test\"; }\n}\n";
        let c = parse(src);
        let root = c.root();
        assert_eq!(root[0].name, "user");
        assert_eq!(root[0].args.to_vec(), vec!["www-data"]);
        assert_eq!(&src[root[0].start..root[0].end], "user www-data;");
        let http = &root[1];
        assert_eq!((http.line, http.col), (2, 1));
        let server = &http.children()[0];
        assert_eq!((server.line, server.col), (3, 3));
        assert_eq!(server.children()[1].args.to_vec(), vec!["a.test", "b.test"]);
        assert_eq!(
            &src[server.start..server.end],
            "server { listen 80; server_name a.test \"b.test\"; }"
        );
        assert_eq!(c.render(c.main).unwrap(), src.as_bytes());
    }

    #[test]
    fn syntax_cases_nginx_accepts() {
        let src = r#"
# comment with { braces } and ; semicolons
http {
    map $http_upgrade $connection_upgrade { default upgrade; '' close; "~^a;b" x; }
    types { text/html html htm; }
    geo $geo { default 0; 127.0.0.1/32 1; }
    server {
        empty {}
        add_header X-A "a;{b}" always;
        set $x ${host}-y;
        if ($request_uri ~* "^/(a|b)\{2\}$") { return 404; }
        location / {
            content_by_lua_block {
                local s = "}" -- }
                ngx.say([[ { ]])
            }
            return 200
                "multi
line";
        }
    }
}
stream { upstream u { server 127.0.0.1:1; } server { listen 1; proxy_pass u; } }
mail { server { listen 25; protocol smtp; } }
"#;
        let c = parse(src);
        assert_eq!(c.render(c.main).unwrap(), src.as_bytes());
        let http = &c.root()[0];
        assert_eq!(http.children()[0].name, "map");
        assert_eq!(http.children()[0].children()[1].name, "");
        let server = &http.children()[3];
        let loc = server
            .children()
            .iter()
            .find(|d| d.name == "location")
            .unwrap();
        let lua = &loc.children()[0];
        assert!(lua
            .block
            .as_ref()
            .unwrap()
            .raw
            .as_ref()
            .unwrap()
            .contains("ngx.say"));
        assert_eq!(loc.children()[1].args.to_vec(), vec!["200", "multi\nline"]);
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = parse_err("http {\n  server {\n");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("expecting \"}\""), "{e}");
        let e = parse_err("http { a b }");
        assert_eq!((e.line, e.col), (1, 12));
        let e = parse_err("}\n");
        assert_eq!((e.line, e.col), (1, 1));
        let e = parse_err("a;\n ;");
        assert_eq!((e.line, e.col), (2, 2));
        assert!(e.to_string().starts_with("t.conf:2:2: "), "{e}");
        let e = parse_err("worker_processes 1");
        assert!(e.message.contains("end of file"), "{e}");
        let deep = "a{".repeat(MAX_DEPTH + 5);
        assert!(parse_err(&deep).message.contains("nested"));
    }

    #[test]
    fn walk_expands_in_document_order() {
        let c = parse("a; b { c; d { e; } } f;");
        let mut seen = Vec::new();
        c.walk(|d, parents| seen.push(format!("{}@{}", d.name, parents.len())));
        assert_eq!(seen, vec!["a@0", "b@0", "c@1", "d@1", "e@2", "f@0"]);
    }
}
