//! Warm pools: `pool_size` started sandboxes kept per pool, handed out by
//! [`Manager::create_from_pool`](crate::Manager::create_from_pool) and refilled in the
//! background.
//!
//! A pool is a [`PoolSpec`]: a name and what its sandboxes are started with (a template, and
//! for a pool made for one kind of sandbox, its environment and resources). A plain pool is
//! named after its template; that is the pool `/v1`'s `from_pool` and any caller asking for a
//! plain sandbox of the template use.
//!
//! Rules (the manager keeps them; this module holds the state and the pure planning step):
//! - A warm sandbox is handed out only by its own pool: one started with a pool's environment
//!   is never given to a caller of another pool, and the other way round. Its record carries
//!   the pool's name in its metadata ([`POOL_METADATA_KEY`]) until the hand-out replaces the
//!   metadata.
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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use sandboxd_types::Resources;
use tokio::sync::Notify;

/// Metadata key of a warm sandbox naming the pool it waits in.
pub const POOL_METADATA_KEY: &str = "sandboxd.pool";

/// One warm pool: its name and what its sandboxes are started with.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    /// The name [`Manager::create_from_pool`](crate::Manager::create_from_pool) takes; a plain
    /// pool is named after its template.
    pub name: String,
    /// Template of its sandboxes.
    pub template: String,
    /// Environment variables of its sandboxes.
    pub env: BTreeMap<String, String>,
    /// Resources of its sandboxes (`None`: the defaults).
    pub resources: Option<Resources>,
}

impl PoolSpec {
    /// The plain pool of a template: named after it, no environment, default resources.
    pub fn template(name: &str) -> Self {
        PoolSpec {
            name: name.to_string(),
            template: name.to_string(),
            env: BTreeMap::new(),
            resources: None,
        }
    }
}

/// How often the refill task looks again when nothing woke it (after a failed create, or when
/// room under the instance limit came back).
pub(crate) const RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// How long after a hand-out the refill waits before it starts a warm sandbox. The caller of a
/// hand-out runs its first command right away, and a create beside it on a machine of few
/// cores delays that command by about the create's own cost (measured: the warm-pool figure
/// of the benchmark). A refill that waits for this quiet spell stays off that path; under a
/// steady stream of hand-outs it still runs, [`REFILL_QUIET_MAX`] after the first waiting one.
pub(crate) const REFILL_QUIET: Duration = Duration::from_millis(20);

/// The longest a refill waits for quiet after hand-outs (see [`REFILL_QUIET`]).
pub(crate) const REFILL_QUIET_MAX: Duration = Duration::from_millis(200);

/// The pools' state inside the manager.
#[derive(Debug, Default)]
pub(crate) struct Pools {
    /// Ids of warm sandboxes per pool, oldest first. May hold stale ids (see module docs).
    pub(crate) queues: Mutex<HashMap<String, VecDeque<String>>>,
    /// Wakes the refill task (a stored permit: a wake-up is never lost).
    pub(crate) wake: Arc<Notify>,
    /// Held while the refill task creates a sandbox, so that shutdown can wait for it and then
    /// see every sandbox it made.
    pub(crate) refilling: tokio::sync::Mutex<()>,
    /// Pools whose last warm create failed, so that a broken pool is logged once, not every
    /// round.
    pub(crate) failing: Mutex<HashSet<String>>,
    /// Set once the pools are stopped (shutdown): no refill any more.
    pub(crate) stopped: AtomicBool,
    /// When the last hand-out happened (see [`REFILL_QUIET`]).
    pub(crate) last_hand_out: Mutex<Option<Instant>>,
}

impl Pools {
    /// Note a hand-out, for [`Pools::wait_for_quiet`].
    pub(crate) fn handed_out(&self) {
        *self.last_hand_out.lock().unwrap() = Some(Instant::now());
    }

    /// Wait until no hand-out happened for [`REFILL_QUIET`], or [`REFILL_QUIET_MAX`] passed.
    pub(crate) async fn wait_for_quiet(&self) {
        let started = Instant::now();
        loop {
            let last = *self.last_hand_out.lock().unwrap();
            let Some(since) = last.map(|t| t.elapsed()) else {
                return;
            };
            let waited = started.elapsed();
            if since >= REFILL_QUIET || waited >= REFILL_QUIET_MAX {
                return;
            }
            tokio::time::sleep((REFILL_QUIET - since).min(REFILL_QUIET_MAX - waited)).await;
        }
    }

    /// Queue a new warm sandbox.
    pub(crate) fn push(&self, pool: &str, id: String) {
        self.queues
            .lock()
            .unwrap()
            .entry(pool.to_string())
            .or_default()
            .push_back(id);
    }

    /// The oldest queued id of a pool.
    pub(crate) fn pop(&self, pool: &str) -> Option<String> {
        self.queues
            .lock()
            .unwrap()
            .get_mut(pool)
            .and_then(VecDeque::pop_front)
    }

    /// The oldest queued id of the pool with the longest queue (the one to give up first when
    /// room is needed).
    pub(crate) fn pop_any(&self) -> Option<String> {
        let mut queues = self.queues.lock().unwrap();
        queues
            .values_mut()
            .max_by_key(|q| q.len())
            .and_then(VecDeque::pop_front)
    }
}

/// What the refill should create next: `(pool, how many)` for each pool below `size` warm
/// sandboxes, in the order of `pools` (names given twice count once). `warm` counts the warm
/// sandboxes per pool now.
pub fn plan(pools: &[String], size: usize, warm: &HashMap<String, usize>) -> Vec<(String, usize)> {
    let mut seen = HashSet::new();
    pools
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

    #[tokio::test(start_paused = true)]
    async fn refill_waits_for_quiet_after_a_hand_out_but_not_forever() {
        let p = Pools::default();
        let t0 = tokio::time::Instant::now();
        p.wait_for_quiet().await;
        assert_eq!(t0.elapsed(), Duration::ZERO, "no hand-out yet: no wait");
        p.handed_out();
        let t0 = tokio::time::Instant::now();
        p.wait_for_quiet().await;
        assert!(t0.elapsed() >= REFILL_QUIET - Duration::from_millis(1));
        assert!(t0.elapsed() < REFILL_QUIET_MAX);
    }
}
