//! Backend selection: conntrack first, then the service's priority tiers,
//! each a Maglev table over its members, with the per-backend state word
//! read on every packet.

use failover_common::{
    BackendValue, FlowKey, FlowValue, MAX_TABLE_SIZE, MAX_TIER_MEMBERS, MAX_TIERS,
    STATE_DOWN_RESET, STATE_DRAINING, STATE_UP, ServiceValue, TableValue,
};

use crate::maps::{BACKEND_STATE, BACKENDS, CONNTRACK, TABLES, TIER_ACTIVE};

#[inline(always)]
fn state(backend_id: u32) -> u32 {
    // A missing slot reads as down (0).
    BACKEND_STATE.get(backend_id).copied().unwrap_or(0)
}

/// What to do with a tracked flow.
#[derive(PartialEq, Eq)]
enum Track {
    /// Keep it on its backend (up or draining).
    Keep,
    /// Its backend went down with `reset`: answer it with a RST.
    Reset,
    /// Pick a backend anew.
    Repick,
}

/// Whether a flow may stay on the backend it is pinned to: it belongs to
/// this service and the backend is up or draining.
#[inline(always)]
fn tracked(svc: &ServiceValue, ct: &FlowValue, may_reset: bool) -> Track {
    if ct.service_id != svc.id {
        return Track::Repick;
    }
    if !matches!(BACKENDS.get(ct.backend_id), Some(b) if b.service_id == svc.id) {
        return Track::Repick;
    }
    match state(ct.backend_id) {
        STATE_UP | STATE_DRAINING => Track::Keep,
        STATE_DOWN_RESET if may_reset => Track::Reset,
        _ => Track::Repick,
    }
}

/// The outcome of backend selection.
pub enum Pick<'a> {
    To(u32, &'a BackendValue),
    /// Answer the packet with a TCP RST.
    Reset,
    /// No usable backend.
    None,
}

/// First healthy member of one tier's table for `hash`: the Maglev entry if
/// it is up, else a bounded scan of the tier's members starting at the same
/// spot (so a dead member's flows spread over the survivors until the agent
/// rebuilds the table).
#[inline(always)]
fn pick_in_table(t: &TableValue, hash: u32) -> Option<u32> {
    let count = t.member_count;
    if count == 0 || t.size == 0 {
        return None;
    }
    let idx = (hash % t.size) as usize;
    if idx >= MAX_TABLE_SIZE {
        return None;
    }
    let m = t.entries[idx] as usize;
    if m < MAX_TIER_MEMBERS {
        let b = t.members[m];
        if state(b) == STATE_UP {
            return Some(b);
        }
    }
    let start = hash % count;
    for k in 0..MAX_TIER_MEMBERS as u32 {
        if k >= count {
            break;
        }
        let i = ((start + k) % count) as usize;
        if i < MAX_TIER_MEMBERS {
            let b = t.members[i];
            if state(b) == STATE_UP {
                return Some(b);
            }
        }
    }
    None
}

/// The first tier (highest priority) with a healthy member decides.
#[inline(always)]
fn pick(svc: &ServiceValue, hash: u32) -> Option<u32> {
    for i in 0..MAX_TIERS as u32 {
        if i >= svc.tier_count {
            break;
        }
        let tier = svc.first_tier + i;
        let active = TIER_ACTIVE.get(tier).copied().unwrap_or(0) & 1;
        let Some(t) = TABLES.get(tier * 2 + active) else {
            continue;
        };
        if let Some(b) = pick_in_table(t, hash) {
            return Some(b);
        }
    }
    None
}

/// Chooses the backend for a client packet of `svc` and records the flow.
/// `may_reset`: a TCP packet other than a SYN (a flow whose backend went
/// down with `reset` is answered with a RST).
#[inline(always)]
pub fn backend_for<'a>(
    svc: &ServiceValue,
    key: &FlowKey,
    hash: u32,
    now: u64,
    may_reset: bool,
) -> Pick<'a> {
    if let Some(ct) = CONNTRACK.get_ptr_mut(key) {
        // SAFETY: a value of our LRU map; the kernel keeps it alive for the
        // program's run. Concurrent writers only store whole aligned words.
        let ct = unsafe { &mut *ct };
        match tracked(svc, ct, may_reset) {
            Track::Keep => {
                ct.last_seen_ns = now;
                return match BACKENDS.get(ct.backend_id) {
                    Some(b) => Pick::To(ct.backend_id, b),
                    None => Pick::None,
                };
            }
            Track::Reset => return Pick::Reset,
            Track::Repick => {}
        }
    }
    let Some(id) = pick(svc, hash) else {
        return Pick::None;
    };
    let Some(b) = BACKENDS.get(id) else {
        return Pick::None;
    };
    let v = FlowValue {
        backend_id: id,
        service_id: svc.id,
        last_seen_ns: now,
    };
    // An LRU insert evicts the oldest flow when full; failure to record is
    // not fatal (the next packet hashes to the same backend).
    let _ = CONNTRACK.insert(key, &v, 0);
    Pick::To(id, b)
}
