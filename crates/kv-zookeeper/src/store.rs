//! [`ZookeeperStore`]: the [`Store`] implementation.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kv_core::{
    Capabilities, Error, KvPair, Lock, LockOptions, ReadOptions, Result, Store, TaskSet,
    Transaction, WatchStream, WatchTreeStream, WriteOptions,
};
use zookeeper_client as zk;

use crate::clock::{ServerClock, ServerTime};
use crate::config::Config;

/// The backend name used in capabilities and errors.
pub(crate) const BACKEND: &str = "zookeeper";
/// Name of the marker child that makes a znode a written key.
pub(crate) const MARKER: &str = "__kv";
/// Prefix of the ephemeral owner node a lock creates below its key's marker.
pub(crate) const OWNER_PREFIX: &str = "__kvowner-";
/// Name of the directory (below the namespace root) that holds lock queues.
pub(crate) const LOCKS_DIR: &str = "__kvlocks";
/// Name prefix (below the namespace root) of the node a session's clock probe creates and
/// deletes in one transaction (see `clock.rs`).
pub(crate) const CLOCK_PREFIX: &str = "__kvclock-";
/// How often a write retries after losing a race against another writer or the container
/// sweeper before giving up.
pub(crate) const MAX_ATTEMPTS: usize = 64;
/// Nodes per multi-read request while `delete_tree` reads a tree (each costs three reads).
const READ_BATCH: usize = 32;
/// Keys per multi-read while `list` reads a level (two sub-reads each: node and marker). One
/// multi-read per 32 keys cost about twice one per 1,000 keys at c=1 (the server's per-request
/// work); 128 keeps several requests in flight while answers stream back.
const LIST_BATCH: usize = 128;
/// How many multi-reads of a listing are sent before the first answer is awaited.
const READS_IN_FLIGHT: usize = 16;
/// Nodes checked at once (two pipelined `exists` each) after a `watch_tree` walk.
const VERIFY_BATCH: usize = 256;
/// Reads of a tree before `watch_tree` gives up for a back-off (see `snapshot_with_deadlines`).
const SNAPSHOT_ROUNDS: usize = 16;
/// The largest multi-read request `watch_tree` sends to read a whole tree at once (an upper
/// estimate), below the server's `jute.maxbuffer` (1 MiB − 1): about 3,500 keys of 60
/// bytes. Bigger trees are walked and then checked unchanged.
pub(crate) const SNAPSHOT_REQUEST_BYTES: usize = 896 * 1024;

/// The largest value accepted: ZooKeeper refuses requests over `jute.maxbuffer` (1 MiB - 1 by
/// default) and a write carries the path, the ACL and the marker operations besides the value.
pub const MAX_VALUE_LEN: usize = 1_000_000;

/// A handle to a ZooKeeper ensemble implementing [`Store`]. See the [crate documentation](crate)
/// for the storage layout and how each part of the contract is met.
#[derive(Debug)]
pub struct ZookeeperStore {
    pub(crate) inner: Arc<Inner>,
}

/// What the store, its watch loops and its locks share.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) root: String,
    pub(crate) caps: Capabilities,
    pub(crate) tasks: TaskSet,
    client: StdMutex<Option<zk::Client>>,
    rebuild: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    /// The highest zxid this handle has seen in an answer: a new session on a server whose
    /// zxid is below it talks to a server that lost its history.
    zxid_seen: AtomicI64,
    /// Bumped each time the server is found to have lost its history; watches started in
    /// an earlier epoch end with an error.
    history_epoch: AtomicU64,
    acl: zk::Acls<'static>,
    /// The estimate of the server's clock that every TTL deadline is judged on.
    pub(crate) clock: ServerClock,
    /// The `sync` that concurrent linearizable reads share (see [`Inner::start_sync`]).
    syncs: StdMutex<SyncSlot>,
}

/// A key's node and marker as read in one multi-read.
#[derive(Debug, Clone)]
pub(crate) struct KeyState {
    /// The key's znode: value and stat.
    pub(crate) node: Option<(Vec<u8>, zk::Stat)>,
    /// The marker znode.
    pub(crate) marker: Option<Marker>,
    /// The server's clock when the read was answered: expiry is judged on it.
    pub(crate) now: ServerTime,
}

/// A key's marker: its stat and the TTL its data records.
#[derive(Debug, Clone)]
pub(crate) struct Marker {
    pub(crate) stat: zk::Stat,
    /// The TTL in milliseconds, 0 for a permanent key.
    pub(crate) ttl_ms: u64,
    /// The marker's children: the owner node of the lock acquisition that wrote the key, if
    /// any. Only [`Inner::read_key`] reads them (writers must delete them with the marker).
    pub(crate) children: Vec<String>,
}

impl Marker {
    pub(crate) fn new(data: &[u8], stat: zk::Stat) -> Self {
        let ttl_ms = std::str::from_utf8(data)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        Marker {
            stat,
            ttl_ms,
            children: Vec::new(),
        }
    }

    /// The expiry deadline in Unix milliseconds, 0 for none: the marker's `mtime` (set by the
    /// server at the write, or at the last lock renewal) plus the TTL.
    pub(crate) fn deadline(&self) -> u64 {
        if self.ttl_ms == 0 {
            0
        } else {
            (self.stat.mtime as u64).saturating_add(self.ttl_ms)
        }
    }
}

/// The data of a marker: the TTL in milliseconds as ASCII decimal, empty when permanent.
/// ZooKeeper does not tell clients a node's TTL (its stat shows `ephemeralOwner` 0 for TTL
/// nodes), so the marker records it.
pub(crate) fn marker_data(ttl: Option<Duration>) -> Vec<u8> {
    ttl.map(|ttl| ttl.as_millis().to_string().into_bytes())
        .unwrap_or_default()
}

impl KeyState {
    /// True when the key is written and not expired (by the best estimate of the server's
    /// clock).
    pub(crate) fn visible(&self) -> bool {
        self.node.is_some()
            && self
                .marker
                .as_ref()
                .is_some_and(|m| !self.now.expired(m.deadline()))
    }

    /// True when the key is written and not *surely* expired: a lock waiter does not take
    /// the key over before its deadline has passed even if the server's clock is at the low
    /// end of the estimate.
    pub(crate) fn blocks_lock(&self) -> bool {
        self.node.is_some()
            && self
                .marker
                .as_ref()
                .is_some_and(|m| !self.now.surely_expired(m.deadline()))
    }

    /// The visible pair, if any.
    pub(crate) fn pair(&self, key: &str) -> Option<KvPair> {
        if !self.visible() {
            return None;
        }
        let (data, stat) = self.node.as_ref()?;
        Some(KvPair::new(
            key,
            Bytes::copy_from_slice(data),
            stat.mzxid as u64,
        ))
    }

    /// The deadline (Unix ms on the server's clock, 0 = none) of a visible key.
    pub(crate) fn deadline(&self) -> u64 {
        match &self.marker {
            Some(m) if self.visible() => m.deadline(),
            _ => 0,
        }
    }

    /// The deadline (server's clock, 0 = none) of a key that [blocks a lock](Self::blocks_lock).
    pub(crate) fn lock_deadline(&self) -> u64 {
        match &self.marker {
            Some(m) if self.blocks_lock() => m.deadline(),
            _ => 0,
        }
    }
}

/// The escape character of znode names: ZooKeeper refuses UTF-16 surrogates in paths, so a
/// character outside the Basic Multilingual Plane (an emoji) is stored as `␚` followed by six
/// hex digits of its code point, and `␚` itself as `␚00241A`. Every other key is stored as is.
pub(crate) const ESCAPE: char = '\u{241A}';

/// The znode spelling of a normalised key (see [`ESCAPE`]).
pub(crate) fn encode_key(key: &str) -> std::borrow::Cow<'_, str> {
    if !key.chars().any(|c| c == ESCAPE || c as u32 > 0xFFFF) {
        return std::borrow::Cow::Borrowed(key);
    }
    let mut out = String::with_capacity(key.len() + 16);
    for c in key.chars() {
        if c == ESCAPE || c as u32 > 0xFFFF {
            out.push(ESCAPE);
            out.push_str(&format!("{:06X}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The key segment a znode name stands for (the inverse of [`encode_key`]).
pub(crate) fn decode_name(name: &str) -> String {
    if !name.contains(ESCAPE) {
        return name.to_owned();
    }
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find(ESCAPE) {
        out.push_str(&rest[..i]);
        let after = &rest[i + ESCAPE.len_utf8()..];
        let decoded = after
            .get(..6)
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .and_then(char::from_u32);
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &after[6..];
            }
            None => {
                // Not written by this crate: keep it verbatim.
                out.push(ESCAPE);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The key that the child znode `name` of `parent`'s node (a normalised directory, `""` for
/// the namespace root) stands for, or `None` when this crate cannot have written it: the
/// `__kv…` names (markers, lock queues, clock probes), and names written by other programs
/// that do not decode to a valid key segment (one that [`encode_key`] spells back as `name`
/// and that kv-core's key rules accept, e.g. not `a//b` or a forbidden character). `list`
/// neither shows nor descends into such nodes, and `delete_tree` leaves them alone.
pub(crate) fn child_key(parent: &str, name: &str) -> Option<String> {
    if name.starts_with(kv_core::key::RESERVED_PREFIX) {
        return None;
    }
    let segment = decode_name(name);
    if segment.contains('/') || encode_key(&segment) != name {
        return None;
    }
    let key = format!("{}{segment}", kv_core::key::child_prefix(parent));
    match kv_core::key::normalize_key(&key) {
        Ok(normalized) if normalized == key => Some(key),
        _ => None,
    }
}

/// Maps a client-library error.
pub(crate) fn map_zk(error: zk::Error, operation: &'static str, after: Duration) -> Error {
    use zk::Error as Z;
    match error {
        Z::NoHosts | Z::ConnectionLoss | Z::SessionExpired | Z::ClientClosed | Z::SessionMoved => {
            Error::unavailable(BACKEND, error)
        }
        Z::Timeout => Error::Timeout {
            backend: BACKEND,
            operation,
            after,
        },
        Z::NoAuth | Z::AuthFailed => Error::PermissionDenied {
            backend: BACKEND,
            message: format!("{operation}: {error}"),
        },
        // The library reports socket failures (reset, broken pipe, TLS) as custom errors
        // wrapping the I/O error; it raises no other custom error with our feature set.
        Z::Custom(_) => Error::unavailable(BACKEND, error),
        other => Error::backend(BACKEND, other),
    }
}

impl Inner {
    /// The namespace-relative key's znode path.
    pub(crate) fn node_path(&self, key: &str) -> String {
        if key.is_empty() {
            self.root.clone()
        } else {
            format!("{}/{}", self.root, encode_key(key))
        }
    }

    pub(crate) fn marker_path(&self, key: &str) -> String {
        format!("{}/{}/{MARKER}", self.root, encode_key(key))
    }

    /// The path of the marker's child `name` (a lock's owner node).
    pub(crate) fn marker_child_path(&self, key: &str, name: &str) -> String {
        format!("{}/{name}", self.marker_path(key))
    }

    pub(crate) fn options(&self, mode: zk::CreateMode) -> zk::CreateOptions<'static> {
        mode.with_acls(self.acl)
    }

    /// Creation options for a key's marker.
    pub(crate) fn marker_options(&self, ttl: Option<Duration>) -> zk::CreateOptions<'static> {
        let options = self.options(zk::CreateMode::Persistent);
        match ttl {
            Some(ttl) => options.with_ttl(ttl),
            None => options,
        }
    }

    /// Notes a zxid seen in an answer.
    pub(crate) fn observe_zxid(&self, zxid: i64) {
        self.zxid_seen.fetch_max(zxid, Ordering::SeqCst);
    }

    /// How many times the server was found to have lost its history through this handle.
    pub(crate) fn history_epoch(&self) -> u64 {
        self.history_epoch.load(Ordering::SeqCst)
    }

    /// The error that ends a watch started before the server lost its history.
    pub(crate) fn history_lost_error(&self) -> Error {
        Error::backend(
            BACKEND,
            "the ZooKeeper server lost its history: its zxid is below one this handle had \
             already seen (a server restarted without its data, or restored from an older \
             snapshot); this watch belongs to the lost history (watch again), locks held \
             before are lost, and fencing tokens start low again",
        )
    }

    /// On a new session: the server's current zxid (one probe write) against the highest
    /// this handle saw; below it, the server lost its history and the epoch moves on.
    async fn check_history(&self, client: &zk::Client) {
        let seen = self.zxid_seen.load(Ordering::SeqCst);
        if seen == 0 {
            return;
        }
        let mut probe = self.probe_clock(client).await;
        if probe.is_err() {
            // The namespace's root may be gone with the data: make it and try once more.
            let path = self.clock_path(client);
            if self.ensure_parents(client, &path).await.is_ok() {
                probe = self.probe_clock(client).await;
            }
        }
        match probe {
            Ok(now) if now < seen => {
                tracing::warn!(
                    seen,
                    now,
                    "the ZooKeeper server lost its history (zxid went backwards): ending this handle's watches"
                );
                self.zxid_seen.store(now, Ordering::SeqCst);
                self.history_epoch.fetch_add(1, Ordering::SeqCst);
            }
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "could not read the new session's zxid"),
        }
    }

    /// The session generation: bumped whenever an expired session is replaced.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The current client; replaces it first if its session has ended (expired). Fails with
    /// [`Error::Closed`] after close.
    pub(crate) async fn client(&self) -> Result<zk::Client> {
        let current = self.current_client()?;
        if !is_terminal(current.state()) {
            return Ok(current);
        }
        let _guard = self.rebuild.lock().await;
        let current = self.current_client()?;
        if !is_terminal(current.state()) {
            return Ok(current);
        }
        if current.state() == zk::SessionState::AuthFailed {
            return Err(Error::PermissionDenied {
                backend: BACKEND,
                message: "the server rejected the credentials".into(),
            });
        }
        tracing::info!(
            "ZooKeeper session ended ({:?}): connecting a new one",
            current.state()
        );
        let fresh = connect_client(&self.config).await?;
        self.check_history(&fresh).await;
        let mut slot = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            return Err(Error::Closed);
        }
        *slot = Some(fresh.clone());
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(fresh)
    }

    pub(crate) fn current_client(&self) -> Result<zk::Client> {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(Error::Closed)
    }

    fn take_client(&self) -> Option<zk::Client> {
        self.client.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Runs one request with the configured timeout, mapping errors.
    pub(crate) async fn timed<T, E>(
        &self,
        operation: &'static str,
        request: impl Future<Output = std::result::Result<T, E>>,
    ) -> Result<std::result::Result<T, zk::Error>>
    where
        E: Into<zk::Error>,
    {
        let after = self.config.request_timeout;
        match tokio::time::timeout(after, request).await {
            Err(_) => Err(Error::Timeout {
                backend: BACKEND,
                operation,
                after,
            }),
            Ok(result) => Ok(result.map_err(Into::into)),
        }
    }

    /// Like [`timed`](Self::timed), but every server error is a failure.
    pub(crate) async fn request<T, E>(
        &self,
        operation: &'static str,
        request: impl Future<Output = std::result::Result<T, E>>,
    ) -> Result<T>
    where
        E: Into<zk::Error>,
    {
        self.timed(operation, request)
            .await?
            .map_err(|e| map_zk(e, operation, self.config.request_timeout))
    }

    /// Reads a key's node, marker and the marker's children in one consistent multi-read.
    pub(crate) async fn read_key(&self, client: &zk::Client, key: &str) -> Result<KeyState> {
        let mut states = self.read_keys(client, &[key], "get").await?;
        states
            .pop()
            .ok_or_else(|| Error::backend(BACKEND, "unexpected multi-read response"))
    }

    /// Reads several keys' nodes, markers and the markers' children in ONE multi-read, so
    /// the states are a snapshot of one instant (the server answers a multi-read between two
    /// writes). In the order of `keys`.
    pub(crate) async fn read_keys(
        &self,
        client: &zk::Client,
        keys: &[&str],
        operation: &'static str,
    ) -> Result<Vec<KeyState>> {
        let mut reader = client.new_multi_reader();
        for key in keys {
            let node = self.node_path(key);
            let marker = self.marker_path(key);
            let build = (|| {
                reader.add_get_data(&node)?;
                reader.add_get_data(&marker)?;
                reader.add_get_children(&marker)
            })();
            build.map_err(|e| Error::backend(BACKEND, e))?;
        }
        self.refresh_clock(client).await;
        let results = self.request(operation, reader.commit()).await?;
        let now = self.clock.now();
        let timeout = self.config.request_timeout;
        let mut results = results.into_iter();
        let mut states = Vec::with_capacity(keys.len());
        for _ in keys {
            let node = match results.next() {
                Some(zk::MultiReadResult::Data { data, stat }) => Some((data, stat)),
                Some(zk::MultiReadResult::Error {
                    err: zk::Error::NoNode,
                }) => None,
                Some(zk::MultiReadResult::Error { err }) => {
                    return Err(map_zk(err, operation, timeout));
                }
                _ => return Err(Error::backend(BACKEND, "unexpected multi-read response")),
            };
            let mut marker = match results.next() {
                Some(zk::MultiReadResult::Data { data, stat }) => Some(Marker::new(&data, stat)),
                Some(zk::MultiReadResult::Error {
                    err: zk::Error::NoNode,
                }) => None,
                Some(zk::MultiReadResult::Error { err }) => {
                    return Err(map_zk(err, operation, timeout));
                }
                _ => return Err(Error::backend(BACKEND, "unexpected multi-read response")),
            };
            match results.next() {
                Some(zk::MultiReadResult::Children { children }) => {
                    if let Some(marker) = &mut marker {
                        marker.children = children;
                    }
                }
                Some(zk::MultiReadResult::Error {
                    err: zk::Error::NoNode,
                }) => {}
                Some(zk::MultiReadResult::Error { err }) => {
                    return Err(map_zk(err, operation, timeout));
                }
                _ => return Err(Error::backend(BACKEND, "unexpected multi-read response")),
            }
            for stat in node
                .iter()
                .map(|(_, stat)| stat)
                .chain(marker.iter().map(|m| &m.stat))
            {
                self.observe_zxid(stat.mzxid);
            }
            states.push(KeyState { node, marker, now });
        }
        Ok(states)
    }

    /// The path of the session's clock probe node.
    fn clock_path(&self, client: &zk::Client) -> String {
        format!(
            "{}/{CLOCK_PREFIX}{:016x}",
            self.root,
            client.session_id().0 as u64
        )
    }

    /// Takes a sample of the server's clock: one transaction that creates the session's
    /// ephemeral probe node `/<ns>/__kvclock-<session>`, sets its data and deletes it again
    /// (nothing is left behind), whose `setData` answer carries the `mtime` the server
    /// stamped on the transaction. (The stat of a `create` in a multi-op is not reliable on
    /// every server version: ZOOKEEPER-4026.)
    pub(crate) async fn probe_clock(&self, client: &zk::Client) -> Result<i64> {
        let path = self.clock_path(client);
        let mut writer = client.new_multi_writer();
        let build = (|| {
            writer.add_create(&path, &[], &self.options(zk::CreateMode::Ephemeral))?;
            writer.add_set_data(&path, &[], None)?;
            writer.add_delete(&path, None)
        })();
        build.map_err(|e| Error::backend(BACKEND, e))?;
        let sent = tokio::time::Instant::now();
        let results = self.request("clock", writer.commit()).await?;
        Ok(self.record_set_data(results, sent)?.mzxid)
    }

    /// Before a decision that depends on the server's clock: takes a new sample if the
    /// newest is older than [`crate::clock::REFRESH`]. A failed probe is logged, not fatal:
    /// the decision then uses the samples there are (or the local clock if there are none).
    pub(crate) async fn refresh_clock(&self, client: &zk::Client) {
        if !self.clock.needs_probe() {
            return;
        }
        let _probing = self.clock.probing.lock().await;
        if !self.clock.needs_probe() {
            return;
        }
        self.clock.attempting();
        if let Err(error) = self.probe_clock(client).await {
            tracing::warn!(%error, "could not sample the ZooKeeper server's clock");
        }
    }

    /// `sync` before a read when the caller wants a linearizable read (so that a follower has
    /// caught up with the leader). ZooKeeper serves a session's requests in order, so a read
    /// sent after a `sync` is answered only once that `sync` is done, and it reflects every
    /// write completed before the `sync` was sent. Any `sync` sent after this call began
    /// therefore serves: concurrent reads share one (a sync costs the server about as much
    /// as the read itself, so one per read halved read throughput). A read joins the shared
    /// `sync` if it was sent after the read was called and is still pending (a reconnect
    /// then fails both); if an older one is pending, it waits for it to end and then sends
    /// or joins the next. The `sync` is sent before this returns, so the caller sends its
    /// read right after and awaits both: one round trip, as before, when nothing else reads.
    pub(crate) async fn start_sync(
        &self,
        client: &zk::Client,
        options: &ReadOptions,
    ) -> Result<impl Future<Output = Result<()>> + '_> {
        let timeout = self.config.request_timeout;
        let expired = move || Error::Timeout {
            backend: BACKEND,
            operation: "sync",
            after: timeout,
        };
        if !options.consistent {
            return Ok(futures::future::Either::Left(std::future::ready(Ok(()))));
        }
        let session = client.session_id().0;
        let called = self.syncs.lock().unwrap_or_else(|e| e.into_inner()).sent;
        // Yields the sync's answer as a future on purpose: the read is sent before it is awaited.
        #[allow(clippy::async_yields_async)]
        let shared = async {
            loop {
                let (sync, usable) = {
                    let mut slot = self.syncs.lock().unwrap_or_else(|e| e.into_inner());
                    match &slot.current {
                        Some(current) if current.session == session && current.pending() => {
                            (current.sync.clone(), current.number > called)
                        }
                        _ => {
                            slot.sent += 1;
                            let sync = send_sync(client, &self.root);
                            slot.current = Some(SharedSync {
                                number: slot.sent,
                                session,
                                sync: sync.clone(),
                            });
                            (sync, true)
                        }
                    }
                };
                if usable {
                    return sync;
                }
                // Too old for this read: wait for it to end, then take the next.
                let _ = sync.await;
            }
        };
        // The wait for an older sync counts against the request timeout too.
        let started = tokio::time::Instant::now();
        let sync = tokio::time::timeout(timeout, shared)
            .await
            .map_err(|_| expired())?;
        let left = timeout.saturating_sub(started.elapsed());
        Ok(futures::future::Either::Right(async move {
            match tokio::time::timeout(left, sync).await {
                Ok(result) => result.map_err(|e| map_zk(e, "sync", timeout)),
                Err(_) => Err(expired()),
            }
        }))
    }

    pub(crate) async fn ensure_parents(&self, client: &zk::Client, path: &str) -> Result<()> {
        let Some((parent, _)) = path.rsplit_once('/') else {
            return Ok(());
        };
        if parent.is_empty() {
            return Ok(());
        }
        let options = self.options(zk::CreateMode::Container);
        self.request("mkdir", client.mkdir(parent, &options)).await
    }

    /// Writes `value` at `key` with a marker of the given kind, whatever is there. Used by
    /// `put` and, with `must_be_absent`, by create-only writes. A lock passes `owner`: the
    /// name of the ephemeral node created below the new marker in the same transaction (see
    /// `lock.rs`). The old marker's children (a previous holder's owner node) are deleted with
    /// it. Returns the write's stat (`mzxid` = the new `last_index`) and when the transaction
    /// that succeeded was sent (the new marker's `mtime` is not earlier).
    pub(crate) async fn write_key(
        &self,
        client: &zk::Client,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        expect: Expect,
        owner: Option<&str>,
    ) -> Result<(zk::Stat, tokio::time::Instant)> {
        let node = self.node_path(key);
        let marker = self.marker_path(key);
        let marker_options = self.marker_options(ttl);
        let owner = owner.map(|name| {
            (
                self.marker_child_path(key, name),
                self.options(zk::CreateMode::Ephemeral),
            )
        });
        if matches!(expect, Expect::Any)
            && owner.is_none()
            && let Some(written) = self
                .overwrite(client, &node, &marker, value, ttl, &marker_options)
                .await?
        {
            return Ok(written);
        }
        for _ in 0..MAX_ATTEMPTS {
            let state = self.read_key(client, key).await?;
            match expect {
                Expect::Any => {}
                // A lock takes over an expired key only once it has surely expired.
                Expect::Absent if owner.is_some() && state.blocks_lock() => {
                    return Err(Error::KeyExists {
                        key: key.to_owned(),
                    });
                }
                Expect::Absent if owner.is_none() && state.visible() => {
                    return Err(Error::KeyExists {
                        key: key.to_owned(),
                    });
                }
                Expect::Absent => {}
                Expect::Index(previous) => {
                    if !state.visible() {
                        return Err(Error::KeyNotFound {
                            key: key.to_owned(),
                        });
                    }
                    let (_, stat) = state.node.as_ref().expect("visible");
                    if stat.mzxid as u64 != previous {
                        return Err(Error::KeyModified {
                            key: key.to_owned(),
                        });
                    }
                }
            }
            let mut writer = client.new_multi_writer();
            let build = (|| {
                match &state.node {
                    None => {
                        writer.add_create(&node, &[], &self.options(zk::CreateMode::Container))?;
                        writer.add_set_data(&node, value, Some(0))?;
                    }
                    Some((_, stat)) => writer.add_set_data(&node, value, Some(stat.version))?,
                }
                if let Some(m) = &state.marker {
                    for child in &m.children {
                        writer.add_delete(&self.marker_child_path(key, child), None)?;
                    }
                    writer.add_delete(&marker, Some(m.stat.version))?;
                }
                writer.add_create(&marker, &marker_data(ttl), &marker_options)?;
                if let Some((path, options)) = &owner {
                    writer.add_create(path, &[], options)?;
                }
                Ok::<_, zk::Error>(())
            })();
            build.map_err(|e| Error::backend(BACKEND, e))?;
            let sent_at = tokio::time::Instant::now();
            match self.timed("put", writer.commit()).await? {
                Ok(results) => return Ok((self.record_set_data(results, sent_at)?, sent_at)),
                Err(zk::Error::NoNode) if state.node.is_none() => {
                    self.ensure_parents(client, &node).await?;
                }
                // Raced with another writer, the sweeper or an owner's session ending.
                Err(
                    zk::Error::NoNode
                    | zk::Error::NodeExists
                    | zk::Error::BadVersion
                    | zk::Error::NotEmpty,
                ) => {}
                Err(error) => return Err(map_zk(error, "put", self.config.request_timeout)),
            }
        }
        Err(Error::backend(
            BACKEND,
            format!("put {key}: too much contention, gave up"),
        ))
    }

    /// The stat of the `setData` in a committed multi-op sent at `sent_at`. Its answer carries
    /// the server's clock and zxid for free: both are recorded.
    pub(crate) fn record_set_data(
        &self,
        results: Vec<zk::MultiWriteResult>,
        sent_at: tokio::time::Instant,
    ) -> Result<zk::Stat> {
        let stat = results
            .into_iter()
            .find_map(|r| match r {
                zk::MultiWriteResult::SetData { stat } => Some(stat),
                _ => None,
            })
            .ok_or_else(|| Error::backend(BACKEND, "multi response without set_data"))?;
        self.clock.record_write(sent_at, stat.mtime);
        self.observe_zxid(stat.mzxid);
        Ok(stat)
    }

    /// A plain put over a key that exists with a marker and nothing below the marker (the
    /// common case: the key was written by this crate and is not locked) in one multi-op,
    /// without reading the key first: the value is set whatever its version, and the marker
    /// replaced by a fresh one (a new TTL, or none). Any other state fails the multi as a
    /// whole (`NoNode`: no node or no marker; `NotEmpty`: a lock's owner below the marker)
    /// and nothing is written: `Ok(None)`, the caller reads the key and writes what that
    /// state needs. This saves the read's round trip on an overwrite; a create pays one
    /// failed multi more.
    async fn overwrite(
        &self,
        client: &zk::Client,
        node: &str,
        marker: &str,
        value: &[u8],
        ttl: Option<Duration>,
        marker_options: &zk::CreateOptions<'_>,
    ) -> Result<Option<(zk::Stat, tokio::time::Instant)>> {
        let mut writer = client.new_multi_writer();
        writer
            .add_set_data(node, value, None)
            .and_then(|()| writer.add_delete(marker, None))
            .and_then(|()| writer.add_create(marker, &marker_data(ttl), marker_options))
            .map_err(|e| Error::backend(BACKEND, e))?;
        let sent_at = tokio::time::Instant::now();
        match self.timed("put", writer.commit()).await? {
            Ok(results) => Ok(Some((self.record_set_data(results, sent_at)?, sent_at))),
            Err(
                zk::Error::NoNode
                | zk::Error::NotEmpty
                | zk::Error::NodeExists
                | zk::Error::BadVersion,
            ) => Ok(None),
            Err(error) => Err(map_zk(error, "put", self.config.request_timeout)),
        }
    }

    /// Deletes the key's marker with its children (a lock's owner node), and its node when
    /// nothing else is below it, if the key is visible and `check` accepts its state. Returns
    /// false when the key was absent.
    pub(crate) async fn delete_key(
        &self,
        client: &zk::Client,
        key: &str,
        check: impl Fn(&KeyState) -> Result<()>,
        require_visible: bool,
    ) -> Result<bool> {
        let node = self.node_path(key);
        let marker = self.marker_path(key);
        for _ in 0..MAX_ATTEMPTS {
            let state = self.read_key(client, key).await?;
            let (Some((_, stat)), Some(m)) = (&state.node, &state.marker) else {
                return Ok(false);
            };
            if require_visible && !state.visible() {
                return Ok(false);
            }
            check(&state)?;
            let mut writer = client.new_multi_writer();
            let build = (|| {
                for child in &m.children {
                    writer.add_delete(&self.marker_child_path(key, child), None)?;
                }
                writer.add_delete(&marker, Some(m.stat.version))?;
                // The key's node stays (empty; the server's container sweep removes it once
                // it has no children): deleting it would restart its data version at 0 when
                // the key is written again, and a late conditional write or delete still
                // holding the old version would then hit the new key (an ABA the fault
                // suite's linearizability check found).
                writer.add_set_data(&node, &[], Some(stat.version))
            })();
            build.map_err(|e| Error::backend(BACKEND, e))?;
            match self.timed("delete", writer.commit()).await? {
                Ok(_) => return Ok(true),
                Err(zk::Error::NoNode | zk::Error::BadVersion | zk::Error::NotEmpty) => {}
                Err(error) => return Err(map_zk(error, "delete", self.config.request_timeout)),
            }
        }
        Err(Error::backend(
            BACKEND,
            format!("delete {key}: too much contention, gave up"),
        ))
    }

    /// Every visible key strictly below `directory`, sorted, with its deadline.
    pub(crate) async fn list_with_deadlines(
        &self,
        client: &zk::Client,
        directory: &str,
    ) -> Result<Vec<(KvPair, u64)>> {
        self.walk(client, directory, None).await
    }

    /// Like [`list_with_deadlines`](Self::list_with_deadlines), but the state of the whole
    /// tree at ONE instant: `watch_tree` uses it, so that it never reports part of a
    /// transaction. Every key known to be in the tree is read in ONE multi-read (a snapshot:
    /// the server answers it between two writes), together with the directory's node and
    /// every node's children. The answer is the tree's state if it is *closed*: every key
    /// reachable from the directory through the children it lists was part of the read. The
    /// keys to read come from a walk of children lists only ([`discover`](Self::discover));
    /// if keys were created meanwhile, the keys found are added and the read is repeated.
    /// Rewriting values never disturbs it, only keys appearing faster than the reads follow
    /// them. (ZooKeeper's CommitProcessor processes no read in parallel with a write, so a
    /// multi-read is one instant.) Trees too big for one request (see [`SNAPSHOT_REQUEST_BYTES`]) are walked
    /// and then checked unchanged instead (see [`verified_walk`](Self::verified_walk)).
    pub(crate) async fn snapshot_with_deadlines(
        &self,
        client: &zk::Client,
        directory: &str,
    ) -> Result<Vec<(KvPair, u64)>> {
        let base = self.node_path(directory);
        self.refresh_clock(client).await;
        let mut known = self.discover(client, directory).await?;
        for _ in 0..SNAPSHOT_ROUNDS {
            let paths: Vec<(String, String)> = known
                .iter()
                .map(|key| (self.node_path(key), self.marker_path(key)))
                .collect();
            let bytes: usize = paths
                .iter()
                .map(|(node, marker)| 2 * node.len() + marker.len() + 3 * 24)
                .sum();
            if bytes > SNAPSHOT_REQUEST_BYTES {
                return self.verified_walk(client, directory).await;
            }
            let mut reader = client.new_multi_reader();
            let build = (|| {
                reader.add_get_data(&base)?;
                reader.add_get_children(&base)?;
                for (node, marker) in &paths {
                    reader.add_get_data(node)?;
                    reader.add_get_children(node)?;
                    reader.add_get_data(marker)?;
                }
                Ok::<_, zk::Error>(())
            })();
            build.map_err(|e| Error::backend(BACKEND, e))?;
            let results = self.request("watch_tree", reader.commit()).await?;
            let now = self.clock.now();
            let timeout = self.config.request_timeout;
            let unexpected = || Error::backend(BACKEND, "unexpected multi-read response");
            let mut results = results.into_iter();
            let top = match (results.next(), results.next()) {
                (
                    Some(zk::MultiReadResult::Data { .. }),
                    Some(zk::MultiReadResult::Children { children }),
                ) => children,
                (
                    Some(zk::MultiReadResult::Error {
                        err: zk::Error::NoNode,
                    }),
                    _,
                ) => return Ok(Vec::new()),
                (Some(zk::MultiReadResult::Error { err }), _)
                | (_, Some(zk::MultiReadResult::Error { err })) => {
                    return Err(map_zk(err, "watch_tree", timeout));
                }
                _ => return Err(unexpected()),
            };
            // What the read says of each known key: its state and its children's keys.
            let mut read: HashMap<&str, (KeyState, Vec<String>)> = HashMap::new();
            for key in &known {
                let (data, children, marker) = (results.next(), results.next(), results.next());
                let node = match data {
                    Some(zk::MultiReadResult::Data { data, stat }) => (data, stat),
                    // Not (or no longer) there: not reachable in this read either.
                    Some(zk::MultiReadResult::Error {
                        err: zk::Error::NoNode,
                    }) => continue,
                    Some(zk::MultiReadResult::Error { err }) => {
                        return Err(map_zk(err, "watch_tree", timeout));
                    }
                    _ => return Err(unexpected()),
                };
                let children = match children {
                    Some(zk::MultiReadResult::Children { children }) => {
                        children.iter().filter_map(|c| child_key(key, c)).collect()
                    }
                    _ => Vec::new(),
                };
                let marker = match marker {
                    Some(zk::MultiReadResult::Data { data, stat }) => {
                        Some(Marker::new(&data, stat))
                    }
                    _ => None,
                };
                let state = KeyState {
                    node: Some(node),
                    marker,
                    now,
                };
                read.insert(key.as_str(), (state, children));
            }
            // The tree as this read shows it, from the directory down.
            let mut found = Vec::new();
            let mut reachable = Vec::new();
            let mut missing = false;
            let mut stack: Vec<String> =
                top.iter().filter_map(|c| child_key(directory, c)).collect();
            while let Some(key) = stack.pop() {
                match read.get(key.as_str()) {
                    Some((state, children)) => {
                        stack.extend(children.iter().cloned());
                        if let Some(pair) = state.pair(&key) {
                            found.push((pair, state.deadline()));
                        }
                    }
                    None => missing = true,
                }
                reachable.push(key);
            }
            if !missing {
                found.sort_by(|a, b| a.0.key.as_bytes().cmp(b.0.key.as_bytes()));
                return Ok(found);
            }
            // Read again with every key this read reached (and only those).
            known = reachable;
        }
        // Transient: the watch loop retries after a back-off; nothing partial is reported.
        Err(Error::unavailable(
            BACKEND,
            "watch_tree: the tree kept growing faster than it could be read",
        ))
    }

    /// The keys below `directory` (written or parent-only), found by a walk that reads only
    /// children lists (many nodes per multi-read): where
    /// [`snapshot_with_deadlines`](Self::snapshot_with_deadlines) starts, so that a deep tree
    /// takes one atomic read, not one per level.
    async fn discover(&self, client: &zk::Client, directory: &str) -> Result<Vec<String>> {
        let base = self.node_path(directory);
        let top = match self
            .timed("watch_tree", client.list_children(&base))
            .await?
        {
            Ok(children) => children,
            Err(zk::Error::NoNode) => return Ok(Vec::new()),
            Err(e) => return Err(map_zk(e, "watch_tree", self.config.request_timeout)),
        };
        let mut frontier: Vec<String> =
            top.iter().filter_map(|c| child_key(directory, c)).collect();
        let mut found = Vec::new();
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for chunk in frontier.chunks(3 * READ_BATCH) {
                let mut reader = client.new_multi_reader();
                for key in chunk {
                    reader
                        .add_get_children(&self.node_path(key))
                        .map_err(|e| Error::backend(BACKEND, e))?;
                }
                let results = self.request("watch_tree", reader.commit()).await?;
                for (key, result) in chunk.iter().zip(results) {
                    if let zk::MultiReadResult::Children { children } = result {
                        next.extend(children.iter().filter_map(|c| child_key(key, c)));
                    }
                }
            }
            found.append(&mut frontier);
            frontier = next;
        }
        Ok(found)
    }

    /// For trees too big for one multi-read: the walk of `list`, then a check that every node
    /// it read is still unchanged: same `czxid` (not re-created), `mzxid` (value not
    /// rewritten) and `pzxid` (no child created or deleted, so no key appeared or vanished
    /// below it, no marker created or deleted: a marker is a child of its key's node). Each
    /// node was then unchanged from its read in the walk to its check, so all of them were as
    /// read at the instant the walk ended: the result is that instant's tree. A disturbed
    /// walk is redone. Lock renewals only touch markers' data, which is not compared.
    async fn verified_walk(
        &self,
        client: &zk::Client,
        directory: &str,
    ) -> Result<Vec<(KvPair, u64)>> {
        for _ in 0..SNAPSHOT_ROUNDS {
            let mut seen = Vec::new();
            let found = self.walk(client, directory, Some(&mut seen)).await?;
            if self.unchanged(client, &seen).await? {
                return Ok(found);
            }
        }
        Err(Error::unavailable(
            BACKEND,
            "watch_tree: the tree changed during every read",
        ))
    }

    /// True when every node in `seen` still has the stat the walk read.
    async fn unchanged(&self, client: &zk::Client, seen: &[Seen]) -> Result<bool> {
        for chunk in seen.chunks(VERIFY_BATCH) {
            let checks = chunk.iter().map(|node| async move {
                let stat = self
                    .request("watch_tree", client.check_stat(&node.path))
                    .await?;
                Ok::<_, Error>(stat.is_some_and(|stat| {
                    (stat.czxid, stat.mzxid, stat.pzxid) == (node.czxid, node.mzxid, node.pzxid)
                }))
            });
            let results = futures::future::try_join_all(checks).await?;
            if results.iter().any(|same| !same) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The walk behind `list` and `watch_tree`; records what it read in `seen` when given.
    async fn walk(
        &self,
        client: &zk::Client,
        directory: &str,
        mut seen: Option<&mut Vec<Seen>>,
    ) -> Result<Vec<(KvPair, u64)>> {
        let base = self.node_path(directory);
        self.refresh_clock(client).await;
        let mut reader = client.new_multi_reader();
        let build = (|| {
            reader.add_get_data(&base)?;
            reader.add_get_children(&base)
        })();
        build.map_err(|e| Error::backend(BACKEND, e))?;
        let mut results = self.request("list", reader.commit()).await?.into_iter();
        let top = match (results.next(), results.next()) {
            (
                Some(zk::MultiReadResult::Data { stat, .. }),
                Some(zk::MultiReadResult::Children { children }),
            ) => {
                if let Some(seen) = seen.as_deref_mut() {
                    seen.push(Seen::new(base.clone(), &stat));
                }
                children
            }
            (
                Some(zk::MultiReadResult::Error {
                    err: zk::Error::NoNode,
                }),
                _,
            ) => return Ok(Vec::new()),
            (Some(zk::MultiReadResult::Error { err }), _)
            | (_, Some(zk::MultiReadResult::Error { err })) => {
                return Err(map_zk(err, "list", self.config.request_timeout));
            }
            _ => return Err(Error::backend(BACKEND, "unexpected multi-read response")),
        };
        let mut frontier: Vec<String> =
            top.iter().filter_map(|c| child_key(directory, c)).collect();
        let mut found = Vec::new();
        let timeout = self.config.request_timeout;
        while !frontier.is_empty() {
            // Each key's node and marker, read together (one instant per key). Only the nodes
            // whose stat counts a child besides the marker have their children listed, in a
            // second round: a leaf key (most keys) costs two sub-reads, not three.
            let mut parents: Vec<&String> = Vec::new();
            let chunks: Vec<&[String]> = frontier.chunks(LIST_BATCH).collect();
            for window in chunks.chunks(READS_IN_FLIGHT) {
                let mut sent = Vec::with_capacity(window.len());
                for chunk in window {
                    let mut reader = client.new_multi_reader();
                    for key in *chunk {
                        let node = self.node_path(key);
                        let build = (|| {
                            reader.add_get_data(&node)?;
                            reader.add_get_data(&format!("{node}/{MARKER}"))
                        })();
                        build.map_err(|e| Error::backend(BACKEND, e))?;
                    }
                    sent.push((*chunk, reader.commit()));
                }
                for (chunk, reply) in sent {
                    let results = self.request("list", reply).await?;
                    let now = self.clock.now();
                    let mut results = results.into_iter();
                    for key in chunk {
                        let (data, marker) = (results.next(), results.next());
                        let node = match data {
                            Some(zk::MultiReadResult::Data { data, stat }) => (data, stat),
                            // Gone since its parent was listed.
                            Some(zk::MultiReadResult::Error {
                                err: zk::Error::NoNode,
                            }) => continue,
                            Some(zk::MultiReadResult::Error { err }) => {
                                return Err(map_zk(err, "list", timeout));
                            }
                            _ => {
                                return Err(Error::backend(
                                    BACKEND,
                                    "unexpected multi-read response",
                                ));
                            }
                        };
                        let marker = match marker {
                            Some(zk::MultiReadResult::Data { data, stat }) => {
                                Some(Marker::new(&data, stat))
                            }
                            _ => None,
                        };
                        if node.1.num_children > i32::from(marker.is_some()) {
                            parents.push(key);
                        }
                        if let Some(seen) = seen.as_deref_mut() {
                            seen.push(Seen::new(self.node_path(key), &node.1));
                        }
                        let state = KeyState {
                            node: Some(node),
                            marker,
                            now,
                        };
                        if let Some(pair) = state.pair(key) {
                            found.push((pair, state.deadline()));
                        }
                    }
                }
            }
            let mut next = Vec::new();
            let chunks: Vec<&[&String]> = parents.chunks(2 * LIST_BATCH).collect();
            for window in chunks.chunks(READS_IN_FLIGHT) {
                let mut sent = Vec::with_capacity(window.len());
                for chunk in window {
                    let mut reader = client.new_multi_reader();
                    for key in *chunk {
                        reader
                            .add_get_children(&self.node_path(key))
                            .map_err(|e| Error::backend(BACKEND, e))?;
                    }
                    sent.push((*chunk, reader.commit()));
                }
                for (chunk, reply) in sent {
                    let results = self.request("list", reply).await?;
                    for (key, result) in chunk.iter().zip(results) {
                        match result {
                            zk::MultiReadResult::Children { children } => {
                                next.extend(children.iter().filter_map(|c| child_key(key, c)));
                            }
                            zk::MultiReadResult::Error {
                                err: zk::Error::NoNode,
                            } => {}
                            zk::MultiReadResult::Error { err } => {
                                return Err(map_zk(err, "list", timeout));
                            }
                            _ => {
                                return Err(Error::backend(
                                    BACKEND,
                                    "unexpected multi-read response",
                                ));
                            }
                        }
                    }
                }
            }
            frontier = next;
        }
        found.sort_by(|a, b| a.0.key.as_bytes().cmp(b.0.key.as_bytes()));
        Ok(found)
    }

    /// Reads the tree of `directory` for `delete_tree`: its node (the namespace root for `""`,
    /// which is never deleted) and every node below it that stands for a valid key (see [`child_key`]), each
    /// with its data version, whether its data is empty, its marker's children (if it has a
    /// marker) and whether it has children of other programs. Parents before children.
    async fn read_tree(&self, client: &zk::Client, directory: &str) -> Result<Vec<TreeNode>> {
        let mut nodes: Vec<TreeNode> = Vec::new();
        // (key, index of the parent in `nodes`)
        let mut frontier: Vec<(String, Option<usize>)> = vec![(directory.to_owned(), None)];
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for chunk in frontier.chunks(READ_BATCH) {
                let mut reader = client.new_multi_reader();
                for (key, _) in chunk {
                    let path = self.node_path(key);
                    let build = (|| {
                        reader.add_get_data(&path)?;
                        reader.add_get_children(&path)?;
                        reader.add_get_children(&format!("{path}/{MARKER}"))
                    })();
                    build.map_err(|e| Error::backend(BACKEND, e))?;
                }
                let results = self.request("delete_tree", reader.commit()).await?;
                let mut results = results.into_iter();
                for (key, parent) in chunk {
                    let (data, children, marker) = (results.next(), results.next(), results.next());
                    let (empty, version) = match data {
                        Some(zk::MultiReadResult::Data { data, stat }) => {
                            (data.is_empty(), stat.version)
                        }
                        // Gone meanwhile: not part of the tree.
                        Some(zk::MultiReadResult::Error {
                            err: zk::Error::NoNode,
                        }) => continue,
                        Some(zk::MultiReadResult::Error { err }) => {
                            return Err(map_zk(err, "delete_tree", self.config.request_timeout));
                        }
                        _ => return Err(Error::backend(BACKEND, "unexpected multi-read response")),
                    };
                    let index = nodes.len();
                    let is_root = key.is_empty();
                    let mut node = TreeNode {
                        key: key.clone(),
                        parent: *parent,
                        empty,
                        version,
                        marker: None,
                        children: 0,
                        foreign: false,
                    };
                    if let Some(zk::MultiReadResult::Children { children }) = children {
                        for child in children {
                            if child == MARKER && !is_root {
                                continue;
                            }
                            match child_key(key, &child) {
                                Some(child_key) => next.push((child_key, Some(index))),
                                // The namespace root's own `__kv…` nodes (lock queues, clock
                                // probes) are not ours to delete; the root stays anyway.
                                None if is_root
                                    && child.starts_with(kv_core::key::RESERVED_PREFIX) => {}
                                None => node.foreign = true,
                            }
                        }
                    }
                    if !is_root && let Some(zk::MultiReadResult::Children { children }) = marker {
                        node.marker = Some(children);
                    }
                    if let Some(parent) = parent {
                        nodes[*parent].children += 1;
                    }
                    nodes.push(node);
                }
            }
            frontier = next;
        }
        Ok(nodes)
    }

    /// The operations that delete the keys of a tree read by [`read_tree`](Self::read_tree),
    /// children before parents: every key's marker (with its children, a lock's owner node),
    /// and every node whose whole subtree goes with it. A node is removed when nothing of
    /// another program is below it and it is a key, or it is an empty parent-only node whose
    /// children all go. A key whose node must stay (something foreign is below it) is emptied
    /// instead, conditioned on its data version (like `delete`). Foreign nodes, nodes with data
    /// but no marker, and childless empty nodes without a marker (possibly another program's;
    /// the server sweeps this crate's own containers) stay, and so do their ancestors.
    fn delete_tree_ops(&self, nodes: &[TreeNode]) -> Vec<TreeOp> {
        // Parents come before children, so a reverse pass sees every child first.
        let mut kept_children = vec![0usize; nodes.len()];
        let mut removed = vec![false; nodes.len()];
        for (i, node) in nodes.iter().enumerate().rev() {
            let remove = !node.key.is_empty()
                && !node.foreign
                && kept_children[i] == 0
                && (node.marker.is_some() || (node.empty && node.children > 0));
            removed[i] = remove;
            if !remove && let Some(parent) = node.parent {
                kept_children[parent] += 1;
            }
        }
        // Depth first, children before parents.
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        for (i, node) in nodes.iter().enumerate() {
            if let Some(parent) = node.parent {
                children[parent].push(i);
            }
        }
        let mut ops = Vec::new();
        let mut stack: Vec<(usize, bool)> = if nodes.is_empty() {
            Vec::new()
        } else {
            vec![(0, false)]
        };
        while let Some((i, expanded)) = stack.pop() {
            if !expanded {
                stack.push((i, true));
                stack.extend(children[i].iter().rev().map(|&c| (c, false)));
                continue;
            }
            let node = &nodes[i];
            if let Some(marker_children) = &node.marker {
                for child in marker_children {
                    ops.push(TreeOp::Delete(self.marker_child_path(&node.key, child)));
                }
                ops.push(TreeOp::Delete(self.marker_path(&node.key)));
                if !removed[i] {
                    ops.push(TreeOp::Empty(self.node_path(&node.key), node.version));
                }
            }
            if removed[i] {
                ops.push(TreeOp::Delete(self.node_path(&node.key)));
            }
        }
        ops
    }

    pub(crate) async fn close(&self) {
        self.tasks.close(self.config.request_timeout).await;
        drop(self.take_client());
    }
}

/// A node a `watch_tree` walk read, to check afterwards that it did not change. Its
/// `pzxid` also covers its marker (a child): a key written, deleted or swept after expiry
/// changes it.
#[derive(Debug)]
pub(crate) struct Seen {
    path: String,
    czxid: i64,
    mzxid: i64,
    pzxid: i64,
}

impl Seen {
    fn new(path: String, stat: &zk::Stat) -> Self {
        Seen {
            path,
            czxid: stat.czxid,
            mzxid: stat.mzxid,
            pzxid: stat.pzxid,
        }
    }
}

/// What a write expects to find.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Expect {
    /// Anything (plain `put`).
    Any,
    /// No visible key (create-only).
    Absent,
    /// A visible key with this `last_index`.
    Index(u64),
}

/// A node of the tree `delete_tree` deletes (see [`Inner::read_tree`]).
#[derive(Debug)]
struct TreeNode {
    /// The key the node stands for (`""`: the namespace root).
    key: String,
    /// Index of the parent node, `None` for the directory's own node.
    parent: Option<usize>,
    /// The node's data is empty.
    empty: bool,
    /// The node's data version.
    version: i32,
    /// The marker's children, when the node has a marker.
    marker: Option<Vec<String>>,
    /// How many children stand for valid keys (are in the tree).
    children: usize,
    /// The node has a child this crate cannot have written (see [`child_key`]).
    foreign: bool,
}

/// One operation of `delete_tree`'s multi-ops.
#[derive(Debug)]
enum TreeOp {
    /// Delete the znode.
    Delete(String),
    /// Empty the data of a key's node that must stay, if its data version is still this one.
    Empty(String, i32),
}

fn is_terminal(state: zk::SessionState) -> bool {
    matches!(
        state,
        zk::SessionState::Expired | zk::SessionState::Closed | zk::SessionState::AuthFailed
    )
}

/// Opens a ZooKeeper session as configured.
pub(crate) async fn connect_client(config: &Config) -> Result<zk::Client> {
    let mut connector = zk::Client::connector()
        .with_session_timeout(config.session_timeout)
        .with_fail_eagerly();
    if let Some(credentials) = &config.credentials {
        let auth = format!("{}:{}", credentials.username, credentials.password);
        connector = connector.with_auth("digest", auth.as_bytes());
    }
    let connect_string = config.connect_string();
    let after = config.connect_timeout;
    let tls = match &config.tls {
        None => None,
        Some(tls) => {
            // Reading the PEM files is blocking file I/O: keep it off the runtime.
            let tls = tls.clone();
            let options = tokio::task::spawn_blocking(move || tls_options(&tls))
                .await
                .map_err(|e| Error::Config(format!("reading the TLS files failed: {e}")))?
                .map_err(|e| Error::Config(format!("unusable TLS settings: {e}")))?;
            Some(options)
        }
    };
    let connecting = async {
        match tls {
            None => connector.connect(&connect_string).await,
            Some(options) => {
                ensure_crypto_provider();
                connector
                    .with_tls(options)
                    .secure_connect(&connect_string)
                    .await
            }
        }
    };
    match tokio::time::timeout(after, connecting).await {
        Err(_) => Err(Error::Timeout {
            backend: BACKEND,
            operation: "connect",
            after,
        }),
        Ok(Err(zk::Error::BadArguments(why))) => Err(Error::Config(format!(
            "ZooKeeper rejected the settings: {why}"
        ))),
        Ok(Err(e)) => Err(map_zk(e, "connect", after)),
        Ok(Ok(client)) => Ok(client),
    }
}

/// zookeeper-client builds its rustls configuration with rustls' process-wide default crypto
/// provider, which rustls cannot choose by itself when a program enables two providers (for
/// example kv-redis with `ring` next to this crate's `aws-lc-rs`): the handshake would panic.
/// Install aws-lc-rs as the default only when the program has installed none.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: some default is then in place.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

fn tls_options(tls: &crate::config::TlsConfig) -> std::result::Result<zk::TlsOptions, zk::Error> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map_err(|e| zk::Error::UnexpectedError(format!("cannot read {}: {e}", path.display())))
    };
    let mut options = zk::TlsOptions::new();
    if let Some(ca) = &tls.ca_file {
        options = options.with_pem_ca(&read(ca)?)?;
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        options = options.with_pem_identity(&read(cert)?, &read(key)?)?;
    }
    Ok(options)
}

impl ZookeeperStore {
    /// Connects to the ensemble, authenticates and creates the namespace root if needed.
    pub async fn connect(config: Config) -> Result<Self> {
        let client = connect_client(&config).await?;
        let acl = if config.credentials.is_some() {
            zk::Acls::creator_all()
        } else {
            zk::Acls::anyone_all()
        };
        let mut caps = Capabilities::full(BACKEND);
        caps.max_value_len = MAX_VALUE_LEN;
        // Room for the namespace, `/` and the `/__kv` marker in a path: ZooKeeper itself
        // only bounds paths by jute.maxbuffer.
        caps.max_key_len = kv_core::key::MAX_KEY_LEN;
        // One multi-op per transaction; `watch_tree` reports only snapshots of one instant
        // (see `snapshot_with_deadlines`), so never part of a transaction.
        let caps = caps.with_transactions(crate::txn::MAX_TRANSACTION_OPS, true);
        let root = config.root_path();
        let inner = Inner {
            root: root.clone(),
            caps,
            tasks: TaskSet::new(),
            client: StdMutex::new(Some(client.clone())),
            rebuild: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            zxid_seen: AtomicI64::new(0),
            history_epoch: AtomicU64::new(0),
            acl,
            config,
            clock: ServerClock::default(),
            syncs: StdMutex::new(SyncSlot::default()),
        };
        let persistent = inner.options(zk::CreateMode::Persistent);
        inner
            .request("connect", client.mkdir(&root, &persistent))
            .await?;
        // The first sample of the server's clock (not fatal: see `refresh_clock`).
        inner.refresh_clock(&client).await;
        Ok(ZookeeperStore {
            inner: Arc::new(inner),
        })
    }

    /// Connects with a URL (see [`Config::from_url`]).
    pub async fn connect_url(url: &str) -> Result<Self> {
        Self::connect(Config::from_url(url)?).await
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The estimated offset of the ZooKeeper server's clock from this process's wall clock
    /// (server − local, in milliseconds) and its error bound in milliseconds, once measured.
    /// TTL expiry is judged on the server's clock (see the crate documentation).
    pub fn server_clock_offset(&self) -> Option<(i64, u64)> {
        self.inner.clock.offset()
    }

    /// The current ZooKeeper session id (changes when an expired session is replaced).
    pub fn session_id(&self) -> Option<i64> {
        self.inner.current_client().ok().map(|c| c.session_id().0)
    }

    /// Makes the server expire this handle's session, exactly as a long network partition
    /// would: a second connection attaches to the same session and closes it. For tests of
    /// session-expiry handling (locks report loss, watches resume on a new session).
    #[doc(hidden)]
    pub async fn expire_session_for_tests(&self) -> Result<()> {
        let client = self.inner.current_client()?;
        let session = client.session().clone();
        let mut state = client.state_watcher();
        let mut last_error = None;
        for _ in 0..5 {
            if is_terminal(state.peek_state()) {
                return Ok(());
            }
            let connector = zk::Client::connector()
                .with_session(session.clone())
                .with_session_timeout(self.inner.config.session_timeout);
            let connect_string = self.inner.config.connect_string();
            match tokio::time::timeout(Duration::from_secs(5), connector.connect(&connect_string))
                .await
            {
                // Closing the twin closes the session on the server.
                Ok(Ok(twin)) => drop(twin),
                Ok(Err(zk::Error::SessionExpired)) => {}
                Ok(Err(error)) => {
                    last_error = Some(map_zk(error, "connect", Duration::from_secs(5)))
                }
                Err(_) => {
                    last_error = Some(Error::Timeout {
                        backend: BACKEND,
                        operation: "connect",
                        after: Duration::from_secs(5),
                    })
                }
            }
            let waiting = async {
                while !is_terminal(state.state()) {
                    state.changed().await;
                }
            };
            if tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(last_error.unwrap_or(Error::Timeout {
            backend: BACKEND,
            operation: "expire session",
            after: Duration::from_secs(50),
        }))
    }
}

impl Drop for ZookeeperStore {
    fn drop(&mut self) {
        if !self.inner.tasks.is_closed()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let inner = self.inner.clone();
            runtime.spawn(async move { inner.close().await });
        }
    }
}

#[async_trait]
impl Store for ZookeeperStore {
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
        let client = inner.client().await?;
        inner
            .write_key(&client, &key, &value, ttl, Expect::Any, None)
            .await?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn get(&self, key: &str, options: ReadOptions) -> Result<Option<KvPair>> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let key = inner.caps.check_key(key)?;
        let client = inner.client().await?;
        let synced = inner.start_sync(&client, &options).await?;
        let (synced, state) = tokio::join!(synced, inner.read_key(&client, &key));
        synced?;
        Ok(state?.pair(&key))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn delete(&self, key: &str) -> Result<bool> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let key = inner.caps.check_key(key)?;
        let client = inner.client().await?;
        inner.delete_key(&client, &key, |_| Ok(()), true).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, directory = %directory))]
    async fn list(&self, directory: &str, options: ReadOptions) -> Result<Vec<KvPair>> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let directory = inner.caps.check_directory(directory)?;
        let client = inner.client().await?;
        let synced = inner.start_sync(&client, &options).await?;
        let (synced, found) = tokio::join!(synced, inner.list_with_deadlines(&client, &directory));
        synced?;
        Ok(found?.into_iter().map(|(pair, _)| pair).collect())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, directory = %directory))]
    async fn delete_tree(&self, directory: &str) -> Result<()> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let directory = inner.caps.check_directory(directory)?;
        let client = inner.client().await?;
        for _ in 0..MAX_ATTEMPTS {
            let nodes = inner.read_tree(&client, &directory).await?;
            let ops = inner.delete_tree_ops(&nodes);
            if ops.is_empty() {
                return Ok(());
            }
            let mut raced = false;
            for batch in ops.chunks(inner.config.max_ops_per_multi) {
                let mut writer = client.new_multi_writer();
                for op in batch {
                    match op {
                        TreeOp::Delete(path) => writer.add_delete(path, None),
                        TreeOp::Empty(path, version) => {
                            writer.add_set_data(path, &[], Some(*version))
                        }
                    }
                    .map_err(|e| Error::backend(BACKEND, e))?;
                }
                match inner.timed("delete_tree", writer.commit()).await? {
                    Ok(_) => {}
                    // A concurrent write into the tree: read it again.
                    Err(zk::Error::NoNode | zk::Error::NotEmpty | zk::Error::BadVersion) => {
                        raced = true;
                        break;
                    }
                    Err(e) => return Err(map_zk(e, "delete_tree", inner.config.request_timeout)),
                }
            }
            if !raced {
                return Ok(());
            }
        }
        Err(Error::backend(
            BACKEND,
            "delete_tree: too much contention, gave up",
        ))
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
        let client = inner.client().await?;
        let expect = match previous {
            None => Expect::Absent,
            Some(previous) => Expect::Index(previous.last_index),
        };
        let (stat, _) = inner
            .write_key(&client, &key, &value, ttl, expect, None)
            .await?;
        Ok(KvPair::new(key, value, stat.mzxid as u64))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let key = inner.caps.check_key(key)?;
        let client = inner.client().await?;
        let wanted = previous.last_index;
        let deleted = inner
            .delete_key(
                &client,
                &key,
                |state| match &state.node {
                    Some((_, stat)) if stat.mzxid as u64 == wanted => Ok(()),
                    _ => Err(Error::KeyModified { key: key.clone() }),
                },
                true,
            )
            .await?;
        if deleted {
            Ok(())
        } else {
            Err(Error::KeyNotFound { key })
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn transaction(&self, txn: Transaction) -> Result<Vec<KvPair>> {
        let inner = &self.inner;
        let txn = inner.caps.check_transaction(txn)?;
        inner.tasks.ensure_open()?;
        inner.transaction(txn).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn watch(&self, key: &str, options: ReadOptions) -> Result<WatchStream> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let key = inner.caps.check_key(key)?;
        let _ = options;
        Ok(crate::watch::watch_key(inner.clone(), key))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, directory = %directory))]
    async fn watch_tree(&self, directory: &str, options: ReadOptions) -> Result<WatchTreeStream> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let directory = inner.caps.check_directory(directory)?;
        let _ = options;
        Ok(crate::watch::watch_tree(inner.clone(), directory))
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
        self.inner.close().await;
        Ok(())
    }

    fn background_tasks(&self) -> usize {
        self.inner.tasks.running()
    }
}

type SyncFuture = futures::future::Shared<
    futures::future::BoxFuture<'static, std::result::Result<(), zk::Error>>,
>;

/// The last `sync` sent for reads to share.
#[derive(Default)]
struct SyncSlot {
    /// How many have been sent: a read may use only one numbered above the count it saw.
    sent: u64,
    current: Option<SharedSync>,
}

impl std::fmt::Debug for SyncSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncSlot")
            .field("sent", &self.sent)
            .finish()
    }
}

struct SharedSync {
    number: u64,
    session: i64,
    sync: SyncFuture,
}

impl SharedSync {
    fn pending(&self) -> bool {
        self.sync.peek().is_none()
    }
}

/// Sends a `sync` NOW (the first poll puts it on the session's queue) and returns its
/// answer as a future every read can await.
fn send_sync(client: &zk::Client, root: &str) -> SyncFuture {
    use futures::FutureExt;
    let client = client.clone();
    let root = root.to_owned();
    let sync: SyncFuture = async move { client.sync(&root).await }.boxed().shared();
    // zookeeper-client queues the request when `sync` is called, which is on this poll.
    let _ = sync.clone().now_or_never();
    sync
}
