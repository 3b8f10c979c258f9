//! Network namespaces: `failover --netns NAME` enters one by its
//! `/run/netns/NAME` file (what `ip netns add` makes) while keeping the
//! host's mounts, bpffs included, in view (`ip netns exec` remounts /sys).

use std::{fs::File, os::fd::AsRawFd as _};

use anyhow::{Context as _, bail};

/// Moves the calling thread into the named namespace (`/run/netns/NAME`).
pub fn enter_named(name: &str) -> anyhow::Result<()> {
    let target = File::open(format!("/run/netns/{name}"))
        .with_context(|| format!("no network namespace {name:?}"))?;
    setns(&target)
}

/// Moves the calling thread into the namespace `f` refers to.
pub fn setns(f: &File) -> anyhow::Result<()> {
    // SAFETY: a valid namespace fd; CLONE_NEWNET only affects this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The IP addresses of this network namespace's interfaces.
pub fn local_addresses() -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; each
    // node's `ifa_addr` is null or points to a sockaddr of `sa_family`.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut p = head;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() {
                match i32::from((*a).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(a as *const libc::sockaddr_in);
                        out.push(std::net::IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(a as *const libc::sockaddr_in6);
                        out.push(std::net::IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}
