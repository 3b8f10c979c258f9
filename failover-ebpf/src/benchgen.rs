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
#![no_std]
#![no_main]

// The sink uses `as_mut` only.
#[allow(dead_code)]
mod mapval;
mod packet;

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, PerCpuArray},
    helpers::bpf_get_prandom_u32,
    macros::btf_map,
    macros::xdp,
    programs::XdpContext,
};

use core::mem::{offset_of, size_of};

use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr};

use crate::packet::Packet;

/// Frames seen by the sink (slot 0).
#[btf_map]
pub static SINK_COUNT: PerCpuArray<u64, 1, 0> = PerCpuArray::new();

/// The frame the generator sends (written by userspace).
#[btf_map]
pub static GEN_FRAME: Array<[u8; FRAME], 1, 0> = Array::new();

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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
