//! The bounds of the admin and metrics servers: sizes, the per-listener
//! request rate, and the clock of one connection ([`Guarded`]), which hyper
//! does not keep the way the API promises it:
//!
//! - a request must arrive whole within `read_timeout` of its first byte
//!   (a trickle does not extend it), else 408;
//! - an idle keep-alive connection is closed quietly after `read_timeout`;
//! - writing one response may take at most `read_timeout`.
//!
//! hyper parses; [`Guarded`] sits between it and the socket, sees every
//! read and write, and knows from the service when a request is being
//! answered. It also holds back hyper's own answer to a request it could
//! not parse (an empty 400/431) so that the server can send the API's JSON
//! error instead.

use std::{
    future::Future as _,
    io,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

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
    /// Requests per second (a burst of as many); beyond that 429 with
    /// `Retry-After`. 0: no limit. Requests carrying the listener's token
    /// share one budget of their own; every other client (by address) has
    /// its own, so a flood from one cannot starve the token holder.
    pub max_requests_per_sec: u32,
    /// Concurrent connections from one client address; beyond that its new
    /// connections get 503 (slowloris from one address cannot take every
    /// slot). 0: no per-client limit.
    pub max_connections_per_client: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_body_bytes: 64 * 1024,
            read_timeout: Duration::from_secs(5),
            max_connections: 64,
            max_requests_per_sec: 0,
            max_connections_per_client: 16,
        }
    }
}

impl Limits {
    pub(super) fn normalized(self) -> Self {
        Self {
            max_connections: self.max_connections.max(1),
            max_header_bytes: self.max_header_bytes.max(64),
            read_timeout: self.read_timeout.max(Duration::from_millis(1)),
            ..self
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

/// The limiter shared by a listener's connections (`None`: no limit).
#[derive(Clone, Default)]
pub(super) struct Limiter(Option<Arc<Mutex<Bucket>>>);

impl Limiter {
    pub(super) fn new(rate: u32) -> Self {
        Self((rate > 0).then(|| Arc::new(Mutex::new(Bucket::new(rate, Instant::now())))))
    }

    /// Whether one more request may be served now.
    pub(super) fn allowed(&self) -> bool {
        match &self.0 {
            None => true,
            // A poisoned lock only means a panic elsewhere: keep limiting.
            Some(b) => match b.lock() {
                Ok(mut b) => b.take(Instant::now()),
                Err(p) => p.into_inner().take(Instant::now()),
            },
        }
    }
}

/// Client addresses whose budgets are kept; beyond that the oldest go.
const MAX_CLIENT_BUDGETS: usize = 4096;

/// The request budgets of a listener: one for requests with the token, one
/// per client address for the rest.
#[derive(Clone, Default)]
pub(super) struct Budgets {
    rate: u32,
    token: Option<Arc<str>>,
    authed: Limiter,
    clients: Arc<Mutex<std::collections::HashMap<String, (Bucket, Instant)>>>,
}

impl Budgets {
    pub(super) fn new(rate: u32, token: Option<Arc<str>>) -> Self {
        Self {
            rate,
            token,
            authed: Limiter::new(rate),
            clients: Arc::default(),
        }
    }

    /// Whether one more request from `client` (with its `Authorization`
    /// header) may be served now.
    pub(super) fn allowed(&self, client: &str, authorization: Option<&str>) -> bool {
        if self.rate == 0 {
            return true;
        }
        if super::auth::authorized(self.token.as_deref(), authorization) {
            return self.authed.allowed();
        }
        let now = Instant::now();
        let mut map = match self.clients.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if map.len() >= MAX_CLIENT_BUDGETS && !map.contains_key(client) {
            // Forget the client seen longest ago (bounded memory under a
            // flood of addresses).
            if let Some(old) = map
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
            {
                map.remove(&old);
            }
        }
        let (bucket, seen) = map
            .entry(client.to_string())
            .or_insert_with(|| (Bucket::new(self.rate, now), now));
        *seen = now;
        bucket.take(now)
    }
}

/// The client address of a peer (`ip:port`, `[ip]:port` or `unix`).
pub(super) fn client_of(peer: &str) -> &str {
    match peer.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
            host.trim_start_matches('[').trim_end_matches(']')
        }
        _ => peer,
    }
}

/// Where a connection is between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// No request byte since the last response (or since accept).
    Idle(Instant),
    /// A request's first byte came at this instant; its head is not complete.
    Head(Instant),
    /// The service has the request; until its response is written.
    Busy,
}

/// What the service and [`Guarded`] share about one connection.
#[derive(Debug)]
pub(super) struct ConnState {
    pub(super) phase: Phase,
    /// Input arrived while `Busy` (a pipelined request).
    early_input: bool,
    /// The response body was handed to hyper (dropped by it).
    body_done: bool,
    /// hyper wrote outside a request: its own error answer, held back.
    pub(super) held_back: bool,
    /// The read clock ran out.
    pub(super) timed_out: bool,
    /// Writing the current response must be done by then.
    write_deadline: Option<Instant>,
}

/// A handle on one connection's [`ConnState`].
#[derive(Debug, Clone)]
pub(super) struct Shared(Arc<Mutex<ConnState>>);

impl Shared {
    pub(super) fn new() -> Self {
        Self(Arc::new(Mutex::new(ConnState {
            phase: Phase::Idle(Instant::now()),
            early_input: false,
            body_done: false,
            held_back: false,
            timed_out: false,
            write_deadline: None,
        })))
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, ConnState> {
        // The state holds no invariant a panic could break half-way.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The service got a request: returns when its first byte arrived.
    pub(super) fn begin_request(&self) -> Instant {
        let mut st = self.lock();
        let started = match st.phase {
            Phase::Head(t) => t,
            // The whole head was already buffered (pipelined).
            Phase::Idle(_) | Phase::Busy => Instant::now(),
        };
        st.phase = Phase::Busy;
        st.early_input = false;
        st.body_done = false;
        st.write_deadline = None;
        started
    }

    /// The service has read the request body: input until now was that body,
    /// not a pipelined request.
    pub(super) fn body_read(&self) {
        self.lock().early_input = false;
    }

    /// The service has its response: writing it may take `limit`.
    pub(super) fn responding(&self, limit: Duration) {
        self.lock().write_deadline = Some(Instant::now() + limit);
    }

    /// hyper is done with the response body.
    pub(super) fn body_done(&self) {
        self.lock().body_done = true;
    }
}

/// The socket as hyper sees it: reads and writes on the connection's clock.
pub(super) struct Guarded<S> {
    inner: S,
    shared: Shared,
    limit: Duration,
    read_timer: Pin<Box<Sleep>>,
    write_timer: Pin<Box<Sleep>>,
}

impl<S> Guarded<S> {
    pub(super) fn new(inner: S, shared: Shared, limit: Duration) -> Self {
        let now = Instant::now();
        Self {
            inner,
            shared,
            limit,
            read_timer: Box::pin(tokio::time::sleep_until(now + limit)),
            write_timer: Box::pin(tokio::time::sleep_until(now + limit)),
        }
    }
}

fn arm(timer: &mut Pin<Box<Sleep>>, deadline: Instant, cx: &mut Context<'_>) -> bool {
    if timer.deadline() != deadline {
        timer.as_mut().reset(deadline);
    }
    timer.as_mut().poll(cx).is_ready()
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let mut st = this.shared.lock();
                    match st.phase {
                        Phase::Idle(_) => st.phase = Phase::Head(Instant::now()),
                        Phase::Busy => st.early_input = true,
                        Phase::Head(_) => {}
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let deadline = match this.shared.lock().phase {
                    Phase::Idle(t) | Phase::Head(t) => t + this.limit,
                    Phase::Busy => return Poll::Pending,
                };
                if arm(&mut this.read_timer, deadline, cx) {
                    this.shared.lock().timed_out = true;
                    return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> Guarded<S> {
    /// `Pending` from the socket: an error once the write deadline passed.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let deadline = {
            let mut st = self.shared.lock();
            *st.write_deadline
                .get_or_insert_with(|| Instant::now() + self.limit)
        };
        if arm(&mut self.write_timer, deadline, cx) {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        Poll::Pending
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        {
            let mut st = this.shared.lock();
            if st.phase != Phase::Busy || st.held_back {
                // Not an answer of ours: hyper's reply to a request it could
                // not parse. The server sends its own after hyper gives up.
                st.held_back = true;
                return Poll::Ready(Ok(buf.len()));
            }
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => this.stalled(cx),
            ready => ready,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.shared.lock().held_back {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.stalled(cx),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let mut st = this.shared.lock();
                if st.phase == Phase::Busy && st.body_done {
                    // hyper flushes only once its buffer is written: the
                    // response is out. The next request's clock starts.
                    let now = Instant::now();
                    st.phase = if st.early_input {
                        Phase::Head(now)
                    } else {
                        Phase::Idle(now)
                    };
                    st.body_done = false;
                    st.early_input = false;
                }
                Poll::Ready(Ok(()))
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.shared.lock().held_back {
            // The server still has to answer; it shuts down itself.
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Pending => this.stalled(cx),
            ready => ready,
        }
    }
}
