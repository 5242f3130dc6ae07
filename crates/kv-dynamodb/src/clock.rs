//! The server's clock, as seen from this handle: DynamoDB's time estimated from the HTTP
//! `Date` header of every response (kv-core's [`kv_core::clock::ServerClock`], shared with
//! kv-consul), so that TTL deadlines are written and judged on one clock (the server's)
//! rather than on each client's wall clock.
//!
//! Every DynamoDB response (DynamoDB Local's too) carries `Date`. An SDK interceptor notes the
//! handle's *monotonic* time just before each attempt is transmitted and when its response
//! arrives, and feeds the pair with the header to the estimate. The local *wall* clock plays
//! no part once a sample has been taken (connecting makes one: DescribeTable); before that,
//! and if no response ever carries a parsable `Date` (a proxy removing it), the local wall
//! clock is the documented fallback.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::interceptors::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
    FinalizerInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;

/// Attempts in flight that never finished (their future was dropped) are forgotten after this.
const PENDING_STALE: Duration = Duration::from_secs(300);

/// One handle's estimate of the server's clock, and the attempts in flight feeding it.
pub(crate) struct ServerClock {
    estimate: kv_core::clock::ServerClock,
    /// Transmission start of the attempts in flight, by their orchestrator context's address
    /// (stable for an operation's lifetime: the context lives in its pinned future).
    pending: Mutex<HashMap<usize, Instant>>,
}

impl fmt::Debug for ServerClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerClock")
            .field("offset", &self.estimate.offset())
            .finish_non_exhaustive()
    }
}

impl ServerClock {
    pub fn new() -> Arc<Self> {
        Arc::new(ServerClock {
            estimate: kv_core::clock::ServerClock::new(crate::item::BACKEND),
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// True once a `Date` header has been seen.
    pub fn synced(&self) -> bool {
        self.estimate.synced()
    }

    /// The server's time now, Unix milliseconds (estimated; never runs backwards by less
    /// than a clock step). Falls back to the local wall clock before any `Date` was seen.
    pub fn now_ms(&self) -> u64 {
        self.estimate.now_millis()
    }

    /// The server time `ttl` from now, Unix milliseconds.
    pub fn deadline_ms(&self, ttl: Duration) -> u64 {
        self.estimate.deadline(ttl)
    }

    fn sent(&self, key: usize) {
        let now = Instant::now();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() > 256 {
            pending.retain(|_, at| now.saturating_duration_since(*at) < PENDING_STALE);
        }
        pending.insert(key, now);
    }

    fn received(&self, key: usize, date: Option<&str>) {
        let t1 = Instant::now();
        let t0 = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        if let Some(t0) = t0 {
            self.estimate.observe(t0, t1, date);
        }
    }

    fn finished(&self, key: usize) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }
}

/// The SDK interceptor feeding a [`ServerClock`] from every response's `Date` header.
#[derive(Debug, Clone)]
pub(crate) struct DateInterceptor(pub Arc<ServerClock>);

impl Intercept for DateInterceptor {
    fn name(&self) -> &'static str {
        "kv-dynamodb-server-clock"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.sent(std::ptr::from_ref(context.inner()) as usize);
        Ok(())
    }

    fn read_after_transmit(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let date = context.response().headers().get("date");
        self.0
            .received(std::ptr::from_ref(context.inner()) as usize, date);
        Ok(())
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0
            .finished(std::ptr::from_ref(context.inner()) as usize);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_headers_of_matched_attempts_feed_the_estimate() {
        let clock = ServerClock::new();
        assert!(!clock.synced());
        clock.sent(1);
        clock.received(1, Some("Thu, 26 Nov 2026 14:19:29 GMT"));
        clock.finished(1);
        assert!(clock.synced());
        let now = clock.now_ms();
        assert!(
            (1_795_702_769_000..1_795_702_771_000).contains(&now),
            "{now}"
        );
        // Unparsable or unmatched: ignored.
        let other = ServerClock::new();
        other.sent(2);
        other.received(2, Some("yesterday"));
        other.received(3, Some("Thu, 26 Nov 2026 14:19:29 GMT"));
        assert!(!other.synced());
    }
}
