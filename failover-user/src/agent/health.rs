//! The backend health state machine: pure, driven by probe results and an
//! explicit clock, so every policy is unit-tested with a fake clock.
//!
//! ```text
//!          fail (< fall)              fail streak >= fall
//!   Up ------------------> Suspect -----------------------> Down
//!    ^  <------------------   |                               |
//!    |        ok              |                               | ok streak >= rise, then per failback:
//!    |                        v (fall = 1: straight to Down)  |   auto: at once
//!    +--------------------------------------------------------+   hold-down(d): after d of continuous health
//!                                                                 manual: when an operator releases it
//! ```
//!
//! Flap damping: a backend may come back up only while it has changed state
//! fewer than `max_changes` times within `window`; going down is never
//! delayed. So one backend makes at most `max_changes + 1` changes per
//! window. `Draining` and `Disabled` are operator states: probes are still
//! recorded, but no transition happens until the operator lifts them.
//!
//! Policies never keep a service dark: hold-down, manual failback and
//! damping delay a healthy backend's return only while another backend of
//! its service serves. The machine knows only its own backend; the agent,
//! which sees the whole service, brings a held backend up with
//! [`Machine::override_up`] when none serves (see `agent::never_dark`).

use std::{collections::VecDeque, time::Instant};

use crate::config::{Damping, Failback};

pub use crate::model::State;

/// The knobs of one backend's machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub rise: u32,
    pub fall: u32,
    pub failback: Failback,
    pub damping: Damping,
}

/// A state change and why it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: String,
    /// For a change to `Down`: when the first failure of the failing streak
    /// was seen (to measure first-failure-to-switch time).
    pub first_failure_at: Option<Instant>,
}

/// Something worth reporting that is not a state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Healthy again, but staying down: (reason).
    HeldDown(String),
}

#[derive(Debug, Clone)]
pub struct Machine {
    state: State,
    ok_streak: u32,
    fail_streak: u32,
    first_failure_at: Option<Instant>,
    /// When the ok streak reached `rise` (for hold-down).
    healthy_since: Option<Instant>,
    /// Times of recent state changes that the dataplane saw (for damping).
    changes: VecDeque<Instant>,
    /// Whether the last notice was already given for the current streak.
    noticed: bool,
    /// Recorded while in an operator state: where to return.
    health: State,
    /// When an unsettled passive mark took it down: a false alarm's change
    /// is taken back from `changes`.
    passive_mark_at: Option<Instant>,
}

impl Machine {
    pub fn new(initial: State) -> Self {
        Self {
            state: initial,
            ok_streak: 0,
            fail_streak: 0,
            first_failure_at: None,
            healthy_since: None,
            changes: VecDeque::new(),
            noticed: false,
            health: if initial.serving() {
                State::Up
            } else {
                State::Down
            },
            passive_mark_at: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The state probes alone would give (also while an operator state holds).
    pub fn health(&self) -> State {
        self.health
    }

    fn damped(&mut self, now: Instant, d: &Damping) -> bool {
        while let Some(&t) = self.changes.front() {
            if now.duration_since(t) >= d.window {
                self.changes.pop_front();
            } else {
                break;
            }
        }
        self.changes.len() as u32 >= d.max_changes
    }

    fn record_change(&mut self, now: Instant) {
        self.changes.push_back(now);
        // Bounded: older entries are pruned on the next check anyway.
        if self.changes.len() > 1024 {
            self.changes.pop_front();
        }
    }

    fn go(&mut self, now: Instant, to: State, reason: String) -> Option<Transition> {
        let from = self.state;
        if from == to {
            return None;
        }
        if from.serving() != to.serving() {
            self.record_change(now);
        }
        self.state = to;
        self.noticed = false;
        let first_failure_at = if to == State::Down {
            self.first_failure_at
        } else {
            None
        };
        Some(Transition {
            from,
            to,
            reason,
            first_failure_at,
        })
    }

    /// Feeds one probe result. Returns the state change it causes, if any,
    /// and a notice when a healthy backend is held down.
    pub fn observe(
        &mut self,
        now: Instant,
        ok: bool,
        detail: &str,
        p: &Policy,
    ) -> (Option<Transition>, Option<Notice>) {
        if ok {
            self.ok_streak = self.ok_streak.saturating_add(1);
            self.fail_streak = 0;
            self.first_failure_at = None;
            if self.ok_streak >= p.rise && self.healthy_since.is_none() {
                self.healthy_since = Some(now);
            }
        } else {
            self.fail_streak = self.fail_streak.saturating_add(1);
            self.ok_streak = 0;
            self.healthy_since = None;
            if self.first_failure_at.is_none() {
                self.first_failure_at = Some(now);
            }
        }
        // Track the probes' verdict separately from the operator's state.
        self.health = match (self.health, ok) {
            (State::Up | State::Suspect, true) => State::Up,
            (State::Up | State::Suspect, false) if self.fail_streak >= p.fall => State::Down,
            (State::Up | State::Suspect, false) => State::Suspect,
            (_, false) => State::Down,
            (h, true) => {
                if self.ok_streak >= p.rise {
                    State::Up
                } else {
                    h
                }
            }
        };
        if matches!(self.state, State::Draining | State::Disabled) {
            return (None, None);
        }
        match (self.state, ok) {
            (State::Up | State::Suspect, true) => (
                self.go(now, State::Up, format!("{detail} (recovered before fall)")),
                None,
            ),
            (State::Up | State::Suspect, false) => {
                if self.fail_streak >= p.fall {
                    let reason = format!("{detail} ({} consecutive failures)", self.fail_streak);
                    (self.go(now, State::Down, reason), None)
                } else {
                    let reason = format!("{detail} ({} of {} failures)", self.fail_streak, p.fall);
                    (self.go(now, State::Suspect, reason), None)
                }
            }
            (State::Down, false) => (None, None),
            (State::Down, true) => self.try_up(now, detail, p),
            (State::Draining | State::Disabled, _) => (None, None),
        }
    }

    fn try_up(
        &mut self,
        now: Instant,
        detail: &str,
        p: &Policy,
    ) -> (Option<Transition>, Option<Notice>) {
        if self.ok_streak < p.rise {
            return (None, None);
        }
        if let Some(why) = self.holding(now, p) {
            return (None, self.notice(why));
        }
        let reason = format!("{detail} ({} consecutive successes)", self.ok_streak);
        (self.go(now, State::Up, reason), None)
    }

    /// The policy that keeps a healthy down backend down now, if any:
    /// failback (manual, hold-down), then flap damping.
    fn holding(&mut self, now: Instant, p: &Policy) -> Option<String> {
        let since = self.healthy_since.unwrap_or(now);
        let hold = match p.failback {
            Failback::Auto => None,
            Failback::Manual => Some("manual failback: waiting for an operator".to_string()),
            Failback::HoldDown(d) => {
                let stable = now.duration_since(since);
                (stable < d).then(|| format!("hold-down: healthy for {stable:?} of {d:?}"))
            }
        };
        if hold.is_some() {
            return hold;
        }
        self.damped(now, &p.damping).then(|| {
            format!(
                "flap damping: {} changes within {:?} (max {})",
                self.changes.len(),
                p.damping.window,
                p.damping.max_changes
            )
        })
    }

    /// Down although its probes pass (`rise` in a row): a policy holds it.
    pub fn held(&self, p: &Policy) -> bool {
        self.state == State::Down && self.ok_streak >= p.rise
    }

    /// When its current healthy streak reached `rise`.
    pub fn healthy_since(&self) -> Option<Instant> {
        self.healthy_since
    }

    /// Brings a held backend up whatever its failback and damping say,
    /// because no backend of its service serves (a policy must never keep
    /// a service dark). Returns the change and the policy it overrode
    /// (`None` when nothing held it any more). Only for a backend that is
    /// down with `rise` passing probes; an operator state is never
    /// overridden. From then on it is an ordinary up backend.
    pub fn override_up(
        &mut self,
        now: Instant,
        p: &Policy,
        why: &str,
    ) -> Option<(Transition, Option<String>)> {
        if !self.held(p) {
            return None;
        }
        let overridden = self.holding(now, p);
        let reason = match &overridden {
            Some(h) => format!("{why}: brought up despite {h}"),
            None => format!("{why}: brought up"),
        };
        let tr = self.go(now, State::Up, reason)?;
        Some((tr, overridden))
    }

    fn notice(&mut self, why: String) -> Option<Notice> {
        if self.noticed {
            return None;
        }
        self.noticed = true;
        Some(Notice::HeldDown(why))
    }

    /// The datapath marked the backend down (passive detection): down now,
    /// unconfirmed. Only from up or suspect.
    pub fn passive_down(&mut self, now: Instant, reason: String) -> Option<Transition> {
        if !matches!(self.state, State::Up | State::Suspect) {
            return None;
        }
        self.ok_streak = 0;
        self.healthy_since = None;
        if self.first_failure_at.is_none() {
            self.first_failure_at = Some(now);
        }
        self.health = State::Down;
        self.passive_mark_at = Some(now);
        self.go(now, State::Down, reason)
    }

    /// Probes confirmed the passive mark: from now on an ordinary change.
    pub fn passive_confirmed(&mut self) {
        self.passive_mark_at = None;
    }

    /// Probes did not confirm a passive mark-down: a false alarm, undone
    /// whatever the failback policy (which governs real failures).
    pub fn passive_restore(
        &mut self,
        now: Instant,
        rise: u32,
        reason: String,
    ) -> Option<Transition> {
        let mark = self.passive_mark_at.take();
        if self.state != State::Down {
            return None;
        }
        self.ok_streak = rise;
        self.fail_streak = 0;
        self.first_failure_at = None;
        self.healthy_since = Some(now);
        self.health = State::Up;
        let tr = self.go(now, State::Up, reason);
        // A false alarm counts for nothing towards flap damping: neither
        // the mark nor its undoing.
        if let Some(at) = mark {
            self.changes.pop_back();
            if let Some(k) = self.changes.iter().rposition(|&t| t == at) {
                self.changes.remove(k);
            }
        }
        tr
    }

    /// An operator releases a backend held down by manual failback (or by
    /// hold-down): it goes up if its probes say it is healthy (damping
    /// still applies).
    pub fn release(&mut self, now: Instant, p: &Policy) -> Result<Option<Transition>, String> {
        if self.state != State::Down {
            return Err(format!("the backend is {}, not down", self.state.name()));
        }
        if self.ok_streak < p.rise {
            return Err(format!(
                "the backend is not healthy ({} of {} checks passed)",
                self.ok_streak, p.rise
            ));
        }
        if self.damped(now, &p.damping) {
            return Err("flap damping holds it down; try again later".to_string());
        }
        Ok(self.go(now, State::Up, "released by an operator".to_string()))
    }

    /// An operator drains or disables the backend, or lifts that (`None`:
    /// back to what its probes say).
    pub fn set_admin(&mut self, now: Instant, admin: Option<State>) -> Option<Transition> {
        match admin {
            Some(s @ (State::Draining | State::Disabled)) => {
                self.go(now, s, format!("{} by an operator", s.name()))
            }
            _ => {
                let to = self.health;
                self.go(now, to, "returned to its health by an operator".to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests;
