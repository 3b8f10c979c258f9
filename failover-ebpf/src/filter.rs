//! The first stage: may this packet concern a VIP or a backend at all?
//! Most traffic on a load balancer's interfaces is not for it (its own
//! connections, other hosts' traffic routed through it); such a packet
//! should cost little more than an empty program. A well-formed, untagged
//! IPv4 or IPv6 TCP or UDP packet whose source and destination addresses
//! both miss `ADDR_FILTER` is passed here, before any other map lookup.
//! Everything else (the filter's hits and false positives, ICMP, IPv6
//! extension headers, VLAN tags, malformed headers) takes the full path,
//! which classifies and counts it as before.

use failover_common::{PROTO_TCP, PROTO_UDP, addr_filter_slot};

use crate::{
    maps::ADDR_FILTER,
    packet::Packet,
    parse::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, ETH_TYPE, IPV4_HDR_LEN, IPV6_HDR_LEN},
};

/// Whether the filter may hold the address whose tag is `tag`.
#[inline(always)]
fn may_hold(words: &[u64; failover_common::ADDR_FILTER_WORDS], tag: u32) -> bool {
    let (w, bit) = addr_filter_slot(tag);
    words.get(w).is_none_or(|v| v & bit != 0)
}

/// Whether the packet is certainly none of ours (see above).
#[inline(always)]
pub fn none_of_ours(pkt: &Packet) -> bool {
    check(pkt) == Some(true)
}

/// `Some(true)`: none of ours; `None`: cut short (the full path decides).
/// Field by field into registers, each read as soon as it is needed: a
/// header copied whole would take stack the deepest call chain needs.
#[inline(always)]
fn check(pkt: &Packet) -> Option<bool> {
    let filter = ADDR_FILTER.get(0)?;
    let ether_type = u16::from_be_bytes(pkt.load::<[u8; 2]>(ETH_TYPE)?);
    let len = pkt.len();
    let w = |at: usize| pkt.load::<u32>(ETH_HLEN + at);
    // Every word is read (bounds-checked against the packet's end) before
    // the header's own lengths are compared with the frame's: LLVM would
    // otherwise drop the reads' checks as implied by the comparison, which
    // the verifier cannot follow.
    if ether_type == ETH_P_IP {
        let first = w(0)?;
        let ttl_proto = w(8)?;
        // An IPv4 address's tag is its one word (`addr_tag`).
        let src = w(12)?;
        let dst = w(16)?;
        let [vihl, _, l0, l1] = first.to_ne_bytes();
        let ihl = (vihl & 0x0f) as usize * 4;
        let tot_len = u16::from_be_bytes([l0, l1]) as usize;
        let proto = ttl_proto.to_ne_bytes()[1];
        if vihl >> 4 != 4
            || ihl < IPV4_HDR_LEN
            || tot_len < ihl
            || ETH_HLEN + tot_len > len
            || (proto != PROTO_TCP && proto != PROTO_UDP)
        {
            return Some(false);
        }
        Some(!may_hold(&filter.words, src) && !may_hold(&filter.words, dst))
    } else if ether_type == ETH_P_IPV6 {
        let first = w(0)?;
        let plen_next = w(4)?;
        // `addr_tag` of each address, folded from the packet's words.
        let src = w(8)? ^ w(12)? ^ w(16)? ^ w(20)?;
        let dst = w(24)? ^ w(28)? ^ w(32)? ^ w(36)?;
        let version = first.to_ne_bytes()[0] >> 4;
        let [p0, p1, next, _] = plen_next.to_ne_bytes();
        let plen = u16::from_be_bytes([p0, p1]) as usize;
        if version != 6
            || ETH_HLEN + IPV6_HDR_LEN + plen > len
            || (next != PROTO_TCP && next != PROTO_UDP)
        {
            return Some(false);
        }
        Some(!may_hold(&filter.words, src) && !may_hold(&filter.words, dst))
    } else {
        Some(false)
    }
}
