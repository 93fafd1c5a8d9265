//! nginx's location selection (`ngx_http_core_find_location`) and what the selected location does
//! with a request: which file it serves for a URI, or why it serves none.
//!
//! Selection at each level: an exact `=` match wins at once; otherwise the longest prefix is
//! remembered and its nested locations are searched; unless that prefix is `^~`, the regex
//! locations of the level are tried in order and the first match wins (and its nested locations
//! are searched); otherwise the remembered prefix stands.

use super::pcre::{self, RegexError};
use std::path::{Path, PathBuf};

use super::parser::{Config, Directive};

/// The kind of a `location`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modifier {
    /// `location = /x`
    Exact,
    /// `location /x`
    Prefix,
    /// `location ^~ /x`
    PrefixNoRegex,
    /// `location ~ re` / `location ~* re`
    Regex { caseless: bool },
    /// `location @name`
    Named,
}

/// A parsed `location` directive.
#[derive(Debug, Clone)]
pub struct Location<'a> {
    pub modifier: Modifier,
    pub pattern: String,
    pub directive: &'a Directive,
}

impl<'a> Location<'a> {
    /// Reads a `location` directive's arguments the way nginx does (modifier separate or attached).
    pub fn parse(d: &'a Directive) -> Option<Self> {
        if d.name != "location" || d.block.is_none() {
            return None;
        }
        let (modifier, pattern) = match &d.args[..] {
            [m, p] => (
                match m.as_str() {
                    "=" => Modifier::Exact,
                    "^~" => Modifier::PrefixNoRegex,
                    "~" => Modifier::Regex { caseless: false },
                    "~*" => Modifier::Regex { caseless: true },
                    _ => return None,
                },
                p.to_string(),
            ),
            [p] => {
                if let Some(rest) = p.strip_prefix('@') {
                    (Modifier::Named, rest.to_owned())
                } else if let Some(rest) = p.strip_prefix("^~") {
                    (Modifier::PrefixNoRegex, rest.to_owned())
                } else if let Some(rest) = p.strip_prefix("~*") {
                    (Modifier::Regex { caseless: true }, rest.to_owned())
                } else if let Some(rest) = p.strip_prefix('~') {
                    (Modifier::Regex { caseless: false }, rest.to_owned())
                } else if let Some(rest) = p.strip_prefix('=') {
                    (Modifier::Exact, rest.to_owned())
                } else {
                    (Modifier::Prefix, p.to_string())
                }
            }
            _ => return None,
        };
        Some(Self {
            modifier,
            pattern,
            directive: d,
        })
    }

    /// Whether the regex location matches `uri` (PCRE, as nginx).
    fn regex_matches(&self, uri: &str) -> Result<bool, RegexError> {
        let caseless = matches!(self.modifier, Modifier::Regex { caseless: true });
        pcre::is_match(&self.pattern, caseless, uri)
    }
}

/// The outcome of selection: the chain of locations from the outermost to the selected one.
#[derive(Debug, Clone, Default)]
pub struct Selection<'a> {
    pub chain: Vec<Location<'a>>,
}

impl<'a> Selection<'a> {
    /// The selected location, if any (none: the server's own configuration applies).
    pub fn selected(&self) -> Option<&Location<'a>> {
        self.chain.last()
    }
}

enum Found<'a> {
    /// An exact match or a regex match: final.
    Final(Vec<Location<'a>>),
    /// A prefix match (possibly refined by nested prefixes): regexes may still win.
    Prefix(Vec<Location<'a>>),
    None,
}

/// Selects the location for `uri` among a server's (or location's) children.
pub fn select<'a>(
    cfg: &'a Config,
    children: &'a [Directive],
    uri: &str,
) -> Result<Selection<'a>, RegexError> {
    Ok(match find(cfg, children, uri, 0)? {
        Found::Final(chain) | Found::Prefix(chain) => Selection { chain },
        Found::None => Selection::default(),
    })
}

fn find<'a>(
    cfg: &'a Config,
    children: &'a [Directive],
    uri: &str,
    depth: usize,
) -> Result<Found<'a>, RegexError> {
    if depth > super::parser::MAX_DEPTH {
        return Ok(Found::None);
    }
    let locations: Vec<Location<'a>> = cfg
        .expanded(children)
        .into_iter()
        .filter_map(Location::parse)
        .collect();
    if let Some(exact) = locations
        .iter()
        .find(|l| l.modifier == Modifier::Exact && l.pattern == uri)
    {
        return Ok(Found::Final(vec![exact.clone()]));
    }
    let best = locations
        .iter()
        .filter(|l| {
            matches!(l.modifier, Modifier::Prefix | Modifier::PrefixNoRegex)
                && uri.starts_with(&l.pattern)
        })
        .max_by_key(|l| l.pattern.len());
    let mut candidate = None;
    let mut noregex = false;
    if let Some(best) = best {
        noregex = best.modifier == Modifier::PrefixNoRegex;
        match find(cfg, best.directive.children(), uri, depth + 1)? {
            Found::Final(mut nested) => {
                nested.insert(0, best.clone());
                return Ok(Found::Final(nested));
            }
            Found::Prefix(mut nested) => {
                nested.insert(0, best.clone());
                candidate = Some(nested);
            }
            Found::None => candidate = Some(vec![best.clone()]),
        }
    }
    if !noregex {
        for l in locations
            .iter()
            .filter(|l| matches!(l.modifier, Modifier::Regex { .. }))
        {
            if l.regex_matches(uri)? {
                let mut chain = vec![l.clone()];
                match find(cfg, l.directive.children(), uri, depth + 1)? {
                    Found::Final(nested) | Found::Prefix(nested) => chain.extend(nested),
                    Found::None => {}
                }
                return Ok(Found::Final(chain));
            }
        }
    }
    Ok(candidate.map_or(Found::None, Found::Prefix))
}

/// Why a request gets no file from disk, or the file it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serving {
    /// The file nginx serves for the URI.
    File(PathBuf),
    /// No file: the reason, in words.
    NoFile(String),
    /// No file because a server-level rewrite-phase directive (`return`, `rewrite`) answers
    /// first: no location, not even an inserted one, can serve it.
    ServerLevel(String),
    /// Stateless http-01: a regex location answers `return 200 "$N.THUMBPRINT"`, its capture
    /// `N` being the token, so it serves the key authorization of the account with that JWK
    /// thumbprint for every token without a file (acme.sh's and nginx-acme's stateless mode).
    Stateless {
        /// The account's JWK thumbprint (43 base64url characters).
        thumbprint: String,
        /// The location, for messages.
        at: String,
    },
}

/// The thumbprint a `return` in location `l` answers challenges with for `uri`, when it is
/// `return 200 "$N.THUMBPRINT"` and group `N` of the location's regex captures the token.
fn stateless_answer(l: &Location, ret: &Directive, uri: &str) -> Option<String> {
    let Modifier::Regex { caseless } = l.modifier else {
        return None;
    };
    let [code, text] = &ret.args[..] else {
        return None;
    };
    let (group, thumbprint) = text.as_str().strip_prefix('$')?.split_once('.')?;
    let group: usize = group.parse().ok()?;
    let token = uri.rsplit('/').next()?;
    let well_formed = thumbprint.len() == 43 && crate::acme::is_valid_token(thumbprint);
    (code == "200"
        && well_formed
        && pcre::capture(&l.pattern, caseless, uri, group).ok()?? == token)
        .then(|| thumbprint.to_owned())
}

/// Directives that hand the request to something other than the static file module.
const HANDLERS: &[&str] = &[
    "proxy_pass",
    "fastcgi_pass",
    "uwsgi_pass",
    "scgi_pass",
    "grpc_pass",
    "memcached_pass",
    "content_by_lua_block",
    "content_by_lua",
    "content_by_lua_file",
    "stub_status",
    "empty_gif",
    "js_content",
    "perl",
];

/// Works out what nginx does with `uri` in a server block: follows server-level rewrite-phase
/// directives, selects the location, and applies root/alias inheritance. `http_settings` are
/// the http block's own directives (includes expanded, server blocks left out); `prefix` is
/// nginx's prefix for relative paths.
pub fn serve(
    cfg: &Config,
    http_settings: &[&Directive],
    server: &Directive,
    uri: &str,
    prefix: &Path,
) -> Serving {
    let server_children = cfg.expanded(server.children());
    for d in &server_children {
        // `if ($uri ~ REGEX) { break; }` (what acme-nginx puts first in a block that redirects
        // everything) ends the server's rewrite-phase directives for the URIs it matches,
        // leaving the URI as it is: the later `return` is not reached, a location answers.
        if d.name == "if" && d.children().len() == 1 && d.children()[0].name == "break" {
            let args: Vec<&str> = d.args.iter().map(|a| a.as_str()).collect();
            let cond = args.join(" ");
            let cond = cond.trim_start_matches('(').trim_end_matches(')').trim();
            if let Some(re) = cond.strip_prefix("$uri ~ ") {
                let re = re.trim().trim_matches('"');
                if pcre::is_match(re, false, uri).unwrap_or(false) {
                    break;
                }
            }
        }
        if d.name == "return" {
            return Serving::ServerLevel(format!(
                "server-level \"return {}\" at line {} answers every request",
                d.args.join(" "),
                d.line
            ));
        }
        if d.name == "rewrite" {
            if let Some(reason) = rewrite_hits(d, uri) {
                return Serving::ServerLevel(format!("server-level {reason}"));
            }
        }
    }
    let selection = match select(cfg, server.children(), uri) {
        Ok(s) => s,
        Err(e) => return Serving::NoFile(e.to_string()),
    };
    // The contexts whose settings apply, outermost first: http, server, each location in the chain.
    let loc_lists: Vec<Vec<&Directive>> = selection
        .chain
        .iter()
        .map(|l| cfg.expanded(l.directive.children()))
        .collect();
    let mut scopes: Vec<&[&Directive]> = vec![http_settings, &server_children];
    scopes.extend(loc_lists.iter().map(Vec::as_slice));
    let selected = selection.selected();
    let empty = Vec::new();
    let loc_children = loc_lists.last().unwrap_or(&empty);
    let at = |d: &Directive| format!("line {}", d.line);
    if let Some(l) = selected {
        let modifier = match modifier_text(&l.modifier) {
            "" => String::new(),
            "@" => "@".to_owned(),
            m => format!("{m} "),
        };
        let here = format!("location {modifier}{} ({})", l.pattern, at(l.directive));
        for d in loc_children {
            if HANDLERS.contains(&d.name.as_str()) {
                return Serving::NoFile(format!("{here} hands requests to {}", d.name));
            }
            if d.name == "return" {
                if let Some(thumbprint) = stateless_answer(l, d, uri) {
                    return Serving::Stateless {
                        thumbprint,
                        at: here,
                    };
                }
                return Serving::NoFile(format!(
                    "{here} answers with \"return {}\"",
                    d.args.join(" ")
                ));
            }
            if d.name == "internal" {
                return Serving::NoFile(format!("{here} is internal"));
            }
            if d.name == "rewrite" {
                if let Some(reason) = rewrite_hits(d, uri) {
                    return Serving::NoFile(format!("{here}: {reason}"));
                }
            }
        }
    }
    // Inherited settings: the innermost scope that sets them.
    let innermost = |names: &[&str]| -> Option<&Directive> {
        scopes.iter().rev().find_map(|list| {
            list.iter()
                .rev()
                .find(|d| names.contains(&d.name.as_str()))
                .copied()
        })
    };
    // try_files is not inherited (ngx_http_core_merge_loc_conf leaves it alone): the selected
    // location's own, or the server's when no location is selected.
    let own_try_files = match selected {
        Some(_) => loc_children
            .iter()
            .rev()
            .find(|d| d.name == "try_files")
            .copied(),
        None => server_children
            .iter()
            .rev()
            .find(|d| d.name == "try_files")
            .copied(),
    };
    if let Some(tf) = own_try_files {
        let files = &tf.args[..tf.args.len().saturating_sub(1)];
        if !files.iter().any(|a| a.starts_with("$uri")) {
            return Serving::NoFile(format!("try_files at line {} does not try $uri", tf.line));
        }
    }
    if let Some(reason) = access_denied(&scopes) {
        return Serving::NoFile(reason);
    }
    // auth_basic only acts with a user file in effect (ngx_http_auth_basic_handler declines otherwise).
    if let (Some(ab), Some(_)) = (
        innermost(&["auth_basic"]),
        innermost(&["auth_basic_user_file"]),
    ) {
        if ab.args.first().is_some_and(|a| a != "off") {
            return Serving::NoFile(format!(
                "auth_basic at line {} asks for a password",
                ab.line
            ));
        }
    }
    // root and alias are one setting in nginx (alias is a flag on it): the innermost scope that
    // sets either wins. An inherited alias keeps the offset of the location that declared it:
    // the URI is mapped past *that* location's name.
    let path_setting = innermost(&["root", "alias"]);
    let alias_owner = path_setting
        .filter(|d| d.name == "alias")
        .and_then(|alias| {
            selection
                .chain
                .iter()
                .rev()
                .find(|l| {
                    cfg.expanded(l.directive.children())
                        .iter()
                        .any(|c| std::ptr::eq(*c, alias))
                })
                .map(|l| (alias, l))
        });
    if let Some((alias, l)) = alias_owner {
        let Some(path) = alias.args.first() else {
            return Serving::NoFile("alias without a path".into());
        };
        if matches!(l.modifier, Modifier::Regex { .. }) {
            return Serving::NoFile(if path.contains('$') {
                format!(
                    "regex location at line {} maps the URI with captures in alias {path}",
                    l.directive.line
                )
            } else {
                format!(
                    "regex location at line {} serves one file for every token (alias {path})",
                    l.directive.line
                )
            });
        }
        if path.contains('$') {
            return Serving::NoFile(format!(
                "alias {path} at line {} uses variables",
                alias.line
            ));
        }
        let rest = &uri[l.pattern.len().min(uri.len())..];
        return Serving::File(full_path(prefix, &format!("{path}{rest}")));
    }
    let root = path_setting
        .filter(|d| d.name == "root")
        .and_then(|d| d.args.first().cloned())
        .unwrap_or_else(|| "html".into());
    if root.contains('$') {
        return Serving::NoFile(format!("root {root} uses variables"));
    }
    Serving::File(full_path(
        prefix,
        &format!("{}{uri}", root.trim_end_matches('/')),
    ))
}

fn modifier_text(m: &Modifier) -> &'static str {
    match m {
        Modifier::Exact => "=",
        Modifier::Prefix => "",
        Modifier::PrefixNoRegex => "^~",
        Modifier::Regex { caseless: false } => "~",
        Modifier::Regex { caseless: true } => "~*",
        Modifier::Named => "@",
    }
}

/// A relative path resolves against nginx's prefix, as `ngx_conf_full_name` does.
fn full_path(prefix: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        prefix.join(p)
    }
}

/// When a `rewrite` applies to `uri`, says what it does.
fn rewrite_hits(d: &Directive, uri: &str) -> Option<String> {
    let (re, target) = (d.args.first()?, d.args.get(1)?);
    // A pattern PCRE refuses would fail nginx -t: count it as a hit, the cautious answer.
    let hit = pcre::is_match(re, false, uri).unwrap_or(true);
    if !hit {
        return None;
    }
    let flag = d.args.get(2).map(|a| a.as_str()).unwrap_or("");
    let redirect = matches!(flag, "redirect" | "permanent")
        || target.starts_with("http://")
        || target.starts_with("https://")
        || target.starts_with("$scheme");
    Some(if redirect {
        format!(
            "\"rewrite {re} {target}\" at line {} redirects the challenge",
            d.line
        )
    } else {
        format!(
            "\"rewrite {re} {target}\" at line {} rewrites the challenge URI",
            d.line
        )
    })
}

/// Evaluates allow/deny (the innermost scope that has any) for a client at an unknown public
/// address, as the CA's validation servers are.
fn access_denied(scopes: &[&[&Directive]]) -> Option<String> {
    for s in scopes.iter().rev() {
        let rules: Vec<&Directive> = s
            .iter()
            .copied()
            .filter(|d| d.name == "allow" || d.name == "deny")
            .collect();
        if rules.is_empty() {
            continue;
        }
        for r in rules {
            if r.args.first().map(|a| a.as_str()) == Some("all") {
                return (r.name == "deny")
                    .then(|| format!("\"deny all\" at line {} refuses the CA", r.line));
            }
        }
        // Only specific addresses are listed: nginx allows the rest.
        return None;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const URI: &str = "/.well-known/acme-challenge/TOKEN";

    fn serve_str(server_body: &str) -> Serving {
        let src = format!("http {{ server {{ {server_body} }} }}");
        let cfg = Config::parse_str(Path::new("t.conf"), src.as_bytes()).unwrap();
        let http = &cfg.root()[0];
        let server = &http.children()[0];
        let settings: Vec<&Directive> = http
            .children()
            .iter()
            .filter(|d| d.name != "server")
            .collect();
        serve(&cfg, &settings, server, URI, Path::new("/usr/share/nginx"))
    }

    fn file(p: &str) -> Serving {
        Serving::File(PathBuf::from(p))
    }

    #[test]
    fn prefix_alias_and_root() {
        assert_eq!(
            serve_str("location /.well-known/acme-challenge/ { alias /www/acme/; }"),
            file("/www/acme/TOKEN")
        );
        assert_eq!(
            serve_str("location /.well-known/ { alias /www/wk/; }"),
            file("/www/wk/acme-challenge/TOKEN")
        );
        assert_eq!(
            serve_str("root /srv/a; location / { }"),
            file("/srv/a/.well-known/acme-challenge/TOKEN")
        );
        assert_eq!(
            serve_str("location / { root /srv/b/; }"),
            file("/srv/b/.well-known/acme-challenge/TOKEN")
        );
        assert_eq!(
            serve_str(""),
            file("/usr/share/nginx/html/.well-known/acme-challenge/TOKEN")
        );
        assert_eq!(
            serve_str("root www;"),
            file("/usr/share/nginx/www/.well-known/acme-challenge/TOKEN")
        );
    }

    #[test]
    fn longest_prefix_then_regex_then_noregex() {
        // A regex beats a plain prefix...
        let body = "location /.well-known/acme-challenge/ { alias /a/; } location ~ /\\.well-known { root /r; }";
        assert_eq!(serve_str(body), file("/r/.well-known/acme-challenge/TOKEN"));
        // ...but not a ^~ prefix.
        let body = "location ^~ /.well-known/acme-challenge/ { alias /a/; } location ~ /\\.well-known { root /r; }";
        assert_eq!(serve_str(body), file("/a/TOKEN"));
        // The longest prefix wins whatever the order.
        let body =
            "location /.well-known/acme-challenge/ { alias /long/; } location / { root /short; }";
        assert_eq!(serve_str(body), file("/long/TOKEN"));
        // An exact match wins over everything.
        let body = format!("location = {URI} {{ alias /exact/x; }} location ~ . {{ root /r; }}");
        assert_eq!(serve_str(&body), file("/exact/x"));
        // Regexes are tried in order; caseless works.
        let body = "location ~* /\\.WELL-KNOWN/ { root /first; } location ~ /\\.well-known/ { root /second; }";
        assert_eq!(
            serve_str(body),
            file("/first/.well-known/acme-challenge/TOKEN")
        );
        // A regex that hides dotfiles wins over the prefix.
        let body =
            "location /.well-known/acme-challenge/ { alias /a/; } location ~ /\\. { deny all; }";
        assert!(matches!(serve_str(body), Serving::NoFile(r) if r.contains("deny all")));
    }

    /// acme.sh's documented stateless location, nginx-acme's shape, and ours (nested in a `^~`
    /// prefix so no regex of the block can take the URI first) answer for the thumbprint; a
    /// `return` that does not echo the token, or echoes another group, is no answer.
    #[test]
    fn stateless_locations_are_recognised() {
        let thumb = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
        let stateless = |body: &str| match serve_str(&body.replace("THUMB", thumb)) {
            Serving::Stateless { thumbprint, .. } => Some(thumbprint),
            other => {
                assert!(matches!(other, Serving::NoFile(_)), "{other:?}");
                None
            }
        };
        let yes = [
            r#"location ~ ^/\.well-known/acme-challenge/([-_a-zA-Z0-9]+)$ { default_type text/plain; return 200 "$1.THUMB"; }"#,
            r#"location ^~ /.well-known/acme-challenge/ { location ~ "^/\.well-known/acme-challenge/([-_A-Za-z0-9]+)$" { return 200 "$1.THUMB"; } return 404; }"#,
            r#"location ~* ^/\.well-known/(acme)-challenge/(.+)$ { return 200 "$2.THUMB"; }"#,
        ];
        for body in yes {
            assert_eq!(stateless(body).as_deref(), Some(thumb), "{body}");
        }
        let no = [
            // The token is not group 1.
            r#"location ~* ^/\.well-known/(acme)-challenge/(.+)$ { return 200 "$1.THUMB"; }"#,
            // Not a thumbprint.
            r#"location ~ ^/\.well-known/acme-challenge/(.+)$ { return 200 "$1.short"; }"#,
            // Not 200.
            r#"location ~ ^/\.well-known/acme-challenge/(.+)$ { return 301 "$1.THUMB"; }"#,
            // A prefix location has no captures.
            r#"location /.well-known/acme-challenge/ { return 200 "$1.THUMB"; }"#,
        ];
        for body in no {
            assert_eq!(stateless(body), None, "{body}");
        }
    }

    #[test]
    fn nested_locations() {
        let body = "location / { root /outer; location /.well-known/ { root /nested; } }";
        assert_eq!(
            serve_str(body),
            file("/nested/.well-known/acme-challenge/TOKEN")
        );
        // A nested regex inside the longest prefix wins over the level's own regexes.
        let body = "location / { location ~ acme { root /in; } } location ~ well { root /out; }";
        assert_eq!(
            serve_str(body),
            file("/in/.well-known/acme-challenge/TOKEN")
        );
        // alias is inherited too, and maps the URI past the name of the location that declared it.
        let body = "location / { alias /al/; location /.well-known/ { } }";
        assert_eq!(
            serve_str(body),
            file("/al/.well-known/acme-challenge/TOKEN")
        );
        // A nested root overrides an outer alias.
        let body = "location / { alias /al/; location /.well-known/ { root /r; } }";
        assert_eq!(serve_str(body), file("/r/.well-known/acme-challenge/TOKEN"));
    }

    #[test]
    fn locations_that_serve_no_file() {
        let cases = [
            (
                "location / { proxy_pass http://127.0.0.1:1; }",
                "proxy_pass",
            ),
            ("location / { return 404; }", "return 404"),
            ("return 301 https://$host$request_uri;", "server-level"),
            (
                "rewrite ^ https://$host$request_uri permanent;",
                "redirects",
            ),
            (
                "location ~ ^/\\.well-known/acme-challenge/(.*)$ { alias /x/$1; }",
                "captures",
            ),
            (
                "location / { try_files /index.html @app; } location @app { proxy_pass http://a; }",
                "try_files",
            ),
            ("location /.well-known/ { internal; }", "internal"),
            (
                "auth_basic \"x\"; auth_basic_user_file /h; location / { }",
                "auth_basic",
            ),
            ("root /srv/$host;", "variables"),
            (
                "location ~ /\\.(?!well-known) { deny all; } location / { return 404; }",
                "return 404",
            ),
        ];
        for (body, want) in cases {
            match serve_str(body) {
                Serving::NoFile(reason) | Serving::ServerLevel(reason) => {
                    assert!(reason.contains(want), "{body}: {reason}")
                }
                other => panic!("{body}: expected no file, got {other:?}"),
            }
        }
        // PCRE look-arounds, as nginx matches them.
        assert_eq!(
            serve_str("location ~ \\.well-known(?=/) { root /r; }"),
            file("/r/.well-known/acme-challenge/TOKEN")
        );
        assert_eq!(
            serve_str("root /w; location ~ /\\.(?!well-known) { deny all; }"),
            file("/w/.well-known/acme-challenge/TOKEN")
        );
        // try_files with $uri still serves the file; allow for specific addresses does not block.
        assert_eq!(
            serve_str("root /s; try_files $uri $uri/ =404; allow 10.0.0.0/8;"),
            file("/s/.well-known/acme-challenge/TOKEN")
        );
        assert_eq!(
            serve_str("root /s; auth_basic off; location / { allow all; deny 1.2.3.4; }"),
            file("/s/.well-known/acme-challenge/TOKEN")
        );
        // auth_basic without a user file does nothing in nginx.
        assert_eq!(
            serve_str("root /s; auth_basic x;"),
            file("/s/.well-known/acme-challenge/TOKEN")
        );
    }

    #[test]
    fn location_argument_forms() {
        let cfg = Config::parse_str(
            Path::new("t"),
            b"location =/a {} location ^~/b {} location ~*c {} location @d {} location e f g {}",
        )
        .unwrap();
        let mods: Vec<_> = cfg
            .root()
            .iter()
            .map(|d| Location::parse(d).map(|l| (l.modifier, l.pattern)))
            .collect();
        assert_eq!(mods[0], Some((Modifier::Exact, "/a".into())));
        assert_eq!(mods[1], Some((Modifier::PrefixNoRegex, "/b".into())));
        assert_eq!(
            mods[2],
            Some((Modifier::Regex { caseless: true }, "c".into()))
        );
        assert_eq!(mods[3], Some((Modifier::Named, "d".into())));
        assert_eq!(mods[4], None);
    }
}
