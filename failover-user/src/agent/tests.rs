use super::*;
use crate::config::{Damping, Failback, FlowsOnDown};
use failover_common::STATE_DISABLED;

/// One service driven by hand with a fake clock: probe results go
/// through each backend's machine, the map word follows every change,
/// then the never-dark rule runs, as in the decider.
struct Svc {
    b: Vec<BackendRt>,
    members: Vec<usize>,
    events: Vec<Event>,
    t0: Instant,
}

impl Svc {
    /// Backends b1, b2, ... in the given tiers; rise 2, fall 1.
    fn new(failback: Failback, damping: Damping, tiers: &[usize]) -> Self {
        let policy = Policy {
            rise: 2,
            fall: 1,
            failback,
            damping,
        };
        let b = tiers
            .iter()
            .enumerate()
            .map(|(k, &tier)| {
                let name = format!("b{}", k + 1);
                BackendRt {
                    svc: 0,
                    tier,
                    key: (
                        "web".into(),
                        name.clone(),
                        SocketAddr::from(([198, 18, 1, k as u8 + 1], 80)),
                    ),
                    name: name.clone(),
                    id: k as u32,
                    weight: 1,
                    maglev_key: name,
                    machine: Machine::new(State::Up),
                    policy,
                    word: STATE_UP,
                    kept_last: false,
                    state_tx: watch::channel(State::Up).0,
                    tier_slot: tier as u32,
                    probe_now: Arc::new(tokio::sync::Notify::new()),
                    unconfirmed: None,
                    active_tx: watch::channel(false).0,
                    standby_passes: 0,
                    role_results: 0,
                }
            })
            .collect::<Vec<_>>();
        Self {
            members: (0..b.len()).collect(),
            b,
            events: Vec::new(),
            t0: Instant::now(),
        }
    }

    /// Backend `k` (1-based, as its name) answers its probe at `ms`.
    fn probe(&mut self, k: usize, ms: u64, ok: bool) {
        let at = self.t0 + Duration::from_millis(ms);
        let i = k - 1;
        let p = self.b[i].policy;
        if let (Some(tr), _) = self.b[i].machine.observe(at, ok, "test", &p) {
            self.b[i].word = word_for(tr.to, FlowsOnDown::Move);
        }
        if let Some(o) = never_dark(&mut self.b, &self.members, at) {
            self.b[o.idx].word = word_for(o.tr.to, FlowsOnDown::Move);
            self.events
                .push(override_event("web", &self.b[o.idx], &o, 0));
        }
    }

    fn serving(&self) -> Vec<&str> {
        self.b
            .iter()
            .filter(|b| serves(b))
            .map(|b| b.name.as_str())
            .collect()
    }
}

fn no_damping() -> Damping {
    Damping {
        max_changes: 100,
        window: Duration::from_secs(60),
    }
}

#[test]
fn hold_down_never_keeps_the_service_dark() {
    let hold = Failback::HoldDown(Duration::from_secs(30));
    let mut s = Svc::new(hold, no_damping(), &[0, 1]);
    // Both die.
    s.probe(1, 0, false);
    s.probe(2, 5, false);
    assert!(s.serving().is_empty());
    assert!(s.events.is_empty(), "nothing healthy to bring up");
    // The standby returns while the primary is still dead: it serves
    // as soon as it is healthy (rise 2), not after 30 s.
    s.probe(2, 100, true);
    assert!(s.serving().is_empty(), "rise is 2");
    s.probe(2, 110, true);
    assert_eq!(s.serving(), ["b2"]);
    assert_eq!(s.events.len(), 1);
    let e = &s.events[0];
    assert_eq!(e.kind, "policy-override");
    assert_eq!(e.backend.as_deref(), Some("b2"));
    assert_eq!(
        (e.from.as_deref(), e.to.as_deref()),
        (Some("down"), Some("up"))
    );
    assert_eq!(e.map_word, Some("up"));
    assert!(e.reason.contains("hold-down"), "{}", e.reason);
    // The primary returns while b2 serves: hold-down applies again.
    s.probe(1, 200, true);
    s.probe(1, 210, true);
    for ms in (300..30_000).step_by(500) {
        s.probe(1, ms, true);
        s.probe(2, ms + 1, true);
        assert_eq!(s.serving(), ["b2"], "b1 held at {ms} ms while b2 serves");
    }
    s.probe(1, 30_210, true);
    assert_eq!(s.serving(), ["b1", "b2"], "b1 back after its hold-down");
    assert_eq!(
        s.b[1].machine.state(),
        State::Up,
        "the overridden b2 stays up (a standby again, not flapped down)"
    );
    assert_eq!(s.events.len(), 1, "no other override");
}

#[test]
fn manual_failback_never_keeps_the_service_dark() {
    let mut s = Svc::new(Failback::Manual, no_damping(), &[0, 0, 1]);
    // Tier 0 dies; b3 serves.
    s.probe(1, 0, false);
    s.probe(2, 0, false);
    assert_eq!(s.serving(), ["b3"]);
    // Both recover: manual failback holds them while b3 serves.
    s.probe(2, 100, true);
    s.probe(2, 110, true);
    s.probe(1, 200, true);
    s.probe(1, 210, true);
    for ms in (300..5_000).step_by(100) {
        s.probe(1, ms, true);
        s.probe(2, ms, true);
    }
    assert_eq!(s.serving(), ["b3"], "held for an operator");
    assert!(s.events.is_empty());
    // b3 dies: every healthy backend is held and none serves. One
    // serves at once: tier 0 first, then the one healthy for longest
    // (b2, healthy since 110 ms).
    s.probe(3, 6_000, false);
    assert_eq!(s.serving(), ["b2"]);
    assert_eq!(s.events.len(), 1);
    let e = &s.events[0];
    assert_eq!(e.kind, "policy-override");
    assert_eq!(e.backend.as_deref(), Some("b2"));
    assert!(e.reason.contains("manual failback"), "{}", e.reason);
    // b1 is still held (b2 serves now), b3 recovers and is held too.
    s.probe(1, 6_100, true);
    s.probe(3, 6_100, true);
    s.probe(3, 6_110, true);
    assert_eq!(s.serving(), ["b2"]);
    assert_eq!(s.events.len(), 1);
    // An operator still releases as before.
    let p = s.b[0].policy;
    let tr = s.b[0]
        .machine
        .release(s.t0 + Duration::from_secs(7), &p)
        .expect("released")
        .expect("a change");
    assert_eq!(tr.to, State::Up);
}

#[test]
fn damping_never_keeps_the_service_dark() {
    let damping = Damping {
        max_changes: 2,
        window: Duration::from_secs(60),
    };
    let mut s = Svc::new(Failback::Auto, damping, &[0, 0]);
    // b1 flaps: down, up, down; now damped.
    s.probe(1, 0, false);
    s.probe(1, 10, true);
    s.probe(1, 20, true);
    s.probe(1, 30, false);
    s.probe(1, 40, true);
    s.probe(1, 50, true);
    assert_eq!(s.serving(), ["b2"], "b1 damped while b2 serves");
    // b2 dies: b1 is healthy and comes up despite damping.
    s.probe(2, 100, false);
    assert_eq!(s.serving(), ["b1"]);
    assert_eq!(s.events.len(), 1);
    assert!(
        s.events[0].reason.contains("flap damping"),
        "{}",
        s.events[0].reason
    );
    // Going down is still never delayed.
    s.probe(1, 110, false);
    assert!(s.serving().is_empty());
}

#[test]
fn operator_states_and_unhealthy_backends_are_never_overridden() {
    let hold = Failback::HoldDown(Duration::from_secs(30));
    let mut s = Svc::new(hold, no_damping(), &[0, 1]);
    let t = s.t0;
    s.b[1].machine.set_admin(t, Some(State::Disabled));
    s.b[1].word = STATE_DISABLED;
    s.probe(1, 0, false);
    s.probe(2, 10, true);
    s.probe(2, 20, true);
    s.probe(1, 30, true); // one pass of rise 2
    assert!(s.serving().is_empty());
    assert!(
        s.events.is_empty(),
        "disabled b2 stays disabled; b1 not healthy yet"
    );
    s.probe(1, 40, true);
    assert_eq!(s.serving(), ["b1"]);
}

#[test]
fn histogram_quantiles() {
    let mut h = Histogram::default();
    assert_eq!(h.quantile(0.5), None);
    for v in 1..=100 {
        h.record(f64::from(v));
    }
    assert_eq!(h.quantile(0.5), Some(50.0));
    assert_eq!(h.quantile(0.99), Some(99.0));
    assert_eq!(h.quantile(1.0), Some(100.0));
}

#[test]
fn tables_cover_only_serving_members() {
    let m = |up| {
        vec![
            (7, "a:1".to_string(), 1, up),
            (9, "b:1".to_string(), 1, true),
            (11, "c:1".to_string(), 1, true),
        ]
    };
    let e = build_entries(&m(false), 251).unwrap();
    assert_eq!(e.len(), 251);
    assert!(!e.contains(&0), "the down member gets no entries");
    assert!(e.contains(&1) && e.contains(&2));
    let all_down = vec![
        (7, "a:1".to_string(), 1, false),
        (9, "b:1".to_string(), 1, false),
    ];
    let e = build_entries(&all_down, 251).unwrap();
    assert!(
        e.contains(&0) && e.contains(&1),
        "nobody serving: table over everyone"
    );
}

/// Who is active when the daemon starts: the tier-0 backend the first
/// time, the saved active after that, nobody after a failed or cut-short
/// promotion (the daemon's first map write follows this).
#[test]
fn the_active_at_start() {
    let text = r#"
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
type = "tcp"
[service.promotion]
promote = ["/bin/true"]
[service.promotion.standby_check]
type = "tcp"
"#;
    let cfg = crate::config::parse(text, "t").expect("valid");
    let s = &cfg.services[0];
    assert_eq!(active_at_start(s, None).as_deref(), Some("db1"));
    let mut saved = SavedPromotion {
        active: Some("db2".into()),
        generation: 3,
        phase: "serving".into(),
        ..Default::default()
    };
    assert_eq!(active_at_start(s, Some(&saved)).as_deref(), Some("db2"));
    for phase in ["promoting", "promotion-failed"] {
        saved.phase = phase.into();
        assert_eq!(active_at_start(s, Some(&saved)), None, "{phase}");
    }
}
