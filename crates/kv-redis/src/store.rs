//! [`RedisStore`]: the [`Store`] implementation.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::{
    Builder, ClientLike, ConfigInterface, Error as FredError, ErrorKind, EventInterface,
    KeysInterface, ReconnectPolicy, ServerConfig, ServerInterface,
};
use fred::types::config::{Config as FredConfig, TlsConfig as FredTlsConfig, UnresponsiveConfig};
use fred::types::scan::ScanType;
use fred::types::{ConnectHandle, Value};
use futures::{StreamExt, TryStreamExt};
use kv_core::{
    Capabilities, Condition, ConditionFailure, Error, KvPair, Lock, LockOptions, Operation,
    ReadOptions, Result, Store, TaskSet, Transaction, WatchStream, WatchTreeStream, WriteOptions,
    key,
};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::config::{Config, Topology, parse_endpoint};
use crate::scripts::SCRIPTS;
use crate::watch::Subscriptions;

pub(crate) const BACKEND: &str = "redis";

/// How many keys are read or deleted concurrently by `list`, `watch_tree` and `delete_tree`.
pub const BATCH: usize = 64;

/// The most conditions plus operations one [`Store::transaction`] may hold
/// ([`Capabilities::max_transaction_ops`]). Redis itself has no such limit (a script may name
/// thousands of keys), but the script runs while the server serves nobody else: 128 keeps
/// that pause short, and matches etcd's default so that programs move between backends.
pub const MAX_TRANSACTION_OPS: usize = 128;

/// `SCAN ... COUNT` hint.
const SCAN_COUNT: u32 = 1000;

/// A handle to a Redis deployment implementing [`Store`]. See the [crate docs](crate) for
/// the storage layout and how each part of the contract is met.
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: fred::clients::Client,
    pub(crate) config: Config,
    fred_config: FredConfig,
    builder_parts: BuilderParts,
    pub(crate) caps: Capabilities,
    pub(crate) tasks: TaskSet,
    subscriptions: OnceCell<Arc<Subscriptions>>,
    connection: StdMutex<Option<ConnectHandle>>,
}

#[derive(Clone)]
struct BuilderParts {
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("config", &self.inner.config)
            .field("background_tasks", &self.inner.tasks.running())
            .finish()
    }
}

/// Connects subscriber clients with the handle's settings: to the configured deployment, or
/// to one given cluster node.
pub(crate) struct SubscriberFactory {
    fred_config: FredConfig,
    parts: BuilderParts,
    cluster: bool,
}

impl SubscriberFactory {
    pub(crate) fn is_cluster(&self) -> bool {
        self.cluster
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.parts.request_timeout
    }

    /// A connected subscriber client: to `node` alone when given (a cluster primary), else
    /// to the configured deployment.
    pub(crate) async fn connect(
        &self,
        node: Option<fred::types::config::Server>,
    ) -> Result<(SubscriberClient, ConnectHandle)> {
        let mut config = self.fred_config.clone();
        if let Some(server) = node {
            config.server = ServerConfig::Centralized { server };
        }
        let timeout = self.parts.connect_timeout;
        let client: SubscriberClient = builder(&config, &self.parts)
            .build_subscriber_client()
            .map_err(|e| map_err(e, "subscribe", timeout))?;
        match tokio::time::timeout(timeout, client.init()).await {
            Ok(Ok(handle)) => Ok((client, handle)),
            Ok(Err(e)) => {
                let _ = client.quit().await;
                Err(map_err(e, "subscribe", timeout))
            }
            Err(_) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
                Err(Error::Timeout {
                    backend: BACKEND,
                    operation: "subscribe",
                    after: timeout,
                })
            }
        }
    }
}

/// The pair a read found, with its expiry deadline (for watches' timers).
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub pair: KvPair,
    pub deadline: Option<Instant>,
}

impl RedisStore {
    /// Connects to the deployment described by `config`. Fails with [`Error::Unavailable`]
    /// when the server cannot be reached, [`Error::Timeout`] after
    /// [`Config::connect_timeout`], [`Error::PermissionDenied`] on bad credentials.
    pub async fn connect(config: Config) -> Result<Self> {
        let fred_config = if config.tls.is_some() {
            // Reads certificate files (and maybe the system roots): off the async runtime.
            let c = config.clone();
            tokio::task::spawn_blocking(move || fred_config(&c))
                .await
                .map_err(|e| Error::backend(BACKEND, e))??
        } else {
            fred_config(&config)?
        };
        let parts = BuilderParts {
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
        };
        let client = builder(&fred_config, &parts)
            .build()
            .map_err(|e| map_err(e, "connect", config.connect_timeout))?;
        let handle = match tokio::time::timeout(config.connect_timeout, client.init()).await {
            Ok(Ok(handle)) => handle,
            Ok(Err(error)) => {
                let _ = client.quit().await;
                return Err(map_err(error, "connect", config.connect_timeout));
            }
            Err(_) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
                return Err(Error::Timeout {
                    backend: BACKEND,
                    operation: "connect",
                    after: config.connect_timeout,
                });
            }
        };
        // watch_tree re-reads the keys named by keyspace events one by one (and a resync lists
        // key by key), so one of its snapshots can hold some of a transaction's writes and
        // not the others: see the crate docs, "Transactions".
        let mut caps = Capabilities::full(BACKEND).with_transactions(MAX_TRANSACTION_OPS, false);
        caps.transaction_keys_share_a_shard = config.topology == Topology::Cluster;
        caps.max_value_len = config.max_value_len;
        caps.min_ttl = MIN_TTL;
        caps.ttl_precision = TTL_PRECISION;
        let store = RedisStore {
            inner: Arc::new(Inner {
                client,
                config,
                fred_config,
                builder_parts: parts,
                caps,
                tasks: TaskSet::new(),
                subscriptions: OnceCell::new(),
                connection: StdMutex::new(Some(handle)),
            }),
        };
        // Authentication and reachability are checked here, not on first use.
        store
            .inner
            .call("connect", store.inner.client.ping::<()>(None))
            .await?;
        Ok(store)
    }

    /// Connects with a URL (see [`Config::from_url`]).
    pub async fn connect_url(url: &str) -> Result<Self> {
        Self::connect(Config::from_url(url)?).await
    }

    /// The configuration this handle was made with (prefix normalised).
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The underlying fred client, for what this crate does not cover. Writing our keys
    /// through it is a foreign write: it voids their version (see the crate docs, "Other
    /// programs writing the same keys").
    pub fn client(&self) -> &fred::clients::Client {
        &self.inner.client
    }

    /// The Redis key a (normalised) store key is stored at: namespace prefix + key.
    pub fn value_key(&self, key: &str) -> String {
        self.inner.full_key(key)
    }

    /// The Redis key of the metadata record kept beside a (normalised) store key.
    pub fn meta_key(&self, key: &str) -> String {
        self.inner.meta_key(&self.inner.full_key(key))
    }

    /// The Redis Cluster hash slot every key of `txn` lives in (value keys and their metadata
    /// keys alike), `Ok(None)` for a transaction without keys. A transaction whose keys span
    /// two slots is [`Error::InvalidOption`] naming two of them: Redis Cluster runs a script
    /// on one slot only, so that is what [`Store::transaction`] will answer, before sending
    /// anything, once this crate connects to a Cluster (today it connects to one server or a
    /// Sentinel-managed primary, where every transaction is one script whatever its slots).
    /// Co-locate keys with a hash tag: a namespace prefix such as `app{1}/` puts every key of
    /// the namespace in one slot; without one, keys that share their first `{…}` section
    /// (`orders/{42}/total`, `orders/{42}/lines`) share a slot. The key rules of `txn` are
    /// checked first, as [`Store::transaction`] does.
    pub fn transaction_slot(&self, txn: &Transaction) -> Result<Option<u16>> {
        let txn = self.inner.caps.check_transaction(txn.clone())?;
        let keys = txn
            .conditions()
            .iter()
            .map(Condition::key)
            .chain(txn.operations().iter().map(Operation::key));
        let mut first: Option<(&str, u16)> = None;
        for key in keys {
            let slot = fred::util::redis_keyslot(self.inner.full_key(key).as_bytes());
            match first {
                None => first = Some((key, slot)),
                Some((_, s)) if s == slot => {}
                Some((other, s)) => {
                    return Err(Error::InvalidOption(format!(
                        "a Redis Cluster transaction must keep its keys in one hash slot, but \
                         {other} is in slot {s} and {key} in slot {slot}; co-locate them with \
                         a hash tag (e.g. a namespace such as app{{1}}/)"
                    )));
                }
            }
        }
        Ok(first.map(|(_, slot)| slot))
    }
}

/// Shortest TTL accepted: Redis expires with millisecond precision, but a TTL shorter than a
/// few network round trips cannot be honoured meaningfully (nor renewed, for locks).
pub const MIN_TTL: Duration = Duration::from_millis(100);

/// How late a reader may still see a key after its TTL. Redis checks expiry on every access
/// (reads never see an expired key); watches re-read at the deadline on their own timer, so
/// the only lateness is scheduling and one round trip.
pub const TTL_PRECISION: Duration = Duration::from_millis(100);

fn builder(config: &FredConfig, parts: &BuilderParts) -> Builder {
    let mut builder = Builder::from_config(config.clone());
    let connect_timeout = parts.connect_timeout;
    let request_timeout = parts.request_timeout;
    builder
        .with_connection_config(|c| {
            c.connection_timeout = connect_timeout;
            c.internal_command_timeout = request_timeout;
            // Never re-send a command that may already have reached the server: a retried
            // CAS script could apply once and then report KeyModified. The caller gets
            // Unavailable instead and can re-read.
            c.max_command_attempts = 1;
            // A server that stops answering without closing the connection (a frozen
            // primary) would keep the handle on it until it resumes: once a command has
            // waited a whole request timeout, drop the connection, so that the reconnection
            // asks the Sentinels or the cluster where the primary is now.
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(request_timeout),
                interval: (request_timeout / 4).max(Duration::from_millis(50)),
            };
        })
        .with_performance_config(|p| {
            p.default_command_timeout = request_timeout;
            p.broadcast_channel_capacity = 4096;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
    builder
}

fn fred_config(config: &Config) -> Result<FredConfig> {
    let mut hosts = Vec::new();
    for endpoint in &config.endpoints {
        hosts.push(parse_endpoint(endpoint).map_err(Error::Config)?);
    }
    let server = match &config.topology {
        Topology::Centralized => {
            let (host, port) = hosts[0].clone();
            ServerConfig::new_centralized(host, port)
        }
        Topology::Sentinel { service_name } => {
            ServerConfig::new_sentinel(hosts, service_name.clone())
        }
        Topology::Cluster => ServerConfig::new_clustered(hosts),
    };
    let tls = match &config.tls {
        None => None,
        Some(tls) => Some(tls_config(tls)?),
    };
    Ok(FredConfig {
        server,
        username: config.username.clone(),
        password: config.password.clone(),
        database: (config.database != 0).then_some(config.database),
        tls,
        fail_fast: true,
        ..FredConfig::default()
    })
}

fn tls_config(tls: &crate::config::TlsConfig) -> Result<FredTlsConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls_err = |what: &str, e: &dyn fmt::Display| Error::Config(format!("TLS {what}: {e}"));
    // Always name the crypto provider: fred's defaults rely on rustls' process-wide default,
    // which panics when another crate in the program enables a second provider (aws-lc-rs).
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| tls_err(&format!("CA file {}", path.display()), &e))?
            {
                let cert = cert.map_err(|e| tls_err(&format!("CA file {}", path.display()), &e))?;
                roots
                    .add(cert)
                    .map_err(|e| tls_err(&format!("CA file {}", path.display()), &e))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| tls_err("protocol versions", &e))?
    .with_root_certificates(roots);
    let client_config = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| tls_err(&format!("client certificate {}", cert.display()), &e))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| tls_err(&format!("client certificate {}", cert.display()), &e))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| tls_err(&format!("client key {}", key.display()), &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_err("client identity", &e))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(fred::types::config::TlsConnector::from(client_config).into())
}

/// Maps a fred error to the semantic [`Error`].
pub(crate) fn map_err(error: FredError, operation: &'static str, after: Duration) -> Error {
    let details = error.details().to_owned();
    let upper = details.to_ascii_uppercase();
    if upper.starts_with("NOPERM")
        || upper.starts_with("NOAUTH")
        || upper.starts_with("WRONGPASS")
        || upper.contains("WRONGPASS")
        || upper.contains("NOAUTH")
    {
        return Error::PermissionDenied {
            backend: BACKEND,
            message: details,
        };
    }
    match error.kind() {
        ErrorKind::Auth => Error::PermissionDenied {
            backend: BACKEND,
            message: details,
        },
        ErrorKind::Timeout => Error::Timeout {
            backend: BACKEND,
            operation,
            after,
        },
        ErrorKind::IO
        | ErrorKind::Canceled
        | ErrorKind::Tls
        | ErrorKind::Sentinel
        | ErrorKind::Routing => Error::unavailable(BACKEND, error),
        // fred's answer for a command issued while no connection is up.
        ErrorKind::Unknown if details.starts_with("Failed to route command") => {
            Error::unavailable(BACKEND, error)
        }
        // fred gave up sending a command to a node that stopped answering (a paused primary).
        ErrorKind::Unknown if details.starts_with("Too many failed write attempts") => {
            Error::unavailable(BACKEND, error)
        }
        // A cluster between layouts (a failover under way): transient.
        ErrorKind::Cluster => Error::unavailable(BACKEND, error),
        _ if upper.starts_with("CLUSTERDOWN")
            || upper.starts_with("TRYAGAIN")
            || upper.contains("MISSING CLUSTER STATE") =>
        {
            Error::unavailable(BACKEND, error)
        }
        ErrorKind::Config | ErrorKind::Url => Error::Config(error.to_string()),
        _ => Error::backend(BACKEND, error),
    }
}

impl Inner {
    /// Runs one request with the configured time limit, mapping errors.
    ///
    /// fred's command futures are large (~6.5 KiB): hot paths pass them boxed, so that the
    /// futures around them stay small and are not copied at every step.
    pub(crate) async fn call<T>(
        &self,
        operation: &'static str,
        request: impl Future<Output = std::result::Result<T, FredError>>,
    ) -> Result<T> {
        let after = self.config.request_timeout;
        match tokio::time::timeout(after, request).await {
            Ok(result) => result.map_err(|e| map_err(e, operation, after)),
            Err(_) => Err(Error::Timeout {
                backend: BACKEND,
                operation,
                after,
            }),
        }
    }

    /// Runs a call made of many requests (`list`, `delete_tree`, a `watch_tree` resync) under
    /// one [`Config::request_timeout`] as a whole. Its single requests are bounded too, but
    /// fred's SCAN pages are not (`scan_buffered` applies no command timeout), and one limit
    /// per page or per batch would add up during an outage to a multiple of the documented
    /// limit.
    pub(crate) async fn whole_call<T>(
        &self,
        operation: &'static str,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let after = self.config.request_timeout;
        match tokio::time::timeout(after, work).await {
            // A request inside that hit its own (equal) limit first: report the whole call.
            Ok(Err(Error::Timeout { .. })) | Err(_) => Err(Error::Timeout {
                backend: BACKEND,
                operation,
                after,
            }),
            Ok(result) => result,
        }
    }

    pub(crate) fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.config.namespace)
    }

    /// The metadata key of a full Redis key; see [`meta_key_for`].
    pub(crate) fn meta_key(&self, full: &str) -> String {
        meta_key_for(&self.config.namespace, full)
    }

    /// The store key of a Redis key, if it is one of ours (inside the namespace, a valid
    /// normalised key, no reserved segment). The one name filter of `list`, `delete_tree` and
    /// `watch_tree`'s events; keys of other types are filtered by `SCAN … TYPE string` and by
    /// the scripts (which treat them as absent).
    pub(crate) fn relative_key<'a>(&self, full: &'a str) -> Option<&'a str> {
        let relative = full.strip_prefix(self.config.namespace.as_str())?;
        match key::normalize_key(relative) {
            Ok(normalized) if normalized == relative => Some(relative),
            _ => None,
        }
    }

    /// The `KEYS` of a one-key script: the value key and its metadata key.
    pub(crate) fn script_keys(&self, full: &str) -> Vec<String> {
        vec![full.to_owned(), self.meta_key(full)]
    }

    /// Runs a script on `keys` (see [`script_keys`](Self::script_keys); a transaction names
    /// several value/metadata pairs). For a script that `writes`, with
    /// [`Config::wait_for_replicas`] the reply counts only once `WAIT` confirms the replicas.
    pub(crate) async fn eval(
        &self,
        operation: &'static str,
        script: &fred::types::scripts::Script,
        keys: Vec<String>,
        args: Vec<Value>,
        writes: bool,
    ) -> Result<Value> {
        let run = |keys: Vec<String>, args: Vec<Value>| {
            self.call(
                operation,
                Box::pin(script.evalsha_with_reload::<Value, _, _>(&self.client, keys, args)),
            )
        };
        let wait = match self.config.wait_for_replicas {
            Some(wait) if writes => wait,
            _ => return run(keys, args).await,
        };
        // WAIT counts the replicas that acknowledged the last write of *its* connection. If
        // fred reconnected between the script and the WAIT, the new connection has written
        // nothing and WAIT would confirm vacuously: any reconnection in between voids it.
        let mut reconnects = self.client.reconnect_rx();
        let slot = fred::util::redis_keyslot(keys[0].as_bytes());
        let reply = run(keys, args).await?;
        let options = fred::types::config::Options {
            // On a cluster: the primary that ran the script (the keys' slot).
            cluster_hash: Some(fred::types::ClusterHash::Custom(slot)),
            ..Default::default()
        };
        let timeout_ms = wait.timeout.as_millis().max(1) as i64;
        let confirmed: i64 = self
            .call(
                operation,
                self.client
                    .with_options(&options)
                    .wait(i64::from(wait.replicas), timeout_ms),
            )
            .await?;
        let reconnected = !matches!(
            reconnects.try_recv(),
            Err(tokio::sync::broadcast::error::TryRecvError::Empty)
        );
        if confirmed < i64::from(wait.replicas) || reconnected {
            tracing::debug!(
                operation,
                confirmed,
                wanted = wait.replicas,
                reconnected,
                "WAIT did not confirm the write"
            );
            // Applied on the primary, maybe not on enough replicas: it may or may not survive
            // a failover, which is exactly Timeout's "may have taken effect".
            return Err(Error::Timeout {
                backend: BACKEND,
                operation,
                after: wait.timeout,
            });
        }
        Ok(reply)
    }

    /// Reads one key's value and index without a script: one `MGET` of the value key and its
    /// metadata key (they share a slot, so one node answers). See [`verified_pair`] for why
    /// that pair is consistent; anything it cannot vouch for goes to the `GET` script, which
    /// reads atomically and adopts foreign values. One plain command costs the server far
    /// less than a script (no Lua, no hashing of the value on the server).
    pub(crate) async fn read_pair(&self, key: &str) -> Result<Option<KvPair>> {
        let full = self.full_key(key);
        let meta = self.meta_key(&full);
        let reply: Vec<Value> = self
            .call("get", Box::pin(self.client.mget(vec![full, meta])))
            .await?;
        let mut reply = reply.into_iter();
        match verified_pair(key, reply.next(), reply.next()) {
            Verified::Pair(pair) => Ok(Some(pair)),
            Verified::Absent => Ok(None),
            // Boxed: the script's future is several times the size of the `MGET`'s, and every
            // `get` future would carry (and move) that space for a path it rarely takes.
            Verified::AskScript => Box::pin(self.read(key)).await.map(|f| f.map(|f| f.pair)),
        }
    }

    /// Reads many keys as [`read_pair`](Self::read_pair) does, absent keys left out, in no
    /// particular order. On one server (or Sentinel's primary) the keys go in `MGET`s of
    /// [`BATCH`] keys each (value and metadata keys side by side), several in flight; on a
    /// cluster, where one `MGET` may not span slots, one `MGET` per key.
    pub(crate) async fn read_pairs(&self, keys: Vec<String>) -> Result<Vec<KvPair>> {
        if self.config.topology == Topology::Cluster {
            return futures::stream::iter(keys)
                .map(|k| async move { self.read_pair(&k).await })
                .buffer_unordered(BATCH)
                .try_filter_map(|p| async move { Ok(p) })
                .try_collect()
                .await;
        }
        let chunks: Vec<Vec<String>> = keys.chunks(BATCH).map(<[String]>::to_vec).collect();
        let batches: Vec<Vec<KvPair>> = futures::stream::iter(chunks)
            .map(|chunk| async move {
                let names: Vec<String> = chunk
                    .iter()
                    .flat_map(|k| {
                        let full = self.full_key(k);
                        let meta = self.meta_key(&full);
                        [full, meta]
                    })
                    .collect();
                let reply: Vec<Value> =
                    self.call("list", Box::pin(self.client.mget(names))).await?;
                if reply.len() != 2 * chunk.len() {
                    return Err(protocol_error("list"));
                }
                let mut pairs = Vec::with_capacity(chunk.len());
                let mut reply = reply.into_iter();
                for key in &chunk {
                    match verified_pair(key, reply.next(), reply.next()) {
                        Verified::Pair(pair) => pairs.push(pair),
                        Verified::Absent => {}
                        Verified::AskScript => {
                            if let Some(found) = self.read(key).await? {
                                pairs.push(found.pair);
                            }
                        }
                    }
                }
                Ok(pairs)
            })
            .buffer_unordered(4)
            .try_collect()
            .await?;
        Ok(batches.into_iter().flatten().collect())
    }

    /// Reads one key (value, index, TTL) atomically; a key of another type is absent. A value
    /// replaced by another program is adopted with a fresh index (see the `GET` script).
    pub(crate) async fn read(&self, key: &str) -> Result<Option<Found>> {
        let full = self.full_key(key);
        let reply = self
            .eval("get", &SCRIPTS.get, self.script_keys(&full), vec![], false)
            .await?;
        let read_at = Instant::now();
        if reply.is_null() {
            return Ok(None);
        }
        let mut items = reply.into_array().into_iter();
        let (Some(value), Some(index), Some(pttl)) = (items.next(), items.next(), items.next())
        else {
            return Err(protocol_error("get"));
        };
        let value = value.into_bytes().ok_or_else(|| protocol_error("get"))?;
        let last_index = parse_index(&index).ok_or_else(|| protocol_error("get"))?;
        let deadline = pttl
            .as_i64()
            .filter(|ms| *ms >= 0)
            .map(|ms| read_at + Duration::from_millis(ms as u64));
        Ok(Some(Found {
            pair: KvPair::new(key.to_owned(), value, last_index),
            deadline,
        }))
    }

    /// Reads `keys` (see [`read`](Self::read)), [`BATCH`] at a time, in no particular order;
    /// a key that is absent reads `None`. The first error ends the call.
    pub(crate) async fn read_many(
        &self,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Option<Found>)>> {
        futures::stream::iter(keys)
            .map(|k| async move {
                let found = self.read(&k).await?;
                Ok((k, found))
            })
            .buffer_unordered(BATCH)
            .try_collect()
            .await
    }

    /// Every (normalised) store key strictly below `dir`, sorted. Not time-limited itself:
    /// callers run it inside [`whole_call`](Self::whole_call).
    pub(crate) async fn scan_keys(&self, dir: &str) -> Result<Vec<String>> {
        let prefix = format!("{}{}", self.config.namespace, key::child_prefix(dir));
        let pattern = format!("{}*", glob_escape(&prefix));
        // On a cluster every primary holds a part of the keyspace: SCAN each of them.
        let scan = if self.config.topology == Topology::Cluster {
            self.client
                .scan_cluster_buffered(pattern, Some(SCAN_COUNT), Some(ScanType::String))
                .boxed()
        } else {
            self.client
                .scan_buffered(pattern, Some(SCAN_COUNT), Some(ScanType::String))
                .boxed()
        };
        let mut keys = scan
            .map_err(|e| map_err(e, "scan", self.config.request_timeout))
            .try_filter_map(|k| {
                let found = k
                    .as_str()
                    .and_then(|full| self.relative_key(full))
                    .filter(|rel| key::is_descendant(dir, rel))
                    .map(str::to_owned);
                async move { Ok(found) }
            })
            .try_collect::<Vec<_>>()
            .await?;
        // SCAN may return a key more than once (while the server rehashes).
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }

    /// `list` with deadlines: the keys below `dir`, read in batches, sorted; bounded by one
    /// request timeout as a whole.
    pub(crate) async fn list_found(&self, dir: &str) -> Result<Vec<Found>> {
        self.whole_call("list", async {
            let keys = self.scan_keys(dir).await?;
            let mut found: Vec<Found> = self
                .read_many(keys)
                .await?
                .into_iter()
                .filter_map(|(_, found)| found)
                .collect();
            found.sort_by(|a, b| a.pair.key.cmp(&b.pair.key));
            Ok(found)
        })
        .await
    }

    /// Commits a checked, non-empty transaction with the transaction script (see
    /// `scripts::TRANSACTION` for its arguments and replies).
    async fn transaction(&self, txn: &Transaction) -> Result<Vec<KvPair>> {
        // Every distinct key once, as a (value key, metadata key) pair numbered from 1.
        let mut pairs: HashMap<&str, i64> = HashMap::new();
        let mut keys: Vec<String> = Vec::new();
        let all_keys = txn
            .conditions()
            .iter()
            .map(Condition::key)
            .chain(txn.operations().iter().map(Operation::key));
        for key in all_keys {
            if !pairs.contains_key(key) {
                pairs.insert(key, pairs.len() as i64 + 1);
                let full = self.full_key(key);
                let meta = self.meta_key(&full);
                keys.extend([full, meta]);
            }
        }
        let number = |key: &str| Value::Integer(pairs[key]);
        let mut args: Vec<Value> =
            Vec::with_capacity(2 + 3 * txn.conditions().len() + 4 * txn.operations().len());
        args.push(Value::Integer(txn.conditions().len() as i64));
        for condition in txn.conditions() {
            args.push(number(condition.key()));
            let (kind, expected) = match condition {
                Condition::Absent { .. } => ("a", String::new()),
                Condition::Exists { .. } => ("e", String::new()),
                Condition::IndexEquals { index, .. } => ("i", index.to_string()),
                Condition::LockHeld { fencing_token, .. } => ("l", fencing_token.to_string()),
                // kv-core may add conditions; refuse rather than ignore one.
                _ => return Err(self.caps.unsupported("this transaction condition")),
            };
            args.push(kind.into());
            args.push(expected.into());
        }
        args.push(Value::Integer(txn.operations().len() as i64));
        let mut puts: Vec<(&str, &Bytes)> = Vec::new();
        for operation in txn.operations() {
            args.push(number(operation.key()));
            match operation {
                Operation::Put {
                    key,
                    value,
                    options,
                } => {
                    args.push("p".into());
                    args.push(Value::Bytes(value.clone()));
                    args.push(ttl_arg(options.ttl));
                    puts.push((key, value));
                }
                Operation::Delete { .. } => {
                    args.extend(["d".into(), "".into(), "".into()]);
                }
                // Likewise for operations.
                _ => return Err(self.caps.unsupported("this transaction operation")),
            }
        }
        let reply = self
            .eval("transaction", &SCRIPTS.transaction, keys, args, true)
            .await?;
        let items = match reply {
            Value::Array(items) => items,
            Value::Null => Vec::new(),
            _ => return Err(protocol_error("transaction")),
        };
        if items.first().and_then(Value::as_str).as_deref() == Some("!failed") {
            return Err(condition_failed(txn, &items[1..]));
        }
        if items.len() != puts.len() {
            return Err(protocol_error("transaction"));
        }
        puts.into_iter()
            .zip(items)
            .map(|((key, value), index)| {
                let index = parse_index(&index).ok_or_else(|| protocol_error("transaction"))?;
                Ok(KvPair::new(key, value.clone(), index))
            })
            .collect()
    }

    pub(crate) async fn delete_key(&self, key: &str) -> Result<bool> {
        let full = self.full_key(key);
        let reply = self
            .eval(
                "delete",
                &SCRIPTS.delete,
                self.script_keys(&full),
                vec![],
                true,
            )
            .await?;
        Ok(reply.as_i64() == Some(1))
    }

    /// The shared subscriber connection(s) for keyspace notifications (created on first
    /// use).
    pub(crate) async fn subscriptions(&self) -> Result<Arc<Subscriptions>> {
        self.subscriptions
            .get_or_try_init(|| async {
                let factory = SubscriberFactory {
                    fred_config: self.fred_config.clone(),
                    parts: self.builder_parts.clone(),
                    cluster: self.config.topology == Topology::Cluster,
                };
                Subscriptions::connect(
                    factory,
                    self.client.clone(),
                    self.config.database,
                    self.config.request_timeout,
                )
                .await
            })
            .await
            .cloned()
    }

    /// Fails with a clear [`Error::Config`] when the server does not publish the keyspace
    /// notifications watches need. A server that forbids `CONFIG GET` (managed Redis) is
    /// trusted.
    pub(crate) async fn check_notifications(&self) -> Result<()> {
        let reply = match self
            .call(
                "config get",
                self.client.config_get::<Value, _>("notify-keyspace-events"),
            )
            .await
        {
            Ok(reply) => reply,
            Err(Error::Timeout { .. }) | Err(Error::Unavailable { .. }) => {
                return self
                    .call(
                        "config get",
                        self.client.config_get::<Value, _>("notify-keyspace-events"),
                    )
                    .await
                    .map(|_| ());
            }
            Err(error) => {
                tracing::debug!(%error, "CONFIG GET notify-keyspace-events refused; assuming notifications are on");
                return Ok(());
            }
        };
        let flags = match reply {
            Value::Array(items) => items.get(1).and_then(|v| v.as_string()),
            Value::Map(map) => map.inner().values().next().and_then(|v| v.as_string()),
            _ => None,
        };
        let Some(flags) = flags else {
            return Ok(());
        };
        if notifications_sufficient(&flags) {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "redis: watches need keyspace notifications, but the server's \
                 notify-keyspace-events is {flags:?}; it must contain K and either A or all of \
                 g, $ and x (e.g. start redis-server with --notify-keyspace-events KA)"
            )))
        }
    }

    async fn shutdown(&self) {
        if let Some(subs) = self.subscriptions.get() {
            subs.shutdown().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.quit()).await;
        let handle = self
            .connection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            // The connection task ends once QUIT went through; do not wait for long.
            let abort = handle.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), handle)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A handle dropped without close(): disconnect in the background.
        let handle = self
            .connection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let client = self.client.clone();
            let subs = self.subscriptions.get().cloned();
            runtime.spawn(async move {
                if let Some(subs) = subs {
                    subs.shutdown().await;
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), client.quit()).await;
                let abort = handle.abort_handle();
                if tokio::time::timeout(Duration::from_secs(2), handle)
                    .await
                    .is_err()
                {
                    abort.abort();
                }
            });
        }
    }
}

/// The metadata key of `full` (= `prefix` + store key), always in the same Redis Cluster hash
/// slot as `full`:
///
/// * `<prefix>__kv:meta:{<full>}` — the usual form: the hash tag is the whole value key;
/// * `<prefix>__kv:meta-slot:{<alias>}<full>` — when `full` contains `{` or `}` so that the first
///   form would hash differently (`a{x}b` is hashed by `x` alone, `a}b` would cut the tag
///   short): `alias` is the shortest base-36 string hashing to `full`'s slot.
pub(crate) fn meta_key_for(prefix: &str, full: &str) -> String {
    use fred::util::redis_keyslot;
    let simple = format!("{prefix}__kv:meta:{{{full}}}");
    let slot = redis_keyslot(full.as_bytes());
    if redis_keyslot(simple.as_bytes()) == slot {
        return simple;
    }
    format!("{prefix}__kv:meta-slot:{{{}}}{full}", slot_alias(slot))
}

/// A short string without braces for every cluster hash slot.
fn slot_alias(slot: u16) -> &'static str {
    static ALIASES: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        const SLOTS: usize = 16384;
        let mut aliases = vec![String::new(); SLOTS];
        let mut missing = SLOTS;
        let mut n: u64 = 0;
        while missing > 0 {
            let mut digits = Vec::new();
            let mut m = n;
            loop {
                digits.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(m % 36) as usize]);
                m /= 36;
                if m == 0 {
                    break;
                }
            }
            let candidate = String::from_utf8(digits).unwrap_or_default();
            let slot = fred::util::redis_keyslot(candidate.as_bytes()) as usize;
            if aliases[slot].is_empty() {
                aliases[slot] = candidate;
                missing -= 1;
            }
            n += 1;
        }
        aliases
    });
    &ALIASES[slot as usize]
}

/// True when `notify-keyspace-events` flags publish what watches need: keyspace channel (`K`)
/// with string (`$`), generic (`g`) and expiry (`x`) events, or all of them (`A`).
pub(crate) fn notifications_sufficient(flags: &str) -> bool {
    flags.contains('K')
        && (flags.contains('A')
            || (flags.contains('g') && flags.contains('$') && flags.contains('x')))
}

/// Escapes Redis glob metacharacters (`* ? [ ] \`) for `SCAN MATCH` and `PSUBSCRIBE`.
pub(crate) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What a plain read of a value key and its metadata key tells.
enum Verified {
    /// The value and the index that belongs to it.
    Pair(KvPair),
    /// No string at the value key (absent, expired, or a key of another type).
    Absent,
    /// Only the `GET` script can tell: no metadata record (never written here, the hash form
    /// of earlier builds, or deleted between the reads), a record for other bytes (a racing
    /// write, or a value another program replaced), or an unexpected reply.
    AskScript,
}

/// Judges the replies of a plain read of `key`'s value and metadata record
/// (`"<index> <sha1 hex>[ <owner>]"`). The pair is consistent without `MULTI` because the
/// record names the value its index belongs to: when the SHA-1 of the value read matches
/// the record's, that index belonged to those very bytes when the record was read, whichever
/// was read first (a write in between changes the digest; one that put the same bytes back
/// leaves a state that really existed at that moment).
fn verified_pair(key: &str, value: Option<Value>, record: Option<Value>) -> Verified {
    use sha1::{Digest, Sha1};
    let value = match value {
        Some(Value::Null) => return Verified::Absent,
        Some(value) => value,
        None => return Verified::AskScript,
    };
    let (Some(value), Some(record)) = (value.into_bytes(), record.and_then(Value::into_bytes))
    else {
        return Verified::AskScript;
    };
    let mut fields = record.split(|b| *b == b' ');
    let (Some(index), Some(digest)) = (fields.next(), fields.next()) else {
        return Verified::AskScript;
    };
    let Some(index) = std::str::from_utf8(index)
        .ok()
        .and_then(|i| i.parse::<u64>().ok())
        .filter(|i| *i > 0)
    else {
        return Verified::AskScript;
    };
    let sum = Sha1::digest(&value);
    let matches = digest.len() == 40
        && digest.chunks(2).zip(sum.iter()).all(|(hex, byte)| {
            std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                == Some(*byte)
        });
    if matches {
        Verified::Pair(KvPair::new(key.to_owned(), value, index))
    } else {
        Verified::AskScript
    }
}

pub(crate) fn parse_index(value: &Value) -> Option<u64> {
    match value {
        Value::Integer(i) => u64::try_from(*i).ok(),
        other => other.as_str()?.parse().ok(),
    }
    .filter(|i| *i > 0)
}

pub(crate) fn protocol_error(operation: &str) -> Error {
    Error::backend(
        BACKEND,
        format!("unexpected reply from the {operation} script"),
    )
}

/// The CAS scripts' `expected previous` arguments: the previous index and, for index 1 (a
/// value without metadata, which only its content identifies), the previous value.
fn cas_args(previous: &KvPair) -> (Value, Value) {
    let value = if previous.last_index == 1 {
        Value::Bytes(previous.value.clone())
    } else {
        Value::from("")
    };
    (previous.last_index.to_string().into(), value)
}

/// The error of a transaction the script refused: its conditions evaluated, by kv-core's
/// rules, against the states the script read at commit time (`states[i]`: the index of
/// condition `i`'s key, `''` when absent), so that the first failing condition and its
/// reason are exactly what every backend reports.
fn condition_failed(txn: &Transaction, states: &[Value]) -> Error {
    if states.is_empty() || states.len() != txn.conditions().len() {
        return protocol_error("transaction");
    }
    let mut current: HashMap<&str, Option<u64>> = HashMap::new();
    for (condition, state) in txn.conditions().iter().zip(states) {
        let index = match state.as_str().as_deref() {
            Some("") => None,
            _ => match parse_index(state) {
                Some(index) => Some(index),
                None => return protocol_error("transaction"),
            },
        };
        current.insert(condition.key(), index);
    }
    match txn.first_failure(|key| current.get(key).copied().flatten()) {
        Some(error) => error,
        // The script refused, yet its own states satisfy every condition: cannot happen
        // (both sides compare the same decimal indexes). Never report success for it.
        None => {
            tracing::warn!("the transaction script refused a transaction whose conditions hold");
            let first = &txn.conditions()[0];
            Error::condition_failed(0, first.key(), ConditionFailure::KeyModified)
        }
    }
}

fn ttl_arg(ttl: Option<Duration>) -> Value {
    // Whole milliseconds, at least 1 (check_ttl already enforced min_ttl).
    let ms = ttl.map(|t| t.as_millis().max(1) as i64).unwrap_or(0);
    Value::Integer(ms)
}

#[async_trait]
impl Store for RedisStore {
    fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn put(&self, key: &str, value: Bytes, options: WriteOptions) -> Result<()> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let key = inner.caps.check_key(key)?;
        inner.caps.check_value(&key, &value)?;
        let ttl = inner.caps.check_ttl(options.ttl)?;
        let full = inner.full_key(&key);
        let reply = inner
            .eval(
                "put",
                &SCRIPTS.put,
                inner.script_keys(&full),
                vec![Value::Bytes(value), ttl_arg(ttl)],
                true,
            )
            .await?;
        parse_index(&reply).ok_or_else(|| protocol_error("put"))?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn get(&self, key: &str, _options: ReadOptions) -> Result<Option<KvPair>> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let key = inner.caps.check_key(key)?;
        inner.read_pair(&key).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn delete(&self, key: &str) -> Result<bool> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let key = inner.caps.check_key(key)?;
        inner.delete_key(&key).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn exists(&self, key: &str, _options: ReadOptions) -> Result<bool> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let key = inner.caps.check_key(key)?;
        // TYPE expires lazily like GET, without transferring the value; a key of another
        // type is no store value (`get` does not report it either).
        let kind: String = inner
            .call(
                "exists",
                Box::pin(inner.client.r#type(inner.full_key(&key))),
            )
            .await?;
        Ok(kind == "string")
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, directory = %directory))]
    async fn list(&self, directory: &str, _options: ReadOptions) -> Result<Vec<KvPair>> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let dir = inner.caps.check_directory(directory)?;
        inner
            .whole_call("list", async {
                let keys = inner.scan_keys(&dir).await?;
                // Plain `MGET`s (the script only for a key they cannot vouch for): a list
                // needs no TTLs, and the script costs the server about 9 times more.
                let mut pairs = inner.read_pairs(keys).await?;
                pairs.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(pairs)
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, directory = %directory))]
    async fn delete_tree(&self, directory: &str) -> Result<()> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let dir = inner.caps.check_directory(directory)?;
        inner
            .whole_call("delete_tree", async {
                let mut keys = inner.scan_keys(&dir).await?;
                if !dir.is_empty() {
                    keys.push(dir.clone());
                }
                futures::stream::iter(keys)
                    .map(|k| async move { inner.delete_key(&k).await })
                    .buffer_unordered(BATCH)
                    .try_collect::<Vec<_>>()
                    .await?;
                Ok(())
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn atomic_put(
        &self,
        key: &str,
        value: Bytes,
        previous: Option<&KvPair>,
        options: WriteOptions,
    ) -> Result<KvPair> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let key = inner.caps.check_key(key)?;
        inner.caps.check_value(&key, &value)?;
        let ttl = inner.caps.check_ttl(options.ttl)?;
        let full = inner.full_key(&key);
        let (expected, previous_value) = match previous {
            Some(previous) => cas_args(previous),
            None => (Value::from(""), Value::from("")),
        };
        let reply = inner
            .eval(
                "atomic_put",
                &SCRIPTS.atomic_put,
                inner.script_keys(&full),
                vec![
                    Value::Bytes(value.clone()),
                    ttl_arg(ttl),
                    expected,
                    previous_value,
                ],
                true,
            )
            .await?;
        match reply.as_str().as_deref() {
            Some("!exists") => Err(Error::KeyExists { key }),
            Some("!notfound") => Err(Error::KeyNotFound { key }),
            Some("!modified") => Err(Error::KeyModified { key }),
            _ => {
                let index = parse_index(&reply).ok_or_else(|| protocol_error("atomic_put"))?;
                Ok(KvPair::new(key, value, index))
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let key = inner.caps.check_key(key)?;
        let full = inner.full_key(&key);
        let (expected, previous_value) = cas_args(previous);
        let reply = inner
            .eval(
                "atomic_delete",
                &SCRIPTS.atomic_delete,
                inner.script_keys(&full),
                vec![expected, previous_value],
                true,
            )
            .await?;
        match reply.as_str().as_deref() {
            Some("ok") => Ok(()),
            Some("!notfound") => Err(Error::KeyNotFound { key }),
            Some("!modified") => Err(Error::KeyModified { key }),
            _ => Err(protocol_error("atomic_delete")),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(
        backend = BACKEND,
        conditions = txn.conditions().len(),
        operations = txn.operations().len(),
    ))]
    async fn transaction(&self, txn: Transaction) -> Result<Vec<KvPair>> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let txn = inner.caps.check_transaction(txn)?;
        if txn.conditions().is_empty() && txn.operations().is_empty() {
            return Ok(Vec::new());
        }
        if inner.caps.transaction_keys_share_a_shard {
            // Refused before anything is sent: the cluster would answer CROSSSLOT.
            self.transaction_slot(&txn)?;
        }
        inner.transaction(&txn).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn watch(&self, key: &str, _options: ReadOptions) -> Result<WatchStream> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let key = inner.caps.check_key(key)?;
        crate::watch::watch_key(inner.clone(), key).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, directory = %directory))]
    async fn watch_tree(&self, directory: &str, _options: ReadOptions) -> Result<WatchTreeStream> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let dir = inner.caps.check_directory(directory)?;
        crate::watch::watch_tree(inner.clone(), dir).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn new_lock(&self, key: &str, options: LockOptions) -> Result<Lock> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let key = inner.caps.check_lock(key, &options)?;
        Ok(crate::lock::new_lock(inner.clone(), key, options))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn close(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.tasks.is_closed() {
            return Ok(());
        }
        inner.tasks.close(inner.config.request_timeout).await;
        inner.shutdown().await;
        Ok(())
    }

    fn background_tasks(&self) -> usize {
        self.inner.tasks.running()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_shares_the_value_keys_slot() {
        use fred::util::redis_keyslot;
        assert_eq!(meta_key_for("app/", "app/a/b"), "app/__kv:meta:{app/a/b}");
        assert_eq!(meta_key_for("", "a/b"), "__kv:meta:{a/b}");
        for prefix in ["", "app/", "app{1}/", "a}b/", "{x}/"] {
            for key in [
                "a/b", "a{x}b", "a{}b", "a}b", "{", "}", "{}", "}{", "a{b", "x{y}z{w}", "😀{ü}",
                "{a}/b", "br[a]ce",
            ] {
                let full = format!("{prefix}{key}");
                let meta = meta_key_for(prefix, &full);
                assert_eq!(
                    redis_keyslot(meta.as_bytes()),
                    redis_keyslot(full.as_bytes()),
                    "{full} / {meta}"
                );
                assert!(meta.starts_with(&format!("{prefix}__kv:meta")));
                assert_ne!(meta, full);
            }
        }
        // Distinct keys never share a metadata key.
        assert_ne!(meta_key_for("", "a}b"), meta_key_for("", "a}c"));
        for slot in [0u16, 1, 8000, 16383] {
            assert_eq!(redis_keyslot(slot_alias(slot).as_bytes()), slot);
        }
    }

    #[test]
    fn refused_transactions_report_the_first_failing_condition() {
        let txn = Transaction::new()
            .when(Condition::exists("a"))
            .when(Condition::index_equals("b", 7))
            .when(Condition::absent("c"))
            .when(Condition::LockHeld {
                key: "l".into(),
                fencing_token: 9,
            });
        let states = |s: [&str; 4]| s.map(Value::from).to_vec();
        let check = |states: Vec<Value>| match condition_failed(&txn, &states) {
            Error::ConditionFailed { index, key, reason } => (index, key, reason),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            check(states(["5", "8", "", "9"])),
            (1, "b".into(), ConditionFailure::KeyModified)
        );
        assert_eq!(
            check(states(["", "8", "3", "1"])),
            (0, "a".into(), ConditionFailure::KeyNotFound)
        );
        assert_eq!(
            check(states(["5", "7", "3", "9"])),
            (2, "c".into(), ConditionFailure::KeyExists)
        );
        assert_eq!(
            check(states(["5", "7", "", ""])),
            (3, "l".into(), ConditionFailure::LockLost)
        );
        // States satisfying every condition: never success, KeyModified on the first.
        assert_eq!(
            check(states(["5", "7", "", "9"])),
            (0, "a".into(), ConditionFailure::KeyModified)
        );
        // Malformed replies are protocol errors, not panics.
        for bad in [vec![], states(["x", "7", "", "9"]), vec![Value::from("5")]] {
            assert!(matches!(
                condition_failed(&txn, &bad),
                Error::Backend { .. }
            ));
        }
        assert!(matches!(
            condition_failed(&Transaction::new(), &[]),
            Error::Backend { .. }
        ));
    }

    #[test]
    fn helpers() {
        assert_eq!(glob_escape("a*b?c[d]e\\f"), "a\\*b\\?c\\[d\\]e\\\\f");
        assert!(notifications_sufficient("AKE"));
        assert!(notifications_sufficient("g$xK"));
        assert!(!notifications_sufficient(""));
        assert!(!notifications_sufficient("EA"));
        assert!(!notifications_sufficient("K$"));
        assert_eq!(parse_index(&Value::from("12")), Some(12));
        assert_eq!(parse_index(&Value::Integer(0)), None);
    }
}
