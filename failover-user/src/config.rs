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

pub use crate::model::{Damping, Failback, FlowsOnDown};
use crate::{
    hooks::{Hook, HookSpec},
    maglev,
    model::AdminAction,
    probe::ProbeSpec,
};

/// Default pin directory on bpffs.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/failover";
/// Default directory for the daemon's state files (layout, ...).
pub const DEFAULT_STATE_DIR: &str = "/run/failover";

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

// ---------------------------------------------------------------- raw TOML

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    alertmanager: RawAlertmanager,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    socket: Option<PathBuf>,
    listen: Option<String>,
    token_file: Option<PathBuf>,
    metrics_listen: Option<String>,
    audit_file: Option<PathBuf>,
    rate_limit: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAlertmanager {
    service_label: Option<String>,
    backend_label: Option<String>,
    action: Option<String>,
}

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

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    #[serde(default)]
    interfaces: Vec<String>,
    bpffs: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    #[serde(default)]
    xdp_mode: XdpModeCfg,
    events_file: Option<PathBuf>,
    drop_capabilities: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_services: Option<u32>,
    max_vip_addresses: Option<u32>,
    max_tiers: Option<u32>,
    max_backends: Option<u32>,
    conntrack_entries: Option<u32>,
    embryonic_entries: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    vip: String,
    port: u16,
    #[serde(default = "default_protocol")]
    protocol: Protocol,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    on_no_backend: NoBackend,
    table_size: Option<u32>,
    #[serde(default, rename = "backend")]
    backends: Vec<RawBackend>,
    #[serde(default)]
    check: RawCheck,
    failback: Option<String>,
    hold_down: Option<String>,
    #[serde(default)]
    flows_on_down: FlowsOnDown,
    #[serde(default)]
    damping: RawDamping,
    #[serde(default, rename = "hook")]
    hooks: Vec<RawHook>,
    passive: Option<RawPassive>,
    #[serde(default)]
    timeouts: RawTimeouts,
}

/// `[service.timeouts]`: idle timeouts of the service's flows per state.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    syn: Option<String>,
    established: Option<String>,
    closing: Option<String>,
    udp: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPassive {
    signals: Option<Vec<String>>,
    failures: Option<u32>,
    window: Option<String>,
    no_reply: Option<String>,
    max_ejection: Option<f64>,
    confirm_within: Option<String>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum CheckKind {
    #[default]
    Tcp,
    Http,
    Udp,
    Exec,
    None,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    #[serde(rename = "type", default)]
    kind: CheckKind,
    interval: Option<String>,
    fast_interval: Option<String>,
    timeout: Option<String>,
    rise: Option<u32>,
    fall: Option<u32>,
    jitter: Option<f64>,
    port: Option<u16>,
    path: Option<String>,
    host: Option<String>,
    expect_status: Option<Vec<toml::Value>>,
    expect_body: Option<String>,
    payload: Option<String>,
    expect: Option<String>,
    command: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDamping {
    max_changes: Option<u32>,
    window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    command: Option<Vec<String>>,
    url: Option<String>,
    ca_file: Option<PathBuf>,
    server_name: Option<String>,
    timeout: Option<String>,
    events: Option<Vec<HookEvent>>,
}

fn default_protocol() -> Protocol {
    Protocol::Tcp
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: String,
    address: String,
    port: Option<u16>,
    #[serde(default)]
    tier: u32,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    state: InitialState,
}

fn default_weight() -> u32 {
    1
}

// ------------------------------------------------------------- typed model

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub daemon: Daemon,
    pub limits: Limits,
    pub services: Vec<Service>,
    pub admin: Admin,
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

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.contains(['/', ':', '\0'])
        && !name.chars().any(char::is_whitespace)
}

/// `[service.passive]`: which signals make sense depends on the mode (in
/// DSR replies bypass the load balancer) and the protocol (the TCP ones).
fn validate_passive(
    errs: &mut Errors,
    p: &str,
    raw: RawPassive,
    mode: Mode,
    protocol: Protocol,
    checked: bool,
) -> Passive {
    let pp = format!("{p}.passive");
    if !checked {
        errs.push(
            pp.clone(),
            "needs a health check: the agent confirms every passive mark-down with probes",
        );
    }
    // Bits of the signals this mode and protocol can see.
    let possible: u32 = match (mode, protocol) {
        (Mode::Nat, Protocol::Tcp) => 0b1111,
        (Mode::Nat, Protocol::Udp) => 1 << failover_common::SIG_ICMP,
        (Mode::Dsr, Protocol::Tcp) => 1 << failover_common::SIG_SYN_RETX,
        (Mode::Dsr, Protocol::Udp) => 0,
    };
    let signals = match raw.signals {
        None => possible,
        Some(names) => {
            let mut bits = 0;
            for (i, n) in names.iter().enumerate() {
                match PASSIVE_SIGNALS.iter().position(|s| s == n) {
                    Some(b) if possible & (1 << b) != 0 => bits |= 1 << b,
                    Some(_) => errs.push(
                        format!("{pp}.signals[{i}]"),
                        format!(
                            "{n:?} cannot be seen in mode {mode:?} with {protocol:?}: {}",
                            if mode == Mode::Dsr {
                                "in DSR the backends' replies bypass the load balancer; only syn-retransmit (TCP) is seen"
                            } else {
                                "rst, syn-retransmit and no-reply are TCP signals; UDP has icmp"
                            }
                        ),
                    ),
                    None => errs.push(
                        format!("{pp}.signals[{i}]"),
                        format!("{n:?}: use {}", PASSIVE_SIGNALS.join(", ")),
                    ),
                }
            }
            bits
        }
    };
    if signals == 0 && possible == 0 {
        errs.push(
            pp.clone(),
            "no passive signal exists for UDP in DSR mode; remove [service.passive]",
        );
    } else if signals == 0 {
        errs.push(format!("{pp}.signals"), "empty: nothing would be detected");
    }
    let failures = raw.failures.unwrap_or(3);
    if failures == 0 || failures > 1000 {
        errs.push(
            format!("{pp}.failures"),
            format!("{failures} must be 1-1000"),
        );
    }
    let max_ejection = raw.max_ejection.unwrap_or(0.5);
    if !(max_ejection > 0.0 && max_ejection <= 1.0) {
        errs.push(
            format!("{pp}.max_ejection"),
            format!("{max_ejection} must be a fraction in (0, 1]"),
        );
    }
    Passive {
        signals,
        failures,
        window: duration(
            errs,
            &format!("{pp}.window"),
            raw.window.as_deref(),
            Duration::from_secs(10),
        ),
        no_reply: duration(
            errs,
            &format!("{pp}.no_reply"),
            raw.no_reply.as_deref(),
            Duration::from_secs(1),
        ),
        max_ejection,
        confirm_within: duration(
            errs,
            &format!("{pp}.confirm_within"),
            raw.confirm_within.as_deref(),
            Duration::from_secs(2),
        ),
    }
}

/// `[service.timeouts]`: each from 1 s to 24 days (the dataplane compares
/// 32-bit millisecond clocks).
fn validate_timeouts(errs: &mut Errors, p: &str, raw: &RawTimeouts) -> FlowTimeouts {
    let d = FlowTimeouts::DEFAULT;
    let mut one = |name: &str, v: &Option<String>, default: u32| -> u32 {
        let path = format!("{p}.timeouts.{name}");
        let t = duration(
            errs,
            &path,
            v.as_deref(),
            Duration::from_millis(default.into()),
        );
        if t < Duration::from_secs(1) || t > Duration::from_secs(24 * 86400) {
            errs.push(path, format!("{t:?} is out of range (1s to 24 days)"));
            return default;
        }
        t.as_millis() as u32
    };
    FlowTimeouts {
        syn_ms: one("syn", &raw.syn, d.syn_ms),
        established_ms: one("established", &raw.established, d.established_ms),
        closing_ms: one("closing", &raw.closing, d.closing_ms),
        udp_ms: one("udp", &raw.udp, d.udp_ms),
    }
}

fn duration(errs: &mut Errors, path: &str, v: Option<&str>, default: Duration) -> Duration {
    match v {
        None => default,
        Some(s) => match parse_duration(s) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                errs.push(path, "must be greater than zero");
                default
            }
            Err(e) => {
                errs.push(path, e);
                default
            }
        },
    }
}

/// "200", 200, "200-299", "2xx".
fn status_range(v: &toml::Value) -> Result<(u16, u16), String> {
    let s = match v {
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::String(s) => s.clone(),
        other => {
            return Err(format!(
                "{other}: use a code, a range \"200-299\" or a class \"2xx\""
            ));
        }
    };
    let code = |t: &str| -> Result<u16, String> {
        t.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
            .ok_or_else(|| format!("{t:?} is not an HTTP status code"))
    };
    if let Some(class) = s.strip_suffix("xx") {
        let c = code(&format!("{class}00"))?;
        return Ok((c, c + 99));
    }
    if let Some((a, b)) = s.split_once('-') {
        let (a, b) = (code(a)?, code(b)?);
        if a > b {
            return Err(format!("{s:?}: empty range"));
        }
        return Ok((a, b));
    }
    let c = code(&s)?;
    Ok((c, c))
}

fn validate_check(errs: &mut Errors, p: &str, c: RawCheck) -> Option<Check> {
    let cp = format!("{p}.check");
    let unused = |errs: &mut Errors, field: &str, set: bool, kinds: &str| {
        if set {
            errs.push(
                format!("{cp}.{field}"),
                format!("only used by {kinds} checks"),
            );
        }
    };
    unused(
        errs,
        "path",
        c.path.is_some() && c.kind != CheckKind::Http,
        "http",
    );
    unused(
        errs,
        "host",
        c.host.is_some() && c.kind != CheckKind::Http,
        "http",
    );
    unused(
        errs,
        "expect_status",
        c.expect_status.is_some() && c.kind != CheckKind::Http,
        "http",
    );
    unused(
        errs,
        "expect_body",
        c.expect_body.is_some() && c.kind != CheckKind::Http,
        "http",
    );
    unused(
        errs,
        "payload",
        c.payload.is_some() && c.kind != CheckKind::Udp,
        "udp",
    );
    unused(
        errs,
        "expect",
        c.expect.is_some() && c.kind != CheckKind::Udp,
        "udp",
    );
    unused(
        errs,
        "command",
        c.command.is_some() && c.kind != CheckKind::Exec,
        "exec",
    );
    let probe = match c.kind {
        CheckKind::None => return None,
        CheckKind::Tcp => ProbeSpec::Tcp,
        CheckKind::Http => {
            let path = c.path.unwrap_or_else(|| "/".to_string());
            if !path.starts_with('/')
                || path.chars().any(|ch| ch.is_whitespace() || ch.is_control())
            {
                errs.push(
                    format!("{cp}.path"),
                    format!("{path:?} must start with '/' and have no spaces"),
                );
            }
            if let Some(h) = &c.host
                && (h.is_empty() || h.chars().any(|ch| ch.is_whitespace() || ch.is_control()))
            {
                errs.push(
                    format!("{cp}.host"),
                    format!("{h:?} is not a valid Host header"),
                );
            }
            let mut expect_status = Vec::new();
            for (i, v) in c.expect_status.unwrap_or_default().iter().enumerate() {
                match status_range(v) {
                    Ok(r) => expect_status.push(r),
                    Err(e) => errs.push(format!("{cp}.expect_status[{i}]"), e),
                }
            }
            if expect_status.is_empty() {
                expect_status.push((200, 399));
            }
            ProbeSpec::Http {
                path,
                host: c.host,
                expect_status,
                expect_body: c.expect_body,
            }
        }
        CheckKind::Udp => ProbeSpec::Udp {
            payload: c.payload.unwrap_or_else(|| "ping".to_string()).into_bytes(),
            expect: c.expect.map(String::into_bytes),
        },
        CheckKind::Exec => match c.command {
            Some(command) if !command.is_empty() && !command[0].is_empty() => {
                ProbeSpec::Exec { command }
            }
            _ => {
                errs.push(
                    format!("{cp}.command"),
                    "an exec check needs a command (program and arguments, no shell)",
                );
                ProbeSpec::Tcp
            }
        },
    };
    let interval = duration(
        errs,
        &format!("{cp}.interval"),
        c.interval.as_deref(),
        Duration::from_secs(1),
    );
    let fast_interval = duration(
        errs,
        &format!("{cp}.fast_interval"),
        c.fast_interval.as_deref(),
        (interval / 4).max(Duration::from_millis(1)),
    );
    let timeout = duration(
        errs,
        &format!("{cp}.timeout"),
        c.timeout.as_deref(),
        interval.min(Duration::from_secs(2)),
    );
    if interval < Duration::from_millis(1) {
        errs.push(format!("{cp}.interval"), "must be at least 1ms");
    }
    let rise = c.rise.unwrap_or(2);
    let fall = c.fall.unwrap_or(3);
    for (f, v) in [("rise", rise), ("fall", fall)] {
        if v == 0 || v > 100 {
            errs.push(format!("{cp}.{f}"), format!("{v} must be 1-100"));
        }
    }
    let jitter = c.jitter.unwrap_or(0.1);
    if !(0.0..=0.5).contains(&jitter) {
        errs.push(
            format!("{cp}.jitter"),
            format!("{jitter} must be between 0 and 0.5"),
        );
    }
    if c.port == Some(0) {
        errs.push(format!("{cp}.port"), "must be 1-65535");
    }
    Some(Check {
        probe,
        interval,
        fast_interval,
        timeout,
        rise,
        fall,
        jitter,
        port: c.port,
    })
}

fn validate_admin(errs: &mut Errors, a: RawAdmin, am: RawAlertmanager, state_dir: &Path) -> Admin {
    let addr =
        |errs: &mut Errors, field: &str, v: Option<String>| -> Option<std::net::SocketAddr> {
            match v.as_deref() {
                None | Some("off") => None,
                Some(s) => match s.parse() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        errs.push(
                            format!("admin.{field}"),
                            format!("{s:?} is not ip:port (or \"off\")"),
                        );
                        None
                    }
                },
            }
        };
    let listen = addr(errs, "listen", a.listen);
    let metrics_listen = match a.metrics_listen {
        None => Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9477))),
        v => addr(errs, "metrics_listen", v),
    };
    if listen.is_some() && a.token_file.is_none() {
        errs.push(
            "admin.token_file",
            "required when admin.listen is set: TCP requests must carry a bearer token",
        );
    }
    for (f, p) in [
        ("socket", &a.socket),
        ("token_file", &a.token_file),
        ("audit_file", &a.audit_file),
    ] {
        if let Some(p) = p
            && !p.is_absolute()
        {
            errs.push(
                format!("admin.{f}"),
                format!("{} must be an absolute path", p.display()),
            );
        }
    }
    let action = match am.action.as_deref() {
        None | Some("drain") => AdminAction::Drain,
        Some("disable") => AdminAction::Disable,
        Some(other) => {
            errs.push(
                "alertmanager.action",
                format!("{other:?}: use \"drain\" or \"disable\""),
            );
            AdminAction::Drain
        }
    };
    Admin {
        socket: a.socket.unwrap_or_else(|| state_dir.join("admin.sock")),
        listen,
        token_file: a.token_file,
        metrics_listen,
        audit_file: a
            .audit_file
            .unwrap_or_else(|| state_dir.join("audit.jsonl")),
        alertmanager: AlertmanagerCfg {
            service_label: am.service_label.unwrap_or_else(|| "service".to_string()),
            backend_label: am.backend_label.unwrap_or_else(|| "backend".to_string()),
            action,
        },
        rate_limit: a.rate_limit.unwrap_or(DEFAULT_RATE_LIMIT),
    }
}

/// Admin API requests per second per listener, by default.
pub const DEFAULT_RATE_LIMIT: u32 = 50;

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut errs = Errors(Vec::new());

    // [daemon]
    let mut seen_if = BTreeSet::new();
    for (i, name) in raw.daemon.interfaces.iter().enumerate() {
        if !valid_ifname(name) {
            errs.push(
                format!("daemon.interfaces[{i}]"),
                format!("{name:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"),
            );
        } else if !seen_if.insert(name) {
            errs.push(
                format!("daemon.interfaces[{i}]"),
                format!("{name:?} is listed twice"),
            );
        }
    }
    let bpffs = raw
        .daemon
        .bpffs
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BPFFS));
    if !bpffs.is_absolute() {
        errs.push(
            "daemon.bpffs",
            format!("{} must be an absolute path", bpffs.display()),
        );
    }
    let state_dir = raw
        .daemon
        .state_dir
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    if !state_dir.is_absolute() {
        errs.push(
            "daemon.state_dir",
            format!("{} must be an absolute path", state_dir.display()),
        );
    }

    // [limits]
    let d = Limits::default();
    let mut limit = |field: &str, v: Option<u32>, default: u32, min: u32, max: u32| -> u32 {
        match v {
            None => default,
            Some(v) if v < min || v > max => {
                errs.push(
                    format!("limits.{field}"),
                    format!("{v} is out of range {min}..={max}"),
                );
                default
            }
            Some(v) => v,
        }
    };
    let limits = Limits {
        max_services: limit(
            "max_services",
            raw.limits.max_services,
            d.max_services,
            1,
            1 << 16,
        ),
        max_vip_addresses: limit(
            "max_vip_addresses",
            raw.limits.max_vip_addresses,
            d.max_vip_addresses,
            1,
            1 << 16,
        ),
        // Two tables of ~128 KiB per tier: 4096 tiers is already 1 GiB.
        max_tiers: limit("max_tiers", raw.limits.max_tiers, d.max_tiers, 1, 4096),
        max_backends: limit(
            "max_backends",
            raw.limits.max_backends,
            d.max_backends,
            1,
            1 << 20,
        ),
        conntrack_entries: limit(
            "conntrack_entries",
            raw.limits.conntrack_entries,
            d.conntrack_entries,
            16,
            1 << 26,
        ),
        embryonic_entries: limit(
            "embryonic_entries",
            raw.limits.embryonic_entries,
            d.embryonic_entries,
            16,
            1 << 26,
        ),
    };

    // [[service]]
    let mut services = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut endpoints: HashMap<(IpAddr, u16, Protocol), usize> = HashMap::new();
    // NAT backend endpoint -> (service index): replies are matched by it.
    let mut nat_backends: HashMap<(IpAddr, u16, Protocol), usize> = HashMap::new();
    let mut vip_addrs = BTreeSet::new();
    let mut total_tiers = 0u32;
    let mut total_backends = 0u32;

    for (si, s) in raw.services.into_iter().enumerate() {
        let p = format!("service[{si}]");
        if s.name.is_empty()
            || s.name.len() > 64
            || !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            errs.push(
                format!("{p}.name"),
                format!("{:?}: use 1-64 characters of [A-Za-z0-9._-]", s.name),
            );
        } else if let Some(prev) = names.insert(s.name.clone(), si) {
            errs.push(
                format!("{p}.name"),
                format!("{:?} is already the name of service[{prev}]", s.name),
            );
        }
        let vip: Option<IpAddr> = match s.vip.parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                errs.push(
                    format!("{p}.vip"),
                    format!("{:?} is not an IP address", s.vip),
                );
                None
            }
        };
        if let Some(ip) = vip
            && (ip.is_unspecified() || ip.is_multicast() || ip.is_loopback())
        {
            errs.push(
                format!("{p}.vip"),
                format!("{ip} cannot be a VIP (unspecified, multicast or loopback)"),
            );
        }
        if s.port == 0 {
            errs.push(format!("{p}.port"), "must be 1-65535");
        }
        if let Some(ip) = vip {
            vip_addrs.insert(ip);
            if let Some(prev) = endpoints.insert((ip, s.port, s.protocol), si) {
                errs.push(
                    format!("{p}.vip"),
                    format!(
                        "{ip} port {} {} is already service[{prev}]",
                        s.port, s.protocol
                    ),
                );
            }
        }
        let table_size = s.table_size.unwrap_or(maglev::DEFAULT_TABLE_SIZE);
        if !maglev::is_prime(table_size) || !(7..=maglev::MAX_TABLE_SIZE).contains(&table_size) {
            errs.push(
                format!("{p}.table_size"),
                format!(
                    "{table_size} must be a prime between 7 and {}",
                    maglev::MAX_TABLE_SIZE
                ),
            );
        }

        // Backends, grouped by tier.
        let mut by_tier: BTreeMap<u32, Vec<Backend>> = BTreeMap::new();
        let mut bnames = HashMap::new();
        let mut bkeys = HashMap::new();
        if s.backends.is_empty() {
            errs.push(
                format!("{p}.backend"),
                "a service needs at least one backend",
            );
        }
        for (bi, b) in s.backends.into_iter().enumerate() {
            let bp = format!("{p}.backend[{bi}]");
            if b.name.is_empty()
                || b.name.len() > 64
                || !b
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                errs.push(
                    format!("{bp}.name"),
                    format!("{:?}: use 1-64 characters of [A-Za-z0-9._-]", b.name),
                );
            } else if let Some(prev) = bnames.insert(b.name.clone(), bi) {
                errs.push(
                    format!("{bp}.name"),
                    format!("{:?} is already the name of backend[{prev}]", b.name),
                );
            }
            let address: Option<IpAddr> = match b.address.parse() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    errs.push(
                        format!("{bp}.address"),
                        format!("{:?} is not an IP address", b.address),
                    );
                    None
                }
            };
            let port = b.port.unwrap_or(s.port);
            // (A port inherited from the service is reported there.)
            if b.port == Some(0) {
                errs.push(format!("{bp}.port"), "must be 1-65535");
            }
            if b.weight == 0 || b.weight > 1000 {
                errs.push(
                    format!("{bp}.weight"),
                    format!("{} must be 1-1000", b.weight),
                );
            }
            if b.tier as usize >= MAX_TIERS {
                errs.push(
                    format!("{bp}.tier"),
                    format!("{} must be below {MAX_TIERS}", b.tier),
                );
            }
            let Some(address) = address else { continue };
            if address.is_unspecified() || address.is_multicast() {
                errs.push(
                    format!("{bp}.address"),
                    format!("{address} is not a unicast address"),
                );
            }
            if let Some(v) = vip
                && v.is_ipv4() != address.is_ipv4()
            {
                errs.push(
                    format!("{bp}.address"),
                    format!("{address} is not of the VIP's address family ({v})"),
                );
            }
            if let Some(prev) = bkeys.insert((address, port), bi) {
                errs.push(
                    format!("{bp}.address"),
                    format!("{address} port {port} is already backend[{prev}]"),
                );
            }
            if s.mode == Mode::Nat
                && let Some(prev) = nat_backends.insert((address, port, s.protocol), si)
                && prev != si
            {
                errs.push(
                    format!("{bp}.address"),
                    format!(
                        "{address} port {port} {} is also a NAT backend of service[{prev}]: replies \
                         could not be told apart (use another port)",
                        s.protocol
                    ),
                );
            }
            by_tier.entry(b.tier).or_default().push(Backend {
                name: b.name,
                address,
                port,
                weight: b.weight,
                state: b.state,
            });
        }
        for (tier, members) in &by_tier {
            if members.len() > MAX_TIER_MEMBERS {
                errs.push(
                    format!("{p}.backend"),
                    format!(
                        "tier {tier} has {} backends, at most {MAX_TIER_MEMBERS} per tier",
                        members.len()
                    ),
                );
            }
        }
        let tiers: Vec<Vec<Backend>> = by_tier.into_values().collect();
        let check = validate_check(&mut errs, &p, s.check);
        let failback = match (s.failback.as_deref(), &s.hold_down) {
            (None | Some("auto"), None) => Failback::Auto,
            (Some("manual"), None) => Failback::Manual,
            (Some("hold-down"), h) => {
                let d = duration(
                    &mut errs,
                    &format!("{p}.hold_down"),
                    h.as_deref(),
                    Duration::from_secs(30),
                );
                Failback::HoldDown(d)
            }
            (None | Some("auto" | "manual"), Some(_)) => {
                errs.push(
                    format!("{p}.hold_down"),
                    "only used with failback = \"hold-down\"",
                );
                Failback::Auto
            }
            (Some(other), _) => {
                errs.push(
                    format!("{p}.failback"),
                    format!("{other:?}: use \"auto\", \"manual\" or \"hold-down\""),
                );
                Failback::Auto
            }
        };
        let max_changes = s.damping.max_changes.unwrap_or(6);
        if max_changes == 0 || max_changes > 1000 {
            errs.push(
                format!("{p}.damping.max_changes"),
                format!("{max_changes} must be 1-1000"),
            );
        }
        let window = duration(
            &mut errs,
            &format!("{p}.damping.window"),
            s.damping.window.as_deref(),
            Duration::from_secs(60),
        );
        let damping = Damping {
            max_changes,
            window,
        };
        let mut hooks = Vec::new();
        let mut hook_names = HashMap::new();
        for (hi, h) in s.hooks.into_iter().enumerate() {
            let hp = format!("{p}.hook[{hi}]");
            if let Some(prev) = hook_names.insert(h.name.clone(), hi) {
                errs.push(
                    format!("{hp}.name"),
                    format!("{:?} is already the name of hook[{prev}]", h.name),
                );
            }
            let timeout = duration(
                &mut errs,
                &format!("{hp}.timeout"),
                h.timeout.as_deref(),
                Duration::from_secs(10),
            );
            let spec = match (h.kind.as_str(), h.command, h.url) {
                ("exec", Some(command), None) if !command.is_empty() && !command[0].is_empty() => {
                    HookSpec::Exec { command }
                }
                ("exec", _, None) => {
                    errs.push(
                        format!("{hp}.command"),
                        "an exec hook needs a non-empty command (program and arguments, no shell)",
                    );
                    continue;
                }
                ("webhook", None, Some(url)) => {
                    if let Err(e) = crate::hooks::parse_webhook_url(&url) {
                        errs.push(format!("{hp}.url"), e);
                    }
                    let tls = crate::hooks::TlsOptions {
                        ca_file: h.ca_file,
                        server_name: h.server_name,
                    };
                    if crate::hooks::is_https(&url) {
                        // Read and check the CA file now: a broken one is a
                        // config error, not a failed hook run later.
                        if let Err(e) = crate::hooks::client_config(&tls) {
                            errs.push(format!("{hp}.ca_file"), e);
                        }
                        if let (Some(_), Err(e)) = (
                            &tls.server_name,
                            crate::hooks::server_name(&tls, std::net::Ipv4Addr::LOCALHOST.into()),
                        ) {
                            errs.push(format!("{hp}.server_name"), e);
                        }
                    } else if tls.ca_file.is_some() || tls.server_name.is_some() {
                        errs.push(
                            hp.clone(),
                            "ca_file and server_name are for https:// urls only",
                        );
                    }
                    HookSpec::Webhook { url, tls }
                }
                ("webhook", _, None) => {
                    errs.push(format!("{hp}.url"), "a webhook hook needs a url");
                    continue;
                }
                ("exec" | "webhook", _, _) => {
                    errs.push(
                        hp.clone(),
                        "give `command` for an exec hook or `url` for a webhook, not both",
                    );
                    continue;
                }
                (other, _, _) => {
                    errs.push(
                        format!("{hp}.type"),
                        format!("{other:?}: use \"exec\" or \"webhook\""),
                    );
                    continue;
                }
            };
            let events = h.events.unwrap_or_else(|| vec![HookEvent::Failover]);
            if events.is_empty() {
                errs.push(format!("{hp}.events"), "empty: the hook would never run");
            }
            hooks.push(HookCfg {
                hook: Hook {
                    name: h.name,
                    spec,
                    timeout,
                },
                events,
            });
        }
        let passive = s
            .passive
            .map(|raw| validate_passive(&mut errs, &p, raw, s.mode, s.protocol, check.is_some()));
        let timeouts = validate_timeouts(&mut errs, &p, &s.timeouts);
        total_tiers += tiers.len() as u32;
        total_backends += tiers.iter().map(|t| t.len() as u32).sum::<u32>();
        if let Some(vip) = vip {
            services.push(Service {
                name: s.name,
                vip,
                port: s.port,
                protocol: s.protocol,
                mode: s.mode,
                on_no_backend: s.on_no_backend,
                table_size,
                tiers,
                check,
                failback,
                flows_on_down: s.flows_on_down,
                damping,
                hooks,
                passive,
                timeouts,
            });
        }
    }
    if services.len() as u32 > limits.max_services {
        errs.push(
            "service",
            format!(
                "{} services, limits.max_services is {}",
                services.len(),
                limits.max_services
            ),
        );
    }
    if vip_addrs.len() as u32 > limits.max_vip_addresses {
        errs.push(
            "service",
            format!(
                "{} VIP addresses, limits.max_vip_addresses is {}",
                vip_addrs.len(),
                limits.max_vip_addresses
            ),
        );
    }
    if total_tiers > limits.max_tiers {
        errs.push(
            "service",
            format!(
                "{total_tiers} tiers in all, limits.max_tiers is {}",
                limits.max_tiers
            ),
        );
    }
    if total_backends > limits.max_backends {
        errs.push(
            "service",
            format!(
                "{total_backends} backends in all, limits.max_backends is {}",
                limits.max_backends
            ),
        );
    }

    let admin = validate_admin(&mut errs, raw.admin, raw.alertmanager, &state_dir);
    if !errs.0.is_empty() {
        return Err(ConfigError::Invalid(errs.0));
    }
    Ok(Config {
        admin,
        daemon: Daemon {
            interfaces: raw.daemon.interfaces,
            bpffs,
            state_dir,
            xdp_mode: raw.daemon.xdp_mode,
            events_file: raw.daemon.events_file,
            drop_capabilities: raw.daemon.drop_capabilities.unwrap_or(true),
        },
        limits,
        services,
    })
}

/// What a reload would change, service by service and backend by backend.
pub fn diff(old: &Config, new: &Config) -> serde_json::Value {
    use serde_json::json;
    let mut added = Vec::new();
    let mut removed = Vec::new();
    let mut changed = Vec::new();
    for s in &new.services {
        match old.services.iter().find(|o| o.name == s.name) {
            None => added.push(s.name.clone()),
            Some(o) if o == s => {}
            Some(o) => {
                let mut what = Vec::new();
                if (o.vip, o.port, o.protocol) != (s.vip, s.port, s.protocol) {
                    what.push(format!(
                        "address {}:{} {} -> {}:{} {}",
                        o.vip, o.port, o.protocol, s.vip, s.port, s.protocol
                    ));
                }
                if o.mode != s.mode {
                    what.push(format!("mode {:?} -> {:?}", o.mode, s.mode));
                }
                let names = |c: &Service| -> Vec<(String, usize, IpAddr, u16, u32)> {
                    c.tiers
                        .iter()
                        .enumerate()
                        .flat_map(|(t, bs)| {
                            bs.iter()
                                .map(move |b| (b.name.clone(), t, b.address, b.port, b.weight))
                        })
                        .collect()
                };
                let (ob, nb) = (names(o), names(s));
                for b in &nb {
                    match ob.iter().find(|x| x.0 == b.0) {
                        None => what.push(format!("backend {} added ({}:{}, tier {})", b.0, b.2, b.3, b.1)),
                        Some(x) if x != b => what.push(format!(
                            "backend {} changed ({}:{} tier {} weight {} -> {}:{} tier {} weight {})",
                            b.0, x.2, x.3, x.1, x.4, b.2, b.3, b.1, b.4
                        )),
                        Some(_) => {}
                    }
                }
                for x in &ob {
                    if !nb.iter().any(|b| b.0 == x.0) {
                        what.push(format!("backend {} removed", x.0));
                    }
                }
                if o.check != s.check {
                    what.push("health check changed".to_string());
                }
                if (o.failback, o.flows_on_down, o.damping, o.on_no_backend)
                    != (s.failback, s.flows_on_down, s.damping, s.on_no_backend)
                {
                    what.push("policy changed".to_string());
                }
                if o.hooks != s.hooks {
                    what.push("hooks changed".to_string());
                }
                if o.passive != s.passive {
                    what.push("passive detection changed".to_string());
                }
                if o.table_size != s.table_size {
                    what.push(format!("table_size {} -> {}", o.table_size, s.table_size));
                }
                changed.push(json!({"service": s.name, "changes": what}));
            }
        }
    }
    for o in &old.services {
        if !new.services.iter().any(|s| s.name == o.name) {
            removed.push(o.name.clone());
        }
    }
    json!({"added": added, "removed": removed, "changed": changed, "unchanged": new.services.len() - added.len() - changed.len()})
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[daemon]
interfaces = ["lb0", "lb1"]

[[service]]
name = "web"
vip = "198.18.0.10"
port = 80

[[service.backend]]
name = "primary"
address = "198.18.1.2"
port = 8080

[[service.backend]]
name = "standby"
address = "198.18.2.2"
port = 8080
tier = 1

[[service]]
name = "dns6"
vip = "2001:db8::10"
port = 53
protocol = "udp"
mode = "dsr"
on_no_backend = "pass"
table_size = 251

[[service.backend]]
name = "a"
address = "2001:db8:1::2"
"#;

    fn errors(text: &str) -> Vec<String> {
        match parse(text, "test.toml") {
            Ok(_) => panic!("expected errors"),
            Err(e) => match e {
                ConfigError::Invalid(v) => v.into_iter().map(|e| e.to_string()).collect(),
                other => vec![other.to_string()],
            },
        }
    }

    #[test]
    fn good_config_with_defaults() {
        let c = parse(GOOD, "good").expect("valid");
        assert_eq!(c.daemon.interfaces, ["lb0", "lb1"]);
        assert_eq!(c.daemon.bpffs, PathBuf::from(DEFAULT_BPFFS));
        assert_eq!(c.limits, Limits::default());
        let web = &c.services[0];
        assert_eq!(web.protocol, Protocol::Tcp);
        assert_eq!(web.mode, Mode::Nat);
        assert_eq!(web.on_no_backend, NoBackend::Drop);
        assert_eq!(web.table_size, 65537);
        assert_eq!(web.tiers.len(), 2);
        assert_eq!(web.tiers[0][0].name, "primary");
        assert_eq!(web.tiers[1][0].name, "standby");
        assert_eq!(web.tiers[0][0].port, 8080);
        let dns = &c.services[1];
        assert_eq!(dns.mode, Mode::Dsr);
        assert_eq!(
            dns.tiers[0][0].port, 53,
            "backend port defaults to the service port"
        );
        assert_eq!(dns.on_no_backend, NoBackend::Pass);
        assert_eq!(dns.table_size, 251);
    }

    #[test]
    fn tiers_are_compacted_in_priority_order() {
        let text = GOOD.replace("tier = 1", "tier = 3");
        let c = parse(&text, "t").expect("valid");
        assert_eq!(c.services[0].tiers.len(), 2);
        assert_eq!(c.services[0].tiers[1][0].name, "standby");
    }

    #[test]
    fn every_error_names_its_field() {
        let text = r#"
[daemon]
interfaces = ["lb0", "this-name-is-too-long", "lb0"]
bpffs = "relative/dir"

[limits]
conntrack_entries = 1

[[service]]
name = "web"
vip = "not-an-ip"
port = 0
table_size = 65536

[[service.backend]]
name = "a"
address = "198.18.1.300"

[[service.backend]]
name = "a"
address = "2001:db8::1"
weight = 0
tier = 9

[[service]]
name = "v6"
vip = "2001:db8::10"
port = 80

[[service.backend]]
name = "x"
address = "198.18.1.2"
"#;
        let e = errors(text);
        let expect = [
            "daemon.interfaces[1]: \"this-name-is-too-long\" is not a valid interface name",
            "daemon.interfaces[2]: \"lb0\" is listed twice",
            "daemon.bpffs: relative/dir must be an absolute path",
            "limits.conntrack_entries: 1 is out of range",
            "service[0].vip: \"not-an-ip\" is not an IP address",
            "service[0].port: must be 1-65535",
            "service[0].table_size: 65536 must be a prime",
            "service[0].backend[0].address: \"198.18.1.300\" is not an IP address",
            "service[0].backend[1].name: \"a\" is already the name of backend[0]",
            "service[0].backend[1].weight: 0 must be 1-1000",
            "service[0].backend[1].tier: 9 must be below 4",
            "service[1].backend[0].address: 198.18.1.2 is not of the VIP's address family",
        ];
        for want in expect {
            assert!(
                e.iter().any(|got| got.starts_with(want)),
                "missing {want:?} in {e:#?}"
            );
        }
        assert_eq!(e.len(), expect.len(), "unexpected extra errors: {e:#?}");
    }

    #[test]
    fn duplicates_across_services() {
        let text = format!(
            "{GOOD}\n[[service]]\nname = \"web\"\nvip = \"198.18.0.10\"\nport = 80\n[[service.backend]]\nname = \"p\"\naddress = \"198.18.1.2\"\nport = 8080\n"
        );
        let e = errors(&text);
        assert!(
            e.iter().any(
                |m| m.starts_with("service[2].name: \"web\" is already the name of service[0]")
            ),
            "{e:#?}"
        );
        assert!(
            e.iter()
                .any(|m| m
                    .starts_with("service[2].vip: 198.18.0.10 port 80 tcp is already service[0]")),
            "{e:#?}"
        );
        assert!(e.iter().any(|m| m.starts_with("service[2].backend[0].address: 198.18.1.2 port 8080 tcp is also a NAT backend of service[0]")), "{e:#?}");
    }

    #[test]
    fn unknown_fields_and_bad_enums_are_syntax_errors() {
        let e = parse("[daemon]\ninterface = [\"x\"]\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("f.toml: invalid TOML") && e.contains("unknown field `interface`"),
            "{e}"
        );
        let e = parse(
            "[[service]]\nname=\"a\"\nvip=\"198.18.0.1\"\nport=1\nmode=\"tunnel\"\n",
            "f.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown variant `tunnel`"), "{e}");
        let e = parse(
            "[[service]]\nname=\"a\"\nvip=\"198.18.0.1\"\nport=70000\n",
            "f.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("invalid TOML"), "{e}");
    }

    #[test]
    fn limits_are_enforced() {
        let text = format!(
            "[limits]\nmax_services = 1\nmax_backends = 2\n{}",
            GOOD.replace("[daemon]\ninterfaces = [\"lb0\", \"lb1\"]\n", "")
        );
        let e = errors(&text);
        assert!(
            e.iter()
                .any(|m| m == "service: 2 services, limits.max_services is 1"),
            "{e:#?}"
        );
        assert!(
            e.iter()
                .any(|m| m == "service: 3 backends in all, limits.max_backends is 2"),
            "{e:#?}"
        );
    }

    const MIN: &str = "[[service]]\nname = \"w\"\nvip = \"198.18.0.1\"\nport = 80\n[[service.backend]]\nname = \"a\"\naddress = \"198.18.1.2\"\n";

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10").unwrap_err().contains("missing a unit"));
        assert!(
            parse_duration("10 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1e30h").is_err());
    }

    #[test]
    fn flow_timeouts() {
        let c = parse(MIN, "t").unwrap();
        assert_eq!(c.services[0].timeouts, FlowTimeouts::DEFAULT);
        assert_eq!(c.limits.embryonic_entries, defaults::EMBRYONIC_ENTRIES);
        let text = MIN.replace(
            "port = 80\n",
            "port = 80\ntimeouts = { syn = \"2s\", established = \"1h\" }\n",
        );
        let t = parse(&text, "t").unwrap().services[0].timeouts;
        assert_eq!(
            (t.syn_ms, t.established_ms, t.closing_ms, t.udp_ms),
            (2_000, 3_600_000, 10_000, 30_000)
        );
        let bad = MIN.replace(
            "port = 80\n",
            "port = 80\ntimeouts = { closing = \"500ms\", udp = \"30d\" }\n",
        );
        let e = format!("{:#}", parse(&bad, "t").unwrap_err());
        assert!(
            e.contains("service[0].timeouts.closing: 500ms is out of range"),
            "{e}"
        );
        assert!(e.contains("service[0].timeouts.udp"), "{e}");
    }

    #[test]
    fn check_and_policy_defaults() {
        let c = parse(MIN, "t").unwrap();
        let s = &c.services[0];
        let ch = s.check.as_ref().expect("tcp check by default");
        assert_eq!(ch.probe, ProbeSpec::Tcp);
        assert_eq!(
            (ch.interval, ch.fast_interval, ch.timeout),
            (
                Duration::from_secs(1),
                Duration::from_millis(250),
                Duration::from_secs(1)
            )
        );
        assert_eq!((ch.rise, ch.fall), (2, 3));
        assert_eq!(s.failback, Failback::Auto);
        assert_eq!(s.flows_on_down, FlowsOnDown::Move);
        assert_eq!(
            s.damping,
            Damping {
                max_changes: 6,
                window: Duration::from_secs(60)
            }
        );
        assert!(s.hooks.is_empty());
    }

    #[test]
    fn checks_policies_and_hooks_parse() {
        // Service-level keys come before the backend tables, as TOML wants.
        let text = "[[service]]\nname = \"w\"\nvip = \"198.18.0.1\"\nport = 80\nfailback = \"hold-down\"\nhold_down = \"5s\"\nflows_on_down = \"keep\"\non_no_backend = \"keep-last\"\ndamping = { max_changes = 3, window = \"30s\" }\n\
[[service.backend]]\nname = \"a\"\naddress = \"198.18.1.2\"\n\
[service.check]\ntype = \"http\"\npath = \"/healthz\"\nexpect_status = [200, \"3xx\", \"404-404\"]\nexpect_body = \"ok\"\ninterval = \"5ms\"\nport = 9000\n\
[[service.hook]]\nname = \"promote\"\ntype = \"exec\"\ncommand = [\"/usr/local/bin/promote\", \"--now\"]\n\
[[service.hook]]\nname = \"page\"\ntype = \"webhook\"\nurl = \"http://198.18.9.9:8080/alert\"\nevents = [\"failover\", \"state\"]\ntimeout = \"2s\"\n";
        let c = parse(text, "t").expect("valid");
        let s = &c.services[0];
        assert_eq!(s.failback, Failback::HoldDown(Duration::from_secs(5)));
        assert_eq!(s.flows_on_down, FlowsOnDown::Keep);
        assert_eq!(s.on_no_backend, NoBackend::KeepLast);
        assert_eq!(
            s.damping,
            Damping {
                max_changes: 3,
                window: Duration::from_secs(30)
            }
        );
        let ch = s.check.as_ref().unwrap();
        assert_eq!(
            ch.probe,
            ProbeSpec::Http {
                path: "/healthz".into(),
                host: None,
                expect_status: vec![(200, 200), (300, 399), (404, 404)],
                expect_body: Some("ok".into())
            }
        );
        assert_eq!(
            (ch.interval, ch.fast_interval, ch.port),
            (
                Duration::from_millis(5),
                Duration::from_micros(1250),
                Some(9000)
            )
        );
        assert_eq!(s.hooks.len(), 2);
        assert_eq!(s.hooks[0].events, [HookEvent::Failover]);
        assert_eq!(s.hooks[0].hook.timeout, Duration::from_secs(10));
        assert_eq!(s.hooks[1].events, [HookEvent::Failover, HookEvent::State]);
    }

    #[test]
    fn check_errors_name_their_fields() {
        let text = "[[service]]\nname = \"w\"\nvip = \"198.18.0.1\"\nport = 80\nfailback = \"sometimes\"\n\
[[service.backend]]\nname = \"a\"\naddress = \"198.18.1.2\"\n\
[service.check]\ntype = \"tcp\"\npath = \"/x\"\ninterval = \"10\"\nfall = 0\njitter = 0.9\n\
[[service.hook]]\nname = \"h\"\ntype = \"webhook\"\nurl = \"ftp://198.18.9.9/x\"\n\
[[service.hook]]\nname = \"h\"\ntype = \"exec\"\ncommand = []\n";
        let e = errors(text);
        for want in [
            "service[0].check.path: only used by http checks",
            "service[0].check.interval: \"10\": missing a unit",
            "service[0].check.fall: 0 must be 1-100",
            "service[0].check.jitter: 0.9 must be between 0 and 0.5",
            "service[0].failback: \"sometimes\": use",
            "service[0].hook[0].url: \"ftp://198.18.9.9/x\": unsupported scheme \"ftp\": use http:// or https://",
            "service[0].hook[1].name: \"h\" is already the name of hook[0]",
            "service[0].hook[1].command: an exec hook needs a non-empty command",
        ] {
            assert!(
                e.iter().any(|got| got.starts_with(want)),
                "missing {want:?} in {e:#?}"
            );
        }
    }

    #[test]
    fn shipped_example_is_valid() {
        let c = parse(
            include_str!("../../examples/failover.toml"),
            "examples/failover.toml",
        )
        .expect("the example validates");
        assert_eq!(c.services.len(), 2);
        assert_eq!(
            c.limits,
            Limits::default(),
            "the example documents the defaults"
        );
        assert_eq!(c.daemon.bpffs, PathBuf::from(DEFAULT_BPFFS));
        assert_eq!(c.daemon.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    }

    #[test]
    fn service_without_backends() {
        let e = errors("[[service]]\nname=\"a\"\nvip=\"198.18.0.1\"\nport=1\n");
        assert_eq!(
            e,
            ["service[0].backend: a service needs at least one backend"]
        );
    }

    #[test]
    fn passive_detection_per_mode_and_protocol() {
        let svc = |mode: &str, proto: &str, passive: &str, check: bool| {
            format!(
                "[daemon]\ninterfaces = [\"lb0\"]\n[[service]]\nname = \"w\"\nvip = \"198.18.0.1\"\nport = 80\nmode = \"{mode}\"\nprotocol = \"{proto}\"\n{}[service.passive]\n{passive}\n[[service.backend]]\nname = \"a\"\naddress = \"198.18.1.2\"\n",
                if check {
                    ""
                } else {
                    "[service.check]\ntype = \"none\"\n"
                }
            )
        };
        // Defaults: every signal the mode and protocol can see.
        let c = parse(&svc("nat", "tcp", "", true), "t").expect("valid");
        let p = c.services[0].passive.expect("passive");
        assert_eq!(
            p.signal_names(),
            ["rst", "icmp", "syn-retransmit", "no-reply"]
        );
        assert_eq!(
            (p.failures, p.window, p.no_reply),
            (3, Duration::from_secs(10), Duration::from_secs(1))
        );
        assert_eq!((p.limit(1), p.limit(4), p.limit(5)), (1, 2, 2));
        let c = parse(&svc("dsr", "tcp", "", true), "t").expect("valid");
        assert_eq!(
            c.services[0].passive.expect("p").signal_names(),
            ["syn-retransmit"]
        );
        let c = parse(&svc("nat", "udp", "", true), "t").expect("valid");
        assert_eq!(c.services[0].passive.expect("p").signal_names(), ["icmp"]);
        // What the mode cannot see, bad values, and no checks: field errors.
        let e = errors(&svc(
            "dsr",
            "tcp",
            "signals = [\"rst\", \"bogus\"]\nfailures = 0\nmax_ejection = 1.5",
            true,
        ));
        assert!(
            e.iter()
                .any(|m| m.starts_with("service[0].passive.signals[0]") && m.contains("DSR")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("service[0].passive.signals[1]") && m.contains("bogus")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("service[0].passive.failures")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("service[0].passive.max_ejection")),
            "{e:?}"
        );
        let e = errors(&svc("nat", "tcp", "", false));
        assert!(
            e.iter().any(|m| m.contains("needs a health check")),
            "{e:?}"
        );
        let e = errors(&svc("dsr", "udp", "", true));
        assert!(
            e.iter().any(|m| m.contains("no passive signal exists")),
            "{e:?}"
        );
    }

    #[test]
    fn https_webhook_options_are_checked_at_load() {
        let hook = |extra: &str| {
            format!(
                "[daemon]\ninterfaces = [\"lb0\"]\n[[service]]\nname = \"w\"\nvip = \"198.18.0.1\"\nport = 80\n[[service.backend]]\nname = \"a\"\naddress = \"198.18.1.2\"\n[[service.hook]]\nname = \"h\"\ntype = \"webhook\"\n{extra}\n"
            )
        };
        // Mozilla's roots by default: valid.
        parse(&hook("url = \"https://198.18.9.9/x\""), "t").expect("https with default roots");
        let e = errors(&hook(
            "url = \"https://198.18.9.9/x\"\nca_file = \"/nonexistent/ca.pem\"",
        ));
        assert!(
            e.iter().any(|m| m.starts_with("service[0].hook[0].ca_file")
                && m.contains("/nonexistent/ca.pem")),
            "{e:?}"
        );
        let e = errors(&hook(
            "url = \"https://198.18.9.9/x\"\nserver_name = \"bad name!\"",
        ));
        assert!(
            e.iter()
                .any(|m| m.starts_with("service[0].hook[0].server_name")),
            "{e:?}"
        );
        let e = errors(&hook(
            "url = \"http://198.18.9.9/x\"\nserver_name = \"hooks.test\"",
        ));
        assert!(e.iter().any(|m| m.contains("https:// urls only")), "{e:?}");
    }
}
