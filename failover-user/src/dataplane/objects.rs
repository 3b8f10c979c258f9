//! The eBPF objects built by `build.rs` (empty when built without the eBPF
//! toolchain: see docs/hacking.md, "Building without the eBPF toolchain").

use aya::include_bytes_aligned;

/// The failover XDP program (`failover-ebpf/src/main.rs`).
pub static FAILOVER: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/failover"));

/// An XDP program that passes everything: the floor for per-packet cost, and
/// what the lab attaches to veth peers so they accept redirected frames.
pub static PASS: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/failover-pass"));

/// Name of the XDP function in [`FAILOVER`].
pub const FAILOVER_PROGRAM: &str = "failover";
/// Name of the ICMP program in [`FAILOVER`], tail-called by the first
/// (slot `PROG_ICMP` of its `PROGS` map).
pub const ICMP_PROGRAM: &str = "failover_icmp";
pub const PROG_ICMP: u32 = 0;
/// Name of the XDP function in [`PASS`].
pub const PASS_PROGRAM: &str = "failover_pass";

/// Fails with a clear message when this binary was built without its eBPF
/// programs.
pub fn check(object: &[u8], what: &str) -> anyhow::Result<()> {
    if object.is_empty() {
        anyhow::bail!(
            "this binary was built without its eBPF program ({what}): build it with \
             `cargo xtask build` (or FAILOVER_BUILD_EBPF=1 with bpf-linker installed)"
        );
    }
    Ok(())
}
