//! A small HTTP/1.1 server core for the daemon's admin API (unix socket, optionally TCP) and the
//! Prometheus metrics endpoint, plus a minimal one-shot client for the CLI and tests.
//!
//! Deliberately narrow:
//! - one request at a time per connection; keep-alive by default for HTTP/1.1, closed after the
//!   response for `Connection: close` and HTTP/1.0; pipelined requests are served in order;
//! - request bodies framed by `Content-Length` only; a `Transfer-Encoding` request gets 501;
//! - `Expect: 100-continue` is answered (or refused with 413 before the body is sent);
//! - sizes are bounded by [`Limits`]; every read and write by [`Limits::read_timeout`];
//! - malformed input gets a JSON error (`{"error": ..., "status": ...}`) and the connection is
//!   closed; the server never panics on input;
//! - each handler call runs in its own task, so a panicking handler yields a 500 and the server
//!   keeps serving.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::{Instant, timeout_at};
use tracing::{debug, error, warn};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 8 * 1024;
/// Header fields accepted per request (beyond that: 431).
const MAX_HEADER_FIELDS: usize = 100;
/// Longest method token accepted.
const MAX_METHOD_LEN: usize = 32;
/// After the last response on a connection, how long to keep draining client input so that the
/// kernel does not turn unread data into a RST that could destroy the response in flight.
const LINGER: Duration = Duration::from_secs(1);
/// At most this much client input is drained while lingering.
const LINGER_MAX_BYTES: usize = 256 * 1024;
/// Pause after a non-transient accept error (EMFILE and friends) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Connections above `max_connections` that may concurrently be sent their 503.
const MIN_REJECT_TASKS: usize = 16;
/// The client's limits on a response.
const CLIENT_MAX_HEAD_BYTES: usize = 64 * 1024;
const CLIENT_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// One parsed request, as handed to a [`Handler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method token as sent, e.g. "GET" (only `A-Z`, `-`, `_` are accepted).
    pub method: String,
    /// Path without the query; percent-decoding is not applied. "*" for `OPTIONS *`.
    pub path: String,
    /// The part after the first '?', if any (possibly empty).
    pub query: Option<String>,
    /// Header fields in arrival order, names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// "unix" or "ip:port", for logs.
    pub peer: String,
}

impl Request {
    /// The first header field called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A response. The server adds `Content-Length` (except on 204), `Content-Type` and, when it
/// closes the connection, `Connection: close`; entries of `headers` with those names (or
/// `Transfer-Encoding`/`Keep-Alive`) or with invalid characters are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// `application/json`, the serialised value followed by a newline.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        let mut body = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
        body.push(b'\n');
        Self {
            status,
            content_type: "application/json".to_owned(),
            body,
            headers: Vec::new(),
        }
    }

    /// `text/plain; charset=utf-8`.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8".to_owned(),
            body: body.into().into_bytes(),
            headers: Vec::new(),
        }
    }

    /// JSON `{"error": reason, "status": status}`.
    pub fn error(status: u16, reason: &str) -> Self {
        Self::json(
            status,
            &serde_json::json!({ "error": reason, "status": status }),
        )
    }

    /// Adds a header field (builder style).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Resource limits of a server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line plus header fields, terminator included; beyond that: 431.
    pub max_header_bytes: usize,
    /// Request body; a larger `Content-Length` gets 413 before any body byte is read.
    pub max_body_bytes: usize,
    /// Bound on receiving one whole request (from its first byte) -> 408; also the keep-alive
    /// idle timeout and the bound on writing one response.
    pub read_timeout: Duration,
    /// Concurrent connections; beyond that new connections get 503 and are closed.
    pub max_connections: usize,
    /// Requests per second over all connections (a burst of as many);
    /// beyond that 429 with `Retry-After`. 0: no limit.
    pub max_requests_per_sec: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_body_bytes: 64 * 1024,
            read_timeout: Duration::from_secs(5),
            max_connections: 64,
            max_requests_per_sec: 0,
        }
    }
}

/// A token bucket: `rate` tokens a second, at most `rate` saved up.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The limiter shared by a server's connections.
type Limiter = Option<Arc<std::sync::Mutex<Bucket>>>;

fn allowed(limiter: &Limiter) -> bool {
    match limiter {
        None => true,
        // A poisoned lock only means a panic elsewhere: keep limiting.
        Some(b) => match b.lock() {
            Ok(mut b) => b.take(Instant::now()),
            Err(p) => p.into_inner().take(Instant::now()),
        },
    }
}

impl Limits {
    fn normalized(self) -> Self {
        Self {
            max_connections: self.max_connections.max(1),
            read_timeout: self.read_timeout.max(Duration::from_millis(1)),
            ..self
        }
    }
}

/// A request handler: async, shared across connections.
pub type Handler =
    Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// Wraps an async closure as a [`Handler`].
pub fn handler_fn<F, Fut>(f: F) -> Handler
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

/// Serves `handler` on a TCP listener until `shutdown` turns true (a dropped sender counts as
/// shutdown). Then it stops accepting, closes idle connections, lets requests in progress finish
/// for up to `read_timeout` + 1 s, aborts the rest and returns.
pub async fn serve_tcp(
    listener: TcpListener,
    handler: Handler,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    serve(listener, handler, limits, shutdown).await;
}

/// The same as [`serve_tcp`] on a unix socket listener. Requests carry `peer == "unix"`.
pub async fn serve_unix(
    listener: UnixListener,
    handler: Handler,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    serve(listener, handler, limits, shutdown).await;
}

/// Binds a unix socket at `path` with mode 0600 (owner only). Creates the parent directory with
/// mode 0700 if it is missing (an existing one is left alone). An existing socket file at `path`
/// is replaced only if nothing listens on it; a live socket, a regular file, a directory or a
/// symlink there is an error. Must be called within a tokio runtime.
pub fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    if tokio::runtime::Handle::try_current().is_err() {
        bail!("bind_unix must be called within a tokio runtime");
    }
    let max = std::mem::size_of::<libc::sockaddr_un>()
        - std::mem::offset_of!(libc::sockaddr_un, sun_path);
    let len = path.as_os_str().as_bytes().len();
    if len == 0 || len >= max {
        bail!(
            "unix socket path {:?} must be 1 to {} bytes long, not {len}",
            path,
            max - 1
        );
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && std::fs::symlink_metadata(parent).is_err()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("creating directory {}", parent.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match probe_unix_socket(path) {
            Ok(true) => bail!(
                "unix socket {} is in use by another process",
                path.display()
            ),
            Ok(false) => match std::fs::remove_file(path) {
                Ok(()) => debug!(path = %path.display(), "removed stale unix socket"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("removing stale unix socket {}", path.display()));
                }
            },
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("checking whether unix socket {} is in use", path.display())
                });
            }
        },
        Ok(meta) => {
            let ft = meta.file_type();
            let kind = if ft.is_file() {
                "a regular file"
            } else if ft.is_dir() {
                "a directory"
            } else if ft.is_symlink() {
                "a symlink"
            } else {
                "not a socket"
            };
            bail!(
                "refusing to replace {} with a unix socket: it is {kind}",
                path.display()
            );
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding unix socket {}", path.display()))?;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        drop(listener);
        let _ = std::fs::remove_file(path);
        return Err(e).with_context(|| format!("setting mode 0600 on {}", path.display()));
    }
    Ok(listener)
}

/// Whether something listens on the unix socket at `path`, by a non-blocking connect (a full
/// backlog answers EAGAIN instead of blocking). `Ok(false)` when refused or gone.
fn probe_unix_socket(path: &Path) -> io::Result<bool> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data, for which all-zero bytes are a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unusable unix socket path",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    // SAFETY: a plain socket(2) call; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    // SAFETY: `addr` is initialised, NUL-terminated and `len` does not exceed its size.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN | libc::EINPROGRESS) => Ok(true),
        Some(libc::ECONNREFUSED | libc::ENOENT) => Ok(false),
        _ => Err(err),
    }
}

// ---------------------------------------------------------------------------------------------
// Accept loop

trait Accept {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_conn(&self) -> impl Future<Output = io::Result<(Self::Stream, String)>> + Send;
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    async fn accept_conn(&self) -> io::Result<(TcpStream, String)> {
        let (stream, addr) = self.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, addr.to_string()))
    }
}

impl Accept for UnixListener {
    type Stream = UnixStream;
    async fn accept_conn(&self) -> io::Result<(UnixStream, String)> {
        let (stream, _) = self.accept().await?;
        Ok((stream, "unix".to_owned()))
    }
}

/// Errors of accept(2) that concern only the connection being accepted.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || matches!(
        e.raw_os_error(),
        Some(
            libc::EPROTO
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
                | libc::ENETDOWN
                | libc::EPERM
        )
    )
}

fn is_shutdown(rx: &watch::Receiver<bool>) -> bool {
    *rx.borrow() || rx.has_changed().is_err()
}

/// Resolves once the value is true or the sender is gone.
async fn shutdown_signal(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

fn note_task_end(res: Result<(), JoinError>) {
    if let Err(e) = res
        && e.is_panic()
    {
        error!(panic = %describe_join_error(e), "http connection task panicked");
    }
}

async fn serve<L: Accept>(
    listener: L,
    handler: Handler,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    let limits = limits.normalized();
    let limiter: Limiter = (limits.max_requests_per_sec > 0).then(|| {
        Arc::new(std::sync::Mutex::new(Bucket::new(
            limits.max_requests_per_sec,
            Instant::now(),
        )))
    });
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let max_rejects = limits.max_connections.max(MIN_REJECT_TASKS);
    let mut conns: JoinSet<()> = JoinSet::new();
    let mut rejects: JoinSet<()> = JoinSet::new();
    let mut stop_rx = shutdown.clone();
    let stop = async move { shutdown_signal(&mut stop_rx).await };
    tokio::pin!(stop);

    loop {
        tokio::select! {
            biased;
            () = &mut stop => break,
            Some(res) = conns.join_next(), if !conns.is_empty() => note_task_end(res),
            Some(res) = rejects.join_next(), if !rejects.is_empty() => note_task_end(res),
            res = listener.accept_conn() => match res {
                Ok((stream, peer)) => match Arc::clone(&slots).try_acquire_owned() {
                    Ok(permit) => {
                        let handler = Arc::clone(&handler);
                        let rx = shutdown.clone();
                        let limiter = limiter.clone();
                        conns.spawn(async move {
                            serve_connection(stream, peer, handler, limits, limiter, rx).await;
                            drop(permit);
                        });
                    }
                    Err(_) if rejects.len() < max_rejects => {
                        rejects.spawn(reject_busy(stream, peer, limits));
                    }
                    Err(_) => {
                        debug!(%peer, "too many connections; dropping connection");
                        drop(stream);
                    }
                },
                Err(e) if is_transient_accept_error(&e) => {
                    debug!(error = %e, "http accept: transient error");
                }
                Err(e) => {
                    warn!(error = %e, "http accept failed; backing off");
                    tokio::select! {
                        biased;
                        () = &mut stop => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            },
        }
    }

    drop(listener);
    let grace = limits.read_timeout + LINGER;
    let drained = tokio::time::timeout(grace, async {
        while let Some(res) = conns.join_next().await {
            note_task_end(res);
        }
    })
    .await
    .is_ok();
    if !drained {
        warn!(
            remaining = conns.len(),
            "http connections still busy after the shutdown grace period; aborting them"
        );
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
    rejects.abort_all();
    while rejects.join_next().await.is_some() {}
    debug!("http server stopped");
}

async fn reject_busy<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: String,
    limits: Limits,
) {
    debug!(%peer, status = 503, "too many connections; rejecting");
    let resp = Response::error(503, "too many connections").with_header("Retry-After", "1");
    let bytes = encode_response(&resp, false, true);
    let deadline = Instant::now() + limits.read_timeout.min(LINGER);
    if write_all_until(&mut stream, &bytes, deadline).await.is_ok() {
        linger_close(&mut stream).await;
    }
}

// ---------------------------------------------------------------------------------------------
// One connection

/// Why a request could not be read: either close silently, or answer with an error and close.
enum ReadError {
    Close,
    Reject(Reject),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reject {
    status: u16,
    reason: &'static str,
}

const fn reject(status: u16, reason: &'static str) -> Reject {
    Reject { status, reason }
}

impl From<Reject> for ReadError {
    fn from(r: Reject) -> Self {
        ReadError::Reject(r)
    }
}

/// The parsed request line and header section.
#[derive(Debug)]
struct Head {
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    content_length: usize,
    close: bool,
    expect_continue: bool,
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin + Send>(
    mut stream: S,
    peer: String,
    handler: Handler,
    limits: Limits,
    limiter: Limiter,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    loop {
        let (head, head_len, started) =
            match read_head(&mut stream, &mut buf, &limits, &mut shutdown).await {
                Ok(parts) => parts,
                Err(ReadError::Close) => return,
                Err(ReadError::Reject(r)) => {
                    reject_and_close(&mut stream, &peer, r, &limits).await;
                    return;
                }
            };
        let deadline = started + limits.read_timeout;
        let Some(need) = head_len.checked_add(head.content_length) else {
            let r = reject(413, "request body too large");
            reject_and_close(&mut stream, &peer, r, &limits).await;
            return;
        };
        if buf.len() < need && head.expect_continue {
            let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
            if write_all_until(&mut stream, interim, deadline)
                .await
                .is_err()
            {
                return;
            }
        }
        while buf.len() < need {
            let r = match timeout_at(deadline, read_chunk(&mut stream, &mut buf)).await {
                Ok(Ok(0)) => reject(400, "connection closed in the middle of the request body"),
                Ok(Ok(_)) => continue,
                Ok(Err(_)) => return,
                Err(_) => reject(408, "timed out reading the request body"),
            };
            reject_and_close(&mut stream, &peer, r, &limits).await;
            return;
        }
        let body = buf[head_len..need].to_vec();
        buf.drain(..need);

        let request = Request {
            method: head.method,
            path: head.path,
            query: head.query,
            headers: head.headers,
            body,
            peer: peer.clone(),
        };
        let method = request.method.clone();
        let path = request.path.clone();
        let response = if allowed(&limiter) {
            run_handler(&handler, request).await
        } else {
            Response::error(
                429,
                &format!(
                    "rate limit: at most {} requests per second",
                    limits.max_requests_per_sec
                ),
            )
            .with_header("Retry-After", "1")
        };
        let response = checked_status(response, &method, &path);
        let close = head.close || is_shutdown(&shutdown);
        let bytes = encode_response(&response, method == "HEAD", close);
        let written = write_all_until(&mut stream, &bytes, Instant::now() + limits.read_timeout)
            .await
            .is_ok();
        debug!(
            %peer,
            %method,
            %path,
            status = response.status,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            written,
            "http request"
        );
        if !written {
            return;
        }
        if close {
            linger_close(&mut stream).await;
            return;
        }
    }
}

/// Reads until a complete header section is buffered and parses it. Returns the head, its length
/// in `buf` and when its first byte arrived.
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    limits: &Limits,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(Head, usize, Instant), ReadError> {
    let idle_deadline = Instant::now() + limits.read_timeout;
    let mut started: Option<Instant> = None;
    let mut scanned = 0;
    loop {
        // RFC 9112 2.2: ignore empty lines before a request line.
        let lead = buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if lead > 0 {
            buf.drain(..lead);
            scanned = 0;
        }
        if !buf.is_empty() {
            let t0 = *started.get_or_insert_with(Instant::now);
            if let Some((head_end, head_len)) = find_head_end(buf, scanned) {
                if head_len > limits.max_header_bytes {
                    return Err(reject(431, "request header section too large").into());
                }
                let head = parse_head(&buf[..head_end], limits.max_body_bytes)?;
                return Ok((head, head_len, t0));
            }
            if buf.len() > limits.max_header_bytes {
                return Err(reject(431, "request header section too large").into());
            }
            scanned = buf.len().saturating_sub(2);
        }
        match started {
            None => {
                if is_shutdown(shutdown) {
                    return Err(ReadError::Close);
                }
                tokio::select! {
                    biased;
                    () = shutdown_signal(shutdown) => return Err(ReadError::Close),
                    r = timeout_at(idle_deadline, read_chunk(stream, buf)) => match r {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return Err(ReadError::Close),
                    },
                }
            }
            Some(t0) => match timeout_at(t0 + limits.read_timeout, read_chunk(stream, buf)).await {
                Ok(Ok(0)) => {
                    let r = reject(400, "connection closed in the middle of the request header");
                    return Err(r.into());
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(ReadError::Close),
                Err(_) => return Err(reject(408, "timed out reading the request header").into()),
            },
        }
    }
}

/// Reads once into the spare capacity of `buf`. Cancel-safe: no data is lost if dropped.
async fn read_chunk<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.reserve(READ_CHUNK);
    stream.read_buf(buf).await
}

/// Finds the blank line ending a header section, scanning from `from`. Returns the index of the
/// line feed ending the last header line and the length of the section including the blank line.
/// Accepts CRLF and bare LF line endings.
fn find_head_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i < buf.len() {
        let pos = buf[i..].iter().position(|&b| b == b'\n')? + i;
        match (buf.get(pos + 1), buf.get(pos + 2)) {
            (Some(b'\n'), _) => return Some((pos, pos + 2)),
            (Some(b'\r'), Some(b'\n')) => return Some((pos, pos + 3)),
            _ => i = pos + 1,
        }
    }
    None
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_field_value(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn is_http_version(v: &[u8]) -> bool {
    matches!(v, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
        if major.is_ascii_digit() && minor.is_ascii_digit())
}

fn ascii(bytes: &[u8]) -> Result<String, Reject> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| reject(400, "invalid characters in request"))
}

fn parse_head(head: &[u8], max_body: usize) -> Result<Head, Reject> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let (method, target, http10) = parse_request_line(request_line)?;
    let (path, query) = parse_target(&method, target)?;

    let mut headers = Vec::new();
    for line in lines {
        if headers.len() >= MAX_HEADER_FIELDS {
            return Err(reject(431, "too many header fields"));
        }
        headers.push(parse_header_line(line)?);
    }

    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut close = http10;
    let mut expect_continue = false;
    for (name, value) in &headers {
        match name.as_str() {
            "transfer-encoding" => transfer_encoding = true,
            "content-length" => {
                for part in value.split(',') {
                    let part = part.trim_matches([' ', '\t']);
                    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(reject(400, "invalid Content-Length"));
                    }
                    // All digits: only overflow can fail, and that is too large anyway.
                    let n = part.parse::<u64>().unwrap_or(u64::MAX);
                    if content_length.is_some_and(|prev| prev != n) {
                        return Err(reject(400, "conflicting Content-Length values"));
                    }
                    content_length = Some(n);
                }
            }
            "connection" => {
                close |= value
                    .split(',')
                    .any(|t| t.trim_matches([' ', '\t']).eq_ignore_ascii_case("close"));
            }
            "expect" if !http10 => {
                if value.eq_ignore_ascii_case("100-continue") {
                    expect_continue = true;
                } else {
                    return Err(reject(417, "unsupported expectation"));
                }
            }
            _ => {}
        }
    }
    if transfer_encoding {
        return Err(reject(
            501,
            "Transfer-Encoding is not supported; send the body with Content-Length",
        ));
    }
    let content_length = match content_length {
        None => 0,
        Some(n) => match usize::try_from(n) {
            Ok(n) if n <= max_body => n,
            _ => return Err(reject(413, "request body too large")),
        },
    };
    Ok(Head {
        method,
        path,
        query,
        headers,
        content_length,
        close,
        expect_continue,
    })
}

/// Returns (method, target, is HTTP/1.0).
fn parse_request_line(line: &[u8]) -> Result<(String, &[u8], bool), Reject> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(reject(400, "malformed request line"));
    };
    if method.is_empty()
        || method.len() > MAX_METHOD_LEN
        || !method
            .iter()
            .all(|&b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
    {
        return Err(reject(400, "invalid method"));
    }
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        v if is_http_version(v) => return Err(reject(505, "HTTP version not supported")),
        _ => return Err(reject(400, "malformed HTTP version")),
    };
    Ok((ascii(method)?, target, http10))
}

/// Splits an origin-form, absolute-form or asterisk-form target into path and query.
fn parse_target(method: &str, target: &[u8]) -> Result<(String, Option<String>), Reject> {
    const BAD: Reject = reject(400, "invalid request target");
    if target.is_empty()
        || !target
            .iter()
            .all(|&b| (0x21..=0x7e).contains(&b) && b != b'#')
    {
        return Err(BAD);
    }
    let target = ascii(target)?;
    if target == "*" {
        return if method == "OPTIONS" {
            Ok(("*".to_owned(), None))
        } else {
            Err(BAD)
        };
    }
    let origin = if target.starts_with('/') {
        target
    } else {
        let lower = target.to_ascii_lowercase();
        let rest = if lower.starts_with("http://") {
            &target[7..]
        } else if lower.starts_with("https://") {
            &target[8..]
        } else {
            return Err(BAD);
        };
        match rest.find(['/', '?']) {
            Some(0) => return Err(BAD),
            None if rest.is_empty() => return Err(BAD),
            None => "/".to_owned(),
            Some(i) if rest[i..].starts_with('?') => format!("/{}", &rest[i..]),
            Some(i) => rest[i..].to_owned(),
        }
    };
    Ok(match origin.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (origin, None),
    })
}

fn parse_header_line(line: &[u8]) -> Result<(String, String), Reject> {
    if let [b' ' | b'\t', ..] = line {
        return Err(reject(400, "obsolete header line folding is not supported"));
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(reject(400, "malformed header field"))?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().copied().all(is_tchar) {
        return Err(reject(400, "invalid header field name"));
    }
    let value = trim_ows(&line[colon + 1..]);
    if !is_field_value(value) {
        return Err(reject(400, "invalid character in header field value"));
    }
    let value = std::str::from_utf8(value)
        .map_err(|_| reject(400, "header field value is not valid UTF-8"))?;
    Ok((ascii(name)?.to_ascii_lowercase(), value.to_owned()))
}

/// Runs the handler in its own task so that a panic becomes a 500. The task is aborted if this
/// future is dropped (connection aborted at shutdown).
async fn run_handler(handler: &Handler, request: Request) -> Response {
    struct AbortOnDrop(JoinHandle<Response>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let method = request.method.clone();
    let path = request.path.clone();
    let peer = request.peer.clone();
    let handler = Arc::clone(handler);
    let mut task = AbortOnDrop(tokio::spawn(async move { handler(request).await }));
    match (&mut task.0).await {
        Ok(response) => response,
        Err(e) => {
            error!(%peer, %method, %path, error = %describe_join_error(e), "http handler failed");
            Response::error(500, "internal server error")
        }
    }
}

fn describe_join_error(e: JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("panic: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("panic: {s}")
    } else {
        "panic".to_owned()
    }
}

/// A final response needs a status of 200..=999 (1xx would break the framing).
fn checked_status(response: Response, method: &str, path: &str) -> Response {
    if (200..=999).contains(&response.status) {
        response
    } else {
        error!(%method, %path, status = response.status, "http handler returned an invalid status");
        Response::error(500, "internal server error")
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        423 => "Locked",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Header names the server manages itself.
fn is_managed_header(name: &str) -> bool {
    [
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "keep-alive",
    ]
    .iter()
    .any(|m| name.eq_ignore_ascii_case(m))
}

fn encode_response(resp: &Response, head_only: bool, close: bool) -> Vec<u8> {
    let status = resp.status;
    let send_body = !head_only && status != 204 && status != 304;
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    if status != 204 {
        head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    }
    let content_type =
        if resp.content_type.is_empty() || !is_field_value(resp.content_type.as_bytes()) {
            "application/octet-stream"
        } else {
            resp.content_type.as_str()
        };
    head.push_str(&format!("Content-Type: {content_type}\r\n"));
    for (name, value) in &resp.headers {
        if is_managed_header(name) {
            continue;
        }
        if name.is_empty() || !name.bytes().all(is_tchar) || !is_field_value(value.as_bytes()) {
            warn!(header = ?name, "dropping invalid response header field");
            continue;
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if send_body {
        out.extend_from_slice(&resp.body);
    }
    out
}

async fn write_all_until<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    deadline: Instant,
) -> io::Result<()> {
    match timeout_at(deadline, async {
        stream.write_all(bytes).await?;
        stream.flush().await
    })
    .await
    {
        Ok(res) => res,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Shuts down the write side, then drains client input for a bounded time so that unread input
/// does not make the kernel reset the connection before the client has read the response.
async fn linger_close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let _ = tokio::time::timeout(LINGER, async {
        if stream.shutdown().await.is_err() {
            return;
        }
        let mut sink = [0u8; 4096];
        let mut total = 0usize;
        while total < LINGER_MAX_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

async fn reject_and_close<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    peer: &str,
    r: Reject,
    limits: &Limits,
) {
    debug!(%peer, status = r.status, reason = r.reason, "http request rejected");
    let bytes = encode_response(&Response::error(r.status, r.reason), false, true);
    if write_all_until(stream, &bytes, Instant::now() + limits.read_timeout)
        .await
        .is_ok()
    {
        linger_close(stream).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Client

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Endpoint {
    /// "ip:port" (IPv6 as "[addr]:port") is TCP; anything else is a unix socket path.
    pub fn parse(s: &str) -> Self {
        s.parse::<SocketAddr>()
            .map(Endpoint::Tcp)
            .unwrap_or_else(|_| Endpoint::Unix(PathBuf::from(s)))
    }
}

impl FromStr for Endpoint {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::parse(s))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// One request with `Connection: close`; returns (status, body). `Host` defaults to `localhost`
/// (unix) or the address (TCP); `Content-Length`, `Connection` and `Transfer-Encoding` are set by
/// the client and may not be passed in `headers`. Interim 1xx responses are skipped. The whole
/// exchange, connecting included, is bounded by `timeout`.
pub async fn request(
    target: &Endpoint,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let req = build_request(target, method, path, headers, body)?;
    let head_only = method == "HEAD";
    let exchange = async {
        match target {
            Endpoint::Unix(socket) => {
                let stream = UnixStream::connect(socket)
                    .await
                    .with_context(|| format!("connecting to {}", socket.display()))?;
                exchange(stream, &req, head_only).await
            }
            Endpoint::Tcp(addr) => {
                let stream = TcpStream::connect(addr)
                    .await
                    .with_context(|| format!("connecting to {addr}"))?;
                let _ = stream.set_nodelay(true);
                exchange(stream, &req, head_only).await
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(res) => res.with_context(|| format!("{method} {path} on {target}")),
        Err(_) => bail!("{method} {path} on {target}: timed out after {timeout:?}"),
    }
}

fn build_request(
    target: &Endpoint,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Vec<u8>> {
    if method.is_empty() || !method.bytes().all(is_tchar) {
        bail!("invalid HTTP method {method:?}");
    }
    if path.is_empty() || !path.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        bail!("invalid request path {path:?}");
    }
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        match target {
            Endpoint::Unix(_) => head.push_str("Host: localhost\r\n"),
            Endpoint::Tcp(addr) => head.push_str(&format!("Host: {addr}\r\n")),
        }
    }
    for (name, value) in headers {
        if name.is_empty() || !name.bytes().all(is_tchar) {
            bail!("invalid header name {name:?}");
        }
        if !is_field_value(value.as_bytes()) {
            bail!("invalid value for header {name}");
        }
        if ["content-length", "connection", "transfer-encoding"]
            .iter()
            .any(|m| name.eq_ignore_ascii_case(m))
        {
            bail!("header {name} is managed by the client");
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    Ok(out)
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    req: &[u8],
    head_only: bool,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let sent = async {
        stream.write_all(req).await?;
        stream.flush().await
    }
    .await;
    // A server may answer early (413) and stop reading: prefer its response to the write error.
    match read_response(&mut stream, head_only).await {
        Ok(res) => Ok(res),
        Err(e) => match sent {
            Err(we) => Err(anyhow::Error::new(we).context("sending request")),
            Ok(()) => Err(e),
        },
    }
}

async fn read_response<S: AsyncRead + Unpin>(
    stream: &mut S,
    head_only: bool,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut buf = Vec::new();
    loop {
        let (head_end, head_len) = loop {
            if let Some(found) = find_head_end(&buf, 0) {
                break found;
            }
            if buf.len() > CLIENT_MAX_HEAD_BYTES {
                bail!("response header section too large");
            }
            if read_chunk(stream, &mut buf)
                .await
                .context("reading response")?
                == 0
            {
                bail!("connection closed before a complete response header");
            }
        };
        let (status, content_length, chunked) = parse_response_head(&buf[..head_end])?;
        buf.drain(..head_len);
        if (100..200).contains(&status) {
            if status == 101 {
                bail!("unexpected 101 Switching Protocols");
            }
            continue;
        }
        if head_only || status == 204 || status == 304 {
            return Ok((status, Vec::new()));
        }
        if chunked {
            bail!("chunked responses are not supported");
        }
        match content_length {
            Some(n) => {
                if n > CLIENT_MAX_BODY_BYTES {
                    bail!("response body too large ({n} bytes)");
                }
                while buf.len() < n {
                    if read_chunk(stream, &mut buf)
                        .await
                        .context("reading response body")?
                        == 0
                    {
                        bail!("connection closed after {} of {n} body bytes", buf.len());
                    }
                }
                buf.truncate(n);
            }
            None => loop {
                if read_chunk(stream, &mut buf)
                    .await
                    .context("reading response body")?
                    == 0
                {
                    break;
                }
                if buf.len() > CLIENT_MAX_BODY_BYTES {
                    bail!("response body too large");
                }
            },
        }
        return Ok((status, buf));
    }
}

/// Returns (status, Content-Length, chunked).
fn parse_response_head(head: &[u8]) -> anyhow::Result<(u16, Option<usize>, bool)> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(1..))
        .and_then(|rest| rest.strip_prefix(' '))
        .and_then(|rest| rest.get(..3))
        .filter(|code| code.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|code| code.parse::<u16>().ok())
        .with_context(|| format!("malformed status line {status_line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            bail!("malformed response header line {line:?}");
        };
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .with_context(|| format!("invalid Content-Length {value:?}"))?;
            if content_length.is_some_and(|prev| prev != n) {
                bail!("conflicting Content-Length values");
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        }
    }
    Ok((status, content_length, chunked))
}

#[cfg(test)]
mod tests;
