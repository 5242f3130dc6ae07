//! `kv-bench --layers`: prices the per-call work our `Store` adds on top of a raw client, one
//! layer at a time, for the ops that send the same request on both sides.
//!
//! Every variant shares ONE raw client (the same connection, the same fixture keys):
//!
//! * **raw**: the raw client's call, as in the main benchmark;
//! * **+timer**: the call inside `tokio::time::timeout` (every one of our calls is bounded by
//!   the backend's request timeout);
//! * **+wrapper**: also the rest of what every `Store` call does before the backend's own
//!   logic: the key check and normalisation (`kv_core::key::normalize_key`, an allocation),
//!   a `tracing` span around the call (no subscriber is installed, as in an application that
//!   does not ask for traces), and a boxed, dynamically dispatched future (`#[async_trait]`
//!   on `Arc<dyn Store>`);
//! * **ours**: the real call through `Store`.
//!
//! So `raw → +timer → +wrapper` is the cost of the shared layers, and `+wrapper → ours` the
//! cost of the backend's own code (its request options, its parsing of the answer into a
//! `KvPair`, the TTL check) plus any difference in what is sent.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::bench::{self, Op, Stats, Window};
use crate::target::{Cas, R, Target};

/// The timeout of the `+timer` layer: long enough never to fire, like a request timeout.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Which shared layers a [`Layered`] adds to its raw client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layers {
    /// The call inside `tokio::time::timeout`.
    Timer,
    /// Timer, key check, span and a boxed `dyn` future.
    Wrapper,
}

/// A raw client with some of our per-call layers around each call.
pub struct Layered<T> {
    inner: Arc<T>,
    layers: Layers,
}

impl<T: Target> Layered<T> {
    /// Wraps the shared raw client `inner`.
    pub fn new(inner: Arc<T>, layers: Layers) -> Self {
        Self { inner, layers }
    }

    /// The key the call uses: checked and normalised (a new `String`) with the wrapper.
    fn key<'a>(&self, key: &'a str) -> R<Cow<'a, str>> {
        match self.layers {
            Layers::Wrapper => kv_core::key::normalize_key(key)
                .map(Cow::Owned)
                .map_err(|e| e.to_string()),
            Layers::Timer => Ok(Cow::Borrowed(key)),
        }
    }

    async fn call<X: Send>(
        &self,
        op: &'static str,
        key: &str,
        call: impl Future<Output = R<X>> + Send,
    ) -> R<X> {
        match self.layers {
            Layers::Timer => timed(call).await,
            Layers::Wrapper => {
                let span = tracing::debug_span!("layered", op, key = %key);
                let boxed: Pin<Box<dyn Future<Output = R<X>> + Send + '_>> =
                    Box::pin(timed(call).instrument(span));
                boxed.await
            }
        }
    }
}

async fn timed<X>(call: impl Future<Output = R<X>>) -> R<X> {
    tokio::time::timeout(TIMEOUT, call)
        .await
        .map_err(|_| "timed out".to_owned())?
}

impl<T: Target> Target for Layered<T> {
    type Ver = T::Ver;

    async fn get(&self, key: &str) -> R<Option<T::Ver>> {
        let key = self.key(key)?;
        self.call("get", &key, self.inner.get(&key)).await
    }
    async fn put(&self, key: &str, value: Bytes) -> R<()> {
        let key = self.key(key)?;
        self.call("put", &key, self.inner.put(&key, value)).await
    }
    async fn exists(&self, key: &str) -> R<bool> {
        let key = self.key(key)?;
        self.call("exists", &key, self.inner.exists(&key)).await
    }
    async fn delete(&self, key: &str) -> R<bool> {
        let key = self.key(key)?;
        self.call("delete", &key, self.inner.delete(&key)).await
    }
    async fn cas(&self, key: &str, value: Bytes, prev: Option<&T::Ver>) -> R<Cas<T::Ver>> {
        let key = self.key(key)?;
        self.call("cas", &key, self.inner.cas(&key, value, prev))
            .await
    }
    async fn list(&self, dir: &str) -> R<usize> {
        self.inner.list(dir).await
    }
    async fn lock_cycle(&self, key: &str) -> R<()> {
        self.inner.lock_cycle(key).await
    }
    async fn txn(
        &self,
        a: &str,
        b: &str,
        prev: Option<(&T::Ver, &T::Ver)>,
        value: Bytes,
    ) -> R<Cas<(T::Ver, T::Ver)>> {
        self.inner.txn(a, b, prev, value).await
    }
    async fn watch(&self, key: &str) -> R<Option<mpsc::UnboundedReceiver<()>>> {
        self.inner.watch(key).await
    }
}

/// The ops `--layers` measures: one request on both sides, so the layers are the difference.
pub const OPS: [Op; 3] = [Op::Get, Op::Exists, Op::Put];

/// The variants, in the order of the report's columns.
pub const VARIANTS: [&str; 4] = ["raw", "+timer", "+wrapper", "ours"];

/// One window of every variant of `op` at `conc`, in a rotating order; ops/s per variant
/// in [`VARIANTS`] order.
pub async fn round<T: Target, O: Target>(
    raw: &Arc<T>,
    ours: &Arc<O>,
    op: Op,
    conc: usize,
    base: &str,
    window: &Window,
    rotation: usize,
) -> [Stats; 4] {
    let timer = Arc::new(Layered::new(raw.clone(), Layers::Timer));
    let wrapper = Arc::new(Layered::new(raw.clone(), Layers::Wrapper));
    let mut out: [Stats; 4] = Default::default();
    for k in 0..VARIANTS.len() {
        let which = (k + rotation) % VARIANTS.len();
        out[which] = match which {
            0 => bench::measure(raw, op, conc, base, window).await,
            1 => bench::measure(&timer, op, conc, base, window).await,
            2 => bench::measure(&wrapper, op, conc, base, window).await,
            _ => bench::measure(ours, op, conc, base, window).await,
        };
    }
    out
}
