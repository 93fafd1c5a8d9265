//! Property tests over the nginx parser: on any input it returns a tree or a located error and
//! never panics; a tree always re-renders to the exact input; discovery never panics on a tree.
//! Bounded (a few thousand cases) so it runs with the other tests.

use std::path::Path;

use acme_nginx::nginx::discovery::{scan, BuildDefaults};
use acme_nginx::nginx::Config;
use proptest::prelude::*;

fn check(input: &[u8]) {
    match Config::parse_str(Path::new("fuzz.conf"), input) {
        Ok(cfg) => {
            assert_eq!(cfg.render(cfg.main).unwrap(), input);
            let _ = scan(&cfg, &BuildDefaults::default());
        }
        Err(e) => {
            assert!(e.line >= 1 && e.col >= 1, "{e}");
            assert!(!e.message.is_empty());
        }
    }
}

const VOCABULARY: &[&str] = &[
    "http",
    "server",
    "location",
    "listen 80",
    "server_name a.test",
    "root /r",
    "alias /a/",
    "{",
    "}",
    ";",
    " ",
    "\n",
    "\t",
    "#c\n",
    "\"q ;{}\"",
    "'s'",
    "\"",
    "'",
    "\\",
    "\\\"",
    "$v",
    "${v}",
    "~",
    "~*",
    "^~",
    "=",
    "/.well-known/",
    "content_by_lua_block",
    "--[[",
    "]]",
    "[[",
    "--",
    "include",
    "if",
    "(",
    ")",
    "map",
    "return 200",
    "proxy_pass x",
    "\u{e9}",
    "\u{ff}",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(input in proptest::collection::vec(any::<u8>(), 0..400)) {
        check(&input);
    }

    #[test]
    fn token_soup(tokens in proptest::collection::vec(proptest::sample::select(VOCABULARY), 0..80)) {
        check(tokens.concat().as_bytes());
    }
}

#[test]
fn invalid_utf8_bytes_in_comments_and_args() {
    check(b"http { # \xff\xfe\n server { server_name \xc3\x28.example; } }");
}
