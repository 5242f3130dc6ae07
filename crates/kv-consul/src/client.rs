//! A thin client for the parts of Consul's HTTP API this backend uses: KV reads (plain and
//! blocking), compare-and-delete, `/v1/txn`, sessions, and two status calls; and the handle's
//! [`Epoch`]: the highest index it has seen, to notice a server that lost its state.

use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use kv_core::{Error, Result};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tokio::sync::watch;

use crate::config::Config;
use kv_core::clock::ServerClock;

pub(crate) const BACKEND: &str = "consul";

/// The reserved segment of the key whose absence [`Client::confirm_loss`] reads the store's
/// index from. `__kv` segments are refused in user keys, so this crate never writes it.
const PROBE_SEGMENT: &str = "__kv";

/// What one handle knows about the server's history, to notice that it lost its state.
///
/// Consul's indexes are Raft indexes: on a healthy cluster the KV store's index (the highest
/// index of any KV write or delete, what a read of an *absent* key reports as
/// `X-Consul-Index`) never decreases, and every index a response carries (`X-Consul-Index`,
/// an entry's `ModifyIndex`, the index a transaction commits at) is at most that index at the
/// time of the answer. So `high`, the highest index seen, is a lower bound of the store's
/// index, and an *exact* reading of the store's index below it — a consistent read of an
/// absent key, a transaction that commits at a lower index — means the store lost its state
/// (a dev agent restarted, a cluster rebuilt, a snapshot restored): every lock held and every
/// watch opened before belongs to a history that is gone. [`Epoch::declare`] then starts a
/// new *generation*; locks and watches of older generations end (see the crate docs).
#[derive(Debug)]
pub(crate) struct Epoch {
    state: StdMutex<EpochState>,
    generation: watch::Sender<u64>,
}

#[derive(Debug, Default, Clone, Copy)]
struct EpochState {
    generation: u64,
    high: u64,
    /// The highest index seen before the last loss, and the index that revealed it.
    lost_from: u64,
    lost_to: u64,
}

/// The epoch as it was when a request was sent: what its answer is judged against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    generation: u64,
    high: u64,
}

impl Epoch {
    pub(crate) fn new() -> Epoch {
        Epoch {
            state: StdMutex::new(EpochState::default()),
            generation: watch::channel(0).0,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, EpochState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Taken before sending a request.
    pub(crate) fn mark(&self) -> Mark {
        let state = self.state();
        Mark {
            generation: state.generation,
            high: state.high,
        }
    }

    /// Records an index carried by the answer to a request sent at `mark`. Answers to
    /// requests sent in an earlier generation are ignored: they may come from the lost history.
    pub(crate) fn observe(&self, mark: Mark, index: u64) {
        let mut state = self.state();
        if state.generation == mark.generation && index > state.high {
            state.high = index;
        }
    }

    /// Records an exact reading of the store's index (or a fresh commit index), answered to
    /// a request sent at `mark`: below the highest index seen before it was sent, the server
    /// lost its state.
    pub(crate) fn check(&self, mark: Mark, index: u64) {
        if index > 0 && index < mark.high {
            self.declare(mark.generation, mark.high, index);
        } else {
            self.observe(mark, index);
        }
    }

    /// The server lost its state: indexes fell from `from` to `to`. Ends `generation` (once:
    /// several requests may notice the same loss) and starts the next one at `to`.
    pub(crate) fn declare(&self, generation: u64, from: u64, to: u64) {
        let mut state = self.state();
        if state.generation != generation {
            return;
        }
        state.generation += 1;
        state.high = to;
        state.lost_from = from;
        state.lost_to = to;
        tracing::warn!(
            from,
            to,
            "the Consul server lost its state (its KV index went backwards): ending this handle's watches and locks"
        );
        self.generation.send_replace(state.generation);
    }

    /// How many losses this handle has noticed (the current generation).
    pub(crate) fn generation(&self) -> u64 {
        self.state().generation
    }

    /// A guard for a watch or a held lock, of the current generation.
    pub(crate) fn guard(self: &Arc<Self>) -> EpochGuard {
        let rx = self.generation.subscribe();
        let generation = *rx.borrow();
        EpochGuard {
            epoch: self.clone(),
            rx,
            generation,
        }
    }

    /// The error that ends the watches of a lost generation.
    pub(crate) fn error(&self) -> Error {
        let state = *self.state();
        Error::backend(
            BACKEND,
            format!(
                "the Consul server lost its state: its index went backwards from {} to {} \
                 (a restarted dev agent, a rebuilt cluster or a restored snapshot); this watch \
                 belongs to the lost history (watch again), locks held before are lost, and \
                 fencing tokens start low again",
                state.lost_from, state.lost_to
            ),
        )
    }
}

/// One watch's or held lock's tie to the generation it started in.
#[derive(Debug, Clone)]
pub(crate) struct EpochGuard {
    epoch: Arc<Epoch>,
    rx: watch::Receiver<u64>,
    generation: u64,
}

impl EpochGuard {
    /// The generation this guard belongs to.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// True once the server was found to have lost its state since the guard was made.
    pub(crate) fn is_over(&self) -> bool {
        *self.rx.borrow() != self.generation
    }

    /// Completes when the server is found to have lost its state.
    pub(crate) async fn over(&mut self) {
        let generation = self.generation;
        if self.rx.wait_for(|g| *g != generation).await.is_err() {
            // The epoch is gone with the client: never.
            std::future::pending::<()>().await;
        }
    }

    /// The error to end a watch with.
    pub(crate) fn error(&self) -> Error {
        self.epoch.error()
    }
}

/// One KV entry as Consul returns it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Entry {
    pub key: String,
    #[serde(default)]
    pub flags: u64,
    #[serde(default, deserialize_with = "base64_value")]
    pub value: Bytes,
    #[serde(default)]
    pub modify_index: u64,
    #[serde(default)]
    pub session: Option<String>,
}

fn base64_value<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Bytes, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    match text {
        None => Ok(Bytes::new()),
        Some(text) => BASE64
            .decode(text.as_bytes())
            .map(Bytes::from)
            .map_err(serde::de::Error::custom),
    }
}

/// A condition checked inside a write transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cond {
    /// The key must not exist.
    NotExists,
    /// The key's `ModifyIndex` must be this.
    Index(u64),
}

/// The outcome of a write transaction.
#[derive(Debug)]
pub(crate) enum TxnOutcome {
    /// Committed at this Raft index (the written key's new `ModifyIndex`).
    Committed(u64),
    /// Rolled back: the operation at this position failed (its condition did not hold).
    RolledBack(usize, String),
}

/// The whole answer to a `/v1/txn` request.
#[derive(Debug)]
pub(crate) enum TxnAnswer {
    /// Committed (or, for reads and checks only, answered): the entries the operations
    /// reported, in operation order (`get` with its value; checks and writes without it,
    /// writes with their new `ModifyIndex`; deletes and `check-not-exists` report nothing),
    /// and the response's `X-Consul-Index` (0 when absent).
    Committed {
        /// The reported entries.
        entries: Vec<Entry>,
        /// The response's index.
        index: u64,
    },
    /// Rolled back: the position and Consul's message of every operation that failed.
    RolledBack(Vec<(usize, String)>),
}

#[derive(Debug)]
pub(crate) struct Client {
    http: reqwest::Client,
    endpoints: Vec<String>,
    current: AtomicUsize,
    token: Option<String>,
    datacenter: Option<String>,
    pub(crate) request_timeout: Duration,
    pub(crate) watch_wait: Duration,
    pub(crate) epoch: Arc<Epoch>,
    /// The server's clock as this handle estimates it from the responses' `Date` headers.
    pub(crate) clock: ServerClock,
    /// HTTP requests sent (each endpoint tried counts), for `ConsulStore::requests_sent`.
    pub(crate) requests: AtomicU64,
}

struct Response {
    status: StatusCode,
    index: u64,
    body: Bytes,
}

/// Percent-encodes a key for a URL path: unreserved characters and `/` stay, everything else
/// (spaces, `?`, `#`, `%`, non-ASCII…) becomes `%XX`.
pub(crate) fn encode_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for &b in key.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether Consul's `/v1/kv` endpoint accepts this key (its `validateKVKey`): no leading or
/// trailing space, no `..` segment, and if the key contains `%XX` escapes, their decoded form
/// has neither a space nor `..`. `/v1/txn` does not check keys, so writes take any key; reads
/// of a refused key go through a listing of its nearest accepted parent directory.
pub(crate) fn consul_accepts(key: &str) -> bool {
    if key.is_empty() {
        return true;
    }
    if key.starts_with(' ') || key.ends_with(' ') || key.split('/').any(|p| p == "..") {
        return false;
    }
    match path_unescape(key) {
        Some(decoded) if decoded != key.as_bytes() => {
            !(decoded.windows(2).any(|w| w == b"..") || decoded.contains(&b' '))
        }
        _ => true,
    }
}

/// Go's `url.PathUnescape`: `None` on a malformed escape.
fn path_unescape(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The longest `…/` prefix of `key` that Consul accepts (`""` at worst: the root).
pub(crate) fn safe_prefix(key: &str) -> &str {
    let mut end = key.len();
    while let Some(slash) = key[..end].rfind('/') {
        let candidate = &key[..=slash];
        if consul_accepts(candidate) {
            return candidate;
        }
        end = slash;
    }
    ""
}

fn read_file(path: &std::path::Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::Config(format!("cannot read {what} {}: {e}", path.display())))
}

impl Client {
    pub(crate) fn new(config: &Config) -> Result<Client> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(30));
        let tls = &config.tls;
        if let Some(ca) = &tls.ca_file {
            let pem = read_file(ca, "CA file")?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::Config(format!("bad CA file {}: {e}", ca.display())))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            let mut pem = read_file(cert, "client certificate")?;
            pem.push(b'\n');
            pem.extend(read_file(key, "client key")?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| Error::Config(format!("bad client certificate or key: {e}")))?;
            builder = builder.identity(identity);
        }
        if tls.insecure_skip_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            http,
            endpoints: config.endpoints.clone(),
            current: AtomicUsize::new(0),
            token: config.token.clone(),
            datacenter: config.datacenter.clone(),
            request_timeout: config.request_timeout,
            watch_wait: config.watch_wait,
            epoch: Arc::new(Epoch::new()),
            clock: ServerClock::new(BACKEND),
            requests: AtomicU64::new(0),
        })
    }

    /// Sends one request, failing over to the next endpoint when a connection cannot be made.
    /// `path` is already encoded and may carry a query string.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
        operation: &'static str,
    ) -> Result<Response> {
        let mut path = path.to_owned();
        if let Some(dc) = &self.datacenter {
            path.push(if path.contains('?') { '&' } else { '?' });
            path.push_str("dc=");
            path.push_str(&encode_path(dc));
        }
        let mut last_error = None;
        for _ in 0..self.endpoints.len() {
            let at = self.current.load(Ordering::Relaxed) % self.endpoints.len();
            let url = format!("{}{}", self.endpoints[at], path);
            let mut request = self.http.request(method.clone(), &url).timeout(timeout);
            if let Some(token) = &self.token {
                request = request.header("X-Consul-Token", token);
            }
            if let Some(body) = &body {
                request = request.body(body.clone());
            }
            let sent = Instant::now();
            self.requests.fetch_add(1, Ordering::Relaxed);
            let response = match request.send().await {
                Ok(response) => {
                    // Every answer (any status) samples the server's clock.
                    let date = response.headers().get(reqwest::header::DATE);
                    self.clock
                        .observe(sent, Instant::now(), date.and_then(|v| v.to_str().ok()));
                    response
                }
                Err(error) if error.is_connect() && !error.is_timeout() => {
                    tracing::debug!(%url, %error, "Consul endpoint unreachable, trying the next one");
                    self.current
                        .compare_exchange(at, at + 1, Ordering::Relaxed, Ordering::Relaxed)
                        .ok();
                    last_error = Some(error);
                    continue;
                }
                Err(error) => return Err(map_reqwest(error, operation, timeout)),
            };
            let status = response.status();
            let index = response
                .headers()
                .get("X-Consul-Index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let body = response
                .bytes()
                .await
                .map_err(|e| map_reqwest(e, operation, timeout))?;
            return check_status(Response {
                status,
                index,
                body,
            });
        }
        Err(match last_error {
            Some(error) => Error::unavailable(BACKEND, error),
            None => Error::unavailable(BACKEND, "no endpoint configured"),
        })
    }

    fn read_query(consistent: bool, block: Option<(u64, Duration)>) -> String {
        // `consistent`: the leader confirms it still leads before answering (linearizable);
        // otherwise `stale`: any server answers from its own state.
        let mut query = String::from(if consistent { "&consistent" } else { "&stale" });
        if let Some((index, wait)) = block
            && index > 0
        {
            query.push_str(&format!("&index={index}&wait={}ms", wait.as_millis()));
        }
        query
    }

    fn read_timeout(&self, block: Option<(u64, Duration)>) -> Duration {
        match block {
            // Consul adds up to wait/16 of jitter to a blocking query.
            Some((index, wait)) if index > 0 => self.request_timeout + wait + wait / 16,
            _ => self.request_timeout,
        }
    }

    /// Reads one key: the entry (if any) and the `X-Consul-Index`. With `block`, a blocking
    /// query that returns once the key's index passes the given one (or the wait elapses).
    ///
    /// The index is the entry's `ModifyIndex` when the key exists, and the KV store's index
    /// when it does not: a consistent read of an absent key is an exact reading of the
    /// store's index, checked against the [`Epoch`].
    pub(crate) async fn kv_get(
        &self,
        key: &str,
        consistent: bool,
        block: Option<(u64, Duration)>,
    ) -> Result<(Option<Entry>, u64)> {
        if !consul_accepts(key) {
            // Consul's /v1/kv endpoint refuses this key (see `consul_accepts`): read it from a
            // listing of the nearest accepted parent directory instead.
            let (entries, index) = self.kv_list(safe_prefix(key), consistent, block).await?;
            return Ok((entries.into_iter().find(|e| e.key == key), index));
        }
        let path = format!(
            "/v1/kv/{}?{}",
            encode_path(key),
            Self::read_query(consistent, block)
        );
        let mark = self.epoch.mark();
        let response = self
            .send(Method::GET, &path, None, self.read_timeout(block), "get")
            .await?;
        match response.status {
            StatusCode::NOT_FOUND => {
                if consistent {
                    self.epoch.check(mark, response.index);
                } else {
                    // A stale read may come from a server that lags behind: no verdict.
                    self.epoch.observe(mark, response.index);
                }
                Ok((None, response.index))
            }
            StatusCode::OK => {
                let mut entries: Vec<Entry> = parse(&response.body)?;
                self.observe_entries(mark, response.index, &entries);
                let entry = entries.drain(..).find(|e| e.key == key);
                Ok((entry, response.index))
            }
            _ => Err(unexpected(&response)),
        }
    }

    fn observe_entries(&self, mark: Mark, index: u64, entries: &[Entry]) {
        let highest = entries.iter().map(|e| e.modify_index).max().unwrap_or(0);
        self.epoch.observe(mark, index.max(highest));
    }

    /// After a query's index fell below `seen` (the highest index that query had answered),
    /// decides whether the server lost its state, and declares it if so (ending `generation`).
    ///
    /// * `key` names one key (`is_key`) that Consul reads directly: a key's own index never
    ///   falls on a healthy store (its `ModifyIndex` only rises while it exists, and when it
    ///   does not exist the index is the store's, which is at least every `ModifyIndex` it
    ///   ever had), so a consistent re-read of it below `seen` settles it.
    /// * Otherwise `key` is a listing's prefix (or a key Consul reads through one): a
    ///   listing's index *does* fall on a healthy store, when Consul reaps the tombstones of
    ///   keys deleted under the prefix. The judge is then the store's own index, read exactly
    ///   as the index of an absent key: `<dir>/__kv`, reserved, never written by this crate.
    ///   If that key exists (another program wrote it) or cannot be read, the fall is taken as
    ///   legitimate.
    pub(crate) async fn confirm_loss(
        &self,
        key: &str,
        is_key: bool,
        seen: u64,
        generation: u64,
    ) -> Result<()> {
        let direct = is_key && consul_accepts(key);
        let probe = if direct {
            key.to_owned()
        } else {
            probe_key(key)
        };
        if !consul_accepts(&probe) {
            return Ok(());
        }
        let (entry, index) = match self.kv_get(&probe, true, None).await {
            Ok(read) => read,
            Err(Error::PermissionDenied { message, .. }) if !direct => {
                tracing::debug!(probe, message, "cannot read the index probe key");
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        if !direct && entry.is_some() {
            tracing::debug!(probe, "the index probe key exists: no verdict");
            return Ok(());
        }
        if index > 0 && index < seen {
            self.epoch.declare(generation, seen, index);
        }
        Ok(())
    }

    /// Lists every entry whose key starts with `prefix` (plain string prefix).
    pub(crate) async fn kv_list(
        &self,
        prefix: &str,
        consistent: bool,
        block: Option<(u64, Duration)>,
    ) -> Result<(Vec<Entry>, u64)> {
        if !consul_accepts(prefix) {
            let (mut entries, index) =
                Box::pin(self.kv_list(safe_prefix(prefix), consistent, block)).await?;
            entries.retain(|e| e.key.starts_with(prefix));
            return Ok((entries, index));
        }
        let path = format!(
            "/v1/kv/{}?recurse{}",
            encode_path(prefix),
            Self::read_query(consistent, block)
        );
        let mark = self.epoch.mark();
        let response = self
            .send(Method::GET, &path, None, self.read_timeout(block), "list")
            .await?;
        // A listing's index is the highest index under the prefix, not the store's: never a
        // verdict on its own (see `confirm_loss`).
        match response.status {
            StatusCode::NOT_FOUND => {
                self.epoch.observe(mark, response.index);
                Ok((Vec::new(), response.index))
            }
            StatusCode::OK => {
                let entries: Vec<Entry> = parse(&response.body)?;
                self.observe_entries(mark, response.index, &entries);
                Ok((entries, response.index))
            }
            _ => Err(unexpected(&response)),
        }
    }

    /// The names of every key that starts with `prefix` (plain string prefix), without their
    /// values: `?keys`, consistent.
    pub(crate) async fn kv_keys(&self, prefix: &str) -> Result<Vec<String>> {
        if !consul_accepts(prefix) {
            let mut keys = Box::pin(self.kv_keys(safe_prefix(prefix))).await?;
            keys.retain(|k| k.starts_with(prefix));
            return Ok(keys);
        }
        let path = format!("/v1/kv/{}?keys&consistent", encode_path(prefix));
        let mark = self.epoch.mark();
        let response = self
            .send(Method::GET, &path, None, self.request_timeout, "list")
            .await?;
        self.epoch.observe(mark, response.index);
        match response.status {
            StatusCode::NOT_FOUND => Ok(Vec::new()),
            StatusCode::OK => parse(&response.body),
            _ => Err(unexpected(&response)),
        }
    }

    /// Deletes `key` if its `ModifyIndex` is still `index`; `false` if it was not. Goes
    /// through `/v1/txn`, which takes every key `/v1/kv` refuses too. `delete-cas` alone
    /// reports success for a key that is already gone (Consul's state store answers "deleted"
    /// when there is no entry), so two racing deletes of one version would both win: the
    /// `check-index` before it fails for an absent key.
    pub(crate) async fn kv_delete_cas(&self, key: &str, index: u64) -> Result<bool> {
        let check = json!({ "KV": { "Verb": "check-index", "Key": key, "Index": index } });
        let op = json!({ "KV": { "Verb": "delete-cas", "Key": key, "Index": index } });
        match self.txn(vec![check, op], "delete").await? {
            TxnOutcome::Committed(_) => Ok(true),
            TxnOutcome::RolledBack(..) => Ok(false),
        }
    }

    /// Runs a `/v1/txn` transaction made of KV operations.
    ///
    /// A committed transaction that wrote an entry reports the index it committed at (the
    /// highest `ModifyIndex` among its results): a fresh Raft index, above every index seen
    /// before it was sent, or the server lost its state (checked against the [`Epoch`]).
    pub(crate) async fn txn(&self, ops: Vec<Json>, operation: &'static str) -> Result<TxnOutcome> {
        Ok(match self.txn_answer(ops, operation, false).await? {
            TxnAnswer::Committed { entries, index } => TxnOutcome::Committed(
                entries
                    .iter()
                    .map(|e| e.modify_index)
                    .max()
                    .unwrap_or(index),
            ),
            TxnAnswer::RolledBack(errors) => match errors.into_iter().next() {
                Some((op, what)) => TxnOutcome::RolledBack(op, what),
                None => TxnOutcome::RolledBack(0, String::new()),
            },
        })
    }

    /// Runs a `/v1/txn` transaction and returns Consul's whole answer: every entry its
    /// operations reported, or every failing operation. `consistent_read`: a transaction of
    /// reads and checks only is answered in Consul's `consistent` mode (the leader confirms
    /// it still leads: linearizable); Consul commits transactions with writes through Raft.
    ///
    /// A committed transaction that wrote an entry is checked against the [`Epoch`] (its
    /// commit index must not be below an index seen before it was sent).
    pub(crate) async fn txn_answer(
        &self,
        ops: Vec<Json>,
        operation: &'static str,
        consistent_read: bool,
    ) -> Result<TxnAnswer> {
        let body = serde_json::to_vec(&ops).map_err(|e| Error::backend(BACKEND, e))?;
        // Only these verbs report the entry they wrote; checks report the entry as it was.
        let writes_entry = ops.iter().any(|op| {
            matches!(
                op["KV"]["Verb"].as_str(),
                Some("set" | "cas" | "lock" | "unlock")
            )
        });
        let path = if consistent_read {
            "/v1/txn?consistent"
        } else {
            "/v1/txn"
        };
        let mark = self.epoch.mark();
        let response = self
            .send(
                Method::PUT,
                path,
                Some(body),
                self.request_timeout,
                operation,
            )
            .await?;
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct TxnResult {
            #[serde(default, rename = "KV")]
            kv: Option<Entry>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct TxnError {
            #[serde(default)]
            op_index: usize,
            #[serde(default)]
            what: String,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct TxnResponse {
            #[serde(default)]
            results: Option<Vec<TxnResult>>,
            #[serde(default)]
            errors: Option<Vec<TxnError>>,
        }
        match response.status {
            StatusCode::OK => {
                let parsed: TxnResponse = parse(&response.body)?;
                let entries: Vec<Entry> = parsed
                    .results
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|r| r.kv)
                    .collect();
                let committed = entries.iter().map(|e| e.modify_index).max();
                // Deletions report nothing (and write transactions carry no X-Consul-Index).
                match committed {
                    Some(index) if writes_entry => self.epoch.check(mark, index),
                    Some(index) => self.epoch.observe(mark, index),
                    None => {}
                }
                Ok(TxnAnswer::Committed {
                    entries,
                    index: response.index,
                })
            }
            StatusCode::CONFLICT => {
                let parsed: TxnResponse = parse(&response.body)?;
                Ok(TxnAnswer::RolledBack(
                    parsed
                        .errors
                        .unwrap_or_default()
                        .into_iter()
                        .map(|e| (e.op_index, e.what))
                        .collect(),
                ))
            }
            // The server's `txn_max_req_len` is below the default this crate checks against.
            StatusCode::PAYLOAD_TOO_LARGE if operation == "transaction" => {
                Err(Error::InvalidOption(format!(
                    "the transaction is larger than the Consul server accepts: {}",
                    body_text(&response)
                )))
            }
            _ => Err(unexpected(&response)),
        }
    }

    /// Creates a session with this TTL (whole milliseconds) and behaviour, without health
    /// checks (only the TTL ends it) and without lock-delay.
    pub(crate) async fn session_create(
        &self,
        ttl: Duration,
        behavior: &str,
        name: &str,
    ) -> Result<String> {
        let body = json!({
            "Name": name,
            "TTL": format!("{}ms", ttl.as_millis()),
            "Behavior": behavior,
            "LockDelay": "0s",
            "NodeChecks": [],
        });
        let response = self
            .send(
                Method::PUT,
                "/v1/session/create",
                Some(body.to_string().into_bytes()),
                self.request_timeout,
                "session create",
            )
            .await?;
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        match response.status {
            StatusCode::OK => Ok(parse::<Created>(&response.body)?.id),
            _ => Err(unexpected(&response)),
        }
    }

    /// Renews a session: `false` when it no longer exists.
    pub(crate) async fn session_renew(&self, id: &str) -> Result<bool> {
        let path = format!("/v1/session/renew/{}", encode_path(id));
        let response = self
            .send(
                Method::PUT,
                &path,
                None,
                self.request_timeout,
                "session renew",
            )
            .await?;
        match response.status {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(unexpected(&response)),
        }
    }

    /// Destroys a session (no error if it is already gone).
    pub(crate) async fn session_destroy(&self, id: &str) -> Result<()> {
        let path = format!("/v1/session/destroy/{}", encode_path(id));
        let response = self
            .send(
                Method::PUT,
                &path,
                None,
                self.request_timeout,
                "session destroy",
            )
            .await?;
        match response.status {
            StatusCode::OK | StatusCode::NOT_FOUND => Ok(()),
            _ => Err(unexpected(&response)),
        }
    }

    /// Checks that the agent answers and has a leader.
    pub(crate) async fn status_leader(&self) -> Result<()> {
        let response = self
            .send(
                Method::GET,
                "/v1/status/leader",
                None,
                self.request_timeout,
                "connect",
            )
            .await?;
        let leader: String = parse(&response.body).unwrap_or_default();
        if response.status == StatusCode::OK && !leader.is_empty() {
            Ok(())
        } else {
            Err(Error::unavailable(
                BACKEND,
                "the Consul cluster has no leader",
            ))
        }
    }

    /// The agent's `session_ttl_min`, when the token may read the agent's configuration.
    pub(crate) async fn session_ttl_min(&self) -> Option<Duration> {
        let response = self
            .send(
                Method::GET,
                "/v1/agent/self",
                None,
                self.request_timeout,
                "connect",
            )
            .await
            .ok()?;
        let parsed: Json = serde_json::from_slice(&response.body).ok()?;
        let text = parsed.get("DebugConfig")?.get("SessionTTLMin")?.as_str()?;
        kv_core::url::parse_duration(text)
    }
}

/// The reserved key whose absence [`Client::confirm_loss`] reads the store's index from, in
/// the directory of `key` (`key` up to its last `/`): `ns/dir/` and `ns/dir/x` give
/// `ns/dir/__kv`, `x` gives `__kv`.
pub(crate) fn probe_key(key: &str) -> String {
    let dir = key.rfind('/').map_or("", |i| &key[..=i]);
    format!("{dir}{PROBE_SEGMENT}")
}

/// A KV operation for `/v1/txn`.
pub(crate) fn txn_op(verb: &str, key: &str) -> Json {
    json!({ "KV": { "Verb": verb, "Key": key } })
}

/// A KV write operation for `/v1/txn` (`set`, `lock`, `unlock`).
pub(crate) fn txn_write(
    verb: &str,
    key: &str,
    value: &[u8],
    flags: u64,
    session: Option<&str>,
) -> Json {
    let mut op = json!({ "Verb": verb, "Key": key, "Value": BASE64.encode(value), "Flags": flags });
    if let Some(session) = session {
        op["Session"] = json!(session);
    }
    json!({ "KV": op })
}

/// A condition for `/v1/txn`.
pub(crate) fn txn_cond(cond: Cond, key: &str) -> Json {
    match cond {
        Cond::NotExists => txn_op("check-not-exists", key),
        Cond::Index(index) => {
            json!({ "KV": { "Verb": "check-index", "Key": key, "Index": index } })
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| Error::backend(BACKEND, format!("unexpected response from Consul: {e}")))
}

fn body_text(response: &Response) -> String {
    String::from_utf8_lossy(&response.body)
        .trim()
        .chars()
        .take(500)
        .collect()
}

fn check_status(response: Response) -> Result<Response> {
    let status = response.status;
    if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
        return Err(Error::PermissionDenied {
            backend: BACKEND,
            message: body_text(&response),
        });
    }
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        let text = body_text(&response);
        // Consul reports ACL failures from RPCs as 500 "Permission denied" on some paths.
        if text.contains("Permission denied") || text.contains("ACL not found") {
            return Err(Error::PermissionDenied {
                backend: BACKEND,
                message: text,
            });
        }
        return Err(Error::unavailable(
            BACKEND,
            format!("HTTP {status}: {text}"),
        ));
    }
    Ok(response)
}

fn unexpected(response: &Response) -> Error {
    Error::backend(
        BACKEND,
        format!(
            "unexpected HTTP {} from Consul: {}",
            response.status,
            body_text(response)
        ),
    )
}

fn map_reqwest(error: reqwest::Error, operation: &'static str, after: Duration) -> Error {
    if error.is_timeout() {
        Error::Timeout {
            backend: BACKEND,
            operation,
            after,
        }
    } else if error.is_builder() {
        Error::backend(BACKEND, error)
    } else {
        Error::unavailable(BACKEND, error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_paths() {
        assert_eq!(encode_path("a/b c?d#e%f"), "a/b%20c%3Fd%23e%25f");
        assert_eq!(encode_path("ü"), "%C3%BC");
        assert_eq!(encode_path("a-b_c.d~e"), "a-b_c.d~e");
    }

    #[test]
    fn knows_which_keys_consul_refuses() {
        for ok in [
            "a", "a/b", "..x", "x..", "a b", "q?x", "100%", "%zz", "a/%41",
        ] {
            assert!(consul_accepts(ok), "{ok}");
        }
        for refused in [" a", "a ", "a/..", "pct%20x", "a/%2e%2E/b", "x%2E%2E"] {
            assert!(!consul_accepts(refused), "{refused}");
        }
        assert_eq!(safe_prefix("p/q/pct%20x"), "p/q/");
        assert_eq!(safe_prefix("p/pct%20x/k"), "p/");
        assert_eq!(safe_prefix(" p/k"), "");
    }

    #[test]
    fn probes_next_to_the_key_or_in_the_directory() {
        assert_eq!(probe_key("ns/dir/"), "ns/dir/__kv");
        assert_eq!(probe_key("ns/dir/x"), "ns/dir/__kv");
        assert_eq!(probe_key("x"), "__kv");
        assert_eq!(probe_key(""), "__kv");
        assert!(
            kv_core::key::normalize_key("ns/dir/__kv").is_err(),
            "never a user key"
        );
    }

    #[test]
    fn decodes_entries() {
        let entries: Vec<Entry> = serde_json::from_str(
            r#"[{"LockIndex":0,"Key":"a","Flags":3,"Value":"aGk=","CreateIndex":5,"ModifyIndex":7},
                {"Key":"b","Flags":0,"Value":null,"ModifyIndex":8,"Session":"s"}]"#,
        )
        .unwrap();
        assert_eq!(entries[0].value, Bytes::from_static(b"hi"));
        assert_eq!(entries[0].modify_index, 7);
        assert_eq!(entries[1].value, Bytes::new());
        assert_eq!(entries[1].session.as_deref(), Some("s"));
    }
}
