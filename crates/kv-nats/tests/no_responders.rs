//! A write refused with "no responders" (nobody serves the bucket's stream right now) is sent
//! again until the request timeout, and only such a write: every write issued while the
//! stream is offline lands exactly once when it comes back.
//!
//! Forced on the 3-server cluster of `scripts/servers up nats-cluster`: the bucket's stream
//! has ONE replica, the client connects to the two other servers, and the replica's server is
//! SIGKILLed, so every publish to the bucket gets "no responders" while the stream still
//! exists. The server is restarted while the writes wait.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kv_core::{Error, Store, WriteOptions};
use kv_nats::NatsStore;
use kv_test_support::cluster::Cluster;

#[path = "support/single_replica.rs"]
mod single_replica;

use single_replica::{Outage, member_urls, stream_host, stream_info, urls_without, watch_from};

const BUCKET: &str = "noresponders";

/// The stream's last sequence number: how many messages it has stored.
async fn stream_last_sequence(url: &str) -> u64 {
    stream_info(url, BUCKET).await.state.last_sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_refused_with_no_responders_land_exactly_once() {
    let urls = member_urls();
    assert_eq!(
        urls.len(),
        3,
        "KV_TEST_NATS_CLUSTER_URL lists the 3 servers"
    );
    let cluster = Cluster::NATS;
    let members = cluster.members();
    assert_eq!(members.len(), 3, "{members:?}");

    // A fresh R1 bucket each run (the server holding its replica changes from run to run),
    // then find that server.
    single_replica::delete_bucket(&urls[0], BUCKET).await;
    let setup = NatsStore::connect(
        kv_nats::Config::builder()
            .servers(urls.clone())
            .bucket(BUCKET)
            .replicas(1)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    // Left by an earlier run.
    for key in ["put", "cas", "create"] {
        setup.delete(key).await.unwrap();
    }
    setup
        .put("put", Bytes::from_static(b"0"), WriteOptions::default())
        .await
        .unwrap();
    let cas_base = setup
        .atomic_put(
            "cas",
            Bytes::from_static(b"0"),
            None,
            WriteOptions::default(),
        )
        .await
        .unwrap();
    setup.close().await.unwrap();
    let host = stream_host(&urls[0], BUCKET).await;
    let others = urls_without(&urls, &members, &host);
    let before = stream_last_sequence(&others[0]).await;

    // A handle on the two other servers only, patient enough to outlast a restart.
    let store = std::sync::Arc::new(
        NatsStore::connect(
            kv_nats::Config::builder()
                .servers(others.clone())
                .bucket(BUCKET)
                .replicas(1)
                .request_timeout(Duration::from_secs(40))
                .build()
                .unwrap(),
        )
        .await
        .unwrap(),
    );

    // A watch opened before the outage follows the key through it.
    let mut watch = watch_from(&store, "put", b"0").await;

    let outage = Outage::kill(&host).await;
    let killed = Instant::now();
    let put = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .put("put", Bytes::from_static(b"1"), WriteOptions::default())
                .await
        })
    };
    let cas = {
        let store = store.clone();
        let base = cas_base.clone();
        tokio::spawn(async move {
            store
                .atomic_put(
                    "cas",
                    Bytes::from_static(b"1"),
                    Some(&base),
                    WriteOptions::default(),
                )
                .await
        })
    };
    let create = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .atomic_put(
                    "create",
                    Bytes::from_static(b"1"),
                    None,
                    WriteOptions::default(),
                )
                .await
        })
    };
    // Long enough for several refusals and resends: the put must still be waiting (ending
    // here would mean the refusal was reported instead of retried); the conditional writes
    // are not sent again (JetStream does not deduplicate them) and fail at once with
    // `Unavailable`, nothing stored.
    let cas = tokio::time::timeout(Duration::from_secs(2), cas)
        .await
        .expect("a conditional write refused with no responders fails promptly")
        .unwrap();
    let create = tokio::time::timeout(Duration::from_secs(2), create)
        .await
        .expect("a conditional write refused with no responders fails promptly")
        .unwrap();
    assert!(matches!(cas, Err(Error::Unavailable { .. })), "{cas:?}");
    assert!(
        matches!(create, Err(Error::Unavailable { .. })),
        "{create:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !put.is_finished(),
        "an unconditional write refused with no responders waits for the stream"
    );
    outage.restart().await;
    let offline_for = killed.elapsed();
    eprintln!("stream host {host} back after {offline_for:?}");

    put.await.unwrap().expect("the put lands after the restart");
    // Exactly one message was added to the stream: the put was stored once, however often
    // it was sent, and the refused conditional writes stored nothing.
    let after = stream_last_sequence(&others[0]).await;
    assert_eq!(
        after,
        before + 1,
        "one put while offline for {offline_for:?} must add exactly one message"
    );
    let get = |key: &'static str| {
        let store = store.clone();
        async move {
            store
                .get(key, kv_core::ReadOptions::default())
                .await
                .unwrap()
        }
    };
    let pair = get("put").await.expect("the put's key exists");
    assert_eq!(pair.value, Bytes::from_static(b"1"));
    assert_eq!(pair.last_index, after);
    let untouched = get("cas").await.expect("the CAS key exists");
    assert_eq!(
        untouched.value,
        Bytes::from_static(b"0"),
        "the refused CAS stored nothing"
    );
    assert!(
        get("create").await.is_none(),
        "the refused create stored nothing"
    );
    // The watch catches up once the stream is back (or ends with an error: never silence).
    let caught_up = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(item) = watch.next().await {
            match item {
                Ok(Some(pair)) if pair.value == Bytes::from_static(b"1") => return Ok(()),
                Ok(_) => continue,
                Err(error) => return Err(error),
            }
        }
        panic!("the watch ended without an error");
    })
    .await
    .expect("the watch neither caught up nor failed within 20 s of the restart");
    if let Err(error) = caught_up {
        panic!("the watch failed instead of riding through the outage: {error}");
    }
    store.close().await.unwrap();
}
