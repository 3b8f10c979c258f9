//! The only `unsafe` code of xtask: tiny wrappers around libc.

use std::ffi::CStr;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// Effective user id of this process.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions, cannot fail and touches no
    // memory of ours.
    unsafe { libc::geteuid() }
}

extern "C" fn on_sigint(_signal: libc::c_int) {}

/// Makes SIGINT (Ctrl-C) not kill this process, so that it keeps waiting for
/// its child (which receives the same SIGINT from the terminal). A caught
/// signal, unlike an ignored one, is reset to its default action on exec, so
/// children spawned afterwards still react to Ctrl-C normally.
pub fn survive_sigint() -> io::Result<()> {
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: the handler is an async-signal-safe no-op `extern "C"` function
    // that lives for the whole program; signal(2) only changes the signal
    // disposition of this process.
    let previous = unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
    if previous == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `struct bpf_insn` from `<linux/bpf.h>`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BpfInsn {
    pub code: u8,
    /// dst_reg in the low nibble, src_reg in the high nibble (little endian).
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// The `BPF_PROG_LOAD` prefix of `union bpf_attr`, zero-padded: the kernel
/// accepts a shorter attr than its own and zero-fills the rest, and rejects
/// non-zero bytes it does not know, so the padding must stay zero.
#[repr(C)]
struct BpfAttrProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    padding: [u8; 80],
}

const _: () = assert!(size_of::<BpfAttrProgLoad>() == 128);

const BPF_PROG_LOAD: libc::c_long = 5;

/// `bpf(BPF_PROG_LOAD)`. With a non-empty `log`, the verifier log (level 1)
/// is written into it. The returned fd closes the program when dropped.
pub fn bpf_prog_load(
    prog_type: u32,
    insns: &[BpfInsn],
    license: &CStr,
    log: &mut [u8],
) -> io::Result<OwnedFd> {
    let too_big = |what| io::Error::new(io::ErrorKind::InvalidInput, what);
    let attr = BpfAttrProgLoad {
        prog_type,
        insn_cnt: u32::try_from(insns.len()).map_err(|_| too_big("too many instructions"))?,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: u32::from(!log.is_empty()),
        log_size: u32::try_from(log.len()).map_err(|_| too_big("log buffer too big"))?,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        padding: [0; 80],
    };
    // SAFETY: `attr` is a fully initialised, zero-padded prefix of
    // `union bpf_attr` whose size we pass along; the pointers in it
    // (`insns`, `license`, `log_buf`/`log_size`) refer to live buffers of the
    // stated lengths that outlive the call, and the kernel only writes into
    // `log`, which we borrow mutably. On success the return value is a new
    // file descriptor that nothing else owns, so `OwnedFd` may take it.
    unsafe {
        let ret = libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &raw const attr,
            size_of::<BpfAttrProgLoad>(),
        );
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = i32::try_from(ret).map_err(|_| too_big("bpf() returned a bogus fd"))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}
