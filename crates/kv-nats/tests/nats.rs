//! NATS-specific tests: against the live server named by `KV_TEST_NATS_URL`, and against
//! private `nats-server` processes (the binary `scripts/servers` builds) that a test kills,
//! restarts or starts with credentials.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kv_core::{Error, LockOptions, ReadOptions, Store, WriteOptions};
use kv_nats::{Config, NatsStore};
use kv_test_support::server::{PrivateServer, ServerKind, nats_binary};

fn url() -> String {
    kv_test_support::env("KV_TEST_NATS_URL")
}

async fn store() -> NatsStore {
    NatsStore::connect(Config::from_url(&url()).unwrap())
        .await
        .unwrap()
}

fn unique(name: &str) -> String {
    format!("nats-{name}-{:016x}", rand::random::<u64>())
}

/// Connects to a private server, retrying while it starts.
async fn connect_when_up(url: &str) -> NatsStore {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match NatsStore::connect(Config::from_url(url).unwrap()).await {
            Ok(store) => return store,
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("private nats-server at {url} not up: {error}"),
        }
    }
}

/// How late the server removes a key after its TTL (printed; within the declared precision).
#[tokio::test]
async fn ttl_expiry_lateness_is_within_the_declared_precision() {
    let s = store().await;
    let precision = s.capabilities().ttl_precision;
    let mut worst = Duration::ZERO;
    for i in 0..3 {
        let key = format!("{}/k{i}", unique("ttl"));
        let started = Instant::now();
        s.put(
            &key,
            "v".into(),
            WriteOptions::with_ttl(Duration::from_secs(1)),
        )
        .await
        .unwrap();
        while s.get(&key, ReadOptions::default()).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let late = started.elapsed().saturating_sub(Duration::from_secs(1));
        println!("ttl 1 s: gone {late:?} late");
        worst = worst.max(late);
    }
    assert!(
        worst <= precision,
        "{worst:?} late, precision {precision:?}"
    );
}

/// A bucket created with `history=5` keeps the last five revisions of a key, a deletion
/// included, and `last_index` is the stream sequence of the newest.
#[tokio::test]
async fn bucket_history_keeps_revisions() {
    let bucket = format!("hist{:08x}", rand::random::<u32>());
    let s = NatsStore::connect(Config::from_url(&format!("{}/{bucket}?history=5", url())).unwrap())
        .await
        .unwrap();
    assert_eq!(s.stream().cached_info().config.max_messages_per_subject, 5);
    let key = "cfg/port";
    for i in 0..7 {
        s.put(key, format!("v{i}").into(), WriteOptions::default())
            .await
            .unwrap();
    }
    assert!(s.delete(key).await.unwrap());
    let history = s.history(key).await.unwrap();
    assert_eq!(history.len(), 5, "{history:?}");
    let values: Vec<_> = history
        .iter()
        .map(|(_, p)| p.as_ref().map(|p| p.value.clone()))
        .collect();
    assert_eq!(
        values,
        [
            Some(Bytes::from("v3")),
            Some("v4".into()),
            Some("v5".into()),
            Some("v6".into()),
            None
        ]
    );
    assert!(history.windows(2).all(|w| w[0].0 < w[1].0));
    // Re-created after the delete: above the delete marker's revision.
    let again = s
        .atomic_put(key, "new".into(), None, WriteOptions::default())
        .await
        .unwrap();
    assert!(again.last_index > history[4].0);
    async_nats::jetstream::new(s.client().clone())
        .delete_stream(format!("KV_{bucket}"))
        .await
        .ok();
    s.close().await.unwrap();
}

/// The subject layout: other NATS tools see one subject per key, tokens per segment.
#[tokio::test]
async fn keys_map_to_readable_subjects() {
    let s = NatsStore::connect(Config::from_url(&format!("{}?namespace=app", url())).unwrap())
        .await
        .unwrap();
    assert_eq!(
        s.subject_of("a.b/c d/*/>/x_y").unwrap(),
        "$KV.kv.app.a_2Eb.c_20d._2A._3E.x_5Fy"
    );
    assert!(matches!(
        s.subject_of(&"é".repeat(600)),
        Err(Error::InvalidKey { .. })
    ));
    s.close().await.unwrap();
}

/// A reader that does not read while hundreds of writes happen sees them coalesced and ends on
/// the final state; the server-side consumer does not stall the writers.
#[tokio::test]
async fn slow_consumer_coalesces_and_catches_up() {
    let s = store().await;
    let dir = unique("slow");
    let mut tree = s.watch_tree(&dir, ReadOptions::default()).await.unwrap();
    let mut one = s
        .watch(&format!("{dir}/k0"), ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(tree.next().await.unwrap().unwrap(), vec![]);
    assert_eq!(one.next().await.unwrap().unwrap(), None);
    let started = Instant::now();
    for round in 0..20 {
        let s = &s;
        let dir = &dir;
        futures::future::try_join_all((0..25).map(|k| async move {
            s.put(
                &format!("{dir}/k{k}"),
                format!("r{round}").into(),
                WriteOptions::default(),
            )
            .await
        }))
        .await
        .unwrap();
    }
    println!("500 writes in {:?} while nobody read", started.elapsed());
    let deadline = Duration::from_secs(10);
    let last = tokio::time::timeout(deadline, async {
        loop {
            let snapshot = tree.next().await.unwrap().unwrap();
            if snapshot.len() == 25 && snapshot.iter().all(|p| p.value == "r19") {
                return snapshot;
            }
        }
    })
    .await
    .expect("the tree watch reaches the final state");
    assert!(last.windows(2).all(|w| w[0].key < w[1].key));
    let final_one = tokio::time::timeout(deadline, async {
        loop {
            if let Some(pair) = one.next().await.unwrap().unwrap()
                && pair.value == "r19"
            {
                return pair;
            }
        }
    })
    .await
    .expect("the key watch reaches the final state");
    assert_eq!(
        final_one,
        s.get(&format!("{dir}/k0"), ReadOptions::default())
            .await
            .unwrap()
            .unwrap()
    );
    s.delete_tree(&dir).await.unwrap();
    s.close().await.unwrap();
}

/// A server killed (SIGKILL) and restarted with its data: keys survive, revisions keep
/// rising (file storage), a watch resumes and reports the writes after the restart, and the
/// next acquisition of a lock gets a higher fencing token.
#[tokio::test]
async fn restarted_server_keeps_keys_and_rising_revisions() {
    let mut server = PrivateServer::start(ServerKind::Nats);
    let url = server.address();
    let s = connect_when_up(&url).await;
    let p = unique("restart");
    let key = format!("{p}/k");
    s.put(&key, "before".into(), WriteOptions::default())
        .await
        .unwrap();
    let before = s.get(&key, ReadOptions::default()).await.unwrap().unwrap();
    let mut lock = s
        .new_lock(
            &format!("{p}/lock"),
            LockOptions::default().ttl(Duration::from_secs(3)),
        )
        .await
        .unwrap();
    let lease = lock.lock().await.unwrap();
    lock.unlock().await.unwrap();
    let mut watch = s.watch(&key, ReadOptions::default()).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap(), Some(before.clone()));

    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.start_again(true);

    // The client reconnects on its own; calls fail (typed) until it has.
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        match s.put(&key, "after".into(), WriteOptions::default()).await {
            Ok(()) => break s.get(&key, ReadOptions::default()).await.unwrap().unwrap(),
            Err(error) if Instant::now() < deadline => {
                assert!(
                    matches!(
                        error,
                        Error::Unavailable { .. } | Error::Timeout { .. } | Error::Backend { .. }
                    ),
                    "{error:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("no write after the restart: {error}\n{}", server.log()),
        }
    };
    assert!(
        after.last_index > before.last_index,
        "revisions keep rising"
    );
    let seen = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Some(pair) = watch.next().await.unwrap().unwrap()
                && pair.value == "after"
            {
                return pair;
            }
        }
    })
    .await
    .expect("the watch resumes after the restart");
    assert_eq!(seen.last_index, after.last_index);
    let again = lock.lock().await.unwrap();
    assert!(again.fencing_token() > lease.fencing_token());
    lock.unlock().await.unwrap();
    drop(watch);
    s.close().await.unwrap();
    assert_eq!(s.background_tasks(), 0);
}

/// Starts a nats-server with JetStream and the given extra arguments on a free port.
fn start_nats(extra: &[&str]) -> (Child, u16, std::path::PathBuf) {
    let port = kv_test_support::free_port();
    let dir = kv_test_support::temp_dir("nats-auth");
    let child = Command::new(nats_binary())
        .args([
            "--addr",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--jetstream",
        ])
        .arg("--store_dir")
        .arg(&dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    (child, port, dir)
}

/// Wrong credentials are `PermissionDenied`; the right ones work; user/password and token in
/// the URL.
#[tokio::test]
async fn credentials_are_checked_with_typed_errors() {
    let (mut child, port, dir) = start_nats(&["--user", "app", "--pass", "s3cret"]);
    let good = format!("nats://app:s3cret@127.0.0.1:{port}");
    let s = connect_when_up(&good).await;
    s.put("a", "1".into(), WriteOptions::default())
        .await
        .unwrap();
    s.close().await.unwrap();
    let bad = NatsStore::connect(
        Config::from_url(&format!("nats://app:wrong@127.0.0.1:{port}")).unwrap(),
    )
    .await;
    assert!(
        matches!(bad, Err(Error::PermissionDenied { .. })),
        "{bad:?}"
    );
    let none =
        NatsStore::connect(Config::from_url(&format!("nats://127.0.0.1:{port}")).unwrap()).await;
    assert!(
        matches!(none, Err(Error::PermissionDenied { .. })),
        "{none:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);

    let (mut child, port, dir) = start_nats(&["--auth", "tok3n"]);
    let s = connect_when_up(&format!("nats://tok3n@127.0.0.1:{port}/tokbucket")).await;
    s.put("a", "1".into(), WriteOptions::default())
        .await
        .unwrap();
    s.close().await.unwrap();
    let bad =
        NatsStore::connect(Config::from_url(&format!("nats://nope@127.0.0.1:{port}")).unwrap())
            .await;
    assert!(
        matches!(bad, Err(Error::PermissionDenied { .. })),
        "{bad:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
}

/// Nothing listening, a malformed URL, a missing seed file: typed errors, quickly.
#[tokio::test]
async fn bad_urls_and_unreachable_servers_are_typed_errors() {
    let port = kv_test_support::free_port();
    let started = Instant::now();
    let refused = NatsStore::connect(
        Config::from_url(&format!("nats://127.0.0.1:{port}?connect_timeout=2s")).unwrap(),
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(Error::Unavailable { .. } | Error::Timeout { .. })
        ),
        "{refused:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    for bad in ["nats:/x", "redis://h", "nats://h:99999", "nats://h/a.b"] {
        assert!(
            matches!(Config::from_url(bad), Err(Error::Config(_))),
            "{bad}"
        );
    }
    let missing = NatsStore::connect(
        Config::from_url(&format!("{}?nkey_seed_file=/nonexistent/seed.nk", url())).unwrap(),
    )
    .await;
    assert!(matches!(missing, Err(Error::Config(_))), "{missing:?}");
}

/// A server without JetStream: a clear error at connect.
#[tokio::test]
async fn server_without_jetstream_is_a_config_error() {
    let port = kv_test_support::free_port();
    let mut child = Command::new(nats_binary())
        .args(["--addr", "127.0.0.1", "--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let url = format!("nats://127.0.0.1:{port}?request_timeout=2s");
    let deadline = Instant::now() + Duration::from_secs(20);
    let outcome = loop {
        match NatsStore::connect(Config::from_url(&url).unwrap()).await {
            Err(Error::Unavailable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => break other,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        matches!(outcome, Err(Error::Config(_)) | Err(Error::Backend { .. })),
        "{outcome:?}"
    );
}

/// What the write retry relies on: JetStream stores an unconditional publish resent with the
/// same message id once (the resend is answered as a duplicate, with the stored revision);
/// a resent CONDITIONAL publish is refused as a conflict instead (the expected revision is
/// checked before the id), which is why conditional writes are not sent again.
#[tokio::test]
async fn resent_writes_unconditional_deduplicated_conditional_refused() {
    let store = store().await;
    let key = unique("resent");
    store
        .put(&key, Bytes::from_static(b"0"), WriteOptions::default())
        .await
        .unwrap();
    let before = store
        .get(&key, ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    let client = async_nats::connect(url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let subject = store.subject_of(&key).unwrap();
    let send = |id: String, expected: Option<u64>| {
        let mut message = async_nats::jetstream::message::PublishMessage::build()
            .payload(Bytes::from_static(b"1"))
            .message_id(&id);
        if let Some(expected) = expected {
            message = message.expected_last_subject_sequence(expected);
        }
        let js = js.clone();
        let subject = subject.clone();
        async move { js.send_publish(subject, message).await.unwrap().await }
    };
    let plain = format!("plain-{key}");
    let first = send(plain.clone(), None).await.expect("stored");
    assert!(!first.duplicate);
    let again = send(plain, None).await.expect("a resend is answered");
    assert!(again.duplicate, "answered as a duplicate");
    assert_eq!(again.sequence, first.sequence, "with the stored revision");

    let conditional = format!("cas-{key}");
    let stored = send(conditional.clone(), Some(first.sequence))
        .await
        .expect("stored");
    assert!(!stored.duplicate);
    let resent = send(conditional, Some(first.sequence)).await;
    assert!(
        matches!(&resent, Err(e) if e.kind() == async_nats::jetstream::context::PublishErrorKind::WrongLastSequence),
        "a resent conditional write is a conflict, not a duplicate: {resent:?}"
    );
    let _ = before;
    store.close().await.unwrap();
}
