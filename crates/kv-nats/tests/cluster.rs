//! The shared conformance suite against the 3-server NATS cluster of
//! `scripts/servers up nats-cluster` (`KV_TEST_NATS_CLUSTER_URL`), in a bucket of its own
//! whose stream has 3 replicas.

use std::sync::Arc;

use kv_core::{Result, Store};

/// The cluster's configuration; each `connect` opens a new connection.
struct NatsCluster(kv_nats::Config);

#[async_trait::async_trait]
impl kv_conformance::StoreFactory for NatsCluster {
    async fn connect(&self) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(kv_nats::NatsStore::connect(self.0.clone()).await?))
    }
}

fn cluster() -> NatsCluster {
    let servers = kv_test_support::env("KV_TEST_NATS_CLUSTER_URL");
    let url = format!(
        "{}?bucket=conformance&replicas=3",
        servers.trim_end_matches('/')
    );
    NatsCluster(kv_nats::Config::from_url(&url).unwrap_or_else(|e| panic!("{url}: {e}")))
}

kv_conformance::conformance_tests!(cluster());

/// Services that start together open the same new bucket at once. Every handle must open it:
/// on a cluster, the handles that lose the creation race see the stream before its replicas have
/// elected a leader, and the server leaves a stream-info request to a leaderless stream
/// unanswered. Six rounds, four handles each, a fresh 3-replica bucket per round.
#[tokio::test]
async fn concurrent_opens_of_a_new_replicated_bucket_all_succeed() {
    let servers = kv_test_support::env("KV_TEST_NATS_CLUSTER_URL");
    let servers = servers.trim_end_matches('/');
    let first = servers.split(',').next().unwrap().to_owned();
    let admin = async_nats::connect(&first)
        .await
        .unwrap_or_else(|e| panic!("{first}: {e}"));
    let js = async_nats::jetstream::new(admin);
    for round in 0..6 {
        let bucket = format!("open-race-{round}-{:08x}", rand::random::<u32>());
        let url = format!("{servers}?bucket={bucket}&replicas=3");
        let config = kv_nats::Config::from_url(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
        let started = std::time::Instant::now();
        let opens = (0..4).map(|_| kv_nats::NatsStore::connect(config.clone()));
        let results = futures::future::join_all(opens).await;
        let took = started.elapsed();
        let failures: Vec<String> = results
            .iter()
            .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
            .collect();
        println!("round {round}: 4 opens of {bucket} in {took:?}, failures {failures:?}");
        let stores: Vec<_> = results.into_iter().flatten().collect();
        if failures.is_empty() {
            // Every handle serves the bucket it opened.
            for (i, store) in stores.iter().enumerate() {
                let key = format!("k{i}");
                store
                    .put(&key, format!("v{i}").into(), Default::default())
                    .await
                    .unwrap();
                let other = &stores[(i + 1) % stores.len()];
                let got = other.get(&key, Default::default()).await.unwrap();
                assert_eq!(got.map(|kv| kv.value), Some(format!("v{i}").into()));
            }
        }
        drop(stores);
        js.delete_stream(format!("KV_{bucket}"))
            .await
            .unwrap_or_else(|e| panic!("delete KV_{bucket}: {e}"));
        assert!(
            failures.is_empty(),
            "round {round}: {} of 4 opens failed: {failures:?}",
            failures.len()
        );
    }
}
