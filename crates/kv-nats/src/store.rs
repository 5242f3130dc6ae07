//! [`NatsStore`]: the [`Store`] implementation.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, context::PublishErrorKind, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use kv_core::{
    Capabilities, Error, KvPair, Lock, LockOptions, ReadOptions, Result, Store, TaskSet,
    WatchStream, WatchTreeStream, WriteOptions, key,
};

use crate::config::{Auth, Config, Storage};
use crate::subject;

pub(crate) const BACKEND: &str = "nats";

/// The longest subject this crate publishes to, in bytes. NATS' default `max_control_line`
/// is 4096 bytes for the whole `HPUB <subject> <reply> <sizes>` line; this leaves room for
/// the reply inbox and the sizes. A key whose subject would be longer is
/// [`Error::InvalidKey`].
pub const MAX_SUBJECT_LEN: usize = 3900;

/// The header that marks deletions and purges in a JetStream KV bucket.
pub(crate) const KV_OPERATION: &str = "KV-Operation";
/// The header carrying a lock holder's owner token (random, per acquisition).
pub(crate) const LOCK_OWNER: &str = "Kv-Lock-Owner";

/// How long the server keeps the marker it writes when a key expires (its TTL): watchers
/// that are connected see it at once; later readers see the key absent either way.
const EXPIRY_MARKER_TTL: Duration = Duration::from_secs(15 * 60);

/// How many deletes `delete_tree` keeps in flight.
const BATCH: usize = 64;

/// A handle to a NATS JetStream KV bucket implementing [`Store`]. Clones share the connection
/// (and `close` closes it for every clone). See the [crate docs](crate) for the mapping.
#[derive(Clone)]
pub struct NatsStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) stream: stream::Stream,
    /// `$KV.<bucket>.` plus the encoded namespace and its `.`, if any.
    pub(crate) prefix: String,
    pub(crate) config: Config,
    pub(crate) caps: Capabilities,
    pub(crate) tasks: TaskSet,
    allow_direct: bool,
}

impl fmt::Debug for NatsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsStore")
            .field("config", &self.inner.config)
            .field("background_tasks", &self.inner.tasks.running())
            .finish()
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// What the last message of a key's subject says.
#[derive(Debug, Clone)]
pub(crate) enum Record {
    /// The key holds this pair.
    Live(KvPair),
    /// A delete, purge or expiry marker at this revision.
    Gone(u64),
}

/// The outcome of a conditional publish.
pub(crate) enum Published {
    /// Stored at this revision.
    Stored(u64),
    /// `Nats-Expected-Last-Subject-Sequence` did not hold: nothing was written.
    Conflict,
}

impl NatsStore {
    /// Connects to the servers of `config`, then opens the bucket (creating it, with
    /// per-message TTLs allowed, if it does not exist). Fails with [`Error::Unavailable`] when
    /// no server can be reached, [`Error::Timeout`] after [`Config::connect_timeout`],
    /// [`Error::PermissionDenied`] on refused credentials, [`Error::Config`] when the
    /// credentials files cannot be read, JetStream is off, or an existing bucket does not
    /// allow per-message TTLs.
    pub async fn connect(config: Config) -> Result<Self> {
        let client = connect_client(&config).await?;
        match open(client.clone(), config).await {
            Ok(store) => Ok(store),
            Err(error) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), client.drain()).await;
                Err(error)
            }
        }
    }

    /// The underlying NATS client (for metrics, or calls this crate does not offer).
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The bucket's stream (`KV_<bucket>`): its info, limits and history.
    pub fn stream(&self) -> &stream::Stream {
        &self.inner.stream
    }

    /// The subject a key is stored at (`$KV.<bucket>.<namespace tokens>.<key tokens>`), see
    /// the [crate docs](crate#keys-and-subjects). Fails like any call with an invalid key.
    pub fn subject_of(&self, key: &str) -> Result<String> {
        let key = self.inner.caps.check_key(key)?;
        self.inner.subject(&key)
    }

    /// Every stored revision of `key` still in the bucket (at most the bucket's `history`),
    /// oldest first; a deletion is `None` at its revision.
    pub async fn history(&self, key: &str) -> Result<Vec<(u64, Option<KvPair>)>> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let key = inner.caps.check_key(key)?;
        let subject = inner.subject(&key)?;
        inner
            .bounded("history", async {
                let consumer = inner
                    .ordered(&subject, consumer::DeliverPolicy::All)
                    .await?;
                let mut out = Vec::new();
                if consumer.cached_info().num_pending == 0 {
                    return Ok(out);
                }
                let mut messages = consumer.messages().await.map_err(backend)?;
                while let Some(message) = messages.next().await {
                    let message = message.map_err(backend)?;
                    let info = message
                        .info()
                        .map_err(|e| Error::backend(BACKEND, e.to_string()))?;
                    let (seq, pending) = (info.stream_sequence, info.pending);
                    let record = inner.record_of(
                        &key,
                        seq,
                        message.message.headers.as_ref(),
                        &message.message.payload,
                    );
                    out.push(match record {
                        Record::Live(pair) => (seq, Some(pair)),
                        Record::Gone(seq) => (seq, None),
                    });
                    if pending == 0 {
                        break;
                    }
                }
                Ok(out)
            })
            .await
    }
}

async fn connect_client(config: &Config) -> Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name("kv-nats")
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.request_timeout))
        // The client notices a server that froze without closing the connection only by
        // unanswered PINGs (it reconnects after two): ping at half the request timeout so a
        // handle leaves a frozen server in about one request timeout, not minutes.
        .ping_interval((config.request_timeout / 2).max(std::time::Duration::from_millis(500)));
    options = match &config.auth {
        Auth::None => options,
        Auth::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.clone())
        }
        Auth::Token(token) => options.token(token.clone()),
        Auth::NKeySeedFile(path) => {
            let seed = tokio::fs::read_to_string(path).await.map_err(|e| {
                Error::Config(format!("cannot read the NKey seed file {path:?}: {e}"))
            })?;
            let seed = seed
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with('S'))
                .ok_or_else(|| Error::Config(format!("no NKey seed (`S…`) in {path:?}")))?
                .to_owned();
            options.nkey(seed)
        }
        Auth::CredentialsFile(path) => options.credentials_file(path).await.map_err(|e| {
            Error::Config(format!("cannot read the credentials file {path:?}: {e}"))
        })?,
    };
    if let Some(tls) = &config.tls {
        options = options.require_tls(true);
        if let Some(ca) = &tls.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&tls.client_cert_file, &tls.client_key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if tls.handshake_first {
            options = options.tls_first();
        }
    }
    let servers: Vec<async_nats::ServerAddr> = config
        .servers
        .iter()
        .map(|s| {
            s.parse()
                .map_err(|e| Error::Config(format!("nats server {s:?}: {e}")))
        })
        .collect::<Result<_>>()?;
    match tokio::time::timeout(config.connect_timeout, options.connect(servers)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(error)) => Err(map_connect_error(error, config.connect_timeout)),
        Err(_) => Err(Error::Timeout {
            backend: BACKEND,
            operation: "connect",
            after: config.connect_timeout,
        }),
    }
}

fn map_connect_error(error: async_nats::ConnectError, after: Duration) -> Error {
    use async_nats::ConnectErrorKind as K;
    match error.kind() {
        K::Authentication | K::AuthorizationViolation => Error::PermissionDenied {
            backend: BACKEND,
            message: error.to_string(),
        },
        K::TimedOut => Error::Timeout {
            backend: BACKEND,
            operation: "connect",
            after,
        },
        K::ServerParse => Error::Config(error.to_string()),
        _ => Error::unavailable(BACKEND, error),
    }
}

async fn open(client: async_nats::Client, config: Config) -> Result<NatsStore> {
    let mut js = jetstream::new(client.clone());
    js.set_timeout(config.request_timeout);
    let name = format!("KV_{}", config.bucket);
    let limit = config.request_timeout;
    let stream = match stream_when_led(&js, &name, limit).await? {
        Some(stream) => stream,
        None => {
            let create = js.create_stream(stream::Config {
                name: name.clone(),
                description: Some("kv-rs store (kv-nats)".into()),
                subjects: vec![format!("$KV.{}.>", config.bucket)],
                max_messages_per_subject: config.history,
                storage: match config.storage {
                    Storage::File => stream::StorageType::File,
                    Storage::Memory => stream::StorageType::Memory,
                },
                num_replicas: config.replicas,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                allow_message_ttl: true,
                subject_delete_marker_ttl: Some(EXPIRY_MARKER_TTL),
                ..Default::default()
            });
            let created = match tokio::time::timeout(limit, create).await {
                Err(_) => return Err(timeout("create bucket", limit)),
                Ok(created) => created,
            };
            // Either way (created here, or concurrently by another handle, which the server
            // answers as an error or as success), read the stream back from its leader.
            match (stream_when_led(&js, &name, limit).await, created) {
                (Ok(Some(stream)), _) => stream,
                (Ok(None), Err(error)) => return Err(map_js_error(&error.to_string(), error)),
                (Ok(None), Ok(_)) => {
                    return Err(Error::backend(
                        BACKEND,
                        std::io::Error::other(format!("stream {name} vanished after its creation")),
                    ));
                }
                (Err(error), _) => return Err(error),
            }
        }
    };
    let info = stream.cached_info().config.clone();
    if !info.allow_message_ttl {
        return Err(Error::Config(format!(
            "bucket {:?} does not allow per-message TTLs (stream {name} needs `allow_msg_ttl`, \
             NATS server 2.11+): create it with kv-nats, or `nats kv add --ttl`-less buckets \
             cannot hold TTL keys and locks",
            config.bucket
        )));
    }
    let prefix = if config.namespace.is_empty() {
        format!("$KV.{}.", config.bucket)
    } else {
        format!(
            "$KV.{}.{}.",
            config.bucket,
            subject::encode(&config.namespace)
        )
    };
    // Whole key and the namespace share the subject limit.
    let overhead = prefix.len();
    let mut caps = Capabilities::full(BACKEND);
    caps.max_value_len = config.max_value_len;
    caps.min_ttl = Duration::from_secs(1);
    caps.max_ttl = Duration::from_secs(365 * 24 * 3600);
    // TTLs are whole seconds on the server (rounded up here), and the server's expiry timer
    // runs a little late.
    caps.ttl_precision = Duration::from_millis(1500);
    caps.max_key_len = key::MAX_KEY_LEN.min(MAX_SUBJECT_LEN.saturating_sub(overhead));
    Ok(NatsStore {
        inner: Arc::new(Inner {
            client,
            js,
            allow_direct: info.allow_direct,
            stream,
            prefix,
            config,
            caps,
            tasks: TaskSet::new(),
        }),
    })
}

/// The first stream-info attempt's limit; a healthy server answers in milliseconds. Each
/// further attempt gets twice as long, so a slow server still gets a long enough one.
const STREAM_INFO_FIRST_ATTEMPT: Duration = Duration::from_millis(250);
/// The pause between stream-info attempts.
const STREAM_INFO_PAUSE: Duration = Duration::from_millis(100);

/// The bucket's stream (`None`: it does not exist), within `limit` in all. Only the stream's
/// leader answers a stream-info request, and the server leaves it unanswered while the stream
/// has none: just after its creation (the handles that lose a creation race see the stream at
/// once) and while its replicas re-elect. So the request is asked again, in short attempts,
/// while it times out or the server says it is between leaders (code 503). Without the retry,
/// on the 3-server test cluster, two of four handles opening a new bucket at once waited the
/// whole request timeout and failed (`concurrent_opens_of_a_new_replicated_bucket_all_succeed`).
async fn stream_when_led(
    js: &jetstream::Context,
    name: &str,
    limit: Duration,
) -> Result<Option<stream::Stream>> {
    use jetstream::context::GetStreamErrorKind as K;
    let deadline = tokio::time::Instant::now() + limit;
    let mut attempt = STREAM_INFO_FIRST_ATTEMPT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let last = match tokio::time::timeout(attempt.min(left), js.get_stream(name)).await {
            Ok(Ok(stream)) => return Ok(Some(stream)),
            Ok(Err(error)) => {
                let retry = match error.kind() {
                    K::JetStream(e) if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND => {
                        return Ok(None);
                    }
                    K::JetStream(e) => e.code() == 503,
                    K::Request => error.to_string().contains("timed out"),
                    _ => false,
                };
                let mapped = map_js_error(&error.to_string(), error);
                if !retry {
                    return Err(mapped);
                }
                mapped
            }
            Err(_) => timeout("open bucket", limit),
        };
        if tokio::time::Instant::now() + STREAM_INFO_PAUSE >= deadline {
            tracing::debug!(stream = name, error = %last, "stream info unanswered until the request timeout");
            return Err(last);
        }
        tokio::time::sleep(STREAM_INFO_PAUSE).await;
        attempt = attempt.saturating_mul(2);
    }
}

pub(crate) fn timeout(operation: &'static str, after: Duration) -> Error {
    Error::Timeout {
        backend: BACKEND,
        operation,
        after,
    }
}

pub(crate) fn backend<E: std::error::Error + Send + Sync + 'static>(error: E) -> Error {
    map_js_error(&error.to_string(), error)
}

/// Classifies an async-nats error by what it says (its kinds differ per call).
fn map_js_error<E: std::error::Error + Send + Sync + 'static>(text: &str, error: E) -> Error {
    let lower = text.to_ascii_lowercase();
    if lower.contains("permission") || lower.contains("authorization") {
        Error::PermissionDenied {
            backend: BACKEND,
            message: text.to_owned(),
        }
    } else if lower.contains("timed out")
        || lower.contains("broken pipe")
        || lower.contains("no responders")
        || lower.contains("disconnected")
        || lower.contains("connection")
        // A cluster between JetStream leaders (code 503, e.g. 10008).
        || lower.contains("temporarily unavailable")
        || lower.contains("code: 503")
    {
        Error::unavailable(BACKEND, error)
    } else if lower.contains("jetstream not enabled") {
        Error::Config(format!("JetStream is not enabled on the server: {text}"))
    } else {
        Error::backend(BACKEND, error)
    }
}

/// Whole seconds, rounded up (the server's `Nats-TTL` unit).
fn ttl_header(ttl: Duration) -> String {
    format!("{}s", kv_core::ttl::whole_seconds_up(ttl))
}

fn header_str<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers.and_then(|h| h.get(name)).map(|v| v.as_str())
}

/// The longest wait for the stream's info after a publish found nobody serving the stream.
const STREAM_PROBE_LIMIT: Duration = Duration::from_secs(1);

/// One write to a key's subject: a value, or a delete marker, with its options.
#[derive(Debug, Clone)]
pub(crate) struct Publish<'a> {
    key: &'a str,
    value: Bytes,
    ttl: Option<Duration>,
    /// `Some("DEL")` for a delete marker.
    operation: Option<&'static str>,
    /// A lock holder's owner token.
    owner: Option<&'a str>,
    /// The subject's expected last revision (0: no live message).
    expected: Option<u64>,
    /// The message id JetStream deduplicates by: the same for every attempt of this write, so
    /// a resend of an attempt that was stored after all is answered with that attempt's
    /// revision instead of being stored twice (or refused as a conflict).
    id: String,
}

impl<'a> Publish<'a> {
    /// Stores `value` under `key`.
    pub(crate) fn value(key: &'a str, value: Bytes) -> Self {
        Publish {
            key,
            value,
            ttl: None,
            operation: None,
            owner: None,
            expected: None,
            id: format!("{:032x}", rand::random::<u128>()),
        }
    }

    /// Marks `key` deleted.
    pub(crate) fn delete_marker(key: &'a str) -> Self {
        Publish {
            operation: Some("DEL"),
            ..Publish::value(key, Bytes::new())
        }
    }

    /// With a TTL, when there is one.
    pub(crate) fn ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ttl = ttl;
        self
    }

    /// With a lock holder's owner token, when there is one.
    pub(crate) fn owner(mut self, owner: Option<&'a str>) -> Self {
        self.owner = owner;
        self
    }

    /// Only if the subject's last revision is `expected`.
    pub(crate) fn expected(mut self, expected: u64) -> Self {
        self.expected = Some(expected);
        self
    }
}

/// How one publish attempt ended.
enum Attempt {
    /// Applied, refused by a condition, or failed in a way that may have taken effect.
    Done(Result<Published>),
    /// Refused in a way that proves nothing was stored: safe to send again.
    NotApplied(Error),
}

impl Inner {
    /// The subject of a normalised key, checked against [`MAX_SUBJECT_LEN`].
    pub(crate) fn subject(&self, key: &str) -> Result<String> {
        let subject = format!("{}{}", self.prefix, subject::encode(key));
        if subject.len() > MAX_SUBJECT_LEN {
            return Err(Error::invalid_key(
                key,
                format!(
                    "its NATS subject would be {} bytes, over the {MAX_SUBJECT_LEN}-byte limit \
                     (every byte outside [A-Za-z0-9-] takes 3)",
                    subject.len()
                ),
            ));
        }
        Ok(subject)
    }

    /// The subject filter of everything strictly below a normalised directory.
    pub(crate) fn tree_filter(&self, directory: &str) -> String {
        if directory.is_empty() {
            format!("{}>", self.prefix)
        } else {
            format!("{}{}.>", self.prefix, subject::encode(directory))
        }
    }

    /// The key of a subject of this store, if it is one.
    pub(crate) fn key_of(&self, subject: &str) -> Option<String> {
        subject::decode(subject.strip_prefix(&self.prefix)?)
    }

    /// Reads a stored message as a record of `key`.
    pub(crate) fn record_of(
        &self,
        key: &str,
        seq: u64,
        headers: Option<&HeaderMap>,
        payload: &Bytes,
    ) -> Record {
        let deleted = matches!(header_str(headers, KV_OPERATION), Some("DEL" | "PURGE"))
            || headers
                .and_then(|h| h.get(async_nats::header::NATS_MARKER_REASON))
                .is_some();
        if deleted {
            Record::Gone(seq)
        } else {
            Record::Live(KvPair::new(key, payload.clone(), seq))
        }
    }

    /// Bounds a call by the request timeout.
    pub(crate) async fn bounded<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let limit = self.config.request_timeout;
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_) => Err(timeout(operation, limit)),
        }
    }

    /// The last message of a key's subject.
    pub(crate) async fn read(&self, key: &str, consistent: bool) -> Result<Option<Record>> {
        let subject = self.subject(key)?;
        if consistent || !self.allow_direct {
            match self.stream.get_last_raw_message_by_subject(&subject).await {
                Ok(m) => Ok(Some(self.record_of(
                    key,
                    m.sequence,
                    Some(&m.headers),
                    &m.payload,
                ))),
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(backend(e)),
            }
        } else {
            match self.stream.direct_get_last_for_subject(subject).await {
                Ok(m) => Ok(Some(self.record_of(
                    key,
                    m.sequence,
                    Some(&m.headers),
                    &m.payload,
                ))),
                Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
                Err(e) => Err(backend(e)),
            }
        }
    }

    /// Publishes `request` to its key's subject.
    ///
    /// A refusal by a new stream leader not caught up yet is tried again until the request
    /// timeout, and so is an unconditional write that found nobody serving the stream (its
    /// leader is being elected, its server is down): every attempt carries the same message
    /// id, so JetStream stores such a write once however often it is sent. A conditional
    /// write that found nobody serving the stream fails with `Unavailable` (outcome unknown).
    pub(crate) async fn publish(&self, request: Publish<'_>) -> Result<Published> {
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        let mut pause = Duration::from_millis(25);
        loop {
            match self.publish_once(&request).await {
                Attempt::NotApplied(_)
                    if self.client.connection_state()
                        == async_nats::connection::State::Connected
                        && tokio::time::Instant::now() + pause < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(400));
                }
                Attempt::NotApplied(error) => return Err(error),
                Attempt::Done(outcome) => return outcome,
            }
        }
    }

    /// One attempt of [`Inner::publish`].
    async fn publish_once(&self, request: &Publish<'_>) -> Attempt {
        let subject = match self.subject(request.key) {
            Ok(subject) => subject,
            Err(e) => return Attempt::Done(Err(e)),
        };
        // While disconnected, async-nats queues what is published and sends it after the
        // reconnect — possibly long after this call has failed. A write that reported an
        // error must not land later: refuse it before it reaches the queue.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Attempt::NotApplied(Error::unavailable(
                BACKEND,
                "not connected to the NATS server (the write was not sent)",
            ));
        }
        let mut message =
            jetstream::message::PublishMessage::build().payload(request.value.clone());
        if let Some(ttl) = request.ttl {
            message = message.header(
                async_nats::header::NATS_MESSAGE_TTL,
                ttl_header(ttl).as_str(),
            );
        }
        if let Some(operation) = request.operation {
            message = message.header(KV_OPERATION, operation);
        }
        if let Some(owner) = request.owner {
            message = message.header(LOCK_OWNER, owner);
        }
        if let Some(expected) = request.expected {
            message = message.expected_last_subject_sequence(expected);
        }
        message = message.message_id(&request.id);
        let ack = match self.js.send_publish(subject, message).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        // What the server said, for the errors async-nats leaves as `Other`.
        let code = |e: &jetstream::context::PublishError| {
            std::error::Error::source(e)
                .and_then(|s| s.downcast_ref::<jetstream::Error>())
                .map(|e| e.error_code())
        };
        Attempt::Done(match ack {
            Ok(ack) => Ok(Published::Stored(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(Published::Conflict),
            // A clustered stream may say "wrong last sequence" without the number.
            Err(e)
                if code(&e) == Some(jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT) =>
            {
                Ok(Published::Conflict)
            }
            // A new stream leader that has not caught up yet refuses conditional writes.
            Err(e)
                if code(&e)
                    == Some(
                        jetstream::ErrorCode::STREAM_EXPECTED_LAST_SEQ_PER_SUBJECT_NOT_READY,
                    ) =>
            {
                return Attempt::NotApplied(Error::unavailable(BACKEND, e));
            }
            Err(e) if e.kind() == PublishErrorKind::TimedOut => {
                Err(timeout("publish", self.config.request_timeout))
            }
            // Nobody answered for the stream: on a cluster, its leader is being elected (the
            // write went nowhere); the bucket is gone only if its stream no longer exists.
            //
            // The check is bounded by a short probe, not the request timeout: while the
            // stream is offline (its only replica's server down) nobody answers the stream
            // info request either, and waiting the whole request timeout for it would keep
            // the write from being sent again once the stream is back.
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                let probe = (self.config.request_timeout / 4).min(STREAM_PROBE_LIMIT);
                return match tokio::time::timeout(probe, self.stream_identity()).await {
                    Ok(Err(gone @ Error::Config(_))) => Attempt::Done(Err(gone)),
                    // Sent again only where JetStream's deduplication (the message id) makes a
                    // resend harmless: an unconditional write. A conditional one is not
                    // deduplicated (the server checks the expected revision first), and the
                    // failover scenarios saw a CAS stored once yet answered as a conflict on
                    // its resend; its outcome is reported as unknown instead.
                    _ if request.expected.is_none() => {
                        Attempt::NotApplied(Error::unavailable(BACKEND, e))
                    }
                    _ => Attempt::Done(Err(Error::unavailable(BACKEND, e))),
                };
            }
            Err(e) => Err(backend(e)),
        })
    }

    /// Create-only write (a delete marker counts as absent).
    pub(crate) async fn create(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
        owner: Option<&str>,
    ) -> Result<KvPair> {
        let mut expected = 0;
        loop {
            match self
                .publish(
                    Publish::value(key, value.clone())
                        .ttl(ttl)
                        .owner(owner)
                        .expected(expected),
                )
                .await?
            {
                Published::Stored(seq) => return Ok(KvPair::new(key, value, seq)),
                Published::Conflict => match self.read(key, true).await? {
                    None => expected = 0,
                    Some(Record::Gone(seq)) => expected = seq,
                    Some(Record::Live(_)) => {
                        return Err(Error::KeyExists {
                            key: key.to_owned(),
                        });
                    }
                },
            }
        }
    }

    /// Why a write conditional on `previous` failed, from the current state.
    async fn cas_failure(&self, key: &str) -> Result<Error> {
        Ok(match self.read(key, true).await? {
            None | Some(Record::Gone(_)) => Error::KeyNotFound {
                key: key.to_owned(),
            },
            Some(Record::Live(_)) => Error::KeyModified {
                key: key.to_owned(),
            },
        })
    }

    /// Deletes a key whatever its revision: `Ok(true)` if it existed.
    pub(crate) async fn delete_key(&self, key: &str) -> Result<bool> {
        loop {
            let seq = match self.read(key, true).await? {
                None | Some(Record::Gone(_)) => return Ok(false),
                Some(Record::Live(pair)) => pair.last_index,
            };
            match self
                .publish(Publish::delete_marker(key).expected(seq))
                .await?
            {
                Published::Stored(_) => return Ok(true),
                Published::Conflict => continue,
            }
        }
    }

    /// An ordered push consumer over `filter`.
    /// The bucket's stream as it is now: when it was created (Unix ns) and its last sequence.
    /// A missing stream is [`Error::Config`] (the bucket was deleted).
    pub(crate) async fn stream_identity(&self) -> Result<(i128, u64)> {
        let name = format!("KV_{}", self.config.bucket);
        match self.js.get_stream(&name).await {
            Ok(stream) => {
                let info = stream.cached_info();
                Ok((
                    info.created.unix_timestamp_nanos(),
                    info.state.last_sequence,
                ))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(_)
                ) && e.to_string().to_ascii_lowercase().contains("not found") =>
            {
                Err(Error::Config(format!(
                    "the bucket {:?} is gone (its stream was deleted)",
                    self.config.bucket
                )))
            }
            Err(e) => Err(backend(e)),
        }
    }

    /// The error that ends a watch whose stream lost its history.
    pub(crate) fn history_lost_error(&self) -> Error {
        Error::backend(
            BACKEND,
            format!(
                "the bucket {:?} lost its history: its stream was created anew or its sequences \
                 went backwards (a server restarted without its data, the bucket deleted and \
                 made again); this watch belongs to the lost history (watch again), and \
                 revisions start low again",
                self.config.bucket
            ),
        )
    }

    pub(crate) async fn ordered(
        &self,
        filter: &str,
        deliver_policy: consumer::DeliverPolicy,
    ) -> Result<consumer::Consumer<consumer::push::OrderedConfig>> {
        self.stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                description: Some("kv-nats".into()),
                filter_subject: filter.to_owned(),
                replay_policy: consumer::ReplayPolicy::Instant,
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(backend)
    }

    /// The live keys under `filter` (last message per subject), sorted by key.
    pub(crate) async fn scan(&self, filter: &str) -> Result<BTreeMap<String, KvPair>> {
        let consumer = self
            .ordered(filter, consumer::DeliverPolicy::LastPerSubject)
            .await?;
        let mut out = BTreeMap::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(out);
        }
        let mut messages = consumer.messages().await.map_err(backend)?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(backend)?;
            let info = message
                .info()
                .map_err(|e| Error::backend(BACKEND, e.to_string()))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            if let Some(key) = self.key_of(&message.message.subject) {
                match self.record_of(
                    &key,
                    seq,
                    message.message.headers.as_ref(),
                    &message.message.payload,
                ) {
                    Record::Live(pair) => {
                        out.insert(key, pair);
                    }
                    Record::Gone(_) => {
                        out.remove(&key);
                    }
                }
            }
            if pending == 0 {
                break;
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Store for NatsStore {
    fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }

    #[tracing::instrument(name = "put", skip_all, fields(backend = BACKEND, key = key))]
    async fn put(&self, key: &str, value: Bytes, options: WriteOptions) -> Result<()> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let key = inner.caps.check_key(key)?;
        inner.caps.check_value(&key, &value)?;
        let ttl = inner.caps.check_ttl(options.ttl)?;
        inner
            .bounded("put", async {
                inner.publish(Publish::value(&key, value).ttl(ttl)).await?;
                Ok(())
            })
            .await
    }

    #[tracing::instrument(name = "get", skip_all, fields(backend = BACKEND, key = key))]
    async fn get(&self, key: &str, options: ReadOptions) -> Result<Option<KvPair>> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let key = inner.caps.check_key(key)?;
        inner
            .bounded("get", async {
                Ok(match inner.read(&key, options.consistent).await? {
                    Some(Record::Live(pair)) => Some(pair),
                    _ => None,
                })
            })
            .await
    }

    #[tracing::instrument(name = "delete", skip_all, fields(backend = BACKEND, key = key))]
    async fn delete(&self, key: &str) -> Result<bool> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let key = inner.caps.check_key(key)?;
        inner.bounded("delete", inner.delete_key(&key)).await
    }

    #[tracing::instrument(name = "list", skip_all, fields(backend = BACKEND, directory = directory))]
    async fn list(&self, directory: &str, _options: ReadOptions) -> Result<Vec<KvPair>> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let directory = inner.caps.check_directory(directory)?;
        let filter = inner.tree_filter(&directory);
        inner
            .bounded("list", async {
                Ok(inner.scan(&filter).await?.into_values().collect())
            })
            .await
    }

    #[tracing::instrument(name = "delete_tree", skip_all, fields(backend = BACKEND, directory = directory))]
    async fn delete_tree(&self, directory: &str) -> Result<()> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let directory = inner.caps.check_directory(directory)?;
        let filter = inner.tree_filter(&directory);
        inner
            .bounded("delete_tree", async {
                let mut keys: Vec<String> = inner.scan(&filter).await?.into_keys().collect();
                if !directory.is_empty() {
                    keys.push(directory.clone());
                }
                let results: Vec<Result<bool>> = futures::stream::iter(keys)
                    .map(|key| async move { inner.delete_key(&key).await })
                    .buffer_unordered(BATCH)
                    .collect()
                    .await;
                results.into_iter().try_for_each(|r| r.map(|_| ()))
            })
            .await
    }

    #[tracing::instrument(name = "atomic_put", skip_all, fields(backend = BACKEND, key = key))]
    async fn atomic_put(
        &self,
        key: &str,
        value: Bytes,
        previous: Option<&KvPair>,
        options: WriteOptions,
    ) -> Result<KvPair> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let key = inner.caps.check_key(key)?;
        inner.caps.check_value(&key, &value)?;
        let ttl = inner.caps.check_ttl(options.ttl)?;
        inner
            .bounded("atomic_put", async {
                let Some(previous) = previous else {
                    return inner.create(&key, value, ttl, None).await;
                };
                match inner
                    .publish(
                        Publish::value(&key, value.clone())
                            .ttl(ttl)
                            .expected(previous.last_index),
                    )
                    .await?
                {
                    Published::Stored(seq) => Ok(KvPair::new(key, value, seq)),
                    Published::Conflict => Err(inner.cas_failure(&key).await?),
                }
            })
            .await
    }

    #[tracing::instrument(name = "atomic_delete", skip_all, fields(backend = BACKEND, key = key))]
    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let key = inner.caps.check_key(key)?;
        inner
            .bounded("atomic_delete", async {
                // A pair's index always names a value, never a marker: expecting it cannot
                // "delete" a key that is already gone.
                match inner
                    .publish(Publish::delete_marker(&key).expected(previous.last_index))
                    .await?
                {
                    Published::Stored(_) => Ok(()),
                    Published::Conflict => Err(inner.cas_failure(&key).await?),
                }
            })
            .await
    }

    #[tracing::instrument(name = "watch", skip_all, fields(backend = BACKEND, key = key))]
    async fn watch(&self, key: &str, _options: ReadOptions) -> Result<WatchStream> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let key = inner.caps.check_key(key)?;
        let subject = inner.subject(&key)?;
        Ok(crate::watch::watch_key(self.inner.clone(), key, subject))
    }

    #[tracing::instrument(name = "watch_tree", skip_all, fields(backend = BACKEND, directory = directory))]
    async fn watch_tree(&self, directory: &str, _options: ReadOptions) -> Result<WatchTreeStream> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let directory = inner.caps.check_directory(directory)?;
        let filter = inner.tree_filter(&directory);
        Ok(crate::watch::watch_tree(self.inner.clone(), filter))
    }

    async fn new_lock(&self, key: &str, options: LockOptions) -> Result<Lock> {
        let inner = &self.inner;
        inner.tasks.ensure_open()?;
        let key = inner.caps.check_lock(key, &options)?;
        inner.subject(&key)?;
        let backend = crate::lock::NatsLock::new(self.inner.clone(), key.clone(), options);
        Ok(Lock::new(key, Arc::new(backend), inner.tasks.clone()))
    }

    async fn close(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.tasks.is_closed() {
            return Ok(());
        }
        inner.tasks.close(inner.config.request_timeout).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), inner.client.drain()).await;
        Ok(())
    }

    fn background_tasks(&self) -> usize {
        self.inner.tasks.running()
    }
}
