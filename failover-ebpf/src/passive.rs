//! Passive failure detection: what the packet path itself sees about a
//! backend (a RST answering a SYN, ICMP unreachable about one of its flows,
//! clients retransmitting SYNs it never answered, new flows without any
//! reply), counted per backend; when a service's thresholds are crossed the
//! program marks the backend down itself (one compare-and-swap of its
//! state word, within the tier's guard rail) and tells the agent through a
//! ring buffer. The agent confirms with active probes, restores false
//! alarms, and owns every failback.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};
use failover_common::{
    FAMILY_V4, FLOW_REPLIED, FLOW_SYN_VALID, FS_SYN, PassiveEvent, PassiveHealth, PassiveStats,
    SIG_ICMP, SIG_NO_REPLY, SIGNAL_COUNT, STATE_UP,
};

use crate::{
    atomic, conntrack,
    forward::{self, Fib},
    maps::{
        BACKEND_STATE, BACKENDS, EMBRYONIC, PASSIVE_CFG, PASSIVE_EVENTS, PASSIVE_GUARD,
        PASSIVE_HEALTH, PASSIVE_MARKED, PASSIVE_STATS, REVERSE,
    },
    mapval,
    packet::Packet,
    parse::{self, ICMP_DEST_UNREACH, ICMPV6_DEST_UNREACH, IPPROTO_ICMP, IPPROTO_ICMPV6, TCP_SEQ},
    scratch::{OP_FAILURE, OP_NEW_FLOW, OP_SUCCESS, Op, Scratch},
};

/// Carries out the recorded operation (the only clock read of the packet
/// path, and only for packets that carry a signal).
#[inline(never)]
pub fn apply(op: &Op) {
    match op.kind {
        OP_FAILURE => {
            // SAFETY: bpf_ktime_get_ns has no preconditions.
            let now = unsafe { bpf_ktime_get_ns() };
            failure(op.sid, op.bid, op.sig, now)
        }
        OP_SUCCESS => success(op.bid),
        OP_NEW_FLOW => {
            // SAFETY: as above.
            let now = unsafe { bpf_ktime_get_ns() };
            new_flow(op.sid, op.bid, now)
        }
        _ => {}
    }
}

#[inline(always)]
fn stats(backend_id: u32, f: impl FnOnce(&mut PassiveStats)) {
    // This CPU's slot of a per-CPU array.
    if let Some(p) = PASSIVE_STATS.get_ptr_mut(backend_id) {
        f(mapval::as_mut(p));
    }
}

#[inline(always)]
fn count_signal(backend_id: u32, sig: u32) {
    stats(backend_id, |s| {
        if (sig as usize) < SIGNAL_COUNT {
            s.signals[sig as usize] += 1;
        }
    });
}

#[inline(always)]
fn health(backend_id: u32) -> Option<&'static mut PassiveHealth> {
    let p = PASSIVE_HEALTH.get_ptr_mut(backend_id)?;
    // Shared by all CPUs: counters are updated with atomics, timestamps
    // with plain aligned 8-byte stores (a lost update only delays a
    // decision).
    Some(mapval::as_mut(p))
}

/// A failure signal `sig` about backend `bid` of service `sid`.
#[inline(always)]
fn failure(sid: u32, bid: u32, sig: u32, now: u64) {
    count_signal(bid, sig);
    let Some(cfg) = PASSIVE_CFG.get(sid) else {
        return;
    };
    if sig >= 32 || cfg.signals & (1 << sig) == 0 {
        return;
    }
    let Some(h) = health(bid) else {
        return;
    };
    if now.wrapping_sub(h.window_start_ns) > cfg.window_ns {
        h.window_start_ns = now;
        h.fails = 0;
    }
    atomic::add(&mut h.fails, 1);
    let fails = atomic::read_once(&h.fails);
    if fails >= u64::from(cfg.failures) {
        mark_down(sid, bid, sig, fails as u32, cfg.down_word, now);
    }
}

/// The backend answered: its failure streak ends.
#[inline(always)]
fn success(bid: u32) {
    let Some(h) = health(bid) else {
        return;
    };
    // Write only when needed: replies are frequent, the line is shared.
    if h.fails != 0 {
        h.fails = 0;
    }
    if h.pending_since_ns != 0 || h.pending != 0 {
        h.pending = 0;
        h.pending_since_ns = 0;
    }
}

/// A new TCP flow was sent to backend `bid` (NAT): with `SIG_NO_REPLY`,
/// too many new flows without any reply for too long mark it down.
#[inline(always)]
fn new_flow(sid: u32, bid: u32, now: u64) {
    let Some(cfg) = PASSIVE_CFG.get(sid) else {
        return;
    };
    if cfg.signals & (1 << SIG_NO_REPLY) == 0 {
        return;
    }
    let Some(h) = health(bid) else {
        return;
    };
    if h.pending_since_ns == 0 {
        h.pending_since_ns = now;
    }
    atomic::add(&mut h.pending, 1);
    let pending = atomic::read_once(&h.pending);
    if pending >= u64::from(cfg.failures) && now.wrapping_sub(h.pending_since_ns) >= cfg.no_reply_ns
    {
        count_signal(bid, SIG_NO_REPLY);
        mark_down(sid, bid, SIG_NO_REPLY, pending as u32, cfg.down_word, now);
    }
}

/// Marks `bid` down if it is up and its tier's guard rail allows one more
/// passive mark; tells the agent.
#[inline(always)]
fn mark_down(sid: u32, bid: u32, sig: u32, count: u32, word: u32, now: u64) {
    let Some(b) = BACKENDS.get(bid) else {
        return;
    };
    if b.service_id != sid {
        return;
    }
    let tier = b.tier;
    let Some(guard) = PASSIVE_GUARD.get(tier) else {
        return;
    };
    let Some(marked) = PASSIVE_MARKED.get_ptr_mut(tier) else {
        return;
    };
    let marked = mapval::as_mut(marked);
    let Some(state) = BACKEND_STATE.get_ptr_mut(bid) else {
        return;
    };
    let state = mapval::as_mut(state);
    let Some(h) = health(bid) else {
        return;
    };
    if atomic::read_once(state) != STATE_UP {
        // Already down, or in an operator's hands.
        return;
    }
    if h.marked_ns != 0 {
        // Marked already; the agent has not settled it yet.
        return;
    }
    // Take a place under the guard rail: add first, then look. Every CPU
    // that stays counts itself, so the limit holds; two racing CPUs may
    // both back off (the next signal tries again). Two CPUs may both mark
    // the same backend: the agent settles the second event at once.
    atomic::add(marked, 1);
    let taken = atomic::read_once(marked);
    if taken.wrapping_sub(1).wrapping_sub(guard.released) >= guard.limit {
        atomic::add(marked, u64::MAX);
        stats(bid, |s| s.suppressed += 1);
        return;
    }
    h.marked_ns = now.max(1);
    // The agent writes the same word whole.
    atomic::write_once(state, word);
    stats(bid, |s| s.marked += 1);
    h.fails = 0;
    h.pending = 0;
    h.pending_since_ns = 0;
    // Written in place in the ring (no copy on the BPF stack). A full ring
    // loses the event, not the decision: the agent also reads the state
    // words.
    if let Some(mut e) = PASSIVE_EVENTS.reserve(0) {
        let p: *mut PassiveEvent = e.as_mut_ptr();
        // SAFETY: `p` points to a reserved, exclusively ours ring slot of
        // `size_of::<PassiveEvent>()` bytes; every field is written before
        // the submit.
        unsafe {
            (*p).ts_ns = now;
            (*p).service_id = sid;
            (*p).backend_id = bid;
            (*p).signal = sig;
            (*p).count = count;
        }
        e.submit(0);
    }
}

/// An ICMP/ICMPv6 "destination unreachable" quoting a flow the load
/// balancer sent to a NAT backend. It counts only as evidence nobody off
/// the path can make: it quotes an unanswered handshake the load balancer
/// forwarded (a valid SYN, its initial sequence number), is addressed to
/// that flow's client, and arrives on the interface the load balancer
/// reaches the backend through.
#[inline(never)]
pub fn icmp(ctx: &XdpContext, pkt: &Packet, scratch: &mut Scratch) {
    let Scratch {
        flow,
        quote,
        ep,
        ct,
        op,
        fib,
        ..
    } = scratch;
    let Some([ty, code]) = parse::icmp_type_code(pkt, flow) else {
        return;
    };
    if flow.key.family == FAMILY_V4 {
        // Destination unreachable; codes net/host/protocol/port unreachable
        // and administratively prohibited.
        if flow.key.proto != IPPROTO_ICMP
            || ty != ICMP_DEST_UNREACH
            || !matches!(code, 0..=3 | 9 | 10 | 13)
        {
            return;
        }
    } else if flow.key.proto != IPPROTO_ICMPV6 || ty != ICMPV6_DEST_UNREACH || code > 6 {
        // ICMPv6 destination unreachable, any code (no route, prohibited,
        // beyond scope, address/port unreachable, policy, reject route).
        return;
    }
    let q = &mut quote.pkt;
    if !parse::quote(pkt, flow, q) {
        return;
    }
    // The quoted sequence number: a handshake's is the client's ISN.
    let Some(seq) = pkt.load::<[u8; 4]>(q.l4() + TCP_SEQ) else {
        return;
    };
    let quoted_seq = u32::from_be_bytes(seq);
    ep.addr = q.dst;
    ep.port = q.dport;
    ep.proto = q.proto;
    ep.family = flow.key.family;
    ct.src = q.src;
    ct.sport = q.sport;
    ct.proto = q.proto;
    ct.family = flow.key.family;
    if ct.src != flow.key.dst {
        // Not addressed to the quoted packet's source (the client).
        return;
    }
    let Some(rev) = REVERSE.get_ptr(&*ep) else {
        return;
    };
    let rev = mapval::as_ref(rev);
    ct.dst = rev.vip;
    ct.dport = rev.vport;
    ct._pad = [0; 2];
    let Some(f) = EMBRYONIC.get_ptr(&*ct) else {
        return;
    };
    let f = mapval::as_ref(f);
    let evidence = f.flags & (FLOW_SYN_VALID | FLOW_REPLIED) == FLOW_SYN_VALID;
    if f.backend_id != rev.backend_id
        || f.state != FS_SYN
        || !evidence
        || f.client_isn != quoted_seq
        || !conntrack::live(f, conntrack::now_ms())
    {
        // Not this backend's unanswered handshake.
        return;
    }
    // From the backend's side: the interface the FIB sends its traffic to.
    let addr = ep.addr;
    forward::prepare(
        fib,
        ctx,
        ep.family,
        ep.proto,
        &flow.key.dst,
        &addr,
        (ct.sport, ep.port),
        0,
    );
    if !matches!(forward::fib(ctx, fib), Fib::Ok | Fib::NoNeigh)
        || fib.ifindex != ctx.ingress_ifindex() as u32
    {
        return;
    }
    op.set(OP_FAILURE, SIG_ICMP, rev.service_id, rev.backend_id);
}
