//! Exec check: a command run by the exec runner, healthy on exit 0.

use super::*;

/// Runs the command; healthy on exit status 0. `start` is the probe's start,
/// from which `timeout` counts.
pub(super) async fn exec_check(
    command: &[String],
    target: &Target,
    start: Instant,
    timeout: Duration,
) -> Check {
    let Some((program, args)) = command.split_first() else {
        return Err("exec: empty command".to_string());
    };
    let (address, port) = (target.addr.ip().to_string(), target.addr.port().to_string());
    let args = runner::fill_placeholders(
        args,
        &[
            ("address", &address),
            ("port", &port),
            ("backend", &target.backend),
            ("service", &target.service),
        ],
    );
    let mut cmd = Command::new(program);
    cmd.args(&args)
        .env("FAILOVER_SERVICE", &target.service)
        .env("FAILOVER_BACKEND", &target.backend)
        .env("FAILOVER_ADDRESS", target.addr.ip().to_string())
        .env("FAILOVER_PORT", target.addr.port().to_string())
        .env("FAILOVER_TARGET", host_port(target.addr));
    // The shared runner: its own process group, killed whole at the
    // deadline (a timed-out `sh -c` leaves no children behind).
    let o = runner::run(cmd, None, timeout.saturating_sub(start.elapsed()))
        .await
        .map_err(|e| format!("exec {:?}: {e}", clip(program)))?;
    match o.ended {
        Ended::Exited(status) => exit_verdict(status, &o.stdout, &o.stderr),
        Ended::WaitFailed(e) => Err(format!("exec: waiting for {:?} failed: {e}", clip(program))),
        Ended::TimedOut => Err(format!("timeout after {timeout:?} (killed)")),
    }
}

/// "exit 0", or why not, with the first line of output.
pub(super) fn exit_verdict(status: ExitStatus, out: &[u8], err: &[u8]) -> Check {
    let what = match (status.code(), status.signal()) {
        (Some(0), _) => return Ok("exit 0".to_string()),
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => format!("exited abnormally ({status})"),
    };
    match first_kept_line(err).or_else(|| first_kept_line(out)) {
        Some(line) => Err(format!("{what}: {line}")),
        None => Err(what),
    }
}

/// The first non-blank line of `kept`, trimmed and clipped.
pub(super) fn first_kept_line(kept: &[u8]) -> Option<String> {
    String::from_utf8_lossy(kept)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(clip)
}
