//! Running external commands: every command is echoed (`$ ...`) before it
//! runs, and failures carry the full command line as context.

use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

use anyhow::{Context, Result, bail};

/// A shell-like rendering of `cmd` (working directory, explicitly set
/// environment variables, program and arguments), for logs and errors.
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    if let Some(dir) = cmd.get_current_dir() {
        parts.push(format!("cd {} &&", quote(dir.as_os_str())));
    }
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => parts.push(format!("{}={}", key.to_string_lossy(), quote(value))),
            None => parts.push(format!("env -u {}", key.to_string_lossy())),
        }
    }
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Echoes and runs `cmd` with inherited stdio; returns its exit status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    let line = display(cmd);
    eprintln!("$ {line}");
    cmd.status()
        .with_context(|| format!("failed to start `{line}`"))
}

/// Echoes and runs `cmd` with inherited stdio; fails unless it succeeds.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Runs `cmd` quietly, capturing stdout and stderr, whatever its exit status.
pub fn capture(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to start `{}`", display(cmd)))
}

/// Runs `cmd` quietly and returns its stdout; fails (quoting stderr) unless
/// it succeeds.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = capture(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", display(cmd)))
}

/// The exit code to forward for a child's status: its own code, or
/// 128 + signal number if it was killed by a signal (as shells do).
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

/// Looks `name` up in `$PATH`, like `command -v`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a regular file (after following symlinks) with an
/// execute bit set.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_shell_like() {
        let mut command = Command::new("cargo");
        command
            .current_dir("/a b")
            .env("X", "1")
            .args(["test", "--", "it's"]);
        assert_eq!(
            display(&command),
            r"cd '/a b' && X=1 cargo test -- 'it'\''s'"
        );
    }
}
