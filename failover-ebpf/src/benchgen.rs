//! Programs for the bench only (never attached by the daemon):
//! - `failover_gen`: a packet generator driven by BPF_PROG_TEST_RUN in
//!   XDP live-frames mode. Each run writes the 64-byte IPv4/UDP frame of
//!   `GEN_FRAME` over the page (pages come back from the receiver, which may
//!   have rewritten them: a NAT rewrites addresses in place), spreads it
//!   over 256 flows by rewriting the UDP source port (checksum updated
//!   incrementally, RFC 1624) and sends it out of the interface named in the
//!   context with XDP_TX.
//! - `failover_sink`: counts every frame (per-CPU) and drops it; attached to
//!   the backends' interfaces, it counts the IPv4/UDP frames the load
//!   balancer delivered without paying for a network stack behind them.
//! - `failover_fwd`: the reference for the per-packet cost of forwarding
//!   (issue 14), modelled on the kernel's `samples/bpf/xdp_fwd_kern.c`:
//!   Ethernet + IPv4/IPv6, `bpf_fib_lookup`, both MACs rewritten, TTL / hop
//!   limit decremented (IPv4 checksum updated incrementally), XDP_TX. What
//!   the FIB cannot forward is passed.
//! - `failover_redir`: the reference for the packet rate of forwarding: one
//!   `bpf_redirect_map` per frame on `REDIRECT_PORTS` (slot 0 or 1, at
//!   random, as the load balancer spreads over two backends), no lookups.
//! - `micro_*`: one primitive each, for the accounting of the per-packet
//!   cost (issue 14): a hash lookup with a 20-byte key that hits
//!   (`SERVICES`-like), an LRU hash lookup with a 40-byte key that hits
//!   (`CONNTRACK`-like), a per-CPU array slot incremented (a counter), one
//!   BPF-to-BPF call. Each returns XDP_PASS; the bench subtracts the empty
//!   program.
#![no_std]
#![no_main]

// The sink and the counter use `as_mut` only.
#[allow(dead_code)]
mod mapval;
mod packet;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    btf_maps::{Array, DevMap, HashMap, LruHashMap, PerCpuArray},
    helpers::{bpf_fib_lookup, bpf_get_prandom_u32},
    macros::btf_map,
    macros::xdp,
    programs::XdpContext,
};

use core::mem::{offset_of, size_of};

use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};

use failover_common::{EndpointKey, FlowKey, FlowValue};

use crate::packet::Packet;

/// Frames seen by the sink (slot 0).
#[btf_map]
pub static SINK_COUNT: PerCpuArray<u64, 1, 0> = PerCpuArray::new();

/// The frame the generator sends (written by userspace).
#[btf_map]
pub static GEN_FRAME: Array<[u8; FRAME], 1, 0> = Array::new();

/// The two interfaces `failover_redir` sends to (written by userspace).
#[btf_map]
pub static REDIRECT_PORTS: DevMap<2, 0> = DevMap::new();

/// Length of the generated frame.
const FRAME: usize = 64;
/// Ethernet + IPv4 without options: where UDP starts.
const UDP_AT: usize = size_of::<EthHdr>() + size_of::<Ipv4Hdr>();
/// The UDP checksum of the generated frame.
const UDP_CHECK_AT: usize = UDP_AT + offset_of!(UdpHdr, check);
/// What the sink counts: EtherType IPv4 (two bytes), protocol UDP.
const ETH_TYPE_AT: usize = offset_of!(EthHdr, ether_type);
const ETH_P_IP: [u8; 2] = [0x08, 0x00];
const IP_PROTO_AT: usize = size_of::<EthHdr>() + offset_of!(Ipv4Hdr, proto);
const IPPROTO_UDP: u8 = 17;
/// Distinct source ports the generator uses.
const FLOWS: u16 = 256;

#[xdp]
pub fn failover_gen(ctx: XdpContext) -> u32 {
    let p = Packet::new(&ctx);
    if p.len() < FRAME {
        return xdp_action::XDP_ABORTED;
    }
    let Some(frame) = GEN_FRAME.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    if p.store(0, *frame).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    let Some(old) = p.load::<[u8; 2]>(UDP_AT) else {
        return xdp_action::XDP_ABORTED;
    };
    let Some(csum) = p.load::<[u8; 2]>(UDP_CHECK_AT) else {
        return xdp_action::XDP_ABORTED;
    };
    let old = u16::from_be_bytes(old);
    // SAFETY: a helper without arguments or preconditions.
    let r = unsafe { bpf_get_prandom_u32() } as u16;
    let new = 10_000 + r % FLOWS;
    let csum = u16::from_be_bytes(csum);
    // A zero UDP checksum means "none" (IPv4): leave it so.
    if csum != 0 {
        // RFC 1624: HC' = ~(~HC + ~m + m').
        let mut sum = u32::from(!csum) + u32::from(!old) + u32::from(new);
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        let mut c = !(sum as u16);
        if c == 0 {
            c = 0xffff;
        }
        if p.store(UDP_CHECK_AT, c.to_be_bytes()).is_none() {
            return xdp_action::XDP_ABORTED;
        }
    }
    if p.store(UDP_AT, new.to_be_bytes()).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_TX
}

#[xdp]
pub fn failover_sink(ctx: XdpContext) -> u32 {
    let p = Packet::new(&ctx);
    // Only IPv4/UDP is counted and dropped; ARP and the rest go on, so the
    // backend still answers neighbour requests.
    if p.load::<u8>(ETH_TYPE_AT) != Some(ETH_P_IP[0])
        || p.load::<u8>(ETH_TYPE_AT + 1) != Some(ETH_P_IP[1])
        || p.load::<u8>(IP_PROTO_AT) != Some(IPPROTO_UDP)
    {
        return xdp_action::XDP_PASS;
    }
    if let Some(c) = SINK_COUNT.get_ptr_mut(0) {
        // This CPU's slot of a per-CPU array: nothing else on this CPU runs
        // concurrently.
        *mapval::as_mut(c) += 1;
    }
    xdp_action::XDP_DROP
}

const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
const ETH_DST_AT: usize = offset_of!(EthHdr, dst_addr);
const ETH_SRC_AT: usize = offset_of!(EthHdr, src_addr);
const L3_AT: usize = size_of::<EthHdr>();
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;

#[xdp]
pub fn failover_fwd(ctx: XdpContext) -> u32 {
    fwd(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

/// `xdp_fwd_kern.c`'s `xdp_fwd_flags` with XDP_TX in place of the
/// redirect; `None` passes the packet.
#[inline(always)]
fn fwd(ctx: &XdpContext) -> Option<u32> {
    let p = Packet::new(ctx);
    let proto = p.load::<[u8; 2]>(ETH_TYPE_AT)?;
    // SAFETY: an all-zero bpf_fib_lookup is a valid value (plain integers
    // and unions of integers).
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.ifindex = ctx.ingress_ifindex() as u32;
    // Where TTL / hop limit is, in a 2-byte load (1-byte packet loads can
    // compile to a form the verifier rejects).
    let v4 = proto == ETH_P_IP;
    if v4 {
        // TTL and protocol.
        let [ttl, l4] = p.load::<[u8; 2]>(L3_AT + offset_of!(Ipv4Hdr, ttl))?;
        if ttl <= 1 {
            return None;
        }
        let [_, tos] = p.load::<[u8; 2]>(L3_AT)?;
        let tot_len = p.load::<[u8; 2]>(L3_AT + offset_of!(Ipv4Hdr, tot_len))?;
        fib.family = AF_INET;
        fib.__bindgen_anon_2.tos = tos;
        fib.l4_protocol = l4;
        fib.__bindgen_anon_1.tot_len = u16::from_be_bytes(tot_len);
        fib.__bindgen_anon_3.ipv4_src =
            u32::from_ne_bytes(p.load(L3_AT + offset_of!(Ipv4Hdr, src_addr))?);
        fib.__bindgen_anon_4.ipv4_dst =
            u32::from_ne_bytes(p.load(L3_AT + offset_of!(Ipv4Hdr, dst_addr))?);
    } else if proto == ETH_P_IPV6 {
        // Next header and hop limit.
        let [l4, hops] = p.load::<[u8; 2]>(L3_AT + offset_of!(Ipv6Hdr, next_hdr))?;
        if hops <= 1 {
            return None;
        }
        let first = u32::from_ne_bytes(p.load(L3_AT)?);
        let payload_len = p.load::<[u8; 2]>(L3_AT + offset_of!(Ipv6Hdr, payload_len))?;
        fib.family = AF_INET6;
        fib.__bindgen_anon_2.flowinfo = first & u32::from_ne_bytes(0x0fff_ffffu32.to_be_bytes());
        fib.l4_protocol = l4;
        fib.__bindgen_anon_1.tot_len = u16::from_be_bytes(payload_len);
        fib.__bindgen_anon_3.ipv6_src = words(p.load(L3_AT + offset_of!(Ipv6Hdr, src_addr))?);
        fib.__bindgen_anon_4.ipv6_dst = words(p.load(L3_AT + offset_of!(Ipv6Hdr, dst_addr))?);
    } else {
        return None;
    }
    // SAFETY: the helper reads and writes `fib`, a stack value valid for
    // the call, of the size we pass.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut fib, size_of::<FibParams>() as i32, 0) };
    if rc != BPF_FIB_LKUP_RET_SUCCESS {
        return None;
    }
    if v4 {
        // ip_decrease_ttl: the checksum's high byte goes up by one as the
        // TTL goes down (RFC 1141).
        let at = L3_AT + offset_of!(Ipv4Hdr, ttl);
        let [ttl, l4] = p.load::<[u8; 2]>(at)?;
        let check_at = L3_AT + offset_of!(Ipv4Hdr, check);
        let mut check = u32::from(u16::from_be_bytes(p.load(check_at)?)) + 0x0100;
        check += u32::from(check >= 0xffff);
        p.store(check_at, (check as u16).to_be_bytes())?;
        p.store(at, [ttl - 1, l4])?;
    } else {
        let at = L3_AT + offset_of!(Ipv6Hdr, next_hdr);
        let [l4, hops] = p.load::<[u8; 2]>(at)?;
        p.store(at, [l4, hops - 1])?;
    }
    p.store(ETH_DST_AT, fib.dmac)?;
    p.store(ETH_SRC_AT, fib.smac)?;
    Some(xdp_action::XDP_TX)
}

#[inline(always)]
fn words(a: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

#[xdp]
pub fn failover_redir(_ctx: XdpContext) -> u32 {
    // SAFETY: a helper without arguments or preconditions.
    let slot = unsafe { bpf_get_prandom_u32() } & 1;
    match REDIRECT_PORTS.redirect(slot, 0) {
        Ok(a) | Err(a) => a,
    }
}

/// The primitives' maps; the bench writes the all-zero key into both.
#[btf_map]
pub static MICRO_HASH: HashMap<EndpointKey, u32, 64, 0> = HashMap::new();
#[btf_map]
pub static MICRO_LRU: LruHashMap<FlowKey, FlowValue, 65536, 0> = LruHashMap::new();
#[btf_map]
pub static MICRO_COUNT: PerCpuArray<u64, 4, 0> = PerCpuArray::new();

#[xdp]
pub fn micro_hash20(_ctx: XdpContext) -> u32 {
    let k = EndpointKey::default();
    match MICRO_HASH.get_ptr(k) {
        Some(_) => xdp_action::XDP_PASS,
        None => xdp_action::XDP_DROP,
    }
}

#[xdp]
pub fn micro_lru40(_ctx: XdpContext) -> u32 {
    let k = FlowKey::default();
    match MICRO_LRU.get_ptr(k) {
        Some(_) => xdp_action::XDP_PASS,
        None => xdp_action::XDP_DROP,
    }
}

#[xdp]
pub fn micro_counter(_ctx: XdpContext) -> u32 {
    if let Some(c) = MICRO_COUNT.get_ptr_mut(0) {
        *mapval::as_mut(c) += 1;
    }
    xdp_action::XDP_PASS
}

#[xdp]
pub fn micro_call(ctx: XdpContext) -> u32 {
    called(ctx.data_end() - ctx.data())
}

/// A BPF-to-BPF call that does next to nothing.
#[inline(never)]
fn called(len: usize) -> u32 {
    if len > 0 {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
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
