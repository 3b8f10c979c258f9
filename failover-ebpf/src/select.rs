//! Backend selection: conntrack first, then the service's priority tiers,
//! each a Maglev table over its members, with the per-backend state word
//! read on every packet.

use failover_common::{
    FLOW_ACKED, FLOW_REPLIED, FlowValue, MAX_TABLE_SIZE, MAX_TIER_MEMBERS, MAX_TIERS, SIG_SYN_RETX,
    STATE_DOWN_RESET, STATE_DRAINING, STATE_UP, ServiceValue, TableValue,
};

use crate::{
    maps::{BACKEND_STATE, BACKENDS, CONNTRACK, Scratch, TABLES, TIER_ACTIVE},
    passive, rst,
};

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

/// The outcome of backend selection (plain numbers: `backend_for` is a
/// real BPF call, and enums with payloads do not cross those well).
pub const PICK_TO: u32 = 0;
/// Answer the packet with a TCP RST.
pub const PICK_RESET: u32 = 1;
/// No usable backend.
pub const PICK_NONE: u32 = 2;

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

/// A TCP packet (its flags in the low byte of `bits`).
pub const PKT_TCP: u32 = 1 << 8;
/// Replies come back through us (NAT): passive no-reply detection applies.
pub const PKT_NAT: u32 = 1 << 9;

/// Chooses the backend for a client packet of `svc` (the flow parsed in
/// `scratch`) and records the flow. `bits`: `PKT_*` and the TCP flags (at
/// most five arguments cross a BPF call). A TCP packet other than a SYN of
/// a flow whose backend went down with `reset` is answered with a RST.
///
/// Passive detection on the way (recorded in `op`, carried out after the
/// packet is sent on): a client retransmitting the SYN of a flow its
/// backend never answered is a failure signal (if it marks the backend
/// down, the next packet goes elsewhere); the client's first non-SYN packet
/// means the handshake completed, a success.
/// Returns `PICK_* << 32 | backend id` (one register: a returned pair
/// would take a sixth, hidden argument). Not inlined: its frame and the
/// forwarding stage's are never live together.
#[inline(never)]
pub fn backend_for(
    svc: &ServiceValue,
    scratch: &mut Scratch,
    hash: u32,
    now: u64,
    bits: u32,
) -> u64 {
    let Scratch { flow, op, fv, .. } = scratch;
    let key = &flow.key;
    let tcp = bits & PKT_TCP != 0;
    let nat = bits & PKT_NAT != 0;
    let flags = bits as u8;
    let may_reset = tcp && rst::resettable(flags);
    let syn = tcp && rst::pure_syn(flags);
    if let Some(ct) = CONNTRACK.get_ptr_mut(key) {
        // SAFETY: a value of our LRU map; the kernel keeps it alive for the
        // program's run. Concurrent writers only store whole aligned words.
        let ct = unsafe { &mut *ct };
        match tracked(svc, ct, may_reset) {
            Track::Keep => {
                ct.last_seen_ns = now;
                if syn {
                    if ct.flags & (FLOW_ACKED | FLOW_REPLIED) != 0 {
                        // A new connection reusing the tuple.
                        ct.flags = 0;
                        ct.syns = 1;
                        ct.created_ns = now;
                    } else {
                        ct.syns = ct.syns.wrapping_add(1);
                        if ct.syns > 1 {
                            op.set(
                                passive::OP_FAILURE,
                                SIG_SYN_RETX,
                                svc.id,
                                ct.backend_id,
                                now,
                            );
                        }
                    }
                } else if tcp && ct.flags & FLOW_ACKED == 0 {
                    ct.flags |= FLOW_ACKED;
                    op.set(passive::OP_SUCCESS, 0, svc.id, ct.backend_id, now);
                }
                return picked(PICK_TO, ct.backend_id);
            }
            Track::Reset => return picked(PICK_RESET, 0),
            Track::Repick => {}
        }
    }
    let Some(id) = pick(svc, hash) else {
        return picked(PICK_NONE, 0);
    };
    if syn && nat {
        op.set(passive::OP_NEW_FLOW, 0, svc.id, id, now);
    }
    // Built in scratch, field by field: not on the BPF stack.
    fv.backend_id = id;
    fv.service_id = svc.id;
    fv.last_seen_ns = now;
    fv.created_ns = now;
    fv.flags = if tcp && !syn { FLOW_ACKED } else { 0 };
    fv.syns = syn as u32;
    // An LRU insert evicts the oldest flow when full; failure to record is
    // not fatal (the next packet hashes to the same backend).
    let _ = CONNTRACK.insert(key, &*fv, 0);
    picked(PICK_TO, id)
}

#[inline(always)]
fn picked(kind: u32, id: u32) -> u64 {
    u64::from(kind) << 32 | u64::from(id)
}
