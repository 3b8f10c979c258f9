//! Builds the eBPF programs (failover-ebpf) with `aya-build`: its binaries
//! for the BPF target (`bpfel-unknown-none` here) with the nightly toolchain
//! and bpf-linker, copied into OUT_DIR under their names (`failover`,
//! `failover-pass`, `failover-benchgen`), where `include_bytes_aligned!`
//! picks them up (`src/objects.rs`).
//!
//! Gate (like aya's own integration tests): `FAILOVER_BUILD_EBPF`
//! - `1`: build the eBPF objects; fail the build if that fails.
//! - `0`: write empty placeholder objects (the binary then refuses to load
//!   the dataplane with a clear message). This is what `cargo check`/`cargo
//!   clippy` need on a machine without the eBPF toolchain.
//! - unset: build them if `bpf-linker` is found, placeholders otherwise
//!   (with a cargo warning).
//!
//! `cargo xtask build|test|build-and-run` always set `FAILOVER_BUILD_EBPF=1`.
//!
//! What we add around `aya_build::build_ebpf` (0.2.0: 0.2.1 needs rustc
//! 1.98):
//! - it runs `cargo build --package failover-ebpf` in the current
//!   directory: we run it from `failover-ebpf/`, a workspace of its own,
//!   so the eBPF crate keeps its profile (LTO, one codegen unit, BTF
//!   debuginfo) and its lock file, and needs no host build of itself;
//! - it always builds into `OUT_DIR/aya-build/target/failover-ebpf`, one
//!   directory per host profile: we make that path a symlink to the shared
//!   `target/ebpf`, so debug, release and test builds share one BPF build
//!   (a nested cargo locks its own target dir, so no deadlock);
//! - host compiler settings (`RUSTFLAGS`, a pinned `RUSTUP_TOOLCHAIN`) are
//!   kept from the BPF build, and bpf-linker is found in `~/.cargo/bin`
//!   even when that is not on PATH.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya_build::{Package, Toolchain};

/// The eBPF package and the objects its binaries become.
const PACKAGE: &str = "failover-ebpf";
// The bench's generator (`failover-benchgen`) is built with them (same
// package) but not embedded: the bench loads it from the eBPF target dir.
const BINS: [&str; 2] = ["failover", "failover-pass"];

fn which(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn main() {
    if let Err(e) = run() {
        // A build script reports failure by exiting non-zero; the causes on
        // one line each, without a backtrace.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=FAILOVER_BUILD_EBPF");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let ebpf_dir = manifest.join("../failover-ebpf");
    let common_dir = manifest.join("../failover-common");
    for d in [&ebpf_dir, &common_dir] {
        println!("cargo:rerun-if-changed={}", d.join("src").display());
        println!("cargo:rerun-if-changed={}", d.join("Cargo.toml").display());
    }

    let mode = env::var("FAILOVER_BUILD_EBPF").unwrap_or_default();
    let linker = which("bpf-linker");
    let build = match mode.as_str() {
        "1" | "true" => true,
        "0" | "false" => false,
        "" => {
            if linker.is_none() {
                println!(
                    "cargo:warning=bpf-linker not found: building failover without its eBPF \
                     programs (run `cargo xtask setup`, or set FAILOVER_BUILD_EBPF=1)"
                );
            }
            linker.is_some()
        }
        other => bail!("FAILOVER_BUILD_EBPF={other:?}: expected 1 or 0"),
    };
    if !build {
        for bin in BINS {
            let dst = out_dir.join(bin);
            fs::write(&dst, []).with_context(|| format!("writing {}", dst.display()))?;
        }
        return Ok(());
    }
    build_ebpf(&ebpf_dir, &out_dir, linker.as_deref()).context(
        "building the eBPF programs failed; run `cargo xtask setup` to install the toolchain, \
         or set FAILOVER_BUILD_EBPF=0 to skip them",
    )
}

fn build_ebpf(ebpf_dir: &Path, out_dir: &Path, linker: Option<&Path>) -> anyhow::Result<()> {
    let ebpf_dir = ebpf_dir
        .canonicalize()
        .with_context(|| format!("{} not found", ebpf_dir.display()))?;
    // Shared by every host profile (debug, release, test) so the BPF build
    // runs once. A relative CARGO_TARGET_DIR is taken from the workspace
    // root, as `cargo xtask` does.
    let root = ebpf_dir.parent().context("the eBPF crate has no parent")?;
    let shared = match env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root.join(d).join("ebpf"),
        None => root.join("target").join("ebpf"),
    };
    fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    let shared = shared.canonicalize()?;
    let link = out_dir.join("aya-build").join("target").join(PACKAGE);
    if fs::read_link(&link).ok().as_deref() != Some(shared.as_path()) {
        if let Ok(meta) = fs::symlink_metadata(&link) {
            if meta.is_dir() {
                fs::remove_dir_all(&link)
            } else {
                fs::remove_file(&link)
            }
            .with_context(|| format!("removing {}", link.display()))?;
        }
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::os::unix::fs::symlink(&shared, &link)
            .with_context(|| format!("linking {} to {}", link.display(), shared.display()))?;
    }

    // aya-build's cargo runs in this directory and inherits this process's
    // environment: set both up for it.
    env::set_current_dir(&ebpf_dir)
        .with_context(|| format!("changing to {}", ebpf_dir.display()))?;
    for key in ["RUSTUP_TOOLCHAIN", "RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS"] {
        // SAFETY: the build script has a single thread until aya-build
        // spawns its own, after this; nothing reads the environment
        // concurrently.
        unsafe { env::remove_var(key) };
    }
    if let Some(dir) = linker.and_then(Path::parent) {
        let mut path = OsString::from(dir.as_os_str());
        if let Some(p) = env::var_os("PATH") {
            path.push(":");
            path.push(p);
        }
        // SAFETY: as above.
        unsafe { env::set_var("PATH", path) };
    }

    // aya-build skips the build (and copies nothing) with AYA_BUILD_SKIP:
    // stale objects must not stand in for new ones.
    for bin in BINS {
        let _ = fs::remove_file(out_dir.join(bin));
    }
    let root_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [Package {
            name: PACKAGE,
            root_dir,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )?;
    for bin in BINS {
        let obj = out_dir.join(bin);
        if !obj.is_file() {
            bail!("aya-build left no {} (AYA_BUILD_SKIP set?)", obj.display());
        }
    }
    Ok(())
}
