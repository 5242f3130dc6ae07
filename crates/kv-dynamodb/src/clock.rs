//! The server's clock, as seen from this handle: an estimate of DynamoDB's time kept from the
//! HTTP `Date` header of every response, so that TTL deadlines are written and judged on one
//! clock (the server's) rather than on each client's wall clock.
//!
//! Every DynamoDB response (DynamoDB Local's too) carries `Date`, the server's time at
//! one-second resolution (RFC 7231 IMF-fixdate, truncated to the second). An SDK interceptor
//! notes the handle's *monotonic* time just before each attempt is transmitted (`t0`) and
//! when its response arrives (`t1`). The server produced the response at some server time
//! `s` in `[D, D + 1 s)` and at some local time `l` in `[t0, t1]`, so the offset
//! `server − monotonic` lies in `(D − t1, D + 1 s − t0]`. The handle keeps the intersection of
//! these intervals (a sample that does not overlap it — the server's clock stepped, or the
//! local monotonic clock drifted — replaces it), and "server now" is the local monotonic
//! time plus the interval's midpoint. The error of one handle's estimate is therefore at most
//! half the interval: 500 ms plus half a round trip after one sample, less once samples with
//! different sub-second phases narrowed it. The local *wall* clock plays no part once a
//! sample has been taken (connecting makes one: DescribeTable); before that, and if no
//! response ever carries a parsable `Date` (a proxy removing it), the local wall clock is the
//! documented fallback.

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
use aws_sdk_dynamodb::primitives::{DateTime, DateTimeFormat};

/// The resolution of the `Date` header.
const DATE_RESOLUTION_MS: i64 = 1000;
/// Attempts in flight that never finished (their future was dropped) are forgotten after this.
const PENDING_STALE: Duration = Duration::from_secs(300);

/// The bounds on `server ms − monotonic ms since base`.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    lo: i64,
    hi: i64,
}

/// One handle's estimate of the server's clock.
pub(crate) struct ServerClock {
    /// The origin of the monotonic milliseconds.
    base: Instant,
    estimate: Mutex<Option<Bounds>>,
    /// Transmission start of the attempts in flight, by their orchestrator context's address
    /// (stable for an operation's lifetime: the context lives in its pinned future).
    pending: Mutex<HashMap<usize, Instant>>,
    /// The latest time `now_ms` returned.
    last_now: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for ServerClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerClock")
            .field("offset", &self.offset_bounds())
            .finish_non_exhaustive()
    }
}

impl ServerClock {
    pub fn new() -> Arc<Self> {
        Arc::new(ServerClock {
            base: Instant::now(),
            estimate: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            last_now: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn mono_ms(&self, at: Instant) -> i64 {
        at.saturating_duration_since(self.base).as_millis() as i64
    }

    fn offset_bounds(&self) -> Option<(i64, i64)> {
        let estimate = *self.estimate.lock().unwrap_or_else(|e| e.into_inner());
        estimate.map(|b| (b.lo, b.hi))
    }

    /// True once a `Date` header has been seen.
    pub fn synced(&self) -> bool {
        self.offset_bounds().is_some()
    }

    /// The half-width of the current estimate (its worst-case error), if synced.
    #[cfg(test)]
    pub fn uncertainty(&self) -> Option<Duration> {
        self.offset_bounds()
            .map(|(lo, hi)| Duration::from_millis(((hi - lo).max(0) / 2) as u64))
    }

    /// The server's time now, Unix milliseconds (estimated; see the module docs). Falls back
    /// to the local wall clock before any `Date` header was seen.
    pub fn now_ms(&self) -> u64 {
        // A refined estimate may move the middle of the interval back by a fraction of a
        // second: this handle's clock then stays put, so a key judged expired stays expired for
        // its readers. A larger step back (the server's clock was set back) is followed, and
        // the local fallback is never held against later estimates.
        use std::sync::atomic::Ordering::SeqCst;
        const NOISE_MS: u64 = 2_000;
        let estimate = self.estimate_ms();
        if !self.synced() {
            return estimate;
        }
        let previous = self.last_now.load(SeqCst);
        if estimate >= previous || previous - estimate > NOISE_MS {
            self.last_now.store(estimate, SeqCst);
            estimate
        } else {
            previous
        }
    }

    fn estimate_ms(&self) -> u64 {
        match self.offset_bounds() {
            Some((lo, hi)) => {
                let now = self.mono_ms(Instant::now()) + lo + (hi - lo) / 2;
                now.max(0) as u64
            }
            None => kv_core::ttl::now_millis(),
        }
    }

    /// The server time `ttl` from now, Unix milliseconds.
    pub fn deadline_ms(&self, ttl: Duration) -> u64 {
        self.now_ms().saturating_add(ttl.as_millis() as u64)
    }

    /// Learns from one response: sent at `t0`, received at `t1`, header `Date` = `date_ms`.
    pub fn observe(&self, t0: Instant, t1: Instant, date_ms: i64) {
        let sample = Bounds {
            lo: date_ms - self.mono_ms(t1),
            hi: date_ms + DATE_RESOLUTION_MS - self.mono_ms(t0),
        };
        let mut estimate = self.estimate.lock().unwrap_or_else(|e| e.into_inner());
        *estimate = Some(match *estimate {
            Some(current) if sample.lo <= current.hi && current.lo <= sample.hi => Bounds {
                lo: current.lo.max(sample.lo),
                hi: current.hi.min(sample.hi),
            },
            // First sample, or the truth moved outside what we knew: start again from it.
            _ => sample,
        });
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
        let date_ms = date
            .and_then(|d| DateTime::from_str(d.trim(), DateTimeFormat::HttpDate).ok())
            .and_then(|d| d.to_millis().ok());
        if let (Some(t0), Some(date_ms)) = (t0, date_ms) {
            self.observe(t0, t1, date_ms);
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
    fn intervals_intersect_and_reset() {
        let clock = ServerClock::new();
        assert!(!clock.synced());
        let t0 = clock.base + Duration::from_millis(1000);
        let t1 = clock.base + Duration::from_millis(1100);
        // Server time 5_000_000 ms at local 1000..1100: offset in [4_998_900, 4_999_000 + 1000].
        clock.observe(t0, t1, 5_000_000);
        assert_eq!(clock.offset_bounds(), Some((4_998_900, 5_000_000)));
        // A second sample narrows it.
        let t0 = clock.base + Duration::from_millis(1600);
        let t1 = clock.base + Duration::from_millis(1650);
        clock.observe(t0, t1, 5_000_000);
        assert_eq!(clock.offset_bounds(), Some((4_998_900, 4_999_400)));
        // A disjoint one (the server's clock stepped 60 s) replaces it.
        clock.observe(t0, t1, 5_060_000);
        assert_eq!(clock.offset_bounds(), Some((5_058_350, 5_059_400)));
        assert_eq!(clock.uncertainty(), Some(Duration::from_millis(525)));
    }

    #[test]
    fn date_headers_parse() {
        let clock = ServerClock::new();
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
