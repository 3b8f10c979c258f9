//! The integration crate: every test that needs root (packet tests through
//! BPF_PROG_TEST_RUN, namespace tests driving the real daemon on the lab),
//! the bench, the packet fuzzer and the chaos run. Not a default workspace
//! member: a plain `cargo test` stays unprivileged; `cargo xtask test` runs
//! these as root.
//!
//! Support: network namespaces that clean up after themselves (the lab's), a
//! packet builder whose checksums are computed here, independently of the
//! code under test, and helpers to run the loaded XDP program on a packet.

use std::path::PathBuf;

pub use failover_lab::netns;
pub mod fuzz;
pub mod pkt;
pub mod pktlab;

/// Fails (never skips) when not root: these tests need CAP_BPF,
/// CAP_NET_ADMIN and CAP_SYS_ADMIN.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests load XDP programs and create network namespaces: run them as root \
         (`cargo xtask test` does)"
    );
}

/// A name unique to this process and call, short enough for an interface
/// (<= 15 bytes): `<prefix><pid % 100000><n>`.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}{n}", std::process::id() % 100_000);
    assert!(name.len() <= 15, "name {name} too long for an interface");
    name
}

/// A binary of this workspace that cargo built next to the running test
/// binary (tests run from `target/<profile>/deps/`, binaries are in
/// `target/<profile>/`): `failover` (the daemon under test) or
/// `failover-lab` (the demo). `cargo xtask test` builds both before running
/// the tests; run alone, `cargo test -p failover-tests` does not (build them
/// with `cargo build -p failover-user -p failover-lab --bins`). Panics,
/// saying so, when it is missing.
pub fn built_binary(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("locating the test binary");
    let mut dir = me
        .parent()
        .expect("the test binary's directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: build it first (`cargo build -p failover-user -p failover-lab --bins`; \
         `cargo xtask test` does)",
        path.display()
    );
    path
}

/// The `failover` binary under test (see [`built_binary`]).
pub fn failover_exe() -> PathBuf {
    built_binary("failover")
}
