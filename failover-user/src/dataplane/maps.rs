//! The one door to the pinned maps for everything outside the loader: the
//! health agent's handles (backend states, Maglev tables, the passive guard
//! rail and its event ring) behind typed methods, and the readers and the
//! one writer the CLI uses on the pins. Nothing outside `dataplane` holds an
//! aya map handle. (The loader, [`super::Dataplane`], writes the config
//! through its own handles to the maps it created.)

use std::{
    os::fd::{AsFd, BorrowedFd},
    path::Path,
};

use anyhow::{Context as _, bail};
use aya::maps::{Array, MapData, MapError, PerCpuArray, RingBuf};
use failover_common::{
    Counter, MAX_TIER_MEMBERS, PassiveEvent, PassiveGuard, PassiveHealth, TableValue, map_names,
};
use tracing::warn;

use super::map_pin_path;

/// Opens one pinned map (its own file descriptor, no sharing with the
/// loader).
fn open_pinned(pin_dir: &Path, name: &str) -> anyhow::Result<MapData> {
    let path = map_pin_path(pin_dir, name);
    MapData::from_pin(&path).with_context(|| {
        format!(
            "opening {} (is the daemon running with this bpffs directory, and are you root?)",
            path.display()
        )
    })
}

fn pinned_array<V: aya::Pod>(pin_dir: &Path, name: &str) -> anyhow::Result<Array<MapData, V>> {
    Array::try_from(aya::maps::Map::Array(open_pinned(pin_dir, name)?))
        .with_context(|| format!("{name} has an unexpected type"))
}

/// `BACKEND_STATE`: one word per backend slot, the switch the datapath reads.
pub struct StateMap(Array<MapData, u32>);

impl StateMap {
    /// Writes backend `id`'s state word: the one syscall of a switch.
    pub fn set(&mut self, id: u32, word: u32) -> Result<(), MapError> {
        self.0.set(id, word, 0)
    }

    /// Backend `id`'s state word.
    pub fn get(&self, id: u32) -> Result<u32, MapError> {
        self.0.get(&id, 0)
    }
}

/// The passive detector's guard rail (`PASSIVE_GUARD`, per tier) and its
/// per-backend evidence (`PASSIVE_HEALTH`).
pub struct PassiveMaps {
    guard: Array<MapData, PassiveGuard>,
    health: Array<MapData, PassiveHealth>,
}

impl PassiveMaps {
    /// Gives one datapath mark's place under tier `tier`'s guard rail back.
    pub fn release_guard(&mut self, tier: u32) -> anyhow::Result<()> {
        let mut g = self.guard.get(&tier, 0).context("reading PASSIVE_GUARD")?;
        g.released = g.released.wrapping_add(1);
        self.guard.set(tier, g, 0).context("writing PASSIVE_GUARD")
    }

    /// Clears backend `id`'s evidence so the datapath may mark it again.
    pub fn clear_health(&mut self, id: u32) -> anyhow::Result<()> {
        self.health
            .set(id, PassiveHealth::default(), 0)
            .context("writing PASSIVE_HEALTH")
    }
}

/// The Maglev tables (`TABLES`, two halves per tier) and the word that says
/// which half is live (`TIER_ACTIVE`).
pub struct TableMaps {
    tables: Array<MapData, TableValue>,
    active: Array<MapData, u32>,
}

impl TableMaps {
    /// Writes tier `tier`'s table into its inactive half, then flips to it.
    pub fn write(
        &mut self,
        tier: u32,
        size: u32,
        members: &[u32],
        entries: &[u16],
    ) -> anyhow::Result<()> {
        write_table_to(
            &mut self.tables,
            &mut self.active,
            tier,
            size,
            members,
            entries,
        )
    }
}

/// The datapath's passive mark-downs (`PASSIVE_EVENTS`, a ring buffer).
pub struct PassiveRing(RingBuf<MapData>);

impl PassiveRing {
    /// The next event, if any: `Err(len)` for a record of the wrong size.
    pub fn next_event(&mut self) -> Option<Result<PassiveEvent, usize>> {
        let item = self.0.next()?;
        Some(bytemuck::try_pod_read_unaligned::<PassiveEvent>(&item).map_err(|_| item.len()))
    }
}

impl AsFd for PassiveRing {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl std::os::fd::AsRawFd for PassiveRing {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// The maps the health agent writes, opened from their pins.
pub struct AgentMaps {
    pub state: StateMap,
    pub tables: TableMaps,
    pub passive: PassiveMaps,
    /// `None` if the ring buffer cannot be opened (passive marks are then
    /// not confirmed, and say so).
    pub passive_events: Option<PassiveRing>,
}

impl AgentMaps {
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            state: StateMap(pinned_array(pin_dir, map_names::BACKEND_STATE)?),
            tables: TableMaps {
                tables: pinned_array(pin_dir, map_names::TABLES)?,
                active: pinned_array(pin_dir, map_names::TIER_ACTIVE)?,
            },
            passive: PassiveMaps {
                guard: pinned_array(pin_dir, map_names::PASSIVE_GUARD)?,
                health: pinned_array(pin_dir, map_names::PASSIVE_HEALTH)?,
            },
            passive_events: {
                match open_pinned(pin_dir, map_names::PASSIVE_EVENTS)
                    .and_then(|d| Ok(RingBuf::try_from(aya::maps::Map::RingBuf(d))?))
                {
                    Ok(r) => Some(PassiveRing(r)),
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), "cannot open the passive event ring buffer");
                        None
                    }
                }
            },
        })
    }
}

/// Sets one backend's state in the pinned map under `pin_dir` (works while
/// the daemon runs, or without it).
pub fn set_pinned_state(pin_dir: &Path, backend_id: u32, state: u32) -> anyhow::Result<()> {
    StateMap(pinned_array(pin_dir, map_names::BACKEND_STATE)?)
        .set(backend_id, state)
        .with_context(|| format!("writing BACKEND_STATE[{backend_id}]"))
}

/// A backend's forwarded-packet count (summed over CPUs) from the pinned
/// `BACKEND_STATS` under `pin_dir`.
pub fn pinned_backend_packets(pin_dir: &Path, backend_id: u32) -> anyhow::Result<u64> {
    let data = open_pinned(pin_dir, map_names::BACKEND_STATS)?;
    let a: PerCpuArray<MapData, Counter> = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
        .context("BACKEND_STATS has an unexpected type")?;
    Ok(a.get(&backend_id, 0)
        .context("reading BACKEND_STATS")?
        .iter()
        .map(|c| c.packets)
        .sum())
}

/// A backend's state word from the pinned `BACKEND_STATE` under `pin_dir`.
pub fn pinned_state(pin_dir: &Path, backend_id: u32) -> anyhow::Result<u32> {
    StateMap(pinned_array(pin_dir, map_names::BACKEND_STATE)?)
        .get(backend_id)
        .context("reading BACKEND_STATE")
}

/// Writes one tier's table into its inactive half of `tables`, then flips
/// `active[tier]` to it (one aligned 4-byte write): a packet sees either the
/// old table or the new one, never a mix.
pub(super) fn write_table_to<T1, T2>(
    tables: &mut Array<T1, TableValue>,
    active: &mut Array<T2, u32>,
    tier: u32,
    size: u32,
    members: &[u32],
    entries: &[u16],
) -> anyhow::Result<()>
where
    T1: std::borrow::BorrowMut<MapData>,
    T2: std::borrow::BorrowMut<MapData>,
{
    if members.len() > MAX_TIER_MEMBERS {
        bail!("{} members, at most {MAX_TIER_MEMBERS}", members.len());
    }
    let mut table: Box<TableValue> = bytemuck::zeroed_box();
    table.size = size;
    table.member_count = members.len() as u32;
    table.members[..members.len()].copy_from_slice(members);
    table
        .entries
        .get_mut(..entries.len())
        .context("Maglev table larger than the dataplane's capacity")?
        .copy_from_slice(entries);
    let current = active
        .get(&tier, 0)
        .with_context(|| format!("reading TIER_ACTIVE[{tier}]"))?
        & 1;
    let next = 1 - current;
    // By reference: the table is 128 KiB, not something to move.
    #[allow(clippy::needless_borrows_for_generic_args)]
    tables
        .set(tier * 2 + next, &*table, 0)
        .with_context(|| format!("writing TABLES[{}]", tier * 2 + next))?;
    active
        .set(tier, next, 0)
        .with_context(|| format!("flipping TIER_ACTIVE[{tier}]"))
}
