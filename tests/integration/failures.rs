//! Failure and crash consistency: a run killed between its edit and its reload is rolled back
//! and completed by the next run without a new order; a certificate issued but refused by
//! `nginx -t` is kept and installed later without a new order; an account the CA lost is
//! registered again; a broken part of the configuration does not stop the renewal of the rest.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::util::{assert_exit, by_name, json, leaf, Bed};

const ONE: &str = "server {\n    listen 127.0.0.1:{port};\n    server_name one.fail.test;\n    \
    location /.well-known/acme-challenge/ { alias {dir}/acme/; }\n}\n";

fn versions(bed: &Bed, name: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(bed.lineage(name).join("versions"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_run_killed_between_edit_and_reload_is_rolled_back_and_completed_without_a_new_order() {
    let bed = Bed::start(ONE);
    fs::create_dir_all(bed.nginx.dir.path().join("acme")).unwrap();
    let original = fs::read_to_string(&bed.nginx.conf).unwrap();
    // Once the configuration has been edited, acme-nginx (the wrapper's parent) is killed in
    // the middle of `nginx -t`: the edit is on disk, the reload never happens.
    let wrapper = bed.nginx_wrapper("kill -9 $PPID; sleep 5");
    let killed = bed.cmd("enroll", &["--nginx-bin", wrapper.to_str().unwrap()]);
    assert_eq!(killed.status.code(), None, "killed by a signal");
    assert_ne!(
        fs::read_to_string(&bed.nginx.conf).unwrap(),
        original,
        "edited, not reloaded"
    );
    assert!(bed.state.path().join("install.intent").exists());
    assert_eq!(versions(&bed, "one.fail.test"), vec!["0001"]);
    let issued = leaf(
        &bed.lineage("one.fail.test")
            .join("versions/0001/fullchain.pem"),
    );

    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 0);
    let report = json(&out);
    assert_eq!(
        by_name(&report, "one.fail.test")["status"],
        "installed",
        "{report}"
    );
    assert_eq!(
        versions(&bed, "one.fail.test"),
        vec!["0001"],
        "no new order"
    );
    assert_eq!(bed.served("one.fail.test"), issued);
    assert!(!bed.state.path().join("install.intent").exists());
    assert!(bed.nginx.config_passes());
    // And the run after that has nothing to do.
    let out = bed.cmd("enroll", &[]);
    assert_eq!(
        by_name(&json(&out), "one.fail.test")["status"],
        "up-to-date"
    );
}

#[test]
fn a_certificate_refused_by_nginx_t_is_kept_and_installed_later_without_a_new_order() {
    // nginx accepted the rehearsed edit before the order, and refuses it when it is made (the
    // configuration changed meanwhile, say): the certificate is kept, not live.
    let bed = Bed::start(ONE);
    fs::create_dir_all(bed.nginx.dir.path().join("acme")).unwrap();
    let original = fs::read_to_string(&bed.nginx.conf).unwrap();
    let wrapper = bed
        .nginx_wrapper("echo 'nginx: [emerg] refused for the test (ssl_dhparam gone)' >&2; exit 1");
    let out = bed.cmd("enroll", &["--nginx-bin", wrapper.to_str().unwrap()]);
    assert_exit(&out, 1);
    let report = json(&out);
    let entry = by_name(&report, "one.fail.test");
    assert_eq!(entry["status"], "failed");
    assert!(
        entry["error"].as_str().unwrap().contains("dhparam"),
        "{entry}"
    );
    assert_eq!(fs::read_to_string(&bed.nginx.conf).unwrap(), original);
    assert!(bed.nginx.config_passes());
    let issued = leaf(
        &bed.lineage("one.fail.test")
            .join("versions/0001/fullchain.pem"),
    );
    assert!(
        !bed.live("one.fail.test").exists(),
        "not live while nginx refuses it"
    );

    // nginx accepts it again; the kept certificate goes live, no new order.
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 0);
    assert_eq!(by_name(&json(&out), "one.fail.test")["status"], "installed");
    assert_eq!(
        versions(&bed, "one.fail.test"),
        vec!["0001"],
        "no new order"
    );
    assert_eq!(bed.served("one.fail.test"), issued);
}

#[test]
fn an_account_the_ca_no_longer_knows_is_registered_again() {
    let bed = Bed::start(ONE);
    fs::create_dir_all(bed.nginx.dir.path().join("acme")).unwrap();
    assert_exit(&bed.cmd("enroll", &[]), 0);
    let account = fs::read_dir(bed.state.path().join("accounts"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path()
        .join("account.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&fs::read(&account).unwrap()).unwrap();
    let url = state["account_url"].as_str().unwrap().to_owned();
    let lost = format!("{}/ffffffffffff", url.rsplit_once('/').unwrap().0);
    state["account_url"] = lost.clone().into();
    fs::write(&account, serde_json::to_vec(&state).unwrap()).unwrap();
    // renew takes no --agree-tos: the terms were agreed when the account was made.
    let out = bed.cmd("renew", &["--force"]);
    assert_exit(&out, 0);
    assert_eq!(by_name(&json(&out), "one.fail.test")["status"], "renewed");
    let state: serde_json::Value = serde_json::from_slice(&fs::read(&account).unwrap()).unwrap();
    assert_ne!(state["account_url"], lost.as_str());
    assert_ne!(state["account_url"], url.as_str());
}

#[test]
fn a_part_of_the_configuration_that_does_not_parse_does_not_stop_the_renewal_of_the_rest() {
    let sites = tempfile::tempdir().unwrap();
    fs::set_permissions(sites.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let site = |name: &str| {
        format!(
            "server {{\n    listen 127.0.0.1:{{port}};\n    server_name {name};\n    \
             location /.well-known/acme-challenge/ {{ alias {}/acme/; }}\n}}\n",
            sites.path().display()
        )
    };
    fs::create_dir_all(sites.path().join("acme")).unwrap();
    let port = crate::util::free_port();
    let write = |file: &str, text: &str| {
        fs::write(
            sites.path().join(file),
            text.replace("{port}", &port.to_string()),
        )
        .unwrap()
    };
    write("one.conf", &site("one.fail.test"));
    write("two.conf", &site("two.fail.test"));
    let bed = Bed::start_on(
        port,
        &format!("include {}/*.conf;\n", sites.path().display()),
    );
    assert_exit(&bed.cmd("enroll", &[]), 0);
    // two.conf becomes something nginx accepts but acme-nginx's parser refuses: locations
    // nested deeper than its limit.
    let depth = 70;
    let mut nested = String::new();
    let mut prefix = String::from("/n");
    for _ in 0..depth {
        nested.push_str(&format!("location {prefix} {{ "));
        prefix.push_str("/n");
    }
    nested.push_str(&"} ".repeat(depth));
    let two = fs::read_to_string(sites.path().join("two.conf")).unwrap();
    fs::write(
        sites.path().join("two.conf"),
        two.replace(
            "    server_name two.fail.test;",
            &format!("    server_name two.fail.test;\n    {nested}"),
        ),
    )
    .unwrap();
    assert!(bed.nginx.config_passes(), "nginx accepts the deep nesting");
    let metrics = bed.state.path().join("metrics.prom");
    let out = bed.cmd(
        "renew",
        &["--force", "--metrics-file", metrics.to_str().unwrap()],
    );
    assert_exit(&out, 1);
    let report = json(&out);
    assert_eq!(
        by_name(&report, "one.fail.test")["status"],
        "renewed",
        "{report}"
    );
    let two = by_name(&report, "two.fail.test");
    assert_eq!(two["status"], "failed");
    assert!(two["error"].as_str().unwrap().contains("two.conf"), "{two}");
    let text = fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains("acme_nginx_certificate_last_result{name=\"one.fail.test\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("acme_nginx_certificate_last_result{name=\"two.fail.test\"} 0"),
        "{text}"
    );

    // A run that cannot run at all still says so in the metrics.
    fs::write(&metrics, "stale\n").unwrap();
    let out = bed.cmd(
        "renew",
        &[
            "--force",
            "--directory",
            "https://127.0.0.1:1/dir",
            "--metrics-file",
            metrics.to_str().unwrap(),
        ],
    );
    assert_exit(&out, 2);
    let text = fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains("acme_nginx_certificate_last_result{name=\"one.fail.test\"} 0"),
        "{text}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot reach the CA at https://127.0.0.1:1/dir"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_name_the_ca_refuses_is_not_ordered_again_on_the_next_reload() {
    let bed = Bed::start(ONE);
    fs::create_dir_all(bed.nginx.dir.path().join("acme")).unwrap();
    // The CA resolves the name to an address where nothing listens (its DNS "points
    // elsewhere"); the loopback preflight through nginx still passes.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        bed.pebble
            .http()
            .post(format!("{}/add-a", bed.pebble.dns_management))
            .body(r#"{"host": "one.fail.test.", "addresses": ["127.0.0.2"]}"#)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    });
    let post_log = bed.state.path().join("post.log");
    let post = format!(
        "echo \"renewed=[$RENEWED_DOMAINS] failed=[$FAILED_DOMAINS]\" >> {}",
        post_log.display()
    );
    let out = bed.cmd("enroll", &["--post-hook", &post]);
    assert_exit(&out, 1);
    let first = by_name(&json(&out), "one.fail.test");
    assert_eq!(first["status"], "failed");
    // The post hook is told which names failed (certbot's FAILED_DOMAINS).
    assert_eq!(
        fs::read_to_string(&post_log).unwrap(),
        "renewed=[] failed=[one.fail.test]\n"
    );
    assert!(
        first["error"]
            .as_str()
            .unwrap()
            .contains("urn:ietf:params:acme:error:"),
        "{first}"
    );
    let orders_before = bed.pebble.log().matches("one.fail.test").count();
    // What the nginx.service drop-in runs after every reload: no new order, no failed
    // validation spent, and the name is reported as waiting.
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 1);
    let second = by_name(&json(&out), "one.fail.test");
    assert_eq!(second["status"], "backoff", "{second}");
    assert!(second["next_renewal"].is_string());
    assert_eq!(
        bed.pebble.log().matches("one.fail.test").count(),
        orders_before
    );
    // Named explicitly, the operator retries now.
    let out = bed.cmd("enroll", &["one.fail.test"]);
    assert_eq!(by_name(&json(&out), "one.fail.test")["status"], "failed");
}

#[test]
fn one_block_refused_by_nginx_t_fails_alone() {
    let two = format!(
        "{ONE}server {{\n    listen 127.0.0.1:{{port}};\n    server_name bad.fail.test;\n    \
         ssl_dhparam {{dir}}/missing-dhparam.pem;\n    \
         location /.well-known/acme-challenge/ {{ alias {{dir}}/acme/; }}\n}}\n"
    );
    let bed = Bed::start(&two);
    fs::create_dir_all(bed.nginx.dir.path().join("acme")).unwrap();
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 1);
    let report = json(&out);
    assert_eq!(
        by_name(&report, "one.fail.test")["status"],
        "issued",
        "{report}"
    );
    let bad = by_name(&report, "bad.fail.test");
    assert_eq!(bad["status"], "failed");
    assert!(bad["error"].as_str().unwrap().contains("dhparam"), "{bad}");
    assert_eq!(
        bed.served("one.fail.test"),
        leaf(&bed.live("one.fail.test").join("fullchain.pem"))
    );
    assert!(bed.nginx.config_passes());
}
