//! Connection settings: [`Config`], its [`ConfigBuilder`] and [`Config::from_url`].

use std::path::PathBuf;
use std::time::Duration;

use kv_core::url::{decode_query_value, percent_decode};
use kv_core::{Error, Result};

/// The largest value Redis itself accepts in one string (`proto-max-bulk-len`, 512 MiB), and
/// the default [`Config::max_value_len`].
pub const REDIS_MAX_VALUE_LEN: usize = 512 * 1024 * 1024;

/// How the endpoints form a deployment.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Topology {
    /// One server (or one primary behind a stable address). The first endpoint is used.
    #[default]
    Centralized,
    /// Redis Sentinel: the endpoints are sentinels, which name the current primary of
    /// `service_name`. fred follows failovers.
    Sentinel {
        /// The monitored primary's name (`sentinel monitor <name> …`).
        service_name: String,
    },
    /// Redis Cluster: the endpoints are seed nodes (any reachable one will do); the client
    /// discovers every primary from them and follows slot moves and failovers.
    Cluster,
}

/// Waiting for replicas after each write ([`Config::wait_for_replicas`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitForReplicas {
    /// How many replicas must confirm the write (`WAIT numreplicas …`).
    pub replicas: u32,
    /// How long to wait for them (`WAIT … timeout`); fewer confirmations by then is
    /// [`kv_core::Error::Timeout`]: the write may have taken effect.
    pub timeout: Duration,
}

/// TLS settings. TLS is on when [`Config::tls`] is `Some` (a `rediss://` URL turns it on).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsConfig {
    /// PEM file with the CA certificate(s) to trust. `None`: the system's root certificates.
    pub ca_file: Option<PathBuf>,
    /// PEM file with the client certificate chain, for servers that require client
    /// certificates (`tls-auth-clients yes`). Needs [`client_key_file`](Self::client_key_file).
    pub client_cert_file: Option<PathBuf>,
    /// PEM file with the client's private key.
    pub client_key_file: Option<PathBuf>,
}

impl TlsConfig {
    /// TLS trusting the system's root certificates.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the CA certificate(s) in this PEM file instead of the system roots.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Presents this client certificate (PEM chain) and key (PEM).
    pub fn client_identity(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert_file = Some(cert.into());
        self.client_key_file = Some(key.into());
        self
    }
}

/// Everything needed to reach a Redis deployment. Build it with [`Config::builder`] or
/// [`Config::from_url`].
#[non_exhaustive]
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// `host:port` endpoints: the server, or the sentinels ([`Topology::Sentinel`]).
    pub endpoints: Vec<String>,
    /// How the endpoints form a deployment.
    pub topology: Topology,
    /// The logical database (`SELECT`); keyspace notifications are per database.
    pub database: u8,
    /// ACL user name (`AUTH user pass`); `None` for the `default` user.
    pub username: Option<String>,
    /// Password (`requirepass` or the ACL user's).
    pub password: Option<String>,
    /// TLS; `None` is plain TCP.
    pub tls: Option<TlsConfig>,
    /// Namespace: every key is stored under this prefix (normalised to end with `/`, empty
    /// for none). Keys reported back are relative to it.
    pub namespace: String,
    /// Limit for establishing a connection.
    pub connect_timeout: Duration,
    /// Limit for each request ([`Error::Timeout`] after it).
    pub request_timeout: Duration,
    /// Largest value accepted, in bytes (at most [`REDIS_MAX_VALUE_LEN`], the default).
    pub max_value_len: usize,
    /// How often a waiting `lock()` re-checks the key when no keyspace notification arrives
    /// (a safety net: notifications wake waiters at once).
    pub lock_poll_interval: Duration,
    /// `Some`: every write, CAS, delete, transaction and lock acquisition or renewal counts
    /// only once `WAIT` confirms that many replicas copied it (see the crate docs,
    /// "Replication and failover"). `None` (the default): the primary's reply is enough.
    pub wait_for_replicas: Option<WaitForReplicas>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("endpoints", &self.endpoints)
            .field("topology", &self.topology)
            .field("database", &self.database)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("namespace", &self.namespace)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_value_len", &self.max_value_len)
            .field("lock_poll_interval", &self.lock_poll_interval)
            .field("wait_for_replicas", &self.wait_for_replicas)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            endpoints: vec!["127.0.0.1:6379".to_owned()],
            topology: Topology::Centralized,
            database: 0,
            username: None,
            password: None,
            tls: None,
            namespace: String::new(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_value_len: REDIS_MAX_VALUE_LEN,
            lock_poll_interval: Duration::from_millis(500),
            wait_for_replicas: None,
        }
    }
}

impl Config {
    /// A builder starting from the defaults (`127.0.0.1:6379`, database 0, no namespace).
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Config::default(),
        }
    }

    /// Parses a URL:
    ///
    /// * `redis://[user[:password]@]host[:port][/db]` — one server (`rediss://` for TLS);
    /// * `redis+sentinel://[user[:password]@]host[:port][,host[:port]…]/service[/db]` —
    ///   Sentinel (`rediss+sentinel://` for TLS);
    /// * `redis+cluster://[user[:password]@]host[:port][,host[:port]…][/]` — Redis Cluster,
    ///   the hosts being seed nodes (`rediss+cluster://` for TLS; a cluster has database 0
    ///   only);
    ///
    /// and the query parameters `namespace=<namespace>` (or `prefix=`), `connect_timeout_ms=<n>`,
    /// `request_timeout_ms=<n>`, `max_value_len=<bytes>`, `tls_ca_file=<path>`,
    /// `tls_cert_file=<path>`, `tls_key_file=<path>`, `wait_replicas=<n>` with
    /// `wait_timeout_ms=<n>` (default 1000; see `ConfigBuilder::wait_for_replicas`). User
    /// and password are percent-decoded.
    pub fn from_url(url: &str) -> Result<Config> {
        let bad = |why: &str| Error::Config(format!("redis URL {url:?}: {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("missing `scheme://`"))?;
        let (tls, sentinel, cluster) = match scheme {
            "redis" => (false, false, false),
            "rediss" => (true, false, false),
            "redis+sentinel" => (false, true, false),
            "rediss+sentinel" => (true, true, false),
            "redis+cluster" => (false, false, true),
            "rediss+cluster" => (true, false, true),
            other => return Err(bad(&format!("unknown scheme {other:?}"))),
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
                let (user, password) = match userinfo.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (userinfo, None),
                };
                let user = percent_decode(user).map_err(|e| bad(&e))?;
                if !user.is_empty() {
                    builder = builder.username(user);
                }
                if let Some(password) = password {
                    builder = builder.password(percent_decode(password).map_err(|e| bad(&e))?);
                }
                hosts
            }
            None => authority,
        };
        let mut endpoints = Vec::new();
        for host in hosts.split(',').filter(|h| !h.is_empty()) {
            let endpoint = if host.starts_with('[') {
                if host.contains("]:") {
                    host.to_owned()
                } else {
                    format!("{host}:{}", if sentinel { 26379 } else { 6379 })
                }
            } else if host.contains(':') {
                host.to_owned()
            } else {
                format!("{host}:{}", if sentinel { 26379 } else { 6379 })
            };
            parse_endpoint(&endpoint).map_err(|e| bad(&e))?;
            endpoints.push(endpoint);
        }
        if endpoints.is_empty() {
            return Err(bad("no host"));
        }
        builder = builder.endpoints(endpoints);
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        if sentinel {
            let service = segments
                .next()
                .ok_or_else(|| bad("a sentinel URL needs the service name as its path"))?;
            builder = builder.sentinel(service);
        }
        if cluster {
            builder = builder.cluster();
            if segments.next().is_some() {
                return Err(bad(
                    "a cluster URL has no database (Redis Cluster has only 0)",
                ));
            }
        }
        if let Some(db) = segments.next() {
            let db = db
                .parse::<u8>()
                .map_err(|_| bad(&format!("database {db:?} is not a number")))?;
            builder = builder.database(db);
        }
        if segments.next().is_some() {
            return Err(bad("unexpected path segments"));
        }
        let mut tls_config = tls.then(TlsConfig::new);
        let (mut wait_replicas, mut wait_timeout) = (None, Duration::from_secs(1));
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode_query_value(value).map_err(|e| bad(&e))?;
            let millis = |v: &str| {
                v.parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| bad(&format!("{name}={v:?} is not a number of milliseconds")))
            };
            match name {
                "namespace" | "prefix" => builder = builder.namespace(value),
                "connect_timeout_ms" => builder = builder.connect_timeout(millis(&value)?),
                "request_timeout_ms" => builder = builder.request_timeout(millis(&value)?),
                "max_value_len" => {
                    let n = value
                        .parse::<usize>()
                        .map_err(|_| bad(&format!("max_value_len={value:?} is not a number")))?;
                    builder = builder.max_value_len(n);
                }
                "wait_replicas" => {
                    let n = value
                        .parse::<u32>()
                        .map_err(|_| bad(&format!("wait_replicas={value:?} is not a number")))?;
                    wait_replicas = Some(n);
                }
                "wait_timeout_ms" => wait_timeout = millis(&value)?,
                "tls_ca_file" | "tls_cert_file" | "tls_key_file" => {
                    let t = tls_config.get_or_insert_with(TlsConfig::new);
                    match name {
                        "tls_ca_file" => t.ca_file = Some(value.into()),
                        "tls_cert_file" => t.client_cert_file = Some(value.into()),
                        _ => t.client_key_file = Some(value.into()),
                    }
                }
                other => return Err(bad(&format!("unknown parameter {other:?}"))),
            }
        }
        if let Some(t) = tls_config {
            builder = builder.tls(t);
        }
        if let Some(n) = wait_replicas {
            builder = builder.wait_for_replicas(n, wait_timeout);
        }
        builder.build()
    }

    /// The namespace prefix as stored: empty, or ending with `/`. A `{` must be closed by a
    /// `}` within the prefix: an open hash tag would run into the keys and make a key and its
    /// metadata record to different Redis Cluster slots. (A closed one, `app{1}/`, pins the
    /// whole namespace to one slot.)
    pub(crate) fn normalized_prefix(prefix: &str) -> Result<String> {
        let dir = kv_core::key::normalize_directory(prefix)
            .map_err(|e| Error::Config(format!("invalid key prefix {prefix:?}: {e}")))?;
        if let Some(open) = dir.find('{')
            && !dir[open..].contains('}')
        {
            return Err(Error::Config(format!(
                "key prefix {prefix:?} opens a `{{` hash tag without closing it"
            )));
        }
        Ok(kv_core::key::child_prefix(&dir))
    }
}

/// Builds a [`Config`]; [`build`](Self::build) validates it.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
}

impl ConfigBuilder {
    /// One endpoint, `host:port` (replaces the list).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.config.endpoints = vec![endpoint.into()];
        self
    }

    /// Several endpoints (sentinels), `host:port` each.
    pub fn endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.endpoints = endpoints.into_iter().map(Into::into).collect();
        self
    }

    /// Uses Redis Sentinel: the endpoints are sentinels monitoring `service_name`.
    pub fn sentinel(mut self, service_name: impl Into<String>) -> Self {
        self.config.topology = Topology::Sentinel {
            service_name: service_name.into(),
        };
        self
    }

    /// Uses Redis Cluster: the endpoints are seed nodes.
    pub fn cluster(mut self) -> Self {
        self.config.topology = Topology::Cluster;
        self
    }

    /// Every write, CAS, delete, transaction and lock acquisition or renewal waits until
    /// `WAIT replicas timeout` confirms that `replicas` replicas copied it; fewer within
    /// `timeout` is [`Error::Timeout`] (the write took effect on the primary and may or may
    /// not survive its failure). `replicas == 0` turns waiting off. See the crate docs,
    /// "Replication and failover".
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.config.wait_for_replicas =
            (replicas > 0).then_some(WaitForReplicas { replicas, timeout });
        self
    }

    /// The logical database.
    pub fn database(mut self, database: u8) -> Self {
        self.config.database = database;
        self
    }

    /// ACL user name.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.config.username = Some(username.into());
        self
    }

    /// Password.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.config.password = Some(password.into());
        self
    }

    /// Turns TLS on with these settings.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.config.tls = Some(tls);
        self
    }

    /// Namespace prefix for every key (`"app"` stores `a/b` at `app/a/b`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.config.namespace = namespace.into();
        self
    }

    /// Connection establishment limit.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Per-request limit.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// Largest accepted value in bytes (capped at [`REDIS_MAX_VALUE_LEN`]).
    pub fn max_value_len(mut self, max: usize) -> Self {
        self.config.max_value_len = max;
        self
    }

    /// Safety-net polling period of waiting `lock()` calls.
    pub fn lock_poll_interval(mut self, interval: Duration) -> Self {
        self.config.lock_poll_interval = interval;
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<Config> {
        let mut config = self.config;
        if config.endpoints.is_empty() {
            return Err(Error::Config("no redis endpoint".into()));
        }
        for endpoint in &config.endpoints {
            parse_endpoint(endpoint).map_err(Error::Config)?;
        }
        if config.max_value_len > REDIS_MAX_VALUE_LEN {
            return Err(Error::Config(format!(
                "max_value_len {} exceeds Redis' own limit of {REDIS_MAX_VALUE_LEN} bytes",
                config.max_value_len
            )));
        }
        if config.connect_timeout.is_zero() || config.request_timeout.is_zero() {
            return Err(Error::Config("timeouts must be positive".into()));
        }
        if config.lock_poll_interval.is_zero() {
            return Err(Error::Config("lock_poll_interval must be positive".into()));
        }
        if let Topology::Sentinel { service_name } = &config.topology
            && service_name.is_empty()
        {
            return Err(Error::Config("empty sentinel service name".into()));
        }
        if config.topology == Topology::Cluster && config.database != 0 {
            return Err(Error::Config("Redis Cluster has database 0 only".into()));
        }
        if let Some(wait) = &config.wait_for_replicas
            && wait.timeout.is_zero()
        {
            // WAIT 0 means "forever": never hang a write.
            return Err(Error::Config(
                "wait_for_replicas needs a positive timeout".into(),
            ));
        }
        if let Some(tls) = &config.tls
            && tls.client_cert_file.is_some() != tls.client_key_file.is_some()
        {
            return Err(Error::Config(
                "a TLS client certificate needs its key and vice versa".into(),
            ));
        }
        config.namespace = Config::normalized_prefix(&config.namespace)?;
        Ok(config)
    }
}

/// Splits `host:port` (IPv6 in brackets).
pub(crate) fn parse_endpoint(endpoint: &str) -> std::result::Result<(String, u16), String> {
    let (host, port) = endpoint
        .rsplit_once(':')
        .ok_or_else(|| format!("endpoint {endpoint:?} is not host:port"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(format!("endpoint {endpoint:?} has no host"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("endpoint {endpoint:?} has a bad port"))?;
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = Config::from_url("redis://127.0.0.1:26379").unwrap();
        assert_eq!(c.endpoints, ["127.0.0.1:26379"]);
        assert_eq!(c.database, 0);
        assert!(c.tls.is_none());
        let c = Config::from_url(
            "rediss://app:p%40ss@localhost/3?prefix=/svc/&request_timeout_ms=1500&tls_ca_file=/ca.pem",
        )
        .unwrap();
        assert_eq!(c.endpoints, ["localhost:6379"]);
        assert_eq!(c.username.as_deref(), Some("app"));
        assert_eq!(c.password.as_deref(), Some("p@ss"));
        assert_eq!(c.database, 3);
        assert_eq!(c.namespace, "svc/");
        assert_eq!(c.request_timeout, Duration::from_millis(1500));
        assert_eq!(
            c.tls.unwrap().ca_file.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        let c = Config::from_url("redis+sentinel://s1:1,s2/mymaster/2").unwrap();
        assert_eq!(c.endpoints, ["s1:1", "s2:26379"]);
        assert_eq!(
            c.topology,
            Topology::Sentinel {
                service_name: "mymaster".into()
            }
        );
        assert_eq!(c.database, 2);
        let c = Config::from_url(
            "rediss+cluster://n1:7000,n2/?prefix=app&wait_replicas=1&wait_timeout_ms=250",
        )
        .unwrap();
        assert_eq!(c.endpoints, ["n1:7000", "n2:6379"]);
        assert_eq!(c.topology, Topology::Cluster);
        assert!(c.tls.is_some());
        assert_eq!(
            c.wait_for_replicas,
            Some(WaitForReplicas {
                replicas: 1,
                timeout: Duration::from_millis(250)
            })
        );
        assert_eq!(
            Config::from_url("redis://h?wait_replicas=2")
                .unwrap()
                .wait_for_replicas
                .map(|w| w.timeout),
            Some(Duration::from_secs(1))
        );
        for bad in [
            "redis+cluster://h/1",
            "redis://h?wait_replicas=x",
            "redis://h?wait_replicas=1&wait_timeout_ms=0",
            "http://x",
            "redis://",
            "redis://h:notaport",
            "redis://h/x",
            "redis://h?what=1",
            "redis://h?prefix=a//b",
            "redis+sentinel://h",
            "redis://h?prefix=__kv",
            "redis://h?prefix=a%7Bb",
        ] {
            assert!(
                matches!(Config::from_url(bad), Err(Error::Config(_))),
                "{bad} accepted"
            );
        }
        assert!(
            format!("{:?}", Config::from_url("redis://u:secret@h").unwrap()).contains("redacted")
        );
    }
}
