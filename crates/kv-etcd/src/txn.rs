//! `transaction`: a [`Transaction`] as one etcd `Txn`.
//!
//! Every condition becomes comparisons on its key; the operations are the success branch;
//! the failure branch reads every condition key back (keys only) in the same `Txn`, so the
//! state that made a comparison fail comes back with the answer, at the very revision the
//! comparisons were evaluated at, and [`Transaction::first_failure`] names the first failing
//! condition for exactly that state.
//!
//! **Comparisons.** A condition holds for the key as readers see it, where a key bound to a
//! TTL lease of this crate past its deadline (see [`crate::lease`]) is absent even though
//! etcd has not deleted it yet:
//!
//! | condition | first attempt |
//! | --- | --- |
//! | `Absent` | `create_revision == 0` |
//! | `Exists` | `create_revision > 0` and `lease > bound − 1` |
//! | `IndexEquals(n)` | `mod_revision == n` and `lease > bound − 1` |
//! | `LockHeld(token)` | `mod_revision == token` and `lease > bound − 1` |
//!
//! where `lease > bound − 1` is "not bound to one of our TTL leases past its deadline"
//! ([`lease::expired_below`]; left out while the server's time is unknown, when nothing
//! counts as expired).
//!
//! **Retry on a pinned state.** When the comparisons fail but every condition holds on the
//! state read back (an `Absent` key that is past its TTL and not deleted yet), the next
//! attempt pins every condition key to exactly that state: `create_revision == 0` for an
//! absent key, `mod_revision == r` for a present one (a key's version determines its lease,
//! so whether it counts as expired can no longer change but by the passing of time). It
//! commits only if none of those keys changed since; else its own read-back decides again.
//!
//! **Limits.** etcd's `--max-txn-ops` (default 128, [`MAX_TXN_OPS`])
//! bounds the comparisons, the success operations and the failure operations of one `Txn`
//! separately (a nested `Txn` would only get what its parent leaves, so nesting does not
//! help). Conditions plus operations are at most 128, so operations and read-backs always
//! fit; comparisons fit too, except the first attempt of a transaction with more than 64
//! conditions that need the lease comparison: such a transaction starts with a `Txn` that
//! only reads its condition keys (one revision) and goes on with a pinned attempt (one
//! comparison per condition).

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
use crate::tree::MAX_TXN_OPS;

/// How many `Txn`s one transaction sends at most. A retry happens only when the read-back
/// shows every condition holding although a comparison failed: a key past its TTL that etcd
/// has not deleted yet (it counts as absent), or a pinned key that changed meanwhile without
/// breaking its condition.
const ATTEMPTS: usize = 4;

/// Room in a request for everything that is not a key or a value: the request header and the
/// outer framing.
const BASE_OVERHEAD: usize = 1024;

/// Framing, target and operand of one comparison, read or operation beside its key.
const ITEM_OVERHEAD: usize = 32;

/// What the next `Txn` compares.
#[derive(Debug, Clone)]
enum Plan {
    /// What the conditions themselves say (first attempt).
    Conditions,
    /// No comparison can fit: only read the condition keys.
    ReadOnly,
    /// Every condition key exactly as read back (`None`: absent; else its `mod_revision`),
    /// after a read in which every condition held.
    Pinned(Vec<Option<i64>>),
}

/// The comparisons of `condition` on `key` in a first attempt. `bound`: see
/// [`lease::expired_below`].
fn compares(condition: &Condition, key: &[u8], bound: Option<i64>) -> Result<Vec<Compare>> {
    let key = key.to_vec();
    let not_expired = || bound.map(|b| Compare::lease(key.clone(), CompareOp::Greater, b - 1));
    // The key exists at revision `index`, and is not past its TTL.
    let at_index = |index: u64| {
        let at = match i64::try_from(index) {
            Ok(revision) if revision > 0 => {
                Compare::mod_revision(key.clone(), CompareOp::Equal, revision)
            }
            // No key is at revision 0 (nor beyond i64): never true, not even for an absent
            // key (whose revisions compare as 0).
            _ => Compare::mod_revision(key.clone(), CompareOp::Less, 0),
        };
        std::iter::once(at).chain(not_expired()).collect()
    };
    Ok(match condition {
        Condition::Absent { .. } => {
            vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)]
        }
        Condition::Exists { .. } => {
            std::iter::once(Compare::create_revision(key.clone(), CompareOp::Greater, 0))
                .chain(not_expired())
                .collect()
        }
        Condition::IndexEquals { index, .. } => at_index(*index),
        // The lock's key is the one its acquisition created (bound to the holder's lease,
        // renewed without touching the key): held by that acquisition exactly while the
        // key's `mod_revision` is still the fencing token.
        Condition::LockHeld { fencing_token, .. } => at_index(*fencing_token),
        other => {
            return Err(Error::InvalidOption(format!(
                "the etcd backend does not know the transaction condition {other:?}"
            )));
        }
    })
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

    let mut plan = Plan::Conditions;
    // Leases of expired keys met on the way, revoked at the end (etcd then deletes them).
    let mut expired = Vec::new();
    for _ in 0..ATTEMPTS {
        let request = match &plan {
            Plan::Conditions => {
                let bound = lease::expired_below(&inner.clock);
                let mut all = Vec::with_capacity(keys.len());
                for (condition, key) in txn.conditions().iter().zip(&keys) {
                    all.extend(compares(condition, key, bound)?);
                }
                if all.len() > MAX_TXN_OPS {
                    plan = Plan::ReadOnly;
                    Txn::new().and_then(reads.clone())
                } else {
                    Txn::new()
                        .when(all)
                        .and_then(operations.clone())
                        .or_else(reads.clone())
                }
            }
            Plan::ReadOnly => Txn::new().and_then(reads.clone()),
            Plan::Pinned(state) => {
                let pinned: Vec<Compare> = keys
                    .iter()
                    .zip(state)
                    .map(|(key, revision)| match revision {
                        Some(revision) => {
                            Compare::mod_revision(key.clone(), CompareOp::Equal, *revision)
                        }
                        None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                    })
                    .collect();
                Txn::new()
                    .when(pinned)
                    .and_then(operations.clone())
                    .or_else(reads.clone())
            }
        };
        // On a failed request the leases are left to expire: the transaction may have been
        // applied (a timeout), and revoking would then delete its keys.
        let mut kv = inner.kv.clone();
        let response = inner.call("transaction", kv.txn(request)).await?;
        let read_only = matches!(plan, Plan::ReadOnly);
        if response.succeeded() && !read_only {
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
        let current = read_back(&response, keys.len())?;
        // The condition keys' state at that revision, as readers see it: a key past its TTL
        // (not deleted by etcd yet) is absent.
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
        // Every condition holds on the state read back: commit if it is still that state.
        if !read_only {
            tracing::debug!("transaction: the conditions hold on the state read back, retrying");
        }
        plan = Plan::Pinned(
            current
                .iter()
                .map(|kv| kv.as_ref().map(KeyValue::mod_revision))
                .collect(),
        );
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

/// The condition keys as the failure branch (or a read-only `Txn`) read them, in condition
/// order (`None`: absent).
fn read_back(response: &TxnResponse, conditions: usize) -> Result<Vec<Option<KeyValue>>> {
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
                "a transaction read back {} keys for {conditions} conditions",
                current.len()
            ),
        ));
    }
    Ok(current)
}

/// etcd refuses requests over its `--max-request-bytes` (default
/// [`DEFAULT_MAX_REQUEST_BYTES`]), and all of a transaction is one request: every condition
/// key (up to three times: two comparisons, one read-back), every operation's key, and the
/// values of all puts together. A transaction that does not fit is [`Error::InvalidOption`]
/// (the same answer as every backend gives a transaction over its server's request limit),
/// naming the put that no longer fits, before anything is sent.
fn check_request_size(inner: &Inner, txn: &Transaction) -> Result<()> {
    let full = |key: &str| inner.prefix.len() + key.len();
    let keys: usize = txn
        .conditions()
        .iter()
        .map(|c| 3 * (full(c.key()) + ITEM_OVERHEAD))
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
                return Err(Error::InvalidOption(format!(
                    "the transaction exceeds etcd's request limit of {DEFAULT_MAX_REQUEST_BYTES} \
                     bytes: the {} bytes of {key} do not fit in the {room} bytes its keys and \
                     earlier values leave",
                    value.len()
                )));
            }
            room -= value.len();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use kv_core::{ReadOptions, Store};

    use super::*;
    use crate::clock::{Estimate, ServerClock};
    use crate::{Config, EtcdStore};

    async fn store(name: &str) -> EtcdStore {
        let endpoints = std::env::var("KV_TEST_ETCD_ENDPOINTS").unwrap_or_else(|_| {
            panic!(
                "KV_TEST_ETCD_ENDPOINTS not set: run the README test command or `eval \"$(scripts/servers env)\"`"
            )
        });
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let config = Config::builder()
            .endpoints(endpoints.split(','))
            .namespace(format!("kvtest-etcd-txn-{name}-{nanos}"))
            .build()
            .unwrap();
        EtcdStore::connect(config).await.unwrap()
    }

    /// The store's connection with a server clock known to read this machine's time (±1 s):
    /// conditions but `Absent` then take a second comparison.
    fn with_known_clock(inner: &Inner) -> Inner {
        let anchor = std::time::Instant::now();
        let estimate = Estimate::from_sample(kv_core::ttl::now_millis() as i64, anchor, anchor);
        Inner {
            clock: ServerClock::fixed(estimate),
            ..inner.clone()
        }
    }

    /// The same connection with the server's time unknown: one comparison per condition.
    fn with_unknown_clock(inner: &Inner) -> Inner {
        Inner {
            clock: ServerClock::unknown(),
            ..inner.clone()
        }
    }

    fn key(i: usize) -> String {
        format!("k/{i:03}")
    }

    /// A key bound to a lease of this crate whose deadline passed a minute ago, which etcd
    /// keeps for another minute: expired for readers, still there for etcd.
    async fn expired_key(inner: &Inner, key: &str) -> KeyValue {
        let deadline = kv_core::ttl::now_millis() - 60_000;
        let id = lease::encode(deadline, lease::random());
        let mut leases = inner.lease.clone();
        leases
            .grant(60, Some(etcd_client::LeaseGrantOptions::new().with_id(id)))
            .await
            .unwrap();
        let mut kv = inner.kv.clone();
        kv.put(
            inner.full_key(key),
            "expired",
            Some(PutOptions::new().with_lease(id)),
        )
        .await
        .unwrap();
        kv.get(inner.full_key(key), None).await.unwrap().kvs()[0].clone()
    }

    /// Every list of a `Txn` stays within etcd's `--max-txn-ops` at the declared limit, with
    /// and without the second comparison per condition (128 conditions with it: a read-only
    /// `Txn`, then a pinned attempt), and failures name the right condition.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_list_fits_the_servers_limit_at_the_declared_maximum() {
        let store = store("limit").await;
        let max = store.capabilities().max_transaction_ops;
        assert_eq!(max, crate::tree::MAX_TXN_OPS);
        let live = store.inner().unwrap();
        for inner in [with_known_clock(&live), with_unknown_clock(&live)] {
            let puts = (0..max).fold(Transaction::new(), |t, i| {
                t.put(key(i), "v", WriteOptions::default())
            });
            let pairs = commit(&inner, puts).await.expect("128 puts");
            assert_eq!(pairs.len(), max);

            // 128 conditions: 128 + 128 comparisons with a known clock (too many: read, then
            // pin), 128 read-backs.
            let exists =
                (0..max).fold(Transaction::new(), |t, i| t.when(Condition::exists(key(i))));
            assert!(commit(&inner, exists).await.unwrap().is_empty());
            let last_stale = (0..max).fold(Transaction::new(), |t, i| {
                let index = pairs[i].last_index + u64::from(i == max - 1);
                t.when(Condition::index_equals(key(i), index))
            });
            kv_conformance::support::assert_condition_failed(
                commit(&inner, last_stale).await,
                "the last of the conditions is stale",
                max - 1,
                &key(max - 1),
                ConditionFailure::KeyModified,
            );
            // Half conditions, half operations.
            let half = (0..max / 2).fold(Transaction::new(), |t, i| {
                t.when(Condition::unchanged(&pairs[i])).put(
                    key(max / 2 + i),
                    "w",
                    WriteOptions::default(),
                )
            });
            assert_eq!(commit(&inner, half).await.unwrap().len(), max / 2);
            store.delete_tree("").await.unwrap();
        }

        // A key past its deadline that etcd still has: `Exists` and `IndexEquals` fail on its
        // lease, the read-back reports it absent, and its lease is revoked.
        let inner = with_known_clock(&live);
        expired_key(&inner, "gone").await;
        let gone = expired_key(&inner, "gone2").await;
        let txn = Transaction::new()
            .when(Condition::absent("other"))
            .when(Condition::exists("gone"))
            .put("written", "no", WriteOptions::default());
        kv_conformance::support::assert_condition_failed(
            commit(&inner, txn).await,
            "an expired key fails Exists",
            1,
            "gone",
            ConditionFailure::KeyNotFound,
        );
        let txn = Transaction::new()
            .when(Condition::index_equals("gone2", gone.mod_revision() as u64))
            .put("written", "no", WriteOptions::default());
        kv_conformance::support::assert_condition_failed(
            commit(&inner, txn).await,
            "an expired key fails IndexEquals",
            0,
            "gone2",
            ConditionFailure::KeyNotFound,
        );
        let mut kv = inner.kv.clone();
        for key in ["gone", "gone2"] {
            let left = kv.get(inner.full_key(key), None).await.unwrap().count();
            assert_eq!(left, 0, "the expired key's lease was revoked");
        }
        // 100 conditions with a second comparison each (read first, then pinned), one of them
        // `Absent` on an expired key: commits, over exactly that version.
        let pairs = commit(
            &inner,
            (0..99).fold(Transaction::new(), |t, i| {
                t.put(key(i), "v", WriteOptions::default())
            }),
        )
        .await
        .unwrap();
        let old = expired_key(&inner, "slot").await;
        let many = pairs
            .iter()
            .fold(Transaction::new(), |t, p| t.when(Condition::unchanged(p)))
            .when(Condition::absent("slot"))
            .put("slot", "new", WriteOptions::default());
        let written = commit(&inner, many).await.expect("every condition holds");
        assert!(written[0].last_index > old.mod_revision() as u64);
        assert_eq!(
            store.get("slot", ReadOptions::default()).await.unwrap(),
            Some(written[0].clone())
        );
        assert!(
            store
                .get("written", ReadOptions::default())
                .await
                .unwrap()
                .is_none()
        );
        store.close().await.unwrap();
    }

    /// `Absent` holds for a key past its deadline that etcd has not deleted yet (as for
    /// `atomic_put(k, v, None)`): the first attempt fails on `create_revision`, the read-back
    /// shows the key expired, and the retry pins exactly that version.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn absent_holds_for_an_expired_key_etcd_still_has() {
        let store = store("expired-absent").await;
        let inner = with_known_clock(&store.inner().unwrap());
        let old = expired_key(&inner, "slot").await;
        let pairs = commit(
            &inner,
            Transaction::new().when(Condition::absent("slot")).put(
                "slot",
                "new",
                WriteOptions::default(),
            ),
        )
        .await
        .expect("an expired key is absent");
        let mut kv = inner.kv.clone();
        let now = kv.get(inner.full_key("slot"), None).await.unwrap().kvs()[0].clone();
        assert_eq!(now.value(), b"new");
        assert_eq!(now.lease(), 0, "written without a lease");
        assert_eq!(pairs[0].last_index, now.mod_revision() as u64);
        assert!(now.mod_revision() > old.mod_revision());
        let mut leases = inner.lease.clone();
        let ttl = leases.time_to_live(old.lease(), None).await.unwrap().ttl();
        assert!(ttl <= 0, "the expired key's lease was revoked (ttl {ttl})");
        store.delete_tree("").await.unwrap();
        store.close().await.unwrap();
    }
}
