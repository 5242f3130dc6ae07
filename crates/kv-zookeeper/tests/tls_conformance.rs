//! The shared conformance suite over ZooKeeper's TLS client port (`secureClientPort`, client
//! certificate required) with digest credentials, against the `zookeeper-tls` server of
//! `scripts/servers` named by `KV_TEST_ZOOKEEPER_TLS_URL`; and what a wrong identity gets there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_core::{Error, ReadOptions, Result, Store, WriteOptions};
use kv_zookeeper::{Config, ZookeeperStore};

/// The TLS server's URL with credentials and the CA / client certificate files.
fn tls_config() -> Config {
    let url = std::env::var("KV_TEST_ZOOKEEPER_TLS_URL").unwrap_or_else(|_| {
        panic!(
            "KV_TEST_ZOOKEEPER_TLS_URL not set: run the README test command, or `scripts/servers up zookeeper-tls && eval \"$(scripts/servers env)\"`"
        )
    });
    let config = Config::from_url(&url)
        .unwrap_or_else(|e| panic!("KV_TEST_ZOOKEEPER_TLS_URL is not a ZooKeeper URL: {e}"));
    // Without these the suite would prove nothing about TLS or digest auth.
    let tls = config
        .tls
        .as_ref()
        .expect("KV_TEST_ZOOKEEPER_TLS_URL is not a TLS URL");
    assert!(
        tls.ca_file.is_some() && tls.cert_file.is_some() && tls.key_file.is_some(),
        "KV_TEST_ZOOKEEPER_TLS_URL lacks ca_file, cert_file or key_file"
    );
    assert!(
        config.credentials.is_some(),
        "KV_TEST_ZOOKEEPER_TLS_URL has no user:password"
    );
    config
}

/// Connects a new handle (its own TLS connection and session) per call.
struct Factory {
    config: Config,
}

#[async_trait::async_trait]
impl kv_conformance::StoreFactory for Factory {
    async fn connect(&self) -> Result<Arc<dyn Store>> {
        // When the suite opens many TLS sessions at once, a connection to the one TLS server
        // is now and then refused ("no available hosts", kv_core::Error::Unavailable): seen in
        // 1 of 6 runs of this suite on 2026-11-27, cause not found. Opening a handle is
        // set-up here, not what the suite checks (a refused connection is tested in
        // zookeeper.rs, dead_endpoints_give_typed_errors_in_time), so it is tried 3 times.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match ZookeeperStore::connect(self.config.clone()).await {
                Ok(store) => return Ok(Arc::new(store)),
                Err(kv_core::Error::Unavailable { .. }) if attempt < 3 => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

kv_conformance::conformance_tests!(Factory {
    config: {
        let mut config = tls_config();
        // The suite opens dozens of TLS sessions at once against one JVM on a loaded 2-core
        // machine (the test command compiles and runs other suites meanwhile): a handshake
        // has been seen to take over the default 5 s there. The connect timeout itself is
        // tested below with 3 s.
        config.connect_timeout = std::time::Duration::from_secs(20);
        config
    }
});

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("zk-tls-{name}-{nanos:x}")
}

/// The same URL with the other client certificate `scripts/servers` made next to the first
/// (`other-client.pem`, `other-client-key.pem`: another x509 identity).
fn with_other_certificate(mut config: Config) -> Config {
    let tls = config.tls.as_mut().expect("a TLS config");
    let dir = tls
        .cert_file
        .as_ref()
        .and_then(|f| f.parent())
        .expect("cert_file has a directory")
        .to_path_buf();
    let (cert, key) = (
        dir.join("other-client.pem"),
        dir.join("other-client-key.pem"),
    );
    assert!(
        cert.is_file() && key.is_file(),
        "{} missing: `scripts/servers up zookeeper-tls` makes it",
        cert.display()
    );
    tls.cert_file = Some(cert);
    tls.key_file = Some(key);
    config
}

/// Over TLS a client has two identities: its digest `user:password` and its certificate
/// (`x509:<subject>`, added by the server after the handshake), and `CREATOR_ALL_ACL` grants the
/// node to both. A wrong password connects (digest auth never rejects a password, it names
/// who you are), and with another certificate it may neither read nor write the owner's nodes.
/// With the owner's certificate, though, the wrong password is let in: the certificate alone
/// is enough, and this test pins that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_digest_password_is_permission_denied() {
    let mut config = tls_config();
    config.namespace = unique("auth");
    let owner = ZookeeperStore::connect(config.clone()).await.unwrap();
    owner
        .put("private", "mine".into(), WriteOptions::default())
        .await
        .unwrap();

    let mut wrong = config.clone();
    if let Some(credentials) = wrong.credentials.as_mut() {
        credentials.password.push_str("-wrong");
    }
    let stranger = ZookeeperStore::connect(with_other_certificate(wrong.clone()))
        .await
        .unwrap();
    let denied = stranger
        .get("private", ReadOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(denied, Error::PermissionDenied { .. }),
        "{denied:?}"
    );
    let denied = stranger
        .put("private", "theirs".into(), WriteOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(denied, Error::PermissionDenied { .. }),
        "{denied:?}"
    );

    // the owner's certificate with the wrong password: the x509 identity is a creator too
    let same_certificate = ZookeeperStore::connect(wrong).await.unwrap();
    let pair = same_certificate
        .get("private", ReadOptions::default())
        .await
        .unwrap()
        .expect("the certificate's identity reads the key");
    assert_eq!(pair.value, bytes::Bytes::from("mine"));

    let pair = owner
        .get("private", ReadOptions::default())
        .await
        .unwrap()
        .expect("the owner still reads its key");
    assert_eq!(pair.value, bytes::Bytes::from("mine"));
    owner.delete_tree("").await.unwrap();
    owner.close().await.unwrap();
    stranger.close().await.unwrap();
    same_certificate.close().await.unwrap();
}

/// The server requires a client certificate (`ssl.clientAuth=need`): without one the handshake
/// fails, and connect reports it as the crate documents (Unavailable), within its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_client_certificate_is_refused() {
    let mut config = tls_config();
    config.connect_timeout = Duration::from_secs(3);
    if let Some(tls) = config.tls.as_mut() {
        tls.cert_file = None;
        tls.key_file = None;
    }
    let started = Instant::now();
    let refused = ZookeeperStore::connect(config).await.err();
    assert!(
        matches!(refused, Some(Error::Unavailable { .. })),
        "{refused:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}
