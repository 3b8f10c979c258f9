//! Atomic adds on map memory shared by all CPUs. The BPF target spec
//! declares no atomics beyond load/store, so `core::sync::atomic` offers no
//! read-modify-write; the compiler intrinsic lowers to the BPF atomic add
//! (`BPF_ATOMIC | BPF_ADD`, in every BPF ISA version). Its result is never
//! used: returning it (`BPF_FETCH`), and compare-and-swap, need ISA v3,
//! whose 32-bit code generation the verifier bounds worse in the Maglev
//! lookup. Callers read the value back with a plain load instead.

use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xadd};

/// Adds `v` (two's complement: may be "negative") to `*p`, atomically.
///
/// # Safety
/// `p` points to an aligned `u64` in map memory that stays valid for the
/// program's run.
#[inline(always)]
pub unsafe fn add(p: *mut u64, v: u64) {
    // SAFETY: the caller's promise.
    let _ = unsafe { atomic_xadd::<u64, u64, { Relaxed }>(p, v) };
}

/// Reads `*p` (an aligned 8-byte load is atomic).
///
/// # Safety
/// As for [`add`].
#[inline(always)]
pub unsafe fn load(p: *const u64) -> u64 {
    // SAFETY: the caller's promise.
    unsafe { core::ptr::read_volatile(p) }
}
