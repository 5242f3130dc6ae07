//! The raw client libraries the backends wrap, each doing the benchmark's work the simplest
//! correct way (one request where the server allows it, the client's own pipelining, no
//! extra records beyond what the operation needs).
//!
//! "The same work" includes the guarantee: our reads are linearizable by default
//! (`ReadOptions::default()`), so the raw reads are too where the server has a cheaper,
//! weaker default (ZooKeeper `sync` first, Consul `?consistent`); and our watch delivers the
//! new value, so a raw watch whose notification carries none reads it.
//!
//! | backend | client | get / put | CAS and transaction | list | lock | watch |
//! | --- | --- | --- | --- | --- | --- | --- |
//! | etcd | `etcd-client` | `Range` / `Put` | `Txn` on `mod_revision` (`create_revision == 0` for absent) | prefix `Range` | lease + `Txn` create + lease revoke | `Watch` |
//! | Consul | `reqwest` on the HTTP API | `GET ?consistent` / `PUT /v1/kv` | `/v1/txn` `cas` verbs (index 0 = absent) | `?recurse&consistent` | session create, `?acquire`, session destroy (`Behavior=delete`) | blocking query |
//! | ZooKeeper | `zookeeper-client` | `sync` + `getData` / `setData` (create if absent) | `setData`/`create` with versions; `multi` | `sync` + `getChildren` + one multi-read | ephemeral node create + delete | persistent watch, `getData` per event |
//! | Redis | `fred` | `GET` / `SET` | `EVALSHA` of a compare-the-old-value-then-`SET` script (values are unique) | `SCAN MATCH` + `MGET` | `SET NX PX` + compare-and-`DEL` script | keyspace notification, `GET` per event |
//! | embedded | `redb` | read txn / write txn (version prefix in the value), writes on `spawn_blocking` | write txn compare + insert | range read | insert-if-absent commit + remove commit | — (redb has none) |
//! | DynamoDB | `aws-sdk-dynamodb` | `GetItem` (consistent) / `PutItem` | conditional `PutItem`; `TransactWriteItems` | `Query` `begins_with` (consistent) | conditional `PutItem` + conditional `DeleteItem` | — (Streams: polled, server-bound) |

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use base64::Engine as _;
use bytes::Bytes;
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use fred::prelude::*;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::mpsc;
use zookeeper_client as zk;

use crate::target::{Cas, R, Target};

fn e(err: impl std::fmt::Display) -> String {
    err.to_string()
}

// ---------------------------------------------------------------------------------- etcd --

/// etcd through `etcd-client`.
pub struct RawEtcd {
    client: etcd_client::Client,
    prefix: String,
}

impl RawEtcd {
    /// Connects to the endpoints (comma-separated URLs).
    pub async fn connect(endpoints: &str, prefix: &str) -> R<Self> {
        let eps: Vec<&str> = endpoints.split(',').map(str::trim).collect();
        let client = etcd_client::Client::connect(eps, None).await.map_err(e)?;
        Ok(Self {
            client,
            prefix: prefix.to_owned(),
        })
    }
    fn k(&self, key: &str) -> String {
        format!("{}/{key}", self.prefix)
    }

    /// Leaves etcd's read buffer as a quiet server has it, before a window that only reads.
    ///
    /// etcd 3.4 (Debian's 3.4.23) copies its buffer of recently committed writes on every
    /// read, at the buffer's full capacity (`bucketBuffer.Copy`; shared instead of copied
    /// from 3.4.24 and 3.5, etcd-io/etcd#12933). The capacity grows with the largest 100 ms
    /// batch of key writes and is kept until a commit that writes no key at all drops the
    /// buffer. So a read window that follows a burst of writes (the fixture, valkeyrie's
    /// setup, a write case) reads at half the rate or less, whichever side it measures
    /// (docs/costs/etcd.md). This waits out the pending batch, then commits a write outside
    /// the key space (a lease granted and revoked), and waits for that commit.
    pub async fn settle(&self) -> R<()> {
        const BATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(150);
        tokio::time::sleep(BATCH_INTERVAL).await;
        let mut leases = self.client.lease_client();
        let lease = leases.grant(5, None).await.map_err(e)?;
        leases.revoke(lease.id()).await.map_err(e)?;
        tokio::time::sleep(BATCH_INTERVAL).await;
        Ok(())
    }

    /// Deletes every key this client wrote (all of them below its prefix).
    pub async fn clear(&self) -> R<()> {
        let all = etcd_client::DeleteOptions::new().with_prefix();
        self.client
            .kv_client()
            .delete(format!("{}/", self.prefix), Some(all))
            .await
            .map_err(e)?;
        Ok(())
    }
}

impl Target for RawEtcd {
    type Ver = i64;

    async fn get(&self, key: &str) -> R<Option<i64>> {
        let r = self
            .client
            .kv_client()
            .get(self.k(key), None)
            .await
            .map_err(e)?;
        Ok(r.kvs().first().map(|kv| {
            std::hint::black_box(kv.value());
            kv.mod_revision()
        }))
    }
    async fn put(&self, key: &str, value: Bytes) -> R<()> {
        self.client
            .kv_client()
            .put(self.k(key), value.to_vec(), None)
            .await
            .map(drop)
            .map_err(e)
    }
    async fn exists(&self, key: &str) -> R<bool> {
        let r = self
            .client
            .kv_client()
            .get(self.k(key), Some(GetOptions::new().with_count_only()))
            .await
            .map_err(e)?;
        Ok(r.count() > 0)
    }
    async fn delete(&self, key: &str) -> R<bool> {
        let r = self
            .client
            .kv_client()
            .delete(self.k(key), None)
            .await
            .map_err(e)?;
        Ok(r.deleted() > 0)
    }
    async fn cas(&self, key: &str, value: Bytes, prev: Option<&i64>) -> R<Cas<i64>> {
        let k = self.k(key);
        let cmp = match prev {
            None => Compare::create_revision(k.clone(), CompareOp::Equal, 0),
            Some(rev) => Compare::mod_revision(k.clone(), CompareOp::Equal, *rev),
        };
        let txn = Txn::new()
            .when([cmp])
            .and_then([TxnOp::put(k, value.to_vec(), None)]);
        let r = self.client.kv_client().txn(txn).await.map_err(e)?;
        if !r.succeeded() {
            return Ok(Cas::Conflict);
        }
        Ok(Cas::Done(r.header().map(|h| h.revision()).unwrap_or(0)))
    }
    async fn list(&self, dir: &str) -> R<usize> {
        let r = self
            .client
            .kv_client()
            .get(
                format!("{}/", self.k(dir)),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(e)?;
        Ok(r.kvs().len())
    }
    async fn lock_cycle(&self, key: &str) -> R<()> {
        let mut client = self.client.clone();
        let lease = client.lease_grant(15, None).await.map_err(e)?.id();
        let k = self.k(key);
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                k,
                b"holder".to_vec(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let r = client.kv_client().txn(txn).await.map_err(e)?;
        // Revoking the lease deletes the key: the release.
        client.lease_revoke(lease).await.map_err(e)?;
        if r.succeeded() {
            Ok(())
        } else {
            Err("lock held by someone else".into())
        }
    }
    async fn txn(
        &self,
        a: &str,
        b: &str,
        prev: Option<(&i64, &i64)>,
        value: Bytes,
    ) -> R<Cas<(i64, i64)>> {
        let (ka, kb) = (self.k(a), self.k(b));
        let cmps = match prev {
            None => vec![
                Compare::create_revision(ka.clone(), CompareOp::Equal, 0),
                Compare::create_revision(kb.clone(), CompareOp::Equal, 0),
            ],
            Some((ra, rb)) => vec![
                Compare::mod_revision(ka.clone(), CompareOp::Equal, *ra),
                Compare::mod_revision(kb.clone(), CompareOp::Equal, *rb),
            ],
        };
        let txn = Txn::new().when(cmps).and_then([
            TxnOp::put(ka, value.to_vec(), None),
            TxnOp::put(kb, value.to_vec(), None),
        ]);
        let r = self.client.kv_client().txn(txn).await.map_err(e)?;
        if !r.succeeded() {
            return Ok(Cas::Conflict);
        }
        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
        Ok(Cas::Done((rev, rev)))
    }
    async fn watch(&self, key: &str) -> R<Option<mpsc::UnboundedReceiver<()>>> {
        let mut stream = self
            .client
            .watch_client()
            .watch(self.k(key), None)
            .await
            .map_err(e)?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(resp)) = stream.message().await {
                for _ in resp.events() {
                    if tx.send(()).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Some(rx))
    }
}

// -------------------------------------------------------------------------------- Consul --

/// Consul through `reqwest` on its HTTP API.
pub struct RawConsul {
    http: reqwest::Client,
    base: String,
    prefix: String,
}

impl RawConsul {
    /// Uses the agent at `addr` (`http://host:port`).
    pub async fn connect(addr: &str, prefix: &str) -> R<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(e)?;
        Ok(Self {
            http,
            base: addr.trim_end_matches('/').to_owned(),
            prefix: prefix.to_owned(),
        })
    }
    fn url(&self, key: &str) -> String {
        format!("{}/v1/kv/{}/{key}", self.base, self.prefix)
    }
    fn full(&self, key: &str) -> String {
        format!("{}/{key}", self.prefix)
    }
    /// Deletes every key this client wrote (all of them below its prefix).
    pub async fn clear(&self) -> R<()> {
        let url = format!("{}/v1/kv/{}/?recurse", self.base, self.prefix);
        let r = self.http.delete(url).send().await.map_err(e)?;
        if !r.status().is_success() {
            return Err(format!("consul: recursive delete answered {}", r.status()));
        }
        Ok(())
    }
    async fn txn_call(&self, ops: serde_json::Value) -> R<Option<Vec<u64>>> {
        let r = self
            .http
            .put(format!("{}/v1/txn", self.base))
            .json(&ops)
            .send()
            .await
            .map_err(e)?;
        let status = r.status();
        let body: serde_json::Value = r.json().await.map_err(e)?;
        if status == reqwest::StatusCode::CONFLICT {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(format!("txn: {status}: {body}"));
        }
        let idx = body["Results"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| r["KV"]["ModifyIndex"].as_u64().unwrap_or(0))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(idx))
    }
}

impl Target for RawConsul {
    type Ver = u64;

    async fn get(&self, key: &str) -> R<Option<u64>> {
        let r = self
            .http
            .get(format!("{}?consistent", self.url(key)))
            .send()
            .await
            .map_err(e)?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body: serde_json::Value = r.json().await.map_err(e)?;
        let kv = &body[0];
        if let Some(v) = kv["Value"].as_str() {
            std::hint::black_box(
                base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map_err(e)?,
            );
        }
        Ok(kv["ModifyIndex"].as_u64())
    }
    async fn put(&self, key: &str, value: Bytes) -> R<()> {
        let r = self
            .http
            .put(self.url(key))
            .body(value)
            .send()
            .await
            .map_err(e)?;
        let ok = r.text().await.map_err(e)?;
        if ok.trim() == "true" {
            Ok(())
        } else {
            Err(format!("put: {ok}"))
        }
    }
    async fn exists(&self, key: &str) -> R<bool> {
        // `?keys` lists key names only: no value transferred.
        let r = self
            .http
            .get(format!("{}?keys&separator=/&consistent", self.url(key)))
            .send()
            .await
            .map_err(e)?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(false);
        }
        let keys: Vec<String> = r.json().await.map_err(e)?;
        Ok(keys.iter().any(|k| *k == self.full(key)))
    }
    async fn delete(&self, key: &str) -> R<bool> {
        let r = self.http.delete(self.url(key)).send().await.map_err(e)?;
        let ok = r.text().await.map_err(e)?;
        Ok(ok.trim() == "true")
    }
    async fn cas(&self, key: &str, value: Bytes, prev: Option<&u64>) -> R<Cas<u64>> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&value);
        let ops = serde_json::json!([{"KV": {"Verb": "cas", "Key": self.full(key), "Value": b64, "Index": prev.copied().unwrap_or(0)}}]);
        Ok(match self.txn_call(ops).await? {
            Some(idx) => Cas::Done(idx.first().copied().unwrap_or(0)),
            None => Cas::Conflict,
        })
    }
    async fn list(&self, dir: &str) -> R<usize> {
        let r = self
            .http
            .get(format!("{}/?recurse&consistent", self.url(dir)))
            .send()
            .await
            .map_err(e)?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(0);
        }
        let body: Vec<serde_json::Value> = r.json().await.map_err(e)?;
        for kv in &body {
            if let Some(v) = kv["Value"].as_str() {
                std::hint::black_box(
                    base64::engine::general_purpose::STANDARD
                        .decode(v)
                        .map_err(e)?,
                );
            }
        }
        Ok(body.len())
    }
    async fn lock_cycle(&self, key: &str) -> R<()> {
        let r = self
            .http
            .put(format!("{}/v1/session/create", self.base))
            .json(&serde_json::json!({"TTL": "15s", "Behavior": "delete", "LockDelay": "0s"}))
            .send()
            .await
            .map_err(e)?;
        let body: serde_json::Value = r.json().await.map_err(e)?;
        let id = body["ID"].as_str().ok_or("no session ID")?.to_owned();
        let r = self
            .http
            .put(format!("{}?acquire={id}", self.url(key)))
            .body("holder")
            .send()
            .await
            .map_err(e)?;
        let acquired = r.text().await.map_err(e)?.trim() == "true";
        // Destroying the session releases the lock and (Behavior=delete) removes the key.
        self.http
            .put(format!("{}/v1/session/destroy/{id}", self.base))
            .send()
            .await
            .map_err(e)?
            .error_for_status()
            .map_err(e)?;
        if acquired {
            Ok(())
        } else {
            Err("lock held by someone else".into())
        }
    }
    async fn txn(
        &self,
        a: &str,
        b: &str,
        prev: Option<(&u64, &u64)>,
        value: Bytes,
    ) -> R<Cas<(u64, u64)>> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&value);
        let (ia, ib) = prev.map(|(a, b)| (*a, *b)).unwrap_or((0, 0));
        let ops = serde_json::json!([
            {"KV": {"Verb": "cas", "Key": self.full(a), "Value": b64, "Index": ia}},
            {"KV": {"Verb": "cas", "Key": self.full(b), "Value": b64, "Index": ib}},
        ]);
        Ok(match self.txn_call(ops).await? {
            Some(idx) if idx.len() == 2 => Cas::Done((idx[0], idx[1])),
            Some(idx) => return Err(format!("txn returned {} results", idx.len())),
            None => Cas::Conflict,
        })
    }
    async fn watch(&self, key: &str) -> R<Option<mpsc::UnboundedReceiver<()>>> {
        let http = self.http.clone();
        let url = self.url(key);
        let first = http.get(&url).send().await.map_err(e)?;
        let mut index: u64 = first
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or("no X-Consul-Index")?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let r = match http
                    .get(format!("{url}?index={index}&wait=10s"))
                    .send()
                    .await
                {
                    Ok(r) => r,
                    Err(_) => return,
                };
                let next: u64 = r
                    .headers()
                    .get("X-Consul-Index")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(index);
                let _ = r.bytes().await;
                if next > index {
                    index = next;
                    if tx.send(()).is_err() {
                        return;
                    }
                } else if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Some(rx))
    }
}

// ----------------------------------------------------------------------------- ZooKeeper --

/// ZooKeeper through `zookeeper-client`.
pub struct RawZk {
    /// Replaced by a new session if the current one expires (a raw client must do that itself).
    client: Arc<std::sync::Mutex<zk::Client>>,
    reconnecting: Arc<std::sync::atomic::AtomicBool>,
    cluster: String,
    prefix: String,
}

fn zk_opts(mode: zk::CreateMode) -> zk::CreateOptions<'static> {
    mode.with_acls(zk::Acls::anyone_all())
}

impl RawZk {
    /// Connects to `host:port[,…]`; every path below `/prefix`.
    pub async fn connect(cluster: &str, prefix: &str) -> R<Self> {
        let client = zk::Client::connect(cluster).await.map_err(e)?;
        let prefix = format!("/{prefix}");
        client
            .mkdir(&prefix, &zk_opts(zk::CreateMode::Persistent))
            .await
            .map_err(e)?;
        Ok(Self {
            client: Arc::new(std::sync::Mutex::new(client)),
            reconnecting: Arc::default(),
            cluster: cluster.to_owned(),
            prefix,
        })
    }
    fn k(&self, key: &str) -> String {
        format!("{}/{key}", self.prefix)
    }
    /// Deletes every node this client wrote, its prefix node included: the tree is listed
    /// level by level, then deleted deepest level first (each level's nodes concurrently).
    pub async fn clear(&self) -> R<()> {
        use futures::{StreamExt as _, TryStreamExt as _};
        let client = self.client();
        let mut nodes = vec![self.prefix.clone()];
        let mut next = 0;
        while let Some(path) = nodes.get(next).cloned() {
            match client.list_children(&path).await {
                Ok(children) => nodes.extend(children.into_iter().map(|c| format!("{path}/{c}"))),
                Err(zk::Error::NoNode) => {}
                Err(err) => return Err(e(err)),
            }
            next += 1;
        }
        let depth = |path: &String| path.matches('/').count();
        nodes.sort_by_key(|path| std::cmp::Reverse(depth(path)));
        for level in nodes.chunk_by(|a, b| depth(a) == depth(b)) {
            futures::stream::iter(level)
                .map(|path| {
                    let client = client.clone();
                    async move {
                        match client.delete(path, None).await {
                            Ok(()) | Err(zk::Error::NoNode) => Ok(()),
                            Err(err) => Err(e(err)),
                        }
                    }
                })
                .buffer_unordered(64)
                .try_collect::<Vec<()>>()
                .await?;
        }
        Ok(())
    }
    /// The current session; one whose session expired or closed is replaced in the background.
    fn client(&self) -> zk::Client {
        let c = self.client.lock().expect("not poisoned").clone();
        if matches!(
            c.state(),
            zk::SessionState::Expired | zk::SessionState::Closed
        ) && !self
            .reconnecting
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let (slot, flag, cluster) = (
                self.client.clone(),
                self.reconnecting.clone(),
                self.cluster.clone(),
            );
            tokio::spawn(async move {
                if let Ok(new) = zk::Client::connect(&cluster).await {
                    *slot.lock().expect("not poisoned") = new;
                }
                flag.store(false, std::sync::atomic::Ordering::SeqCst);
            });
        }
        c
    }
    /// Creates `path` with `data`, creating missing parents first.
    async fn create(&self, path: &str, data: &[u8]) -> Result<zk::Stat, zk::Error> {
        let opts = zk_opts(zk::CreateMode::Persistent);
        match self.client().create(path, data, &opts).await {
            Err(zk::Error::NoNode) => {
                let parent = &path[..path.rfind('/').unwrap_or(0)];
                self.client().mkdir(parent, &opts).await?;
                self.client()
                    .create(path, data, &opts)
                    .await
                    .map(|(s, _)| s)
            }
            r => r.map(|(s, _)| s),
        }
    }
}

impl Target for RawZk {
    type Ver = i32;

    async fn get(&self, key: &str) -> R<Option<i32>> {
        let path = self.k(key);
        let client = self.client();
        client.sync(&path).await.map_err(e)?;
        match client.get_data(&path).await {
            Ok((data, stat)) => {
                std::hint::black_box(data);
                Ok(Some(stat.version))
            }
            Err(zk::Error::NoNode) => Ok(None),
            Err(err) => Err(e(err)),
        }
    }
    async fn put(&self, key: &str, value: Bytes) -> R<()> {
        let path = self.k(key);
        match self.client().set_data(&path, &value, None).await {
            Ok(_) => Ok(()),
            Err(zk::Error::NoNode) => match self.create(&path, &value).await {
                Ok(_) => Ok(()),
                Err(zk::Error::NodeExists) => self
                    .client()
                    .set_data(&path, &value, None)
                    .await
                    .map(drop)
                    .map_err(e),
                Err(err) => Err(e(err)),
            },
            Err(err) => Err(e(err)),
        }
    }
    async fn exists(&self, key: &str) -> R<bool> {
        let path = self.k(key);
        let client = self.client();
        client.sync(&path).await.map_err(e)?;
        client
            .check_stat(&path)
            .await
            .map(|s| s.is_some())
            .map_err(e)
    }
    async fn delete(&self, key: &str) -> R<bool> {
        match self.client().delete(&self.k(key), None).await {
            Ok(()) => Ok(true),
            Err(zk::Error::NoNode) => Ok(false),
            Err(err) => Err(e(err)),
        }
    }
    async fn cas(&self, key: &str, value: Bytes, prev: Option<&i32>) -> R<Cas<i32>> {
        let path = self.k(key);
        let r = match prev {
            None => self.create(&path, &value).await,
            Some(v) => self.client().set_data(&path, &value, Some(*v)).await,
        };
        match r {
            Ok(stat) => Ok(Cas::Done(stat.version)),
            Err(zk::Error::NodeExists | zk::Error::BadVersion | zk::Error::NoNode) => {
                Ok(Cas::Conflict)
            }
            Err(err) => Err(e(err)),
        }
    }
    async fn list(&self, dir: &str) -> R<usize> {
        let dir = self.k(dir);
        self.client().sync(&dir).await.map_err(e)?;
        let children = match self.client().list_children(&dir).await {
            Ok(c) => c,
            Err(zk::Error::NoNode) => return Ok(0),
            Err(err) => return Err(e(err)),
        };
        let client = self.client();
        let mut reader = client.new_multi_reader();
        for c in &children {
            reader.add_get_data(&format!("{dir}/{c}")).map_err(e)?;
        }
        let results = reader.commit().await.map_err(e)?;
        Ok(std::hint::black_box(results).len())
    }
    async fn lock_cycle(&self, key: &str) -> R<()> {
        let path = self.k(key);
        let opts = zk_opts(zk::CreateMode::Ephemeral);
        match self.client().create(&path, b"holder", &opts).await {
            Ok(_) => {}
            Err(zk::Error::NoNode) => {
                let parent = &path[..path.rfind('/').unwrap_or(0)];
                self.client()
                    .mkdir(parent, &zk_opts(zk::CreateMode::Persistent))
                    .await
                    .map_err(e)?;
                self.client()
                    .create(&path, b"holder", &opts)
                    .await
                    .map_err(e)?;
            }
            Err(err) => return Err(e(err)),
        }
        self.client().delete(&path, None).await.map_err(e)
    }
    async fn txn(
        &self,
        a: &str,
        b: &str,
        prev: Option<(&i32, &i32)>,
        value: Bytes,
    ) -> R<Cas<(i32, i32)>> {
        let (pa, pb) = (self.k(a), self.k(b));
        if prev.is_none() {
            // Make sure the parent exists so that the multi's creates can succeed.
            let parent = &pa[..pa.rfind('/').unwrap_or(0)];
            self.client()
                .mkdir(parent, &zk_opts(zk::CreateMode::Persistent))
                .await
                .map_err(e)?;
        }
        let client = self.client();
        let mut w = client.new_multi_writer();
        let opts = zk_opts(zk::CreateMode::Persistent);
        match prev {
            None => {
                w.add_create(&pa, &value, &opts).map_err(e)?;
                w.add_create(&pb, &value, &opts).map_err(e)?;
            }
            Some((va, vb)) => {
                w.add_set_data(&pa, &value, Some(*va)).map_err(e)?;
                w.add_set_data(&pb, &value, Some(*vb)).map_err(e)?;
            }
        }
        match w.commit().await {
            Ok(results) => {
                let v: Vec<i32> = results
                    .iter()
                    .map(|r| match r {
                        zk::MultiWriteResult::SetData { stat } => stat.version,
                        zk::MultiWriteResult::Create { stat, .. } => stat.version,
                        _ => 0,
                    })
                    .collect();
                Ok(Cas::Done((v[0], v[1])))
            }
            Err(zk::MultiWriteError::OperationFailed { .. }) => Ok(Cas::Conflict),
            Err(err) => Err(e(err)),
        }
    }
    async fn watch(&self, key: &str) -> R<Option<mpsc::UnboundedReceiver<()>>> {
        // Another session, as another process would have.
        let client = zk::Client::connect(&self.cluster).await.map_err(e)?;
        let mut watcher = client
            .watch(&self.k(key), zk::AddWatchMode::Persistent)
            .await
            .map_err(e)?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let event = watcher.changed().await;
                if event.event_type == zk::EventType::Session {
                    return;
                }
                // A notification carries no data: read what changed, as a watcher must.
                match client.get_data(&event.path).await {
                    Ok(data) => drop(std::hint::black_box(data)),
                    Err(zk::Error::NoNode) => {}
                    Err(_) => return,
                }
                if tx.send(()).is_err() {
                    return;
                }
            }
        });
        Ok(Some(rx))
    }
}

// --------------------------------------------------------------------------------- Redis --

/// Redis through `fred`: one client (fred pipelines concurrent commands on it).
pub struct RawRedis {
    client: Client,
    url: String,
    prefix: String,
    cas_sha: String,
    unlock_sha: String,
    txn_sha: String,
}

const CAS: &str = "local c = redis.call('GET', KEYS[1]) \
    if (c == false and ARGV[1] == '') or c == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return 1 end return 0";
const UNLOCK: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
const TXN: &str = "for i = 1, 2 do local c = redis.call('GET', KEYS[i]) \
    if not ((c == false and ARGV[i] == '') or c == ARGV[i]) then return 0 end end \
    redis.call('SET', KEYS[1], ARGV[3]) redis.call('SET', KEYS[2], ARGV[4]) return 1";

impl RawRedis {
    /// Connects to `redis://…`.
    pub async fn connect(url: &str, prefix: &str) -> R<Self> {
        let client = Builder::from_config(Config::from_url(url).map_err(e)?)
            .build()
            .map_err(e)?;
        client.init().await.map_err(e)?;
        let cas_sha: String = client.script_load(CAS).await.map_err(e)?;
        let unlock_sha: String = client.script_load(UNLOCK).await.map_err(e)?;
        let txn_sha: String = client.script_load(TXN).await.map_err(e)?;
        Ok(Self {
            client,
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            cas_sha,
            unlock_sha,
            txn_sha,
        })
    }
    fn k(&self, key: &str) -> String {
        format!("{}/{key}", self.prefix)
    }
    /// Every key matching `pattern` (`SCAN` pages of 1,000).
    async fn scan_all(&self, pattern: String) -> R<Vec<Key>> {
        let mut cursor = "0".to_owned();
        let mut keys: Vec<Key> = Vec::new();
        loop {
            let (next, page): (String, Vec<Key>) = self
                .client
                .scan_page(cursor, pattern.clone(), Some(1000), None)
                .await
                .map_err(e)?;
            keys.extend(page);
            if next == "0" {
                return Ok(keys);
            }
            cursor = next;
        }
    }
    /// Deletes every key this client wrote (all of them below its prefix).
    pub async fn clear(&self) -> R<()> {
        for batch in self
            .scan_all(format!("{}/*", self.prefix))
            .await?
            .chunks(1000)
        {
            let _: i64 = self.client.unlink(batch.to_vec()).await.map_err(e)?;
        }
        Ok(())
    }
}

impl Target for RawRedis {
    /// Raw Redis has no versions: a CAS compares the whole old value (every value the
    /// benchmark's conditional writes write is unique).
    type Ver = Bytes;

    async fn get(&self, key: &str) -> R<Option<Bytes>> {
        self.client.get(self.k(key)).await.map_err(e)
    }
    async fn put(&self, key: &str, value: Bytes) -> R<()> {
        self.client
            .set::<(), _, _>(self.k(key), value, None, None, false)
            .await
            .map_err(e)
    }
    async fn exists(&self, key: &str) -> R<bool> {
        self.client
            .exists::<i64, _>(self.k(key))
            .await
            .map(|n| n > 0)
            .map_err(e)
    }
    async fn delete(&self, key: &str) -> R<bool> {
        self.client
            .del::<i64, _>(self.k(key))
            .await
            .map(|n| n > 0)
            .map_err(e)
    }
    async fn cas(&self, key: &str, value: Bytes, prev: Option<&Bytes>) -> R<Cas<Bytes>> {
        let old = prev.cloned().unwrap_or_default();
        let n: i64 = self
            .client
            .evalsha(&self.cas_sha, vec![self.k(key)], vec![old, value.clone()])
            .await
            .map_err(e)?;
        Ok(if n == 1 {
            Cas::Done(value)
        } else {
            Cas::Conflict
        })
    }
    async fn list(&self, dir: &str) -> R<usize> {
        let keys = self.scan_all(format!("{}/*", self.k(dir))).await?;
        if keys.is_empty() {
            return Ok(0);
        }
        let values: Vec<Option<Bytes>> = self.client.mget(keys).await.map_err(e)?;
        Ok(std::hint::black_box(values).len())
    }
    async fn lock_cycle(&self, key: &str) -> R<()> {
        let token = format!("{:016x}", rand::random::<u64>());
        let k = self.k(key);
        let ok: Option<String> = self
            .client
            .set(
                &k,
                token.as_str(),
                Some(Expiration::PX(15_000)),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(e)?;
        if ok.is_none() {
            return Err("lock held by someone else".into());
        }
        let _: i64 = self
            .client
            .evalsha(&self.unlock_sha, vec![k], vec![token])
            .await
            .map_err(e)?;
        Ok(())
    }
    async fn txn(
        &self,
        a: &str,
        b: &str,
        prev: Option<(&Bytes, &Bytes)>,
        value: Bytes,
    ) -> R<Cas<(Bytes, Bytes)>> {
        let (oa, ob) = prev
            .map(|(a, b)| (a.clone(), b.clone()))
            .unwrap_or_default();
        // Each key's new value must be unique to it for the next comparison.
        let mut va = value.to_vec();
        va.extend_from_slice(b"/a");
        let va = Bytes::from(va);
        let mut vb = value.to_vec();
        vb.extend_from_slice(b"/b");
        let vb = Bytes::from(vb);
        let n: i64 = self
            .client
            .evalsha(
                &self.txn_sha,
                vec![self.k(a), self.k(b)],
                vec![oa, ob, va.clone(), vb.clone()],
            )
            .await
            .map_err(e)?;
        Ok(if n == 1 {
            Cas::Done((va, vb))
        } else {
            Cas::Conflict
        })
    }
    async fn watch(&self, key: &str) -> R<Option<mpsc::UnboundedReceiver<()>>> {
        let sub = Builder::from_config(Config::from_url(&self.url).map_err(e)?)
            .build_subscriber_client()
            .map_err(e)?;
        sub.init().await.map_err(e)?;
        let mut messages = sub.keyspace_event_rx();
        sub.subscribe(format!("__keyspace@0__:{}", self.k(key)))
            .await
            .map_err(e)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (reader, watched) = (self.client.clone(), self.k(key));
        tokio::spawn(async move {
            while messages.recv().await.is_ok() {
                // A notification carries no value: read it, as a watcher must.
                match reader.get::<Option<Bytes>, _>(&watched).await {
                    Ok(value) => drop(std::hint::black_box(value)),
                    Err(_) => break,
                }
                if tx.send(()).is_err() {
                    break;
                }
            }
            let _ = sub.quit().await;
        });
        Ok(Some(rx))
    }
}

// ------------------------------------------------------------------------------ embedded --

const RAW: TableDefinition<&str, &[u8]> = TableDefinition::new("raw");

/// redb: reads inline (an MVCC snapshot never blocks), writes on `spawn_blocking` (a commit
/// waits for `fsync`). Values carry an 8-byte version prefix for CAS.
pub struct RawRedb {
    db: Arc<redb::Database>,
}

fn ver_of(v: &[u8]) -> u64 {
    v.get(..8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
        .unwrap_or(0)
}

impl RawRedb {
    /// Creates the database file.
    pub fn open(path: &Path) -> R<Self> {
        let db = redb::Database::create(path).map_err(e)?;
        let w = db.begin_write().map_err(e)?;
        w.open_table(RAW).map_err(e)?;
        w.commit().map_err(e)?;
        Ok(Self { db: Arc::new(db) })
    }
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut redb::Table<&str, &[u8]>) -> R<T> + Send + 'static,
    ) -> R<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let w = db.begin_write().map_err(e)?;
            let out = {
                let mut t = w.open_table(RAW).map_err(e)?;
                f(&mut t)?
            };
            w.commit().map_err(e)?;
            Ok(out)
        })
        .await
        .map_err(e)?
    }
    fn read<T>(&self, f: impl FnOnce(&redb::ReadOnlyTable<&str, &[u8]>) -> R<T>) -> R<T> {
        let r = self.db.begin_read().map_err(e)?;
        let t = r.open_table(RAW).map_err(e)?;
        f(&t)
    }
}

fn versioned(ver: u64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&ver.to_be_bytes());
    v.extend_from_slice(value);
    v
}

impl Target for RawRedb {
    type Ver = u64;

    async fn get(&self, key: &str) -> R<Option<u64>> {
        self.read(|t| {
            Ok(t.get(key).map_err(e)?.map(|v| {
                let v = v.value();
                std::hint::black_box(Bytes::copy_from_slice(&v[8.min(v.len())..]));
                ver_of(v)
            }))
        })
    }
    async fn put(&self, key: &str, value: Bytes) -> R<()> {
        let key = key.to_owned();
        self.write(move |t| {
            let ver = t
                .get(key.as_str())
                .map_err(e)?
                .map(|v| ver_of(v.value()))
                .unwrap_or(0)
                + 1;
            t.insert(key.as_str(), versioned(ver, &value).as_slice())
                .map_err(e)?;
            Ok(())
        })
        .await
    }
    async fn exists(&self, key: &str) -> R<bool> {
        self.read(|t| Ok(t.get(key).map_err(e)?.is_some()))
    }
    async fn delete(&self, key: &str) -> R<bool> {
        let key = key.to_owned();
        self.write(move |t| Ok(t.remove(key.as_str()).map_err(e)?.is_some()))
            .await
    }
    async fn cas(&self, key: &str, value: Bytes, prev: Option<&u64>) -> R<Cas<u64>> {
        let key = key.to_owned();
        let prev = prev.copied();
        self.write(move |t| {
            let cur = t.get(key.as_str()).map_err(e)?.map(|v| ver_of(v.value()));
            if cur != prev {
                return Ok(Cas::Conflict);
            }
            let ver = cur.unwrap_or(0) + 1;
            t.insert(key.as_str(), versioned(ver, &value).as_slice())
                .map_err(e)?;
            Ok(Cas::Done(ver))
        })
        .await
    }
    async fn list(&self, dir: &str) -> R<usize> {
        let start = format!("{dir}/");
        let end = format!("{dir}0"); // '0' follows '/'
        // The listing is collected and returned, as every other raw client's is (and ours).
        self.read(|t| {
            let mut listing = Vec::new();
            for item in t.range(start.as_str()..end.as_str()).map_err(e)? {
                let (k, v) = item.map_err(e)?;
                let v = v.value();
                listing.push((
                    k.value().to_owned(),
                    Bytes::copy_from_slice(&v[8.min(v.len())..]),
                    ver_of(v),
                ));
            }
            Ok(std::hint::black_box(listing).len())
        })
    }
    async fn lock_cycle(&self, key: &str) -> R<()> {
        let k = format!("lock/{key}");
        let k2 = k.clone();
        let got = self
            .write(move |t| {
                if t.get(k.as_str()).map_err(e)?.is_some() {
                    return Ok(false);
                }
                t.insert(k.as_str(), b"holder".as_slice()).map_err(e)?;
                Ok(true)
            })
            .await?;
        if !got {
            return Err("lock held by someone else".into());
        }
        self.write(move |t| t.remove(k2.as_str()).map(drop).map_err(e))
            .await
    }
    async fn txn(
        &self,
        a: &str,
        b: &str,
        prev: Option<(&u64, &u64)>,
        value: Bytes,
    ) -> R<Cas<(u64, u64)>> {
        let (a, b) = (a.to_owned(), b.to_owned());
        let prev = prev.map(|(x, y)| (*x, *y));
        self.write(move |t| {
            let ca = t.get(a.as_str()).map_err(e)?.map(|v| ver_of(v.value()));
            let cb = t.get(b.as_str()).map_err(e)?.map(|v| ver_of(v.value()));
            let ok = match prev {
                None => ca.is_none() && cb.is_none(),
                Some((pa, pb)) => ca == Some(pa) && cb == Some(pb),
            };
            if !ok {
                return Ok(Cas::Conflict);
            }
            let (va, vb) = (ca.unwrap_or(0) + 1, cb.unwrap_or(0) + 1);
            t.insert(a.as_str(), versioned(va, &value).as_slice())
                .map_err(e)?;
            t.insert(b.as_str(), versioned(vb, &value).as_slice())
                .map_err(e)?;
            Ok(Cas::Done((va, vb)))
        })
        .await
    }
    async fn watch(&self, _key: &str) -> R<Option<mpsc::UnboundedReceiver<()>>> {
        Ok(None)
    }
}

// ------------------------------------------------------------------------------ DynamoDB --

/// DynamoDB through `aws-sdk-dynamodb`, in the table ours uses (`pk` + `sk`), under its own
/// partition key.
pub struct RawDynamo {
    client: aws_sdk_dynamodb::Client,
    table: String,
    pk: String,
}

impl RawDynamo {
    /// Connects to `endpoint`; items in `table` under partition `pk`.
    pub async fn connect(endpoint: &str, table: &str, pk: &str) -> R<Self> {
        let var = |n: &str, d: &str| std::env::var(n).unwrap_or_else(|_| d.to_owned());
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(var("AWS_REGION", "us-east-1")))
            .endpoint_url(endpoint)
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                var("AWS_ACCESS_KEY_ID", "kvtest"),
                var("AWS_SECRET_ACCESS_KEY", "kvtest"),
                None,
                None,
                "kv-bench",
            ))
            .load()
            .await;
        Ok(Self {
            client: aws_sdk_dynamodb::Client::new(&sdk),
            table: table.to_owned(),
            pk: pk.to_owned(),
        })
    }
    /// Deletes every item this client wrote (its whole partition), 25 per batch.
    pub async fn clear(&self) -> R<()> {
        use aws_sdk_dynamodb::types::{DeleteRequest, WriteRequest};
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :p")
                .expression_attribute_values(":p", AttributeValue::S(self.pk.clone()))
                .projection_expression("pk, sk")
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|err| format!("{err:?}"))?;
            for chunk in page.items().chunks(25) {
                let deletes = chunk
                    .iter()
                    .map(|item| {
                        let delete = DeleteRequest::builder().set_key(Some(item.clone())).build();
                        Ok(WriteRequest::builder()
                            .delete_request(delete.map_err(e)?)
                            .build())
                    })
                    .collect::<R<Vec<_>>>()?;
                let mut pending = HashMap::from([(self.table.clone(), deletes)]);
                while !pending.is_empty() {
                    let out = self
                        .client
                        .batch_write_item()
                        .set_request_items(Some(pending))
                        .send()
                        .await
                        .map_err(|err| format!("{err:?}"))?;
                    pending = out.unprocessed_items.unwrap_or_default();
                    pending.retain(|_, requests| !requests.is_empty());
                    if !pending.is_empty() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(()),
            }
        }
    }
    fn key(&self, key: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([
            ("pk".to_owned(), AttributeValue::S(self.pk.clone())),
            (
                "sk".to_owned(),
                AttributeValue::S(format!("{}/{key}", self.pk)),
            ),
        ])
    }
    fn item(&self, key: &str, value: &Bytes, ver: u64) -> HashMap<String, AttributeValue> {
        let mut item = self.key(key);
        item.insert("value".into(), AttributeValue::B(value.to_vec().into()));
        item.insert("ver".into(), AttributeValue::N(ver.to_string()));
        item
    }
    fn cond(prev: Option<u64>) -> (String, Option<(String, AttributeValue)>) {
        match prev {
            None => ("attribute_not_exists(pk)".into(), None),
            Some(v) => (
                "ver = :p".into(),
                Some((":p".into(), AttributeValue::N(v.to_string()))),
            ),
        }
    }
}

fn is_conditional<E: std::fmt::Debug>(err: &E) -> bool {
    let s = format!("{err:?}");
    s.contains("ConditionalCheckFailed") || s.contains("TransactionCanceled")
}

impl Target for RawDynamo {
    type Ver = u64;

    async fn get(&self, key: &str) -> R<Option<u64>> {
        let r = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(self.key(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        Ok(r.item().map(|i| {
            std::hint::black_box(i.get("value"));
            i.get("ver")
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        }))
    }
    async fn put(&self, key: &str, value: Bytes) -> R<()> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(self.item(key, &value, rand::random::<u32>() as u64)))
            .send()
            .await
            .map(drop)
            .map_err(|e| format!("{e:?}"))
    }
    async fn exists(&self, key: &str) -> R<bool> {
        let r = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(self.key(key)))
            .consistent_read(true)
            .projection_expression("pk")
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        Ok(r.item().is_some())
    }
    async fn delete(&self, key: &str) -> R<bool> {
        let r = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(self.key(key)))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        Ok(r.attributes().is_some())
    }
    async fn cas(&self, key: &str, value: Bytes, prev: Option<&u64>) -> R<Cas<u64>> {
        let ver = prev.copied().unwrap_or(0) + 1;
        let (cond, val) = Self::cond(prev.copied());
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(self.item(key, &value, ver)))
            .condition_expression(cond);
        if let Some((n, v)) = val {
            req = req.expression_attribute_values(n, v);
        }
        match req.send().await {
            Ok(_) => Ok(Cas::Done(ver)),
            Err(err) if is_conditional(&err) => Ok(Cas::Conflict),
            Err(err) => Err(format!("{err:?}")),
        }
    }
    async fn list(&self, dir: &str) -> R<usize> {
        let mut n = 0;
        let mut start = None;
        loop {
            let r = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("pk = :pk AND begins_with(sk, :dir)")
                .expression_attribute_values(":pk", AttributeValue::S(self.pk.clone()))
                .expression_attribute_values(
                    ":dir",
                    AttributeValue::S(format!("{}/{dir}/", self.pk)),
                )
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
            n += r.items().len();
            start = r.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(n);
            }
        }
    }
    async fn lock_cycle(&self, key: &str) -> R<()> {
        let k = format!("lock/{key}");
        let token = rand::random::<u32>() as u64;
        match self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(self.item(&k, &Bytes::from_static(b"holder"), token)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
        {
            Ok(_) => {}
            Err(err) => return Err(format!("{err:?}")),
        }
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(self.key(&k)))
            .condition_expression("ver = :t")
            .expression_attribute_values(":t", AttributeValue::N(token.to_string()))
            .send()
            .await
            .map(drop)
            .map_err(|e| format!("{e:?}"))
    }
    async fn txn(
        &self,
        a: &str,
        b: &str,
        prev: Option<(&u64, &u64)>,
        value: Bytes,
    ) -> R<Cas<(u64, u64)>> {
        let prevs = [prev.map(|p| *p.0), prev.map(|p| *p.1)];
        let mut items = Vec::new();
        for (key, p) in [a, b].into_iter().zip(prevs) {
            let (cond, val) = Self::cond(p);
            let mut put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(self.item(key, &value, p.unwrap_or(0) + 1)))
                .condition_expression(cond);
            if let Some((n, v)) = val {
                put = put.expression_attribute_values(n, v);
            }
            items.push(
                TransactWriteItem::builder()
                    .put(put.build().map_err(e)?)
                    .build(),
            );
        }
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(Cas::Done((
                prevs[0].unwrap_or(0) + 1,
                prevs[1].unwrap_or(0) + 1,
            ))),
            Err(err) if is_conditional(&err) => Ok(Cas::Conflict),
            Err(err) => Err(format!("{err:?}")),
        }
    }
    async fn watch(&self, _key: &str) -> R<Option<mpsc::UnboundedReceiver<()>>> {
        Ok(None)
    }
}
