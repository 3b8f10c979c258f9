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
};

use failover_common::{MAX_TIER_MEMBERS, MAX_TIERS, defaults};
use serde::Deserialize;

use crate::maglev;

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
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_services: Option<u32>,
    max_vip_addresses: Option<u32>,
    max_tiers: Option<u32>,
    max_backends: Option<u32>,
    conntrack_entries: Option<u32>,
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct Daemon {
    pub interfaces: Vec<String>,
    pub bpffs: PathBuf,
    pub state_dir: PathBuf,
    pub xdp_mode: XdpModeCfg,
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
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_services: defaults::MAX_SERVICES,
            max_vip_addresses: defaults::MAX_VIP_ADDRS,
            max_tiers: defaults::MAX_TIERS_TOTAL,
            max_backends: defaults::MAX_BACKENDS,
            conntrack_entries: defaults::CONNTRACK_ENTRIES,
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

    if !errs.0.is_empty() {
        return Err(ConfigError::Invalid(errs.0));
    }
    Ok(Config {
        daemon: Daemon {
            interfaces: raw.daemon.interfaces,
            bpffs,
            state_dir,
            xdp_mode: raw.daemon.xdp_mode,
        },
        limits,
        services,
    })
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
}
