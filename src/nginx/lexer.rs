//! The nginx configuration lexer, following `ngx_conf_read_token`: `#` comments at token start,
//! single and double quotes with `\` escapes, `${var}` inside words, `;`, `{` and `}`, and raw
//! Lua blocks (`*_by_lua_block { ... }`) read with Lua's own rules for strings and comments.
//! Works on bytes: invalid UTF-8 in comments or arguments never stops it.

use std::fmt;

use compact_str::CompactString;

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A directive name or argument (value unescaped, quotes removed).
    Word,
    /// `;`
    Semicolon,
    /// `{`
    BlockStart,
    /// `}`
    BlockEnd,
}

/// A token with its place in the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub kind: TokenKind,
    /// Unescaped value (words only).
    pub value: CompactString,
    /// True when the word was quoted.
    pub quoted: bool,
    /// Byte range in the source.
    pub start: usize,
    pub end: usize,
    /// 1-based line and byte column of `start`.
    pub line: u32,
    pub col: u32,
}

/// A lexing error at a byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LexError {
    pub offset: usize,
    pub line: u32,
    pub col: u32,
    pub message: String,
}

impl fmt::Display for LexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.col, self.message)
    }
}

/// The lexer state.
#[derive(Debug)]
pub struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    line: u32,
    line_start: usize,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

impl<'a> Lexer<'a> {
    pub fn new(src: &'a [u8]) -> Self {
        Self {
            src,
            pos: 0,
            line: 1,
            line_start: 0,
        }
    }

    /// Current byte offset.
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// The source bytes in `from..to`.
    pub fn slice(&self, from: usize, to: usize) -> &'a [u8] {
        &self.src[from.min(to)..to]
    }

    /// Line and column of the current offset.
    pub fn here(&self) -> (u32, u32) {
        (self.line, (self.pos - self.line_start) as u32 + 1)
    }

    fn error_at(
        &self,
        offset: usize,
        line: u32,
        line_start: usize,
        message: impl Into<String>,
    ) -> LexError {
        LexError {
            offset,
            line,
            col: (offset.saturating_sub(line_start)) as u32 + 1,
            message: message.into(),
        }
    }

    fn error(&self, message: impl Into<String>) -> LexError {
        self.error_at(self.pos, self.line, self.line_start, message)
    }

    fn bump(&mut self) -> Option<u8> {
        let b = *self.src.get(self.pos)?;
        self.pos += 1;
        if b == b'\n' {
            self.line += 1;
            self.line_start = self.pos;
        }
        Some(b)
    }

    /// Skips whitespace and comments; returns the next token, or `None` at the end.
    pub fn next_token(&mut self) -> Result<Option<Token>, LexError> {
        loop {
            match self.src.get(self.pos) {
                None => return Ok(None),
                Some(b) if is_space(*b) => {
                    self.bump();
                }
                Some(b'#') => {
                    while let Some(b) = self.src.get(self.pos) {
                        if *b == b'\n' {
                            break;
                        }
                        self.pos += 1;
                    }
                }
                Some(_) => break,
            }
        }
        let (start, line, line_start) = (self.pos, self.line, self.line_start);
        let col = (start - line_start) as u32 + 1;
        let simple = |kind| Token {
            kind,
            value: CompactString::default(),
            quoted: false,
            start,
            end: start + 1,
            line,
            col,
        };
        match self.src[self.pos] {
            b';' => {
                self.pos += 1;
                Ok(Some(simple(TokenKind::Semicolon)))
            }
            b'{' => {
                self.pos += 1;
                Ok(Some(simple(TokenKind::BlockStart)))
            }
            b'}' => {
                self.pos += 1;
                Ok(Some(simple(TokenKind::BlockEnd)))
            }
            q @ (b'"' | b'\'') => {
                self.pos += 1;
                let body_start = self.pos;
                loop {
                    match self.bump() {
                        None => {
                            return Err(self.error_at(
                                start,
                                line,
                                line_start,
                                "unterminated quoted string",
                            ));
                        }
                        Some(b'\\') => {
                            if self.bump().is_none() {
                                return Err(self.error_at(
                                    start,
                                    line,
                                    line_start,
                                    "unterminated quoted string",
                                ));
                            }
                        }
                        Some(b) if b == q => break,
                        Some(_) => {}
                    }
                }
                let body = &self.src[body_start..self.pos - 1];
                // nginx wants a separator right after a closing quote.
                match self.src.get(self.pos) {
                    None => {}
                    Some(b) if is_space(*b) || matches!(b, b';' | b'{' | b')') => {}
                    Some(b) => {
                        return Err(self.error(format!(
                            "unexpected \"{}\" after a quoted string",
                            char::from(*b)
                        )));
                    }
                }
                Ok(Some(Token {
                    kind: TokenKind::Word,
                    value: unescape(body),
                    quoted: true,
                    start,
                    end: self.pos,
                    line,
                    col,
                }))
            }
            _ => {
                let mut variable = false;
                while let Some(&b) = self.src.get(self.pos) {
                    if b == b'{' && variable {
                        self.pos += 1;
                        continue;
                    }
                    variable = false;
                    match b {
                        b'\\' => {
                            self.pos += 1;
                            if self.src.get(self.pos).is_some() {
                                self.bump();
                            }
                        }
                        b'$' => {
                            variable = true;
                            self.pos += 1;
                        }
                        b if is_space(b) || b == b';' || b == b'{' => break,
                        _ => self.pos += 1,
                    }
                }
                Ok(Some(Token {
                    kind: TokenKind::Word,
                    value: unescape(&self.src[start..self.pos]),
                    quoted: false,
                    start,
                    end: self.pos,
                    line,
                    col,
                }))
            }
        }
    }

    /// Reads a raw Lua block body after its `{`; returns the offset of the closing `}` (the lexer
    /// is left just past it). Lua strings, long brackets and comments may hold braces.
    pub fn lua_block(&mut self) -> Result<usize, LexError> {
        let (open_line, open_ls, open_at) =
            (self.line, self.line_start, self.pos.saturating_sub(1));
        let eof = |lx: &Self| {
            lx.error_at(
                open_at,
                open_line,
                open_ls,
                "unexpected end of file in a Lua block, expecting \"}\"",
            )
        };
        let mut depth = 1usize;
        while let Some(b) = self.bump() {
            match b {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(self.pos - 1);
                    }
                }
                b'-' if self.src.get(self.pos) == Some(&b'-') => {
                    self.pos += 1;
                    if let Some(level) = self.long_bracket_level() {
                        self.skip_long_bracket(level).ok_or_else(|| eof(self))?;
                    } else {
                        while let Some(&c) = self.src.get(self.pos) {
                            if c == b'\n' {
                                break;
                            }
                            self.pos += 1;
                        }
                    }
                }
                b'[' => {
                    self.pos -= 1;
                    if let Some(level) = self.long_bracket_level() {
                        self.skip_long_bracket(level).ok_or_else(|| eof(self))?;
                    } else {
                        self.pos += 1;
                    }
                }
                q @ (b'"' | b'\'') => loop {
                    match self.bump() {
                        None => return Err(eof(self)),
                        Some(b'\\') => {
                            self.bump();
                        }
                        Some(c) if c == q => break,
                        Some(_) => {}
                    }
                },
                _ => {}
            }
        }
        Err(eof(self))
    }

    /// At `[`, `[=*[`: consumes the opener and returns its level.
    fn long_bracket_level(&mut self) -> Option<usize> {
        if self.src.get(self.pos) != Some(&b'[') {
            return None;
        }
        let mut i = self.pos + 1;
        while self.src.get(i) == Some(&b'=') {
            i += 1;
        }
        if self.src.get(i) != Some(&b'[') {
            return None;
        }
        let level = i - self.pos - 1;
        self.pos = i + 1;
        Some(level)
    }

    /// Skips to just past `]=*]` of the given level.
    fn skip_long_bracket(&mut self, level: usize) -> Option<()> {
        loop {
            if self.bump()? == b']' {
                let mut i = self.pos;
                while self.src.get(i) == Some(&b'=') {
                    i += 1;
                }
                if i - self.pos == level && self.src.get(i) == Some(&b']') {
                    self.pos = i + 1;
                    return Some(());
                }
            }
        }
    }
}

/// nginx's unescaping of a token: `\"`, `\'`, `\\` lose the backslash; `\t`, `\r`, `\n` become
/// control characters; any other `\x` stays as it is.
pub fn unescape(raw: &[u8]) -> CompactString {
    if !raw.contains(&b'\\') {
        return match std::str::from_utf8(raw) {
            Ok(s) => CompactString::new(s),
            Err(_) => CompactString::new(String::from_utf8_lossy(raw)),
        };
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' && i + 1 < raw.len() {
            match raw[i + 1] {
                c @ (b'"' | b'\'' | b'\\') => {
                    out.push(c);
                    i += 2;
                    continue;
                }
                b't' => {
                    out.push(b'\t');
                    i += 2;
                    continue;
                }
                b'r' => {
                    out.push(b'\r');
                    i += 2;
                    continue;
                }
                b'n' => {
                    out.push(b'\n');
                    i += 2;
                    continue;
                }
                _ => {}
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    CompactString::new(String::from_utf8_lossy(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(src: &str) -> Vec<(TokenKind, String)> {
        let mut lx = Lexer::new(src.as_bytes());
        let mut out = Vec::new();
        while let Some(t) = lx.next_token().unwrap() {
            out.push((t.kind, t.value.to_string()));
        }
        out
    }

    fn w(s: &str) -> (TokenKind, String) {
        (TokenKind::Word, s.to_owned())
    }

    #[test]
    fn comments_quotes_and_escapes() {
        use TokenKind::*;
        let toks = words("a \"b c\" 'd;{}' e\\;f # comment { ; }\n g#h;");
        assert_eq!(toks[0], w("a"));
        assert_eq!(toks[1], w("b c"));
        assert_eq!(toks[2], w("d;{}"));
        // nginx keeps the backslash of an escape it does not know (only \" \' \\ \t \r \n).
        assert_eq!(toks[3], w("e\\;f"));
        assert_eq!(toks[4], w("g#h"));
        assert_eq!(toks[5].0, Semicolon);
        assert_eq!(words(r#""a\"b\\c\td\x""#), vec![w("a\"b\\c\td\\x")]);
    }

    #[test]
    fn variables_with_braces_stay_in_the_word() {
        use TokenKind::*;
        let toks = words("set $a ${host}x; if ($x) {}");
        assert_eq!(toks[2], w("${host}x"));
        assert_eq!(toks[3].0, Semicolon);
        assert_eq!(toks[4], w("if"));
        assert_eq!(toks[5], w("($x)"));
        assert_eq!(toks[6].0, BlockStart);
        assert_eq!(toks[7].0, BlockEnd);
    }

    #[test]
    fn closing_brace_inside_a_word_is_part_of_it() {
        // nginx only treats `}` as a block end at the start of a token.
        let toks = words("a b}");
        assert_eq!(toks, vec![w("a"), w("b}")]);
    }

    #[test]
    fn positions_are_one_based() {
        let mut lx = Lexer::new(b"a\n  bb;");
        let a = lx.next_token().unwrap().unwrap();
        assert_eq!((a.line, a.col, a.start, a.end), (1, 1, 0, 1));
        let b = lx.next_token().unwrap().unwrap();
        assert_eq!((b.line, b.col, b.start, b.end), (2, 3, 4, 6));
    }

    #[test]
    fn errors_have_positions() {
        let mut lx = Lexer::new(b"a\n \"open");
        lx.next_token().unwrap();
        let e = lx.next_token().unwrap_err();
        assert_eq!((e.line, e.col), (2, 2));
        assert!(e.message.contains("unterminated"));
        let mut lx = Lexer::new(b"\"a\"b");
        let e = lx.next_token().unwrap_err();
        assert!(e.message.contains("after a quoted string"), "{e}");
    }

    #[test]
    fn lua_block_with_braces_in_strings_and_comments() {
        let src = b"{ local t = { a = \"}\" } -- } comment\n local s = [[ } ]] --[==[ } ]==] if x then y = '}' end } tail";
        let mut lx = Lexer::new(src);
        assert_eq!(
            lx.next_token().unwrap().unwrap().kind,
            TokenKind::BlockStart
        );
        let close = lx.lua_block().unwrap();
        assert_eq!(&src[close + 1..], b" tail");
        let mut lx = Lexer::new(b"{ if a then { ");
        lx.next_token().unwrap();
        assert!(lx.lua_block().unwrap_err().message.contains("Lua block"));
    }

    #[test]
    fn invalid_utf8_is_tolerated() {
        let toks = {
            let mut lx = Lexer::new(b"# \xff\xfe comment\nname \xc3\x28;");
            let mut v = Vec::new();
            while let Some(t) = lx.next_token().unwrap() {
                v.push(t);
            }
            v
        };
        assert_eq!(toks[0].value, "name");
        assert_eq!(toks[1].value, "\u{fffd}(");
    }
}
