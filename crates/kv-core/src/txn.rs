//! Transactions over several keys, and writes fenced by a held lock.
//!
//! # The transaction contract (every backend that declares [`Capabilities::transactions`])
//!
//! A [`Transaction`] is a list of [`Condition`]s and a list of [`Operation`]s, committed by
//! [`Store::transaction`](crate::Store::transaction) **atomically**: either every condition
//! holds and every operation is applied, or nothing is written at all. No reader ever sees
//! some of its operations without the others. This holds for a call cut short too (its
//! future dropped): the transaction is then applied entirely or not at all, possibly after
//! the call was dropped.
//!
//! * **Conditions** are checked against the state at commit time, in one step with the
//!   writes: [`Condition::Absent`], [`Condition::Exists`], [`Condition::IndexEquals`] (the
//!   key exists and its `last_index` is N — what a CAS compares) and [`Condition::LockHeld`]
//!   (the lock's key exists and its `last_index` is still the lease's fencing token, i.e. the
//!   lease has not been lost, released or taken over on the server).
//! * **Operations** are [`Operation::Put`] (with [`WriteOptions`], TTL included) and
//!   [`Operation::Delete`] (deleting an absent key is not an error). `delete_tree` is not an
//!   operation: its size is unbounded.
//! * **Failure**: [`Error::ConditionFailed`] names the *first* condition (in the order they
//!   were added) that did not hold — its position and key — and why, as a
//!   [`ConditionFailure`]. The same state gives the same error on every backend, so a caller
//!   can re-read and retry, or step down.
//! * **Success**: the new [`KvPair`] of every key put, in operation order (deletes add
//!   nothing). The `last_index` rules are unchanged: it strictly rises for every key written,
//!   and is what the next conditional write compares. Every key written gets one new
//!   `last_index`; a watch on it sees one change per transaction.
//! * **Checks before anything is sent** ([`Capabilities::check_transaction`]): keys follow the
//!   [key rules](crate::key), values and TTLs are checked as for single writes, the number of
//!   conditions plus operations is at most [`Capabilities::max_transaction_ops`]
//!   ([`Error::InvalidOption`] otherwise), and a key may appear at most once among the
//!   operations and at most once among the conditions ([`Error::InvalidOption`]). A condition
//!   and an operation on the same key is the normal compare-and-swap shape and is allowed.
//! * A transaction is one request to the server: where its keys and values together exceed
//!   the server's request limit (each backend's docs give it), it is
//!   [`Error::InvalidOption`] before anything is sent, even when each value alone fits.
//! * On a partitioned store ([`Capabilities::transaction_keys_share_a_shard`]: Redis Cluster)
//!   the keys of one transaction must live on one shard — co-locate them with a hash tag
//!   (`{…}`) in the namespace or the keys; a transaction across shards is
//!   [`Error::InvalidOption`] before anything is sent.
//! * An empty transaction succeeds and returns nothing; one with conditions only is an atomic
//!   check of several keys.
//!
//! [`LockLease::guarded_put`] is the commonest case: write only while this lock is held, so a
//! paused or partitioned former holder cannot overwrite its successor's work.

use std::collections::HashSet;
use std::fmt;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::lock::LockLease;
use crate::store::Store;
use crate::types::{Capabilities, KvPair, WriteOptions};

/// Something a [`Transaction`] requires of the state at commit time.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Condition {
    /// The key does not exist (or has expired). Fails with [`ConditionFailure::KeyExists`].
    Absent {
        /// The key.
        key: String,
    },
    /// The key exists. Fails with [`ConditionFailure::KeyNotFound`].
    Exists {
        /// The key.
        key: String,
    },
    /// The key exists and its `last_index` equals `index`. Fails with
    /// [`ConditionFailure::KeyNotFound`] or [`ConditionFailure::KeyModified`].
    IndexEquals {
        /// The key.
        key: String,
        /// The `last_index` it must still have.
        index: u64,
    },
    /// The lock on `key` is still held by the acquisition with this fencing token: the key
    /// exists and its `last_index` equals the token. Fails with [`ConditionFailure::LockLost`].
    LockHeld {
        /// The lock's key.
        key: String,
        /// The lease's fencing token.
        fencing_token: u64,
    },
}

impl Condition {
    /// `key` must not exist.
    pub fn absent(key: impl Into<String>) -> Self {
        Condition::Absent { key: key.into() }
    }

    /// `key` must exist.
    pub fn exists(key: impl Into<String>) -> Self {
        Condition::Exists { key: key.into() }
    }

    /// `key` must exist with exactly this `last_index`.
    pub fn index_equals(key: impl Into<String>, index: u64) -> Self {
        Condition::IndexEquals {
            key: key.into(),
            index,
        }
    }

    /// `pair.key` must be unchanged since `pair` was read (the CAS condition).
    pub fn unchanged(pair: &KvPair) -> Self {
        Condition::index_equals(pair.key.clone(), pair.last_index)
    }

    /// The lock behind `lease` must still be held by that acquisition.
    pub fn lock_held(lease: &LockLease) -> Self {
        Condition::LockHeld {
            key: lease.key().to_owned(),
            fencing_token: lease.fencing_token(),
        }
    }

    /// The key the condition is about.
    pub fn key(&self) -> &str {
        match self {
            Condition::Absent { key }
            | Condition::Exists { key }
            | Condition::IndexEquals { key, .. }
            | Condition::LockHeld { key, .. } => key,
        }
    }

    fn key_mut(&mut self) -> &mut String {
        match self {
            Condition::Absent { key }
            | Condition::Exists { key }
            | Condition::IndexEquals { key, .. }
            | Condition::LockHeld { key, .. } => key,
        }
    }

    /// Evaluates the condition against a key's current `last_index` (`None`: absent). `None`
    /// when it holds, else why it fails. Backends that learn the state at commit time use
    /// this so that every backend reports the same reason.
    pub fn evaluate(&self, current_index: Option<u64>) -> Option<ConditionFailure> {
        match (self, current_index) {
            (Condition::Absent { .. }, None) => None,
            (Condition::Absent { .. }, Some(_)) => Some(ConditionFailure::KeyExists),
            (Condition::Exists { .. }, Some(_)) => None,
            (Condition::Exists { .. }, None) => Some(ConditionFailure::KeyNotFound),
            (Condition::IndexEquals { .. }, None) => Some(ConditionFailure::KeyNotFound),
            (Condition::IndexEquals { index, .. }, Some(current)) if *index == current => None,
            (Condition::IndexEquals { .. }, Some(_)) => Some(ConditionFailure::KeyModified),
            (Condition::LockHeld { fencing_token, .. }, Some(current))
                if *fencing_token == current =>
            {
                None
            }
            (Condition::LockHeld { .. }, _) => Some(ConditionFailure::LockLost),
        }
    }
}

/// Why a transaction's condition did not hold.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConditionFailure {
    /// [`Condition::Absent`] found the key.
    KeyExists,
    /// [`Condition::Exists`] or [`Condition::IndexEquals`] found no key.
    KeyNotFound,
    /// [`Condition::IndexEquals`] found another `last_index`.
    KeyModified,
    /// [`Condition::LockHeld`]: the lock is no longer held by that acquisition.
    LockLost,
}

impl fmt::Display for ConditionFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConditionFailure::KeyExists => "the key exists",
            ConditionFailure::KeyNotFound => "the key does not exist",
            ConditionFailure::KeyModified => "the key was modified",
            ConditionFailure::LockLost => "the lock is no longer held",
        })
    }
}

/// A write inside a [`Transaction`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Create or overwrite `key`, like [`Store::put`](crate::Store::put).
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Bytes,
        /// TTL and other write options.
        options: WriteOptions,
    },
    /// Delete `key` (absent is fine), like [`Store::delete`](crate::Store::delete).
    Delete {
        /// The key.
        key: String,
    },
}

impl Operation {
    /// The key the operation writes.
    pub fn key(&self) -> &str {
        match self {
            Operation::Put { key, .. } | Operation::Delete { key } => key,
        }
    }

    fn key_mut(&mut self) -> &mut String {
        match self {
            Operation::Put { key, .. } | Operation::Delete { key } => key,
        }
    }
}

/// Conditions and operations committed together by
/// [`Store::transaction`](crate::Store::transaction). See the [module docs](self).
///
/// ```
/// use kv_core::{Condition, KvPair, Transaction, WriteOptions};
///
/// // Move 10 from `a` to `b`, only if neither changed since they were read.
/// let a = KvPair::new("bank/a", "90", 7);
/// let b = KvPair::new("bank/b", "10", 8);
/// let txn = Transaction::new()
///     .when(Condition::unchanged(&a))
///     .when(Condition::unchanged(&b))
///     .put("bank/a", "80", WriteOptions::default())
///     .put("bank/b", "20", WriteOptions::default());
/// assert_eq!(txn.conditions().len() + txn.operations().len(), 4);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    conditions: Vec<Condition>,
    operations: Vec<Operation>,
}

impl Transaction {
    /// An empty transaction.
    pub fn new() -> Self {
        Transaction::default()
    }

    /// Adds a condition (checked in the order added; the first failing one is reported).
    pub fn when(mut self, condition: Condition) -> Self {
        self.conditions.push(condition);
        self
    }

    /// Adds a put.
    pub fn put(
        mut self,
        key: impl Into<String>,
        value: impl Into<Bytes>,
        options: WriteOptions,
    ) -> Self {
        self.operations.push(Operation::Put {
            key: key.into(),
            value: value.into(),
            options,
        });
        self
    }

    /// Adds a delete.
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.operations.push(Operation::Delete { key: key.into() });
        self
    }

    /// Adds an operation.
    pub fn operation(mut self, operation: Operation) -> Self {
        self.operations.push(operation);
        self
    }

    /// The conditions, in order.
    pub fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    /// The operations, in order.
    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    /// Splits the transaction into its conditions and operations.
    pub fn into_parts(self) -> (Vec<Condition>, Vec<Operation>) {
        (self.conditions, self.operations)
    }

    /// The first condition that fails against `current` (a key's `last_index`, `None` when
    /// absent), as the error the contract prescribes. For backends that see the whole state
    /// at commit time.
    pub fn first_failure(&self, mut current: impl FnMut(&str) -> Option<u64>) -> Option<Error> {
        self.conditions
            .iter()
            .enumerate()
            .find_map(|(index, condition)| {
                condition
                    .evaluate(current(condition.key()))
                    .map(|reason| Error::condition_failed(index, condition.key(), reason))
            })
    }
}

impl Capabilities {
    /// Checks a transaction before anything is sent and returns it with every key normalised:
    /// transactions supported, at most [`max_transaction_ops`](Self::max_transaction_ops)
    /// conditions plus operations, no key twice among the operations nor among the
    /// conditions, keys, values and TTLs valid.
    pub fn check_transaction(&self, txn: Transaction) -> Result<Transaction> {
        if !self.transactions {
            return Err(self.unsupported("transaction"));
        }
        let size = txn.conditions.len() + txn.operations.len();
        if size > self.max_transaction_ops {
            return Err(Error::InvalidOption(format!(
                "a transaction of {size} conditions and operations exceeds the {} limit of {}",
                self.backend, self.max_transaction_ops
            )));
        }
        let Transaction {
            mut conditions,
            mut operations,
        } = txn;
        let mut seen = HashSet::new();
        for condition in &mut conditions {
            let key = self.check_key(condition.key())?;
            if !seen.insert(key.clone()) {
                return Err(Error::InvalidOption(format!(
                    "key {key} appears in two conditions of one transaction"
                )));
            }
            *condition.key_mut() = key;
        }
        seen.clear();
        for operation in &mut operations {
            let key = self.check_key(operation.key())?;
            if let Operation::Put { value, options, .. } = &*operation {
                self.check_value(&key, value)?;
                self.check_ttl(options.ttl)?;
            }
            if !seen.insert(key.clone()) {
                return Err(Error::InvalidOption(format!(
                    "key {key} is written twice in one transaction"
                )));
            }
            *operation.key_mut() = key;
        }
        Ok(Transaction {
            conditions,
            operations,
        })
    }
}

impl LockLease {
    /// Writes `value` at `key` only while this lease's lock is held on the server: one
    /// transaction with [`Condition::lock_held`] and a put. A holder that lost its lock (it
    /// expired while the process was paused, someone deleted it, another client holds it
    /// now) gets [`Error::LockLost`] and nothing is written. Returns the new pair.
    pub async fn guarded_put(
        &self,
        store: &dyn Store,
        key: &str,
        value: impl Into<Bytes> + Send,
        options: WriteOptions,
    ) -> Result<KvPair> {
        let txn = Transaction::new()
            .when(Condition::lock_held(self))
            .put(key, value, options);
        match store.transaction(txn).await {
            Ok(mut pairs) => pairs.pop().ok_or_else(|| {
                Error::backend(
                    store.capabilities().backend,
                    "a committed transaction returned no pair for its put",
                )
            }),
            Err(Error::ConditionFailed {
                reason: ConditionFailure::LockLost,
                key,
                ..
            }) => Err(Error::LockLost { key }),
            Err(error) => Err(error),
        }
    }

    /// Deletes `key` only while this lease's lock is held on the server; [`Error::LockLost`]
    /// otherwise. `Ok(())` also when `key` did not exist.
    pub async fn guarded_delete(&self, store: &dyn Store, key: &str) -> Result<()> {
        let txn = Transaction::new()
            .when(Condition::lock_held(self))
            .delete(key);
        match store.transaction(txn).await {
            Ok(_) => Ok(()),
            Err(Error::ConditionFailed {
                reason: ConditionFailure::LockLost,
                key,
                ..
            }) => Err(Error::LockLost { key }),
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> Capabilities {
        let mut caps = Capabilities::full("test");
        caps.transactions = true;
        caps.max_transaction_ops = 4;
        caps
    }

    #[test]
    fn evaluation_gives_one_reason_per_state() {
        let cases = [
            (Condition::absent("k"), None, None),
            (
                Condition::absent("k"),
                Some(3),
                Some(ConditionFailure::KeyExists),
            ),
            (Condition::exists("k"), Some(3), None),
            (
                Condition::exists("k"),
                None,
                Some(ConditionFailure::KeyNotFound),
            ),
            (Condition::index_equals("k", 3), Some(3), None),
            (
                Condition::index_equals("k", 3),
                Some(4),
                Some(ConditionFailure::KeyModified),
            ),
            (
                Condition::index_equals("k", 3),
                None,
                Some(ConditionFailure::KeyNotFound),
            ),
            (
                Condition::LockHeld {
                    key: "k".into(),
                    fencing_token: 3,
                },
                Some(3),
                None,
            ),
            (
                Condition::LockHeld {
                    key: "k".into(),
                    fencing_token: 3,
                },
                Some(5),
                Some(ConditionFailure::LockLost),
            ),
            (
                Condition::LockHeld {
                    key: "k".into(),
                    fencing_token: 3,
                },
                None,
                Some(ConditionFailure::LockLost),
            ),
        ];
        for (condition, current, expected) in cases {
            assert_eq!(
                condition.evaluate(current),
                expected,
                "{condition:?} at {current:?}"
            );
        }
    }

    #[test]
    fn first_failure_is_reported_with_its_position() {
        let txn = Transaction::new()
            .when(Condition::exists("a"))
            .when(Condition::absent("b"))
            .when(Condition::index_equals("c", 1));
        let error = txn.first_failure(|key| match key {
            "a" => Some(1),
            "b" => Some(2),
            _ => None,
        });
        match error {
            Some(Error::ConditionFailed { index, key, reason }) => {
                assert_eq!(
                    (index, key.as_str(), reason),
                    (1, "b", ConditionFailure::KeyExists)
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(txn.first_failure(|key| (key != "b").then_some(1)).is_none());
    }

    #[test]
    fn checks_normalise_and_refuse_bad_transactions() {
        let caps = caps();
        let txn = caps
            .check_transaction(Transaction::new().when(Condition::exists("/a/")).put(
                "/a",
                "v",
                WriteOptions::default(),
            ))
            .unwrap();
        assert_eq!(txn.conditions()[0].key(), "a");
        assert_eq!(txn.operations()[0].key(), "a");

        let too_big = (0..5).fold(Transaction::new(), |t, i| t.delete(format!("k{i}")));
        assert!(matches!(
            caps.check_transaction(too_big),
            Err(Error::InvalidOption(_))
        ));
        let twice = Transaction::new()
            .delete("a")
            .put("/a/", "v", WriteOptions::default());
        assert!(matches!(
            caps.check_transaction(twice),
            Err(Error::InvalidOption(_))
        ));
        let twice = Transaction::new()
            .when(Condition::exists("a"))
            .when(Condition::absent("a"));
        assert!(matches!(
            caps.check_transaction(twice),
            Err(Error::InvalidOption(_))
        ));
        let bad_key = Transaction::new().when(Condition::exists("a//b"));
        assert!(matches!(
            caps.check_transaction(bad_key),
            Err(Error::InvalidKey { .. })
        ));
        let bad_ttl = Transaction::new().put(
            "a",
            "v",
            WriteOptions::with_ttl(std::time::Duration::from_millis(1)),
        );
        assert!(matches!(
            caps.check_transaction(bad_ttl),
            Err(Error::InvalidOption(_))
        ));
        let big = Transaction::new().put(
            "a",
            vec![0u8; caps.max_value_len + 1],
            WriteOptions::default(),
        );
        assert!(matches!(
            caps.check_transaction(big),
            Err(Error::ValueTooLarge { .. })
        ));

        let unsupported = Capabilities::full("none");
        assert!(matches!(
            unsupported.check_transaction(Transaction::new()),
            Err(Error::NotSupported {
                operation: "transaction",
                ..
            })
        ));
    }
}
