//! [`EtcdStore`]: the [`Store`] implementation.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
};
use kv_core::{
    Capabilities, Error, KvPair, Lock, LockOptions, ReadOptions, Result, Store, TaskSet,
    WatchStream, WatchTreeStream, WriteOptions,
};

use crate::client::{BACKEND, Inner, header_revision, map_error};
use crate::config::Config;
use crate::lock::EtcdLock;
use crate::watch::{self, Mode};

/// etcd's default `--max-request-bytes` (1.5 MiB): the largest request the server accepts.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// Room left in a request for everything but the value: the key (up to three times in a
/// conditional write: compare, put, read-back), the lease, the request header and protobuf
/// framing.
const REQUEST_OVERHEAD: usize = 4096;

/// How much later than its TTL a key may still be visible: TTLs are rounded up to whole
/// seconds (up to 1 s), the leader's lessor checks for expired leases every 500 ms (at best),
/// then revokes them through Raft; the rest is margin for a loaded server.
pub const TTL_PRECISION: Duration = Duration::from_secs(2);

/// A [`Store`] on an etcd v3 cluster (server 3.4 or newer).
///
/// Cheap to share behind an `Arc`; every call is a plain async gRPC request with the
/// configured timeout. See the [crate documentation](crate) for the storage layout and how
/// each part of the contract is met.
pub struct EtcdStore {
    inner: RwLock<Option<Inner>>,
    caps: Arc<Capabilities>,
    tasks: TaskSet,
    config: Config,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.config.endpoints)
            .field("namespace", &self.config.namespace)
            .field("closed", &self.tasks.is_closed())
            .field("background_tasks", &self.tasks.running())
            .finish()
    }
}

impl EtcdStore {
    /// Connects to the cluster and checks that it answers within
    /// [`Config::connect_timeout`]: an unreachable cluster is [`Error::Unavailable`], wrong
    /// credentials are [`Error::PermissionDenied`], unusable settings are [`Error::Config`].
    ///
    /// The check grants (and at once revokes) a 1 s lease to learn the server's minimum lease
    /// TTL, which becomes [`Capabilities::min_ttl`].
    pub async fn connect(config: Config) -> Result<Self> {
        let mut options = ConnectOptions::new().with_connect_timeout(config.connect_timeout);
        if let Some(interval) = config.keep_alive {
            options = options.with_keep_alive(interval, Duration::from_secs(5));
        }
        if let Some(credentials) = &config.credentials {
            options = options
                .with_user(credentials.username.clone(), credentials.password.clone())
                .with_auto_token_refresh(true);
        }
        if let Some(tls) = &config.tls {
            let mut tls_options = TlsOptions::new();
            if let Some(ca) = &tls.ca_cert {
                tls_options = tls_options.ca_certificate(Certificate::from_pem(ca.load().await?));
            }
            if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
                tls_options =
                    tls_options.identity(Identity::from_pem(cert.load().await?, key.load().await?));
            }
            if let Some(domain) = &tls.domain_name {
                tls_options = tls_options.domain_name(domain.clone());
            }
            options = options.with_tls(tls_options);
        }
        let unreachable = || {
            Error::unavailable(
                BACKEND,
                format!(
                    "no endpoint of {:?} answered within {:?}",
                    config.endpoints, config.connect_timeout
                ),
            )
        };
        let client = tokio::time::timeout(
            config.connect_timeout,
            Client::connect(config.endpoint_urls(), Some(options)),
        )
        .await
        .map_err(|_| unreachable())?
        .map_err(|e| map_error(e, "connect", config.connect_timeout))?;

        // Probe: the cluster answers, and what its minimum lease TTL is.
        let mut lease = client.lease_client();
        let granted = tokio::time::timeout(config.connect_timeout, lease.grant(1, None))
            .await
            .map_err(|_| unreachable())?
            .map_err(|e| map_error(e, "connect", config.connect_timeout))?;
        let min_ttl = Duration::from_secs(granted.ttl().max(1) as u64);
        let _ = tokio::time::timeout(config.connect_timeout, lease.revoke(granted.id())).await;

        let prefix = config.key_prefix();
        let mut caps = Capabilities::full(BACKEND);
        caps.min_ttl = min_ttl;
        caps.ttl_precision = TTL_PRECISION;
        caps.max_value_len = DEFAULT_MAX_REQUEST_BYTES
            - REQUEST_OVERHEAD
            - 3 * (prefix.len() + kv_core::key::MAX_KEY_LEN);
        let caps = Arc::new(caps);
        let inner = Inner {
            kv: client
                .kv_client()
                .max_decoding_message_size(config.max_response_bytes),
            watch: client
                .watch_client()
                .max_decoding_message_size(config.max_response_bytes),
            lease: client.lease_client(),
            prefix: prefix.into(),
            timeout: config.request_timeout,
            page_size: i64::from(config.page_size),
        };
        Ok(EtcdStore {
            inner: RwLock::new(Some(inner)),
            caps,
            tasks: TaskSet::new(),
            config,
        })
    }

    /// Connects with a configuration parsed by [`Config::from_url`].
    pub async fn connect_url(url: &str) -> Result<Self> {
        Self::connect(Config::from_url(url)?).await
    }

    /// The configuration this store was connected with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The connection, or [`Error::Closed`].
    pub(crate) fn inner(&self) -> Result<Inner> {
        self.tasks.ensure_open()?;
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(Error::Closed)
    }
}

/// Grants a lease for a key TTL (rounded up to whole seconds).
pub(crate) async fn grant(inner: &Inner, ttl: Duration, operation: &'static str) -> Result<i64> {
    let seconds = kv_core::ttl::whole_seconds_up(ttl) as i64;
    let mut lease = inner.lease.clone();
    let response = inner.call(operation, lease.grant(seconds, None)).await?;
    Ok(response.id())
}

/// Revokes a lease, ignoring every failure (it expires on its own anyway).
pub(crate) async fn revoke_quietly(inner: &Inner, lease_id: i64) {
    let mut lease = inner.lease.clone();
    if let Err(error) = inner.call("lease revoke", lease.revoke(lease_id)).await {
        tracing::debug!(%error, lease_id, "revoking a lease failed");
    }
}

fn put_options(lease: Option<i64>) -> Option<PutOptions> {
    lease.map(|id| PutOptions::new().with_lease(id))
}

/// Whether the `or_else` read-back of a failed transaction found the key.
fn read_back_found(response: &etcd_client::TxnResponse) -> bool {
    response.op_responses().iter().any(|op| match op {
        TxnOpResponse::Get(get) => !get.kvs().is_empty(),
        _ => false,
    })
}

#[async_trait]
impl Store for EtcdStore {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn put(&self, key: &str, value: Bytes, options: WriteOptions) -> Result<()> {
        let inner = self.inner()?;
        let key = self.caps.check_key(key)?;
        self.caps.check_value(&key, &value)?;
        let ttl = self.caps.check_ttl(options.ttl)?;
        let lease = match ttl {
            Some(ttl) => Some(grant(&inner, ttl, "put").await?),
            None => None,
        };
        // On failure the lease is left to expire: the put may have been applied (a timeout),
        // and revoking would then delete the key, an outcome nobody asked for.
        let mut kv = inner.kv.clone();
        inner
            .call(
                "put",
                kv.put(inner.full_key(&key), Vec::from(value), put_options(lease)),
            )
            .await?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn get(&self, key: &str, options: ReadOptions) -> Result<Option<KvPair>> {
        let inner = self.inner()?;
        let key = self.caps.check_key(key)?;
        let mut get_options = GetOptions::new();
        if !options.consistent {
            get_options = get_options.with_serializable();
        }
        let mut kv = inner.kv.clone();
        let response = inner
            .call("get", kv.get(inner.full_key(&key), Some(get_options)))
            .await?;
        Ok(response.kvs().first().and_then(|kv| inner.to_pair(kv)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn delete(&self, key: &str) -> Result<bool> {
        let inner = self.inner()?;
        let key = self.caps.check_key(key)?;
        let mut kv = inner.kv.clone();
        let response = inner
            .call("delete", kv.delete(inner.full_key(&key), None))
            .await?;
        Ok(response.deleted() > 0)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn exists(&self, key: &str, options: ReadOptions) -> Result<bool> {
        let inner = self.inner()?;
        let key = self.caps.check_key(key)?;
        let mut get_options = GetOptions::new().with_count_only();
        if !options.consistent {
            get_options = get_options.with_serializable();
        }
        let mut kv = inner.kv.clone();
        let response = inner
            .call("exists", kv.get(inner.full_key(&key), Some(get_options)))
            .await?;
        Ok(response.count() > 0)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, directory = %directory))]
    async fn list(&self, directory: &str, options: ReadOptions) -> Result<Vec<KvPair>> {
        let inner = self.inner()?;
        let directory = self.caps.check_directory(directory)?;
        let (start, end) = inner.subtree_range(&directory);
        let (kvs, _) = inner
            .range_all(start, end, options.consistent, "list")
            .await?;
        Ok(kvs.iter().filter_map(|kv| inner.to_pair(kv)).collect())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, directory = %directory))]
    async fn delete_tree(&self, directory: &str) -> Result<()> {
        let inner = self.inner()?;
        let directory = self.caps.check_directory(directory)?;
        let (start, end) = inner.subtree_range(&directory);
        let below = TxnOp::delete(start, Some(DeleteOptions::new().with_range(end)));
        let mut ops = vec![below];
        if !directory.is_empty() {
            ops.push(TxnOp::delete(inner.full_key(&directory), None));
        }
        let mut kv = inner.kv.clone();
        inner
            .call("delete_tree", kv.txn(Txn::new().and_then(ops)))
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
        let inner = self.inner()?;
        let key = self.caps.check_key(key)?;
        self.caps.check_value(&key, &value)?;
        let ttl = self.caps.check_ttl(options.ttl)?;
        let full = inner.full_key(&key);
        let compare = match previous {
            None => Compare::create_revision(full.clone(), CompareOp::Equal, 0),
            Some(previous) => Compare::mod_revision(
                full.clone(),
                CompareOp::Equal,
                i64::try_from(previous.last_index).unwrap_or(i64::MAX),
            ),
        };
        let lease = match ttl {
            Some(ttl) => Some(grant(&inner, ttl, "atomic_put").await?),
            None => None,
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(full.clone(), value.to_vec(), put_options(lease))])
            .or_else([TxnOp::get(full, Some(GetOptions::new().with_keys_only()))]);
        // On a failed request the lease is left to expire (see `put`).
        let mut kv = inner.kv.clone();
        let response = inner.call("atomic_put", kv.txn(txn)).await?;
        if response.succeeded() {
            return Ok(KvPair {
                key,
                value,
                last_index: header_revision(response.header()) as u64,
            });
        }
        if let Some(id) = lease {
            revoke_quietly(&inner, id).await;
        }
        Err(match (previous, read_back_found(&response)) {
            (None, _) => Error::KeyExists { key },
            (Some(_), false) => Error::KeyNotFound { key },
            (Some(_), true) => Error::KeyModified { key },
        })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()> {
        let inner = self.inner()?;
        let key = self.caps.check_key(key)?;
        let full = inner.full_key(&key);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                full.clone(),
                CompareOp::Equal,
                i64::try_from(previous.last_index).unwrap_or(i64::MAX),
            )])
            .and_then([TxnOp::delete(full.clone(), None)])
            .or_else([TxnOp::get(full, Some(GetOptions::new().with_keys_only()))]);
        let mut kv = inner.kv.clone();
        let response = inner.call("atomic_delete", kv.txn(txn)).await?;
        if response.succeeded() {
            Ok(())
        } else if read_back_found(&response) {
            Err(Error::KeyModified { key })
        } else {
            Err(Error::KeyNotFound { key })
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn watch(&self, key: &str, options: ReadOptions) -> Result<WatchStream> {
        let inner = self.inner()?;
        let key = self.caps.check_key(key)?;
        let mode = Mode::Key(inner.full_key(&key));
        Ok(kv_core::spawn_watch(&self.tasks, move |tx| {
            watch::run::<Option<KvPair>>(inner, mode, options.consistent, tx)
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, directory = %directory))]
    async fn watch_tree(&self, directory: &str, options: ReadOptions) -> Result<WatchTreeStream> {
        let inner = self.inner()?;
        let directory = self.caps.check_directory(directory)?;
        let (start, end) = inner.subtree_range(&directory);
        let mode = Mode::Tree(start, end);
        Ok(kv_core::spawn_watch(&self.tasks, move |tx| {
            watch::run::<Vec<KvPair>>(inner, mode, options.consistent, tx)
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn new_lock(&self, key: &str, options: LockOptions) -> Result<Lock> {
        let inner = self.inner()?;
        let key = self.caps.check_lock(key, &options)?;
        let backend = EtcdLock::new(inner, self.tasks.clone(), key.clone(), options);
        Ok(Lock::new(key, Arc::new(backend), self.tasks.clone()))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn close(&self) -> Result<()> {
        // Releases held locks (their own connection handles stay usable for that), then
        // cancels every task.
        self.tasks.close(self.config.request_timeout).await;
        // Drop this handle's gRPC clients: the connection closes once in-flight calls end.
        self.inner.write().unwrap_or_else(|e| e.into_inner()).take();
        Ok(())
    }

    fn background_tasks(&self) -> usize {
        self.tasks.running()
    }
}
