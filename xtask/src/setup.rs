//! `cargo xtask setup`: checks (and where possible installs or fixes)
//! everything needed to build the eBPF program and to run the tests and the
//! daemon. Idempotent; when nothing needs doing it only runs a few quick
//! queries. Every step prints one `setup: <step>: <result>` line.

use std::ffi::{CString, OsString};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};

use crate::{cmd, elf, sys};

/// How much of the setup a command needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Toolchain only (rustup, nightly, rust-src, bpf-linker): enough to
    /// compile and lint, no root needed.
    Toolchain,
    /// Everything, including root, bpffs, `ip` and a kernel XDP load probe.
    Full,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Rebuild bpf-linker even if the installed one works.
    pub reinstall_bpf_linker: bool,
}

/// The outcome of a successful setup, for the commands that follow it.
#[derive(Debug, Default)]
pub struct Ready {
    /// Directories to put in front of `PATH` for child processes, when a tool
    /// we rely on (rustup proxies, bpf-linker) is not what `PATH` finds.
    extra_path: Vec<PathBuf>,
}

impl Ready {
    /// A command for `program`, with `PATH` adjusted if setup found that
    /// necessary (rustc looks bpf-linker up in `PATH`).
    pub fn command(&self, program: &str) -> Result<Command> {
        let mut command = Command::new(program);
        if !self.extra_path.is_empty() {
            let current = std::env::var_os("PATH").unwrap_or_default();
            let dirs = self
                .extra_path
                .iter()
                .cloned()
                .chain(std::env::split_paths(&current));
            let path: OsString = std::env::join_paths(dirs).context("cannot build PATH")?;
            command.env("PATH", path);
        }
        Ok(command)
    }
}

const BPFFS: &str = "/sys/fs/bpf";

/// Runs the setup steps of `scope`; fails listing every step that could not
/// be fixed, with the command that fixes it.
pub fn run(scope: Scope, options: Options) -> Result<Ready> {
    let mut steps = Steps::default();
    let mut ready = Ready::default();

    let rustup = steps.record("rustup", find_rustup());
    if let Some(rustup) = &rustup
        && let Some(dir) = rustup.parent()
        && cmd::which("rustup").as_deref() != Some(rustup.as_path())
    {
        ready.extra_path.push(dir.to_owned());
    }

    let nightly = match &rustup {
        Some(rustup) => steps.record("nightly toolchain", ensure_nightly(rustup)),
        None => {
            steps.skip("nightly toolchain", "needs rustup");
            None
        }
    };
    match &nightly {
        Some(_) => {
            if let Some(rustup) = &rustup {
                steps.record("rust-src", ensure_component(rustup, "rust-src"));
            }
        }
        None => steps.skip("rust-src", "needs the nightly toolchain"),
    }
    match &nightly {
        Some(nightly) => {
            let found = steps.record("bpf-linker", ensure_bpf_linker(nightly, options));
            if let Some(Some(dir)) = found {
                ready.extra_path.push(dir);
            }
        }
        None => steps.skip("bpf-linker", "needs the nightly toolchain"),
    }
    // A build dependency (the etcd-client crate runs protoc), so also for
    // the commands that only build and lint; the full scope checks it with
    // the cluster tools below.
    if scope == Scope::Toolchain {
        steps.record(
            "protoc",
            ensure_packages(
                sys::geteuid() == 0,
                &CLUSTER_TOOLS[CLUSTER_TOOLS.len() - 1..],
            ),
        );
    }

    if scope == Scope::Full {
        let root = steps.record("privileges", check_root()).is_some();
        steps.record("bpffs", ensure_bpffs(root));
        steps.record("tools", ensure_ip(root));
        steps.record("postgresql", ensure_postgresql(root));
        steps.record("cluster tools", ensure_packages(root, &CLUSTER_TOOLS));
        steps.record("xdp", probe_xdp());
    }

    if !steps.failures.is_empty() {
        bail!(
            "setup incomplete; fix the following, then re-run `cargo xtask setup`:\n{}",
            steps.failures.join("\n")
        );
    }
    Ok(ready)
}

/// Prints one line per step and collects failures.
#[derive(Default)]
struct Steps {
    failures: Vec<String>,
}

impl Steps {
    /// `result` is the step's status text (`ok (...)`, `installed (...)`)
    /// plus whatever later steps need from it.
    fn record<T>(&mut self, step: &str, result: Result<(String, T)>) -> Option<T> {
        match result {
            Ok((status, value)) => {
                println!("setup: {step}: {status}");
                Some(value)
            }
            Err(error) => {
                println!("setup: {step}: FAILED: {error:#}");
                self.failures.push(format!("  - {step}: {error:#}"));
                None
            }
        }
    }

    fn skip(&self, step: &str, why: &str) {
        println!("setup: {step}: skipped ({why})");
    }
}

fn home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .context("$HOME is not set")
}

fn cargo_bin_dir() -> Result<PathBuf> {
    match std::env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        Some(cargo_home) => Ok(PathBuf::from(cargo_home).join("bin")),
        None => Ok(home()?.join(".cargo").join("bin")),
    }
}

/// Where the libLLVM symlinks for bpf-linker live. bpf-linker's rpath points
/// here, so this folder must stay.
fn llvm_prefix() -> Result<PathBuf> {
    Ok(home()?.join(".local/share/failover/llvm"))
}

/// `name` from `PATH`, else from cargo's bin directory.
fn find_tool(name: &str) -> Option<PathBuf> {
    cmd::which(name).or_else(|| {
        let candidate = cargo_bin_dir().ok()?.join(name);
        cmd::is_executable(&candidate).then_some(candidate)
    })
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("").trim()
}

// ---------------------------------------------------------------- toolchain

fn find_rustup() -> Result<(String, PathBuf)> {
    let rustup = find_tool("rustup").with_context(|| {
        format!(
            "rustup not found in PATH nor in {}; install it with: \
             curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y",
            cargo_bin_dir().map_or_else(|_| "~/.cargo/bin".into(), |d| d.display().to_string())
        )
    })?;
    let version = cmd::output(Command::new(&rustup).arg("--version"))?;
    Ok((format!("ok ({})", first_line(&version)), rustup))
}

struct Nightly {
    llvm_major: u32,
    sysroot: PathBuf,
}

fn has_nightly(rustup: &Path) -> Result<bool> {
    let list = cmd::output(Command::new(rustup).args(["toolchain", "list"]))?;
    Ok(list.lines().any(|line| {
        let name = line.split_whitespace().next().unwrap_or("");
        // `nightly` or `nightly-<host>`, but not a dated `nightly-2025-01-01-…`.
        name == "nightly"
            || name
                .strip_prefix("nightly-")
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    }))
}

fn ensure_nightly(rustup: &Path) -> Result<(String, Nightly)> {
    let mut status = "ok";
    if !has_nightly(rustup)? {
        cmd::run(Command::new(rustup).args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("installing the nightly toolchain failed; run: rustup toolchain install nightly --profile minimal")?;
        status = "installed";
    }
    let rustc = |args: &[&str]| {
        cmd::output(Command::new(rustup).args(["run", "nightly", "rustc"]).args(args))
            .context("the nightly toolchain is broken; reinstall it with: rustup toolchain install nightly --profile minimal --force")
    };
    let version = rustc(&["-vV"])?;
    let llvm = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
        .map(str::trim)
        .context("`rustc +nightly -vV` printed no `LLVM version:` line")?;
    let llvm_major = llvm
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("cannot parse LLVM version {llvm:?} from `rustc +nightly -vV`"))?;
    let sysroot = PathBuf::from(rustc(&["--print", "sysroot"])?.trim());
    let release = version
        .lines()
        .find_map(|line| line.strip_prefix("release:"))
        .map_or("?", str::trim);
    Ok((
        format!("{status} (rustc {release}, LLVM {llvm})"),
        Nightly {
            llvm_major,
            sysroot,
        },
    ))
}

/// Whether the nightly toolchain has `component` (e.g. `rust-src`, `clippy`).
pub fn nightly_has_component(rustup: &Path, component: &str) -> Result<bool> {
    let installed = cmd::output(Command::new(rustup).args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    Ok(installed.lines().any(|line| {
        let name = line.trim();
        name == component
            || name
                .strip_prefix(component)
                .is_some_and(|r| r.starts_with('-'))
    }))
}

fn ensure_component(rustup: &Path, component: &str) -> Result<(String, ())> {
    if nightly_has_component(rustup, component)? {
        return Ok(("ok".into(), ()));
    }
    cmd::run(Command::new(rustup).args(["component", "add", component, "--toolchain", "nightly"]))
        .with_context(|| {
            format!("could not add {component}; run: rustup component add {component} --toolchain nightly")
        })?;
    Ok(("installed".into(), ()))
}

/// `rustup` on the nightly toolchain, for commands that need a component
/// (lint). Finds rustup like setup does.
pub fn ensure_nightly_component(component: &str) -> Result<()> {
    let rustup = find_tool("rustup").context("rustup not found; run `cargo xtask setup`")?;
    ensure_component(&rustup, component).map(drop)
}

// --------------------------------------------------------------- bpf-linker

/// The LLVM major version in a libLLVM file name: `libLLVM.so.22.1-rust-…`
/// or `libLLVM-22-rust-….so`.
fn libllvm_major(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix("libLLVM.so.")
        .or_else(|| name.strip_prefix("libLLVM-"))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Checks one bpf-linker binary: it must run, and whatever LLVM it reports
/// or dynamically links must have the nightly's major version. Returns a
/// description on success and the reason on failure.
fn check_bpf_linker(path: &Path, llvm_major: u32) -> Result<String, String> {
    let out = cmd::capture(Command::new(path).arg("--version")).map_err(|e| format!("{e:#}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{} --version` failed ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let version = first_line(&stdout).to_owned();

    // Newer bpf-linkers may print their LLVM version.
    if let Some(reported) = stdout
        .split("LLVM")
        .nth(1)
        .and_then(|rest| rest.trim_start_matches([' ', ':', 'v']).split('.').next())
        .and_then(|major| major.trim().parse::<u32>().ok())
        && reported != llvm_major
    {
        return Err(format!(
            "{} uses LLVM {reported}, but the nightly toolchain uses LLVM {llvm_major}",
            path.display()
        ));
    }

    let dynamic = elf::read_dynamic(path).unwrap_or_default();
    let linked = dynamic
        .needed
        .iter()
        .find_map(|lib| libllvm_major(lib).map(|major| (lib, major)));
    match linked {
        Some((lib, major)) if major != llvm_major => Err(format!(
            "{} is linked against {lib} (LLVM {major}), but the nightly toolchain uses LLVM {llvm_major}",
            path.display()
        )),
        Some((lib, _)) => {
            let from = dynamic
                .runpath
                .first()
                .map(|dir| format!(" from {dir}"))
                .unwrap_or_default();
            Ok(format!("{}: {version}, {lib}{from}", path.display()))
        }
        None => Ok(format!("{}: {version}", path.display())),
    }
}

/// The nightly's `lib/libLLVM.so.*` shared library (not the linker script
/// next to it).
fn find_libllvm(sysroot: &Path) -> Result<PathBuf> {
    let lib = sysroot.join("lib");
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for entry in fs::read_dir(&lib).with_context(|| format!("cannot list {}", lib.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", lib.display()))?;
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("libLLVM.so.")
        {
            continue;
        }
        let path = entry.path();
        if let Ok(meta) = path.metadata()
            && meta.is_file()
        {
            found.push((meta.len(), path));
        }
    }
    // The real library is by far the largest match.
    found.sort();
    found.pop().map(|(_, path)| path).with_context(|| {
        format!(
            "no libLLVM.so.* in {}; reinstall the nightly toolchain: \
             rustup toolchain install nightly --profile minimal --force",
            lib.display()
        )
    })
}

/// Makes `link` a symlink to `target`, replacing whatever stale file or
/// symlink is there. Returns whether anything changed.
fn ensure_symlink(link: &Path, target: &Path) -> Result<bool> {
    match fs::symlink_metadata(link) {
        Ok(meta) if meta.file_type().is_symlink() => {
            if fs::read_link(link).ok().as_deref() == Some(target) {
                return Ok(false);
            }
            fs::remove_file(link).with_context(|| format!("cannot remove {}", link.display()))?;
        }
        Ok(meta) if meta.is_dir() => bail!("{} is a directory; remove it", link.display()),
        Ok(_) => {
            fs::remove_file(link).with_context(|| format!("cannot remove {}", link.display()))?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", link.display())),
    }
    std::os::unix::fs::symlink(target, link).with_context(|| {
        format!(
            "cannot create symlink {} -> {}",
            link.display(),
            target.display()
        )
    })?;
    Ok(true)
}

/// Creates `<prefix>/lib/{libLLVM.so, <file name>}` -> the nightly's libLLVM,
/// and removes other dangling `libLLVM*` symlinks there.
fn prepare_llvm_prefix(prefix: &Path, libllvm: &Path) -> Result<()> {
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    let file_name = libllvm
        .file_name()
        .with_context(|| format!("{} has no file name", libllvm.display()))?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), file_name] {
        let link = lib.join(name);
        if ensure_symlink(&link, libllvm)? {
            println!(
                "setup: bpf-linker: {} -> {}",
                link.display(),
                libllvm.display()
            );
        }
    }
    for entry in fs::read_dir(&lib).with_context(|| format!("cannot list {}", lib.display()))? {
        let path = entry
            .with_context(|| format!("cannot list {}", lib.display()))?
            .path();
        let is_llvm = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM"));
        let is_symlink = fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
        if is_llvm && is_symlink && !path.exists() {
            fs::remove_file(&path)
                .with_context(|| format!("cannot remove stale symlink {}", path.display()))?;
        }
    }
    Ok(())
}

/// Whether cargo's install tracking knows a bpf-linker (then `cargo install`
/// needs `--force` to replace it).
fn cargo_tracks_bpf_linker(bin_dir: &Path) -> bool {
    let Some(cargo_home) = bin_dir.parent() else {
        return false;
    };
    [".crates.toml", ".crates2.json"].iter().any(|file| {
        fs::read_to_string(cargo_home.join(file)).is_ok_and(|s| s.contains("bpf-linker "))
    })
}

/// Returns the status and, if the working bpf-linker is not the one `PATH`
/// finds, the directory to put in front of `PATH`.
fn ensure_bpf_linker(nightly: &Nightly, options: Options) -> Result<(String, Option<PathBuf>)> {
    let major = nightly.llvm_major;
    let bin_dir = cargo_bin_dir()?;
    let installed = bin_dir.join("bpf-linker");
    let in_path = cmd::which("bpf-linker");

    let mut problems = Vec::new();
    if !options.reinstall_bpf_linker {
        match in_path.as_deref().map(|p| check_bpf_linker(p, major)) {
            Some(Ok(desc)) => return Ok((format!("ok ({desc})"), None)),
            Some(Err(problem)) => problems.push(problem),
            None => problems.push("bpf-linker is not in PATH".into()),
        }
        if in_path.as_deref() != Some(installed.as_path()) && cmd::is_executable(&installed) {
            match check_bpf_linker(&installed, major) {
                Ok(desc) => {
                    return Ok((
                        format!(
                            "ok ({desc}; added {} to PATH for child processes)",
                            bin_dir.display()
                        ),
                        Some(bin_dir),
                    ));
                }
                Err(problem) => problems.push(problem),
            }
        }
        println!("setup: bpf-linker: rebuilding: {}", problems.join("; "));
    }

    let prefix = llvm_prefix()?;
    let libllvm = find_libllvm(&nightly.sysroot)?;
    prepare_llvm_prefix(&prefix, &libllvm)?;

    let mut install = Command::new("cargo");
    install
        .current_dir(&prefix)
        .env("LLVM_PREFIX", &prefix)
        .args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"));
    if cmd::is_executable(&installed) || cargo_tracks_bpf_linker(&bin_dir) {
        install.arg("--force");
    }
    let line = cmd::display(&install);
    cmd::run(&mut install).with_context(|| format!("building bpf-linker failed; run: {line}"))?;

    let desc = check_bpf_linker(&installed, major)
        .map_err(|problem| anyhow!("the freshly installed bpf-linker does not work: {problem}"))?;
    let extra = match in_path.as_deref() {
        Some(p) if p != installed => match check_bpf_linker(p, major) {
            Ok(_) => None,
            Err(_) => {
                println!(
                    "setup: bpf-linker: warning: PATH finds a broken {} first; \
                         {} goes in front of PATH for child processes",
                    p.display(),
                    bin_dir.display()
                );
                Some(bin_dir)
            }
        },
        Some(_) => None,
        None => Some(bin_dir),
    };
    Ok((format!("installed ({desc})"), extra))
}

// ------------------------------------------------------------------- system

fn check_root() -> Result<(String, ())> {
    let euid = sys::geteuid();
    if euid != 0 {
        bail!(
            "running as uid {euid}, but loading XDP programs, creating network namespaces and \
             mounting bpffs need root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN), for the tests as \
             well as the daemon; re-run as root, e.g.: sudo -E env \"PATH=$PATH\" cargo xtask setup"
        );
    }
    Ok(("ok (euid 0)".into(), ()))
}

fn bpffs_mounted() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next(), fields.next(), fields.next());
        target == Some(BPFFS) && fstype == Some("bpf")
    }))
}

/// bpffs closed to others: a world-writable one (what a plain `mount -t
/// bpf` gives, mode 1777) lets any user create or remove pins.
fn ensure_bpffs(root: bool) -> Result<(String, ())> {
    use std::os::unix::fs::PermissionsExt as _;
    if bpffs_mounted()? {
        let mode = fs::metadata(BPFFS)
            .with_context(|| format!("stat {BPFFS}"))?
            .permissions()
            .mode()
            & 0o7777;
        if mode & 0o022 == 0 {
            return Ok((format!("ok (mounted at {BPFFS}, mode {mode:o})"), ()));
        }
        if !root {
            bail!(
                "{BPFFS} is writable by others (mode {mode:o}); as root, run: chmod 0700 {BPFFS}"
            );
        }
        fs::set_permissions(BPFFS, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 0700 {BPFFS}"))?;
        return Ok((format!("ok (mounted at {BPFFS}; mode {mode:o} -> 700)"), ()));
    }
    let fix = format!("mount -t bpf -o mode=0700 bpf {BPFFS}");
    if !root {
        bail!("bpffs is not mounted at {BPFFS}; as root, run: {fix}");
    }
    cmd::run(Command::new("mount").args(["-t", "bpf", "-o", "mode=0700", "bpf", BPFFS]))
        .with_context(|| format!("mounting bpffs failed; run: {fix}"))?;
    if !bpffs_mounted()? {
        bail!("`{fix}` succeeded but /proc/mounts shows no bpf filesystem at {BPFFS}");
    }
    Ok((format!("mounted ({fix})"), ()))
}

fn find_ip() -> Option<PathBuf> {
    cmd::which("ip").or_else(|| {
        ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| cmd::is_executable(p))
    })
}

fn ensure_ip(root: bool) -> Result<(String, ())> {
    let fix = "apt-get update && apt-get install -y iproute2";
    let mut status = "ok";
    let ip = match find_ip() {
        Some(ip) => ip,
        None => {
            if !root || cmd::which("apt-get").is_none() {
                bail!("`ip` (iproute2) is missing; install it, e.g. as root: {fix}");
            }
            cmd::run(Command::new("apt-get").arg("update"))
                .with_context(|| format!("installing iproute2 failed; run: {fix}"))?;
            cmd::run(
                Command::new("apt-get")
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .args(["install", "-y", "iproute2"]),
            )
            .with_context(|| format!("installing iproute2 failed; run: {fix}"))?;
            status = "installed";
            find_ip().with_context(|| {
                format!("`ip` still missing after installing iproute2; run: {fix}")
            })?
        }
    };
    let version = cmd::output(Command::new(&ip).arg("-V")).with_context(|| {
        format!(
            "`{} -V` does not work; reinstall iproute2: {fix}",
            ip.display()
        )
    })?;
    let mut note = String::new();
    if cmd::which("ip").is_none() {
        note = format!(
            "; warning: not in PATH, add {} to PATH",
            ip.parent().unwrap_or(&ip).display()
        );
    }
    Ok((
        format!(
            "{status} (ip: {}, {}{note})",
            ip.display(),
            first_line(&version)
        ),
        (),
    ))
}

/// `/usr/lib/postgresql/<highest version>/bin` when it has `initdb`
/// (Debian's layout), with the version: what the PostgreSQL lab
/// (`failover-lab/src/pg.rs`) runs.
fn find_postgresql() -> Option<(u32, PathBuf)> {
    fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            cmd::is_executable(&bin.join("initdb")).then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
}

/// PostgreSQL's server binaries for the PostgreSQL lab tests, installed
/// with apt-get when missing (as root), and the `postgres` user the
/// package creates.
fn ensure_postgresql(root: bool) -> Result<(String, ())> {
    let fix = "apt-get update && apt-get install -y postgresql";
    let mut status = "ok";
    let bin = match find_postgresql() {
        Some((_, bin)) => bin,
        None => {
            if !root || cmd::which("apt-get").is_none() {
                bail!(
                    "PostgreSQL's server binaries (/usr/lib/postgresql/<version>/bin/initdb) are \
                     missing; install them, e.g. as root: {fix}"
                );
            }
            cmd::run(Command::new("apt-get").arg("update"))
                .with_context(|| format!("installing postgresql failed; run: {fix}"))?;
            cmd::run(
                Command::new("apt-get")
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .args(["install", "-y", "postgresql"]),
            )
            .with_context(|| format!("installing postgresql failed; run: {fix}"))?;
            status = "installed";
            find_postgresql()
                .with_context(|| {
                    format!(
                        "no /usr/lib/postgresql/<version>/bin/initdb after installing; run: {fix}"
                    )
                })?
                .1
        }
    };
    let version =
        cmd::output(Command::new(bin.join("postgres")).arg("--version")).with_context(|| {
            format!(
                "`{}/postgres --version` does not work; run: {fix}",
                bin.display()
            )
        })?;
    cmd::output(Command::new("id").args(["-u", "postgres"]))
        .with_context(|| format!("no `postgres` user; reinstall PostgreSQL: {fix}"))?;
    Ok((
        format!("{status} ({}, {})", bin.display(), first_line(&version)),
        (),
    ))
}

/// The cluster's tools (issue 16) as (binary, Debian package): BIRD, etcd
/// and keepalived for the cluster lab and the bench's VRRP baseline, nft
/// for its silent-drop cases, and protoc, which the etcd-client crate
/// needs to build (keep it last: the toolchain scope checks only it).
const CLUSTER_TOOLS: [(&str, &str); 7] = [
    ("/usr/sbin/bird", "bird2"),
    ("/usr/sbin/birdc", "bird2"),
    ("/usr/bin/etcd", "etcd-server"),
    ("/usr/bin/etcdctl", "etcd-client"),
    ("/usr/sbin/keepalived", "keepalived"),
    ("/usr/sbin/nft", "nftables"),
    ("/usr/bin/protoc", "protobuf-compiler"),
];

/// The services the cluster packages bring: the labs start their own
/// daemons with their own configs, never these.
const CLUSTER_UNITS: [&str; 3] = ["bird", "etcd", "keepalived"];

/// Installs the packages of `tools` whose binary is missing (one apt-get
/// run, as root), then, where systemd runs, disables and stops the
/// services the packages may have started. Only file checks (and one
/// `systemctl is-enabled` where systemd runs) when everything is there.
fn ensure_packages(root: bool, tools: &[(&str, &str)]) -> Result<(String, ())> {
    let mut missing: Vec<&str> = Vec::new();
    for (bin, pkg) in tools {
        if !cmd::is_executable(Path::new(bin)) && !missing.contains(pkg) {
            missing.push(pkg);
        }
    }
    let mut all: Vec<&str> = tools.iter().map(|(_, pkg)| *pkg).collect();
    all.dedup();
    let fix = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    let mut status = String::from("ok");
    if !missing.is_empty() {
        if !root || cmd::which("apt-get").is_none() {
            bail!(
                "missing {} ({}); install them, e.g. as root: {fix}",
                missing.join(", "),
                tools
                    .iter()
                    .filter(|(bin, _)| !cmd::is_executable(Path::new(bin)))
                    .map(|(bin, _)| *bin)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        cmd::run(Command::new("apt-get").arg("update"))
            .with_context(|| format!("installing {} failed; run: {fix}", missing.join(" ")))?;
        cmd::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing),
        )
        .with_context(|| format!("installing {} failed; run: {fix}", missing.join(" ")))?;
        if let Some((bin, pkg)) = tools
            .iter()
            .find(|(bin, _)| !cmd::is_executable(Path::new(bin)))
        {
            bail!("{bin} still missing after installing {pkg}; run: {fix}");
        }
        status = format!("installed {}", missing.join(", "));
    }
    let units = disable_units(root, tools);
    Ok((format!("{status} ({}{units})", all.join(", ")), ()))
}

/// `systemctl disable --now` for the cluster services that are enabled or
/// running, where systemd runs (in a container, or where policy-rc.d kept
/// them from starting, there is nothing to do). Problems are only reported.
fn disable_units(root: bool, tools: &[(&str, &str)]) -> String {
    let units: Vec<&str> = CLUSTER_UNITS
        .iter()
        .copied()
        .filter(|u| tools.iter().any(|(bin, _)| bin.ends_with(&format!("/{u}"))))
        .collect();
    if units.is_empty()
        || !Path::new("/run/systemd/system").is_dir()
        || cmd::which("systemctl").is_none()
    {
        return String::new();
    }
    let query = |what: &str| {
        cmd::capture(Command::new("systemctl").arg(what).args(&units))
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let (enabled, active) = (query("is-enabled"), query("is-active"));
    let on = enabled.lines().any(|l| l.trim() == "enabled")
        || active
            .lines()
            .any(|l| matches!(l.trim(), "active" | "activating" | "reloading"));
    if !on {
        return format!("; {} disabled and stopped", units.join(", "));
    }
    let fix = format!("systemctl disable --now {}", units.join(" "));
    if !root {
        return format!(
            "; warning: {} enabled or running; as root, run: {fix}",
            units.join(", ")
        );
    }
    let mut c = Command::new("systemctl");
    c.args(["disable", "--now"]).args(&units);
    match cmd::status(&mut c) {
        Ok(s) if s.success() => format!("; ran {fix}"),
        Ok(s) => format!("; warning: `{fix}` failed ({s})"),
        Err(e) => format!("; warning: `{fix}` failed ({e:#})"),
    }
}

/// What a `bpf(BPF_PROG_LOAD)` errno most likely means.
fn explain_bpf_errno(error: &io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::EPERM) => {
            "not permitted: run as root (CAP_BPF + CAP_SYS_ADMIN); inside a container, bpf() may be \
             blocked by seccomp or missing capabilities (e.g. docker run --privileged); also check \
             kernel lockdown"
        }
        Some(libc::ENOSYS) => "the kernel has no bpf() syscall (built without CONFIG_BPF_SYSCALL)",
        Some(libc::EINVAL) => {
            "the kernel rejected the request: XDP programs unsupported (CONFIG_BPF_SYSCALL/CONFIG_NET) \
             or a kernel too old for this bpf_attr layout"
        }
        Some(libc::EACCES) => "the verifier rejected the program (see the verifier log)",
        Some(libc::ENOMEM) => {
            "out of memory or locked-memory limit: on kernels before 5.11 raise it with `ulimit -l unlimited`"
        }
        Some(libc::E2BIG) => "the kernel considers the bpf_attr too big (non-zero unknown fields)",
        _ => "unexpected error",
    }
}

fn probe_xdp() -> Result<(String, ())> {
    const BPF_PROG_TYPE_XDP: u32 = 6;
    const XDP_PASS: i32 = 2;
    let program = [
        // r0 = XDP_PASS  (BPF_ALU64 | BPF_MOV | BPF_K)
        sys::BpfInsn {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm: XDP_PASS,
        },
        // exit  (BPF_JMP | BPF_EXIT)
        sys::BpfInsn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    let license = CString::new("GPL").context("license string")?;
    let mut log = vec![0u8; 64 * 1024];
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown kernel".into());
    match sys::bpf_prog_load(BPF_PROG_TYPE_XDP, &program, &license, &mut log) {
        // Dropping the fd unloads the program.
        Ok(fd) => {
            drop(fd);
            Ok((
                format!("ok (kernel {kernel} loaded a test XDP program)"),
                (),
            ))
        }
        Err(error) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let verifier = String::from_utf8_lossy(&log[..end]);
            let verifier = verifier.trim();
            let verifier = if verifier.is_empty() {
                String::new()
            } else {
                format!("\n    verifier log: {verifier}")
            };
            bail!(
                "kernel {kernel} cannot load an XDP program: bpf(BPF_PROG_LOAD) failed: {error}; \
                 likely cause: {}{verifier}",
                explain_bpf_errno(&error)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_file_names() {
        assert_eq!(
            libllvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"),
            Some(22)
        );
        assert_eq!(libllvm_major("libLLVM-21-rust-1.90.0-nightly.so"), Some(21));
        assert_eq!(libllvm_major("libLLVM.so"), None);
        assert_eq!(libllvm_major("libc.so.6"), None);
    }

    #[test]
    fn missing_packages_name_the_fix_without_root() {
        let err = ensure_packages(
            false,
            &[
                ("/nonexistent/failover-a", "pkg-a"),
                ("/nonexistent/failover-b", "pkg-a"),
                ("/bin/sh", "pkg-sh"),
            ],
        )
        .expect_err("a missing binary without root");
        let msg = format!("{err:#}");
        assert!(msg.contains("apt-get install -y pkg-a"), "{msg}");
        assert!(!msg.contains("pkg-sh"), "{msg}");
        let (status, ()) = ensure_packages(false, &[("/bin/sh", "pkg-sh")]).expect("present");
        assert!(status.starts_with("ok (pkg-sh"), "{status}");
    }

    #[test]
    fn reads_own_dynamic_section() {
        let exe = std::env::current_exe().expect("current_exe");
        let dynamic = elf::read_dynamic(&exe).expect("xtask tests are a dynamic ELF");
        assert!(dynamic.needed.iter().any(|lib| lib.starts_with("libc.so")));
    }
}
