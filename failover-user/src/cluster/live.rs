//! The announcement's tie to the daemon's life. The VIP routes BIRD
//! announces go `via` a tun device this process creates without
//! `TUNSETPERSIST`: the kernel deletes it when the last fd closes, that is
//! when the daemon dies however it dies, and BIRD (`check link on`)
//! withdraws in 10-14 ms (docs/cluster-design). The fd is close-on-exec,
//! or a hook or exec probe would inherit it and keep a dead daemon's
//! routes alive.
//!
//! A daemon that lives but hangs is caught by [`Watchdog`]: a std thread
//! outside the async runtime that aborts the process (so the tun goes)
//! when the runtime stops beating for longer than its limit.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;

/// The held tun device; dropping it deletes the device.
pub struct LiveDevice {
    _fd: File,
    pub name: String,
}

// From <linux/if_tun.h>; libc has no TUNSETIFF.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ifreq(name: &str, flags: libc::c_short) -> anyhow::Result<IfReq> {
    let mut r = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags,
        _pad: [0; 22],
    };
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        anyhow::bail!("{name:?}: not a valid interface name");
    }
    for (d, s) in r.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

impl LiveDevice {
    /// Creates the tun `name` (in the daemon's network namespace) and sets
    /// it up. Needs CAP_NET_ADMIN: done before capabilities are dropped.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags_cloexec()
            .open("/dev/net/tun")
            .context("opening /dev/net/tun (the cluster's liveness device)")?;
        let mut req = ifreq(name, IFF_TUN | IFF_NO_PI)?;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which
        // `IfReq` lays out (name, flags, padding to 40 bytes); `req` lives
        // across the call and the fd is a tun control fd.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("creating the tun {name:?} (TUNSETIFF)"));
        }
        set_up(name).with_context(|| format!("setting {name:?} up"))?;
        Ok(LiveDevice {
            _fd: fd,
            name: name.to_string(),
        })
    }
}

trait CloexecExt {
    fn custom_flags_cloexec(&mut self) -> &mut Self;
}

impl CloexecExt for std::fs::OpenOptions {
    fn custom_flags_cloexec(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt as _;
        // std opens with O_CLOEXEC already; said here because it matters.
        self.custom_flags(libc::O_CLOEXEC)
    }
}

/// `ip link set NAME up`, through SIOCSIFFLAGS on a datagram socket.
fn set_up(name: &str) -> anyhow::Result<()> {
    // SAFETY: a plain socket(2) call; the fd is owned right below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(std::io::Error::last_os_error()).context("socket for SIOCSIFFLAGS");
    }
    // SAFETY: `s` is a fresh fd nobody else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(s) };
    let mut req = ifreq(name, 0)?;
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the name and flags
    // of one `struct ifreq` that lives across the calls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req as *mut IfReq) < 0 {
            return Err(std::io::Error::last_os_error()).context("SIOCGIFFLAGS");
        }
        req.flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req as *mut IfReq) < 0 {
            return Err(std::io::Error::last_os_error()).context("SIOCSIFFLAGS");
        }
    }
    Ok(())
}

/// Aborts the process when the async runtime stops beating: a hung daemon
/// must not keep attracting traffic (the tun dies with the process).
#[derive(Clone)]
pub struct Watchdog {
    last: Arc<AtomicU64>,
    limit: Duration,
}

fn mono_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

impl Watchdog {
    /// A watchdog not watching yet: see [`Watchdog::arm`].
    pub fn new(limit: Duration) -> Self {
        Watchdog {
            last: Arc::new(AtomicU64::new(mono_ms())),
            limit,
        }
    }

    /// Starts the watching thread: no [`Watchdog::beat`] for the limit →
    /// abort. Called once the capabilities are dropped (a thread started
    /// before would keep them).
    pub fn arm(&self) -> anyhow::Result<()> {
        self.beat();
        let last = self.last.clone();
        let limit_ms = self.limit.as_millis() as u64;
        std::thread::Builder::new()
            .name("cluster-watchdog".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(50));
                    let age = mono_ms().saturating_sub(last.load(Ordering::Relaxed));
                    if age > limit_ms {
                        eprintln!(
                            "failover: the runtime has not beaten for {age} ms (limit {limit_ms} ms): aborting so the cluster stops sending traffic here"
                        );
                        std::process::abort();
                    }
                }
            })
            .context("starting the cluster watchdog thread")?;
        Ok(())
    }

    pub fn beat(&self) {
        self.last.store(mono_ms(), Ordering::Relaxed);
    }
}
