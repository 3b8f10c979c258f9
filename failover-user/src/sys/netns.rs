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
