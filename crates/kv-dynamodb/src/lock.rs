//! Locks: a conditional create of the key itself, kept alive by heartbeats; a held lock is
//! taken over only by *lease observation* (no clock is compared with another client's): the
//! item must stay unchanged for its whole lease, measured on the contender's monotonic clock.
//! The fencing token is the acquiring write's version.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;
use kv_core::lock::keep_alive;
use kv_core::tasks::AbortOnDrop;
use kv_core::{
    Acquired, CancellationToken, Error, HeldLock, LeaseNotifier, Lock, LockBackend, LockOptions,
    Result,
};
use rand::Rng;

use crate::item::{
    ATTR_EXPIRES, ATTR_HEARTBEAT, ATTR_LEASE, ATTR_PK, ATTR_SK, BACKEND, Item, VERSION_BELOW,
    expression_attrs, live_item, next_version, num, partition_of, s, sdk_error, tombstone_item,
    version_exhausted,
};
use crate::store::{Conditional, Inner};

/// How often a lock write is retried when only the version guard failed.
const VERSION_RETRIES: usize = 64;

/// A lock may be created over: no item, a tombstone, or a plain key (no `owner`) whose TTL ran
/// out on the server's clock. An item with an `owner` is a held lock, whatever its deadline
/// says: only [lease observation](take_over) can take it.
const LOCK_FREE: &str = "(attribute_not_exists(#sk) OR attribute_exists(#del) OR (attribute_not_exists(#own) AND #dl <= :now))";

/// A lock's backend: what to write where, for how long.
#[derive(Debug)]
struct DynamoLock {
    inner: Arc<Inner>,
    key: String,
    value: Bytes,
    ttl: Duration,
}

/// An unheld lock on the normalised `key`.
pub(crate) fn new_lock(inner: Arc<Inner>, key: String, options: LockOptions) -> Lock {
    let tasks = inner.tasks.clone();
    let backend = DynamoLock {
        inner,
        key: key.clone(),
        value: options.value,
        ttl: options.ttl,
    };
    Lock::new(key, Arc::new(backend), tasks)
}

/// What a contender saw of a held lock: any renewal, release or take-over changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    version: u64,
    owner: String,
    heartbeat: Option<u64>,
}

/// The outcome of one attempt to create the lock.
enum Attempt {
    /// Created, at this version.
    Acquired(u64),
    /// Held by someone (an item with an `owner`): this one.
    Held(Item, Seen),
    /// A live plain key (no `owner`) is in the way.
    Busy,
}

/// A contender's observation of a held lock: what it saw, since when (monotonic).
struct Watching {
    seen: Seen,
    since: Instant,
}

#[async_trait]
impl LockBackend for DynamoLock {
    async fn acquire(&self, abandon: CancellationToken) -> Result<Acquired> {
        let inner = &self.inner;
        let full = inner.full_key(&self.key);
        let owner = format!("{:032x}", rand::rng().random::<u128>());
        let retry = inner.config.lock_retry_interval;
        let margin = inner.caps.ttl_precision;
        let mut watching: Option<Watching> = None;
        let (version, started) = loop {
            if abandon.is_cancelled() {
                return Err(Error::Closed);
            }
            inner.tasks.ensure_open()?;
            // The writes are not raced against `abandon`: a write that succeeded must be
            // returned, so that `Lock` releases it.
            let started = Instant::now();
            match try_create(inner, &full, &self.value, &owner, self.ttl).await {
                Ok(Attempt::Acquired(version)) => break (version, started),
                Ok(Attempt::Held(item, seen)) => {
                    let lease = item.lease_ms.map_or(self.ttl, Duration::from_millis);
                    match &watching {
                        Some(w) if w.seen == seen => {
                            if w.since.elapsed() >= lease + margin {
                                // Unchanged for a whole lease on our own clock: the holder
                                // stopped renewing. Take it over, on exactly what we saw (a
                                // heartbeat landing first makes this fail).
                                let started = Instant::now();
                                match take_over(inner, &full, &self.value, &owner, self.ttl, &seen)
                                    .await
                                {
                                    Ok(Some(version)) => break (version, started),
                                    Ok(None) => {
                                        watching = None;
                                        continue;
                                    }
                                    Err(error) if error.is_transient() => {
                                        tracing::debug!(%error, key = %self.key, "lock take-over failed; retrying");
                                    }
                                    Err(error) => return Err(error),
                                }
                            }
                        }
                        _ => {
                            watching = Some(Watching {
                                seen,
                                since: Instant::now(),
                            })
                        }
                    }
                }
                Ok(Attempt::Busy) => watching = None,
                Err(error) if error.is_transient() => {
                    tracing::debug!(%error, key = %self.key, "lock attempt failed; retrying");
                }
                Err(error) => return Err(error),
            }
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = abandon.cancelled() => return Err(Error::Closed),
            }
        };
        let (notifier, lease) = LeaseNotifier::new(version);
        let renewal = {
            let inner = inner.clone();
            let full = full.clone();
            let owner = owner.clone();
            let ttl = self.ttl;
            let state = Arc::new(Renewal {
                heartbeat: AtomicU64::new(0),
                last_renewed: Mutex::new(started),
            });
            inner
                .tasks
                .clone()
                .spawn_owned(keep_alive(ttl, notifier.clone(), move || {
                    let inner = inner.clone();
                    let full = full.clone();
                    let owner = owner.clone();
                    let state = state.clone();
                    async move { renew(&inner, &full, &owner, version, ttl, &state).await }
                }))
        };
        Ok(Acquired {
            fencing_token: version,
            notifier,
            lease,
            held: Box::new(DynamoHeld {
                inner: inner.clone(),
                full,
                owner,
                version,
                _renewal: renewal,
            }),
        })
    }
}

/// The attributes of a held lock: the live item, plus heartbeat 0 and the lease. DynamoDB's
/// TTL process may remove it only a lease after its deadline (`expires_at`), so that a dead
/// holder's lock is normally taken over by observation, not by its disappearance.
fn lock_item(
    inner: &Inner,
    full: &str,
    value: &[u8],
    version: u64,
    owner: &str,
    ttl: Duration,
) -> std::collections::HashMap<String, AttributeValue> {
    let lease_ms = ttl.as_millis() as u64;
    let deadline = inner.clock.deadline_ms(ttl);
    let mut item = live_item(full, value, version, Some(deadline), Some(owner));
    item.insert(ATTR_HEARTBEAT.to_owned(), num(0));
    item.insert(ATTR_LEASE.to_owned(), num(lease_ms));
    item.insert(
        ATTR_EXPIRES.to_owned(),
        num((deadline + lease_ms).div_ceil(1000)),
    );
    item
}

/// One attempt to create the lock where the key is free (see [`LOCK_FREE`]).
async fn try_create(
    inner: &Inner,
    full: &str,
    value: &[u8],
    owner: &str,
    ttl: Duration,
) -> Result<Attempt> {
    let condition = format!("{LOCK_FREE} AND {VERSION_BELOW}");
    let mut floor = 0;
    for _ in 0..VERSION_RETRIES {
        let version = next_version(floor).ok_or_else(|| version_exhausted(full))?;
        let now = inner.clock.now_ms();
        let item = lock_item(inner, full, value, version, owner, ttl);
        match inner
            .put_conditional(
                "lock",
                item,
                &condition,
                vec![(":ver", num(version)), (":now", num(now))],
                false,
            )
            .await?
        {
            Conditional::Written(_) => return Ok(Attempt::Acquired(version)),
            Conditional::Failed(None) => {
                return Err(Error::backend(
                    BACKEND,
                    "conditional write failed on a missing item",
                ));
            }
            Conditional::Failed(Some(current)) => {
                if !current.deleted
                    && let Some(holder) = current.owner.clone()
                {
                    let seen = Seen {
                        version: current.version,
                        owner: holder,
                        heartbeat: current.heartbeat,
                    };
                    return Ok(Attempt::Held(current, seen));
                }
                if current.live_at(now) {
                    return Ok(Attempt::Busy);
                }
                floor = current.version;
            }
        }
    }
    Err(Error::backend(
        BACKEND,
        format!("{full}: too much write contention to pick a version"),
    ))
}

/// Takes over a lock seen unchanged for a whole lease: a conditional write on exactly the
/// version, owner and heartbeat seen, at a higher version (the new fencing token).
/// `Ok(None)`: the item changed meanwhile (a heartbeat, a release, another contender).
async fn take_over(
    inner: &Inner,
    full: &str,
    value: &[u8],
    owner: &str,
    ttl: Duration,
    seen: &Seen,
) -> Result<Option<u64>> {
    let version = next_version(seen.version).ok_or_else(|| version_exhausted(full))?;
    let item = lock_item(inner, full, value, version, owner, ttl);
    let heartbeat = match seen.heartbeat {
        Some(_) => "#hb = :hb",
        None => "attribute_not_exists(#hb)",
    };
    let condition =
        format!("#ver = :seen AND #own = :holder AND attribute_not_exists(#del) AND {heartbeat}");
    match inner
        .put_conditional(
            "lock_take_over",
            item,
            &condition,
            vec![
                (":seen", num(seen.version)),
                (":holder", s(&seen.owner)),
                (":hb", num(seen.heartbeat.unwrap_or(0))),
            ],
            false,
        )
        .await?
    {
        Conditional::Written(_) => {
            tracing::debug!(key = %full, "lock taken over after a lease without heartbeat");
            Ok(Some(version))
        }
        Conditional::Failed(_) => Ok(None),
    }
}

/// The holder's renewal state.
#[derive(Debug)]
struct Renewal {
    /// The last heartbeat written.
    heartbeat: AtomicU64,
    /// When the last successful write (acquisition or renewal) was sent (monotonic).
    last_renewed: Mutex<Instant>,
}

/// Extends the lease and beats the heart if the lock is still ours. `Ok(false)`: it is not
/// (deleted, overwritten, taken over), or our own lease ran out on our monotonic clock since
/// the last successful renewal was sent (a contender may have seen it unchanged for a lease).
async fn renew(
    inner: &Inner,
    full: &str,
    owner: &str,
    version: u64,
    ttl: Duration,
    state: &Renewal,
) -> Result<bool> {
    let started = Instant::now();
    let last = *state.last_renewed.lock().unwrap_or_else(|e| e.into_inner());
    if started.saturating_duration_since(last) >= ttl {
        return Ok(false);
    }
    let heartbeat = state.heartbeat.fetch_add(1, Ordering::Relaxed) + 1;
    let lease_ms = ttl.as_millis() as u64;
    let deadline = inner.clock.deadline_ms(ttl);
    let update = "SET #dl = :dl, #exp = :exp, #hb = :hb, #lease = :lease";
    let condition = "#own = :me AND #ver = :prev AND attribute_not_exists(#del)";
    let (names, values) = expression_attrs(
        &[update, condition],
        vec![
            (":dl", num(deadline)),
            (":exp", num((deadline + lease_ms).div_ceil(1000))),
            (":hb", num(heartbeat)),
            (":lease", num(lease_ms)),
            (":me", s(owner)),
            (":prev", num(version)),
        ],
    );
    let result = inner
        .client
        .update_item()
        .table_name(&inner.config.table)
        .key(ATTR_PK, s(partition_of(full)))
        .key(ATTR_SK, s(full))
        .update_expression(update)
        .condition_expression(condition)
        .set_expression_attribute_names(names)
        .set_expression_attribute_values(values)
        .send()
        .await;
    match result {
        Ok(_) => {
            *state.last_renewed.lock().unwrap_or_else(|e| e.into_inner()) = started;
            Ok(true)
        }
        Err(err) => {
            if let Some(UpdateItemError::ConditionalCheckFailedException(_)) =
                err.as_service_error()
            {
                return Ok(false);
            }
            Err(sdk_error("renew_lock", inner.timeout(), err))
        }
    }
}

/// A held lock: who we are and which version we wrote.
#[derive(Debug)]
struct DynamoHeld {
    inner: Arc<Inner>,
    full: String,
    owner: String,
    version: u64,
    _renewal: AbortOnDrop,
}

#[async_trait]
impl HeldLock for DynamoHeld {
    async fn release(self: Box<Self>) -> Result<()> {
        let DynamoHeld {
            inner,
            full,
            owner,
            version,
            _renewal,
        } = *self;
        drop(_renewal);
        let version_after = crate::item::next_version(version)
            .ok_or_else(|| crate::item::version_exhausted(&full))?;
        let tomb = tombstone_item(&full, version_after, inner.config.tombstone_ttl);
        // Only if still ours: a lock taken over (after expiry) or deleted is left alone.
        match inner
            .put_conditional(
                "unlock",
                tomb,
                "#own = :me AND #ver = :prev",
                vec![(":me", s(&owner)), (":prev", num(version))],
                false,
            )
            .await?
        {
            Conditional::Written(_) | Conditional::Failed(_) => Ok(()),
        }
    }
}
