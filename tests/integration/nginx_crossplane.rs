//! Differential test against crossplane (nginx's own config parser library, from PyPI): every
//! file of the corpus that `tests/testbed/setup.sh` extracts from Debian packages, plus our
//! fixtures, parsed one file at a time by both. Server names per server block must match
//! exactly; so must every directive's name, depth and line, and its arguments (crossplane keeps
//! nginx's `\"`-style escapes raw and splits `if` conditions, so those are compared after
//! applying nginx's own unescaping, and `if` and Lua blocks by name and line only).

use std::path::{Path, PathBuf};
use std::process::Command;

use acme_nginx::nginx::lexer::unescape;
use acme_nginx::nginx::{Config, Directive};
use serde_json::Value;

fn corpus() -> Vec<PathBuf> {
    let root = std::env::var_os("ACME_NGINX_TESTBED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".testbed"))
        .join("corpus");
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}: run tests/testbed/setup.sh", root.display()))
        {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.ends_with(".done") {
                files.push(p);
            }
        }
    }
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nginx");
    files.push(fixtures.join("syntax.conf"));
    files.push(fixtures.join("includes/nginx.conf"));
    files.sort();
    files
}

fn flatten(
    list: &[Directive],
    depth: usize,
    out: &mut Vec<(usize, String, Vec<String>, u32)>,
    servers: &mut Vec<Vec<String>>,
) {
    for d in list {
        out.push((
            depth,
            d.name.to_string(),
            d.args.iter().map(|a| a.to_string()).collect(),
            d.line,
        ));
        if d.name == "server" && d.block.is_some() {
            servers.push(
                d.children()
                    .iter()
                    .filter(|c| c.name == "server_name")
                    .flat_map(|c| c.args.iter().map(|a| a.to_string()))
                    .collect(),
            );
        }
        if let Some(b) = &d.block {
            flatten(&b.children, depth + 1, out, servers);
        }
    }
}

#[test]
fn agrees_with_crossplane_on_the_debian_corpus() {
    let files = corpus();
    assert!(
        files.len() >= 25,
        "corpus too small ({} files): run tests/testbed/setup.sh",
        files.len()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testbed/crossplane_dump.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "crossplane: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Value = serde_json::from_slice(&out.stdout).unwrap();

    let mut problems = Vec::new();
    let mut servers_compared = 0;
    for file in &files {
        let theirs = &reference[file.to_str().unwrap()];
        let text = std::fs::read(file).unwrap();
        let ours = Config::parse_str(file, &text);
        if !theirs["ok"].as_bool().unwrap() {
            // crossplane refused the file: we must refuse it too, or it was crossplane's limit.
            if ours.is_ok() {
                problems.push(format!(
                    "{}: crossplane failed ({}) but we parsed it",
                    file.display(),
                    theirs["errors"]
                ));
            }
            continue;
        }
        let cfg = match ours {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!(
                    "{}: we failed ({e}) but crossplane parsed it",
                    file.display()
                ));
                continue;
            }
        };
        assert_eq!(
            cfg.render(cfg.main).unwrap(),
            text,
            "{} does not round-trip",
            file.display()
        );
        let (mut ours_flat, mut our_servers) = (Vec::new(), Vec::new());
        flatten(cfg.root(), 0, &mut ours_flat, &mut our_servers);
        let their_servers: Vec<Vec<String>> =
            serde_json::from_value(theirs["servers"].clone()).unwrap();
        let their_servers: Vec<Vec<String>> = their_servers
            .iter()
            .map(|names| {
                names
                    .iter()
                    .map(|n| unescape(n.as_bytes()).to_string())
                    .collect()
            })
            .collect();
        if our_servers != their_servers {
            problems.push(format!(
                "{}: server names differ: ours {our_servers:?}, crossplane {their_servers:?}",
                file.display()
            ));
        }
        servers_compared += our_servers.len();
        let theirs_flat = theirs["directives"].as_array().unwrap();
        if theirs_flat.len() != ours_flat.len() {
            problems.push(format!(
                "{}: {} directives, crossplane {}",
                file.display(),
                ours_flat.len(),
                theirs_flat.len()
            ));
            continue;
        }
        for ((depth, name, args, line), t) in ours_flat.iter().zip(theirs_flat) {
            let t_args: Vec<String> = t[2]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| unescape(a.as_str().unwrap().as_bytes()).to_string())
                .collect();
            let same_shape = t[0] == *depth && t[1] == name.as_str() && t[3] == *line;
            let same_args =
                name == "if" || acme_nginx::nginx::parser::is_lua_block(name) || &t_args == args;
            if !(same_shape && same_args) {
                problems.push(format!(
                    "{}:{line}: ours ({depth}, {name}, {args:?}), crossplane {t}",
                    file.display()
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} differences:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(
        servers_compared >= 8,
        "only {servers_compared} server blocks compared"
    );
}
