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
//! * Webhooks POST the event JSON over HTTP/1.1 to an `http://IP[:PORT]/PATH`
//!   or `https://IP[:PORT]/PATH` url (IP literals only: no DNS). HTTPS
//!   verifies the server's certificate (rustls): against Mozilla's roots, or
//!   the CAs of `ca_file`; for the url's IP address, or `server_name`. A 2xx
//!   status is success.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::process::ExitStatusExt as _,
    path::PathBuf,
    process::ExitStatus,
    sync::Arc,
    time::{Duration, Instant},
};

use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    process::Command,
    time::timeout,
};
use tracing::{info, warn};

pub use crate::exec::OUTPUT_CAP;
use crate::exec::{self, Ended};
/// The most of a webhook response head read while looking for the status.
const RESPONSE_CAP: usize = 16 * 1024;
/// The most characters of child output or server text put in a detail.
const DETAIL_TEXT_MAX: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookSpec {
    /// Run `command[0]` with `command[1..]` as arguments directly — never
    /// through a shell, arguments never interpolated. stdin gets the event
    /// JSON followed by a newline (then closed). Environment: the caller's
    /// `env` pairs are added (e.g. FAILOVER_SERVICE=web); plus
    /// FAILOVER_EVENT=<the event JSON>. Healthy outcome = exit status 0.
    /// stdout/stderr captured (first 4 KiB each kept for the outcome detail).
    Exec { command: Vec<String> },
    /// HTTP/1.1 POST of the event JSON to `url` (`http[s]://IP[:PORT]/PATH`,
    /// IPv6 in brackets, default port 80/443, no DNS). Success = a 2xx
    /// status.
    Webhook { url: String, tls: TlsOptions },
}

/// How an https webhook verifies its server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsOptions {
    /// PEM file of the CA certificates to trust instead of the built-in
    /// (Mozilla) roots.
    pub ca_file: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the url's IP
    /// address).
    pub server_name: Option<String>,
}

/// Whether `url` is an https url (any case).
pub fn is_https(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(s, _)| s.eq_ignore_ascii_case("https"))
}

/// The rustls client configuration for `o`: certificates verified against
/// `ca_file`'s CAs or Mozilla's roots. Errors name the file and what is
/// wrong with it.
pub fn client_config(o: &TlsOptions) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &o.ca_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(p) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {e}", p.display()))?;
            if certs.is_empty() {
                return Err(format!("{}: no PEM certificate in it", p.display()));
            }
            for c in certs {
                roots.add(c).map_err(|e| format!("{}: {e}", p.display()))?;
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The name the certificate is checked against.
pub fn server_name(o: &TlsOptions, ip: IpAddr) -> Result<ServerName<'static>, String> {
    match &o.server_name {
        Some(n) => ServerName::try_from(n.clone()).map_err(|e| format!("server_name {n:?}: {e}")),
        None => Ok(ServerName::IpAddress(ip.into())),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub name: String,
    pub spec: HookSpec,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOutcome {
    pub hook: String,
    pub ok: bool,
    pub elapsed: Duration,
    /// Short and on one line: "exit 0", "exit 2: <first stderr line>",
    /// "timeout after 500ms", "http 500", "connection refused", ...
    pub detail: String,
}

/// Validates a webhook URL (used by config validation): returns the socket
/// address, the Host header value and the path (the request target: path and
/// query, never empty), or a clear error message naming what is wrong.
pub fn parse_webhook_url(url: &str) -> Result<(SocketAddr, String, String), String> {
    let bad = |what: String| Err(format!("{url:?}: {what}"));
    if url.is_empty() {
        return Err("empty url: expected http://IP[:PORT]/PATH".into());
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad("not a url: expected http://IP[:PORT]/PATH".into());
    };
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        443
    } else if scheme.eq_ignore_ascii_case("http") {
        80
    } else {
        return bad(format!(
            "unsupported scheme {scheme:?}: use http:// or https://"
        ));
    };
    let (authority, target) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    // A fragment is never sent to the server.
    let target = target.split('#').next().unwrap_or_default();
    let path = if target.starts_with('/') {
        target.to_string()
    } else {
        format!("/{target}")
    };
    if let Some(c) = path.chars().find(|c| !c.is_ascii_graphic()) {
        return bad(format!(
            "the path holds {c:?} (a space, control or non-ASCII character): percent-encode it"
        ));
    }
    if authority.is_empty() {
        return bad("missing host: expected http://IP[:PORT]/PATH".into());
    }
    if authority.contains('@') {
        return bad("credentials in the url (user@) are not supported".into());
    }
    let (ip, port): (IpAddr, Option<&str>) = if let Some(r) = authority.strip_prefix('[') {
        let Some((inside, after)) = r.split_once(']') else {
            return bad("unclosed '[' around the IPv6 host".into());
        };
        if inside.contains('%') {
            return bad("IPv6 zone ids (%...) are not supported".into());
        }
        let Ok(ip) = inside.parse::<Ipv6Addr>() else {
            return bad(format!("{inside:?} is not an IPv6 address"));
        };
        let port = if after.is_empty() {
            None
        } else if let Some(p) = after.strip_prefix(':') {
            Some(p)
        } else {
            return bad(format!("unexpected {after:?} after the IPv6 host"));
        };
        (IpAddr::V6(ip), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if port.is_some_and(|p| p.contains(':')) {
            return bad("an IPv6 host must be in brackets: http://[ADDR]:PORT/PATH".into());
        }
        if host.is_empty() {
            return bad("missing host: expected http://IP[:PORT]/PATH".into());
        }
        let Ok(ip) = host.parse::<Ipv4Addr>() else {
            return bad(format!(
                "host {host:?} is not an IP address: webhook urls take an IP literal (no DNS)"
            ));
        };
        (IpAddr::V4(ip), port)
    };
    if ip.is_unspecified() {
        return bad(format!("{ip} is not a destination address"));
    }
    let port = match port {
        None => default_port,
        Some("") => return bad("empty port after ':'".into()),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return bad(format!("port {p:?} is not a number 1-65535")),
        },
    };
    let host_ip = match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    let host = if port == default_port {
        host_ip
    } else {
        format!("{host_ip}:{port}")
    };
    Ok((SocketAddr::new(ip, port), host, path))
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
/// or a short error detail.
async fn post(
    addr: SocketAddr,
    host: &str,
    path: &str,
    body: &str,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
) -> Result<u16, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| match io_detail(&e) {
            Some(d) => d.to_string(),
            None => format!("connect to {addr}: {e}"),
        })?;
    let request = format!(
        "POST {path} HTTP/1.1\r\n\
         Host: {host}\r\n\
         Content-Type: application/json\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\
         User-Agent: failover-hook\r\n\
         \r\n\
         {body}",
        body.len()
    );
    match tls {
        None => exchange(stream, request.as_bytes()).await,
        Some((cfg, name)) => {
            let s = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
            exchange(s, request.as_bytes()).await
        }
    }
}

/// Sends the request and reads the status.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
) -> Result<u16, String> {
    if let Err(e) = stream.write_all(request).await {
        // The server may have answered (e.g. 413) and closed before reading
        // everything: prefer its answer when there is one.
        return match read_status(&mut stream).await {
            Ok(code) => Ok(code),
            Err(_) => Err(match io_detail(&e) {
                Some(d) => d.to_string(),
                None => format!("sending the request: {e}"),
            }),
        };
    }
    read_status(&mut stream).await
}

/// Reads the response up to its final (non-1xx) status line.
async fn read_status<S: AsyncRead + Unpin>(stream: &mut S) -> Result<u16, String> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        // Every pass either returns, waits for more bytes, or drops a whole
        // interim response from `buf`.
        while let Some(eol) = buf.iter().position(|&b| b == b'\n') {
            let line = &buf[..eol];
            let Some(code) = parse_status_line(line) else {
                let line = String::from_utf8_lossy(line);
                return Err(format!("bad response: {:?}", printable(line.trim_end())));
            };
            if !(100..200).contains(&code) || code == 101 {
                return Ok(code);
            }
            // An interim response (100 Continue, 103 Early Hints): skip it.
            match head_end(&buf) {
                Some(end) => drop(buf.drain(..end)),
                None => break,
            }
        }
        if buf.len() > RESPONSE_CAP {
            return Err("bad response: head too long".into());
        }
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            Err(e) => {
                return Err(match io_detail(&e) {
                    Some(d) => d.to_string(),
                    None => format!("reading the response: {e}"),
                });
            }
        };
        if n == 0 {
            return Err(if buf.is_empty() {
                "connection closed without a response".into()
            } else {
                "connection closed in the middle of the response".into()
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// "HTTP/1.x NNN reason" → NNN.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/1.")
        || code.len() != 3
        || !code.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    code.parse().ok()
}

/// The offset just past the blank line that ends the head starting at 0.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(i) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + i];
        if start > 0 && (line.is_empty() || line == b"\r") {
            return Some(start + i + 1);
        }
        start += i + 1;
    }
    None
}

fn io_detail(e: &io::Error) -> Option<&'static str> {
    use io::ErrorKind as K;
    Some(match e.kind() {
        K::ConnectionRefused => "connection refused",
        K::ConnectionReset => "connection reset",
        K::ConnectionAborted => "connection aborted",
        K::BrokenPipe => "connection closed by the server",
        K::HostUnreachable => "host unreachable",
        K::NetworkUnreachable => "network unreachable",
        K::AddrNotAvailable => "address not available",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::{
        path::{Path, PathBuf},
        sync::atomic::{AtomicUsize, Ordering},
    };

    use tokio::net::TcpListener;

    use super::*;

    const EVENT: &str = r#"{"kind":"failover","service":"web","reason":"tier 0 has no healthy backend: $(touch x) `y` 'q' \"z\"","from_tier":0,"to_tier":1}"#;

    /// A fresh directory for one test, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir()
                .join(format!("failover-hooks-{}-{n}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("create temp dir");
            Self(p)
        }
        fn path(&self) -> &Path {
            &self.0
        }
        fn arg(&self) -> String {
            self.0.display().to_string()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn exec(name: &str, command: &[&str], timeout: Duration) -> Hook {
        Hook {
            name: name.into(),
            spec: HookSpec::Exec {
                command: command.iter().map(|s| s.to_string()).collect(),
            },
            timeout,
        }
    }

    fn webhook(url: &str, timeout: Duration) -> Hook {
        Hook {
            name: "wh".into(),
            spec: HookSpec::Webhook {
                url: url.into(),
                tls: TlsOptions::default(),
            },
            timeout,
        }
    }

    fn env() -> Vec<(String, String)> {
        vec![
            ("FAILOVER_SERVICE".into(), "web".into()),
            ("FAILOVER_KIND".into(), "failover".into()),
        ]
    }

    /// True once /proc/<pid> is gone or the process is a zombie (bounded wait).
    async fn dead_soon(pid: i32) -> bool {
        for _ in 0..200 {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => return true,
                Ok(stat) => {
                    // "pid (comm) S ...": the state follows the last ')'.
                    let state = stat
                        .rsplit_once(')')
                        .and_then(|(_, r)| r.trim_start().chars().next());
                    if state == Some('Z') || state == Some('X') {
                        return true;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    fn read_pid(p: &Path) -> i32 {
        std::fs::read_to_string(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .parse()
            .expect("a pid")
    }

    #[tokio::test]
    async fn exec_gets_event_on_stdin_and_env() {
        let dir = TempDir::new("env");
        let script = r#"
            printf '%s' "$FAILOVER_EVENT" > "$1/event"
            printf '%s' "$FAILOVER_SERVICE" > "$1/service"
            cat > "$1/stdin"
            echo all good
            echo a warning >&2
        "#;
        let hook = exec(
            "env",
            &["/bin/sh", "-c", script, "sh", &dir.arg()],
            Duration::from_secs(5),
        );
        let o = run(&hook, EVENT, &env()).await;
        assert!(o.ok, "{o:?}");
        assert_eq!(o.hook, "env");
        assert_eq!(o.detail, "exit 0: all good");
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).expect(f);
        assert_eq!(read("event"), EVENT);
        assert_eq!(read("service"), "web");
        assert_eq!(read("stdin"), format!("{EVENT}\n"));
    }

    #[tokio::test]
    async fn exec_checks_inside_the_child() {
        // The child itself checks what it got; exit 0 only if all is right.
        let script = r#"
            [ "$FAILOVER_SERVICE" = web ] || { echo "service: $FAILOVER_SERVICE" >&2; exit 3; }
            [ "$FAILOVER_EVENT" = "$2" ] || { echo "event: $FAILOVER_EVENT" >&2; exit 4; }
            line=$(cat)
            [ "$line" = "$2" ] || { echo "stdin: $line" >&2; exit 5; }
        "#;
        let hook = exec(
            "check",
            &["/bin/sh", "-c", script, "sh", "unused", EVENT],
            Duration::from_secs(5),
        );
        let o = run(&hook, EVENT, &env()).await;
        assert!(o.ok, "{o:?}");
        assert_eq!(o.detail, "exit 0");
    }

    #[tokio::test]
    async fn exec_nonzero_exit() {
        let hook = exec(
            "fail",
            &[
                "/bin/sh",
                "-c",
                "echo out; echo 'bad thing' >&2; echo more >&2; exit 2",
            ],
            Duration::from_secs(5),
        );
        let o = run(&hook, EVENT, &env()).await;
        assert!(!o.ok);
        assert_eq!(o.detail, "exit 2: bad thing");
        let hook = exec(
            "quiet",
            &["/bin/sh", "-c", "exit 7"],
            Duration::from_secs(5),
        );
        let o = run(&hook, EVENT, &env()).await;
        assert!(!o.ok);
        assert_eq!(o.detail, "exit 7");
        let hook = exec(
            "sig",
            &["/bin/sh", "-c", "kill -TERM $$"],
            Duration::from_secs(5),
        );
        let o = run(&hook, EVENT, &env()).await;
        assert!(!o.ok);
        assert_eq!(o.detail, format!("killed by signal {}", libc::SIGTERM));
    }

    #[tokio::test]
    async fn exec_timeout_kills_child_and_its_group() {
        let dir = TempDir::new("timeout");
        // The shell writes its pid, starts `sleep 5` in the background (a
        // grandchild of ours), writes its pid and waits.
        let script = r#"echo $$ > "$1/pid"; sleep 5 & echo $! > "$1/pid2"; wait"#;
        let hook = exec(
            "slow",
            &["/bin/sh", "-c", script, "sh", &dir.arg()],
            Duration::from_millis(100),
        );
        let t0 = Instant::now();
        let o = run(&hook, EVENT, &env()).await;
        let took = t0.elapsed();
        assert!(!o.ok);
        assert_eq!(o.detail, "timeout after 100ms");
        assert!(took < Duration::from_secs(1), "took {took:?}");
        assert!(o.elapsed >= Duration::from_millis(100), "{o:?}");
        let pid = read_pid(&dir.path().join("pid"));
        let pid2 = read_pid(&dir.path().join("pid2"));
        assert!(dead_soon(pid).await, "the child {pid} is still running");
        assert!(
            dead_soon(pid2).await,
            "the grandchild {pid2} is still running"
        );
    }

    #[tokio::test]
    async fn exec_plain_sleep_times_out() {
        let hook = exec("sleep", &["/bin/sleep", "5"], Duration::from_millis(100));
        let t0 = Instant::now();
        let o = run(&hook, EVENT, &env()).await;
        assert!(!o.ok);
        assert_eq!(o.detail, "timeout after 100ms");
        assert!(t0.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn exec_missing_program() {
        let o = run(
            &exec(
                "nope",
                &["/nonexistent/failover-no-such-program"],
                Duration::from_secs(5),
            ),
            EVENT,
            &env(),
        )
        .await;
        assert!(!o.ok);
        assert_eq!(
            o.detail,
            "no such program: /nonexistent/failover-no-such-program"
        );
        let o = run(
            &exec(
                "nope",
                &["failover-no-such-program-on-path"],
                Duration::from_secs(5),
            ),
            EVENT,
            &env(),
        )
        .await;
        assert!(!o.ok);
        assert!(o.detail.starts_with("no such program"), "{o:?}");
        let o = run(&exec("empty", &[], Duration::from_secs(5)), EVENT, &env()).await;
        assert!(!o.ok);
        assert_eq!(o.detail, "empty command");
        // A directory is not a program.
        let o = run(&exec("dir", &["/"], Duration::from_secs(5)), EVENT, &env()).await;
        assert!(!o.ok, "{o:?}");
    }

    #[tokio::test]
    async fn exec_bad_env_name() {
        let bad = vec![("A=B".to_string(), "x".to_string())];
        let o = run(
            &exec("e", &["/bin/true"], Duration::from_secs(5)),
            EVENT,
            &bad,
        )
        .await;
        assert!(!o.ok);
        assert!(
            o.detail.contains("invalid environment variable name"),
            "{o:?}"
        );
    }

    #[tokio::test]
    async fn exec_never_through_a_shell() {
        let marker = std::env::temp_dir().join(format!(
            "failover-hooks-xyz-{}-{}",
            std::process::id(),
            line!()
        ));
        let _ = std::fs::remove_file(&marker);
        let arg = format!(
            "$(touch {}); `touch {}`",
            marker.display(),
            marker.display()
        );
        let hook = exec("echo", &["/bin/echo", &arg], Duration::from_secs(5));
        let o = run(&hook, EVENT, &env()).await;
        assert!(o.ok, "{o:?}");
        assert_eq!(o.detail, format!("exit 0: {arg}"));
        assert!(!marker.exists(), "the argument went through a shell");
    }

    #[tokio::test]
    async fn exec_big_event_unread_stdin_and_big_output() {
        // Larger than a pipe buffer (64 KiB) but under the 128 KiB limit of
        // one environment string; the child reads no stdin and writes 1 MB.
        let big = format!(r#"{{"kind":"state","pad":"{}"}}"#, "x".repeat(100_000));
        let hook = exec(
            "big",
            &["/bin/sh", "-c", "head -c 1000000 /dev/zero; echo done >&2"],
            Duration::from_secs(5),
        );
        let o = run(&hook, &big, &env()).await;
        assert!(o.ok, "{o:?}");
    }

    #[tokio::test]
    async fn exec_background_child_holding_stdout_does_not_stall() {
        // The hook exits at once but leaves a process holding its stdout.
        let dir = TempDir::new("bg");
        let script = r#"sleep 3 & echo $! > "$1/pid"; echo started"#;
        let hook = exec(
            "bg",
            &["/bin/sh", "-c", script, "sh", &dir.arg()],
            Duration::from_secs(2),
        );
        let t0 = Instant::now();
        let o = run(&hook, EVENT, &env()).await;
        assert!(o.ok, "{o:?}");
        assert_eq!(o.detail, "exit 0: started");
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        let pid = read_pid(&dir.path().join("pid"));
        // SAFETY: kill(2) only sends a signal to the sleep this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }

    // ------------------------------------------------------------- webhooks

    /// A request as the test server saw it.
    struct Request {
        head: String,
        body: Vec<u8>,
    }

    impl Request {
        fn request_line(&self) -> &str {
            self.head.lines().next().unwrap_or_default()
        }
        fn header(&self, name: &str) -> Option<String> {
            self.head.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        }
    }

    /// Reads one request (head and Content-Length body), bounded in size.
    async fn read_request(s: &mut TcpStream) -> Request {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_len = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(buf.len() < 1 << 20, "request head too long");
            let n = s.read(&mut chunk).await.expect("read request");
            assert!(n > 0, "client closed before the end of the head");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_len].to_vec()).expect("utf-8 head");
        let req = Request {
            head,
            body: Vec::new(),
        };
        let len: usize = req
            .header("content-length")
            .expect("content-length")
            .parse()
            .expect("number");
        let mut body = buf[head_len..].to_vec();
        while body.len() < len {
            let n = s.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "client closed before the end of the body");
            body.extend_from_slice(&chunk[..n]);
        }
        Request { body, ..req }
    }

    /// Serves one connection: reads the request, sends `response`, closes.
    fn serve_once(
        listener: TcpListener,
        response: &'static str,
    ) -> tokio::task::JoinHandle<Request> {
        tokio::spawn(async move {
            let work = async {
                let (mut s, _) = listener.accept().await.expect("accept");
                let req = read_request(&mut s).await;
                s.write_all(response.as_bytes())
                    .await
                    .expect("write response");
                let _ = s.shutdown().await;
                req
            };
            timeout(Duration::from_secs(5), work)
                .await
                .expect("test server timed out")
        })
    }

    fn check_request(req: &Request, path: &str, host: &str) {
        assert_eq!(req.request_line(), format!("POST {path} HTTP/1.1"));
        assert_eq!(req.header("host").as_deref(), Some(host));
        assert_eq!(
            req.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(req.header("content-length"), Some(EVENT.len().to_string()));
        assert_eq!(req.header("connection").as_deref(), Some("close"));
        assert_eq!(req.header("user-agent").as_deref(), Some("failover-hook"));
        assert_eq!(req.body, EVENT.as_bytes());
    }

    #[tokio::test]
    async fn webhook_200() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = serve_once(
            l,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        );
        let o = run(
            &webhook(
                &format!("http://{addr}/hooks/failover?src=lb"),
                Duration::from_secs(5),
            ),
            EVENT,
            &env(),
        )
        .await;
        assert!(o.ok, "{o:?}");
        assert_eq!(o.detail, "http 200");
        let req = server.await.expect("server");
        check_request(&req, "/hooks/failover?src=lb", &addr.to_string());
    }

    #[tokio::test]
    async fn webhook_500() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = serve_once(
            l,
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
        );
        let o = run(
            &webhook(&format!("http://{addr}/x"), Duration::from_secs(5)),
            EVENT,
            &env(),
        )
        .await;
        assert!(!o.ok);
        assert_eq!(o.detail, "http 500");
        check_request(&server.await.expect("server"), "/x", &addr.to_string());
    }

    #[tokio::test]
    async fn webhook_interim_then_204() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = serve_once(
            l,
            "HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        );
        let o = run(
            &webhook(&format!("http://{addr}"), Duration::from_secs(5)),
            EVENT,
            &env(),
        )
        .await;
        assert!(o.ok, "{o:?}");
        assert_eq!(o.detail, "http 204");
        check_request(&server.await.expect("server"), "/", &addr.to_string());
    }

    #[tokio::test]
    async fn webhook_garbage_and_silent_close() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = serve_once(l, "SSH-2.0-OpenSSH\r\n");
        let o = run(
            &webhook(&format!("http://{addr}/"), Duration::from_secs(5)),
            EVENT,
            &env(),
        )
        .await;
        assert!(!o.ok);
        assert!(o.detail.starts_with("bad response"), "{o:?}");
        server.await.expect("server");

        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = serve_once(l, "");
        let o = run(
            &webhook(&format!("http://{addr}/"), Duration::from_secs(5)),
            EVENT,
            &env(),
        )
        .await;
        assert!(!o.ok);
        assert_eq!(o.detail, "connection closed without a response");
        server.await.expect("server");
    }

    #[tokio::test]
    async fn webhook_server_never_answers() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let _req = read_request(&mut s).await;
            // Hold the connection open without answering.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let t0 = Instant::now();
        let o = run(
            &webhook(&format!("http://{addr}/"), Duration::from_millis(200)),
            EVENT,
            &env(),
        )
        .await;
        assert!(!o.ok);
        assert_eq!(o.detail, "timeout after 200ms");
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        server.abort();
    }

    #[tokio::test]
    async fn webhook_connection_refused() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let o = run(
            &webhook(&format!("http://{addr}/"), Duration::from_secs(5)),
            EVENT,
            &env(),
        )
        .await;
        assert!(!o.ok);
        assert_eq!(o.detail, "connection refused");
    }

    #[tokio::test]
    async fn webhook_ipv6_loopback() {
        let l = match TcpListener::bind("[::1]:0").await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("skipped: no IPv6 loopback here ({e})");
                return;
            }
        };
        let addr = l.local_addr().expect("addr");
        let server = serve_once(l, "HTTP/1.0 201 Created\r\n\r\n");
        let o = run(
            &webhook(
                &format!("http://[::1]:{}/v6", addr.port()),
                Duration::from_secs(5),
            ),
            EVENT,
            &env(),
        )
        .await;
        assert!(o.ok, "{o:?}");
        assert_eq!(o.detail, "http 201");
        check_request(
            &server.await.expect("server"),
            "/v6",
            &format!("[::1]:{}", addr.port()),
        );
    }

    #[tokio::test]
    async fn webhook_bad_url_fails_cleanly() {
        let o = run(
            &webhook("ftp://127.0.0.1/x", Duration::from_secs(5)),
            EVENT,
            &env(),
        )
        .await;
        assert!(!o.ok);
        assert!(
            o.detail.starts_with("bad url:") && o.detail.contains("scheme"),
            "{o:?}"
        );
    }

    /// A CA, and a certificate for 127.0.0.1 and "hooks.test" it signed.
    fn test_pki() -> (
        String,
        Vec<CertificateDer<'static>>,
        rustls_pki_types::PrivateKeyDer<'static>,
    ) {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let mut params =
            rcgen::CertificateParams::new(vec!["hooks.test".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &ca, &ca_key).expect("cert");
        (
            ca.pem(),
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
    }

    /// An HTTPS server answering each of `n` connections with 204.
    async fn tls_server(
        chain: Vec<CertificateDer<'static>>,
        key: rustls_pki_types::PrivateKeyDer<'static>,
        n: usize,
    ) -> SocketAddr {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server cert");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            for _ in 0..n {
                let Ok((tcp, _)) = l.accept().await else {
                    return;
                };
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    continue; // the client refused our certificate
                };
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                    .await;
                let _ = s.shutdown().await;
            }
        });
        addr
    }

    fn https_hook(url: &str, tls: TlsOptions) -> Hook {
        Hook {
            name: "tls".into(),
            spec: HookSpec::Webhook {
                url: url.into(),
                tls,
            },
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn https_webhooks_verify_the_server_certificate() {
        let (ca_pem, chain, key) = test_pki();
        let dir = std::env::temp_dir().join(format!("failover-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &ca_pem).expect("ca file");
        let addr = tls_server(chain, key, 4).await;
        let url = format!("https://{addr}/hook");
        let with = |server_name: Option<&str>| TlsOptions {
            ca_file: Some(ca_file.clone()),
            server_name: server_name.map(str::to_string),
        };
        // Trusted CA, certificate for the url's IP: delivered.
        let o = run(&https_hook(&url, with(None)), EVENT, &env()).await;
        assert!(o.ok, "{o:?}");
        assert_eq!(o.detail, "http 204");
        // The same with the name the certificate carries.
        let o = run(&https_hook(&url, with(Some("hooks.test"))), EVENT, &env()).await;
        assert!(o.ok, "{o:?}");
        // A name the certificate does not carry: refused.
        let o = run(&https_hook(&url, with(Some("other.test"))), EVENT, &env()).await;
        assert!(!o.ok && o.detail.contains("certificate"), "{o:?}");
        // Mozilla's roots do not know our CA: refused.
        let o = run(&https_hook(&url, TlsOptions::default()), EVENT, &env()).await;
        assert!(!o.ok && o.detail.contains("certificate"), "{o:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tls_options_errors_name_the_problem() {
        let missing = TlsOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            server_name: None,
        };
        let e = client_config(&missing).expect_err("missing file");
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let dir = std::env::temp_dir().join(format!("failover-tls-e-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("file");
        let e = client_config(&TlsOptions {
            ca_file: Some(empty),
            server_name: None,
        })
        .expect_err("no certificate");
        assert!(e.contains("no PEM certificate"), "{e}");
        let bad = TlsOptions {
            ca_file: None,
            server_name: Some("not a name!".into()),
        };
        assert!(server_name(&bad, "127.0.0.1".parse().expect("ip")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn parse_urls() {
        let ok = |u: &str| parse_webhook_url(u).unwrap_or_else(|e| panic!("{u}: {e}"));
        let sa = |s: &str| s.parse::<SocketAddr>().expect("addr");

        assert_eq!(
            ok("http://10.0.0.5:8080/hooks/failover"),
            (
                sa("10.0.0.5:8080"),
                "10.0.0.5:8080".into(),
                "/hooks/failover".into()
            )
        );
        assert_eq!(
            ok("http://[::1]:9000/v6?x=1"),
            (sa("[::1]:9000"), "[::1]:9000".into(), "/v6?x=1".into())
        );
        assert_eq!(
            ok("http://[2001:db8::1]/p"),
            (sa("[2001:db8::1]:80"), "[2001:db8::1]".into(), "/p".into())
        );
        assert_eq!(
            ok("http://192.0.2.1/notify"),
            (sa("192.0.2.1:80"), "192.0.2.1".into(), "/notify".into())
        );
        assert_eq!(
            ok("http://192.0.2.1"),
            (sa("192.0.2.1:80"), "192.0.2.1".into(), "/".into())
        );
        assert_eq!(
            ok("http://192.0.2.1:80?a=b#frag"),
            (sa("192.0.2.1:80"), "192.0.2.1".into(), "/?a=b".into())
        );
        assert_eq!(
            ok("HTTP://127.0.0.1:1/"),
            (sa("127.0.0.1:1"), "127.0.0.1:1".into(), "/".into())
        );

        let err = |u: &str, want: &str| {
            let e = parse_webhook_url(u).expect_err(u);
            assert!(e.contains(want), "{u}: {e:?} should mention {want:?}");
        };
        assert_eq!(
            ok("https://10.0.0.5/x"),
            (sa("10.0.0.5:443"), "10.0.0.5".into(), "/x".into())
        );
        assert_eq!(
            ok("HTTPS://[::1]:8443/x"),
            (sa("[::1]:8443"), "[::1]:8443".into(), "/x".into())
        );
        err("http://example.com/x", "not an IP address");
        err("http://localhost:8080/x", "no DNS");
        err("ftp://10.0.0.5/x", "unsupported scheme");
        err("", "empty url");
        err("garbage", "not a url");
        err("10.0.0.5:80/x", "not a url");
        err("http://", "missing host");
        err("http:///x", "missing host");
        err("http://:80/x", "missing host");
        err("http://10.0.0.5:/x", "empty port");
        err("http://10.0.0.5:0/x", "not a number 1-65535");
        err("http://10.0.0.5:65536/x", "not a number 1-65535");
        err("http://10.0.0.5:+80/x", "not a number 1-65535");
        err("http://10.0.0.5:http/x", "not a number 1-65535");
        err("http://::1/x", "in brackets");
        err("http://[::1/x", "unclosed");
        err("http://[::1]x/x", "after the IPv6 host");
        err("http://[fe80::1%eth0]:80/x", "zone");
        err("http://[10.0.0.1]/x", "not an IPv6 address");
        err("http://10.0.0.256/x", "not an IP address");
        err("http://user:pw@10.0.0.5/x", "credentials");
        err("http://0.0.0.0/x", "not a destination");
        err("http://[::]:80/x", "not a destination");
        err("http://10.0.0.5/a b", "percent-encode");
        err("http://10.0.0.5/a\r\nX-Injected: 1", "percent-encode");
        err("http://10.0.0.5/é", "percent-encode");
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 404"), Some(404));
        assert_eq!(parse_status_line(b"HTTP/1.1 20 OK"), None);
        assert_eq!(parse_status_line(b"HTTP/2 200"), None);
        assert_eq!(parse_status_line(b"hello"), None);
        assert_eq!(head_end(b"HTTP/1.1 100 Continue\r\n\r\nrest"), Some(25));
        assert_eq!(head_end(b"HTTP/1.1 100 Continue\r\nA: b\r\n"), None);
    }

    #[tokio::test]
    async fn spawn_returns_at_once_and_yields_the_outcome() {
        let hook = exec("slow", &["/bin/sleep", "0.3"], Duration::from_secs(5));
        let t0 = Instant::now();
        let handle = spawn(&hook, EVENT.to_string(), env());
        let spawned_in = t0.elapsed();
        assert!(
            spawned_in < Duration::from_millis(50),
            "spawn took {spawned_in:?}"
        );
        let o = timeout(Duration::from_secs(5), handle)
            .await
            .expect("bounded")
            .expect("task");
        assert!(o.ok, "{o:?}");
        assert_eq!(o.hook, "slow");
        assert!(o.elapsed >= Duration::from_millis(300), "{o:?}");
    }
}
