//! What the server-failure scenarios ([`restart`](crate::restart),
//! [`failover`](crate::failover)) share: a background record of what a watch delivered, and
//! waiting for a handle to answer again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use kv_core::{ReadOptions, Store};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

/// One item a watch delivered.
#[derive(Debug, Clone)]
pub(crate) enum Seen<T> {
    State(T),
    Failed(String),
}

/// What a background watch saw, with when, shared with the scenario.
#[derive(Clone)]
pub(crate) struct WatchLog<T>(Arc<Mutex<Vec<Entry<T>>>>);

type Entry<T> = (Instant, Seen<T>);

/// How waiting for a watch ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WatchEnd {
    Reached,
    Failed(String),
    Silent,
}

impl<T: Clone + Send + 'static> WatchLog<T> {
    /// Records every item of `stream` in a background task, until the stream ends or yields an
    /// `Err` (a watch's last word).
    pub(crate) fn follow(
        mut stream: BoxStream<'static, kv_core::Result<T>>,
    ) -> (Self, JoinHandle<()>) {
        let log = WatchLog(Arc::new(Mutex::new(Vec::new())));
        let writer = log.clone();
        let task = tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                let seen = match item {
                    Ok(state) => Seen::State(state),
                    Err(e) => Seen::Failed(e.to_string()),
                };
                let failed = matches!(seen, Seen::Failed(_));
                writer
                    .0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((Instant::now(), seen));
                if failed {
                    return;
                }
            }
        });
        (log, task)
    }

    pub(crate) fn items(&self) -> Vec<Entry<T>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every item, with when, in words.
    pub(crate) fn described(&self) -> Vec<(Instant, String)>
    where
        T: std::fmt::Debug,
    {
        self.items()
            .into_iter()
            .map(|(at, seen)| (at, format!("{seen:?}")))
            .collect()
    }

    pub(crate) fn ended_with_error(&self) -> Option<String> {
        self.items().into_iter().find_map(|(_, seen)| match seen {
            Seen::Failed(e) => Some(e),
            Seen::State(_) => None,
        })
    }

    /// Waits until the watch reported a state `accept` likes, or ended with an error.
    pub(crate) async fn wait_for(&self, limit: Duration, accept: impl Fn(&T) -> bool) -> WatchEnd {
        let deadline = Instant::now() + limit;
        loop {
            for (_, seen) in self.items() {
                match seen {
                    Seen::State(state) if accept(&state) => return WatchEnd::Reached,
                    Seen::Failed(error) => return WatchEnd::Failed(error),
                    Seen::State(_) => {}
                }
            }
            if Instant::now() >= deadline {
                return WatchEnd::Silent;
            }
            sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Retries a cheap read until it succeeds (transient errors only, for at most `limit`) or
/// fails for good.
pub(crate) async fn recover(store: &Arc<dyn Store>, limit: Duration) -> kv_core::Result<()> {
    let started = Instant::now();
    loop {
        match store.get("restart/probe", ReadOptions::default()).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_transient() && started.elapsed() < limit => {
                sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
