//! ACL tokens and TLS against private Consul dev agents configured for them (the shared test
//! agent runs without either).

use std::time::{Duration, Instant};

use futures::StreamExt;
use kv_consul::{Config, ConsulStore};
use kv_core::{Condition, Error, LockOptions, ReadOptions, Store, Transaction, WriteOptions};
use serde_json::{Value as Json, json};

mod common;
use common::{Agent, free_port, make_certs, temp_dir};

const ROOT_TOKEN: &str = "6a1253d2-1785-4a7d-8a13-cbfa3b02ac4a";

fn denied(result: Result<impl std::fmt::Debug, Error>) {
    match result {
        Err(Error::PermissionDenied { .. }) => {}
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
}

/// An admin request with the management token.
async fn admin(method: reqwest::Method, url: String, body: Option<Json>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .request(method, url)
        .header("X-Consul-Token", ROOT_TOKEN);
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_tokens_are_used_and_denials_are_typed() {
    let port = free_port();
    let acl = format!(
        r#"acl {{
  enabled = true
  default_policy = "deny"
  enable_token_persistence = false
  tokens {{
    initial_management = "{ROOT_TOKEN}"
    agent = "{ROOT_TOKEN}"
  }}
}}"#
    );
    let agent = Agent::start(temp_dir("acl"), port, &acl).await;
    let base = format!("http://127.0.0.1:{port}");
    // The management token works once the ACL system has bootstrapped.
    let limit = Instant::now() + Duration::from_secs(30);
    while !admin(
        reqwest::Method::PUT,
        format!("{base}/v1/kv/ready"),
        Some(json!(1)),
    )
    .await
    .status()
    .is_success()
    {
        assert!(
            Instant::now() < limit,
            "ACLs never became ready: {}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rules =
        "key_prefix \"app/\" { policy = \"write\" }\nsession_prefix \"\" { policy = \"write\" }";
    let policy = admin(
        reqwest::Method::PUT,
        format!("{base}/v1/acl/policy"),
        Some(json!({ "Name": "app", "Rules": rules })),
    )
    .await;
    assert!(
        policy.status().is_success(),
        "{}",
        policy.text().await.unwrap()
    );
    let token: Json = admin(
        reqwest::Method::PUT,
        format!("{base}/v1/acl/token"),
        Some(json!({ "Policies": [{ "Name": "app" }] })),
    )
    .await
    .json()
    .await
    .unwrap();
    let secret = token["SecretID"].as_str().unwrap().to_owned();
    let accessor = token["AccessorID"].as_str().unwrap().to_owned();

    // The app token can do everything below app/, TTL keys and locks included. It may not
    // read the agent's configuration: session_ttl_min falls back to Consul's default.
    let app = ConsulStore::connect_url(&format!(
        "consul://127.0.0.1:{port}/app?token={secret}&wait=2s"
    ))
    .await
    .unwrap();
    assert_eq!(app.session_ttl_min(), Duration::from_secs(10));
    app.put("k", "v".into(), WriteOptions::default())
        .await
        .unwrap();
    app.put(
        "t",
        "v".into(),
        WriteOptions::with_ttl(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    assert_eq!(app.list("", ReadOptions::default()).await.unwrap().len(), 2);
    let mut lock = app
        .new_lock("l", LockOptions::default().ttl(Duration::from_secs(2)))
        .await
        .unwrap();
    lock.lock().await.unwrap();
    lock.unlock().await.unwrap();

    // Outside its prefix, and with a token Consul does not know: PermissionDenied.
    let outside =
        ConsulStore::connect_url(&format!("consul://127.0.0.1:{port}/other?token={secret}"))
            .await
            .unwrap();
    denied(outside.put("k", "v".into(), WriteOptions::default()).await);
    denied(outside.get("k", ReadOptions::default()).await);
    denied(outside.watch("k", ReadOptions::default()).await.map(|_| ()));
    // Transactions: allowed below app/ (TTL sessions included), PermissionDenied outside it,
    // for reads (a condition on a key the token may not read is no verdict) and writes.
    let pairs = app
        .transaction(
            Transaction::new()
                .when(Condition::exists("k"))
                .put("k", "v2", WriteOptions::default())
                .put("tt", "v", WriteOptions::with_ttl(Duration::from_secs(5))),
        )
        .await
        .unwrap();
    assert_eq!(pairs.len(), 2);
    app.delete("tt").await.unwrap();
    app.put("k", "v".into(), WriteOptions::default())
        .await
        .unwrap();
    denied(
        outside
            .transaction(Transaction::new().when(Condition::absent("k")))
            .await,
    );
    denied(
        outside
            .transaction(Transaction::new().put("k", "v", WriteOptions::default()))
            .await,
    );
    denied(outside.transaction(Transaction::new().delete("k")).await);
    let stranger = ConsulStore::connect_url(&format!(
        "consul://127.0.0.1:{port}/app?token=00000000-0000-0000-0000-000000000000"
    ))
    .await
    .unwrap();
    denied(stranger.get("k", ReadOptions::default()).await);
    denied(stranger.put("k", "v".into(), WriteOptions::default()).await);
    denied(
        stranger
            .transaction(Transaction::new().when(Condition::exists("k")))
            .await,
    );

    // A watch whose token is revoked ends with PermissionDenied (not retried forever).
    let mut watch = app.watch("k", ReadOptions::default()).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().unwrap().value, "v");
    let deleted = admin(
        reqwest::Method::DELETE,
        format!("{base}/v1/acl/token/{accessor}"),
        None,
    )
    .await;
    assert!(deleted.status().is_success());
    let last = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match watch.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the watch noticed the revoked token");
    assert!(
        matches!(last, Some(Err(Error::PermissionDenied { .. }))),
        "{last:?}"
    );
    assert!(watch.next().await.is_none(), "the error is the last item");
    for store in [&app, &outside, &stranger] {
        Store::close(store).await.unwrap();
        assert_eq!(store.background_tasks(), 0);
    }
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_client_certificates() {
    let dir = temp_dir("tls");
    make_certs(&dir);
    let port = free_port();
    let d = dir.display();
    let tls = format!(
        r#"tls {{
  https {{
    ca_file = "{d}/ca.crt"
    cert_file = "{d}/server.crt"
    key_file = "{d}/server.key"
    verify_incoming = true
  }}
}}"#
    );
    let mut agent = Agent::spawn(dir.clone(), port, true, &tls);
    let endpoint = format!("https://127.0.0.1:{port}");
    let good = Config::builder()
        .endpoint(endpoint.clone())
        .ca_file(dir.join("ca.crt"))
        .client_cert(dir.join("client.crt"), dir.join("client.key"))
        .build()
        .unwrap();
    let limit = Instant::now() + Duration::from_secs(30);
    let store = loop {
        match ConsulStore::connect(good.clone()).await {
            Ok(store) => break store,
            Err(error) => {
                assert!(!agent.exited(), "the TLS agent exited: {}", agent.log());
                assert!(Instant::now() < limit, "{error}: {}", agent.log());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(store.session_ttl_min(), Duration::from_secs(1));
    store
        .put("k", "over tls".into(), WriteOptions::default())
        .await
        .unwrap();
    let mut watch = store.watch("k", ReadOptions::default()).await.unwrap();
    assert_eq!(
        watch.next().await.unwrap().unwrap().unwrap().value,
        "over tls"
    );
    let mut lock = store
        .new_lock("l", LockOptions::default().ttl(Duration::from_secs(2)))
        .await
        .unwrap();
    lock.lock().await.unwrap();
    lock.unlock().await.unwrap();

    // The same through a URL.
    let url = format!(
        "consul+https://127.0.0.1:{port}?ca_file={d}/ca.crt&cert_file={d}/client.crt&key_file={d}/client.key"
    );
    let by_url = ConsulStore::connect_url(&url).await.unwrap();
    assert_eq!(
        by_url
            .get("k", ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
            .value,
        "over tls"
    );

    // Without a client certificate the server refuses the handshake; without the CA the
    // client refuses the server: typed errors, quickly.
    let no_client_cert = Config::builder()
        .endpoint(endpoint.clone())
        .ca_file(dir.join("ca.crt"))
        .build()
        .unwrap();
    let started = Instant::now();
    let error = ConsulStore::connect(no_client_cert).await.unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    let untrusted = Config::builder()
        .endpoint(endpoint.clone())
        .client_cert(dir.join("client.crt"), dir.join("client.key"))
        .build()
        .unwrap();
    let error = ConsulStore::connect(untrusted).await.unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Plain HTTP against the HTTPS port does not hang either.
    let plain = Config::builder()
        .endpoint(format!("http://127.0.0.1:{port}"))
        .request_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert!(ConsulStore::connect(plain).await.is_err());
    // Unreadable files are configuration errors.
    let missing = Config::builder()
        .endpoint(endpoint)
        .ca_file(dir.join("nope.crt"))
        .build()
        .unwrap();
    assert!(matches!(
        ConsulStore::connect(missing).await,
        Err(Error::Config(_))
    ));

    drop(watch);
    Store::close(&store).await.unwrap();
    Store::close(&by_url).await.unwrap();
    assert_eq!(store.background_tasks(), 0);
    drop(agent);
}
