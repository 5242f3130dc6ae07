//! The conformance cases. Each is a public async function taking a [`StoreFactory`]; each
//! panics (fails) on the first broken rule, naming it. Every case writes only below its own
//! unique prefix, so all of them can run at once against one server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kv_core::{Error, KvPair, LockOptions, LockState, ReadOptions, WriteOptions};
use tokio::time::{Instant, sleep, timeout};

use crate::StoreFactory;
use crate::support::*;

mod txn;
pub use txn::*;

/// Put, get, exists and delete on plain keys, keys with trailing and leading slashes and keys
/// below a directory that does not exist yet (valkeyrie's testPutGetDeleteExists).
pub async fn put_get_delete_exists(factory: &dyn StoreFactory) {
    let store = connect(factory).await;
    let p = unique_prefix("put_get_delete_exists");
    assert_eq!(
        get(&*store, &format!("{p}/never-written")).await,
        None,
        "absent key must be None"
    );
    assert!(
        !store
            .exists(&format!("{p}/never-written"), ReadOptions::default())
            .await
            .unwrap()
    );
    assert!(
        !store.delete(&format!("{p}/never-written")).await.unwrap(),
        "deleting an absent key is Ok(false)"
    );

    let keys = [
        p.clone(),
        format!("{p}/"),
        format!("{p}/testbar/"),
        format!("{p}/testbar/testfoobar"),
    ];
    for key in &keys {
        put(&*store, key, "bar").await;
        let pair = get_some(&*store, key).await;
        assert_eq!(pair.value, Bytes::from("bar"), "{key}");
        assert_eq!(
            pair.key,
            key.trim_end_matches('/'),
            "the key comes back normalised"
        );
        assert_ne!(pair.last_index, 0, "last_index is never 0");
        assert!(
            store.exists(key, ReadOptions::default()).await.unwrap(),
            "{key} exists"
        );
        assert!(
            store.delete(key).await.unwrap(),
            "deleting {key} reports it existed"
        );
        assert_eq!(get(&*store, key).await, None, "{key} deleted");
        assert!(!store.exists(key, ReadOptions::default()).await.unwrap());
    }

    // Leading and trailing slashes name the same key.
    put(&*store, &format!("/{p}/slashes/"), "one").await;
    assert_eq!(
        get_some(&*store, &format!("{p}/slashes")).await.value,
        Bytes::from("one")
    );
    assert!(store.delete(&format!("{p}/slashes/")).await.unwrap());
}

/// Values are bytes: empty, binary, every byte value, and reasonably large ones.
pub async fn values_are_binary_safe(factory: &dyn StoreFactory) {
    let store = connect(factory).await;
    let p = unique_prefix("values_are_binary_safe");
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let cases = [
        Bytes::new(),
        Bytes::from(all_bytes),
        Bytes::from(big),
        Bytes::from("\u{1F600} ünïcode"),
    ];
    for (i, value) in cases.iter().enumerate() {
        let key = format!("{p}/v{i}");
        store
            .put(&key, value.clone(), WriteOptions::default())
            .await
            .unwrap();
        assert_eq!(
            &get_some(&*store, &key).await.value,
            value,
            "value {i} round-trips"
        );
    }
    // An empty value really replaces a previous one.
    let key = format!("{p}/v0");
    put(&*store, &key, "something").await;
    store
        .put(&key, Bytes::new(), WriteOptions::default())
        .await
        .unwrap();
    assert!(
        get_some(&*store, &key).await.value.is_empty(),
        "an empty value overwrites"
    );
}

/// Keys with characters that need escaping in URLs, glob patterns or paths.
pub async fn special_characters_in_keys(factory: &dyn StoreFactory) {
    let store = connect(factory).await;
    let p = unique_prefix("special_characters_in_keys");
    let names = [
        "space here",
        "q?x",
        "hash#x",
        "pct%20x",
        "plus+x",
        "star*",
        "br[a]ce",
        "back\\slash",
        "ünï😀",
        "a=b&c",
        "dot.file",
        "..x",
        "x..",
        // Letters, marks and symbols of several scripts and planes.
        "e\u{301}",
        "日本語",
        "عربي",
        "\u{20000}x",
        "€~^`|",
    ];
    for name in names {
        put(&*store, &format!("{p}/{name}"), name).await;
    }
    for name in names {
        let pair = get_some(&*store, &format!("{p}/{name}")).await;
        assert_eq!(pair.value, Bytes::from(name), "{name}");
        assert_eq!(pair.key, format!("{p}/{name}"));
    }
    let mut expected: Vec<String> = names.iter().map(|n| format!("{p}/{n}")).collect();
    expected.sort();
    assert_eq!(
        list_keys(&*store, &p).await,
        expected,
        "listing of escaped names"
    );
    // A glob-like directory name lists only itself.
    put(&*store, &format!("{p}/star*/child"), "c").await;
    put(&*store, &format!("{p}/starX/child"), "c").await;
    assert_eq!(
        list_keys(&*store, &format!("{p}/star*")).await,
        vec![format!("{p}/star*/child")]
    );
}

/// `last_index` is never 0 and strictly rises on every write, across delete and re-create.
pub async fn last_index_rises_on_every_write(factory: &dyn StoreFactory) {
    let a = connect(factory).await;
    let b = connect(factory).await;
    let key = format!("{}/k", unique_prefix("last_index_rises_on_every_write"));
    let mut last = 0;
    for round in 0..3 {
        for (i, store) in [&a, &b, &a].into_iter().enumerate() {
            put(&**store, &key, "same value").await;
            let pair = get_some(&*b, &key).await;
            assert!(
                pair.last_index > last,
                "round {round} write {i}: {} is not above {last}",
                pair.last_index
            );
            last = pair.last_index;
        }
        assert!(a.delete(&key).await.unwrap());
    }
    let created = a
        .atomic_put(&key, "x".into(), None, WriteOptions::default())
        .await
        .unwrap();
    assert!(
        created.last_index > last,
        "re-create through atomic_put rises too"
    );
}

/// A key can hold a value and have children; deleting it keeps the children.
pub async fn key_is_also_a_directory(factory: &dyn StoreFactory) {
    let store = connect(factory).await;
    let p = unique_prefix("key_is_also_a_directory");
    let parent = format!("{p}/d");
    let child = format!("{p}/d/c");
    put(&*store, &child, "child").await;
    assert_eq!(
        get(&*store, &parent).await,
        None,
        "writing d/c does not create d"
    );
    assert_eq!(
        list_keys(&*store, &p).await,
        vec![child.clone()],
        "only written keys are listed"
    );
    put(&*store, &parent, "parent").await;
    assert_eq!(
        get_some(&*store, &parent).await.value,
        Bytes::from("parent")
    );
    assert_eq!(
        list_keys(&*store, &p).await,
        vec![parent.clone(), child.clone()]
    );
    assert!(store.delete(&parent).await.unwrap());
    assert_eq!(
        get_some(&*store, &child).await.value,
        Bytes::from("child"),
        "delete is not recursive"
    );
    assert!(store.delete(&child).await.unwrap());
    put(&*store, &parent, "again").await;
    assert_eq!(list_keys(&*store, &p).await, vec![parent.clone()]);
    assert_eq!(
        list_keys(&*store, &parent).await,
        Vec::<String>::new(),
        "a leaf has no children"
    );
}

/// `list` is recursive, sorted, path-aware and excludes the directory itself
/// (valkeyrie's testList, with `List("abc")` never returning `abcd/x`).
pub async fn list_is_recursive_sorted_and_path_aware(factory: &dyn StoreFactory) {
    let store = connect(factory).await;
    let p = unique_prefix("list_is_recursive_sorted_and_path_aware");
    let dir = format!("{p}/testList");
    put(&*store, &dir, "").await;
    put(&*store, &format!("{dir}/child"), "first").await;
    put(&*store, &format!("{dir}/subfolder"), "second").await;
    for k in ["key3", "key1", "key2"] {
        put(&*store, &format!("{dir}/subfolder/{k}"), "value").await;
    }
    put(&*store, &format!("{dir}x/sibling"), "not mine").await;
    put(&*store, &format!("{dir}-y"), "not mine").await;

    let expected = vec![
        format!("{dir}/child"),
        format!("{dir}/subfolder"),
        format!("{dir}/subfolder/key1"),
        format!("{dir}/subfolder/key2"),
        format!("{dir}/subfolder/key3"),
    ];
    assert_eq!(list_keys(&*store, &dir).await, expected, "list(dir)");
    assert_eq!(
        list_keys(&*store, &format!("{dir}/")).await,
        expected,
        "list(dir/)"
    );
    assert_eq!(
        list_keys(&*store, &format!("/{dir}")).await,
        expected,
        "list(/dir)"
    );
    let pairs = store.list(&dir, ReadOptions::default()).await.unwrap();
    assert_eq!(pairs[0].value, Bytes::from("first"));
    assert_eq!(pairs[1].value, Bytes::from("second"));
    for pair in &pairs {
        assert_eq!(
            Some(pair),
            get(&*store, &pair.key).await.as_ref(),
            "listed pair equals get"
        );
    }
    assert!(
        list_keys(&*store, &format!("{dir}/child")).await.is_empty(),
        "a leaf lists empty"
    );
    assert_eq!(
        list_keys(&*store, &format!("{dir}/subfolder")).await.len(),
        3
    );
    assert!(
        list_keys(&*store, &format!("{p}/idontexist"))
            .await
            .is_empty(),
        "missing dir lists empty"
    );
    assert!(
        list_keys(&*store, &format!("{p}/testLis")).await.is_empty(),
        "a name prefix is not a directory"
    );
    let stale = store.list(&dir, ReadOptions::stale()).await.unwrap();
    assert!(
        stale.len() <= expected.len(),
        "a stale listing never invents keys"
    );
}

/// `delete_tree` removes the directory and all below it, nothing else; a missing one is Ok.
pub async fn delete_tree_scope(factory: &dyn StoreFactory) {
    let store = connect(factory).await;
    let p = unique_prefix("delete_tree_scope");
    let dir = format!("{p}/testDeleteTree");
    for k in [
        dir.clone(),
        format!("{dir}/first"),
        format!("{dir}/second"),
        format!("{dir}/deep/er/key"),
    ] {
        put(&*store, &k, "v").await;
    }
    put(&*store, &format!("{dir}x/keep"), "sibling").await;
    put(&*store, &format!("{p}/testDeleteTreeKeep"), "sibling").await;
    store.delete_tree(&dir).await.unwrap();
    for k in [
        dir.clone(),
        format!("{dir}/first"),
        format!("{dir}/second"),
        format!("{dir}/deep/er/key"),
    ] {
        assert_eq!(get(&*store, &k).await, None, "{k} deleted by delete_tree");
    }
    assert!(list_keys(&*store, &dir).await.is_empty());
    assert_eq!(
        list_keys(&*store, &p).await,
        vec![format!("{p}/testDeleteTreeKeep"), format!("{dir}x/keep")]
    );
    store
        .delete_tree(&dir)
        .await
        .expect("delete_tree of a missing directory is Ok");
    store
        .delete_tree(&format!("{p}/never"))
        .await
        .expect("delete_tree of a missing directory is Ok");
}

/// Create-only `atomic_put` (valkeyrie's testAtomicPutCreate and testAtomicPutWithSlashSuffixKey).
pub async fn atomic_put_create_only(factory: &dyn StoreFactory) {
    let store = connect(factory).await;
    let p = unique_prefix("atomic_put_create_only");
    let key = format!("{p}/create/key");
    let created = store
        .atomic_put(&key, "putcreate".into(), None, WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(created.key, key);
    assert_eq!(created.value, Bytes::from("putcreate"));
    let read = get_some(&*store, &key).await;
    assert_eq!(read, created, "the returned pair is what get reports");
    assert_err(
        store
            .atomic_put(&key, "again".into(), None, WriteOptions::default())
            .await,
        "create-only on an existing key",
        |e| matches!(e, Error::KeyExists { .. }),
    );
    assert_eq!(
        get_some(&*store, &key).await,
        read,
        "a failed create changes nothing"
    );
    let updated = store
        .atomic_put(
            &key,
            "PUTCREATE".into(),
            Some(&read),
            WriteOptions::default(),
        )
        .await
        .unwrap();
    assert!(updated.last_index > read.last_index);
    let slash = store
        .atomic_put(
            &format!("{p}/slash/key/"),
            Bytes::new(),
            None,
            WriteOptions::default(),
        )
        .await
        .expect("create-only with a trailing slash, empty value and absent parent");
    assert_eq!(slash.key, format!("{p}/slash/key"));
    assert!(slash.value.is_empty());
}

/// Compare-and-swap `atomic_put`: success, stale index, absent key, another client's write
/// (valkeyrie's testAtomicPut).
pub async fn atomic_put_compare_and_swap(factory: &dyn StoreFactory) {
    let a = connect(factory).await;
    let b = connect(factory).await;
    let key = format!("{}/cas", unique_prefix("atomic_put_compare_and_swap"));
    put(&*a, &key, "world").await;
    let pair = get_some(&*a, &key).await;
    let swapped = a
        .atomic_put(&key, "WORLD".into(), Some(&pair), WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(swapped.value, Bytes::from("WORLD"));
    assert!(swapped.last_index > pair.last_index);
    assert_eq!(
        get_some(&*b, &key).await,
        swapped,
        "the other client reads the returned pair"
    );

    let mut stale = swapped.clone();
    stale.last_index = 6744;
    for previous in [&stale, &pair] {
        assert_err(
            a.atomic_put(
                &key,
                "WORLDWORLD".into(),
                Some(previous),
                WriteOptions::default(),
            )
            .await,
            "CAS with a stale index",
            |e| matches!(e, Error::KeyModified { .. }),
        );
    }
    put(&*b, &key, "by b").await;
    assert_err(
        a.atomic_put(&key, "lost".into(), Some(&swapped), WriteOptions::default())
            .await,
        "CAS after another client's write",
        |e| matches!(e, Error::KeyModified { .. }),
    );
    assert_eq!(
        get_some(&*a, &key).await.value,
        Bytes::from("by b"),
        "failed CAS writes nothing"
    );
    let current = get_some(&*a, &key).await;
    assert!(a.delete(&key).await.unwrap());
    assert_err(
        a.atomic_put(&key, "gone".into(), Some(&current), WriteOptions::default())
            .await,
        "CAS on a deleted key",
        |e| matches!(e, Error::KeyNotFound { .. }),
    );
    assert_eq!(
        get(&*a, &key).await,
        None,
        "failed CAS does not create the key"
    );
}

/// `atomic_delete`: stale index, success, absent (valkeyrie's testAtomicDelete).
pub async fn atomic_delete_outcomes(factory: &dyn StoreFactory) {
    let store = connect(factory).await;
    let key = format!("{}/del", unique_prefix("atomic_delete_outcomes"));
    put(&*store, &key, "world").await;
    let pair = get_some(&*store, &key).await;
    let mut stale = pair.clone();
    stale.last_index = 6744;
    assert_err(
        store.atomic_delete(&key, &stale).await,
        "stale atomic_delete",
        |e| matches!(e, Error::KeyModified { .. }),
    );
    assert_eq!(
        get_some(&*store, &key).await,
        pair,
        "a failed atomic_delete leaves the key"
    );
    store
        .atomic_delete(&key, &pair)
        .await
        .expect("atomic_delete with the current pair");
    assert_eq!(get(&*store, &key).await, None);
    assert_err(
        store.atomic_delete(&key, &pair).await,
        "atomic_delete of an absent key",
        |e| matches!(e, Error::KeyNotFound { .. }),
    );
    put(&*store, &key, "again").await;
    assert_err(
        store.atomic_delete(&key, &pair).await,
        "atomic_delete with the pair of a previous life",
        |e| matches!(e, Error::KeyModified { .. }),
    );
    // A pair at the very top of the index range is a stale pair like any other: indexes are
    // compared, never incremented (an overflow panicked on one backend).
    let mut top = get_some(&*store, &key).await;
    top.last_index = u64::MAX;
    assert_err(
        store.atomic_delete(&key, &top).await,
        "atomic_delete with last_index u64::MAX",
        |e| matches!(e, Error::KeyModified { .. }),
    );
    assert_err(
        store
            .atomic_put(&key, "w".into(), Some(&top), WriteOptions::default())
            .await,
        "atomic_put with last_index u64::MAX",
        |e| matches!(e, Error::KeyModified { .. }),
    );
    let absent = format!("{key}-absent");
    top.key = absent.clone();
    assert_err(
        store.atomic_delete(&absent, &top).await,
        "atomic_delete of an absent key with last_index u64::MAX",
        |e| matches!(e, Error::KeyNotFound { .. }),
    );
    assert_err(
        store
            .atomic_put(&absent, "w".into(), Some(&top), WriteOptions::default())
            .await,
        "atomic_put of an absent key with last_index u64::MAX",
        |e| matches!(e, Error::KeyNotFound { .. }),
    );
}

/// Two clients incrementing one counter through get + atomic_put never lose an update.
pub async fn cas_race_loses_no_update(factory: &dyn StoreFactory) {
    const PER_CLIENT: u64 = 25;
    let key = format!("{}/counter", unique_prefix("cas_race_loses_no_update"));
    let first = connect(factory).await;
    first
        .atomic_put(&key, "0".into(), None, WriteOptions::default())
        .await
        .unwrap();
    let mut workers = Vec::new();
    for _ in 0..2 {
        let store = connect(factory).await;
        let key = key.clone();
        workers.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for _ in 0..PER_CLIENT {
                loop {
                    let pair = get_some(&*store, &key).await;
                    let n: u64 = std::str::from_utf8(&pair.value).unwrap().parse().unwrap();
                    match store
                        .atomic_put(
                            &key,
                            (n + 1).to_string().into(),
                            Some(&pair),
                            WriteOptions::default(),
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(Error::KeyModified { .. }) => conflicts += 1,
                        Err(e) => panic!("unexpected CAS error: {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let total = get_some(&*first, &key).await.value;
    assert_eq!(
        total,
        Bytes::from((2 * PER_CLIENT).to_string()),
        "no increment may be lost"
    );
}

/// Invalid keys and directories are `InvalidKey` on every call, before anything is sent.
pub async fn invalid_keys_are_rejected(factory: &dyn StoreFactory) {
    let store = connect(factory).await;
    let caps = store.capabilities().clone();
    let long = format!("k/{}", "x".repeat(caps.max_key_len));
    let bad_keys = [
        "",
        "/",
        "a//b",
        "a/./b",
        "a/../b",
        "..",
        "a\nb",
        "tab\there",
        "nul\u{0}",
        "x/__kvinternal",
        long.as_str(),
        // Separators other than the space, format characters, private use, unassigned code
        // points: some servers refuse them (Consul: HTTP 400), so every backend does.
        "nbsp\u{A0}x",
        "soft\u{AD}hyphen",
        "zwj\u{200D}x",
        "line\u{2028}sep",
        "rtl\u{202E}x",
        "ideographic\u{3000}space",
        "bom\u{FEFF}x",
        "tag\u{E0001}x",
        "private\u{F0000}x",
        "unassigned\u{378}x",
    ];
    let pair = KvPair::new("a", "b", 1);
    for key in bad_keys {
        let invalid = |e: &Error| matches!(e, Error::InvalidKey { .. });
        assert_err(
            store.put(key, "v".into(), WriteOptions::default()).await,
            &format!("put {key:?}"),
            invalid,
        );
        assert_err(
            store.get(key, ReadOptions::default()).await,
            &format!("get {key:?}"),
            invalid,
        );
        assert_err(store.delete(key).await, &format!("delete {key:?}"), invalid);
        assert_err(
            store.exists(key, ReadOptions::default()).await,
            &format!("exists {key:?}"),
            invalid,
        );
        assert_err(
            store
                .atomic_put(key, "v".into(), None, WriteOptions::default())
                .await,
            &format!("atomic_put {key:?}"),
            invalid,
        );
        assert_err(
            store.atomic_delete(key, &pair).await,
            &format!("atomic_delete {key:?}"),
            invalid,
        );
        if caps.watch {
            assert_err(
                store.watch(key, ReadOptions::default()).await.map(|_| ()),
                &format!("watch {key:?}"),
                invalid,
            );
        }
        if caps.locks {
            assert_err(
                store.new_lock(key, LockOptions::default()).await,
                &format!("new_lock {key:?}"),
                invalid,
            );
        }
        if !key.is_empty() && key != "/" {
            assert_err(
                store.list(key, ReadOptions::default()).await,
                &format!("list {key:?}"),
                invalid,
            );
            assert_err(
                store.delete_tree(key).await,
                &format!("delete_tree {key:?}"),
                invalid,
            );
            if caps.watch_tree {
                assert_err(
                    store
                        .watch_tree(key, ReadOptions::default())
                        .await
                        .map(|_| ()),
                    &format!("watch_tree {key:?}"),
                    invalid,
                );
            }
        }
    }
    // The declared limit is honest: a key of exactly max_key_len bytes works.
    let p = unique_prefix("invalid_keys_are_rejected");
    let at_limit = format!("{p}/{}", "k".repeat(caps.max_key_len - p.len() - 1));
    assert_eq!(at_limit.len(), caps.max_key_len);
    put(&*store, &at_limit, "fits").await;
    assert_eq!(
        get_some(&*store, &at_limit).await.value,
        Bytes::from("fits")
    );
    assert!(store.delete(&at_limit).await.unwrap());
}

/// Values above the declared limit are `ValueTooLarge` before anything is sent; values at a
/// large size below it work.
pub async fn oversized_values_are_rejected(factory: &dyn StoreFactory) {
    let store = connect(factory).await;
    let caps = store.capabilities().clone();
    let p = unique_prefix("oversized_values_are_rejected");
    let key = format!("{p}/big");
    // calloc'd and never touched: cheap even for large limits.
    let too_big = Bytes::from(vec![0u8; caps.max_value_len + 1]);
    let too_large = |e: &Error| matches!(e, Error::ValueTooLarge { .. });
    assert_err(
        store
            .put(&key, too_big.clone(), WriteOptions::default())
            .await,
        "put over the limit",
        too_large,
    );
    assert_err(
        store
            .atomic_put(&key, too_big.clone(), None, WriteOptions::default())
            .await,
        "atomic_put over the limit",
        too_large,
    );
    if caps.locks {
        let options = LockOptions::default().value(too_big.clone());
        assert_err(
            store.new_lock(&key, options).await,
            "lock value over the limit",
            too_large,
        );
    }
    drop(too_big);
    assert_eq!(get(&*store, &key).await, None, "nothing was written");
    let size = caps.max_value_len.min(4 * 1024 * 1024);
    let fits: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
    store
        .put(&key, fits.clone().into(), WriteOptions::default())
        .await
        .expect("a value at the limit fits");
    assert_eq!(get_some(&*store, &key).await.value.len(), size);
}

/// A TTL key is visible to another client at once and gone for every reader after its TTL;
/// a later write without TTL makes a key permanent (valkeyrie's testPutTTL).
pub async fn ttl_expires_for_every_reader(factory: &dyn StoreFactory) {
    let writer = connect(factory).await;
    let reader = connect(factory).await;
    let caps = writer.capabilities().clone();
    let p = unique_prefix("ttl_expires_for_every_reader");
    if lacks(&*writer, &[Capability::Ttl]).await {
        return;
    }
    let ttl = key_ttl(&caps);
    let expiring = format!("{p}/expiring");
    let made_permanent = format!("{p}/permanent");
    let cas_expiring = format!("{p}/cas");
    let started = Instant::now();
    writer
        .put(&expiring, "foo".into(), WriteOptions::with_ttl(ttl))
        .await
        .unwrap();
    let seen = get(&*reader, &expiring).await;
    let checked_after = started.elapsed();
    assert_eq!(
        seen.map(|p| p.value),
        Some(Bytes::from("foo")),
        "visible to another client at once"
    );
    assert!(
        checked_after < ttl,
        "the check itself took {checked_after:?}, longer than the TTL"
    );
    writer
        .put(&made_permanent, "bar".into(), WriteOptions::with_ttl(ttl))
        .await
        .unwrap();
    writer
        .put(&made_permanent, "bar2".into(), WriteOptions::default())
        .await
        .unwrap();
    writer
        .atomic_put(
            &cas_expiring,
            "baz".into(),
            None,
            WriteOptions::with_ttl(ttl),
        )
        .await
        .unwrap();
    assert!(list_keys(&*reader, &p).await.contains(&made_permanent));

    sleep(expiry_bound(&caps, ttl).saturating_sub(started.elapsed())).await;
    assert_eq!(
        get(&*reader, &expiring).await,
        None,
        "expired for the reader"
    );
    assert_eq!(
        get(&*writer, &expiring).await,
        None,
        "expired for the writer"
    );
    assert_eq!(
        get(&*reader, &cas_expiring).await,
        None,
        "atomic_put honours the TTL"
    );
    assert!(
        !reader
            .exists(&expiring, ReadOptions::default())
            .await
            .unwrap()
    );
    assert_eq!(
        list_keys(&*reader, &p).await,
        vec![made_permanent.clone()],
        "expired keys are not listed"
    );
    assert_eq!(
        get_some(&*reader, &made_permanent).await.value,
        Bytes::from("bar2")
    );
    // An expired key is absent for conditional writes too.
    writer
        .atomic_put(&expiring, "new life".into(), None, WriteOptions::default())
        .await
        .expect("create-only over an expired key");
}

/// TTLs outside the declared range are rejected.
pub async fn ttl_range_is_checked(factory: &dyn StoreFactory) {
    let store = connect(factory).await;
    let caps = store.capabilities().clone();
    let key = format!("{}/k", unique_prefix("ttl_range_is_checked"));
    if lacks(&*store, &[Capability::Ttl]).await {
        return;
    }
    let invalid = |e: &Error| matches!(e, Error::InvalidOption(_));
    if caps.min_ttl > Duration::from_millis(1) {
        let short = caps.min_ttl - Duration::from_millis(1);
        assert_err(
            store
                .put(&key, "v".into(), WriteOptions::with_ttl(short))
                .await,
            "ttl below min_ttl",
            invalid,
        );
    }
    assert_err(
        store
            .put(&key, "v".into(), WriteOptions::with_ttl(Duration::ZERO))
            .await,
        "zero ttl",
        invalid,
    );
    let long = caps.max_ttl + Duration::from_secs(1);
    assert_err(
        store
            .put(&key, "v".into(), WriteOptions::with_ttl(long))
            .await,
        "ttl above max_ttl",
        invalid,
    );
    assert_eq!(get(&*store, &key).await, None);
}

/// Watch: the current value first, then one item per write with rising indexes, `None` on
/// delete, `Some` again on re-create (valkeyrie's testWatch, extended).
pub async fn watch_reports_every_change(factory: &dyn StoreFactory) {
    let store = connect(factory).await;
    let writer = connect(factory).await;
    let key = format!("{}/testWatch", unique_prefix("watch_reports_every_change"));
    if lacks(&*store, &[Capability::Watch]).await {
        return;
    }
    put(&*store, &key, "world").await;
    let mut events = store.watch(&key, ReadOptions::default()).await.unwrap();
    let first = next_item(&mut events, "initial state")
        .await
        .unwrap()
        .expect("the key exists");
    assert_eq!(
        (first.key.as_str(), first.value.as_ref()),
        (key.as_str(), b"world".as_ref())
    );
    let mut last = first.last_index;
    for round in 0..3 {
        put(&*writer, &key, "world!").await;
        let pair = next_item(&mut events, "a write")
            .await
            .unwrap()
            .expect("written");
        assert_eq!(pair.value, Bytes::from("world!"), "round {round}");
        assert!(
            pair.last_index > last,
            "indexes rise: {} after {last}",
            pair.last_index
        );
        last = pair.last_index;
    }
    assert!(writer.delete(&key).await.unwrap());
    assert_eq!(
        next_item(&mut events, "a delete").await.unwrap(),
        None,
        "deletion is None"
    );
    put(&*writer, &key, "back").await;
    let back = next_item(&mut events, "a re-create")
        .await
        .unwrap()
        .expect("re-created");
    assert_eq!(back.value, Bytes::from("back"));
    assert!(back.last_index > last);
    let pair = writer
        .atomic_put(&key, "cas".into(), Some(&back), WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(
        next_item(&mut events, "a CAS write").await.unwrap(),
        Some(pair)
    );
}

/// Watching a missing key starts with `None` and then sees it appear.
pub async fn watch_missing_key(factory: &dyn StoreFactory) {
    let store = connect(factory).await;
    if lacks(&*store, &[Capability::Watch]).await {
        return;
    }
    let key = format!("{}/later", unique_prefix("watch_missing_key"));
    let mut events = store.watch(&key, ReadOptions::default()).await.unwrap();
    assert_eq!(
        next_item(&mut events, "initial state").await.unwrap(),
        None,
        "absent key starts as None"
    );
    put(&*store, &format!("{key}/child"), "not me").await;
    put(&*store, &format!("{key}x"), "not me either").await;
    put(&*store, &key, "now").await;
    let pair = next_item(&mut events, "creation")
        .await
        .unwrap()
        .expect("created");
    assert_eq!(
        pair.value,
        Bytes::from("now"),
        "only the watched key is reported"
    );
}

/// A watched key that expires is reported as `None` within its TTL bound.
pub async fn watch_sees_expiry(factory: &dyn StoreFactory) {
    let store = connect(factory).await;
    let caps = store.capabilities().clone();
    if lacks(&*store, &[Capability::Watch, Capability::Ttl]).await {
        return;
    }
    let key = format!("{}/ephemeral", unique_prefix("watch_sees_expiry"));
    let ttl = key_ttl(&caps);
    let started = Instant::now();
    store
        .put(&key, "short".into(), WriteOptions::with_ttl(ttl))
        .await
        .unwrap();
    let mut events = store.watch(&key, ReadOptions::default()).await.unwrap();
    assert!(
        next_item(&mut events, "initial state")
            .await
            .unwrap()
            .is_some()
    );
    let bound = expiry_bound(&caps, ttl) + Duration::from_millis(500);
    let item = timeout(bound.saturating_sub(started.elapsed()), events.next())
        .await
        .unwrap_or_else(|_| panic!("expiry not reported within {bound:?}"));
    assert_eq!(item.expect("stream open").unwrap(), None, "expiry is None");
}

/// Many quick writes: a slow reader may see them coalesced but ends on the final value, and
/// never sees a value go backwards.
pub async fn watch_burst_ends_on_final_value(factory: &dyn StoreFactory) {
    let store = connect(factory).await;
    if lacks(&*store, &[Capability::Watch]).await {
        return;
    }
    let writer = connect(factory).await;
    let key = format!("{}/burst", unique_prefix("watch_burst_ends_on_final_value"));
    put(&*store, &key, "0").await;
    let mut events = store.watch(&key, ReadOptions::default()).await.unwrap();
    assert_eq!(
        next_item(&mut events, "initial")
            .await
            .unwrap()
            .unwrap()
            .value,
        Bytes::from("0")
    );
    for i in 1..=60 {
        put(&*writer, &key, &i.to_string()).await;
    }
    let mut last_seen = 0u64;
    let mut last_index = 0u64;
    let _ = until_item(
        &mut events,
        Duration::from_secs(15),
        "the final value",
        |item| {
            let pair = item
                .as_ref()
                .expect("no error")
                .as_ref()
                .expect("never deleted");
            let n: u64 = std::str::from_utf8(&pair.value).unwrap().parse().unwrap();
            assert!(
                n > last_seen && pair.last_index > last_index,
                "values never go backwards"
            );
            last_seen = n;
            last_index = pair.last_index;
            n == 60
        },
    )
    .await;
}

/// WatchTree: full sorted snapshots; adds, deletes and a child's value change are all seen
/// (valkeyrie's testWatchTree, plus docker/libkv#109).
pub async fn watch_tree_snapshots(factory: &dyn StoreFactory) {
    let store = connect(factory).await;
    let writer = connect(factory).await;
    let p = unique_prefix("watch_tree_snapshots");
    let dir = format!("{p}/testWatchTree");
    if lacks(&*store, &[Capability::WatchTree]).await {
        return;
    }
    for i in [3, 1, 2] {
        put(&*store, &format!("{dir}/node{i}"), &format!("node{i}")).await;
    }
    put(&*store, &dir, "the directory itself").await;
    let mut events = store
        .watch_tree(&dir, ReadOptions::default())
        .await
        .unwrap();
    let keys = |snapshot: &[KvPair]| snapshot.iter().map(|p| p.key.clone()).collect::<Vec<_>>();
    let first = next_item(&mut events, "initial snapshot").await.unwrap();
    assert_eq!(
        keys(&first),
        vec![
            format!("{dir}/node1"),
            format!("{dir}/node2"),
            format!("{dir}/node3")
        ]
    );
    assert_eq!(
        first,
        store.list(&dir, ReadOptions::default()).await.unwrap(),
        "shaped like list"
    );

    assert!(writer.delete(&format!("{dir}/node3")).await.unwrap());
    let after_delete = next_item(&mut events, "a child deleted").await.unwrap();
    assert_eq!(
        keys(&after_delete),
        vec![format!("{dir}/node1"), format!("{dir}/node2")]
    );

    put(&*writer, &format!("{dir}/node1"), "changed").await;
    let after_change = next_item(&mut events, "a child's value changed")
        .await
        .unwrap();
    assert_eq!(after_change[0].value, Bytes::from("changed"));

    put(&*writer, &format!("{dir}x/outside"), "ignored").await;
    put(&*writer, &format!("{dir}/sub/deep"), "nested").await;
    let after_nested = next_item(&mut events, "a nested child added")
        .await
        .unwrap();
    assert_eq!(
        keys(&after_nested),
        vec![
            format!("{dir}/node1"),
            format!("{dir}/node2"),
            format!("{dir}/sub/deep")
        ],
        "a sibling directory never appears"
    );
    writer.delete_tree(&dir).await.unwrap();
    let emptied = until_item(&mut events, EVENT_TIMEOUT, "the tree deleted", |s| {
        s.as_ref().is_ok_and(|s| s.is_empty())
    })
    .await;
    assert!(emptied.unwrap().is_empty());
}

/// WatchTree on a missing directory starts with an empty snapshot; a child's expiry is seen.
pub async fn watch_tree_missing_directory_and_expiry(factory: &dyn StoreFactory) {
    let store = connect(factory).await;
    let caps = store.capabilities().clone();
    if lacks(&*store, &[Capability::WatchTree]).await {
        return;
    }
    let dir = format!(
        "{}/tree",
        unique_prefix("watch_tree_missing_directory_and_expiry")
    );
    let mut events = store
        .watch_tree(&dir, ReadOptions::default())
        .await
        .unwrap();
    assert!(
        next_item(&mut events, "initial snapshot")
            .await
            .unwrap()
            .is_empty()
    );
    put(&*store, &format!("{dir}/a"), "a").await;
    let snapshot = next_item(&mut events, "a child created").await.unwrap();
    assert_eq!(snapshot.len(), 1);
    if caps.ttl {
        let ttl = key_ttl(&caps);
        store
            .put(&format!("{dir}/b"), "b".into(), WriteOptions::with_ttl(ttl))
            .await
            .unwrap();
        let started = Instant::now();
        let _ = until_item(&mut events, EVENT_TIMEOUT, "the TTL child", |s| {
            s.as_ref().is_ok_and(|s| s.len() == 2)
        })
        .await;
        let bound = expiry_bound(&caps, ttl) + Duration::from_millis(500);
        let _ = until_item(
            &mut events,
            bound.saturating_sub(started.elapsed()),
            "the TTL child's expiry",
            |s| s.as_ref().is_ok_and(|s| s.len() == 1),
        )
        .await;
    }
}

/// Dropping a watch stream stops its background work, and so does a `watch`/`watch_tree`
/// call cut short at a random moment while it sets the watch up.
pub async fn dropping_a_watch_stops_its_task(factory: &dyn StoreFactory) {
    let store = connect(factory).await;
    if lacks(&*store, &[Capability::Watch, Capability::WatchTree]).await {
        return;
    }
    let p = unique_prefix("dropping_a_watch_stops_its_task");
    put(&*store, &format!("{p}/k"), "v").await;
    let baseline = store.background_tasks();
    let mut one = store
        .watch(&format!("{p}/k"), ReadOptions::default())
        .await
        .unwrap();
    let mut tree = store.watch_tree(&p, ReadOptions::default()).await.unwrap();
    next_item(&mut one, "watch").await.unwrap();
    next_item(&mut tree, "watch_tree").await.unwrap();
    assert!(
        store.background_tasks() > baseline,
        "a live watch runs a task"
    );
    drop(one);
    drop(tree);
    eventually(
        Duration::from_secs(3),
        "watch tasks end after drop",
        || async { store.background_tasks() == baseline },
    )
    .await;

    // Calls cut short while they set the watch up (random timeouts around a typical set-up,
    // or a random number of scheduler yields) leave no task behind either.
    use rand::Rng;
    let started = Instant::now();
    drop(
        store
            .watch(&format!("{p}/k"), ReadOptions::default())
            .await
            .unwrap(),
    );
    drop(store.watch_tree(&p, ReadOptions::default()).await.unwrap());
    let typical = started.elapsed() / 2;
    let mut cut = 0;
    for round in 0..40 {
        let moment = RandomCut::around(typical);
        let tree = rand::rng().random_bool(0.5);
        let cut_short = moment.elapsed();
        let set_up = async {
            if tree {
                store
                    .watch_tree(&p, ReadOptions::default())
                    .await
                    .map(|_| ())
            } else {
                store
                    .watch(&format!("{p}/k"), ReadOptions::default())
                    .await
                    .map(|_| ())
            }
        };
        tokio::select! {
            biased;
            _ = cut_short => cut += 1,
            result = set_up => result.unwrap_or_else(|e| panic!("round {round}: {e}")),
        }
    }
    eventually(
        Duration::from_secs(3),
        "no task is left by watch calls cut short",
        || async { store.background_tasks() == baseline },
    )
    .await;
    println!(
        "dropping_a_watch_stops_its_task: {cut} of 40 set-ups cut short (typical {typical:?})"
    );
    // No assertion on `cut`: a backend whose `watch` returns without waiting (the set-up
    // runs in the watch's task) cannot be cut short, and then only the task count matters.
}

/// A lock: unheld on creation, held value visible to others, fencing token = last_index,
/// unlock deletes the key, the same lock can be taken again (valkeyrie's testLockUnlock).
pub async fn lock_unlock_relock(factory: &dyn StoreFactory) {
    let Some(LockCase {
        store,
        other,
        caps,
        key,
        ..
    }) = lock_case(factory, "lock_unlock_relock", "testLockUnlock").await
    else {
        return;
    };
    let options = LockOptions::default().value("bar").ttl(lock_ttl(&caps));
    let mut lock = store.new_lock(&key, options.clone()).await.unwrap();
    assert!(lock.lease().is_none());
    // new_lock did not take it: another client can still lock and unlock.
    let mut theirs = other
        .new_lock(&key, options.clone().value("theirs"))
        .await
        .unwrap();
    let their_lease = timeout(EVENT_TIMEOUT, theirs.lock())
        .await
        .expect("unheld lock is free")
        .unwrap();
    theirs.unlock().await.unwrap();
    assert_eq!(their_lease.state(), LockState::Released);
    assert_eq!(
        get(&*store, &key).await,
        None,
        "unlock deletes the lock's key at once"
    );

    let lease = timeout(EVENT_TIMEOUT, lock.lock())
        .await
        .expect("acquired in time")
        .unwrap();
    assert!(lease.is_held());
    assert!(
        lease.fencing_token() > their_lease.fencing_token(),
        "fencing tokens rise"
    );
    let held = get_some(&*other, &key).await;
    assert_eq!(
        held.value,
        Bytes::from("bar"),
        "the lock value is visible while held"
    );
    assert_eq!(
        held.last_index,
        lease.fencing_token(),
        "the fencing token is the key's last_index"
    );
    assert_err(lock.lock().await, "locking a held lock", |e| {
        matches!(e, Error::LockAlreadyHeld { .. })
    });
    lock.unlock().await.unwrap();
    assert_eq!(lease.state(), LockState::Released);
    assert_eq!(get(&*other, &key).await, None, "unlock deletes the key");
    assert_err(lock.unlock().await, "unlocking an unheld lock", |e| {
        matches!(e, Error::LockNotHeld { .. })
    });

    let again = timeout(EVENT_TIMEOUT, lock.lock())
        .await
        .expect("re-acquired in time")
        .unwrap();
    assert!(again.fencing_token() > lease.fencing_token());
    assert_eq!(get_some(&*other, &key).await.value, Bytes::from("bar"));
    lock.unlock().await.unwrap();
}

/// A held lock blocks other clients; they get it promptly after unlock (libkv's LockWait and
/// valkeyrie's testLockTTL); a cancelled attempt leaves nothing behind.
pub async fn lock_waits_for_release(factory: &dyn StoreFactory) {
    let a = connect(factory).await;
    let b = connect(factory).await;
    let c = connect(factory).await;
    let caps = a.capabilities().clone();
    if lacks(&*a, &[Capability::Locks]).await {
        return;
    }
    let key = format!("{}/testLockWait", unique_prefix("lock_waits_for_release"));
    let ttl = lock_ttl(&caps);
    let mut lock_a = a
        .new_lock(&key, LockOptions::default().value("a").ttl(ttl))
        .await
        .unwrap();
    let lease_a = lock_a.lock().await.unwrap();

    let b_tasks = b.background_tasks();
    let mut lock_b = b
        .new_lock(&key, LockOptions::default().value("b").ttl(ttl))
        .await
        .unwrap();
    assert!(
        timeout(Duration::from_secs(2), lock_b.lock())
            .await
            .is_err(),
        "a held lock blocks others"
    );
    eventually(
        Duration::from_secs(3),
        "a cancelled lock attempt leaves no task",
        || async { b.background_tasks() == b_tasks },
    )
    .await;
    assert!(lease_a.is_held(), "the holder keeps it");

    let waiter = tokio::spawn(async move {
        let lease = lock_b.lock().await.unwrap();
        (lock_b, lease)
    });
    sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "still waiting while held");
    lock_a.unlock().await.unwrap();
    let (mut lock_b, lease_b) = timeout(Duration::from_secs(5), waiter)
        .await
        .expect("granted within 5 s after unlock")
        .unwrap();
    assert!(lease_b.fencing_token() > lease_a.fencing_token());
    assert_eq!(get_some(&*c, &key).await.value, Bytes::from("b"));
    lock_b.unlock().await.unwrap();

    // The abandoned attempt from before holds nothing: a third client locks at once.
    let mut lock_c = c
        .new_lock(&key, LockOptions::default().value("c").ttl(ttl))
        .await
        .unwrap();
    timeout(Duration::from_secs(3), lock_c.lock())
        .await
        .expect("free after every unlock")
        .unwrap();
    lock_c.unlock().await.unwrap();
}

/// `lock()` is cancel-safe at every moment, including the instant the server grants the lock:
/// a `timeout` around it with random limits around the time an uncontended acquisition takes
/// never leaves the key held by nobody, never leaves a task running, and fencing tokens of the
/// acquisitions that did complete strictly rise.
pub async fn lock_cancelled_at_random_moments(factory: &dyn StoreFactory) {
    const ROUNDS: usize = 100;
    let Some(LockCase {
        store,
        other,
        caps,
        key,
        baseline,
    }) = lock_case(factory, "lock_cancelled_at_random_moments", "cancelled").await
    else {
        return;
    };
    let options = LockOptions::default().value("v").ttl(lock_ttl(&caps));
    let mut lock = store.new_lock(&key, options.clone()).await.unwrap();

    // How long an uncontended acquisition takes here: the limits are spread around it, so
    // that many cancellations land right where the server has granted the lock.
    let mut typical = Duration::ZERO;
    let mut last_token = 0;
    for _ in 0..3 {
        let started = Instant::now();
        let lease = timeout(EVENT_TIMEOUT, lock.lock())
            .await
            .expect("an uncontended lock is acquired in time")
            .unwrap();
        typical = typical.max(started.elapsed());
        assert!(lease.fencing_token() > last_token, "fencing tokens rise");
        last_token = lease.fencing_token();
        lock.unlock().await.unwrap();
    }

    let (mut acquired, mut cancelled) = (0, 0);
    for round in 0..ROUNDS {
        let moment = RandomCut::around(typical);
        let cut_short = moment.elapsed();
        let outcome = tokio::select! {
            biased;
            _ = cut_short => None,
            result = lock.lock() => Some(result),
        };
        match outcome {
            Some(Ok(lease)) => {
                acquired += 1;
                assert!(
                    lease.fencing_token() > last_token,
                    "round {round}: fencing token {} after {last_token}",
                    lease.fencing_token()
                );
                last_token = lease.fencing_token();
                lock.unlock()
                    .await
                    .unwrap_or_else(|e| panic!("round {round}: unlock: {e}"));
            }
            Some(Err(error)) => panic!("round {round}: lock failed: {error}"),
            None => cancelled += 1,
        }
        // Whatever happened, nobody holds the lock now (a cancelled acquisition that won is
        // released in the background, promptly).
        eventually(
            EVENT_TIMEOUT,
            &format!("round {round} ({moment}): the lock key is gone"),
            || async { get(&*other, &key).await.is_none() },
        )
        .await;
    }
    eventually(
        Duration::from_secs(3),
        "no task is left after the cancelled acquisitions",
        || async { store.background_tasks() == baseline },
    )
    .await;
    // Another client takes the lock at once: nothing of the storm is left holding it.
    let mut theirs = other.new_lock(&key, options).await.unwrap();
    let lease = timeout(EVENT_TIMEOUT, theirs.lock())
        .await
        .expect("the lock is free after the cancellations")
        .unwrap();
    assert!(lease.fencing_token() > last_token, "fencing tokens rise");
    theirs.unlock().await.unwrap();
    println!(
        "lock_cancelled_at_random_moments: {acquired} acquired, {cancelled} cancelled (typical acquisition {typical:?})"
    );
    assert!(
        cancelled > 0,
        "no acquisition was cancelled: the limits never cut one short"
    );
}

/// `unlock()` is cancel-safe: cut short at a random moment (a `timeout` or a few scheduler
/// yields around the time an unlock takes), the lock is still released in the background,
/// promptly and well before its TTL could expire; the `Lock` is unheld and can be locked
/// again; no task is left.
pub async fn unlock_cancelled_at_random_moments(factory: &dyn StoreFactory) {
    const ROUNDS: usize = 40;
    let Some(LockCase {
        store,
        other,
        caps,
        key,
        baseline,
    }) = lock_case(factory, "unlock_cancelled_at_random_moments", "cancelled").await
    else {
        return;
    };
    // Long enough that expiry cannot pass for a release.
    let ttl = (lock_ttl(&caps) * 5).max(EVENT_TIMEOUT * 2);
    let options = LockOptions::default().value("v").ttl(ttl);
    let mut lock = store.new_lock(&key, options.clone()).await.unwrap();
    let mut typical = Duration::ZERO;
    for _ in 0..3 {
        lock.lock().await.unwrap();
        let started = Instant::now();
        lock.unlock().await.unwrap();
        typical = typical.max(started.elapsed());
    }
    let mut last_token = 0;
    let mut cut = 0;
    for round in 0..ROUNDS {
        let lease = timeout(EVENT_TIMEOUT, lock.lock())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the lock is free again in time"))
            .unwrap();
        assert!(
            lease.fencing_token() > last_token,
            "round {round}: fencing tokens rise"
        );
        last_token = lease.fencing_token();
        let moment = RandomCut::around(typical);
        let cut_short = moment.elapsed();
        let finished = tokio::select! {
            biased;
            _ = cut_short => None,
            result = lock.unlock() => Some(result),
        };
        match finished {
            Some(result) => result.unwrap_or_else(|e| panic!("round {round}: unlock: {e}")),
            // Cut before its first poll, `unlock` never started: the lock is still held.
            None if lock.lease().is_some() => {
                assert!(
                    lease.is_held(),
                    "round {round}: an unlock never polled changes nothing"
                );
                lock.unlock().await.unwrap();
            }
            None => cut += 1,
        }
        assert!(lock.lease().is_none(), "round {round}: the Lock is unheld");
        assert_ne!(
            lease.state(),
            LockState::Held,
            "round {round}: the lease ended"
        );
        let waiting = Instant::now();
        eventually(
            EVENT_TIMEOUT,
            &format!("round {round} ({moment}): the lock key is gone"),
            || async { get(&*other, &key).await.is_none() },
        )
        .await;
        assert!(
            waiting.elapsed() < ttl,
            "round {round}: released, not expired"
        );
    }
    eventually(
        Duration::from_secs(3),
        "no task is left after the cancelled unlocks",
        || async { store.background_tasks() == baseline },
    )
    .await;
    println!(
        "unlock_cancelled_at_random_moments: {cut} of {ROUNDS} unlocks cut short (typical unlock {typical:?})"
    );
    assert!(
        cut > 0,
        "no unlock was cut short: the limits never reached one"
    );
}

/// A held lock with a short TTL stays held well past its TTL: renewal works.
pub async fn lock_renewal_keeps_it_held(factory: &dyn StoreFactory) {
    let Some(LockCase {
        store: holder,
        other,
        caps,
        key,
        ..
    }) = lock_case(factory, "lock_renewal_keeps_it_held", "testLockTTL").await
    else {
        return;
    };
    let ttl = lock_ttl(&caps);
    let mut lock = holder
        .new_lock(&key, LockOptions::default().value("bar").ttl(ttl))
        .await
        .unwrap();
    let lease = lock.lock().await.unwrap();
    sleep(ttl * 2 + ttl / 2).await;
    assert!(lease.is_held(), "renewed past its TTL");
    let pair = get_some(&*other, &key).await;
    assert_eq!(pair.value, Bytes::from("bar"));
    let mut contender = other
        .new_lock(&key, LockOptions::default().value("foobar").ttl(ttl))
        .await
        .unwrap();
    assert!(
        timeout(Duration::from_secs(1), contender.lock())
            .await
            .is_err(),
        "still exclusive"
    );
    lock.unlock().await.unwrap();
    timeout(EVENT_TIMEOUT, contender.lock())
        .await
        .expect("free after unlock")
        .unwrap();
    assert_eq!(get_some(&*holder, &key).await.value, Bytes::from("foobar"));
    contender.unlock().await.unwrap();
}

/// Several contenders on one lock: never two holders at once, fencing tokens strictly rising.
pub async fn lock_contenders_never_overlap(factory: &dyn StoreFactory) {
    const CLIENTS: usize = 3;
    const ROUNDS: usize = 3;
    let probe = connect(factory).await;
    let caps = probe.capabilities().clone();
    if lacks(&*probe, &[Capability::Locks]).await {
        return;
    }
    let key = format!(
        "{}/contended",
        unique_prefix("lock_contenders_never_overlap")
    );
    let inside = Arc::new(AtomicBool::new(false));
    let last_token = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for client in 0..CLIENTS {
        let store = connect(factory).await;
        let key = key.clone();
        let (inside, last_token) = (inside.clone(), last_token.clone());
        let ttl = lock_ttl(&caps);
        workers.push(tokio::spawn(async move {
            let mut lock = store
                .new_lock(
                    &key,
                    LockOptions::default()
                        .value(format!("client{client}"))
                        .ttl(ttl),
                )
                .await
                .unwrap();
            for _ in 0..ROUNDS {
                let lease = timeout(Duration::from_secs(30), lock.lock())
                    .await
                    .expect("acquired eventually")
                    .unwrap();
                assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                let previous = last_token.swap(lease.fencing_token(), Ordering::SeqCst);
                assert!(
                    lease.fencing_token() > previous,
                    "token {} not above {previous}",
                    lease.fencing_token()
                );
                assert_eq!(
                    get_some(&*store, &key).await.value,
                    Bytes::from(format!("client{client}"))
                );
                sleep(Duration::from_millis(30)).await;
                inside.store(false, Ordering::SeqCst);
                lock.unlock().await.unwrap();
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
}

/// Someone deleting a held lock's key fires the holder's lost signal; unlock then says so.
pub async fn lock_lost_when_key_deleted(factory: &dyn StoreFactory) {
    let holder = connect(factory).await;
    let intruder = connect(factory).await;
    let caps = holder.capabilities().clone();
    if lacks(&*holder, &[Capability::Locks]).await {
        return;
    }
    let key = format!("{}/stolen", unique_prefix("lock_lost_when_key_deleted"));
    let ttl = lock_ttl(&caps);
    let mut lock = holder
        .new_lock(&key, LockOptions::default().value("mine").ttl(ttl))
        .await
        .unwrap();
    let lease = lock.lock().await.unwrap();
    assert!(intruder.delete(&key).await.unwrap());
    let state = timeout(ttl + Duration::from_secs(2), lease.lost())
        .await
        .expect("lost signal within the TTL");
    assert_eq!(state, LockState::Lost);
    assert_err(lock.unlock().await, "unlock after loss", |e| {
        matches!(e, Error::LockLost { .. })
    });
    // The lock can be taken again afterwards.
    let again = timeout(EVENT_TIMEOUT, lock.lock())
        .await
        .expect("re-acquired")
        .unwrap();
    assert!(again.fencing_token() > lease.fencing_token());
    lock.unlock().await.unwrap();
}

/// Closing a handle releases its locks at once, ends its watches with `Closed`, stops its
/// tasks and makes later calls fail; its TTL keys still expire on time.
pub async fn close_releases_everything(factory: &dyn StoreFactory) {
    let closing = connect(factory).await;
    let other = connect(factory).await;
    let caps = closing.capabilities().clone();
    let p = unique_prefix("close_releases_everything");
    let lock_key = format!("{p}/lock");
    let ttl_key = format!("{p}/ttl");
    let started = Instant::now();
    if caps.ttl {
        closing
            .put(
                &ttl_key,
                "short".into(),
                WriteOptions::with_ttl(key_ttl(&caps)),
            )
            .await
            .unwrap();
    }
    let mut lease = None;
    // Kept alive past close: dropping it would release the lock by itself.
    let mut held_lock = None;
    if caps.locks {
        let mut lock = closing
            .new_lock(&lock_key, LockOptions::default().ttl(lock_ttl(&caps) * 4))
            .await
            .unwrap();
        lease = Some(lock.lock().await.unwrap());
        held_lock = Some(lock);
    }
    // Locks dropped just before `close`: their background releases are in flight when
    // `close` starts (staggered, so some have reached the server and some have not), and
    // `close` must wait for them.
    let dropped_keys: Vec<String> = (0..4).map(|i| format!("{p}/dropped{i}")).collect();
    if caps.locks {
        let mut dropped = Vec::new();
        for key in &dropped_keys {
            let mut lock = closing
                .new_lock(key, LockOptions::default().ttl(lock_ttl(&caps) * 4))
                .await
                .unwrap();
            lock.lock().await.unwrap();
            dropped.push(lock);
        }
        for (i, lock) in dropped.into_iter().enumerate() {
            drop(lock);
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_micros(300 * i as u64)).await;
        }
    }
    let mut watch = if caps.watch {
        Some(
            closing
                .watch(&format!("{p}/w"), ReadOptions::default())
                .await
                .unwrap(),
        )
    } else {
        None
    };
    if let Some(w) = watch.as_mut() {
        assert_eq!(next_item(w, "initial").await.unwrap(), None);
    }

    closing.close().await.expect("close");
    for key in dropped_keys.iter().filter(|_| caps.locks) {
        assert_eq!(
            other.get(key, ReadOptions::default()).await.unwrap(),
            None,
            "close waits for the release of a lock dropped just before it ({key})"
        );
    }
    closing.close().await.expect("close is idempotent");
    if let Some(lease) = &lease {
        assert_ne!(
            lease.state(),
            LockState::Held,
            "a closed handle holds no lock"
        );
        let mut theirs = other
            .new_lock(&lock_key, LockOptions::default().ttl(lock_ttl(&caps)))
            .await
            .unwrap();
        timeout(Duration::from_secs(3), theirs.lock())
            .await
            .expect("released at close, not by expiry")
            .unwrap();
        theirs.unlock().await.unwrap();
    }
    if let Some(mut w) = watch {
        let end = until_item(
            &mut w,
            Duration::from_secs(3),
            "the watch's last item",
            |item| item.is_err(),
        )
        .await;
        assert!(
            matches!(end, Err(Error::Closed)),
            "a closed handle's watch ends with Closed"
        );
        assert!(
            timeout(Duration::from_secs(3), w.next())
                .await
                .expect("ends")
                .is_none(),
            "nothing after the error"
        );
    }
    eventually(
        Duration::from_secs(3),
        "no background task after close",
        || async { closing.background_tasks() == 0 },
    )
    .await;
    let closed = |e: &Error| matches!(e, Error::Closed);
    assert_err(
        closing.get(&ttl_key, ReadOptions::default()).await,
        "get after close",
        closed,
    );
    assert_err(
        closing
            .put(&ttl_key, "x".into(), WriteOptions::default())
            .await,
        "put after close",
        closed,
    );
    assert_err(
        closing.list(&p, ReadOptions::default()).await,
        "list after close",
        closed,
    );
    assert_err(closing.delete(&ttl_key).await, "delete after close", closed);
    assert_err(
        closing
            .new_lock(&lock_key, LockOptions::default())
            .await
            .map(|_| ()),
        "new_lock after close",
        closed,
    );
    if caps.ttl {
        let bound = expiry_bound(&caps, key_ttl(&caps));
        sleep(bound.saturating_sub(started.elapsed())).await;
        assert_eq!(
            get(&*other, &ttl_key).await,
            None,
            "a closed handle's TTL key expires on time"
        );
    }
    if let Some(mut lock) = held_lock {
        assert_err(lock.unlock().await, "unlock after close", |e| {
            matches!(e, Error::Closed)
        });
    }
}

/// Every capability the backend declares unsupported really returns `NotSupported`, and the
/// declared limits are sane.
pub async fn capabilities_are_honest(factory: &dyn StoreFactory) {
    let store = connect(factory).await;
    let caps = store.capabilities().clone();
    let key = format!("{}/k", unique_prefix("capabilities_are_honest"));
    assert!(!caps.backend.is_empty());
    assert!(
        caps.max_key_len > 64 && caps.max_key_len <= kv_core::key::MAX_KEY_LEN,
        "max_key_len {}",
        caps.max_key_len
    );
    assert!(
        caps.max_value_len >= 64 * 1024,
        "max_value_len {}",
        caps.max_value_len
    );
    assert!(caps.min_ttl <= Duration::from_secs(10) && caps.min_ttl <= caps.max_ttl);
    let unsupported = |e: &Error| matches!(e, Error::NotSupported { .. });
    if !caps.watch {
        assert_err(
            store.watch(&key, ReadOptions::default()).await.map(|_| ()),
            "watch",
            unsupported,
        );
    }
    if !caps.watch_tree {
        assert_err(
            store
                .watch_tree(&key, ReadOptions::default())
                .await
                .map(|_| ()),
            "watch_tree",
            unsupported,
        );
    }
    if !caps.locks {
        assert_err(
            store
                .new_lock(&key, LockOptions::default())
                .await
                .map(|_| ()),
            "new_lock",
            unsupported,
        );
    }
    if !caps.ttl {
        assert_err(
            store
                .put(
                    &key,
                    "v".into(),
                    WriteOptions::with_ttl(Duration::from_secs(30)),
                )
                .await,
            "ttl",
            unsupported,
        );
    }
    if caps.transactions {
        assert!(
            caps.max_transaction_ops > 0,
            "transactions with a limit of 0"
        );
    } else {
        assert_err(
            store
                .transaction(kv_core::Transaction::new().delete(&key))
                .await,
            "transaction",
            unsupported,
        );
    }
}
