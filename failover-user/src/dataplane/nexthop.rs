//! The next-hop cache's epoch (`NH_EPOCH`): the packet path caches what
//! the FIB answers for each backend (`NEXTHOPS`, per CPU) and uses it while
//! the epoch it was learned under is current. The daemon bumps the epoch
//! whenever the answer may have changed: on every rtnetlink route,
//! neighbour, address, rule or link event ([`spawn_watch`]), on every
//! change of the egress set, and at start (the pinned cache may predate a
//! change nobody watched). Between the kernel's change and the bump (the
//! event's delivery, microseconds to a millisecond) packets may still
//! leave by the old next hop; a cached entry is also looked up again after
//! `NEXTHOP_MAX_AGE_JIFFIES` (1 to 10 s), the bound if no daemon runs.

use std::{path::Path, sync::Mutex};

use anyhow::Context as _;
use aya::maps::{Array, MapData};
use failover_common::map_names;

use super::map_pin_path;
use crate::sys::netlink::RouteEvents;

/// One writer at a time (the watcher thread and the dataplane's owner):
/// the epoch must never go back to a value entries were learned under.
static BUMP: Mutex<()> = Mutex::new(());

/// Moves the epoch on by one: every cached next hop is stale.
pub fn bump<T: std::borrow::BorrowMut<MapData>>(epoch: &mut Array<T, u32>) -> anyhow::Result<()> {
    let _one = BUMP.lock().unwrap_or_else(|p| p.into_inner());
    let e = epoch.get(&0, 0).context("reading NH_EPOCH")?;
    epoch
        .set(0, e.wrapping_add(1), 0)
        .context("writing NH_EPOCH")
}

/// Subscribes to the kernel's route events (in the calling thread's network
/// namespace) and bumps the pinned epoch on each, on a thread of its own,
/// for as long as the process runs.
pub fn spawn_watch(pin_dir: &Path) -> anyhow::Result<()> {
    let mut events = RouteEvents::subscribe()
        .context("subscribing to rtnetlink route, neighbour and link events")?;
    let path = map_pin_path(pin_dir, map_names::NH_EPOCH);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut epoch: Array<MapData, u32> =
        Array::try_from(aya::maps::Map::Array(data)).context("NH_EPOCH is not an array")?;
    std::thread::Builder::new()
        .name("failover-nexthop".into())
        .spawn(move || {
            loop {
                if let Err(e) = events.wait() {
                    // Without events the cache cannot be trusted for long;
                    // entries still expire by age.
                    tracing::error!(error = %e, "route events lost; next hops now expire by age only");
                    return;
                }
                if let Err(e) = bump(&mut epoch) {
                    tracing::error!(error = %e, "cannot bump the next-hop epoch");
                }
            }
        })
        .context("starting the next-hop watcher")?;
    Ok(())
}
