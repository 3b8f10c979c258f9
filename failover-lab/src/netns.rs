//! Network namespaces and veth pairs created by the lab (or a test) and
//! removed when it ends, also when it fails (Drop). Commands run through
//! `ip` (iproute2).

use std::{
    fs::File,
    process::{Command, Output},
};

use anyhow::{Context as _, bail};
use failover_user::sys::netns::{enter_named, setns};

/// Runs a command, failing with its output if it exits non-zero.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// `ip ARGS...`
pub fn ip(args: &[&str]) -> anyhow::Result<Output> {
    run(Command::new("ip").args(args))
}

/// A network namespace, deleted on drop (which also deletes every
/// interface in it, and their veth peers elsewhere).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Writes a sysctl inside the namespace, e.g. `net/ipv4/ip_forward`.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        run(self
            .cmd("sh")
            .args(["-c", &format!("echo {value} > /proc/sys/{key}")]))?;
        Ok(())
    }

    /// Enables IPv4 and IPv6 forwarding.
    pub fn forwarding(&self) -> anyhow::Result<()> {
        self.sysctl("net/ipv4/ip_forward", "1")?;
        self.sysctl("net/ipv6/conf/all/forwarding", "1")
    }

    /// Moves the calling thread into the namespace until the guard drops.
    pub fn enter(&self) -> anyhow::Result<NsGuard> {
        let own = File::open("/proc/thread-self/ns/net").context("opening our own netns")?;
        enter_named(&self.name)?;
        Ok(NsGuard { own })
    }

    /// Runs `f` on a new thread inside the namespace. Sockets created there
    /// belong to the namespace and can be used from any thread afterwards.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                enter_named(&self.name)?;
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("a thread in netns {} panicked", self.name))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Returns the thread to the namespace it was in.
pub struct NsGuard {
    own: File,
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = setns(&self.own);
    }
}

/// A veth pair `a` (in `ns_a`) <-> `b` (in `ns_b`), both up.
pub fn veth(ns_a: &Netns, a: &str, ns_b: &Netns, b: &str) -> anyhow::Result<()> {
    ip(&[
        "link", "add", a, "netns", &ns_a.name, "type", "veth", "peer", "name", b, "netns",
        &ns_b.name,
    ])?;
    ns_a.ip(&["link", "set", a, "up"])?;
    ns_b.ip(&["link", "set", b, "up"])?;
    Ok(())
}

/// Turns off transmit checksum offload on `dev` (in the calling thread's
/// namespace). A veth normally leaves TCP/UDP checksums to "hardware" that
/// never computes them; a frame that crosses XDP loses the skb's note that
/// the checksum is still partial, so the receiver would drop it. Real NICs
/// compute them; the lab's senders must do it in software.
pub fn disable_tx_checksum(dev: &str) -> anyhow::Result<()> {
    const ETHTOOL_STXCSUM: u32 = 0x17;
    ethtool_set(dev, ETHTOOL_STXCSUM, 0)
        .with_context(|| format!("turning off tx checksum offload on {dev}"))
}

/// `ethtool -K DEV` for one boolean feature command (`ETHTOOL_S*`), in the
/// calling thread's namespace.
pub fn ethtool_set(dev: &str, cmd: u32, value: u32) -> anyhow::Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [libc::c_char; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    let mut v = EthtoolValue { cmd, data: value };
    let mut req = IfReq {
        name: ifname(dev)?,
        data: &mut v,
        _pad: [0; 16],
    };
    with_dgram_socket(|fd| {
        // SAFETY: SIOCETHTOOL with a valid ifreq whose data points at a
        // live ethtool_value for the duration of the call.
        unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut req as *mut IfReq) }
    })
    .with_context(|| format!("ethtool command {cmd:#x} on {dev}"))
}

/// `ip link set DEV up|down` in the calling thread's namespace, through
/// SIOCGIFFLAGS/SIOCSIFFLAGS (no process to start: the event happens at
/// the instant of the call).
pub fn set_link_up(dev: &str, up: bool) -> anyhow::Result<()> {
    #[repr(C)]
    struct IfReq {
        name: [libc::c_char; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: ifname(dev)?,
        flags: 0,
        _pad: [0; 22],
    };
    with_dgram_socket(|fd| {
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS with a valid ifreq (name,
        // flags) that lives across both calls.
        unsafe {
            let rc = libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req as *mut IfReq);
            if rc != 0 {
                return rc;
            }
            let f = libc::IFF_UP as libc::c_short;
            req.flags = if up { req.flags | f } else { req.flags & !f };
            libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &mut req as *mut IfReq)
        }
    })
    .with_context(|| format!("setting {dev} {}", if up { "up" } else { "down" }))
}

/// An interface name as `struct ifreq` holds it.
fn ifname(dev: &str) -> anyhow::Result<[libc::c_char; libc::IFNAMSIZ]> {
    if dev.is_empty() || dev.len() >= libc::IFNAMSIZ {
        anyhow::bail!("interface name {dev:?}: 1-15 bytes");
    }
    let mut name = [0; libc::IFNAMSIZ];
    for (d, s) in name.iter_mut().zip(dev.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(name)
}

/// Runs one ioctl on a fresh datagram socket; its error if it returned
/// non-zero.
fn with_dgram_socket(f: impl FnOnce(libc::c_int) -> libc::c_int) -> anyhow::Result<()> {
    // SAFETY: a plain socket(2) call; the fd is owned right below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket");
    }
    // SAFETY: `fd` is a fresh fd nobody else owns; dropping closes it.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let rc = f(std::os::fd::AsRawFd::as_raw_fd(&sock));
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}
