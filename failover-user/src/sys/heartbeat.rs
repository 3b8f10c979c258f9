//! The daemon's heartbeat: `<state_dir>/heartbeat.json`, rewritten every
//! second by the daemon's main loop, so that `failover status` (which needs
//! no daemon) tells a live daemon from a dead or hung one, and says how old
//! its last decision is. The loop writing it is the loop that serves
//! reloads and repairs the links: a stale heartbeat means that loop is
//! stuck, whatever the process table says.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A heartbeat older than this means the daemon is not alive.
pub const STALE_MS: u64 = 3000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Heartbeat {
    pub pid: u32,
    /// When it was written (ms since the epoch).
    pub at_ms: u64,
    /// The agent's last map write (ms since the epoch; 0: none yet).
    pub last_decision_ms: u64,
    pub map_version: u64,
    /// The audit log: whether it takes records, and its head (the last
    /// line's seq and hash: `failover audit verify --head SEQ:HASH` finds a
    /// truncation or rewrite).
    #[serde(default)]
    pub audit_writable: bool,
    #[serde(default)]
    pub audit_head: String,
}

/// What a reader makes of the heartbeat.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Liveness {
    /// The heartbeat is fresh and its process exists.
    pub alive: bool,
    pub pid: Option<u32>,
    /// How old the heartbeat is (ms), if there is one.
    pub heartbeat_age_ms: Option<u64>,
    /// How old the last decision is (ms), if there was one.
    pub last_decision_age_ms: Option<u64>,
    /// From the last heartbeat.
    pub audit_writable: Option<bool>,
    pub audit_head: Option<String>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("heartbeat.json")
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writes the heartbeat (atomically; never follows a symlink).
pub fn write(state_dir: &Path, hb: &Heartbeat) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec(hb)?;
    crate::sys::files::write_atomic(&path(state_dir), &bytes)?;
    Ok(())
}

/// Reads the heartbeat and judges it at `now_ms`.
pub fn liveness(state_dir: &Path, now: u64) -> Liveness {
    let hb: Option<Heartbeat> = std::fs::read(path(state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    match hb {
        None => Liveness {
            alive: false,
            pid: None,
            heartbeat_age_ms: None,
            last_decision_age_ms: None,
            audit_writable: None,
            audit_head: None,
        },
        Some(hb) => {
            let age = now.saturating_sub(hb.at_ms);
            let exists = Path::new(&format!("/proc/{}", hb.pid)).exists();
            Liveness {
                alive: age <= STALE_MS && exists,
                pid: Some(hb.pid),
                heartbeat_age_ms: Some(age),
                last_decision_age_ms: (hb.last_decision_ms > 0)
                    .then(|| now.saturating_sub(hb.last_decision_ms)),
                audit_writable: Some(hb.audit_writable),
                audit_head: Some(hb.audit_head),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_heartbeat_of_a_live_process_is_alive_and_stale_is_not() {
        let dir = std::env::temp_dir().join(format!("failover-hb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hb = Heartbeat {
            pid: std::process::id(),
            at_ms: 10_000,
            last_decision_ms: 4_000,
            map_version: 3,
            audit_writable: true,
            audit_head: "7:ab".into(),
        };
        write(&dir, &hb).unwrap();
        let l = liveness(&dir, 11_000);
        assert!(l.alive);
        assert_eq!(l.last_decision_age_ms, Some(7_000));
        assert!(!liveness(&dir, 10_000 + STALE_MS + 1).alive, "stale");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!liveness(&dir, 11_000).alive, "missing");
    }
}
