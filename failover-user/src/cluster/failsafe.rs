//! `[cluster.failsafe]`: what keeps an etcd outage from darkening the
//! active-passive VIPs (after Patroni's failsafe mode). Every 50 ms each
//! node sends every peer a datagram: its name, whether its lease is
//! surely alive, the decision it applied, a counter; authenticated with
//! HMAC-SHA256 under a shared key, and a counter that only grows per
//! sender, so a datagram can be neither forged nor replayed.
//!
//! A node whose lease is not surely alive keeps its active-passive VIPs
//! announced only while, from every configured peer, it heard within
//! [`FRESH`] that the peer cannot reach etcd either and applied the same
//! decision. Then nobody can be moving on: a leader needs a lease. A peer
//! that reaches etcd again, or that goes quiet, ends it at once, long
//! before this node's lease could lapse (its TTL is seconds).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};
use tokio::{net::UdpSocket, sync::watch};
use tracing::{info, warn};

use super::NodeView;
use crate::config::Failsafe;

/// How recent a peer's word must be.
pub const FRESH: Duration = Duration::from_millis(300);
const EVERY: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Beat {
    node: String,
    /// Grows with every datagram of this sender (wall-clock microseconds
    /// at start, then +1): replays are refused.
    counter: u64,
    lease_valid: bool,
    applied: Option<u64>,
}

type HmacSha256 = Hmac<sha2::Sha256>;

fn seal(key: &[u8], beat: &Beat) -> anyhow::Result<Vec<u8>> {
    let body = serde_json::to_vec(beat)?;
    let mut mac = HmacSha256::new_from_slice(key).context("HMAC key")?;
    mac.update(&body);
    let tag = mac.finalize().into_bytes();
    let mut out = tag.to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

fn open(key: &[u8], datagram: &[u8]) -> Option<Beat> {
    if datagram.len() < 32 || datagram.len() > 1024 {
        return None;
    }
    let (tag, body) = datagram.split_at(32);
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    mac.update(body);
    mac.verify_slice(tag).ok()?;
    serde_json::from_slice(body).ok()
}

/// Reads the key file: at least 16 bytes, not readable by others.
pub fn read_key(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        anyhow::bail!(
            "{}: the failsafe key must not be readable by group or others (chmod 600)",
            path.display()
        );
    }
    let key = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let key: Vec<u8> = key.trim_ascii().to_vec();
    if key.len() < 16 {
        anyhow::bail!(
            "{}: the failsafe key needs at least 16 bytes",
            path.display()
        );
    }
    Ok(key)
}

#[derive(Debug, Clone)]
struct Heard {
    at: Instant,
    beat: Beat,
}

/// Sends this node's beats, reads the peers', and keeps
/// [`NodeView::failsafe_ok`] up to date.
pub async fn run(
    node: String,
    cfg: Failsafe,
    key: Vec<u8>,
    view: Arc<Mutex<NodeView>>,
    mut stop: watch::Receiver<bool>,
) {
    let sock = match UdpSocket::bind(cfg.listen).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, listen = %cfg.listen, "failsafe: cannot bind; an etcd outage will withdraw active-passive VIPs");
            return;
        }
    };
    let mut counter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64);
    let mut heard: HashMap<SocketAddr, Heard> = HashMap::new();
    let mut last_counter: HashMap<String, u64> = HashMap::new();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = [0u8; 2048];
    let mut reported = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let (lease_valid, applied) = match view.lock() {
                    Ok(v) => (v.lease_valid, v.applied.as_ref().map(|d| d.number)),
                    Err(_) => return,
                };
                counter += 1;
                let beat = Beat { node: node.clone(), counter, lease_valid, applied };
                if let Ok(d) = seal(&key, &beat) {
                    for p in &cfg.peers {
                        let _ = sock.send_to(&d, p).await;
                    }
                }
                let ok = !lease_valid
                    && applied.is_some()
                    && cfg.peers.iter().all(|p| {
                        heard.get(p).is_some_and(|h| {
                            h.at.elapsed() <= FRESH
                                && !h.beat.lease_valid
                                && h.beat.applied == applied
                        })
                    });
                if let Ok(mut v) = view.lock() {
                    if v.failsafe_ok != ok || (!lease_valid && !ok && !reported) {
                        let peers: Vec<String> = cfg
                            .peers
                            .iter()
                            .map(|p| match heard.get(p) {
                                Some(h) => format!(
                                    "{p}: {} ms ago, lease {}, decision {:?}",
                                    h.at.elapsed().as_millis(),
                                    if h.beat.lease_valid { "valid" } else { "none" },
                                    h.beat.applied
                                ),
                                None => format!("{p}: never heard"),
                            })
                            .collect();
                        info!(engaged = ok, lease_valid, applied = ?applied, peers = ?peers, "failsafe");
                        reported = !lease_valid;
                    }
                    if lease_valid {
                        reported = false;
                    }
                    v.failsafe_ok = ok;
                }
            }
            r = sock.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                // Only configured peers, only authentic, only newer.
                if !cfg.peers.contains(&from) {
                    continue;
                }
                let Some(beat) = open(&key, &buf[..n]) else { continue };
                if beat.node == node {
                    continue;
                }
                let last = last_counter.entry(beat.node.clone()).or_insert(0);
                if beat.counter <= *last {
                    continue;
                }
                *last = beat.counter;
                heard.insert(from, Heard { at: Instant::now(), beat });
            }
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_are_authenticated() {
        let key = b"0123456789abcdef0123";
        let b = Beat {
            node: "lb2".into(),
            counter: 7,
            lease_valid: false,
            applied: Some(4),
        };
        let d = seal(key, &b).expect("seal");
        assert_eq!(open(key, &d), Some(b));
        // Another key, a flipped bit, a truncated datagram: refused.
        assert_eq!(open(b"another key of 16+ bytes", &d), None);
        let mut bad = d.clone();
        if let Some(last) = bad.last_mut() {
            *last ^= 1;
        }
        assert_eq!(open(key, &bad), None);
        assert_eq!(open(key, &d[..20]), None);
    }
}
