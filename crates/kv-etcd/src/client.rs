//! The shared, cheaply cloned connection state: gRPC clients, the namespace, the request
//! timeout, error mapping and key translation.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{GetOptions, KeyValue, KvClient, LeaseClient, WatchClient};
use kv_core::{Error, KvPair, Result};

use crate::clock::ServerClock;
use crate::lease;

/// The backend's name in errors and capabilities.
pub(crate) const BACKEND: &str = "etcd";

/// Everything a request needs; cloned into watch loops and lock renewals.
#[derive(Clone)]
pub(crate) struct Inner {
    pub(crate) kv: KvClient,
    pub(crate) watch: WatchClient,
    pub(crate) lease: LeaseClient,
    /// `""` or `"namespace/"`.
    pub(crate) prefix: Arc<str>,
    pub(crate) timeout: Duration,
    pub(crate) page_size: i64,
    /// The server's clock, which TTL deadlines are written and judged in.
    pub(crate) clock: Arc<ServerClock>,
}

impl Inner {
    /// Runs one request under the configured timeout and maps its error.
    pub(crate) async fn call<T, F>(&self, operation: &'static str, request: F) -> Result<T>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(result) => result.map_err(|e| map_error(e, operation, self.timeout)),
            Err(_) => Err(Error::Timeout {
                backend: BACKEND,
                operation,
                after: self.timeout,
            }),
        }
    }

    /// The key as stored on the server.
    pub(crate) fn full_key(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(self.prefix.as_bytes());
        full.extend_from_slice(key.as_bytes());
        full
    }

    /// The range `[start, end)` holding every key strictly below the normalised `directory`
    /// (`""`: the whole namespace).
    pub(crate) fn subtree_range(&self, directory: &str) -> (Vec<u8>, Vec<u8>) {
        let start = self.full_key(&kv_core::key::child_prefix(directory));
        if start.is_empty() {
            // No namespace and the root: every key ("\0" to "\0" means all keys in etcd).
            (vec![0], vec![0])
        } else {
            let end = prefix_end(&start);
            (start, end)
        }
    }

    /// Converts a stored key/value into a pair relative to the namespace; `None` for keys this
    /// store does not report (outside the namespace, not UTF-8, breaking the key rules or
    /// reserved `__kv` records written by other tools).
    pub(crate) fn to_pair(&self, kv: &KeyValue) -> Option<KvPair> {
        let key = self.to_key(kv.key())?;
        Some(KvPair {
            key,
            value: Bytes::copy_from_slice(kv.value()),
            last_index: kv.mod_revision() as u64,
        })
    }

    /// Splits stored key/values into the pairs readers see (as [`to_pair`](Self::to_pair)
    /// and not past the deadline of a TTL lease of this crate, see [`crate::lease`]) and the
    /// leases of the expired ones, which the caller revokes.
    pub(crate) fn visible(&self, kvs: &[KeyValue]) -> (Vec<KvPair>, Vec<i64>) {
        let mut expired = Vec::new();
        let pairs = kvs
            .iter()
            .filter(|kv| {
                let gone = lease::is_expired(&self.clock, kv.lease());
                if gone {
                    expired.push(kv.lease());
                }
                !gone
            })
            .filter_map(|kv| self.to_pair(kv))
            .collect();
        (pairs, expired)
    }

    /// The user key of a stored key, if it is one.
    pub(crate) fn to_key(&self, stored: &[u8]) -> Option<String> {
        let relative = stored.strip_prefix(self.prefix.as_bytes())?;
        let key = std::str::from_utf8(relative).ok()?;
        match kv_core::key::normalize_key(key) {
            Ok(normalized) if normalized == key => Some(normalized),
            _ => None,
        }
    }

    /// Reads a whole range in pages of `page_size`, every page at the revision of the first.
    /// Returns the key/values in ascending key order and that revision. With `keys_only` the
    /// values are left out (keys, revisions and leases are there).
    pub(crate) async fn range_all(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        consistent: bool,
        keys_only: bool,
        operation: &'static str,
    ) -> Result<(Vec<KeyValue>, i64)> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self
                .range_pages(start.clone(), end.clone(), consistent, keys_only, operation)
                .await
            {
                // A compaction between two pages removed the revision the listing is read
                // at: start again at the current one.
                Err(Error::Backend { source, .. })
                    if attempts < 3 && source.to_string().contains("compacted") =>
                {
                    tracing::debug!(%source, "a paginated read met a compaction, restarting");
                }
                other => return other,
            }
        }
    }

    async fn range_pages(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        consistent: bool,
        keys_only: bool,
        operation: &'static str,
    ) -> Result<(Vec<KeyValue>, i64)> {
        let mut out = Vec::new();
        let mut revision = 0;
        let mut from = start;
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(self.page_size);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            if !consistent {
                options = options.with_serializable();
            }
            if keys_only {
                options = options.with_keys_only();
            }
            let mut kv = self.kv.clone();
            let mut response = self
                .call(operation, kv.get(from.clone(), Some(options)))
                .await?;
            if revision == 0 {
                revision = header_revision(response.header());
            }
            let more = response.more();
            let kvs = response.take_kvs();
            match kvs.last() {
                Some(last) if more => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => {
                    out.extend(kvs);
                    return Ok((out, revision));
                }
            }
            out.extend(kvs);
        }
    }
}

/// The revision in a response header (0 if absent, which etcd never does).
pub(crate) fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map(|h| h.revision()).unwrap_or(0)
}

/// The smallest key above every key starting with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Maps a client-library error to the semantic error.
pub(crate) fn map_error(
    error: etcd_client::Error,
    operation: &'static str,
    after: Duration,
) -> Error {
    use etcd_client::Error as E;
    use tonic::Code;
    match error {
        E::GRpcStatus(status) => {
            let message = status.message().to_owned();
            match status.code() {
                Code::Unavailable | Code::Cancelled | Code::Aborted => {
                    Error::unavailable(BACKEND, status)
                }
                Code::DeadlineExceeded => Error::Timeout {
                    backend: BACKEND,
                    operation,
                    after,
                },
                Code::PermissionDenied | Code::Unauthenticated => Error::PermissionDenied {
                    backend: BACKEND,
                    message,
                },
                Code::InvalidArgument | Code::FailedPrecondition if is_auth_message(&message) => {
                    Error::PermissionDenied {
                        backend: BACKEND,
                        message,
                    }
                }
                Code::Unknown if is_transport_message(&message) => {
                    Error::unavailable(BACKEND, status)
                }
                _ => Error::backend(BACKEND, status),
            }
        }
        E::TransportError(e) => Error::unavailable(BACKEND, e),
        E::IoError(e) => Error::unavailable(BACKEND, e),
        E::InvalidUri(e) => Error::Config(format!("bad endpoint: {e}")),
        E::InvalidArgs(message) | E::EndpointError(message) => Error::Config(message),
        other => Error::backend(BACKEND, other),
    }
}

fn is_auth_message(message: &str) -> bool {
    [
        "authentication failed",
        "user name is empty",
        "invalid auth token",
        "permission denied",
        "user name not found",
        "invalid user ID or password",
    ]
    .iter()
    .any(|m| message.contains(m))
}

fn is_transport_message(message: &str) -> bool {
    ["transport", "connection", "broken pipe", "h2 protocol"]
        .iter()
        .any(|m| message.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
