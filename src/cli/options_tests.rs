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
/// and every key has a flag of the same name (`directory` and `ca_file` as global flags).
#[test]
fn shipped_config_file_keys_and_flags_match() {
    let shipped = include_str!("../../packaging/config.toml");
    let keys: std::collections::BTreeSet<String> = shipped
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.trim().to_owned()))
        .filter(|k| !k.is_empty() && !k.contains(' '))
        .collect();
    // The shipped file, uncommented, is a valid configuration.
    let uncommented: String = shipped
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter(|l| l.contains(" = ") && !l.starts_with(' '))
        .map(|l| format!("{}\n", l.split("  #").next().unwrap_or(l)))
        .collect();
    toml::from_str::<Options>(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    let fields: std::collections::BTreeSet<String> = serde_json::to_value(Options::default())
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(keys, fields, "packaging/config.toml and Options differ");
    let cli = super::super::Cli::command();
    let enroll = cli.find_subcommand("enroll").unwrap();
    for k in &keys {
        let long = k.replace('_', "-");
        let has = enroll
            .get_arguments()
            .chain(cli.get_arguments())
            .any(|a| a.get_long() == Some(long.as_str()));
        assert!(has, "config key {k} has no flag --{long}");
    }
}
