//! Transactions: one `TransactWriteItems` per [`Transaction`], one action per key.
//!
//! Every key the transaction names becomes exactly one action (DynamoDB refuses two actions
//! on one item): a key that is written becomes a `Put` (of the same live item or tombstone
//! `put` and `delete` write) whose condition expression is the key's transaction condition,
//! if any, AND the version guard; a key that is only checked becomes a `ConditionCheck`. The
//! actions of keys with a condition come first, in the order of their conditions, then the
//! keys only written, in operation order. Every action asks for `ALL_OLD` on a failed
//! condition, so a cancelled transaction tells, per action, the item as it was when
//! DynamoDB evaluated the transaction: the reasons are computed from that, atomically, with
//! [`Condition::evaluate`], never from a second read.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, ConditionCheck, Put, ReturnValuesOnConditionCheckFailure,
    TransactWriteItem,
};
use bytes::Bytes;
use kv_core::{Condition, ConditionFailure, Error, KvPair, Operation, Result, Transaction};
use rand::Rng;

use crate::item::{
    ABSENT, ATTR_PK, ATTR_SK, BACKEND, Item, LIVE, VERSION_BELOW, VERSIONLESS, expression_attrs,
    live_item, next_version, num, partition_of, s, sdk_error, tombstone_item, version_exhausted,
    versionless_cas,
};
use crate::store::Inner;

/// How many actions one TransactWriteItems may carry (DynamoDB's limit), hence the most
/// conditions plus operations one transaction may hold: a condition and a write on one key
/// share an action, so there are never more actions than conditions plus operations.
pub(crate) const MAX_TRANSACTION_OPS: usize = 100;

/// DynamoDB's limit on the aggregate size of the items of one transaction (4 MB).
pub(crate) const MAX_TRANSACTION_BYTES: usize = 4 * 1024 * 1024;

/// What one action is counted for, on top of its value and twice its full key (`pk` and
/// `sk`): attribute names and the numbers beside the value (`version`, `deadline_ms`,
/// `expires_at`, `deleted`), generously rounded up.
const ACTION_OVERHEAD: usize = 128;

/// How often a transaction is sent again when only the version guard failed or another
/// transaction was in progress on one of its items.
const ATTEMPTS: usize = 64;

/// One key of the transaction: its condition (with its position) and its write.
struct Slot {
    /// The key relative to the namespace (as the caller named it, normalised).
    key: String,
    /// The full key (the sort key).
    full: String,
    condition: Option<(usize, Condition)>,
    write: Option<Write>,
    /// The version the write must exceed (raised when the version guard fails).
    floor: u64,
}

/// What to do after a cancelled attempt.
enum Outcome {
    /// Report this error (the first failing condition, mostly).
    Failed(Error),
    /// Send again; after a pause when another transaction was in the way.
    Again { conflict: bool },
}

/// A write of a slot.
enum Write {
    /// A live item: the value, its TTL deadline on the server's clock, and the position of
    /// the put among the operations (the result lists puts in operation order).
    Put {
        value: Bytes,
        deadline_ms: Option<u64>,
        position: usize,
    },
    /// A tombstone.
    Delete,
}

/// What one attempt's answer says about a slot's condition.
enum Verdict {
    /// Holds at commit time.
    Held,
    /// Failed, with the error to report.
    Failed(Error),
    /// Not known from this answer (another transaction was in progress on the item, or the
    /// answer did not say): send again.
    Unknown,
}

/// The condition expression of `condition`, with the placeholders it uses.
fn condition_expression(condition: &Condition) -> (String, Vec<(&'static str, AttributeValue)>) {
    match condition {
        Condition::Absent { .. } => (ABSENT.to_owned(), Vec::new()),
        Condition::Exists { .. } => (LIVE.to_owned(), Vec::new()),
        Condition::IndexEquals { index, .. } => (
            format!("#ver = :prev AND {LIVE}"),
            vec![(":prev", num(*index))],
        ),
        // The lock's item, still at the acquiring write's version (renewals only touch the
        // heartbeat and the deadline), live on the server's clock: an expired lock item not
        // yet taken over or removed counts as lost.
        Condition::LockHeld { fencing_token, .. } => (
            format!("#ver = :prev AND {LIVE}"),
            vec![(":prev", num(*fencing_token))],
        ),
        // `Condition` is non-exhaustive: `plan` refuses kinds this crate does not know.
        _ => unreachable!("refused before anything is sent"),
    }
}

/// The state a condition saw, as the `last_index` [`Condition::evaluate`] takes: the
/// version of a live item, `None` for no item, a tombstone or an expired item.
fn current_index(item: Option<&Item>, now_ms: u64) -> Option<u64> {
    item.filter(|item| item.live_at(now_ms))
        .map(|item| item.version)
}

/// The verdict on `condition` from the item DynamoDB returned when the condition of its
/// action failed (`None`: there was no item): the error to report, or `None` when the
/// condition held (then the version guard failed).
fn judge(
    position: usize,
    condition: &Condition,
    item: Option<&Item>,
    now_ms: u64,
) -> Option<Error> {
    // An item another client wrote without a `version` is read at `last_index` 1, but
    // `#ver = :prev` never matches it: nothing in it would change when that client rewrites
    // it, so a stale pair would win. As for `atomic_put`, a compare at 1 is refused; a lock
    // is never such an item.
    if item.is_some_and(|item| item.live_at(now_ms) && !item.versioned) {
        match condition {
            Condition::IndexEquals { index, .. } if *index == VERSIONLESS => {
                return Some(versionless_cas());
            }
            Condition::LockHeld { key, .. } => {
                return Some(Error::condition_failed(
                    position,
                    key.as_str(),
                    ConditionFailure::LockLost,
                ));
            }
            _ => {}
        }
    }
    condition
        .evaluate(current_index(item, now_ms))
        .map(|reason| Error::condition_failed(position, condition.key(), reason))
}

impl Inner {
    /// Commits `txn` (already checked and normalised): see the [module docs](self).
    pub async fn transaction(&self, txn: Transaction) -> Result<Vec<KvPair>> {
        let (mut slots, puts) = self.plan(txn)?;
        if slots.is_empty() {
            return Ok(Vec::new());
        }
        let mut backoff =
            kv_core::Backoff::new(Duration::from_millis(5), Duration::from_millis(250));
        let mut conflicted = false;
        for _ in 0..ATTEMPTS {
            let now = self.clock.now_ms();
            let mut versions = Vec::with_capacity(slots.len());
            let mut actions = Vec::with_capacity(slots.len());
            for slot in &slots {
                let (action, version) = self.action(slot, now)?;
                actions.push(action);
                versions.push(version);
            }
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(actions))
                .send()
                .await;
            let err = match result {
                Ok(_) => return Ok(committed(&slots, &versions, puts)),
                Err(err) => err,
            };
            let reasons = match err.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => {
                    cancelled.cancellation_reasons().to_vec()
                }
                Some(TransactWriteItemsError::TransactionInProgressException(_)) => {
                    conflicted = true;
                    sleep_jittered(&mut backoff).await;
                    continue;
                }
                _ => return Err(transaction_error(self, err)),
            };
            match self.explain(&mut slots, &reasons, now)? {
                Outcome::Failed(error) => return Err(error),
                // Only the version guard failed: the floors are raised, send again now.
                Outcome::Again { conflict: false } => conflicted = false,
                Outcome::Again { conflict: true } => {
                    conflicted = true;
                    sleep_jittered(&mut backoff).await;
                }
            }
        }
        tracing::debug!("transaction cancelled {ATTEMPTS} times without a failing condition");
        if conflicted {
            // Other transactions kept holding its items: nothing was written, try later.
            return Err(Error::unavailable(
                BACKEND,
                format!(
                    "transact_write_items: cancelled {ATTEMPTS} times by transactions in progress on the same items"
                ),
            ));
        }
        // Cancelled again and again although every condition held each time it was
        // evaluated (should not happen): never report success for what was not written.
        Err(
            match slots
                .iter()
                .filter_map(|s| s.condition.as_ref())
                .min_by_key(|(i, _)| *i)
            {
                Some((position, condition)) => Error::condition_failed(
                    *position,
                    condition.key(),
                    ConditionFailure::KeyModified,
                ),
                None => Error::backend(
                    BACKEND,
                    "transact_write_items: cancelled on every attempt without a reason",
                ),
            },
        )
    }

    /// One slot per key, conditioned keys first (in condition order), and the number of
    /// puts. Refuses a transaction above DynamoDB's 4 MB aggregate size.
    fn plan(&self, txn: Transaction) -> Result<(Vec<Slot>, usize)> {
        let (conditions, operations) = txn.into_parts();
        let mut slots: Vec<Slot> = Vec::with_capacity(conditions.len() + operations.len());
        let mut by_key: HashMap<String, usize> = HashMap::new();
        for (position, condition) in conditions.into_iter().enumerate() {
            if !matches!(
                condition,
                Condition::Absent { .. }
                    | Condition::Exists { .. }
                    | Condition::IndexEquals { .. }
                    | Condition::LockHeld { .. }
            ) {
                return Err(Error::InvalidOption(format!(
                    "transaction condition {position} is of a kind {BACKEND} does not know: {condition:?}"
                )));
            }
            let key = condition.key().to_owned();
            // The version a write over this key must exceed is at least the one compared.
            let floor = match &condition {
                Condition::IndexEquals { index, .. } if *index < u64::MAX => *index,
                Condition::LockHeld { fencing_token, .. } if *fencing_token < u64::MAX => {
                    *fencing_token
                }
                _ => 0,
            };
            by_key.insert(key.clone(), slots.len());
            slots.push(Slot {
                full: self.full_key(&key),
                key,
                condition: Some((position, condition)),
                write: None,
                floor,
            });
        }
        let mut puts = 0;
        for operation in operations {
            let (key, write) = match operation {
                Operation::Put {
                    key,
                    value,
                    options,
                } => {
                    // A put without TTL makes the key permanent again, as `put` does.
                    let deadline_ms = self
                        .caps
                        .check_ttl(options.ttl)?
                        .map(|ttl| self.clock.deadline_ms(ttl));
                    puts += 1;
                    let write = Write::Put {
                        value,
                        deadline_ms,
                        position: puts - 1,
                    };
                    (key, write)
                }
                Operation::Delete { key } => (key, Write::Delete),
                other => {
                    return Err(Error::InvalidOption(format!(
                        "a transaction operation of a kind {BACKEND} does not know: {other:?}"
                    )));
                }
            };
            match by_key.get(&key) {
                Some(&index) => slots[index].write = Some(write),
                None => {
                    by_key.insert(key.clone(), slots.len());
                    slots.push(Slot {
                        full: self.full_key(&key),
                        key,
                        condition: None,
                        write: Some(write),
                        floor: 0,
                    });
                }
            }
        }
        let size: usize = slots
            .iter()
            .map(|slot| {
                let value = match &slot.write {
                    Some(Write::Put { value, .. }) => value.len(),
                    _ => 0,
                };
                value + 2 * slot.full.len() + ACTION_OVERHEAD
            })
            .sum();
        if size > MAX_TRANSACTION_BYTES {
            return Err(Error::InvalidOption(format!(
                "a transaction of about {size} bytes exceeds DynamoDB's limit of \
                 {MAX_TRANSACTION_BYTES} bytes (4 MB) for the items of one transaction"
            )));
        }
        Ok((slots, puts))
    }

    /// The action of one slot for an attempt at server time `now_ms`, and the version its
    /// write takes (0 for a condition check).
    fn action(&self, slot: &Slot, now_ms: u64) -> Result<(TransactWriteItem, u64)> {
        let (condition, mut values) = match &slot.condition {
            Some((_, condition)) => {
                let (expression, values) = condition_expression(condition);
                (Some(expression), values)
            }
            None => (None, Vec::new()),
        };
        values.push((":now", num(now_ms)));
        let Some(write) = &slot.write else {
            let expression = condition.unwrap_or_else(|| "attribute_exists(#sk)".to_owned());
            let (names, values) = expression_attrs(&[&expression], values);
            let check = ConditionCheck::builder()
                .table_name(&self.config.table)
                .key(ATTR_PK, s(partition_of(&slot.full)))
                .key(ATTR_SK, s(&slot.full))
                .condition_expression(expression)
                .set_expression_attribute_names(names)
                .set_expression_attribute_values(values)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .build()
                .map_err(|e| Error::backend(BACKEND, e))?;
            return Ok((
                TransactWriteItem::builder().condition_check(check).build(),
                0,
            ));
        };
        let version = next_version(slot.floor).ok_or_else(|| version_exhausted(&slot.full))?;
        values.push((":ver", num(version)));
        let item = match write {
            Write::Put {
                value, deadline_ms, ..
            } => live_item(&slot.full, value, version, *deadline_ms, None),
            Write::Delete => tombstone_item(&slot.full, version, self.config.tombstone_ttl),
        };
        let expression = match condition {
            // Every condition expression is a conjunction or parenthesised (DynamoDB refuses
            // redundant parentheses).
            Some(condition) => format!("{condition} AND {VERSION_BELOW}"),
            None => VERSION_BELOW.to_owned(),
        };
        let (names, values) = expression_attrs(&[&expression], values);
        let put = Put::builder()
            .table_name(&self.config.table)
            .set_item(Some(item))
            .condition_expression(expression)
            .set_expression_attribute_names(names)
            .set_expression_attribute_values(values)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(|e| Error::backend(BACKEND, e))?;
        Ok((TransactWriteItem::builder().put(put).build(), version))
    }

    /// Reads a cancelled attempt's reasons (one per action, in slot order): the first
    /// condition that failed, or that the transaction must be sent again (only the version
    /// guard failed, and the floors are raised; or another transaction was in progress on an
    /// item whose condition comes before any known failure). `Err`: a reason retrying does
    /// not clear.
    fn explain(
        &self,
        slots: &mut [Slot],
        reasons: &[CancellationReason],
        now_ms: u64,
    ) -> Result<Outcome> {
        if reasons.len() != slots.len() {
            tracing::debug!(
                reasons = reasons.len(),
                actions = slots.len(),
                "transaction cancelled without one reason per action"
            );
        }
        let mut conflict = false;
        // Verdicts per condition position.
        let mut verdicts: Vec<(usize, Verdict)> = Vec::new();
        for (index, slot) in slots.iter_mut().enumerate() {
            let reason = reasons.get(index);
            let code = reason.and_then(CancellationReason::code).unwrap_or("None");
            let verdict = match code {
                "None" => Verdict::Held,
                "ConditionalCheckFailed" => {
                    let item = reason
                        .and_then(CancellationReason::item)
                        .and_then(Item::from_map);
                    match &slot.condition {
                        Some((position, condition)) => {
                            match judge(*position, condition, item.as_ref(), now_ms) {
                                Some(error) => Verdict::Failed(error),
                                None => {
                                    // The condition held: the version guard failed.
                                    raise_floor(slot, item.as_ref());
                                    Verdict::Held
                                }
                            }
                        }
                        None => {
                            raise_floor(slot, item.as_ref());
                            Verdict::Held
                        }
                    }
                }
                "TransactionConflict" => {
                    conflict = true;
                    Verdict::Unknown
                }
                "ThrottlingError" | "ProvisionedThroughputExceeded" | "RequestLimitExceeded" => {
                    return Err(Error::unavailable(
                        BACKEND,
                        format!(
                            "transact_write_items: {code}: {}",
                            reason.and_then(CancellationReason::message).unwrap_or("")
                        ),
                    ));
                }
                other => {
                    return Err(Error::backend(
                        BACKEND,
                        format!(
                            "transact_write_items cancelled on {}: {other}: {}",
                            slot.full,
                            reason.and_then(CancellationReason::message).unwrap_or("")
                        ),
                    ));
                }
            };
            if let Some((position, _)) = &slot.condition {
                verdicts.push((*position, verdict));
            }
        }
        verdicts.sort_by_key(|(position, _)| *position);
        for (_, verdict) in verdicts {
            match verdict {
                Verdict::Held => {}
                Verdict::Failed(error) => return Ok(Outcome::Failed(error)),
                // An earlier condition's state is unknown: a later failure may not be the
                // first one. Send again.
                Verdict::Unknown => return Ok(Outcome::Again { conflict: true }),
            }
        }
        Ok(Outcome::Again { conflict })
    }
}

/// After the version guard failed on `slot`: the next attempt writes above the version
/// found (a version no write can exceed is reported by the next attempt's `action`).
fn raise_floor(slot: &mut Slot, item: Option<&Item>) {
    let found = item.map_or(0, |item| item.version);
    // A guard failing on no item (cannot happen) still moves the floor up, so the next
    // attempt differs.
    slot.floor = slot.floor.max(found).max(slot.floor.saturating_add(1));
}

/// The pairs of a committed transaction: every put, in operation order.
fn committed(slots: &[Slot], versions: &[u64], puts: usize) -> Vec<KvPair> {
    let mut pairs: Vec<Option<KvPair>> = vec![None; puts];
    for (slot, version) in slots.iter().zip(versions) {
        if let Some(Write::Put {
            value, position, ..
        }) = &slot.write
        {
            pairs[*position] = Some(KvPair {
                key: slot.key.clone(),
                value: value.clone(),
                last_index: *version,
            });
        }
    }
    pairs.into_iter().flatten().collect()
}

/// Waits before sending again: exponential, with jitter so racing writers spread out.
async fn sleep_jittered(backoff: &mut kv_core::Backoff) {
    let delay = backoff.next_delay();
    let jitter = rand::rng().random_range(0..=delay.as_micros() as u64);
    tokio::time::sleep(delay / 2 + Duration::from_micros(jitter / 2)).await;
}

/// The error of a transaction DynamoDB refused outright (not a cancellation).
fn transaction_error<R>(
    inner: &Inner,
    err: aws_sdk_dynamodb::error::SdkError<TransactWriteItemsError, R>,
) -> Error
where
    R: std::fmt::Debug + Send + Sync + 'static,
{
    use aws_sdk_dynamodb::error::ProvideErrorMetadata;
    if let Some(service) = err.as_service_error()
        && service.code() == Some("ValidationException")
        && service
            .message()
            .is_some_and(|m| m.contains("size") || m.contains("Size"))
    {
        return Error::InvalidOption(format!(
            "transaction refused by DynamoDB: {}",
            service.message().unwrap_or_default()
        ));
    }
    sdk_error("transact_write_items", inner.timeout(), err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(version: u64, versioned: bool, deadline_ms: Option<u64>, deleted: bool) -> Item {
        Item {
            sk: "ns/k".into(),
            value: Bytes::from_static(b"v"),
            version,
            versioned,
            deadline_ms,
            deleted,
            owner: None,
            heartbeat: None,
            lease_ms: None,
        }
    }

    fn reason(error: Option<Error>) -> Option<ConditionFailure> {
        match error {
            None => None,
            Some(Error::ConditionFailed { reason, .. }) => Some(reason),
            Some(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn reasons_follow_the_returned_item() {
        let now = 1_000;
        let live = item(7, true, None, false);
        let expired = item(7, true, Some(now), false);
        let tomb = item(9, true, None, true);
        let exists = Condition::exists("k");
        let absent = Condition::absent("k");
        let at7 = Condition::index_equals("k", 7);
        let lock7 = Condition::LockHeld {
            key: "k".into(),
            fencing_token: 7,
        };
        for gone in [None, Some(&expired), Some(&tomb)] {
            assert_eq!(
                reason(judge(0, &exists, gone, now)),
                Some(ConditionFailure::KeyNotFound)
            );
            assert_eq!(reason(judge(0, &absent, gone, now)), None);
            assert_eq!(
                reason(judge(0, &lock7, gone, now)),
                Some(ConditionFailure::LockLost)
            );
        }
        assert_eq!(
            reason(judge(0, &absent, Some(&live), now)),
            Some(ConditionFailure::KeyExists)
        );
        // Holds on the returned item: the version guard failed.
        assert_eq!(reason(judge(0, &at7, Some(&live), now)), None);
        assert_eq!(reason(judge(0, &lock7, Some(&live), now)), None);
        let newer = item(8, true, None, false);
        assert_eq!(
            reason(judge(0, &at7, Some(&newer), now)),
            Some(ConditionFailure::KeyModified)
        );
        assert_eq!(
            reason(judge(0, &lock7, Some(&newer), now)),
            Some(ConditionFailure::LockLost)
        );
        // Items without a version: a compare at 1 is refused, a lock condition fails.
        let bare = item(VERSIONLESS, false, None, false);
        assert!(matches!(
            judge(0, &Condition::index_equals("k", 1), Some(&bare), now),
            Some(Error::NotSupported { .. })
        ));
        let lock1 = Condition::LockHeld {
            key: "k".into(),
            fencing_token: 1,
        };
        assert_eq!(
            reason(judge(0, &lock1, Some(&bare), now)),
            Some(ConditionFailure::LockLost)
        );
    }

    #[test]
    fn floors_always_rise_and_puts_keep_operation_order() {
        let mut slot = Slot {
            key: "k".into(),
            full: "k".into(),
            condition: None,
            write: Some(Write::Delete),
            floor: 5,
        };
        raise_floor(&mut slot, Some(&item(100, true, None, false)));
        assert_eq!(slot.floor, 100);
        raise_floor(&mut slot, None);
        assert_eq!(slot.floor, 101);
        let put = |key: &str, position| Slot {
            key: key.into(),
            full: key.into(),
            condition: None,
            write: Some(Write::Put {
                value: Bytes::from_static(b"v"),
                deadline_ms: None,
                position,
            }),
            floor: 0,
        };
        // Slots of conditioned keys come first; the result follows the operations.
        let slots = [put("b", 1), slot, put("a", 0)];
        let pairs = committed(&slots, &[20, 0, 10], 2);
        assert_eq!(
            pairs
                .iter()
                .map(|p| (p.key.as_str(), p.last_index))
                .collect::<Vec<_>>(),
            [("a", 10), ("b", 20)]
        );
    }
}
