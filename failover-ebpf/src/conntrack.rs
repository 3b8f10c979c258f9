//! Flow lifecycle: the state of a tracked flow, its idle timeout, and the
//! two tables it lives in.
//!
//! A flow starts in `EMBRYONIC` (a TCP SYN, or a UDP packet) and moves to
//! `CONNTRACK` only on evidence an off-path sender cannot fake: the client
//! acknowledging the backend's SYN-ACK (NAT: its sequence number is
//! recorded as it passes), a NAT backend answering a UDP flow, or a NAT
//! backend sending data or an ACK on a flow nobody tracks (it vouches for a
//! connection it holds). A flood of spoofed SYNs churns `EMBRYONIC` and
//! never evicts a verified flow.
//!
//! Time is `CLOCK` (milliseconds, written by the daemon): no clock read per
//! packet, and an entry is refreshed only when the clock has moved. An
//! entry idle for longer than its state's timeout counts as absent in both
//! directions; it is overwritten by the next flow on its tuple.

use failover_common::{FS_CLOSING, FS_ESTABLISHED, FlowKey, FlowTimeouts, FlowValue};

use crate::{
    maps::{CLOCK, CONNTRACK, EMBRYONIC, FLOW_TIMEOUTS},
    parse,
};

/// The coarse clock (ms, low 32 bits; wrapping comparisons).
#[inline(always)]
pub fn now_ms() -> u32 {
    CLOCK.get(0).copied().unwrap_or(0) as u32
}

/// Whether the entry is still alive at `now`.
#[inline(always)]
pub fn live(v: &FlowValue, now: u32) -> bool {
    now.wrapping_sub(v.seen_ms) <= v.timeout_ms
}

/// Marks the flow seen at `now` (a write only when the clock moved, so a
/// busy flow's entry is written at most ten times a second).
#[inline(always)]
pub fn seen(v: &mut FlowValue, now: u32) {
    if v.seen_ms != now {
        v.seen_ms = now;
    }
}

/// The service's timeouts (read on state changes only).
#[inline(always)]
pub fn timeouts(service_id: u32) -> FlowTimeouts {
    FLOW_TIMEOUTS
        .get(service_id)
        .copied()
        .unwrap_or(FlowTimeouts::DEFAULT)
}

/// A FIN or RST from either side: the flow is closing.
#[inline(always)]
pub fn on_flags(v: &mut FlowValue, tcp_flags: u8) {
    if parse::closing(tcp_flags) && v.state != FS_CLOSING {
        v.state = FS_CLOSING;
        v.timeout_ms = timeouts(v.service_id).closing_ms;
    }
}

/// Moves a flow from `EMBRYONIC` to `CONNTRACK` as established (`state`
/// given: a UDP flow stays UDP).
#[inline(always)]
pub fn promote(key: &FlowKey, v: &mut FlowValue, state: u8) {
    if state == FS_ESTABLISHED {
        v.timeout_ms = timeouts(v.service_id).established_ms;
    }
    v.state = state;
    // An LRU insert evicts the least recently used verified flow when the
    // table is full; failing to record is not fatal.
    let _ = CONNTRACK.insert(key, &*v, 0);
    let _ = EMBRYONIC.remove(key);
}
