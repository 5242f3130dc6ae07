//! `delete_tree`: deletes exactly the keys `list` shows (and the directory key), never a key
//! it hides.
//!
//! A `delete-tree` on `dir/` would also delete the keys other programs wrote under it that
//! `list` never shows (`dir//x`, `dir/x/`, `dir/__kv…`, keys over 1024 bytes, forbidden
//! characters). So:
//!
//! 1. Read the names of every key under `dir/` (`?keys`, consistent).
//! 2. Cover the keys `list` would show (valid names, live or past their TTL: an expired TTL
//!    key is this crate's own record, deleted along as before) with as few operations as
//!    possible, never touching a hidden one: a prefix `p/` under which every key is shown is
//!    one `delete-tree p/` (the whole `dir/` when nothing is hidden, which is the common
//!    case); next to a hidden key, each shown key is one `delete` by name, and each shown
//!    subtree below it is covered the same way.
//! 3. Send them, with `delete dir`, in one `/v1/txn` — atomic — or, beyond Consul's
//!    [`MAX_TXN_OPS`] operations per transaction, in several transactions, each atomic, not
//!    atomic as a whole.
//!
//! Whether `list` shows a key depends on its name only, so deleting by name needs no
//! condition: a shown key rewritten meanwhile is still one to delete. Keys created between
//! the read and the transaction are deleted when they fall under a covered prefix (even a
//! hidden one, in the rare case another program writes one just then) and left otherwise.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use crate::client::txn_op;

/// Consul's limit of operations in one `/v1/txn` (`maxTxnOps`, not configurable).
pub(crate) const MAX_TXN_OPS: usize = 64;

/// One deletion of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Deletion {
    /// One key, by name.
    Key(String),
    /// Every key starting with this prefix (always ending in `/`, or `""` for everything).
    Tree(String),
}

impl Deletion {
    /// The `/v1/txn` operation.
    pub(crate) fn op(&self) -> Json {
        match self {
            Deletion::Key(key) => txn_op("delete", key),
            Deletion::Tree(prefix) => txn_op("delete-tree", prefix),
        }
    }
}

/// The deletions that remove every shown key of `keys` and no hidden one. `keys` are every
/// stored key starting with `prefix` (which is `""` or ends in `/`), each with whether `list`
/// shows it.
pub(crate) fn plan(prefix: &str, keys: &[(String, bool)]) -> Vec<Deletion> {
    let mut out = Vec::new();
    cover(
        prefix,
        keys.iter().map(|(k, shown)| (k.as_str(), *shown)),
        &mut out,
    );
    out
}

fn cover<'a>(prefix: &str, keys: impl Iterator<Item = (&'a str, bool)>, out: &mut Vec<Deletion>) {
    let keys: Vec<(&str, bool)> = keys.collect();
    if !keys.iter().any(|(_, shown)| *shown) {
        return;
    }
    if keys.iter().all(|(_, shown)| *shown) {
        out.push(Deletion::Tree(prefix.to_owned()));
        return;
    }
    // Group by the next path segment: a node `prefix + segment`, with the key of that name
    // (if stored) and every key under `node/`. Every key starting with `node/` lands in the
    // node's group, so the node's subtree is covered knowing all of its keys.
    let mut nodes: BTreeMap<&str, Vec<(&str, bool)>> = BTreeMap::new();
    for (key, shown) in keys {
        let rest = &key[prefix.len()..];
        let end = prefix.len() + rest.find('/').unwrap_or(rest.len());
        nodes.entry(&key[..end]).or_default().push((key, shown));
    }
    for (node, group) in nodes {
        let below = format!("{node}/");
        let mut children = Vec::new();
        for (key, shown) in group {
            if key == node {
                if shown {
                    out.push(Deletion::Key(key.to_owned()));
                }
            } else {
                children.push((key, shown));
            }
        }
        cover(&below, children.into_iter(), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[(&str, bool)]) -> Vec<(String, bool)> {
        list.iter().map(|(k, s)| (k.to_string(), *s)).collect()
    }

    /// Applies a plan to the keys: what is left.
    fn left(keys: &[(String, bool)], plan: &[Deletion]) -> Vec<String> {
        keys.iter()
            .map(|(k, _)| k.clone())
            .filter(|k| {
                !plan.iter().any(|d| match d {
                    Deletion::Key(name) => name == k,
                    Deletion::Tree(prefix) => k.starts_with(prefix.as_str()),
                })
            })
            .collect()
    }

    #[test]
    fn nothing_hidden_is_one_delete_tree() {
        let k = keys(&[("ns/d/a", true), ("ns/d/b/c", true), ("ns/d/b", true)]);
        assert_eq!(plan("ns/d/", &k), [Deletion::Tree("ns/d/".into())]);
        assert!(plan("ns/d/", &[]).is_empty());
        let hidden_only = keys(&[("ns/d/", false), ("ns/d//x", false)]);
        assert!(plan("ns/d/", &hidden_only).is_empty());
    }

    #[test]
    fn hidden_keys_are_left_and_clean_subtrees_stay_one_operation() {
        let k = keys(&[
            ("d/", false),
            ("d//x", false),
            ("d/a", true),
            ("d/a!", true),
            ("d/a/", false),
            ("d/a/b", true),
            ("d/a/b/c", true),
            ("d/a/__kvx", false),
            ("d/clean", true),
            ("d/clean/1", true),
            ("d/clean/2/3", true),
            ("d/only/x", true),
            ("d/y/__kv", false),
            ("d/y/z", true),
        ]);
        let plan = plan("d/", &k);
        let hidden: Vec<String> = k
            .iter()
            .filter(|(_, s)| !s)
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(left(&k, &plan), hidden, "{plan:?}");
        assert!(
            plan.contains(&Deletion::Tree("d/clean/".into())),
            "{plan:?}"
        );
        assert!(plan.contains(&Deletion::Tree("d/a/b/".into())), "{plan:?}");
        assert!(plan.contains(&Deletion::Tree("d/only/".into())), "{plan:?}");
        assert!(plan.contains(&Deletion::Key("d/a".into())), "{plan:?}");
        assert!(plan.contains(&Deletion::Key("d/y/z".into())), "{plan:?}");
        // `d/a!` sorts between `d/a` and `d/a/…`: a node of its own.
        assert!(plan.contains(&Deletion::Key("d/a!".into())), "{plan:?}");
        assert_eq!(plan.len(), 8, "{plan:?}");
    }

    #[test]
    fn the_root_without_a_namespace() {
        let k = keys(&[("/lead", false), ("a", true), ("a/b", true), ("x/", false)]);
        let plan = plan("", &k);
        assert_eq!(left(&k, &plan), ["/lead", "x/"]);
        assert_eq!(
            plan,
            [Deletion::Key("a".into()), Deletion::Tree("a/".into())]
        );
        let all = keys(&[("a", true), ("b/c", true)]);
        assert_eq!(super::plan("", &all), [Deletion::Tree(String::new())]);
    }
}
