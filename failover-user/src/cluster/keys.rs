//! What the nodes keep in etcd, and where. Everything under
//! `/failover/v1/<cluster>/`:
//!
//! | key | value | lease |
//! | --- | --- | --- |
//! | `nodes/<node>` | [`NodeInfo`] | the node's |
//! | `obs/<node>` | [`Observation`]: its own checks' view | the node's |
//! | `election` (etcd election) | the leader's node name | the leader's |
//! | `decision` | [`Decision`]: numbered, written by the leader only | none |
//! | `ack/<node>` | [`Ack`]: the decision it applied, its tables' hash | the node's |
//! | `admin/<service>/<backend>` | [`AdminOverride`]: an operator's drain or disable | none |
//! | `promote/<service>/<number>` | [`PromoteRecord`]: the promote hook of decision `number` started (at most once: a create-only transaction) | none |
//! | `release/<service>/<backend>` | an operator's release of a fenced backend (the leader consumes it) | none |
//!
//! A node's keys vanish with its lease, so the leader's view of who is in
//! the cluster is etcd's, never a timer of its own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::State;

pub fn nodes(prefix: &str) -> String {
    format!("{prefix}nodes/")
}
pub fn node(prefix: &str, node: &str) -> String {
    format!("{prefix}nodes/{node}")
}
pub fn obs(prefix: &str) -> String {
    format!("{prefix}obs/")
}
pub fn obs_of(prefix: &str, node: &str) -> String {
    format!("{prefix}obs/{node}")
}
pub fn election(prefix: &str) -> String {
    format!("{prefix}election")
}
pub fn decision(prefix: &str) -> String {
    format!("{prefix}decision")
}
pub fn acks(prefix: &str) -> String {
    format!("{prefix}ack/")
}
pub fn ack_of(prefix: &str, node: &str) -> String {
    format!("{prefix}ack/{node}")
}
pub fn promote_of(prefix: &str, service: &str, number: u64) -> String {
    format!("{prefix}promote/{service}/{number:020}")
}
pub fn promotes(prefix: &str) -> String {
    format!("{prefix}promote/")
}
pub fn releases(prefix: &str) -> String {
    format!("{prefix}release/")
}
pub fn release_of(prefix: &str, service: &str, backend: &str) -> String {
    format!("{prefix}release/{service}/{backend}")
}
pub fn admin(prefix: &str) -> String {
    format!("{prefix}admin/")
}
pub fn admin_of(prefix: &str, service: &str, backend: &str) -> String {
    format!("{prefix}admin/{service}/{backend}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node: String,
    pub pid: u32,
    /// A hash of the services as this node's config has them: nodes with
    /// different configs would build different tables.
    pub config_hash: String,
}

/// A node's own view: each backend's health by its own checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Observation {
    pub node: String,
    /// service -> backend -> healthy (up or suspect by its checks).
    pub services: BTreeMap<String, BTreeMap<String, bool>>,
    /// Operator actions given to this node (its API, its Alertmanager
    /// webhook): service -> backend -> override. The leader applies the
    /// union over the live nodes, so an action given to any node holds
    /// cluster-wide (and survives the node's restart: its states file).
    #[serde(default)]
    pub overrides: BTreeMap<String, BTreeMap<String, AdminOverride>>,
    /// Services with roles: the backends this node probes with the active
    /// check (the others get the standby check). The leader counts a
    /// health only if it was taken with the check the backend's decided
    /// role wants.
    #[serde(default)]
    pub active_checked: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// Planned switchovers asked of this node: service -> the standby to
    /// make the active.
    #[serde(default)]
    pub switch_to: BTreeMap<String, String>,
}

/// The agreed state of every backend, numbered. Only the elected leader
/// writes it (a transaction on its election key), and the number only
/// grows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Decision {
    pub number: u64,
    pub leader: String,
    /// service -> backend -> state.
    pub services: BTreeMap<String, BTreeMap<String, State>>,
    /// service -> backend -> healthy as agreed (the majority of the live
    /// nodes' observations, with hysteresis); the next decision starts
    /// from it.
    #[serde(default)]
    pub health: BTreeMap<String, BTreeMap<String, bool>>,
    /// Why it changed (for the event and the audit).
    pub why: String,
    /// Services with `[service.promotion]`: the active (absent: none
    /// serves; a promotion is due or failed).
    #[serde(default)]
    pub active: BTreeMap<String, String>,
    /// Services with `[service.promotion]`: former actives (and standbys
    /// whose promotion failed), out until an operator releases them
    /// (`release/<service>/<backend>`).
    #[serde(default)]
    pub fenced: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// Former actives fenced by a planned switchover: unfenced once the
    /// nodes agree they pass the standby check.
    #[serde(default)]
    pub planned: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// A planned switchover under way: the standby to promote.
    #[serde(default)]
    pub switch_to: BTreeMap<String, String>,
    /// The active lost in the fence a promotion is under way for (the
    /// fence hook's target).
    #[serde(default)]
    pub lost_active: BTreeMap<String, String>,
    /// Services whose promotion failed, and why: nothing is tried again
    /// until the candidates change (a fenced backend released).
    #[serde(default)]
    pub failed: BTreeMap<String, String>,
    /// A fence: the step of a tier change of an active-passive service in
    /// which nothing of either tier takes new flows, until every node has
    /// acknowledged it (or its lease lapsed).
    pub fence: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub node: String,
    pub number: u64,
    /// A hash of the Maglev tables this node built for the decision.
    pub tables: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminOverride {
    Drain,
    /// Wins over a drain.
    Disable,
}

/// A promote hook's run, recorded before the hook starts: a leader that
/// takes over finds it and never runs the hook for that decision again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromoteRecord {
    pub service: String,
    /// The fencing token: the number of the fence decision.
    pub token: u64,
    pub candidate: String,
    pub leader: String,
    /// `started`, `hook-ok`, `hook-failed`, `done`, `not-ready`.
    pub state: String,
}
