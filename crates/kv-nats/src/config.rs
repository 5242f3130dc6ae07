//! [`Config`]: where the NATS servers are, how to authenticate, which bucket to use.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use kv_core::url::{decode_query_value, percent_decode};
use kv_core::{Error, Result};

/// The default bucket name.
pub const DEFAULT_BUCKET: &str = "kv";

/// The default largest value: NATS' default `max_payload` is 1 MiB for the whole message;
/// 64 KiB are left for the headers and the subject.
pub const DEFAULT_MAX_VALUE_LEN: usize = 1024 * 1024 - 64 * 1024;

/// How the client proves who it is.
#[non_exhaustive]
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// No credentials.
    #[default]
    None,
    /// User name and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// A token.
    Token(String),
    /// An NKey seed read from this file (the file holds the `SU…` seed).
    NKeySeedFile(PathBuf),
    /// A `.creds` file (a user JWT and its NKey seed, as `nsc` writes them).
    CredentialsFile(PathBuf),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            Auth::Token(_) => f.write_str("Token(<redacted>)"),
            Auth::NKeySeedFile(path) => f.debug_tuple("NKeySeedFile").field(path).finish(),
            Auth::CredentialsFile(path) => f.debug_tuple("CredentialsFile").field(path).finish(),
        }
    }
}

/// TLS settings (rustls; the system's root certificates plus an optional private CA).
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file of a CA to trust in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (mutual TLS); needs [`client_key_file`](Self::client_key_file).
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub client_key_file: Option<PathBuf>,
    /// Starts TLS before the server's `INFO` (servers configured with `handshake_first`).
    pub handshake_first: bool,
}

impl TlsConfig {
    /// TLS with the system roots only.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Where the bucket's stream keeps its messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Storage {
    /// On disk (the default): keys, revisions and fencing tokens survive a server restart.
    #[default]
    File,
    /// In memory: a server restart loses every key, and revisions start again from 1 —
    /// `last_index` and fencing tokens then no longer rise across the restart.
    Memory,
}

/// Configuration of a [`NatsStore`](crate::NatsStore). Build one with [`Config::builder`] or
/// [`Config::from_url`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Server URLs (`nats://host:port`, `tls://host:port`); the client picks one and fails
    /// over to the others.
    pub servers: Vec<String>,
    /// Credentials.
    pub auth: Auth,
    /// TLS, `None` for plain TCP (unless a server demands TLS).
    pub tls: Option<TlsConfig>,
    /// The JetStream KV bucket (stream `KV_<bucket>`), created at connect if missing.
    pub bucket: String,
    /// Namespace: a key path every key of this store lives under (`app` stores `a/b` as
    /// `app/a/b`); empty for the whole bucket.
    pub namespace: String,
    /// Replicas of the bucket's stream when this store creates it (1, 3 or 5 on a cluster).
    pub replicas: usize,
    /// Revisions kept per key when this store creates the bucket (1..=64; NATS' `history`).
    pub history: i64,
    /// Where the bucket's stream stores messages when this store creates it.
    pub storage: Storage,
    /// Limit for establishing the connection.
    pub connect_timeout: Duration,
    /// Limit for each call (`list`, `delete_tree`: the whole call).
    pub request_timeout: Duration,
    /// Largest value accepted, in bytes.
    pub max_value_len: usize,
    /// How often a waiting `lock()` polls the lock's key, besides waking on its changes.
    pub lock_poll_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            servers: vec!["nats://127.0.0.1:4222".to_owned()],
            auth: Auth::None,
            tls: None,
            bucket: DEFAULT_BUCKET.to_owned(),
            namespace: String::new(),
            replicas: 1,
            history: 1,
            storage: Storage::File,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_value_len: DEFAULT_MAX_VALUE_LEN,
            lock_poll_interval: Duration::from_millis(250),
        }
    }
}

impl Config {
    /// A builder starting from the defaults (`nats://127.0.0.1:4222`, bucket `kv`, no
    /// namespace, 1 replica, history 1, file storage).
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Config::default(),
        }
    }

    /// Parses a URL:
    ///
    /// `nats://[user:password@|token@]host[:port][,host[:port]…][/bucket][?params]`, or
    /// `tls://…` for TLS (port 4222 by default). User, password and token are
    /// percent-decoded. Query parameters: `bucket=`, `namespace=` (or `prefix=`),
    /// `replicas=`, `history=`, `storage=file|memory`, `token=`, `nkey_seed_file=`,
    /// `creds_file=`, `tls_ca_file=`, `tls_cert_file=`, `tls_key_file=`,
    /// `tls_handshake_first=true`, `connect_timeout=`, `request_timeout=` (durations: `5s`,
    /// `500ms`, or seconds), `connect_timeout_ms=`, `request_timeout_ms=`,
    /// `max_value_len=`.
    pub fn from_url(url: &str) -> Result<Config> {
        let bad = |why: &str| Error::Config(format!("nats URL {url:?}: {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("missing `scheme://`"))?;
        let tls = match scheme {
            "nats" => false,
            "tls" => true,
            other => {
                return Err(bad(&format!(
                    "unknown scheme {other:?} (nats:// or tls://)"
                )));
            }
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        let mut builder = Config::builder();
        let hosts = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => {
                match userinfo.split_once(':') {
                    Some((user, password)) => {
                        builder = builder.user_password(
                            percent_decode(user).map_err(|e| bad(&e))?,
                            percent_decode(password).map_err(|e| bad(&e))?,
                        );
                    }
                    None => {
                        builder = builder.token(percent_decode(userinfo).map_err(|e| bad(&e))?);
                    }
                }
                hosts
            }
            None => authority,
        };
        let mut servers = Vec::new();
        for host in hosts.split(',').filter(|h| !h.is_empty()) {
            let host_port = if host.starts_with('[') {
                if host.contains("]:") {
                    host.to_owned()
                } else {
                    format!("{host}:4222")
                }
            } else if host.contains(':') {
                host.to_owned()
            } else {
                format!("{host}:4222")
            };
            check_host_port(&host_port).map_err(|e| bad(&e))?;
            servers.push(format!("{scheme}://{host_port}"));
        }
        if servers.is_empty() {
            return Err(bad("no host"));
        }
        builder = builder.servers(servers);
        let path = path.trim_matches('/');
        if !path.is_empty() {
            if path.contains('/') {
                return Err(bad("the path is the bucket name: one segment"));
            }
            builder = builder.bucket(percent_decode(path).map_err(|e| bad(&e))?);
        }
        let mut tls_config = tls.then(TlsConfig::new);
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode_query_value(value).map_err(|e| bad(&e))?;
            let number = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| bad(&format!("{name}={v:?} is not a number")))
            };
            let duration = |v: &str| {
                kv_core::url::parse_duration(v)
                    .ok_or_else(|| bad(&format!("{name}={v:?} is not a duration")))
            };
            match name {
                "bucket" => builder = builder.bucket(value),
                "namespace" | "prefix" => builder = builder.namespace(value),
                "replicas" => builder = builder.replicas(number(&value)? as usize),
                "history" => builder = builder.history(number(&value)? as i64),
                "storage" => {
                    builder = builder.storage(match value.as_str() {
                        "file" => Storage::File,
                        "memory" => Storage::Memory,
                        other => return Err(bad(&format!("storage={other:?}: file or memory"))),
                    })
                }
                "token" => builder = builder.token(value),
                "nkey_seed_file" | "nkey" => builder = builder.nkey_seed_file(value),
                "creds_file" | "creds" => builder = builder.credentials_file(value),
                "connect_timeout" => builder = builder.connect_timeout(duration(&value)?),
                "request_timeout" => builder = builder.request_timeout(duration(&value)?),
                "connect_timeout_ms" => {
                    builder = builder.connect_timeout(Duration::from_millis(number(&value)?))
                }
                "request_timeout_ms" => {
                    builder = builder.request_timeout(Duration::from_millis(number(&value)?))
                }
                "max_value_len" => builder = builder.max_value_len(number(&value)? as usize),
                "tls_ca_file" | "tls_cert_file" | "tls_key_file" | "tls_handshake_first" => {
                    let t = tls_config.get_or_insert_with(TlsConfig::new);
                    match name {
                        "tls_ca_file" => t.ca_file = Some(value.into()),
                        "tls_cert_file" => t.client_cert_file = Some(value.into()),
                        "tls_key_file" => t.client_key_file = Some(value.into()),
                        _ => {
                            t.handshake_first = match value.as_str() {
                                "true" | "1" | "" => true,
                                "false" | "0" => false,
                                other => {
                                    return Err(bad(&format!(
                                        "tls_handshake_first={other:?} is not a boolean"
                                    )));
                                }
                            }
                        }
                    }
                }
                other => return Err(bad(&format!("unknown parameter {other:?}"))),
            }
        }
        if let Some(t) = tls_config {
            builder = builder.tls(t);
        }
        builder.build()
    }
}

/// Builds a [`Config`]; [`build`](Self::build) validates it.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
}

impl ConfigBuilder {
    /// One server URL (`nats://host:port`; replaces the list).
    pub fn server(mut self, server: impl Into<String>) -> Self {
        self.config.servers = vec![server.into()];
        self
    }

    /// Several server URLs of one cluster.
    pub fn servers<I, S>(mut self, servers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.servers = servers.into_iter().map(Into::into).collect();
        self
    }

    /// User and password.
    pub fn user_password(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.config.auth = Auth::UserPassword {
            user: user.into(),
            password: password.into(),
        };
        self
    }

    /// A token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.config.auth = Auth::Token(token.into());
        self
    }

    /// An NKey seed file.
    pub fn nkey_seed_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.auth = Auth::NKeySeedFile(path.into());
        self
    }

    /// A `.creds` file (JWT + seed).
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.auth = Auth::CredentialsFile(path.into());
        self
    }

    /// Turns TLS on with these settings.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.config.tls = Some(tls);
        self
    }

    /// The bucket name (letters, digits, `-` and `_`).
    pub fn bucket(mut self, bucket: impl Into<String>) -> Self {
        self.config.bucket = bucket.into();
        self
    }

    /// The namespace (a key path; empty for the whole bucket).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.config.namespace = namespace.into();
        self
    }

    /// Replicas of a bucket this store creates.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.config.replicas = replicas;
        self
    }

    /// Revisions kept per key in a bucket this store creates (1..=64).
    pub fn history(mut self, history: i64) -> Self {
        self.config.history = history;
        self
    }

    /// Storage of a bucket this store creates.
    pub fn storage(mut self, storage: Storage) -> Self {
        self.config.storage = storage;
        self
    }

    /// Connection establishment limit.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Per-call limit.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// Largest accepted value in bytes.
    pub fn max_value_len(mut self, max: usize) -> Self {
        self.config.max_value_len = max;
        self
    }

    /// Safety-net polling period of a waiting `lock()`.
    pub fn lock_poll_interval(mut self, interval: Duration) -> Self {
        self.config.lock_poll_interval = interval;
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<Config> {
        let mut config = self.config;
        if config.servers.is_empty() {
            return Err(Error::Config("no nats server".into()));
        }
        if config.bucket.is_empty()
            || !config
                .bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::Config(format!(
                "bucket name {:?}: letters, digits, `-` and `_` only",
                config.bucket
            )));
        }
        if !(1..=5).contains(&config.replicas) {
            return Err(Error::Config(format!(
                "replicas {} outside 1..=5",
                config.replicas
            )));
        }
        if !(1..=64).contains(&config.history) {
            return Err(Error::Config(format!(
                "history {} outside 1..=64",
                config.history
            )));
        }
        if config.connect_timeout.is_zero() || config.request_timeout.is_zero() {
            return Err(Error::Config("timeouts must be positive".into()));
        }
        if config.lock_poll_interval.is_zero() {
            return Err(Error::Config("lock_poll_interval must be positive".into()));
        }
        if config.max_value_len == 0 {
            return Err(Error::Config("max_value_len must be positive".into()));
        }
        if let Some(tls) = &config.tls
            && tls.client_cert_file.is_some() != tls.client_key_file.is_some()
        {
            return Err(Error::Config(
                "a TLS client certificate needs its key and vice versa".into(),
            ));
        }
        config.namespace = kv_core::key::normalize_directory(&config.namespace)
            .map_err(|e| Error::Config(format!("invalid namespace {:?}: {e}", config.namespace)))?;
        Ok(config)
    }
}

fn check_host_port(host_port: &str) -> std::result::Result<(), String> {
    let (host, port) = host_port
        .rsplit_once(':')
        .ok_or_else(|| format!("{host_port:?} is not host:port"))?;
    if host.is_empty() || host == "[]" {
        return Err(format!("{host_port:?} has no host"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("{host_port:?} has a bad port"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = Config::from_url("nats://127.0.0.1:24222").unwrap();
        assert_eq!(c.servers, ["nats://127.0.0.1:24222"]);
        assert_eq!(c.bucket, "kv");
        assert_eq!(c.auth, Auth::None);
        assert!(c.tls.is_none());
        let c = Config::from_url(
            "tls://app:p%40ss@h1,h2:5222/configs?namespace=/svc/&replicas=3&history=5&request_timeout=1500ms&tls_ca_file=/ca.pem",
        )
        .unwrap();
        assert_eq!(c.servers, ["tls://h1:4222", "tls://h2:5222"]);
        assert_eq!(
            c.auth,
            Auth::UserPassword {
                user: "app".into(),
                password: "p@ss".into()
            }
        );
        assert_eq!(c.bucket, "configs");
        assert_eq!(c.namespace, "svc");
        assert_eq!((c.replicas, c.history), (3, 5));
        assert_eq!(c.request_timeout, Duration::from_millis(1500));
        assert_eq!(
            c.tls.unwrap().ca_file.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        let c = Config::from_url("nats://s3cret@h?storage=memory").unwrap();
        assert_eq!(c.auth, Auth::Token("s3cret".into()));
        assert_eq!(c.storage, Storage::Memory);
        let c = Config::from_url("nats://h?nkey_seed_file=/x.nk&bucket=b_1").unwrap();
        assert_eq!(c.auth, Auth::NKeySeedFile("/x.nk".into()));
        assert_eq!(c.bucket, "b_1");
        for bad in [
            "http://x",
            "nats://",
            "nats://h:notaport",
            "nats://h/a/b",
            "nats://h/bad.bucket",
            "nats://h?what=1",
            "nats://h?namespace=a//b",
            "nats://h?namespace=__kv",
            "nats://h?replicas=7",
            "nats://h?history=0",
            "nats://h?storage=tape",
        ] {
            assert!(
                matches!(Config::from_url(bad), Err(Error::Config(_))),
                "{bad} accepted"
            );
        }
        let debug = format!("{:?}", Config::from_url("nats://u:secret@h").unwrap());
        assert!(debug.contains("redacted") && !debug.contains("secret"));
    }
}
