//! A CA is untrusted input. These tests put a deliberately broken HTTP server on loopback in the
//! CA's place (endless bodies, garbage JSON, path tokens, bare 500s) and check that the client
//! fails with an error naming the URL, never a panic, never unbounded memory, never a file
//! written outside the webroot. (Correct behaviour against a real CA is tested against pebble.)

use std::sync::Arc;

use acme_nginx::acme::{
    self, create_csr, Account, ClientConfig, KeyPair, KeyType, NewAccountOptions, OrderOptions,
};
use acme_nginx::challenge::WebrootSolver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the hostile server answers for a path: status, extra headers, body. `None` body means
/// "send bytes forever".
type Route = (u16, Vec<(&'static str, String)>, Option<String>);

/// Serves `routes` (method, path, base URL, request body) on a loopback port; returns the
/// base URL.
async fn serve(routes: impl Fn(&str, &str, &str, &str) -> Route + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let routes = Arc::new(routes);
    let base2 = base.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let routes = routes.clone();
            let base = base2.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut n = 0;
                // Read headers and, if any, a body of Content-Length bytes.
                loop {
                    let Ok(k) = sock.read(&mut buf[n..]).await else {
                        return;
                    };
                    if k == 0 {
                        return;
                    }
                    n += k;
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if n >= end + 4 + len {
                            break;
                        }
                    }
                }
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let mut first = text.split_whitespace();
                let method = first.next().unwrap_or("").to_owned();
                let path = first.next().unwrap_or("").to_owned();
                let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
                let (status, headers, body) = routes(&method, &path, &base, body);
                let mut head = format!(
                    "HTTP/1.1 {status} X\r\nConnection: close\r\nReplay-Nonce: nonce{}\r\n",
                    rand_suffix()
                );
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                match body {
                    Some(b) => {
                        head.push_str(&format!(
                            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                            b.len()
                        ));
                        let _ = sock.write_all(head.as_bytes()).await;
                    }
                    None => {
                        head.push_str("Content-Type: application/json\r\n\r\n{\"a\":\"");
                        let _ = sock.write_all(head.as_bytes()).await;
                        let chunk = vec![b'x'; 64 * 1024];
                        // Endless, until the client hangs up.
                        while sock.write_all(&chunk).await.is_ok() {}
                    }
                }
            });
        }
    });
    base
}

/// A new account at the stand-in CA at `base`.
async fn account_at(base: &str) -> Account {
    let client = acme::Client::new(&format!("{base}/dir"), &ClientConfig::default())
        .await
        .unwrap();
    let (account, _) = Account::create(
        client,
        KeyPair::generate(KeyType::P256),
        &NewAccountOptions::default(),
    )
    .await
    .unwrap();
    account
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn directory(base: &str) -> String {
    format!(
        r#"{{"newNonce":"{base}/nonce","newAccount":"{base}/acct","newOrder":"{base}/order","revokeCert":"{base}/revoke","keyChange":"{base}/kc"}}"#
    )
}

#[tokio::test]
async fn endless_directory_is_cut_off() {
    let base = serve(|_, _, _, _| (200, vec![], None)).await;
    let err = acme::Client::new(&format!("{base}/dir"), &ClientConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(err, acme::Error::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("/dir"), "{err}");
}

#[tokio::test]
async fn garbage_json_and_bare_500_name_the_url() {
    let base = serve(|_, path, _, _| match path {
        "/dir" => (200, vec![], Some("{\"newNonce\": 12,".into())),
        _ => (500, vec![], Some("<html>oops</html>".into())),
    })
    .await;
    let err = acme::Client::new(&format!("{base}/dir"), &ClientConfig::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, acme::Error::Malformed { .. })
            && err.to_string().contains(&format!("{base}/dir")),
        "{err}"
    );
    let err = acme::Client::new(&format!("{base}/other"), &ClientConfig::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, acme::Error::Status { status: 500, .. }) && err.to_string().contains("oops"),
        "{err}"
    );
}

#[tokio::test]
async fn rate_limit_carries_retry_after_and_the_problem() {
    let base = serve(|method, path, base, _| match (method, path) {
        ("GET", "/dir") => (200, vec![], Some(directory(base))),
        ("HEAD", "/nonce") => (200, vec![], Some(String::new())),
        _ => (
            429,
            vec![("Retry-After", "3600".into())],
            Some(r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many new accounts"}"#.into()),
        ),
    })
    .await;
    let client = acme::Client::new(&format!("{base}/dir"), &ClientConfig::default())
        .await
        .unwrap();
    let err = Account::create(
        client,
        KeyPair::generate(KeyType::P256),
        &NewAccountOptions::default(),
    )
    .await
    .unwrap_err();
    match &err {
        acme::Error::RateLimited {
            retry_after,
            problem,
            ..
        } => {
            assert_eq!(retry_after.map(|d| d.as_secs()), Some(3600));
            assert_eq!(problem.detail.as_deref(), Some("too many new accounts"));
        }
        other => panic!("expected RateLimited, got {other}"),
    }
}

/// A 503 with a short Retry-After is waited out in place, as long as the settings allow; a
/// client with another CA to try (`max_inline_retry_wait` zero) gets the outage at once.
#[tokio::test]
async fn a_503_is_waited_out_in_place_unless_the_client_says_not_to() {
    let posts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = posts.clone();
    let base = serve(move |method, path, base, _| match (method, path) {
        ("GET", "/dir") => (200, vec![], Some(directory(base))),
        ("HEAD", "/nonce") => (
            200,
            vec![("Replay-Nonce", format!("n{}", rand_suffix()))],
            Some(String::new()),
        ),
        _ => {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (503, vec![("Retry-After", "1".into())], Some(String::new()))
        }
    })
    .await;
    let create = |config: ClientConfig| {
        let base = base.clone();
        async move {
            let client = acme::Client::new(&format!("{base}/dir"), &config)
                .await
                .unwrap();
            let started = std::time::Instant::now();
            let err = Account::create(
                client,
                KeyPair::generate(KeyType::P256),
                &NewAccountOptions::default(),
            )
            .await
            .unwrap_err();
            (err, started.elapsed())
        }
    };
    let (err, took) = create(ClientConfig {
        max_inline_retry_wait: Some(std::time::Duration::ZERO),
        ..ClientConfig::default()
    })
    .await;
    assert!(err.is_outage(), "{err}");
    assert_eq!(posts.swap(0, std::sync::atomic::Ordering::Relaxed), 1);
    assert!(took < std::time::Duration::from_secs(1), "{took:?}");
    let (err, took) = create(ClientConfig::default()).await;
    assert!(err.is_outage(), "{err}");
    // The first answer and one retry per second of Retry-After, up to the client's limit.
    assert_eq!(
        posts.load(std::sync::atomic::Ordering::Relaxed),
        1 + acme::MAX_RATE_RETRIES
    );
    assert!(
        took >= std::time::Duration::from_secs(u64::from(acme::MAX_RATE_RETRIES)),
        "{took:?}"
    );
}

#[tokio::test]
async fn path_token_never_reaches_the_disk() {
    let base = serve(|method, path, base, _| match (method, path) {
        ("GET", "/dir") => (200, vec![], Some(directory(base))),
        ("HEAD", "/nonce") => (200, vec![], Some(String::new())),
        ("POST", "/acct") => (201, vec![("Location", format!("{base}/acct/1"))], Some(r#"{"status":"valid"}"#.into())),
        ("POST", "/order") => (
            201,
            vec![("Location", format!("{base}/order/1"))],
            Some(format!(r#"{{"status":"pending","authorizations":["{base}/authz/1"],"finalize":"{base}/fin"}}"#)),
        ),
        ("POST", "/authz/1") => (
            200,
            vec![],
            Some(format!(
                r#"{{"status":"pending","identifier":{{"type":"dns","value":"a.test"}},"challenges":[{{"type":"http-01","url":"{base}/ch","status":"pending","token":"../../../tmp/escaped"}}]}}"#
            )),
        ),
        _ => (404, vec![], Some("{}".into())),
    })
    .await;
    let account = account_at(&base).await;
    let dir = tempfile::tempdir().unwrap();
    let webroot = dir.path().join("a/b/c/webroot");
    let names = vec!["a.test".to_owned()];
    let csr = create_csr(&KeyPair::generate(KeyType::P256), &names).unwrap();
    let err = account
        .sign(
            &names,
            &csr.der,
            &WebrootSolver::new(&webroot),
            &OrderOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not base64url"), "{err}");
    assert!(!webroot.exists(), "the solver was called");
    assert!(!dir.path().join("a/escaped").exists());
}

/// A CA that fails (500) on an order naming what it replaces, as pebble does while it has not
/// yet indexed a certificate it just issued: the order is tried once more, then placed
/// without `replaces`, and the renewal goes on.
#[tokio::test]
async fn an_order_the_ca_fails_on_with_replaces_is_placed_again_then_without() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let with = Arc::new(AtomicUsize::new(0));
    let without = Arc::new(AtomicUsize::new(0));
    let (w, wo) = (with.clone(), without.clone());
    let base = serve(move |method, path, base, body| match (method, path) {
        ("GET", "/dir") => (200, vec![], Some(directory(base))),
        ("HEAD", "/nonce") => (200, vec![], Some(String::new())),
        ("POST", "/acct") => (201, vec![("Location", format!("{base}/acct/1"))], Some(r#"{"status":"valid"}"#.into())),
        ("POST", "/order") => {
            let payload: serde_json::Value = serde_json::from_str(body)
                .ok()
                .and_then(|jws: serde_json::Value| {
                    acme::decode_b64(jws["payload"].as_str()?).ok()
                })
                .and_then(|p| serde_json::from_slice(&p).ok())
                .unwrap_or_default();
            if payload.get("replaces").is_some() {
                w.fetch_add(1, Ordering::SeqCst);
                (
                    500,
                    vec![],
                    Some(r#"{"type":"urn:ietf:params:acme:error:serverInternal","detail":"could not find order resulting in the given certificate serial number"}"#.into()),
                )
            } else {
                wo.fetch_add(1, Ordering::SeqCst);
                (
                    201,
                    vec![("Location", format!("{base}/order/1"))],
                    Some(format!(r#"{{"status":"pending","authorizations":[],"finalize":"{base}/fin"}}"#)),
                )
            }
        }
        _ => (404, vec![], Some("{}".into())),
    })
    .await;
    let account = account_at(&base).await;
    let opts = OrderOptions {
        replaces: Some("aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE".into()),
        ..OrderOptions::default()
    };
    let order = account
        .create_order(&["a.test".to_owned()], &opts)
        .await
        .unwrap();
    assert_eq!(order.url, format!("{base}/order/1"));
    assert_eq!(
        with.load(Ordering::SeqCst),
        1 + acme::REPLACES_RETRIES,
        "tried again with replaces"
    );
    assert_eq!(without.load(Ordering::SeqCst), 1, "then without");
}

/// An order URL read back from storage (a fleet's order record) that points off the CA's
/// origin is refused before anything is signed; the CA's own order URL is fetched.
#[tokio::test]
async fn an_order_url_off_the_cas_origin_is_never_sent_a_signed_request() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let posts = Arc::new(AtomicUsize::new(0));
    let elsewhere = Arc::new(AtomicUsize::new(0));
    let (p, e) = (posts.clone(), elsewhere.clone());
    // A second server on another port stands for the attacker's URL.
    let other = serve(move |_, _, _, _| {
        e.fetch_add(1, Ordering::SeqCst);
        (200, vec![], Some("{}".into()))
    })
    .await;
    let base = serve(move |method, path, base, _| match (method, path) {
        ("GET", "/dir") => (200, vec![], Some(directory(base))),
        ("HEAD", "/nonce") => (200, vec![], Some(String::new())),
        ("POST", "/acct") => (
            201,
            vec![("Location", format!("{base}/acct/1"))],
            Some(r#"{"status":"valid"}"#.into()),
        ),
        ("POST", "/order/7") => {
            p.fetch_add(1, Ordering::SeqCst);
            (
                200,
                vec![],
                Some(format!(
                    r#"{{"status":"pending","authorizations":[],"finalize":"{base}/fin"}}"#
                )),
            )
        }
        _ => (404, vec![], Some("{}".into())),
    })
    .await;
    let account = account_at(&base).await;
    for url in [
        format!("{other}/order/7"),
        format!("{}/order/7", base.replace("http://", "https://")),
        "order/7".to_owned(),
    ] {
        let err = account.order(&url).await.expect_err(&url);
        assert!(
            matches!(err, acme::Error::ForeignUrl { .. }) && err.to_string().contains(&url),
            "{url}: {err}"
        );
    }
    assert_eq!(elsewhere.load(Ordering::SeqCst), 0);
    let order = account.order(&format!("{base}/order/7")).await.unwrap();
    assert_eq!(order.url, format!("{base}/order/7"));
    assert_eq!(posts.load(Ordering::SeqCst), 1);
}
