//! The config file as TOML gives it, before validation (every field
//! optional where the file may leave it out).

use super::*;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) daemon: RawDaemon,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default, rename = "service")]
    pub(super) services: Vec<RawService>,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) alertmanager: RawAlertmanager,
    pub(super) cluster: Option<RawCluster>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) socket: Option<PathBuf>,
    pub(super) listen: Option<String>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) metrics_listen: Option<String>,
    pub(super) audit_file: Option<PathBuf>,
    pub(super) rate_limit: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlertmanager {
    pub(super) service_label: Option<String>,
    pub(super) backend_label: Option<String>,
    pub(super) action: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    #[serde(default)]
    pub(super) interfaces: Vec<String>,
    pub(super) bpffs: Option<PathBuf>,
    pub(super) state_dir: Option<PathBuf>,
    #[serde(default)]
    pub(super) xdp_mode: XdpModeCfg,
    pub(super) events_file: Option<PathBuf>,
    pub(super) drop_capabilities: Option<bool>,
    pub(super) run_as: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_services: Option<u32>,
    pub(super) max_vip_addresses: Option<u32>,
    pub(super) max_tiers: Option<u32>,
    pub(super) max_backends: Option<u32>,
    pub(super) conntrack_entries: Option<u32>,
    pub(super) embryonic_entries: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: String,
    pub(super) vip: String,
    pub(super) port: u16,
    #[serde(default = "default_protocol")]
    pub(super) protocol: Protocol,
    #[serde(default)]
    pub(super) mode: Mode,
    #[serde(default)]
    pub(super) on_no_backend: NoBackend,
    pub(super) table_size: Option<u32>,
    #[serde(default, rename = "backend")]
    pub(super) backends: Vec<RawBackend>,
    #[serde(default)]
    pub(super) check: RawCheck,
    pub(super) failback: Option<String>,
    pub(super) hold_down: Option<String>,
    #[serde(default)]
    pub(super) flows_on_down: FlowsOnDown,
    #[serde(default)]
    pub(super) damping: RawDamping,
    #[serde(default, rename = "hook")]
    pub(super) hooks: Vec<RawHook>,
    pub(super) passive: Option<RawPassive>,
    #[serde(default)]
    pub(super) timeouts: RawTimeouts,
    pub(super) promotion: Option<RawPromotion>,
}

/// `[service.promotion]`: orchestrated failover of an active-passive
/// service (see `config::Promotion`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPromotion {
    pub(super) promote: Option<Vec<String>>,
    pub(super) fence: Option<Vec<String>>,
    pub(super) hook_timeout: Option<String>,
    pub(super) ready_within: Option<String>,
    pub(super) on: Option<Vec<crate::model::Cause>>,
    pub(super) standby_check: Option<RawCheck>,
}

/// `[service.timeouts]`: idle timeouts of the service's flows per state.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub(super) syn: Option<String>,
    pub(super) established: Option<String>,
    pub(super) closing: Option<String>,
    pub(super) udp: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPassive {
    pub(super) signals: Option<Vec<String>>,
    pub(super) failures: Option<u32>,
    pub(super) window: Option<String>,
    pub(super) no_reply: Option<String>,
    pub(super) max_ejection: Option<f64>,
    pub(super) confirm_within: Option<String>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum CheckKind {
    #[default]
    Tcp,
    Http,
    Udp,
    Exec,
    Postgres,
    None,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    #[serde(rename = "type", default)]
    pub(super) kind: CheckKind,
    pub(super) interval: Option<String>,
    pub(super) fast_interval: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) rise: Option<u32>,
    pub(super) fall: Option<u32>,
    pub(super) jitter: Option<f64>,
    pub(super) port: Option<u16>,
    pub(super) path: Option<String>,
    pub(super) host: Option<String>,
    pub(super) expect_status: Option<Vec<toml::Value>>,
    pub(super) expect_body: Option<String>,
    pub(super) payload: Option<String>,
    pub(super) expect: Option<String>,
    pub(super) command: Option<Vec<String>>,
    pub(super) role: Option<String>,
    pub(super) user: Option<String>,
    pub(super) database: Option<String>,
    pub(super) password_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDamping {
    pub(super) max_changes: Option<u32>,
    pub(super) window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHook {
    pub(super) name: String,
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) command: Option<Vec<String>>,
    pub(super) url: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) server_name: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) events: Option<Vec<HookEvent>>,
}

pub(super) fn default_protocol() -> Protocol {
    Protocol::Tcp
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) name: String,
    pub(super) address: String,
    pub(super) port: Option<u16>,
    #[serde(default)]
    pub(super) tier: u32,
    #[serde(default = "default_weight")]
    pub(super) weight: u32,
    #[serde(default)]
    pub(super) state: InitialState,
}

pub(super) fn default_weight() -> u32 {
    1
}
