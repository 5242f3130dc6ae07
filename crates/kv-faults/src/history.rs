//! Histories: what every client of a scenario invoked, when, and what came back.
//!
//! Times are offsets from the start of the scenario, taken on one monotonic clock (all clients
//! of a scenario run in one process, or report to it). Values written by a scenario are unique
//! strings, so a value identifies the write that produced it: a compare-and-swap "from value
//! `v`" is the same as "from the version `v`'s write created".

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// A register operation on one key, as invoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `get`: the outcome carries the value read (`None` = absent).
    Get,
    /// `put(value)`.
    Put(String),
    /// `delete`: the outcome carries whether the key existed.
    Delete,
    /// `atomic_put(new, previous)`: `expected` is the value of the pair passed as previous
    /// (`None` = create only).
    CasPut {
        /// The value the key must hold (`None`: the key must be absent).
        expected: Option<String>,
        /// The value written on success.
        new: String,
    },
    /// `atomic_delete(previous)` where `previous` holds `expected`.
    CasDelete {
        /// The value the key must hold.
        expected: String,
    },
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A `get` returned this value.
    Read(Option<String>),
    /// A `put`, or a successful CAS.
    Written,
    /// A `delete` returned this (`true`: the key existed).
    Deleted(bool),
    /// A CAS was refused: the key existed (create only), was absent, or held another value.
    Refused,
    /// No answer: cancelled, timed out, or failed in a way that does not say whether it took
    /// effect. It may have taken effect at any moment after its invocation, or never.
    Unknown,
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Which client (task or process) issued it.
    pub client: usize,
    /// What was invoked.
    pub call: Call,
    /// When it was invoked.
    pub invoked: Duration,
    /// When it completed (for [`Outcome::Unknown`]: when the client gave up).
    pub completed: Duration,
    /// What came back.
    pub outcome: Outcome,
}

/// A thread-safe recorder of one key's history. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Recorder {
    start: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
}

impl Recorder {
    /// An empty history starting now.
    pub fn new() -> Self {
        Recorder {
            start: Instant::now(),
            ops: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The offset of now from the start.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Records a completed operation invoked at `invoked`.
    pub fn record(&self, client: usize, call: Call, invoked: Duration, outcome: Outcome) {
        let completed = self.now();
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).push(Op {
            client,
            call,
            invoked,
            completed,
            outcome,
        });
    }

    /// Everything recorded so far.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}
