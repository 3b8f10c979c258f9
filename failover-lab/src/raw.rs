//! Raw frames for the lab's tests and the bench: an IPv4 TCP/ICMP frame
//! builder with full checksums, AF_PACKET sockets to send frames no socket
//! API would (forged, spoofed, VLAN-tagged) and to capture what really
//! crossed a link. Only inside the lab's own namespaces.

use std::time::Duration;

use anyhow::{Context as _, bail};

/// RFC 1071 checksum of `data`.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 TCP segment without payload.
#[derive(Clone, Copy)]
pub struct Tcp {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// Send a wrong TCP checksum.
    pub bad_checksum: bool,
}

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

impl Tcp {
    pub fn syn(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, seq: u32) -> Self {
        Self {
            src,
            dst,
            sport,
            dport,
            seq,
            ack: 0,
            flags: SYN,
            bad_checksum: false,
        }
    }

    /// The IPv4 packet (header and segment).
    pub fn ip(&self) -> Vec<u8> {
        let mut tcp = Vec::with_capacity(20);
        tcp.extend_from_slice(&self.sport.to_be_bytes());
        tcp.extend_from_slice(&self.dport.to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&self.ack.to_be_bytes());
        tcp.extend_from_slice(&[0x50, self.flags, 0xfa, 0xf0, 0, 0, 0, 0]);
        let mut pseudo = Vec::with_capacity(32);
        pseudo.extend_from_slice(&self.src);
        pseudo.extend_from_slice(&self.dst);
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        pseudo.extend_from_slice(&tcp);
        let mut c = inet_checksum(&pseudo);
        if self.bad_checksum {
            c ^= 0x5a5a;
        }
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        ipv4(self.src, self.dst, 6, &tcp)
    }
}

/// An IPv4 packet (DF, TTL 64) around `payload`.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    let len = (20 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&len.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = inet_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(payload);
    ip
}

/// An ICMP destination unreachable (`code`) from `src` to `dst` quoting
/// the first 28 bytes of `quoted` (an IPv4 packet).
pub fn icmp_unreachable(src: [u8; 4], dst: [u8; 4], code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![3, code, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&quoted[..28.min(quoted.len())]);
    let c = inet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 1, &icmp)
}

/// An Ethernet frame around an IPv4 packet; `vlan`: an 802.1Q tag.
pub fn ether(dmac: [u8; 6], smac: [u8; 6], vlan: Option<u16>, ip: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(18 + ip.len());
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&smac);
    if let Some(vid) = vlan {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(ip);
    f
}

/// Sends one frame; whether it went out whole.
pub fn send(fd: &std::os::fd::OwnedFd, frame: &[u8]) -> bool {
    // SAFETY: sending a buffer we own on a bound AF_PACKET socket.
    let n = unsafe {
        libc::send(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            frame.as_ptr().cast(),
            frame.len(),
            0,
        )
    };
    n == frame.len() as isize
}

/// An AF_PACKET socket on `dev` (in the calling thread's namespace), with
/// a receive timeout.
pub fn packet_socket(dev: &str) -> anyhow::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket syscalls on a descriptor we own from here.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned to us.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(dev)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {dev}");
    }
    // SAFETY: zeroed sockaddr_ll is valid; the fields are then set.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: valid structs of the sizes passed.
    let ok = unsafe {
        libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) == 0
            && libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            ) == 0
            && libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_AUXDATA,
                (&1i32 as *const i32).cast(),
                4,
            ) == 0
    };
    if !ok {
        bail!("binding to {dev}: {}", std::io::Error::last_os_error());
    }
    Ok(owned)
}

/// A captured frame; `vlan`: a tag the kernel moved out of the frame's
/// bytes on receive (reported in PACKET_AUXDATA), as it does before the
/// packet taps see it.
pub struct Frame {
    pub data: Vec<u8>,
    pub vlan: Option<u16>,
}

/// One frame from an AF_PACKET socket with PACKET_AUXDATA (`None` on
/// timeout).
pub fn recv_frame(fd: &std::os::fd::OwnedFd) -> Option<Frame> {
    let mut buf = [0u8; 2048];
    let mut ctrl = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the
    // call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&ctrl);
    // SAFETY: recvmsg fills buffers we own, of the sizes given.
    let n = unsafe { libc::recvmsg(std::os::fd::AsRawFd::as_raw_fd(fd), &mut msg, 0) };
    if n <= 0 {
        return None;
    }
    let mut vlan = None;
    // SAFETY: walking the control messages the kernel wrote into `ctrl`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA {
                let aux: libc::tpacket_auxdata =
                    std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                    vlan = Some(aux.tp_vlan_tci & 0x0fff);
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Some(Frame {
        data: buf[..n as usize].to_vec(),
        vlan,
    })
}

pub fn mac_of(ns: &crate::netns::Netns, dev: &str) -> anyhow::Result<[u8; 6]> {
    let out = ns.ip(&["-br", "link", "show", dev])?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mac = text
        .split_whitespace()
        .find(|w| w.len() == 17 && w.matches(':').count() == 5)
        .with_context(|| format!("no MAC address in {text:?}"))?;
    let mut m = [0u8; 6];
    for (i, b) in mac.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(b, 16).with_context(|| format!("MAC address {mac:?}"))?;
    }
    Ok(m)
}

/// Frames from `fd` until one matches `want` or 3 s pass.
pub fn recv_matching(fd: &std::os::fd::OwnedFd, want: &dyn Fn(&[u8]) -> bool) -> Option<Frame> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        if let Some(f) = recv_frame(fd)
            && want(&f.data)
        {
            return Some(f);
        }
    }
    None
}
