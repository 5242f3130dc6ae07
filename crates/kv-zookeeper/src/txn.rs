//! `Store::transaction`: one ZooKeeper multi-op, pinned to the state read just before it.
//!
//! 1. One `sync`, then ONE multi-read of every key the transaction names (node, marker and the
//!    marker's children, as `get` reads a key): a snapshot of one instant.
//! 2. The conditions are evaluated on that snapshot with [`Transaction::first_failure`]; a
//!    failing one is reported as it is (the snapshot is the linearization point).
//! 3. Otherwise one multi-op carries the writes (exactly the operations `put` and `delete`
//!    send) and pins every other key to the state that was read: `check(node, version)` for a
//!    node that exists (every write and delete of a key sets its node's data, so its data
//!    version moves), and `create(node) + delete(node)` for a node that does not (the server
//!    refuses the create if the node appeared; when a parent is missing too, the nearest
//!    missing ancestor is probed that way instead). The server applies all of it or none.
//! 4. If the server refuses it (its per-op answer names the operation and why: a missing
//!    parent is created, a probe moved; anything else means the state moved on), the keys are
//!    read again and the conditions re-evaluated on the new snapshot.

use std::collections::HashMap;
use std::time::Duration;

use kv_core::{Error, KvPair, Operation, Result, Transaction};
use zookeeper_client as zk;

use crate::store::{BACKEND, Inner, KeyState, MAX_ATTEMPTS, map_zk, marker_data};

/// The most conditions plus operations one transaction may hold
/// ([`kv_core::Capabilities::max_transaction_ops`]).
pub const MAX_TRANSACTION_OPS: usize = 128;

/// The largest multi-op request a transaction may send, in bytes (an upper estimate: values,
/// paths, ACLs and per-operation headers). ZooKeeper closes the connection on a request over
/// its `jute.maxbuffer` (1 MiB − 1 = 1,048,575 bytes by default); this leaves 8 KiB of margin.
/// One [`MAX_VALUE_LEN`](crate::MAX_VALUE_LEN) value fits; several large values together do
/// not: such a transaction is refused with [`Error::InvalidOption`] before anything is sent.
pub const MAX_TRANSACTION_BYTES: usize = 1_040_000;

/// Upper bound of one multi-op operation's bytes besides its path and data: the multi header
/// (9), the path and data lengths (8), version/flags (4), a TTL (8) and the ACL list (≤ 64).
const OP_OVERHEAD: usize = 96;
/// The request's own header, length prefix and closing multi header.
const REQUEST_OVERHEAD: usize = 32;
/// The longest lock owner node name below a marker (`/__kvowner-` + 16 hex + `-` + 20 digits).
const OWNER_NAME_MAX: usize = 48;
/// The longest marker data (a TTL in milliseconds as ASCII decimal).
const MARKER_DATA_MAX: usize = 20;

/// What an operation of the multi-op is for, to act on the server's per-op failure.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// Creates the node of the key at this index of `keys` (a put of a new key).
    CreateNode(usize),
    /// Probes the absence of the key at this index of `keys` (create, then delete).
    Probe(usize),
    /// Sets the value of the put at this index of the operations: its answer is the pair's stat.
    Value(usize),
    /// Anything else (a pin, a marker, an owner node).
    Other,
}

/// A multi-op being built, with the role of each operation and its size estimate.
struct Multi<'a> {
    writer: zk::MultiWriter<'a>,
    roles: Vec<Role>,
    bytes: usize,
}

impl<'a> Multi<'a> {
    fn new(client: &'a zk::Client) -> Self {
        Multi {
            writer: client.new_multi_writer(),
            roles: Vec::new(),
            bytes: REQUEST_OVERHEAD,
        }
    }

    fn push(&mut self, role: Role, path: &str, data: usize) {
        self.roles.push(role);
        self.bytes += OP_OVERHEAD + path.len() + data;
    }

    fn create(
        &mut self,
        path: &str,
        data: &[u8],
        options: &zk::CreateOptions<'_>,
        role: Role,
    ) -> Result<()> {
        self.writer
            .add_create(path, data, options)
            .map_err(|e| Error::backend(BACKEND, e))?;
        self.push(role, path, data.len());
        Ok(())
    }

    fn set_data(&mut self, path: &str, data: &[u8], version: i32, role: Role) -> Result<()> {
        self.writer
            .add_set_data(path, data, Some(version))
            .map_err(|e| Error::backend(BACKEND, e))?;
        self.push(role, path, data.len());
        Ok(())
    }

    fn delete(&mut self, path: &str, version: Option<i32>) -> Result<()> {
        self.writer
            .add_delete(path, version)
            .map_err(|e| Error::backend(BACKEND, e))?;
        self.push(Role::Other, path, 0);
        Ok(())
    }

    fn check(&mut self, path: &str, version: i32) -> Result<()> {
        self.writer
            .add_check_version(path, version)
            .map_err(|e| Error::backend(BACKEND, e))?;
        self.push(Role::Other, path, 0);
        Ok(())
    }
}

fn too_large(bytes: usize) -> Error {
    Error::InvalidOption(format!(
        "this transaction needs a ZooKeeper request of up to {bytes} bytes, over the \
         {MAX_TRANSACTION_BYTES}-byte limit (the server's jute.maxbuffer is 1 MiB): \
         split it or write smaller values"
    ))
}

/// The key of `key`'s ancestor `levels` segments up (at most up to its top segment).
fn ancestor(key: &str, levels: usize) -> &str {
    let mut end = key.len();
    for _ in 0..levels {
        match key[..end].rfind('/') {
            Some(i) => end = i,
            None => break,
        }
    }
    &key[..end]
}

impl Inner {
    /// The most bytes the multi-op of `txn` can take, whatever the keys' state: for a put,
    /// the node's create and value, an old marker with a lock owner node, the new marker;
    /// for a delete, the owner node, the marker and the emptied node; for a key named only by
    /// conditions, a probe (create + delete of its node).
    fn worst_case_bytes(&self, txn: &Transaction) -> usize {
        let mut bytes = REQUEST_OVERHEAD;
        for operation in txn.operations() {
            let node = self.node_path(operation.key()).len();
            let marker = self.marker_path(operation.key()).len();
            bytes += match operation {
                Operation::Put { value, .. } => {
                    5 * OP_OVERHEAD
                        + 2 * node
                        + value.len()
                        + 3 * marker
                        + OWNER_NAME_MAX
                        + MARKER_DATA_MAX
                }
                _ => 3 * OP_OVERHEAD + node + 2 * marker + OWNER_NAME_MAX,
            };
        }
        for condition in txn.conditions() {
            if !txn
                .operations()
                .iter()
                .any(|operation| operation.key() == condition.key())
            {
                bytes += 2 * (OP_OVERHEAD + self.node_path(condition.key()).len());
            }
        }
        bytes
    }

    /// Commits a checked (normalised) transaction. See the module docs.
    pub(crate) async fn transaction(&self, txn: Transaction) -> Result<Vec<KvPair>> {
        if txn.conditions().is_empty() && txn.operations().is_empty() {
            return Ok(Vec::new());
        }
        let worst = self.worst_case_bytes(&txn);
        if worst > MAX_TRANSACTION_BYTES {
            return Err(too_large(worst));
        }
        let operations = txn.operations();
        // Every key named, once, sorted: parents come before their children in the multi-op.
        let mut keys: Vec<&str> = txn
            .conditions()
            .iter()
            .map(|c| c.key())
            .chain(operations.iter().map(|o| o.key()))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let operation_of: HashMap<&str, usize> = operations
            .iter()
            .enumerate()
            .map(|(i, o)| (o.key(), i))
            .collect();
        let ttls = operations
            .iter()
            .map(|o| match o {
                Operation::Put { options, .. } => self.caps.check_ttl(options.ttl),
                _ => Ok(None),
            })
            .collect::<Result<Vec<Option<Duration>>>>()?;

        let client = self.client().await?;
        let timeout = self.config.request_timeout;
        // The snapshot must not be older than what the caller already saw (as `get`, whose
        // shared sync it uses).
        self.start_sync(&client, &kv_core::ReadOptions::default())
            .await?
            .await?;
        // How far up the probe of an absent key goes (its parents may be missing too).
        let mut probe_levels: HashMap<usize, usize> = HashMap::new();
        for _ in 0..MAX_ATTEMPTS {
            let states = self.read_keys(&client, &keys, "transaction").await?;
            let index_of = |key: &str| {
                keys.binary_search(&key)
                    .ok()
                    .and_then(|i| states[i].pair(key))
                    .map(|pair| pair.last_index)
            };
            if let Some(failure) = txn.first_failure(index_of) {
                return Err(failure);
            }

            let mut multi = Multi::new(&client);
            for (i, (key, state)) in keys.iter().zip(&states).enumerate() {
                let levels = probe_levels.get(&i).copied().unwrap_or(0);
                match operation_of.get(key).map(|&j| (j, &operations[j])) {
                    Some((j, Operation::Put { value, .. })) => {
                        self.add_put(&mut multi, i, j, key, value, ttls[j], state)?;
                    }
                    Some((_, _)) => self.add_delete(&mut multi, i, levels, key, state)?,
                    None => self.add_pin(&mut multi, i, levels, key, state)?,
                }
            }
            if multi.bytes > MAX_TRANSACTION_BYTES {
                return Err(too_large(multi.bytes));
            }

            let sent_at = tokio::time::Instant::now();
            let outcome = match tokio::time::timeout(timeout, multi.writer.commit()).await {
                Err(_) => {
                    return Err(Error::Timeout {
                        backend: BACKEND,
                        operation: "transaction",
                        after: timeout,
                    });
                }
                Ok(outcome) => outcome,
            };
            match outcome {
                Ok(results) => {
                    let mut pairs = Vec::new();
                    for (role, result) in multi.roles.iter().zip(results) {
                        if let (Role::Value(j), zk::MultiWriteResult::SetData { stat }) =
                            (role, result)
                        {
                            if pairs.is_empty() {
                                // The answer carries the server's clock for free.
                                self.clock.record_write(sent_at, stat.mtime);
                            }
                            if let Operation::Put { key, value, .. } = &operations[*j] {
                                let pair =
                                    KvPair::new(key.clone(), value.clone(), stat.mzxid as u64);
                                pairs.push((*j, pair));
                            }
                        }
                    }
                    pairs.sort_by_key(|(j, _)| *j);
                    let puts = operations
                        .iter()
                        .filter(|o| matches!(o, Operation::Put { .. }))
                        .count();
                    if pairs.len() != puts {
                        return Err(Error::backend(
                            BACKEND,
                            "a committed multi-op did not answer every put",
                        ));
                    }
                    return Ok(pairs.into_iter().map(|(_, pair)| pair).collect());
                }
                Err(zk::MultiWriteError::RequestFailed { source }) => {
                    return Err(map_zk(source, "transaction", timeout));
                }
                Err(zk::MultiWriteError::OperationFailed { index, source }) => {
                    let role = multi.roles.get(index).copied().unwrap_or(Role::Other);
                    tracing::debug!(index, ?role, error = %source, "transaction refused: retrying");
                    match (role, source) {
                        // A new key below a missing parent: create the parents (containers,
                        // as `put` does).
                        (Role::CreateNode(i), zk::Error::NoNode) => {
                            self.ensure_parents(&client, &self.node_path(keys[i]))
                                .await?;
                        }
                        // The probed node's parent is missing too: probe one level up.
                        (Role::Probe(i), zk::Error::NoNode) => {
                            *probe_levels.entry(i).or_default() += 1;
                        }
                        // The probed ancestor exists (now): read again, probe the node itself.
                        (Role::Probe(i), zk::Error::NodeExists) => {
                            probe_levels.remove(&i);
                        }
                        // The state moved on since the read (a write, a delete, an expiry
                        // swept, a lock owner's session ended): read again.
                        (
                            _,
                            zk::Error::NoNode
                            | zk::Error::NodeExists
                            | zk::Error::BadVersion
                            | zk::Error::NotEmpty,
                        ) => {}
                        (_, error) => return Err(map_zk(error, "transaction", timeout)),
                    }
                }
            }
        }
        // The server kept refusing although every read showed the conditions holding: never
        // report success, report the first condition as modified (the caller re-reads).
        Err(match txn.conditions().first() {
            Some(condition) => {
                Error::condition_failed(0, condition.key(), kv_core::ConditionFailure::KeyModified)
            }
            None => Error::backend(BACKEND, "transaction: too much contention, gave up"),
        })
    }

    /// The operations of a put: exactly those of `put` (see `write_key`), on the versions read.
    #[allow(clippy::too_many_arguments)]
    fn add_put(
        &self,
        multi: &mut Multi<'_>,
        key_index: usize,
        operation_index: usize,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        state: &KeyState,
    ) -> Result<()> {
        let node = self.node_path(key);
        let marker = self.marker_path(key);
        match &state.node {
            None => {
                let container = self.options(zk::CreateMode::Container);
                multi.create(&node, &[], &container, Role::CreateNode(key_index))?;
                multi.set_data(&node, value, 0, Role::Value(operation_index))?;
            }
            Some((_, stat)) => {
                multi.set_data(&node, value, stat.version, Role::Value(operation_index))?;
            }
        }
        if let Some(m) = &state.marker {
            for child in &m.children {
                multi.delete(&self.marker_child_path(key, child), None)?;
            }
            multi.delete(&marker, Some(m.stat.version))?;
        }
        multi.create(
            &marker,
            &marker_data(ttl),
            &self.marker_options(ttl),
            Role::Other,
        )
    }

    /// The operations of a delete: those of `delete` for a visible key; a pin otherwise
    /// (deleting an absent key writes nothing, but it must still be absent at commit).
    fn add_delete(
        &self,
        multi: &mut Multi<'_>,
        key_index: usize,
        levels: usize,
        key: &str,
        state: &KeyState,
    ) -> Result<()> {
        match (&state.node, &state.marker) {
            (Some((_, stat)), Some(m)) if state.visible() => {
                for child in &m.children {
                    multi.delete(&self.marker_child_path(key, child), None)?;
                }
                multi.delete(&self.marker_path(key), Some(m.stat.version))?;
                // The node stays, emptied (see `delete_key`: versions must never restart).
                multi.set_data(&self.node_path(key), &[], stat.version, Role::Other)
            }
            _ => self.add_pin(multi, key_index, levels, key, state),
        }
    }

    /// Pins a key the transaction does not write to the state read: its node's data version
    /// (every write and delete of a key sets its node's data), or the node's absence.
    fn add_pin(
        &self,
        multi: &mut Multi<'_>,
        key_index: usize,
        levels: usize,
        key: &str,
        state: &KeyState,
    ) -> Result<()> {
        match &state.node {
            Some((_, stat)) => multi.check(&self.node_path(key), stat.version),
            None => {
                let path = self.node_path(ancestor(key, levels));
                let options = self.options(zk::CreateMode::Container);
                multi.create(&path, &[], &options, Role::Probe(key_index))?;
                multi.delete(&path, None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ancestors_stop_at_the_top_segment() {
        assert_eq!(super::ancestor("a/b/c", 0), "a/b/c");
        assert_eq!(super::ancestor("a/b/c", 1), "a/b");
        assert_eq!(super::ancestor("a/b/c", 2), "a");
        assert_eq!(super::ancestor("a/b/c", 5), "a");
    }
}
