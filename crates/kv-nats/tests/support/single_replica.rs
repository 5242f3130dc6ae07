//! Helpers for the tests that take a one-replica bucket offline on the 3-server cluster of
//! `scripts/servers up nats-cluster`: kill the server holding the stream's only replica, and
//! restart it however the test ends.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kv_core::{ReadOptions, Store, WatchStream};
use kv_nats::NatsStore;
use kv_test_support::cluster::Cluster;

/// A member SIGKILLed by [`Outage::kill`]; restarted by [`Outage::restart`], or however the
/// test ends (on drop), so later cluster tests find it.
pub struct Outage(Option<String>);

impl Outage {
    /// SIGKILLs `member` (from a blocking thread: the cluster helper waits for the process).
    pub async fn kill(member: &str) -> Outage {
        let killed = member.to_owned();
        tokio::task::spawn_blocking(move || Cluster::NATS.kill(&killed))
            .await
            .unwrap();
        Outage(Some(member.to_owned()))
    }

    /// Restarts the member (waiting until it serves).
    pub async fn restart(mut self) {
        if let Some(member) = self.0.take() {
            tokio::task::spawn_blocking(move || Cluster::NATS.restart(&member))
                .await
                .unwrap();
        }
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if let Some(member) = self.0.take() {
            Cluster::NATS.restart(&member);
        }
    }
}

/// A watch on `key`, after checking that its first item is the key's current value `first`.
pub async fn watch_from(store: &NatsStore, key: &str, first: &'static [u8]) -> WatchStream {
    let mut watch = store.watch(key, ReadOptions::default()).await.unwrap();
    let initial = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the watch's first item")
        .expect("an item")
        .expect("not an error");
    assert_eq!(initial.map(|p| p.value), Some(Bytes::from_static(first)));
    watch
}

/// One `nats://` URL per cluster member, in the members' order.
pub fn member_urls() -> Vec<String> {
    kv_test_support::env("KV_TEST_NATS_CLUSTER_URL")
        .trim_end_matches('/')
        .trim_start_matches("nats://")
        .split(',')
        .map(|a| format!("nats://{a}"))
        .collect()
}

/// Deletes the bucket's stream if it exists (a fresh bucket each run: the server that holds
/// its replica changes from run to run).
pub async fn delete_bucket(url: &str, bucket: &str) {
    let client = async_nats::connect(url).await.expect("raw connect");
    let _ = async_nats::jetstream::new(client)
        .delete_stream(format!("KV_{bucket}"))
        .await;
}

/// The bucket's stream info, as the server that `url` reaches reports it.
pub async fn stream_info(url: &str, bucket: &str) -> async_nats::jetstream::stream::Info {
    let client = async_nats::connect(url).await.expect("raw connect");
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .expect("the stream");
    stream.info().await.expect("stream info").clone()
}

/// The member holding the R1 stream's only replica, from the stream's own info (its server
/// names are `kvtest-<member>`).
pub async fn stream_host(url: &str, bucket: &str) -> String {
    let leader = stream_info(url, bucket)
        .await
        .cluster
        .and_then(|c| c.leader)
        .expect("a clustered stream names its leader");
    leader
        .strip_prefix("kvtest-")
        .unwrap_or_else(|| panic!("unexpected server name {leader:?}"))
        .to_owned()
}

/// The URLs of the members other than `host`.
pub fn urls_without(urls: &[String], members: &[String], host: &str) -> Vec<String> {
    let host_index = members
        .iter()
        .position(|m| m == host)
        .unwrap_or_else(|| panic!("stream host {host:?} is not among {members:?}"));
    urls.iter()
        .enumerate()
        .filter(|(i, _)| *i != host_index)
        .map(|(_, u)| u.clone())
        .collect()
}
