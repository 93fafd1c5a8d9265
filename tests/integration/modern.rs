//! On nginx mainline (1.31, built by the test bed from `../shared/nginx-src/`): newer syntax
//! (`http2 on`, `listen ... quic`) and coexistence with nginx's own ACME module.

use std::fs;

use crate::util::{assert_exit, by_name, json, leaf, testbed_dir, Bed};
use acme_nginx::nginx::edit::MARK;

/// A block with an HTTP/3 listener and no certificate yet: nginx -t fails, nothing is
/// ordered, and the advice names the quic listener; once that line is out, enroll gets the
/// certificate, and with it the quic listener is accepted again and served over TLS.
#[test]
fn a_quic_listener_without_a_certificate_gets_advice_that_names_it() {
    let bed = Bed::start_modern(
        "",
        "server {\n    listen 127.0.0.1:{port};\n    http2 on;\n    server_name h3.modern.test;\n    \
         location / { return 200; }\n}\n",
    );
    let conf = fs::read_to_string(&bed.nginx.conf).unwrap();
    let quic = format!("    listen 127.0.0.1:{} quic reuseport;\n", bed.https_port);
    let with_quic = conf.replace("    http2 on;\n", &format!("    http2 on;\n{quic}"));
    fs::write(&bed.nginx.conf, &with_quic).unwrap();
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`listen ... quic`")
            && stderr.contains(&format!("{}:", bed.nginx.conf.display()))
            && stderr.contains("Comment out the quic listen line"),
        "{stderr}"
    );
    assert_eq!(bed.pebble.log().matches("POST /order-plz").count(), 0);

    // As advised: the quic line out, enroll, the quic line back.
    fs::write(&bed.nginx.conf, &conf).unwrap();
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 0);
    assert_eq!(by_name(&json(&out), "h3.modern.test")["status"], "issued");
    let enrolled = fs::read_to_string(&bed.nginx.conf).unwrap();
    fs::write(
        &bed.nginx.conf,
        enrolled.replace("    http2 on;\n", &format!("    http2 on;\n{quic}")),
    )
    .unwrap();
    assert!(bed.nginx.config_passes());
    assert_eq!(
        leaf(&bed.live("h3.modern.test").join("fullchain.pem")),
        bed.served("h3.modern.test")
    );
}

/// nginx's ACME module manages one block (`acme_certificate`): acme-nginx leaves it alone,
/// saying so, and orders nothing for it; named with `--take-over`, its certificate is replaced
/// and the module's directive commented out (marked), so the module stops renewing a
/// certificate nobody serves.
#[test]
fn a_block_nginx_acme_manages_is_left_alone_unless_taken_over() {
    let module = testbed_dir().join("nginx-1.31/modules/ngx_http_acme_module.so");
    let bed = Bed::start_modern(
        &format!("load_module {};\n", module.display()),
        "resolver 127.0.0.1:1;\n\
         acme_issuer other { uri https://127.0.0.1:1/dir; accept_terms_of_service; state_path {dir}/acme-module; }\n\
         acme_shared_zone zone=ngx_acme_shared:1M;\n\
         server {\n    listen 127.0.0.1:{port};\n    listen 127.0.0.1:{https} ssl;\n    \
         server_name mod.modern.test;\n    acme_certificate other;\n    \
         ssl_certificate $acme_certificate;\n    ssl_certificate_key $acme_certificate_key;\n    \
         location / { return 200; }\n}\n",
    );
    let before = fs::read_to_string(&bed.nginx.conf).unwrap();
    let out = bed.cmd("enroll", &[]);
    assert_exit(&out, 0);
    let report = json(&out);
    let m = by_name(&report, "mod.modern.test");
    assert_eq!(m["status"], "skipped", "{report}");
    let reason = m["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("nginx's ACME module") && reason.contains("--take-over"),
        "{reason}"
    );
    assert_eq!(fs::read_to_string(&bed.nginx.conf).unwrap(), before);
    assert_eq!(bed.pebble.log().matches("POST /order-plz").count(), 0);

    let out = bed.cmd("enroll", &["mod.modern.test", "--take-over"]);
    assert_exit(&out, 0);
    assert_eq!(by_name(&json(&out), "mod.modern.test")["status"], "issued");
    let conf = fs::read_to_string(&bed.nginx.conf).unwrap();
    assert!(
        conf.contains(&format!("# acme_certificate other; {MARK}")),
        "{conf}"
    );
    assert!(bed.nginx.config_passes());
    assert_eq!(
        leaf(&bed.live("mod.modern.test").join("fullchain.pem")),
        bed.served("mod.modern.test")
    );
}
