//! Answering a client's TCP packet with a RST (for flows of a backend that
//! went down with `flows_on_down = "reset"`): the frame is turned around in
//! place (MACs, addresses and ports swapped), the TCP header becomes a bare
//! RST acknowledging exactly what the client sent, the payload and TCP
//! options are cut off, and it leaves by XDP_TX.

use core::mem::offset_of;

use aya_ebpf::{EbpfContext, helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use failover_common::{FAMILY_V4, PROTO_TCP, csum};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    packet::Packet,
    parse::{
        ACK, ETH_DST, ETH_SRC, FIN, Flow, IPV6_HDR_LEN, L4_DPORT, L4_SPORT, RST, SYN, TCP_ACK_SEQ,
        TCP_CHECK, TCP_DOFF, TCP_DOFF_NO_OPTIONS, TCP_FLAGS, TCP_HDR_LEN, TCP_SEQ, tcp_hdr_len,
    },
};

const TTL: u8 = 64;

/// Rewrites the packet into the RST and shortens the frame. `false` if the
/// packet is not what the parser promised (then it is dropped).
#[inline(never)]
pub fn build(ctx: &XdpContext, pkt: &Packet, flow: &Flow) -> bool {
    build_inner(ctx, pkt, flow).is_some()
}

#[inline(always)]
fn build_inner(ctx: &XdpContext, pkt: &Packet, flow: &Flow) -> Option<()> {
    let l3 = flow.l3();
    let l4 = flow.l4();
    let v4 = flow.key.family == FAMILY_V4;
    // What the client sent.
    let seq = u32::from_be_bytes(pkt.load::<[u8; 4]>(l4 + TCP_SEQ)?);
    let ack_seq = u32::from_be_bytes(pkt.load::<[u8; 4]>(l4 + TCP_ACK_SEQ)?);
    let doff = tcp_hdr_len(pkt.load::<u8>(l4 + TCP_DOFF)?);
    let flags = pkt.load::<u8>(l4 + TCP_FLAGS)?;
    let l4_len = if v4 {
        l3 + u16::from_be_bytes(pkt.load::<[u8; 2]>(l3 + offset_of!(Ipv4Hdr, tot_len))?) as usize
            - l4
    } else {
        l3 + IPV6_HDR_LEN
            + u16::from_be_bytes(pkt.load::<[u8; 2]>(l3 + offset_of!(Ipv6Hdr, payload_len))?)
                as usize
            - l4
    };
    if doff < TCP_HDR_LEN || l4_len < doff {
        return None;
    }
    let mut seg_len = (l4_len - doff) as u32;
    if flags & (SYN | FIN) != 0 {
        // Each takes a sequence number.
        seg_len += 1;
    }
    // RFC 793: answer an ACK with a RST carrying that sequence number;
    // otherwise a RST|ACK acknowledging the segment.
    let (rseq, rack, rflags) = if flags & ACK != 0 {
        (ack_seq, 0, RST)
    } else {
        (0, seq.wrapping_add(seg_len), RST | ACK)
    };

    // Ethernet: back where it came from.
    let dmac: [u8; 6] = pkt.load(ETH_DST)?;
    let smac: [u8; 6] = pkt.load(ETH_SRC)?;
    pkt.store(ETH_DST, smac)?;
    pkt.store(ETH_SRC, dmac)?;

    // IP: swap the addresses (the sums do not change), new length and TTL.
    let new_l3_len;
    if v4 {
        let ihl = l4 - l3;
        new_l3_len = (ihl + TCP_HDR_LEN) as u16;
        let src: [u8; 4] = pkt.load(l3 + offset_of!(Ipv4Hdr, src_addr))?;
        let dst: [u8; 4] = pkt.load(l3 + offset_of!(Ipv4Hdr, dst_addr))?;
        pkt.store(l3 + offset_of!(Ipv4Hdr, src_addr), dst)?;
        pkt.store(l3 + offset_of!(Ipv4Hdr, dst_addr), src)?;
        let len_off = l3 + offset_of!(Ipv4Hdr, tot_len);
        let old_len: [u8; 2] = pkt.load(len_off)?;
        let ttl_off = l3 + offset_of!(Ipv4Hdr, ttl);
        let old_ttl: [u8; 2] = pkt.load(ttl_off)?;
        let new_ttl = [TTL, old_ttl[1]];
        let check_off = l3 + offset_of!(Ipv4Hdr, check);
        let mut check = u16::from_be_bytes(pkt.load::<[u8; 2]>(check_off)?);
        check = csum::replace(check, &old_len, &new_l3_len.to_be_bytes());
        check = csum::replace(check, &old_ttl, &new_ttl);
        pkt.store(len_off, new_l3_len.to_be_bytes())?;
        pkt.store(ttl_off, new_ttl)?;
        pkt.store(check_off, check.to_be_bytes())?;
    } else {
        let ext = l4 - l3 - IPV6_HDR_LEN;
        new_l3_len = (IPV6_HDR_LEN + ext + TCP_HDR_LEN) as u16;
        let src: [u8; 16] = pkt.load(l3 + offset_of!(Ipv6Hdr, src_addr))?;
        let dst: [u8; 16] = pkt.load(l3 + offset_of!(Ipv6Hdr, dst_addr))?;
        pkt.store(l3 + offset_of!(Ipv6Hdr, src_addr), dst)?;
        pkt.store(l3 + offset_of!(Ipv6Hdr, dst_addr), src)?;
        pkt.store(
            l3 + offset_of!(Ipv6Hdr, payload_len),
            ((ext + TCP_HDR_LEN) as u16).to_be_bytes(),
        )?;
        pkt.store(l3 + offset_of!(Ipv6Hdr, hop_limit), TTL)?;
    }

    // TCP: a bare 20-byte RST, ports swapped, checksum computed afresh.
    let sport: [u8; 2] = pkt.load(l4 + L4_SPORT)?;
    let dport: [u8; 2] = pkt.load(l4 + L4_DPORT)?;
    let s = rseq.to_be_bytes();
    let a = rack.to_be_bytes();
    let mut hdr = [
        dport[0],
        dport[1],
        sport[0],
        sport[1],
        s[0],
        s[1],
        s[2],
        s[3],
        a[0],
        a[1],
        a[2],
        a[3],
        TCP_DOFF_NO_OPTIONS,
        rflags,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    // Pseudo-header: the (already swapped) addresses, protocol, length.
    let mut sum = if v4 {
        let src: [u8; 4] = pkt.load(l3 + offset_of!(Ipv4Hdr, src_addr))?;
        let dst: [u8; 4] = pkt.load(l3 + offset_of!(Ipv4Hdr, dst_addr))?;
        csum::add_words(csum::add_words(0, &src), &dst)
    } else {
        let src: [u8; 16] = pkt.load(l3 + offset_of!(Ipv6Hdr, src_addr))?;
        let dst: [u8; 16] = pkt.load(l3 + offset_of!(Ipv6Hdr, dst_addr))?;
        csum::add_words(csum::add_words(0, &src), &dst)
    };
    sum += u32::from(PROTO_TCP) + TCP_HDR_LEN as u32;
    sum = csum::add_words(sum, &hdr);
    let c = !csum::fold(sum);
    hdr[TCP_CHECK] = (c >> 8) as u8;
    hdr[TCP_CHECK + 1] = c as u8;
    pkt.store(l4, hdr)?;

    // Cut the frame after the new TCP header.
    let new_len = l3 + new_l3_len as usize;
    let delta = new_len as i32 - pkt.len() as i32;
    if delta < 0 {
        // SAFETY: shrinking the frame we own; packet pointers are not used
        // after this (the caller returns XDP_TX).
        if unsafe { bpf_xdp_adjust_tail(ctx.as_ptr() as *mut _, delta) } != 0 {
            return None;
        }
    }
    Some(())
}
