//! The daemon's shared vocabulary, at the bottom of the module graph: a
//! backend's health state, operator actions, the flow and failback
//! policies, and the dataplane's state words. Every other module may use
//! it; it uses none of them (`tests/module_graph.rs` keeps it so).

use std::time::Duration;

use failover_common::{STATE_DISABLED, STATE_DOWN, STATE_DOWN_RESET, STATE_DRAINING, STATE_UP};
use serde::{Deserialize, Serialize};

/// A backend's health state, as the agent's state machine holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Up,
    Suspect,
    Down,
    Draining,
    Disabled,
}

impl State {
    /// Whether the dataplane may send new flows to it.
    pub fn serving(self) -> bool {
        matches!(self, State::Up | State::Suspect)
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Suspect => "suspect",
            State::Down => "down",
            State::Draining => "draining",
            State::Disabled => "disabled",
        }
    }
}

/// What happens to established flows of a backend that goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowsOnDown {
    /// Rehash on their next packet (to a healthy backend).
    #[default]
    Move,
    /// Keep them on the down backend (drain-like); new flows go elsewhere.
    Keep,
    /// TCP: the dataplane answers their next packet with a RST, so clients
    /// reconnect at once (to a healthy backend); other flows move.
    Reset,
}

/// When a recovered backend takes traffic back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failback {
    /// As soon as it has passed `rise` checks.
    Auto,
    /// Only after an operator says so.
    Manual,
    /// After it has stayed healthy for this long (after `rise`).
    HoldDown(Duration),
}

/// Flap damping: at most `max_changes` state changes of one backend within
/// `window` bring it back up; beyond that it stays down until the window
/// allows (going down is never delayed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damping {
    pub max_changes: u32,
    pub window: Duration,
}

/// An operator action on one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminAction {
    /// Keep its flows, no new ones.
    Drain,
    /// Lift a drain (back to what probes say).
    Undrain,
    /// Take it out (flows move).
    Disable,
    /// Lift a disable.
    Enable,
    /// Let a backend held down by manual failback (or hold-down) back in;
    /// a fenced one (roles) only if it passes the standby check.
    Release,
    /// `release --force`: a fenced backend without its standby check
    /// (audited like every admin request).
    ForceRelease,
}

impl AdminAction {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "drain" => Self::Drain,
            "undrain" => Self::Undrain,
            "disable" => Self::Disable,
            "enable" => Self::Enable,
            "release" => Self::Release,
            "force-release" => Self::ForceRelease,
            _ => return None,
        })
    }
}
/// Why an active backend was lost (or a promotion asked for): what an
/// orchestrated failover (`[service.promotion]`) and its hooks are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// Its active check failed `fall` times.
    Probe,
    /// A datapath mark confirmed by a failing probe.
    PassiveConfirmed,
    /// An operator drained or disabled it, or asked for a switchover.
    Operator,
    /// `failover drill`.
    Drill,
    /// A reload removed it.
    Reload,
    /// A cluster decision (agreed through etcd).
    Cluster,
}

impl Cause {
    pub fn name(self) -> &'static str {
        match self {
            Cause::Probe => "probe",
            Cause::PassiveConfirmed => "passive-confirmed",
            Cause::Operator => "operator",
            Cause::Drill => "drill",
            Cause::Reload => "reload",
            Cause::Cluster => "cluster",
        }
    }
}

/// A backend's role in a service with `[service.promotion]`: one active
/// takes the flows; standbys wait, checked by the standby check; a former
/// active is fenced until an operator releases it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Active,
    Standby,
    Fenced,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Standby => "standby",
            Role::Fenced => "fenced",
        }
    }
}

/// The state word the dataplane gets for a backend in `state`.
pub fn word_for(state: State, flows_on_down: FlowsOnDown) -> u32 {
    match state {
        State::Up | State::Suspect => STATE_UP,
        State::Draining => STATE_DRAINING,
        State::Disabled => STATE_DISABLED,
        State::Down => match flows_on_down {
            FlowsOnDown::Move => STATE_DOWN,
            FlowsOnDown::Keep => STATE_DRAINING,
            FlowsOnDown::Reset => STATE_DOWN_RESET,
        },
    }
}

/// A state word's name.
pub fn word_name(w: u32) -> &'static str {
    match w {
        STATE_UP => "up",
        STATE_DRAINING => "draining",
        STATE_DISABLED => "disabled",
        STATE_DOWN_RESET => "down-reset",
        _ => "down",
    }
}

/// Why an operator action was not carried out; the API maps each to its
/// status in one place (`admin::refusal`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("no backend {backend:?} in service {service:?}")]
    NoBackend { service: String, backend: String },
    /// The backend's state does not allow the action.
    #[error("{0}")]
    Conflict(String),
    /// The health agent is not running (or stopped meanwhile).
    #[error("the health agent is not running")]
    AgentDown,
}
