//! A store server's clock, as one handle estimates it from the HTTP `Date` headers of the
//! server's responses, so that backends write and judge TTL deadlines in server time, never
//! in the local wall clock: clients whose clocks disagree still agree on expiry.
//!
//! `Date` is stamped from the answering server's clock in whole seconds (truncated). A request
//! sent at local instant `t0` and answered (headers received) at `t1` with `Date: D` proves
//! that the server's clock read within `[D, D + 1 s)` at some instant of `[t0, t1]`: with
//! local time on the **monotonic** clock, the offset `server − local` lies in
//! `[D − t1, D + 1 s − t0]`, an interval 1 s + round trip wide.
//!
//! The handle keeps the intersection of the intervals of its responses: each new one is
//! intersected with it (after widening it by [`DRIFT_PPM`] of the time since it was last
//! narrowed, for the drift between the two clocks), so that responses received on either
//! side of one of the server's second boundaries narrow it well below a second (down to about
//! the round trip). An empty intersection means a clock stepped (or another server with
//! another clock answers): the interval restarts from the new sample. The estimate is the
//! interval's **midpoint**, off by at most half its width: ≤ 0.5 s + half the round trip of
//! the best sample, usually much less after a few seconds of traffic.
//!
//! The local wall clock is never used, except as the fallback when no response has carried
//! a readable `Date` (a proxy that strips it): deadlines are then judged by the local clock
//! and a warning is logged once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How fast the local monotonic clock and the server's clock may drift apart, in parts per
/// million (quartz does better than 100; this leaves room for VMs and NTP slewing).
pub const DRIFT_PPM: i64 = 200;

/// The resolution of the `Date` header: whole seconds, truncated.
const DATE_RESOLUTION_MS: i64 = 1000;

/// Bounds of `server − local` in milliseconds (local = the handle's monotonic milliseconds),
/// as known at local time `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offset {
    lo: i64,
    hi: i64,
    at: i64,
}

impl Offset {
    /// The interval one response proves: sent at local `sent`, received at local `received`,
    /// stamped with server time `date` (Unix ms, whole seconds).
    pub fn sample(sent: i64, received: i64, date: i64) -> Offset {
        Offset {
            lo: date - received,
            hi: date + DATE_RESOLUTION_MS - sent,
            at: received,
        }
    }

    /// Folds a new sample in: the intersection with this interval (widened for drift since it
    /// was last narrowed), or the sample alone when they do not meet (a clock stepped).
    pub fn update(self, sample: Offset) -> Offset {
        let drift = (sample.at - self.at).max(0) * DRIFT_PPM / 1_000_000 + 1;
        let (lo, hi) = (self.lo - drift, self.hi + drift);
        let (new_lo, new_hi) = (lo.max(sample.lo), hi.min(sample.hi));
        if new_lo > new_hi {
            tracing::debug!(
                previous = ?(self.lo, self.hi),
                sample = ?(sample.lo, sample.hi),
                "the server's clock moved against ours (a step, or another server): re-estimating"
            );
            return sample;
        }
        // Keep the narrowing time only when the interval really narrowed: otherwise the drift
        // allowance keeps growing from the last informative sample.
        let at = if (new_lo, new_hi) != (lo, hi) {
            sample.at
        } else {
            self.at
        };
        Offset {
            lo: new_lo,
            hi: new_hi,
            at,
        }
    }

    /// The estimate: the midpoint.
    pub fn estimate(&self) -> i64 {
        self.lo + (self.hi - self.lo) / 2
    }

    /// The largest error of [`Offset::estimate`]: half the width.
    pub fn error(&self) -> i64 {
        (self.hi - self.lo + 1) / 2
    }
}

/// One handle's estimate of the server's clock.
#[derive(Debug)]
pub struct ServerClock {
    /// The backend, for log messages.
    backend: &'static str,
    /// Local time 0: the handle's monotonic origin.
    origin: Instant,
    offset: Mutex<Option<Offset>>,
    /// The latest time `now_millis` returned: a refined estimate may move the middle of the
    /// interval back a little, but this handle's clock never runs backwards (a key judged
    /// expired stays expired for its readers).
    last_now: std::sync::atomic::AtomicU64,
    warned: AtomicBool,
}

impl ServerClock {
    /// A clock with no sample yet (it falls back to the local clock until the first `Date`).
    pub fn new(backend: &'static str) -> ServerClock {
        ServerClock {
            backend,
            origin: Instant::now(),
            offset: Mutex::new(None),
            last_now: std::sync::atomic::AtomicU64::new(0),
            warned: AtomicBool::new(false),
        }
    }

    fn local(&self, at: Instant) -> i64 {
        at.saturating_duration_since(self.origin).as_millis() as i64
    }

    /// Records one response: sent at `sent`, headers received at `received`, with this `Date`.
    pub fn observe(&self, sent: Instant, received: Instant, date: Option<&str>) {
        let Some(date) = date.and_then(parse_http_date) else {
            return;
        };
        let sample = Offset::sample(self.local(sent), self.local(received), date);
        let mut offset = self.offset.lock().unwrap_or_else(|e| e.into_inner());
        let updated = match *offset {
            Some(current) => current.update(sample),
            None => sample,
        };
        if Some(updated) != *offset {
            tracing::trace!(
                backend = self.backend,
                offset_ms = updated.estimate(),
                error_ms = updated.error(),
                "server clock estimate"
            );
        }
        *offset = Some(updated);
    }

    /// True once a response carried a readable `Date`.
    pub fn synced(&self) -> bool {
        self.offset().is_some()
    }

    /// The current offset interval, if any response carried a `Date`.
    pub fn offset(&self) -> Option<Offset> {
        *self.offset.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The server's time now, as estimated (Unix milliseconds).
    pub fn now_millis(&self) -> u64 {
        match self.estimate_millis() {
            Some(estimate) => monotonic(&self.last_now, estimate),
            None => self.fallback_millis(),
        }
    }

    fn estimate_millis(&self) -> Option<u64> {
        self.offset()
            .map(|offset| (self.local(Instant::now()) + offset.estimate()).max(0) as u64)
    }

    fn fallback_millis(&self) -> u64 {
        match self.offset() {
            Some(offset) => (self.local(Instant::now()) + offset.estimate()).max(0) as u64,
            None => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        backend = self.backend,
                        "no response carried a Date header: TTL deadlines are judged by the local clock"
                    );
                }
                crate::ttl::now_millis()
            }
        }
    }

    /// The deadline (server Unix milliseconds) of a key written now with `ttl`.
    pub fn deadline(&self, ttl: Duration) -> u64 {
        self.now_millis().saturating_add(ttl.as_millis() as u64)
    }

    /// How long from now until the server's clock reaches `deadline`, plus one millisecond
    /// (liveness compares `deadline > now` on whole milliseconds).
    pub fn until(&self, deadline: u64) -> Duration {
        Duration::from_millis(deadline.saturating_sub(self.now_millis()) + 1)
    }
}

/// Refining an estimate may move it back by a fraction of a second: `now` then stays where it
/// was (a key judged expired stays expired). A larger step back is the server's clock being
/// set back (or another agent answering), and is followed.
fn monotonic(last: &std::sync::atomic::AtomicU64, estimate: u64) -> u64 {
    const NOISE_MS: u64 = 2_000;
    let previous = last.load(Ordering::SeqCst);
    if estimate >= previous || previous - estimate > NOISE_MS {
        last.store(estimate, Ordering::SeqCst);
        estimate
    } else {
        previous
    }
}

/// Parses an HTTP date in the IMF-fixdate form Go writes (`Sun, 06 Nov 1994 08:49:37 GMT`)
/// into Unix milliseconds.
pub fn parse_http_date(text: &str) -> Option<i64> {
    let mut parts = text.split_ascii_whitespace();
    let _weekday = parts.next()?;
    let day: i64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':');
    let hour: i64 = hms.next()?.parse().ok()?;
    let minute: i64 = hms.next()?.parse().ok()?;
    let second: i64 = hms.next()?.parse().ok()?;
    if parts.next()? != "GMT"
        || hms.next().is_some()
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
        || year < 1970
    {
        return None;
    }
    // Days from 1970-01-01 to the date (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_dates() {
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777_000)
        );
        assert_eq!(
            parse_http_date("Thu, 26 Nov 2026 14:20:16 GMT"),
            Some(1_795_702_816_000)
        );
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(1_835_481_599_000)
        );
        for bad in [
            "",
            "yesterday",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    /// What the server's `Date` says at local time `local` when server − local = `offset`.
    fn date_at(local: i64, offset: i64) -> i64 {
        (local + offset).div_euclid(1000) * 1000
    }

    /// A response sent at `sent`, stamped at `stamped`, received at `received` (local ms).
    fn sample(sent: i64, stamped: i64, received: i64, offset: i64) -> Offset {
        Offset::sample(sent, received, date_at(stamped, offset))
    }

    #[test]
    fn one_sample_is_within_half_a_second_plus_half_the_round_trip() {
        for offset in [-30_000, -1, 0, 1, 437, 30_000, 1_700_000_000_123] {
            for phase in (0..1000).step_by(37) {
                let (sent, received) = (10_000 + phase, 10_000 + phase + 20);
                let s = sample(sent, sent + 7, received, offset);
                assert!(s.lo <= offset && offset <= s.hi, "{s:?} vs {offset}");
                assert_eq!(s.error(), 510);
                assert!((s.estimate() - offset).abs() <= s.error());
            }
        }
    }

    #[test]
    fn samples_across_second_boundaries_narrow_the_estimate() {
        let offset = 30_437; // the server is 30.437 s ahead of us
        let mut estimate: Option<Offset> = None;
        // Requests of 4 ms round trip every 130 ms for 3 s: their `Date` turns over in between.
        for i in 0..24 {
            let sent = 5_000 + i * 130;
            let s = sample(sent, sent + 2, sent + 4, offset);
            estimate = Some(estimate.map_or(s, |e| e.update(s)));
            let e = estimate.unwrap();
            assert!(
                e.lo <= offset && offset <= e.hi,
                "lost the true offset: {e:?}"
            );
        }
        let e = estimate.unwrap();
        assert!(e.error() <= 70, "not narrowed: {e:?}");
        assert!((e.estimate() - offset).abs() <= e.error());
        // A blocking query's wide sample changes nothing.
        let wide = sample(8_000, 60_000, 60_001, offset);
        let after = e.update(wide);
        assert!(after.lo <= offset && offset <= after.hi);
        assert!(after.error() <= e.error() + 12, "{after:?}");
    }

    #[test]
    fn a_clock_step_restarts_the_estimate() {
        let mut e = sample(0, 1, 2, 0);
        for i in 1..10 {
            let sent = i * 170;
            e = e.update(sample(sent, sent + 1, sent + 2, 0));
        }
        assert!(e.estimate().abs() <= e.error());
        // The server's clock jumps 5 s ahead.
        let stepped = e.update(sample(3_000, 3_001, 3_002, 5_000));
        assert!(stepped.lo <= 5_000 && 5_000 <= stepped.hi, "{stepped:?}");
        assert!((stepped.estimate() - 5_000).abs() <= stepped.error());
    }

    #[test]
    fn drift_is_allowed_for() {
        // Narrowed precisely, then the server's clock runs 100 ppm fast for an hour.
        let mut e = Offset {
            lo: 999,
            hi: 1001,
            at: 0,
        };
        let hour = 3_600_000;
        let drifted = 1000 + hour / 10_000; // +360 ms
        e = e.update(sample(hour, hour + 1, hour + 2, drifted));
        assert!(e.lo <= drifted && drifted <= e.hi, "{e:?}");
    }

    #[test]
    fn now_holds_still_through_refinements_but_follows_a_step_back() {
        let last = std::sync::atomic::AtomicU64::new(0);
        assert_eq!(monotonic(&last, 100_000), 100_000);
        // A refined estimate 300 ms earlier: a key judged expired stays expired.
        assert_eq!(monotonic(&last, 99_700), 100_000);
        assert_eq!(monotonic(&last, 100_050), 100_050);
        // The server's clock set back by a minute is followed.
        assert_eq!(monotonic(&last, 40_050), 40_050);
        assert_eq!(monotonic(&last, 40_051), 40_051);
    }

    #[test]
    fn the_clock_follows_dates_not_the_local_wall_clock() {
        let clock = ServerClock::new("test");
        let now = crate::ttl::now_millis();
        // No Date yet: the local clock.
        assert!(clock.now_millis().abs_diff(now) < 1000);
        // A server 30 s behind, answering at once.
        let server = (now as i64 - 30_000).div_euclid(1000) * 1000;
        let sent = Instant::now();
        let date = httpdate_of(server);
        clock.observe(sent, Instant::now(), Some(&date));
        let estimate = clock.now_millis() as i64;
        assert!(
            (estimate - (now as i64 - 30_000)).abs() <= 1100,
            "{estimate} vs {}",
            now as i64 - 30_000
        );
        let deadline = clock.deadline(Duration::from_secs(6));
        assert!(clock.until(deadline) <= Duration::from_millis(6001));
        assert!(clock.until(deadline) >= Duration::from_millis(5900));
        // Garbage does not disturb the estimate.
        let before = clock.offset();
        clock.observe(sent, Instant::now(), Some("garbage"));
        clock.observe(sent, Instant::now(), None);
        assert_eq!(clock.offset(), before);
    }

    /// Formats Unix ms (whole seconds) as an IMF-fixdate, for tests.
    fn httpdate_of(ms: i64) -> String {
        let secs = ms / 1000;
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        // civil_from_days
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let text = format!(
            "Mon, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
            months[(m - 1) as usize],
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        );
        assert_eq!(parse_http_date(&text), Some(secs * 1000), "{text}");
        text
    }
}
