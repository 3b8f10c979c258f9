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
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    process::Command,
    time::Instant,
};

use crate::exec::{self, Ended};

/// Most bytes of an HTTP response read (header and body together).
pub const HTTP_MAX_RESPONSE: usize = 64 * 1024;
/// Most bytes of an exec check's stdout and of its stderr kept for the detail.
pub const EXEC_MAX_CAPTURE: usize = exec::OUTPUT_CAP;
/// Receive buffer of a UDP check: the largest possible datagram.
const UDP_MAX_DATAGRAM: usize = 64 * 1024;
/// Longest chunk-size or trailer line accepted in a chunked HTTP body.
const CHUNK_LINE_MAX: usize = 1024;
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
    /// At most [`HTTP_MAX_RESPONSE`] bytes are read. The body ends where its
    /// `Content-Length` or chunked encoding says, else at close or the size
    /// limit; without `expect_body` reading stops after the header. A chunked
    /// body is decoded before it is searched.
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

// ---------------------------------------------------------------- TCP

/// Healthy when a TCP connection to `addr` is established.
async fn tcp_check(addr: SocketAddr) -> Check {
    TcpStream::connect(addr).await.map_err(|e| io_detail(&e))?;
    Ok("connected".to_string())
}

// ---------------------------------------------------------------- HTTP

/// One GET request; judged on the status code and optionally the body.
async fn http_check(
    addr: SocketAddr,
    path: &str,
    host: &str,
    expect_status: &[(u16, u16)],
    expect_body: Option<&str>,
) -> Check {
    let request = http_request(path, host)?;
    let mut stream = TcpStream::connect(addr).await.map_err(|e| io_detail(&e))?;
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("http send: {}", io_detail(&e)))?;
    let response = read_response(&mut stream, expect_body.is_some()).await?;
    judge_http(&response, expect_status, expect_body)
}

/// The request bytes; refuses a path or host that would break the request.
fn http_request(path: &str, host: &str) -> Result<String, String> {
    let path = if path.is_empty() { "/" } else { path };
    let bad = |s: &str| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control());
    if bad(path) {
        return Err(format!("http: invalid path {:?}", clip(path)));
    }
    if bad(host) {
        return Err(format!("http: invalid Host {:?}", clip(host)));
    }
    Ok(format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         User-Agent: failover-health\r\nAccept: */*\r\n\r\n"
    ))
}

/// What was read of a response.
#[derive(Debug)]
struct Response {
    status: u16,
    /// The body (decoded if chunked), as far as it was read.
    body: Vec<u8>,
}

/// A parsed response header.
#[derive(Debug)]
struct Head {
    status: u16,
    /// Offset of the first body byte in the response.
    body_start: usize,
    framing: Framing,
}

/// How the end of a response body is found.
#[derive(Debug)]
enum Framing {
    /// No body (1xx, 204, 304).
    Empty,
    /// `Content-Length`.
    Length(usize),
    /// `Transfer-Encoding: chunked`, decoded as it arrives.
    Chunked(Dechunker),
    /// Until the server closes (or the size limit).
    UntilClose,
}

/// Reads a response until its header (and, with `need_body`, its body) is
/// complete, the server closes, or [`HTTP_MAX_RESPONSE`] bytes were read.
async fn read_response<S: AsyncRead + Unpin>(
    stream: &mut S,
    need_body: bool,
) -> Result<Response, String> {
    let mut raw = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let mut head: Option<Head> = None;
    let mut scanned = 0;
    while raw.len() < HTTP_MAX_RESPONSE {
        let want = chunk.len().min(HTTP_MAX_RESPONSE - raw.len());
        let n = match stream.read(&mut chunk[..want]).await {
            Ok(n) => n,
            // A reset after the header (the server closed without reading
            // our request, say) ends the response like a close does.
            Err(_) if head.is_some() => break,
            Err(e) => return Err(format!("http read: {}", io_detail(&e))),
        };
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if head.is_none() {
            let sniff = raw.len().min(5);
            if raw[..sniff] != b"HTTP/"[..sniff] {
                return Err(format!("http: malformed response {:?}", first_line(&raw)));
            }
            match find_head_end(&raw, scanned) {
                Some(end) => head = Some(parse_head(&raw[..end], end)?),
                None => {
                    scanned = raw.len().saturating_sub(2);
                    continue;
                }
            }
        }
        if let Some(h) = &mut head
            && (!need_body || body_complete(h, &raw)?)
        {
            break;
        }
    }
    let Some(mut head) = head else {
        return Err(if raw.is_empty() {
            "http: connection closed without response".to_string()
        } else if raw.len() >= HTTP_MAX_RESPONSE {
            format!(
                "http: response header exceeds {} KiB",
                HTTP_MAX_RESPONSE / 1024
            )
        } else {
            format!("http: truncated response header {:?}", first_line(&raw))
        });
    };
    let body = if need_body {
        take_body(&mut head, &raw)?
    } else {
        Vec::new()
    };
    Ok(Response {
        status: head.status,
        body,
    })
}

/// Whether the body behind `head` is complete in `raw`.
fn body_complete(head: &mut Head, raw: &[u8]) -> Result<bool, String> {
    let body = raw.get(head.body_start..).unwrap_or_default();
    Ok(match &mut head.framing {
        Framing::Empty => true,
        Framing::Length(n) => body.len() >= *n,
        Framing::Chunked(d) => {
            d.feed(body)?;
            d.is_done()
        }
        Framing::UntilClose => false,
    })
}

/// The body behind `head` in `raw`, as far as it was received.
fn take_body(head: &mut Head, raw: &[u8]) -> Result<Vec<u8>, String> {
    let body = raw.get(head.body_start..).unwrap_or_default();
    Ok(match &mut head.framing {
        Framing::Empty => Vec::new(),
        Framing::Length(n) => body[..body.len().min(*n)].to_vec(),
        Framing::Chunked(d) => {
            d.feed(body)?;
            std::mem::take(&mut d.body)
        }
        Framing::UntilClose => body.to_vec(),
    })
}

/// Offset just past the blank line ending the header, searching for line
/// ends from `from`; accepts bare `\n` line ends too.
fn find_head_end(raw: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(off) = raw.get(i..)?.iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match raw.get(nl + 1..) {
            Some([b'\n', ..]) => return Some(nl + 2),
            Some([b'\r', b'\n', ..]) => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// Parses the status line and the headers that frame the body.
fn parse_head(head: &[u8], body_start: usize) -> Result<Head, String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let status = parse_status_line(status_line)
        .ok_or_else(|| format!("http: malformed status line {:?}", clip(status_line)))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<usize>()
                .map_err(|_| format!("http: invalid Content-Length {:?}", clip(value)))?;
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked only counts as the last coding applied.
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    let framing = match (status, chunked, length) {
        (100..=199 | 204 | 304, _, _) => Framing::Empty,
        (_, true, _) => Framing::Chunked(Dechunker::default()),
        (_, false, Some(n)) => Framing::Length(n),
        (_, false, None) => Framing::UntilClose,
    };
    Ok(Head {
        status,
        body_start,
        framing,
    })
}

/// The code from "HTTP/x.y NNN reason", if the line is one.
fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok().filter(|c| *c >= 100)
}

/// The verdict on a response.
fn judge_http(
    response: &Response,
    expect_status: &[(u16, u16)],
    expect_body: Option<&str>,
) -> Check {
    let code = response.status;
    let ranges = if expect_status.is_empty() {
        DEFAULT_STATUS
    } else {
        expect_status
    };
    if !ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&code)) {
        return Err(format!("http {code}"));
    }
    if let Some(needle) = expect_body
        && !contains(&response.body, needle.as_bytes())
    {
        return Err(format!("http {code} but body lacks {:?}", clip(needle)));
    }
    Ok(format!("http {code}"))
}

/// Incremental decoder of a chunked body: fed the raw body received so far
/// (which only grows), it decodes what it has not seen yet.
#[derive(Debug, Default)]
struct Dechunker {
    /// Offset in the raw body up to which it was decoded.
    pos: usize,
    state: ChunkState,
    /// Decoded bytes.
    body: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, with this many bytes to go.
    Data(usize),
    /// Expecting the line end after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to a blank one.
    Trailer,
    /// The body is complete.
    Done,
}

impl Dechunker {
    /// Decodes `raw[self.pos..]` as far as it is complete.
    fn feed(&mut self, raw: &[u8]) -> Result<(), String> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(()),
                ChunkState::Data(left) => {
                    let avail = &raw[self.pos.min(raw.len())..];
                    if avail.is_empty() {
                        return Ok(());
                    }
                    let take = left.min(avail.len());
                    self.body.extend_from_slice(&avail[..take]);
                    self.pos += take;
                    self.state = if take == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - take)
                    };
                }
                ChunkState::Size => {
                    let Some(line) = self.next_line(raw)? else {
                        return Ok(());
                    };
                    let size = parse_chunk_size(line)?;
                    self.state = if size == 0 {
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::DataEnd => {
                    let Some(line) = self.next_line(raw)? else {
                        return Ok(());
                    };
                    if !line.is_empty() {
                        return Err(
                            "http: malformed chunked body (data overruns chunk)".to_string()
                        );
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    let Some(line) = self.next_line(raw)? else {
                        return Ok(());
                    };
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }

    /// The next complete line (without its line end), consuming it.
    fn next_line<'a>(&mut self, raw: &'a [u8]) -> Result<Option<&'a [u8]>, String> {
        let rest = raw.get(self.pos..).unwrap_or_default();
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.pos += i + 1;
                let line = &rest[..i];
                Ok(Some(line.strip_suffix(b"\r").unwrap_or(line)))
            }
            None if rest.len() > CHUNK_LINE_MAX => {
                Err("http: malformed chunked body (line too long)".to_string())
            }
            None => Ok(None),
        }
    }

    fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// The size from a chunk-size line ("1a" or "1a;ext=v").
fn parse_chunk_size(line: &[u8]) -> Result<usize, String> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    std::str::from_utf8(digits)
        .ok()
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|d| usize::from_str_radix(d, 16).ok())
        .ok_or_else(|| {
            format!(
                "http: malformed chunked body (chunk size {:?})",
                clip(&String::from_utf8_lossy(line))
            )
        })
}

// ---------------------------------------------------------------- UDP

/// One datagram out, the first reply judged.
async fn udp_check(addr: SocketAddr, payload: &[u8], expect: Option<&[u8]>) -> Check {
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| udp_error("bind", &e))?;
    socket
        .connect(addr)
        .await
        .map_err(|e| udp_error("connect", &e))?;
    socket
        .send(payload)
        .await
        .map_err(|e| udp_error("send", &e))?;
    let mut buf = vec![0u8; UDP_MAX_DATAGRAM];
    let n = socket
        .recv(&mut buf)
        .await
        .map_err(|e| udp_error("recv", &e))?;
    match expect {
        Some(want) if !contains(&buf[..n], want) => Err(format!(
            "udp reply lacks {:?}",
            clip(&String::from_utf8_lossy(want))
        )),
        _ => Ok("udp reply".to_string()),
    }
}

/// The detail for a failed UDP socket operation.
fn udp_error(op: &str, e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        "connection refused (port unreachable)".to_string()
    } else {
        format!("udp {op}: {}", io_detail(e))
    }
}

// ---------------------------------------------------------------- exec

/// Runs the command; healthy on exit status 0. `start` is the probe's start,
/// from which `timeout` counts.
async fn exec_check(
    command: &[String],
    target: &Target,
    start: Instant,
    timeout: Duration,
) -> Check {
    let Some((program, args)) = command.split_first() else {
        return Err("exec: empty command".to_string());
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("FAILOVER_SERVICE", &target.service)
        .env("FAILOVER_BACKEND", &target.backend)
        .env("FAILOVER_ADDRESS", target.addr.ip().to_string())
        .env("FAILOVER_PORT", target.addr.port().to_string())
        .env("FAILOVER_TARGET", host_port(target.addr));
    // The shared runner: its own process group, killed whole at the
    // deadline (a timed-out `sh -c` leaves no children behind).
    let o = exec::run(cmd, None, timeout.saturating_sub(start.elapsed()))
        .await
        .map_err(|e| format!("exec {:?}: {e}", clip(program)))?;
    match o.ended {
        Ended::Exited(status) => exit_verdict(status, &o.stdout, &o.stderr),
        Ended::WaitFailed(e) => Err(format!("exec: waiting for {:?} failed: {e}", clip(program))),
        Ended::TimedOut => Err(format!("timeout after {timeout:?} (killed)")),
    }
}

/// "exit 0", or why not, with the first line of output.
fn exit_verdict(status: ExitStatus, out: &[u8], err: &[u8]) -> Check {
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
fn first_kept_line(kept: &[u8]) -> Option<String> {
    String::from_utf8_lossy(kept)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(clip)
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

/// The first line of `raw`, lossily decoded and clipped, for details.
fn first_line(raw: &[u8]) -> String {
    let line = raw.split(|&b| b == b'\n').next().unwrap_or_default();
    clip(String::from_utf8_lossy(line).trim_end())
}

/// `s` cut to [`DETAIL_PIECE_MAX`] characters, with "…" if cut.
fn clip(s: &str) -> String {
    match s.char_indices().nth(DETAIL_PIECE_MAX) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV6;

    use tokio::{
        io::AsyncWriteExt,
        net::{TcpListener, TcpStream},
        task::JoinHandle,
    };

    use super::*;

    /// Bound on anything a test server waits for.
    const TEST_BOUND: Duration = Duration::from_secs(5);

    fn target(addr: SocketAddr) -> Target {
        Target {
            service: "web".to_string(),
            backend: "b1".to_string(),
            addr,
        }
    }

    /// Whether this machine has IPv6 loopback (tests using it skip if not).
    fn have_ipv6() -> bool {
        std::net::TcpListener::bind("[::1]:0").is_ok()
    }

    /// A port with nothing listening: bound, then released.
    fn closed_tcp_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    fn http(path: &str, ranges: &[(u16, u16)], body: Option<&str>) -> ProbeSpec {
        ProbeSpec::Http {
            path: path.to_string(),
            host: None,
            expect_status: ranges.to_vec(),
            expect_body: body.map(str::to_string),
        }
    }

    /// What the one-connection HTTP test server does after reading the
    /// request.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum After {
        /// Writes the response and closes.
        Close,
        /// Writes the response and keeps the connection open until the
        /// client closes it (bounded).
        Hold,
    }

    /// Serves one connection on `bind` with `response`; the handle yields
    /// the request head it received.
    async fn http_server(
        bind: &str,
        response: &[u8],
        after: After,
    ) -> (SocketAddr, JoinHandle<String>) {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let response = response.to_vec();
        let handle = tokio::spawn(async move {
            let Ok(Ok((mut stream, _))) = tokio::time::timeout(TEST_BOUND, listener.accept()).await
            else {
                return String::new();
            };
            let request = read_request_head(&mut stream).await;
            let _ = stream.write_all(&response).await;
            if after == After::Hold {
                let mut sink = [0u8; 1024];
                let _ = tokio::time::timeout(TEST_BOUND, async {
                    while let Ok(n) = stream.read(&mut sink).await
                        && n > 0
                    {}
                })
                .await;
            }
            request
        });
        (addr, handle)
    }

    /// Reads up to the blank line ending a request head (bounded).
    async fn read_request_head(stream: &mut TcpStream) -> String {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        let _ = tokio::time::timeout(TEST_BOUND, async {
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        String::from_utf8_lossy(&head).into_owned()
    }

    /// A UDP server on `bind` answering each datagram with `reply(datagram)`
    /// (nothing if None), for at most `limit` datagrams.
    async fn udp_server(
        bind: &str,
        limit: usize,
        reply: fn(&[u8]) -> Option<Vec<u8>>,
    ) -> (SocketAddr, JoinHandle<()>) {
        let socket = UdpSocket::bind(bind).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let handle = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            for _ in 0..limit {
                let Ok(Ok((n, peer))) =
                    tokio::time::timeout(TEST_BOUND, socket.recv_from(&mut buf)).await
                else {
                    break;
                };
                if let Some(answer) = reply(&buf[..n]) {
                    let _ = socket.send_to(&answer, peer).await;
                }
            }
        });
        (addr, handle)
    }

    fn echo(d: &[u8]) -> Option<Vec<u8>> {
        Some(d.to_vec())
    }

    fn exec(args: &[&str]) -> ProbeSpec {
        ProbeSpec::Exec {
            command: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn sh(script: &str) -> ProbeSpec {
        exec(&["/bin/sh", "-c", script])
    }

    // ------------------------------------------------------------ TCP

    #[tokio::test]
    async fn tcp_connects_to_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = probe(
            &ProbeSpec::Tcp,
            &target(listener.local_addr().unwrap()),
            Duration::from_secs(2),
        )
        .await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.detail, "connected");
        assert!(r.latency < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn tcp_refused_on_closed_port() {
        let r = probe(
            &ProbeSpec::Tcp,
            &target(closed_tcp_port()),
            Duration::from_secs(2),
        )
        .await;
        assert!(!r.ok, "{r:?}");
        assert!(r.detail.contains("refused"), "{r:?}");
    }

    #[tokio::test]
    async fn tcp_ipv6_loopback() {
        if !have_ipv6() {
            eprintln!("no IPv6 loopback; skipped");
            return;
        }
        let listener = TcpListener::bind("[::1]:0").await.unwrap();
        let r = probe(
            &ProbeSpec::Tcp,
            &target(listener.local_addr().unwrap()),
            Duration::from_secs(2),
        )
        .await;
        assert!(r.ok, "{r:?}");
        let closed = listener.local_addr().unwrap();
        drop(listener);
        let r = probe(&ProbeSpec::Tcp, &target(closed), Duration::from_secs(2)).await;
        assert!(!r.ok && r.detail.contains("refused"), "{r:?}");
    }

    #[tokio::test]
    async fn tcp_repeated_probes_with_tiny_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio::spawn(async move {
            for _ in 0..200 {
                if tokio::time::timeout(TEST_BOUND, listener.accept())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let started = std::time::Instant::now();
        for i in 0..100 {
            let r = probe(&ProbeSpec::Tcp, &target(addr), Duration::from_millis(5)).await;
            assert!(r.ok, "probe {i}: {r:?}");
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        acceptor.abort();
    }

    // ------------------------------------------------------------ HTTP

    #[tokio::test]
    async fn http_ok_sends_path_host_and_headers() {
        let body = "status: ok\n";
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (addr, server) = http_server("127.0.0.1:0", resp.as_bytes(), After::Close).await;
        let r = probe(
            &http("/healthz?x=1", &[(200, 299)], Some("ok")),
            &target(addr),
            Duration::from_secs(2),
        )
        .await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.detail, "http 200");
        let request = server.await.unwrap();
        assert!(
            request.starts_with("GET /healthz?x=1 HTTP/1.1\r\n"),
            "{request:?}"
        );
        assert!(
            request.contains(&format!("\r\nHost: 127.0.0.1:{}\r\n", addr.port())),
            "{request:?}"
        );
        assert!(request.contains("\r\nConnection: close\r\n"), "{request:?}");
        assert!(
            request.contains("\r\nUser-Agent: failover-health\r\n"),
            "{request:?}"
        );
        assert!(request.ends_with("\r\n\r\n"), "{request:?}");
    }

    #[tokio::test]
    async fn http_host_override_is_sent() {
        let (addr, server) = http_server(
            "127.0.0.1:0",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            After::Close,
        )
        .await;
        let spec = ProbeSpec::Http {
            path: "/".to_string(),
            host: Some("api.example.test".to_string()),
            expect_status: vec![(200, 299)],
            expect_body: None,
        };
        let r = probe(&spec, &target(addr), Duration::from_secs(2)).await;
        assert!(r.ok, "{r:?}");
        let request = server.await.unwrap();
        assert!(request.starts_with("GET / HTTP/1.1\r\n"), "{request:?}");
        assert!(
            request.contains("\r\nHost: api.example.test\r\n"),
            "{request:?}"
        );
    }

    #[tokio::test]
    async fn http_ipv6_host_in_brackets() {
        if !have_ipv6() {
            eprintln!("no IPv6 loopback; skipped");
            return;
        }
        let (addr, server) = http_server(
            "[::1]:0",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            After::Close,
        )
        .await;
        let r = probe(
            &http("/", &[(200, 299)], None),
            &target(addr),
            Duration::from_secs(2),
        )
        .await;
        assert!(r.ok, "{r:?}");
        let request = server.await.unwrap();
        assert!(
            request.contains(&format!("\r\nHost: [::1]:{}\r\n", addr.port())),
            "{request:?}"
        );
    }

    #[tokio::test]
    async fn http_503_fails() {
        let resp = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown";
        let (addr, _server) = http_server("127.0.0.1:0", resp, After::Close).await;
        let r = probe(
            &http("/", &[(200, 399)], None),
            &target(addr),
            Duration::from_secs(2),
        )
        .await;
        assert!(!r.ok, "{r:?}");
        assert_eq!(r.detail, "http 503");
    }

    #[tokio::test]
    async fn http_body_lacking_expectation_fails() {
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ndegraded";
        let (addr, _server) = http_server("127.0.0.1:0", resp, After::Close).await;
        let r = probe(
            &http("/", &[(200, 299)], Some("healthy")),
            &target(addr),
            Duration::from_secs(2),
        )
        .await;
        assert!(!r.ok, "{r:?}");
        assert_eq!(r.detail, "http 200 but body lacks \"healthy\"");
    }

    #[tokio::test]
    async fn http_custom_status_ranges() {
        let ranges = [(200, 299), (301, 301)];
        for (code, ok) in [
            (200, true),
            (204, true),
            (301, true),
            (302, false),
            (404, false),
        ] {
            let resp = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
            let (addr, _server) = http_server("127.0.0.1:0", resp.as_bytes(), After::Close).await;
            let r = probe(
                &http("/", &ranges, None),
                &target(addr),
                Duration::from_secs(2),
            )
            .await;
            assert_eq!(r.ok, ok, "{code}: {r:?}");
            assert_eq!(r.detail, format!("http {code}"));
        }
    }

    #[tokio::test]
    async fn http_empty_ranges_mean_200_to_399() {
        for (code, ok) in [(200, true), (399, true), (400, false)] {
            let resp = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
            let (addr, _server) = http_server("127.0.0.1:0", resp.as_bytes(), After::Close).await;
            let r = probe(&http("/", &[], None), &target(addr), Duration::from_secs(2)).await;
            assert_eq!(r.ok, ok, "{code}: {r:?}");
        }
    }

    #[tokio::test]
    async fn http_garbage_fails_fast() {
        for after in [After::Close, After::Hold] {
            let (addr, _server) =
                http_server("127.0.0.1:0", b"SSH-2.0-OpenSSH_9.6\r\n", after).await;
            let r = probe(
                &http("/", &[(200, 299)], None),
                &target(addr),
                Duration::from_secs(2),
            )
            .await;
            assert!(!r.ok, "{r:?}");
            assert!(r.detail.contains("malformed"), "{r:?}");
            assert!(r.latency < Duration::from_secs(1), "{r:?}");
        }
        let bad_status = b"HTTP/1.1 2xx OK\r\n\r\n";
        let (addr, _server) = http_server("127.0.0.1:0", bad_status, After::Close).await;
        let r = probe(
            &http("/", &[(200, 299)], None),
            &target(addr),
            Duration::from_secs(2),
        )
        .await;
        assert!(!r.ok && r.detail.contains("malformed status line"), "{r:?}");
    }

    #[tokio::test]
    async fn http_closed_without_response_or_refused() {
        let (addr, _server) = http_server("127.0.0.1:0", b"", After::Close).await;
        let r = probe(
            &http("/", &[(200, 299)], None),
            &target(addr),
            Duration::from_secs(2),
        )
        .await;
        assert!(!r.ok, "{r:?}");
        assert!(
            r.detail.contains("without response") || r.detail.contains("reset"),
            "{r:?}"
        );

        let r = probe(
            &http("/", &[(200, 299)], None),
            &target(closed_tcp_port()),
            Duration::from_secs(2),
        )
        .await;
        assert!(!r.ok && r.detail.contains("refused"), "{r:?}");
    }

    #[tokio::test]
    async fn http_timeout_when_server_never_answers() {
        for ms in [50, 5] {
            let timeout = Duration::from_millis(ms);
            let (addr, _server) = http_server("127.0.0.1:0", b"", After::Hold).await;
            let r = probe(&http("/", &[(200, 299)], None), &target(addr), timeout).await;
            assert!(!r.ok, "{r:?}");
            assert_eq!(r.detail, format!("timeout after {timeout:?}"));
            assert!(r.latency >= timeout, "{r:?}");
            assert!(r.latency < Duration::from_secs(1), "{r:?}");
        }
    }

    #[tokio::test]
    async fn http_content_length_ends_body_on_open_connection() {
        // The server ignores `Connection: close`; the probe must not wait.
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok";
        let (addr, _server) = http_server("127.0.0.1:0", resp, After::Hold).await;
        let r = probe(
            &http("/", &[(200, 299)], Some("ok")),
            &target(addr),
            Duration::from_secs(2),
        )
        .await;
        assert!(r.ok, "{r:?}");
        assert!(r.latency < Duration::from_secs(1), "{r:?}");
    }

    #[tokio::test]
    async fn http_chunked_body_decoded_on_open_connection() {
        let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                     3;ext=1\r\nsta\r\n6\r\ntus=ok\r\n0\r\nX-Trailer: t\r\n\r\n";
        let (addr, _server) = http_server("127.0.0.1:0", resp, After::Hold).await;
        // "status=ok" only appears once the chunks are joined.
        let r = probe(
            &http("/", &[(200, 299)], Some("status=ok")),
            &target(addr),
            Duration::from_secs(2),
        )
        .await;
        assert!(r.ok, "{r:?}");
        assert!(r.latency < Duration::from_secs(1), "{r:?}");
    }

    #[tokio::test]
    async fn http_without_body_expectation_stops_after_header() {
        // Header announces a body that never comes: irrelevant without expect_body.
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
        let (addr, _server) = http_server("127.0.0.1:0", resp, After::Hold).await;
        let r = probe(
            &http("/", &[(200, 299)], None),
            &target(addr),
            Duration::from_secs(2),
        )
        .await;
        assert!(r.ok, "{r:?}");
        assert!(r.latency < Duration::from_secs(1), "{r:?}");
    }

    #[tokio::test]
    async fn http_reads_at_most_64k() {
        let mut resp = b"HTTP/1.1 200 OK\r\n\r\nhead-marker".to_vec();
        resp.extend(std::iter::repeat_n(b'a', 70 * 1024));
        resp.extend_from_slice(b"tail-marker");
        for (needle, ok) in [("head-marker", true), ("tail-marker", false)] {
            let (addr, _server) = http_server("127.0.0.1:0", &resp, After::Hold).await;
            let r = probe(
                &http("/", &[(200, 299)], Some(needle)),
                &target(addr),
                Duration::from_secs(2),
            )
            .await;
            assert_eq!(r.ok, ok, "{needle}: {r:?}");
            assert!(r.latency < Duration::from_secs(1), "{r:?}");
        }
    }

    #[tokio::test]
    async fn http_body_until_close() {
        let resp = b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nall good";
        let (addr, _server) = http_server("127.0.0.1:0", resp, After::Close).await;
        let r = probe(
            &http("/", &[(200, 299)], Some("good")),
            &target(addr),
            Duration::from_secs(2),
        )
        .await;
        assert!(r.ok, "{r:?}");
    }

    #[tokio::test]
    async fn http_bad_path_is_refused_before_sending() {
        let addr = closed_tcp_port();
        let r = probe(
            &http("/a b\r\nX: y", &[(200, 299)], None),
            &target(addr),
            Duration::from_secs(1),
        )
        .await;
        assert!(!r.ok && r.detail.contains("invalid path"), "{r:?}");
    }

    #[test]
    fn dechunker_any_split() {
        let raw = b"4\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n";
        for split in 0..=raw.len() {
            let mut d = Dechunker::default();
            d.feed(&raw[..split]).unwrap();
            assert_eq!(d.is_done(), split == raw.len(), "split {split}");
            d.feed(raw).unwrap();
            assert!(d.is_done());
            assert_eq!(d.body, b"Wikipedia in\r\n\r\nchunks.");
        }
        let mut d = Dechunker::default();
        assert!(d.feed(b"zz\r\n").is_err());
        let mut d = Dechunker::default();
        assert!(d.feed(b"2\r\nabc\r\n").is_err());
    }

    #[test]
    fn status_lines_and_head_end() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status_line("HTTP/1.0 404"), Some(404));
        assert_eq!(parse_status_line("HTTP/1.1 20 OK"), None);
        assert_eq!(parse_status_line("HTTP/1.1 099 X"), None);
        assert_eq!(parse_status_line("ICY 200 OK"), None);
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n\r\nbody", 0), Some(19));
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\n\nbody", 0), Some(17));
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n", 0), None);
    }

    #[test]
    fn host_port_brackets_ipv6_without_zone() {
        assert_eq!(host_port("127.0.0.1:80".parse().unwrap()), "127.0.0.1:80");
        assert_eq!(host_port("[::1]:8080".parse().unwrap()), "[::1]:8080");
        let scoped = SocketAddrV6::new("fe80::1".parse().unwrap(), 80, 0, 3);
        assert_eq!(host_port(scoped.into()), "[fe80::1]:80");
    }

    // ------------------------------------------------------------ UDP

    #[tokio::test]
    async fn udp_echo_is_healthy() {
        let (addr, server) = udp_server("127.0.0.1:0", 10, echo).await;
        let spec = ProbeSpec::Udp {
            payload: b"ping".to_vec(),
            expect: None,
        };
        let r = probe(&spec, &target(addr), Duration::from_secs(2)).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.detail, "udp reply");
        server.abort();
    }

    #[tokio::test]
    async fn udp_expect_substring() {
        let (addr, server) =
            udp_server("127.0.0.1:0", 10, |_| Some(b"+PONG ready\r\n".to_vec())).await;
        let want = |e: &[u8]| ProbeSpec::Udp {
            payload: b"PING".to_vec(),
            expect: Some(e.to_vec()),
        };
        let r = probe(&want(b"PONG"), &target(addr), Duration::from_secs(2)).await;
        assert!(r.ok, "{r:?}");
        let r = probe(&want(b"NOPE"), &target(addr), Duration::from_secs(2)).await;
        assert!(!r.ok, "{r:?}");
        assert_eq!(r.detail, "udp reply lacks \"NOPE\"");
        server.abort();
    }

    #[tokio::test]
    async fn udp_closed_port_fails_quickly() {
        let addr = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let spec = ProbeSpec::Udp {
            payload: b"ping".to_vec(),
            expect: None,
        };
        let r = probe(&spec, &target(addr), Duration::from_millis(500)).await;
        assert!(!r.ok, "{r:?}");
        assert!(
            r.detail.contains("refused") || r.detail.contains("timeout"),
            "{r:?}"
        );
        assert!(r.latency < Duration::from_millis(1500), "{r:?}");
    }

    #[tokio::test]
    async fn udp_silent_server_times_out() {
        let (addr, server) = udp_server("127.0.0.1:0", 10, |_| None).await;
        let spec = ProbeSpec::Udp {
            payload: b"ping".to_vec(),
            expect: None,
        };
        let timeout = Duration::from_millis(50);
        let r = probe(&spec, &target(addr), timeout).await;
        assert!(!r.ok, "{r:?}");
        assert_eq!(r.detail, "udp no reply (timeout)");
        assert!(
            r.latency >= timeout && r.latency < Duration::from_secs(1),
            "{r:?}"
        );
        server.abort();
    }

    #[tokio::test]
    async fn udp_repeated_and_ipv6() {
        let (addr, server) = udp_server("127.0.0.1:0", 100, echo).await;
        let spec = ProbeSpec::Udp {
            payload: Vec::new(),
            expect: None,
        };
        for i in 0..50 {
            let r = probe(&spec, &target(addr), Duration::from_millis(50)).await;
            assert!(r.ok, "probe {i}: {r:?}");
        }
        server.abort();
        if have_ipv6() {
            let (addr, server) = udp_server("[::1]:0", 10, echo).await;
            let spec = ProbeSpec::Udp {
                payload: b"v6".to_vec(),
                expect: Some(b"v6".to_vec()),
            };
            let r = probe(&spec, &target(addr), Duration::from_secs(2)).await;
            assert!(r.ok, "{r:?}");
            server.abort();
        }
    }

    // ------------------------------------------------------------ exec

    const ENV_CHECK: &str = r#"
        test "$FAILOVER_SERVICE" = web || { echo "service=$FAILOVER_SERVICE" >&2; exit 1; }
        test "$FAILOVER_BACKEND" = b1 || { echo "backend=$FAILOVER_BACKEND" >&2; exit 1; }
        test "$FAILOVER_ADDRESS" = "$1" || { echo "address=$FAILOVER_ADDRESS" >&2; exit 1; }
        test "$FAILOVER_PORT" = 8080 || { echo "port=$FAILOVER_PORT" >&2; exit 1; }
        test "$FAILOVER_TARGET" = "$2" || { echo "target=$FAILOVER_TARGET" >&2; exit 1; }
    "#;

    #[tokio::test]
    async fn exec_success_sees_failover_env() {
        for (addr, ip, tgt) in [
            ("127.0.0.1:8080", "127.0.0.1", "127.0.0.1:8080"),
            ("[::1]:8080", "::1", "[::1]:8080"),
        ] {
            let spec = exec(&["/bin/sh", "-c", ENV_CHECK, "sh", ip, tgt]);
            let r = probe(
                &spec,
                &target(addr.parse().unwrap()),
                Duration::from_secs(5),
            )
            .await;
            assert!(r.ok, "{addr}: {r:?}");
            assert_eq!(r.detail, "exit 0");
        }
        // The same check fails for the wrong target, with the reason.
        let spec = exec(&[
            "/bin/sh",
            "-c",
            ENV_CHECK,
            "sh",
            "127.0.0.1",
            "127.0.0.1:8080",
        ]);
        let r = probe(
            &spec,
            &target("127.0.0.2:8080".parse().unwrap()),
            Duration::from_secs(5),
        )
        .await;
        assert!(!r.ok, "{r:?}");
        assert_eq!(r.detail, "exit 1: address=127.0.0.2");
    }

    #[tokio::test]
    async fn exec_arguments_are_not_interpolated() {
        let spec = exec(&[
            "/bin/sh",
            "-c",
            r#"test "$1" = '$FAILOVER_SERVICE;`x`'"#,
            "sh",
            "$FAILOVER_SERVICE;`x`",
        ]);
        let r = probe(
            &spec,
            &target("127.0.0.1:1".parse().unwrap()),
            Duration::from_secs(5),
        )
        .await;
        assert!(r.ok, "{r:?}");
    }

    #[tokio::test]
    async fn exec_exit_3_reports_first_stderr_line() {
        let spec = sh("echo out; echo; echo '  boom  ' >&2; echo second >&2; exit 3");
        let r = probe(
            &spec,
            &target("127.0.0.1:1".parse().unwrap()),
            Duration::from_secs(5),
        )
        .await;
        assert!(!r.ok, "{r:?}");
        assert_eq!(r.detail, "exit 3: boom");
        // Without stderr, the first stdout line stands in.
        let r = probe(
            &sh("echo only-out; exit 4"),
            &target("127.0.0.1:1".parse().unwrap()),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(r.detail, "exit 4: only-out");
        let r = probe(
            &sh("exit 5"),
            &target("127.0.0.1:1".parse().unwrap()),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(r.detail, "exit 5");
    }

    #[tokio::test]
    async fn exec_killed_by_signal() {
        let r = probe(
            &sh("kill -9 $$"),
            &target("127.0.0.1:1".parse().unwrap()),
            Duration::from_secs(5),
        )
        .await;
        assert!(!r.ok, "{r:?}");
        assert_eq!(r.detail, "killed by signal 9");
    }

    /// Whether process `pid` still runs (absent or a zombie: it does not).
    fn running(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().next().map(str::to_string))
            })
            .is_some_and(|state| state != "Z" && state != "X")
    }

    /// A timed-out `sh -c` probe leaves nothing running: what it started
    /// goes with it (its process group is killed).
    #[tokio::test]
    async fn exec_timeout_kills_the_whole_process_group() {
        let dir = std::env::temp_dir().join(format!("failover-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("grandchild.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let r = probe(
            &sh(&script),
            &target("127.0.0.1:1".parse().unwrap()),
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(r.detail, "timeout after 300ms (killed)", "{r:?}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("the script wrote its background child's pid")
            .trim()
            .parse()
            .expect("a pid");
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while running(pid) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let alive = running(pid);
        if alive {
            // SAFETY: a signal to the process this test's script started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            !alive,
            "the probe's background child {pid} outlived its timeout"
        );
    }

    #[tokio::test]
    async fn exec_timeout_kills_child() {
        let timeout = Duration::from_millis(100);
        let r = probe(
            &exec(&["sleep", "5"]),
            &target("127.0.0.1:1".parse().unwrap()),
            timeout,
        )
        .await;
        assert!(!r.ok, "{r:?}");
        assert_eq!(r.detail, "timeout after 100ms (killed)");
        assert!(
            r.latency >= timeout && r.latency < Duration::from_secs(1),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn exec_missing_program() {
        let r = probe(
            &exec(&["/nonexistent/failover-check", "x"]),
            &target("127.0.0.1:1".parse().unwrap()),
            Duration::from_secs(1),
        )
        .await;
        assert!(!r.ok, "{r:?}");
        assert!(
            r.detail
                .starts_with("exec \"/nonexistent/failover-check\": "),
            "{r:?}"
        );
        assert!(r.detail.contains("No such file"), "{r:?}");
        let r = probe(
            &exec(&[]),
            &target("127.0.0.1:1".parse().unwrap()),
            Duration::from_secs(1),
        )
        .await;
        assert!(!r.ok && r.detail == "exec: empty command", "{r:?}");
    }

    #[tokio::test]
    async fn exec_large_output_does_not_block() {
        // 1 MiB on each pipe, far beyond a pipe buffer and the capture.
        let spec = sh("head -c 1048576 /dev/zero; head -c 1048576 /dev/zero >&2; exit 0");
        let r = probe(
            &spec,
            &target("127.0.0.1:1".parse().unwrap()),
            Duration::from_secs(5),
        )
        .await;
        assert!(r.ok, "{r:?}");
    }

    #[tokio::test]
    async fn exec_background_grandchild_does_not_hold_result() {
        // The grandchild keeps stdout/stderr open; the exit status decides.
        let spec = sh("sleep 2 & echo bye >&2; exit 6");
        let r = probe(
            &spec,
            &target("127.0.0.1:1".parse().unwrap()),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(r.detail, "exit 6: bye");
        assert!(r.latency < Duration::from_millis(1500), "{r:?}");
    }

    #[tokio::test]
    async fn probes_run_concurrently() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let t = target(addr);
        let (slow, quick) = (exec(&["sleep", "5"]), sh("exit 0"));
        let (a, b, c) = tokio::join!(
            probe(&ProbeSpec::Tcp, &t, Duration::from_secs(1)),
            probe(&slow, &t, Duration::from_millis(20)),
            probe(&quick, &t, Duration::from_secs(5)),
        );
        assert!(a.ok && !b.ok && c.ok, "{a:?} {b:?} {c:?}");
    }
}
