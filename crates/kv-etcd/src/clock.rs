//! The etcd server's clock, as this handle knows it: TTL deadlines are written and judged in
//! server time, never in the local one (see [TTLs and clocks](crate#ttls-and-clocks)).
//!
//! etcd serves HTTP/1.1 on its client URLs besides gRPC, and Go's HTTP server stamps every
//! response with the server's clock in its `Date` header (whole seconds). A probe
//! (`GET /version`) sent at local instant `t0` and answered at `t1` with `Date: D` proves that
//! the server's clock read between `D` and `D + 1 s` at some instant in `[t0, t1]`, so at `t1`
//! it reads within `[D, D + 1 s + (t1 − t0)]`. The handle keeps that interval, anchored on the
//! local **monotonic** clock (the local wall clock is never used: it may be off by any
//! amount, and even jump), moves it forward with the monotonic clock, widened by
//! [`DRIFT_PPM`], and intersects it with every new sample: a sample timed so that the server
//! turns a second right in the middle of the interval halves it, so a few probes after
//! connecting narrow the initial second down to [`REFINED_WIDTH`] plus the round trip. Then
//! it samples every [`REFRESH_INTERVAL`].
//!
//! Users of the estimate get **bounds**: the server's time is at least
//! [`ServerTime::earliest`] and at most [`ServerTime::latest`]. Writers put deadlines at
//! `latest + ttl` (never before the true server time + ttl), readers hide a key once
//! `earliest` reaches its deadline (never before it): neither ever expires a key early,
//! whatever the clients' clocks, and the lateness is the sum of both uncertainties, which
//! [`CLOCK_TOLERANCE`] bounds. An estimate wider than that (no sample yet, the endpoint's
//! HTTP side unreachable, a sample too old) is not used at all.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Config;
use crate::store::CLOCK_TOLERANCE;

/// How often a handle samples the server's clock once its estimate is refined.
pub(crate) const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// The width (on top of the round trip) below which the estimate is not refined further.
const REFINED_WIDTH: i64 = 100;

/// How fast the local monotonic clock and the server's clock may drift apart, in parts per
/// million (quartz does better than 100; this leaves room for VMs and NTP slewing).
const DRIFT_PPM: i64 = 500;

/// How long one probe may take (connection, TLS handshake and answer).
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The largest response head read from a probe.
const MAX_HEAD: usize = 16 * 1024;

/// Where the server's clock reads (Unix milliseconds) at a local monotonic instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Estimate {
    anchor: Instant,
    earliest: i64,
    latest: i64,
}

/// Bounds of the server's current time, in Unix milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ServerTime {
    pub(crate) earliest: i64,
    pub(crate) latest: i64,
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Estimate {
    /// What a probe sent at `sent` and answered at `received` with `Date: date_ms` proves.
    pub(crate) fn from_sample(date_ms: i64, sent: Instant, received: Instant) -> Self {
        let round_trip = millis(received.saturating_duration_since(sent));
        Estimate {
            anchor: received,
            earliest: date_ms,
            latest: date_ms + 1000 + round_trip,
        }
    }

    /// The bounds at `now` (not before the anchor): both move with the monotonic clock,
    /// apart by the allowed drift.
    pub(crate) fn at(&self, now: Instant) -> ServerTime {
        let elapsed = millis(now.saturating_duration_since(self.anchor));
        let drift = (elapsed * DRIFT_PPM + 999_999) / 1_000_000;
        ServerTime {
            earliest: self.earliest + elapsed - drift,
            latest: self.latest + elapsed + drift,
        }
    }

    /// Combines this estimate with a newer one: their intersection at the newer anchor, or
    /// the newer alone when they disagree (a clock was stepped, or another member with a
    /// different clock answered).
    pub(crate) fn combine(&self, newer: Estimate) -> Estimate {
        if newer.anchor < self.anchor {
            return newer.combine(*self);
        }
        let old = self.at(newer.anchor);
        let earliest = old.earliest.max(newer.earliest);
        let latest = old.latest.min(newer.latest);
        if earliest > latest {
            tracing::debug!(
                ?old,
                ?newer,
                "the server's clock disagrees with the earlier samples: starting over"
            );
            return newer;
        }
        Estimate {
            anchor: newer.anchor,
            earliest,
            latest,
        }
    }

    fn width(&self, now: Instant) -> i64 {
        let at = self.at(now);
        at.latest - at.earliest
    }

    /// When to send the next probe so that it halves the interval: the server's second
    /// should turn at its midpoint when the request arrives (half the expected round trip
    /// after sending). `None` once narrow enough.
    pub(crate) fn refining_probe(&self, round_trip: i64, now: Instant) -> Option<Instant> {
        let width = self.width(now);
        if width <= REFINED_WIDTH + round_trip {
            return None;
        }
        let at = self.at(now);
        let middle = (at.earliest + at.latest) / 2 + round_trip / 2;
        let mut wait = (1000 - middle.rem_euclid(1000)) % 1000;
        if wait < 20 {
            wait += 1000;
        }
        Some(now + Duration::from_millis(wait as u64))
    }
}

/// Whether the TTL deadlines can be judged: the estimate is narrow enough.
fn usable(estimate: &Estimate, now: Instant) -> Option<ServerTime> {
    (estimate.width(now) <= millis(CLOCK_TOLERANCE)).then(|| estimate.at(now))
}

/// Where and how to send probes.
struct Probe {
    /// `(host, port, https)` of each endpoint, in the configured order.
    endpoints: Vec<(String, u16, bool)>,
    tls: Option<tokio_rustls::TlsConnector>,
    domain_name: Option<String>,
}

#[derive(Default)]
struct State {
    estimate: Option<Estimate>,
    /// The round trip of the last successful probe.
    round_trip: i64,
    last_attempt: Option<Instant>,
}

/// A handle's knowledge of the server's clock; shared by every clone of the connection.
pub(crate) struct ServerClock {
    state: Mutex<State>,
    probe: Option<Probe>,
    refreshing: AtomicBool,
    warned: AtomicBool,
}

impl std::fmt::Debug for ServerClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerClock")
            .field("estimate", &self.lock().estimate)
            .finish()
    }
}

impl ServerClock {
    /// A clock that probes the endpoints of `config` (nothing is sent yet). A TLS
    /// configuration that cannot be used leaves the clock without probes (warned once).
    pub(crate) async fn new(config: &Config) -> Arc<Self> {
        let probe = match Probe::new(config).await {
            Ok(probe) => Some(probe),
            Err(error) => {
                tracing::warn!(
                    %error,
                    "kv-etcd: cannot set up the probes of the server's clock; TTL keys are \
                     expired by etcd alone (late after an etcd restart)"
                );
                None
            }
        };
        Arc::new(ServerClock {
            state: Mutex::new(State::default()),
            warned: AtomicBool::new(probe.is_none()),
            probe,
            refreshing: AtomicBool::new(false),
        })
    }

    /// A clock that knows nothing and never probes (tests).
    #[cfg(test)]
    pub(crate) fn unknown() -> Arc<Self> {
        Arc::new(ServerClock {
            state: Mutex::new(State::default()),
            probe: None,
            refreshing: AtomicBool::new(false),
            warned: AtomicBool::new(true),
        })
    }

    /// A clock with this estimate (tests).
    #[cfg(test)]
    pub(crate) fn fixed(estimate: Estimate) -> Arc<Self> {
        let clock = Self::unknown();
        clock.lock().estimate = Some(estimate);
        clock
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bounds of the server's time now, if known well enough to judge deadlines. When
    /// they are not, or the last sample is getting old, a probe starts in the background
    /// (at most one at a time, at most one a second).
    pub(crate) fn now(self: &Arc<Self>) -> Option<ServerTime> {
        let now = Instant::now();
        let (known, stale) = {
            let state = self.lock();
            let known = state.estimate.and_then(|e| usable(&e, now));
            let stale = known.is_none()
                || state.estimate.is_some_and(|e| {
                    now.saturating_duration_since(e.anchor) > REFRESH_INTERVAL * 2
                });
            let recent = state
                .last_attempt
                .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1));
            (known, stale && !recent)
        };
        if stale && self.probe.is_some() && tokio::runtime::Handle::try_current().is_ok() {
            let clock = Arc::clone(self);
            tokio::spawn(async move { clock.refresh(PROBE_TIMEOUT).await });
        }
        known
    }

    /// Samples the server's clock once (unless a sample is under way) and folds the result
    /// into the estimate. The first failure is logged as a warning, later ones at debug level.
    pub(crate) async fn refresh(&self, limit: Duration) {
        /// Clears the flag however the sample ends (also when the caller drops it).
        struct Refreshing<'a>(&'a AtomicBool);
        impl Drop for Refreshing<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let Some(probe) = &self.probe else {
            return;
        };
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let guard = Refreshing(&self.refreshing);
        self.lock().last_attempt = Some(Instant::now());
        let limit = limit.min(PROBE_TIMEOUT);
        let result = tokio::time::timeout(limit, probe.sample()).await;
        drop(guard);
        match result {
            Ok(Ok((sample, round_trip))) => {
                let mut state = self.lock();
                state.round_trip = round_trip;
                state.estimate = Some(match state.estimate {
                    Some(old) => old.combine(sample),
                    None => sample,
                });
                tracing::trace!(estimate = ?state.estimate, round_trip, "sampled the server's clock");
            }
            Ok(Err(error)) => self.failed(&error),
            Err(_) => self.failed(&format!("no answer within {limit:?}")),
        }
    }

    fn failed(&self, error: &str) {
        // With a usable estimate in hand (a server restarting, say), nothing is lost yet.
        let usable_now = self
            .lock()
            .estimate
            .is_some_and(|e| usable(&e, Instant::now()).is_some());
        if usable_now || self.warned.swap(true, Ordering::AcqRel) {
            tracing::debug!(%error, "sampling the etcd server's clock failed");
        } else {
            tracing::warn!(
                %error,
                "kv-etcd: cannot read the etcd server's clock (HTTP Date of GET /version on the \
                 client URL); until it can, TTL keys are expired by etcd alone (late after an \
                 etcd restart). Logged once."
            );
        }
    }

    /// When the background task should sample next.
    fn next_probe(&self) -> Instant {
        let now = Instant::now();
        let state = self.lock();
        match state.estimate {
            Some(estimate) => estimate
                .refining_probe(state.round_trip, now)
                .unwrap_or(now + REFRESH_INTERVAL)
                .min(estimate.anchor + REFRESH_INTERVAL)
                .max(now + Duration::from_millis(20)),
            // Never answered: retry sooner than the refresh, but not in a loop.
            None => now + Duration::from_secs(5),
        }
    }

    /// Samples now (for at most `limit`), and keeps the estimate refined and fresh in a
    /// background task that ends when the last handle on this clock is dropped.
    pub(crate) async fn start(self: &Arc<Self>, limit: Duration) {
        if self.probe.is_none() {
            return;
        }
        self.refresh(limit).await;
        self.spawn_sampler();
    }

    fn spawn_sampler(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(at) = weak.upgrade().map(|clock| clock.next_probe()) else {
                    return;
                };
                tokio::time::sleep_until(at.into()).await;
                let Some(clock) = weak.upgrade() else {
                    return;
                };
                clock.refresh(PROBE_TIMEOUT).await;
            }
        });
    }
}

impl Probe {
    async fn new(config: &Config) -> kv_core::Result<Self> {
        let https_default = config.tls.is_some();
        let mut endpoints = Vec::new();
        for endpoint in &config.endpoints {
            let (https, rest) = if let Some(rest) = endpoint.strip_prefix("https://") {
                (true, rest)
            } else if let Some(rest) = endpoint.strip_prefix("http://") {
                (false, rest)
            } else {
                (https_default, endpoint.as_str())
            };
            let authority = rest.split('/').next().unwrap_or(rest);
            let (host, port) = split_authority(authority).ok_or_else(|| {
                kv_core::Error::Config(format!("bad endpoint for the clock probe: {endpoint}"))
            })?;
            endpoints.push((host, port, https));
        }
        let tls = match &config.tls {
            Some(tls) => Some(tls_connector(tls).await?),
            None => None,
        };
        Ok(Probe {
            endpoints,
            tls,
            domain_name: config.tls.as_ref().and_then(|t| t.domain_name.clone()),
        })
    }

    /// One sample from the first endpoint that answers; with the round trip (ms).
    async fn sample(&self) -> Result<(Estimate, i64), String> {
        let mut last_error = String::from("no endpoint");
        for (host, port, https) in &self.endpoints {
            match self.sample_one(host, *port, *https).await {
                Ok(sample) => return Ok(sample),
                Err(error) => last_error = format!("{host}:{port}: {error}"),
            }
        }
        Err(last_error)
    }

    async fn sample_one(
        &self,
        host: &str,
        port: u16,
        https: bool,
    ) -> Result<(Estimate, i64), String> {
        let tcp = TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let authority = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        if https {
            let connector = self
                .tls
                .as_ref()
                .ok_or("an https endpoint without a TLS configuration")?;
            let name = self.domain_name.clone().unwrap_or_else(|| {
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned()
            });
            let name = rustls::pki_types::ServerName::try_from(name)
                .map_err(|e| format!("bad TLS server name: {e}"))?;
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            exchange(stream, &authority).await
        } else {
            exchange(tcp, &authority).await
        }
    }
}

/// Sends `GET /version` on an established connection and reads the answer's head; the
/// timing covers the request alone (not the connection or the handshake).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    authority: &str,
) -> Result<(Estimate, i64), String> {
    let request = format!(
        "GET /version HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: kv-etcd\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    let sent = Instant::now();
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 2048];
    let received = loop {
        let read = stream.read(&mut buffer).await.map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("the connection closed before the response head".into());
        }
        head.extend_from_slice(&buffer[..read]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break Instant::now();
        }
        if head.len() > MAX_HEAD {
            return Err("response head too large".into());
        }
    };
    let date = parse_date(&head)?;
    let round_trip = millis(received.saturating_duration_since(sent));
    Ok((Estimate::from_sample(date, sent, received), round_trip))
}

/// The `Date` header of an HTTP/1.x response head, in Unix milliseconds.
pub(crate) fn parse_date(head: &[u8]) -> Result<i64, String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 response: {status:?}"));
    }
    let value = lines
        .take_while(|line| !line.is_empty())
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("date")
                .then(|| value.trim())
        })
        .ok_or_else(|| format!("no Date header in the answer ({status})"))?;
    let time = httpdate::parse_http_date(value).map_err(|e| format!("bad Date {value:?}: {e}"))?;
    let since = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("Date before 1970: {value:?}"))?;
    Ok(millis(since))
}

/// `host:port`, `[v6]:port`; the port is required (etcd endpoints always have one, else 2379).
fn split_authority(authority: &str) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, port) = rest.split_once(']')?;
        let port = match port.strip_prefix(':') {
            Some(port) => port.parse().ok()?,
            None => 2379,
        };
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host.to_owned(), port.parse().ok()?)),
        Some(_) => Some((authority.to_owned(), 2379)),
        None => Some((authority.to_owned(), 2379)),
    }
}

/// The same trust (CA) and identity (client certificate) as the gRPC connection, with the
/// same crypto provider as etcd-client's (ring).
async fn tls_connector(
    tls: &crate::config::TlsConfig,
) -> kv_core::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad =
        |what: &str, e: &dyn std::fmt::Display| kv_core::Error::Config(format!("{what}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &tls.ca_cert {
        let pem = ca.load().await?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| bad("bad CA certificate", &e))?;
            roots.add(cert).map_err(|e| bad("bad CA certificate", &e))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad("TLS", &e))?
    .with_root_certificates(roots);
    let config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_slice_iter(&cert.load().await?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("bad client certificate", &e))?;
            let key = PrivateKeyDer::from_pem_slice(&key.load().await?)
                .map_err(|e| bad("bad client key", &e))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| bad("bad client certificate", &e))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_sample_bounds_the_server_time_by_the_resolution_and_the_round_trip() {
        let sent = Instant::now();
        let received = sent + ms(40);
        let estimate = Estimate::from_sample(1_000_000, sent, received);
        assert_eq!(
            estimate.at(received),
            ServerTime {
                earliest: 1_000_000,
                latest: 1_001_040
            }
        );
        // Later, both bounds move with the local monotonic clock, widened by the drift.
        let later = estimate.at(received + ms(10_000));
        assert_eq!(later.earliest, 1_010_000 - 5);
        assert_eq!(later.latest, 1_011_040 + 5);
    }

    #[test]
    fn samples_intersect_and_a_disagreeing_one_starts_over() {
        let t0 = Instant::now();
        // Server time at t0 really is 5_000_700 (its second began 700 ms earlier).
        let real = |at: Instant| 5_000_700 + millis(at - t0);
        let second = |server: i64| server - server % 1000;
        let first = Estimate::from_sample(second(real(t0)), t0, t0 + ms(2));
        assert_eq!(first.at(t0 + ms(2)).earliest, 5_000_000);
        // The refining probe aims at the middle of the interval: a few halve it down.
        let mut estimate = first;
        let mut now = t0 + ms(2);
        for _ in 0..6 {
            let Some(at) = estimate.refining_probe(2, now) else {
                break;
            };
            let sample = Estimate::from_sample(second(real(at + ms(1))), at, at + ms(2));
            estimate = estimate.combine(sample);
            now = at + ms(2);
            let bounds = estimate.at(now);
            assert!(
                bounds.earliest <= real(now) && real(now) <= bounds.latest,
                "{bounds:?}"
            );
        }
        assert!(estimate.width(now) <= REFINED_WIDTH + 2, "{estimate:?}");
        assert!(estimate.refining_probe(2, now).is_none());
        assert!(usable(&estimate, now).is_some());

        // A server clock stepped by 10 s: the new sample alone is kept.
        let stepped = Estimate::from_sample(second(real(now)) + 10_000, now, now + ms(2));
        assert_eq!(estimate.combine(stepped), stepped);
        // Order does not matter.
        assert_eq!(stepped.combine(estimate), stepped);
    }

    #[test]
    fn wide_or_old_estimates_are_not_used() {
        let t0 = Instant::now();
        // A slow answer: 1 s of resolution + 400 ms of round trip is too wide to act on.
        let slow = Estimate::from_sample(1_000_000, t0, t0 + ms(400));
        assert!(usable(&slow, t0 + ms(400)).is_none());
        let fast = Estimate::from_sample(1_000_000, t0, t0 + ms(5));
        assert!(usable(&fast, t0 + ms(5)).is_some());
        // The drift allowance eventually retires an estimate that is never refreshed.
        assert!(usable(&fast, t0 + Duration::from_secs(3600)).is_none());
    }

    #[test]
    fn dates_and_endpoints_parse() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ndate: Thu, 26 Nov 2026 14:18:43 GMT\r\n\r\n";
        assert_eq!(parse_date(head), Ok(1_795_702_723_000));
        assert!(parse_date(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_date(b"\x00\x00\x00\x04").is_err());
        assert_eq!(
            split_authority("127.0.0.1:2379"),
            Some(("127.0.0.1".into(), 2379))
        );
        assert_eq!(split_authority("[::1]:23790"), Some(("::1".into(), 23790)));
        assert_eq!(split_authority("etcd"), Some(("etcd".into(), 2379)));
    }
}
