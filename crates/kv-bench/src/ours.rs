//! Ours: every operation through `kv_core::Store` (a handle from `kv::connect`).

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use kv_core::{
    Condition, Error, KvPair, LockOptions, ReadOptions, Store, Transaction, WriteOptions,
};
use tokio::sync::mpsc;

use crate::target::{Cas, R, Target};

/// A `Store` handle plus the URL it came from (for the watch case's second handle).
pub struct Ours {
    /// The handle every worker shares.
    pub store: Arc<dyn Store>,
    /// The URL it was opened with.
    pub url: String,
}

impl Ours {
    /// Connects through `kv::connect`.
    pub async fn connect(url: &str) -> R<Self> {
        let store = kv::connect(url)
            .await
            .map_err(|e| format!("kv::connect({url}): {e}"))?;
        Ok(Self {
            store,
            url: url.to_owned(),
        })
    }
}

fn s(e: Error) -> String {
    e.to_string()
}

impl Target for Ours {
    type Ver = KvPair;

    async fn get(&self, key: &str) -> R<Option<KvPair>> {
        self.store.get(key, ReadOptions::default()).await.map_err(s)
    }

    async fn put(&self, key: &str, value: Bytes) -> R<()> {
        self.store
            .put(key, value, WriteOptions::default())
            .await
            .map_err(s)
    }

    async fn exists(&self, key: &str) -> R<bool> {
        self.store
            .exists(key, ReadOptions::default())
            .await
            .map_err(s)
    }

    async fn delete(&self, key: &str) -> R<bool> {
        self.store.delete(key).await.map_err(s)
    }

    async fn cas(&self, key: &str, value: Bytes, prev: Option<&KvPair>) -> R<Cas<KvPair>> {
        match self
            .store
            .atomic_put(key, value, prev, WriteOptions::default())
            .await
        {
            Ok(pair) => Ok(Cas::Done(pair)),
            Err(
                Error::KeyModified { .. } | Error::KeyExists { .. } | Error::KeyNotFound { .. },
            ) => Ok(Cas::Conflict),
            Err(e) => Err(s(e)),
        }
    }

    async fn list(&self, dir: &str) -> R<usize> {
        self.store
            .list(dir, ReadOptions::default())
            .await
            .map(|l| l.len())
            .map_err(s)
    }

    async fn lock_cycle(&self, key: &str) -> R<()> {
        let mut lock = self
            .store
            .new_lock(key, LockOptions::default())
            .await
            .map_err(s)?;
        lock.lock().await.map_err(s)?;
        lock.unlock().await.map_err(s)
    }

    async fn txn(
        &self,
        a: &str,
        b: &str,
        prev: Option<(&KvPair, &KvPair)>,
        value: Bytes,
    ) -> R<Cas<(KvPair, KvPair)>> {
        let txn = match prev {
            None => Transaction::new()
                .when(Condition::absent(a))
                .when(Condition::absent(b)),
            Some((pa, pb)) => Transaction::new()
                .when(Condition::unchanged(pa))
                .when(Condition::unchanged(pb)),
        }
        .put(a, value.clone(), WriteOptions::default())
        .put(b, value, WriteOptions::default());
        match self.store.transaction(txn).await {
            Ok(mut pairs) if pairs.len() == 2 => {
                let pb = pairs.pop().expect("two pairs");
                let pa = pairs.pop().expect("two pairs");
                Ok(Cas::Done((pa, pb)))
            }
            Ok(pairs) => Err(format!("transaction returned {} pairs", pairs.len())),
            Err(Error::ConditionFailed { .. }) => Ok(Cas::Conflict),
            Err(e) => Err(s(e)),
        }
    }

    async fn watch(&self, key: &str) -> R<Option<mpsc::UnboundedReceiver<()>>> {
        // A second handle, as another process would have. A transient failure to connect is
        // tried again twice: the case measures watch latency, not connection set-up (a
        // Consul agent under the previous cases' load refused one now and then).
        let mut attempt = 0;
        let watcher = loop {
            match kv::connect(&self.url).await {
                Ok(store) => break store,
                Err(e) if e.is_transient() && attempt < 2 => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => return Err(s(e)),
            }
        };
        let mut stream = watcher
            .watch(key, ReadOptions::default())
            .await
            .map_err(s)?;
        stream.next().await.ok_or("watch ended")?.map_err(s)?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                if item.is_err() || tx.send(()).is_err() {
                    break;
                }
            }
            let _ = watcher.close().await;
        });
        Ok(Some(rx))
    }
}
