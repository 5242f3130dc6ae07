//! `kv::connect` against every live server: each scheme connects and runs a smoke sequence
//! of the contract; malformed URLs, unknown schemes and wrong passwords give typed errors.

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kv::{Condition, Error, LockOptions, ReadOptions, Store, Transaction, WriteOptions};

/// put, get, exists, list, CAS, a watch, a transaction, a lock, delete_tree, close.
async fn smoke(store: Arc<dyn Store>, backend: &str) {
    assert_eq!(store.capabilities().backend, backend);
    let dir = common::unique("smoke");
    let key = format!("{dir}/a");
    let opts = WriteOptions::default;
    let read = ReadOptions::default;
    store.put(&key, "1".into(), opts()).await.unwrap();
    let pair = store
        .get(&key, read())
        .await
        .unwrap()
        .expect("just written");
    assert_eq!(pair.value, "1");
    assert!(store.exists(&key, read()).await.unwrap());
    store
        .put(&format!("{dir}/b/c"), "2".into(), opts())
        .await
        .unwrap();
    let keys: Vec<_> = store
        .list(&dir, read())
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(keys, [key.clone(), format!("{dir}/b/c")]);

    let swapped = store
        .atomic_put(&key, "3".into(), Some(&pair), opts())
        .await
        .unwrap();
    assert!(swapped.last_index > pair.last_index);
    assert!(matches!(
        store
            .atomic_put(&key, "4".into(), Some(&pair), opts())
            .await,
        Err(Error::KeyModified { .. })
    ));

    let mut watch = store.watch(&key, read()).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the watch's first item")
        .expect("an item")
        .unwrap();
    assert_eq!(first.map(|p| p.value), Some("3".into()));
    drop(watch);

    let txn = Transaction::new()
        .when(Condition::unchanged(&swapped))
        .when(Condition::absent(format!("{dir}/t")))
        .put(format!("{dir}/t"), "t", opts())
        .delete(format!("{dir}/b/c"));
    if store.capabilities().transactions {
        let puts = store.transaction(txn).await.unwrap();
        assert_eq!(puts.len(), 1);
        assert!(!store.exists(&format!("{dir}/b/c"), read()).await.unwrap());
    } else {
        assert!(matches!(
            store.transaction(txn).await,
            Err(Error::NotSupported { .. })
        ));
    }

    let mut lock = store
        .new_lock(&format!("{dir}/lock"), LockOptions::default().value("me"))
        .await
        .unwrap();
    let lease = lock.lock().await.unwrap();
    assert!(lease.is_held());
    lock.unlock().await.unwrap();

    store.delete_tree(&dir).await.unwrap();
    assert!(store.list(&dir, read()).await.unwrap().is_empty());
    assert!(!store.delete(&key).await.unwrap());
    store.close().await.unwrap();
    assert!(matches!(store.get(&key, read()).await, Err(Error::Closed)));
}

async fn smoke_backend(backend: &str) {
    let url = common::url(backend, &common::unique("kvconnect"));
    let store = kv::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("kv::connect({url}): {e}"));
    smoke(store, backend).await;
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_smoke() {
    smoke_backend("etcd").await;
}

#[cfg(feature = "consul")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_smoke() {
    smoke_backend("consul").await;
}

#[cfg(feature = "zookeeper")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_smoke() {
    smoke_backend("zookeeper").await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_smoke() {
    smoke_backend("redis").await;
}

#[cfg(feature = "dynamodb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_smoke() {
    smoke_backend("dynamodb").await;
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_smoke() {
    smoke_backend("nats").await;
}

#[cfg(feature = "bolt")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bolt_smoke() {
    smoke_backend("bolt").await;
}

/// Every compiled-in scheme is listed, and each backend of this build has its test above.
#[test]
fn schemes_match_the_features() {
    for backend in common::BACKENDS {
        let listed = kv::all_schemes()
            .iter()
            .filter(|s| s.backend == backend)
            .all(|s| s.enabled == kv::schemes().contains(&s.scheme));
        assert!(listed, "{backend}");
    }
}

fn config_error(result: kv::Result<Arc<dyn Store>>) -> String {
    match result {
        Err(Error::Config(message)) => message,
        Err(other) => panic!("expected Error::Config, got {other:?}"),
        Ok(store) => panic!("expected Error::Config, connected to {store:?}"),
    }
}

#[tokio::test]
async fn malformed_urls_are_config_errors() {
    for url in [
        "",
        "127.0.0.1:2379x",
        "no scheme",
        "/var/lib/kv",
        "://host",
        "9p://x",
    ] {
        let message = config_error(kv::connect(url).await);
        assert!(
            message.contains("malformed") || message.contains("unknown"),
            "{url}: {message}"
        );
    }
    // A known scheme with a URL its backend rejects: the backend's own Config error.
    #[cfg(feature = "etcd")]
    config_error(kv::connect("etcd://127.0.0.1:2379?request_timeout=soon").await);
    #[cfg(feature = "redis")]
    config_error(kv::connect("redis://127.0.0.1:6379?no_such_option=1").await);
    #[cfg(feature = "bolt")]
    config_error(kv::connect("bolt://somehost/x").await);
}

#[tokio::test]
async fn unknown_and_ambiguous_schemes_are_config_errors() {
    let message = config_error(kv::connect("mongodb://127.0.0.1:27017").await);
    assert!(
        message.contains("unknown") && message.contains("etcd"),
        "{message}"
    );
    let message = config_error(kv::connect("http://127.0.0.1:2379").await);
    assert!(message.contains("ambiguous"), "{message}");
}

#[cfg(feature = "bolt")]
#[tokio::test]
async fn connect_from_env_defaults_to_the_embedded_store() {
    assert_eq!(kv::DEFAULT_STORE_URL, "bolt:.kv");
    // KV_STORE is read at call time; tests run in parallel, so only the function that picks
    // the URL is checked against the environment here (the kv-cli tests run the default).
    if std::env::var_os(kv::STORE_ENV).is_none() {
        assert_eq!(kv::url_from_env(), kv::DEFAULT_STORE_URL);
    }
}

/// A wrong password is `PermissionDenied`, through `kv::connect` as through the backend: a
/// private Redis (the binary `scripts/servers` installs) with `requirepass` set.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_permission_denied() {
    use kv_test_support::server::{PrivateServer, ServerKind};
    use std::io::{BufRead, BufReader, Write};

    let server = PrivateServer::start(ServerKind::Redis);
    let address = server.address();
    let host_port = address.trim_start_matches("redis://").to_owned();
    // Wait until it answers, then set a password with a plain RESP command.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let reply = loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut stream = std::net::TcpStream::connect(&host_port)?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(b"CONFIG SET requirepass s3cret\r\n")?;
            let mut line = String::new();
            BufReader::new(stream).read_line(&mut line)?;
            Ok(line)
        })();
        match attempt {
            Ok(line) if !line.starts_with("-LOADING") => break line,
            _ if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => panic!("private redis never answered: {other:?}\n{}", server.log()),
        }
    };
    assert!(reply.starts_with("+OK"), "{reply}");

    for url in [
        format!("redis://:wrong@{host_port}?connect_timeout_ms=3000"),
        format!("redis://default:wrong@{host_port}?connect_timeout_ms=3000"),
    ] {
        match kv::connect(&url).await {
            Err(Error::PermissionDenied { .. }) => {}
            other => panic!("{url}: expected PermissionDenied, got {other:?}"),
        }
    }
    let store = kv::connect(&format!("redis://:s3cret@{host_port}"))
        .await
        .unwrap();
    store
        .put("k", "v".into(), WriteOptions::default())
        .await
        .unwrap();
    store.close().await.unwrap();
}

/// A server that is not there is a transient error, not a hang or a panic.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_transient() {
    let port = kv_test_support::free_port();
    match kv::connect(&format!("etcd://127.0.0.1:{port}?connect_timeout=1s")).await {
        Err(e) if e.is_transient() => {}
        other => panic!("expected Unavailable/Timeout, got {other:?}"),
    }
}
