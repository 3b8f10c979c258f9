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
    parse::{
        self, Flow, ICMP_CHECK, ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED, ICMPV6_DEST_UNREACH,
        ICMPV6_PACKET_TOO_BIG, ICMPV6_TIME_EXCEEDED, IPPROTO_ICMP, IPPROTO_ICMPV6, L4_DPORT,
        L4_PORTS_LEN, L4_SPORT, TCP_CHECK, UDP_CHECK,
    },
    scratch::{Dir, Quote, Scratch},
};

const PASS: u32 = xdp_action::XDP_PASS;
const DROP: u32 = xdp_action::XDP_DROP;

/// Not an error about a VIP flow: the caller goes on as before.
pub const NOT_HANDLED: u32 = u32::MAX;

/// Reads the error's type and the quoted packet into `q`; `false` if it is
/// not an error this module translates.
#[inline(always)]
fn read_quote(pkt: &Packet, flow: &Flow, q: &mut Quote) -> bool {
    let Some([ty, _code]) = parse::icmp_type_code(pkt, flow) else {
        return false;
    };
    if flow.key.family == FAMILY_V4 {
        if flow.key.proto != IPPROTO_ICMP || !(ty == ICMP_DEST_UNREACH || ty == ICMP_TIME_EXCEEDED)
        {
            // Destination unreachable (every code), time exceeded.
            return false;
        }
    } else if flow.key.proto != IPPROTO_ICMPV6
        || !matches!(
            ty,
            ICMPV6_DEST_UNREACH | ICMPV6_PACKET_TOO_BIG | ICMPV6_TIME_EXCEEDED
        )
    {
        // Destination unreachable, packet too big, time exceeded.
        return false;
    }
    // The ports must lie inside the error packet.
    parse::quote(pkt, flow, &mut q.pkt) && q.pkt.l4 + L4_PORTS_LEN <= flow.ip_end()
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
    ep.addr = quote.pkt.src;
    ep.port = quote.pkt.sport;
    ep.proto = quote.pkt.proto;
    ep.family = k.family;
    if k.dst == quote.pkt.src
        && let Some(svc) = maps::SERVICES.get_ptr(&*ep)
    {
        let svc = mapval::as_ref(svc);
        ct.src = quote.pkt.dst;
        ct.dst = quote.pkt.src;
        ct.sport = quote.pkt.dport;
        ct.dport = quote.pkt.sport;
        ct.proto = quote.pkt.proto;
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
    if k.dst != quote.pkt.src {
        return u64::from(NOT_HANDLED);
    }
    ep.addr = quote.pkt.dst;
    ep.port = quote.pkt.dport;
    ep.proto = quote.pkt.proto;
    ep.family = k.family;
    let Some(rev) = maps::REVERSE.get_ptr(&*ep) else {
        return u64::from(NOT_HANDLED);
    };
    let rev = mapval::as_ref(rev);
    ct.src = quote.pkt.src;
    ct.dst = rev.vip;
    ct.sport = quote.pkt.sport;
    ct.dport = rev.vport;
    ct.proto = quote.pkt.proto;
    ct.family = k.family;
    ct._pad = [0; 2];
    match live_backend(ct, rev.service_id) {
        Some(bid) if bid != rev.backend_id => return u64::from(NOT_HANDLED),
        Some(_) => {}
        None => {
            // No entry: a VIP flow's, unless a direct connection's.
            dk.src = quote.pkt.src;
            dk.dst = quote.pkt.dst;
            dk.sport = quote.pkt.sport;
            dk.dport = quote.pkt.dport;
            dk.proto = quote.pkt.proto;
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
    let q = &q.pkt;
    let l3 = flow.l3();
    let icmp_check_off = flow.l4() + ICMP_CHECK;
    let mut icmp = u16::from_be_bytes(pkt.load::<[u8; 2]>(icmp_check_off)?);
    let (q_addr_old, q_port_old, q_port_off) = match dir {
        Dir::ToBackend => (&q.src, q.sport, q.l4() + L4_SPORT),
        Dir::ToClient => (&q.dst, q.dport, q.l4() + L4_DPORT),
    };
    // The outer address rewritten: the destination towards the backend;
    // towards the client the source, when it is the backend itself.
    let outer_src = dir == Dir::ToClient && flow.key.src == q.dst;
    let outer = dir == Dir::ToBackend || outer_src;
    // The quoted L4 checksum, when the quote holds it.
    let q_check_off = if q.proto == PROTO_TCP {
        q.l4() + TCP_CHECK
    } else {
        q.l4() + UDP_CHECK
    };
    // The two checksum bytes.
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
        let qa_off = q.ip()
            + if dir == Dir::ToBackend {
                offset_of!(Ipv6Hdr, src_addr)
            } else {
                offset_of!(Ipv6Hdr, dst_addr)
            };
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
    match forward::send(ctx, pkt, e, (&fib.dmac, &fib.smac), flow.tagged()) {
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
        // Next header and hop limit: a two-byte access (see
        // `parse::icmp_type_code`).
        let off = l3 + offset_of!(Ipv6Hdr, next_hdr);
        match pkt.load::<[u8; 2]>(off) {
            Some([next, h]) if h > 1 => pkt.store(off, [next, h - 1]).is_some(),
            _ => false,
        }
    }
}
