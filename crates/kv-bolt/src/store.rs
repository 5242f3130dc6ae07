//! [`BoltStore`]: the [`Store`] implementation.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kv_core::ttl::deadline_millis;
use kv_core::{
    Capabilities, Error, KvPair, Lock, LockOptions, Operation, ReadOptions, Result, Store, TaskSet,
    Transaction, WatchStream, WatchTreeStream, WriteOptions,
};

use crate::config::Config;
use crate::engine::{BACKEND, Batch, Conflict, Engine, Entry};
use crate::lock::BoltLock;
use crate::watch;

/// How many keys `list` reads on the caller's thread before it moves to the blocking pool
/// (a few hundred microseconds of work at most).
const INLINE_LIST_MAX: usize = 2048;
/// How long `close` waits for each held lock's release.
const RELEASE_LIMIT: Duration = Duration::from_secs(5);

/// A handle to an embedded database. See the [crate documentation](crate).
///
/// Each handle has its own background tasks and locks; several handles (from
/// [`BoltStore::open`] on the same path, or [`BoltStore::handle`]) share one database and see
/// each other's writes, watches and locks at once. Closing or dropping a handle does not affect
/// the others; the database closes when its last handle goes.
pub struct BoltStore {
    inner: Arc<Handle>,
}

/// What a handle's tasks and locks reach it through.
pub(crate) struct Handle {
    pub(crate) config: Config,
    pub(crate) caps: Capabilities,
    pub(crate) tasks: TaskSet,
    /// `None` once closed.
    engine: RwLock<Option<Arc<Engine>>>,
    /// Stored-key prefix of the namespace (`""` or `"ns/"`).
    pub(crate) prefix: String,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // A handle dropped without `close`: stop its tasks (lock renewals included: its locks
        // then expire by their TTL, like a crashed process's).
        self.tasks.shutdown_token().cancel();
    }
}

impl fmt::Debug for BoltStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoltStore")
            .field("config", &self.inner.config)
            .field("closed", &self.inner.tasks.is_closed())
            .finish_non_exhaustive()
    }
}

/// The capabilities of this backend.
pub(crate) fn capabilities() -> Capabilities {
    let mut caps = Capabilities::full(BACKEND);
    // redb takes values up to 3 GiB; 16 MiB is tested and keeps one write transaction short.
    caps.max_value_len = 16 * 1024 * 1024;
    // Expiry is enforced on every read with the wall clock: short TTLs are exact.
    caps.min_ttl = Duration::from_millis(100);
    // Reads filter to the millisecond; watchers arm a timer for each deadline. 100 ms covers
    // timer and scheduling delays on a loaded machine.
    caps.ttl_precision = Duration::from_millis(100);
    // One redb write transaction holds any number of operations; 1,024 keeps one request's
    // share of a group commit bounded. Watchers get one change per commit.
    caps.with_transactions(1024, true)
}

impl Handle {
    pub(crate) fn engine(&self) -> Result<Arc<Engine>> {
        self.tasks.ensure_open()?;
        self.engine
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(Error::Closed)
    }

    pub(crate) fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// Runs a blocking engine call on the blocking pool, within `timeout`.
pub(crate) async fn blocking<T, F>(
    engine: Arc<Engine>,
    timeout: Duration,
    operation: &'static str,
    call: F,
) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Engine) -> Result<T> + Send + 'static,
{
    let task = tokio::task::spawn_blocking(move || call(&engine));
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(Error::backend(
            BACKEND,
            format!("{operation} failed inside the database: {join}"),
        )),
        Err(_) => Err(Error::Timeout {
            backend: BACKEND,
            operation,
            after: timeout,
        }),
    }
}

impl BoltStore {
    /// Opens the database `config` describes, or joins it when another handle of this process
    /// has it open. Fails with [`Error::Config`] for a path that cannot hold a database,
    /// [`Error::PermissionDenied`] for an unwritable one, [`Error::Unavailable`] when another
    /// process keeps it locked for longer than [`Config::lock_timeout`].
    pub async fn open(config: Config) -> Result<Self> {
        let cfg = config.clone();
        let engine = tokio::task::spawn_blocking(move || Engine::open(&cfg))
            .await
            .map_err(|e| {
                Error::backend(BACKEND, format!("opening the database panicked: {e}"))
            })??;
        Ok(Self::with_engine(config, engine))
    }

    /// Same as [`open`](Self::open): the name every backend's constructor has.
    pub async fn connect(config: Config) -> Result<Self> {
        Self::open(config).await
    }

    fn with_engine(config: Config, engine: Arc<Engine>) -> Self {
        let prefix = config.key_prefix();
        BoltStore {
            inner: Arc::new(Handle {
                config,
                caps: capabilities(),
                tasks: TaskSet::new(),
                engine: RwLock::new(Some(engine)),
                prefix,
            }),
        }
    }

    /// A new, independent handle on the same database (own tasks, own locks, closed
    /// separately): the way to share a temporary database.
    pub fn handle(&self) -> Result<Self> {
        let engine = self.inner.engine()?;
        Ok(Self::with_engine(self.inner.config.clone(), engine))
    }

    /// This handle's configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The database directory (empty for a temporary database held in memory).
    pub fn path(&self) -> Result<PathBuf> {
        Ok(self.inner.engine()?.path().to_path_buf())
    }

    /// Every key physically stored in this namespace, sorted, **including expired keys the
    /// background sweeper has not removed yet** (readers never see those). For diagnostics and
    /// tests.
    pub async fn stored_keys(&self) -> Result<Vec<String>> {
        let engine = self.inner.engine()?;
        let prefix = self.inner.prefix.clone();
        let keys = blocking(engine, self.inner.config.timeout, "stored_keys", move |e| {
            e.stored_keys(&prefix)
        })
        .await?;
        Ok(keys
            .into_iter()
            .map(|k| k[self.inner.prefix.len()..].to_owned())
            .collect())
    }

    /// Writes everything to disk now, whatever the [`Durability`](crate::Durability).
    pub async fn flush(&self) -> Result<()> {
        let engine = self.inner.engine()?;
        engine.flush(self.inner.config.timeout).await
    }

    async fn write<T, F>(&self, operation: &'static str, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Batch<'_>) -> Result<T> + Send + 'static,
    {
        let engine = self.inner.engine()?;
        engine
            .write(self.inner.config.timeout, operation, job)
            .await
    }

    fn deadline(&self, ttl: Option<Duration>) -> Result<u64> {
        Ok(self
            .inner
            .caps
            .check_ttl(ttl)?
            .map(deadline_millis)
            .unwrap_or(0))
    }
}

#[async_trait]
impl Store for BoltStore {
    fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn put(&self, key: &str, value: Bytes, options: WriteOptions) -> Result<()> {
        self.inner.tasks.ensure_open()?;
        let key = self.inner.caps.check_key(key)?;
        self.inner.caps.check_value(&key, &value)?;
        let deadline = self.deadline(options.ttl)?;
        let full = self.inner.full_key(&key);
        self.write("put", move |b| b.put(full, value, deadline))
            .await?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn get(&self, key: &str, _options: ReadOptions) -> Result<Option<KvPair>> {
        self.inner.tasks.ensure_open()?;
        let key = self.inner.caps.check_key(key)?;
        let full = self.inner.full_key(&key);
        // A read is a snapshot lookup in redb's cache: cheaper than any thread hop.
        let (entry, _) = self.inner.engine()?.get(&full)?;
        Ok(entry.map(|entry| KvPair {
            key,
            value: entry.value,
            last_index: entry.index,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn exists(&self, key: &str, _options: ReadOptions) -> Result<bool> {
        self.inner.tasks.ensure_open()?;
        let key = self.inner.caps.check_key(key)?;
        let full = self.inner.full_key(&key);
        self.inner.engine()?.exists(&full)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn delete(&self, key: &str) -> Result<bool> {
        self.inner.tasks.ensure_open()?;
        let key = self.inner.caps.check_key(key)?;
        let full = self.inner.full_key(&key);
        self.write("delete", move |b| b.delete(full)).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, directory = %directory))]
    async fn list(&self, directory: &str, _options: ReadOptions) -> Result<Vec<KvPair>> {
        self.inner.tasks.ensure_open()?;
        let directory = self.inner.caps.check_directory(directory)?;
        let prefix = self.inner.full_key(&kv_core::key::child_prefix(&directory));
        // One snapshot for the whole listing. A short listing is read right here (a thread
        // hop would cost more than the scan); a long one goes on to the blocking pool so no
        // runtime thread is held for long.
        let snapshot = self.inner.engine()?.snapshot()?;
        let strip = self.inner.prefix.len();
        let to_pair = move |key: &str, entry: Entry| KvPair {
            key: key[strip..].to_owned(),
            value: entry.value,
            last_index: entry.index,
        };
        let mut pairs = Vec::new();
        let rest = snapshot.scan(&prefix, None, INLINE_LIST_MAX, |k, e| {
            pairs.push(to_pair(k, e))
        })?;
        let Some(from) = rest else {
            return Ok(pairs);
        };
        let task = tokio::task::spawn_blocking(move || {
            snapshot
                .scan(&prefix, Some(&from), usize::MAX, |k, e| {
                    pairs.push(to_pair(k, e))
                })
                .map(|_| pairs)
        });
        let timeout = self.inner.config.timeout;
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(Error::backend(
                BACKEND,
                format!("list failed inside the database: {join}"),
            )),
            Err(_) => Err(Error::Timeout {
                backend: BACKEND,
                operation: "list",
                after: timeout,
            }),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, directory = %directory))]
    async fn delete_tree(&self, directory: &str) -> Result<()> {
        self.inner.tasks.ensure_open()?;
        let directory = self.inner.caps.check_directory(directory)?;
        let exact = (!directory.is_empty()).then(|| self.inner.full_key(&directory));
        let prefix = self.inner.full_key(&kv_core::key::child_prefix(&directory));
        self.write("delete_tree", move |b| b.delete_tree(exact, &prefix))
            .await?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn atomic_put(
        &self,
        key: &str,
        value: Bytes,
        previous: Option<&KvPair>,
        options: WriteOptions,
    ) -> Result<KvPair> {
        self.inner.tasks.ensure_open()?;
        let key = self.inner.caps.check_key(key)?;
        self.inner.caps.check_value(&key, &value)?;
        let deadline = self.deadline(options.ttl)?;
        let full = self.inner.full_key(&key);
        let previous = previous.map(|p| p.last_index);
        let outcome = self
            .write("atomic_put", move |b| {
                b.atomic_put(full, value, previous, deadline)
            })
            .await?;
        match outcome {
            Ok(entry) => Ok(KvPair {
                key,
                value: entry.value,
                last_index: entry.index,
            }),
            Err(Conflict::Exists(_)) => Err(Error::KeyExists { key }),
            Err(Conflict::NotFound) => Err(Error::KeyNotFound { key }),
            Err(Conflict::Modified) => Err(Error::KeyModified { key }),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn transaction(&self, txn: Transaction) -> Result<Vec<KvPair>> {
        self.inner.tasks.ensure_open()?;
        let txn = self.inner.caps.check_transaction(txn)?;
        let mut deadlines = Vec::with_capacity(txn.operations().len());
        for operation in txn.operations() {
            deadlines.push(match operation {
                Operation::Put { options, .. } => self.deadline(options.ttl)?,
                _ => 0,
            });
        }
        let keys: Vec<String> = txn
            .conditions()
            .iter()
            .map(|c| c.key())
            .chain(txn.operations().iter().map(|o| o.key()))
            .map(|key| self.inner.full_key(key))
            .collect();
        let txn = Arc::new(txn);
        let applied = txn.clone();
        let index = self
            .write("transaction", move |b| {
                b.transaction(&applied, keys, deadlines)
            })
            .await??;
        Ok(txn
            .operations()
            .iter()
            .filter_map(|operation| match operation {
                Operation::Put { key, value, .. } => Some(KvPair {
                    key: key.clone(),
                    value: value.clone(),
                    last_index: index,
                }),
                _ => None,
            })
            .collect())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()> {
        self.inner.tasks.ensure_open()?;
        let key = self.inner.caps.check_key(key)?;
        let full = self.inner.full_key(&key);
        let previous = previous.last_index;
        match self
            .write("atomic_delete", move |b| b.atomic_delete(full, previous))
            .await?
        {
            Ok(()) => Ok(()),
            Err(Conflict::NotFound) | Err(Conflict::Exists(_)) => Err(Error::KeyNotFound { key }),
            Err(Conflict::Modified) => Err(Error::KeyModified { key }),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn watch(&self, key: &str, _options: ReadOptions) -> Result<WatchStream> {
        self.inner.tasks.ensure_open()?;
        let key = self.inner.caps.check_key(key)?;
        let engine = self.inner.engine()?;
        watch::watch_key(&self.inner, engine, self.inner.full_key(&key)).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, directory = %directory))]
    async fn watch_tree(&self, directory: &str, _options: ReadOptions) -> Result<WatchTreeStream> {
        self.inner.tasks.ensure_open()?;
        let directory = self.inner.caps.check_directory(directory)?;
        let engine = self.inner.engine()?;
        let prefix = self.inner.full_key(&kv_core::key::child_prefix(&directory));
        watch::watch_tree(&self.inner, engine, prefix).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn new_lock(&self, key: &str, options: LockOptions) -> Result<Lock> {
        self.inner.tasks.ensure_open()?;
        let key = self.inner.caps.check_lock(key, &options)?;
        let backend = BoltLock::new(&self.inner, self.inner.full_key(&key), options);
        Ok(Lock::new(key, Arc::new(backend), self.inner.tasks.clone()))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn close(&self) -> Result<()> {
        // Returns once the cancelled tasks have stopped, so they no longer hold the database:
        // the last reference is normally ours, dropped below off the runtime.
        self.inner.tasks.close(RELEASE_LIMIT).await;
        let engine = self
            .inner
            .engine
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(engine) = engine {
            // Flush, and drop our reference off the runtime: if it is the last one, the
            // writer thread finishes and the file is closed, which blocks briefly.
            if let Err(error) = engine.flush(self.inner.config.timeout).await {
                tracing::warn!(%error, "kv-bolt: flushing on close failed");
            }
            let _ = tokio::task::spawn_blocking(move || drop(engine)).await;
        }
        Ok(())
    }

    fn background_tasks(&self) -> usize {
        self.inner.tasks.running()
    }
}
