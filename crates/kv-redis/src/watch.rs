//! Watches through keyspace notifications.
//!
//! One subscriber connection per store handle ([`Subscriptions`], created on the first watch
//! or lock wait) carries every `SUBSCRIBE __keyspace@<db>__:<key>` (watch, lock waiters and
//! holders) and `PSUBSCRIBE __keyspace@<db>__:<escaped prefix>*` (watch_tree), reference
//! counted so that dropping one watch never unsubscribes another. Notifications carry no
//! value: after each event the loop re-reads the key (value, index and TTL in one script).
//! Notifications published while the subscriber is disconnected are lost, so after every
//! reconnection the loop re-subscribes and re-reads everything (a full `SCAN` for trees); a
//! lagging event queue triggers the same resynchronisation. A key with a TTL also arms a
//! timer for its deadline, so an expiry is reported even when Redis reaps it late.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::{ClientLike, ClusterInterface, EventInterface, PubsubInterface};
use fred::types::config::Server;
use fred::types::{ConnectHandle, KeyspaceEvent};
use kv_core::{Error, KvPair, Result, WatchStream, WatchTreeStream, key, spawn_watch};
use tokio::sync::broadcast;
use tokio::sync::broadcast::Receiver as BroadcastReceiver;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::Instant;

use crate::store::{Found, Inner, SubscriberFactory, glob_escape, map_err};

/// How many holders want one channel (see [`Subscriptions::subscribe`]).
type ChannelCount = Arc<tokio::sync::Mutex<usize>>;

/// A keyspace channel or pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Channel {
    /// `SUBSCRIBE` to one key's channel.
    Key(String),
    /// `PSUBSCRIBE` to a pattern.
    Pattern(String),
}

/// How often a cluster handle's subscriptions re-read the cluster's layout (`CLUSTER SLOTS`)
/// when fred reports no change: a killed primary's replica is promoted without any command
/// of ours failing, and its keyspace events would go unheard until we subscribe there.
const TOPOLOGY_POLL: Duration = Duration::from_millis(500);

/// Capacity of the merged event channels (fred's own is 4096 too).
const CHANNEL_CAPACITY: usize = 4096;

/// One subscriber connection: to the server (or Sentinel's primary), or to one primary of a
/// cluster (keyspace notifications are published on the node that holds the key only).
struct Node {
    server: Option<Server>,
    client: SubscriberClient,
    connection: StdMutex<Option<ConnectHandle>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Starts forwarding the node's keyspace events and reconnections into the merged
    /// channels; a lagging fred receiver (missed events) is forwarded as a reconnection so
    /// that every watch re-reads.
    fn new(
        server: Option<Server>,
        client: SubscriberClient,
        connection: ConnectHandle,
        events: &broadcast::Sender<KeyspaceEvent>,
        reconnects: &broadcast::Sender<Server>,
    ) -> Node {
        // fred re-subscribes the tracked channels after a reconnection; the watch loops
        // re-subscribe too (idempotent) before resynchronising, so nothing depends on order.
        let manager = client.manage_subscriptions();
        let (mut node_events, mut node_reconnects) =
            (client.keyspace_event_rx(), client.reconnect_rx());
        let (events, reconnects) = (events.clone(), reconnects.clone());
        let resync = server.clone().unwrap_or_else(|| Server::new("resync", 0));
        let forwarder = tokio::spawn(async move {
            loop {
                tokio::select! {
                    event = node_events.recv() => match event {
                        Ok(event) => { let _ = events.send(event); }
                        Err(RecvError::Lagged(_)) => { let _ = reconnects.send(resync.clone()); }
                        Err(RecvError::Closed) => return,
                    },
                    reconnect = node_reconnects.recv() => match reconnect {
                        Ok(server) => { let _ = reconnects.send(server); }
                        Err(RecvError::Lagged(_)) => { let _ = reconnects.send(resync.clone()); }
                        Err(RecvError::Closed) => return,
                    },
                }
            }
        });
        Node {
            server,
            client,
            connection: StdMutex::new(Some(connection)),
            tasks: vec![manager, forwarder],
        }
    }

    async fn shutdown(&self) {
        for task in &self.tasks {
            task.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.quit()).await;
        let handle = self
            .connection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
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

/// The handle's subscriber connections (one, or one per cluster primary) and its
/// reference-counted subscriptions, every one of which is held on every node.
pub(crate) struct Subscriptions {
    pub(crate) db: u8,
    timeout: Duration,
    /// Shared by every (un)subscription, exclusive for [`follow`](Self::follow): the node
    /// set and the channel set change together.
    layout: tokio::sync::RwLock<()>,
    /// Per channel, how many holders want it, behind a lock of that channel alone: its
    /// `SUBSCRIBE`/`UNSUBSCRIBE` round trip holds it, and other channels' do not wait for it.
    channels: StdMutex<HashMap<Channel, ChannelCount>>,
    nodes: StdMutex<Vec<Arc<Node>>>,
    events: broadcast::Sender<KeyspaceEvent>,
    reconnects: broadcast::Sender<Server>,
    follower: StdMutex<Option<tokio::task::JoinHandle<()>>>,
    closed: AtomicBool,
}

impl Subscriptions {
    /// Connects the subscriber connection(s): one to the configured server, or on a cluster
    /// one per primary the command client knows, plus a task that follows the cluster's
    /// layout.
    pub(crate) async fn connect(
        factory: SubscriberFactory,
        commands: fred::clients::Client,
        db: u8,
        timeout: Duration,
    ) -> Result<Arc<Self>> {
        let (events, _) = broadcast::channel(CHANNEL_CAPACITY);
        let (reconnects, _) = broadcast::channel(CHANNEL_CAPACITY);
        let subs = Arc::new(Subscriptions {
            db,
            timeout,
            layout: tokio::sync::RwLock::new(()),
            channels: StdMutex::new(HashMap::new()),
            nodes: StdMutex::new(Vec::new()),
            events,
            reconnects,
            follower: StdMutex::new(None),
            closed: AtomicBool::new(false),
        });
        if !factory.is_cluster() {
            let (client, connection) = factory.connect(None).await?;
            let node = Node::new(None, client, connection, &subs.events, &subs.reconnects);
            subs.nodes_mut().push(Arc::new(node));
            return Ok(subs);
        }
        let primaries = cluster_primaries(&commands);
        if primaries.is_empty() {
            return Err(Error::unavailable(
                crate::store::BACKEND,
                "the cluster's layout is not known yet",
            ));
        }
        for server in primaries {
            let (client, connection) = factory.connect(Some(server.clone())).await?;
            let node = Node::new(
                Some(server),
                client,
                connection,
                &subs.events,
                &subs.reconnects,
            );
            subs.nodes_mut().push(Arc::new(node));
        }
        let weak = Arc::downgrade(&subs);
        let follower = tokio::spawn(follow_cluster(weak, factory, commands));
        *subs.follower.lock().unwrap_or_else(|e| e.into_inner()) = Some(follower);
        Ok(subs)
    }

    fn nodes_mut(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Node>>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The keyspace channel of a full Redis key.
    pub(crate) fn key_channel(&self, full: &str) -> Channel {
        Channel::Key(format!("__keyspace@{}__:{full}", self.db))
    }

    /// The keyspace pattern matching every full Redis key starting with `prefix`.
    pub(crate) fn prefix_pattern(&self, prefix: &str) -> Channel {
        Channel::Pattern(format!("__keyspace@{}__:{}*", self.db, glob_escape(prefix)))
    }

    /// (Un)subscribes `channel` on every node at once; the first failure is the answer.
    async fn send(&self, channel: &Channel, subscribe: bool) -> Result<()> {
        let nodes: Vec<Arc<Node>> = self.nodes_mut().clone();
        let results = futures::future::join_all(
            nodes
                .iter()
                .map(|node| send_to(&node.client, channel, subscribe, self.timeout)),
        )
        .await;
        results.into_iter().collect()
    }

    fn channels_mut(&self) -> std::sync::MutexGuard<'_, HashMap<Channel, ChannelCount>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The count of `channel`, created at 0 when nobody holds it.
    fn channel_count(&self, channel: &Channel) -> ChannelCount {
        self.channels_mut()
            .entry(channel.clone())
            .or_default()
            .clone()
    }

    /// Forgets `channel`'s count (at 0, its lock held by the caller) unless another caller
    /// has fetched it meanwhile and waits for its lock.
    fn forget(&self, channel: &Channel, count: &ChannelCount) {
        let mut channels = self.channels_mut();
        // The map's reference and the caller's: nobody else can reach it any more.
        if Arc::strong_count(count) == 2 {
            channels.remove(channel);
        }
    }

    /// Subscribes (if nobody else is) and returns the guard that unsubscribes on drop.
    pub(crate) async fn subscribe(self: &Arc<Self>, channel: Channel) -> Result<Subscription> {
        let _layout = self.layout.read().await;
        let count = self.channel_count(&channel);
        let mut holders = count.lock().await;
        if *holders == 0
            && let Err(error) = self.send(&channel, true).await
        {
            self.forget(&channel, &count);
            return Err(error);
        }
        *holders += 1;
        Ok(Subscription {
            subs: self.clone(),
            channel,
        })
    }

    /// Subscribes again after a reconnection (harmless if fred already did).
    pub(crate) async fn resubscribe(&self, channel: &Channel) -> Result<()> {
        let _layout = self.layout.read().await;
        let Some(count) = self.channels_mut().get(channel).cloned() else {
            return Ok(());
        };
        let holders = count.lock().await;
        if *holders > 0 {
            self.send(channel, true).await?;
        }
        Ok(())
    }

    async fn release(&self, channel: Channel) {
        let _layout = self.layout.read().await;
        let Some(count) = self.channels_mut().get(&channel).cloned() else {
            return;
        };
        let mut holders = count.lock().await;
        *holders = holders.saturating_sub(1);
        if *holders > 0 {
            return;
        }
        if !self.closed.load(Ordering::SeqCst)
            && let Err(error) = self.send(&channel, false).await
        {
            tracing::debug!(%error, ?channel, "unsubscribing failed");
        }
        self.forget(&channel, &count);
    }

    /// New receivers of keyspace events (from every node) and of reconnections (of any
    /// node, and of a change of the cluster's primaries: events may have been missed).
    pub(crate) fn receivers(
        &self,
    ) -> (BroadcastReceiver<KeyspaceEvent>, BroadcastReceiver<Server>) {
        (self.events.subscribe(), self.reconnects.subscribe())
    }

    /// A new receiver of reconnections (see [`receivers`](Self::receivers)).
    pub(crate) fn reconnect_rx(&self) -> BroadcastReceiver<Server> {
        self.reconnects.subscribe()
    }

    /// Makes the node set match the cluster's primaries: connects and subscribes every
    /// channel on a new primary, drops nodes that are no longer primaries, and then tells
    /// every watch and lock to re-read (events may have been missed across the change).
    async fn follow(&self, primaries: Vec<Server>, factory: &SubscriberFactory) {
        let layout = self.layout.write().await;
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        // No (un)subscription runs while the layout is held: every count is settled.
        let held: Vec<Channel> = {
            let channels = self.channels_mut();
            channels
                .iter()
                .filter(|(_, count)| count.try_lock().is_ok_and(|holders| *holders > 0))
                .map(|(channel, _)| channel.clone())
                .collect()
        };
        let current: Vec<Arc<Node>> = self.nodes_mut().clone();
        let known = |s: &Server| current.iter().any(|n| n.server.as_ref() == Some(s));
        let added: Vec<Server> = primaries.iter().filter(|s| !known(s)).cloned().collect();
        let removed: Vec<Arc<Node>> = current
            .iter()
            .filter(|n| n.server.as_ref().is_some_and(|s| !primaries.contains(s)))
            .cloned()
            .collect();
        if added.is_empty() && removed.is_empty() {
            return;
        }
        tracing::debug!(?added, removed = removed.len(), "cluster primaries changed");
        let mut nodes = Vec::new();
        for server in added {
            let connected = async {
                let (client, connection) = factory.connect(Some(server.clone())).await?;
                let node = Node::new(
                    Some(server.clone()),
                    client,
                    connection,
                    &self.events,
                    &self.reconnects,
                );
                for channel in &held {
                    if let Err(error) = send_to(&node.client, channel, true, self.timeout).await {
                        node.shutdown().await;
                        return Err(error);
                    }
                }
                Ok::<_, Error>(node)
            };
            match connected.await {
                Ok(node) => nodes.push(Arc::new(node)),
                // Not added: the next round tries again.
                Err(error) => {
                    tracing::debug!(%error, %server, "subscribing on a new primary failed")
                }
            }
        }
        {
            let mut all = self.nodes_mut();
            all.retain(|n| !removed.iter().any(|r| Arc::ptr_eq(n, r)));
            all.extend(nodes);
        }
        drop(layout);
        for node in removed {
            // A dead node's QUIT may hang until its timeout: not on this path.
            tokio::spawn(async move { node.shutdown().await });
        }
        let _ = self.reconnects.send(Server::new("cluster-change", 0));
    }

    /// Disconnects the subscribers (store closed or dropped).
    pub(crate) async fn shutdown(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(follower) = self
            .follower
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            follower.abort();
        }
        let nodes: Vec<Arc<Node>> = std::mem::take(&mut *self.nodes_mut());
        futures::future::join_all(nodes.iter().map(|n| n.shutdown())).await;
    }
}

/// (Un)subscribes `channel` on one node; a subscription returns once the server has run it.
async fn send_to(
    client: &SubscriberClient,
    channel: &Channel,
    subscribe: bool,
    timeout: Duration,
) -> Result<()> {
    let request = async {
        match (channel, subscribe) {
            (Channel::Key(c), true) => client.subscribe(c.as_str()).await?,
            (Channel::Key(c), false) => client.unsubscribe(c.as_str()).await?,
            (Channel::Pattern(p), true) => client.psubscribe(p.as_str()).await?,
            (Channel::Pattern(p), false) => client.punsubscribe(p.as_str()).await?,
        }
        // fred completes (un)subscriptions once they are written, not when the server has
        // run them (it drops the server's confirmations). The server runs one connection's
        // commands in order, so the answer to a `PING` sent after it is the confirmation:
        // every write made after this returns is published to the channel. Callers rely on
        // that (a watch's first read, a lock's own events); without it a write landing
        // between our read and the server's `SUBSCRIBE` went unheard.
        if subscribe {
            client.ping::<fred::types::Value>(None).await?;
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, request).await {
        Ok(result) => result.map_err(|e| map_err(e, "subscribe", timeout)),
        Err(_) => Err(Error::Timeout {
            backend: crate::store::BACKEND,
            operation: "subscribe",
            after: timeout,
        }),
    }
}

/// The primaries the command client's cached cluster layout names.
fn cluster_primaries(commands: &fred::clients::Client) -> Vec<Server> {
    commands
        .cached_cluster_state()
        .map(|state| state.unique_primary_nodes())
        .unwrap_or_default()
}

/// The cluster follower: on fred's change events, and every [`TOPOLOGY_POLL`] after asking
/// for the layout, makes the subscriptions match the primaries. Ends with the subscriptions.
async fn follow_cluster(
    subs: std::sync::Weak<Subscriptions>,
    factory: SubscriberFactory,
    commands: fred::clients::Client,
) {
    let mut changes = commands.cluster_change_rx();
    loop {
        tokio::select! {
            change = changes.recv() => {
                if matches!(change, Err(RecvError::Closed)) {
                    return;
                }
            }
            _ = tokio::time::sleep(TOPOLOGY_POLL) => {
                let timeout = factory.request_timeout();
                if let Err(error) = tokio::time::timeout(timeout, commands.sync_cluster())
                    .await
                    .unwrap_or_else(|_| Err(fred::prelude::Error::new(
                        fred::prelude::ErrorKind::Timeout,
                        "sync",
                    )))
                {
                    tracing::debug!(%error, "re-reading the cluster layout failed");
                }
            }
        }
        let Some(subs) = subs.upgrade() else { return };
        if subs.closed.load(Ordering::SeqCst) {
            return;
        }
        let primaries = cluster_primaries(&commands);
        if !primaries.is_empty() {
            subs.follow(primaries, &factory).await;
        }
    }
}

/// One holder's share of a subscription; unsubscribes (in the background) when dropped and
/// nobody else needs the channel.
pub(crate) struct Subscription {
    subs: Arc<Subscriptions>,
    channel: Channel,
}

impl Subscription {
    pub(crate) fn channel(&self) -> &Channel {
        &self.channel
    }

    pub(crate) fn subscriptions(&self) -> &Arc<Subscriptions> {
        &self.subs
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let subs = self.subs.clone();
        let channel = self.channel.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // Short-lived: one UNSUBSCRIBE, bounded by the request timeout.
            runtime.spawn(async move { subs.release(channel).await });
        }
    }
}

/// Margin after a key's deadline before the timer re-reads it.
const DEADLINE_MARGIN: Duration = Duration::from_millis(5);

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// `Store::watch`.
pub(crate) async fn watch_key(inner: Arc<Inner>, key: String) -> Result<WatchStream> {
    inner.check_notifications().await?;
    let subs = inner.subscriptions().await?;
    let full = inner.full_key(&key);
    let (mut events, mut reconnects) = subs.receivers();
    let subscription = subs.subscribe(subs.key_channel(&full)).await?;
    let tasks = inner.tasks.clone();
    Ok(spawn_watch(&tasks, move |tx| async move {
        let subscription = subscription;
        let subs = subscription.subscriptions().clone();
        let mut backoff = redis_backoff();
        let mut deadline: Option<Instant> = None;
        let mut reread = true;
        loop {
            if reread {
                match inner.read(&key).await {
                    Ok(found) => {
                        backoff.reset();
                        deadline = found.as_ref().and_then(|f| f.deadline);
                        if !tx.send(found.map(|f| f.pair)) {
                            return;
                        }
                    }
                    Err(error) if error.is_transient() => {
                        tracing::debug!(%error, key, "watch read failed; retrying");
                        backoff.wait().await;
                        continue;
                    }
                    Err(error) => {
                        tx.fail(error);
                        return;
                    }
                }
            }
            let timer = deadline
                .map(|d| d + DEADLINE_MARGIN)
                .unwrap_or_else(far_future);
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) => {
                        reread = event.db == subs.db && event.key.as_bytes() == full.as_bytes();
                    }
                    Err(RecvError::Lagged(_)) => reread = true,
                    Err(RecvError::Closed) => return,
                },
                reconnect = reconnects.recv() => match reconnect {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        if let Err(error) = subs.resubscribe(subscription.channel()).await {
                            tracing::debug!(%error, "re-subscribing after a reconnection failed");
                        }
                        reread = true;
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = tokio::time::sleep_until(timer) => reread = true,
                _ = tx.closed() => return,
            }
        }
    }))
}

/// `Store::watch_tree`.
pub(crate) async fn watch_tree(inner: Arc<Inner>, dir: String) -> Result<WatchTreeStream> {
    inner.check_notifications().await?;
    let subs = inner.subscriptions().await?;
    let prefix = format!("{}{}", inner.config.namespace, key::child_prefix(&dir));
    let (mut events, mut reconnects) = subs.receivers();
    let subscription = subs.subscribe(subs.prefix_pattern(&prefix)).await?;
    let tasks = inner.tasks.clone();
    Ok(spawn_watch(&tasks, move |tx| async move {
        let subscription = subscription;
        let subs = subscription.subscriptions().clone();
        let mut backoff = redis_backoff();
        let mut state: BTreeMap<String, Found> = BTreeMap::new();
        let mut resync = true;
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        loop {
            if resync {
                match inner.list_found(&dir).await {
                    Ok(list) => {
                        state = list.into_iter().map(|f| (f.pair.key.clone(), f)).collect();
                        resync = false;
                        dirty.clear();
                        backoff.reset();
                    }
                    Err(error) if error.is_transient() => {
                        tracing::debug!(%error, dir, "watch_tree listing failed; retrying");
                        backoff.wait().await;
                        continue;
                    }
                    Err(error) => {
                        tx.fail(error);
                        return;
                    }
                }
            } else if !dirty.is_empty() {
                let keys: Vec<String> = std::mem::take(&mut dirty).into_iter().collect();
                match inner.read_many(keys).await {
                    Ok(results) => {
                        backoff.reset();
                        for (k, found) in results {
                            match found {
                                Some(found) => state.insert(k, found),
                                None => state.remove(&k),
                            };
                        }
                    }
                    Err(error) if error.is_transient() => {
                        tracing::debug!(%error, dir, "watch_tree read failed; resynchronising");
                        backoff.wait().await;
                        resync = true;
                        continue;
                    }
                    Err(error) => {
                        tx.fail(error);
                        return;
                    }
                }
            }
            let snapshot: Vec<KvPair> = state.values().map(|f| f.pair.clone()).collect();
            if !tx.send(snapshot) {
                return;
            }
            let deadline = state.values().filter_map(|f| f.deadline).min();
            let timer = deadline
                .map(|d| d + DEADLINE_MARGIN)
                .unwrap_or_else(far_future);
            // Wait for something that may change the snapshot.
            loop {
                let note = |event: KeyspaceEvent, dirty: &mut BTreeSet<String>| {
                    if event.db != subs.db {
                        return;
                    }
                    if let Some(rel) = event.key.as_str().and_then(|k| inner.relative_key(k))
                        && key::is_descendant(&dir, rel)
                    {
                        dirty.insert(rel.to_owned());
                    }
                };
                tokio::select! {
                    event = events.recv() => match event {
                        Ok(event) => {
                            note(event, &mut dirty);
                            // Coalesce what is already queued.
                            loop {
                                match events.try_recv() {
                                    Ok(event) => note(event, &mut dirty),
                                    Err(TryRecvError::Lagged(_)) => { resync = true; break; }
                                    Err(_) => break,
                                }
                            }
                        }
                        Err(RecvError::Lagged(_)) => resync = true,
                        Err(RecvError::Closed) => return,
                    },
                    reconnect = reconnects.recv() => match reconnect {
                        Ok(_) | Err(RecvError::Lagged(_)) => {
                            if let Err(error) = subs.resubscribe(subscription.channel()).await {
                                tracing::debug!(%error, "re-subscribing after a reconnection failed");
                            }
                            resync = true;
                        }
                        Err(RecvError::Closed) => return,
                    },
                    _ = tokio::time::sleep_until(timer) => {
                        let now = Instant::now() + DEADLINE_MARGIN;
                        dirty.extend(
                            state
                                .values()
                                .filter(|f| f.deadline.is_some_and(|d| d <= now))
                                .map(|f| f.pair.key.clone()),
                        );
                        if dirty.is_empty() {
                            // Clock skew: re-read everything that has a deadline.
                            dirty.extend(
                                state.values().filter(|f| f.deadline.is_some()).map(|f| f.pair.key.clone()),
                            );
                        }
                    }
                    _ = tx.closed() => return,
                }
                if resync || !dirty.is_empty() {
                    break;
                }
            }
        }
    }))
}

/// Reconnect back-off of watch loops and lock waits: 100 ms doubling to 2 s.
pub(crate) fn redis_backoff() -> kv_core::Backoff {
    kv_core::Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
}
