//! Locks: a conditional create of the key itself with a lease deadline, renewed by
//! conditional updates; the fencing token is the acquiring write's version.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use bytes::Bytes;
use kv_core::lock::keep_alive;
use kv_core::tasks::AbortOnDrop;
use kv_core::{
    Acquired, CancellationToken, Error, HeldLock, LeaseNotifier, Lock, LockBackend, LockOptions,
    Result, ttl,
};
use rand::Rng;

use crate::item::{
    ATTR_PK, ATTR_SK, expression_attrs, num, partition_of, s, sdk_error, tombstone_item,
};
use crate::store::{Conditional, Inner};

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

#[async_trait]
impl LockBackend for DynamoLock {
    async fn acquire(&self, abandon: CancellationToken) -> Result<Acquired> {
        let inner = &self.inner;
        let full = inner.full_key(&self.key);
        let owner = format!("{:032x}", rand::rng().random::<u128>());
        let retry = inner.config.lock_retry_interval;
        let version = loop {
            if abandon.is_cancelled() {
                return Err(Error::Closed);
            }
            inner.tasks.ensure_open()?;
            // The write itself is not raced against `abandon`: a create that succeeded must
            // be returned, so that `Lock` releases it.
            let deadline = ttl::deadline_millis(self.ttl);
            match inner
                .write_live(&full, &self.value, Some(deadline), Some(&owner), true)
                .await
            {
                Ok(version) => break version,
                Err(Error::KeyExists { .. }) => {}
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
            inner
                .tasks
                .clone()
                .spawn_owned(keep_alive(ttl, notifier.clone(), move || {
                    let inner = inner.clone();
                    let full = full.clone();
                    let owner = owner.clone();
                    async move { renew(&inner, &full, &owner, version, ttl).await }
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

/// Extends the lease if the lock is still ours and unexpired. `Ok(false)`: it is not.
async fn renew(
    inner: &Inner,
    full: &str,
    owner: &str,
    version: u64,
    ttl: Duration,
) -> Result<bool> {
    let now = ttl::now_millis();
    let deadline = now + ttl.as_millis() as u64;
    let update = "SET #dl = :dl, #exp = :exp";
    let condition = "#own = :me AND #ver = :prev AND attribute_not_exists(#del) AND #dl > :now";
    let (names, values) = expression_attrs(
        &[update, condition],
        vec![
            (":dl", num(deadline)),
            (":exp", num(deadline.div_ceil(1000))),
            (":me", s(owner)),
            (":prev", num(version)),
            (":now", num(now)),
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
        Ok(_) => Ok(true),
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
