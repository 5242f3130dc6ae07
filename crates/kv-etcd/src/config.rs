//! Connection settings: [`Config`], its [`ConfigBuilder`] and [`Config::from_url`].

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use kv_core::url::{decode_query_value, parse_duration, percent_decode};
use kv_core::{Error, Result};

/// The default client port of the endpoint used when none is given.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:2379";

/// How to reach and use an etcd cluster.
///
/// Build it with [`Config::builder`] or parse it with [`Config::from_url`]; every field has a
/// sensible default except the endpoints.
#[non_exhaustive]
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// Client URLs of the cluster members, `http://host:port` or `https://host:port` (a bare
    /// `host:port` gets `http://`, or `https://` when [`tls`](Self::tls) is set). Requests are
    /// balanced over them.
    pub endpoints: Vec<String>,
    /// A key prefix that isolates this store: with namespace `app` the key `a/b` is stored as
    /// `app/a/b`, and `list("")` covers only `app/…`. Normalised like a directory (no leading
    /// or trailing `/`); empty (the default) means the whole keyspace.
    pub namespace: String,
    /// How long [`EtcdStore::connect`](crate::EtcdStore::connect) waits for the cluster to
    /// answer (default 5 s).
    pub connect_timeout: Duration,
    /// The limit of every request (default 5 s): a request that takes longer is
    /// [`Error::Timeout`].
    pub request_timeout: Duration,
    /// User name and password for etcd's authentication (`None`: no authentication).
    pub credentials: Option<Credentials>,
    /// TLS settings (`None`: plain text).
    pub tls: Option<TlsConfig>,
    /// How many keys one range request of `list`, `watch_tree`'s initial read and friends
    /// fetches at most (default 1000); larger trees are read in several pages at one revision.
    pub page_size: u32,
    /// HTTP/2 keep-alive ping interval on the gRPC connection (default 10 s; the server rejects
    /// pings more often than every 5 s). Lets watches notice a dead server. `None` disables it.
    pub keep_alive: Option<Duration>,
    /// The largest gRPC response the client accepts (default 256 MiB): a range page or a watch
    /// response larger than this fails. Raise it with large values and large pages.
    pub max_response_bytes: usize,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("endpoints", &self.endpoints)
            .field("namespace", &self.namespace)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("credentials", &self.credentials)
            .field("tls", &self.tls)
            .field("page_size", &self.page_size)
            .field("keep_alive", &self.keep_alive)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            endpoints: vec![DEFAULT_ENDPOINT.to_owned()],
            namespace: String::new(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            credentials: None,
            tls: None,
            page_size: 1000,
            keep_alive: Some(Duration::from_secs(10)),
            max_response_bytes: 256 * 1024 * 1024,
        }
    }
}

/// etcd user name and password. `Debug` never shows the password.
#[non_exhaustive]
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The etcd user.
    pub username: String,
    /// Its password.
    pub password: String,
}

impl Credentials {
    /// A user name and password pair.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// PEM data, given inline or as a file read at connection time.
#[derive(Clone, PartialEq, Eq)]
pub enum Pem {
    /// A file holding PEM data.
    File(PathBuf),
    /// The PEM data itself.
    Inline(Vec<u8>),
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pem::File(path) => f.debug_tuple("File").field(path).finish(),
            Pem::Inline(data) => write!(f, "Inline(<{} bytes>)", data.len()),
        }
    }
}

impl Pem {
    /// Reads the data (off the async runtime's threads for files).
    pub(crate) async fn load(&self) -> Result<Vec<u8>> {
        match self {
            Pem::Inline(data) => Ok(data.clone()),
            Pem::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    std::fs::read(&path)
                        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))
                })
                .await
                .map_err(|e| Error::Config(format!("reading a PEM file failed: {e}")))?
            }
        }
    }
}

/// TLS settings. With TLS the endpoints use `https://`.
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// The CA certificate(s) the server's certificate must chain to. Required: the crate
    /// enables no system trust roots.
    pub ca_cert: Option<Pem>,
    /// A client certificate for mutual TLS (with [`client_key`](Self::client_key)).
    pub client_cert: Option<Pem>,
    /// The client certificate's private key.
    pub client_key: Option<Pem>,
    /// The name to verify the server certificate against, when it differs from the endpoint's
    /// host.
    pub domain_name: Option<String>,
}

impl TlsConfig {
    /// TLS verifying the server against `ca_cert`.
    pub fn with_ca(ca_cert: Pem) -> Self {
        TlsConfig {
            ca_cert: Some(ca_cert),
            ..TlsConfig::default()
        }
    }

    /// Adds a client certificate and key (mutual TLS).
    pub fn client_identity(mut self, cert: Pem, key: Pem) -> Self {
        self.client_cert = Some(cert);
        self.client_key = Some(key);
        self
    }

    /// Sets the name the server certificate is verified against.
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain_name = Some(name.into());
        self
    }
}

impl Config {
    /// A builder starting from the defaults, with no endpoint yet.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Config {
                endpoints: Vec::new(),
                ..Config::default()
            },
        }
    }

    /// Parses a URL:
    ///
    /// `etcd://[user[:password]@]host:port[,host:port…][/namespace][?option=value&…]`
    ///
    /// * schemes: `etcd` or `http` (plain text), `etcds` or `https` (TLS);
    /// * user and password are percent-decoded;
    /// * the path is the [namespace](Self::namespace);
    /// * options: `connect_timeout`, `request_timeout`, `keep_alive` (durations such as `500ms`,
    ///   `5s`, `2m`; `keep_alive=0` disables it), `page_size`, `max_response_bytes`, and for TLS
    ///   `ca_file`, `cert_file`, `key_file`, `domain` (a TLS option turns TLS on).
    ///
    /// ```
    /// let config = kv_etcd::Config::from_url("etcd://127.0.0.1:2379,127.0.0.2:2379/app?request_timeout=2s")?;
    /// assert_eq!(config.endpoints, ["http://127.0.0.1:2379", "http://127.0.0.2:2379"]);
    /// assert_eq!(config.namespace, "app");
    /// # Ok::<_, kv_core::Error>(())
    /// ```
    pub fn from_url(url: &str) -> Result<Config> {
        let bad = |why: &str| Error::Config(format!("bad etcd URL {:?}: {why}", redact(url)));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("missing `scheme://`"))?;
        let mut tls = match scheme.to_ascii_lowercase().as_str() {
            "etcd" | "http" => false,
            "etcds" | "https" => true,
            _ => return Err(bad("the scheme must be etcd, etcds, http or https")),
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let mut builder = Config::builder();
        if let Some(userinfo) = userinfo {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            builder = builder.credentials(
                percent_decode(user).map_err(|e| bad(&e))?,
                percent_decode(password).map_err(|e| bad(&e))?,
            );
        }
        let hosts: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
        if hosts.is_empty() {
            return Err(bad("no host"));
        }
        builder = builder.namespace(percent_decode(path).map_err(|e| bad(&e))?);
        let mut tls_config = TlsConfig::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode_query_value(value).map_err(|e| bad(&e))?;
            let duration = || parse_duration(&value).ok_or_else(|| bad(&format!("bad {name}")));
            match name {
                "connect_timeout" => builder = builder.connect_timeout(duration()?),
                "request_timeout" => builder = builder.request_timeout(duration()?),
                "keep_alive" => {
                    let d = duration()?;
                    builder = builder.keep_alive((!d.is_zero()).then_some(d));
                }
                "page_size" => {
                    builder = builder.page_size(value.parse().map_err(|_| bad("bad page_size"))?)
                }
                "max_response_bytes" => {
                    builder = builder.max_response_bytes(
                        value.parse().map_err(|_| bad("bad max_response_bytes"))?,
                    )
                }
                "ca_file" => {
                    tls = true;
                    tls_config.ca_cert = Some(Pem::File(value.into()));
                }
                "cert_file" => {
                    tls = true;
                    tls_config.client_cert = Some(Pem::File(value.into()));
                }
                "key_file" => {
                    tls = true;
                    tls_config.client_key = Some(Pem::File(value.into()));
                }
                "domain" => {
                    tls = true;
                    tls_config.domain_name = Some(value);
                }
                other => return Err(bad(&format!("unknown option `{other}`"))),
            }
        }
        let scheme = if tls { "https" } else { "http" };
        for host in hosts {
            builder = builder.endpoint(format!("{scheme}://{host}"));
        }
        if tls {
            builder = builder.tls(tls_config);
        }
        builder.build()
    }

    /// The prefix stored in front of every key: `""` or `"namespace/"`.
    pub(crate) fn key_prefix(&self) -> String {
        kv_core::key::child_prefix(&self.namespace)
    }

    /// Endpoints with a scheme, as etcd-client wants them.
    pub(crate) fn endpoint_urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() {
            "https://"
        } else {
            "http://"
        };
        self.endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else {
                    format!("{scheme}{e}")
                }
            })
            .collect()
    }
}

/// Builds a [`Config`]; see its fields for the meaning and defaults of each setting.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
}

impl ConfigBuilder {
    /// Adds an endpoint (`http://host:port`, `https://host:port` or `host:port`).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.config.endpoints.push(endpoint.into());
        self
    }

    /// Adds several endpoints.
    pub fn endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config
            .endpoints
            .extend(endpoints.into_iter().map(Into::into));
        self
    }

    /// Sets the key-prefix namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.config.namespace = namespace.into();
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

    /// Sets the user name and password.
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.config.credentials = Some(Credentials::new(username, password));
        self
    }

    /// Enables TLS with these settings.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.config.tls = Some(tls);
        self
    }

    /// Sets the page size of range reads.
    pub fn page_size(mut self, page_size: u32) -> Self {
        self.config.page_size = page_size;
        self
    }

    /// Sets (or disables with `None`) the HTTP/2 keep-alive interval.
    pub fn keep_alive(mut self, interval: Option<Duration>) -> Self {
        self.config.keep_alive = interval;
        self
    }

    /// Sets the largest accepted gRPC response.
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.config.max_response_bytes = bytes;
        self
    }

    /// Checks and returns the configuration.
    pub fn build(self) -> Result<Config> {
        let mut config = self.config;
        if config.endpoints.is_empty() {
            return Err(Error::Config("no etcd endpoint given".into()));
        }
        config.namespace = kv_core::key::normalize_directory(&config.namespace)
            .map_err(|e| Error::Config(format!("bad namespace: {e}")))?;
        if config.page_size == 0 {
            return Err(Error::Config("page_size must be at least 1".into()));
        }
        if config.request_timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(Error::Config("timeouts must be above zero".into()));
        }
        if let Some(tls) = &config.tls
            && tls.client_cert.is_some() != tls.client_key.is_some()
        {
            return Err(Error::Config(
                "a TLS client certificate needs its key, and a key its certificate".into(),
            ));
        }
        for endpoint in &config.endpoints {
            let plain = endpoint.starts_with("http://");
            if plain && config.tls.is_some() {
                return Err(Error::Config(format!(
                    "endpoint {endpoint} is http:// but TLS is configured"
                )));
            }
            if endpoint.contains("://") && !plain && !endpoint.starts_with("https://") {
                return Err(Error::Config(format!(
                    "endpoint {endpoint}: only http:// and https:// are understood"
                )));
            }
        }
        if config.tls.is_none() && config.endpoints.iter().any(|e| e.starts_with("https://")) {
            config.tls = Some(TlsConfig::default());
        }
        Ok(config)
    }
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(start), Some(at)) if at > start => {
            let userinfo = &url[start + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..start + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let c = Config::from_url("etcd://u%40x:p%3Aw@h1:1,h2:2/ns/sub/?request_timeout=250ms&connect_timeout=3&page_size=10&keep_alive=0").unwrap();
        assert_eq!(c.endpoints, ["http://h1:1", "http://h2:2"]);
        assert_eq!(c.namespace, "ns/sub");
        assert_eq!(c.key_prefix(), "ns/sub/");
        assert_eq!(c.request_timeout, Duration::from_millis(250));
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.page_size, 10);
        assert_eq!(c.keep_alive, None);
        let creds = c.credentials.unwrap();
        assert_eq!(
            (creds.username.as_str(), creds.password.as_str()),
            ("u@x", "p:w")
        );

        let c = Config::from_url("etcds://h:2379?ca_file=/ca.pem&domain=etcd.local").unwrap();
        assert_eq!(c.endpoints, ["https://h:2379"]);
        let tls = c.tls.unwrap();
        assert_eq!(tls.ca_cert, Some(Pem::File("/ca.pem".into())));
        assert_eq!(tls.domain_name.as_deref(), Some("etcd.local"));

        let c = Config::from_url("http://127.0.0.1:23790").unwrap();
        assert_eq!(c.namespace, "");
        assert_eq!(c.key_prefix(), "");
        assert!(c.tls.is_none());
    }

    #[test]
    fn rejects_bad_urls() {
        for url in [
            "127.0.0.1:2379",
            "redis://h:1",
            "etcd://",
            "etcd://h:1?nope=1",
            "etcd://h:1?request_timeout=fast",
            "etcd://h:1/a//b",
            "etcd://h:1/x/__kv",
        ] {
            assert!(
                matches!(Config::from_url(url), Err(Error::Config(_))),
                "{url}"
            );
        }
        let err = Config::from_url("ftp://user:secret@h").unwrap_err();
        assert!(!err.to_string().contains("secret"));
    }

    #[test]
    fn builder_checks() {
        assert!(Config::builder().build().is_err());
        assert!(
            Config::builder()
                .endpoint("http://h:1")
                .tls(TlsConfig::default())
                .build()
                .is_err()
        );
        let c = Config::builder().endpoint("https://h:1").build().unwrap();
        assert!(c.tls.is_some());
        let c = Config::builder()
            .endpoint("h:1")
            .tls(TlsConfig::with_ca(Pem::Inline(b"x".to_vec())))
            .build()
            .unwrap();
        assert_eq!(c.endpoint_urls(), ["https://h:1"]);
        assert!(format!("{:?}", Credentials::new("u", "secret")).contains("redacted"));
    }
}
