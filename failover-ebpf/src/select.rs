//! Backend selection: conntrack first, then the service's priority tiers,
//! each a Maglev table over its members, with the per-backend state word
//! read on every packet.

use failover_common::{
    BackendValue, FlowKey, FlowValue, MAX_TABLE_SIZE, MAX_TIER_MEMBERS, MAX_TIERS, STATE_DRAINING,
    STATE_UP, ServiceValue, TableValue,
};

use crate::maps::{BACKEND_STATE, BACKENDS, CONNTRACK, TABLES, TIER_ACTIVE};

#[inline(always)]
fn state(backend_id: u32) -> u32 {
    // A missing slot reads as down (0).
    BACKEND_STATE.get(backend_id).copied().unwrap_or(0)
}

/// The backend a flow is pinned to, if it may keep it: the flow belongs to
/// this service, and the backend is up or draining.
#[inline(always)]
fn tracked(svc: &ServiceValue, ct: &FlowValue) -> bool {
    if ct.service_id != svc.id {
        return false;
    }
    let s = state(ct.backend_id);
    if s != STATE_UP && s != STATE_DRAINING {
        return false;
    }
    matches!(BACKENDS.get(ct.backend_id), Some(b) if b.service_id == svc.id)
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
#[inline(always)]
pub fn backend_for<'a>(
    svc: &ServiceValue,
    key: &FlowKey,
    hash: u32,
    now: u64,
) -> Option<(u32, &'a BackendValue)> {
    if let Some(ct) = CONNTRACK.get_ptr_mut(key) {
        // SAFETY: a value of our LRU map; the kernel keeps it alive for the
        // program's run. Concurrent writers only store whole aligned words.
        let ct = unsafe { &mut *ct };
        if tracked(svc, ct) {
            ct.last_seen_ns = now;
            let b = BACKENDS.get(ct.backend_id)?;
            return Some((ct.backend_id, b));
        }
    }
    let id = pick(svc, hash)?;
    let b = BACKENDS.get(id)?;
    let v = FlowValue {
        backend_id: id,
        service_id: svc.id,
        last_seen_ns: now,
    };
    // An LRU insert evicts the oldest flow when full; failure to record is
    // not fatal (the next packet hashes to the same backend).
    let _ = CONNTRACK.insert(key, &v, 0);
    Some((id, b))
}
