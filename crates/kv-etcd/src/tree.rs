//! `delete_tree`: deletes exactly the keys `list` shows (and the directory key), atomically.
//!
//! Deleting the whole range `dir/…` would also delete stored keys that `list` never shows
//! (other programs' keys that break the key rules: `dir//x`, `dir/x/`, `__kv` segments, not
//! UTF-8; and, without a namespace, `/registry/…`-style keys when `dir` is the root). So:
//!
//! 1. Read the range's keys (keys only, paginated) at one revision `R`.
//! 2. Split the sorted keys into maximal *runs* of keys `list` shows; the keys between runs
//!    are the ones to keep.
//! 3. One transaction deletes every run as a range `[first, last + "\0")` (and the directory
//!    key), guarded by "no key in `[first of the first run, last of the last run]` was
//!    created after `R`": a key created meanwhile inside a run's range would be deleted
//!    unseen, and it may be one to keep. Keys only modified meanwhile are fine (same name,
//!    same verdict), so updates do not make the delete retry.
//! 4. If the guard fails, the same transaction's failure branch returns the keys created in
//!    the range since `R`; they join the view, `R` becomes the transaction's revision, and
//!    step 2 starts again.
//!
//! Two cases are not atomic as a whole (both rare, both documented in the crate docs):
//!
//! * A transaction holds at most [`MAX_TXN_OPS`] operations (etcd's default
//!   `--max-txn-ops`): with more runs than that (more than 127 stretches of listed keys
//!   separated by foreign keys) the runs are deleted by several transactions, each atomic and
//!   guarded.
//! * Keys created in the tree faster than one transaction commits would make the guard fail
//!   forever. After [`GUARDED_ATTEMPTS`] failed guards in a row, the listed keys known so far
//!   are deleted **by name**, up to 127 per transaction, unguarded: that never deletes a key
//!   `list` does not show, but keys created meanwhile may stay.

use std::collections::BTreeMap;

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp, TxnOpResponse};
use kv_core::Result;

use crate::client::{Inner, header_revision};

/// etcd's default `--max-txn-ops`: the most operations (and, separately, comparisons) one
/// transaction may hold.
pub(crate) const MAX_TXN_OPS: usize = 128;

/// How many guarded transactions in a row may find keys created in the tree meanwhile
/// before `delete_tree` falls back to deleting the keys it knows by name.
pub(crate) const GUARDED_ATTEMPTS: usize = 5;

/// The stored keys of the range as last read, each with whether `list` shows it.
type View = BTreeMap<Vec<u8>, bool>;

/// Deletes every key of `[start, end)` that `list` shows, and `directory_key` if given.
pub(crate) async fn delete_tree(
    inner: &Inner,
    start: Vec<u8>,
    end: Vec<u8>,
    mut directory_key: Option<Vec<u8>>,
) -> Result<()> {
    let (mut view, mut revision) = read(inner, &start, &end).await?;
    let mut conflicts = 0;
    loop {
        let runs = runs(&view);
        let chunk = &runs[..runs.len().min(MAX_TXN_OPS - 1)];
        let mut ops: Vec<TxnOp> = chunk
            .iter()
            .map(|(first, last)| {
                let options = DeleteOptions::new().with_range(successor(last));
                TxnOp::delete(first.clone(), Some(options))
            })
            .collect();
        if let Some(key) = &directory_key {
            ops.push(TxnOp::delete(key.clone(), None));
        }
        if ops.is_empty() {
            return Ok(());
        }
        let txn = match (chunk.first(), chunk.last()) {
            (Some((span_start, _)), Some((_, span_last))) => {
                let guard =
                    Compare::create_revision(span_start.clone(), CompareOp::Less, revision + 1)
                        .with_range(successor(span_last));
                let created = GetOptions::new()
                    .with_range(end.clone())
                    .with_keys_only()
                    .with_min_create_revision(revision + 1)
                    .with_limit(inner.page_size);
                Txn::new()
                    .when([guard])
                    .and_then(ops)
                    .or_else([TxnOp::get(start.clone(), Some(created))])
            }
            // Only the directory key: nothing to guard.
            _ => Txn::new().and_then(ops),
        };
        let mut kv = inner.kv.clone();
        let response = inner.call("delete_tree", kv.txn(txn)).await?;
        if response.succeeded() {
            if chunk.len() == runs.len() {
                return Ok(());
            }
            // More runs than one transaction holds: forget the deleted keys, go on with the
            // rest (still guarded against keys created since `revision`).
            tracing::debug!(
                runs = runs.len(),
                "delete_tree: more runs than one transaction holds, deleting in several"
            );
            directory_key = None;
            conflicts = 0;
            let (from, to) = (chunk[0].0.clone(), chunk[chunk.len() - 1].1.clone());
            view.retain(|key, listed| !*listed || *key < from || *key > to);
            continue;
        }
        conflicts += 1;
        tracing::debug!(
            revision,
            conflicts,
            "delete_tree: keys were created in the tree meanwhile, trying again"
        );
        let created = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => Some(get),
            _ => None,
        });
        match created {
            Some(mut created) if !created.more() => {
                for kv in created.take_kvs() {
                    let listed = inner.to_key(kv.key()).is_some();
                    view.insert(kv.key().to_vec(), listed);
                }
                revision = header_revision(response.header());
            }
            // Too many to list in one answer: read the whole range again.
            _ => (view, revision) = read(inner, &start, &end).await?,
        }
        if conflicts >= GUARDED_ATTEMPTS {
            tracing::debug!("delete_tree: the tree keeps growing, deleting the known keys by name");
            return delete_by_name(inner, &view, directory_key).await;
        }
    }
}

/// Deletes the listed keys of `view` (and `directory_key`) one by one, in transactions of
/// up to [`MAX_TXN_OPS`]: never a key it did not read, so no guard is needed.
async fn delete_by_name(inner: &Inner, view: &View, directory_key: Option<Vec<u8>>) -> Result<()> {
    let listed = view
        .iter()
        .filter(|(_, listed)| **listed)
        .map(|(key, _)| key.clone());
    let ops: Vec<TxnOp> = directory_key
        .into_iter()
        .chain(listed)
        .map(|key| TxnOp::delete(key, None))
        .collect();
    for chunk in ops.chunks(MAX_TXN_OPS) {
        let mut kv = inner.kv.clone();
        inner
            .call("delete_tree", kv.txn(Txn::new().and_then(chunk.to_vec())))
            .await?;
    }
    Ok(())
}

/// Reads the range's keys at one revision.
async fn read(inner: &Inner, start: &[u8], end: &[u8]) -> Result<(View, i64)> {
    let (kvs, revision) = inner
        .range_all(start.to_vec(), end.to_vec(), true, true, "delete_tree")
        .await?;
    let view = kvs
        .into_iter()
        .map(|kv| {
            let listed = inner.to_key(kv.key()).is_some();
            (kv.key().to_vec(), listed)
        })
        .collect();
    Ok((view, revision))
}

/// The maximal runs of consecutive listed keys, as (first, last) in key order.
fn runs(view: &View) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut runs = Vec::new();
    let mut current: Option<(&Vec<u8>, &Vec<u8>)> = None;
    for (key, listed) in view {
        if *listed {
            current = Some((current.map_or(key, |(first, _)| first), key));
        } else if let Some((first, last)) = current.take() {
            runs.push((first.clone(), last.clone()));
        }
    }
    if let Some((first, last)) = current {
        runs.push((first.clone(), last.clone()));
    }
    runs
}

/// The smallest key above `key`: `[first, successor(last))` is the range `first..=last`.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_maximal_and_skip_unlisted_keys() {
        let view: View = [
            ("a", true),
            ("a/", false),
            ("a/b", true),
            ("a/c", true),
            ("b//x", false),
            ("b/y", false),
            ("c", true),
        ]
        .into_iter()
        .map(|(k, listed)| (k.as_bytes().to_vec(), listed))
        .collect();
        let runs: Vec<(String, String)> = runs(&view)
            .into_iter()
            .map(|(f, l)| (String::from_utf8(f).unwrap(), String::from_utf8(l).unwrap()))
            .collect();
        assert_eq!(
            runs,
            [("a", "a"), ("a/b", "a/c"), ("c", "c")].map(|(f, l)| (f.to_owned(), l.to_owned()))
        );
        assert!(super::runs(&View::new()).is_empty());
        assert_eq!(successor(b"a"), b"a\0");
    }
}
