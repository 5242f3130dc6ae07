//! `transaction`: a [`Transaction`] as one etcd `Txn`.
//!
//! Every condition becomes one or two comparisons on its key (see [`Expect::compares`]); the
//! operations are the success branch; the failure branch reads every condition key back
//! (keys only), in the same transaction, so the state that made a comparison fail comes back
//! with the answer and [`Transaction::first_failure`] names the first failing condition for
//! exactly that state.
//!
//! etcd's default `--max-txn-ops` ([`MAX_TXN_OPS`](crate::tree::MAX_TXN_OPS), 128) bounds the comparisons, the success
//! operations and the failure operations of one `Txn` **separately**, and conditions take up
//! to two comparisons each (the revision, and "not bound to an expired TTL lease of this
//! crate"). So when a second comparison is needed, the request is nested: the outer `Txn`
//! holds the first comparison of every condition, its success branch is an inner `Txn` with
//! the second ones, the operations and the read-back; the outer failure branch reads back
//! too. Each list then holds at most as many entries as the transaction has conditions or
//! operations, never more than 128. etcd applies a nested `Txn` in the same step as its
//! parent: it is one revision, atomic like a flat one.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use kv_core::{
    Condition, ConditionFailure, Error, KvPair, Operation, Result, Transaction, WriteOptions,
};

use crate::client::{BACKEND, Inner, header_revision};
use crate::lease;
use crate::store::DEFAULT_MAX_REQUEST_BYTES;

/// How many `Txn`s one transaction sends at most. A retry happens only when the read-back
/// shows every condition holding although a comparison failed: a key past its TTL that etcd
/// has not deleted yet (it counts as absent), or the server-clock estimate moving between
/// two steps.
const ATTEMPTS: usize = 4;

/// Room in a request for everything that is not a key or a value: the request header and the
/// outer framing.
const BASE_OVERHEAD: usize = 1024;

/// Framing, target and operand of one comparison, read or operation beside its key.
const ITEM_OVERHEAD: usize = 32;

/// What a condition's key must look like for the `Txn` to commit.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// What the condition itself says (first attempt).
    Condition,
    /// Exactly the state read back after a failed attempt in which every condition held:
    /// absent…
    Absent,
    /// …or this version (`mod_revision`) with this lease (an expired key of ours included:
    /// writing over exactly it is fine, it counts as absent).
    Version { revision: i64, lease: i64 },
}

impl Expect {
    /// The comparisons that make `condition` hold on `key`: the first goes into the outer
    /// `Txn`, the second (if any) into the nested one. `bound`: see
    /// [`lease::expired_below`].
    fn compares(
        self,
        condition: &Condition,
        key: &[u8],
        bound: Option<i64>,
    ) -> Result<(Compare, Option<Compare>)> {
        let key = key.to_vec();
        // The key exists at revision `index`, and is not past its TTL.
        let at_index = |index: u64| {
            let first = match i64::try_from(index) {
                Ok(revision) if revision > 0 => {
                    Compare::mod_revision(key.clone(), CompareOp::Equal, revision)
                }
                // No key is at revision 0 (nor beyond i64): never true, not even for an
                // absent key (whose revisions compare as 0).
                _ => Compare::mod_revision(key.clone(), CompareOp::Less, 0),
            };
            let second = bound.map(|b| Compare::lease(key.clone(), CompareOp::Greater, b - 1));
            (first, second)
        };
        Ok(match self {
            Expect::Absent => (
                Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                None,
            ),
            Expect::Version { revision, lease } => (
                Compare::mod_revision(key.clone(), CompareOp::Equal, revision),
                Some(Compare::lease(key.clone(), CompareOp::Equal, lease)),
            ),
            Expect::Condition => match condition {
                Condition::Absent { .. } => (
                    Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                    None,
                ),
                Condition::Exists { .. } => (
                    Compare::create_revision(key.clone(), CompareOp::Greater, 0),
                    bound.map(|b| Compare::lease(key.clone(), CompareOp::Greater, b - 1)),
                ),
                Condition::IndexEquals { index, .. } => at_index(*index),
                // The lock's key is the one its acquisition created (bound to the holder's
                // lease, kept alive without changing the key): held by that acquisition
                // exactly while the key's `mod_revision` is still the fencing token.
                Condition::LockHeld { fencing_token, .. } => at_index(*fencing_token),
                other => {
                    return Err(Error::InvalidOption(format!(
                        "the etcd backend does not know the transaction condition {other:?}"
                    )));
                }
            },
        })
    }
}

/// What etcd answered.
enum Answer {
    /// Every comparison held: the operations are applied.
    Committed,
    /// The condition keys as read back in the same `Txn` (`None`: absent), in condition order.
    Failed(Vec<Option<KeyValue>>),
}

/// Commits `txn` (already checked by [`Capabilities::check_transaction`](kv_core::Capabilities))
/// in one etcd `Txn`, retried only as [`ATTEMPTS`] says.
pub(crate) async fn commit(inner: &Inner, txn: Transaction) -> Result<Vec<KvPair>> {
    if txn.conditions().is_empty() && txn.operations().is_empty() {
        return Ok(Vec::new());
    }
    check_request_size(inner, &txn)?;
    for operation in txn.operations() {
        if !matches!(operation, Operation::Put { .. } | Operation::Delete { .. }) {
            return Err(Error::InvalidOption(format!(
                "the etcd backend does not know the transaction operation {operation:?}"
            )));
        }
    }
    let keys: Vec<Vec<u8>> = txn
        .conditions()
        .iter()
        .map(|c| inner.full_key(c.key()))
        .collect();

    // One lease per distinct TTL, as `put` grants one per write: keys written together with
    // the same TTL share their deadline, and expire in one revision.
    let mut leases: BTreeMap<Duration, i64> = BTreeMap::new();
    for operation in txn.operations() {
        if let Operation::Put {
            options: WriteOptions { ttl: Some(ttl), .. },
            ..
        } = operation
        {
            if leases.contains_key(ttl) {
                continue;
            }
            match lease::grant_ttl(inner, *ttl, "transaction").await {
                Ok(id) => {
                    leases.insert(*ttl, id);
                }
                Err(error) => {
                    lease::revoke_all(inner, leases.into_values().collect()).await;
                    return Err(error);
                }
            }
        }
    }
    let operations: Vec<TxnOp> = txn
        .operations()
        .iter()
        .filter_map(|operation| match operation {
            Operation::Put {
                key,
                value,
                options,
            } => {
                // Without a TTL no lease: etcd detaches the key from any lease it had, so
                // the key is permanent again (as with `put`).
                let options = options
                    .ttl
                    .and_then(|ttl| leases.get(&ttl))
                    .map(|id| PutOptions::new().with_lease(*id));
                Some(TxnOp::put(inner.full_key(key), value.to_vec(), options))
            }
            Operation::Delete { key } => Some(TxnOp::delete(inner.full_key(key), None)),
            _ => None,
        })
        .collect();
    let reads: Vec<TxnOp> = keys
        .iter()
        .map(|key| TxnOp::get(key.clone(), Some(GetOptions::new().with_keys_only())))
        .collect();

    let mut expects = vec![Expect::Condition; keys.len()];
    // Leases of expired keys met on the way, revoked at the end (etcd then deletes them).
    let mut expired = Vec::new();
    for _ in 0..ATTEMPTS {
        let bound = lease::expired_below(&inner.clock);
        let mut first = Vec::with_capacity(keys.len());
        let mut second = Vec::new();
        for ((condition, key), expect) in txn.conditions().iter().zip(&keys).zip(&expects) {
            let (one, two) = expect.compares(condition, key, bound)?;
            first.push(one);
            second.extend(two);
        }
        let nested = !second.is_empty();
        let request = if nested {
            let inner_txn = Txn::new()
                .when(second)
                .and_then(operations.clone())
                .or_else(reads.clone());
            Txn::new()
                .when(first)
                .and_then([TxnOp::txn(inner_txn)])
                .or_else(reads.clone())
        } else {
            Txn::new()
                .when(first)
                .and_then(operations.clone())
                .or_else(reads.clone())
        };
        // On a failed request the leases are left to expire: the transaction may have been
        // applied (a timeout), and revoking would then delete its keys.
        let mut kv = inner.kv.clone();
        let response = inner.call("transaction", kv.txn(request)).await?;
        let current = match answer(&response, nested, keys.len())? {
            Answer::Committed => {
                lease::revoke_all(inner, expired).await;
                let revision = header_revision(response.header()) as u64;
                let (_, operations) = txn.into_parts();
                return Ok(operations
                    .into_iter()
                    .filter_map(|operation| match operation {
                        Operation::Put { key, value, .. } => Some(KvPair {
                            key,
                            value,
                            last_index: revision,
                        }),
                        _ => None,
                    })
                    .collect());
            }
            Answer::Failed(current) => current,
        };
        // The commit-time state of every condition key, as readers see it: a key past its
        // TTL (not deleted by etcd yet) is absent.
        let mut indexes = HashMap::with_capacity(keys.len());
        for (condition, kv) in txn.conditions().iter().zip(&current) {
            let index = match kv {
                Some(kv) if lease::is_expired(&inner.clock, kv.lease()) => {
                    expired.push(kv.lease());
                    None
                }
                Some(kv) => Some(kv.mod_revision() as u64),
                None => None,
            };
            indexes.insert(condition.key(), index);
        }
        if let Some(error) = txn.first_failure(|key| indexes.get(key).copied().flatten()) {
            expired.extend(leases.values());
            lease::revoke_all(inner, expired).await;
            return Err(error);
        }
        // Every condition holds on the state read back, yet a comparison failed: pin every
        // condition key to exactly that state and try again.
        tracing::debug!("transaction: the conditions hold on the state read back, retrying");
        expects = current
            .iter()
            .map(|kv| match kv {
                Some(kv) => Expect::Version {
                    revision: kv.mod_revision(),
                    lease: kv.lease(),
                },
                None => Expect::Absent,
            })
            .collect();
    }
    expired.extend(leases.values());
    lease::revoke_all(inner, expired).await;
    let first = txn.conditions().first().map_or("", Condition::key);
    Err(Error::condition_failed(
        0,
        first,
        ConditionFailure::KeyModified,
    ))
}

/// Reads etcd's answer: committed, or the keys read back by whichever failure branch ran.
fn answer(response: &TxnResponse, nested: bool, conditions: usize) -> Result<Answer> {
    let failed = if !response.succeeded() {
        response
    } else if !nested {
        return Ok(Answer::Committed);
    } else {
        match response.op_responses().into_iter().next() {
            Some(TxnOpResponse::Txn(inner)) if inner.succeeded() => return Ok(Answer::Committed),
            Some(TxnOpResponse::Txn(inner)) => return read_back(&inner, conditions),
            _ => {
                return Err(Error::backend(
                    BACKEND,
                    "etcd answered a nested transaction without its result",
                ));
            }
        }
    };
    read_back(failed, conditions)
}

fn read_back(response: &TxnResponse, conditions: usize) -> Result<Answer> {
    let current: Vec<Option<KeyValue>> = response
        .op_responses()
        .into_iter()
        .filter_map(|op| match op {
            TxnOpResponse::Get(mut get) => Some(get.take_kvs().into_iter().next()),
            _ => None,
        })
        .collect();
    if current.len() != conditions {
        return Err(Error::backend(
            BACKEND,
            format!(
                "a failed transaction read back {} keys for {conditions} conditions",
                current.len()
            ),
        ));
    }
    Ok(Answer::Failed(current))
}

/// etcd refuses requests over its `--max-request-bytes` (default
/// [`DEFAULT_MAX_REQUEST_BYTES`]), and all of a transaction is one request: every condition
/// key (up to four times: two comparisons, two read-backs), every operation's key, and the
/// values of all puts together. A put whose value no longer fits in what the keys and the
/// earlier values leave is [`Error::ValueTooLarge`] (with that room as the limit), before
/// anything is sent.
fn check_request_size(inner: &Inner, txn: &Transaction) -> Result<()> {
    let full = |key: &str| inner.prefix.len() + key.len();
    let keys: usize = txn
        .conditions()
        .iter()
        .map(|c| 4 * (full(c.key()) + ITEM_OVERHEAD))
        .chain(
            txn.operations()
                .iter()
                .map(|o| full(o.key()) + ITEM_OVERHEAD),
        )
        .sum();
    let mut room = DEFAULT_MAX_REQUEST_BYTES.saturating_sub(BASE_OVERHEAD + keys);
    for operation in txn.operations() {
        if let Operation::Put { key, value, .. } = operation {
            if value.len() > room {
                return Err(Error::ValueTooLarge {
                    key: key.clone(),
                    size: value.len(),
                    max: room,
                });
            }
            room -= value.len();
        }
    }
    Ok(())
}
