//! The wait's state as a pure fold: each row update of the pod and node
//! watches (with the time since the wait began) goes in, the counts, the
//! moments everything ran and was Ready, and the registration latencies come
//! out. No I/O and no clock: the loop in `wait/mod.rs` feeds it, the tests
//! feed it tables of updates.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use crate::tables::{Cells, Update};

/// One update of one of the two watches.
#[derive(Debug, Clone)]
pub enum Input {
    /// A row of the hollow-node pods' watch (external cluster).
    Pods(Update),
    /// A row of the hollow Nodes' watch (master).
    Nodes(Update),
}

/// The counts at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Pods that exist, terminating ones included.
    pub pods: usize,
    /// Pods not terminating.
    pub live: usize,
    /// Pods Running with every container ready.
    pub running: usize,
    /// Ready Nodes whose pod is live.
    pub ready: usize,
}

/// The counts, kept up to date one update at a time (not recounted per
/// update: at 5,000 nodes that would be 25 million checks), and the timings.
#[derive(Debug, Default)]
pub struct Tally {
    wanted: usize,
    /// Pod name → (live, running).
    pods: HashMap<String, (bool, bool)>,
    /// Node name → ready.
    nodes: HashMap<String, bool>,
    counts: Counts,
    /// When each pod was first seen, since the wait began.
    pod_seen: HashMap<String, Duration>,
    ready_seen: HashSet<String>,
    /// Pod first seen → its Node first seen Ready, in seconds.
    latencies: Vec<f64>,
    all_running: Option<Duration>,
    all_ready: Option<Duration>,
}

/// Who holds the wait up (see [`Tally::laggards`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Laggards {
    /// Live pods not Running with every container ready.
    pub waiting: Vec<String>,
    /// Running pods whose Node is registered but not Ready.
    pub not_ready: Vec<String>,
    /// Running pods whose Node has not registered.
    pub unregistered: usize,
}

/// What the fold gives when the wait is over.
#[derive(Debug, Clone, PartialEq)]
pub struct Timings {
    pub all_running: Duration,
    pub all_ready: Duration,
    pub registration_p50: Option<f64>,
    pub registration_p99: Option<f64>,
}

impl Tally {
    pub fn new(wanted: usize) -> Self {
        Self {
            wanted,
            ..Self::default()
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Whether exactly the wanted pods exist, none terminating.
    pub fn settled(&self) -> bool {
        self.counts.live == self.wanted && self.counts.pods == self.wanted
    }

    /// Every wanted pod runs and every one's Node is Ready.
    pub fn done(&self) -> bool {
        self.settled() && self.counts.running == self.wanted && self.counts.ready == self.wanted
    }

    /// Fold `input` in, `at` the time since the wait began. Returns whether
    /// the running or ready counts changed.
    pub fn fold(&mut self, input: Input, at: Duration) -> bool {
        let before = (self.counts.running, self.counts.ready);
        let touched = match input {
            Input::Pods(update) => self.pods_update(update),
            Input::Nodes(update) => self.nodes_update(update),
        };
        for name in touched {
            if self.pods.contains_key(&name) {
                self.pod_seen.entry(name.clone()).or_insert(at);
            }
            if self.is_ready(&name)
                && self.ready_seen.insert(name.clone())
                && let Some(seen) = self.pod_seen.get(&name)
            {
                self.latencies.push(at.saturating_sub(*seen).as_secs_f64());
            }
        }
        if self.settled() {
            if self.counts.running >= self.wanted {
                self.all_running.get_or_insert(at);
            }
            if self.counts.ready >= self.wanted {
                self.all_ready.get_or_insert(at);
            }
        }
        before != (self.counts.running, self.counts.ready)
    }

    /// The timings, `at` the end of the wait.
    pub fn timings(&self, at: Duration) -> Timings {
        Timings {
            all_running: self.all_running.unwrap_or(at),
            all_ready: self.all_ready.unwrap_or(at),
            registration_p50: quantile(self.latencies.clone(), 0.5),
            registration_p99: quantile(self.latencies.clone(), 0.99),
        }
    }

    /// Nodes no pod of ours runs now that are ours to delete: a pod of ours
    /// had the name (before the apply, `pods_before`, or during this wait),
    /// or the Node is dead (NotReady). A Ready one no pod of ours ever ran is
    /// somebody else's live hollow node (another external cluster, same
    /// namespace name): never stale.
    pub fn stale_nodes(&self, pods_before: &BTreeSet<String>) -> Vec<String> {
        let mut stale: Vec<String> = self
            .nodes
            .iter()
            .filter(|(name, _)| !self.pods.contains_key(name.as_str()))
            .filter(|(name, ready)| {
                pods_before.contains(name.as_str())
                    || self.pod_seen.contains_key(name.as_str())
                    || !**ready
            })
            .map(|(name, _)| name.clone())
            .collect();
        stale.sort();
        stale
    }

    /// Who holds the wait up, for the stall diagnosis, from what the watches
    /// already hold: live pods not running, the Nodes of running pods that are
    /// not Ready, and how many running pods have no Node yet. Names sorted.
    pub fn laggards(&self) -> Laggards {
        let mut waiting: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, (live, running))| *live && !*running)
            .map(|(name, _)| name.clone())
            .collect();
        waiting.sort();
        let mut not_ready: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, (live, running))| *live && *running)
            .filter(|(name, _)| self.nodes.get(name.as_str()) == Some(&false))
            .map(|(name, _)| name.clone())
            .collect();
        not_ready.sort();
        let unregistered = self
            .pods
            .iter()
            .filter(|(name, (live, running))| {
                *live && *running && !self.nodes.contains_key(name.as_str())
            })
            .count();
        Laggards {
            waiting,
            not_ready,
            unregistered,
        }
    }

    /// (live, running) from a pod's row: STATUS and READY as `kubectl get pods` prints them.
    fn pod_state(cells: &Cells) -> (bool, bool) {
        let status = cells.get("Status");
        let live = status != "Terminating";
        let ready = cells
            .get("Ready")
            .split_once('/')
            .is_some_and(|(a, b)| a == b && b != "0");
        (live, live && status == "Running" && ready)
    }

    /// A node's row says Ready (`Ready`, `Ready,SchedulingDisabled`), not `NotReady`.
    fn node_ready(cells: &Cells) -> bool {
        cells.get("Status").split(',').any(|s| s == "Ready")
    }

    fn pods_update(&mut self, update: Update) -> Vec<String> {
        match update {
            Update::Upsert(name, cells) => {
                self.set_pod(&name, Some(Self::pod_state(&cells)));
                vec![name]
            }
            Update::Delete(name) => {
                self.set_pod(&name, None);
                vec![name]
            }
            Update::Reset(rows) => {
                let fresh: HashMap<String, (bool, bool)> = rows
                    .iter()
                    .map(|(n, c)| (n.clone(), Self::pod_state(c)))
                    .collect();
                let names: Vec<String> = self.pods.keys().chain(fresh.keys()).cloned().collect();
                for name in &names {
                    self.set_pod(name, fresh.get(name).copied());
                }
                names
            }
        }
    }

    fn nodes_update(&mut self, update: Update) -> Vec<String> {
        match update {
            Update::Upsert(name, cells) => {
                self.set_node(&name, Some(Self::node_ready(&cells)));
                vec![name]
            }
            Update::Delete(name) => {
                self.set_node(&name, None);
                vec![name]
            }
            Update::Reset(rows) => {
                let fresh: HashMap<String, bool> = rows
                    .iter()
                    .map(|(n, c)| (n.clone(), Self::node_ready(c)))
                    .collect();
                let names: Vec<String> = self.nodes.keys().chain(fresh.keys()).cloned().collect();
                for name in &names {
                    self.set_node(name, fresh.get(name).copied());
                }
                names
            }
        }
    }

    fn set_pod(&mut self, name: &str, new: Option<(bool, bool)>) {
        let old = self.pods.get(name).copied();
        if old == new {
            return;
        }
        let node_ready = self.nodes.get(name).copied().unwrap_or(false);
        let c = &mut self.counts;
        if let Some((live, running)) = old {
            c.pods -= 1;
            c.live -= usize::from(live);
            c.running -= usize::from(running);
            c.ready -= usize::from(live && node_ready);
        }
        match new {
            Some((live, running)) => {
                c.pods += 1;
                c.live += usize::from(live);
                c.running += usize::from(running);
                c.ready += usize::from(live && node_ready);
                self.pods.insert(name.to_owned(), (live, running));
            }
            None => {
                self.pods.remove(name);
            }
        }
    }

    fn set_node(&mut self, name: &str, new: Option<bool>) {
        let old = self.nodes.get(name).copied();
        if old == new {
            return;
        }
        let live = self.pods.get(name).is_some_and(|(l, _)| *l);
        self.counts.ready -= usize::from(old == Some(true) && live);
        self.counts.ready += usize::from(new == Some(true) && live);
        match new {
            Some(r) => {
                self.nodes.insert(name.to_owned(), r);
            }
            None => {
                self.nodes.remove(name);
            }
        }
    }

    fn is_ready(&self, name: &str) -> bool {
        self.nodes.get(name) == Some(&true) && self.pods.get(name).is_some_and(|(l, _)| *l)
    }
}

fn quantile(mut xs: Vec<f64>, q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    Some(xs[((xs.len() - 1) as f64 * q).round() as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod row: `Status` and `Ready` as `kubectl get pods` prints them.
    fn pod(name: &str, status: &str, ready: &str) -> Input {
        Input::Pods(Update::Upsert(
            name.into(),
            Cells::from_pairs(&[("Ready", ready), ("Status", status)]),
        ))
    }

    fn node(name: &str, status: &str) -> Input {
        Input::Nodes(Update::Upsert(
            name.into(),
            Cells::from_pairs(&[("Status", status)]),
        ))
    }

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    /// Each row: the input, then (pods, live, running, ready, done) after it.
    #[test]
    fn the_counts_as_a_table() {
        let mut t = Tally::new(2);
        // (pods, live, running, ready, done)
        type After = (usize, usize, usize, usize, bool);
        let table: Vec<(Input, After)> = vec![
            (pod("a", "Pending", "0/1"), (1, 1, 0, 0, false)),
            (node("a", "Ready"), (1, 1, 0, 1, false)),
            (pod("a", "Running", "1/1"), (1, 1, 1, 1, false)),
            (pod("b", "Running", "1/2"), (2, 2, 1, 1, false)),
            (pod("b", "Running", "2/2"), (2, 2, 2, 1, false)),
            (node("b", "NotReady"), (2, 2, 2, 1, false)),
            (node("b", "Ready,SchedulingDisabled"), (2, 2, 2, 2, true)),
            // A third pod (the RC adjusting) unsettles it, terminating or not.
            (pod("c", "Terminating", "1/1"), (3, 2, 2, 2, false)),
            (Input::Pods(Update::Delete("c".into())), (2, 2, 2, 2, true)),
            // A pod going away takes its node's readiness with it.
            (Input::Pods(Update::Delete("a".into())), (1, 1, 1, 1, false)),
            // A relist replaces what was known.
            (
                Input::Pods(Update::Reset(vec![
                    (
                        "a".into(),
                        Cells::from_pairs(&[("Ready", "1/1"), ("Status", "Running")]),
                    ),
                    (
                        "b".into(),
                        Cells::from_pairs(&[("Ready", "2/2"), ("Status", "Running")]),
                    ),
                ])),
                (2, 2, 2, 2, true),
            ),
            (Input::Nodes(Update::Reset(vec![])), (2, 2, 2, 0, false)),
        ];
        for (i, (input, (pods, live, running, ready, done))) in table.into_iter().enumerate() {
            let label = format!("row {i}: {input:?}");
            t.fold(input, s(i as u64));
            assert_eq!(
                t.counts(),
                Counts {
                    pods,
                    live,
                    running,
                    ready
                },
                "{label}"
            );
            assert_eq!(t.done(), done, "{label}");
        }
    }

    #[test]
    fn timings_and_latencies_come_from_the_fold_alone() {
        let mut t = Tally::new(2);
        assert!(t.fold(pod("a", "Running", "1/1"), s(1)));
        assert!(
            !t.fold(node("x", "Ready"), s(2)),
            "a node without a pod counts nothing"
        );
        t.fold(pod("b", "Pending", "0/1"), s(3));
        t.fold(node("a", "Ready"), s(5));
        t.fold(pod("b", "Running", "1/1"), s(8));
        t.fold(node("b", "Ready"), s(13));
        assert!(t.done());
        let timings = t.timings(s(20));
        assert_eq!(timings.all_running, s(8));
        assert_eq!(timings.all_ready, s(13));
        // a: seen at 1, Ready at 5; b: seen at 3, Ready at 13.
        assert_eq!(timings.registration_p50, Some(10.0));
        assert_eq!(timings.registration_p99, Some(10.0));
        assert_eq!(Tally::new(1).timings(s(7)).all_ready, s(7));
    }

    #[test]
    fn laggards_come_from_the_rows_alone() {
        let mut t = Tally::new(4);
        t.fold(pod("pending", "Pending", "0/1"), s(0));
        t.fold(pod("crashing", "Running", "0/1"), s(0));
        t.fold(pod("unready-node", "Running", "1/1"), s(0));
        t.fold(node("unready-node", "NotReady"), s(0));
        t.fold(pod("unregistered", "Running", "1/1"), s(0));
        t.fold(pod("fine", "Running", "1/1"), s(0));
        t.fold(node("fine", "Ready"), s(0));
        t.fold(pod("going", "Terminating", "0/1"), s(0));
        assert_eq!(
            t.laggards(),
            Laggards {
                waiting: vec!["crashing".into(), "pending".into()],
                not_ready: vec!["unready-node".into()],
                unregistered: 1,
            }
        );
    }

    #[test]
    fn stale_nodes_are_only_those_a_pod_of_ours_ran_or_dead_ones() {
        let mut t = Tally::new(1);
        t.fold(pod("kept", "Running", "1/1"), s(0));
        t.fold(node("kept", "Ready"), s(0));
        t.fold(pod("scaled-away", "Running", "1/1"), s(0));
        t.fold(Input::Pods(Update::Delete("scaled-away".into())), s(1));
        for name in ["scaled-away", "before-apply", "someone-elses"] {
            t.fold(node(name, "Ready"), s(1));
        }
        t.fold(node("dead", "NotReady"), s(1));
        let before: BTreeSet<String> = ["before-apply".to_owned()].into();
        assert_eq!(
            t.stale_nodes(&before),
            vec!["before-apply", "dead", "scaled-away"]
        );
    }
}
