//! Words of map memory that other CPUs (or the daemon) read and write at
//! the same time: atomic adds, and single loads and stores that the
//! compiler may neither cache, repeat nor split.
//!
//! The BPF target spec declares no atomics beyond load/store, so
//! `core::sync::atomic` offers no read-modify-write; the compiler intrinsic
//! lowers to the BPF atomic add (`BPF_ATOMIC | BPF_ADD`, in every BPF ISA
//! version). Its result is never used: returning it (`BPF_FETCH`), and
//! compare-and-swap, need ISA v3, whose 32-bit code generation the verifier
//! bounds worse in the Maglev lookup. Callers read the value back with
//! [`read_once`] instead.

use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xadd};

/// Adds `v` (two's complement: may be "negative") to `*p`, atomically.
#[inline(always)]
pub fn add(p: &mut u64, v: u64) {
    // SAFETY: `p` is a reference, so valid and aligned for a u64 (in map
    // memory: see `mapval.rs`); the intrinsic needs nothing else.
    let _ = unsafe { atomic_xadd::<u64, u64, { Relaxed }>(p, v) };
}

/// Reads `*p` with one load (an aligned 4- or 8-byte load is atomic).
#[inline(always)]
pub fn read_once<T: Copy>(p: &T) -> T {
    // SAFETY: `p` is a reference: valid, aligned and initialised.
    unsafe { core::ptr::read_volatile(p) }
}

/// Writes `v` to `*p` with one store (an aligned 4- or 8-byte store is
/// atomic: readers see the old word or the new one).
#[inline(always)]
pub fn write_once<T: Copy>(p: &mut T, v: T) {
    // SAFETY: `p` is a reference: valid and aligned for a `T`.
    unsafe { core::ptr::write_volatile(p, v) }
}
