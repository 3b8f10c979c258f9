//! The TOML config: parsing, validation, and the typed model the rest of the
//! daemon works from. Validation collects every error with its field path
//! (`service[0].backend[1].address: ...`) and changes nothing.
//!
//! A minimal service needs only `vip`, `port` and backends:
//!
//! ```toml
//! [daemon]
//! interfaces = ["eth0"]
//!
//! [[service]]
//! name = "web"
//! vip = "198.18.0.10"
//! port = 80
//!
//! [[service.backend]]
//! name = "primary"
//! address = "198.18.1.2"
//!
//! [[service.backend]]
//! name = "standby"
//! address = "198.18.2.2"
//! tier = 1
//! ```

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use failover_common::{FlowTimeouts, MAX_TIER_MEMBERS, MAX_TIERS, defaults};
use serde::Deserialize;

pub use crate::model::{Cause, Damping, Failback, FlowsOnDown};
mod admin;
mod check;
mod cluster;
mod diff;
mod file;
mod passive;
mod promotion;
mod raw;

pub use self::cluster::{Bgp, Cluster, CutOff, Etcd, Failsafe};
pub use self::diff::diff;
use self::{admin::*, check::*, cluster::*, file::*, passive::*, promotion::*, raw::*};
use crate::{maglev, model::AdminAction, probe::ProbeSpec, sys::http_client::TlsOptions};

/// Default pin directory on bpffs.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/failover";
/// Default directory for the daemon's state files (layout, ...).
pub const DEFAULT_STATE_DIR: &str = "/run/failover";
/// Who hooks and exec probes run as by default.
pub const DEFAULT_RUN_AS: &str = "nobody";
/// The audit log with the default state directory (kept across reboots).
pub const DEFAULT_AUDIT_FILE: &str = "/var/lib/failover/audit.jsonl";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => failover_common::PROTO_TCP,
            Protocol::Udp => failover_common::PROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Destination rewritten to the backend; replies translated back.
    #[default]
    Nat,
    /// Only MACs rewritten; backends hold the VIP on loopback.
    Dsr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NoBackend {
    /// Drop the packet (counted): the VIP fails closed.
    #[default]
    Drop,
    /// Hand the packet to the host stack (counted).
    Pass,
    /// TCP: answer with a RST, so a client's connect fails at once (and
    /// its retry comes as soon as a backend serves again) instead of
    /// waiting a second for its SYN to be retransmitted; other packets are
    /// dropped (counted).
    Reset,
    /// The health agent never marks the last healthy backend of the service
    /// down (it stays in the map, an alert event is raised); if the dataplane
    /// still finds none (admin states), packets are dropped.
    #[serde(rename = "keep-last")]
    KeepLast,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialState {
    #[default]
    Up,
    Down,
    Draining,
    Disabled,
}

impl InitialState {
    pub fn word(self) -> u32 {
        match self {
            InitialState::Up => failover_common::STATE_UP,
            InitialState::Down => failover_common::STATE_DOWN,
            InitialState::Draining => failover_common::STATE_DRAINING,
            InitialState::Disabled => failover_common::STATE_DISABLED,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeCfg {
    /// Native (driver) mode, falling back to generic mode with a warning when
    /// the driver has no XDP support.
    #[default]
    Auto,
    Native,
    Generic,
}

/// Alertmanager label names and what a firing alert does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertmanagerCfg {
    pub service_label: String,
    pub backend_label: String,
    /// `drain` or `disable`.
    pub action: AdminAction,
}

/// Failure detection in the datapath (`[service.passive]`): the XDP
/// program marks a backend down itself when it sees `failures` signals
/// within `window` (no success between); the agent confirms with probes
/// within `confirm_within`, or restores it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Passive {
    /// Bit `failover_common::SIG_*` set per signal that counts.
    pub signals: u32,
    pub failures: u32,
    pub window: Duration,
    /// New flows unanswered this long count (`no-reply`).
    pub no_reply: Duration,
    /// At most this fraction of a tier (at least one backend) may be down
    /// by the datapath's marks at once.
    pub max_ejection: f64,
    pub confirm_within: Duration,
}

/// Names of the passive signals, by `SIG_*` bit.
pub const PASSIVE_SIGNALS: [&str; 4] = ["rst", "icmp", "syn-retransmit", "no-reply"];

impl Passive {
    /// The guard rail of a tier of `members`: max(1, floor(fraction x n)).
    pub fn limit(&self, members: usize) -> u64 {
        ((self.max_ejection * members as f64).floor() as u64).max(1)
    }

    /// The signals on, by name.
    pub fn signal_names(&self) -> Vec<&'static str> {
        PASSIVE_SIGNALS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.signals & (1 << i) != 0)
            .map(|(_, n)| *n)
            .collect()
    }
}

/// A health check.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub probe: ProbeSpec,
    pub interval: Duration,
    /// Used while a backend is suspect (failing, not yet down).
    pub fast_interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Random spread of each interval, as a fraction (0.1 = +-10%).
    pub jitter: f64,
    /// Port probed (default: the backend's port).
    pub port: Option<u16>,
}

/// Which events run a hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HookEvent {
    /// The service's serving tier changed, or it has no healthy backend.
    Failover,
    /// Any backend state change.
    State,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HookCfg {
    pub hook: Hook,
    pub events: Vec<HookEvent>,
}

/// Parses "250us", "10ms", "1s", "1.5s", "2m", "1h".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or_else(|| format!("{s:?}: missing a unit (us, ms, s, m, h)"))?;
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: not a number followed by a unit"))?;
    let scale = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use us, ms, s, m, h)"
            ));
        }
    };
    let secs = v * scale;
    if !secs.is_finite() || !(0.0..=86400.0 * 365.0).contains(&secs) {
        return Err(format!("{s:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// What a hook does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookSpec {
    /// Run `command[0]` with `command[1..]` as arguments directly — never
    /// through a shell, arguments never interpolated. stdin gets the event
    /// JSON followed by a newline (then closed). Environment: the caller's
    /// `env` pairs are added (e.g. FAILOVER_SERVICE=web); plus
    /// FAILOVER_EVENT=<the event JSON>. Healthy outcome = exit status 0.
    /// stdout/stderr captured (first 4 KiB each kept for the outcome detail).
    Exec { command: Vec<String> },
    /// HTTP/1.1 POST of the event JSON to `url` (`http[s]://IP[:PORT]/PATH`,
    /// IPv6 in brackets, default port 80/443, no DNS). Success = a 2xx
    /// status.
    Webhook { url: String, tls: TlsOptions },
}

/// A configured hook: what it runs, bounded by `timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub name: String,
    pub spec: HookSpec,
    pub timeout: Duration,
}

/// Admin API requests per second per listener, by default.
pub const DEFAULT_RATE_LIMIT: u32 = 50;

/// The admin API, metrics and audit settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Unix socket of the admin API (0600).
    pub socket: PathBuf,
    /// Optional TCP listener of the admin API (requires a token).
    pub listen: Option<std::net::SocketAddr>,
    pub token_file: Option<PathBuf>,
    /// Prometheus `/metrics` listener (`None`: off).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The tamper-evident audit log (JSON lines).
    pub audit_file: PathBuf,
    pub alertmanager: AlertmanagerCfg,
    /// Requests per second each admin/metrics listener answers (a burst of
    /// as many); beyond that 429. 0: no limit.
    pub rate_limit: u32,
}

// ------------------------------------------------------------- typed model

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub daemon: Daemon,
    pub limits: Limits,
    pub services: Vec<Service>,
    pub admin: Admin,
    /// `[cluster]`: several nodes behind BGP, agreeing through etcd.
    pub cluster: Option<Cluster>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Daemon {
    pub interfaces: Vec<String>,
    pub bpffs: PathBuf,
    pub state_dir: PathBuf,
    pub xdp_mode: XdpModeCfg,
    /// Events are appended here as JSON lines (they also go to the log).
    pub events_file: Option<PathBuf>,
    /// After attaching, keep only CAP_BPF (see `caps.rs`). Default true.
    pub drop_capabilities: bool,
    /// The user hooks and exec probes run as (a name, or `UID:GID`);
    /// default `nobody`. Never root's privileges: they get no capability.
    pub run_as: String,
}

/// Map capacities, applied when the program is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_services: u32,
    pub max_vip_addresses: u32,
    /// Tiers across all services (two Maglev tables each).
    pub max_tiers: u32,
    pub max_backends: u32,
    pub conntrack_entries: u32,
    /// Flows not verified yet (handshakes in progress): the table a SYN
    /// flood fills.
    pub embryonic_entries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_services: defaults::MAX_SERVICES,
            max_vip_addresses: defaults::MAX_VIP_ADDRS,
            max_tiers: defaults::MAX_TIERS_TOTAL,
            max_backends: defaults::MAX_BACKENDS,
            conntrack_entries: defaults::CONNTRACK_ENTRIES,
            embryonic_entries: defaults::EMBRYONIC_ENTRIES,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    pub on_no_backend: NoBackend,
    pub table_size: u32,
    /// Tiers in priority order (index 0 first); each non-empty.
    pub tiers: Vec<Vec<Backend>>,
    /// `None`: no health checks (states come from the config/operator).
    pub check: Option<Check>,
    pub failback: Failback,
    pub flows_on_down: FlowsOnDown,
    pub damping: Damping,
    pub hooks: Vec<HookCfg>,
    /// `None`: no passive detection.
    pub passive: Option<Passive>,
    /// Idle timeouts of the service's flows.
    pub timeouts: FlowTimeouts,
    /// `None`: tiers fail over by the map alone (no roles).
    pub promotion: Option<Promotion>,
}

/// `[service.promotion]`: an active-passive service whose standby must be
/// promoted before it can serve (a database). One backend is active (at
/// first the tier-0 one); the others are standbys, checked by
/// `standby_check` (the service's `[service.check]` is the active check:
/// "can serve as active"). When the active is lost for a cause in `on`, the
/// agent fences it (no new flows; its established flows per
/// `flows_on_down`; the `fence` hook), runs `promote` for the best healthy
/// standby with a fencing token, waits until that standby passes the active
/// check (within `ready_within`), and only then switches the map to it, in
/// one write. A failed hook or deadline tries the next standby, or stops in
/// `promotion-failed`: no standby whose promotion failed ever serves.
#[derive(Debug, Clone, PartialEq)]
pub struct Promotion {
    /// The check of backends that are not active: "a healthy standby".
    pub standby_check: Check,
    /// Run for the standby to promote (exec; `{backend}`, `{address}`,
    /// `{port}`, `{token}` in its arguments are replaced).
    pub promote: Hook,
    /// Run for the active being fenced, before any promotion; its failure
    /// stops the promotion (`promotion-failed`).
    pub fence: Option<Hook>,
    /// How long a promoted standby has to pass the active check.
    pub ready_within: Duration,
    /// Which causes of losing the active start a promotion.
    pub on: Vec<Cause>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub state: InitialState,
}

impl Backend {
    /// Stable identity used to place the backend in the Maglev table.
    pub fn key(&self) -> String {
        format!("{}:{}", self.address, self.port)
    }
}

// ------------------------------------------------------------------ errors

/// One problem in the config, with the path of the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Everything wrong with a config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("{}", render(.0))]
    Invalid(Vec<FieldError>),
}

fn render(errors: &[FieldError]) -> String {
    let mut s = format!("{} error(s) in the config:", errors.len());
    for e in errors {
        s.push_str("\n  ");
        s.push_str(&e.to_string());
    }
    s
}

impl ConfigError {
    /// The individual field errors (empty for read/syntax errors).
    pub fn fields(&self) -> &[FieldError] {
        match self {
            ConfigError::Invalid(v) => v,
            _ => &[],
        }
    }
}

struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

// -------------------------------------------------------------- validation

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses and validates config text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: origin.to_string(),
        message: e.to_string().trim_end().to_string(),
    })?;
    validate(raw)
}

#[cfg(test)]
mod tests;
