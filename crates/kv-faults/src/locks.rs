//! Lock safety, seen by an independent witness: every client that believes it holds the lock
//! enters the witness when `lock()` returns and leaves it before it unlocks. The witness
//! records every entry and exit on one clock and in one order; [`Witness::check`] then proves
//! that no two holders were inside at once and that fencing tokens rose strictly in the order
//! the holders entered.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// One holding, as the witness saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    /// The client that held the lock.
    pub client: usize,
    /// The acquisition's fencing token.
    pub token: u64,
    /// When the holder entered (offset from the witness's start).
    pub entered: Duration,
    /// When it left (`None`: still inside).
    pub left: Option<Duration>,
}

#[derive(Debug, Default)]
struct State {
    inside: Option<usize>,
    holdings: Vec<Holding>,
    /// Entries made while another holder was inside: (newcomer, holder inside).
    overlaps: Vec<(usize, usize)>,
}

/// The witness. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Witness {
    start: Instant,
    state: Arc<Mutex<State>>,
}

impl Default for Witness {
    fn default() -> Self {
        Self::new()
    }
}

impl Witness {
    /// A witness with nobody inside.
    pub fn new() -> Self {
        Witness {
            start: Instant::now(),
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `client` got the lock with `token`. Records an overlap if someone is inside.
    pub fn enter(&self, client: usize, token: u64) {
        let now = self.start.elapsed();
        let mut state = self.state();
        if let Some(other) = state.inside {
            state.overlaps.push((client, other));
        }
        state.inside = Some(client);
        state.holdings.push(Holding {
            client,
            token,
            entered: now,
            left: None,
        });
    }

    /// `client` is about to release the lock (or has lost it).
    pub fn leave(&self, client: usize) {
        let now = self.start.elapsed();
        let mut state = self.state();
        if state.inside == Some(client) {
            state.inside = None;
        }
        if let Some(h) = state
            .holdings
            .iter_mut()
            .rev()
            .find(|h| h.client == client && h.left.is_none())
        {
            h.left = Some(now);
        }
    }

    /// Every holding so far, in entry order.
    pub fn holdings(&self) -> Vec<Holding> {
        self.state().holdings.clone()
    }

    /// `Ok(number of holdings)` when nobody overlapped and tokens rose strictly in entry
    /// order; otherwise a description of the first violation.
    pub fn check(&self) -> Result<usize, String> {
        let state = self.state();
        if let Some((newcomer, holder)) = state.overlaps.first() {
            return Err(format!(
                "client {newcomer} got the lock while client {holder} still held it ({} overlaps in all)",
                state.overlaps.len()
            ));
        }
        for pair in state.holdings.windows(2) {
            if pair[1].token <= pair[0].token {
                return Err(format!(
                    "fencing token {} (client {}, at {:?}) does not rise above {} (client {}, at {:?})",
                    pair[1].token,
                    pair[1].client,
                    pair[1].entered,
                    pair[0].token,
                    pair[0].client,
                    pair[0].entered
                ));
            }
        }
        Ok(state.holdings.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_holdings_with_rising_tokens_pass() {
        let w = Witness::new();
        w.enter(1, 10);
        w.leave(1);
        w.enter(2, 11);
        w.leave(2);
        assert_eq!(w.check(), Ok(2));
    }

    #[test]
    fn an_overlap_fails() {
        let w = Witness::new();
        w.enter(1, 10);
        w.enter(2, 11);
        assert!(w.check().unwrap_err().contains("still held"));
    }

    #[test]
    fn a_repeated_or_falling_token_fails() {
        let w = Witness::new();
        w.enter(1, 10);
        w.leave(1);
        w.enter(2, 10);
        w.leave(2);
        assert!(w.check().unwrap_err().contains("does not rise"));
    }
}
