//! ICMP and ICMPv6 errors about VIP flows (after Katran's `handle_icmp`):
//! destination unreachable (fragmentation needed included), packet too big
//! and time exceeded follow the flow they quote, so path-MTU discovery
//! works through the VIP.
//!
//! - To a VIP (a router on the clients' side, about a reply we sent from the
//!   VIP): sent on to the backend that serves the quoted flow (its live
//!   entry); NAT rewrites the outer destination and the quoted source to the
//!   backend's address and port.
//! - To a client, from the backends' side, quoting a packet we sent to a NAT
//!   backend: the quoted destination becomes the VIP and its port, and the
//!   outer source too when it is the backend itself.
//!
//! The outer and quoted IPv4 header checksums, the quoted TCP/UDP checksum
//! when it lies inside the quote, and the ICMP checksum (with its IPv6
//! pseudo-header) are patched incrementally.

use core::mem::offset_of;

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use failover_common::{
    FAMILY_V4, FLAG_MODE_MASK, FlowKey, MODE_DSR, PROTO_TCP, PROTO_UDP, Reason, csum,
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    conntrack,
    forward::{self, Fib},
    maps::{self, BACKENDS},
    mapval,
    packet::Packet,
    parse::{Flow, OFF_MASK},
    scratch::{Dir, Quote, Scratch},
};

const PASS: u32 = xdp_action::XDP_PASS;
const DROP: u32 = xdp_action::XDP_DROP;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;

/// Not an error about a VIP flow: the caller goes on as before.
pub const NOT_HANDLED: u32 = u32::MAX;

/// Reads the error's type and the quoted packet into `q`; `false` if it is
/// not an error this module translates.
#[inline(always)]
fn read_quote(pkt: &Packet, flow: &Flow, q: &mut Quote) -> bool {
    let l4 = flow.l4();
    // Two-byte loads: a one-byte bounds check compiles to `at >= end`,
    // which gives the verifier no range.
    let Some([ty, _code]) = pkt.load::<[u8; 2]>(l4) else {
        return false;
    };
    let v4 = flow.key.family == FAMILY_V4;
    if v4 {
        // Destination unreachable (every code), time exceeded.
        if flow.key.proto != IPPROTO_ICMP || !(ty == 3 || ty == 11) {
            return false;
        }
    } else if flow.key.proto != IPPROTO_ICMPV6 || !(1..=3).contains(&ty) {
        // Destination unreachable, packet too big, time exceeded.
        return false;
    }
    let ip = (l4 + 8) & OFF_MASK;
    q.ip = ip;
    if v4 {
        let Some([vihl, _tos]) = pkt.load::<[u8; 2]>(ip) else {
            return false;
        };
        let ihl = (vihl & 0x0f) as usize * 4;
        if vihl >> 4 != 4 || ihl < 20 {
            return false;
        }
        let Some([_ttl, proto]) = pkt.load::<[u8; 2]>(ip + 8) else {
            return false;
        };
        let Some(src) = pkt.load::<[u8; 4]>(ip + 12) else {
            return false;
        };
        let Some(dst) = pkt.load::<[u8; 4]>(ip + 16) else {
            return false;
        };
        q.proto = proto;
        q.src = [0; 16];
        q.dst = [0; 16];
        q.src[..4].copy_from_slice(&src);
        q.dst[..4].copy_from_slice(&dst);
        q.l4 = (ip + (ihl & 0x3c)) & OFF_MASK;
    } else {
        let Some([proto, _hop_limit]) = pkt.load::<[u8; 2]>(ip + 6) else {
            return false;
        };
        let Some(src) = pkt.load::<[u8; 16]>(ip + 8) else {
            return false;
        };
        let Some(dst) = pkt.load::<[u8; 16]>(ip + 24) else {
            return false;
        };
        q.proto = proto;
        q.src = src;
        q.dst = dst;
        q.l4 = (ip + 40) & OFF_MASK;
    }
    if q.proto != PROTO_TCP && q.proto != PROTO_UDP {
        return false;
    }
    let Some(ports) = pkt.load::<[u8; 4]>(q.l4) else {
        return false;
    };
    // The ports must lie inside the error packet.
    if q.l4 + 4 > flow.ip_end() {
        return false;
    }
    q.sport = [ports[0], ports[1]];
    q.dport = [ports[2], ports[3]];
    true
}

/// An ICMP error: translated and forwarded if it is about a VIP flow
/// (returns `action << 32 | reason`), else `NOT_HANDLED`. Not inlined: the
/// rare path keeps its frame to itself.
#[inline(never)]
pub fn handle(ctx: &XdpContext, pkt: &Packet, scratch: &mut Scratch) -> u64 {
    let Scratch {
        flow,
        quote,
        ep,
        ct,
        dk,
        fib,
        ..
    } = scratch;
    if !read_quote(pkt, flow, quote) {
        return u64::from(NOT_HANDLED);
    }
    let k = &flow.key;
    // To a VIP: the quoted packet came from the VIP (our reply).
    ep.addr = quote.src;
    ep.port = quote.sport;
    ep.proto = quote.proto;
    ep.family = k.family;
    if k.dst == quote.src
        && let Some(svc) = maps::SERVICES.get_ptr(&*ep)
    {
        let svc = mapval::as_ref(svc);
        ct.src = quote.dst;
        ct.dst = quote.src;
        ct.sport = quote.dport;
        ct.dport = quote.sport;
        ct.proto = quote.proto;
        ct.family = k.family;
        ct._pad = [0; 2];
        let Some(bid) = live_backend(ct, svc.id) else {
            return u64::from(NOT_HANDLED);
        };
        let Some(b) = BACKENDS.get(bid) else {
            return u64::from(NOT_HANDLED);
        };
        let dsr = svc.flags & FLAG_MODE_MASK == MODE_DSR;
        quote.dir = Dir::ToBackend;
        quote.addr = b.addr;
        quote.port = b.port;
        if !dsr && !rewrite(pkt, flow, quote) {
            return verdict(DROP, Reason::DropMalformed);
        }
        let to = b.addr;
        return send(ctx, pkt, flow, fib, &to);
    }
    // To a client, from the backends' side: the quoted packet went to a
    // NAT backend endpoint.
    if k.dst != quote.src {
        return u64::from(NOT_HANDLED);
    }
    ep.addr = quote.dst;
    ep.port = quote.dport;
    ep.proto = quote.proto;
    ep.family = k.family;
    let Some(rev) = maps::REVERSE.get_ptr(&*ep) else {
        return u64::from(NOT_HANDLED);
    };
    let rev = mapval::as_ref(rev);
    ct.src = quote.src;
    ct.dst = rev.vip;
    ct.sport = quote.sport;
    ct.dport = rev.vport;
    ct.proto = quote.proto;
    ct.family = k.family;
    ct._pad = [0; 2];
    match live_backend(ct, rev.service_id) {
        Some(bid) if bid != rev.backend_id => return u64::from(NOT_HANDLED),
        Some(_) => {}
        None => {
            // No entry: a VIP flow's, unless a direct connection's.
            dk.src = quote.src;
            dk.dst = quote.dst;
            dk.sport = quote.sport;
            dk.dport = quote.dport;
            dk.proto = quote.proto;
            dk.family = k.family;
            dk._pad = [0; 2];
            if maps::DIRECT.get_ptr(&*dk).is_some() {
                return u64::from(NOT_HANDLED);
            }
        }
    }
    quote.dir = Dir::ToClient;
    quote.addr = rev.vip;
    quote.port = rev.vport;
    if !rewrite(pkt, flow, quote) {
        return verdict(DROP, Reason::DropMalformed);
    }
    let client = flow.key.dst;
    send(ctx, pkt, flow, fib, &client)
}

#[inline(always)]
fn verdict(action: u32, r: Reason) -> u64 {
    u64::from(action) << 32 | r as u64
}

/// The backend of the flow's live entry (verified first), if any.
#[inline(always)]
fn live_backend(key: &FlowKey, service_id: u32) -> Option<u32> {
    let now = conntrack::now_ms();
    if let Some(v) = maps::CONNTRACK.get_ptr(key).map(mapval::as_ref)
        && conntrack::live(v, now)
        && v.service_id == service_id
    {
        return Some(v.backend_id);
    }
    if let Some(v) = maps::EMBRYONIC.get_ptr(key).map(mapval::as_ref)
        && conntrack::live(v, now)
        && v.service_id == service_id
    {
        return Some(v.backend_id);
    }
    None
}

/// Rewrites addresses and the port as `dir` says, with every checksum.
#[inline(never)]
fn rewrite(pkt: &Packet, flow: &Flow, q: &Quote) -> bool {
    rewrite_inner(pkt, flow, q).is_some()
}

#[inline(always)]
fn rewrite_inner(pkt: &Packet, flow: &Flow, q: &Quote) -> Option<()> {
    let (dir, addr, port) = (q.dir, &q.addr, q.port);
    let l3 = flow.l3();
    let icmp_check_off = flow.l4() + 2;
    let mut icmp = u16::from_be_bytes(pkt.load::<[u8; 2]>(icmp_check_off)?);
    let (q_addr_old, q_port_old, q_port_off) = match dir {
        Dir::ToBackend => (&q.src, q.sport, q.l4()),
        Dir::ToClient => (&q.dst, q.dport, q.l4() + 2),
    };
    // The outer address rewritten: the destination towards the backend;
    // towards the client the source, when it is the backend itself.
    let outer_src = dir == Dir::ToClient && flow.key.src == q.dst;
    let outer = dir == Dir::ToBackend || outer_src;
    // The quoted L4 checksum, when the quote holds it.
    let q_check_off = if q.proto == PROTO_TCP {
        q.l4() + 16
    } else {
        q.l4() + 6
    };
    let q_check = if q_check_off + 2 <= flow.ip_end() {
        pkt.load::<[u8; 2]>(q_check_off)
    } else {
        None
    };
    if flow.key.family == FAMILY_V4 {
        let new = [addr[0], addr[1], addr[2], addr[3]];
        let old = [q_addr_old[0], q_addr_old[1], q_addr_old[2], q_addr_old[3]];
        if outer {
            let off = l3
                + if dir == Dir::ToBackend {
                    offset_of!(Ipv4Hdr, dst_addr)
                } else {
                    offset_of!(Ipv4Hdr, src_addr)
                };
            let o: [u8; 4] = pkt.load(off)?;
            let c_off = l3 + offset_of!(Ipv4Hdr, check);
            let c = u16::from_be_bytes(pkt.load::<[u8; 2]>(c_off)?);
            pkt.store(c_off, csum::replace(c, &o, &new).to_be_bytes())?;
            pkt.store(off, new)?;
        }
        // The quoted IPv4 header: its address and checksum.
        let qa_off = q.ip()
            + if dir == Dir::ToBackend {
                offset_of!(Ipv4Hdr, src_addr)
            } else {
                offset_of!(Ipv4Hdr, dst_addr)
            };
        let qc_off = q.ip() + offset_of!(Ipv4Hdr, check);
        let qc_old: [u8; 2] = pkt.load(qc_off)?;
        let qc_new = csum::replace(u16::from_be_bytes(qc_old), &old, &new).to_be_bytes();
        pkt.store(qc_off, qc_new)?;
        pkt.store(qa_off, new)?;
        icmp = csum::replace(icmp, &old, &new);
        icmp = csum::replace(icmp, &qc_old, &qc_new);
        if let Some(c) = q_check {
            let cn = l4_check(q.proto, c, &old, &new, &q_port_old, &port);
            pkt.store(q_check_off, cn)?;
            icmp = csum::replace(icmp, &c, &cn);
        }
    } else {
        if outer {
            let off = l3
                + if dir == Dir::ToBackend {
                    offset_of!(Ipv6Hdr, dst_addr)
                } else {
                    offset_of!(Ipv6Hdr, src_addr)
                };
            let o: [u8; 16] = pkt.load(off)?;
            // The ICMPv6 checksum covers the outer addresses.
            icmp = csum::replace(icmp, &o, addr);
            pkt.store(off, *addr)?;
        }
        let qa_off = q.ip() + if dir == Dir::ToBackend { 8 } else { 24 };
        pkt.store(qa_off, *addr)?;
        icmp = csum::replace(icmp, q_addr_old, addr);
        if let Some(c) = q_check {
            let cn = l4_check(q.proto, c, q_addr_old, addr, &q_port_old, &port);
            pkt.store(q_check_off, cn)?;
            icmp = csum::replace(icmp, &c, &cn);
        }
    }
    pkt.store(q_port_off, port)?;
    icmp = csum::replace(icmp, &q_port_old, &port);
    pkt.store(icmp_check_off, icmp.to_be_bytes())
}

#[inline(always)]
fn l4_check<const N: usize>(
    proto: u8,
    check: [u8; 2],
    old: &[u8; N],
    new: &[u8; N],
    old_port: &[u8; 2],
    port: &[u8; 2],
) -> [u8; 2] {
    let c = u16::from_be_bytes(check);
    let c = if proto == PROTO_UDP {
        csum::replace_udp(csum::replace_udp(c, old, new), old_port, port)
    } else {
        csum::replace(csum::replace(c, old, new), old_port, port)
    };
    c.to_be_bytes()
}

/// Forwards the (rewritten) error towards `dst` with the FIB's MACs,
/// decrementing the TTL / hop limit. Not inlined: its frame and the
/// rewrite's are never live together.
#[inline(never)]
fn send(
    ctx: &XdpContext,
    pkt: &Packet,
    flow: &Flow,
    fib: &mut aya_ebpf::bindings::bpf_fib_lookup,
    dst: &[u8; 16],
) -> u64 {
    let k = &flow.key;
    forward::prepare(
        fib,
        ctx,
        k.family,
        k.proto,
        &k.src,
        dst,
        ([0; 2], [0; 2]),
        (pkt.len() - flow.l3()) as u16,
    );
    match forward::fib(ctx, fib) {
        Fib::Ok => {}
        // Rewritten already: the kernel resolves the neighbour, or answers.
        Fib::NoNeigh => return verdict(PASS, Reason::PassNoNeigh),
        Fib::FragNeeded => return verdict(PASS, Reason::PassFragNeeded),
        Fib::Local | Fib::Fail => return verdict(DROP, Reason::DropFibFail),
    }
    let Some(e) = forward::egress(ctx, fib.ifindex) else {
        return verdict(PASS, Reason::PassNoEgress);
    };
    if !dec_ttl(pkt, flow) {
        return verdict(PASS, Reason::PassTtlExceeded);
    }
    match forward::send(ctx, pkt, e, fib, flow.tagged()) {
        Some(a) if a != DROP => verdict(a, Reason::FwdIcmp),
        _ => verdict(DROP, Reason::DropInternal),
    }
}

/// Decrements the TTL (IPv4, with the header checksum) or hop limit;
/// `false` if it would expire (the kernel answers then).
#[inline(always)]
fn dec_ttl(pkt: &Packet, flow: &Flow) -> bool {
    let l3 = flow.l3();
    if flow.key.family == FAMILY_V4 {
        let off = l3 + offset_of!(Ipv4Hdr, ttl);
        let Some(word) = pkt.load::<[u8; 2]>(off) else {
            return false;
        };
        if word[0] <= 1 {
            return false;
        }
        let dec = [word[0] - 1, word[1]];
        let c_off = l3 + offset_of!(Ipv4Hdr, check);
        let Some(c) = pkt.load::<[u8; 2]>(c_off) else {
            return false;
        };
        let c = csum::replace(u16::from_be_bytes(c), &word, &dec);
        pkt.store(c_off, c.to_be_bytes()).is_some() && pkt.store(off, dec).is_some()
    } else {
        // Next header and hop limit: a two-byte access (see `read_quote`).
        let off = l3 + offset_of!(Ipv6Hdr, next_hdr);
        match pkt.load::<[u8; 2]>(off) {
            Some([next, h]) if h > 1 => pkt.store(off, [next, h - 1]).is_some(),
            _ => false,
        }
    }
}
