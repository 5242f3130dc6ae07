//! Locks: the key created with the lock's TTL (`Nats-Expected-Last-Subject-Sequence` 0 or the
//! revision of a delete marker), renewed by re-publishing it pinned to our last revision.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use kv_core::tasks::AbortOnDrop;
use kv_core::{
    Acquired, CancellationToken, Error, HeldLock, LeaseNotifier, LockBackend, LockOptions, Result,
};

use crate::store::{Inner, LOCK_OWNER, Publish, Published, Record};

/// The [`LockBackend`] of one key.
#[derive(Debug)]
pub(crate) struct NatsLock {
    inner: Arc<Inner>,
    key: String,
    value: Bytes,
    ttl: Duration,
}

impl NatsLock {
    pub(crate) fn new(inner: Arc<Inner>, key: String, options: LockOptions) -> Self {
        NatsLock {
            inner,
            key,
            value: options.value,
            ttl: options.ttl,
        }
    }
}

fn owner_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[async_trait]
impl LockBackend for NatsLock {
    async fn acquire(&self, abandon: CancellationToken) -> Result<Acquired> {
        let inner = &self.inner;
        let subject = inner.subject(&self.key)?;
        // Wakes the wait on every message published to the key (releases, deletes); the poll
        // covers expiries, which the server writes without publishing.
        let mut changes = match inner.client.subscribe(subject).await {
            Ok(subscriber) => Some(subscriber),
            Err(error) => {
                tracing::debug!(%error, "lock: cannot subscribe to the key, polling only");
                None
            }
        };
        let owner = owner_token();
        let pair = loop {
            inner.tasks.ensure_open()?;
            let attempt = inner.bounded(
                "lock",
                inner.create(&self.key, self.value.clone(), Some(self.ttl), Some(&owner)),
            );
            let outcome = tokio::select! {
                outcome = attempt => outcome,
                _ = abandon.cancelled() => return Err(Error::Closed),
            };
            match outcome {
                Ok(pair) => break pair,
                Err(Error::KeyExists { .. }) => {}
                Err(error) if error.is_transient() => {
                    tracing::debug!(%error, "lock: attempt failed, retrying");
                }
                Err(error) => return Err(error),
            }
            let poll = tokio::time::sleep(inner.config.lock_poll_interval);
            tokio::select! {
                _ = abandon.cancelled() => return Err(Error::Closed),
                _ = poll => {}
                _ = async {
                    match changes.as_mut() {
                        Some(changes) => { changes.next().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {}
            }
        };
        drop(changes);
        let (notifier, lease) = LeaseNotifier::new(pair.last_index);
        let current = Arc::new(AtomicU64::new(pair.last_index));
        let renewal = {
            let (inner, key, value, ttl) = (
                self.inner.clone(),
                self.key.clone(),
                self.value.clone(),
                self.ttl,
            );
            let (owner, current, notifier) = (owner.clone(), current.clone(), notifier.clone());
            inner.tasks.clone().spawn_owned(async move {
                kv_core::lock::keep_alive(ttl, notifier, || {
                    let (inner, key, value, owner, current) = (
                        inner.clone(),
                        key.clone(),
                        value.clone(),
                        owner.clone(),
                        current.clone(),
                    );
                    async move {
                        let expected = current.load(Ordering::SeqCst);
                        match inner
                            .publish(
                                Publish::value(&key, value)
                                    .ttl(Some(ttl))
                                    .owner(Some(&owner))
                                    .expected(expected),
                            )
                            .await?
                        {
                            Published::Stored(seq) => {
                                current.store(seq, Ordering::SeqCst);
                                Ok(true)
                            }
                            Published::Conflict => Ok(false),
                        }
                    }
                })
                .await
            })
        };
        Ok(Acquired {
            fencing_token: pair.last_index,
            notifier,
            lease,
            held: Box::new(NatsHeld {
                inner: self.inner.clone(),
                key: self.key.clone(),
                owner,
                current,
                renewal: Some(renewal),
            }),
        })
    }
}

/// A held lock: its renewal task and what proves ownership.
#[derive(Debug)]
struct NatsHeld {
    inner: Arc<Inner>,
    key: String,
    owner: String,
    current: Arc<AtomicU64>,
    renewal: Option<AbortOnDrop>,
}

#[async_trait]
impl HeldLock for NatsHeld {
    async fn release(mut self: Box<Self>) -> Result<()> {
        drop(self.renewal.take());
        let inner = &self.inner;
        inner
            .bounded("unlock", async {
                let mut expected = self.current.load(Ordering::SeqCst);
                loop {
                    match inner
                        .publish(Publish::delete_marker(&self.key).expected(expected))
                        .await?
                    {
                        Published::Stored(_) => return Ok(()),
                        Published::Conflict => {}
                    }
                    // A renewal may have been stored after we last saw its revision (aborted
                    // while waiting for its ack): the key is still ours if it carries our
                    // owner token.
                    let subject = inner.subject(&self.key)?;
                    let message = match inner.stream.get_last_raw_message_by_subject(&subject).await
                    {
                        Ok(message) => message,
                        Err(_) => return Ok(()),
                    };
                    let ours = message
                        .headers
                        .get(LOCK_OWNER)
                        .is_some_and(|v| v.as_str() == self.owner);
                    let live = matches!(
                        inner.record_of(
                            &self.key,
                            message.sequence,
                            Some(&message.headers),
                            &message.payload
                        ),
                        Record::Live(_)
                    );
                    if !(ours && live) || message.sequence == expected {
                        return Ok(());
                    }
                    expected = message.sequence;
                }
            })
            .await
    }
}
