//! The failover XDP program: sends traffic for a VIP to a healthy backend.
//!
//! The packet path, one file per stage (after Katran's layout):
//! `packet` (bounds-checked access) -> `filter` (none of ours: passed at
//! once) -> `parse` (headers, 5-tuple) ->
//! `select` (conntrack, tiers, Maglev, health word) -> `nat` (rewrite and
//! checksums) -> `forward` (FIB, MACs, TX/redirect), with `stats` counting
//! every outcome and `maps` declaring the state shared with the daemon.
//!
//! Rules (see docs/architecture.md, "Packet rules"): anything that is not for a VIP passes
//! untouched; a VIP packet is forwarded, or dropped/passed by a documented
//! rule and counted; the program never returns XDP_ABORTED.
#![no_std]
#![no_main]
// 32-bit atomics (see atomic.rs).
#![feature(core_intrinsics)]
#![allow(internal_features)]
// Map keys are passed by reference on purpose: they live in the per-CPU
// scratch map, and passing them by value would copy them onto the 512-byte
// BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod atomic;
mod conntrack;
mod filter;
mod forward;
mod icmp;
mod maps;
mod mapval;
mod nat;
mod packet;
mod parse;
mod passive;
mod rst;
mod scratch;
mod select;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use aya_log_ebpf::warn;
use failover_common::{
    BackendValue, EndpointKey, FAMILY_V4, FLAG_MODE_MASK, FLAG_NO_BACKEND_PASS,
    FLAG_NO_BACKEND_RESET, FLOW_REPLIED, FLOW_SYN_VALID, FS_ESTABLISHED, FS_SYN, FS_UDP, FlowKey,
    MODE_DSR, PROTO_TCP, Reason, ReverseValue, SIG_RST, ServiceValue, VipAddrKey,
};

use crate::{
    forward::{Egress, Fib, Hop},
    maps::{REVERSE, SERVICES, VIP_ADDRS},
    nat::{Rewrite, Side},
    packet::Packet,
    parse::{Flow, Kind},
    scratch::{OP_FAILURE, OP_NONE, OP_SUCCESS, Op, SCRATCH, Scratch},
    stats::Dir,
};

const PASS: u32 = xdp_action::XDP_PASS;
const DROP: u32 = xdp_action::XDP_DROP;

#[xdp]
pub fn failover(ctx: XdpContext) -> u32 {
    let pkt = Packet::new(&ctx);
    if filter::none_of_ours(&pkt) {
        stats::reason(Reason::PassNotVip);
        return PASS;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        // Cannot happen (a one-slot per-CPU array always has slot 0); if it
        // did, leave the host's traffic alone.
        return PASS;
    };
    // This CPU's slot of a per-CPU array; XDP runs to completion on one
    // CPU and never nests, so nothing else uses it meanwhile.
    let scratch = mapval::as_mut(scratch);
    scratch.op.kind = OP_NONE;
    let (action, reason) = process(&ctx, &pkt, scratch);
    if scratch.op.kind != OP_NONE {
        passive::apply(&scratch.op);
    }
    stats::reason(reason);
    action
}

/// ICMP and ICMPv6, tail-called by [`failover`] with the packet parsed in
/// this CPU's scratch: a failure signal about a backend's flow (passive
/// detection), an error about a VIP flow translated and sent on along the
/// flow (`icmp.rs`); anything else goes to the host as before.
#[xdp]
pub fn failover_icmp(ctx: XdpContext) -> u32 {
    let pkt = Packet::new(&ctx);
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return PASS;
    };
    // This CPU's slot, as in `failover`; the caller's run ended.
    let scratch = mapval::as_mut(scratch);
    scratch.op.kind = OP_NONE;
    // An unreachable error about a backend's flow is a failure signal.
    passive::icmp(&ctx, &pkt, scratch);
    let v = icmp::handle(&ctx, &pkt, scratch);
    let (action, reason) = if v as u32 != icmp::NOT_HANDLED {
        let r = Reason::ALL
            .get(v as u32 as usize)
            .copied()
            .unwrap_or(Reason::DropInternal);
        ((v >> 32) as u32, r)
    } else if dst_is_vip(&scratch.flow, &mut scratch.vip) {
        (PASS, Reason::PassVipOtherPort)
    } else {
        (PASS, Reason::PassNotVip)
    };
    if scratch.op.kind != OP_NONE {
        passive::apply(&scratch.op);
    }
    stats::reason(reason);
    action
}

/// Whether the flow's destination is a VIP address (any port).
#[inline(always)]
fn dst_is_vip(flow: &Flow, key: &mut VipAddrKey) -> bool {
    *key = VipAddrKey {
        addr: flow.key.dst,
        family: flow.key.family,
        _pad: [0; 3],
    };
    VIP_ADDRS.get_ptr(&*key).is_some()
}

#[inline(always)]
fn process(ctx: &XdpContext, pkt: &Packet, scratch: &mut Scratch) -> (u32, Reason) {
    scratch.flow = Flow::new();
    parse::parse(pkt, &mut scratch.flow);
    let flow = &scratch.flow;
    match flow.kind {
        Kind::NotIp => return (PASS, Reason::PassNonIp),
        Kind::BadIp => {
            if flow.dst_known && dst_is_vip(flow, &mut scratch.vip) {
                return (DROP, Reason::DropMalformed);
            }
            return (PASS, Reason::PassMalformed);
        }
        Kind::Ip => {}
    }
    if flow.fragment || flow.l4_truncated {
        if dst_is_vip(flow, &mut scratch.vip) {
            let r = if flow.fragment {
                Reason::DropFragment
            } else {
                Reason::DropMalformed
            };
            return (DROP, r);
        }
        return (PASS, Reason::PassNotVip);
    }
    if !flow.l4 && parse::is_icmp(flow.key.family, flow.key.proto) {
        // ICMP: the program of its own (`failover_icmp`), with the parsed
        // flow in this CPU's scratch. It does not return here; if the call
        // fails (no program installed), ICMP goes to the host as below.
        // SAFETY: a tail call replaces this program; nothing is left to
        // drop or finish here.
        unsafe { maps::PROGS.tail_call(ctx, maps::PROG_ICMP) };
    }
    if !flow.l4 {
        // Not TCP/UDP (ICMP, ...): the host handles it.
        let r = if dst_is_vip(flow, &mut scratch.vip) {
            Reason::PassVipOtherPort
        } else {
            Reason::PassNotVip
        };
        return (PASS, r);
    }
    let k = &flow.key;
    scratch.ep = EndpointKey {
        addr: k.dst,
        port: k.dport,
        proto: k.proto,
        family: k.family,
    };
    if let Some(svc) = SERVICES.get_ptr(&scratch.ep) {
        // The daemon replaces service values whole, never in place.
        return to_backend(ctx, pkt, scratch, mapval::as_ref(svc));
    }
    if k.proto == PROTO_TCP && parse::pure_syn(flow.tcp_flags) {
        // Perhaps a direct connection to a NAT backend endpoint.
        direct_syn(scratch);
    }
    let flow = &scratch.flow;
    let k = &flow.key;
    scratch.ep = EndpointKey {
        addr: k.src,
        port: k.sport,
        proto: k.proto,
        family: k.family,
    };
    if let Some(rev) = REVERSE.get_ptr(&scratch.ep) {
        return reply(ctx, pkt, scratch, mapval::as_ref(rev));
    }
    if dst_is_vip(flow, &mut scratch.vip) {
        return (PASS, Reason::PassVipOtherPort);
    }
    (PASS, Reason::PassNotVip)
}

/// A SYN not addressed to a VIP. If it opens a direct connection to a NAT
/// backend endpoint, remember it (its replies stay untranslated) and forget
/// any VIP flow on the same tuple. Not inlined: only SYNs pay for it.
#[inline(never)]
fn direct_syn(scratch: &mut Scratch) {
    let Scratch { flow, ep, ct, .. } = scratch;
    let k = &flow.key;
    // `ep` holds (dst, dport, proto, family) from the service lookup.
    let Some(rev) = REVERSE.get_ptr(&*ep) else {
        return;
    };
    let rev = mapval::as_ref(rev);
    let _ = maps::DIRECT.insert(k, &conntrack::now_ms(), 0);
    *ct = FlowKey {
        src: k.src,
        dst: rev.vip,
        sport: k.sport,
        dport: rev.vport,
        proto: k.proto,
        family: k.family,
        _pad: [0; 2],
    };
    let _ = maps::CONNTRACK.remove(&*ct);
    let _ = maps::EMBRYONIC.remove(&*ct);
}

/// L3 length of the packet, for the FIB's MTU check.
#[inline(always)]
fn l3_len(pkt: &Packet, flow: &Flow) -> u16 {
    (pkt.len() - flow.l3()) as u16
}

/// A client packet for service `svc`. Not inlined: its stack frame and the
/// reply path's are never live together.
#[inline(never)]
fn to_backend(
    ctx: &XdpContext,
    pkt: &Packet,
    scratch: &mut Scratch,
    svc: &ServiceValue,
) -> (u32, Reason) {
    let bytes = pkt.len() as u64;
    let bits = {
        let flow = &scratch.flow;
        let k = &flow.key;
        if k.family == FAMILY_V4 && !parse::ipv4_header_ok(pkt, flow) {
            stats::service(svc.id, Dir::Dropped, bytes);
            return (DROP, Reason::DropMalformed);
        }
        let mut bits = 0u32;
        if k.proto == PROTO_TCP {
            bits = select::PKT_TCP;
            // Only a SYN whose checksum holds may count as evidence about
            // a backend (checked only where passive detection is on).
            if parse::pure_syn(flow.tcp_flags)
                && maps::PASSIVE_CFG
                    .get(svc.id)
                    .is_some_and(|c| c.signals != 0)
                && parse::tcp_syn_checksum_ok(pkt, flow)
            {
                bits |= select::PKT_SYN_VALID;
            }
        }
        if svc.flags & FLAG_MODE_MASK != MODE_DSR {
            bits |= select::PKT_NAT;
        }
        bits
    };
    let picked = select::backend_for(svc, scratch, bits);
    let (pick, bid) = ((picked >> 32) as u32, picked as u32);
    let Scratch { flow, fib, rw, .. } = scratch;
    let flow = &*flow;
    let k = &flow.key;
    let dsr = svc.flags & FLAG_MODE_MASK == MODE_DSR;
    let found = if pick == select::PICK_TO {
        maps::BACKENDS.get(bid)
    } else {
        None
    };
    let b = match found {
        Some(b) => b,
        // A flow of a backend that went down with `reset`, or (with
        // `on_no_backend = "reset"`) a TCP packet no backend takes: one RST
        // site for both. Never a RST for a RST.
        None if pick == select::PICK_RESET
            || (pick == select::PICK_NONE
                && svc.flags & FLAG_NO_BACKEND_RESET != 0
                && k.proto == PROTO_TCP
                && flow.tcp_flags & parse::RST == 0) =>
        {
            stats::service(svc.id, Dir::Dropped, bytes);
            if rst::build(ctx, pkt, flow) {
                return (xdp_action::XDP_TX, Reason::TxReset);
            }
            return (DROP, Reason::DropMalformed);
        }
        None => {
            stats::service(svc.id, Dir::Dropped, bytes);
            if svc.flags & FLAG_NO_BACKEND_PASS != 0 {
                return (PASS, Reason::PassNoBackend);
            }
            return (DROP, Reason::DropNoBackend);
        }
    };
    let dport = if dsr { k.dport } else { b.port };
    let iif = ctx.ingress_ifindex() as u32;
    let len = l3_len(pkt, flow);
    // The next hop: cached (see `forward.rs`), or the FIB's answer, learned.
    let tag = failover_common::addr_tag(&b.addr);
    let (e, macs) = match forward::cached(bid, tag, iif, len) {
        Hop::Cached(nh) => (forward::cached_egress(nh), (&nh.dmac, &nh.smac)),
        Hop::Miss(epoch) => {
            forward::prepare(
                fib,
                ctx,
                k.family,
                k.proto,
                &k.src,
                &b.addr,
                (k.sport, dport),
                len,
            );
            match forward::fib(ctx, fib) {
                Fib::Ok => {
                    let Some(e) = forward::egress(ctx, fib.ifindex) else {
                        if dsr {
                            stats::service(svc.id, Dir::Dropped, bytes);
                            return (DROP, Reason::DropFibFail);
                        }
                        // The kernel can still route the rewritten packet.
                        return pass_rewritten(pkt, flow, rw, svc, b, Reason::PassNoEgress);
                    };
                    forward::learn(bid, tag, fib, &e, (iif, len), epoch);
                    (e, (&fib.dmac, &fib.smac))
                }
                Fib::NoNeigh if !dsr => {
                    return pass_rewritten(pkt, flow, rw, svc, b, Reason::PassNoNeigh);
                }
                Fib::FragNeeded if !dsr => {
                    return pass_rewritten(pkt, flow, rw, svc, b, Reason::PassFragNeeded);
                }
                Fib::FragNeeded => return (PASS, Reason::PassFragNeeded),
                Fib::NoNeigh => {
                    stats::service(svc.id, Dir::Dropped, bytes);
                    return (DROP, Reason::DropNoNeigh);
                }
                Fib::Fail | Fib::Local => {
                    stats::service(svc.id, Dir::Dropped, bytes);
                    return (DROP, Reason::DropFibFail);
                }
            }
        }
    };
    let out = if dsr {
        send(ctx, pkt, flow, e, macs)
    } else {
        match nat::ttl(pkt, flow) {
            Some(t) if t > 1 => {}
            _ => return (PASS, Reason::PassTtlExceeded),
        }
        *rw = Rewrite {
            addr: b.addr,
            port: b.port,
            side: Side::Dst,
            dec_ttl: true,
        };
        if !nat::rewrite(pkt, flow, rw) {
            return (DROP, Reason::DropMalformed);
        }
        send(ctx, pkt, flow, e, macs)
    };
    match out.0 {
        DROP => stats::service(svc.id, Dir::Dropped, bytes),
        PASS => {}
        _ => {
            stats::service(svc.id, Dir::Fwd, bytes);
            stats::backend(bid, bytes);
        }
    }
    out
}

/// NAT: rewrite towards the backend and let the kernel forward it (it will
/// resolve the neighbour, fragment, or route as needed).
#[inline(always)]
fn pass_rewritten(
    pkt: &Packet,
    flow: &Flow,
    rw: &mut Rewrite,
    svc: &ServiceValue,
    b: &BackendValue,
    r: Reason,
) -> (u32, Reason) {
    *rw = Rewrite {
        addr: b.addr,
        port: b.port,
        side: Side::Dst,
        dec_ttl: false,
    };
    if !nat::rewrite(pkt, flow, rw) {
        stats::service(svc.id, Dir::Dropped, pkt.len() as u64);
        return (DROP, Reason::DropMalformed);
    }
    (PASS, r)
}

#[inline(always)]
fn send(
    ctx: &XdpContext,
    pkt: &Packet,
    flow: &Flow,
    e: Egress,
    macs: (&[u8; 6], &[u8; 6]),
) -> (u32, Reason) {
    let r = match e {
        Egress::Tx => Reason::FwdTx,
        Egress::Redirect(_) => Reason::FwdRedirect,
    };
    match forward::send(ctx, pkt, e, macs, flow.tagged()) {
        Some(a) if a != DROP => (a, r),
        _ => (DROP, Reason::DropInternal),
    }
}

/// A packet from a NAT backend endpoint. A reply of a VIP flow is
/// translated back to come from the VIP: with its conntrack entry, or
/// without one (evicted, expired while idle, a restarted daemon) from
/// `REVERSE` alone, since a backend endpoint serves one service. A reply of
/// a direct connection to the endpoint (see `direct_syn`), or one addressed
/// to this host (a health probe), is passed untouched. Not inlined, and
/// returns a plain tuple (an `Option` here would give the kernel BTF it
/// rejects).
#[inline(never)]
fn reply(
    ctx: &XdpContext,
    pkt: &Packet,
    scratch: &mut Scratch,
    rev: &ReverseValue,
) -> (u32, Reason) {
    reply_inner(ctx, pkt, scratch, rev).unwrap_or((PASS, Reason::PassNotVip))
}

/// The reply's flow has a live entry on this backend.
const REPLY_TRACKED: u32 = 0;
/// No live entry.
const REPLY_UNTRACKED: u32 = 1;
/// A live entry on another backend: not this backend's flow.
const REPLY_OTHERS: u32 = 2;

/// Follows a reply in the flow's entry (`REPLY_*`).
#[inline(always)]
fn reply_track(fkey: &FlowKey, flow: &Flow, rev: &ReverseValue, op: &mut Op) -> u32 {
    let tcp = flow.key.proto == PROTO_TCP;
    let flags = if tcp { flow.tcp_flags } else { 0 };
    let now = conntrack::now_ms();
    if let Some(ct) = maps::CONNTRACK.get_ptr_mut(fkey) {
        let ct = mapval::as_mut(ct);
        if conntrack::live(ct, now) {
            if ct.backend_id != rev.backend_id || ct.service_id != rev.service_id {
                return REPLY_OTHERS;
            }
            conntrack::seen(ct, now);
            conntrack::on_flags(ct, flags);
            return REPLY_TRACKED;
        }
    }
    let Some(e) = maps::EMBRYONIC.get_ptr_mut(fkey) else {
        return REPLY_UNTRACKED;
    };
    let e = mapval::as_mut(e);
    if !conntrack::live(e, now) {
        return REPLY_UNTRACKED;
    }
    if e.backend_id != rev.backend_id || e.service_id != rev.service_id {
        return REPLY_OTHERS;
    }
    conntrack::seen(e, now);
    let first = e.flags & FLOW_REPLIED == 0;
    if !tcp {
        // The backend answered a UDP flow: verified.
        if first {
            e.flags |= FLOW_REPLIED;
            op.set(OP_SUCCESS, 0, rev.service_id, rev.backend_id);
        }
        conntrack::promote(fkey, e, FS_UDP);
        return REPLY_TRACKED;
    }
    if e.state == FS_SYN && flow.ack == e.client_isn.wrapping_add(1) {
        if parse::syn_ack(flags) {
            // The SYN-ACK: the client's ACK of it completes the handshake.
            e.server_isn = flow.seq;
            if first {
                e.flags |= FLOW_REPLIED;
                op.set(OP_SUCCESS, 0, rev.service_id, rev.backend_id);
            }
        } else if flags & parse::RST != 0 && first && e.flags & FLOW_SYN_VALID != 0 {
            // The backend refused the SYN we forwarded: its process is gone.
            op.set(OP_FAILURE, SIG_RST, rev.service_id, rev.backend_id);
        }
    }
    conntrack::on_flags(e, flags);
    REPLY_TRACKED
}

/// `None`: not a reply of a VIP flow.
#[inline(always)]
fn reply_inner(
    ctx: &XdpContext,
    pkt: &Packet,
    scratch: &mut Scratch,
    rev: &ReverseValue,
) -> Option<(u32, Reason)> {
    let Scratch {
        flow,
        fib,
        ct: fkey,
        dk,
        rw,
        op,
        fv,
        ..
    } = scratch;
    let flow = &*flow;
    let k = &flow.key;
    *fkey = FlowKey {
        src: k.dst,
        dst: rev.vip,
        sport: k.dport,
        dport: rev.vport,
        proto: k.proto,
        family: k.family,
        _pad: [0; 2],
    };
    let tcp = k.proto == PROTO_TCP;
    let track = reply_track(fkey, flow, rev, op);
    if track == REPLY_OTHERS {
        return None;
    }
    let tracked = track == REPLY_TRACKED;
    let mut vouched = false;
    if !tracked && tcp {
        // The client's side of a direct connection, as it sent it.
        *dk = FlowKey {
            src: k.dst,
            dst: k.src,
            sport: k.dport,
            dport: k.sport,
            proto: k.proto,
            family: k.family,
            _pad: [0; 2],
        };
        if maps::DIRECT.get_ptr(&*dk).is_some() {
            return Some((PASS, Reason::PassDirect));
        }
        // Data or an ACK from the backend: it holds this connection.
        vouched = parse::plain_ack(flow.tcp_flags);
    }
    let bytes = pkt.len() as u64;
    forward::prepare(
        fib,
        ctx,
        k.family,
        k.proto,
        &rev.vip,
        &k.dst,
        (rev.vport, k.dport),
        l3_len(pkt, flow),
    );
    let fwd = if tracked {
        Reason::FwdReply
    } else {
        Reason::FwdReplyUntracked
    };
    let out = match forward::fib(ctx, fib) {
        Fib::Ok => match forward::egress(ctx, fib.ifindex) {
            Some(e) => {
                match nat::ttl(pkt, flow) {
                    Some(t) if t > 1 => {}
                    _ => return Some((PASS, Reason::PassTtlExceeded)),
                }
                *rw = Rewrite {
                    addr: rev.vip,
                    port: rev.vport,
                    side: Side::Src,
                    dec_ttl: true,
                };
                if !nat::rewrite(pkt, flow, rw) {
                    return Some((DROP, Reason::DropMalformed));
                }
                let (a, _) = send(ctx, pkt, flow, e, (&fib.dmac, &fib.smac));
                (a, if a == DROP { Reason::DropInternal } else { fwd })
            }
            None => pass_reply_rewritten(pkt, flow, rw, rev, Reason::PassNoEgress),
        },
        Fib::NoNeigh => pass_reply_rewritten(pkt, flow, rw, rev, Reason::PassNoNeigh),
        Fib::FragNeeded => pass_reply_rewritten(pkt, flow, rw, rev, Reason::PassFragNeeded),
        // Addressed to this host: a probe's answer, not a VIP flow's.
        Fib::Local if !tracked => return None,
        Fib::Local | Fib::Fail => (DROP, Reason::DropFibFail),
    };
    if out.0 == DROP {
        stats::service(rev.service_id, Dir::Dropped, bytes);
        if out.1 == Reason::DropInternal {
            warn!(ctx, "failover: redirect of a reply failed");
        }
        return Some(out);
    }
    stats::service(rev.service_id, Dir::Reply, bytes);
    if vouched {
        let t = conntrack::timeouts(rev.service_id);
        let now = conntrack::now_ms();
        fv.backend_id = rev.backend_id;
        fv.service_id = rev.service_id;
        fv.seen_ms = now;
        fv.created_ms = now;
        fv.timeout_ms = t.established_ms;
        fv.client_isn = 0;
        fv.server_isn = 0;
        fv.state = FS_ESTABLISHED;
        fv.flags = FLOW_REPLIED;
        fv.syns = 0;
        let _ = maps::CONNTRACK.insert(&*fkey, &*fv, 0);
    }
    Some(out)
}

/// A reply the kernel must forward: translated back, then passed.
#[inline(always)]
fn pass_reply_rewritten(
    pkt: &Packet,
    flow: &Flow,
    rw: &mut Rewrite,
    rev: &ReverseValue,
    r: Reason,
) -> (u32, Reason) {
    *rw = Rewrite {
        addr: rev.vip,
        port: rev.vport,
        side: Side::Src,
        dec_ttl: false,
    };
    if nat::rewrite(pkt, flow, rw) {
        (PASS, r)
    } else {
        (DROP, Reason::DropMalformed)
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

// Keep FAMILY_V4 referenced for readers of this file: IPv4 keys put the
// address in the first four bytes of the 16-byte fields.
const _: u8 = FAMILY_V4;
