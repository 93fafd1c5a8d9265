//! The ACME client against a real pebble (with pebble-challtestsrv as its DNS) and a real nginx
//! serving the http-01 webroot.

use std::fs;
use std::time::Duration;

use crate::util::{names, openssl_verify, run, run_ok, Nginx, Pebble, PebbleOptions};
use acme_nginx::acme::{
    self, create_csr, Account, CertInfo, ChallengeSolver, ChallengeType, KeyPair, KeyType,
    NewAccountOptions, OrderOptions, PendingChallenge, SolverError,
};
use acme_nginx::challenge::WebrootSolver;
use serde_json::{json, Value};

/// nginx serving `/.well-known/acme-challenge/` from `{dir}/acme/` for every name.
fn nginx_with_webroot() -> (Nginx, std::path::PathBuf) {
    let nginx = Nginx::start(
        "server {\n listen 127.0.0.1:{port};\n server_name _;\n \
         location /.well-known/acme-challenge/ { alias {dir}/acme/; default_type text/plain; }\n}\n",
    );
    let webroot = nginx.dir.path().join("acme");
    fs::create_dir_all(&webroot).unwrap();
    (nginx, webroot)
}

/// The seed's first two steps from the command line (account register, csr) in a work
/// directory; `sign` is the third.
struct SeedFlow<'a> {
    pebble: &'a Pebble,
    _work: tempfile::TempDir,
    state: std::path::PathBuf,
    csr: std::path::PathBuf,
    cert: std::path::PathBuf,
}

impl<'a> SeedFlow<'a> {
    fn new(pebble: &'a Pebble, name: &str) -> Self {
        let work = tempfile::tempdir().unwrap();
        let (state, key) = (work.path().join("acme.json"), work.path().join("k.pem"));
        let (csr, cert) = (work.path().join("c.csr"), work.path().join("c.pem"));
        run_ok(
            pebble
                .cli()
                .args(["account", "register", "--agree-tos", "--state"])
                .arg(&state),
        );
        run_ok(
            pebble
                .cli()
                .args(["csr", "-d", name, "--key-out"])
                .arg(&key)
                .arg("--out")
                .arg(&csr),
        );
        SeedFlow {
            pebble,
            _work: work,
            state,
            csr,
            cert,
        }
    }

    fn sign(&self, webroot: &std::path::Path) -> std::process::Command {
        let mut c = self.pebble.cli();
        c.arg("sign")
            .arg("--state")
            .arg(&self.state)
            .arg("--csr")
            .arg(&self.csr)
            .arg("--out")
            .arg(&self.cert)
            .arg("--webroot")
            .arg(webroot);
        c
    }
}

fn dir_is_empty(p: &std::path::Path) -> bool {
    fs::read_dir(p)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

async fn sign_with_webroot(
    pebble: &Pebble,
    webroot: &std::path::Path,
    names: &[String],
    opts: &OrderOptions,
) -> Result<acme::CertificateChain, acme::Error> {
    let account = pebble.account().await;
    let csr = create_csr(&KeyPair::generate(KeyType::P256), names).unwrap();
    account
        .sign(names, &csr.der, &WebrootSolver::new(webroot), opts)
        .await
}

#[tokio::test]
async fn account_register_find_update_rollover_deactivate() {
    let pebble = Pebble::start(PebbleOptions::http_port(crate::util::free_port()));
    let key = KeyPair::generate(KeyType::P256);
    let opts = NewAccountOptions {
        contact: vec!["mailto:one@example.org".into()],
        terms_of_service_agreed: true,
        ..Default::default()
    };
    let (mut account, resource) = Account::create(pebble.client().await, key.clone(), &opts)
        .await
        .unwrap();
    assert_eq!(resource.status, acme::AccountStatus::Valid);
    assert_eq!(resource.contact, vec!["mailto:one@example.org"]);

    // onlyReturnExisting finds the same account by its key.
    let (found, _) = Account::find(pebble.client().await, key.clone())
        .await
        .unwrap();
    assert_eq!(found.url(), account.url());
    // ... and a key the CA has never seen is accountDoesNotExist, verbatim.
    let err = Account::find(pebble.client().await, KeyPair::generate(KeyType::P256))
        .await
        .unwrap_err();
    assert!(err.is_acme("accountDoesNotExist"), "{err}");

    let updated = account
        .update_contact(vec!["mailto:two@example.org".into()])
        .await
        .unwrap();
    assert_eq!(updated.contact, vec!["mailto:two@example.org"]);

    // State round trip.
    let state = account.to_state();
    let restored = Account::from_state(pebble.client().await, &state).unwrap();
    assert_eq!(
        restored.fetch().await.unwrap().contact,
        vec!["mailto:two@example.org"]
    );

    // Rollover: the new key finds the account, the old one no longer does.
    let new_key = KeyPair::generate(KeyType::P384);
    account.rollover(new_key.clone()).await.unwrap();
    let (after, _) = Account::find(pebble.client().await, new_key).await.unwrap();
    assert_eq!(after.url(), account.url());
    let err = Account::find(pebble.client().await, key).await.unwrap_err();
    assert!(err.is_acme("accountDoesNotExist"), "{err}");
    assert_eq!(
        account.fetch().await.unwrap().status,
        acme::AccountStatus::Valid
    );

    let deactivated = account.deactivate().await.unwrap();
    assert_eq!(deactivated.status, acme::AccountStatus::Deactivated);
    let err = account.fetch().await.unwrap_err();
    assert!(
        err.is_acme("unauthorized"),
        "a deactivated account must be refused: {err}"
    );
}

#[tokio::test]
async fn cli_three_step_flow_signs_a_multi_san_certificate_through_nginx() {
    let (nginx, webroot) = nginx_with_webroot();
    let pebble = Pebble::start(PebbleOptions::http_port(nginx.port));
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("acme.json");
    let (key, csr, cert) = (
        work.path().join("key.pem"),
        work.path().join("csr.pem"),
        work.path().join("cert.pem"),
    );

    run_ok(
        pebble
            .cli()
            .args([
                "account",
                "register",
                "--agree-tos",
                "--email",
                "ops@example.org",
                "--state",
            ])
            .arg(&state),
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&state).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let domains = names("multi", 3);
    let mut csr_cmd = pebble.cli();
    csr_cmd
        .arg("csr")
        .arg("--key-out")
        .arg(&key)
        .arg("--out")
        .arg(&csr);
    for d in &domains {
        csr_cmd.args(["--domain", d]);
    }
    run_ok(&mut csr_cmd);
    let key_mode =
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&key).unwrap().permissions());
    assert_eq!(key_mode & 0o777, 0o600);
    let (state_before, csr_before) = (fs::read(&state).unwrap(), fs::read(&csr).unwrap());

    let out = run_ok(
        pebble
            .cli()
            .args(["--json", "sign", "--state"])
            .arg(&state)
            .arg("--csr")
            .arg(&csr)
            .arg("--out")
            .arg(&cert)
            .arg("--webroot")
            .arg(&webroot),
    );
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["names"], json!(domains));

    // The seed's example truncated its inputs; ours are only read.
    assert_eq!(fs::read(&state).unwrap(), state_before);
    assert_eq!(fs::read(&csr).unwrap(), csr_before);
    assert!(dir_is_empty(&webroot), "tokens left behind");

    let chain = fs::read_to_string(&cert).unwrap();
    let info = CertInfo::from_pem(chain.as_bytes()).unwrap();
    let mut got = info.names.clone();
    got.sort();
    assert_eq!(got, domains);
    let (ok, text) = openssl_verify(&pebble.root_file().await, &chain, work.path());
    assert!(ok, "openssl verify: {text}");
    // The key we wrote is the key the certificate certifies.
    let pubkey = |args: &[&str], input: &std::path::Path| {
        run_ok(std::process::Command::new("openssl").args(args).arg(input))
    };
    assert_eq!(
        pubkey(&["pkey", "-pubout", "-in"], &key),
        pubkey(&["x509", "-noout", "-pubkey", "-in"], &cert)
    );
}

#[tokio::test]
async fn ip_identifier_is_validated_over_http01() {
    let (nginx, webroot) = nginx_with_webroot();
    let pebble = Pebble::start(PebbleOptions::http_port(nginx.port));
    let chain = sign_with_webroot(
        &pebble,
        &webroot,
        &["127.0.0.1".to_owned()],
        &OrderOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        CertInfo::from_pem(chain.pem.as_bytes()).unwrap().names,
        vec!["127.0.0.1"]
    );
}

/// A dns-01 solver that drives pebble-challtestsrv's management API.
struct ChallTestSrv {
    api: String,
    http: reqwest::Client,
}

impl ChallengeSolver for ChallTestSrv {
    fn challenge_types(&self) -> &[ChallengeType] {
        &[ChallengeType::Dns01]
    }
    async fn fulfill(&self, ch: &PendingChallenge) -> Result<(), SolverError> {
        let body = json!({"host": ch.dns_record_name(), "value": ch.dns_txt_value()});
        self.http
            .post(format!("{}/set-txt", self.api))
            .body(body.to_string())
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
    async fn clear(&self, ch: &PendingChallenge) -> Result<(), SolverError> {
        let body = json!({"host": ch.dns_record_name()});
        self.http
            .post(format!("{}/clear-txt", self.api))
            .body(body.to_string())
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}

#[tokio::test]
async fn dns01_wildcard_through_challtestsrv() {
    let pebble = Pebble::start(PebbleOptions::http_port(crate::util::free_port()));
    let account = pebble.account().await;
    let names = vec![
        "dns.acme-nginx.test".to_owned(),
        "*.dns.acme-nginx.test".to_owned(),
    ];
    let csr = create_csr(&KeyPair::generate(KeyType::P384), &names).unwrap();
    let solver = ChallTestSrv {
        api: pebble.dns_management.clone(),
        http: reqwest::Client::new(),
    };
    let chain = account
        .sign(&names, &csr.der, &solver, &OrderOptions::default())
        .await
        .unwrap();
    let info = CertInfo::from_pem(chain.pem.as_bytes()).unwrap();
    assert!(
        info.names.contains(&"*.dns.acme-nginx.test".to_owned()),
        "{:?}",
        info.names
    );
}

#[tokio::test]
async fn eab_required_pebble() {
    let pebble = Pebble::start(PebbleOptions {
        eab: true,
        ..PebbleOptions::http_port(crate::util::free_port())
    });
    let client = pebble.client().await;
    assert!(client.directory().meta.external_account_required);
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("acme.json");

    // Without EAB: exit 2 with a clear message, and no state file.
    let out = run(pebble
        .cli()
        .args(["account", "register", "--agree-tos", "--state"])
        .arg(&state));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("external account binding"));
    assert!(!state.exists());

    // A wrong HMAC key: the CA's problem reaches the user.
    let out = run(pebble
        .cli()
        .args([
            "account",
            "register",
            "--agree-tos",
            "--eab-kid",
            "kid-1",
            "--eab-hmac-key",
            "AAAA",
            "--state",
        ])
        .arg(&state));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("urn:ietf:params:acme:error:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (kid, hmac) = crate::util::EAB_KEYS[0];
    // The key from a file only root can read (never on the command line, where ps shows it);
    // a file others can read is refused, and the message does not repeat the key.
    let hmac_file = state.with_extension("eab-key");
    std::fs::write(&hmac_file, hmac).unwrap();
    let world_readable = run(pebble
        .cli()
        .args(["account", "register", "--agree-tos", "--eab-kid", kid])
        .arg("--eab-hmac-key-file")
        .arg(&hmac_file)
        .arg("--state")
        .arg(&state));
    assert_eq!(world_readable.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&world_readable.stderr);
    assert!(
        stderr.contains("chmod 600") && !stderr.contains(hmac),
        "{stderr}"
    );
    crate::util::write_secret(&hmac_file, hmac);
    run_ok(
        pebble
            .cli()
            .args(["account", "register", "--agree-tos", "--eab-kid", kid])
            .arg("--eab-hmac-key-file")
            .arg(&hmac_file)
            .arg("--state")
            .arg(&state),
    );
    let shown: Value = serde_json::from_str(&run_ok(
        pebble
            .cli()
            .args(["--json", "account", "show", "--state"])
            .arg(&state),
    ))
    .unwrap();
    assert_eq!(shown["status"], "valid");
}

#[tokio::test]
async fn revocation_by_account_key() {
    let (nginx, webroot) = nginx_with_webroot();
    let pebble = Pebble::start(PebbleOptions::http_port(nginx.port));
    let flow = SeedFlow::new(&pebble, "revoke.acme-nginx.test");
    run_ok(&mut flow.sign(&webroot));
    let revoke = |reason: Option<&str>| {
        let mut c = pebble.cli();
        c.arg("revoke")
            .arg("--state")
            .arg(&flow.state)
            .arg("--cert")
            .arg(&flow.cert);
        if let Some(r) = reason {
            c.args(["--reason", r]);
        }
        run(&mut c)
    };
    assert_eq!(revoke(Some("4")).status.code(), Some(0));
    // Revoking again: the CA's alreadyRevoked problem, type and detail, exit 2.
    let out = revoke(None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("urn:ietf:params:acme:error:alreadyRevoked"),
        "{err}"
    );
    // Reason 7 does not exist in RFC 5280.
    assert_eq!(revoke(Some("7")).status.code(), Some(2));
}

#[tokio::test]
async fn ari_window_and_profiles_on_a_fresh_certificate() {
    let (nginx, webroot) = nginx_with_webroot();
    let pebble = Pebble::start(PebbleOptions::http_port(nginx.port));
    let client = pebble.client().await;
    assert!(
        client.directory().renewal_info.is_some(),
        "pebble 2.10 offers ARI"
    );
    assert!(client.directory().meta.profiles.contains_key("shortlived"));

    let opts = OrderOptions {
        profile: Some("shortlived".into()),
        ..OrderOptions::default()
    };
    let chain = sign_with_webroot(&pebble, &webroot, &names("ari", 1), &opts)
        .await
        .unwrap();
    let leaf = acme::pem_certificates(chain.pem.as_bytes())
        .unwrap()
        .remove(0);
    let info = CertInfo::from_der(&leaf).unwrap();
    // The shortlived profile is six days.
    assert!(
        info.lifetime() <= time::Duration::days(7),
        "lifetime {}",
        info.lifetime()
    );

    let ari = acme::renewal_info(&client, &leaf)
        .await
        .unwrap()
        .expect("renewalInfo for our CertID");
    assert!(ari.window_start < ari.window_end);
    assert!(
        ari.window_start > time::OffsetDateTime::now_utc(),
        "a fresh certificate is not due"
    );
    assert!(ari.window_end <= info.not_after);

    // Unknown profile: the CA's problem, verbatim.
    let opts = OrderOptions {
        profile: Some("no-such-profile".into()),
        ..OrderOptions::default()
    };
    let err = sign_with_webroot(&pebble, &webroot, &names("ari-bad", 1), &opts)
        .await
        .unwrap_err();
    assert!(err.problem().is_some(), "{err}");
}

#[tokio::test]
async fn sixty_percent_nonce_rejection_still_succeeds() {
    let (nginx, webroot) = nginx_with_webroot();
    let pebble = Pebble::start(PebbleOptions {
        nonce_reject: 60,
        ..PebbleOptions::http_port(nginx.port)
    });
    let chain = sign_with_webroot(
        &pebble,
        &webroot,
        &names("nonce", 4),
        &OrderOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        CertInfo::from_pem(chain.pem.as_bytes())
            .unwrap()
            .names
            .len(),
        4
    );
    assert!(
        pebble.log().contains("reject 60% of good nonces"),
        "pebble did not take the setting"
    );
}

#[tokio::test]
async fn validation_failure_reports_the_ca_problem_and_leaves_no_token() {
    // nginx serves the challenge path from a different directory than the one we write to.
    let nginx = Nginx::start("server {\n listen 127.0.0.1:{port};\n location /.well-known/acme-challenge/ { alias {dir}/elsewhere/; }\n}\n");
    let webroot = nginx.dir.path().join("acme");
    let pebble = Pebble::start(PebbleOptions::http_port(nginx.port));
    let flow = SeedFlow::new(&pebble, "fail.acme-nginx.test");
    let out = run(&mut flow.sign(&webroot));
    assert_eq!(out.status.code(), Some(1), "a failed name exits 1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fail.acme-nginx.test")
            && err.contains("urn:ietf:params:acme:error:unauthorized"),
        "{err}"
    );
    assert!(webroot.exists(), "the solver created the webroot");
    assert!(
        dir_is_empty(&webroot),
        "token left behind after a failed validation"
    );
    assert!(!flow.cert.exists());
}

#[tokio::test]
async fn rejected_identifier_shows_type_and_detail() {
    let (nginx, webroot) = nginx_with_webroot();
    let pebble = Pebble::start(PebbleOptions::http_port(nginx.port));
    let err = sign_with_webroot(
        &pebble,
        &webroot,
        &["blocked-domain.example".to_owned()],
        &OrderOptions::default(),
    )
    .await
    .unwrap_err();
    let problem = err.problem().expect("a problem document");
    assert!(problem.is("rejectedIdentifier"), "{err}");
    assert!(err.to_string().contains("blocked-domain.example"), "{err}");
}

#[tokio::test]
async fn order_timeout_still_clears_every_token() {
    // The http-01 port accepts connections and never answers; the order deadline is short.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let pebble = Pebble::start(PebbleOptions::http_port(
        silent.local_addr().unwrap().port(),
    ));
    let webroot = tempfile::tempdir().unwrap();
    let opts = OrderOptions {
        timeout: Duration::from_millis(300),
        ..OrderOptions::default()
    };
    let result = sign_with_webroot(&pebble, webroot.path(), &names("timeout", 2), &opts).await;
    let err = result.unwrap_err();
    assert!(matches!(err, acme::Error::Timeout { .. }), "{err}");
    assert!(
        dir_is_empty(webroot.path()),
        "tokens left behind after a timeout"
    );
    drop(silent);
}

#[tokio::test]
async fn alternate_chain_selected_by_issuer_name() {
    let (nginx, webroot) = nginx_with_webroot();
    let pebble = Pebble::start(PebbleOptions {
        alternate_roots: 1,
        ..PebbleOptions::http_port(nginx.port)
    });
    let default = sign_with_webroot(
        &pebble,
        &webroot,
        &names("chain", 1),
        &OrderOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(default.alternates, 1);
    let top_issuer = |pem: &str| {
        let certs = acme::pem_certificates(pem.as_bytes()).unwrap();
        CertInfo::from_der(certs.last().unwrap())
            .unwrap()
            .issuer_cn
            .unwrap()
    };
    let alt_root = pebble.root_pem_n(1).await;
    let alt_name = CertInfo::from_pem(alt_root.as_bytes())
        .unwrap()
        .subject_cn
        .unwrap();
    assert_ne!(top_issuer(&default.pem), alt_name);

    let opts = OrderOptions {
        preferred_chain: Some(alt_name.clone()),
        ..OrderOptions::default()
    };
    let chosen = sign_with_webroot(&pebble, &webroot, &names("chain-alt", 1), &opts)
        .await
        .unwrap();
    assert_eq!(top_issuer(&chosen.pem), alt_name);
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("alt-root.pem");
    fs::write(&root, alt_root).unwrap();
    let (ok, text) = openssl_verify(&root, &chosen.pem, work.path());
    assert!(ok, "{text}");
}
