//! Connection settings for [`ZookeeperStore`](crate::ZookeeperStore).

use std::path::PathBuf;
use std::time::Duration;

use kv_core::url::{decode_query_value, parse_duration, percent_decode};
use kv_core::{Error, Result};

/// Digest credentials (`addauth digest user:password`), sent on every (re)connection. Nodes
/// are then created with the `CREATOR_ALL_ACL` (only this identity may read or write them);
/// without credentials they get `OPEN_ACL_UNSAFE` (world:anyone:cdrwa).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The digest user name.
    pub username: String,
    /// The digest password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// TLS settings (ZooKeeper's `secureClientPort`). ZooKeeper's TLS always needs an explicit CA.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file with the CA certificate(s) that signed the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS (with [`key_file`](Self::key_file)).
    pub cert_file: Option<PathBuf>,
    /// PEM (PKCS#8) private key of the client certificate.
    pub key_file: Option<PathBuf>,
}

impl TlsConfig {
    /// TLS trusting the CA certificate(s) in `ca_file`.
    pub fn with_ca_file(ca_file: impl Into<PathBuf>) -> Self {
        TlsConfig {
            ca_file: Some(ca_file.into()),
            ..Default::default()
        }
    }

    /// Adds a client certificate and key (mutual TLS).
    pub fn identity(mut self, cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        self.cert_file = Some(cert_file.into());
        self.key_file = Some(key_file.into());
        self
    }
}

/// How to reach ZooKeeper and where to keep the keys.
///
/// Build it with [`Config::builder`] or [`Config::from_url`]:
///
/// ```
/// # use std::time::Duration;
/// use kv_zookeeper::Config;
/// let a = Config::builder()
///     .endpoint("127.0.0.1:2181")
///     .namespace("apps/billing")
///     .request_timeout(Duration::from_secs(5))
///     .build()
///     .unwrap();
/// let b = Config::from_url("zookeeper://127.0.0.1:2181/apps/billing?request_timeout=5s").unwrap();
/// assert_eq!(a, b);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `host:port` of each server of the ensemble (at least one).
    pub endpoints: Vec<String>,
    /// The namespace: every key lives under the znode `/<namespace>`. Default `kv`. It may
    /// contain `/` (`apps/billing`); it must not be empty nor start with `zookeeper`, which
    /// ZooKeeper reserves.
    pub namespace: String,
    /// The ZooKeeper session timeout negotiated with the server (the server clamps it into
    /// `[2, 20] × tickTime`). Default 10 s.
    pub session_timeout: Duration,
    /// How long establishing a session may take before `connect` fails with
    /// [`Error::Timeout`] (or [`Error::Unavailable`] when every endpoint refused). Default 5 s.
    pub connect_timeout: Duration,
    /// Upper bound of every single request ([`Error::Timeout`] past it). Default 10 s.
    pub request_timeout: Duration,
    /// Digest credentials, if any.
    pub credentials: Option<Credentials>,
    /// TLS, if any.
    pub tls: Option<TlsConfig>,
    /// Operations per ZooKeeper multi request in `delete_tree` (a multi request must stay under
    /// the server's `jute.maxbuffer`, 1 MiB by default). Default 1000.
    pub max_ops_per_multi: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            endpoints: Vec::new(),
            namespace: "kv".to_owned(),
            session_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            credentials: None,
            tls: None,
            max_ops_per_multi: 1000,
        }
    }
}

impl Config {
    /// A builder with the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Config::default(),
        }
    }

    /// Parses `zookeeper://[user:password@]host:port[,host:port…][/namespace][?options]`.
    ///
    /// Schemes: `zookeeper`, `zk` (plain) and `zookeeper+tls`, `zks` (TLS). Options:
    /// `session_timeout`, `connect_timeout`, `request_timeout` (`500ms`, `5s`, `2m` or a
    /// number of seconds), `max_ops_per_multi`, and for TLS `ca_file`, `cert_file`,
    /// `key_file` (the server certificate's host name is always verified). The namespace defaults to `kv`.
    pub fn from_url(url: &str) -> Result<Config> {
        let bad = |why: &str| Error::Config(format!("bad ZooKeeper URL {url:?}: {why}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let tls = match scheme {
            "zookeeper" | "zk" => false,
            "zookeeper+tls" | "zks" => true,
            _ => {
                return Err(bad(
                    "the scheme must be zookeeper, zk, zookeeper+tls or zks",
                ));
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
                let (user, password) = userinfo
                    .split_once(':')
                    .ok_or_else(|| bad("credentials must be user:password"))?;
                builder = builder.credentials(
                    percent_decode(user).map_err(|e| bad(&e))?,
                    percent_decode(password).map_err(|e| bad(&e))?,
                );
                hosts
            }
            None => authority,
        };
        for host in hosts.split(',').filter(|h| !h.is_empty()) {
            builder = builder.endpoint(host);
        }
        let path = path.trim_matches('/');
        if !path.is_empty() {
            builder = builder.namespace(percent_decode(path).map_err(|e| bad(&e))?);
        }
        let mut tls_config = tls.then(TlsConfig::default);
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode_query_value(value).map_err(|e| bad(&e))?;
            fn tls_field(
                tls_config: &mut Option<TlsConfig>,
                error: impl FnOnce() -> Error,
            ) -> Result<&mut TlsConfig> {
                tls_config.as_mut().ok_or_else(error)
            }
            let needs_tls = || bad(&format!("{name} needs a zookeeper+tls:// URL"));
            match name {
                "session_timeout" => {
                    builder =
                        builder.session_timeout(parse_duration(&value).ok_or_else(|| bad(name))?)
                }
                "connect_timeout" => {
                    builder =
                        builder.connect_timeout(parse_duration(&value).ok_or_else(|| bad(name))?)
                }
                "request_timeout" => {
                    builder =
                        builder.request_timeout(parse_duration(&value).ok_or_else(|| bad(name))?)
                }
                "max_ops_per_multi" => {
                    builder = builder.max_ops_per_multi(value.parse().map_err(|_| bad(name))?)
                }
                "ca_file" => tls_field(&mut tls_config, needs_tls)?.ca_file = Some(value.into()),
                "cert_file" => {
                    tls_field(&mut tls_config, needs_tls)?.cert_file = Some(value.into())
                }
                "key_file" => tls_field(&mut tls_config, needs_tls)?.key_file = Some(value.into()),
                _ => return Err(bad(&format!("unknown option {name}"))),
            }
        }
        if let Some(tls_config) = tls_config {
            builder = builder.tls(tls_config);
        }
        builder.build()
    }

    /// The znode path of the namespace root, e.g. `/kv`.
    pub fn root_path(&self) -> String {
        format!("/{}", self.namespace)
    }

    /// The ZooKeeper connect string (`host:port,host:port`).
    pub fn connect_string(&self) -> String {
        self.endpoints.join(",")
    }

    fn validate(self) -> Result<Config> {
        if self.endpoints.is_empty() {
            return Err(Error::Config(
                "at least one ZooKeeper endpoint is needed".into(),
            ));
        }
        for endpoint in &self.endpoints {
            if endpoint.contains('/') && !endpoint.starts_with("tcp") {
                return Err(Error::Config(format!(
                    "endpoint {endpoint:?} must be host:port (the namespace is a separate setting)"
                )));
            }
        }
        let namespace = kv_core::key::normalize_key(&self.namespace)
            .map_err(|e| Error::Config(format!("bad namespace {:?}: {e}", self.namespace)))?;
        if namespace.split('/').next() == Some("zookeeper") {
            return Err(Error::Config(
                "the namespace must not start with `zookeeper` (reserved by the server)".into(),
            ));
        }
        if self.max_ops_per_multi == 0 {
            return Err(Error::Config("max_ops_per_multi must be at least 1".into()));
        }
        if self.request_timeout.is_zero()
            || self.connect_timeout.is_zero()
            || self.session_timeout.is_zero()
        {
            return Err(Error::Config("timeouts must not be zero".into()));
        }
        if let Some(tls) = &self.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            return Err(Error::Config(
                "TLS cert_file and key_file go together".into(),
            ));
        }
        Ok(Config { namespace, ..self })
    }
}

/// Builds a [`Config`].
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
}

impl ConfigBuilder {
    /// Adds a server (`host:port`).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.config.endpoints.push(endpoint.into());
        self
    }

    /// Replaces the servers with a comma-separated list or several endpoints.
    pub fn endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.endpoints = endpoints
            .into_iter()
            .flat_map(|e| {
                e.into()
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        self
    }

    /// Sets the namespace (see [`Config::namespace`]).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.config.namespace = namespace.into();
        self
    }

    /// Sets the session timeout.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.config.session_timeout = timeout;
        self
    }

    /// Sets the connection timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Sets the per-request timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// Sets digest credentials.
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.config.credentials = Some(Credentials {
            username: username.into(),
            password: password.into(),
        });
        self
    }

    /// Enables TLS.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.config.tls = Some(tls);
        self
    }

    /// Sets the number of operations per multi request in `delete_tree`.
    pub fn max_ops_per_multi(mut self, ops: usize) -> Self {
        self.config.max_ops_per_multi = ops;
        self
    }

    /// Validates and returns the configuration ([`Error::Config`] when unusable).
    pub fn build(self) -> Result<Config> {
        self.config.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let c = Config::from_url(
            "zk://u:p%40ss@h1:2181,h2:2182/a/b/?session_timeout=4s&request_timeout=250ms&max_ops_per_multi=7",
        )
        .unwrap();
        assert_eq!(c.endpoints, ["h1:2181", "h2:2182"]);
        assert_eq!(c.namespace, "a/b");
        assert_eq!(c.session_timeout, Duration::from_secs(4));
        assert_eq!(c.request_timeout, Duration::from_millis(250));
        assert_eq!(c.max_ops_per_multi, 7);
        let creds = c.credentials.unwrap();
        assert_eq!(
            (creds.username.as_str(), creds.password.as_str()),
            ("u", "p@ss")
        );
        assert_eq!(Config::from_url("zookeeper://h:1").unwrap().namespace, "kv");
        let t =
            Config::from_url("zks://h:1?ca_file=/ca.pem&cert_file=/c.pem&key_file=/k.pem").unwrap();
        assert_eq!(t.tls.unwrap().ca_file.unwrap(), PathBuf::from("/ca.pem"));
        for bad in [
            "http://h:1",
            "zk://",
            "zk://h:1/zookeeper",
            "zk://h:1/a//b",
            "zk://h:1?nope=1",
            "zk://h:1?ca_file=/x",
            "zk://h:1?request_timeout=soon",
        ] {
            assert!(
                matches!(Config::from_url(bad), Err(Error::Config(_))),
                "{bad} accepted"
            );
        }
    }
}
