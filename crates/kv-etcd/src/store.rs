//! [`EtcdStore`]: the [`Store`] implementation.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
};
use kv_core::{
    Capabilities, Error, KvPair, Lock, LockOptions, ReadOptions, Result, Store, TaskSet,
    Transaction, WatchStream, WatchTreeStream, WriteOptions,
};

use crate::client::{BACKEND, Inner, header_revision, map_error};
use crate::clock::ServerClock;
use crate::config::Config;
use crate::lease;
use crate::lock::EtcdLock;
use crate::tree;
use crate::txn;
use crate::watch::{self, Mode};

/// etcd's default `--max-request-bytes` (1.5 MiB): the largest request the server accepts.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// Room left in a request for everything but the value: the key (up to three times in a
/// conditional write: compare, put, read-back), the lease, the request header and protobuf
/// framing.
const REQUEST_OVERHEAD: usize = 4096;

/// How much later than its TTL a key may still be visible. etcd itself deletes a key when
/// its lease expires: TTLs are rounded up to whole seconds (up to 1 s), the leader's lessor
/// checks for expired leases every 500 ms (at best), then revokes them through Raft
/// (measured: within 2 s). When etcd is late (after a restart it restores leases to their full
/// TTL), this crate's readers drop the key once the server's clock is certainly past its
/// deadline, which the writer set no earlier than due: late by at most the writer's plus the
/// reader's uncertainty about the server's time, each at most [`CLOCK_TOLERANCE`] (typically
/// about 0.1 s once a handle has refined its estimate), plus the revocation (see
/// [TTLs and clocks](crate#ttls-and-clocks)).
pub const TTL_PRECISION: Duration = Duration::from_secs(3);

/// The widest uncertainty about the etcd server's current time that a handle acts on. Each
/// handle estimates the server's time from the `Date` header of HTTP answers (whole seconds,
/// so 1 s plus the round trip at first, narrowed to about 0.1 s plus the round trip by a few
/// well-timed probes after connecting). Writers put TTL deadlines at the latest the server's
/// time can be + the TTL, readers hide a key once the earliest the server's time can be is
/// past its deadline: no key is ever hidden early, and one is hidden at most twice this late.
/// A handle whose estimate is wider than this (no answer yet, round trips over 250 ms) neither
/// writes deadlines nor hides keys by them. The clients' own clocks play no part.
pub const CLOCK_TOLERANCE: Duration = Duration::from_millis(1250);

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

        // The server's clock, for TTL deadlines: sampled now, then kept fresh in the
        // background. Failing to read it is no connection error (see `crate::clock`).
        let clock = ServerClock::new(&config).await;
        clock.start(config.connect_timeout).await;

        let prefix = config.key_prefix();
        let mut caps = Capabilities::full(BACKEND);
        caps.min_ttl = min_ttl;
        caps.ttl_precision = TTL_PRECISION;
        caps.max_value_len = DEFAULT_MAX_REQUEST_BYTES
            - REQUEST_OVERHEAD
            - 3 * (prefix.len() + kv_core::key::MAX_KEY_LEN);
        // One etcd `Txn` per transaction, within etcd's default `--max-txn-ops`; `watch_tree`
        // publishes one snapshot per etcd revision, and a `Txn` is one revision.
        let caps = Arc::new(caps.with_transactions(tree::MAX_TXN_OPS, true));
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
            clock,
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

/// Grants a lease with a server-chosen ID (rounded up to whole seconds): the lease of a lock,
/// kept alive while held, so its ID carries no deadline (TTL writes use
/// [`lease::grant_ttl`]).
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

/// The key as the `or_else` read-back of a failed transaction found it.
fn read_back(response: &etcd_client::TxnResponse) -> Option<KeyValue> {
    response.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(mut get) => get.take_kvs().into_iter().next(),
        _ => None,
    })
}

/// What a conditional write requires of the key's current version.
#[derive(Debug, Clone, Copy)]
enum Condition {
    /// Absent (never created, deleted).
    Absent,
    /// This version, found expired (its TTL lease is past its deadline but etcd has not
    /// deleted it yet): writing over exactly it is a create.
    Expired { revision: i64, lease: i64 },
    /// The caller's version (`mod_revision`), not expired; `lease`: exactly this lease, once
    /// the lease comparison failed on a lease that is not an expired one of ours.
    Unchanged { revision: i64, lease: Option<i64> },
}

impl Condition {
    fn unchanged(previous: &KvPair) -> Self {
        Condition::Unchanged {
            revision: i64::try_from(previous.last_index).unwrap_or(i64::MAX),
            lease: None,
        }
    }

    fn compares(self, key: &[u8], clock: &Arc<ServerClock>) -> Vec<Compare> {
        let key = key.to_vec();
        match self {
            Condition::Absent => vec![Compare::create_revision(key, CompareOp::Equal, 0)],
            Condition::Expired { revision, lease } => vec![
                Compare::mod_revision(key.clone(), CompareOp::Equal, revision),
                Compare::lease(key, CompareOp::Equal, lease),
            ],
            Condition::Unchanged { revision, lease } => {
                let mut compares = vec![Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    revision,
                )];
                match (lease, lease::expired_below(clock)) {
                    (Some(lease), _) => {
                        compares.push(Compare::lease(key, CompareOp::Equal, lease));
                    }
                    // Not bound to one of our TTL leases past its deadline (etcd compares
                    // lease IDs as integers; see `lease::expired_below`).
                    (None, Some(bound)) => {
                        compares.push(Compare::lease(key, CompareOp::Greater, bound - 1));
                    }
                    // The server's time is unknown: nothing counts as expired.
                    (None, None) => {}
                }
                compares
            }
        }
    }

    /// After a failed transaction that read the key back as `current`: the condition to try
    /// next, or the error to report. Expired keys' leases go to `expired`.
    fn next(
        self,
        current: Option<&KeyValue>,
        expired: &mut Vec<i64>,
        clock: &Arc<ServerClock>,
    ) -> Result<Self, Outcome> {
        let Some(kv) = current else {
            return match self {
                // Deleted meanwhile (revoked by a reader): create it.
                Condition::Absent | Condition::Expired { .. } => Ok(Condition::Absent),
                Condition::Unchanged { .. } => Err(Outcome::NotFound),
            };
        };
        if lease::is_expired(clock, kv.lease()) {
            expired.push(kv.lease());
            return match self {
                Condition::Absent | Condition::Expired { .. } => Ok(Condition::Expired {
                    revision: kv.mod_revision(),
                    lease: kv.lease(),
                }),
                Condition::Unchanged { .. } => Err(Outcome::NotFound),
            };
        }
        match self {
            Condition::Absent | Condition::Expired { .. } => Err(Outcome::Exists),
            Condition::Unchanged {
                revision,
                lease: None,
            } if kv.mod_revision() == revision => Ok(Condition::Unchanged {
                revision,
                lease: Some(kv.lease()),
            }),
            Condition::Unchanged { .. } => Err(Outcome::Modified),
        }
    }
}

/// Why a conditional write failed.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Exists,
    NotFound,
    Modified,
}

impl Outcome {
    fn error(self, key: String) -> Error {
        match self {
            Outcome::Exists => Error::KeyExists { key },
            Outcome::NotFound => Error::KeyNotFound { key },
            Outcome::Modified => Error::KeyModified { key },
        }
    }
}

/// How many transactions a conditional write sends at most (a retry happens only around an
/// expired key or a foreign lease).
const CONDITIONAL_ATTEMPTS: usize = 3;

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
            Some(ttl) => Some(lease::grant_ttl(&inner, ttl, "put").await?),
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
        let (mut pairs, expired) = inner.visible(response.kvs());
        lease::revoke_all(&inner, expired).await;
        Ok(pairs.pop())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn delete(&self, key: &str) -> Result<bool> {
        let inner = self.inner()?;
        let key = self.caps.check_key(key)?;
        let full = inner.full_key(&key);
        // The deleted pair comes back with the delete (`prev_kv`), so one plain request
        // tells whether the key existed: deleting an expired key (see `crate::lease`) deletes
        // nothing that existed. (A read-then-delete transaction cost twice as much.)
        let mut kv = inner.kv.clone();
        let response = inner
            .call(
                "delete",
                kv.delete(full, Some(DeleteOptions::new().with_prev_key())),
            )
            .await?;
        let existed = response
            .prev_kvs()
            .iter()
            .any(|kv| !lease::is_expired(&inner.clock, kv.lease()));
        Ok(existed)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn exists(&self, key: &str, options: ReadOptions) -> Result<bool> {
        let inner = self.inner()?;
        let key = self.caps.check_key(key)?;
        // Keys only, not a count: the lease tells whether the key is expired.
        let mut get_options = GetOptions::new().with_keys_only();
        if !options.consistent {
            get_options = get_options.with_serializable();
        }
        let mut kv = inner.kv.clone();
        let response = inner
            .call("exists", kv.get(inner.full_key(&key), Some(get_options)))
            .await?;
        let (pairs, expired) = inner.visible(response.kvs());
        lease::revoke_all(&inner, expired).await;
        Ok(!pairs.is_empty())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, directory = %directory))]
    async fn list(&self, directory: &str, options: ReadOptions) -> Result<Vec<KvPair>> {
        let inner = self.inner()?;
        let directory = self.caps.check_directory(directory)?;
        let (start, end) = inner.subtree_range(&directory);
        let (kvs, _) = inner
            .range_all(start, end, options.consistent, false, "list")
            .await?;
        let (pairs, expired) = inner.visible(&kvs);
        lease::revoke_all(&inner, expired).await;
        Ok(pairs)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, directory = %directory))]
    async fn delete_tree(&self, directory: &str) -> Result<()> {
        let inner = self.inner()?;
        let directory = self.caps.check_directory(directory)?;
        let (start, end) = inner.subtree_range(&directory);
        let directory_key = (!directory.is_empty()).then(|| inner.full_key(&directory));
        tree::delete_tree(&inner, start, end, directory_key).await
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
        let lease = match ttl {
            Some(ttl) => Some(lease::grant_ttl(&inner, ttl, "atomic_put").await?),
            None => None,
        };
        let mut condition = previous.map_or(Condition::Absent, Condition::unchanged);
        let mut expired = Vec::new();
        let mut attempts = 0;
        let outcome = loop {
            attempts += 1;
            let txn = Txn::new()
                .when(condition.compares(&full, &inner.clock))
                .and_then([TxnOp::put(full.clone(), value.to_vec(), put_options(lease))])
                .or_else([TxnOp::get(
                    full.clone(),
                    Some(GetOptions::new().with_keys_only()),
                )]);
            // On a failed request the lease is left to expire (see `put`).
            let mut kv = inner.kv.clone();
            let response = inner.call("atomic_put", kv.txn(txn)).await?;
            if response.succeeded() {
                lease::revoke_all(&inner, expired).await;
                return Ok(KvPair {
                    key,
                    value,
                    last_index: header_revision(response.header()) as u64,
                });
            }
            match condition.next(read_back(&response).as_ref(), &mut expired, &inner.clock) {
                Ok(next) if attempts < CONDITIONAL_ATTEMPTS => condition = next,
                Ok(_) if previous.is_none() => break Outcome::Exists,
                Ok(_) => break Outcome::Modified,
                Err(outcome) => break outcome,
            }
        };
        expired.extend(lease);
        lease::revoke_all(&inner, expired).await;
        Err(outcome.error(key))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()> {
        let inner = self.inner()?;
        let key = self.caps.check_key(key)?;
        let full = inner.full_key(&key);
        let mut condition = Condition::unchanged(previous);
        let mut expired = Vec::new();
        let mut attempts = 0;
        let outcome = loop {
            attempts += 1;
            let txn = Txn::new()
                .when(condition.compares(&full, &inner.clock))
                .and_then([TxnOp::delete(full.clone(), None)])
                .or_else([TxnOp::get(
                    full.clone(),
                    Some(GetOptions::new().with_keys_only()),
                )]);
            let mut kv = inner.kv.clone();
            let response = inner.call("atomic_delete", kv.txn(txn)).await?;
            if response.succeeded() {
                return Ok(());
            }
            match condition.next(read_back(&response).as_ref(), &mut expired, &inner.clock) {
                Ok(next) if attempts < CONDITIONAL_ATTEMPTS => condition = next,
                Ok(_) => break Outcome::Modified,
                Err(outcome) => break outcome,
            }
        };
        lease::revoke_all(&inner, expired).await;
        Err(outcome.error(key))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn transaction(&self, txn: Transaction) -> Result<Vec<KvPair>> {
        let txn = self.caps.check_transaction(txn)?;
        let inner = self.inner()?;
        txn::commit(&inner, txn).await
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
