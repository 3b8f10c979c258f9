//! Codegen options for bpf-linker, which compiles the whole program (the
//! crate reaches it as LLVM bitcode).
//!
//! `allows-misaligned-mem-access`: header fields sit at 2-byte offsets in
//! the frame (after the 14-byte Ethernet header), and without this LLVM
//! splits every wider load and store there into single bytes. The kernel
//! accepts misaligned packet and map access on architectures with
//! efficient unaligned access (x86-64, arm64), the ones this program is
//! built for. Stack access must stay aligned (the verifier insists): the
//! packet program keeps its state in map memory; the bench programs, which
//! keep the FIB parameters on the stack as the C samples do, go without.
fn main() {
    println!("cargo:rustc-link-arg-bin=failover=--cpu-features=+allows-misaligned-mem-access");
    println!("cargo:rerun-if-changed=build.rs");
}
