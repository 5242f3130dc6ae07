//! Connection settings: [`Config`], its [`ConfigBuilder`], [`TlsConfig`] and
//! [`Config::from_url`].

use std::path::PathBuf;
use std::time::Duration;

use kv_core::url::{decode_query_value, parse_duration, percent_decode};
use kv_core::{Error, Result};

/// How to reach a Consul agent (or several, tried in order) and how to talk to it.
///
/// Build one with [`Config::builder`] or [`Config::from_url`]:
///
/// ```
/// use std::time::Duration;
/// use kv_consul::Config;
///
/// let config = Config::builder()
///     .endpoint("http://127.0.0.1:8500")
///     .namespace("myapp")
///     .token("6a1253d2-1785-4a7d-8a13-cbfa3b02ac4a")
///     .request_timeout(Duration::from_secs(5))
///     .build()
///     .unwrap();
/// assert_eq!(config.namespace, "myapp");
///
/// let same = Config::from_url("consul://127.0.0.1:8500/myapp?token=6a1253d2-1785-4a7d-8a13-cbfa3b02ac4a&timeout=5s").unwrap();
/// assert_eq!(same.endpoints, config.endpoints);
/// ```
#[non_exhaustive]
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// Base URLs of Consul agents' HTTP API (`http://host:port` or `https://host:port`). The
    /// first one is used until it refuses connections; then the next one is tried.
    pub endpoints: Vec<String>,
    /// ACL token sent as `X-Consul-Token` with every request (`None`: the agent's default
    /// token applies).
    pub token: Option<String>,
    /// Datacenter (`?dc=`); `None` means the agent's own.
    pub datacenter: Option<String>,
    /// Namespace: every key is stored under `<prefix>/`. Empty (the default) means keys are
    /// stored as they are, at the root of Consul's KV store.
    pub namespace: String,
    /// Time limit for establishing a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time limit for one request (a blocking query gets [`watch_wait`](Self::watch_wait) on
    /// top). Exceeding it is [`Error::Timeout`].
    pub request_timeout: Duration,
    /// How long one blocking query may wait on the server before it returns unchanged (the
    /// `wait=` parameter of watches and lock waits).
    pub watch_wait: Duration,
    /// The agent's `session_ttl_min`. `None` (the default): read from the agent at connect
    /// time (`/v1/agent/self`), falling back to Consul's default of 10 s when unreadable.
    pub session_ttl_min: Option<Duration>,
    /// TLS settings for `https://` endpoints.
    pub tls: TlsConfig,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("endpoints", &self.endpoints)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("datacenter", &self.datacenter)
            .field("namespace", &self.namespace)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("watch_wait", &self.watch_wait)
            .field("session_ttl_min", &self.session_ttl_min)
            .field("tls", &self.tls)
            .finish()
    }
}

/// TLS settings (used by `https://` endpoints).
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file with the CA certificate(s) to trust (in addition to the system's roots).
    pub ca_file: Option<PathBuf>,
    /// PEM file with the client certificate chain, for mutual TLS (`verify_incoming`).
    pub cert_file: Option<PathBuf>,
    /// PEM file with the client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate. For tests only.
    pub insecure_skip_verify: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            endpoints: vec!["http://127.0.0.1:8500".to_owned()],
            token: None,
            datacenter: None,
            namespace: String::new(),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            watch_wait: Duration::from_secs(10),
            session_ttl_min: None,
            tls: TlsConfig::default(),
        }
    }
}

impl Config {
    /// A builder starting from the defaults (`http://127.0.0.1:8500`, no token, no prefix,
    /// 3 s connect timeout, 10 s request timeout, 10 s blocking-query wait).
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Config {
                endpoints: Vec::new(),
                ..Config::default()
            },
        }
    }

    /// Parses a URL:
    /// `consul://host[:port][,host[:port]…][/prefix][?key=value&…]` (plain HTTP, port 8500 by
    /// default), `consul+https://…` (TLS, port 8501 by default), or `http://…` / `https://…`
    /// (the port as given).
    ///
    /// Query parameters: `token`, `dc`, `timeout` (request timeout), `connect_timeout`,
    /// `wait` (blocking-query wait), `session_ttl_min` (durations as `500ms`, `5s`, `1m`),
    /// `ca_file`, `cert_file`, `key_file`, `insecure_skip_verify=true`. Values are
    /// percent-decoded.
    pub fn from_url(url: &str) -> Result<Config> {
        let bad = |why: &str| Error::Config(format!("bad Consul URL {url:?}: {why}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = scheme.to_ascii_lowercase();
        let http_scheme = match scheme.as_str() {
            "consul" | "http" => "http",
            "consul+https" | "https" => "https",
            _ => {
                return Err(bad(
                    "the scheme must be consul, consul+https, http or https",
                ));
            }
        };
        // `consul://host` means Consul's default port (8500 for HTTP, 8501 for HTTPS).
        let default_port = scheme
            .starts_with("consul")
            .then_some(if http_scheme == "https" { 8501 } else { 8500 });
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        let mut builder = Config::builder();
        for host in authority.split(',') {
            if host.is_empty() {
                return Err(bad("empty host"));
            }
            let has_port = host
                .rsplit_once(':')
                .is_some_and(|(_, port)| !port.contains(']'));
            builder = match default_port {
                Some(port) if !has_port => {
                    builder.endpoint(format!("{http_scheme}://{host}:{port}"))
                }
                _ => builder.endpoint(format!("{http_scheme}://{host}")),
            };
        }
        let prefix = percent_decode(path).map_err(|e| bad(&e))?;
        builder = builder.namespace(prefix);
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode_query_value(value).map_err(|e| bad(&e))?;
            let duration = || {
                parse_duration(&value)
                    .ok_or_else(|| bad(&format!("bad duration {value:?} for {name}")))
            };
            builder = match name {
                "token" => builder.token(value),
                "dc" | "datacenter" => builder.datacenter(value),
                "timeout" | "request_timeout" => builder.request_timeout(duration()?),
                "connect_timeout" => builder.connect_timeout(duration()?),
                "wait" | "watch_wait" => builder.watch_wait(duration()?),
                "session_ttl_min" => builder.session_ttl_min(duration()?),
                "ca_file" => builder.ca_file(value),
                "cert_file" => {
                    let key = builder.config.tls.key_file.clone().unwrap_or_default();
                    builder.client_cert(value, key)
                }
                "key_file" => {
                    let cert = builder.config.tls.cert_file.clone().unwrap_or_default();
                    builder.client_cert(cert, value)
                }
                "insecure_skip_verify" => {
                    builder.insecure_skip_verify(matches!(value.as_str(), "true" | "1" | "yes"))
                }
                other => return Err(bad(&format!("unknown parameter {other:?}"))),
            };
        }
        builder.build()
    }
}

/// Builds a [`Config`]; every setter has the meaning of the field of the same name.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
}

impl ConfigBuilder {
    /// Adds an agent endpoint (`http://host:port` or `https://host:port`; a bare `host:port`
    /// means `http://`).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        let endpoint = endpoint.into();
        let endpoint = if endpoint.contains("://") {
            endpoint
        } else {
            format!("http://{endpoint}")
        };
        self.config
            .endpoints
            .push(endpoint.trim_end_matches('/').to_owned());
        self
    }

    /// Sets the ACL token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.config.token = Some(token.into());
        self
    }

    /// Sets the datacenter.
    pub fn datacenter(mut self, datacenter: impl Into<String>) -> Self {
        self.config.datacenter = Some(datacenter.into());
        self
    }

    /// Sets the key prefix (namespace); leading and trailing `/` are ignored.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.config.namespace = namespace.into();
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Sets the per-request timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// Sets the blocking-query wait.
    pub fn watch_wait(mut self, wait: Duration) -> Self {
        self.config.watch_wait = wait;
        self
    }

    /// Declares the agent's `session_ttl_min` instead of reading it at connect time.
    pub fn session_ttl_min(mut self, ttl: Duration) -> Self {
        self.config.session_ttl_min = Some(ttl);
        self
    }

    /// Trusts the CA certificate(s) in this PEM file.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.tls.ca_file = Some(path.into());
        self
    }

    /// Presents this client certificate and key (PEM files) for mutual TLS.
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        let (cert, key) = (cert.into(), key.into());
        self.config.tls.cert_file = (!cert.as_os_str().is_empty()).then_some(cert);
        self.config.tls.key_file = (!key.as_os_str().is_empty()).then_some(key);
        self
    }

    /// Accepts any server certificate (tests only).
    pub fn insecure_skip_verify(mut self, yes: bool) -> Self {
        self.config.tls.insecure_skip_verify = yes;
        self
    }

    /// Replaces the TLS settings.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.config.tls = tls;
        self
    }

    /// Checks and returns the configuration.
    pub fn build(mut self) -> Result<Config> {
        if self.config.endpoints.is_empty() {
            self.config.endpoints = Config::default().endpoints;
        }
        for endpoint in &self.config.endpoints {
            let ok = endpoint
                .split_once("://")
                .is_some_and(|(s, host)| matches!(s, "http" | "https") && !host.is_empty());
            if !ok {
                return Err(Error::Config(format!(
                    "bad Consul endpoint {endpoint:?}: expected http://host:port or https://host:port"
                )));
            }
        }
        let prefix = self.config.namespace.trim_matches('/').to_owned();
        if !prefix.is_empty() {
            kv_core::key::normalize_key(&prefix)
                .map_err(|e| Error::Config(format!("bad key prefix {prefix:?}: {e}")))?;
        }
        self.config.namespace = prefix;
        if self.config.tls.cert_file.is_some() != self.config.tls.key_file.is_some() {
            return Err(Error::Config(
                "a client certificate needs both cert_file and key_file".to_owned(),
            ));
        }
        if self.config.request_timeout.is_zero() || self.config.watch_wait < Duration::from_secs(1)
        {
            return Err(Error::Config(
                "request_timeout must be positive and watch_wait at least 1s".to_owned(),
            ));
        }
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let c = Config::from_url(
            "consul://a:1,b:2/my/app?token=t%2Bx&dc=dc2&timeout=2s&wait=3s&session_ttl_min=1s",
        )
        .unwrap();
        assert_eq!(c.endpoints, ["http://a:1", "http://b:2"]);
        assert_eq!(c.namespace, "my/app");
        assert_eq!(c.token.as_deref(), Some("t+x"));
        assert_eq!(c.datacenter.as_deref(), Some("dc2"));
        assert_eq!(c.request_timeout, Duration::from_secs(2));
        assert_eq!(c.watch_wait, Duration::from_secs(3));
        assert_eq!(c.session_ttl_min, Some(Duration::from_secs(1)));
        let c =
            Config::from_url("https://h:8501?ca_file=/x/ca.pem&cert_file=/c&key_file=/k").unwrap();
        assert_eq!(c.endpoints, ["https://h:8501"]);
        assert_eq!(c.tls.ca_file, Some(PathBuf::from("/x/ca.pem")));
        assert_eq!(c.tls.cert_file, Some(PathBuf::from("/c")));
        assert_eq!(c.tls.key_file, Some(PathBuf::from("/k")));
        let c = Config::from_url("consul://a,b:1,[::1],[::1]:2").unwrap();
        assert_eq!(
            c.endpoints,
            [
                "http://a:8500",
                "http://b:1",
                "http://[::1]:8500",
                "http://[::1]:2"
            ]
        );
        let c = Config::from_url("consul+https://a").unwrap();
        assert_eq!(c.endpoints, ["https://a:8501"]);
        assert!(Config::from_url("redis://x").is_err());
        assert!(Config::from_url("consul://x?bogus=1").is_err());
        assert!(Config::from_url("consul://x/a//b").is_err());
        assert!(Config::from_url("consul://x?cert_file=/c").is_err());
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m0s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn debug_redacts_the_token() {
        let c = Config::builder().token("secret").build().unwrap();
        assert!(!format!("{c:?}").contains("secret"));
    }
}
