//! Validation of the whole file: `[daemon]`, `[limits]`, services and
//! backends, hooks; every error collected with its field path.

use super::*;

pub(super) fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.contains(['/', ':', '\0'])
        && !name.chars().any(char::is_whitespace)
}

/// `[service.passive]`: which signals make sense depends on the mode (in
/// DSR replies bypass the load balancer) and the protocol (the TCP ones).
pub(super) fn duration(
    errs: &mut Errors,
    path: &str,
    v: Option<&str>,
    default: Duration,
) -> Duration {
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
pub(super) fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
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
    // Every backend address with its field path (checked against the VIPs
    // once all are known).
    let mut backend_addrs: Vec<(IpAddr, String)> = Vec::new();
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
            backend_addrs.push((address, format!("{bp}.address")));
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
                    if let Err(e) = crate::sys::http_client::parse_webhook_url(&url) {
                        errs.push(format!("{hp}.url"), e);
                    }
                    let tls = crate::sys::http_client::TlsOptions {
                        ca_file: h.ca_file,
                        server_name: h.server_name,
                    };
                    if crate::sys::http_client::is_https(&url) {
                        // Read and check the CA file now: a broken one is a
                        // config error, not a failed hook run later.
                        if let Err(e) = crate::sys::http_client::client_config(&tls) {
                            errs.push(format!("{hp}.ca_file"), e);
                        }
                        if let (Some(_), Err(e)) = (
                            &tls.server_name,
                            crate::sys::http_client::server_name(
                                &tls,
                                std::net::Ipv4Addr::LOCALHOST.into(),
                            ),
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
        let promotion = s.promotion.and_then(|raw| {
            validate_promotion(
                &mut errs,
                &p,
                raw,
                &PromotionContext {
                    active_check: check.is_some(),
                    tiers: &tiers,
                    on_no_backend: s.on_no_backend,
                },
            )
        });
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
                promotion,
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
    for (address, path) in &backend_addrs {
        if vip_addrs.contains(address) {
            errs.push(
                path.clone(),
                format!(
                    "{address} is a VIP of this load balancer: traffic to it would come back here \
                     (a loop), not reach a backend"
                ),
            );
        }
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
    let cluster = validate_cluster(&mut errs, raw.cluster, &services);
    if !errs.0.is_empty() {
        return Err(ConfigError::Invalid(errs.0));
    }
    Ok(Config {
        admin,
        cluster,
        daemon: Daemon {
            interfaces: raw.daemon.interfaces,
            bpffs,
            state_dir,
            xdp_mode: raw.daemon.xdp_mode,
            events_file: raw.daemon.events_file,
            drop_capabilities: raw.daemon.drop_capabilities.unwrap_or(true),
            run_as: match raw.daemon.run_as {
                Some(u) if u.trim().is_empty() || u.contains(['\0', '\n']) => {
                    errs.push(
                        "daemon.run_as",
                        format!("{u:?}: expected a user name or UID:GID"),
                    );
                    String::new()
                }
                Some(u) => u,
                None => DEFAULT_RUN_AS.to_string(),
            },
        },
        limits,
        services,
    })
}
