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
        e.iter()
            .any(|m| m.starts_with("service[2].name: \"web\" is already the name of service[0]")),
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
        include_str!("../../../examples/failover.toml"),
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
    assert_eq!(c.admin.audit_file, PathBuf::from(DEFAULT_AUDIT_FILE));
}

#[test]
fn shipped_postgresql_example_is_valid() {
    let c = parse(
        include_str!("../../../examples/postgresql/failover.toml"),
        "examples/postgresql/failover.toml",
    )
    .expect("the example validates");
    let p = c.services[0].promotion.as_ref().expect("roles");
    assert!(
        matches!(&p.promote.spec, HookSpec::Exec { command } if command.iter().any(|a| a == "{token}"))
    );
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
        e.iter()
            .any(|m| m.starts_with("service[0].hook[0].ca_file")
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

#[test]
fn a_backend_at_a_vip_is_refused() {
    let text = r#"
[[service]]
name = "web"
vip = "198.18.0.10"
port = 80
[[service.backend]]
name = "b"
address = "198.18.0.11"

[[service]]
name = "api"
vip = "198.18.0.11"
port = 81
[[service.backend]]
name = "self"
address = "198.18.0.11"
"#;
    let e = parse(text, "t").expect_err("a backend at a VIP");
    let msg = e.to_string();
    assert!(
        msg.contains("service[0].backend[0].address")
            && msg.contains("is a VIP of this load balancer"),
        "{msg}"
    );
    assert!(msg.contains("service[1].backend[0].address"), "{msg}");
}

const PG: &str = r#"
[daemon]
interfaces = ["lb0"]

[[service]]
name = "pg"
vip = "198.18.0.10"
port = 5432

[[service.backend]]
name = "db1"
address = "198.18.1.2"

[[service.backend]]
name = "db2"
address = "198.18.2.2"
tier = 1

[service.check]
type = "exec"
command = ["/usr/local/bin/pg-writable", "{address}", "{port}"]
"#;

#[test]
fn promotion_defaults_and_roles() {
    let text = format!(
        "{PG}\n[service.promotion]\npromote = [\"/usr/local/bin/pg-promote\", \"{{address}}\", \"{{token}}\"]\n[service.promotion.standby_check]\ntype = \"exec\"\ncommand = [\"/usr/local/bin/pg-standby\", \"{{address}}\"]\n"
    );
    let cfg = parse(&text, "t").expect("valid");
    let p = cfg.services[0].promotion.as_ref().expect("promotion");
    assert_eq!(p.on, vec![Cause::Probe, Cause::PassiveConfirmed]);
    assert_eq!(p.ready_within, Duration::from_secs(30));
    assert_eq!(p.promote.timeout, Duration::from_secs(30));
    assert!(p.fence.is_none());
    assert!(
        matches!(&p.standby_check.probe, ProbeSpec::Exec { command } if command[1] == "{address}")
    );
}

#[test]
fn promotion_errors_name_their_fields() {
    // No promote command, no standby check, a cause that cannot lose an
    // active, keep-last, and no active check.
    let text = PG
        .replace("port = 5432\n", "port = 5432\non_no_backend = \"keep-last\"\n")
        .replace("type = \"exec\"\ncommand = [\"/usr/local/bin/pg-writable\", \"{address}\", \"{port}\"]", "type = \"none\"")
        + "\n[service.promotion]\non = [\"drill\"]\n";
    let errs = errors(&text);
    for want in [
        "service[0].check: a service with [service.promotion] needs a check",
        "service[0].on_no_backend: keep-last would keep a lost active",
        "service[0].promotion.promote: missing",
        "service[0].promotion.on: \"drill\"",
        "service[0].promotion.standby_check: missing",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "{want} not in {errs:#?}"
        );
    }
    // Two backends in the first tier: which one is active?
    let text = PG.replace("tier = 1\n", "")
        + "\n[service.promotion]\npromote = [\"/bin/true\"]\n[service.promotion.standby_check]\ntype = \"tcp\"\n";
    let errs = errors(&text);
    assert!(
        errs.iter()
            .any(|e| e.contains("exactly one backend in its first tier")),
        "{errs:#?}"
    );
}

#[test]
fn postgres_checks() {
    let with = |check: &str| {
        PG.replace(
        "type = \"exec\"\ncommand = [\"/usr/local/bin/pg-writable\", \"{address}\", \"{port}\"]",
        check,
    )
    };
    let cfg = parse(
        &with("type = \"postgres\"\nrole = \"standby\"\nuser = \"monitor\""),
        "t",
    )
    .expect("valid");
    let check = cfg.services[0].check.as_ref().expect("check");
    assert!(matches!(
        &check.probe,
        ProbeSpec::Postgres { role: crate::probe::PgRole::Standby, user, database, password: None }
            if user == "monitor" && database == "postgres"
    ));
    let errs = errors(&with("type = \"postgres\""));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("service[0].check.role: missing")),
        "{errs:#?}"
    );
    let errs = errors(&with(
        "type = \"postgres\"\nrole = \"leader\"\npassword_file = \"/nonexistent/pw\"",
    ));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("service[0].check.role: \"leader\"")),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("service[0].check.password_file: cannot read")),
        "{errs:#?}"
    );
    let errs = errors(&with("type = \"tcp\"\nrole = \"primary\""));
    assert!(
        errs.iter()
            .any(|e| e == "service[0].check.role: only used by postgres checks"),
        "{errs:#?}"
    );
    // The password never shows in a debug print of the config.
    let dir = std::env::temp_dir().join(format!("failover-pw-{}", std::process::id()));
    std::fs::write(&dir, "s3cret\n").expect("password file");
    let cfg = parse(
        &with(&format!(
            "type = \"postgres\"\nrole = \"primary\"\npassword_file = \"{}\"",
            dir.display()
        )),
        "t",
    )
    .expect("valid");
    let _ = std::fs::remove_file(&dir);
    assert!(!format!("{cfg:?}").contains("s3cret"));
}

#[test]
fn cluster_section() {
    // Without [cluster] nothing changes.
    assert_eq!(parse(GOOD, "t").expect("good").cluster, None);
    let full = format!(
        "{GOOD}\n[cluster]\nnode = \"lb1\"\nname = \"prod\"\nwarmup = \"2s\"\ncut_off = \"withdraw\"\n[cluster.bgp]\ncontrol_socket = \"/run/bird/bird.ctl\"\ninclude = \"/etc/bird/fo.conf\"\n[cluster.etcd]\nendpoints = [\"http://198.18.3.1:2379\"]\n"
    );
    let c = parse(&full, "t").expect("cluster").cluster.expect("some");
    assert_eq!(c.node, "lb1");
    assert_eq!(c.prefix(), "/failover/v1/prod/");
    assert_eq!(c.warmup, Duration::from_secs(2));
    assert_eq!(c.cut_off, CutOff::Withdraw);
    let b = c.bgp.expect("bgp");
    assert_eq!(b.live_device, "fo-live");
    let e = c.etcd.expect("etcd");
    assert_eq!(e.lease_ttl, Duration::from_secs(3));
    assert_eq!(e.request_timeout, Duration::from_millis(300));
    // Bad values name their fields.
    let bad = format!(
        "{GOOD}\n[cluster]\nnode = \"lb 1\"\n[cluster.bgp]\ncontrol_socket = \"bird.ctl\"\ninclude = \"/x\"\nlive_device = \"a/b\"\n[cluster.etcd]\nendpoints = [\"https://x:1\"]\nlease_ttl = \"1s\"\n"
    );
    let errs = errors(&bad);
    for field in [
        "cluster.node",
        "cluster.name",
        "cluster.bgp.control_socket",
        "cluster.bgp.live_device",
        "cluster.etcd.endpoints[0]",
        "cluster.etcd.lease_ttl",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(&format!("{field}:"))),
            "{field} in {errs:?}"
        );
    }
    // An active-passive service without agreement could split.
    let no_etcd = format!(
        "{GOOD}\n[cluster]\nnode = \"lb1\"\nname = \"p\"\n[cluster.bgp]\ncontrol_socket = \"/s\"\ninclude = \"/i\"\n"
    );
    let errs = errors(&no_etcd);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("service[0]:") && e.contains("split")
                || e.contains("[cluster.etcd]")),
        "{errs:?}"
    );
    assert!(
        errors(&format!("{GOOD}\n[cluster]\nnode = \"a\"\nname = \"b\"\n"))
            .iter()
            .any(|e| e.starts_with("cluster:"))
    );
}
