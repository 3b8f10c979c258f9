//! Developer tasks for the failover workspace: `cargo xtask <command>`.

mod cmd;
mod elf;
mod fuzz_host;
mod setup;
mod sys;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use setup::{Ready, Scope};

/// Environment variable that makes failover-user's build.rs compile the
/// eBPF program (instead of auto-detecting whether it can).
const BUILD_EBPF: (&str, &str) = ("FAILOVER_BUILD_EBPF", "1");

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Developer tasks for the failover workspace"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check and install what building and testing need (idempotent).
    Setup {
        /// Rebuild bpf-linker even if the installed one works.
        #[arg(long)]
        reinstall_bpf_linker: bool,
    },
    /// Setup, then build the workspace including the eBPF program.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Setup, then run all workspace tests (as root).
    Test {
        #[arg(long)]
        release: bool,
        /// Arguments for the test binaries (after `--`).
        #[arg(last = true)]
        extra: Vec<OsString>,
    },
    /// rustfmt and clippy on the workspace and on the eBPF crate.
    Lint,
    /// Setup, then measure the dataplane (release build): a markdown table on
    /// stdout and target/bench/report.json.
    Bench {
        /// A reduced run (well under two minutes).
        #[arg(long)]
        quick: bool,
        /// Only these sections, comma-separated (per-packet, scale, tables,
        /// failover, throughput, udp, flood, postgresql, keepalived).
        #[arg(long)]
        only: Option<String>,
    },
    /// Setup, then run the packet mutation fuzzer (release build) through
    /// BPF_PROG_TEST_RUN; summary in target/fuzz/packets.json. Fails on any
    /// broken invariant.
    Fuzz {
        /// Packets to run.
        #[arg(long, default_value_t = 10_000_000)]
        packets: u64,
        /// PRNG seed (default: from the clock; printed, to reproduce).
        #[arg(long)]
        seed: Option<u64>,
        /// More arguments for failover-fuzz (after `--`), e.g. `--batch 1`.
        #[arg(last = true)]
        extra: Vec<OsString>,
    },
    /// Setup, then chaos under load on the lab (release build): SIGKILL and
    /// restart of the daemon, reload storms, a flapping backend, a silent
    /// link, conntrack eviction, hanging and failing hooks, under a request
    /// every millisecond; checks the invariants, writes
    /// target/chaos/report.json.
    Chaos {
        /// Length of the run (at least 12: one chaos cycle).
        #[arg(long, default_value_t = 120)]
        seconds: u64,
    },
    /// Coverage-guided fuzzing of the host-side parsers (cargo-fuzz on the
    /// nightly toolchain, installed if missing): each target for N seconds.
    FuzzHost {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (repeatable; default: every target in fuzz/).
        #[arg(long = "target")]
        targets: Vec<String>,
    },
    /// Build (release by default), then run `failover ARGS`; with no
    /// arguments, the lab demo (`failover-lab demo`).
    BuildAndRun {
        /// Build and run the release binary (the default).
        #[arg(long, conflicts_with = "debug")]
        release: bool,
        /// Build and run the debug binary instead.
        #[arg(long)]
        debug: bool,
        /// Arguments for `failover` (after `--`); none: `failover-lab demo`.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<ExitCode> {
    match task {
        Task::Setup {
            reinstall_bpf_linker,
        } => {
            setup::run(
                Scope::Full,
                setup::Options {
                    reinstall_bpf_linker,
                },
            )?;
            println!("setup: all done");
            Ok(ExitCode::SUCCESS)
        }
        Task::Build { release } => {
            let ready = setup::run(Scope::Full, setup::Options::default())?;
            build(&ready, release)?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Test { release, extra } => test(release, &extra),
        Task::Lint => lint(),
        Task::Bench { quick, only } => bench(quick, only.as_deref()),
        Task::Fuzz {
            packets,
            seed,
            extra,
        } => fuzz(packets, seed, &extra),
        Task::FuzzHost { seconds, targets } => fuzz_host::run(seconds, &targets),
        Task::Chaos { seconds } => chaos(seconds),
        Task::BuildAndRun {
            release: _,
            debug,
            args,
        } => build_and_run(!debug, args),
    }
}

/// The workspace root (this crate lives in `<root>/xtask`).
fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_owned)
        .with_context(|| format!("{} has no parent directory", manifest_dir.display()))
}

/// Cargo's target directory, honouring `CARGO_TARGET_DIR` /
/// `CARGO_BUILD_TARGET_DIR` (relative ones are relative to the root, where
/// we run cargo). A `build.target-dir` set in a config file is not seen.
fn target_dir(root: &Path) -> PathBuf {
    ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR"]
        .iter()
        .find_map(|var| std::env::var_os(var).filter(|v| !v.is_empty()))
        .map_or_else(|| root.join("target"), |dir| root.join(dir))
}

/// `cargo <args>` run from the workspace root.
fn cargo(ready: &Ready, root: &Path) -> Result<std::process::Command> {
    let mut command = ready.command("cargo")?;
    command.current_dir(root);
    Ok(command)
}

fn build(ready: &Ready, release: bool) -> Result<()> {
    let root = workspace_root()?;
    let mut command = cargo(ready, &root)?;
    command
        .env(BUILD_EBPF.0, BUILD_EBPF.1)
        .args(["build", "--workspace"]);
    if release {
        command.arg("--release");
    }
    cmd::run(&mut command)
}

fn bench(quick: bool, only: Option<&str>) -> Result<ExitCode> {
    let ready = setup::run(Scope::Full, setup::Options::default())?;
    let root = workspace_root()?;
    let out = target_dir(&root).join("bench").join("report.json");
    // The daemon binary the bench runs in the lab.
    build_daemon(&ready, &root)?;
    let mut command = tests_bin(&ready, &root, "failover-bench")?;
    command
        .arg("--out")
        .arg(&out)
        .arg("--failover")
        .arg(target_dir(&root).join("release").join("failover"));
    if quick {
        command.arg("--quick");
    }
    if let Some(only) = only {
        command.arg("--only").arg(only);
    }
    let status = cmd::status(&mut command)?;
    Ok(ExitCode::from(cmd::exit_code(status)))
}

/// `cargo run --release` of one of the tests crate's binaries (the bench,
/// the fuzzer), with the eBPF program built; its arguments follow.
fn tests_bin(ready: &Ready, root: &Path, bin: &str) -> Result<std::process::Command> {
    let mut command = cargo(ready, root)?;
    command.env(BUILD_EBPF.0, BUILD_EBPF.1).args([
        "run",
        "--release",
        "--quiet",
        "-p",
        "failover-tests",
        "--bin",
        bin,
        "--",
    ]);
    Ok(command)
}

/// The release `failover` binary that the bench and chaos run in the lab.
fn build_daemon(ready: &Ready, root: &Path) -> Result<()> {
    let mut daemon = cargo(ready, root)?;
    daemon.env(BUILD_EBPF.0, BUILD_EBPF.1).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "failover-user",
        "--bin",
        "failover",
    ]);
    cmd::run(&mut daemon)
}

/// `cargo xtask chaos` (`tests/src/bin/failover-chaos.rs`).
fn chaos(seconds: u64) -> Result<ExitCode> {
    let ready = setup::run(Scope::Full, setup::Options::default())?;
    warn_leftover_netns();
    let root = workspace_root()?;
    build_daemon(&ready, &root)?;
    let mut command = tests_bin(&ready, &root, "failover-chaos")?;
    command
        .arg("--seconds")
        .arg(seconds.to_string())
        .arg("--out")
        .arg(target_dir(&root).join("chaos").join("report.json"))
        .arg("--failover")
        .arg(target_dir(&root).join("release").join("failover"));
    let status = cmd::status(&mut command)?;
    Ok(ExitCode::from(cmd::exit_code(status)))
}

/// `cargo xtask fuzz`: the packet fuzzer (`tests/src/bin/failover-fuzz.rs`).
fn fuzz(packets: u64, seed: Option<u64>, extra: &[OsString]) -> Result<ExitCode> {
    let ready = setup::run(Scope::Full, setup::Options::default())?;
    warn_leftover_netns();
    let root = workspace_root()?;
    let out = target_dir(&root).join("fuzz").join("packets.json");
    let mut command = tests_bin(&ready, &root, "failover-fuzz")?;
    command
        .arg("--packets")
        .arg(packets.to_string())
        .arg("--out")
        .arg(&out);
    if let Some(seed) = seed {
        command.arg("--seed").arg(seed.to_string());
    }
    command.args(extra);
    let status = cmd::status(&mut command)?;
    Ok(ExitCode::from(cmd::exit_code(status)))
}

/// Network namespaces left over by interrupted test runs (the tests name
/// theirs `fo-*` and remove them themselves).
fn warn_leftover_netns() {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    let mut leftovers: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("fo-"))
        .collect();
    if leftovers.is_empty() {
        return;
    }
    leftovers.sort();
    eprintln!(
        "warning: leftover network namespaces from earlier test runs: {}\n\
         warning: remove them with: for ns in {}; do ip netns delete \"$ns\"; done",
        leftovers.join(" "),
        leftovers.join(" ")
    );
}

fn test(release: bool, extra: &[OsString]) -> Result<ExitCode> {
    let ready = setup::run(Scope::Full, setup::Options::default())?;
    warn_leftover_netns();
    let root = workspace_root()?;
    // The namespace tests (in the `tests` crate) run the `failover` and
    // `failover-lab` binaries, which `cargo test` only builds for their own
    // packages' integration tests: build them first, in the same profile.
    let mut bins = cargo(&ready, &root)?;
    bins.env(BUILD_EBPF.0, BUILD_EBPF.1).args([
        "build",
        "-p",
        "failover-user",
        "-p",
        "failover-lab",
        "--bins",
    ]);
    if release {
        bins.arg("--release");
    }
    cmd::run(&mut bins)?;
    // `--workspace`: every member, also those outside `default-members`
    // (the root-only `tests` crate).
    let mut command = cargo(&ready, &root)?;
    command
        .env(BUILD_EBPF.0, BUILD_EBPF.1)
        .env("RUST_BACKTRACE", "1")
        .args(["test", "--workspace"]);
    if release {
        command.arg("--release");
    }
    if !extra.is_empty() {
        command.arg("--").args(extra);
    }
    let (status, totals) = run_counting_tests(&mut command)?;
    // One closing line over every test binary, so the totals are not hidden
    // behind the last binary's (often empty doc-test) summary.
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if !status.success() {
        eprintln!("error: `{}` failed ({status})", cmd::display(&command));
    }
    Ok(ExitCode::from(cmd::exit_code(status)))
}

#[derive(Default, Debug, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// Adds a libtest summary line (`test result: ok. 5 passed; 0 failed; 1
    /// ignored; ...`); other lines are ignored.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs `command` with its stdout echoed line by line and libtest's
/// summaries added up.
fn run_counting_tests(
    command: &mut std::process::Command,
) -> Result<(std::process::ExitStatus, Totals)> {
    use std::io::BufRead as _;
    eprintln!("$ {}", cmd::display(command));
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start `{}`", cmd::display(command)))?;
    let mut totals = Totals::default();
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).lines() {
            let line = line.context("reading the test output")?;
            println!("{line}");
            totals.add_line(&line);
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    Ok((status, totals))
}

fn build_and_run(release: bool, args: Vec<OsString>) -> Result<ExitCode> {
    let ready = setup::run(Scope::Full, setup::Options::default())?;
    build(&ready, release)?;
    let root = workspace_root()?;
    // No arguments: the lab demo, `failover-lab demo`, which runs the
    // `failover` built next to it.
    let (name, args) = if args.is_empty() {
        ("failover-lab", vec![OsString::from("demo")])
    } else {
        ("failover", args)
    };
    let binary = target_dir(&root)
        .join(if release { "release" } else { "debug" })
        .join(name);
    if !binary.is_file() {
        bail!(
            "{} does not exist after a successful build",
            binary.display()
        );
    }
    // Ctrl-C reaches the child directly (same process group); we keep
    // waiting for it and then forward its exit status.
    sys::survive_sigint().context("cannot install a SIGINT handler")?;
    let mut command = ready.command(&binary.to_string_lossy())?;
    command.args(args);
    let status = cmd::status(&mut command)?;
    Ok(ExitCode::from(cmd::exit_code(status)))
}

fn lint() -> Result<ExitCode> {
    let ready = setup::run(Scope::Toolchain, setup::Options::default())?;
    let root = workspace_root()?;
    let mut failures = Vec::new();
    let mut check = |name: &str, result: Result<()>| {
        if let Err(error) = result {
            eprintln!("lint: {name}: FAILED: {error:#}");
            failures.push(name.to_owned());
        } else {
            println!("lint: {name}: ok");
        }
    };

    let mut fmt = cargo(&ready, &root)?;
    fmt.args(["fmt", "--all", "--", "--check"]);
    check("rustfmt (workspace)", cmd::run(&mut fmt));

    let mut clippy = cargo(&ready, &root)?;
    clippy.env(BUILD_EBPF.0, BUILD_EBPF.1).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    check("clippy (workspace)", cmd::run(&mut clippy));

    let ebpf_manifest = root.join("failover-ebpf").join("Cargo.toml");
    if !ebpf_manifest.is_file() {
        check(
            "failover-ebpf",
            Err(anyhow::anyhow!("{} not found", ebpf_manifest.display())),
        );
    } else {
        check(
            "clippy (failover-ebpf)",
            lint_ebpf_clippy(&ready, &root, &ebpf_manifest),
        );
        check(
            "rustfmt (failover-ebpf)",
            lint_ebpf_fmt(&ready, &root, &ebpf_manifest),
        );
    }

    if failures.is_empty() {
        println!("lint: all ok");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: lint failed: {}", failures.join(", "));
        Ok(ExitCode::FAILURE)
    }
}

fn lint_ebpf_clippy(ready: &Ready, root: &Path, manifest: &Path) -> Result<()> {
    setup::ensure_nightly_component("clippy")?;
    let mut clippy = cargo(ready, root)?;
    clippy
        .arg("+nightly")
        .arg("clippy")
        .arg("--manifest-path")
        .arg(manifest)
        // Keep the eBPF crate's artefacts under the workspace target dir.
        .arg("--target-dir")
        .arg(target_dir(root).join("failover-ebpf"))
        .args([
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]);
    cmd::run(&mut clippy)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("cannot list {}", dir.display()))?
            .path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

fn lint_ebpf_fmt(ready: &Ready, root: &Path, manifest: &Path) -> Result<()> {
    let mut probe = ready.command("cargo")?;
    probe.args(["+nightly", "fmt", "--version"]);
    let nightly_rustfmt = cmd::capture(&mut probe).is_ok_and(|out| out.status.success());
    if nightly_rustfmt {
        let mut fmt = cargo(ready, root)?;
        fmt.args(["+nightly", "fmt", "--manifest-path"])
            .arg(manifest)
            .args(["--", "--check"]);
        return cmd::run(&mut fmt);
    }
    eprintln!("lint: nightly rustfmt is not installed; checking failover-ebpf with stable rustfmt");
    let mut files = Vec::new();
    rust_files(&root.join("failover-ebpf").join("src"), &mut files)?;
    files.sort();
    if files.is_empty() {
        return Ok(());
    }
    let mut fmt = ready.command("rustfmt")?;
    fmt.current_dir(root)
        .args(["--edition", "2024", "--check"])
        .args(files);
    cmd::run(&mut fmt)
}

#[cfg(test)]
mod totals_tests {
    use super::Totals;

    #[test]
    fn adds_up_libtest_summaries() {
        let mut t = Totals::default();
        t.add_line("test result: ok. 19 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.28s");
        t.add_line("test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.5s");
        t.add_line("running 3 tests");
        assert_eq!(
            t,
            Totals {
                passed: 21,
                failed: 1,
                ignored: 1
            }
        );
    }
}
