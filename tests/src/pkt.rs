//! Builds packets byte by byte for tests. The checksums here are computed in
//! full (RFC 1071) from the bytes, independently of the incremental updates
//! of the code under test, so an expected packet is an independent witness.

use std::net::IpAddr;

pub const MAC_ZERO: [u8; 6] = [0; 6];

/// RFC 1071 Internet checksum of `data` (odd length padded with zero).
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    for c in data.chunks(2) {
        sum += (u64::from(c[0]) << 8) | c.get(1).map_or(0, |&b| u64::from(b));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        payload: Vec<u8>,
    },
    /// `no_checksum`: send a zero UDP checksum (IPv4 only).
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
        no_checksum: bool,
    },
    /// ICMP/ICMPv6 echo request.
    Echo { id: u16 },
}

impl L4 {
    pub fn tcp(sport: u16, dport: u16) -> Self {
        L4::Tcp {
            sport,
            dport,
            flags: 0x02,
            payload: Vec::new(),
        }
    }
    pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Self {
        L4::Udp {
            sport,
            dport,
            payload: payload.to_vec(),
            no_checksum: false,
        }
    }
    fn proto(&self, v6: bool) -> u8 {
        match self {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Echo { .. } if v6 => 58,
            L4::Echo { .. } => 1,
        }
    }
    pub fn set_ports(&mut self, s: u16, d: u16) {
        match self {
            L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } => {
                *sport = s;
                *dport = d;
            }
            L4::Echo { .. } => {}
        }
    }
}

/// An Ethernet frame with one IPv4 or IPv6 packet.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    /// IPv4 options (a multiple of 4 bytes).
    pub ip_options: Vec<u8>,
    /// IPv4 flags+fragment offset word (e.g. 0x2000 = MF).
    pub frag: u16,
    /// IPv6: insert a fragment extension header.
    pub v6_fragment: bool,
    /// IPv6: insert a destination-options extension header.
    pub v6_dstopts: bool,
    /// TCP sequence and acknowledgement numbers.
    pub seq: u32,
    pub ack: u32,
    pub l4: L4,
}

impl Pkt {
    pub fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Self {
        Self {
            dmac: [0x02, 0, 0, 0, 0, 0x01],
            smac: [0x02, 0, 0, 0, 0, 0x02],
            vlan: None,
            src,
            dst,
            ttl: 64,
            ip_options: Vec::new(),
            frag: 0,
            v6_fragment: false,
            v6_dstopts: false,
            seq: 0x0102_0304,
            ack: 0,
            l4,
        }
    }

    fn l4_bytes(&self, src: &[u8], dst: &[u8], v6: bool) -> Vec<u8> {
        let proto = self.l4.proto(v6);
        let mut seg = match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
                payload,
            } => {
                let mut t = Vec::with_capacity(20 + payload.len());
                t.extend_from_slice(&sport.to_be_bytes());
                t.extend_from_slice(&dport.to_be_bytes());
                t.extend_from_slice(&self.seq.to_be_bytes());
                t.extend_from_slice(&self.ack.to_be_bytes());
                t.push(5 << 4); // data offset
                t.push(*flags);
                t.extend_from_slice(&64240u16.to_be_bytes()); // window
                t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
                t.extend_from_slice(payload);
                t
            }
            L4::Udp {
                sport,
                dport,
                payload,
                ..
            } => {
                let mut u = Vec::with_capacity(8 + payload.len());
                u.extend_from_slice(&sport.to_be_bytes());
                u.extend_from_slice(&dport.to_be_bytes());
                u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                u.extend_from_slice(&[0, 0]);
                u.extend_from_slice(payload);
                u
            }
            L4::Echo { id } => {
                let ty = if v6 { 128 } else { 8 };
                vec![
                    ty,
                    0,
                    0,
                    0,
                    (id >> 8) as u8,
                    *id as u8,
                    0,
                    1,
                    b'p',
                    b'i',
                    b'n',
                    b'g',
                ]
            }
        };
        let check_at = match &self.l4 {
            L4::Tcp { .. } => 16,
            L4::Udp { .. } => 6,
            L4::Echo { .. } => 2,
        };
        let skip = matches!(
            self.l4,
            L4::Udp {
                no_checksum: true,
                ..
            }
        );
        if !skip {
            let mut pseudo = Vec::new();
            // ICMPv4 has no pseudo-header.
            if !matches!(self.l4, L4::Echo { .. }) || v6 {
                pseudo.extend_from_slice(src);
                pseudo.extend_from_slice(dst);
                if v6 {
                    pseudo.extend_from_slice(&(seg.len() as u32).to_be_bytes());
                    pseudo.extend_from_slice(&[0, 0, 0, proto]);
                } else {
                    pseudo.extend_from_slice(&[0, proto]);
                    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
                }
            }
            pseudo.extend_from_slice(&seg);
            let mut c = inet_checksum(&pseudo);
            if c == 0 && matches!(self.l4, L4::Udp { .. }) {
                c = 0xffff;
            }
            seg[check_at..check_at + 2].copy_from_slice(&c.to_be_bytes());
        }
        seg
    }

    /// The frame's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.dmac);
        f.extend_from_slice(&self.smac);
        if let Some(vid) = self.vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let l4 = self.l4_bytes(&s.octets(), &d.octets(), false);
                assert!(self.ip_options.len().is_multiple_of(4) && self.ip_options.len() <= 40);
                let ihl = 20 + self.ip_options.len();
                let mut h = Vec::with_capacity(ihl);
                h.push(0x40 | (ihl / 4) as u8);
                h.push(0);
                h.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
                h.extend_from_slice(&0x1234u16.to_be_bytes());
                h.extend_from_slice(&self.frag.to_be_bytes());
                h.push(self.ttl);
                h.push(self.l4.proto(false));
                h.extend_from_slice(&[0, 0]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h.extend_from_slice(&self.ip_options);
                let c = inet_checksum(&h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
                f.extend_from_slice(&l4);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                let l4 = self.l4_bytes(&s.octets(), &d.octets(), true);
                let proto = self.l4.proto(true);
                let mut ext = Vec::new();
                let mut first = proto;
                if self.v6_fragment {
                    // Fragment header: next, reserved, offset 0 + M flag, id.
                    ext.splice(0..0, [first, 0, 0, 1, 0, 0, 0, 7]);
                    first = 44;
                }
                if self.v6_dstopts {
                    // Destination options: next, len 0 (8 bytes), PadN 4.
                    ext.splice(0..0, [first, 0, 1, 4, 0, 0, 0, 0]);
                    first = 60;
                }
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
                f.push(first);
                f.push(self.ttl);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                f.extend_from_slice(&ext);
                f.extend_from_slice(&l4);
            }
            _ => panic!("mixed address families"),
        }
        f
    }
}

/// An ARP request frame (who-has `target` tell `sender`).
pub fn arp_request(smac: [u8; 6], sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&smac);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&smac);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&MAC_ZERO);
    f.extend_from_slice(&target);
    f
}

/// Checks every checksum of an Ethernet frame carrying IPv4/IPv6 with
/// TCP/UDP (used on program output): `Ok` or which one is wrong. Never
/// panics: a frame too short for what its headers claim is an `Err` too
/// (the fuzzer runs it on arbitrary output).
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let short = |what: &str| format!("frame too short for the {what}");
    let be16 = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
    };
    let mut off = 12;
    let mut et = be16(off).ok_or_else(|| short("ethertype"))?;
    if et == 0x8100 {
        off += 4;
        et = be16(off).ok_or_else(|| short("vlan tag"))?;
    }
    off += 2;
    let (src, dst, proto, l4) = match et {
        0x0800 => {
            let ihl = usize::from(frame.get(off).ok_or_else(|| short("IPv4 header"))? & 0xf) * 4;
            let hdr = frame
                .get(off..off + ihl)
                .filter(|h| h.len() >= 20)
                .ok_or_else(|| short("IPv4 header"))?;
            if inet_checksum(hdr) != 0 {
                return Err("IPv4 header checksum".into());
            }
            let tot = usize::from(be16(off + 2).ok_or_else(|| short("IPv4 header"))?);
            (
                hdr[12..16].to_vec(),
                hdr[16..20].to_vec(),
                hdr[9],
                frame
                    .get(off + ihl..off + tot)
                    .ok_or_else(|| short("IPv4 total length"))?,
            )
        }
        0x86dd => {
            let hdr = frame
                .get(off..off + 40)
                .ok_or_else(|| short("IPv6 header"))?;
            let plen = usize::from(u16::from_be_bytes([hdr[4], hdr[5]]));
            let end = off + 40 + plen;
            let mut next = hdr[6];
            let mut l4 = off + 40;
            // Skip hop-by-hop, routing and destination-options headers.
            while matches!(next, 0 | 43 | 60) {
                let ext = frame
                    .get(l4..l4 + 2)
                    .filter(|_| l4 + 2 <= end)
                    .ok_or_else(|| short("IPv6 extension header"))?;
                next = ext[0];
                l4 += (usize::from(ext[1]) + 1) * 8;
            }
            (
                hdr[8..24].to_vec(),
                hdr[24..40].to_vec(),
                next,
                frame
                    .get(l4..end)
                    .ok_or_else(|| short("IPv6 payload length"))?,
            )
        }
        _ => return Err(format!("ethertype {et:#x}")),
    };
    let check_at = match proto {
        6 => 16,
        17 => 6,
        _ => return Err(format!("L4 protocol {proto} (not TCP/UDP)")),
    };
    if l4.len() < check_at + 2 {
        return Err(short("L4 header"));
    }
    if proto == 17 && src.len() == 4 && l4[6] == 0 && l4[7] == 0 {
        return Ok(()); // IPv4 UDP without checksum
    }
    let mut pseudo = src.clone();
    pseudo.extend_from_slice(&dst);
    if src.len() == 16 {
        pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto]);
    } else {
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    }
    pseudo.extend_from_slice(l4);
    if inet_checksum(&pseudo) != 0 {
        return Err(format!("L4 (proto {proto}) checksum"));
    }
    Ok(())
}

/// Hex dump for assertion messages.
pub fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join("")
}

/// An ICMP (IPv4) or ICMPv6 error frame from `src` to `dst` of type `ty`,
/// code `code`, with `rest` in bytes 4..8 (the MTU for fragmentation needed
/// and packet too big) quoting `quote` (the start of an IP packet). Every
/// checksum computed in full here.
#[allow(clippy::too_many_arguments)]
pub fn icmp_error(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    ty: u8,
    code: u8,
    rest: [u8; 4],
    quote: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![ty, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(quote);
    let mut f = Vec::new();
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&smac);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let c = inet_checksum(&icmp);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
            h.extend_from_slice(&[0x43, 0x21, 0, 0, ttl, 1, 0, 0]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let c = inet_checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&h);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 58]);
            pseudo.extend_from_slice(&icmp);
            let c = inet_checksum(&pseudo);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
            f.push(58);
            f.push(ttl);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed address families"),
    }
    f.extend_from_slice(&icmp);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_vector_and_self_check() {
        // A classic IPv4 header example with checksum 0xb861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(inet_checksum(&h), 0xb861);
        let p = Pkt::new(
            "198.18.0.2".parse().unwrap(),
            "198.18.0.10".parse().unwrap(),
            L4::tcp(1000, 80),
        );
        verify_checksums(&p.bytes()).unwrap();
        let p = Pkt::new(
            "2001:db8::2".parse().unwrap(),
            "2001:db8::10".parse().unwrap(),
            L4::udp(1000, 53, b"q"),
        );
        verify_checksums(&p.bytes()).unwrap();
        let mut b = p.bytes();
        let n = b.len();
        b[n - 1] ^= 1;
        assert!(verify_checksums(&b).is_err());
    }

    #[test]
    fn verify_never_panics_on_cut_or_lying_frames() {
        let mut v4 = Pkt::new(
            "198.18.0.2".parse().unwrap(),
            "198.18.0.10".parse().unwrap(),
            L4::tcp(1000, 80),
        );
        v4.vlan = Some(3);
        let mut v6 = Pkt::new(
            "2001:db8::2".parse().unwrap(),
            "2001:db8::10".parse().unwrap(),
            L4::udp(1000, 53, b"q"),
        );
        v6.v6_dstopts = true;
        for full in [v4.bytes(), v6.bytes()] {
            verify_checksums(&full).unwrap();
            for n in 0..full.len() {
                assert!(verify_checksums(&full[..n]).is_err(), "cut at {n}");
            }
        }
        // IHL larger than the total length, an extension header length
        // pointing past the payload.
        let mut b = v4.bytes();
        b[18] = 0x4f;
        assert!(verify_checksums(&b).is_err());
        let mut b = v6.bytes();
        b[14 + 40 + 1] = 200;
        assert!(verify_checksums(&b).is_err());
    }
}
