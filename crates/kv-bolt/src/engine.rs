//! The storage layer: one [`Engine`] per open database, shared by every handle on it.
//!
//! * **Reads** run on the caller's thread against a [`Snapshot`]: a redb read transaction
//!   (an MVCC snapshot: value, metadata and the commit counter of one commit, never blocked by
//!   the writer) with its tables already open. The writer opens a new one after each commit
//!   and publishes it BEFORE answering the commit's callers or publishing its changes, so a
//!   read that starts after a write returned sees it, and a watcher that subscribed before
//!   reading misses nothing. Reads thus skip `begin_read` and the table lookups; they cost
//!   the B-tree lookups alone.
//! * **Writes** go to one writer thread through a queue. The thread takes every request
//!   waiting in the queue, applies them one after the other inside ONE write transaction (each
//!   request sees the ones before it, and gets its own commit index), commits once, then
//!   answers every request and publishes the changes in index order. Under concurrency many
//!   writes share one fsync ("group commit"); a lone write pays one. A request's answer is
//!   sent only after its transaction is durable (with [`Durability::EveryWrite`]).
//! * **Expiry** is swept by the same thread, in the same kind of transaction, when the earliest
//!   TTL deadline passes.
//!
//! Nothing here holds a lock across a call into redb except redb's own single-writer rule,
//! which only the writer thread exercises; a stuck writer is noticed by the callers (see
//! [`Engine::write`]) instead of piling up blocked threads.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use kv_core::ttl::{is_expired, now_millis};
use kv_core::{Error, Operation, Transaction};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use crate::config::{Config, Durability};

/// The backend's name in errors and capabilities.
pub(crate) const BACKEND: &str = "bolt";

/// The database file inside the configured directory.
pub(crate) const FILE_NAME: &str = "kv.redb";

/// The keys: stored key → [`HEADER`] bytes of metadata (`last_index` u64 BE ‖ TTL deadline
/// u64 BE, Unix ms, 0 = none) ‖ the value. One table, so a listing walks one B-tree and a
/// read makes one lookup.
pub(crate) const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("kv/entries");
/// The metadata in front of every value in [`ENTRIES`].
const HEADER: usize = 16;
/// The layout of earlier builds: values here, metadata (16 bytes) in [`OLD_META`]. Opening
/// such a database moves its keys into [`ENTRIES`] and drops both tables.
const OLD_DATA: TableDefinition<&str, &[u8]> = TableDefinition::new("kv/data");
/// See [`OLD_DATA`].
const OLD_META: TableDefinition<&str, &[u8]> = TableDefinition::new("kv/meta");
/// TTL index: deadline (u64 BE) ‖ stored key → nothing.
pub(crate) const EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("kv/expiry");
/// Database-wide counters: `seq` → the last committed index.
pub(crate) const STATE: TableDefinition<&str, u64> = TableDefinition::new("kv/state");
/// The key of the commit counter in [`STATE`].
const SEQ_KEY: &str = "seq";

/// How many changes a slow watcher may fall behind before it resynchronises by re-reading.
const CHANGES_CAPACITY: usize = 4096;
/// Values up to this size travel inside published changes; larger ones are re-read.
const INLINE_VALUE_MAX: usize = 64 * 1024;
/// How many expired keys one sweep removes in one transaction.
const SWEEP_BATCH: usize = 1000;
/// How many queued requests one write transaction takes at most.
const MAX_BATCH: usize = 512;
/// How many requests may wait for the writer before senders wait for room.
const QUEUE_CAPACITY: usize = 16 * 1024;

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
/// state. `seq` is the commit's index; changes arrive in `seq` order.
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

/// Maps any redb error met while serving a call.
pub(crate) fn map_err(error: impl Into<redb::Error>) -> Error {
    let error: redb::Error = error.into();
    match error {
        redb::Error::Io(io) => io_error(io),
        redb::Error::DatabaseClosed => Error::Closed,
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

/// Maps an error met while opening the database at `path`.
fn map_open_err(path: &Path, error: redb::Error) -> Error {
    use std::io::ErrorKind::*;
    match error {
        redb::Error::Io(io) => match io.kind() {
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
        redb::Error::Corrupted(message) => Error::Config(format!(
            "{} is not a readable database (corrupt or not a kv-bolt database): {message}",
            path.display()
        )),
        redb::Error::UpgradeRequired(version) => Error::Config(format!(
            "{} is in an old redb file format ({version}): upgrade it first",
            path.display()
        )),
        redb::Error::TableTypeMismatch { table, .. } => Error::Config(format!(
            "{} is a redb database of another program (its table {table} has other types)",
            path.display()
        )),
        other => Error::backend(BACKEND, other),
    }
}

/// Stores `key` as its header (`index`, `deadline`) followed by `value`, written straight
/// into the page (no intermediate buffer).
fn write_entry(
    entries: &mut redb::Table<'_, &'static str, &'static [u8]>,
    key: &str,
    index: u64,
    deadline: u64,
    value: &[u8],
) -> Result<(), Error> {
    let mut slot = entries
        .insert_reserve(key, HEADER + value.len())
        .map_err(map_err)?;
    let out = slot.as_mut();
    out[..8].copy_from_slice(&index.to_be_bytes());
    out[8..HEADER].copy_from_slice(&deadline.to_be_bytes());
    out[HEADER..].copy_from_slice(value);
    Ok(())
}

/// A stored entry's `last_index`, deadline and value.
fn decode_entry<'v>(key: &str, raw: &'v [u8]) -> Result<(u64, u64, &'v [u8]), Error> {
    if raw.len() < HEADER {
        return Err(Error::backend(
            BACKEND,
            format!(
                "corrupt entry for {key:?}: {} bytes, fewer than its {HEADER}-byte header",
                raw.len()
            ),
        ));
    }
    Ok((
        decode_u64(&raw[..8]),
        decode_u64(&raw[8..HEADER]),
        &raw[HEADER..],
    ))
}

/// Moves the keys of the earlier two-table layout ([`OLD_DATA`], [`OLD_META`]) into
/// [`ENTRIES`] and drops the old tables, inside the opening write transaction (a crash
/// leaves the old layout whole). A metadata row without its value is a corrupt database; a
/// value without metadata was never readable and is not carried over. Returns how many keys
/// moved.
fn migrate_two_table_layout(txn: &redb::WriteTransaction) -> Result<usize, redb::Error> {
    use redb::TableHandle;
    let old = txn
        .list_tables()?
        .any(|table| table.name() == OLD_META.name() || table.name() == OLD_DATA.name());
    if !old {
        return Ok(0);
    }
    let mut moved = 0;
    {
        let meta = txn.open_table(OLD_META)?;
        let data = txn.open_table(OLD_DATA)?;
        let mut entries = txn.open_table(ENTRIES)?;
        for item in meta.iter()? {
            let (key, raw) = item?;
            let (key, raw) = (key.value(), raw.value());
            if raw.len() != HEADER {
                return Err(redb::Error::Corrupted(format!(
                    "kv/meta of {key:?} holds {} bytes instead of {HEADER}",
                    raw.len()
                )));
            }
            let Some(value) = data.get(key)? else {
                return Err(redb::Error::Corrupted(format!(
                    "{key:?} has metadata but no value"
                )));
            };
            let mut slot = entries.insert_reserve(key, HEADER + value.value().len())?;
            let out = slot.as_mut();
            out[..HEADER].copy_from_slice(raw);
            out[HEADER..].copy_from_slice(value.value());
            moved += 1;
        }
    }
    txn.delete_table(OLD_META)?;
    txn.delete_table(OLD_DATA)?;
    Ok(moved)
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

/// A write request: runs inside the writer's transaction (`None` when no transaction could be
/// started) and returns what answers the caller once the transaction's fate is known.
type Job = Box<dyn FnOnce(Option<&mut Batch<'_>>) -> Finish + Send>;
/// Answers one request: `Ok` when its transaction committed, else the commit's error.
type Finish = Box<dyn FnOnce(Result<(), &Error>) + Send>;

/// What a write request sees: the writer's open transaction, through the same primitives the
/// old single-request engine had. Every [`commit`](Batch::commit) takes the next index.
pub(crate) struct Batch<'t> {
    entries: redb::Table<'t, &'static str, &'static [u8]>,
    expiry: redb::Table<'t, &'static [u8], ()>,
    seq: u64,
    changes: Vec<Change>,
    /// The earliest TTL deadline written in this batch (`u64::MAX` = none).
    earliest_deadline: u64,
    /// A storage error met while applying: the whole transaction is abandoned.
    failed: Option<Error>,
    /// Forces a durable commit even with periodic durability (`flush`).
    force_durable: bool,
}

impl Batch<'_> {
    /// The stored metadata of `key`, expired or not.
    fn meta_of(&self, key: &str) -> Result<Option<(u64, u64)>, Error> {
        match self.entries.get(key).map_err(map_err)? {
            Some(raw) => {
                decode_entry(key, raw.value()).map(|(index, deadline, _)| Some((index, deadline)))
            }
            None => Ok(None),
        }
    }

    /// The live entry of `key`.
    fn entry_of(&self, key: &str) -> Result<Option<Entry>, Error> {
        let Some(raw) = self.entries.get(key).map_err(map_err)? else {
            return Ok(None);
        };
        let (index, deadline, value) = decode_entry(key, raw.value())?;
        if is_expired(deadline) {
            return Ok(None);
        }
        Ok(Some(Entry {
            value: Bytes::copy_from_slice(value),
            index,
            deadline,
        }))
    }

    /// Applies `ops` as one logical commit with the next index, recording the change. A
    /// storage error marks the whole transaction failed.
    fn commit(&mut self, ops: Vec<Op>) -> Result<u64, Error> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let seq = self.seq + 1;
        if let Err(error) = self.apply(&ops, seq) {
            self.failed = Some(error.clone());
            return Err(error);
        }
        self.seq = seq;
        let mut updates = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Put {
                    key,
                    value,
                    deadline,
                    ..
                } => {
                    self.note_deadline(deadline);
                    let entry = Entry {
                        value,
                        index: seq,
                        deadline,
                    };
                    updates.push((key, Update::set(entry)));
                }
                Op::Remove { key, .. } => updates.push((key, Update::Removed)),
                Op::Renew {
                    key,
                    value,
                    index,
                    deadline,
                    ..
                } => {
                    self.note_deadline(deadline);
                    let entry = Entry {
                        value,
                        index,
                        deadline,
                    };
                    updates.push((key, Update::set(entry)));
                }
                Op::DropExpiryEntry(_) => {}
            }
        }
        if !updates.is_empty() {
            self.changes.push(Change { seq, updates });
        }
        Ok(seq)
    }

    fn note_deadline(&mut self, deadline: u64) {
        if deadline != 0 {
            self.earliest_deadline = self.earliest_deadline.min(deadline);
        }
    }

    fn apply(&mut self, ops: &[Op], seq: u64) -> Result<(), Error> {
        for op in ops {
            match op {
                Op::Put {
                    key,
                    value,
                    deadline,
                    old_deadline,
                } => {
                    if let Some(old) = old_deadline.filter(|d| *d != 0) {
                        self.expiry
                            .remove(expiry_key(old, key).as_slice())
                            .map_err(map_err)?;
                    }
                    write_entry(&mut self.entries, key, seq, *deadline, value)?;
                    if *deadline != 0 {
                        self.expiry
                            .insert(expiry_key(*deadline, key).as_slice(), ())
                            .map_err(map_err)?;
                    }
                }
                Op::Remove { key, old_deadline } => {
                    if let Some(old) = old_deadline.filter(|d| *d != 0) {
                        self.expiry
                            .remove(expiry_key(old, key).as_slice())
                            .map_err(map_err)?;
                    }
                    self.entries.remove(key.as_str()).map_err(map_err)?;
                }
                Op::Renew {
                    key,
                    value,
                    index,
                    deadline,
                    old_deadline,
                } => {
                    if *old_deadline != 0 {
                        self.expiry
                            .remove(expiry_key(*old_deadline, key).as_slice())
                            .map_err(map_err)?;
                    }
                    write_entry(&mut self.entries, key, *index, *deadline, value)?;
                    if *deadline != 0 {
                        self.expiry
                            .insert(expiry_key(*deadline, key).as_slice(), ())
                            .map_err(map_err)?;
                    }
                }
                Op::DropExpiryEntry(raw) => {
                    self.expiry.remove(raw.as_slice()).map_err(map_err)?;
                }
            }
        }
        Ok(())
    }

    /// Writes `key` unconditionally.
    pub(crate) fn put(&mut self, key: String, value: Bytes, deadline: u64) -> Result<Entry, Error> {
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
        &mut self,
        key: String,
        value: Bytes,
        previous: Option<u64>,
        deadline: u64,
    ) -> Result<Result<Entry, Conflict>, Error> {
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
    pub(crate) fn delete(&mut self, key: String) -> Result<bool, Error> {
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
        &mut self,
        key: String,
        previous: u64,
    ) -> Result<Result<(), Conflict>, Error> {
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
    pub(crate) fn delete_tree(
        &mut self,
        exact: Option<String>,
        prefix: &str,
    ) -> Result<usize, Error> {
        let mut ops = Vec::new();
        if let Some(key) = exact
            && let Some((_, d)) = self.meta_of(&key)?
        {
            ops.push(Op::Remove {
                key,
                old_deadline: Some(d),
            });
        }
        for item in self.entries.range(prefix..).map_err(map_err)? {
            let (key, raw) = item.map_err(map_err)?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            let (_, deadline, _) = decode_entry(key, raw.value())?;
            ops.push(Op::Remove {
                key: key.to_owned(),
                old_deadline: Some(deadline),
            });
        }
        let n = ops.len();
        if n > 0 {
            self.commit(ops)?;
        }
        Ok(n)
    }

    /// Commits a checked transaction as ONE logical commit: every put takes the same new
    /// index and watchers get one [`Change`]. `keys` are the stored keys of the conditions
    /// then of the operations (namespace applied); `deadlines` holds each operation's TTL
    /// deadline (0 = none, unused for deletes). `Ok(Err(..))` is the first failing condition;
    /// then nothing is written.
    pub(crate) fn transaction(
        &mut self,
        txn: &Transaction,
        keys: Vec<String>,
        deadlines: Vec<u64>,
    ) -> Result<Result<u64, Error>, Error> {
        let (condition_keys, operation_keys) = keys.split_at(txn.conditions().len());
        let mut states = HashMap::with_capacity(condition_keys.len());
        for (condition, stored) in txn.conditions().iter().zip(condition_keys) {
            let index = self.entry_of(stored)?.map(|entry| entry.index);
            states.insert(condition.key(), index);
        }
        if let Some(failed) = txn.first_failure(|key| states.get(key).copied().flatten()) {
            return Ok(Err(failed));
        }
        let mut ops = Vec::with_capacity(operation_keys.len());
        for ((operation, key), deadline) in
            txn.operations().iter().zip(operation_keys).zip(deadlines)
        {
            let old_deadline = self.meta_of(key)?.map(|(_, d)| d);
            match operation {
                Operation::Put { value, .. } => ops.push(Op::Put {
                    key: key.clone(),
                    value: value.clone(),
                    deadline,
                    old_deadline,
                }),
                Operation::Delete { .. } if old_deadline.is_some() => ops.push(Op::Remove {
                    key: key.clone(),
                    old_deadline,
                }),
                Operation::Delete { .. } => {}
                _ => return Err(Error::backend(BACKEND, "unknown transaction operation")),
            }
        }
        if ops.is_empty() {
            return Ok(Ok(self.seq));
        }
        self.commit(ops).map(Ok)
    }

    /// Creates a lock's key if it is absent. `Err(deadline)` when it is present (0 = no TTL).
    pub(crate) fn try_lock(
        &mut self,
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
    pub(crate) fn renew(&mut self, key: String, index: u64, deadline: u64) -> Result<bool, Error> {
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
    pub(crate) fn release(&mut self, key: String, index: u64) -> Result<bool, Error> {
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

    /// Makes this batch's commit durable whatever the configured durability.
    pub(crate) fn force_durable(&mut self) {
        self.force_durable = true;
    }

    /// Removes up to [`SWEEP_BATCH`] expired keys (publishing their removal). Returns the next
    /// deadline to sweep at (`u64::MAX` = none).
    fn sweep(&mut self) -> Result<u64, Error> {
        let now = now_millis();
        let mut ops = Vec::new();
        let mut next = u64::MAX;
        for item in self.expiry.iter().map_err(map_err)? {
            let (raw, _) = item.map_err(map_err)?;
            let raw = raw.value();
            let Some(head) = raw.get(..8) else {
                ops.push(Op::DropExpiryEntry(raw.to_vec()));
                continue;
            };
            let deadline = decode_u64(head);
            if deadline > now || ops.len() >= SWEEP_BATCH {
                next = deadline;
                break;
            }
            let key = String::from_utf8_lossy(&raw[8..]).into_owned();
            let entry = raw.to_vec();
            match self.meta_of(&key)? {
                Some((_, d)) if d == deadline => ops.push(Op::Remove {
                    key,
                    old_deadline: Some(d),
                }),
                // A stale index entry: the key was rewritten or removed meanwhile.
                _ => ops.push(Op::DropExpiryEntry(entry)),
            }
        }
        if !ops.is_empty() {
            self.commit(ops)?;
        }
        Ok(next)
    }
}

/// The latest committed state, ready to read: a read transaction with its tables open.
pub(crate) struct Snapshot {
    entries: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    /// The index of the last commit this snapshot contains.
    seq: u64,
}

/// The published snapshot: `None` until the first one, or when opening one failed (readers
/// then open their own).
type SharedSnapshot = Arc<ArcSwapOption<Snapshot>>;

impl Snapshot {
    /// Opens a snapshot of the last commit of `db`.
    fn take(db: &redb::Database) -> Result<Snapshot, Error> {
        let txn = db.begin_read().map_err(map_err)?;
        Ok(Snapshot {
            entries: txn.open_table(ENTRIES).map_err(map_err)?,
            seq: read_seq(&txn)?,
        })
    }

    /// One key (`None` when absent or expired).
    pub(crate) fn get(&self, key: &str) -> Result<Option<Entry>, Error> {
        let Some(raw) = self.entries.get(key).map_err(map_err)? else {
            return Ok(None);
        };
        let (index, deadline, value) = decode_entry(key, raw.value())?;
        if is_expired(deadline) {
            return Ok(None);
        }
        Ok(Some(Entry {
            value: Bytes::copy_from_slice(value),
            index,
            deadline,
        }))
    }

    /// Whether a live `key` exists (no value copied).
    pub(crate) fn exists(&self, key: &str) -> Result<bool, Error> {
        match self.entries.get(key).map_err(map_err)? {
            Some(raw) => Ok(!is_expired(decode_entry(key, raw.value())?.1)),
            None => Ok(false),
        }
    }

    /// Visits the live keys starting with `prefix` in byte order, from `from` (inclusive)
    /// when given, at most `limit` of them. Returns the first key not visited when it stopped
    /// at `limit` (scan again from there), `None` when the prefix is exhausted.
    pub(crate) fn scan(
        &self,
        prefix: &str,
        from: Option<&str>,
        limit: usize,
        mut visit: impl FnMut(&str, Entry),
    ) -> Result<Option<String>, Error> {
        use std::ops::Bound;
        let range = (
            Bound::Included(from.unwrap_or(prefix)),
            Bound::<&str>::Unbounded,
        );
        let mut seen = 0;
        for item in self.entries.range::<&str>(range).map_err(map_err)? {
            let (key, raw) = item.map_err(map_err)?;
            let key = key.value();
            if !key.starts_with(prefix) {
                return Ok(None);
            }
            if seen == limit {
                return Ok(Some(key.to_owned()));
            }
            let (index, deadline, value) = decode_entry(key, raw.value())?;
            if is_expired(deadline) {
                continue;
            }
            seen += 1;
            visit(
                key,
                Entry {
                    value: Bytes::copy_from_slice(value),
                    index,
                    deadline,
                },
            );
        }
        Ok(None)
    }
}

/// The state of the writer thread, shared with the engine.
#[derive(Debug, Default)]
struct WriterHealth {
    /// When the current transaction started (ms since `epoch`), 0 while idle.
    busy_since_ms: AtomicU64,
}

/// One open database, shared by every handle on it in this process.
pub(crate) struct Engine {
    db: Arc<redb::Database>,
    queue: Mutex<Option<SyncSender<Job>>>,
    changes: broadcast::Sender<Arc<Change>>,
    health: Arc<WriterHealth>,
    epoch: Instant,
    /// The last commit, ready to read; replaced by the writer after every commit.
    snapshot: SharedSnapshot,
    /// Signalled by the writer thread when it has finished (and dropped its database).
    writer_done: Mutex<Option<Receiver<()>>>,
    registry_key: Option<PathBuf>,
    /// The directory holding the database (empty for an in-memory temporary one).
    path: PathBuf,
    /// Declared after `db`, so it runs once the database file is closed.
    _remove_on_drop: RemoveOnDrop,
}

/// Removes a temporary database's directory when dropped.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Closing the queue stops the writer once it has answered what was queued; wait
        // (bounded) for it, so that the file is unlocked when the last handle is gone.
        drop(self.queue.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(done) = self
            .writer_done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = done.recv_timeout(Duration::from_secs(10));
        }
        if let Some(key) = &self.registry_key {
            let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
            if registry
                .get(key)
                .is_some_and(|weak| weak.strong_count() == 0)
            {
                registry.remove(key);
            }
        }
    }
}

/// Open databases in this process: canonical path → engine. redb allows one open `Database`
/// per file, so every handle on a path shares one engine.
static REGISTRY: LazyLock<Mutex<HashMap<PathBuf, Weak<Engine>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

impl Engine {
    /// Opens (or joins, when another handle of this process has it open) the database that
    /// `config` describes. Blocking.
    pub(crate) fn open(config: &Config) -> Result<Arc<Engine>, Error> {
        let Some(path) = &config.path else {
            // A temporary database without a path lives in memory; nobody can join it except
            // through handles made from the first one.
            let db = redb::Builder::new()
                .set_cache_size(config.cache_capacity as usize)
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .map_err(map_err)?;
            return Self::start(config, db, None, PathBuf::new(), false)
                .map_err(|e| e.into_error());
        };
        let key = registry_key(path);
        let started = Instant::now();
        loop {
            {
                let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(engine) = registry.get(&key).and_then(Weak::upgrade) {
                    return Ok(engine);
                }
                match Self::open_file(config, &key) {
                    Ok(db) => {
                        let engine = Self::start(
                            config,
                            db,
                            Some(key.clone()),
                            key.clone(),
                            config.temporary,
                        )
                        .map_err(|e| e.into_error())?;
                        registry.insert(key, Arc::downgrade(&engine));
                        return Ok(engine);
                    }
                    Err(OpenError::Locked) => {
                        if started.elapsed() >= config.lock_timeout {
                            return Err(Error::unavailable(
                                BACKEND,
                                format!(
                                    "{} is locked by another process (waited {:?})",
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

    fn open_file(config: &Config, dir: &Path) -> Result<redb::Database, OpenError> {
        if dir.exists() && !dir.is_dir() {
            return Err(OpenError::Other(Error::Config(format!(
                "{} is not a directory: a kv-bolt database is a directory",
                dir.display()
            ))));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| OpenError::Other(map_open_err(dir, redb::Error::Io(e))))?;
        let file = dir.join(FILE_NAME);
        redb::Builder::new()
            .set_cache_size(config.cache_capacity as usize)
            .create(&file)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => OpenError::Locked,
                other => OpenError::Other(map_open_err(&file, other.into())),
            })
    }

    fn start(
        config: &Config,
        db: redb::Database,
        registry_key: Option<PathBuf>,
        path: PathBuf,
        remove_on_drop: bool,
    ) -> Result<Arc<Engine>, OpenError> {
        let open_err = |e: redb::Error| OpenError::Other(map_open_err(&path, e));
        // Create the tables (a new database) and read the counter and the first deadline.
        let (seq, first_deadline) = {
            let txn = db.begin_write().map_err(|e| open_err(e.into()))?;
            let moved = migrate_two_table_layout(&txn).map_err(open_err)?;
            if moved > 0 {
                tracing::info!(keys = moved, path = %path.display(), "kv-bolt: moved the keys of the two-table layout into kv/entries");
            }
            let found = {
                txn.open_table(ENTRIES).map_err(|e| open_err(e.into()))?;
                let expiry = txn.open_table(EXPIRY).map_err(|e| open_err(e.into()))?;
                let state = txn.open_table(STATE).map_err(|e| open_err(e.into()))?;
                let seq = state
                    .get(SEQ_KEY)
                    .map_err(|e| open_err(e.into()))?
                    .map(|g| g.value())
                    .unwrap_or(0);
                let first = expiry
                    .first()
                    .map_err(|e| open_err(e.into()))?
                    .map(|(k, _)| decode_u64(k.value().get(..8).unwrap_or_default()))
                    .unwrap_or(u64::MAX);
                (seq, first)
            };
            txn.commit().map_err(|e| open_err(e.into()))?;
            found
        };
        let db = Arc::new(db);
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        let (queue, jobs) = mpsc::sync_channel::<Job>(QUEUE_CAPACITY);
        let (done_tx, done_rx) = mpsc::channel();
        let health = Arc::new(WriterHealth::default());
        let epoch = Instant::now();
        // A failure here only costs speed: readers open their own until the next commit.
        let snapshot: SharedSnapshot =
            Arc::new(ArcSwapOption::new(Snapshot::take(&db).ok().map(Arc::new)));
        let writer = Writer {
            snapshot: snapshot.clone(),
            db: db.clone(),
            changes: changes.clone(),
            health: health.clone(),
            epoch,
            durability: config.durability,
            next_sweep: first_deadline,
            seq,
        };
        std::thread::Builder::new()
            .name("kv-bolt-writer".into())
            .spawn(move || writer.run(jobs, done_tx))
            .map_err(|e| OpenError::Other(Error::unavailable(BACKEND, e)))?;
        Ok(Arc::new(Engine {
            db,
            queue: Mutex::new(Some(queue)),
            changes,
            health,
            epoch,
            snapshot,
            writer_done: Mutex::new(Some(done_rx)),
            _remove_on_drop: RemoveOnDrop(remove_on_drop.then(|| path.clone())),
            registry_key,
            path,
        }))
    }

    /// The database directory (empty for an in-memory temporary database).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Subscribes to committed changes. Subscribe before reading, so nothing is missed.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    /// Runs `job` inside the writer's next transaction and returns its result once that
    /// transaction has committed (durably, with [`Durability::EveryWrite`]). Fails with
    /// [`Error::Timeout`] after `timeout` (the request may still be applied later, like a
    /// networked store's), and at once with [`Error::Unavailable`] while the writer has been
    /// stuck in one transaction for longer than `timeout`, so callers never pile up behind
    /// a hung disk.
    pub(crate) async fn write<T, F>(
        &self,
        timeout: Duration,
        operation: &'static str,
        job: F,
    ) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Batch<'_>) -> Result<T, Error> + Send + 'static,
    {
        let busy_since = self.health.busy_since_ms.load(Ordering::SeqCst);
        if busy_since != 0 {
            let busy_for = (self.epoch.elapsed().as_millis() as u64).saturating_sub(busy_since);
            if busy_for > timeout.as_millis() as u64 {
                return Err(Error::unavailable(
                    BACKEND,
                    format!(
                        "the database writer has been stuck in one transaction for {busy_for} ms; {operation} refused"
                    ),
                ));
            }
        }
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |batch: Option<&mut Batch<'_>>| {
            let result = match batch {
                Some(batch) => job(batch),
                None => Err(Error::Closed),
            };
            Box::new(move |committed: Result<(), &Error>| {
                let _ = tx.send(match committed {
                    Ok(()) => result,
                    Err(error) => Err(error.clone()),
                });
            })
        });
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(Error::Closed)?;
        // The queue is large; when it is full the writer is far behind, and waiting for room
        // on this thread is bounded by the writer's progress.
        match queue.try_send(job) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(job)) => {
                let sent = tokio::task::spawn_blocking(move || queue.send(job).is_ok());
                match tokio::time::timeout(timeout, sent).await {
                    Ok(Ok(true)) => {}
                    Ok(_) => return Err(Error::Closed),
                    Err(_) => {
                        return Err(Error::Timeout {
                            backend: BACKEND,
                            operation,
                            after: timeout,
                        });
                    }
                }
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(Error::Closed),
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::backend(
                BACKEND,
                format!("{operation}: the database writer stopped before answering"),
            )),
            Err(_) => Err(Error::Timeout {
                backend: BACKEND,
                operation,
                after: timeout,
            }),
        }
    }

    /// Writes everything to disk now, whatever the durability setting.
    pub(crate) async fn flush(&self, timeout: Duration) -> Result<(), Error> {
        self.write(timeout, "flush", |batch| {
            batch.force_durable();
            Ok(())
        })
        .await
    }

    fn read(&self) -> Result<redb::ReadTransaction, Error> {
        self.db.begin_read().map_err(map_err)
    }

    /// The latest committed state to read from.
    pub(crate) fn snapshot(&self) -> Result<Arc<Snapshot>, Error> {
        match self.snapshot.load_full() {
            Some(snapshot) => Ok(snapshot),
            None => Snapshot::take(&self.db).map(Arc::new),
        }
    }

    /// Reads one key (`None` when absent or expired) and the index of the last commit seen.
    pub(crate) fn get(&self, key: &str) -> Result<(Option<Entry>, u64), Error> {
        // A guard, not an `Arc` clone: no shared counter touched on the hot path.
        let guard = self.snapshot.load();
        match guard.as_deref() {
            Some(snapshot) => Ok((snapshot.get(key)?, snapshot.seq)),
            None => {
                let snapshot = Snapshot::take(&self.db)?;
                Ok((snapshot.get(key)?, snapshot.seq))
            }
        }
    }

    /// Whether a live `key` exists.
    pub(crate) fn exists(&self, key: &str) -> Result<bool, Error> {
        let guard = self.snapshot.load();
        match guard.as_deref() {
            Some(snapshot) => snapshot.exists(key),
            None => Snapshot::take(&self.db)?.exists(key),
        }
    }

    /// Every live key starting with `prefix` (byte order), and the index of the last commit seen.
    pub(crate) fn list(&self, prefix: &str) -> Result<(Vec<(String, Entry)>, u64), Error> {
        let snapshot = self.snapshot()?;
        let mut out = Vec::new();
        snapshot.scan(prefix, None, usize::MAX, |key, entry| {
            out.push((key.to_owned(), entry))
        })?;
        Ok((out, snapshot.seq))
    }

    /// Every key physically stored under `prefix`, expired or not (diagnostics).
    pub(crate) fn stored_keys(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let txn = self.read()?;
        let data = txn.open_table(ENTRIES).map_err(map_err)?;
        let mut out = Vec::new();
        for item in data.range(prefix..).map_err(map_err)? {
            let (key, _) = item.map_err(map_err)?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            out.push(key.to_owned());
        }
        Ok(out)
    }
}

fn read_seq(txn: &redb::ReadTransaction) -> Result<u64, Error> {
    let state = txn.open_table(STATE).map_err(map_err)?;
    Ok(state
        .get(SEQ_KEY)
        .map_err(map_err)?
        .map(|g| g.value())
        .unwrap_or(0))
}

enum OpenError {
    Locked,
    Other(Error),
}

impl OpenError {
    fn into_error(self) -> Error {
        match self {
            OpenError::Locked => Error::unavailable(BACKEND, "the database is locked"),
            OpenError::Other(error) => error,
        }
    }
}

/// The registry's key for a path: canonical if it exists, else absolute.
fn registry_key(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// The writer thread: applies queued requests in batches, sweeps expired keys, makes periodic
/// commits durable.
struct Writer {
    db: Arc<redb::Database>,
    changes: broadcast::Sender<Arc<Change>>,
    health: Arc<WriterHealth>,
    epoch: Instant,
    durability: Durability,
    /// The earliest deadline (Unix ms) that needs a sweep; `u64::MAX` = none.
    next_sweep: u64,
    /// The last committed index.
    seq: u64,
    /// Where the writer publishes a snapshot of each commit.
    snapshot: SharedSnapshot,
}

impl Writer {
    fn run(mut self, jobs: Receiver<Job>, done: Sender<()>) {
        // With periodic durability: when the oldest commit not yet on disk was made.
        let mut unsynced_since: Option<Instant> = None;
        loop {
            let now = now_millis();
            let until_sweep = Duration::from_millis(self.next_sweep.saturating_sub(now));
            let until_sync = match (self.durability, unsynced_since) {
                (Durability::Periodic(every), Some(since)) => every.saturating_sub(since.elapsed()),
                _ => Duration::from_secs(3600),
            };
            let wait = until_sweep.min(until_sync).min(Duration::from_secs(3600));
            let mut batch = Vec::new();
            match jobs.recv_timeout(wait) {
                Ok(job) => batch.push(job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            let sweep = self.next_sweep <= now_millis();
            let sync_due = match (self.durability, unsynced_since) {
                (Durability::Periodic(every), Some(since)) => since.elapsed() >= every,
                _ => false,
            };
            if batch.is_empty() && !sweep && !sync_due {
                continue;
            }
            let durable = match self.transaction(batch, sweep, sync_due) {
                Ok(durable) => durable,
                Err(error) => {
                    tracing::warn!(%error, "kv-bolt: a write transaction failed");
                    if sweep {
                        // Try the sweep again in a second rather than spinning on it.
                        self.next_sweep = now_millis() + 1000;
                    }
                    continue;
                }
            };
            if durable {
                unsynced_since = None;
            } else if unsynced_since.is_none() {
                unsynced_since = Some(Instant::now());
            }
        }
        if unsynced_since.is_some() {
            // Closing: whatever is still only in memory goes to disk now.
            if let Err(error) = self.transaction(Vec::new(), false, true) {
                tracing::warn!(%error, "kv-bolt: the final flush failed");
            }
        }
        // Readers must not keep the file open once the last handle is gone.
        self.snapshot.store(None);
        drop(self.db);
        let _ = done.send(());
    }

    /// Runs one write transaction over `jobs` (and a sweep), commits it, answers every job and
    /// publishes the changes. Returns whether the commit was durable.
    fn transaction(&mut self, jobs: Vec<Job>, sweep: bool, sync: bool) -> Result<bool, Error> {
        let started = (self.epoch.elapsed().as_millis() as u64).max(1);
        self.health.busy_since_ms.store(started, Ordering::SeqCst);
        let outcome = self.transaction_inner(jobs, sweep, sync);
        self.health.busy_since_ms.store(0, Ordering::SeqCst);
        outcome
    }

    fn transaction_inner(
        &mut self,
        jobs: Vec<Job>,
        sweep: bool,
        sync: bool,
    ) -> Result<bool, Error> {
        let fail_all = |finishers: Vec<Finish>, error: &Error| {
            for finish in finishers {
                finish(Err(error));
            }
        };
        let txn = match self.db.begin_write() {
            Ok(txn) => txn,
            Err(error) => {
                let error = map_err(error);
                let finishers = jobs.into_iter().map(|job| job_failed(job, &error));
                fail_all(finishers.collect(), &error);
                return Err(error);
            }
        };
        let mut finishers = Vec::with_capacity(jobs.len());
        // The batch borrows the transaction: it must be gone before the commit.
        let (seq, changes, earliest_deadline, failed, force_durable, next_sweep) = {
            let mut batch = match open_batch(&txn, self.seq, sync) {
                Ok(batch) => batch,
                Err(error) => {
                    let finishers = jobs.into_iter().map(|job| job_failed(job, &error));
                    fail_all(finishers.collect(), &error);
                    return Err(error);
                }
            };
            for job in jobs {
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    job(Some(&mut batch))
                }));
                match outcome {
                    Ok(finish) => finishers.push(finish),
                    Err(_) => {
                        // The job's answer channel went with it: its caller gets an error. Its
                        // writes (if any) may be half done, so the transaction is abandoned.
                        batch.failed = Some(Error::backend(
                            BACKEND,
                            "a write request panicked inside the database writer",
                        ));
                    }
                }
            }
            let mut next_sweep = None;
            if sweep && batch.failed.is_none() {
                match batch.sweep() {
                    Ok(next) => next_sweep = Some(next),
                    Err(error) => batch.failed = batch.failed.take().or(Some(error)),
                }
            }
            let Batch {
                entries,
                expiry,
                seq,
                changes,
                earliest_deadline,
                failed,
                force_durable,
            } = batch;
            drop((entries, expiry));
            (
                seq,
                changes,
                earliest_deadline,
                failed,
                force_durable,
                next_sweep,
            )
        };
        if let Some(error) = failed {
            let _ = txn.abort();
            fail_all(finishers, &error);
            return Err(error);
        }
        let durable = force_durable || self.durability == Durability::EveryWrite;
        let committed = commit(txn, (seq != self.seq).then_some(seq), durable);
        if let Err(error) = committed {
            fail_all(finishers, &error);
            return Err(error);
        }
        self.seq = seq;
        // Before any caller hears of the commit: a read after a write sees it.
        self.snapshot
            .store(Snapshot::take(&self.db).ok().map(Arc::new));
        if let Some(next) = next_sweep {
            self.next_sweep = next;
        }
        self.next_sweep = self.next_sweep.min(earliest_deadline);
        for finish in finishers {
            finish(Ok(()));
        }
        for change in changes {
            // No receiver is fine: nobody watches.
            let _ = self.changes.send(Arc::new(change));
        }
        Ok(durable)
    }
}

/// Records the new commit counter (if any) and commits `txn`.
fn commit(mut txn: redb::WriteTransaction, seq: Option<u64>, durable: bool) -> Result<(), Error> {
    if let Some(seq) = seq {
        let mut state = txn.open_table(STATE).map_err(map_err)?;
        state.insert(SEQ_KEY, seq).map_err(map_err)?;
    }
    if !durable {
        txn.set_durability(redb::Durability::None)
            .map_err(|e| Error::backend(BACKEND, e))?;
    }
    txn.commit().map_err(map_err)
}

/// The tables of `txn`, as a [`Batch`] continuing after index `seq`.
fn open_batch(txn: &redb::WriteTransaction, seq: u64, sync: bool) -> Result<Batch<'_>, Error> {
    Ok(Batch {
        entries: txn.open_table(ENTRIES).map_err(map_err)?,
        expiry: txn.open_table(EXPIRY).map_err(map_err)?,
        seq,
        changes: Vec::new(),
        earliest_deadline: u64::MAX,
        failed: None,
        force_durable: sync,
    })
}

/// The answer for a job that never ran because its transaction could not start: the
/// finisher then reports the transaction's error.
fn job_failed(job: Job, _error: &Error) -> Finish {
    job(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer stuck inside one transaction (a hung disk, simulated by a request that blocks
    /// the writer thread) is surfaced: calls queued behind it time out within their limit, and
    /// later calls fail at once with `Unavailable` instead of piling up; once the writer is
    /// free again, writes work.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_writer_makes_calls_fail_fast() {
        let engine = Engine::open(&Config::temporary()).unwrap();
        let timeout = Duration::from_millis(200);
        let stuck = {
            let engine = engine.clone();
            tokio::spawn(async move {
                engine
                    .write(Duration::from_secs(5), "stuck", |_batch| {
                        std::thread::sleep(Duration::from_millis(800));
                        Ok(())
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Queued behind the stuck transaction: bounded by its own timeout.
        let started = Instant::now();
        let queued = engine
            .write(timeout, "put", |b| b.put("a".into(), "1".into(), 0))
            .await;
        assert!(matches!(queued, Err(Error::Timeout { .. })), "{queued:?}");
        assert!(started.elapsed() < timeout + Duration::from_millis(150));
        // The writer has now been busy for longer than the timeout: refused at once.
        let started = Instant::now();
        let refused = engine
            .write(timeout, "put", |b| b.put("b".into(), "2".into(), 0))
            .await;
        assert!(
            matches!(refused, Err(Error::Unavailable { .. })),
            "{refused:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(50));
        stuck.await.unwrap().unwrap();
        // Free again: writes work (the queued one may have been applied meanwhile).
        engine
            .write(timeout, "put", |b| b.put("c".into(), "3".into(), 0))
            .await
            .unwrap();
        assert!(engine.get("c").unwrap().0.is_some());
    }
}
