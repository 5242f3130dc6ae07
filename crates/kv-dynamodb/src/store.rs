//! [`DynamoStore`]: the [`Store`] implementation.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, PutRequest, ReturnValue, ReturnValuesOnConditionCheckFailure,
    TransactWriteItem, WriteRequest,
};
use bytes::Bytes;
use futures::StreamExt;
use kv_core::{
    Capabilities, Error, KvPair, Lock, LockOptions, ReadOptions, Result, Store, TaskSet,
    Transaction, WatchStream, WatchTreeStream, WriteOptions, key,
};

use crate::clock::{DateInterceptor, ServerClock};
use crate::config::{Config, Credentials, WatchMode};
use crate::item::{
    ABSENT, ATTR_PK, ATTR_SK, BACKEND, Item, LIVE, LIVE_FILTER, VERSION_BELOW, VERSIONLESS,
    expression_attrs, live_item, next_version, num, partition_of, s, sdk_error, tombstone_item,
    version_exhausted, versionless_cas,
};
use crate::table;

/// How far two handles' views of a TTL may differ: each one's estimate of the server's clock
/// is off by at most 500 ms (half the `Date` header's resolution) plus half a round trip.
pub(crate) const TTL_PRECISION: Duration = Duration::from_millis(1500);

/// The longest sort key DynamoDB accepts, in bytes.
const MAX_SORT_KEY: usize = 1024;
/// DynamoDB's item size limit (400 KB, attribute names and values included).
const MAX_ITEM: usize = 400 * 1024;
/// Room kept for the key attributes and the metadata beside the value.
const ITEM_OVERHEAD: usize = 4 * 1024;
/// How many write requests one BatchWriteItem may carry.
pub(crate) const BATCH_WRITE_LIMIT: usize = 25;
/// How many actions one TransactWriteItems may carry.
pub(crate) const TRANSACTION_LIMIT: usize = 100;
/// How often `delete_tree` retries its transaction when concurrent writes cancel it.
const TRANSACTION_ATTEMPTS: usize = 5;
/// How many batches `delete_tree` keeps in flight.
const BATCH_CONCURRENCY: usize = 4;
/// The attributes a deletion reads.
const KEYS_ONLY: &str = "#pk, #sk, #ver, #del";
/// How often a conditional write is retried when only the version guard failed.
const VERSION_RETRIES: usize = 64;
/// How often a single write is sent when it meets a transaction in progress on its item.
const TRANSACTION_CONFLICT_RETRIES: usize = 16;

/// The condition "the stored version is `previous`". An item without a `version` (another
/// client's) never matches, even at `previous` = 1, the `last_index` it is read with: its
/// writer could have rewritten it since (see [`crate::item::versionless_cas`]).
const VERSION_IS: &str = "#ver = :prev";

/// A handle to a kv store kept in one DynamoDB table. See the [crate documentation](crate)
/// for the storage layout and how the contract is met.
///
/// Cloning is cheap and shares the handle: its tasks, its locks and its closed state (a
/// clone is the same client, not a second one; call [`DynamoStore::connect`] again for that).
#[derive(Clone)]
pub struct DynamoStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub client: Client,
    pub streams: aws_sdk_dynamodbstreams::Client,
    pub config: Config,
    /// `""` or `"namespace/"`.
    pub ns_prefix: String,
    pub caps: Capabilities,
    /// The table's stream when the handle connected, when watches use it. The stream
    /// reader follows the table's current one (a table created again has a new stream).
    pub stream_arn: Option<String>,
    pub tasks: TaskSet,
    /// The shared stream reader of this handle's watches.
    pub hub: crate::watch::Hub,
    /// The server's clock as this handle estimates it (from the responses' `Date` header):
    /// every TTL deadline is written and judged on it.
    pub clock: Arc<ServerClock>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("table", &self.config.table)
            .field("namespace", &self.ns_prefix)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamoStore")
            .field("table", &self.inner.config.table)
            .field("namespace", &self.inner.config.namespace)
            .field("stream", &self.inner.stream_arn)
            .field("closed", &self.inner.tasks.is_closed())
            .finish()
    }
}

/// What a conditional write found when its condition failed.
pub(crate) enum Conditional {
    /// Written; the item it replaced (if asked for).
    Written(Option<Item>),
    /// The condition failed; the item as it was then (`None`: no item).
    Failed(Option<Item>),
}

impl DynamoStore {
    /// Connects: builds the SDK clients, checks (or creates, with [`Config::create_table`])
    /// the table, and finds its stream. A server that cannot be reached is
    /// [`Error::Unavailable`] or [`Error::Timeout`] within the configured timeouts.
    pub async fn connect(config: Config) -> Result<Self> {
        config.validate()?;
        let namespace = key::normalize_directory(&config.namespace)?;
        let ns_prefix = key::child_prefix(&namespace);
        if ns_prefix.len() + 1 > MAX_SORT_KEY {
            return Err(Error::Config(format!(
                "namespace {namespace:?} leaves no room for keys within DynamoDB's {MAX_SORT_KEY}-byte sort key"
            )));
        }
        let sdk = sdk_config(&config).await?;
        let clock = ServerClock::new();
        let client = Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&sdk)
                .interceptor(DateInterceptor(clock.clone()))
                .build(),
        );
        let streams = aws_sdk_dynamodbstreams::Client::new(&sdk);
        let description = table::ensure(&client, &config).await?;
        if !clock.synced() {
            tracing::warn!(
                "no usable `Date` header in DynamoDB's responses: TTLs fall back to this host's wall clock"
            );
        }
        let stream_arn = match config.watch_mode {
            WatchMode::Auto => description.stream_arn,
            _ => None,
        };
        let mut caps = Capabilities::full(BACKEND);
        caps.max_key_len = MAX_SORT_KEY - ns_prefix.len();
        caps.max_value_len = MAX_ITEM - ITEM_OVERHEAD;
        caps.min_ttl = Duration::from_secs(1);
        // Writer and reader each estimate the server's time to within 500 ms plus half a
        // round trip (the `Date` header has a resolution of one second): two estimates may
        // differ by 1 s plus a round trip. See the crate docs, "Time".
        caps.ttl_precision = TTL_PRECISION;
        // One TransactWriteItems of at most 100 actions, one per key. Its Query-based
        // snapshots are read-committed, and a transaction's stream records arrive one by
        // one: watch_tree may show part of a transaction (see the crate docs).
        let caps = caps.with_transactions(crate::txn::MAX_TRANSACTION_OPS, false);
        Ok(DynamoStore {
            inner: Arc::new(Inner {
                client,
                streams,
                config,
                ns_prefix,
                caps,
                stream_arn,
                tasks: TaskSet::new(),
                hub: crate::watch::Hub::default(),
                clock,
            }),
        })
    }

    /// The configuration this handle was built with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// True when watches read the table's DynamoDB Stream; false when they poll (the table
    /// has no stream, or [`WatchMode::Poll`] was chosen).
    pub fn watches_use_streams(&self) -> bool {
        self.inner.stream_arn.is_some()
    }

    /// The SDK client, for what the [`Store`] API does not cover (reading the raw items,
    /// table administration).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }
}

/// Builds the SDK configuration: credential chain or static keys, region, endpoint,
/// timeouts, retries and TLS.
async fn sdk_config(config: &Config) -> Result<aws_config::SdkConfig> {
    use aws_config::retry::RetryConfig;
    use aws_config::timeout::TimeoutConfig;

    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(config.connect_timeout)
                .operation_timeout(config.request_timeout)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(config.max_attempts));
    if let Some(region) = &config.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(endpoint) = &config.endpoint {
        loader = loader.endpoint_url(endpoint.clone());
    }
    if let Credentials::Static {
        access_key_id,
        secret_access_key,
        session_token,
    } = &config.credentials
    {
        loader = loader.credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            access_key_id,
            secret_access_key,
            session_token.clone(),
            None,
            "kv-dynamodb-static",
        ));
    }
    if let Some(ca_file) = &config.tls.ca_file {
        use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
        let path = ca_file.clone();
        let pem = tokio::task::spawn_blocking(move || std::fs::read(&path))
            .await
            .map_err(|e| Error::Config(format!("reading {}: {e}", ca_file.display())))?
            .map_err(|e| Error::Config(format!("reading {}: {e}", ca_file.display())))?;
        let context = TlsContext::builder()
            .with_trust_store(TrustStore::default().with_pem_certificate(pem))
            .build()
            .map_err(|e| Error::Config(format!("CA file {}: {e}", ca_file.display())))?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::AwsLc,
            ))
            .tls_context(context)
            .build_https();
        loader = loader.http_client(http);
    }
    Ok(loader.load().await)
}

impl Inner {
    pub fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.ns_prefix)
    }

    /// The key relative to the namespace, for items of this namespace.
    pub fn relative<'a>(&self, full: &'a str) -> Option<&'a str> {
        full.strip_prefix(self.ns_prefix.as_str())
            .filter(|k| !k.is_empty())
    }

    pub fn timeout(&self) -> Duration {
        self.config.request_timeout
    }

    pub fn pair(&self, item: Item) -> Option<KvPair> {
        let key = self.relative(&item.sk)?.to_owned();
        Some(KvPair {
            key,
            value: item.value,
            last_index: item.version,
        })
    }

    /// Reads one item (live or not).
    pub async fn read_item(&self, full: &str, consistent: bool) -> Result<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.config.table)
            .key(ATTR_PK, s(partition_of(full)))
            .key(ATTR_SK, s(full))
            .consistent_read(consistent)
            .send()
            .await
            .map_err(|e| sdk_error("get_item", self.timeout(), e))?;
        Ok(out.item.as_ref().and_then(Item::from_map))
    }

    /// The live item at `full`, if any.
    pub async fn read_live(&self, full: &str, consistent: bool) -> Result<Option<Item>> {
        let now = self.clock.now_ms();
        Ok(self
            .read_item(full, consistent)
            .await?
            .filter(|item| item.live_at(now)))
    }

    /// Every item whose sort key starts with `prefix` in partition `pk` (or, with `pk`
    /// `None`, in the whole table: a Scan). With `live_only`, tombstones and expired items
    /// are filtered out (server side, and again here).
    pub async fn items_with_prefix(
        &self,
        pk: Option<&str>,
        prefix: &str,
        consistent: bool,
        live_only: bool,
    ) -> Result<Vec<Item>> {
        // No sort key is longer than 1024 bytes, so none starts with a longer prefix (and
        // DynamoDB refuses such a condition with a ValidationException).
        if prefix.len() > MAX_SORT_KEY {
            return Ok(Vec::new());
        }
        // Deletions need only the keys and versions, not the values.
        let projection = (!live_only).then_some(KEYS_ONLY);
        let now = self.clock.now_ms();
        let mut items = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let (page, last) = match pk {
                Some(pk) => {
                    let key_cond = if prefix.is_empty() {
                        "#pk = :pk"
                    } else {
                        "#pk = :pk AND begins_with(#sk, :prefix)"
                    };
                    let filter = live_only.then_some(LIVE_FILTER);
                    let (names, values) = expression_attrs(
                        &[key_cond, filter.unwrap_or(""), projection.unwrap_or("")],
                        vec![(":pk", s(pk)), (":prefix", s(prefix)), (":now", num(now))],
                    );
                    let out = self
                        .client
                        .query()
                        .table_name(&self.config.table)
                        .key_condition_expression(key_cond)
                        .set_filter_expression(filter.map(str::to_owned))
                        .set_projection_expression(projection.map(str::to_owned))
                        .set_expression_attribute_names(names)
                        .set_expression_attribute_values(values)
                        .consistent_read(consistent)
                        .set_exclusive_start_key(start.take())
                        .send()
                        .await
                        .map_err(|e| sdk_error("query", self.timeout(), e))?;
                    (out.items.unwrap_or_default(), out.last_evaluated_key)
                }
                None => {
                    let mut filter = String::new();
                    if !prefix.is_empty() {
                        filter.push_str("begins_with(#sk, :prefix)");
                    }
                    if live_only {
                        if !filter.is_empty() {
                            filter.push_str(" AND ");
                        }
                        filter.push_str(LIVE_FILTER);
                    }
                    let (names, values) = expression_attrs(
                        &[&filter, projection.unwrap_or("")],
                        vec![(":prefix", s(prefix)), (":now", num(now))],
                    );
                    let out = self
                        .client
                        .scan()
                        .table_name(&self.config.table)
                        .set_filter_expression((!filter.is_empty()).then_some(filter))
                        .set_projection_expression(projection.map(str::to_owned))
                        .set_expression_attribute_names(names)
                        .set_expression_attribute_values(values)
                        .consistent_read(consistent)
                        .set_exclusive_start_key(start.take())
                        .send()
                        .await
                        .map_err(|e| sdk_error("scan", self.timeout(), e))?;
                    (out.items.unwrap_or_default(), out.last_evaluated_key)
                }
            };
            items.extend(
                page.iter()
                    // Only items `get` finds: the partition key is the sort key's first
                    // segment (a Scan also returns other programs' items that break this).
                    .filter(|map| {
                        let text = |attr| map.get(attr).and_then(|v| v.as_s().ok());
                        text(ATTR_PK)
                            .zip(text(ATTR_SK))
                            .is_some_and(|(pk, sk)| pk == partition_of(sk))
                    })
                    .filter_map(Item::from_map)
                    .filter(|item| item.sk.starts_with(prefix))
                    .filter(|item| !live_only || item.live_at(now)),
            );
            match last {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        Ok(items)
    }

    /// The live items strictly below the normalised directory, sorted by key.
    pub async fn list_items(&self, directory: &str, consistent: bool) -> Result<Vec<Item>> {
        let mut items = if directory.is_empty() {
            if self.ns_prefix.is_empty() {
                // The root of an un-namespaced store is the whole table: the only Scan.
                self.items_with_prefix(None, "", consistent, true).await?
            } else {
                let pk = partition_of(&self.ns_prefix).to_owned();
                self.items_with_prefix(Some(&pk), &self.ns_prefix, consistent, true)
                    .await?
            }
        } else {
            let full = self.full_key(directory);
            let prefix = key::child_prefix(&full);
            if prefix.len() >= MAX_SORT_KEY {
                // A key below would be longer than DynamoDB's sort keys: there is none (and
                // a directory of `max_key_len` bytes makes a prefix DynamoDB refuses).
                return Ok(Vec::new());
            }
            self.items_with_prefix(Some(partition_of(&full)), &prefix, consistent, true)
                .await?
        };
        items.retain(|item| self.is_key(&item.sk));
        items.sort_by(|a, b| a.sk.cmp(&b.sk));
        Ok(items)
    }

    /// True when the item at `full` holds a key of this namespace that `get` accepts: its
    /// relative key is normalised and follows the key rules (no reserved `__kv` segment,
    /// no `a//b`, no trailing `/`, no forbidden character). Other programs can write any
    /// sort key; `list`, `watch_tree` and `delete_tree` skip the ones no call could name.
    pub fn is_key(&self, full: &str) -> bool {
        self.relative(full)
            .is_some_and(|k| key::normalize_key(k).is_ok_and(|n| n == k))
    }

    pub fn pairs(&self, items: Vec<Item>) -> Vec<KvPair> {
        items.into_iter().filter_map(|i| self.pair(i)).collect()
    }

    /// A conditional PutItem. `values` supplies the placeholders `condition` uses. A write
    /// that meets a transaction in progress on its item (`TransactionConflictException`:
    /// nothing was written) is sent again after a short pause.
    pub async fn put_conditional(
        &self,
        operation: &'static str,
        item: HashMap<String, AttributeValue>,
        condition: &str,
        values: Vec<(&'static str, AttributeValue)>,
        return_old: bool,
    ) -> Result<Conditional> {
        use aws_sdk_dynamodb::operation::put_item::PutItemError;
        let (names, values) = expression_attrs(&[condition], values);
        let mut backoff =
            kv_core::Backoff::new(Duration::from_millis(5), Duration::from_millis(200));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self
                .client
                .put_item()
                .table_name(&self.config.table)
                .set_item(Some(item.clone()))
                .condition_expression(condition)
                .set_expression_attribute_names(names.clone())
                .set_expression_attribute_values(values.clone())
                .return_values(if return_old {
                    ReturnValue::AllOld
                } else {
                    ReturnValue::None
                })
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await;
            match result {
                Ok(out) => {
                    return Ok(Conditional::Written(
                        out.attributes.as_ref().and_then(Item::from_map),
                    ));
                }
                Err(err) => match err.as_service_error() {
                    Some(PutItemError::ConditionalCheckFailedException(failed)) => {
                        return Ok(Conditional::Failed(failed.item().and_then(Item::from_map)));
                    }
                    Some(PutItemError::TransactionConflictException(_))
                        if attempt < TRANSACTION_CONFLICT_RETRIES =>
                    {
                        backoff.wait().await;
                    }
                    _ => return Err(sdk_error(operation, self.timeout(), err)),
                },
            }
        }
    }

    /// Writes a live item at `full`, overwriting whatever is there, with a version above the
    /// current one. `create_only`: only if the key is absent for readers (else `KeyExists`).
    pub async fn write_live(
        &self,
        full: &str,
        value: &[u8],
        deadline_ms: Option<u64>,
        owner: Option<&str>,
        create_only: bool,
    ) -> Result<u64> {
        let condition = if create_only {
            format!("{ABSENT} AND {VERSION_BELOW}")
        } else {
            VERSION_BELOW.to_owned()
        };
        let mut floor = 0;
        for _ in 0..VERSION_RETRIES {
            let version = next_version(floor).ok_or_else(|| version_exhausted(full))?;
            let now = self.clock.now_ms();
            let item = live_item(full, value, version, deadline_ms, owner);
            match self
                .put_conditional(
                    "put_item",
                    item,
                    &condition,
                    vec![(":ver", num(version)), (":now", num(now))],
                    false,
                )
                .await?
            {
                Conditional::Written(_) => return Ok(version),
                Conditional::Failed(current) => {
                    let current = current.ok_or_else(|| {
                        Error::backend(BACKEND, "conditional write failed on a missing item")
                    })?;
                    if create_only && current.live_at(now) {
                        return Err(Error::KeyExists {
                            key: self.relative(full).unwrap_or(full).to_owned(),
                        });
                    }
                    floor = current.version;
                }
            }
        }
        Err(Error::backend(
            BACKEND,
            format!("{full}: too much write contention to pick a version"),
        ))
    }

    /// Replaces the live item at `full`, written at version `previous`, by a new value.
    pub async fn replace_live(
        &self,
        full: &str,
        value: &[u8],
        deadline_ms: Option<u64>,
        previous: u64,
    ) -> Result<u64> {
        let Some(version) = next_version(previous) else {
            return Err(self.cas_above_every_version(full, previous).await);
        };
        let now = self.clock.now_ms();
        let item = live_item(full, value, version, deadline_ms, None);
        let condition = format!("{VERSION_IS} AND {LIVE}");
        match self
            .put_conditional(
                "put_item",
                item,
                &condition,
                vec![(":prev", num(previous)), (":now", num(now))],
                false,
            )
            .await?
        {
            Conditional::Written(_) => Ok(version),
            Conditional::Failed(current) => Err(self.cas_failure(full, current, now, previous)),
        }
    }

    /// The error of a failed compare-and-swap at `previous`: absent → KeyNotFound; a live
    /// item without a version read at its `last_index` → NotSupported (no swap on it can be
    /// safe); else KeyModified.
    fn cas_failure(&self, full: &str, current: Option<Item>, now: u64, previous: u64) -> Error {
        let key = self.relative(full).unwrap_or(full).to_owned();
        match current {
            Some(item) if item.live_at(now) && !item.versioned && previous == VERSIONLESS => {
                versionless_cas()
            }
            Some(item) if item.live_at(now) => Error::KeyModified { key },
            _ => Error::KeyNotFound { key },
        }
    }

    /// The error of a compare-and-swap at `previous` = `u64::MAX`, which has no next version
    /// to write. No write of this crate produces that version, so the swap fails like any
    /// stale one (a read tells `KeyNotFound` from `KeyModified`); only an item another client
    /// stored at that very version matches, and it cannot be written over.
    async fn cas_above_every_version(&self, full: &str, previous: u64) -> Error {
        let current = match self.read_item(full, true).await {
            Ok(current) => current,
            Err(error) => return error,
        };
        let now = self.clock.now_ms();
        match current {
            Some(item) if item.live_at(now) && item.version == previous => version_exhausted(full),
            current => self.cas_failure(full, current, now, previous),
        }
    }

    /// Deletes `full` (a tombstone keeps its version). `Ok(true)` if it was live.
    pub async fn delete_key(&self, full: &str) -> Result<bool> {
        let condition =
            format!("attribute_exists(#sk) AND attribute_not_exists(#del) AND {VERSION_BELOW}");
        let mut floor = 0;
        for _ in 0..VERSION_RETRIES {
            let version = next_version(floor).ok_or_else(|| version_exhausted(full))?;
            let now = self.clock.now_ms();
            let item = tombstone_item(full, version, self.config.tombstone_ttl);
            match self
                .put_conditional(
                    "delete",
                    item,
                    &condition,
                    vec![(":ver", num(version))],
                    true,
                )
                .await?
            {
                Conditional::Written(old) => return Ok(old.is_some_and(|o| o.live_at(now))),
                Conditional::Failed(None) => return Ok(false),
                Conditional::Failed(Some(current)) if current.deleted => return Ok(false),
                Conditional::Failed(Some(current)) => floor = current.version,
            }
        }
        Err(Error::backend(
            BACKEND,
            format!("{full}: too much write contention to pick a version"),
        ))
    }

    /// Compare-and-delete of the live item written at `previous`.
    pub async fn delete_if(&self, full: &str, previous: u64) -> Result<()> {
        let Some(version) = next_version(previous) else {
            return Err(self.cas_above_every_version(full, previous).await);
        };
        let now = self.clock.now_ms();
        let item = tombstone_item(full, version, self.config.tombstone_ttl);
        let condition = format!("{VERSION_IS} AND {LIVE}");
        match self
            .put_conditional(
                "atomic_delete",
                item,
                &condition,
                vec![(":prev", num(previous)), (":now", num(now))],
                false,
            )
            .await?
        {
            Conditional::Written(_) => Ok(()),
            Conditional::Failed(current) => Err(self.cas_failure(full, current, now, previous)),
        }
    }

    /// `directory` itself and every item below it, tombstones included, keys and versions
    /// only: the items `list` would show (whatever their state), plus the directory key.
    pub async fn tree_items(&self, directory: &str) -> Result<Vec<Item>> {
        let mut items = if directory.is_empty() {
            if self.ns_prefix.is_empty() {
                self.items_with_prefix(None, "", true, false).await?
            } else {
                let pk = partition_of(&self.ns_prefix).to_owned();
                self.items_with_prefix(Some(&pk), &self.ns_prefix, true, false)
                    .await?
            }
        } else {
            let full = self.full_key(directory);
            let below = key::child_prefix(&full);
            let mut items = self
                .items_with_prefix(Some(partition_of(&full)), &full, true, false)
                .await?;
            items.retain(|item| item.sk == full || item.sk.starts_with(&below));
            items
        };
        items.retain(|item| self.is_key(&item.sk));
        Ok(items)
    }

    /// Tombstones `items` (at most 100) in one TransactWriteItems, each conditional on the
    /// version read. `Ok(false)` when the transaction was cancelled (a concurrent write).
    pub async fn tombstone_atomically(&self, items: &[Item]) -> Result<bool> {
        let mut actions = Vec::with_capacity(items.len());
        for item in items {
            // An item without a version (another client's) can only be required to still
            // have none: a rewrite by that client goes unnoticed, a write of ours cancels.
            let condition = if item.versioned {
                "#ver = :prev AND attribute_not_exists(#del)"
            } else {
                "(attribute_not_exists(#ver) OR #ver < :prev) AND attribute_not_exists(#del)"
            };
            let version = next_version(item.version).ok_or_else(|| version_exhausted(&item.sk))?;
            let tomb = tombstone_item(&item.sk, version, self.config.tombstone_ttl);
            let (names, values) =
                expression_attrs(&[condition], vec![(":prev", num(item.version))]);
            let put = Put::builder()
                .table_name(&self.config.table)
                .set_item(Some(tomb))
                .condition_expression(condition)
                .set_expression_attribute_names(names)
                .set_expression_attribute_values(values)
                .build()
                .map_err(|e| Error::backend(BACKEND, e))?;
            actions.push(TransactWriteItem::builder().put(put).build());
        }
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(err) => match err.as_service_error() {
                Some(
                    TransactWriteItemsError::TransactionCanceledException(_)
                    | TransactWriteItemsError::TransactionInProgressException(_),
                ) => Ok(false),
                _ => Err(sdk_error("transact_write_items", self.timeout(), err)),
            },
        }
    }

    /// Writes tombstones over `items` with BatchWriteItem (25 per request, a few requests in
    /// flight, unprocessed items retried with backoff).
    pub async fn tombstone_all(&self, items: Vec<Item>) -> Result<()> {
        let requests: Vec<WriteRequest> = items
            .iter()
            .filter(|item| !item.deleted)
            .map(|item| {
                let version =
                    next_version(item.version).ok_or_else(|| version_exhausted(&item.sk))?;
                let tomb = tombstone_item(&item.sk, version, self.config.tombstone_ttl);
                PutRequest::builder()
                    .set_item(Some(tomb))
                    .build()
                    .map(|put| WriteRequest::builder().put_request(put).build())
                    .map_err(|e| Error::backend(BACKEND, e))
            })
            .collect::<Result<_>>()?;
        let chunks: Vec<Vec<WriteRequest>> = requests
            .chunks(BATCH_WRITE_LIMIT)
            .map(<[WriteRequest]>::to_vec)
            .collect();
        let mut results = futures::stream::iter(chunks)
            .map(|chunk| self.batch_write(chunk))
            .buffer_unordered(BATCH_CONCURRENCY);
        while let Some(result) = results.next().await {
            result?;
        }
        Ok(())
    }

    /// One BatchWriteItem of at most 25 requests, retrying unprocessed items.
    pub async fn batch_write(&self, mut requests: Vec<WriteRequest>) -> Result<()> {
        let mut backoff = kv_core::Backoff::new(Duration::from_millis(20), Duration::from_secs(2));
        for _ in 0..12 {
            if requests.is_empty() {
                return Ok(());
            }
            let out = self
                .client
                .batch_write_item()
                .request_items(&self.config.table, std::mem::take(&mut requests))
                .send()
                .await
                .map_err(|e| sdk_error("batch_write_item", self.timeout(), e))?;
            requests = out
                .unprocessed_items
                .and_then(|mut m| m.remove(&self.config.table))
                .unwrap_or_default();
            if !requests.is_empty() {
                backoff.wait().await;
            }
        }
        if requests.is_empty() {
            Ok(())
        } else {
            Err(Error::unavailable(
                BACKEND,
                format!(
                    "batch_write_item: {} items still unprocessed after retries (throttled)",
                    requests.len()
                ),
            ))
        }
    }
}

impl DynamoStore {
    fn deadline(&self, options: &WriteOptions) -> Result<Option<u64>> {
        Ok(self
            .inner
            .caps
            .check_ttl(options.ttl)?
            .map(|ttl| self.inner.clock.deadline_ms(ttl)))
    }
}

#[async_trait]
impl Store for DynamoStore {
    fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn put(&self, key: &str, value: Bytes, options: WriteOptions) -> Result<()> {
        self.inner.tasks.ensure_open()?;
        let key = self.inner.caps.check_key(key)?;
        self.inner.caps.check_value(&key, &value)?;
        let deadline = self.deadline(&options)?;
        let full = self.inner.full_key(&key);
        self.inner
            .write_live(&full, &value, deadline, None, false)
            .await?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn get(&self, key: &str, options: ReadOptions) -> Result<Option<KvPair>> {
        self.inner.tasks.ensure_open()?;
        let key = self.inner.caps.check_key(key)?;
        let full = self.inner.full_key(&key);
        Ok(self
            .inner
            .read_live(&full, options.consistent)
            .await?
            .and_then(|item| self.inner.pair(item)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn delete(&self, key: &str) -> Result<bool> {
        self.inner.tasks.ensure_open()?;
        let key = self.inner.caps.check_key(key)?;
        let full = self.inner.full_key(&key);
        self.inner.delete_key(&full).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, directory = %directory))]
    async fn list(&self, directory: &str, options: ReadOptions) -> Result<Vec<KvPair>> {
        self.inner.tasks.ensure_open()?;
        let directory = self.inner.caps.check_directory(directory)?;
        let items = self
            .inner
            .list_items(&directory, options.consistent)
            .await?;
        Ok(self.inner.pairs(items))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, directory = %directory))]
    async fn delete_tree(&self, directory: &str) -> Result<()> {
        self.inner.tasks.ensure_open()?;
        let directory = self.inner.caps.check_directory(directory)?;
        let inner = &self.inner;
        for attempt in 0.. {
            let mut items = inner.tree_items(&directory).await?;
            items.retain(|item| !item.deleted);
            if items.is_empty() {
                return Ok(());
            }
            // Up to 100 items: one transaction, atomic, conditional on what the Query saw
            // (a concurrent write cancels it and the tree is read again). Beyond that, or
            // when writers keep interfering: batches, not atomic.
            if items.len() > TRANSACTION_LIMIT || attempt >= TRANSACTION_ATTEMPTS {
                return inner.tombstone_all(items).await;
            }
            if inner.tombstone_atomically(&items).await? {
                return Ok(());
            }
        }
        unreachable!("the loop returns")
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
        let deadline = self.deadline(&options)?;
        let full = self.inner.full_key(&key);
        let version = match previous {
            None => {
                self.inner
                    .write_live(&full, &value, deadline, None, true)
                    .await?
            }
            Some(previous) => {
                self.inner
                    .replace_live(&full, &value, deadline, previous.last_index)
                    .await?
            }
        };
        Ok(KvPair {
            key,
            value,
            last_index: version,
        })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()> {
        self.inner.tasks.ensure_open()?;
        let key = self.inner.caps.check_key(key)?;
        let full = self.inner.full_key(&key);
        self.inner.delete_if(&full, previous.last_index).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, conditions = txn.conditions().len(), operations = txn.operations().len()))]
    async fn transaction(&self, txn: Transaction) -> Result<Vec<KvPair>> {
        self.inner.tasks.ensure_open()?;
        let txn = self.capabilities().check_transaction(txn)?;
        self.inner.transaction(txn).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn watch(&self, key: &str, options: ReadOptions) -> Result<WatchStream> {
        self.inner.tasks.ensure_open()?;
        let key = self.inner.caps.check_key(key)?;
        Ok(crate::watch::watch_key(self.inner.clone(), key, options))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, directory = %directory))]
    async fn watch_tree(&self, directory: &str, options: ReadOptions) -> Result<WatchTreeStream> {
        self.inner.tasks.ensure_open()?;
        let directory = self.inner.caps.check_directory(directory)?;
        Ok(crate::watch::watch_tree(
            self.inner.clone(),
            directory,
            options,
        ))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn new_lock(&self, key: &str, options: LockOptions) -> Result<Lock> {
        self.inner.tasks.ensure_open()?;
        let key = self.inner.caps.check_lock(key, &options)?;
        Ok(crate::lock::new_lock(self.inner.clone(), key, options))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn close(&self) -> Result<()> {
        self.inner
            .tasks
            .close(self.inner.config.request_timeout)
            .await;
        Ok(())
    }

    fn background_tasks(&self) -> usize {
        self.inner.tasks.running()
    }
}
