//! Backend health probes: one check of one backend, bounded by a timeout.
//!
//! [`probe`] runs a single [`ProbeSpec`] against a [`Target`] and always
//! comes back with a [`ProbeResult`] by the deadline: every failure the
//! network or a child process can produce is an unhealthy result with a short
//! `detail`, never a panic or an error value. Scheduling (intervals, rise/fall
//! counting) is the caller's business.
//!
//! All I/O is asynchronous on the caller's tokio runtime: no threads, no
//! sleeps, no DNS (targets are socket addresses; an HTTP `Host` override is
//! only a header). Timeouts are a single overall deadline, so sub-10 ms
//! timeouts and probes every few milliseconds work.

use std::{
    future::Future,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::process::ExitStatusExt,
    process::ExitStatus,
    time::Duration,
};

use tokio::{
    net::{TcpStream, UdpSocket},
    process::Command,
    time::Instant,
};

mod exec;
mod http;
mod postgres;
mod tcp;
mod udp;

pub use self::postgres::{Password, PgRole};
use self::{exec::*, http::*, postgres::*, tcp::*, udp::*};
use crate::sys::exec::{self as runner, Ended};

/// Most bytes of an HTTP response head, and of its body, read.
pub const HTTP_MAX_RESPONSE: usize = 64 * 1024;
/// Most bytes of an exec check's stdout and of its stderr kept for the detail.
pub const EXEC_MAX_CAPTURE: usize = runner::OUTPUT_CAP;
/// Receive buffer of a UDP check: the largest possible datagram.
const UDP_MAX_DATAGRAM: usize = 64 * 1024;
/// Longest piece of foreign text (output line, expected string) in a detail.
const DETAIL_PIECE_MAX: usize = 160;
/// Status ranges used if an HTTP check is given none (the config's default).
const DEFAULT_STATUS: &[(u16, u16)] = &[(200, 399)];

/// What a check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeSpec {
    /// TCP connect succeeds.
    Tcp,
    /// HTTP/1.1 GET `path` with `Host: host` (default: the backend's address,
    /// as "ip:port", IPv6 in brackets), `Connection: close`,
    /// `User-Agent: failover-health`; healthy when the status code is in
    /// `expect_status` (inclusive ranges; the caller always passes at least
    /// one range, an empty list means 200–399) and, if `expect_body` is set,
    /// the body contains it.
    ///
    /// The head and the body may each be at most [`HTTP_MAX_RESPONSE`]
    /// bytes: a larger body is an unhealthy result ("http 200 but the body
    /// exceeds 64 KiB"). The body ends where its `Content-Length` or chunked
    /// encoding says, else at close; without `expect_body` reading stops
    /// after the header. A chunked body is decoded before it is searched.
    Http {
        path: String,
        host: Option<String>,
        expect_status: Vec<(u16, u16)>,
        expect_body: Option<String>,
    },
    /// Send `payload` in one datagram from an ephemeral socket connected to
    /// the backend; healthy on a reply (any reply if `expect` is None, else a
    /// reply containing `expect` as a byte substring; the first reply decides).
    /// An ICMP port unreachable (ECONNREFUSED on the connected socket) is an
    /// immediate failure.
    Udp {
        payload: Vec<u8>,
        expect: Option<Vec<u8>>,
    },
    /// Run `command[0]` with `command[1..]` as arguments, directly (NO shell,
    /// no interpolation; `command[0]` is looked up in `PATH` unless it has a
    /// slash), stdin null, stdout/stderr captured (the first
    /// [`EXEC_MAX_CAPTURE`] bytes of each are kept for the detail); healthy
    /// on exit status 0. Environment added: `FAILOVER_SERVICE`,
    /// `FAILOVER_BACKEND`, `FAILOVER_ADDRESS` (ip only), `FAILOVER_PORT`,
    /// `FAILOVER_TARGET` ("ip:port", IPv6 in brackets). On timeout the child
    /// is killed (explicitly, and by `kill_on_drop`) and the probe fails; its
    /// own children, if any, are not.
    Exec { command: Vec<String> },
    /// PostgreSQL over a connection kept between probes: healthy when the
    /// server is in `role` (`postgres.rs`).
    Postgres {
        role: PgRole,
        user: String,
        database: String,
        password: Option<Password>,
    },
}

/// Whom a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub service: String,
    pub backend: String,
    pub addr: SocketAddr,
}

/// One probe's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub ok: bool,
    /// Time from the start of the probe to its result (also on failure /
    /// timeout).
    pub latency: Duration,
    /// Short human/machine-readable reason, e.g. "connected", "connection
    /// refused", "timeout after 50ms", "http 503", "http 200 but body lacks
    /// \"ok\"", "udp reply", "udp no reply (timeout)", "exit 0",
    /// "exit 3: <first stderr line>".
    pub detail: String,
}

/// A check's verdict before timing: `Ok(detail)` healthy, `Err(detail)` not.
type Check = Result<String, String>;

/// Runs one probe with an overall `timeout` (connect + request + response all
/// within it). Never panics, never blocks the runtime (only async I/O; the
/// exec probe uses tokio::process).
pub async fn probe(spec: &ProbeSpec, target: &Target, timeout: Duration) -> ProbeResult {
    let start = Instant::now();
    let check = match spec {
        ProbeSpec::Tcp => within(timeout, tcp_check(target.addr)).await,
        ProbeSpec::Http {
            path,
            host,
            expect_status,
            expect_body,
        } => {
            let host = host.clone().unwrap_or_else(|| host_port(target.addr));
            let http = http_check(
                target.addr,
                path,
                &host,
                expect_status,
                expect_body.as_deref(),
            );
            within(timeout, http).await
        }
        ProbeSpec::Udp { payload, expect } => {
            let udp = udp_check(target.addr, payload, expect.as_deref());
            tokio::time::timeout(timeout, udp)
                .await
                .unwrap_or_else(|_| Err("udp no reply (timeout)".to_string()))
        }
        ProbeSpec::Exec { command } => exec_check(command, target, start, timeout).await,
        ProbeSpec::Postgres {
            role,
            user,
            database,
            password,
        } => {
            let pg = pg_check(target.addr, *role, user, database, password.as_ref());
            within(timeout, pg).await
        }
    };
    let (ok, detail) = match check {
        Ok(detail) => (true, detail),
        Err(detail) => (false, detail),
    };
    ProbeResult {
        ok,
        latency: start.elapsed(),
        detail,
    }
}

/// `addr` as "ip:port", IPv6 in brackets (no zone id): the default HTTP
/// `Host` and `FAILOVER_TARGET`.
pub fn host_port(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// Runs `check`, turning an expired `timeout` into "timeout after ...".
async fn within(timeout: Duration, check: impl Future<Output = Check>) -> Check {
    tokio::time::timeout(timeout, check)
        .await
        .unwrap_or_else(|_| Err(format!("timeout after {timeout:?}")))
}

// ---------------------------------------------------------------- helpers

/// A short reason for an I/O error.
fn io_detail(e: &io::Error) -> String {
    use io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".to_string(),
        K::ConnectionReset => "connection reset".to_string(),
        K::ConnectionAborted => "connection aborted".to_string(),
        K::HostUnreachable => "host unreachable".to_string(),
        K::NetworkUnreachable => "network unreachable".to_string(),
        K::AddrNotAvailable => "address not available".to_string(),
        _ => e.to_string(),
    }
}

/// Whether `needle` occurs in `haystack` (an empty needle always does).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// `s` cut to [`DETAIL_PIECE_MAX`] characters, with "…" if cut.
fn clip(s: &str) -> String {
    match s.char_indices().nth(DETAIL_PIECE_MAX) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests;
