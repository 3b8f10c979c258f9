//! Builds the eBPF programs (failover-ebpf) for the BPF target with the
//! nightly toolchain and bpf-linker, and puts the objects in OUT_DIR where
//! `include_bytes_aligned!` picks them up.
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

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

const BINS: [&str; 3] = ["failover", "failover-pass", "failover-benchgen"];

fn main() {
    if let Err(e) = run() {
        // A build script reports failure by exiting non-zero.
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

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

fn run() -> Result<(), String> {
    println!("cargo:rerun-if-env-changed=FAILOVER_BUILD_EBPF");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR not set")?);
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR not set")?);
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
        other => return Err(format!("FAILOVER_BUILD_EBPF={other:?}: expected 1 or 0")),
    };
    if !build {
        for bin in BINS {
            let dst = out_dir.join(bin);
            fs::write(&dst, []).map_err(|e| format!("writing {}: {e}", dst.display()))?;
        }
        return Ok(());
    }
    build_ebpf(&ebpf_dir, &out_dir, linker.as_deref())
}

fn build_ebpf(ebpf_dir: &Path, out_dir: &Path, linker: Option<&Path>) -> Result<(), String> {
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("little") => "bpfel-unknown-none",
        Ok("big") => "bpfeb-unknown-none",
        other => return Err(format!("unsupported target endianness {other:?}")),
    };
    let arch = env::var("CARGO_CFG_TARGET_ARCH").map_err(|_| "CARGO_CFG_TARGET_ARCH not set")?;
    // Shared by every host profile (debug, release, test) so the BPF build
    // runs once; a nested cargo locks its own target dir, so no deadlock.
    let target_dir = match env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d).join("ebpf"),
        None => ebpf_dir.join("../target/ebpf"),
    };

    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--release",
        "--bins",
        "-Z",
        "build-std=core",
    ])
    .args(["--target", target])
    .arg("--target-dir")
    .arg(&target_dir)
    .current_dir(ebpf_dir);
    // Don't let the host build's compiler settings leak into the BPF build.
    for key in [
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(key);
    }
    let mut flags = OsString::new();
    for (i, f) in [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_string(),
        "-Clink-arg=--btf".to_string(),
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            flags.push("\x1f");
        }
        flags.push(f);
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags);
    if let Some(l) = linker.and_then(Path::parent) {
        // Make sure the nightly cargo finds bpf-linker even if ~/.cargo/bin
        // is not on PATH.
        let mut path = OsString::from(l.as_os_str());
        if let Some(p) = env::var_os("PATH") {
            path.push(":");
            path.push(p);
        }
        cmd.env("PATH", path);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("running {cmd:?}: {e} (is rustup installed?)"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        for line in stderr.lines() {
            println!("cargo:warning={line}");
        }
        return Err(format!(
            "building the eBPF programs failed ({}); run `cargo xtask setup` to install the \
             toolchain, or set FAILOVER_BUILD_EBPF=0 to skip them",
            out.status
        ));
    }
    for bin in BINS {
        let src = target_dir.join(target).join("release").join(bin);
        let dst = out_dir.join(bin);
        fs::copy(&src, &dst)
            .map_err(|e| format!("copying {} to {}: {e}", src.display(), dst.display()))?;
    }
    Ok(())
}
