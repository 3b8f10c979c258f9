//! The daemon's hold on its XDP attachments. Each link is pinned (so the
//! dataplane outlives the daemon: fail-static) AND held by the daemon's own
//! file descriptor, so removing the pins cannot detach a running daemon's
//! program. [`check`] says, for one interface, whether the link still runs
//! the program on that interface: the kernel's link info gives the
//! interface the link is on (0 once the interface is gone or the link was
//! detached), compared with the interface that now has that name (a
//! recreated interface has a new index).

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

/// One interface's attachment as the daemon holds it: its own descriptor
/// of the link (from the pin, `BPF_OBJ_GET`), which keeps the link alive
/// whatever happens to the pin.
#[derive(Debug)]
pub struct HeldLink {
    pub ifindex: u32,
    pub fd: OwnedFd,
}

/// What [`check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkHealth {
    /// The link runs on the interface of that name, its pin in place.
    Ok,
    /// Running, but the pin is gone (someone removed it).
    PinMissing,
    /// No interface of that name now.
    InterfaceGone,
    /// The link is no longer on the interface of that name: the interface
    /// was recreated (new index), or the link was detached.
    Detached,
}

/// Takes hold of the link pinned at `pin`.
pub fn hold(pin: &Path, ifindex: u32) -> io::Result<HeldLink> {
    Ok(HeldLink {
        ifindex,
        fd: obj_get(pin)?,
    })
}

/// Checks one held link against the interface `iface` now and the pin
/// `pin`.
pub fn check(iface: &str, held: &HeldLink, pin: &Path) -> LinkHealth {
    let now = super::ifindex(iface).unwrap_or(0);
    if now == 0 {
        return LinkHealth::InterfaceGone;
    }
    match xdp_link_ifindex(&held.fd) {
        Ok(on) if on == now => {
            if pin.exists() {
                LinkHealth::Ok
            } else {
                LinkHealth::PinMissing
            }
        }
        _ => LinkHealth::Detached,
    }
}

/// Pins a held link at `pin` again (the link kept running: only the file
/// was gone).
pub fn repin(held: &HeldLink, pin: &Path) -> io::Result<()> {
    let path = CString::new(pin.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut attr = Attr::default();
    attr.put_u64(0, path.as_ptr() as u64);
    attr.put_u32(8, held.fd.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// Whether the link pinned at `pin` runs on an interface, and on the one
/// that now has the name `iface` where that name is visible (for readers:
/// `status`, metrics).
pub fn pinned_attached(pin: &Path, iface: &str) -> bool {
    let Ok(fd) = obj_get(pin) else {
        return false;
    };
    let Ok(on) = xdp_link_ifindex(&fd) else {
        return false;
    };
    // 0: the kernel detached it (its interface went away, or a detach). A
    // reader in another network namespace cannot see the interface by
    // name; then the kernel's word is all there is.
    let now = super::ifindex(iface).unwrap_or(0);
    on != 0 && (now == 0 || now == on)
}

// The three bpf(2) commands used here, by hand: aya 0.14 neither exposes a
// link's descriptor nor the XDP part of its info. None needs more than
// CAP_BPF (BPF_LINK_GET_FD_BY_ID would need CAP_SYS_ADMIN, which the
// daemon drops).
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

#[repr(C, align(8))]
struct Attr([u8; 64]);

impl Default for Attr {
    fn default() -> Self {
        Self([0; 64])
    }
}

impl Attr {
    fn put_u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: bpf(2) reads at most `size_of::<Attr>()` bytes of the attr we
    // own; pointers inside it (paths, buffers) are valid for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `BPF_OBJ_GET`: a new descriptor of the object pinned at `pin`.
fn obj_get(pin: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(pin.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut attr = Attr::default();
    attr.put_u64(0, path.as_ptr() as u64);
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this descriptor to us; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The interface index an XDP link is attached to (0: detached), from its
/// `struct bpf_link_info`: type, id, prog_id (u32 each), then a union
/// aligned to 8 whose XDP member starts with `__u32 ifindex`.
fn xdp_link_ifindex(fd: &OwnedFd) -> io::Result<u32> {
    const IFINDEX_AT: usize = 16;
    let mut info = Attr::default();
    let mut attr = Attr::default();
    attr.put_u32(0, fd.as_raw_fd() as u32);
    attr.put_u32(4, std::mem::size_of::<Attr>() as u32);
    attr.put_u64(8, info.0.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let mut b = [0u8; 4];
    b.copy_from_slice(&info.0[IFINDEX_AT..IFINDEX_AT + 4]);
    Ok(u32::from_ne_bytes(b))
}
