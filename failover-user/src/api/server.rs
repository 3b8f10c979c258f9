//! The HTTP/1.1 server of the admin API (unix socket, optionally TCP) and
//! the Prometheus endpoint, on hyper.
//!
//! hyper parses and frames; this module adds what the API promises on top:
//! - one [`Request`] with its whole body at a time reaches the [`Handler`];
//!   keep-alive by default for HTTP/1.1, closed after the response for
//!   `Connection: close` and HTTP/1.0; pipelined requests are answered in
//!   order;
//! - request bodies framed by `Content-Length` only (a `Transfer-Encoding`
//!   request gets 501); a `Content-Length` over the limit gets 413 before
//!   any body byte is read (and before `100 Continue`);
//! - the limits and clocks of [`Limits`] (see `limits.rs`): 431, 408, 429,
//!   503 when too many connections are open, a bound on writing;
//! - every error is JSON (`{"error": ..., "status": ...}`), also for input
//!   hyper cannot parse (it gives up; we answer and close);
//! - each handler call runs in its own task, so a panicking handler yields
//!   a 500 and the connection and the server keep serving.

use std::{
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http_body_util::{BodyExt as _, Limited};
use hyper::{
    HeaderMap, StatusCode, Version,
    body::{Body, Bytes, Frame, Incoming, SizeHint},
    header::{self, HeaderName, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::{Semaphore, watch},
    task::{JoinError, JoinHandle, JoinSet},
    time::{Instant, timeout_at},
};
use tracing::{debug, error, warn};

use super::limits::{Budgets, Guarded, Limits, Phase, Shared, client_of};

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

/// One request, as handed to a [`Handler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method token as sent, e.g. "GET" (only `A-Z`, `-`, `_` are accepted).
    pub method: String,
    /// Path without the query; percent-decoding is not applied. "*" for `OPTIONS *`.
    pub path: String,
    /// The part after the first '?', if any (possibly empty).
    pub query: Option<String>,
    /// Header fields, names lowercased, values trimmed (UTF-8).
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

/// A response. The server sets `Content-Length` (except on 204), `Content-Type` and, when it
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
    serve(listener, handler, limits, None, shutdown).await;
}

/// The same as [`serve_tcp`], with `token`: requests that carry it get a
/// request budget of their own (see [`Limits::max_requests_per_sec`]).
pub async fn serve_tcp_with_token(
    listener: TcpListener,
    handler: Handler,
    limits: Limits,
    token: Option<Arc<str>>,
    shutdown: watch::Receiver<bool>,
) {
    serve(listener, handler, limits, token, shutdown).await;
}

/// The same as [`serve_tcp`] on a unix socket listener. Requests carry `peer == "unix"`.
pub async fn serve_unix(
    listener: UnixListener,
    handler: Handler,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    serve(listener, handler, limits, None, shutdown).await;
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
    token: Option<Arc<str>>,
    shutdown: watch::Receiver<bool>,
) {
    let limits = limits.normalized();
    let limiter = Budgets::new(limits.max_requests_per_sec, token);
    // Open connections per client address.
    let per_client: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>> =
        Arc::default();
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
                    Ok(_) if !take_client_slot(&per_client, &peer, limits.max_connections_per_client) => {
                        if rejects.len() < max_rejects {
                            rejects.spawn(reject_busy(stream, peer, limits));
                        }
                    }
                    Ok(permit) => {
                        let ctx = Arc::new(Ctx {
                            handler: Arc::clone(&handler),
                            limits,
                            limiter: limiter.clone(),
                            peer,
                            shared: Shared::new(),
                            linger: AtomicBool::new(false),
                        });
                        let rx = shutdown.clone();
                        let per_client = Arc::clone(&per_client);
                        conns.spawn(async move {
                            let client = ctx.peer.clone();
                            serve_connection(stream, ctx, rx).await;
                            release_client_slot(&per_client, &client);
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

/// Counts a new connection against its client's limit (`false`: over it).
fn take_client_slot(
    map: &std::sync::Mutex<std::collections::HashMap<String, usize>>,
    peer: &str,
    max: usize,
) -> bool {
    let client = client_of(peer);
    if max == 0 || client == "unix" {
        return true;
    }
    let mut m = match map.lock() {
        Ok(m) => m,
        Err(p) => p.into_inner(),
    };
    let n = m.entry(client.to_string()).or_insert(0);
    if *n >= max {
        debug!(%peer, "too many connections from this client");
        return false;
    }
    *n += 1;
    true
}

fn release_client_slot(
    map: &std::sync::Mutex<std::collections::HashMap<String, usize>>,
    peer: &str,
) {
    let client = client_of(peer);
    let mut m = match map.lock() {
        Ok(m) => m,
        Err(p) => p.into_inner(),
    };
    if let Some(n) = m.get_mut(client) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            m.remove(client);
        }
    }
}

/// A connection over the limit: 503 at once (without waiting for its request), then close.
async fn reject_busy<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: String,
    limits: Limits,
) {
    debug!(%peer, status = 503, "too many connections; rejecting");
    let bytes = error_bytes(503, "too many connections", &[("retry-after", "1")]);
    let deadline = Instant::now() + limits.read_timeout.min(LINGER);
    if write_all_until(&mut stream, &bytes, deadline).await.is_ok() {
        linger_close(&mut stream).await;
    }
}

// ---------------------------------------------------------------------------------------------
// One connection

/// What the service of one connection needs.
struct Ctx {
    handler: Handler,
    limits: Limits,
    limiter: Budgets,
    peer: String,
    shared: Shared,
    /// An answer went out without the request body being read: drain it before closing.
    linger: AtomicBool,
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin + Send>(
    mut stream: S,
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) {
    let outcome = {
        let io = Guarded::new(&mut stream, ctx.shared.clone(), ctx.limits.read_timeout);
        let svc_ctx = Arc::clone(&ctx);
        let service = service_fn(move |req| {
            let ctx = Arc::clone(&svc_ctx);
            async move { Ok::<_, Infallible>(respond(req, &ctx).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .half_close(true)
            .max_headers(MAX_HEADER_FIELDS)
            .max_header_size(ctx.limits.max_header_bytes)
            .header_read_timeout(None)
            .serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            () = shutdown_signal(&mut shutdown) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    let (phase, timed_out) = {
        let st = ctx.shared.lock();
        (st.phase, st.timed_out)
    };
    let in_head = matches!(phase, Phase::Head(_));
    // What hyper could not answer itself (or answered with an empty body, held back).
    let answer = match &outcome {
        _ if timed_out && in_head => Some((408, "timed out reading the request header".into())),
        Err(e) if e.is_parse_too_large() => Some((431, "request header section too large".into())),
        Err(e) if e.is_parse() => Some((400, format!("malformed request: {e}"))),
        Err(e) if e.is_incomplete_message() && in_head => Some((
            400,
            "connection closed in the middle of the request header".to_owned(),
        )),
        _ => None,
    };
    if let Some((status, reason)) = answer {
        debug!(peer = %ctx.peer, status, reason = %reason, "http request rejected");
        let bytes = error_bytes(status, &reason, &[]);
        let deadline = Instant::now() + ctx.limits.read_timeout;
        if write_all_until(&mut stream, &bytes, deadline).await.is_ok() {
            linger_close(&mut stream).await;
        }
        return;
    }
    if let Err(e) = &outcome {
        debug!(peer = %ctx.peer, error = %e, "http connection ended");
    } else if ctx.linger.load(Ordering::Relaxed) {
        linger_close(&mut stream).await;
    }
}

/// Why a request is answered without reaching the handler.
struct Reject {
    status: u16,
    reason: &'static str,
    /// The body is still unread.
    unread: bool,
}

const fn reject(status: u16, reason: &'static str, unread: bool) -> Reject {
    Reject {
        status,
        reason,
        unread,
    }
}

/// The service: one hyper request in, one response out, never an error.
async fn respond(req: hyper::Request<Incoming>, ctx: &Ctx) -> hyper::Response<Reply> {
    let started = ctx.shared.begin_request();
    let deadline = started + ctx.limits.read_timeout;
    let http10 = req.version() == Version::HTTP_10;
    let request = match read_request(req, deadline, ctx).await {
        Ok(r) => r,
        Err(r) => {
            debug!(peer = %ctx.peer, status = r.status, reason = r.reason, "http request rejected");
            if r.unread {
                ctx.linger.store(true, Ordering::Relaxed);
            }
            ctx.shared.responding(ctx.limits.read_timeout);
            return to_hyper(Response::error(r.status, r.reason), true, ctx);
        }
    };
    let method = request.method.clone();
    let path = request.path.clone();
    let response = if ctx
        .limiter
        .allowed(client_of(&ctx.peer), request.header("authorization"))
    {
        run_handler(&ctx.handler, request).await
    } else {
        Response::error(
            429,
            &format!(
                "rate limit: at most {} requests per second",
                ctx.limits.max_requests_per_sec
            ),
        )
        .with_header("Retry-After", "1")
    };
    let response = checked_status(response, &method, &path);
    debug!(
        peer = %ctx.peer,
        %method,
        %path,
        status = response.status,
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "http request"
    );
    ctx.shared.responding(ctx.limits.read_timeout);
    to_hyper(response, http10, ctx)
}

/// Checks what hyper parsed against the API's rules and reads the body (by `deadline`).
async fn read_request(
    req: hyper::Request<Incoming>,
    deadline: Instant,
    ctx: &Ctx,
) -> Result<Request, Reject> {
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str();
    if method.is_empty()
        || method.len() > MAX_METHOD_LEN
        || !method
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
    {
        return Err(reject(400, "invalid method", true));
    }
    let (path, query) = split_target(method, &parts.uri)
        .ok_or_else(|| reject(400, "invalid request target", true))?;
    let headers = header_list(&parts.headers)
        .ok_or_else(|| reject(400, "header field value is not valid UTF-8", true))?;
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(reject(
            501,
            "Transfer-Encoding is not supported; send the body with Content-Length",
            true,
        ));
    }
    if parts.version != Version::HTTP_10
        && let Some(expect) = parts.headers.get(header::EXPECT)
        && !expect.as_bytes().eq_ignore_ascii_case(b"100-continue")
    {
        return Err(reject(417, "unsupported expectation", true));
    }
    let max = ctx.limits.max_body_bytes;
    // hyper has validated Content-Length (conflicting values are its 400).
    if body
        .size_hint()
        .exact()
        .is_some_and(|n| usize::try_from(n).map_or(true, |n| n > max))
    {
        return Err(reject(413, "request body too large", true));
    }
    // Reading the body sends `100 Continue` if it was asked for.
    let body = match timeout_at(deadline, Limited::new(body, max).collect()).await {
        Ok(Ok(c)) => c.to_bytes().to_vec(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(reject(413, "request body too large", true));
        }
        Ok(Err(_)) => {
            return Err(reject(
                400,
                "connection closed in the middle of the request body",
                false,
            ));
        }
        Err(_) => return Err(reject(408, "timed out reading the request body", true)),
    };
    ctx.shared.body_read();
    Ok(Request {
        method: method.to_owned(),
        path,
        query,
        headers,
        body,
        peer: ctx.peer.clone(),
    })
}

/// Path and query of an origin-form (`/p?q`), absolute-form (`http://h/p?q`) or asterisk-form
/// (`*`, `OPTIONS` only) target; `None` for anything else.
fn split_target(method: &str, uri: &hyper::Uri) -> Option<(String, Option<String>)> {
    if uri.scheme().is_none() && uri.authority().is_some() {
        return None;
    }
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    if pq == "*" {
        return (method == "OPTIONS").then(|| ("*".to_owned(), None));
    }
    let pq = if pq.starts_with('?') {
        format!("/{pq}")
    } else {
        pq.to_owned()
    };
    if !pq.starts_with('/') || !pq.is_ascii() {
        return None;
    }
    Some(match pq.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (pq, None),
    })
}

/// The header fields as (lowercase name, value); `None` if a value is not UTF-8.
fn header_list(headers: &HeaderMap) -> Option<Vec<(String, String)>> {
    headers
        .iter()
        .map(|(n, v)| {
            let v = std::str::from_utf8(v.as_bytes()).ok()?;
            Some((n.as_str().to_owned(), v.to_owned()))
        })
        .collect()
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

/// The hyper response for `resp`; `close` adds `Connection: close` (hyper then closes after it).
fn to_hyper(resp: Response, close: bool, ctx: &Ctx) -> hyper::Response<Reply> {
    let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut out = hyper::Response::new(Reply {
        data: (!resp.body.is_empty()).then(|| Bytes::from(resp.body)),
        shared: ctx.shared.clone(),
    });
    *out.status_mut() = status;
    let headers = out.headers_mut();
    let content_type = HeaderValue::from_str(&resp.content_type)
        .ok()
        .filter(|_| !resp.content_type.is_empty())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_TYPE, content_type);
    for (name, value) in &resp.headers {
        if is_managed_header(name) {
            continue;
        }
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => {
                headers.append(n, v);
            }
            _ => warn!(header = ?name, "dropping invalid response header field"),
        }
    }
    if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    out
}

/// A response body: the bytes at once; tells the connection when hyper is done with it.
struct Reply {
    data: Option<Bytes>,
    shared: Shared,
}

impl Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        self.shared.body_done();
    }
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

/// A whole JSON error response with `Connection: close`, for what happens outside hyper's
/// request cycle: a connection over the limit, input hyper gave up on, a request head that did
/// not arrive in time. (hyper has no way to answer a request it could not read.)
fn error_bytes(status: u16, reason: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let body = Response::error(status, reason).body;
    let phrase = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut head = format!(
        "HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("connection: close\r\n\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
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
        // hyper may have shut the write side down already.
        let _ = stream.shutdown().await;
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

#[cfg(test)]
mod tests;
