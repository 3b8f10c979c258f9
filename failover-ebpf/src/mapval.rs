//! The one place that turns a map value pointer into a reference. Every
//! `get_ptr` / `get_ptr_mut` result the program dereferences goes through
//! [`as_ref`] / [`as_mut`]; words that other CPUs (or the daemon) write at
//! the same time are then read and written through `atomic.rs`.
//!
//! They are safe functions by this crate's convention, not by their
//! signature: they are only ever given a pointer a map lookup of this
//! program just returned (the crate is a binary: nothing else calls them).
//! They take that pointer, not the lookup's `Option`: converting the
//! `Option<*const T>` itself cost the ICMP handler 65 instructions of
//! spills, while the pointer form compiles as the open-coded dereference
//! did.

/// The value behind a map lookup's `*mut T` (from `get_ptr_mut`).
///
/// What makes this sound, for every map of this program:
/// - the pointer comes from `bpf_map_lookup_elem` (the lookup answered
///   `Some`): non-null, aligned and pointing to a whole, initialised `T`
///   (map values are plain old data: every bit pattern is valid);
/// - it stays valid for the program's run: array slots live as long as the
///   map, and hash and LRU values are freed only after an RCU grace period,
///   which cannot end while the program runs (a value deleted meanwhile is
///   still readable, it only no longer counts);
/// - no two references to one value are live at once in this run, and
///   other writers keep to whole words: a per-CPU slot (scratch, counters)
///   is this CPU's alone, since XDP runs to completion and never nests; the
///   daemon replaces hash values whole, never in place; values shared by
///   all CPUs (conntrack entries, passive health) are written as whole
///   aligned words, their shared counters with the atomics of `atomic.rs`
///   (a lost plain update only delays a decision).
///
/// The returned lifetime is the caller's: no reference outlives the run.
#[inline(always)]
pub fn as_mut<'a, T>(p: *mut T) -> &'a mut T {
    // SAFETY: see above: a pointer from a map lookup, valid and not aliased
    // by another live reference for the rest of the program's run.
    unsafe { &mut *p }
}

/// The value behind a map lookup's `*const T` (from `get_ptr`), only read.
#[inline(always)]
pub fn as_ref<'a, T>(p: *const T) -> &'a T {
    // SAFETY: as in `as_mut` (valid, aligned, initialised, alive for the
    // run); a shared reference only reads, and other CPUs write such values
    // as whole aligned words.
    unsafe { &*p }
}
