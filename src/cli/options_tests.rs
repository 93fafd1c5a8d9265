//! The options type against the shipped configuration file and the flags.

use super::*;
use clap::CommandFactory;

#[test]
fn reads_settings_and_refuses_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(
        &p,
        "agree_tos = true\nemail = \"a@b.example\"\nhttps_port = 8443\n",
    )
    .unwrap();
    let c = Options::load_file(Some(&p)).unwrap();
    assert!(c.agree_tos);
    assert_eq!(c.https_port, Some(8443));
    std::fs::write(&p, "agree_to = true\n").unwrap();
    let e = Options::load_file(Some(&p)).unwrap_err().to_string();
    assert!(e.contains("unknown field") && e.contains("c.toml"), "{e}");
    assert!(Options::load_file(Some(&dir.path().join("missing.toml"))).is_err());
    // A value of the wrong shape says what the key takes, where.
    std::fs::write(&p, "directory = 5\n").unwrap();
    let e = Options::load_file(Some(&p)).unwrap_err().to_string();
    assert!(
        e.contains("a directory URL or a list of directory URLs")
            && e.contains("line 1, column 13"),
        "{e}"
    );
}

#[test]
fn flags_win_over_the_file() {
    let flags = Options {
        https_port: Some(1),
        ..Options::default()
    };
    let file = Options {
        https_port: Some(2),
        email: Some("f@x.example".into()),
        redirect: true,
        ..Options::default()
    };
    let o = flags.over(file);
    assert_eq!(o.https_port, Some(1));
    assert_eq!(o.email.as_deref(), Some("f@x.example"));
    assert!(o.redirect);
}

/// Every key of the shipped config.toml is an option, every option is in the shipped file,
/// and every key has a flag of the same name (`directory` and `ca_file` as global flags; the
/// `[dns]` table's keys as `--dns-KEY`, its provider as `--dns`; `[challenges]` is file-only).
#[test]
fn shipped_config_file_keys_and_flags_match() {
    let shipped = include_str!("../../packaging/config.toml");
    let mut keys = std::collections::BTreeSet::new();
    let mut dns_keys = std::collections::BTreeSet::new();
    let mut fleet_keys = std::collections::BTreeSet::new();
    let mut notify_keys = std::collections::BTreeSet::new();
    let mut table = String::new();
    // Tables only the file has (keyed by a name or a directory URL).
    let file_only = ["challenges", "caa_identities", "eab"];
    for l in shipped.lines().filter_map(|l| l.strip_prefix('#')) {
        if let Some(t) = l.strip_prefix('[') {
            table = t.trim_end_matches(']').to_owned();
            table = table.split('.').next().unwrap_or_default().to_owned();
            if !file_only.contains(&table.as_str()) {
                keys.insert(table.clone());
            }
            continue;
        }
        let Some((k, _)) = l.split_once(" = ") else {
            continue;
        };
        let k = k.trim().to_owned();
        if k.is_empty() || k.contains(' ') {
            continue;
        }
        match table.as_str() {
            "" => {
                keys.insert(k);
            }
            "dns" => {
                dns_keys.insert(k);
            }
            "fleet" => {
                fleet_keys.insert(k);
            }
            "notify" => {
                notify_keys.insert(k);
            }
            _ => {}
        }
    }
    // The shipped file, uncommented, is a valid configuration.
    let uncommented: String = shipped
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter(|l| (l.contains(" = ") && !l.starts_with(' ')) || l.starts_with('['))
        .map(|l| format!("{}\n", l.split("  #").next().unwrap_or(l)))
        .collect();
    let parsed =
        toml::from_str::<Options>(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    assert_eq!(parsed.challenges.len(), 1, "{uncommented}");
    assert_eq!(parsed.caa_identities.len(), 1, "{uncommented}");
    assert_eq!(parsed.eab.len(), 1, "{uncommented}");
    let default = serde_json::to_value(Options::default()).unwrap();
    let fields: std::collections::BTreeSet<String> =
        default.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, fields, "packaging/config.toml and Options differ");
    let dns_fields: std::collections::BTreeSet<String> = default["dns"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        dns_keys, dns_fields,
        "the [dns] table and DnsOptions differ"
    );
    let cli = super::super::Cli::command();
    let enroll = cli.find_subcommand("enroll").unwrap();
    let flags: Vec<String> = keys
        .iter()
        .filter(|k| *k != "dns" && *k != "fleet" && *k != "notify")
        .map(|k| k.replace('_', "-"))
        .chain(dns_keys.iter().map(|k| match k.as_str() {
            "provider" => "dns".to_owned(),
            k => format!("dns-{}", k.replace('_', "-")),
        }))
        .chain(notify_keys.iter().map(|k| format!("notify-{k}")))
        .chain(fleet_keys.iter().map(|k| match k.as_str() {
            "etcd" | "node" => k.clone(),
            k if k.starts_with("etcd_") => k.replace('_', "-"),
            k => format!("fleet-{}", k.replace('_', "-")),
        }))
        .collect();
    for long in &flags {
        let has = enroll
            .get_arguments()
            .chain(cli.get_arguments())
            .any(|a| a.get_long() == Some(long.as_str()));
        assert!(has, "config key for --{long} has no flag");
    }
}

#[test]
fn dns_settings_are_checked() {
    let dns = |provider, server: Option<&str>| DnsOptions {
        provider,
        server: server.map(str::to_owned),
        ..DnsOptions::default()
    };
    let err = dns(Some(DnsProvider::Rfc2136), None).config().unwrap_err();
    assert!(err.to_string().contains("--dns-server"), "{err}");
    let err = dns(None, Some("127.0.0.1")).config().unwrap_err();
    assert!(err.to_string().contains("without a provider"), "{err}");
    assert!(dns(None, None).config().unwrap().is_none());
    let c = dns(Some(DnsProvider::Rfc2136), Some("127.0.0.1:5353"))
        .config()
        .unwrap()
        .unwrap();
    assert_eq!(c.propagation_timeout, DEFAULT_PROPAGATION_TIMEOUT);
    let hook = DnsOptions {
        hook: Some("/usr/local/bin/dns-hook".into()),
        ..dns(Some(DnsProvider::Hook), None)
    };
    assert!(hook.config().unwrap().is_some());
    let bad_resolver = DnsOptions {
        resolver: Some("ns.example.org".into()),
        ..hook
    };
    let err = bad_resolver.config().unwrap_err();
    assert!(err.to_string().contains("--dns-resolver"), "{err}");
}
