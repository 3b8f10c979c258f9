//! Forwarding: next hop and MAC addresses from the kernel's FIB
//! (`bpf_fib_lookup`), then XDP_TX (same interface) or XDP_REDIRECT through
//! the devmap.
//!
//! Towards a backend, the FIB's answer is cached per CPU in `NEXTHOPS`
//! ([`cached`], [`learn`]): a FIB lookup costs about 100 ns, a fresh
//! cache entry a few. What the cache assumes, so that it answers as the
//! FIB would: the next hop towards a backend depends on the backend's
//! address and the ingress interface only (no multipath route towards a
//! backend, no policy routing on the client's address or ports: with those
//! the flows of one backend share the path the FIB gave first); anything
//! that can change the answer (a route, a rule, a neighbour, an address,
//! a link, the egress set) reaches the daemon as a netlink event or is its
//! own change, and it bumps `NH_EPOCH`.

use aya_ebpf::{
    EbpfContext,
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    helpers::{bpf_fib_lookup, bpf_jiffies64, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use failover_common::{FAMILY_V4, NEXTHOP_MAX_AGE_JIFFIES, NH_REDIRECT, NH_TX, NextHop};

use crate::{
    maps::{DEVMAP, NEXTHOPS, NH_EPOCH},
    mapval,
    packet::Packet,
    parse::{ETH_DST, ETH_SRC, VLAN_HDR_LEN},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NOT_FWDED: i64 = 4;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;
const BPF_FIB_LKUP_RET_FRAG_NEEDED: i64 = 8;

/// Outcome of a FIB lookup; on `Ok` the egress ifindex and MACs are in the
/// lookup parameters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fib {
    /// Route and neighbour known.
    Ok,
    /// Route known, no neighbour entry (yet).
    NoNeigh,
    /// Larger than the egress MTU.
    FragNeeded,
    /// For this host (or not a unicast route).
    Local,
    /// No route, blackhole, forwarding disabled, ...
    Fail,
}

/// Fills the FIB lookup parameters (in the per-CPU scratch, not on the
/// stack) for a packet from `src` to `dst`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn prepare(
    p: &mut FibParams,
    ctx: &XdpContext,
    family: u8,
    proto: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
    ports: ([u8; 2], [u8; 2]),
    tot_len: u16,
) {
    // SAFETY: an all-zero bpf_fib_lookup is a valid value (plain integers
    // and unions of integers).
    *p = unsafe { core::mem::zeroed() };
    p.l4_protocol = proto;
    p.sport = u16::from_ne_bytes(ports.0);
    p.dport = u16::from_ne_bytes(ports.1);
    p.__bindgen_anon_1.tot_len = tot_len;
    p.ifindex = ctx.ingress_ifindex() as u32;
    if family == FAMILY_V4 {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([src[0], src[1], src[2], src[3]]);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]]);
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = words(src);
        p.__bindgen_anon_4.ipv6_dst = words(dst);
    }
}

/// Runs the lookup prepared in `p`.
#[inline(never)]
pub fn fib(ctx: &XdpContext, p: &mut FibParams) -> Fib {
    // SAFETY: the helper reads and writes `p` (our per-CPU scratch slot),
    // which is valid for the call and has the size we pass.
    let rc =
        unsafe { bpf_fib_lookup(ctx.as_ptr(), p, core::mem::size_of::<FibParams>() as i32, 0) };
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => Fib::Ok,
        BPF_FIB_LKUP_RET_NO_NEIGH => Fib::NoNeigh,
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Fib::FragNeeded,
        BPF_FIB_LKUP_RET_NOT_FWDED => Fib::Local,
        _ => Fib::Fail,
    }
}

#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// The coarse time of the next-hop cache (the verifier inlines this
/// helper into one load).
#[inline(always)]
fn jiffies() -> u32 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_jiffies64() as u32 }
}

/// A fresh cached next hop of backend `bid` for this packet, or the epoch
/// to learn a FIB answer under (read before the lookup: an event after it
/// leaves what the lookup found stale).
pub enum Hop<'a> {
    Cached(&'a NextHop),
    Miss(u32),
}

/// The cached next hop of backend `bid` (at the address of `tag`), if
/// fresh for a packet of `l3_len` bytes that came in on `iif`.
#[inline(always)]
pub fn cached<'a>(bid: u32, tag: u32, iif: u32, l3_len: u16) -> Hop<'a> {
    let epoch = NH_EPOCH.get(0).copied().unwrap_or(0);
    if let Some(nh) = NEXTHOPS.get_ptr(bid) {
        // This CPU's slot; written only by this CPU (`learn`).
        let nh: &'a NextHop = mapval::as_ref(nh);
        if nh.iif == iif
            && nh.epoch == epoch
            && nh.addr_tag == tag
            && l3_len <= nh.mtu_ok
            && jiffies().wrapping_sub(nh.learned_jiffies) <= NEXTHOP_MAX_AGE_JIFFIES
        {
            return Hop::Cached(nh);
        }
    }
    Hop::Miss(epoch)
}

/// Remembers the FIB's answer `p` for backend `bid` (a lookup that
/// succeeded and an egress we may use).
#[inline(always)]
pub fn learn(bid: u32, tag: u32, p: &FibParams, e: &Egress, (iif, l3_len): (u32, u16), epoch: u32) {
    if let Some(nh) = NEXTHOPS.get_ptr_mut(bid) {
        let nh = mapval::as_mut(nh);
        nh.dmac = p.dmac;
        nh.smac = p.smac;
        nh.ifindex = p.ifindex;
        nh.iif = iif;
        nh.epoch = epoch;
        nh.mtu_ok = l3_len;
        nh.how = match e {
            Egress::Tx => NH_TX,
            Egress::Redirect(_) => NH_REDIRECT,
        };
        nh.learned_jiffies = jiffies();
        nh.addr_tag = tag;
    }
}

/// How a cached next hop leaves.
#[inline(always)]
pub fn cached_egress(nh: &NextHop) -> Egress {
    if nh.how == NH_TX {
        Egress::Tx
    } else {
        Egress::Redirect(nh.ifindex)
    }
}

/// How a frame leaves.
pub enum Egress {
    /// Back out of the interface it came in on.
    Tx,
    /// Out of another interface in the devmap.
    Redirect(u32),
}

/// Whether we can send out of `ifindex` ourselves.
#[inline(always)]
pub fn egress(ctx: &XdpContext, ifindex: u32) -> Option<Egress> {
    if ifindex == ctx.ingress_ifindex() as u32 {
        Some(Egress::Tx)
    } else if DEVMAP.get_ifindex(ifindex).is_some() {
        Some(Egress::Redirect(ifindex))
    } else {
        None
    }
}

/// Writes the MACs (`dmac`, `smac`: from the FIB or the cache) and returns the XDP action
/// that sends the frame. A frame that came in with a VLAN tag leaves
/// without it: the FIB answered for an untagged interface (the one XDP runs
/// on, or another in the devmap), never for the tag's network. The packet
/// must not be touched after this (its head may have moved).
#[inline(always)]
pub fn send(
    ctx: &XdpContext,
    pkt: &Packet,
    e: Egress,
    (dmac, smac): (&[u8; 6], &[u8; 6]),
    tagged: bool,
) -> Option<u32> {
    if tagged {
        // New MACs written just before the inner EtherType, then the head
        // moved past the old MACs and the tag: what remains is
        // [dmac][smac][EtherType][IP ...].
        pkt.store(VLAN_HDR_LEN + ETH_DST, *dmac)?;
        pkt.store(VLAN_HDR_LEN + ETH_SRC, *smac)?;
        // SAFETY: shrinks the frame's head by 4 bytes of a frame at least
        // 18 bytes long (the parser read the tag and the EtherType).
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, VLAN_HDR_LEN as i32) } != 0 {
            return None;
        }
    } else {
        pkt.store(ETH_DST, *dmac)?;
        pkt.store(ETH_SRC, *smac)?;
    }
    Some(match e {
        Egress::Tx => xdp_action::XDP_TX,
        Egress::Redirect(ifindex) => match DEVMAP.redirect(ifindex, 0) {
            Ok(a) => a,
            Err(_) => xdp_action::XDP_DROP,
        },
    })
}
