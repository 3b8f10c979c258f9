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
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Outer bound for any single step of a test.
    const STEP: Duration = Duration::from_secs(10);
    const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn echo() -> Handler {
        handler_fn(|req: Request| async move {
            match req.path.as_str() {
                "/panic" => panic!("test handler panic"),
                "/body" => Response {
                    status: 200,
                    content_type: "application/octet-stream".to_owned(),
                    body: req.body,
                    headers: Vec::new(),
                },
                "/sleep" => {
                    tokio::time::sleep(ms(300)).await;
                    Response::text(200, "slept")
                }
                "/inject" => Response::text(200, "x")
                    .with_header("X-Evil", "a\r\nSet-Cookie: pwned")
                    .with_header("Bad Name", "v")
                    .with_header("Content-Length", "999")
                    .with_header("X-Good", "yes"),
                "/nocontent" => Response {
                    status: 204,
                    content_type: String::new(),
                    body: b"ignored".to_vec(),
                    headers: Vec::new(),
                },
                "/interim" => Response::text(101, "nope"),
                _ => Response::json(
                    200,
                    &json!({
                        "method": req.method,
                        "path": req.path,
                        "query": req.query,
                        "headers": req.headers,
                        "peer": req.peer,
                        "body_len": req.body.len(),
                        "x_test": req.header("X-Test"),
                    }),
                ),
            }
        })
    }

    struct Server {
        addr: SocketAddr,
        stop: watch::Sender<bool>,
        task: JoinHandle<()>,
    }

    impl Server {
        fn endpoint(&self) -> Endpoint {
            Endpoint::Tcp(self.addr)
        }

        async fn shutdown(self) {
            self.stop.send_replace(true);
            tokio::time::timeout(STEP, self.task)
                .await
                .expect("server stops in time")
                .expect("server task ends cleanly");
        }
    }

    async fn start_tcp(handler: Handler, limits: Limits) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(serve_tcp(listener, handler, limits, rx));
        Server { addr, stop, task }
    }

    async fn connect(addr: SocketAddr) -> TcpStream {
        tokio::time::timeout(STEP, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap()
    }

    /// Reads until EOF (or an error), bounded.
    async fn read_to_end<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(STEP, async {
            let mut chunk = [0u8; 4096];
            loop {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        out
    }

    /// Sends raw bytes (ignoring write errors), reads everything until the server closes.
    async fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
        let mut stream = connect(addr).await;
        let _ = stream.write_all(bytes).await;
        read_to_end(&mut stream).await
    }

    fn status_of(resp: &[u8]) -> u16 {
        let (head_end, _) = find_head_end(resp, 0).expect("a response header");
        parse_response_head(&resp[..head_end]).unwrap().0
    }

    fn head_of(resp: &[u8]) -> String {
        let (_, head_len) = find_head_end(resp, 0).expect("a response header");
        String::from_utf8_lossy(&resp[..head_len]).to_ascii_lowercase()
    }

    fn body_of(resp: &[u8]) -> &[u8] {
        let (_, head_len) = find_head_end(resp, 0).expect("a response header");
        &resp[head_len..]
    }

    /// Reads exactly one Content-Length framed response from a keep-alive connection.
    async fn read_one(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, String, Vec<u8>) {
        tokio::time::timeout(STEP, async {
            loop {
                if let Some((head_end, head_len)) = find_head_end(buf, 0) {
                    let (status, cl, _) = parse_response_head(&buf[..head_end]).unwrap();
                    let cl = cl.unwrap_or(0);
                    while buf.len() < head_len + cl {
                        assert!(read_chunk(stream, buf).await.unwrap() > 0, "early EOF");
                    }
                    let head = String::from_utf8_lossy(&buf[..head_len]).to_ascii_lowercase();
                    let body = buf[head_len..head_len + cl].to_vec();
                    buf.drain(..head_len + cl);
                    return (status, head, body);
                }
                assert!(read_chunk(stream, buf).await.unwrap() > 0, "early EOF");
            }
        })
        .await
        .expect("response in time")
    }

    fn counting(count: Arc<AtomicUsize>) -> Handler {
        handler_fn(move |req: Request| {
            count.fetch_add(1, Ordering::SeqCst);
            async move { Response::text(200, format!("{} bytes", req.body.len())) }
        })
    }

    #[test]
    fn serve_futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (_tx, rx) = watch::channel(false);
            let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let fut = serve_tcp(tcp, echo(), Limits::default(), rx.clone());
            assert_send(&fut);
            let dir = TempDir::new();
            let unix = bind_unix(&dir.path.join("s.sock")).unwrap();
            let fut2 = serve_unix(unix, echo(), Limits::default(), rx);
            assert_send(&fut2);
            let ep = Endpoint::parse("127.0.0.1:1");
            let fut3 = request(&ep, "GET", "/", &[], b"", ms(10));
            assert_send(&fut3);
        });
    }

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(5, t0);
        assert!((0..5).all(|_| b.take(t0)), "a burst of 5");
        assert!(!b.take(t0), "the sixth at once is refused");
        assert!(!b.take(t0 + ms(100)), "half a token after 100 ms");
        assert!(b.take(t0 + ms(250)), "one token after 200 ms");
        assert!((0..5).all(|_| b.take(t0 + ms(10_000))), "refilled");
        assert!(!b.take(t0 + ms(10_000)), "never more than the burst");
    }

    #[tokio::test]
    async fn requests_beyond_the_rate_get_429_and_never_reach_the_handler() {
        let count = Arc::new(AtomicUsize::new(0));
        let limits = Limits {
            max_requests_per_sec: 3,
            ..Limits::default()
        };
        let server = start_tcp(counting(count.clone()), limits).await;
        let mut statuses = Vec::new();
        let t0 = std::time::Instant::now();
        for _ in 0..10 {
            let (status, _) = request(&server.endpoint(), "GET", "/", &[], b"", STEP)
                .await
                .expect("an answer");
            statuses.push(status);
        }
        let ok = statuses.iter().filter(|&&s| s == 200).count();
        let limited = statuses.iter().filter(|&&s| s == 429).count();
        assert_eq!(ok + limited, 10, "{statuses:?}");
        // The burst, plus what the rate refilled while the loop ran.
        let refilled = (t0.elapsed().as_secs_f64() * 3.0).ceil() as usize;
        assert!(
            (3..=3 + refilled).contains(&ok) && limited > 0,
            "{statuses:?} ({refilled} refilled)"
        );
        assert_eq!(
            count.load(Ordering::SeqCst),
            ok,
            "refused requests never reach the handler"
        );
        server.shutdown().await;
    }

    #[tokio::test]
    async fn get_with_query_and_headers_reaches_handler() {
        let server = start_tcp(echo(), Limits::default()).await;
        let (status, body) = request(
            &server.endpoint(),
            "GET",
            "/v1/status?verbose=1&x=%20y",
            &[("X-Test", "hello world"), ("Accept", "application/json")],
            b"",
            CLIENT_TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/v1/status");
        assert_eq!(v["query"], "verbose=1&x=%20y");
        assert_eq!(v["x_test"], "hello world");
        assert_eq!(v["body_len"], 0);
        let headers = v["headers"].as_array().unwrap();
        assert!(headers.contains(&json!(["x-test", "hello world"])));
        assert!(headers.contains(&json!(["accept", "application/json"])));
        assert!(headers.contains(&json!(["connection", "close"])));
        assert!(v["peer"].as_str().unwrap().starts_with("127.0.0.1:"));

        // Absolute-form target, empty query, OPTIONS *.
        let resp = raw(
            server.addr,
            b"GET http://example.test/a/b?q HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        let v: Value = serde_json::from_slice(body_of(&resp)).unwrap();
        assert_eq!(
            (v["path"].clone(), v["query"].clone()),
            (json!("/a/b"), json!("q"))
        );
        let resp = raw(
            server.addr,
            b"GET /x? HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        let v: Value = serde_json::from_slice(body_of(&resp)).unwrap();
        assert_eq!(
            (v["path"].clone(), v["query"].clone()),
            (json!("/x"), json!(""))
        );
        let resp = raw(
            server.addr,
            b"OPTIONS * HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        let v: Value = serde_json::from_slice(body_of(&resp)).unwrap();
        assert_eq!(v["path"], "*");
        server.shutdown().await;
    }

    #[tokio::test]
    async fn post_body_round_trip_and_body_limit() {
        let limits = Limits {
            max_body_bytes: 40_000,
            ..Limits::default()
        };
        let server = start_tcp(echo(), limits).await;
        let body: Vec<u8> = (0..=255u8).cycle().take(40_000).collect();
        let (status, got) = request(
            &server.endpoint(),
            "POST",
            "/body",
            &[],
            &body,
            CLIENT_TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
        assert_eq!(got, body);
        // One byte over the limit: 413, reported by the client even though the server stops
        // reading.
        let mut big = body.clone();
        big.push(0);
        let (status, got) = request(
            &server.endpoint(),
            "POST",
            "/body",
            &[],
            &big,
            CLIENT_TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!(status, 413);
        let v: Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(v["status"], 413);
        // Empty POST carries Content-Length: 0.
        let (status, got) = request(
            &server.endpoint(),
            "POST",
            "/body",
            &[],
            b"",
            CLIENT_TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!((status, got.len()), (200, 0));
        server.shutdown().await;
    }

    #[tokio::test]
    async fn keep_alive_and_pipelining() {
        let server = start_tcp(echo(), Limits::default()).await;
        let mut stream = connect(server.addr).await;
        let mut buf = Vec::new();

        stream
            .write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (status, head, body) = read_one(&mut stream, &mut buf).await;
        assert_eq!(status, 200);
        assert!(!head.contains("connection: close"));
        assert!(head.contains("content-type: application/json"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["path"], "/one");

        stream
            .write_all(b"POST /two HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
            .await
            .unwrap();
        let (status, _, body) = read_one(&mut stream, &mut buf).await;
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (v["path"].clone(), v["body_len"].clone()),
            (json!("/two"), json!(5))
        );

        // Two pipelined requests in one write (with a stray CRLF between), the second closing.
        stream
            .write_all(
                b"GET /three HTTP/1.1\r\n\r\n\r\nGET /four HTTP/1.1\nConnection: keep-alive, Close\n\n",
            )
            .await
            .unwrap();
        let (status, head, body) = read_one(&mut stream, &mut buf).await;
        assert_eq!(status, 200);
        assert!(!head.contains("connection: close"));
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap()["path"],
            "/three"
        );
        let (status, head, body) = read_one(&mut stream, &mut buf).await;
        assert_eq!(status, 200);
        assert!(head.contains("connection: close"));
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap()["path"],
            "/four"
        );
        assert!(read_to_end(&mut stream).await.is_empty());
        assert!(buf.is_empty());

        // HTTP/1.0 closes after one response.
        let resp = raw(server.addr, b"GET /old HTTP/1.0\r\n\r\n").await;
        assert_eq!(status_of(&resp), 200);
        assert!(head_of(&resp).contains("connection: close"));
        server.shutdown().await;
    }

    #[tokio::test]
    async fn head_204_and_expect_continue() {
        let server = start_tcp(echo(), Limits::default()).await;
        let resp = raw(
            server.addr,
            b"HEAD /x HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status_of(&resp), 200);
        let head = head_of(&resp);
        let cl: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(cl > 0);
        assert!(body_of(&resp).is_empty());
        let (status, body) = request(&server.endpoint(), "HEAD", "/x", &[], b"", CLIENT_TIMEOUT)
            .await
            .unwrap();
        assert_eq!((status, body.len()), (200, 0));

        let resp = raw(
            server.addr,
            b"GET /nocontent HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status_of(&resp), 204);
        assert!(!head_of(&resp).contains("content-length"));
        assert!(body_of(&resp).is_empty());
        let (status, body) = request(
            &server.endpoint(),
            "GET",
            "/nocontent",
            &[],
            b"",
            CLIENT_TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!((status, body.len()), (204, 0));

        let mut stream = connect(server.addr).await;
        stream
            .write_all(b"POST /body HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let (status, _, _) = read_one(&mut stream, &mut buf).await;
        assert_eq!(status, 100);
        stream.write_all(b"hello").await.unwrap();
        let (status, _, body) = read_one(&mut stream, &mut buf).await;
        assert_eq!((status, body.as_slice()), (200, &b"hello"[..]));

        let resp = raw(server.addr, b"GET / HTTP/1.1\r\nExpect: something\r\n\r\n").await;
        assert_eq!(status_of(&resp), 417);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn response_headers_are_sanitised() {
        let server = start_tcp(echo(), Limits::default()).await;
        let resp = raw(
            server.addr,
            b"GET /inject HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status_of(&resp), 200);
        let head = head_of(&resp);
        assert!(head.contains("x-good: yes"));
        assert!(!head.contains("set-cookie"));
        assert!(!head.contains("x-evil"));
        assert!(!head.contains("bad name"));
        assert!(head.contains("content-length: 1\r\n"));
        assert_eq!(body_of(&resp), b"x");
        // A 1xx from a handler would break framing: 500.
        let resp = raw(
            server.addr,
            b"GET /interim HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status_of(&resp), 500);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn oversized_headers_get_431() {
        let limits = Limits {
            max_header_bytes: 1024,
            ..Limits::default()
        };
        let server = start_tcp(echo(), limits).await;
        let mut req = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', 4000));
        req.extend_from_slice(b"\r\n\r\n");
        let resp = raw(server.addr, &req).await;
        assert_eq!(status_of(&resp), 431);
        assert!(head_of(&resp).contains("connection: close"));

        // Without a terminator the limit still applies, without waiting for the timeout.
        let t0 = std::time::Instant::now();
        let resp = raw(server.addr, &req[..3000]).await;
        assert_eq!(status_of(&resp), 431);
        assert!(t0.elapsed() < Duration::from_secs(3));

        // Just under the limit is fine.
        let mut req = b"GET / HTTP/1.1\r\nConnection: close\r\nX-Big: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', 900));
        req.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status_of(&raw(server.addr, &req).await), 200);

        // Too many fields.
        let mut req = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..150 {
            req.extend_from_slice(format!("h{i}:\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        assert_eq!(status_of(&raw(server.addr, &req).await), 431);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn oversized_content_length_gets_413_without_reading_the_body() {
        let count = Arc::new(AtomicUsize::new(0));
        let limits = Limits {
            max_body_bytes: 1024,
            ..Limits::default()
        };
        let server = start_tcp(counting(Arc::clone(&count)), limits).await;
        for req in [
            &b"POST / HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1025\r\nExpect: 100-continue\r\n\r\n",
        ] {
            let t0 = std::time::Instant::now();
            let resp = raw(server.addr, req).await;
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "did not wait for the body"
            );
            assert_eq!(status_of(&resp), 413, "{}", String::from_utf8_lossy(&resp));
            assert!(!String::from_utf8_lossy(&resp).contains("100 Continue"));
            let v: Value = serde_json::from_slice(body_of(&resp)).unwrap();
            assert_eq!(v["status"], 413);
        }
        assert_eq!(count.load(Ordering::SeqCst), 0);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn slow_client_gets_408() {
        let limits = Limits {
            read_timeout: ms(300),
            ..Limits::default()
        };
        let server = start_tcp(echo(), limits).await;
        for partial in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n"[..],
            b"POST /body HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
        ] {
            let t0 = std::time::Instant::now();
            let mut stream = connect(server.addr).await;
            stream.write_all(partial).await.unwrap();
            let resp = read_to_end(&mut stream).await;
            let elapsed = t0.elapsed();
            assert_eq!(status_of(&resp), 408);
            assert!(
                elapsed >= ms(250) && elapsed < Duration::from_secs(3),
                "{elapsed:?}"
            );
        }
        // A connection that never sends anything is closed quietly.
        let t0 = std::time::Instant::now();
        let mut stream = connect(server.addr).await;
        assert!(read_to_end(&mut stream).await.is_empty());
        assert!(t0.elapsed() < Duration::from_secs(3));
        // A trickle does not extend the deadline.
        let t0 = std::time::Instant::now();
        let mut stream = connect(server.addr).await;
        let trickle = async {
            for b in b"GET / HTTP/1.1\r\nX: yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy" {
                if stream.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(ms(20)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), trickle).await;
        let resp = read_to_end(&mut stream).await;
        assert_eq!(status_of(&resp), 408);
        assert!(t0.elapsed() < Duration::from_secs(3));
        server.shutdown().await;
    }

    #[tokio::test]
    async fn garbage_gets_400() {
        let server = start_tcp(echo(), Limits::default()).await;
        let cases: &[&[u8]] = &[
            b"\x00\x01\x02garbage\r\n\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"G\xc3\x89T / HTTP/1.1\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b" GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTX/1.1\r\n\r\n",
            b"GET / http/1.1\r\n\r\n",
            b"GET relative HTTP/1.1\r\n\r\n",
            b"GET * HTTP/1.1\r\n\r\n",
            b"GET /a#frag HTTP/1.1\r\n\r\n",
            b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n",
            b"GET http:///x HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\rX: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: v\r\n\r\n",
            b"GET / HTTP/1.1\r\nName : v\r\n\r\n",
            b"GET / HTTP/1.1\r\n: v\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: \xff\xfe\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
            b"GET / HTTP/1.1\r\nContent-Length:\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"GET / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\nab",
            b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab",
        ];
        for case in cases {
            let mut stream = connect(server.addr).await;
            stream.write_all(case).await.unwrap();
            // Half-close so that incomplete requests end at EOF rather than by timeout.
            stream.shutdown().await.unwrap();
            let resp = read_to_end(&mut stream).await;
            let shown = String::from_utf8_lossy(case);
            assert_eq!(status_of(&resp), 400, "case {shown:?}");
            assert!(
                head_of(&resp).contains("connection: close"),
                "case {shown:?}"
            );
            let v: Value = serde_json::from_slice(body_of(&resp)).unwrap();
            assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
            assert_eq!(v["status"], 400);
        }
        let resp = raw(server.addr, b"GET / HTTP/2.0\r\n\r\n").await;
        assert_eq!(status_of(&resp), 505);
        // Repeated identical Content-Length values are accepted.
        let resp = raw(
            server.addr,
            b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\nConnection: close\r\n\r\nab",
        )
        .await;
        assert_eq!(status_of(&resp), 200);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn fuzzed_input_never_breaks_the_server() {
        let limits = Limits {
            read_timeout: ms(200),
            max_header_bytes: 512,
            max_body_bytes: 64,
            ..Limits::default()
        };
        let server = start_tcp(echo(), limits).await;
        let seeds: &[&[u8]] = &[
            b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Test: y\r\n\r\n",
            b"POST /body HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody",
            b"HEAD / HTTP/1.0\r\nConnection: close\r\n\r\n",
            b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..300 {
            let mut input = seeds[i % seeds.len()].to_vec();
            for _ in 0..(next() % 6) {
                let len = input.len().max(1) as u64;
                let pos = (next() % len) as usize;
                match next() % 4 {
                    0 if !input.is_empty() => {
                        let at = pos.min(input.len() - 1);
                        input[at] = next() as u8;
                    }
                    1 => input.insert(pos.min(input.len()), next() as u8),
                    2 => input.truncate(pos),
                    _ => input.extend((0..next() % 40).map(|_| next() as u8)),
                }
            }
            let mut stream = connect(server.addr).await;
            let _ = stream.write_all(&input).await;
            let _ = stream.shutdown().await;
            let resp = read_to_end(&mut stream).await;
            assert!(
                resp.is_empty() || resp.starts_with(b"HTTP/1.1 "),
                "input {:?} gave {:?}",
                String::from_utf8_lossy(&input),
                String::from_utf8_lossy(&resp)
            );
        }
        let (status, _) = request(&server.endpoint(), "GET", "/", &[], b"", CLIENT_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(status, 200);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn transfer_encoding_is_refused() {
        let server = start_tcp(echo(), Limits::default()).await;
        let t0 = std::time::Instant::now();
        let resp = raw(
            server.addr,
            b"POST /body HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        assert!(t0.elapsed() < Duration::from_secs(3));
        assert_eq!(status_of(&resp), 501);
        assert!(head_of(&resp).contains("connection: close"));
        let v: Value = serde_json::from_slice(body_of(&resp)).unwrap();
        assert!(v["error"].as_str().unwrap().contains("Transfer-Encoding"));
        // Also alongside Content-Length (a request smuggling shape).
        let resp = raw(
            server.addr,
            b"POST /body HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
        )
        .await;
        assert_eq!(status_of(&resp), 501);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn panicking_handler_gets_500_and_server_keeps_serving() {
        let server = start_tcp(echo(), Limits::default()).await;
        for _ in 0..3 {
            let (status, body) = request(
                &server.endpoint(),
                "GET",
                "/panic",
                &[],
                b"",
                CLIENT_TIMEOUT,
            )
            .await
            .unwrap();
            assert_eq!(status, 500);
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["status"], 500);
        }
        // The connection itself survives a panic too.
        let mut stream = connect(server.addr).await;
        let mut buf = Vec::new();
        stream
            .write_all(b"GET /panic HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_one(&mut stream, &mut buf).await.0, 500);
        stream.write_all(b"GET /ok HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(read_one(&mut stream, &mut buf).await.0, 200);
        let (status, _) = request(&server.endpoint(), "GET", "/ok", &[], b"", CLIENT_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(status, 200);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_get_503() {
        let limits = Limits {
            max_connections: 1,
            ..Limits::default()
        };
        let server = start_tcp(echo(), limits).await;
        let mut first = connect(server.addr).await;
        let mut buf = Vec::new();
        first.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(read_one(&mut first, &mut buf).await.0, 200);

        let resp = raw(server.addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert_eq!(status_of(&resp), 503);
        let head = head_of(&resp);
        assert!(head.contains("connection: close"));
        assert!(head.contains("retry-after: 1"));
        let (status, _) = request(&server.endpoint(), "GET", "/", &[], b"", CLIENT_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(status, 503);

        // The first connection still works; once it is gone, the slot is free again.
        first.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(read_one(&mut first, &mut buf).await.0, 200);
        drop(first);
        let mut ok = false;
        for _ in 0..100 {
            let (status, _) = request(&server.endpoint(), "GET", "/", &[], b"", CLIENT_TIMEOUT)
                .await
                .unwrap();
            if status == 200 {
                ok = true;
                break;
            }
            tokio::time::sleep(ms(20)).await;
        }
        assert!(ok, "slot was not released");
        server.shutdown().await;
    }

    struct TempDir {
        path: PathBuf,
    }

    impl TempDir {
        fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos();
            let path = std::env::temp_dir().join(format!(
                "failover-http-{}-{}-{nanos}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&path).unwrap();
            Self { path }
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[tokio::test]
    async fn unix_socket_bind_and_client() {
        let dir = TempDir::new();
        let path = dir.path.join("run").join("admin.sock");
        let listener = bind_unix(&path).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(mode_of(path.parent().unwrap()), 0o700);
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_socket()
        );

        // Binding again while it is served is refused, and the live socket is left alone.
        assert!(bind_unix(&path).is_err());
        assert!(std::fs::symlink_metadata(&path).is_ok());

        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(serve_unix(listener, echo(), Limits::default(), rx));
        let target = Endpoint::Unix(path.clone());
        let (status, body) = request(
            &target,
            "POST",
            "/v1/x?y=1",
            &[("X-Test", "unix")],
            b"abc",
            CLIENT_TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["peer"], "unix");
        assert_eq!(v["path"], "/v1/x");
        assert_eq!(v["query"], "y=1");
        assert_eq!(v["x_test"], "unix");
        assert_eq!(v["body_len"], 3);
        assert!(
            v["headers"]
                .as_array()
                .unwrap()
                .contains(&json!(["host", "localhost"]))
        );

        stop.send_replace(true);
        tokio::time::timeout(STEP, task).await.unwrap().unwrap();
        // The socket file stays behind, stale; a new bind replaces it.
        assert!(std::fs::symlink_metadata(&path).is_ok());
        let listener = bind_unix(&path).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        drop(listener);
    }

    #[tokio::test]
    async fn bind_unix_replaces_only_stale_sockets() {
        let dir = TempDir::new();
        let path = dir.path.join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(std::fs::symlink_metadata(&path).is_ok());
        let listener = bind_unix(&path).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        drop(listener);

        let live = dir.path.join("live.sock");
        let _keep = std::os::unix::net::UnixListener::bind(&live).unwrap();
        let err = bind_unix(&live).unwrap_err();
        assert!(format!("{err:#}").contains("in use"), "{err:#}");

        let file = dir.path.join("file.sock");
        std::fs::write(&file, b"precious").unwrap();
        let err = bind_unix(&file).unwrap_err();
        assert!(format!("{err:#}").contains("regular file"), "{err:#}");
        assert_eq!(std::fs::read(&file).unwrap(), b"precious");

        let sub = dir.path.join("dir.sock");
        std::fs::create_dir(&sub).unwrap();
        assert!(bind_unix(&sub).is_err());
        assert!(sub.is_dir());

        let link = dir.path.join("link.sock");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(bind_unix(&link).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"precious");

        let long = dir.path.join("x".repeat(200));
        assert!(bind_unix(&long).is_err());
    }

    #[test]
    fn bind_unix_outside_a_runtime_is_an_error() {
        let dir = TempDir::new();
        assert!(bind_unix(&dir.path.join("s.sock")).is_err());
    }

    #[tokio::test]
    async fn shutdown_stops_the_server() {
        let server = start_tcp(echo(), Limits::default()).await;
        let addr = server.addr;
        // An idle keep-alive connection must not hold the shutdown up.
        let mut idle = connect(addr).await;
        let mut buf = Vec::new();
        idle.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(read_one(&mut idle, &mut buf).await.0, 200);
        // A request in progress is completed, with Connection: close.
        let slow = tokio::spawn(async move {
            let mut stream = connect(addr).await;
            stream
                .write_all(b"GET /sleep HTTP/1.1\r\n\r\n")
                .await
                .unwrap();
            read_to_end(&mut stream).await
        });
        tokio::time::sleep(ms(100)).await;
        let t0 = std::time::Instant::now();
        server.shutdown().await;
        assert!(t0.elapsed() < Duration::from_secs(3));
        assert!(read_to_end(&mut idle).await.is_empty());
        let resp = slow.await.unwrap();
        assert_eq!(status_of(&resp), 200);
        assert!(head_of(&resp).contains("connection: close"));
        assert_eq!(body_of(&resp), b"slept");
        assert!(TcpStream::connect(addr).await.is_err());

        // Dropping the sender counts as shutdown, and a true value before start returns at once.
        let server = start_tcp(echo(), Limits::default()).await;
        drop(server.stop);
        tokio::time::timeout(STEP, server.task)
            .await
            .unwrap()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (_tx, rx) = watch::channel(true);
        tokio::time::timeout(STEP, serve_tcp(listener, echo(), Limits::default(), rx))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn client_errors_are_bounded_and_clear() {
        // Nothing listening.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        assert!(
            request(&Endpoint::Tcp(addr), "GET", "/", &[], b"", CLIENT_TIMEOUT)
                .await
                .is_err()
        );
        // A server that accepts and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let t0 = std::time::Instant::now();
        let err = request(&Endpoint::Tcp(addr), "GET", "/", &[], b"", ms(200))
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("timed out"), "{err:#}");
        assert!(t0.elapsed() < Duration::from_secs(3));
        drop(listener);
        // Invalid input is refused before connecting.
        let ep = Endpoint::Tcp(addr);
        let t = CLIENT_TIMEOUT;
        assert!(request(&ep, "GE T", "/", &[], b"", t).await.is_err());
        assert!(request(&ep, "GET", "/a b", &[], b"", t).await.is_err());
        assert!(
            request(&ep, "GET", "/", &[("X", "a\r\nb")], b"", t)
                .await
                .is_err()
        );
        assert!(
            request(&ep, "GET", "/", &[("Content-Length", "1")], b"", t)
                .await
                .is_err()
        );
        // Missing unix socket.
        let dir = TempDir::new();
        let ep = Endpoint::Unix(dir.path.join("missing.sock"));
        assert!(request(&ep, "GET", "/", &[], b"", t).await.is_err());
    }

    #[test]
    fn endpoint_parse_and_display() {
        assert_eq!(
            Endpoint::parse("127.0.0.1:9100"),
            Endpoint::Tcp("127.0.0.1:9100".parse().unwrap())
        );
        assert_eq!(
            "[::1]:80".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            Endpoint::parse("/run/failover/admin.sock"),
            Endpoint::Unix(PathBuf::from("/run/failover/admin.sock"))
        );
        assert_eq!(Endpoint::parse("admin.sock").to_string(), "admin.sock");
        assert_eq!(Endpoint::parse("[::1]:80").to_string(), "[::1]:80");
    }

    #[test]
    fn response_constructors_and_request_header() {
        let r = Response::json(201, &json!({"a": 1}));
        assert_eq!(
            (r.status, r.content_type.as_str()),
            (201, "application/json")
        );
        assert_eq!(r.body, b"{\"a\":1}\n");
        let r = Response::text(200, "hi");
        assert_eq!(r.content_type, "text/plain; charset=utf-8");
        assert_eq!(r.body, b"hi");
        let r = Response::error(404, "no such backend");
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v, json!({"error": "no such backend", "status": 404}));
        let req = Request {
            method: "GET".into(),
            path: "/".into(),
            query: None,
            headers: vec![("x-a".into(), "1".into()), ("x-a".into(), "2".into())],
            body: Vec::new(),
            peer: "unix".into(),
        };
        assert_eq!(req.header("X-A"), Some("1"));
        assert_eq!(req.header("x-b"), None);
    }

    #[test]
    fn head_parsing_edge_cases() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\n", 0), Some((15, 18)));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\n", 0), Some((14, 16)));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r", 0), None);
        assert_eq!(find_head_end(b"", 0), None);
        assert_eq!(find_head_end(b"\n", 5), None);
        let head = parse_head(b"GET /p?q HTTP/1.1\r\nX:  v \t\r\nCONTENT-LENGTH: 0", 10).unwrap();
        assert_eq!(head.headers[0], ("x".to_owned(), "v".to_owned()));
        assert_eq!(
            (head.path.as_str(), head.query.as_deref()),
            ("/p", Some("q"))
        );
        assert!(!head.close);
        assert!(parse_head(b"GET / HTTP/1.0", 10).unwrap().close);
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nContent-Length: 11", 10)
                .unwrap_err()
                .status,
            413
        );
    }
}
