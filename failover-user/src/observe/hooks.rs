//! Event hooks: user commands and webhooks run when the agent records an
//! event for a service (a failover, a state change).
//!
//! Each run happens in its own tokio task ([`spawn`]) so that a slow or stuck
//! hook never delays a switch. A run is bounded by the hook's timeout, and an
//! exec hook that overruns is killed together with everything it started (it
//! runs in its own process group). Whatever the child or the network does, a
//! run ends in a [`HookOutcome`] with `ok = false` and a short detail rather
//! than a panic.
//!
//! * Exec hooks run `command[0]` with `command[1..]` as its arguments, never
//!   through a shell: nothing is interpolated. stdin carries the event JSON
//!   and a newline, then is closed; the environment gets the caller's pairs
//!   (FAILOVER_SERVICE, ...) plus FAILOVER_EVENT = the event JSON. Exit 0 is
//!   success.
//! * Webhooks POST the event JSON over HTTP/1.1 (the shared hyper client,
//!   `sys::http_client`) to an `http://IP[:PORT]/PATH`
//!   or `https://IP[:PORT]/PATH` url (IP literals only: no DNS). HTTPS
//!   verifies the server's certificate (rustls): against Mozilla's roots, or
//!   the CAs of `ca_file`; for the url's IP address, or `server_name`. A 2xx
//!   status is success.

use std::{
    net::SocketAddr,
    os::unix::process::ExitStatusExt as _,
    process::ExitStatus,
    sync::Arc,
    time::{Duration, Instant},
};

use rustls_pki_types::ServerName;
use tokio::{net::TcpStream, process::Command, time::timeout};
use tracing::{info, warn};

pub use crate::sys::exec::OUTPUT_CAP;
use crate::{
    config::{Hook, HookSpec},
    sys::{
        exec::{self, Ended},
        http_client::{
            self, Caps, Failure, TlsOptions, client_config, is_https, parse_webhook_url,
            server_name,
        },
    },
};

/// The most of a webhook response head read (the body is not read).
const RESPONSE_CAP: usize = 16 * 1024;
/// The most characters of child output or server text put in a detail.
const DETAIL_TEXT_MAX: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOutcome {
    pub hook: String,
    pub ok: bool,
    pub elapsed: Duration,
    /// Short and on one line: "exit 0", "exit 2: <first stderr line>",
    /// "timeout after 500ms", "http 500", "connection refused", ...
    pub detail: String,
}

/// One hook's queue: at most one run at a time; events that come while it
/// runs are coalesced, and the next run gets the latest of them (the state
/// now, not a backlog): an event storm runs a hook a bounded number of
/// times. Every outcome goes to `report` with the number of events the run
/// stood for.
pub struct HookQueue {
    tx: tokio::sync::watch::Sender<Option<Job>>,
}

#[derive(Clone)]
struct Job {
    json: String,
    env: Vec<(String, String)>,
    /// Events submitted so far (a run stands for those since the last).
    seq: u64,
}

impl HookQueue {
    /// Starts the hook's runner on the current tokio runtime; it ends when
    /// `stop` turns true (a run in progress is bounded by its timeout).
    pub fn start(
        hook: Hook,
        report: impl Fn(HookOutcome, u64) + Send + Sync + 'static,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        let (tx, mut rx) = tokio::sync::watch::channel::<Option<Job>>(None);
        tokio::spawn(async move {
            let mut done = 0u64;
            loop {
                tokio::select! {
                    c = rx.changed() => if c.is_err() { return },
                    _ = stop.changed() => return,
                }
                let Some(job) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let outcome = run(&hook, &job.json, &job.env).await;
                report(outcome, job.seq - done);
                done = job.seq;
            }
        });
        Self { tx }
    }

    /// Queues one event (never blocks, never waits for the run).
    pub fn submit(&self, json: String, env: Vec<(String, String)>) {
        self.tx.send_modify(|j| {
            let seq = j.as_ref().map_or(0, |j| j.seq) + 1;
            *j = Some(Job { json, env, seq });
        });
    }
}

/// Runs `hook` for one event in the background on the current tokio runtime
/// and returns immediately (never blocks the caller). The whole run is
/// bounded by `hook.timeout`; on timeout an exec child (and its process
/// group) is killed. The outcome is logged (info when ok, warn otherwise) and
/// also returned through the JoinHandle.
///
/// Must be called from within a tokio runtime (like `tokio::spawn`).
pub fn spawn(
    hook: &Hook,
    event_json: String,
    env: Vec<(String, String)>,
) -> tokio::task::JoinHandle<HookOutcome> {
    let hook = hook.clone();
    tokio::spawn(async move { run(&hook, &event_json, &env).await })
}

/// The same as [`spawn`], awaited: runs the hook, logs and returns the outcome.
pub async fn run(hook: &Hook, event_json: &str, env: &[(String, String)]) -> HookOutcome {
    let start = Instant::now();
    let (ok, detail) = match &hook.spec {
        HookSpec::Exec { command } => run_exec(command, hook.timeout, start, event_json, env).await,
        HookSpec::Webhook { url, tls } => run_webhook(url, tls, hook.timeout, event_json).await,
    };
    let elapsed = start.elapsed();
    let elapsed_ms = elapsed.as_secs_f64() * 1e3;
    if ok {
        info!(hook = %hook.name, ok, elapsed_ms, detail = %detail, "hook ran");
    } else {
        warn!(hook = %hook.name, ok, elapsed_ms, detail = %detail, "hook failed");
    }
    HookOutcome {
        hook: hook.name.clone(),
        ok,
        elapsed,
        detail,
    }
}

fn timeout_detail(t: Duration) -> String {
    format!("timeout after {}ms", t.as_millis())
}

// ---------------------------------------------------------------- exec hooks

async fn run_exec(
    command: &[String],
    limit: Duration,
    start: Instant,
    event_json: &str,
    env: &[(String, String)],
) -> (bool, String) {
    let Some((program, args)) = command.split_first() else {
        return (false, "empty command".into());
    };
    if program.is_empty() {
        return (false, "empty program name".into());
    }
    if let Some((k, _)) = env
        .iter()
        .find(|(k, _)| k.is_empty() || k.contains(['=', '\0']))
    {
        return (false, format!("invalid environment variable name {k:?}"));
    }
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("FAILOVER_EVENT", event_json);
    let mut input = Vec::with_capacity(event_json.len() + 1);
    input.extend_from_slice(event_json.as_bytes());
    input.push(b'\n');
    let remaining = limit.saturating_sub(start.elapsed());
    match exec::run(cmd, Some(&input), remaining).await {
        Err(e) => (false, exec::spawn_error(program, &e)),
        Ok(o) => match o.ended {
            Ended::Exited(status) => exit_detail(status, &o.stdout, &o.stderr),
            Ended::WaitFailed(e) => (false, format!("waiting for the child: {e}")),
            Ended::TimedOut => (false, timeout_detail(limit)),
        },
    }
}

fn exit_detail(status: ExitStatus, stdout: &[u8], stderr: &[u8]) -> (bool, String) {
    let head = match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        (None, None) => format!("ended: {status}"),
    };
    let ok = status.success();
    // The line most likely to tell what happened: stdout when it worked,
    // stderr when it did not.
    let line = if ok {
        first_line(stdout).or_else(|| first_line(stderr))
    } else {
        first_line(stderr).or_else(|| first_line(stdout))
    };
    let detail = match line {
        Some(l) => format!("{head}: {l}"),
        None => head,
    };
    (ok, detail)
}

/// The first non-blank line of `bytes`, trimmed, made printable and cut to
/// [`DETAIL_TEXT_MAX`] characters.
fn first_line(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    Some(printable(line))
}

fn printable(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(DETAIL_TEXT_MAX)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    if s.chars().nth(DETAIL_TEXT_MAX).is_some() {
        out.push('…');
    }
    out
}

// ------------------------------------------------------------------ webhooks

async fn run_webhook(url: &str, tls: &TlsOptions, limit: Duration, body: &str) -> (bool, String) {
    let (addr, host, path) = match parse_webhook_url(url) {
        Ok(v) => v,
        Err(e) => return (false, format!("bad url: {e}")),
    };
    let tls = if is_https(url) {
        match client_config(tls).and_then(|c| Ok((c, server_name(tls, addr.ip())?))) {
            Ok(t) => Some(t),
            Err(e) => return (false, format!("TLS: {e}")),
        }
    } else {
        None
    };
    match timeout(limit, post(addr, &host, &path, body, tls)).await {
        Ok(Ok(code)) => ((200..300).contains(&code), format!("http {code}")),
        Ok(Err(detail)) => (false, detail),
        Err(_) => (false, timeout_detail(limit)),
    }
}

/// One POST (over TLS when `tls` is given); returns the final status code
/// or a short error detail. Only the status is read, not the body.
async fn post(
    addr: SocketAddr,
    host: &str,
    path: &str,
    body: &str,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
) -> Result<u16, String> {
    let request = http_client::build_request(
        "POST",
        path,
        &[
            ("Host", host),
            ("Content-Type", "application/json"),
            ("User-Agent", "failover-hook"),
        ],
        body.as_bytes(),
    )
    .map_err(|e| format!("bad request: {e}"))?;
    let stream = TcpStream::connect(addr).await.map_err(|e| {
        http_client::known_io_detail(&e)
            .map_or_else(|| format!("connect to {addr}: {e}"), str::to_owned)
    })?;
    let caps = Caps {
        head: RESPONSE_CAP,
        body: None,
    };
    let sent = match tls {
        None => http_client::exchange(stream, request, caps).await,
        Some((cfg, name)) => {
            let s = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
            http_client::exchange(s, request, caps).await
        }
    };
    match sent {
        Ok((code, _)) => Ok(code),
        Err(Failure::Http(e)) if e.is_parse() => {
            Err(format!("bad response: {}", http_client::hyper_detail(&e)))
        }
        Err(f) => Err(f.detail()),
    }
}

#[cfg(test)]
mod tests;
