//! Dropping the capabilities the daemon no longer needs once its XDP
//! program is attached and its listeners are bound.
//!
//! After that point the daemon only writes maps through file descriptors it
//! holds or opens from its pins, and every `bpf()` command needs CAP_BPF
//! (CAP_SYS_ADMIN before Linux 5.8) while unprivileged BPF is disabled. So
//! it keeps that, plus CAP_NET_ADMIN to attach its program again to an
//! interface that was recreated (see `dataplane::links`) and CAP_SETUID
//! and CAP_SETGID to start its children as `daemon.run_as`, and drops
//! everything else (CAP_SYS_ADMIN, and whatever else it was started with)
//! from its effective, permitted and inheritable sets and the ambient set.
//! The bounding set (when it may: CAP_SETPCAP) is cut to CAP_BPF alone, so
//! that hooks and exec probes it runs never get CAP_NET_ADMIN, not even as
//! root. `no_new_privs` is set too.
//!
//! The daemon's async work runs on one thread (a current-thread runtime);
//! threads started later inherit the reduced sets. [`check_threads`] reads
//! every thread's sets back to prove it.

use anyhow::{Context as _, bail};

pub const CAP_SETGID: u32 = 6;
pub const CAP_SETUID: u32 = 7;
pub const CAP_SETPCAP: u32 = 8;
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_BPF: u32 = 39;

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const PR_CAP_AMBIENT: libc::c_int = 47;
const PR_CAP_AMBIENT_CLEAR_ALL: libc::c_ulong = 4;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The set the daemon keeps: CAP_BPF (CAP_SYS_ADMIN on kernels that
/// predate CAP_BPF, `last_cap` < 39), CAP_NET_ADMIN, and CAP_SETUID with
/// CAP_SETGID to start hooks and exec probes as `daemon.run_as` (the
/// switch to that user clears every capability of the child).
pub fn keep_set(last_cap: u32) -> u64 {
    bound_set(last_cap) | (1 << CAP_NET_ADMIN) | (1 << CAP_SETUID) | (1 << CAP_SETGID)
}

/// The bounding set the daemon leaves for what it runs: CAP_BPF (or
/// CAP_SYS_ADMIN before CAP_BPF existed) alone.
pub fn bound_set(last_cap: u32) -> u64 {
    if last_cap >= CAP_BPF {
        1 << CAP_BPF
    } else {
        1 << CAP_SYS_ADMIN
    }
}

/// The highest capability number this kernel knows.
pub fn last_cap() -> anyhow::Result<u32> {
    let s = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .context("reading /proc/sys/kernel/cap_last_cap")?;
    s.trim()
        .parse()
        .with_context(|| format!("parsing cap_last_cap {s:?}"))
}

fn capget() -> anyhow::Result<[CapData; 2]> {
    let mut h = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    // SAFETY: capget(2) with a v3 header and room for two data structs.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) };
    if r != 0 {
        bail!("capget: {}", std::io::Error::last_os_error());
    }
    Ok(d)
}

fn split(v: u64) -> (u32, u32) {
    (v as u32, (v >> 32) as u32)
}

/// What was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub kept: u64,
    /// Whether the bounding set was reduced too (needs CAP_SETPCAP).
    pub bounding: bool,
}

/// Drops every capability of the calling thread but `keep`, and cuts the
/// bounding set to `bound` (see the module documentation).
pub fn drop_all_but(keep: u64, bound: u64) -> anyhow::Result<Dropped> {
    let last = last_cap()?;
    let cur = capget()?;
    let permitted = u64::from(cur[0].permitted) | (u64::from(cur[1].permitted) << 32);
    let kept = permitted & keep;
    // The bounding set first: it needs CAP_SETPCAP, about to go.
    let mut bounding = permitted & (1 << CAP_SETPCAP) != 0;
    if bounding {
        for cap in 0..=last.min(63) {
            if bound & (1 << cap) != 0 {
                continue;
            }
            // SAFETY: prctl with plain integer arguments.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if r != 0 {
                bounding = false;
                break;
            }
        }
    }
    // SAFETY: prctl with plain integer arguments.
    unsafe {
        libc::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    }
    let (lo, hi) = split(kept);
    let d = [
        CapData {
            effective: lo,
            permitted: lo,
            inheritable: 0,
        },
        CapData {
            effective: hi,
            permitted: hi,
            inheritable: 0,
        },
    ];
    let mut h = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset(2) with a v3 header and two data structs.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) };
    if r != 0 {
        bail!("capset: {}", std::io::Error::last_os_error());
    }
    // SAFETY: prctl with plain integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        bail!("PR_SET_NO_NEW_PRIVS: {}", std::io::Error::last_os_error());
    }
    Ok(Dropped { kept, bounding })
}

/// A `Cap*:` line of /proc/.../status, as a set.
pub fn status_set(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(field)?.strip_prefix(':')?;
        u64::from_str_radix(v.trim(), 16).ok()
    })
}

/// Threads of this process whose effective or permitted set exceeds
/// `allowed`, as `(tid, CapEff, CapPrm)`.
pub fn check_threads(allowed: u64) -> anyhow::Result<Vec<(String, u64, u64)>> {
    let mut over = Vec::new();
    for e in std::fs::read_dir("/proc/self/task").context("listing /proc/self/task")? {
        let e = e.context("reading /proc/self/task")?;
        let tid = e.file_name().to_string_lossy().into_owned();
        let Ok(st) = std::fs::read_to_string(e.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        let eff = status_set(&st, "CapEff").unwrap_or(u64::MAX);
        let prm = status_set(&st, "CapPrm").unwrap_or(u64::MAX);
        if eff & !allowed != 0 || prm & !allowed != 0 {
            over.push((tid, eff, prm));
        }
    }
    Ok(over)
}

/// Names of the capabilities in `set` this module knows, for messages.
pub fn names(set: u64) -> String {
    let known = [
        (CAP_SETGID, "CAP_SETGID"),
        (CAP_SETUID, "CAP_SETUID"),
        (CAP_SETPCAP, "CAP_SETPCAP"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (CAP_BPF, "CAP_BPF"),
    ];
    let mut v: Vec<String> = known
        .iter()
        .filter(|(c, _)| set & (1 << c) != 0)
        .map(|(_, n)| n.to_string())
        .collect();
    let rest = set & !known.iter().fold(0u64, |a, (c, _)| a | (1 << c));
    if rest != 0 {
        v.push(format!("others {rest:#x}"));
    }
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_cap_bpf_or_sys_admin_on_old_kernels() {
        let rest = (1 << 12) | (1 << 7) | (1 << 6);
        assert_eq!(keep_set(40), (1 << 39) | rest);
        assert_eq!(keep_set(38), (1 << 21) | rest);
        assert_eq!(bound_set(40), 1 << 39);
        assert_eq!(bound_set(38), 1 << 21);
    }

    #[test]
    fn reads_proc_status_sets() {
        let st = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t0000008000000000\nCapEff:\t0000008000000000\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(status_set(st, "CapEff"), Some(1 << 39));
        assert_eq!(status_set(st, "CapBnd"), Some(0x1ff_ffff_ffff));
        assert_eq!(status_set(st, "CapAmb"), None);
        assert_eq!(names(1 << 39), "CAP_BPF");
        assert_eq!(names((1 << 12) | (1 << 1)), "CAP_NET_ADMIN, others 0x2");
    }
}
