//! Backend selection: conntrack first, then the service's priority tiers,
//! each a Maglev table over its members, with the per-backend state word
//! read on every packet.

use failover_common::{
    FLOW_REPLIED, FLOW_SYN_VALID, FS_ESTABLISHED, FS_SYN, FS_UDP, FlowValue, MAX_TABLE_SIZE,
    MAX_TIER_MEMBERS, MAX_TIERS, SIG_SYN_RETX, STATE_DOWN_RESET, STATE_DRAINING, STATE_UP,
    ServiceValue, TableValue, hash::flow_hash,
};

use crate::{
    conntrack,
    maps::{BACKEND_STATE, BACKENDS, CONNTRACK, EMBRYONIC, TABLES, TIER_ACTIVE},
    mapval, parse,
    scratch::{OP_FAILURE, OP_NEW_FLOW, OP_SUCCESS, Scratch},
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

/// A TCP packet.
pub const PKT_TCP: u32 = 1 << 8;
/// Replies come back through us (NAT): passive no-reply detection applies.
pub const PKT_NAT: u32 = 1 << 9;
/// A SYN whose TCP checksum is valid: it may count as evidence.
pub const PKT_SYN_VALID: u32 = 1 << 10;

/// The shortest gap between a SYN and its retransmission that counts as
/// evidence (Linux retransmits a SYN after 1 s at the earliest).
const SYN_RETX_MIN_MS: u32 = 200;

/// Chooses the backend for a client packet of `svc` (the flow parsed in
/// `scratch`) and records the flow (see `conntrack.rs`). `bits`: `PKT_*`.
///
/// A new connection (a SYN with a sequence number other than the one the
/// tracked flow started with, or on an expired or closed entry) never
/// inherits the backend of an earlier flow on its tuple: it is picked
/// anew, so drain and failback hold for reused ports. A retransmitted SYN
/// of a handshake stays with its backend only while that backend takes new
/// flows. A TCP packet other than a SYN of a flow whose backend went down
/// with `reset` is answered with a RST.
///
/// Passive detection on the way (recorded in `op`, carried out after the
/// packet is sent on): a client retransmitting a valid SYN its backend
/// never answered is a failure signal; a new valid SYN counts towards
/// no-reply (NAT); a completed handshake is a success.
/// Returns `PICK_* << 32 | backend id` (one register: a returned pair
/// would take a sixth, hidden argument). Not inlined: its frame and the
/// forwarding stage's are never live together.
#[inline(never)]
pub fn backend_for(svc: &ServiceValue, scratch: &mut Scratch, bits: u32) -> u64 {
    let Scratch { flow, op, fv, .. } = scratch;
    let key = &flow.key;
    let tcp = bits & PKT_TCP != 0;
    let nat = bits & PKT_NAT != 0;
    let flags = if tcp { flow.tcp_flags } else { 0 };
    let may_reset = tcp && parse::resettable(flags);
    let syn = tcp && parse::pure_syn(flags);
    let now = conntrack::now_ms();
    // A tracked flow whose backend went down (with `move`) is re-pinned in
    // place to the one pick below: one copy of the tier walk in the
    // program, not three (the verifier's budget).
    let mut repin: *mut FlowValue = core::ptr::null_mut();
    if let Some(ct) = CONNTRACK.get_ptr_mut(key) {
        // Concurrent writers (other CPUs) only store whole aligned words.
        let ct = mapval::as_mut(ct);
        if conntrack::live(ct, now) {
            if syn && ct.client_isn != flow.seq {
                // A new connection reusing a verified flow's tuple: the old
                // entry must not catch its next packets.
                let _ = CONNTRACK.remove(key);
            } else {
                match tracked(svc, ct, may_reset) {
                    Track::Keep => {
                        conntrack::seen(ct, now);
                        conntrack::on_flags(ct, flags);
                        return picked(PICK_TO, ct.backend_id);
                    }
                    Track::Reset => return picked(PICK_RESET, 0),
                    Track::Repick if ct.service_id == svc.id => repin = ct,
                    Track::Repick => {}
                }
            }
        }
    }
    let embryonic = if repin.is_null() {
        EMBRYONIC.get_ptr_mut(key)
    } else {
        None
    };
    if let Some(e) = embryonic {
        let e = mapval::as_mut(e);
        if conntrack::live(e, now) && !(syn && e.client_isn != flow.seq) {
            if syn {
                // A retransmitted SYN: the handshake is not done, so it may
                // only stay with a backend that takes new flows (else it is
                // picked anew below, a new entry).
                if e.service_id == svc.id
                    && owned(svc, e.backend_id)
                    && state(e.backend_id) == STATE_UP
                {
                    // Evidence only as a TCP stack retransmits: not sooner
                    // than `SYN_RETX_MIN_MS` after the previous SYN (an
                    // off-path sender can repeat a SYN at once, before the
                    // backend's answer is back).
                    let paced = now.wrapping_sub(e.seen_ms) >= SYN_RETX_MIN_MS;
                    conntrack::seen(e, now);
                    e.syns = e.syns.wrapping_add(1);
                    let evidence = FLOW_SYN_VALID | FLOW_REPLIED;
                    if paced && bits & PKT_SYN_VALID != 0 && e.flags & evidence == FLOW_SYN_VALID {
                        op.set(OP_FAILURE, SIG_SYN_RETX, svc.id, e.backend_id);
                    }
                    return picked(PICK_TO, e.backend_id);
                }
            } else {
                match tracked(svc, e, may_reset) {
                    Track::Keep => {
                        conntrack::seen(e, now);
                        conntrack::on_flags(e, flags);
                        let id = e.backend_id;
                        if tcp
                            && e.state == FS_SYN
                            && completes_handshake(e, flow.seq, flow.ack, flags, nat)
                        {
                            op.set(OP_SUCCESS, 0, svc.id, id);
                            conntrack::promote(key, e, FS_ESTABLISHED);
                        }
                        return picked(PICK_TO, id);
                    }
                    Track::Reset => return picked(PICK_RESET, 0),
                    Track::Repick if e.service_id == svc.id => repin = e,
                    Track::Repick => {}
                }
            }
        }
    }
    // The flow hash only now: a tracked flow (most packets) never needs it.
    let hash = flow_hash(&key.src, &key.dst, key.sport, key.dport, key.proto);
    let Some(id) = pick(svc, hash) else {
        return picked(PICK_NONE, 0);
    };
    if !repin.is_null() {
        // `repin` points to a live value of one of our LRU maps (found above
        // in this run). Kept as a raw pointer until here: as an
        // `Option<&mut FlowValue>` it compiles to ~120 more instructions.
        let v = mapval::as_mut(repin);
        v.backend_id = id;
        v.created_ms = now;
        conntrack::seen(v, now);
        conntrack::on_flags(v, flags);
        return picked(PICK_TO, id);
    }
    if tcp && !syn {
        // Mid-stream without an entry (evicted, expired, a restarted
        // daemon): forwarded by the table alone. Nothing is recorded for
        // what an off-path sender can send; a NAT backend's answer vouches
        // for the flow (see `reply`).
        return picked(PICK_TO, id);
    }
    let t = conntrack::timeouts(svc.id);
    // Built in scratch, field by field: not on the BPF stack.
    fv.backend_id = id;
    fv.service_id = svc.id;
    fv.seen_ms = now;
    fv.created_ms = now;
    fv.server_isn = 0;
    fv.syns = syn as u16;
    if tcp {
        fv.state = FS_SYN;
        fv.timeout_ms = t.syn_ms;
        fv.client_isn = flow.seq;
        fv.flags = if bits & PKT_SYN_VALID != 0 {
            FLOW_SYN_VALID
        } else {
            0
        };
        if nat && bits & PKT_SYN_VALID != 0 {
            op.set(OP_NEW_FLOW, 0, svc.id, id);
        }
    } else {
        fv.state = FS_UDP;
        fv.timeout_ms = t.udp_ms;
        fv.client_isn = 0;
        fv.flags = 0;
    }
    // An LRU insert evicts the oldest unverified flow when full; failure
    // to record is not fatal (the next packet hashes to the same backend).
    let _ = EMBRYONIC.insert(key, &*fv, 0);
    picked(PICK_TO, id)
}

/// Whether backend `id` is one of the service's.
#[inline(always)]
fn owned(svc: &ServiceValue, id: u32) -> bool {
    matches!(BACKENDS.get(id), Some(b) if b.service_id == svc.id)
}

/// The client's ACK that completes a handshake: NAT, it acknowledges the
/// backend's SYN-ACK (recorded as it passed); DSR (replies are not seen),
/// it follows the client's SYN.
#[inline(always)]
fn completes_handshake(e: &FlowValue, seq: u32, ack: u32, flags: u8, nat: bool) -> bool {
    if !parse::plain_ack(flags) {
        return false;
    }
    if nat {
        e.flags & FLOW_REPLIED != 0 && ack == e.server_isn.wrapping_add(1)
    } else {
        seq == e.client_isn.wrapping_add(1)
    }
}

#[inline(always)]
fn picked(kind: u32, id: u32) -> u64 {
    u64::from(kind) << 32 | u64::from(id)
}
