//! The agent's helper tasks: probe loops, the passive event reader, the
//! neighbour keeper for DSR, saving states, and the Maglev table rebuilds.

use super::*;

/// Keeps neighbour entries for `addrs` fresh: an empty UDP datagram to the
/// discard port of each, at once and every few seconds, makes the kernel
/// resolve (and keep) its MAC address. `bpf_fib_lookup` then finds it.
pub(super) async fn neighbour_task(addrs: Vec<std::net::IpAddr>, mut stop: watch::Receiver<bool>) {
    loop {
        for a in &addrs {
            let bind: SocketAddr = if a.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            if let Ok(s) = tokio::net::UdpSocket::bind(bind).await {
                let _ = s.send_to(&[], SocketAddr::new(*a, 9)).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A small xorshift generator for jitter (no need for cryptographic quality).
pub(super) struct Jitter(u64);

impl Jitter {
    fn new(seed: u64) -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        Self((seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ t) | 1)
    }
    /// A factor in [1 - j, 1 + j].
    fn factor(&mut self, j: f64) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let u = (self.0 >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
        1.0 + j * (2.0 * u - 1.0)
    }
}

/// Probes one backend for as long as the agent runs. `standby`: with
/// roles, the standby check and whether the backend is (being made) the
/// active: the active check (`check`) while it is, the standby check
/// otherwise.
#[allow(clippy::too_many_arguments)]
pub(super) async fn probe_loop(
    idx: usize,
    check: Check,
    standby: Option<(Check, watch::Receiver<bool>)>,
    target: Target,
    tx: mpsc::Sender<ProbeMsg>,
    state_rx: watch::Receiver<State>,
    probe_now: Arc<tokio::sync::Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut jitter = Jitter::new(idx as u64 + 1);
    // Start at a random point of the first interval so probes spread out.
    let mut wait = check.interval.mul_f64((jitter.factor(0.5) - 0.5).max(0.0));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = probe_now.notified() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let started = Instant::now();
        let (check, active_check) = match &standby {
            Some((c, active)) if !*active.borrow() => (c, false),
            _ => (&check, true),
        };
        let result = tokio::select! {
            r = probe::probe(&check.probe, &target, check.timeout) => r,
            _ = stop.changed() => return,
        };
        let ok = result.ok;
        if tx
            .send(ProbeMsg {
                idx,
                result,
                at: Instant::now(),
                active_check,
            })
            .await
            .is_err()
        {
            return;
        }
        let suspect = !ok || *state_rx.borrow() == State::Suspect;
        let base = if suspect {
            check.fast_interval
        } else {
            check.interval
        };
        // Intervals run from start to start (a probe that timed out does
        // not push the next one back by its timeout); a probe longer than
        // the interval is followed at once.
        wait = (started + base.mul_f64(jitter.factor(check.jitter)))
            .saturating_duration_since(Instant::now());
    }
}

/// Reads the datapath's passive mark-down events as they come.
pub(super) async fn passive_task(
    ring: Option<PassiveRing>,
    tx: mpsc::Sender<PassiveEvent>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(ring) = ring else {
        warn!("no passive event ring buffer: passive mark-downs are not confirmed");
        return;
    };
    // SAFETY: the ring buffer owns its map fd, which stays open and the
    // same for as long as the `AsyncFd` owns the ring.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e.into_parts().1, "cannot poll the passive event ring buffer");
            return;
        }
    };
    loop {
        let mut guard = tokio::select! {
            g = fd.readable_mut() => match g {
                Ok(g) => g,
                Err(e) => {
                    warn!(error = %e, "polling the passive event ring buffer failed");
                    return;
                }
            },
            _ = stop.changed() => return,
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next_event() {
            match item {
                Ok(ev) => {
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
                Err(len) => warn!(len, "malformed passive event"),
            }
        }
        guard.clear_ready();
    }
}

/// One backend's state as saved in `<state_dir>/states.json`, so that a
/// restarted daemon starts from what the previous one knew.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SavedState {
    pub service: String,
    pub backend: String,
    pub address: SocketAddr,
    pub state: State,
    /// Healthy but kept down by a policy (manual failback, hold-down, flap
    /// damping): `held` to readers (the CLI reads this file).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
    /// With `[service.promotion]`: active, standby or fenced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// The states saved by a previous run (empty if none or unreadable).
pub fn load_states(path: &std::path::Path) -> HashMap<BackendKey, State> {
    let Ok(bytes) = std::fs::read(path) else {
        return HashMap::new();
    };
    match serde_json::from_slice::<Vec<SavedState>>(&bytes) {
        Ok(v) => v
            .into_iter()
            .map(|s| ((s.service, s.backend, s.address), s.state))
            .collect(),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "ignoring unreadable saved states");
            HashMap::new()
        }
    }
}

/// Writes saved states as they change (coalesced), atomically.
pub(super) async fn persist_task(
    path: std::path::PathBuf,
    mut rx: watch::Receiver<Vec<SavedState>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            c = rx.changed() => if c.is_err() { return },
            _ = stop.changed() => return,
        }
        let snapshot = rx.borrow_and_update().clone();
        let path = path.clone();
        let res = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            crate::sys::files::write_atomic(&path, &serde_json::to_vec_pretty(&snapshot)?)?;
            Ok(())
        })
        .await;
        if let Ok(Err(e)) | Err(e) = res.map_err(anyhow::Error::from) {
            warn!(error = %format!("{e:#}"), "saving backend states failed");
        }
    }
}

/// A table rebuild request: one tier, its members and which take new flows.
pub(super) struct TableJob {
    pub(super) tier: u32,
    pub(super) size: u32,
    /// (backend id, Maglev key, weight, takes new flows)
    pub(super) members: Vec<(u32, String, u32, bool)>,
}

/// Rebuilds tiers' Maglev tables over the members that take new flows (all
/// of them if none does), off the switching path, coalescing bursts (the
/// latest job per tier wins); each table is written into the inactive half
/// and swapped in with one write.
pub(super) async fn table_task(
    mut rx: mpsc::UnboundedReceiver<TableJob>,
    tables: TableMaps,
    mut stop: watch::Receiver<bool>,
) {
    let maps = Arc::new(std::sync::Mutex::new(tables));
    loop {
        let first = tokio::select! {
            j = rx.recv() => match j { Some(j) => j, None => return },
            _ = stop.changed() => return,
        };
        // Coalesce a burst of changes: keep the newest job per tier.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let mut pending: Vec<TableJob> = vec![first];
        while let Ok(j) = rx.try_recv() {
            pending.retain(|p| p.tier != j.tier);
            pending.push(j);
        }
        for job in pending {
            let maps = maps.clone();
            let tier = job.tier;
            let res = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let entries = build_entries(&job.members, job.size)?;
                let ids: Vec<u32> = job.members.iter().map(|m| m.0).collect();
                let mut guard = maps
                    .lock()
                    .map_err(|_| anyhow::anyhow!("table maps lock poisoned"))?;
                guard.write(job.tier, job.size, &ids, &entries)
            })
            .await;
            match res {
                Ok(Ok(())) => debug!(tier, "table rebuilt"),
                Ok(Err(e)) => {
                    warn!(tier, error = %format!("{e:#}"), "table rebuild failed; the old table stays")
                }
                Err(e) => warn!(tier, error = %e, "table rebuild task failed"),
            }
        }
    }
}

/// Maglev entries (indexes into `members`) over the members that take new
/// flows, or over all of them when none does.
pub(super) fn build_entries(
    members: &[(u32, String, u32, bool)],
    size: u32,
) -> anyhow::Result<Vec<u16>> {
    let chosen: Vec<usize> = (0..members.len()).filter(|&k| members[k].3).collect();
    let chosen = if chosen.is_empty() {
        (0..members.len()).collect()
    } else {
        chosen
    };
    let list: Vec<maglev::Member> = chosen
        .iter()
        .map(|&k| maglev::Member {
            key: members[k].1.clone(),
            weight: members[k].2,
        })
        .collect();
    let table = maglev::build(&list, size).context("building a Maglev table")?;
    Ok(table
        .into_iter()
        .map(|e| chosen[usize::from(e)] as u16)
        .collect())
}
