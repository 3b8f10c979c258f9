use std::time::Duration;

use super::*;

fn policy(failback: Failback) -> Policy {
    Policy {
        rise: 2,
        fall: 3,
        failback,
        damping: Damping {
            max_changes: 4,
            window: Duration::from_secs(10),
        },
    }
}

/// A fake clock: instants at fixed offsets from one base.
struct Clock(Instant);
impl Clock {
    fn at(&self, ms: u64) -> Instant {
        self.0 + Duration::from_millis(ms)
    }
}

#[test]
fn fall_counts_consecutive_failures_only() {
    let c = Clock(Instant::now());
    let p = policy(Failback::Auto);
    let mut m = Machine::new(State::Up);
    let (t, _) = m.observe(c.at(0), false, "refused", &p);
    assert_eq!(t.unwrap().to, State::Suspect);
    m.observe(c.at(10), false, "refused", &p);
    // A success in between resets the streak: not cumulative.
    let (t, _) = m.observe(c.at(20), true, "connected", &p);
    assert_eq!(t.unwrap().to, State::Up);
    m.observe(c.at(30), false, "refused", &p);
    m.observe(c.at(40), false, "refused", &p);
    assert_eq!(m.state(), State::Suspect);
    let (t, _) = m.observe(c.at(50), false, "refused", &p);
    let t = t.expect("down on the third consecutive failure");
    assert_eq!((t.from, t.to), (State::Suspect, State::Down));
    assert_eq!(
        t.first_failure_at,
        Some(c.at(30)),
        "the streak started at 30 ms"
    );
    assert!(t.reason.contains("3 consecutive failures"), "{}", t.reason);
}

#[test]
fn fall_one_goes_straight_down_and_rise_needs_consecutive_successes() {
    let c = Clock(Instant::now());
    let p = Policy {
        fall: 1,
        ..policy(Failback::Auto)
    };
    let mut m = Machine::new(State::Up);
    assert_eq!(
        m.observe(c.at(0), false, "x", &p).0.unwrap().to,
        State::Down
    );
    assert!(m.observe(c.at(10), true, "ok", &p).0.is_none(), "rise is 2");
    assert!(m.observe(c.at(20), false, "x", &p).0.is_none());
    assert!(
        m.observe(c.at(30), true, "ok", &p).0.is_none(),
        "streak restarted"
    );
    assert_eq!(m.observe(c.at(40), true, "ok", &p).0.unwrap().to, State::Up);
}

#[test]
fn hold_down_waits_for_continuous_health() {
    let c = Clock(Instant::now());
    let p = Policy {
        fall: 1,
        ..policy(Failback::HoldDown(Duration::from_secs(5)))
    };
    let mut m = Machine::new(State::Up);
    m.observe(c.at(0), false, "x", &p);
    m.observe(c.at(100), true, "ok", &p);
    let (t, n) = m.observe(c.at(200), true, "ok", &p); // rise reached at 200 ms
    assert!(t.is_none());
    assert!(matches!(n, Some(Notice::HeldDown(ref w)) if w.contains("hold-down")));
    assert!(m.observe(c.at(3000), true, "ok", &p).0.is_none());
    // A failure restarts the hold-down.
    m.observe(c.at(4000), false, "x", &p);
    m.observe(c.at(4100), true, "ok", &p);
    m.observe(c.at(4200), true, "ok", &p); // healthy since 4200
    assert!(
        m.observe(c.at(9100), true, "ok", &p).0.is_none(),
        "only 4.9 s stable"
    );
    assert_eq!(
        m.observe(c.at(9200), true, "ok", &p).0.unwrap().to,
        State::Up
    );
}

#[test]
fn manual_failback_needs_an_operator() {
    let c = Clock(Instant::now());
    let p = Policy {
        fall: 1,
        ..policy(Failback::Manual)
    };
    let mut m = Machine::new(State::Up);
    m.observe(c.at(0), false, "x", &p);
    assert!(m.release(c.at(5), &p).is_err(), "not healthy yet");
    for i in 1..100 {
        assert!(
            m.observe(c.at(i * 10), true, "ok", &p).0.is_none(),
            "never up by itself"
        );
    }
    assert_eq!(m.state(), State::Down);
    assert_eq!(m.health(), State::Up);
    let t = m.release(c.at(2000), &p).unwrap().unwrap();
    assert_eq!((t.from, t.to), (State::Down, State::Up));
    assert!(m.release(c.at(2001), &p).is_err(), "already up");
}

#[test]
fn false_alarms_do_not_count_towards_damping() {
    let c = Clock(Instant::now());
    let p = Policy {
        rise: 1,
        fall: 1,
        damping: Damping {
            max_changes: 2,
            window: Duration::from_secs(60),
        },
        ..policy(Failback::Auto)
    };
    let mut m = Machine::new(State::Up);
    // Five forged marks, each undone as a false alarm.
    for k in 0..5u64 {
        assert!(m.passive_down(c.at(k * 100), "forged".into()).is_some());
        assert!(
            m.passive_restore(c.at(k * 100 + 50), 1, "restored".into())
                .is_some()
        );
    }
    // A real failure and recovery still go through: 2 changes allowed.
    let (t, _) = m.observe(c.at(1000), false, "dead", &p);
    assert_eq!(t.map(|t| t.to), Some(State::Down));
    let (t, _) = m.observe(c.at(1100), true, "back", &p);
    assert_eq!(
        t.map(|t| t.to),
        Some(State::Up),
        "not damped by false alarms"
    );
    // A confirmed mark is an ordinary change: it counts.
    let mut m = Machine::new(State::Up);
    assert!(m.passive_down(c.at(0), "real".into()).is_some());
    m.passive_confirmed();
    let (t, _) = m.observe(c.at(100), true, "back", &p);
    assert_eq!(t.map(|t| t.to), Some(State::Up));
    let (t, _) = m.observe(c.at(200), false, "dead again", &p);
    assert_eq!(t.map(|t| t.to), Some(State::Down));
    let (t, _) = m.observe(c.at(300), true, "back again", &p);
    assert!(t.is_none(), "damped: three real changes within the window");
}

#[test]
fn damping_bounds_changes_per_window() {
    let c = Clock(Instant::now());
    let p = Policy {
        rise: 1,
        fall: 1,
        ..policy(Failback::Auto)
    };
    let mut m = Machine::new(State::Up);
    // Flap every 50 ms for 5 s: 100 flips of the probe result.
    let mut changes = Vec::new();
    for i in 0..100u64 {
        let ok = i % 2 == 1;
        if let (Some(t), _) = m.observe(c.at(i * 50), ok, "flap", &p)
            && t.from.serving() != t.to.serving()
        {
            changes.push(i * 50);
        }
    }
    // max_changes = 4 per 10 s window: at most 5 changes.
    assert!(changes.len() <= 5, "{changes:?}");
    assert!(
        changes.len() >= 4,
        "it did change while allowed: {changes:?}"
    );
    assert_eq!(m.state(), State::Down, "held down while flapping");
    // After the window passes, a healthy backend comes back.
    let (t, _) = m.observe(c.at(20_000), true, "ok", &p);
    assert_eq!(t.unwrap().to, State::Up);
}

#[test]
fn going_down_is_never_damped() {
    let c = Clock(Instant::now());
    let p = Policy {
        rise: 1,
        fall: 1,
        damping: Damping {
            max_changes: 1,
            window: Duration::from_secs(60),
        },
        ..policy(Failback::Auto)
    };
    let mut m = Machine::new(State::Up);
    assert_eq!(
        m.observe(c.at(0), false, "x", &p).0.unwrap().to,
        State::Down
    );
    assert!(m.observe(c.at(10), true, "ok", &p).0.is_none(), "damped");
    let mut m2 = Machine::new(State::Up);
    m2.observe(c.at(0), false, "x", &p);
    m2.changes.clear();
    assert_eq!(
        m2.observe(c.at(10), true, "ok", &p).0.unwrap().to,
        State::Up
    );
    assert_eq!(
        m2.observe(c.at(20), false, "x", &p).0.unwrap().to,
        State::Down,
        "down even over budget"
    );
}

#[test]
fn override_up_only_for_a_healthy_held_backend() {
    let c = Clock(Instant::now());
    let p = Policy {
        fall: 1,
        ..policy(Failback::HoldDown(Duration::from_secs(30)))
    };
    let mut m = Machine::new(State::Up);
    m.observe(c.at(0), false, "x", &p);
    assert!(!m.held(&p));
    assert!(m.override_up(c.at(1), &p, "dark").is_none(), "not healthy");
    m.observe(c.at(10), true, "ok", &p);
    m.observe(c.at(20), true, "ok", &p);
    assert!(m.held(&p));
    assert_eq!(m.healthy_since(), Some(c.at(20)));
    let (t, by) = m.override_up(c.at(30), &p, "dark").expect("overridden");
    assert_eq!((t.from, t.to), (State::Down, State::Up));
    assert!(
        by.as_deref().is_some_and(|b| b.contains("hold-down")),
        "{by:?}"
    );
    assert!(
        t.reason.starts_with("dark: brought up despite hold-down"),
        "{}",
        t.reason
    );
    // From then on an ordinary up backend.
    assert!(m.observe(c.at(40), true, "ok", &p).0.is_none());
    assert_eq!(
        m.observe(c.at(50), false, "x", &p).0.unwrap().to,
        State::Down
    );
    // An operator state is never overridden.
    let mut d = Machine::new(State::Up);
    d.set_admin(c.at(0), Some(State::Disabled));
    d.observe(c.at(10), true, "ok", &p);
    d.observe(c.at(20), true, "ok", &p);
    assert!(d.override_up(c.at(30), &p, "dark").is_none());
    assert_eq!(d.state(), State::Disabled);
}

#[test]
fn operator_states_hold_and_return_to_health() {
    let c = Clock(Instant::now());
    let p = policy(Failback::Auto);
    let mut m = Machine::new(State::Up);
    assert_eq!(
        m.set_admin(c.at(0), Some(State::Draining)).unwrap().to,
        State::Draining
    );
    for i in 1..=5 {
        assert!(
            m.observe(c.at(i * 10), false, "x", &p).0.is_none(),
            "no transitions while draining"
        );
    }
    assert_eq!(m.health(), State::Down);
    let t = m.set_admin(c.at(100), None).unwrap();
    assert_eq!(
        t.to,
        State::Down,
        "lifting the drain returns to what probes say"
    );
}
