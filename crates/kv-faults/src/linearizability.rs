//! Per-key linearizability checking of recorded histories.
//!
//! [`check`] decides whether the operations of one key's [`Op`] history can be put in one total
//! order that respects real time (an operation that completed before another was invoked comes
//! first) and in which every outcome is what a single register would have answered: a
//! *linearization*.
//!
//! The register's state is `Option<String>`: absent, or the value of the last successful write.
//! Each operation takes effect at one instant between its invocation and its completion
//! (inclusive), and its outcome must match the register at that instant:
//!
//! | call | outcome | effect on state `s` |
//! |---|---|---|
//! | `Get` | `Read(s)` | none |
//! | `Put(v)` | `Written` | `s = Some(v)` |
//! | `Delete` | `Deleted(s.is_some())` | `s = None` |
//! | `CasPut { expected, new }` | `Written` if `s == expected`, else `Refused` | on success `s = Some(new)` |
//! | `CasDelete { expected }` | `Written` if `s == Some(expected)`, else `Refused` | on success `s = None` |
//!
//! An operation whose outcome is [`Outcome::Unknown`] may have taken effect at any single instant
//! after its invocation (even after the end of the history), or never; what it would have
//! returned is unconstrained, and it never has to precede anything.
//!
//! # Algorithm
//!
//! Wing & Gong's search with Lowe's memoisation (the "WGL" algorithm of Knossos and Porcupine):
//! the invocations and completions of the operations with a known outcome form one time-ordered
//! event list. The search repeatedly linearizes a pending operation invoked before the earliest
//! completion among the operations not yet linearized, removes it from the list, and backtracks
//! when no such operation fits the register. Configurations found hopeless (the set of linearized
//! operations as bitsets, plus the register state) are remembered and pruned.
//!
//! On top of that, reductions that never lose a linearization:
//!
//! * Operations with an unknown outcome never bound the search frontier (their completion is
//!   taken as +∞) and may be left out at the end. One is only ever linearized immediately before
//!   an operation that it enables (one that does not fit the register before it but does after
//!   it): any linearization can be rearranged into that form.
//! * A configuration is also hopeless if a hopeless one had linearized the same operations with a
//!   known outcome, left the same state, and used only some of its unknown-outcome operations.
//! * Values that no operation reads or compares against are indistinguishable, and are modelled
//!   as one; unknown-outcome writes of such values, like unknown-outcome deletes, are
//!   interchangeable, so only the earliest available one is ever tried.
//! * A read-only operation (a read, a refused compare-and-swap, a delete reporting an absent key)
//!   that fits the register now is linearized without considering alternatives: moving it to the
//!   front of any linearization keeps it valid.

use std::collections::{HashMap, HashSet};
use std::error::Error;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use crate::history::{Call, Op, Outcome};

/// The result of a completed linearizability check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the history has a linearization.
    pub linearizable: bool,
    /// How many operations the history had (all of them, including unknown outcomes).
    pub ops: usize,
    /// How many search steps the check took.
    pub explored: u64,
    /// When not linearizable: one sentence naming the operation the search could not get past
    /// (its index in the history, client, call, outcome and times) and why. `None` otherwise.
    pub explanation: Option<String>,
}

/// The check gave up: it took more search steps than its budget allowed, without deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inconclusive {
    /// How many search steps were taken before giving up.
    pub explored: u64,
}

impl fmt::Display for Inconclusive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "linearizability check inconclusive: search budget exhausted after {} steps",
            self.explored
        )
    }
}

impl Error for Inconclusive {}

/// Checks whether `ops`, the history of one key starting from the register state `initial`, is
/// linearizable.
///
/// The order of `ops` does not matter; explanations refer to operations by their index in it.
/// `budget` bounds the number of search steps; when it is exceeded the check stops with
/// [`Inconclusive`]. A malformed history (an operation with a known outcome that completed before
/// it was invoked, or an outcome its call can never produce, such as a `Get` answered `Written`)
/// is reported as not linearizable, with an explanation saying so.
pub fn check(initial: Option<String>, ops: &[Op], budget: u64) -> Result<Verdict, Inconclusive> {
    match Search::new(initial.as_deref(), ops) {
        Ok(mut search) => search.run(budget),
        Err(explanation) => Ok(Verdict {
            linearizable: false,
            ops: ops.len(),
            explored: 0,
            explanation: Some(explanation),
        }),
    }
}

/// The modelled register state "absent".
const ABSENT: usize = 0;
/// The modelled register state "some value no operation reads or compares against".
const ANON: usize = 1;
/// "No restriction" (see [`Frame`]).
const FREE: usize = usize::MAX;

/// What an operation does to the modelled register state, with its outcome folded in.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// A read that returned `seen`.
    Get { seen: usize },
    /// An unconditional write (`Written`, or unknown).
    Put { new: usize },
    /// A delete; `existed` is `None` when the outcome is unknown.
    Delete { existed: Option<bool> },
    /// A compare-and-swap to `new` (`ABSENT` for a compare-and-delete); `success` is `None`
    /// when the outcome is unknown.
    Cas {
        expected: usize,
        new: usize,
        success: Option<bool>,
    },
}

impl Step {
    /// Whether this step never changes the state (when it fits at all), whatever the state.
    fn read_only(self) -> bool {
        matches!(
            self,
            Step::Get { .. }
                | Step::Delete {
                    existed: Some(false)
                }
                | Step::Cas {
                    success: Some(false),
                    ..
                }
        )
    }

    /// The state after this step if it can take effect in state `s` with its outcome; for an
    /// unknown outcome, the state after it succeeds (`None` when it cannot succeed in `s`).
    fn apply(self, s: usize) -> Option<usize> {
        match self {
            Step::Get { seen } => (s == seen).then_some(s),
            Step::Put { new } => Some(new),
            Step::Delete { existed: None } => Some(ABSENT),
            Step::Delete {
                existed: Some(existed),
            } => ((s != ABSENT) == existed).then_some(ABSENT),
            Step::Cas {
                expected,
                new,
                success: None | Some(true),
            } => (s == expected).then_some(new),
            Step::Cas {
                expected,
                success: Some(false),
                ..
            } => (s != expected).then_some(s),
        }
    }
}

/// Sentinel nodes of the linked lists: operations with a known outcome (their invocations and
/// completions), then three lists of invocations of operations with an unknown outcome:
/// interchangeable writes of unobserved values, deletes, and all others.
const KNOWN: (usize, usize) = (0, 1);
const ANON_PUTS: (usize, usize) = (2, 3);
const DELETES: (usize, usize) = (4, 5);
const OTHERS: (usize, usize) = (6, 7);
/// The first node that is not a sentinel.
const FIRST_NODE: usize = 8;

/// Where the search resumes at its current depth. Candidates are tried in this order.
#[derive(Debug, Clone, Copy)]
enum Cursor {
    /// Nothing tried yet at this depth: look for a forced candidate.
    Fresh,
    /// At a node of the known list.
    Known(usize),
    /// At the earliest interchangeable unknown-outcome write of an unobserved value.
    AnonPut,
    /// At the earliest unknown-outcome delete.
    Delete,
    /// At a node of the list of other unknown-outcome operations.
    Other(usize),
}

/// One linearized operation on the search stack.
#[derive(Debug, Clone, Copy)]
struct Frame<'a> {
    /// Its index in the history.
    op: usize,
    /// The modelled register state before it.
    before: usize,
    /// The actual register value before it (for explanations).
    before_value: Option<&'a str>,
    /// A read-only operation (that fitted): no alternative to it needs exploring.
    forced: bool,
}

/// Register states that would enable some candidate (see [`Search::wanted`]).
#[derive(Debug, Default)]
struct Wanted {
    /// These states.
    states: Vec<usize>,
    /// Any state but absent.
    any_present: bool,
    /// Any state at all (different from the current one).
    anything: bool,
}

impl Wanted {
    /// Whether state `s` is wanted.
    fn contains(&self, s: usize) -> bool {
        self.anything || (self.any_present && s != ABSENT) || self.states.contains(&s)
    }
}

/// The furthest point the search reached (in operations with a known outcome linearized).
#[derive(Debug, Clone)]
struct Deepest<'a> {
    /// How many operations with a known outcome were linearized.
    depth: usize,
    /// The operation that bounded the frontier there (and could not be linearized).
    stuck: usize,
    /// The operation linearized last before getting there.
    last: Option<usize>,
    /// Distinct register values seen there with the same stuck operation (a few).
    values: Vec<Option<&'a str>>,
}

/// The state of one check.
struct Search<'a> {
    ops: &'a [Op],
    /// Per operation: its step, or `None` for one that cannot affect anything (an unknown read).
    steps: Vec<Option<Step>>,
    /// Per operation: its rank among the operations with an unknown outcome, if it has one.
    unknown_rank: Vec<Option<usize>>,
    /// How many operations with an unknown outcome there are.
    unknown_total: usize,
    /// How many operations with a known outcome there are.
    known_total: usize,
    /// Per modelled state: whether some operation writes it.
    written: Vec<bool>,
    /// The modelled initial state.
    initial: usize,
    initial_value: Option<&'a str>,
    /// Doubly linked lists (dancing links) over nodes, each in time order (see [`KNOWN`]).
    next: Vec<usize>,
    prev: Vec<usize>,
    node_op: Vec<usize>,
    node_is_call: Vec<bool>,
    call_node: Vec<usize>,
    ret_node: Vec<usize>,
}

impl<'a> Search<'a> {
    /// Prepares the search, or explains why the history is malformed.
    fn new(initial_value: Option<&'a str>, ops: &'a [Op]) -> Result<Self, String> {
        // Values some operation reads or compares against get states of their own; all others
        // are indistinguishable and share `ANON`.
        let mut observed: HashSet<&'a str> = HashSet::new();
        for op in ops {
            match (&op.call, &op.outcome) {
                (Call::Get, Outcome::Read(Some(v)))
                | (
                    Call::CasPut {
                        expected: Some(v), ..
                    },
                    _,
                )
                | (Call::CasDelete { expected: v }, _) => {
                    observed.insert(v);
                }
                _ => {}
            }
        }
        let mut ids: HashMap<&'a str, usize> = HashMap::new();
        let mut model = |v: Option<&'a str>| -> usize {
            match v {
                None => ABSENT,
                Some(v) if !observed.contains(v) => ANON,
                Some(v) => {
                    let next = ids.len() + 2;
                    *ids.entry(v).or_insert(next)
                }
            }
        };
        let initial = model(initial_value);
        let mut steps = Vec::with_capacity(ops.len());
        let mut unknown_rank = Vec::with_capacity(ops.len());
        let mut unknown_total = 0;
        let mut writes = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let is_unknown = op.outcome == Outcome::Unknown;
            if !is_unknown && op.completed < op.invoked {
                return Err(format!(
                    "the history is malformed: op #{i} ({}) completed at {:?}, before it was \
                     invoked at {:?}, so no instant of its interval can be chosen",
                    describe_op(op),
                    op.completed,
                    op.invoked
                ));
            }
            let cas_success = match op.outcome {
                Outcome::Written => Some(true),
                Outcome::Refused => Some(false),
                _ => None,
            };
            let step = match (&op.call, &op.outcome) {
                (Call::Get, Outcome::Unknown) => None,
                (Call::Get, Outcome::Read(v)) => Some(Step::Get {
                    seen: model(v.as_deref()),
                }),
                (Call::Put(v), Outcome::Written | Outcome::Unknown) => {
                    let new = model(Some(v));
                    writes.push(new);
                    Some(Step::Put { new })
                }
                (Call::Delete, Outcome::Deleted(existed)) => Some(Step::Delete {
                    existed: Some(*existed),
                }),
                (Call::Delete, Outcome::Unknown) => Some(Step::Delete { existed: None }),
                (
                    Call::CasPut { expected, new },
                    Outcome::Written | Outcome::Refused | Outcome::Unknown,
                ) => {
                    let new = model(Some(new));
                    writes.push(new);
                    Some(Step::Cas {
                        expected: model(expected.as_deref()),
                        new,
                        success: cas_success,
                    })
                }
                (
                    Call::CasDelete { expected },
                    Outcome::Written | Outcome::Refused | Outcome::Unknown,
                ) => Some(Step::Cas {
                    expected: model(Some(expected)),
                    new: ABSENT,
                    success: cas_success,
                }),
                _ => {
                    return Err(format!(
                        "the history is malformed: op #{i} ({}) has an outcome its call can never \
                         produce",
                        describe_op(op)
                    ));
                }
            };
            steps.push(step);
            unknown_rank.push(is_unknown.then(|| {
                unknown_total += 1;
                unknown_total - 1
            }));
        }
        let mut written = vec![false; ids.len() + 2];
        for w in writes {
            if let Some(slot) = written.get_mut(w) {
                *slot = true;
            }
        }

        // Invocations sort before completions at equal times: intervals are inclusive, so
        // they overlap.
        let mut known: Vec<(Duration, bool, usize)> = Vec::new();
        let mut unknown: [Vec<(Duration, usize)>; 3] = Default::default();
        for (i, op) in ops.iter().enumerate() {
            match (steps[i], unknown_rank[i].is_some()) {
                (None, _) => {}
                (Some(_), false) => {
                    known.push((op.invoked, false, i));
                    known.push((op.completed, true, i));
                }
                (Some(Step::Put { new: ANON }), true) => unknown[0].push((op.invoked, i)),
                (Some(Step::Delete { .. }), true) => unknown[1].push((op.invoked, i)),
                (Some(_), true) => unknown[2].push((op.invoked, i)),
            }
        }
        known.sort_unstable();
        for list in &mut unknown {
            list.sort_unstable();
        }

        let nodes = FIRST_NODE + known.len() + unknown.iter().map(Vec::len).sum::<usize>();
        let mut search = Search {
            ops,
            steps,
            unknown_rank,
            unknown_total,
            known_total: known.len() / 2,
            written,
            initial,
            initial_value,
            next: vec![0; nodes],
            prev: vec![0; nodes],
            node_op: vec![0; nodes],
            node_is_call: vec![false; nodes],
            call_node: vec![0; ops.len()],
            ret_node: vec![0; ops.len()],
        };
        let mut node = FIRST_NODE;
        let lists = [
            (
                KNOWN,
                known
                    .iter()
                    .map(|&(_, ret, op)| (op, !ret))
                    .collect::<Vec<_>>(),
            ),
            (
                ANON_PUTS,
                unknown[0].iter().map(|&(_, op)| (op, true)).collect(),
            ),
            (
                DELETES,
                unknown[1].iter().map(|&(_, op)| (op, true)).collect(),
            ),
            (
                OTHERS,
                unknown[2].iter().map(|&(_, op)| (op, true)).collect(),
            ),
        ];
        for ((head, tail), events) in lists {
            let mut last = head;
            for (op, is_call) in events {
                search.node_op[node] = op;
                search.node_is_call[node] = is_call;
                if is_call {
                    search.call_node[op] = node;
                } else {
                    search.ret_node[op] = node;
                }
                search.next[last] = node;
                search.prev[node] = last;
                last = node;
                node += 1;
            }
            search.next[last] = tail;
            search.prev[tail] = last;
            search.next[tail] = tail;
            search.prev[head] = head;
        }
        Ok(search)
    }

    /// Whether operation `op` has an unknown outcome.
    fn is_unknown(&self, op: usize) -> bool {
        self.unknown_rank[op].is_some()
    }

    /// Removes a linearized operation from the lists.
    fn lift(&mut self, op: usize) {
        self.unlink(self.call_node[op]);
        if !self.is_unknown(op) {
            self.unlink(self.ret_node[op]);
        }
    }

    /// Puts an operation back into the lists (undoing the last [`Self::lift`]).
    fn unlift(&mut self, op: usize) {
        if !self.is_unknown(op) {
            self.relink(self.ret_node[op]);
        }
        self.relink(self.call_node[op]);
    }

    /// Unlinks `node` from its list.
    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    /// Links `node` back where it was.
    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        self.prev[n] = node;
    }

    /// The first completion node of the known list (`KNOWN.1` when it is empty).
    fn first_return(&self) -> usize {
        let mut node = self.next[KNOWN.0];
        while node != KNOWN.1 && self.node_is_call[node] {
            node = self.next[node];
        }
        node
    }

    /// The earliest completion among operations with a known outcome not yet linearized.
    fn frontier(&self) -> Duration {
        match self.first_return() {
            node if node == KNOWN.1 => Duration::MAX,
            node => self.ops[self.node_op[node]].completed,
        }
    }

    /// The register value after `op` takes effect (with its outcome, or succeeding if unknown)
    /// on `before`.
    fn value_after(&self, op: usize, before: Option<&'a str>) -> Option<&'a str> {
        let Some(o) = self.ops.get(op) else {
            return before;
        };
        match (&o.call, &o.outcome) {
            (Call::Put(v), _) => Some(v),
            (Call::CasPut { new, .. }, Outcome::Written | Outcome::Unknown) => Some(new),
            (Call::Delete, _) | (Call::CasDelete { .. }, Outcome::Written | Outcome::Unknown) => {
                None
            }
            _ => before,
        }
    }

    /// Runs the search.
    fn run(&mut self, budget: u64) -> Result<Verdict, Inconclusive> {
        let mut set = Linearized::new(self.ops.len(), self.unknown_total);
        let mut failed = Failures::default();
        let mut stack: Vec<Frame<'a>> = Vec::new();
        let mut state = self.initial;
        let mut value = self.initial_value;
        let mut remaining = self.known_total;
        let mut explored = 0u64;
        let mut deepest = Deepest {
            depth: 0,
            stuck: self.node_op.get(self.first_return()).copied().unwrap_or(0),
            last: None,
            values: vec![value],
        };
        let mut cursor = Cursor::Fresh;
        // While trying unknown-outcome operations: the frontier bounding which are candidates,
        // and the states that would enable some candidate.
        let mut frontier = Duration::ZERO;
        let mut wanted = Wanted::default();

        loop {
            if remaining == 0 {
                return Ok(Verdict {
                    linearizable: true,
                    ops: self.ops.len(),
                    explored,
                    explanation: None,
                });
            }
            explored += 1;
            if explored > budget {
                return Err(Inconclusive { explored });
            }

            // Right after an unknown-outcome operation, only what it enables may follow.
            let restriction = match stack.last() {
                Some(top) if self.is_unknown(top.op) => top.before,
                _ => FREE,
            };
            let allowed = |step: Step| restriction == FREE || step.apply(restriction).is_none();
            // An unknown-outcome candidate must change the state into a wanted one.
            let useful = |step: Step, wanted: &Wanted| {
                allowed(step)
                    && step
                        .apply(state)
                        .is_some_and(|after| after != state && wanted.contains(after))
            };
            let in_time = |node: usize, tail: usize, frontier: Duration| {
                node != tail && self.ops[self.node_op[node]].invoked <= frontier
            };

            // The next candidate, and where to resume after it.
            let candidate = loop {
                match cursor {
                    Cursor::Fresh => {
                        // A read-only known operation that fits can go first without loss, so
                        // nothing else needs trying here.
                        let mut node = self.next[KNOWN.0];
                        while node != KNOWN.1 && self.node_is_call[node] {
                            if let Some(step) = self.steps[self.node_op[node]]
                                && step.read_only()
                                && allowed(step)
                                && step.apply(state).is_some()
                            {
                                break;
                            }
                            node = self.next[node];
                        }
                        if node != KNOWN.1 && self.node_is_call[node] {
                            break Some((self.node_op[node], Cursor::Known(self.next[node])));
                        }
                        cursor = Cursor::Known(self.next[KNOWN.0]);
                    }
                    Cursor::Known(node) if node != KNOWN.1 && self.node_is_call[node] => {
                        break Some((self.node_op[node], Cursor::Known(self.next[node])));
                    }
                    Cursor::Known(_) => {
                        frontier = self.frontier();
                        self.wanted(state, frontier, &mut wanted);
                        cursor = Cursor::AnonPut;
                    }
                    Cursor::AnonPut => {
                        cursor = Cursor::Delete;
                        let node = self.next[ANON_PUTS.0];
                        if in_time(node, ANON_PUTS.1, frontier)
                            && self.steps[self.node_op[node]].is_some_and(|s| useful(s, &wanted))
                        {
                            break Some((self.node_op[node], Cursor::Delete));
                        }
                    }
                    Cursor::Delete => {
                        let after = Cursor::Other(self.next[OTHERS.0]);
                        cursor = after;
                        let node = self.next[DELETES.0];
                        if in_time(node, DELETES.1, frontier)
                            && self.steps[self.node_op[node]].is_some_and(|s| useful(s, &wanted))
                        {
                            break Some((self.node_op[node], after));
                        }
                    }
                    Cursor::Other(node) => {
                        if !in_time(node, OTHERS.1, frontier) {
                            break None;
                        }
                        cursor = Cursor::Other(self.next[node]);
                        if self.steps[self.node_op[node]].is_some_and(|s| useful(s, &wanted)) {
                            break Some((self.node_op[node], cursor));
                        }
                    }
                }
            };

            let mut dead_end = candidate.is_none();
            if let Some((op, after)) = candidate {
                cursor = after;
                let is_unknown = self.is_unknown(op);
                let applied = self.steps[op]
                    .filter(|&s| allowed(s))
                    .and_then(|s| s.apply(state));
                match applied {
                    Some(new_state) if !(is_unknown && new_state == state) => {
                        let forced = self.steps[op].is_some_and(Step::read_only);
                        let new_restriction = if is_unknown { state } else { FREE };
                        set.toggle(op, self.unknown_rank[op]);
                        if failed.dominates(&set, new_state, new_restriction) {
                            set.toggle(op, self.unknown_rank[op]);
                            // A forced step leads to the only continuation worth exploring.
                            dead_end = forced;
                        } else {
                            stack.push(Frame {
                                op,
                                before: state,
                                before_value: value,
                                forced,
                            });
                            state = new_state;
                            value = self.value_after(op, value);
                            self.lift(op);
                            if !is_unknown {
                                remaining -= 1;
                            }
                            self.note_depth(&mut deepest, op, remaining, value);
                            cursor = Cursor::Fresh;
                        }
                    }
                    _ => {}
                }
            }

            if dead_end {
                // Backtrack: undo the last linearized operation and try the next candidate after
                // it; a forced one has no alternatives, so keep undoing.
                loop {
                    let Some(frame) = stack.pop() else {
                        return Ok(Verdict {
                            linearizable: false,
                            ops: self.ops.len(),
                            explored,
                            explanation: Some(self.explain(&deepest)),
                        });
                    };
                    explored += 1;
                    let is_unknown = self.is_unknown(frame.op);
                    failed.insert(&set, state, if is_unknown { frame.before } else { FREE });
                    self.unlift(frame.op);
                    set.toggle(frame.op, self.unknown_rank[frame.op]);
                    state = frame.before;
                    value = frame.before_value;
                    if !is_unknown {
                        remaining += 1;
                    }
                    if frame.forced {
                        continue;
                    }
                    let node = self.call_node[frame.op];
                    if !is_unknown {
                        cursor = Cursor::Known(self.next[node]);
                    } else {
                        frontier = self.frontier();
                        self.wanted(state, frontier, &mut wanted);
                        cursor = match self.steps[frame.op] {
                            Some(Step::Put { new: ANON }) => Cursor::Delete,
                            Some(Step::Delete { .. }) => Cursor::Other(self.next[OTHERS.0]),
                            _ => Cursor::Other(self.next[node]),
                        };
                    }
                    break;
                }
                if explored > budget {
                    return Err(Inconclusive { explored });
                }
            }
        }
    }

    /// Collects into `wanted` the states in which some candidate that does not fit `state`
    /// would fit: what an unknown-outcome operation linearized now must produce to be of use.
    fn wanted(&self, state: usize, frontier: Duration, wanted: &mut Wanted) {
        wanted.states.clear();
        wanted.any_present = false;
        wanted.anything = false;
        let mut node = self.next[KNOWN.0];
        while node != KNOWN.1 && self.node_is_call[node] {
            if let Some(step) = self.steps[self.node_op[node]]
                && step.apply(state).is_none()
            {
                match step {
                    Step::Get { seen } => wanted.states.push(seen),
                    Step::Put { .. } | Step::Delete { existed: None } => {}
                    Step::Delete {
                        existed: Some(true),
                    } => wanted.any_present = true,
                    Step::Delete {
                        existed: Some(false),
                    } => wanted.states.push(ABSENT),
                    Step::Cas {
                        expected,
                        success: None | Some(true),
                        ..
                    } => wanted.states.push(expected),
                    Step::Cas {
                        success: Some(false),
                        ..
                    } => wanted.anything = true,
                }
            }
            node = self.next[node];
        }
        // Only a compare-and-swap can be enabled among unknown-outcome operations.
        let mut node = self.next[OTHERS.0];
        while node != OTHERS.1 && self.ops[self.node_op[node]].invoked <= frontier {
            if let Some(Step::Cas { expected, .. }) = self.steps[self.node_op[node]]
                && expected != state
            {
                wanted.states.push(expected);
            }
            node = self.next[node];
        }
    }

    /// Records how far the search got after linearizing `op`.
    fn note_depth(
        &self,
        deepest: &mut Deepest<'a>,
        op: usize,
        remaining: usize,
        value: Option<&'a str>,
    ) {
        if remaining == 0 {
            return;
        }
        let depth = self.known_total - remaining;
        if depth > deepest.depth {
            *deepest = Deepest {
                depth,
                stuck: self.node_op[self.first_return()],
                last: Some(op),
                values: vec![value],
            };
        } else if depth == deepest.depth
            && deepest.values.len() < 4
            && !deepest.values.contains(&value)
            && self.node_op[self.first_return()] == deepest.stuck
        {
            deepest.values.push(value);
        }
    }

    /// A one-sentence explanation of why the search failed, at its furthest point.
    fn explain(&self, deepest: &Deepest<'a>) -> String {
        let Some(op) = self.ops.get(deepest.stuck) else {
            return "the history is not linearizable".to_string();
        };
        let mut text = format!(
            "op #{} ({}, invoked at {:?}, completed at {:?}) cannot be linearized: at best {} of \
             the {} operations with a known outcome can be ordered before it",
            deepest.stuck,
            describe_op(op),
            op.invoked,
            op.completed,
            deepest.depth,
            self.known_total
        );
        if let Some((i, last)) = deepest.last.and_then(|i| self.ops.get(i).map(|op| (i, op))) {
            text.push_str(&format!(
                " (the last being op #{i} ({}))",
                describe_op(last)
            ));
        }
        let values: Vec<String> = deepest.values.iter().map(|&v| describe_value(v)).collect();
        text.push_str(&format!(
            ", and the register then holds {}, which contradicts its outcome",
            values.join(" or ")
        ));
        if let (Some(Step::Get { seen }), Outcome::Read(Some(v))) = (
            self.steps.get(deepest.stuck).copied().flatten(),
            &op.outcome,
        ) && seen != self.initial
            && !self.written.get(seen).copied().unwrap_or(false)
        {
            text.push_str(&format!(
                " (no operation of the history ever writes {})",
                describe_value(Some(v))
            ));
        }
        text
    }
}

/// A register value, for humans.
fn describe_value(value: Option<&str>) -> String {
    match value {
        Some(v) => format!("{v:?}"),
        None => "nothing (the key is absent)".to_string(),
    }
}

/// An operation's client, call and outcome, for humans.
fn describe_op(op: &Op) -> String {
    format!("client {}: {:?} → {:?}", op.client, op.call, op.outcome)
}

/// SplitMix64's finaliser: a cheap, well-distributed 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A fast hasher for keys made of integers.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = mix(self.0 ^ n);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// A hash map keyed by integers, with [`PreHashed`].
type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<PreHashed>>;

/// A stored bitset.
type Bits = Box<[u64]>;

/// A set of linearized operations: those with a known outcome by index in the history, those
/// with an unknown outcome by rank among them, and a hash of the former.
#[derive(Debug)]
struct Linearized {
    known: Vec<u64>,
    unknown: Vec<u64>,
    hash: u64,
}

impl Linearized {
    /// The empty set, for `ops` operations of which `unknown` have an unknown outcome.
    fn new(ops: usize, unknown: usize) -> Self {
        Linearized {
            known: vec![0; ops.div_ceil(64)],
            unknown: vec![0; unknown.div_ceil(64)],
            hash: 0,
        }
    }

    /// Adds or removes operation `op`; `unknown_rank` is its rank if its outcome is unknown.
    fn toggle(&mut self, op: usize, unknown_rank: Option<usize>) {
        let (bits, i) = match unknown_rank {
            Some(rank) => (&mut self.unknown, rank),
            None => {
                self.hash ^= mix(op as u64);
                (&mut self.known, op)
            }
        };
        if let Some(word) = bits.get_mut(i / 64) {
            *word ^= 1 << (i % 64);
        }
    }
}

/// The configurations the search fully explored without success.
///
/// A configuration is hopeless if a failed one has the same known-outcome set, state and
/// restriction (or none), and linearized a subset of its unknown-outcome operations: the failed
/// one had every option this one has, and more.
#[derive(Debug, Default)]
struct Failures {
    /// Distinct known-outcome sets of failed configurations, by their hash, with an id each.
    known_sets: FastMap<u64, Vec<(Bits, usize)>>,
    /// Per (known-outcome set id, state, restriction): the unknown-outcome sets that failed.
    failed: FastMap<(usize, usize, usize), Vec<Bits>>,
}

impl Failures {
    /// The id of a known-outcome set, if a failed configuration had it.
    fn known_id(&self, set: &Linearized) -> Option<usize> {
        self.known_sets.get(&set.hash).and_then(|bucket| {
            bucket
                .iter()
                .find(|(known, _)| **known == *set.known)
                .map(|&(_, id)| id)
        })
    }

    /// Remembers a configuration as failed.
    fn insert(&mut self, set: &Linearized, state: usize, restriction: usize) {
        let id = match self.known_id(set) {
            Some(id) => id,
            None => {
                let id = self.known_sets.len();
                self.known_sets
                    .entry(set.hash)
                    .or_default()
                    .push((set.known.as_slice().into(), id));
                id
            }
        };
        self.failed
            .entry((id, state, restriction))
            .or_default()
            .push(set.unknown.as_slice().into());
    }

    /// Whether a failed configuration makes this one hopeless.
    fn dominates(&self, set: &Linearized, state: usize, restriction: usize) -> bool {
        let Some(id) = self.known_id(set) else {
            return false;
        };
        let matches = |r: usize| {
            self.failed.get(&(id, state, r)).is_some_and(|sets| {
                sets.iter().any(|failed| {
                    failed
                        .iter()
                        .zip(&set.unknown)
                        .all(|(&failed, &now)| failed & !now == 0)
                })
            })
        };
        matches(restriction) || (restriction != FREE && matches(FREE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const BUDGET: u64 = 10_000_000;

    fn ms(t: u64) -> Duration {
        Duration::from_millis(t)
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    fn op(client: usize, call: Call, invoked: u64, completed: u64, outcome: Outcome) -> Op {
        Op {
            client,
            call,
            invoked: ms(invoked),
            completed: ms(completed),
            outcome,
        }
    }

    fn get(c: usize, a: u64, b: u64, v: Option<&str>) -> Op {
        op(c, Call::Get, a, b, Outcome::Read(v.map(str::to_string)))
    }

    fn put(c: usize, a: u64, b: u64, v: &str) -> Op {
        op(c, Call::Put(v.to_string()), a, b, Outcome::Written)
    }

    fn put_unknown(c: usize, a: u64, b: u64, v: &str) -> Op {
        op(c, Call::Put(v.to_string()), a, b, Outcome::Unknown)
    }

    fn del(c: usize, a: u64, b: u64, existed: bool) -> Op {
        op(c, Call::Delete, a, b, Outcome::Deleted(existed))
    }

    fn cas_put(
        c: usize,
        a: u64,
        b: u64,
        expected: Option<&str>,
        new: &str,
        outcome: Outcome,
    ) -> Op {
        op(
            c,
            Call::CasPut {
                expected: expected.map(str::to_string),
                new: new.to_string(),
            },
            a,
            b,
            outcome,
        )
    }

    fn cas_del(c: usize, a: u64, b: u64, expected: &str, outcome: Outcome) -> Op {
        op(
            c,
            Call::CasDelete {
                expected: expected.to_string(),
            },
            a,
            b,
            outcome,
        )
    }

    fn verdict(ops: &[Op]) -> Verdict {
        verdict_from(None, ops)
    }

    fn verdict_from(initial: Option<String>, ops: &[Op]) -> Verdict {
        match check(initial, ops, BUDGET) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    fn assert_ok(ops: &[Op]) {
        let v = verdict(ops);
        assert!(v.linearizable, "expected linearizable: {:?}", v.explanation);
        assert_eq!(v.explanation, None);
        assert_eq!(v.ops, ops.len());
    }

    /// Asserts the history is not linearizable and returns the explanation.
    fn assert_fails(ops: &[Op]) -> String {
        let v = verdict(ops);
        assert!(!v.linearizable, "expected a violation");
        assert_eq!(v.ops, ops.len());
        let e = v.explanation.expect("an explanation");
        assert!(!e.is_empty());
        e
    }

    // ----- basics -------------------------------------------------------------------------

    #[test]
    fn empty_history_is_linearizable() {
        let v = verdict(&[]);
        assert!(v.linearizable);
        assert_eq!(v.ops, 0);
        assert_eq!(v.explanation, None);
        assert!(check(None, &[], 0).is_ok_and(|v| v.linearizable));
    }

    #[test]
    fn sequential_history_passes() {
        assert_ok(&[
            get(0, 0, 1, None),
            put(0, 2, 3, "a"),
            get(1, 4, 5, Some("a")),
            put(1, 6, 7, "b"),
            get(0, 8, 9, Some("b")),
            del(0, 10, 11, true),
            get(1, 12, 13, None),
            del(1, 14, 15, false),
            cas_put(0, 16, 17, None, "c", Outcome::Written),
            cas_put(1, 18, 19, Some("c"), "d", Outcome::Written),
            cas_put(0, 20, 21, Some("c"), "e", Outcome::Refused),
            cas_del(1, 22, 23, "c", Outcome::Refused),
            cas_del(1, 24, 25, "d", Outcome::Written),
            get(0, 26, 27, None),
        ]);
    }

    #[test]
    fn order_of_the_slice_does_not_matter() {
        let mut ops = vec![
            put(0, 0, 1, "a"),
            get(1, 2, 3, Some("a")),
            put(0, 4, 5, "b"),
            get(1, 6, 7, Some("b")),
        ];
        ops.reverse();
        assert_ok(&ops);
    }

    #[test]
    fn initial_state_is_honoured() {
        let ops = [
            get(0, 0, 1, Some("init")),
            del(0, 2, 3, true),
            get(0, 4, 5, None),
        ];
        assert!(verdict_from(s("init"), &ops).linearizable);
        assert!(!verdict(&ops).linearizable);
        assert!(!verdict_from(None, &[get(0, 0, 1, Some("init"))]).linearizable);
        assert!(!verdict_from(s("init"), &[get(0, 0, 1, None)]).linearizable);
    }

    #[test]
    fn stale_read_after_completed_write_fails() {
        let ops = [
            put(0, 0, 1, "a"),
            put(0, 2, 3, "b"),
            get(1, 4, 5, Some("a")),
        ];
        let e = assert_fails(&ops);
        assert!(e.contains("op #2 "), "{e}");
        assert!(e.contains("client 1"), "{e}");
        assert!(e.contains("\"b\""), "the explanation names the state: {e}");
        assert!(e.contains("4ms") && e.contains("5ms"), "{e}");
    }

    #[test]
    fn read_concurrent_with_a_write_may_see_either_value() {
        assert_ok(&[
            put(0, 0, 1, "a"),
            put(0, 2, 10, "b"),
            get(1, 3, 4, Some("a")),
        ]);
        assert_ok(&[
            put(0, 0, 1, "a"),
            put(0, 2, 10, "b"),
            get(1, 3, 4, Some("b")),
        ]);
        // But once a read saw the new value, later reads cannot see the old one.
        assert_fails(&[
            put(0, 0, 1, "a"),
            put(0, 2, 10, "b"),
            get(1, 3, 4, Some("b")),
            get(2, 5, 6, Some("a")),
        ]);
    }

    #[test]
    fn inclusive_interval_boundaries_overlap() {
        // The write completes at 5 and the read is invoked at 5: both may happen at instant 5, in
        // either order.
        assert_ok(&[put(0, 0, 5, "a"), get(1, 5, 6, Some("a"))]);
        assert_ok(&[put(0, 0, 5, "a"), get(1, 5, 6, None)]);
        // One tick later, the write is certainly done.
        assert_fails(&[put(0, 0, 5, "a"), get(1, 6, 7, None)]);
        // Zero-length intervals.
        assert_ok(&[
            put(0, 3, 3, "a"),
            get(1, 3, 3, Some("a")),
            get(1, 3, 3, None),
        ]);
    }

    #[test]
    fn read_of_a_value_never_written_fails() {
        let e = assert_fails(&[put(0, 0, 1, "a"), get(1, 2, 3, Some("zzz"))]);
        assert!(e.contains("op #1 "), "{e}");
        assert!(e.contains("ever writes \"zzz\""), "{e}");
        assert_fails(&[get(1, 0, 1, Some("zzz"))]);
    }

    #[test]
    fn read_of_a_value_before_its_write_was_invoked_fails() {
        let e = assert_fails(&[get(1, 0, 1, Some("a")), put(0, 2, 3, "a")]);
        assert!(e.contains("op #0 "), "{e}");
    }

    // ----- concurrent writes observed by two readers --------------------------------------

    /// Two writes of `a` and `b` concurrent with everything; reader 1 reads twice, then reader 2
    /// reads twice, all four reads in that real-time order.
    fn two_writers_two_readers(r1: [&str; 2], r2: [&str; 2]) -> Vec<Op> {
        vec![
            put(0, 0, 100, "a"),
            put(1, 0, 100, "b"),
            get(2, 10, 20, Some(r1[0])),
            get(2, 30, 40, Some(r1[1])),
            get(3, 50, 60, Some(r2[0])),
            get(3, 70, 80, Some(r2[1])),
        ]
    }

    #[test]
    fn concurrent_writes_seen_in_one_order_by_everyone_pass() {
        assert_ok(&two_writers_two_readers(["a", "b"], ["b", "b"]));
        assert_ok(&two_writers_two_readers(["b", "a"], ["a", "a"]));
        assert_ok(&two_writers_two_readers(["a", "a"], ["a", "b"]));
        assert_ok(&two_writers_two_readers(["b", "b"], ["b", "b"]));
    }

    #[test]
    fn concurrent_writes_seen_in_different_orders_fail() {
        let e = assert_fails(&two_writers_two_readers(["a", "b"], ["b", "a"]));
        // The search gets as far as reader 2's second read, which wants the overwritten value.
        assert!(e.contains("op #5 "), "{e}");
        assert!(e.contains("client 3"), "{e}");
        assert_fails(&two_writers_two_readers(["b", "a"], ["a", "b"]));
        assert_fails(&two_writers_two_readers(["a", "b"], ["a", "a"]));
    }

    #[test]
    fn concurrent_reads_overlapping_may_disagree() {
        // While a write is in flight, overlapping reads can each see old or new value.
        assert_ok(&[
            put(0, 0, 1, "a"),
            put(0, 2, 50, "b"),
            get(1, 3, 20, Some("b")),
            get(2, 4, 21, Some("a")),
        ]);
    }

    // ----- compare-and-swap ---------------------------------------------------------------

    #[test]
    fn lost_update_through_cas_fails() {
        let e = assert_fails(&[
            put(0, 0, 1, "a"),
            cas_put(1, 2, 10, Some("a"), "b", Outcome::Written),
            cas_put(2, 3, 11, Some("a"), "c", Outcome::Written),
        ]);
        assert!(e.contains("CasPut"), "{e}");
        // One of them refused is fine, whichever it is.
        assert_ok(&[
            put(0, 0, 1, "a"),
            cas_put(1, 2, 10, Some("a"), "b", Outcome::Written),
            cas_put(2, 3, 11, Some("a"), "c", Outcome::Refused),
            get(0, 12, 13, Some("b")),
        ]);
        assert_ok(&[
            put(0, 0, 1, "a"),
            cas_put(1, 2, 10, Some("a"), "b", Outcome::Refused),
            cas_put(2, 3, 11, Some("a"), "c", Outcome::Written),
            get(0, 12, 13, Some("c")),
        ]);
        // Chained CAS from one to the other is fine too.
        assert_ok(&[
            put(0, 0, 1, "a"),
            cas_put(1, 2, 10, Some("a"), "b", Outcome::Written),
            cas_put(2, 3, 11, Some("b"), "c", Outcome::Written),
        ]);
    }

    #[test]
    fn cas_from_a_stale_value_fails() {
        assert_fails(&[
            put(0, 0, 1, "a"),
            put(0, 2, 3, "b"),
            cas_put(1, 4, 5, Some("a"), "c", Outcome::Written),
        ]);
        assert_fails(&[
            put(0, 0, 1, "a"),
            cas_put(1, 2, 3, Some("a"), "c", Outcome::Refused),
        ]);
    }

    #[test]
    fn create_only_cas_put() {
        // Refused while present: fine.
        assert_ok(&[
            put(0, 0, 1, "a"),
            cas_put(1, 2, 3, None, "b", Outcome::Refused),
            get(0, 4, 5, Some("a")),
        ]);
        // Written while present: a violation.
        let e = assert_fails(&[
            put(0, 0, 1, "a"),
            cas_put(1, 2, 3, None, "b", Outcome::Written),
        ]);
        assert!(e.contains("op #1 "), "{e}");
        // Written while absent: fine; refused while absent: a violation.
        assert_ok(&[
            cas_put(1, 0, 1, None, "b", Outcome::Written),
            get(0, 2, 3, Some("b")),
        ]);
        assert_fails(&[cas_put(1, 0, 1, None, "b", Outcome::Refused)]);
        // Two concurrent creates: only one may win.
        assert_fails(&[
            cas_put(1, 0, 10, None, "a", Outcome::Written),
            cas_put(2, 0, 10, None, "b", Outcome::Written),
        ]);
        assert_ok(&[
            cas_put(1, 0, 10, None, "a", Outcome::Refused),
            cas_put(2, 0, 10, None, "b", Outcome::Written),
            del(0, 1, 2, false),
        ]);
        // Create after a delete.
        assert_ok(&[
            put(0, 0, 1, "a"),
            del(0, 2, 3, true),
            cas_put(1, 4, 5, None, "b", Outcome::Written),
        ]);
    }

    #[test]
    fn delete_semantics() {
        assert_ok(&[put(0, 0, 1, "a"), del(1, 2, 3, true), get(0, 4, 5, None)]);
        assert_ok(&[
            del(1, 0, 1, false),
            put(0, 2, 3, "a"),
            del(1, 4, 5, true),
            del(1, 6, 7, false),
        ]);
        // Deleting an absent key cannot report it existed, and vice versa.
        assert_fails(&[del(0, 0, 1, true)]);
        assert_fails(&[put(0, 0, 1, "a"), del(1, 2, 3, false)]);
        // Two deletes of one value cannot both have found it.
        assert_fails(&[put(0, 0, 1, "a"), del(1, 2, 10, true), del(2, 2, 10, true)]);
        assert_ok(&[put(0, 0, 1, "a"), del(1, 2, 10, true), del(2, 2, 10, false)]);
        // A read after a completed delete sees nothing.
        assert_fails(&[
            put(0, 0, 1, "a"),
            del(1, 2, 3, true),
            get(0, 4, 5, Some("a")),
        ]);
        // Concurrent delete and write: the read decides the order, consistently.
        assert_ok(&[
            put(0, 0, 1, "a"),
            del(1, 2, 10, true),
            put(2, 2, 10, "b"),
            get(0, 11, 12, Some("b")),
        ]);
        assert_ok(&[
            put(0, 0, 1, "a"),
            del(1, 2, 10, true),
            put(2, 2, 10, "b"),
            get(0, 11, 12, None),
        ]);
        // A delete that found nothing needs the key absent at some point, which never happens.
        assert_fails(&[put(0, 0, 1, "a"), del(1, 2, 10, false), put(2, 2, 10, "b")]);
    }

    #[test]
    fn cas_delete_semantics() {
        // Successful compare-and-delete of the current value.
        assert_ok(&[
            put(0, 0, 1, "a"),
            cas_del(1, 2, 3, "a", Outcome::Written),
            get(0, 4, 5, None),
        ]);
        // It deletes: a later read cannot see the value.
        assert_fails(&[
            put(0, 0, 1, "a"),
            cas_del(1, 2, 3, "a", Outcome::Written),
            get(0, 4, 5, Some("a")),
        ]);
        // Written while the key holds another value, or nothing: a violation.
        assert_fails(&[
            put(0, 0, 1, "a"),
            put(0, 2, 3, "b"),
            cas_del(1, 4, 5, "a", Outcome::Written),
        ]);
        assert_fails(&[cas_del(1, 0, 1, "a", Outcome::Written)]);
        // Refused while it holds the expected value: a violation.
        assert_fails(&[put(0, 0, 1, "a"), cas_del(1, 2, 3, "a", Outcome::Refused)]);
        // Refused while it holds another value or nothing: fine.
        assert_ok(&[
            put(0, 0, 1, "a"),
            put(0, 2, 3, "b"),
            cas_del(1, 4, 5, "a", Outcome::Refused),
            get(1, 6, 7, Some("b")),
        ]);
        assert_ok(&[cas_del(1, 0, 1, "a", Outcome::Refused)]);
        // Two concurrent compare-and-deletes of one value: only one may succeed.
        assert_fails(&[
            put(0, 0, 1, "a"),
            cas_del(1, 2, 10, "a", Outcome::Written),
            cas_del(2, 2, 10, "a", Outcome::Written),
        ]);
        // Recreate after a compare-and-delete.
        assert_ok(&[
            put(0, 0, 1, "a"),
            cas_del(1, 2, 3, "a", Outcome::Written),
            cas_put(2, 4, 5, None, "b", Outcome::Written),
            get(0, 6, 7, Some("b")),
        ]);
    }

    // ----- unknown outcomes ---------------------------------------------------------------

    #[test]
    fn unknown_write_that_later_becomes_visible_passes() {
        assert_ok(&[
            put(0, 0, 1, "a"),
            put_unknown(1, 2, 3, "b"),
            get(0, 10, 11, Some("b")),
        ]);
        // It may take effect long after the client gave up: reads see the old value first.
        assert_ok(&[
            put(0, 0, 1, "a"),
            put_unknown(1, 2, 3, "b"),
            get(0, 10, 11, Some("a")),
            get(0, 20, 21, Some("a")),
            get(2, 30, 31, Some("b")),
            get(0, 40, 41, Some("b")),
        ]);
    }

    #[test]
    fn unknown_write_never_visible_passes() {
        assert_ok(&[
            put(0, 0, 1, "a"),
            put_unknown(1, 2, 3, "b"),
            get(0, 10, 11, Some("a")),
            get(2, 20, 21, Some("a")),
        ]);
        assert_ok(&[put_unknown(1, 0, 1, "b"), get(0, 2, 3, None)]);
        // Unknown outcomes of every kind that never took effect.
        assert_ok(&[
            put(0, 0, 1, "a"),
            op(1, Call::Delete, 2, 3, Outcome::Unknown),
            cas_put(2, 2, 3, Some("a"), "x", Outcome::Unknown),
            cas_del(3, 2, 3, "a", Outcome::Unknown),
            op(4, Call::Get, 2, 3, Outcome::Unknown),
            get(0, 10, 11, Some("a")),
        ]);
    }

    #[test]
    fn unknown_write_cannot_be_undone_or_precede_its_invocation() {
        // Once visible, it stays until overwritten: "a" cannot come back.
        assert_fails(&[
            put(0, 0, 1, "a"),
            put_unknown(1, 2, 3, "b"),
            get(0, 10, 11, Some("b")),
            get(0, 20, 21, Some("a")),
        ]);
        // It cannot take effect before it was invoked.
        assert_fails(&[get(0, 0, 1, Some("b")), put_unknown(1, 2, 3, "b")]);
        // It took effect at most once.
        assert_fails(&[
            put_unknown(1, 0, 1, "b"),
            get(0, 10, 11, Some("b")),
            put(0, 12, 13, "c"),
            get(0, 14, 15, Some("b")),
        ]);
    }

    #[test]
    fn unknown_delete_and_cas() {
        // An unknown delete explains a later absence.
        assert_ok(&[
            put(0, 0, 1, "a"),
            op(1, Call::Delete, 2, 3, Outcome::Unknown),
            get(0, 10, 11, Some("a")),
            get(0, 12, 13, None),
        ]);
        // An unknown compare-and-swap explains a later value, only if its condition held.
        assert_ok(&[
            put(0, 0, 1, "a"),
            cas_put(1, 2, 3, Some("a"), "b", Outcome::Unknown),
            get(0, 10, 11, Some("b")),
        ]);
        assert_fails(&[
            put(0, 0, 1, "a"),
            cas_put(1, 2, 3, Some("z"), "b", Outcome::Unknown),
            get(0, 10, 11, Some("b")),
        ]);
        // An unknown compare-and-delete, likewise.
        assert_ok(&[
            put(0, 0, 1, "a"),
            cas_del(1, 2, 3, "a", Outcome::Unknown),
            get(0, 10, 11, None),
        ]);
        assert_fails(&[
            put(0, 0, 1, "a"),
            put(0, 2, 3, "c"),
            cas_del(1, 4, 5, "a", Outcome::Unknown),
            get(0, 10, 11, None),
        ]);
    }

    #[test]
    fn chains_of_unknown_operations() {
        // Two unknown operations, the second enabled by the first, explain a read.
        assert_ok(&[
            put_unknown(1, 0, 1, "w"),
            cas_put(2, 2, 3, Some("w"), "v", Outcome::Unknown),
            get(0, 10, 11, Some("v")),
        ]);
        // A create-only after an unknown delete.
        assert_ok(&[
            put(0, 0, 1, "a"),
            op(1, Call::Delete, 2, 3, Outcome::Unknown),
            cas_put(2, 4, 5, None, "b", Outcome::Unknown),
            get(0, 10, 11, Some("b")),
        ]);
        // An unknown write enabling a known compare-and-swap.
        assert_ok(&[
            put_unknown(1, 0, 1, "w"),
            cas_put(2, 2, 3, Some("w"), "v", Outcome::Written),
            get(0, 10, 11, Some("v")),
        ]);
        // An unknown write making a delete find something.
        assert_ok(&[
            put_unknown(1, 0, 1, "w"),
            del(2, 2, 3, true),
            get(0, 4, 5, None),
        ]);
        // An unknown write making a compare-and-swap refuse.
        assert_ok(&[
            put(0, 0, 1, "a"),
            put_unknown(1, 2, 3, "w"),
            cas_put(2, 4, 5, Some("a"), "v", Outcome::Refused),
            get(0, 6, 7, Some("w")),
        ]);
    }

    #[test]
    fn unknown_operations_do_not_bound_the_frontier() {
        // The unknown write "completed" (gave up) at 3 but may take effect after the read at 10.
        assert_ok(&[
            put_unknown(1, 0, 3, "b"),
            get(0, 10, 11, None),
            get(0, 12, 13, Some("b")),
        ]);
        // Its completion time is irrelevant, even if before its invocation.
        assert_ok(&[
            op(1, Call::Put("b".into()), 5, 0, Outcome::Unknown),
            get(0, 10, 11, Some("b")),
        ]);
    }

    #[test]
    fn interchangeable_unknown_writes_are_each_used_at_most_once() {
        // Two unknown writes of values nobody reads; each refused compare-and-swap needs the
        // register to have changed since the write before it, so each needs one of them.
        let mut ops = vec![
            put(0, 0, 1, "a"),
            put_unknown(1, 2, 3, "x1"),
            put_unknown(2, 2, 3, "x2"),
            cas_put(3, 10, 11, Some("a"), "n1", Outcome::Refused),
            put(0, 12, 13, "b"),
            cas_put(3, 14, 15, Some("b"), "n2", Outcome::Refused),
        ];
        assert_ok(&ops);
        ops.push(put(0, 16, 17, "c"));
        ops.push(cas_put(3, 18, 19, Some("c"), "n3", Outcome::Refused));
        let e = assert_fails(&ops);
        assert!(e.contains("op #7 "), "{e}");
        // An unknown write invoked too late cannot help.
        let late = [
            put(0, 0, 1, "a"),
            put_unknown(1, 20, 21, "x1"),
            cas_put(3, 10, 11, Some("a"), "n1", Outcome::Refused),
        ];
        assert_fails(&late);
    }

    #[test]
    fn interchangeable_unknown_deletes_are_each_used_at_most_once() {
        let mut ops = vec![
            put(0, 0, 1, "a"),
            op(1, Call::Delete, 2, 3, Outcome::Unknown),
            op(2, Call::Delete, 2, 3, Outcome::Unknown),
            del(3, 10, 11, false),
            put(0, 12, 13, "b"),
            del(3, 14, 15, false),
        ];
        assert_ok(&ops);
        ops.push(put(0, 16, 17, "c"));
        ops.push(del(3, 18, 19, false));
        let e = assert_fails(&ops);
        assert!(e.contains("op #7 "), "{e}");
    }

    #[test]
    fn a_write_of_an_unobserved_value_is_not_read_only() {
        // The initial value and "v1" are never read: both are modelled as "some other value", so
        // writing "v1" over the initial value changes nothing the model can see, yet it may not
        // be moved before the write of "v2" (found by the brute-force cross-check).
        let ops = [
            put(0, 0, 1, "v1"),
            put(1, 0, 0, "v2"),
            cas_del(1, 3, 4, "v2", Outcome::Refused),
        ];
        assert!(verdict_from(s("v0"), &ops).linearizable);
        assert!(verdict(&ops).linearizable);
    }

    // ----- malformed histories and budget -------------------------------------------------

    #[test]
    fn malformed_histories_are_reported() {
        let v = verdict(&[
            put(0, 0, 1, "a"),
            op(1, Call::Get, 5, 4, Outcome::Read(None)),
        ]);
        assert!(!v.linearizable);
        let e = v.explanation.expect("explanation");
        assert!(e.contains("malformed") && e.contains("op #1 "), "{e}");

        for bad in [
            op(0, Call::Get, 0, 1, Outcome::Written),
            op(0, Call::Put("a".into()), 0, 1, Outcome::Refused),
            op(0, Call::Put("a".into()), 0, 1, Outcome::Read(None)),
            op(0, Call::Delete, 0, 1, Outcome::Written),
            cas_put(0, 0, 1, None, "a", Outcome::Deleted(true)),
            cas_del(0, 0, 1, "a", Outcome::Read(None)),
        ] {
            let v = verdict(&[bad]);
            assert!(!v.linearizable);
            assert!(v.explanation.is_some_and(|e| e.contains("malformed")));
        }
    }

    #[test]
    fn extreme_times_do_not_panic() {
        let ops = [
            Op {
                client: 0,
                call: Call::Put("a".into()),
                invoked: Duration::ZERO,
                completed: Duration::MAX,
                outcome: Outcome::Written,
            },
            Op {
                client: 1,
                call: Call::Get,
                invoked: Duration::MAX,
                completed: Duration::MAX,
                outcome: Outcome::Read(s("a")),
            },
            Op {
                client: 2,
                call: Call::Put("b".into()),
                invoked: Duration::MAX,
                completed: Duration::ZERO,
                outcome: Outcome::Unknown,
            },
        ];
        assert_ok(&ops);
    }

    #[test]
    fn arbitrary_inputs_never_panic() {
        let mut rng = Rng(99);
        let times = [0, 1, 2, 3, 5, 8, u64::MAX];
        for _ in 0..3000 {
            let n = rng.below(9) as usize;
            let value = |rng: &mut Rng| ["a", "b", "c", ""][rng.below(4) as usize].to_string();
            let maybe = |rng: &mut Rng| rng.chance(50).then(|| value(rng));
            let ops: Vec<Op> = (0..n)
                .map(|_| Op {
                    client: rng.below(4) as usize,
                    call: match rng.below(5) {
                        0 => Call::Get,
                        1 => Call::Put(value(&mut rng)),
                        2 => Call::Delete,
                        3 => Call::CasPut {
                            expected: maybe(&mut rng),
                            new: value(&mut rng),
                        },
                        _ => Call::CasDelete {
                            expected: value(&mut rng),
                        },
                    },
                    invoked: Duration::from_nanos(*rng.pick(&times)),
                    completed: Duration::from_nanos(*rng.pick(&times)),
                    outcome: match rng.below(5) {
                        0 => Outcome::Read(maybe(&mut rng)),
                        1 => Outcome::Written,
                        2 => Outcome::Deleted(rng.chance(50)),
                        3 => Outcome::Refused,
                        _ => Outcome::Unknown,
                    },
                })
                .collect();
            let initial = maybe(&mut rng);
            let budget = rng.below(50);
            match check(initial, &ops, budget) {
                Ok(v) => {
                    assert_eq!(v.ops, n);
                    assert_eq!(v.explanation.is_some(), !v.linearizable);
                    assert!(v.explored <= budget);
                }
                Err(e) => assert!(e.explored > budget),
            }
        }
    }

    #[test]
    fn inconclusive_when_budget_is_exhausted() {
        let ops = two_writers_two_readers(["a", "b"], ["b", "a"]);
        let full = verdict(&ops);
        assert!(full.explored > 3);
        let err = check(None, &ops, 3).expect_err("budget of 3 is too small");
        assert!(err.explored > 3);
        let text = err.to_string();
        assert!(
            text.contains("inconclusive") && text.contains("budget"),
            "{text}"
        );
        let as_error: &dyn Error = &err;
        assert!(as_error.source().is_none());
        // Exactly enough budget decides.
        let exact = check(None, &ops, full.explored).expect("enough budget");
        assert_eq!(exact, full);
        assert!(check(None, &ops, full.explored - 1).is_err());
        // A budget of zero still decides an empty history.
        assert!(check(None, &[], 0).is_ok());
        assert!(check(None, &ops, 0).is_err());
    }

    // ----- randomised cross-check against brute force ------------------------------------

    /// A small deterministic PRNG (SplitMix64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(1);
            mix(self.0)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len() as u64) as usize]
        }
    }

    /// The register model, on plain values.
    fn model(state: &Option<String>, call: &Call) -> (Option<String>, Outcome) {
        match call {
            Call::Get => (state.clone(), Outcome::Read(state.clone())),
            Call::Put(v) => (Some(v.clone()), Outcome::Written),
            Call::Delete => (None, Outcome::Deleted(state.is_some())),
            Call::CasPut { expected, new } => {
                if state == expected {
                    (Some(new.clone()), Outcome::Written)
                } else {
                    (state.clone(), Outcome::Refused)
                }
            }
            Call::CasDelete { expected } => {
                if state.as_deref() == Some(expected.as_str()) {
                    (None, Outcome::Written)
                } else {
                    (state.clone(), Outcome::Refused)
                }
            }
        }
    }

    /// The definition, by exhaustive enumeration: some order of all known-outcome operations and
    /// some of the unknown ones, respecting real time, with outcomes matching the model.
    fn brute_force(initial: Option<String>, ops: &[Op]) -> bool {
        fn go(state: Option<String>, ops: &[Op], done: &mut Vec<bool>) -> bool {
            let pending_known =
                |i: usize, done: &[bool]| !done[i] && ops[i].outcome != Outcome::Unknown;
            if !(0..ops.len()).any(|i| pending_known(i, done)) {
                return true;
            }
            for i in 0..ops.len() {
                if done[i] {
                    continue;
                }
                // Real time: nothing still pending with a known outcome completed before `i`
                // was invoked.
                if (0..ops.len())
                    .any(|j| pending_known(j, done) && ops[j].completed < ops[i].invoked)
                {
                    continue;
                }
                let (after, outcome) = model(&state, &ops[i].call);
                if ops[i].outcome != Outcome::Unknown && outcome != ops[i].outcome {
                    continue;
                }
                done[i] = true;
                let ok = go(after, ops, done);
                done[i] = false;
                if ok {
                    return true;
                }
            }
            false
        }
        go(initial, ops, &mut vec![false; ops.len()])
    }

    /// A plain memoised search without any of the reductions (for up to 128 operations): the
    /// definition, fast enough for medium histories.
    fn reference(initial: Option<String>, ops: &[Op]) -> bool {
        fn go(
            mask: u128,
            state: Option<String>,
            ops: &[Op],
            failed: &mut HashSet<(u128, Option<String>)>,
        ) -> bool {
            let pending_known =
                |j: usize| mask & (1 << j) == 0 && ops[j].outcome != Outcome::Unknown;
            if !(0..ops.len()).any(pending_known) {
                return true;
            }
            if failed.contains(&(mask, state.clone())) {
                return false;
            }
            for i in 0..ops.len() {
                if mask & (1 << i) != 0
                    || (0..ops.len()).any(|j| pending_known(j) && ops[j].completed < ops[i].invoked)
                {
                    continue;
                }
                let (after, outcome) = model(&state, &ops[i].call);
                if ops[i].outcome != Outcome::Unknown && outcome != ops[i].outcome {
                    continue;
                }
                if go(mask | (1 << i), after, ops, failed) {
                    return true;
                }
            }
            failed.insert((mask, state));
            false
        }
        go(0, initial, ops, &mut HashSet::new())
    }

    #[test]
    fn agrees_with_a_plain_search_on_random_medium_histories() {
        for (seed, unknown_percent) in [(11, 5), (12, 20), (13, 40)] {
            let mut rng = Rng(seed);
            let (mut pass, mut fail) = (0, 0);
            for case in 0..300 {
                let (initial, ops) = random_small_history(&mut rng, 24, unknown_percent);
                let expected = reference(initial.clone(), &ops);
                let got = check(initial.clone(), &ops, BUDGET).expect("within budget");
                assert_eq!(
                    got.linearizable, expected,
                    "seed {seed} case {case}: initial {initial:?}, history {ops:#?}"
                );
                if expected {
                    pass += 1;
                } else {
                    fail += 1;
                }
            }
            assert!(pass > 20 && fail > 20, "pass {pass}, fail {fail}");
        }
    }

    /// A random small history of up to `max_ops` operations, often but not always linearizable,
    /// with about `unknown_percent` % of unknown outcomes.
    fn random_small_history(
        rng: &mut Rng,
        max_ops: u64,
        unknown_percent: u64,
    ) -> (Option<String>, Vec<Op>) {
        let n = 1 + rng.below(max_ops) as usize;
        let clients = 1 + rng.below(3) as usize;
        let mut values: Vec<String> = vec!["v0".to_string()];
        let initial = if rng.chance(30) {
            Some("v0".to_string())
        } else {
            None
        };
        let mut state = initial.clone();
        let mut ops = Vec::new();
        let mut free_at = vec![0u64; clients];
        for k in 0..n {
            let client = rng.below(clients as u64) as usize;
            let fresh = format!("v{}", k + 1);
            let known = |rng: &mut Rng, values: &[String]| -> Option<String> {
                if rng.chance(25) {
                    None
                } else {
                    Some(rng.pick(values).clone())
                }
            };
            let call = match rng.below(6) {
                0 | 1 => Call::Get,
                2 => Call::Put(fresh.clone()),
                3 => Call::Delete,
                4 => Call::CasPut {
                    expected: known(rng, &values),
                    new: fresh.clone(),
                },
                _ => Call::CasDelete {
                    expected: rng.pick(&values).clone(),
                },
            };
            values.push(fresh);
            let invoked = free_at[client] + rng.below(4);
            let completed = invoked + rng.below(8);
            free_at[client] = completed + 1;
            // Outcome: usually what a sequential run in generation order gives (which is often,
            // though not always, consistent), sometimes random, sometimes unknown.
            let (after, outcome) = model(&state, &call);
            state = after;
            let outcome = if rng.chance(unknown_percent) {
                Outcome::Unknown
            } else if rng.chance(20) {
                match &call {
                    Call::Get => Outcome::Read(known(rng, &values)),
                    Call::Delete => Outcome::Deleted(rng.chance(50)),
                    Call::Put(_) => Outcome::Written,
                    _ => {
                        if rng.chance(50) {
                            Outcome::Written
                        } else {
                            Outcome::Refused
                        }
                    }
                }
            } else {
                outcome
            };
            ops.push(Op {
                client,
                call,
                invoked: Duration::from_micros(invoked),
                completed: Duration::from_micros(completed),
                outcome,
            });
        }
        (initial, ops)
    }

    #[test]
    fn agrees_with_brute_force_on_random_small_histories() {
        for (seed, max_ops, unknown_percent) in [(7, 7, 10), (8, 8, 35), (9, 7, 60)] {
            cross_check(seed, 2500, max_ops, unknown_percent);
        }
    }

    fn cross_check(seed: u64, cases: usize, max_ops: u64, unknown_percent: u64) {
        let mut rng = Rng(seed);
        let (mut pass, mut fail) = (0, 0);
        for case in 0..cases {
            let (initial, ops) = random_small_history(&mut rng, max_ops, unknown_percent);
            let expected = brute_force(initial.clone(), &ops);
            let got = match check(initial.clone(), &ops, BUDGET) {
                Ok(v) => v,
                Err(e) => panic!("case {case}: {e}"),
            };
            assert_eq!(
                got.linearizable, expected,
                "case {case}: initial {initial:?}, history {ops:#?}, verdict {got:?}"
            );
            assert_eq!(got.explanation.is_some(), !expected);
            if expected {
                pass += 1;
            } else {
                fail += 1;
            }
        }
        // The generator exercises both verdicts.
        assert!(
            pass > cases / 8 && fail > cases / 8,
            "pass {pass}, fail {fail}"
        );
    }

    // ----- a large generated history ------------------------------------------------------

    /// [`generate_with`] with about 5 % of unknown outcomes.
    fn generate(seed: u64, n: usize, clients: usize) -> Vec<Op> {
        generate_with(seed, n, clients, 3)
    }

    /// A linearizable history of `n` operations by `clients` simulated concurrent clients: each
    /// operation takes effect on a model at a random instant inside its interval. With
    /// probability `unknown_percent` % a client gives up before the effect (which then never
    /// happens, or happens later, after the client moved on), and with the same probability it
    /// loses the answer after the effect: both are recorded as unknown outcomes.
    fn generate_with(seed: u64, n: usize, clients: usize, unknown_percent: u64) -> Vec<Op> {
        enum Phase {
            Idle,
            Invoked(Call, u64),
            Applied(Call, u64, Outcome),
        }
        let mut rng = Rng(seed);
        let mut state: Option<String> = None;
        let mut recent: Vec<String> = Vec::new();
        let mut phases: Vec<Phase> = (0..clients).map(|_| Phase::Idle).collect();
        let mut zombies: Vec<Call> = Vec::new();
        let mut ops = Vec::with_capacity(n);
        let mut now = 0u64;
        let mut fresh = 0u64;
        let mut in_flight = 0;
        while ops.len() < n {
            now += 1 + rng.below(5);
            // An abandoned operation may still take effect, long after its client gave up.
            if !zombies.is_empty() && rng.chance(5) {
                let i = rng.below(zombies.len() as u64) as usize;
                let call = zombies.swap_remove(i);
                state = model(&state, &call).0;
            }
            let c = rng.below(clients as u64) as usize;
            let phase = std::mem::replace(&mut phases[c], Phase::Idle);
            phases[c] = match phase {
                Phase::Idle if ops.len() + in_flight >= n => Phase::Idle,
                Phase::Idle => {
                    in_flight += 1;
                    fresh += 1;
                    let value = format!("s{seed}-v{fresh}");
                    let call = random_call(&mut rng, value, &state, &recent);
                    if let Call::Put(v) | Call::CasPut { new: v, .. } = &call {
                        recent.push(v.clone());
                        if recent.len() > 4 {
                            recent.remove(0);
                        }
                    }
                    Phase::Invoked(call, now)
                }
                Phase::Invoked(call, invoked) => {
                    if rng.chance(unknown_percent) {
                        // Gives up before any effect: never, or later.
                        in_flight -= 1;
                        if rng.chance(50) {
                            zombies.push(call.clone());
                        }
                        ops.push(Op {
                            client: c,
                            call,
                            invoked: Duration::from_micros(invoked),
                            completed: Duration::from_micros(now),
                            outcome: Outcome::Unknown,
                        });
                        Phase::Idle
                    } else {
                        let (after, outcome) = model(&state, &call);
                        state = after;
                        Phase::Applied(call, invoked, outcome)
                    }
                }
                Phase::Applied(call, invoked, outcome) => {
                    let outcome = if rng.chance(unknown_percent) {
                        Outcome::Unknown
                    } else {
                        outcome
                    };
                    in_flight -= 1;
                    ops.push(Op {
                        client: c,
                        call,
                        invoked: Duration::from_micros(invoked),
                        completed: Duration::from_micros(now),
                        outcome,
                    });
                    Phase::Idle
                }
            };
        }
        ops
    }

    /// A random call, as a client would make it knowing the recent values.
    fn random_call(
        rng: &mut Rng,
        value: String,
        state: &Option<String>,
        recent: &[String],
    ) -> Call {
        let some_recent = |rng: &mut Rng| -> Option<String> {
            if recent.is_empty() {
                None
            } else {
                Some(rng.pick(recent).clone())
            }
        };
        match rng.below(20) {
            0..=6 => Call::Get,
            7..=10 => Call::Put(value),
            11 => Call::Delete,
            12..=16 => Call::CasPut {
                expected: match rng.below(4) {
                    0 => None,
                    1 => some_recent(rng),
                    _ => state.clone(),
                },
                new: value,
            },
            _ => match state.clone().or_else(|| some_recent(rng)) {
                Some(expected) => Call::CasDelete { expected },
                None => Call::Get,
            },
        }
    }

    /// A linearizable history of `n` operations by `clients` clients, built as the brief of
    /// this checker describes: a random sequential execution on the model (operation `i` takes
    /// effect at 10·i µs), each operation's interval then widened randomly around that instant
    /// (up to 60 µs each way, so several overlap) and given to a client that is free; about 4 %
    /// of the executed operations are marked unknown, and about 2 % of the operations are
    /// unknown-outcome writes and deletes that never took effect.
    /// `clients` must be at least 7 (at most 6 intervals contain any instant).
    fn generate_widened(seed: u64, n: usize, clients: usize) -> Vec<Op> {
        assert!(clients >= 7);
        let mut rng = Rng(seed);
        let mut state: Option<String> = None;
        let mut recent: Vec<String> = Vec::new();
        let mut busy_until = vec![0u64; clients];
        let mut ops = Vec::with_capacity(n);
        for i in 0..n {
            let point = 100 + 10 * i as u64;
            let value = format!("w{seed}-{i}");
            let never = rng.chance(2);
            let call = if never {
                match rng.below(3) {
                    0 => Call::Delete,
                    1 => Call::CasPut {
                        expected: state.clone(),
                        new: value,
                    },
                    _ => Call::Put(value),
                }
            } else {
                random_call(&mut rng, value, &state, &recent)
            };
            if let Call::Put(v) | Call::CasPut { new: v, .. } = &call {
                recent.push(v.clone());
                if recent.len() > 4 {
                    recent.remove(0);
                }
            }
            let outcome = if never {
                Outcome::Unknown
            } else {
                let (after, outcome) = model(&state, &call);
                state = after;
                if rng.chance(4) {
                    Outcome::Unknown
                } else {
                    outcome
                }
            };
            // A free client: its previous operation completed before this one's instant.
            let free: Vec<usize> = (0..clients).filter(|&c| busy_until[c] < point).collect();
            let client = *rng.pick(&free);
            let invoked = point - rng.below(61).min(point - busy_until[client] - 1);
            let completed = point + rng.below(61);
            busy_until[client] = completed;
            ops.push(Op {
                client,
                call,
                invoked: Duration::from_micros(invoked),
                completed: Duration::from_micros(completed),
                outcome,
            });
        }
        ops
    }

    #[test]
    fn large_generated_history_is_linearizable_quickly() {
        for (name, ops) in [
            (
                "widened sequential execution",
                generate_widened(42, 2000, 8),
            ),
            ("simulated clients", generate(42, 2000, 8)),
        ] {
            assert_eq!(ops.len(), 2000);
            let unknown = ops.iter().filter(|o| o.outcome == Outcome::Unknown).count();
            assert!((60..=200).contains(&unknown), "{unknown} unknown outcomes");
            let start = std::time::Instant::now();
            let v = check(None, &ops, BUDGET).expect("within budget");
            let took = start.elapsed();
            eprintln!(
                "{name}: 2000 ops, 8 clients, {unknown} unknown: linearizable={} explored={} \
                 in {took:?}",
                v.linearizable, v.explored
            );
            assert!(v.linearizable, "{name}: {:?}", v.explanation);
            assert_eq!(v.ops, 2000);
            assert!(v.explored < 1_000_000, "{name}: explored {}", v.explored);
        }
    }

    #[test]
    fn many_generated_histories_are_linearizable() {
        for seed in 1..=20 {
            let ops = generate_with(seed, 600, 1 + (seed as usize % 12), seed % 8);
            let v = check(None, &ops, BUDGET).expect("within budget");
            assert!(v.linearizable, "seed {seed}: {:?}", v.explanation);
            let ops = generate_widened(seed, 600, 7 + (seed as usize % 6));
            let v = check(None, &ops, BUDGET).expect("within budget");
            assert!(v.linearizable, "widened, seed {seed}: {:?}", v.explanation);
        }
    }

    #[test]
    fn large_generated_history_with_a_corrupted_read_fails() {
        let mut ops = generate(43, 2000, 8);
        // Corrupt a read in the middle to a value nobody writes.
        let Some(i) = (1000..ops.len()).find(|&i| matches!(ops[i].outcome, Outcome::Read(_)))
        else {
            panic!("no read to corrupt");
        };
        ops[i].outcome = Outcome::Read(s("never-written"));
        let start = std::time::Instant::now();
        let v = check(None, &ops, BUDGET).expect("within budget");
        eprintln!(
            "corrupted 2000-op history: explored {} in {:?}",
            v.explored,
            start.elapsed()
        );
        assert!(!v.linearizable);
        let e = v.explanation.expect("explanation");
        assert!(e.contains(&format!("op #{i} ")), "{e}");
        assert!(e.contains("ever writes \"never-written\""), "{e}");
    }

    #[test]
    fn large_generated_history_with_a_stale_read_fails() {
        let mut ops = generate(44, 2000, 8);
        // Find a read that returned a value, followed later (with no overlap) by a known
        // overwrite, and add a read after that returning the old value again.
        let mut injected = None;
        'outer: for (i, r) in ops.iter().enumerate() {
            let Outcome::Read(Some(old)) = &r.outcome else {
                continue;
            };
            for w in &ops {
                if w.invoked > r.completed
                    && w.outcome == Outcome::Written
                    && matches!(&w.call, Call::Put(v) if v != old)
                {
                    injected = Some((i, old.clone(), w.completed));
                    break 'outer;
                }
            }
        }
        let (_, old, after) = injected.expect("a read followed by a write");
        let idx = ops.len();
        ops.push(Op {
            client: 99,
            call: Call::Get,
            invoked: after + Duration::from_micros(1),
            completed: after + Duration::from_micros(2),
            outcome: Outcome::Read(Some(old)),
        });
        let v = check(None, &ops, BUDGET).expect("within budget");
        assert!(!v.linearizable);
        let e = v.explanation.expect("explanation");
        assert!(e.contains(&format!("op #{idx} ")), "{e}");
    }

    #[test]
    fn many_concurrent_operations_with_unknown_outcomes() {
        // 40 unknown writes, none of which took effect, all concurrent with 200 reads of the
        // initial value and then a delete: the unknown writes must not blow up the search.
        let mut ops = vec![put(0, 0, 1, "init")];
        for k in 0..40 {
            ops.push(put_unknown(1 + k, 2, 3, &format!("u{k}")));
        }
        for k in 0..200 {
            ops.push(get(
                100 + k % 8,
                10 + k as u64 * 2,
                11 + k as u64 * 2,
                Some("init"),
            ));
        }
        ops.push(del(0, 1000, 1001, true));
        ops.push(get(0, 1002, 1003, None));
        let v = verdict(&ops);
        assert!(v.linearizable, "{:?}", v.explanation);
        assert!(v.explored < 100_000, "explored {}", v.explored);

        // An unknown write may take effect after the delete, but only once.
        ops.push(get(0, 1004, 1005, Some("u7")));
        let v = verdict(&ops);
        assert!(v.linearizable, "{:?}", v.explanation);
        ops.push(get(0, 1006, 1007, None));
        let v = verdict(&ops);
        assert!(!v.linearizable);
        assert!(v.explored < 1_000_000, "explored {}", v.explored);
    }
}
