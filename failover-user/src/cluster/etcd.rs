//! The node's etcd session: a client, a lease kept alive, and the
//! self-fence deadline. A lease is not a lock (the majority may delete it
//! up to TTL + 2.3 s after the node's last acknowledged keep-alive, and an
//! isolated leader may still ack keep-alives for a second after a cut;
//! docs/cluster-design): the node counts its lease valid only until the
//! *send* time of its last acknowledged keep-alive + TTL - 1 s, and
//! withdraws what needs agreement before that.

use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, PutOptions};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Etcd;

/// See [`Session::in_grace`]: longer than the spread between two nodes'
/// keep-alives (a tenth of the TTL) plus a failsafe round.
pub const GRACE: Duration = Duration::from_millis(450);

/// What the other cluster tasks see of the session.
#[derive(Clone, Default)]
pub struct Session {
    pub client: Option<Client>,
    /// The current lease (0: none).
    pub lease: i64,
    /// Bumped on every new lease: keys under the old one are gone.
    pub generation: u64,
    /// Until when the lease is surely alive (see the module doc).
    pub valid_until: Option<Instant>,
}

impl Session {
    pub fn valid(&self, now: Instant) -> bool {
        self.lease != 0 && self.valid_until.is_some_and(|t| now < t)
    }

    /// Not valid, but within [`GRACE`] of it: the time the failsafe gets to
    /// engage before anything is withdrawn (the lease still cannot lapse
    /// for another second minus the grace).
    pub fn in_grace(&self, now: Instant) -> bool {
        self.valid_until.is_some_and(|t| now < t + GRACE)
    }
}

pub async fn connect(cfg: &Etcd) -> Result<Client, etcd_client::Error> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(cfg.request_timeout)
        .with_timeout(cfg.request_timeout)
        .with_keep_alive(Duration::from_millis(500), cfg.request_timeout)
        // A member cut off from the majority answers "no leader" at once
        // instead of serving stale reads or hanging.
        .with_require_leader(true);
    Client::connect(cfg.endpoints.clone(), Some(opts)).await
}

/// Keeps a session: connects, grants a lease, puts `node_key` = `node_value`
/// under it, and keeps it alive; starts over with a new lease when the old
/// one can no longer be counted on. Runs until `stop`.
pub async fn run(
    cfg: Etcd,
    node_key: String,
    node_value: String,
    tx: watch::Sender<Session>,
    mut stop: watch::Receiver<bool>,
) {
    let ttl = cfg.lease_ttl;
    let margin = Duration::from_secs(1);
    let every = (ttl / 10).max(Duration::from_millis(100));
    let mut generation = 0u64;
    loop {
        if *stop.borrow() {
            return;
        }
        let attempt = async {
            let mut client = connect(&cfg).await?;
            let sent = Instant::now();
            let lease = client.lease_grant(ttl.as_secs() as i64, None).await?;
            let id = lease.id();
            client
                .put(
                    node_key.as_str(),
                    node_value.as_str(),
                    Some(PutOptions::new().with_lease(id)),
                )
                .await?;
            Ok::<_, etcd_client::Error>((client, id, sent))
        };
        let (mut client, id, sent) = match attempt.await {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "etcd: no session (retrying)");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        generation += 1;
        let mut valid_until = sent + ttl - margin;
        info!(
            lease = format!("{id:x}"),
            generation, "etcd: session started"
        );
        tx.send_replace(Session {
            client: Some(client.clone()),
            lease: id,
            generation,
            valid_until: Some(valid_until),
        });
        let (mut keeper, mut acks) = match client.lease_keep_alive(id).await {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "etcd: keep-alive stream failed");
                continue;
            }
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => {
                    // A clean stop revokes the lease: the node's keys go at
                    // once instead of a TTL later.
                    let _ = tokio::time::timeout(cfg.request_timeout, client.lease_revoke(id)).await;
                    return;
                }
            }
            let sent = Instant::now();
            let ok = async {
                keeper.keep_alive().await?;
                match acks.message().await? {
                    Some(r) if r.ttl() > 0 => Ok::<bool, etcd_client::Error>(true),
                    Some(_) => Ok(false),
                    None => Ok(false),
                }
            };
            match tokio::time::timeout(cfg.request_timeout, ok).await {
                Ok(Ok(true)) => {
                    valid_until = sent + ttl - margin;
                    tx.send_modify(|s| s.valid_until = Some(valid_until));
                }
                Ok(Ok(false)) => {
                    warn!(
                        lease = format!("{id:x}"),
                        "etcd: the lease has expired; a new session"
                    );
                    break;
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "etcd: keep-alive failed");
                    if Instant::now() >= valid_until {
                        break;
                    }
                    // The stream may be broken: open a new one on the same
                    // lease while it can still be alive.
                    if let Ok(Ok(v)) =
                        tokio::time::timeout(cfg.request_timeout, client.lease_keep_alive(id)).await
                    {
                        (keeper, acks) = v;
                    }
                }
                Err(_) => {
                    if Instant::now() >= valid_until {
                        warn!(
                            lease = format!("{id:x}"),
                            "etcd: no keep-alive acknowledged in time; the lease may be gone"
                        );
                        break;
                    }
                    // A late ack on this stream would be taken for the
                    // next send's: open a new stream instead.
                    if let Ok(Ok(v)) =
                        tokio::time::timeout(cfg.request_timeout, client.lease_keep_alive(id)).await
                    {
                        (keeper, acks) = v;
                    }
                }
            }
        }
        tx.send_modify(|s| s.lease = 0);
    }
}
