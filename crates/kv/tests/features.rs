//! A URL whose backend's cargo feature is off is an `Error::Config` naming the feature, never
//! a panic. These tests exist only in builds where that feature is off: `cargo test -p kv`
//! (default features: `bolt` only) runs the five networked ones for real; with
//! `--all-features` the same check is the unit test `a_disabled_feature_is_a_config_error_naming_it`.

#![allow(unused_imports, dead_code)]

use kv::Error;

async fn assert_disabled(url: &str, feature: &str) {
    match kv::connect(url).await {
        Err(Error::Config(message)) => {
            assert!(
                message.contains(&format!("feature \"{feature}\"")),
                "{message}"
            );
            assert!(!kv::schemes().contains(&feature));
        }
        Err(other) => panic!("{url}: expected Error::Config, got {other:?}"),
        Ok(_) => panic!("{url}: connected although the feature {feature} is off"),
    }
}

#[cfg(not(feature = "etcd"))]
#[tokio::test]
async fn etcd_disabled() {
    assert_disabled("etcd://127.0.0.1:2379", "etcd").await;
}

#[cfg(not(feature = "consul"))]
#[tokio::test]
async fn consul_disabled() {
    assert_disabled("consul+https://127.0.0.1", "consul").await;
}

#[cfg(not(feature = "zookeeper"))]
#[tokio::test]
async fn zookeeper_disabled() {
    assert_disabled("zk://127.0.0.1:2181", "zookeeper").await;
}

#[cfg(not(feature = "redis"))]
#[tokio::test]
async fn redis_disabled() {
    assert_disabled("redis://127.0.0.1:6379", "redis").await;
}

#[cfg(not(feature = "dynamodb"))]
#[tokio::test]
async fn dynamodb_disabled() {
    assert_disabled("dynamodb://t?region=x", "dynamodb").await;
}

#[cfg(not(feature = "bolt"))]
#[tokio::test]
async fn bolt_disabled() {
    assert_disabled("bolt:.kv", "bolt").await;
}

#[cfg(not(feature = "nats"))]
#[tokio::test]
async fn nats_disabled() {
    assert_disabled("nats://127.0.0.1:4222", "nats").await;
}
