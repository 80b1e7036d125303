//! Warm pools: `pool_size` started sandboxes kept per type, handed out by
//! [`Manager::create_from_pool`](crate::Manager::create_from_pool) and refilled in the
//! background.
//!
//! Rules (the manager keeps them; this module holds the state and the pure planning step):
//! - A warm sandbox is an ordinary record in the store in state `warm`, created with its own id
//!   as its session: its `/workspace` is its own, never another session's (AgentScope's pool
//!   behaves the same way). It has no expiry while it waits; the hand-out binds the caller's
//!   metadata, sets the state to `running` and starts the normal timeout.
//! - The store is the truth; the per-type queues here only make a hand-out cheap (no listing).
//!   A queued id whose record is gone or no longer `warm` is skipped, and the hand-out itself is
//!   a compare-and-set from `warm` to `running`, so two takers never get the same sandbox.
//! - One refill task creates warm sandboxes one at a time ([`plan`] says how many of which type),
//!   so a type never has more than `pool_size` warm ones.
//! - Warm sandboxes count against the instance limit. They only use capacity nobody else wants:
//!   the refill stops quietly at the limit, and a create that hits the limit while warm
//!   sandboxes exist removes one of them and takes its place.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// How often the refill task looks again when nothing woke it (after a failed create, or when
/// room under the instance limit came back).
pub(crate) const RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// The pools' state inside the manager.
#[derive(Debug, Default)]
pub(crate) struct Pools {
    /// Ids of warm sandboxes per type, oldest first. May hold stale ids (see module docs).
    pub(crate) queues: Mutex<HashMap<String, VecDeque<String>>>,
    /// Wakes the refill task (a stored permit: a wake-up is never lost).
    pub(crate) wake: Arc<Notify>,
    /// Held while the refill task creates a sandbox, so that shutdown can wait for it and then
    /// see every sandbox it made.
    pub(crate) refilling: tokio::sync::Mutex<()>,
    /// Types whose last warm create failed, so that a broken type is logged once, not every
    /// round.
    pub(crate) failing: Mutex<HashSet<String>>,
    /// Set once the pools are stopped (shutdown): no refill any more.
    pub(crate) stopped: AtomicBool,
}

impl Pools {
    /// Queue a new warm sandbox.
    pub(crate) fn push(&self, sandbox_type: &str, id: String) {
        self.queues
            .lock()
            .unwrap()
            .entry(sandbox_type.to_string())
            .or_default()
            .push_back(id);
    }

    /// The oldest queued id of a type.
    pub(crate) fn pop(&self, sandbox_type: &str) -> Option<String> {
        self.queues
            .lock()
            .unwrap()
            .get_mut(sandbox_type)
            .and_then(VecDeque::pop_front)
    }

    /// The oldest queued id of the type with the longest queue (the one to give up first when
    /// room is needed).
    pub(crate) fn pop_any(&self) -> Option<String> {
        let mut queues = self.queues.lock().unwrap();
        queues
            .values_mut()
            .max_by_key(|q| q.len())
            .and_then(VecDeque::pop_front)
    }
}

/// What the refill should create next: `(type, how many)` for each pooled type below `size`
/// warm sandboxes, in the order of `types` (duplicates ignored). `warm` counts the warm
/// sandboxes per type now.
pub fn plan(types: &[String], size: usize, warm: &HashMap<String, usize>) -> Vec<(String, usize)> {
    let mut seen = HashSet::new();
    types
        .iter()
        .filter(|t| seen.insert(t.as_str()))
        .filter_map(|t| {
            let missing = size.saturating_sub(warm.get(t).copied().unwrap_or(0));
            (missing > 0).then(|| (t.clone(), missing))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_fills_each_type_up_to_size() {
        let types = vec!["base".to_string(), "gui".to_string(), "base".to_string()];
        let none = HashMap::new();
        assert_eq!(
            plan(&types, 2, &none),
            vec![("base".to_string(), 2), ("gui".to_string(), 2)]
        );
        let warm = HashMap::from([("base".to_string(), 1), ("gui".to_string(), 5)]);
        assert_eq!(plan(&types, 2, &warm), vec![("base".to_string(), 1)]);
        assert!(plan(&types, 0, &none).is_empty());
    }

    #[test]
    fn queues() {
        let p = Pools::default();
        p.push("a", "1".into());
        p.push("a", "2".into());
        p.push("b", "3".into());
        assert_eq!(p.pop_any().as_deref(), Some("1"));
        assert_eq!(p.pop("b").as_deref(), Some("3"));
        assert_eq!(p.pop("b"), None);
        assert_eq!(p.pop("a").as_deref(), Some("2"));
        assert_eq!(p.pop_any(), None);
    }
}
