//! Cases for [`Store::transaction`](kv_core::Store::transaction) and writes fenced by a lock
//! (the contract in [`kv_core::txn`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kv_core::{
    Condition, ConditionFailure, Error, KvPair, LockOptions, ReadOptions, Store, Transaction,
    WriteOptions,
};
use rand::Rng;
use tokio::time::{Instant, sleep, timeout};

use crate::StoreFactory;
use crate::support::*;

fn no_ttl() -> WriteOptions {
    WriteOptions::default()
}

/// Every key below `dir` with its value, read from `store`.
async fn snapshot(store: &dyn Store, dir: &str) -> BTreeMap<String, Bytes> {
    store
        .list(dir, ReadOptions::default())
        .await
        .unwrap_or_else(|e| panic!("list {dir}: {e}"))
        .into_iter()
        .map(|p| (p.key, p.value))
        .collect()
}

/// A transaction whose last condition fails writes none of its operations (seen from a second
/// handle), whatever the kinds of its operations; the same state gives the same reason for
/// every kind of condition.
pub async fn txn_all_or_nothing(factory: &dyn StoreFactory) {
    let store = connect(factory).await;
    let observer = connect(factory).await;
    if lacks(&*store, &[Capability::Transactions]).await {
        return;
    }
    let dir = format!("{}/bank", unique_prefix("txn_all_or_nothing"));
    let (a, b, c, fresh) = (
        format!("{dir}/a"),
        format!("{dir}/b"),
        format!("{dir}/c"),
        format!("{dir}/fresh"),
    );
    put(&*store, &a, "a0").await;
    put(&*store, &b, "b0").await;
    let c0 = store
        .atomic_put(&c, "c0".into(), None, no_ttl())
        .await
        .unwrap();
    put(&*store, &c, "c1").await; // `c0` is stale from here on.
    let before = snapshot(&*observer, &dir).await;

    // Every condition but the last holds; every operation kind is present.
    let doomed = Transaction::new()
        .when(Condition::exists(&a))
        .when(Condition::absent(&fresh))
        .when(Condition::unchanged(&get_some(&*store, &b).await))
        .when(Condition::unchanged(&c0))
        .put(&a, "a1", no_ttl())
        .put(&fresh, "new", no_ttl())
        .delete(&b);
    assert_condition_failed(
        store.transaction(doomed).await,
        "the last condition is stale",
        3,
        &c,
        ConditionFailure::KeyModified,
    );
    assert_eq!(
        snapshot(&*observer, &dir).await,
        before,
        "a failed transaction must write nothing"
    );

    // One failing condition of each kind, reported with its position, key and reason.
    let missing = format!("{dir}/missing");
    let cases: Vec<(Condition, &str, ConditionFailure)> = vec![
        (Condition::absent(&a), &a, ConditionFailure::KeyExists),
        (
            Condition::exists(&missing),
            &missing,
            ConditionFailure::KeyNotFound,
        ),
        (
            Condition::index_equals(&missing, c0.last_index),
            &missing,
            ConditionFailure::KeyNotFound,
        ),
        (Condition::unchanged(&c0), &c, ConditionFailure::KeyModified),
    ];
    for (failing, key, reason) in cases {
        let txn = Transaction::new()
            .when(Condition::exists(&b))
            .when(failing.clone())
            .when(Condition::absent(format!("{dir}/also-fails")))
            .put(&b, "must not be written", no_ttl());
        assert_condition_failed(
            store.transaction(txn).await,
            &format!("{failing:?}"),
            1,
            key,
            reason,
        );
    }
    // When several conditions fail, the first one in order is named.
    let txn = Transaction::new()
        .when(Condition::exists(&missing))
        .when(Condition::absent(&a))
        .delete(&a);
    assert_condition_failed(
        store.transaction(txn).await,
        "two failing conditions",
        0,
        &missing,
        ConditionFailure::KeyNotFound,
    );
    assert_eq!(snapshot(&*observer, &dir).await, before);

    // Cut short at random moments, a transaction is still all or nothing: the pair it writes
    // is always seen equal (both old or both new), including when a cut transaction lands
    // after the call was dropped.
    let (x, y) = (format!("{dir}/x"), format!("{dir}/y"));
    let started = Instant::now();
    store
        .transaction(
            Transaction::new()
                .put(&x, "0", no_ttl())
                .put(&y, "0", no_ttl()),
        )
        .await
        .unwrap();
    let typical = started.elapsed();
    let mut cut = 0;
    for round in 1..=30u32 {
        let moment = RandomCut::around(typical);
        let cut_short = moment.elapsed();
        let value = Bytes::from(round.to_string());
        let txn = Transaction::new()
            .put(&x, value.clone(), no_ttl())
            .put(&y, value, no_ttl());
        tokio::select! {
            biased;
            _ = cut_short => cut += 1,
            result = store.transaction(txn) => {
                result.unwrap_or_else(|e| panic!("round {round}: {e}"));
            }
        }
        // A stable read of the pair: x read before and after y agrees.
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let x1 = get(&*observer, &x).await.map(|p| p.value);
            let y1 = get(&*observer, &y).await.map(|p| p.value);
            let x2 = get(&*observer, &x).await.map(|p| p.value);
            if x1 == x2 {
                assert_eq!(
                    x1, y1,
                    "round {round}: a transaction cut short was applied by halves"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the pair never settles"
            );
        }
    }
    println!("txn_all_or_nothing: {cut} of 30 transactions cut short (typical {typical:?})");
}

/// A committed transaction applies every operation, returns the new pair of every put in
/// operation order with `last_index` values that `get` reports and that CAS accepts, and its
/// deletes delete. Conditions-only and empty transactions succeed.
pub async fn txn_commits_every_operation(factory: &dyn StoreFactory) {
    let store = connect(factory).await;
    let observer = connect(factory).await;
    if lacks(&*store, &[Capability::Transactions]).await {
        return;
    }
    let dir = unique_prefix("txn_commits_every_operation");
    let (x, y, z) = (
        format!("{dir}/x"),
        format!("{dir}/y/deep"),
        format!("{dir}/z"),
    );
    put(&*store, &z, "to delete").await;
    let z_pair = get_some(&*store, &z).await;
    let pairs = store
        .transaction(
            Transaction::new()
                .when(Condition::absent(&x))
                .when(Condition::unchanged(&z_pair))
                .put(format!("/{y}/"), "y1", no_ttl())
                .delete(&z)
                .put(&x, Bytes::from_static(b"\x00x1\xff"), no_ttl())
                .delete(format!("{dir}/never-existed")),
        )
        .await
        .expect("a transaction whose conditions hold commits");
    let returned: Vec<(&str, &[u8])> = pairs
        .iter()
        .map(|p| (p.key.as_str(), p.value.as_ref()))
        .collect();
    assert_eq!(
        returned,
        vec![(y.as_str(), &b"y1"[..]), (x.as_str(), &b"\x00x1\xff"[..])],
        "one pair per put, in operation order, keys normalised"
    );
    for pair in &pairs {
        assert_eq!(
            &get_some(&*observer, &pair.key).await,
            pair,
            "get reports what the transaction returned"
        );
    }
    assert!(get(&*observer, &z).await.is_none(), "the delete applied");
    assert!(
        pairs[0].last_index > 0 && pairs[1].last_index > 0,
        "last_index is never 0"
    );

    // The returned indexes are valid for CAS, and every later write raises them.
    let x2 = observer
        .atomic_put(&x, "x2".into(), Some(&pairs[1]), no_ttl())
        .await
        .expect("CAS with the index a transaction returned");
    assert!(x2.last_index > pairs[1].last_index);
    let again = store
        .transaction(
            Transaction::new()
                .when(Condition::unchanged(&x2))
                .put(&x, "x3", no_ttl())
                .put(&z, "z again", no_ttl()),
        )
        .await
        .unwrap();
    assert!(again[0].last_index > x2.last_index, "strictly rising");
    assert!(
        again[1].last_index > z_pair.last_index,
        "rising across delete and re-create"
    );
    assert_condition_failed(
        store
            .transaction(
                Transaction::new()
                    .when(Condition::unchanged(&x2))
                    .put(&x, "x4", no_ttl()),
            )
            .await,
        "the index a transaction replaced is stale",
        0,
        &x,
        ConditionFailure::KeyModified,
    );
    assert_err(
        observer
            .atomic_put(&x, "x5".into(), Some(&x2), no_ttl())
            .await,
        "atomic_put with a pair replaced by a transaction",
        |e| matches!(e, Error::KeyModified { .. }),
    );

    // Conditions only: an atomic check of several keys.
    let checked = store
        .transaction(
            Transaction::new()
                .when(Condition::unchanged(&again[0]))
                .when(Condition::exists(&y))
                .when(Condition::absent(format!("{dir}/nothing"))),
        )
        .await
        .unwrap();
    assert!(checked.is_empty());
    assert!(
        store
            .transaction(Transaction::new())
            .await
            .unwrap()
            .is_empty(),
        "the empty transaction"
    );
    assert_eq!(
        snapshot(&*observer, &dir)
            .await
            .into_iter()
            .collect::<Vec<_>>(),
        vec![
            (x.clone(), Bytes::from("x3")),
            (y.clone(), Bytes::from("y1")),
            (z.clone(), Bytes::from("z again")),
        ]
    );
}

/// Several handles race transactions that move amounts between accounts, 1,000 committed
/// transfers in all: the total never changes and every handle's committed transfers are all
/// in the final balances (no lost update, no transfer applied twice or by halves).
pub async fn txn_bank_transfer_keeps_the_sum(factory: &dyn StoreFactory) {
    const ACCOUNTS: usize = 3;
    const CLIENTS: usize = 4;
    const TRANSFERS: usize = 1000;
    const START: i64 = 1000;
    let first = connect(factory).await;
    if lacks(&*first, &[Capability::Transactions]).await {
        return;
    }
    let dir = unique_prefix("txn_bank_transfer_keeps_the_sum");
    let accounts: Arc<Vec<String>> =
        Arc::new((0..ACCOUNTS).map(|i| format!("{dir}/acct{i}")).collect());
    for account in accounts.iter() {
        put(&*first, account, &START.to_string()).await;
    }
    let amount = |pair: &KvPair| -> i64 {
        std::str::from_utf8(&pair.value)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("corrupt balance in {pair:?}"))
    };
    let mut workers = Vec::new();
    for client in 0..CLIENTS {
        let store = connect(factory).await;
        let accounts = accounts.clone();
        workers.push(tokio::spawn(async move {
            // Net change this client committed to each account.
            let mut committed = vec![0i64; ACCOUNTS];
            let mut conflicts = 0u64;
            let mut done = 0;
            while done < TRANSFERS / CLIENTS {
                let (from, to, value) = {
                    let mut rng = rand::rng();
                    let from = rng.random_range(0..ACCOUNTS);
                    let to = (from + rng.random_range(1..ACCOUNTS)) % ACCOUNTS;
                    (from, to, rng.random_range(1..=50i64))
                };
                let a = get_some(&*store, &accounts[from]).await;
                let b = get_some(&*store, &accounts[to]).await;
                let txn = Transaction::new()
                    .when(Condition::unchanged(&a))
                    .when(Condition::unchanged(&b))
                    .put(
                        &a.key,
                        (amount(&a) - value).to_string(),
                        WriteOptions::default(),
                    )
                    .put(
                        &b.key,
                        (amount(&b) + value).to_string(),
                        WriteOptions::default(),
                    );
                match store.transaction(txn).await {
                    Ok(pairs) => {
                        assert_eq!(pairs.len(), 2, "client {client}: two pairs");
                        committed[from] -= value;
                        committed[to] += value;
                        done += 1;
                    }
                    Err(Error::ConditionFailed {
                        reason: ConditionFailure::KeyModified,
                        ..
                    }) => conflicts += 1,
                    Err(e) => panic!("client {client}: unexpected transaction error: {e}"),
                }
            }
            (committed, conflicts)
        }));
    }
    let mut expected = vec![START; ACCOUNTS];
    for worker in workers {
        let (committed, _conflicts) = worker.await.expect("a transfer client panicked");
        for (total, change) in expected.iter_mut().zip(committed) {
            *total += change;
        }
    }
    let mut balances = Vec::new();
    for account in accounts.iter() {
        balances.push(amount(&get_some(&*first, account).await));
    }
    assert_eq!(
        balances.iter().sum::<i64>(),
        START * ACCOUNTS as i64,
        "money was created or destroyed: {balances:?}"
    );
    assert_eq!(
        balances, expected,
        "the balances must be exactly the committed transfers (a lost or half-applied update)"
    );
}

/// The fencing scenario from Kleppmann's "How to do distributed locking", executed: a holder
/// whose lock was taken over (its key deleted, then re-acquired by another client) has its
/// guarded write refused and nothing written; the new holder's succeeds. The check happens on
/// the server: a third handle that never held the lock can fence with the token, and a wrong
/// token is refused even while the lock is held.
pub async fn txn_fenced_write_refused_after_takeover(factory: &dyn StoreFactory) {
    let old = connect(factory).await;
    let new = connect(factory).await;
    let third = connect(factory).await;
    if lacks(&*old, &[Capability::Transactions, Capability::Locks]).await {
        return;
    }
    let caps = old.capabilities().clone();
    let p = unique_prefix("txn_fenced_write_refused_after_takeover");
    let (lock_key, resource) = (format!("{p}/leader"), format!("{p}/resource"));
    let options = LockOptions::default().value("holder").ttl(lock_ttl(&caps));
    let mut old_lock = old.new_lock(&lock_key, options.clone()).await.unwrap();
    let old_lease = old_lock.lock().await.unwrap();
    assert_eq!(old_lease.key(), lock_key);
    let first = old_lease
        .guarded_put(&*old, &resource, "written by the first holder", no_ttl())
        .await
        .expect("a guarded write while the lock is held");
    assert_eq!(get_some(&*third, &resource).await, first);

    // Another handle can fence with the token (the server checks it, not the local lease)…
    let fenced = Transaction::new()
        .when(Condition::LockHeld {
            key: lock_key.clone(),
            fencing_token: old_lease.fencing_token(),
        })
        .put(&resource, "written by a third handle", no_ttl());
    third
        .transaction(fenced)
        .await
        .expect("the token of the live holder is accepted from any handle");
    // …and a token that is not the holder's is refused while the lock is held.
    for wrong in [
        old_lease.fencing_token() + 1,
        old_lease.fencing_token().saturating_sub(1).max(1),
    ] {
        if wrong == old_lease.fencing_token() {
            continue;
        }
        let txn = Transaction::new()
            .when(Condition::LockHeld {
                key: lock_key.clone(),
                fencing_token: wrong,
            })
            .put(&resource, "stale", no_ttl());
        assert_condition_failed(
            third.transaction(txn).await,
            "a token other than the holder's",
            0,
            &lock_key,
            ConditionFailure::LockLost,
        );
    }

    // The lock is taken over: its key deleted (as an expiry would), then acquired by `new`.
    assert!(third.delete(&lock_key).await.unwrap());
    let mut new_lock = new.new_lock(&lock_key, options).await.unwrap();
    let new_lease = timeout(EVENT_TIMEOUT, new_lock.lock())
        .await
        .expect("the new holder acquires")
        .unwrap();
    assert!(new_lease.fencing_token() > old_lease.fencing_token());
    let before = get_some(&*third, &resource).await;
    assert_err(
        old_lease
            .guarded_put(&*old, &resource, "written by the stale holder", no_ttl())
            .await,
        "the stale holder's guarded write",
        |e| matches!(e, Error::LockLost { key } if *key == lock_key),
    );
    assert_err(
        old_lease.guarded_delete(&*old, &resource).await,
        "the stale holder's guarded delete",
        |e| matches!(e, Error::LockLost { .. }),
    );
    assert_eq!(
        get_some(&*third, &resource).await,
        before,
        "the stale holder wrote nothing"
    );
    let accepted = new_lease
        .guarded_put(&*new, &resource, "written by the new holder", no_ttl())
        .await
        .expect("the new holder's guarded write");
    assert_eq!(get_some(&*third, &resource).await, accepted);

    // After release, the lease fences nothing any more.
    new_lock.unlock().await.unwrap();
    assert_err(
        new_lease
            .guarded_put(&*new, &resource, "after unlock", no_ttl())
            .await,
        "a guarded write after unlock",
        |e| matches!(e, Error::LockLost { .. }),
    );
    assert_eq!(get_some(&*third, &resource).await, accepted);
    let _ = old_lock.unlock().await;
}

/// A watch on a key a transaction writes sees one change per transaction; `watch_tree` sees
/// the keys of one transaction together in one snapshot where the backend declares it
/// ([`Capabilities::watch_tree_sees_whole_transactions`](kv_core::Capabilities)) and always
/// reaches the final state.
pub async fn txn_watch_sees_one_change_per_transaction(factory: &dyn StoreFactory) {
    const ROUNDS: usize = 20;
    let store = connect(factory).await;
    let watcher = connect(factory).await;
    if lacks(
        &*store,
        &[
            Capability::Transactions,
            Capability::Watch,
            Capability::WatchTree,
        ],
    )
    .await
    {
        return;
    }
    let whole = store.capabilities().watch_tree_sees_whole_transactions;
    let dir = unique_prefix("txn_watch_sees_one_change_per_transaction");
    let (a, b) = (format!("{dir}/a"), format!("{dir}/b"));

    let mut key_events = watcher.watch(&a, ReadOptions::default()).await.unwrap();
    assert_eq!(
        next_item(&mut key_events, "initial state").await.unwrap(),
        None
    );
    let pairs = store
        .transaction(
            Transaction::new()
                .put(&a, "1", no_ttl())
                .put(&b, "1", no_ttl()),
        )
        .await
        .unwrap();
    let seen = next_item(&mut key_events, "the transaction's write")
        .await
        .unwrap();
    assert_eq!(seen.as_ref(), Some(&pairs[0]));
    store
        .transaction(Transaction::new().delete(&a).put(&b, "2", no_ttl()))
        .await
        .unwrap();
    assert_eq!(
        next_item(&mut key_events, "the transaction's delete")
            .await
            .unwrap(),
        None
    );
    put(&*store, &a, "sentinel").await;
    let next = next_item(&mut key_events, "the write after the transactions")
        .await
        .unwrap();
    assert_eq!(
        next.map(|p| p.value),
        Some(Bytes::from("sentinel")),
        "each transaction is one change of the key, not one per operation"
    );
    drop(key_events);

    let mut tree = watcher
        .watch_tree(&dir, ReadOptions::default())
        .await
        .unwrap();
    let values = |snapshot: &[KvPair]| -> Vec<(String, Bytes)> {
        snapshot
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect()
    };
    next_item(&mut tree, "initial snapshot").await.unwrap();
    for round in 0..ROUNDS {
        let v = round.to_string();
        store
            .transaction(Transaction::new().put(&a, v.clone(), no_ttl()).put(
                &b,
                v.clone(),
                no_ttl(),
            ))
            .await
            .unwrap();
        let wanted = vec![
            (a.clone(), Bytes::from(v.clone())),
            (b.clone(), Bytes::from(v)),
        ];
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let snapshot = timeout(
                deadline - Instant::now(),
                futures::StreamExt::next(&mut tree),
            )
            .await
            .unwrap_or_else(|_| panic!("round {round}: the final state was never reported"))
            .expect("the stream ended")
            .unwrap();
            let got = values(&snapshot);
            if got == wanted {
                break;
            }
            if whole {
                panic!(
                    "round {round}: a snapshot with part of a transaction: {got:?} (the backend declares watch_tree_sees_whole_transactions)"
                );
            }
        }
    }
}

/// TTLs in transactions: a put with a TTL expires for every reader on time; a put without
/// one makes a TTL key permanent again.
pub async fn txn_ttl_in_transactions(factory: &dyn StoreFactory) {
    let store = connect(factory).await;
    let reader = connect(factory).await;
    if lacks(&*store, &[Capability::Transactions, Capability::Ttl]).await {
        return;
    }
    let caps = store.capabilities().clone();
    let ttl = key_ttl(&caps);
    let dir = unique_prefix("txn_ttl_in_transactions");
    let (short, kept, plain) = (
        format!("{dir}/short"),
        format!("{dir}/kept"),
        format!("{dir}/plain"),
    );
    store
        .put(&kept, "ttl at first".into(), WriteOptions::with_ttl(ttl))
        .await
        .unwrap();
    let started = Instant::now();
    store
        .transaction(
            Transaction::new()
                .put(&short, "expires", WriteOptions::with_ttl(ttl))
                .put(&kept, "now permanent", no_ttl())
                .put(&plain, "permanent", no_ttl()),
        )
        .await
        .unwrap();
    assert!(get(&*reader, &short).await.is_some());
    let bound = expiry_bound(&caps, ttl);
    eventually(bound, "a TTL put in a transaction expires", || async {
        get(&*reader, &short).await.is_none()
    })
    .await;
    let remaining =
        (started + bound + Duration::from_millis(300)).saturating_duration_since(Instant::now());
    sleep(remaining).await;
    assert!(
        get(&*reader, &kept).await.is_some(),
        "a transaction's put without TTL makes the key permanent"
    );
    assert!(get(&*reader, &plain).await.is_some());
}

/// What a transaction refuses before sending anything: too many conditions plus operations,
/// a key written twice or checked twice, invalid keys, oversized values, bad TTLs; and after
/// `close`, `Closed`. Exactly the declared limit is accepted.
pub async fn txn_limits_and_invalid_input(factory: &dyn StoreFactory) {
    let store = connect(factory).await;
    let observer = connect(factory).await;
    if lacks(&*store, &[Capability::Transactions]).await {
        return;
    }
    let caps = store.capabilities().clone();
    assert!(
        caps.max_transaction_ops >= 16,
        "max_transaction_ops {} is too small to be useful",
        caps.max_transaction_ops
    );
    let dir = unique_prefix("txn_limits_and_invalid_input");
    let key = |i: usize| format!("{dir}/k{i:04}");

    // Exactly the limit commits: one condition and the rest puts.
    let full = (1..caps.max_transaction_ops).fold(
        Transaction::new().when(Condition::absent(format!("{dir}/guard"))),
        |t, i| t.put(key(i), "v", no_ttl()),
    );
    let pairs = store
        .transaction(full)
        .await
        .expect("a transaction of exactly max_transaction_ops commits");
    assert_eq!(pairs.len(), caps.max_transaction_ops - 1);
    assert_eq!(
        list_keys(&*observer, &dir).await.len(),
        caps.max_transaction_ops - 1
    );
    store.delete_tree(&dir).await.unwrap();

    let over = (0..=caps.max_transaction_ops)
        .fold(Transaction::new(), |t, i| t.put(key(i), "v", no_ttl()));
    assert_err(
        store.transaction(over).await,
        "one more than max_transaction_ops",
        |e| matches!(e, Error::InvalidOption(_)),
    );
    let twice = Transaction::new()
        .put(key(1), "v", no_ttl())
        .delete(format!("/{}/", key(1)));
    assert_err(store.transaction(twice).await, "a key written twice", |e| {
        matches!(e, Error::InvalidOption(_))
    });
    let checked_twice = Transaction::new()
        .when(Condition::absent(key(1)))
        .when(Condition::exists(key(1)))
        .put(key(2), "v", no_ttl());
    assert_err(
        store.transaction(checked_twice).await,
        "a key checked twice",
        |e| matches!(e, Error::InvalidOption(_)),
    );
    for bad in [
        format!("{dir}//x"),
        format!("{dir}/../x"),
        format!("{dir}/a\u{7}"),
    ] {
        assert_err(
            store
                .transaction(
                    Transaction::new()
                        .put(key(1), "v", no_ttl())
                        .put(&bad, "v", no_ttl()),
                )
                .await,
            "an invalid key among the operations",
            |e| matches!(e, Error::InvalidKey { .. }),
        );
        assert_err(
            store
                .transaction(Transaction::new().when(Condition::exists(&bad)).put(
                    key(1),
                    "v",
                    no_ttl(),
                ))
                .await,
            "an invalid key among the conditions",
            |e| matches!(e, Error::InvalidKey { .. }),
        );
    }
    assert_err(
        store
            .transaction(Transaction::new().put(key(1), "v", no_ttl()).put(
                key(2),
                vec![7u8; caps.max_value_len + 1],
                no_ttl(),
            ))
            .await,
        "an oversized value",
        |e| matches!(e, Error::ValueTooLarge { .. }),
    );
    if caps.ttl && caps.min_ttl > Duration::from_millis(1) {
        assert_err(
            store
                .transaction(Transaction::new().put(
                    key(1),
                    "v",
                    WriteOptions::with_ttl(caps.min_ttl - Duration::from_millis(1)),
                ))
                .await,
            "a TTL below min_ttl",
            |e| matches!(e, Error::InvalidOption(_)),
        );
    }
    assert!(
        list_keys(&*observer, &dir).await.is_empty(),
        "refused transactions wrote nothing"
    );

    store.close().await.unwrap();
    assert_err(
        store
            .transaction(Transaction::new().put(key(1), "v", no_ttl()))
            .await,
        "a transaction after close",
        |e| matches!(e, Error::Closed),
    );
    assert!(list_keys(&*observer, &dir).await.is_empty());
}
