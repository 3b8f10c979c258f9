//! Test support: network namespaces that clean up after themselves, a packet
//! builder whose checksums are computed here, independently of the code
//! under test, and helpers to run the loaded XDP program on a packet.

pub use failover_user::lab::netns;
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
