//! `cargo xtask fuzz-host`: coverage-guided fuzzing of the host-side
//! parsers with cargo-fuzz (libFuzzer) on the nightly toolchain. The
//! targets live in `fuzz/` (its own workspace); each runs for `--seconds`
//! with bounded memory and input size, from a working corpus under
//! `target/fuzz-host/corpus/<target>` plus the committed seeds in
//! `fuzz/seeds/<target>`. Crashes (panics, sanitizer reports, timeouts,
//! out-of-memory) fail the command and leave the input under
//! `target/fuzz-host/artifacts/<target>/`.

use std::fs;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result, bail};

use crate::{cmd, setup};

/// libFuzzer limits: memory per process and input length.
const RSS_LIMIT_MB: u32 = 2048;
const MAX_LEN: u32 = 65536;
/// Seconds one input may take before it counts as a hang.
const TIMEOUT_S: u32 = 10;

/// What libFuzzer reported for one run.
#[derive(Debug, Default, PartialEq, Eq)]
struct Stats {
    execs: u64,
    cov: u64,
    features: u64,
    corpus: u64,
    peak_rss_mb: u64,
}

/// Reads libFuzzer's output: the final stats (`-print_final_stats=1`) and
/// the last status line's `cov:`, `ft:` and `corp:`.
fn parse_stats(log: &str) -> Stats {
    let mut s = Stats::default();
    let num = |word: Option<&str>| -> u64 {
        word.and_then(|w| w.split('/').next())
            .and_then(|w| w.parse().ok())
            .unwrap_or(0)
    };
    for line in log.lines() {
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            s.execs = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("stat::peak_rss_mb:") {
            s.peak_rss_mb = v.trim().parse().unwrap_or(0);
        } else if line.starts_with('#') && line.contains(" cov: ") {
            let mut words = line.split_whitespace();
            while let Some(w) = words.next() {
                match w {
                    "cov:" => s.cov = num(words.next()),
                    "ft:" => s.features = num(words.next()),
                    "corp:" => s.corpus = num(words.next()),
                    _ => {}
                }
            }
        }
    }
    s
}

fn nightly_cargo(ready: &setup::Ready, root: &Path) -> Result<Command> {
    let mut c = crate::cargo(ready, root)?;
    c.arg("+nightly");
    Ok(c)
}

/// Installs cargo-fuzz if `cargo +nightly fuzz` does not work (idempotent).
fn ensure_cargo_fuzz(ready: &setup::Ready, root: &Path) -> Result<()> {
    let mut probe = nightly_cargo(ready, root)?;
    probe.args(["fuzz", "--version"]);
    if let Ok(out) = cmd::capture(&mut probe)
        && out.status.success()
    {
        println!(
            "fuzz-host: cargo-fuzz: ok ({})",
            String::from_utf8_lossy(&out.stdout).trim()
        );
        return Ok(());
    }
    println!("fuzz-host: cargo-fuzz: not found, installing");
    let mut install = ready.command("cargo")?;
    install.args(["install", "cargo-fuzz", "--locked"]);
    cmd::run(&mut install).context("installing cargo-fuzz")
}

pub fn run(seconds: u64, only: &[String]) -> Result<ExitCode> {
    let ready = setup::run(setup::Scope::Toolchain, setup::Options::default())?;
    let root = crate::workspace_root()?;
    ensure_cargo_fuzz(&ready, &root)?;

    let mut list = nightly_cargo(&ready, &root)?;
    list.args(["fuzz", "list", "--fuzz-dir", "fuzz"]);
    let all: Vec<String> = cmd::output(&mut list)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let targets: Vec<String> = if only.is_empty() {
        all.clone()
    } else {
        for t in only {
            if !all.contains(t) {
                bail!("no fuzz target {t:?}; the targets are: {}", all.join(", "));
            }
        }
        only.to_vec()
    };

    // The targets need no eBPF objects: placeholders keep the (sanitizer)
    // build of failover-user short.
    let mut build = nightly_cargo(&ready, &root)?;
    build
        .env(crate::BUILD_EBPF.0, "0")
        .args(["fuzz", "build", "-O", "--fuzz-dir", "fuzz"]);
    cmd::run(&mut build)?;

    let out_dir = crate::target_dir(&root).join("fuzz-host");
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for t in &targets {
        let corpus = out_dir.join("corpus").join(t);
        let artifacts = out_dir.join("artifacts").join(t);
        fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        fs::create_dir_all(&artifacts)
            .with_context(|| format!("creating {}", artifacts.display()))?;
        let log_path = out_dir.join(format!("{t}.log"));
        let log = fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut run = nightly_cargo(&ready, &root)?;
        run.env(crate::BUILD_EBPF.0, "0")
            .args(["fuzz", "run", "-O", "--fuzz-dir", "fuzz", t])
            .arg(&corpus)
            .arg(root.join("fuzz").join("seeds").join(t))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
            .arg(format!("-max_len={MAX_LEN}"))
            .arg(format!("-timeout={TIMEOUT_S}"))
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        println!("fuzz-host: {t}: {seconds} s ...");
        let status = cmd::status(&mut run)?;
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        let s = parse_stats(&text);
        let ok = status.success();
        if !ok {
            failed.push(t.clone());
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!(
                "fuzz-host: {t}: FAILED ({status}); the crashing input is in {}; log {}:\n{}",
                artifacts.display(),
                log_path.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        rows.push((t.clone(), s, ok));
    }

    println!(
        "\n| target | seconds | execs | execs/s | coverage (edges) | features | corpus | peak RSS MB | result |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    let mut json = Vec::new();
    for (t, s, ok) in &rows {
        let rate = s.execs / seconds.max(1);
        println!(
            "| {t} | {seconds} | {} | {rate} | {} | {} | {} | {} | {} |",
            s.execs,
            s.cov,
            s.features,
            s.corpus,
            s.peak_rss_mb,
            if *ok { "ok" } else { "CRASH" }
        );
        json.push(format!(
            "{{\"target\":\"{t}\",\"seconds\":{seconds},\"execs\":{},\"coverage\":{},\"features\":{},\"corpus\":{},\"peak_rss_mb\":{},\"ok\":{ok}}}",
            s.execs, s.cov, s.features, s.corpus, s.peak_rss_mb
        ));
    }
    let report = out_dir.join("report.json");
    fs::write(&report, format!("[{}]\n", json.join(",\n")))
        .with_context(|| format!("writing {}", report.display()))?;
    println!("fuzz-host: report in {}", report.display());
    if failed.is_empty() {
        println!("fuzz-host: ok, no crash in {} targets", rows.len());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: fuzz-host: crashes in {}", failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_stats() {
        let log = "INFO: Seed: 1\n\
                   #2\tINITED cov: 100 ft: 120 corp: 3/1024b exec/s: 0 rss: 40Mb\n\
                   #4096\tNEW    cov: 180 ft: 300 corp: 20/4Kb lim: 4096 exec/s: 2048 rss: 60Mb\n\
                   #8192\tDONE   cov: 181 ft: 310 corp: 21/4Kb lim: 4096 exec/s: 4096 rss: 61Mb\n\
                   Done 8192 runs in 2 second(s)\n\
                   stat::number_of_executed_units: 8192\n\
                   stat::average_exec_per_sec:     4096\n\
                   stat::peak_rss_mb:              61\n";
        assert_eq!(
            parse_stats(log),
            Stats {
                execs: 8192,
                cov: 181,
                features: 310,
                corpus: 21,
                peak_rss_mb: 61
            }
        );
        assert_eq!(parse_stats("garbage"), Stats::default());
    }
}
