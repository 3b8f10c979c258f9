//! Network namespaces and veth pairs created by a test and removed when it
//! ends, also when it fails (Drop). Commands run through `ip` (iproute2).

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::{Command, Output},
};

use anyhow::{Context as _, bail};

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
        let target =
            File::open(format!("/run/netns/{}", self.name)).context("opening the test netns")?;
        setns(&target)?;
        Ok(NsGuard { own })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn setns(f: &File) -> anyhow::Result<()> {
    // SAFETY: a valid namespace fd; CLONE_NEWNET only affects this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(())
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
