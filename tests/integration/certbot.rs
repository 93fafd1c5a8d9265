//! `import-certbot` against a real certbot (Debian's package): certbot issues from pebble into a
//! temporary configuration directory, nginx serves it the way `certbot --nginx` sets blocks
//! up, then acme-nginx takes over without a new order.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{assert_exit, bin, by_name, json, Bed};

const NAME: &str = "imp.certbot.test";

#[test]
fn import_certbot_takes_over_without_a_new_order() {
    // certbot does not retry a rejected nonce: pebble rejects none here.
    let servers = format!(
        "server {{\n    listen 127.0.0.1:{{port}};\n    server_name {NAME};\n    \
         location /.well-known/acme-challenge/ {{ root {{dir}}/www; }}\n    location / {{ return 200 \"imp\\n\"; }}\n}}\n"
    );
    let bed = Bed::start_with(crate::util::free_port(), &servers, |mut o| {
        o.nonce_reject = 0;
        o
    });
    let dir = bed.nginx.dir.path().to_path_buf();
    fs::create_dir_all(dir.join("www")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let le = work.path().join("letsencrypt");
    let certbot = Command::new(bin("certbot"))
        .args([
            "certonly",
            "--non-interactive",
            "--agree-tos",
            "--register-unsafely-without-email",
        ])
        .args(["--server", &bed.pebble.directory])
        .arg("--config-dir")
        .arg(&le)
        .arg("--work-dir")
        .arg(work.path().join("work"))
        .arg("--logs-dir")
        .arg(work.path().join("logs"))
        .args(["--webroot", "-w"])
        .arg(dir.join("www"))
        .args(["-d", NAME])
        .env("REQUESTS_CA_BUNDLE", &bed.pebble.ca_file)
        .output()
        .unwrap();
    assert!(
        certbot.status.success(),
        "certbot: {}",
        String::from_utf8_lossy(&certbot.stderr)
    );
    // What `certbot --nginx` adds to the block, with its shared files.
    fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/realworld/certbot-proxy/options-ssl-nginx.conf"
        ),
        le.join("options-ssl-nginx.conf"),
    )
    .unwrap();
    fs::copy(
        "/usr/lib/python3/dist-packages/certbot/ssl-dhparams.pem",
        le.join("ssl-dhparams.pem"),
    )
    .unwrap();
    let live = le.join("live").join(NAME);
    let conf = fs::read_to_string(&bed.nginx.conf).unwrap();
    let certbot_lines = format!(
        "    listen 127.0.0.1:{https} ssl; # managed by Certbot\n    \
         ssl_certificate {l}/fullchain.pem; # managed by Certbot\n    \
         ssl_certificate_key {l}/privkey.pem; # managed by Certbot\n    \
         include {le}/options-ssl-nginx.conf; # managed by Certbot\n    \
         ssl_dhparam {le}/ssl-dhparams.pem; # managed by Certbot\n",
        https = bed.https_port,
        l = live.display(),
        le = le.display()
    );
    let with_tls = conf.replacen(
        &format!("    server_name {NAME};\n"),
        &format!("    server_name {NAME};\n{certbot_lines}"),
        1,
    );
    fs::write(&bed.nginx.conf, &with_tls).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(bed.nginx.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let certbot_leaf = crate::util::leaf(&live.join("fullchain.pem"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while bed.try_served(NAME).as_deref() != Some(&certbot_leaf[..]) {
        assert!(
            Instant::now() < deadline,
            "nginx does not serve certbot's certificate"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A renewal configuration that cannot be read, and one whose key is not its
    // certificate's, fail alone.
    fs::write(
        le.join("renewal/broken.conf"),
        "version = 2.1.0\nthis is not certbot's format\n",
    )
    .unwrap();
    let other_key = work.path().join("other-key.pem");
    let other = acme_nginx::acme::KeyPair::generate(acme_nginx::acme::KeyType::P256);
    fs::write(&other_key, other.to_pem()).unwrap();
    let conf_text = fs::read_to_string(le.join(format!("renewal/{NAME}.conf"))).unwrap();
    let privkey = live.join("privkey.pem").display().to_string();
    assert!(conf_text.contains(&privkey), "{conf_text}");
    fs::write(
        le.join("renewal/mismatch.conf"),
        conf_text.replace(&privkey, &other_key.display().to_string()),
    )
    .unwrap();
    let before = tree(&le);
    let orders_before = bed.pebble.log().matches("POST /order-plz").count();

    let dry = bed.cmd(
        "import-certbot",
        &["--certbot-dir", le.to_str().unwrap(), "--dry-run"],
    );
    assert_exit(&dry, 1);
    assert_eq!(
        by_name(&json(&dry), NAME)["status"],
        "dry-run",
        "{}",
        json(&dry)
    );
    assert_eq!(fs::read_to_string(&bed.nginx.conf).unwrap(), with_tls);

    let out = bed.cmd("import-certbot", &["--certbot-dir", le.to_str().unwrap()]);
    assert_exit(&out, 1);
    let report = json(&out);
    assert_eq!(by_name(&report, NAME)["status"], "installed", "{report}");
    let broken = by_name(&report, "broken");
    assert_eq!(broken["status"], "failed");
    assert!(
        broken["error"].as_str().unwrap().contains("broken.conf"),
        "{broken}"
    );
    let mismatch = by_name(&report, "mismatch");
    assert!(
        mismatch["error"]
            .as_str()
            .unwrap()
            .contains("is not the key of"),
        "{mismatch}"
    );
    // certbot's directory is only read.
    assert_eq!(tree(&le), before);
    // The same certificate is served, from our lineage; no order was placed.
    assert_eq!(bed.served(NAME), certbot_leaf);
    assert_eq!(
        crate::util::leaf(&bed.live(NAME).join("fullchain.pem")),
        certbot_leaf
    );
    assert_eq!(
        bed.pebble.log().matches("POST /order-plz").count(),
        orders_before
    );
    let imported = fs::read_to_string(&bed.nginx.conf).unwrap();
    assert!(!imported.contains(le.to_str().unwrap()), "{imported}");
    // certbot's account (an RSA key) is ours now.
    let regr: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(
            crate::util::walk(&le.join("accounts"))
                .into_iter()
                .find(|p| p.ends_with("regr.json"))
                .unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let account = crate::util::walk(&bed.state.path().join("accounts"))
        .into_iter()
        .find(|p| p.ends_with("account.json"))
        .unwrap();
    let account: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(account).unwrap()).unwrap();
    assert_eq!(account["account_url"], regr["uri"]);

    // nginx no longer needs /etc/letsencrypt.
    let moved = work.path().join("letsencrypt.moved");
    fs::rename(&le, &moved).unwrap();
    let t = Command::new(bin("nginx"))
        .arg("-t")
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&bed.nginx.conf)
        .output()
        .unwrap();
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    fs::rename(&moved, &le).unwrap();

    // A second run changes nothing.
    fs::remove_file(le.join("renewal/broken.conf")).unwrap();
    fs::remove_file(le.join("renewal/mismatch.conf")).unwrap();
    let again = bed.cmd("import-certbot", &["--certbot-dir", le.to_str().unwrap()]);
    assert_exit(&again, 0);
    assert_eq!(by_name(&json(&again), NAME)["status"], "up-to-date");
    assert_eq!(fs::read_to_string(&bed.nginx.conf).unwrap(), imported);

    // Renewal goes on with certbot's account, replacing the imported certificate (ARI).
    let renewed = bed.cmd("renew", &["--force", NAME]);
    assert_exit(&renewed, 0);
    let r = by_name(&json(&renewed), NAME);
    assert_eq!(r["status"], "renewed", "{r}");
    crate::util::assert_replaces(&r, &renewed.stderr, &certbot_leaf);
    assert_ne!(bed.served(NAME), certbot_leaf);

    // Changed our mind: `remove` gives the block back to certbot, byte for byte.
    let out = bed.cmd("remove", &[NAME]);
    assert_exit(&out, 0);
    assert_eq!(fs::read_to_string(&bed.nginx.conf).unwrap(), with_tls);
    assert_eq!(bed.served(NAME), certbot_leaf);
}

/// Every file under `dir` with its bytes (links read through), for "left untouched".
fn tree(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = crate::util::walk(dir)
        .into_iter()
        .map(|p| {
            let data = fs::read(&p).unwrap_or_default();
            (p, data)
        })
        .collect();
    files.sort();
    files
}

/// RS256 (certbot's account keys) byte for byte as OpenSSL signs it, through python's
/// `cryptography` (which certbot depends on): RSASSA-PKCS1-v1_5 is deterministic, so the two
/// signatures over the same JWS signing input must be equal.
#[test]
fn rs256_signatures_are_openssl_s() {
    use acme_nginx::acme::{b64, KeyPair, KeyType};
    let key = KeyPair::generate(KeyType::Rsa2048);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("key.pem"), key.to_pem()).unwrap();
    let input = format!(
        "{}.{}",
        b64(br#"{"alg":"RS256","nonce":"abc","url":"https://ca.example/new-order"}"#),
        b64(br#"{"identifiers":[{"type":"dns","value":"example.org"}]}"#)
    );
    fs::write(dir.path().join("input"), &input).unwrap();
    let script = "import sys\n\
        from cryptography.hazmat.primitives import hashes, serialization\n\
        from cryptography.hazmat.primitives.asymmetric import padding\n\
        k = serialization.load_pem_private_key(open(sys.argv[1], 'rb').read(), None)\n\
        sys.stdout.buffer.write(k.sign(open(sys.argv[2], 'rb').read(), padding.PKCS1v15(), hashes.SHA256()))\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(dir.path().join("key.pem"))
        .arg(dir.path().join("input"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(key.sign_raw(input.as_bytes()), out.stdout);
}

/// `enroll` on a block `certbot --nginx` set up: besides the certificate lines, certbot's
/// shared TLS settings and DH parameters are copied into the state directory (inside the same
/// change; 0644 only when the source is world-readable) and the block points at the copies,
/// so purging certbot leaves nginx working.
#[test]
fn enroll_on_a_certbot_block_leaves_nothing_that_needs_certbot() {
    let pre = tempfile::tempdir().unwrap();
    let le = pre.path().join("letsencrypt");
    fs::create_dir_all(le.join("renewal")).unwrap();
    fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/realworld/certbot-proxy/options-ssl-nginx.conf"
        ),
        le.join("options-ssl-nginx.conf"),
    )
    .unwrap();
    fs::copy(
        "/usr/lib/python3/dist-packages/certbot/ssl-dhparams.pem",
        le.join("ssl-dhparams.pem"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(
        le.join("ssl-dhparams.pem"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let (_, cert, key) = crate::util::make_tls_cert(pre.path(), &[NAME]);
    let bed = Bed::start(&format!(
        "server {{\n    listen 127.0.0.1:{{port}};\n    server_name {NAME};\n    \
         listen 127.0.0.1:{{https}} ssl; # managed by Certbot\n    \
         ssl_certificate {c}; # managed by Certbot\n    \
         ssl_certificate_key {k}; # managed by Certbot\n    \
         include {le}/options-ssl-nginx.conf; # managed by Certbot\n    \
         ssl_dhparam {le}/ssl-dhparams.pem; # managed by Certbot\n    \
         location / {{ return 200; }}\n}}\n",
        c = cert.display(),
        k = key.display(),
        le = le.display()
    ));
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 0);
    assert_eq!(by_name(&json(&out), NAME)["status"], "issued");
    let conf = fs::read_to_string(&bed.nginx.conf).unwrap();
    assert!(!conf.contains(&le.display().to_string()), "{conf}");
    let copies = bed.state.path().join("certbot");
    let mode = |f: &str| fs::metadata(copies.join(f)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("options-ssl-nginx.conf"), 0o644);
    assert_eq!(
        mode("ssl-dhparams.pem"),
        0o600,
        "a secret-looking source stays private"
    );
    // certbot purged: nginx still accepts its configuration and serves ours.
    fs::remove_dir_all(&le).unwrap();
    assert!(bed.nginx.config_passes());
    assert_eq!(
        crate::util::leaf(&bed.live(NAME).join("fullchain.pem")),
        bed.served(NAME)
    );
}

/// certbot's shared file replaced by a symbolic link to a root-only file: it is not copied
/// (a copy would publish what only root could read), the block keeps its reference, and the
/// run says why; the certificate is installed all the same.
#[test]
fn a_linked_certbot_file_is_never_copied() {
    use std::os::unix::fs::PermissionsExt as _;
    let pre = tempfile::tempdir().unwrap();
    let le = pre.path().join("letsencrypt");
    fs::create_dir_all(le.join("renewal")).unwrap();
    let private = pre.path().join("root-only.conf");
    fs::write(&private, "ssl_session_timeout 1d;\n").unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&private, le.join("options-ssl-nginx.conf")).unwrap();
    let (_, cert, key) = crate::util::make_tls_cert(pre.path(), &[NAME]);
    let bed = Bed::start(&format!(
        "server {{\n    listen 127.0.0.1:{{port}};\n    server_name {NAME};\n    \
         listen 127.0.0.1:{{https}} ssl; # managed by Certbot\n    \
         ssl_certificate {c}; # managed by Certbot\n    \
         ssl_certificate_key {k}; # managed by Certbot\n    \
         include {le}/options-ssl-nginx.conf; # managed by Certbot\n    \
         location / {{ return 200; }}\n}}\n",
        c = cert.display(),
        k = key.display(),
        le = le.display()
    ));
    let out = bed
        .command("enroll", &[])
        .env("ACME_NGINX_LOG", "acme_nginx=warn")
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert_eq!(by_name(&json(&out), NAME)["status"], "issued");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("options-ssl-nginx.conf (certbot's) is not copied"),
        "{stderr}"
    );
    assert!(!bed
        .state
        .path()
        .join("certbot/options-ssl-nginx.conf")
        .exists());
    let conf = fs::read_to_string(&bed.nginx.conf).unwrap();
    assert!(conf.contains(&format!("include {}/options-ssl-nginx.conf", le.display())));
}
