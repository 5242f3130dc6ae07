//! NATS-specific tests against the live server named by `KV_TEST_NATS_URL`.

use std::time::{Duration, Instant};

use kv_core::{ReadOptions, Store, WriteOptions};
use kv_nats::{Config, NatsStore};

fn url() -> String {
    std::env::var("KV_TEST_NATS_URL")
        .expect("KV_TEST_NATS_URL not set: eval \"$(scripts/servers env)\"")
}

async fn store() -> NatsStore {
    NatsStore::connect(Config::from_url(&url()).unwrap())
        .await
        .unwrap()
}

fn unique(name: &str) -> String {
    format!("nats-{name}-{:016x}", rand::random::<u64>())
}

/// How late the server removes a key after its TTL (printed; bounded by the declared precision).
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
