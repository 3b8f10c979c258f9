//! The failover XDP program: sends traffic for a VIP to a healthy backend.
//!
//! The packet path, one file per stage (after Katran's layout):
//! `packet` (bounds-checked access) -> `parse` (headers, 5-tuple) ->
//! `select` (conntrack, tiers, Maglev, health word) -> `nat` (rewrite and
//! checksums) -> `forward` (FIB, MACs, TX/redirect), with `stats` counting
//! every outcome and `maps` declaring the state shared with the daemon.
//!
//! Rules (see README "Packet rules"): anything that is not for a VIP passes
//! untouched; a VIP packet is forwarded, or dropped/passed by a documented
//! rule and counted; the program never returns XDP_ABORTED.
#![no_std]
#![no_main]

mod forward;
mod maps;
mod nat;
mod packet;
mod parse;
mod select;
mod stats;

use aya_ebpf::{bindings::xdp_action, helpers::bpf_ktime_get_ns, macros::xdp, programs::XdpContext};
use aya_log_ebpf::warn;
use failover_common::{
    EndpointKey, FAMILY_V4, FLAG_MODE_MASK, FLAG_NO_BACKEND_PASS, FlowKey, MODE_DSR, Reason,
    ReverseValue, ServiceValue, VipAddrKey, hash::flow_hash,
};

use crate::{
    forward::{Egress, Fib, Lookup},
    maps::{REVERSE, SERVICES, VIP_ADDRS},
    nat::Side,
    packet::Packet,
    parse::{Flow, Parsed},
    stats::Dir,
};

const PASS: u32 = xdp_action::XDP_PASS;
const DROP: u32 = xdp_action::XDP_DROP;

#[xdp]
pub fn failover(ctx: XdpContext) -> u32 {
    let pkt = Packet::new(&ctx);
    let (action, reason) = process(&ctx, &pkt);
    stats::reason(reason);
    action
}

#[inline(always)]
fn is_vip_addr(family: u8, addr: &[u8; 16]) -> bool {
    let key = VipAddrKey { addr: *addr, family, _pad: [0; 3] };
    // SAFETY: lookup result is only tested for presence.
    unsafe { VIP_ADDRS.get(&key) }.is_some()
}

#[inline(always)]
fn process(ctx: &XdpContext, pkt: &Packet) -> (u32, Reason) {
    let flow = match parse::parse(pkt) {
        Parsed::NotIp => return (PASS, Reason::PassNonIp),
        Parsed::BadIp { family, dst } => {
            return match dst {
                Some(d) if is_vip_addr(family, &d) => (DROP, Reason::DropMalformed),
                _ => (PASS, Reason::PassMalformed),
            };
        }
        Parsed::Ip(f) => f,
    };
    let k = &flow.key;
    if flow.fragment || flow.l4_truncated {
        if is_vip_addr(k.family, &k.dst) {
            let r = if flow.fragment { Reason::DropFragment } else { Reason::DropMalformed };
            return (DROP, r);
        }
        return (PASS, Reason::PassNotVip);
    }
    if !flow.l4 {
        // Not TCP/UDP (ICMP, ...): the host handles it.
        let r = if is_vip_addr(k.family, &k.dst) { Reason::PassVipOtherPort } else { Reason::PassNotVip };
        return (PASS, r);
    }
    let to = EndpointKey { addr: k.dst, port: k.dport, proto: k.proto, family: k.family };
    if let Some(svc) = SERVICES.get_ptr(&to) {
        // SAFETY: a value of our hash map, kept alive by RCU for the
        // program's run; the daemon replaces values whole, never in place.
        return to_backend(ctx, pkt, &flow, unsafe { &*svc });
    }
    let from = EndpointKey { addr: k.src, port: k.sport, proto: k.proto, family: k.family };
    if let Some(rev) = REVERSE.get_ptr(&from) {
        // SAFETY: as above.
        if let Some(out) = reply(ctx, pkt, &flow, unsafe { &*rev }) {
            return out;
        }
    }
    if is_vip_addr(k.family, &k.dst) {
        return (PASS, Reason::PassVipOtherPort);
    }
    (PASS, Reason::PassNotVip)
}

/// L3 length of the packet, for the FIB's MTU check.
#[inline(always)]
fn l3_len(pkt: &Packet, flow: &Flow) -> u16 {
    (pkt.len() - flow.l3_off) as u16
}

/// A client packet for service `svc`. Not inlined: its stack frame and the
/// reply path's are never live together.
#[inline(never)]
fn to_backend(ctx: &XdpContext, pkt: &Packet, flow: &Flow, svc: &ServiceValue) -> (u32, Reason) {
    let bytes = pkt.len() as u64;
    let k = &flow.key;
    let hash = flow_hash(&k.src, &k.dst, k.sport, k.dport, k.proto);
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some((bid, b)) = select::backend_for(svc, k, hash, now) else {
        stats::service(svc.id, Dir::Dropped, bytes);
        if svc.flags & FLAG_NO_BACKEND_PASS != 0 {
            return (PASS, Reason::PassNoBackend);
        }
        return (DROP, Reason::DropNoBackend);
    };
    let dsr = svc.flags & FLAG_MODE_MASK == MODE_DSR;
    let lookup = Lookup {
        family: k.family,
        proto: k.proto,
        src: &k.src,
        dst: &b.addr,
        sport: k.sport,
        dport: if dsr { k.dport } else { b.port },
        tot_len: l3_len(pkt, flow),
    };
    let out = match forward::fib(ctx, &lookup) {
        Fib::Ok { ifindex, smac, dmac } => {
            let Some(e) = forward::egress(ctx, ifindex) else {
                if dsr {
                    stats::service(svc.id, Dir::Dropped, bytes);
                    return (DROP, Reason::DropFibFail);
                }
                // The kernel can still route the rewritten packet.
                return pass_rewritten(pkt, flow, svc, &b.addr, b.port, Reason::PassNoEgress);
            };
            if dsr {
                send(pkt, e, smac, dmac)
            } else {
                match nat::ttl(pkt, flow) {
                    Some(t) if t > 1 => {}
                    _ => return (PASS, Reason::PassTtlExceeded),
                }
                if nat::rewrite(pkt, flow, Side::Dst, &b.addr, b.port, true).is_none() {
                    return (DROP, Reason::DropMalformed);
                }
                send(pkt, e, smac, dmac)
            }
        }
        Fib::NoNeigh if !dsr => {
            return pass_rewritten(pkt, flow, svc, &b.addr, b.port, Reason::PassNoNeigh);
        }
        Fib::NoNeigh => (DROP, Reason::DropNoNeigh),
        Fib::FragNeeded if !dsr => {
            return pass_rewritten(pkt, flow, svc, &b.addr, b.port, Reason::PassFragNeeded);
        }
        Fib::FragNeeded => (PASS, Reason::PassFragNeeded),
        Fib::Fail => (DROP, Reason::DropFibFail),
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
fn pass_rewritten(pkt: &Packet, flow: &Flow, svc: &ServiceValue, addr: &[u8; 16], port: [u8; 2], r: Reason) -> (u32, Reason) {
    if nat::rewrite(pkt, flow, Side::Dst, addr, port, false).is_none() {
        stats::service(svc.id, Dir::Dropped, pkt.len() as u64);
        return (DROP, Reason::DropMalformed);
    }
    (PASS, r)
}

#[inline(always)]
fn send(pkt: &Packet, e: Egress, smac: [u8; 6], dmac: [u8; 6]) -> (u32, Reason) {
    let r = match e {
        Egress::Tx => Reason::FwdTx,
        Egress::Redirect(_) => Reason::FwdRedirect,
    };
    match forward::send(pkt, e, smac, dmac) {
        Some(a) if a != DROP => (a, r),
        _ => (DROP, Reason::DropInternal),
    }
}

/// A packet from a NAT backend: if it belongs to a flow we sent there,
/// translate the source back to the VIP. `None`: not ours, pass untouched.
#[inline(never)]
fn reply(ctx: &XdpContext, pkt: &Packet, flow: &Flow, rev: &ReverseValue) -> Option<(u32, Reason)> {
    let k = &flow.key;
    let fkey = FlowKey {
        src: k.dst,
        dst: rev.vip,
        sport: k.dport,
        dport: rev.vport,
        proto: k.proto,
        family: k.family,
        _pad: [0; 2],
    };
    let ct = maps::CONNTRACK.get_ptr_mut(&fkey)?;
    // SAFETY: a value of our LRU map, alive for the program's run.
    let ct = unsafe { &mut *ct };
    if ct.backend_id != rev.backend_id || ct.service_id != rev.service_id {
        return None;
    }
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    ct.last_seen_ns = unsafe { bpf_ktime_get_ns() };
    let bytes = pkt.len() as u64;
    let lookup = Lookup {
        family: k.family,
        proto: k.proto,
        src: &rev.vip,
        dst: &k.dst,
        sport: rev.vport,
        dport: k.dport,
        tot_len: l3_len(pkt, flow),
    };
    let out = match forward::fib(ctx, &lookup) {
        Fib::Ok { ifindex, smac, dmac } => match forward::egress(ctx, ifindex) {
            Some(e) => {
                match nat::ttl(pkt, flow) {
                    Some(t) if t > 1 => {}
                    _ => return Some((PASS, Reason::PassTtlExceeded)),
                }
                nat::rewrite(pkt, flow, Side::Src, &rev.vip, rev.vport, true)?;
                let (a, _) = send(pkt, e, smac, dmac);
                (a, if a == DROP { Reason::DropInternal } else { Reason::FwdReply })
            }
            None => {
                nat::rewrite(pkt, flow, Side::Src, &rev.vip, rev.vport, false)?;
                (PASS, Reason::PassNoEgress)
            }
        },
        Fib::NoNeigh => {
            nat::rewrite(pkt, flow, Side::Src, &rev.vip, rev.vport, false)?;
            (PASS, Reason::PassNoNeigh)
        }
        Fib::FragNeeded => {
            nat::rewrite(pkt, flow, Side::Src, &rev.vip, rev.vport, false)?;
            (PASS, Reason::PassFragNeeded)
        }
        Fib::Fail => (DROP, Reason::DropFibFail),
    };
    if out.0 == DROP {
        stats::service(rev.service_id, Dir::Dropped, bytes);
    } else if out.1 == Reason::FwdReply {
        stats::service(rev.service_id, Dir::Reply, bytes);
    }
    if out.1 == Reason::DropInternal {
        warn!(ctx, "failover: redirect of a reply failed");
    }
    Some(out)
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
