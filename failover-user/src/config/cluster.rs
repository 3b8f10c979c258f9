//! `[cluster]`: several load-balancer nodes behind BGP. `[cluster.bgp]`
//! drives a local BIRD (route health injection), `[cluster.etcd]` agrees on
//! the decisions. Without `[cluster]` nothing changes.

use super::*;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) node: Option<String>,
    pub(super) name: Option<String>,
    pub(super) warmup: Option<String>,
    pub(super) cut_off: Option<CutOff>,
    pub(super) bgp: Option<RawBgp>,
    pub(super) etcd: Option<RawEtcd>,
    pub(super) failsafe: Option<RawFailsafe>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFailsafe {
    pub(super) listen: Option<String>,
    #[serde(default)]
    pub(super) peers: Vec<String>,
    pub(super) key_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBgp {
    pub(super) control_socket: Option<PathBuf>,
    pub(super) include: Option<PathBuf>,
    pub(super) live_device: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEtcd {
    #[serde(default)]
    pub(super) endpoints: Vec<String>,
    pub(super) lease_ttl: Option<String>,
    pub(super) request_timeout: Option<String>,
}

/// What a node cut off from etcd does with the VIPs of active-active
/// services (single-tier ones; active-passive VIPs are always withdrawn
/// before the node's lease can lapse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CutOff {
    /// Keep announcing on the last decision while the node's own checks
    /// still find a serving backend: the peers hash the same flows to the
    /// same backends (identical Maglev tables), so nothing splits.
    #[default]
    Keep,
    /// Withdraw like an active-passive VIP.
    Withdraw,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// This node's name, unique in the cluster.
    pub node: String,
    /// The cluster's name: its etcd keys are under `/failover/v1/<name>/`.
    pub name: String,
    /// After the program is attached and the first probe round is in, how
    /// long the node waits before announcing (warm tables, loxilb#565).
    pub warmup: Duration,
    pub cut_off: CutOff,
    pub bgp: Option<Bgp>,
    pub etcd: Option<Etcd>,
    pub failsafe: Option<Failsafe>,
}

/// `[cluster.failsafe]` (after Patroni's failsafe mode): when etcd is
/// unreachable, a node keeps announcing its active-passive VIPs on the
/// decision in force only while every peer confirms, over authenticated
/// datagrams, that it cannot reach etcd either and holds the same
/// decision. Nobody can then move on without it; one peer that reaches
/// etcd, or one that stops answering, and it withdraws.
#[derive(Debug, Clone, PartialEq)]
pub struct Failsafe {
    pub listen: std::net::SocketAddr,
    pub peers: Vec<std::net::SocketAddr>,
    /// The shared secret (HMAC-SHA256 key), read at start.
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bgp {
    /// BIRD's control socket (`bird -s`).
    pub control_socket: PathBuf,
    /// The file this daemon owns and BIRD's config `include`s: one static
    /// protocol per VIP.
    pub include: PathBuf,
    /// The tun device the VIP routes point at. The daemon holds it: it
    /// disappears with the daemon, and BIRD (`check link on`) withdraws.
    pub live_device: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Etcd {
    pub endpoints: Vec<String>,
    pub lease_ttl: Duration,
    pub request_timeout: Duration,
}

pub const DEFAULT_LIVE_DEVICE: &str = "fo-live";
pub const DEFAULT_WARMUP: Duration = Duration::from_secs(1);
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(3);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_millis(300);

/// A name an etcd key can carry as it is (a Kubernetes node name too).
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub(super) fn validate_cluster(
    errs: &mut Errors,
    raw: Option<RawCluster>,
    services: &[Service],
) -> Option<Cluster> {
    let raw = raw?;
    let name_field = |errs: &mut Errors, field: &str, v: Option<String>| -> String {
        match v {
            Some(v) if valid_name(&v) => v,
            Some(v) => {
                errs.push(
                    format!("cluster.{field}"),
                    format!("{v:?}: 1-253 characters of a-z, A-Z, 0-9, '-', '_' and '.'"),
                );
                String::new()
            }
            None => {
                errs.push(format!("cluster.{field}"), "is required");
                String::new()
            }
        }
    };
    let node = name_field(errs, "node", raw.node);
    let name = name_field(errs, "name", raw.name);
    let warmup = match raw.warmup.as_deref() {
        None => DEFAULT_WARMUP,
        Some(s) => match parse_duration(s) {
            Ok(d) if d <= Duration::from_secs(600) => d,
            Ok(_) => {
                errs.push("cluster.warmup", "at most 10m");
                DEFAULT_WARMUP
            }
            Err(e) => {
                errs.push("cluster.warmup", e);
                DEFAULT_WARMUP
            }
        },
    };
    let bgp = raw.bgp.map(|b| {
        let path = |errs: &mut Errors, field: &str, v: Option<PathBuf>| -> PathBuf {
            match v {
                Some(p) if p.is_absolute() => p,
                Some(p) => {
                    errs.push(
                        format!("cluster.bgp.{field}"),
                        format!("{} must be an absolute path", p.display()),
                    );
                    p
                }
                None => {
                    errs.push(format!("cluster.bgp.{field}"), "is required");
                    PathBuf::new()
                }
            }
        };
        let live_device = b
            .live_device
            .unwrap_or_else(|| DEFAULT_LIVE_DEVICE.to_string());
        if !valid_ifname(&live_device) {
            errs.push(
                "cluster.bgp.live_device",
                format!("{live_device:?} is not a valid interface name"),
            );
        }
        Bgp {
            control_socket: path(errs, "control_socket", b.control_socket),
            include: path(errs, "include", b.include),
            live_device,
        }
    });
    let etcd = raw.etcd.map(|e| {
        if e.endpoints.is_empty() {
            errs.push("cluster.etcd.endpoints", "needs at least one endpoint");
        }
        for (i, ep) in e.endpoints.iter().enumerate() {
            // Plain HTTP only for now: the control link is expected to be a
            // private network (docs/cluster.md); TLS is on the roadmap.
            let ok = ep
                .strip_prefix("http://")
                .is_some_and(|rest| !rest.is_empty() && !rest.contains(['/', ' ']));
            if !ok {
                errs.push(
                    format!("cluster.etcd.endpoints[{i}]"),
                    format!("{ep:?}: expected http://HOST:PORT"),
                );
            }
        }
        let lease_ttl = duration(
            errs,
            "cluster.etcd.lease_ttl",
            e.lease_ttl.as_deref(),
            DEFAULT_LEASE_TTL,
        );
        // The node withdraws its active-passive VIPs one second before its
        // lease can lapse (counted from the send time of the last acked
        // keep-alive): shorter leases leave no margin.
        if lease_ttl < Duration::from_secs(2) || lease_ttl.subsec_nanos() != 0 {
            errs.push(
                "cluster.etcd.lease_ttl",
                "whole seconds, at least 2s (the node withdraws 1 s before its lease can lapse)",
            );
        }
        let request_timeout = duration(
            errs,
            "cluster.etcd.request_timeout",
            e.request_timeout.as_deref(),
            DEFAULT_REQUEST_TIMEOUT,
        );
        if request_timeout * 2 >= lease_ttl {
            errs.push(
                "cluster.etcd.request_timeout",
                "must be less than half the lease TTL",
            );
        }
        Etcd {
            endpoints: e.endpoints,
            lease_ttl,
            request_timeout,
        }
    });
    let failsafe = raw.failsafe.map(|f| {
        let addr = |errs: &mut Errors, field: String, v: &str| -> std::net::SocketAddr {
            v.parse().unwrap_or_else(|_| {
                errs.push(field, format!("{v:?}: expected ADDRESS:PORT"));
                std::net::SocketAddr::from(([0, 0, 0, 0], 0))
            })
        };
        let listen = match f.listen.as_deref() {
            Some(v) => addr(errs, "cluster.failsafe.listen".into(), v),
            None => {
                errs.push("cluster.failsafe.listen", "is required");
                std::net::SocketAddr::from(([0, 0, 0, 0], 0))
            }
        };
        if f.peers.is_empty() {
            errs.push("cluster.failsafe.peers", "needs every other node's address");
        }
        let peers = f
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| addr(errs, format!("cluster.failsafe.peers[{i}]"), p))
            .collect();
        let key_file = match f.key_file {
            Some(p) if p.is_absolute() => p,
            Some(p) => {
                errs.push(
                    "cluster.failsafe.key_file",
                    format!("{} must be an absolute path", p.display()),
                );
                p
            }
            None => {
                errs.push(
                    "cluster.failsafe.key_file",
                    "is required: the datagrams are authenticated",
                );
                PathBuf::new()
            }
        };
        Failsafe {
            listen,
            peers,
            key_file,
        }
    });
    if failsafe.is_some() && etcd.is_none() {
        errs.push(
            "cluster.failsafe",
            "only means something with [cluster.etcd]",
        );
    }
    if bgp.is_none() && etcd.is_none() {
        errs.push(
            "cluster",
            "needs [cluster.bgp], [cluster.etcd] or both (a [cluster] with neither does nothing)",
        );
    }
    if etcd.is_none() {
        // Without agreement two nodes could serve different tiers of one
        // service at once (split brain).
        for (si, s) in services.iter().enumerate() {
            if s.tiers.len() > 1 || s.promotion.is_some() {
                errs.push(
                    format!("service[{si}]"),
                    format!(
                        "{:?} is active-passive (more than one tier): in a cluster it needs [cluster.etcd], or nodes could serve different tiers at once",
                        s.name
                    ),
                );
            }
        }
    }
    Some(Cluster {
        node,
        name,
        warmup,
        cut_off: raw.cut_off.unwrap_or_default(),
        bgp,
        etcd,
        failsafe,
    })
}

impl Cluster {
    /// The etcd key prefix of this cluster.
    pub fn prefix(&self) -> String {
        format!("/failover/v1/{}/", self.name)
    }
}

impl Service {
    /// Active-passive: more than one tier (a tier change is a failover the
    /// whole cluster must make together).
    pub fn active_passive(&self) -> bool {
        self.tiers.len() > 1 || self.promotion.is_some()
    }
}
