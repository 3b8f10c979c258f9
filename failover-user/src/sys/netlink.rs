//! Route, neighbour, address, rule and link change notifications from the
//! kernel (rtnetlink multicast groups), for the next-hop cache: the daemon
//! does not need to know what changed, only that something did, so the
//! messages are counted, not parsed. The socket is netlink-sys's.

use std::io;

use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

/// rtnetlink multicast groups (`enum rtnetlink_groups` in
/// `<linux/rtnetlink.h>`) whose messages may change what `bpf_fib_lookup`
/// answers: links (up/down, MTU, MAC), neighbours, addresses (local
/// routes), routes, rules and nexthop objects, IPv4 and IPv6.
const GROUPS: [u32; 9] = [
    1,  // RTNLGRP_LINK
    3,  // RTNLGRP_NEIGH
    5,  // RTNLGRP_IPV4_IFADDR
    7,  // RTNLGRP_IPV4_ROUTE
    8,  // RTNLGRP_IPV4_RULE
    9,  // RTNLGRP_IPV6_IFADDR
    11, // RTNLGRP_IPV6_ROUTE
    19, // RTNLGRP_IPV6_RULE
    32, // RTNLGRP_NEXTHOP
];

/// A subscription to the groups above, in the network namespace of the
/// thread that creates it.
pub struct RouteEvents {
    socket: Socket,
    buf: Vec<u8>,
}

impl RouteEvents {
    pub fn subscribe() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        for g in GROUPS {
            socket.add_membership(g)?;
        }
        // A burst of events (a flapping link, a full table reload) must not
        // block the kernel; an overflow is reported (ENOBUFS) and counts as
        // a change like any other.
        socket.set_rx_buf_sz(1 << 20)?;
        Ok(Self {
            socket,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Blocks until the kernel reports a change (or lost some reports:
    /// the receive buffer overflowed). Other errors are returned.
    pub fn wait(&mut self) -> io::Result<()> {
        self.buf.clear();
        match self.socket.recv(&mut self.buf, 0) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e),
        }
    }
}
