//! nginx's regular expressions are PCRE's (look-arounds, possessive quantifiers, `(?i)`, named
//! groups in both syntaxes): locations, `rewrite` and `server_name ~` are matched here with
//! PCRE2 itself, so a pattern nginx accepts is matched the way nginx matches it. Compiled
//! patterns are cached per thread: the same `location ~ \.php$` in ten thousand server blocks
//! is compiled once.

use std::cell::RefCell;
use std::collections::HashMap;

/// A pattern PCRE refuses (nginx would refuse it too, at `nginx -t`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("regex {pattern:?} does not compile: {message}")]
pub struct RegexError {
    pub pattern: String,
    pub message: String,
}

type Cache = HashMap<(String, bool), Result<pcre2::bytes::Regex, RegexError>>;

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::new());
}

/// Whether `pattern` (case-insensitively with `caseless`, as `~*`) matches somewhere in
/// `subject`.
pub fn is_match(pattern: &str, caseless: bool, subject: &str) -> Result<bool, RegexError> {
    with_regex(pattern, caseless, |re| re.is_match(subject.as_bytes()))
}

/// The text numbered group `group` of `pattern` captures in `subject` (nginx's `$1`...), if the
/// pattern matches and the group took part.
pub fn capture(
    pattern: &str,
    caseless: bool,
    subject: &str,
    group: usize,
) -> Result<Option<String>, RegexError> {
    with_regex(pattern, caseless, |re| {
        Ok(re.captures(subject.as_bytes())?.and_then(|c| {
            c.get(group)
                .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
        }))
    })
}

/// Runs `f` with the compiled (cached) pattern.
fn with_regex<T>(
    pattern: &str,
    caseless: bool,
    f: impl FnOnce(&pcre2::bytes::Regex) -> Result<T, pcre2::Error>,
) -> Result<T, RegexError> {
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        let re = cache
            .entry((pattern.to_owned(), caseless))
            .or_insert_with(|| {
                pcre2::bytes::RegexBuilder::new()
                    .caseless(caseless)
                    .jit_if_available(true)
                    .build(pattern)
                    .map_err(|e| RegexError {
                        pattern: pattern.to_owned(),
                        message: e.to_string(),
                    })
            });
        match re {
            Ok(re) => f(re).map_err(|e| RegexError {
                pattern: pattern.to_owned(),
                message: e.to_string(),
            }),
            Err(e) => Err(e.clone()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcre_syntax_nginx_configs_use() {
        // nginxconfig.io and h5bp deny dot-files except .well-known with a look-ahead.
        let dotfiles = r"/\.(?!well-known)";
        assert!(!is_match(dotfiles, false, "/.well-known/acme-challenge/x").unwrap());
        assert!(is_match(dotfiles, false, "/.git/config").unwrap());
        assert!(is_match(r"(?<!\.php)$", false, "/index.html").unwrap());
        assert!(is_match(r"\.(?:jpg|png)$", true, "/A.PNG").unwrap());
        assert!(!is_match(r"\.(?:jpg|png)$", false, "/A.PNG").unwrap());
        assert!(is_match(r"^/(?<name>[a-z]+)/", false, "/abc/").unwrap());
        assert!(is_match(r"^/(?P<name>[a-z]+)/", false, "/abc/").unwrap());
        assert!(is_match(r"a++b", false, "aab").unwrap());
        let err = is_match(r"(unclosed", false, "x").unwrap_err();
        assert!(err.to_string().contains("(unclosed"), "{err}");
    }
}
