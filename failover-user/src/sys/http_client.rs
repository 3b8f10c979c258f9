//! The one outbound HTTP client (hyper, HTTP/1.1, one request per
//! connection): webhooks, HTTP probes and the CLI use it. Webhook URLs are
//! `http[s]://IP[:PORT]/PATH` (no DNS); TLS through rustls with Mozilla's
//! roots or a CA file.
//!
//! Response framing is hyper's: chunked bodies are decoded, interim 1xx
//! responses skipped, and a response with conflicting `Content-Length`
//! values (or an invalid one) is rejected as a parse error, never guessed
//! at. Every exchange takes a cap on the response head and, when the body
//! is read, on the body: a larger one is [`Failure::BodyTooLarge`], never
//! unbounded memory. Deadlines are the caller's: one `tokio::time::timeout`
//! around the whole exchange, connecting included.

use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Method, Request,
    body::{Bytes, Incoming},
    header::{HeaderName, HeaderValue},
};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpStream, UnixStream},
};

/// The CLI's (and tests') limits on a response from the daemon.
const CLIENT_MAX_HEAD_BYTES: usize = 64 * 1024;
const CLIENT_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Why an exchange produced no usable response.
#[derive(Debug)]
pub enum Failure {
    /// hyper's error: connection, protocol or parse trouble.
    Http(hyper::Error),
    /// The response body is larger than the cap (the status came through).
    BodyTooLarge { status: u16, max: usize },
}

impl Failure {
    /// A short, one-line reason: "connection refused", "malformed status
    /// line", "connection closed without a response", ...
    pub fn detail(&self) -> String {
        match self {
            Failure::BodyTooLarge { status, max } => {
                format!("http {status} but the body exceeds {} KiB", max / 1024)
            }
            Failure::Http(e) => hyper_detail(e),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail())
    }
}

impl std::error::Error for Failure {}

/// A short reason for a client-side hyper error.
pub fn hyper_detail(e: &hyper::Error) -> String {
    if e.is_parse_status() {
        return "malformed status line".into();
    }
    if e.is_parse_too_large() {
        return "response head too large".into();
    }
    if e.is_parse() {
        return format!("malformed response ({e})");
    }
    if e.is_incomplete_message() {
        return "connection closed without a response".into();
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return io_detail(io);
        }
        source = s.source();
    }
    e.to_string()
}

/// A short reason for the I/O errors a peer causes (refused, reset, ...).
pub fn known_io_detail(e: &io::Error) -> Option<&'static str> {
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

/// A short reason for an I/O error.
pub fn io_detail(e: &io::Error) -> String {
    known_io_detail(e).map_or_else(|| e.to_string(), str::to_owned)
}

/// Limits of one exchange.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Status line and header fields of the response.
    pub head: usize,
    /// `None`: the body is not read (only the status counts); `Some(n)`:
    /// read it, at most `n` bytes.
    pub body: Option<usize>,
}

/// Builds a request; refuses a method, target or header that would not make
/// a valid request (nothing is sent then).
pub fn build_request(
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Request<Full<Bytes>>, String> {
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("invalid HTTP method {method:?}"))?;
    if target.is_empty() || !target.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(format!("invalid request path {target:?}"));
    }
    let mut req = Request::builder()
        .method(method)
        .uri(target)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| format!("invalid request {target:?}: {e}"))?;
    for (name, value) in headers {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        if [
            hyper::header::CONTENT_LENGTH,
            hyper::header::CONNECTION,
            hyper::header::TRANSFER_ENCODING,
        ]
        .contains(&n)
        {
            return Err(format!("header {name} is managed by the client"));
        }
        let v =
            HeaderValue::from_str(value).map_err(|_| format!("invalid value for header {name}"))?;
        req.headers_mut().append(n, v);
    }
    // One request per connection: the server may close after answering.
    req.headers_mut()
        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    Ok(req)
}

/// Sends `req` over the connected `io` (HTTP/1.1, header names in title
/// case) and reads the response: the status and, per `caps`, the body.
pub async fn exchange<I>(
    io: I,
    req: Request<Full<Bytes>>,
    caps: Caps,
) -> Result<(u16, Vec<u8>), Failure>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .max_header_size(caps.head)
        .max_buf_size(caps.head.max(MIN_BUF))
        .handshake(TokioIo::new(io))
        .await
        .map_err(Failure::Http)?;
    // The connection is driven in its own task, aborted when we are done.
    let driver = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let response = sender.send_request(req).await.map_err(Failure::Http)?;
    let status = response.status().as_u16();
    let body = match caps.body {
        None => Vec::new(),
        Some(max) => read_body(response.into_body(), status, max).await?,
    };
    drop(driver);
    Ok((status, body))
}

/// hyper's smallest allowed read buffer.
const MIN_BUF: usize = 8 * 1024;

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn read_body(body: Incoming, status: u16, max: usize) -> Result<Vec<u8>, Failure> {
    match Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes().to_vec()),
        Err(e) => match e.downcast::<hyper::Error>() {
            Ok(h) => Err(Failure::Http(*h)),
            // The only other error Limited gives is its LengthLimitError.
            Err(_) => Err(Failure::BodyTooLarge { status, max }),
        },
    }
}

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Endpoint {
    /// "ip:port" (IPv6 as "[addr]:port") is TCP; anything else is a unix
    /// socket path.
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

/// One request with `Connection: close` (the CLI's and the tests'); returns
/// (status, body). `Host` defaults to `localhost` (unix) or the address
/// (TCP); `Content-Length`, `Connection` and `Transfer-Encoding` are the
/// client's and may not be passed in `headers`. Interim 1xx responses are
/// skipped. The whole exchange, connecting included, is bounded by
/// `timeout`.
pub async fn request(
    target: &Endpoint,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut req = build_request(method, path, headers, body).map_err(anyhow::Error::msg)?;
    if !req.headers().contains_key(hyper::header::HOST) {
        let host = match target {
            Endpoint::Unix(_) => "localhost".to_string(),
            Endpoint::Tcp(addr) => addr.to_string(),
        };
        let host = HeaderValue::from_str(&host).context("Host header")?;
        req.headers_mut().insert(hyper::header::HOST, host);
    }
    // An empty POST still says "Content-Length: 0".
    if body.is_empty() && matches!(method, "POST" | "PUT" | "PATCH") {
        req.headers_mut()
            .insert(hyper::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    let caps = Caps {
        head: CLIENT_MAX_HEAD_BYTES,
        body: Some(CLIENT_MAX_BODY_BYTES),
    };
    let run = async {
        match target {
            Endpoint::Unix(socket) => {
                let stream = UnixStream::connect(socket)
                    .await
                    .with_context(|| format!("connecting to {}", socket.display()))?;
                anyhow::Ok(exchange(stream, req, caps).await?)
            }
            Endpoint::Tcp(addr) => {
                let stream = TcpStream::connect(addr)
                    .await
                    .with_context(|| format!("connecting to {addr}"))?;
                let _ = stream.set_nodelay(true);
                Ok(exchange(stream, req, caps).await?)
            }
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(res) => res.with_context(|| format!("{method} {path} on {target}")),
        Err(_) => bail!("{method} {path} on {target}: timed out after {timeout:?}"),
    }
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
