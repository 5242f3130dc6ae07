//! The synchronous layer: one [`Engine`] per open database, shared by every handle on it.
//!
//! Everything here blocks (sled is synchronous) and is called from `spawn_blocking` by the
//! async layer, except [`Engine::subscribe`]. See the crate documentation for the layout.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kv_core::Error;
use kv_core::ttl::{is_expired, now_millis};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::broadcast;

use crate::config::{Config, Durability};

/// The backend's name in errors and capabilities.
pub(crate) const BACKEND: &str = "bolt";

/// Tree holding the values: stored key → raw value bytes.
pub(crate) const DATA_TREE: &str = "kv/data";
/// Tree holding the metadata: stored key → `last_index` (u64 BE) ‖ deadline (u64 BE, Unix ms, 0 = none).
pub(crate) const META_TREE: &str = "kv/meta";
/// Tree indexing TTLs: deadline (u64 BE) ‖ stored key → empty.
pub(crate) const EXPIRY_TREE: &str = "kv/expiry";
/// Tree holding the database-wide counters: `seq` → last committed index (u64 BE).
pub(crate) const STATE_TREE: &str = "kv/state";
/// The key of the commit counter in [`STATE_TREE`].
const SEQ_KEY: &[u8] = b"seq";

/// How many changes a slow watcher may fall behind before it resynchronises by re-reading.
const CHANGES_CAPACITY: usize = 4096;
/// Values up to this size travel inside published changes; larger ones are re-read.
const INLINE_VALUE_MAX: usize = 64 * 1024;
/// How many expired keys one sweep removes in one transaction.
const SWEEP_BATCH: usize = 1000;

/// A live key as stored: its value, `last_index` and TTL deadline (Unix ms, 0 = none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) value: Bytes,
    pub(crate) index: u64,
    pub(crate) deadline: u64,
}

impl Entry {
    pub(crate) fn is_expired(&self) -> bool {
        is_expired(self.deadline)
    }
}

/// One committed write, as published to watchers: every stored key it touched with its new
/// state (`None` = removed). `seq` is the commit's index; changes arrive in `seq` order.
#[derive(Debug)]
pub(crate) struct Change {
    pub(crate) seq: u64,
    pub(crate) updates: Vec<(String, Update)>,
}

/// A key's new state in a [`Change`].
#[derive(Debug, Clone)]
pub(crate) enum Update {
    /// Written (or renewed): the new entry.
    Set(Entry),
    /// Written with a value larger than [`INLINE_VALUE_MAX`]: the value is not carried (a
    /// lagging watcher must not pin many large values in memory); watchers re-read it.
    Large {
        /// The key's `last_index` after the commit.
        index: u64,
    },
    /// Deleted or expired.
    Removed,
}

impl Update {
    fn set(entry: Entry) -> Update {
        if entry.value.len() > INLINE_VALUE_MAX {
            Update::Large { index: entry.index }
        } else {
            Update::Set(entry)
        }
    }

    /// The key's `last_index` after the commit, `None` when removed.
    pub(crate) fn index(&self) -> Option<u64> {
        match self {
            Update::Set(entry) => Some(entry.index),
            Update::Large { index } => Some(*index),
            Update::Removed => None,
        }
    }
}

/// Outcome of a conditional write that did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conflict {
    /// The key exists (create-only write); carries its deadline (0 = none).
    Exists(u64),
    /// The key does not exist.
    NotFound,
    /// The key's index differs.
    Modified,
}

/// One mutation inside a commit.
enum Op {
    Put {
        key: String,
        value: Bytes,
        deadline: u64,
        old_deadline: Option<u64>,
    },
    Remove {
        key: String,
        old_deadline: Option<u64>,
    },
    Renew {
        key: String,
        value: Bytes,
        index: u64,
        deadline: u64,
        old_deadline: u64,
    },
    DropExpiryEntry(Vec<u8>),
}

/// Wakes the sweeper thread.
#[derive(Debug, Default)]
struct SweepSignal {
    state: Mutex<SweepState>,
    wake: Condvar,
}

#[derive(Debug)]
struct SweepState {
    /// The earliest deadline (Unix ms) that needs a sweep; `u64::MAX` = none.
    next: u64,
    stop: bool,
}

impl Default for SweepState {
    fn default() -> Self {
        SweepState {
            next: u64::MAX,
            stop: false,
        }
    }
}

impl SweepSignal {
    fn schedule(&self, deadline: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if deadline < state.next {
            state.next = deadline;
            self.wake.notify_all();
        }
    }

    fn stop(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.stop = true;
        self.wake.notify_all();
    }
}

/// One open database, shared by every handle on it in this process.
pub(crate) struct Engine {
    db: sled::Db,
    data: sled::Tree,
    meta: sled::Tree,
    expiry: sled::Tree,
    state: sled::Tree,
    /// Writers take it exclusively, readers shared: reads see data, metadata and `seq` of the
    /// same commit, and commits (hence indexes and published changes) are totally ordered.
    gate: RwLock<()>,
    /// The last committed index (mirrors [`STATE_TREE`]).
    seq: AtomicU64,
    changes: broadcast::Sender<Arc<Change>>,
    sweeper: Arc<SweepSignal>,
    registry_key: Option<PathBuf>,
    path: PathBuf,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("path", &self.path)
            .field("seq", &self.seq.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.sweeper.stop();
        if let Some(key) = &self.registry_key {
            let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
            if registry
                .get(key)
                .is_some_and(|weak| weak.strong_count() == 0)
            {
                registry.remove(key);
            }
        }
        // Dropping `db` and the trees flushes (sled does it) and releases the file lock.
    }
}

/// Open databases in this process: canonical path → engine. sled allows one `Db` per path per
/// process, so every handle on a path shares one engine.
static REGISTRY: LazyLock<Mutex<HashMap<PathBuf, Weak<Engine>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Maps a sled error met while serving a call.
pub(crate) fn map_err(error: sled::Error) -> Error {
    match error {
        sled::Error::Io(io) => io_error(io),
        other => Error::backend(BACKEND, other),
    }
}

fn io_error(io: std::io::Error) -> Error {
    use std::io::ErrorKind::*;
    match io.kind() {
        PermissionDenied | ReadOnlyFilesystem => Error::PermissionDenied {
            backend: BACKEND,
            message: io.to_string(),
        },
        _ => Error::unavailable(BACKEND, io),
    }
}

/// Maps a sled error met while opening the database at `path`.
fn map_open_err(path: &Path, error: sled::Error) -> Error {
    use std::io::ErrorKind::*;
    match error {
        sled::Error::Io(io) => match io.kind() {
            PermissionDenied | ReadOnlyFilesystem => Error::PermissionDenied {
                backend: BACKEND,
                message: format!("cannot open {}: {io}", path.display()),
            },
            NotFound | NotADirectory | AlreadyExists | IsADirectory | InvalidInput
            | InvalidData | UnexpectedEof => Error::Config(format!(
                "cannot open {} as a database: {io}",
                path.display()
            )),
            _ => Error::unavailable(BACKEND, io),
        },
        sled::Error::Unsupported(message) => {
            Error::Config(format!("cannot open {}: {message}", path.display()))
        }
        sled::Error::Corruption { .. } => Error::Config(format!(
            "{} is not a readable database (corrupt or not a sled database): {error}",
            path.display()
        )),
        other => Error::backend(BACKEND, other),
    }
}

fn is_lock_conflict(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

fn tx_err(error: TransactionError<()>) -> Error {
    match error {
        TransactionError::Storage(e) => map_err(e),
        TransactionError::Abort(()) => Error::backend(BACKEND, "transaction aborted"),
    }
}

fn encode_meta(index: u64, deadline: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&index.to_be_bytes());
    out[8..].copy_from_slice(&deadline.to_be_bytes());
    out
}

fn decode_meta(key: &[u8], raw: &[u8]) -> Result<(u64, u64), Error> {
    if raw.len() != 16 {
        return Err(Error::backend(
            BACKEND,
            format!(
                "corrupt metadata for {:?}: {} bytes instead of 16",
                String::from_utf8_lossy(key),
                raw.len()
            ),
        ));
    }
    let index = u64::from_be_bytes(raw[..8].try_into().unwrap_or_default());
    let deadline = u64::from_be_bytes(raw[8..].try_into().unwrap_or_default());
    Ok((index, deadline))
}

fn expiry_key(deadline: u64, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&deadline.to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

fn decode_u64(raw: &[u8]) -> u64 {
    raw.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

impl Engine {
    /// Opens (or joins, when another handle of this process has it open) the database that
    /// `config` describes. Blocking.
    pub(crate) fn open(config: &Config) -> Result<Arc<Engine>, Error> {
        let Some(path) = &config.path else {
            // A temporary database without a path: sled picks a fresh one; nobody can join it
            // except through handles cloned from the first one.
            let sled_config = Self::sled_config(config).temporary(true);
            return Self::start(config, sled_config, None, PathBuf::new()).map_err(|e| match e {
                OpenError::Locked(e) => map_err(e),
                OpenError::Other(e) => e,
            });
        };
        let key = registry_key(path);
        let started = Instant::now();
        loop {
            {
                let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(engine) = registry.get(&key).and_then(Weak::upgrade) {
                    return Ok(engine);
                }
                let sled_config = Self::sled_config(config)
                    .path(&key)
                    .temporary(config.temporary);
                match Self::start(config, sled_config, Some(key.clone()), key.clone()) {
                    Ok(engine) => {
                        registry.insert(key, Arc::downgrade(&engine));
                        return Ok(engine);
                    }
                    Err(OpenError::Locked(error)) => {
                        if started.elapsed() >= config.lock_timeout {
                            return Err(Error::unavailable(
                                BACKEND,
                                format!(
                                    "{} is locked by another process (waited {:?}): {error}",
                                    key.display(),
                                    config.lock_timeout
                                ),
                            ));
                        }
                    }
                    Err(OpenError::Other(error)) => return Err(error),
                }
            }
            // The file is locked: by another process, or by a database of this process that
            // is being closed right now. Wait a little and look again.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn sled_config(config: &Config) -> sled::Config {
        let flush = match config.durability {
            Durability::Periodic(every) => Some((every.as_millis() as u64).max(1)),
            Durability::EveryWrite => None,
        };
        sled::Config::new()
            .cache_capacity(config.cache_capacity)
            .flush_every_ms(flush)
    }

    fn start(
        config: &Config,
        sled_config: sled::Config,
        registry_key: Option<PathBuf>,
        path: PathBuf,
    ) -> Result<Arc<Engine>, OpenError> {
        let db = sled_config.open().map_err(|e| {
            if is_lock_conflict(&e) {
                OpenError::Locked(e)
            } else {
                OpenError::Other(map_open_err(&path, e))
            }
        })?;
        let path = if path.as_os_str().is_empty() {
            sled_config.get_path()
        } else {
            path
        };
        let _ = config;
        let open_tree = |name: &str| {
            db.open_tree(name)
                .map_err(|e| OpenError::Other(map_open_err(&path, e)))
        };
        let data = open_tree(DATA_TREE)?;
        let meta = open_tree(META_TREE)?;
        let expiry = open_tree(EXPIRY_TREE)?;
        let state = open_tree(STATE_TREE)?;
        let seq = state
            .get(SEQ_KEY)
            .map_err(|e| OpenError::Other(map_open_err(&path, e)))?
            .map(|raw| decode_u64(&raw))
            .unwrap_or(0);
        let first_deadline = expiry
            .first()
            .map_err(|e| OpenError::Other(map_open_err(&path, e)))?
            .map(|(k, _)| decode_u64(&k[..8.min(k.len())]))
            .unwrap_or(u64::MAX);
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        let sweeper = Arc::new(SweepSignal::default());
        sweeper.schedule(first_deadline);
        let engine = Arc::new(Engine {
            db,
            data,
            meta,
            expiry,
            state,
            gate: RwLock::new(()),
            seq: AtomicU64::new(seq),
            changes,
            sweeper: sweeper.clone(),
            registry_key,
            path,
        });
        let weak = Arc::downgrade(&engine);
        std::thread::Builder::new()
            .name("kv-bolt-sweeper".into())
            .spawn(move || sweeper_thread(weak, sweeper))
            .map_err(|e| OpenError::Other(Error::unavailable(BACKEND, e)))?;
        Ok(engine)
    }

    /// Where the database lives (sled's own path for a temporary database).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Subscribes to committed changes. Subscribe before reading, so nothing is missed.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    /// Writes everything to disk. Blocking.
    pub(crate) fn flush(&self) -> Result<(), Error> {
        self.db.flush().map(|_| ()).map_err(map_err)
    }

    fn read_gate(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_gate(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The stored metadata of `key`, expired or not. Call with the gate held.
    fn meta_of(&self, key: &str) -> Result<Option<(u64, u64)>, Error> {
        match self.meta.get(key.as_bytes()).map_err(map_err)? {
            Some(raw) => decode_meta(key.as_bytes(), &raw).map(Some),
            None => Ok(None),
        }
    }

    /// The live entry of `key`. Call with the gate held.
    fn entry_of(&self, key: &str) -> Result<Option<Entry>, Error> {
        let Some((index, deadline)) = self.meta_of(key)? else {
            return Ok(None);
        };
        if is_expired(deadline) {
            return Ok(None);
        }
        let Some(value) = self.data.get(key.as_bytes()).map_err(map_err)? else {
            return Err(Error::backend(
                BACKEND,
                format!("corrupt store: {key:?} has metadata but no value"),
            ));
        };
        Ok(Some(Entry {
            value: Bytes::copy_from_slice(&value),
            index,
            deadline,
        }))
    }

    /// Reads one key (`None` when absent or expired) and the index of the last commit seen.
    pub(crate) fn get(&self, key: &str) -> Result<(Option<Entry>, u64), Error> {
        let _gate = self.read_gate();
        let entry = self.entry_of(key)?;
        Ok((entry, self.seq.load(Ordering::SeqCst)))
    }

    /// Every live key starting with `prefix` (byte order), and the index of the last commit seen.
    pub(crate) fn list(&self, prefix: &str) -> Result<(Vec<(String, Entry)>, u64), Error> {
        let _gate = self.read_gate();
        let mut out = Vec::new();
        for item in self.meta.scan_prefix(prefix.as_bytes()) {
            let (key, raw) = item.map_err(map_err)?;
            let (index, deadline) = decode_meta(&key, &raw)?;
            if is_expired(deadline) {
                continue;
            }
            let key = String::from_utf8(key.to_vec())
                .map_err(|e| Error::backend(BACKEND, format!("corrupt store: {e}")))?;
            let Some(value) = self.data.get(key.as_bytes()).map_err(map_err)? else {
                return Err(Error::backend(
                    BACKEND,
                    format!("corrupt store: {key:?} has metadata but no value"),
                ));
            };
            out.push((
                key,
                Entry {
                    value: Bytes::copy_from_slice(&value),
                    index,
                    deadline,
                },
            ));
        }
        Ok((out, self.seq.load(Ordering::SeqCst)))
    }

    /// Every key physically stored under `prefix`, expired or not (diagnostics).
    pub(crate) fn stored_keys(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let _gate = self.read_gate();
        let mut out = Vec::new();
        for item in self.data.scan_prefix(prefix.as_bytes()) {
            let (key, _) = item.map_err(map_err)?;
            out.push(String::from_utf8_lossy(&key).into_owned());
        }
        Ok(out)
    }

    /// Applies `ops` atomically as one commit, publishes the change and returns its index.
    /// Call with the write gate held.
    fn commit(&self, ops: Vec<Op>) -> Result<u64, Error> {
        let seq = self.seq.load(Ordering::SeqCst) + 1;
        (&self.data, &self.meta, &self.expiry, &self.state)
            .transaction(|(data, meta, expiry, state)| {
                for op in &ops {
                    match op {
                        Op::Put {
                            key,
                            value,
                            deadline,
                            old_deadline,
                        } => {
                            if let Some(old) = old_deadline.filter(|d| *d != 0) {
                                expiry.remove(expiry_key(old, key))?;
                            }
                            data.insert(key.as_bytes(), value.as_ref())?;
                            meta.insert(key.as_bytes(), &encode_meta(seq, *deadline)[..])?;
                            if *deadline != 0 {
                                expiry.insert(expiry_key(*deadline, key), &[][..])?;
                            }
                        }
                        Op::Remove { key, old_deadline } => {
                            if let Some(old) = old_deadline.filter(|d| *d != 0) {
                                expiry.remove(expiry_key(old, key))?;
                            }
                            data.remove(key.as_bytes())?;
                            meta.remove(key.as_bytes())?;
                        }
                        Op::Renew {
                            key,
                            index,
                            deadline,
                            old_deadline,
                            ..
                        } => {
                            if *old_deadline != 0 {
                                expiry.remove(expiry_key(*old_deadline, key))?;
                            }
                            meta.insert(key.as_bytes(), &encode_meta(*index, *deadline)[..])?;
                            if *deadline != 0 {
                                expiry.insert(expiry_key(*deadline, key), &[][..])?;
                            }
                        }
                        Op::DropExpiryEntry(raw) => {
                            expiry.remove(raw.as_slice())?;
                        }
                    }
                }
                state.insert(SEQ_KEY, &seq.to_be_bytes()[..])?;
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(tx_err)?;
        self.seq.store(seq, Ordering::SeqCst);
        let mut updates = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Put {
                    key,
                    value,
                    deadline,
                    ..
                } => {
                    if deadline != 0 {
                        self.sweeper.schedule(deadline);
                    }
                    updates.push((
                        key,
                        Update::set(Entry {
                            value,
                            index: seq,
                            deadline,
                        }),
                    ));
                }
                Op::Remove { key, .. } => updates.push((key, Update::Removed)),
                Op::Renew {
                    key,
                    value,
                    index,
                    deadline,
                    ..
                } => {
                    if deadline != 0 {
                        self.sweeper.schedule(deadline);
                    }
                    updates.push((
                        key,
                        Update::set(Entry {
                            value,
                            index,
                            deadline,
                        }),
                    ));
                }
                Op::DropExpiryEntry(_) => {}
            }
        }
        if !updates.is_empty() {
            // No receiver is fine: nobody watches.
            let _ = self.changes.send(Arc::new(Change { seq, updates }));
        }
        Ok(seq)
    }

    /// Writes `key` unconditionally; returns its new index.
    pub(crate) fn put(&self, key: String, value: Bytes, deadline: u64) -> Result<Entry, Error> {
        let _gate = self.write_gate();
        let old_deadline = self.meta_of(&key)?.map(|(_, d)| d);
        let index = self.commit(vec![Op::Put {
            key,
            value: value.clone(),
            deadline,
            old_deadline,
        }])?;
        Ok(Entry {
            value,
            index,
            deadline,
        })
    }

    /// Compare-and-swap write: `previous == None` creates only, `Some(index)` overwrites only
    /// that version.
    pub(crate) fn atomic_put(
        &self,
        key: String,
        value: Bytes,
        previous: Option<u64>,
        deadline: u64,
    ) -> Result<Result<Entry, Conflict>, Error> {
        let _gate = self.write_gate();
        let meta = self.meta_of(&key)?;
        let live = meta.filter(|(_, d)| !is_expired(*d));
        match (previous, live) {
            (None, Some((_, d))) => return Ok(Err(Conflict::Exists(d))),
            (Some(_), None) => return Ok(Err(Conflict::NotFound)),
            (Some(prev), Some((index, _))) if prev != index => return Ok(Err(Conflict::Modified)),
            _ => {}
        }
        let index = self.commit(vec![Op::Put {
            key,
            value: value.clone(),
            deadline,
            old_deadline: meta.map(|(_, d)| d),
        }])?;
        Ok(Ok(Entry {
            value,
            index,
            deadline,
        }))
    }

    /// Deletes `key`; `true` if it was live. An expired leftover is removed too.
    pub(crate) fn delete(&self, key: String) -> Result<bool, Error> {
        let _gate = self.write_gate();
        let Some((_, deadline)) = self.meta_of(&key)? else {
            return Ok(false);
        };
        self.commit(vec![Op::Remove {
            key,
            old_deadline: Some(deadline),
        }])?;
        Ok(!is_expired(deadline))
    }

    /// Compare-and-delete.
    pub(crate) fn atomic_delete(
        &self,
        key: String,
        previous: u64,
    ) -> Result<Result<(), Conflict>, Error> {
        let _gate = self.write_gate();
        match self.meta_of(&key)? {
            Some((_, d)) if is_expired(d) => Ok(Err(Conflict::NotFound)),
            None => Ok(Err(Conflict::NotFound)),
            Some((index, _)) if index != previous => Ok(Err(Conflict::Modified)),
            Some((_, d)) => {
                self.commit(vec![Op::Remove {
                    key,
                    old_deadline: Some(d),
                }])?;
                Ok(Ok(()))
            }
        }
    }

    /// Deletes `exact` (if given) and every key starting with `prefix`, in one commit.
    pub(crate) fn delete_tree(&self, exact: Option<String>, prefix: &str) -> Result<usize, Error> {
        let _gate = self.write_gate();
        let mut ops = Vec::new();
        if let Some(key) = exact
            && let Some((_, d)) = self.meta_of(&key)?
        {
            ops.push(Op::Remove {
                key,
                old_deadline: Some(d),
            });
        }
        for item in self.meta.scan_prefix(prefix.as_bytes()) {
            let (key, raw) = item.map_err(map_err)?;
            let (_, deadline) = decode_meta(&key, &raw)?;
            ops.push(Op::Remove {
                key: String::from_utf8_lossy(&key).into_owned(),
                old_deadline: Some(deadline),
            });
        }
        let n = ops.len();
        if n > 0 {
            self.commit(ops)?;
        }
        Ok(n)
    }

    /// Creates a lock's key if it is absent. `Err(deadline)` when it is present (0 = no TTL).
    pub(crate) fn try_lock(
        &self,
        key: String,
        value: Bytes,
        deadline: u64,
    ) -> Result<Result<u64, u64>, Error> {
        match self.atomic_put(key, value, None, deadline)? {
            Ok(entry) => Ok(Ok(entry.index)),
            Err(Conflict::Exists(d)) => Ok(Err(d)),
            Err(_) => Err(Error::backend(BACKEND, "unexpected conflict on create")),
        }
    }

    /// Extends a lock's deadline if the key still holds the acquisition `index` and has not
    /// expired. Does not change `last_index`.
    pub(crate) fn renew(&self, key: String, index: u64, deadline: u64) -> Result<bool, Error> {
        let _gate = self.write_gate();
        let Some(entry) = self.entry_of(&key)? else {
            return Ok(false);
        };
        if entry.index != index {
            return Ok(false);
        }
        self.commit(vec![Op::Renew {
            key,
            value: entry.value,
            index,
            deadline,
            old_deadline: entry.deadline,
        }])?;
        Ok(true)
    }

    /// Deletes a lock's key if it still holds the acquisition `index` (expired or not).
    pub(crate) fn release(&self, key: String, index: u64) -> Result<bool, Error> {
        let _gate = self.write_gate();
        match self.meta_of(&key)? {
            Some((i, d)) if i == index => {
                self.commit(vec![Op::Remove {
                    key,
                    old_deadline: Some(d),
                }])?;
                Ok(!is_expired(d))
            }
            _ => Ok(false),
        }
    }

    /// Physically removes expired keys (publishing their removal). Returns the next deadline
    /// to sweep at (`u64::MAX` = none).
    fn sweep(&self) -> Result<u64, Error> {
        loop {
            let _gate = self.write_gate();
            let now = now_millis();
            let mut ops = Vec::new();
            let mut next = u64::MAX;
            for item in self.expiry.iter() {
                let (raw, _) = item.map_err(map_err)?;
                if raw.len() < 8 {
                    ops.push(Op::DropExpiryEntry(raw.to_vec()));
                    continue;
                }
                let deadline = decode_u64(&raw[..8]);
                if deadline > now || ops.len() >= SWEEP_BATCH {
                    next = deadline;
                    break;
                }
                let key = String::from_utf8_lossy(&raw[8..]).into_owned();
                match self.meta_of(&key)? {
                    Some((_, d)) if d == deadline => ops.push(Op::Remove {
                        key,
                        old_deadline: Some(d),
                    }),
                    // A stale index entry: the key was rewritten or removed meanwhile.
                    _ => ops.push(Op::DropExpiryEntry(raw.to_vec())),
                }
            }
            let removed = ops.len();
            if removed > 0 {
                self.commit(ops)?;
            }
            if next <= now_millis() && removed > 0 {
                continue;
            }
            return Ok(next);
        }
    }
}

enum OpenError {
    Locked(sled::Error),
    Other(Error),
}

/// The registry's key for a path: canonical if it exists, else absolute.
fn registry_key(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// Removes expired keys at their deadline. Holds the engine only while sweeping, so the
/// database closes when its last handle goes; stops when the engine is dropped.
fn sweeper_thread(engine: Weak<Engine>, signal: Arc<SweepSignal>) {
    loop {
        {
            let mut state = signal.state.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if state.stop {
                    return;
                }
                let now = now_millis();
                if state.next <= now {
                    break;
                }
                // Wake at least every second to notice a database dropped without a signal.
                let wait = Duration::from_millis((state.next - now).min(1000));
                state = signal
                    .wake
                    .wait_timeout(state, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                if engine.strong_count() == 0 {
                    return;
                }
            }
            state.next = u64::MAX;
        }
        let Some(engine) = engine.upgrade() else {
            return;
        };
        match engine.sweep() {
            Ok(next) => signal.schedule(next),
            Err(error) => {
                tracing::warn!(%error, "kv-bolt: sweeping expired keys failed; retrying in 1 s");
                signal.schedule(now_millis() + 1000);
            }
        }
        drop(engine);
    }
}
