//! Per-CPU counters: every outcome by reason, per service and per backend.
//! Each is this CPU's slot of a per-CPU array, and nothing else on this CPU
//! runs concurrently: plain adds.

use failover_common::{Counter, Reason, ServiceStats};

use crate::{
    maps::{BACKEND_STATS, REASON_STATS, SERVICE_STATS},
    mapval,
};

#[inline(always)]
fn bump(c: &mut Counter, bytes: u64) {
    c.packets += 1;
    c.bytes += bytes;
}

#[inline(always)]
pub fn reason(r: Reason) {
    if let Some(p) = REASON_STATS.get_ptr_mut(r as u32) {
        *mapval::as_mut(p) += 1;
    }
}

/// Which per-service counter a packet goes to.
pub enum Dir {
    Fwd,
    Reply,
    Dropped,
}

#[inline(always)]
pub fn service(id: u32, dir: Dir, bytes: u64) {
    if let Some(p) = SERVICE_STATS.get_ptr_mut(id) {
        let s: &mut ServiceStats = mapval::as_mut(p);
        match dir {
            Dir::Fwd => bump(&mut s.fwd, bytes),
            Dir::Reply => bump(&mut s.reply, bytes),
            Dir::Dropped => bump(&mut s.dropped, bytes),
        }
    }
}

#[inline(always)]
pub fn backend(id: u32, bytes: u64) {
    if let Some(p) = BACKEND_STATS.get_ptr_mut(id) {
        bump(mapval::as_mut(p), bytes);
    }
}
