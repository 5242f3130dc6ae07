//! The server's clock as seen from this process: every TTL deadline is judged on it.
//!
//! A key's deadline is its marker's `mtime` (stamped by the ZooKeeper leader when it
//! proposed the write) plus the TTL, i.e. a time on the *server's* clock. Comparing it with
//! this process's wall clock would make expiry depend on the clients' clocks (a client 30 s
//! ahead would take over live locks). So each handle keeps an estimate of the server's clock:
//!
//! * A *sample* is one write whose stat comes back: the server stamped its `mtime` (whole
//!   milliseconds) at some instant between sending the request and receiving the answer.
//!   Taking that instant to be the middle of the round trip (on the local *monotonic* clock),
//!   the server's clock read `mtime` then, give or take half the round trip plus 1 ms of
//!   resolution.
//! * "Now on the server" = `mtime + (monotonic now − middle)`. The local wall clock is not
//!   used at all, so neither a skewed nor a stepped local clock matters; only the rate of
//!   the local monotonic clock against the server's clock does, bounded here by
//!   [`DRIFT_PPM`] (NTP slews a clock by at most 500 ppm) times the sample's age.
//! * Samples come from a per-session probe (see `Inner::probe_clock`: one transaction that
//!   creates, writes and deletes a node, leaving nothing behind) sent at
//!   connect and whenever the newest sample is older than [`REFRESH`] (checked lazily before
//!   each decision), and for free from every successful write and lock renewal of the
//!   handle. The estimate used is the sample with the smallest error bound *now* (short round
//!   trip, recent) among the last [`MAX_SAMPLES`].

use std::collections::VecDeque;
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use tokio::time::Instant;

/// The newest sample may be this old before a decision first takes a new one.
pub(crate) const REFRESH: Duration = Duration::from_secs(30);
/// After a failed probe, the next attempt waits at least this long (decisions meanwhile use
/// the samples there are).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// How many recent samples are kept.
const MAX_SAMPLES: usize = 8;
/// The assumed worst rate difference between the local monotonic clock and the server's
/// clock, in parts per million (NTP slews by at most 500 ppm).
const DRIFT_PPM: u64 = 500;

/// One measurement of the server's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    /// The `mtime` the server stamped on the write, Unix milliseconds on its clock.
    server_ms: i64,
    /// The middle of the round trip, on the local monotonic clock.
    mid: Instant,
    /// The round trip.
    rtt: Duration,
}

impl Sample {
    /// A write sent at `sent` whose answer, stamped `server_ms` by the server, arrived at
    /// `received`.
    pub(crate) fn new(sent: Instant, received: Instant, server_ms: i64) -> Self {
        let rtt = received.saturating_duration_since(sent);
        Sample {
            server_ms,
            mid: sent + rtt / 2,
            rtt,
        }
    }

    /// The server's clock at the local monotonic instant `at`, by this sample.
    pub(crate) fn estimate(&self, at: Instant) -> ServerTime {
        let (elapsed, age) = if at >= self.mid {
            let age = at - self.mid;
            (age.as_millis() as i64, age)
        } else {
            let before = self.mid - at;
            (-(before.as_millis() as i64), before)
        };
        let ms = self.server_ms.saturating_add(elapsed).max(0) as u64;
        ServerTime {
            ms,
            error_ms: self.error_ms(age),
        }
    }

    /// The error bound of this sample's estimate `age` away from its middle: half the round
    /// trip (rounded up), 1 ms for the server's millisecond resolution, and the drift.
    fn error_ms(&self, age: Duration) -> u64 {
        let half_rtt = self.rtt.as_micros().div_ceil(2000) as u64;
        let drift = (age.as_millis() as u64)
            .saturating_mul(DRIFT_PPM)
            .div_ceil(1_000_000);
        half_rtt + 1 + drift
    }
}

/// An estimate of the server's clock: `ms` (Unix milliseconds), within `± error_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServerTime {
    pub(crate) ms: u64,
    pub(crate) error_ms: u64,
}

impl ServerTime {
    /// The fallback when the server's clock could never be measured: the local wall clock,
    /// assumed to agree with the server's.
    pub(crate) fn local() -> Self {
        ServerTime {
            ms: kv_core::ttl::now_millis(),
            error_ms: 0,
        }
    }

    /// True when `deadline` (Unix ms on the server's clock, 0 = none) has passed by the best
    /// estimate: what readers (get, list, watches, CAS) go by.
    pub(crate) fn expired(&self, deadline: u64) -> bool {
        deadline != 0 && deadline <= self.ms
    }

    /// True when `deadline` has passed even if the server's clock is `error_ms` behind the
    /// estimate: what a lock take-over goes by, so that it never starts while the holder's
    /// lease may still run.
    pub(crate) fn surely_expired(&self, deadline: u64) -> bool {
        deadline != 0 && deadline.saturating_add(self.error_ms) <= self.ms
    }

    /// How long, on the local monotonic clock, until `deadline` has passed by the estimate
    /// (`surely` adds the error bound), plus 1 ms so that the check after the wait succeeds.
    pub(crate) fn until(&self, deadline: u64, surely: bool) -> Duration {
        let margin = if surely { self.error_ms } else { 0 };
        Duration::from_millis(deadline.saturating_add(margin).saturating_sub(self.ms) + 1)
    }
}

/// A handle's estimate of the server's clock (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct ServerClock {
    state: StdMutex<State>,
    /// Held while probing, so that concurrent decisions send one probe, not one each.
    pub(crate) probing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    /// The most recent samples, oldest first.
    samples: VecDeque<Sample>,
    /// When the last probe was started.
    last_attempt: Option<Instant>,
    /// Whether the fallback to the local clock was already logged.
    warned: bool,
    /// The latest time `now` returned: switching to a better sample may move the estimate
    /// back a little, but this handle's clock never runs backwards.
    last_ms: u64,
}

impl ServerClock {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a sample.
    pub(crate) fn record(&self, sample: Sample) {
        let mut state = self.state();
        if state.samples.len() == MAX_SAMPLES {
            state.samples.pop_front();
        }
        state.samples.push_back(sample);
    }

    /// Records the stat of a write sent at `sent` and answered just now.
    pub(crate) fn record_write(&self, sent: Instant, server_mtime: i64) {
        self.record(Sample::new(sent, Instant::now(), server_mtime));
    }

    /// True when a decision should first take a new sample: the newest is older than
    /// [`REFRESH`] (or there is none), and no probe was started in the last moment.
    pub(crate) fn needs_probe(&self) -> bool {
        let state = self.state();
        let now = Instant::now();
        let stale = state
            .samples
            .iter()
            .map(|s| s.mid)
            .max()
            .is_none_or(|newest| now.saturating_duration_since(newest) >= REFRESH);
        let recently_tried = state
            .last_attempt
            .is_some_and(|at| now.saturating_duration_since(at) < RETRY_AFTER_FAILURE);
        stale && !recently_tried
    }

    /// Notes that a probe starts now.
    pub(crate) fn attempting(&self) {
        self.state().last_attempt = Some(Instant::now());
    }

    /// The server's clock now: the estimate of the sample with the smallest error bound, or
    /// the local wall clock if no sample was ever taken.
    pub(crate) fn now(&self) -> ServerTime {
        let mut state = self.state();
        let now = Instant::now();
        let best = state
            .samples
            .iter()
            .map(|s| s.estimate(now))
            .min_by_key(|t| t.error_ms);
        match best {
            Some(mut best) => {
                // Switching to a better sample may move the estimate back by a fraction of a
                // second: stay put then. A larger step back (the server's clock was set back)
                // is followed.
                if best.ms < state.last_ms && state.last_ms - best.ms <= 2_000 {
                    best.ms = state.last_ms;
                }
                state.last_ms = best.ms;
                best
            }
            None => {
                if !state.warned {
                    state.warned = true;
                    tracing::warn!(
                        "the ZooKeeper server's clock could not be measured yet: judging TTL expiry by the local clock"
                    );
                }
                ServerTime::local()
            }
        }
    }

    /// The estimated offset of the server's clock from the local wall clock (server − local,
    /// ms) and its error bound, if measured.
    pub(crate) fn offset(&self) -> Option<(i64, u64)> {
        if self.state().samples.is_empty() {
            return None;
        }
        let local = kv_core::ttl::now_millis() as i64;
        let server = self.now();
        Some((server.ms as i64 - local, server.error_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn offset_arithmetic() {
        let t0 = Instant::now();
        // Sent at t0, answered 10 ms later, stamped 1_000_000 by the server: the server read
        // 1_000_000 at t0 + 5 ms, within 5 ms (half the round trip) + 1 ms (resolution).
        let sample = Sample::new(t0, t0 + ms(10), 1_000_000);
        assert_eq!(sample.rtt, ms(10));
        assert_eq!(sample.mid, t0 + ms(5));
        assert_eq!(
            sample.estimate(t0 + ms(5)),
            ServerTime {
                ms: 1_000_000,
                error_ms: 6
            }
        );
        // 2 s later on the monotonic clock: 2 s later on the server's, plus 1 ms of drift
        // (500 ppm of 2 s) in the bound.
        assert_eq!(
            sample.estimate(t0 + ms(2005)),
            ServerTime {
                ms: 1_002_000,
                error_ms: 7
            }
        );
        // Before the middle (a read stamped earlier): counts backwards.
        assert_eq!(sample.estimate(t0).ms, 999_995);
        // An odd round trip rounds the half up.
        let odd = Sample::new(t0, t0 + Duration::from_micros(3_001), 5);
        assert_eq!(odd.estimate(odd.mid).error_ms, 2 + 1);
        // Answers never come before requests, but a clamped round trip must not panic.
        let clamped = Sample::new(t0 + ms(1), t0, 7);
        assert_eq!(clamped.rtt, Duration::ZERO);
    }

    #[test]
    fn deadlines_on_the_server_clock() {
        let now = ServerTime {
            ms: 10_000,
            error_ms: 20,
        };
        assert!(!now.expired(0), "0 = no deadline");
        assert!(now.expired(10_000));
        assert!(!now.expired(10_001));
        assert!(!now.surely_expired(9_990), "within the error bound");
        assert!(now.surely_expired(9_980));
        assert_eq!(now.until(10_500, false), ms(501));
        assert_eq!(now.until(10_500, true), ms(521));
        assert_eq!(now.until(9_000, false), ms(1));
    }

    #[test]
    fn the_tightest_sample_wins() {
        let clock = ServerClock::default();
        assert!(clock.needs_probe());
        assert!(clock.offset().is_none());
        let fallback = clock.now();
        assert_eq!(fallback.error_ms, 0);
        // Samples taken in the last half second.
        let t0 = Instant::now() - ms(500);
        // A slow sample and a fast one disagreeing by 40 ms: the fast one (error 2 ms) is
        // used.
        clock.record(Sample::new(t0, t0 + ms(200), 1_000_040));
        clock.record(Sample::new(t0 + ms(99), t0 + ms(101), 1_000_000));
        let now = clock.now();
        let elapsed = Instant::now().saturating_duration_since(t0 + ms(100));
        assert!(now.error_ms <= 3, "{now:?}");
        assert!(elapsed >= ms(400), "{elapsed:?}");
        assert!(
            now.ms.abs_diff(1_000_000 + elapsed.as_millis() as u64) <= 1,
            "{now:?}"
        );
        assert!(!clock.needs_probe(), "fresh samples");
        for n in 0..MAX_SAMPLES as i64 {
            clock.record(Sample::new(t0, t0 + ms(50), 2_000_000 + n));
        }
        assert_eq!(clock.state().samples.len(), MAX_SAMPLES);
        assert!(clock.now().ms >= 2_000_000, "old samples are dropped");
    }
}
