//! A watch whose consumer is lost while its bucket's stream is offline catches up soon after
//! the stream is back, and never stays silent for a whole request timeout.
//!
//! Forced on the 3-server cluster of `scripts/servers up nats-cluster`: the bucket's stream has
//! ONE replica, the handles connect to the two other servers, and the replica's server is
//! SIGKILLed for long enough that the watch's consumer reports two missed idle heartbeats
//! (10 s in async-nats) and the watch starts its resync (stream info, a new consumer) while
//! the stream is still offline. The server leaves those requests unanswered; the handles'
//! request timeout is 40 s, far beyond the time the test gives the watch after the restart.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kv_core::{Error, Store, WriteOptions};
use kv_nats::{Config, NatsStore};
use kv_test_support::cluster::Cluster;

#[path = "support/single_replica.rs"]
mod single_replica;

use single_replica::{Outage, member_urls, stream_host, urls_without, watch_from};

const BUCKET: &str = "watchoutage";
/// Two of async-nats' ordered-consumer idle heartbeats (5 s each), and a margin.
const OUTAGE: Duration = Duration::from_secs(12);
/// How soon after the restart the watch must deliver the write made after it.
const CATCH_UP: Duration = Duration::from_secs(15);

fn config(servers: Vec<String>) -> Config {
    Config::builder()
        .servers(servers)
        .bucket(BUCKET)
        .replicas(1)
        .request_timeout(Duration::from_secs(40))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resyncing_during_an_outage_catches_up() {
    let urls = member_urls();
    let members = Cluster::NATS.members();
    assert_eq!((urls.len(), members.len()), (3, 3), "{urls:?} {members:?}");
    single_replica::delete_bucket(&urls[0], BUCKET).await;
    let setup = NatsStore::connect(config(urls.clone())).await.unwrap();
    setup
        .put("k", Bytes::from_static(b"0"), WriteOptions::default())
        .await
        .unwrap();
    setup.close().await.unwrap();
    let host = stream_host(&urls[0], BUCKET).await;
    let others = urls_without(&urls, &members, &host);

    let store = NatsStore::connect(config(others.clone())).await.unwrap();
    let mut watch = watch_from(&store, "k", b"0").await;

    let outage = Outage::kill(&host).await;
    let killed = Instant::now();
    // Meanwhile, opening the offline bucket ends within its request timeout (`open` asks for
    // the stream again and again while nobody answers), with a typed error.
    let patience = Duration::from_secs(2);
    let mut impatient = config(others.clone());
    impatient.request_timeout = patience;
    let opening = Instant::now();
    let opened = NatsStore::connect(impatient).await;
    let took = opening.elapsed();
    eprintln!(
        "opening the offline bucket: {took:?}, {:?}",
        opened.as_ref().err()
    );
    assert!(
        matches!(
            opened,
            Err(Error::Timeout { .. } | Error::Unavailable { .. })
        ),
        "opening an offline bucket: {:?}",
        opened.map(|_| ())
    );
    // Two lookups and a create, each bounded by the request timeout, plus connecting.
    assert!(
        took < 3 * patience + Duration::from_secs(2),
        "open took {took:?}"
    );
    tokio::time::sleep(OUTAGE.saturating_sub(killed.elapsed())).await;
    outage.restart().await;
    let back = Instant::now();

    // A write from another handle, once the stream takes writes again.
    let writer = NatsStore::connect(config(others)).await.unwrap();
    writer
        .put("k", Bytes::from_static(b"1"), WriteOptions::default())
        .await
        .unwrap();
    let written = back.elapsed();
    let seen = tokio::time::timeout(CATCH_UP, async {
        while let Some(item) = watch.next().await {
            match item {
                Ok(Some(pair)) if pair.value == Bytes::from_static(b"1") => return,
                Ok(_) => continue,
                Err(error) => panic!("the watch failed instead of riding through: {error}"),
            }
        }
        panic!("the watch ended without an error");
    })
    .await;
    let caught_up = back.elapsed();
    eprintln!("write landed {written:?} after the restart; watch caught up {caught_up:?} after it");
    assert!(
        seen.is_ok(),
        "the watch stayed silent {CATCH_UP:?} after the restart (the write landed after \
         {written:?})"
    );
    writer.close().await.unwrap();
    store.close().await.unwrap();
}
