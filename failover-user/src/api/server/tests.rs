//! The server's acceptance suite: every limit and behaviour over a real
//! socket (raw bytes where the framing itself is under test).

use super::*;
use crate::{
    api::{limits::Bucket, listen::bind_unix},
    sys::http_client::{Endpoint, request},
};
use serde_json::{Value, json};
use std::{
    net::SocketAddr,
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};
use tokio::net::TcpListener;

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

/// The length of the response head (through the blank line), if complete.
fn head_len(resp: &[u8]) -> Option<usize> {
    resp.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// The status of "HTTP/1.x NNN ...".
fn status_of(resp: &[u8]) -> u16 {
    assert!(
        resp.starts_with(b"HTTP/1.") && resp.len() > 12,
        "not a response: {:?}",
        String::from_utf8_lossy(resp)
    );
    std::str::from_utf8(&resp[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .expect("a status code")
}

fn head_of(resp: &[u8]) -> String {
    let n = head_len(resp).expect("a response header");
    String::from_utf8_lossy(&resp[..n]).to_ascii_lowercase()
}

fn body_of(resp: &[u8]) -> &[u8] {
    &resp[head_len(resp).expect("a response header")..]
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().expect("a number"))
}

/// Reads exactly one Content-Length framed response from a keep-alive connection.
async fn read_one(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, String, Vec<u8>) {
    tokio::time::timeout(STEP, async {
        loop {
            if let Some(n) = head_len(buf) {
                let status = status_of(buf);
                let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                let cl = content_length(&head);
                while buf.len() < n + cl {
                    assert!(stream.read_buf(buf).await.unwrap() > 0, "early EOF");
                }
                let body = buf[n..n + cl].to_vec();
                buf.drain(..n + cl);
                return (status, head, body);
            }
            assert!(stream.read_buf(buf).await.unwrap() > 0, "early EOF");
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
    for (req, want) in [
        (
            &b"POST / HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n"[..],
            413,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
            413,
        ),
        // Beyond u64: hyper calls it an invalid Content-Length (400; 413 before).
        (
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1025\r\nExpect: 100-continue\r\n\r\n",
            413,
        ),
    ] {
        let t0 = std::time::Instant::now();
        let resp = raw(server.addr, req).await;
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "did not wait for the body"
        );
        assert_eq!(status_of(&resp), want, "{}", String::from_utf8_lossy(&resp));
        assert!(!String::from_utf8_lossy(&resp).contains("100 Continue"));
        let v: Value = serde_json::from_slice(body_of(&resp)).unwrap();
        assert_eq!(v["status"], want);
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
    // hyper does not tell an unsupported version from a malformed one: both are 400 now (505
    // before).
    let resp = raw(server.addr, b"GET / HTTP/2.0\r\n\r\n").await;
    assert_eq!(status_of(&resp), 400);
    // A fragment is dropped by hyper's URI parser (it was a 400 before): the path is served.
    let resp = raw(
        server.addr,
        b"GET /a#frag HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200);
    let v: Value = serde_json::from_slice(body_of(&resp)).unwrap();
    assert_eq!(v["path"], "/a");
    // Repeated identical Content-Length fields are accepted; hyper refuses a list in one field
    // ("2, 2": 400, accepted before).
    let resp = raw(
        server.addr,
        b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\nConnection: close\r\n\r\nab",
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{}", String::from_utf8_lossy(&resp));
    let resp = raw(
        server.addr,
        b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\nConnection: close\r\n\r\nab",
    )
    .await;
    assert_eq!(status_of(&resp), 400, "{}", String::from_utf8_lossy(&resp));
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
            resp.is_empty() || resp.starts_with(b"HTTP/1.1 ") || resp.starts_with(b"HTTP/1.0 "),
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

/// Head parsing edge cases, as a client sees them: bare LF line ends,
/// blanks around values, any case of field names, HTTP/1.0, and the body
/// limit checked against the announced length.
#[tokio::test]
async fn head_parsing_edge_cases() {
    let limits = Limits {
        max_body_bytes: 10,
        ..Limits::default()
    };
    let server = start_tcp(echo(), limits).await;
    let resp = raw(
        server.addr,
        b"GET /p?q HTTP/1.1\nX:  v \t\nCONTENT-LENGTH: 0\nConnection: close\n\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200);
    let v: Value = serde_json::from_slice(body_of(&resp)).unwrap();
    assert!(
        v["headers"]
            .as_array()
            .unwrap()
            .contains(&json!(["x", "v"]))
    );
    assert_eq!(
        (v["path"].clone(), v["query"].clone()),
        (json!("/p"), json!("q"))
    );
    // Keep-alive unless asked otherwise; HTTP/1.0 closes.
    let mut stream = connect(server.addr).await;
    let mut buf = Vec::new();
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let (status, head, _) = read_one(&mut stream, &mut buf).await;
    assert_eq!(status, 200);
    assert!(!head.contains("connection: close"));
    let resp = raw(server.addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(head_of(&resp).contains("connection: close"));
    let resp = raw(
        server.addr,
        b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 413);
    server.shutdown().await;
}

#[tokio::test]
async fn response_write_is_bounded() {
    let limits = Limits {
        read_timeout: ms(300),
        ..Limits::default()
    };
    const BIG: usize = 32 << 20;
    let server = start_tcp(
        handler_fn(|_req: Request| async { Response::text(200, "x".repeat(BIG)) }),
        limits,
    )
    .await;
    let mut stream = connect(server.addr).await;
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    // A client that does not read: the server gives up after the write bound and closes.
    tokio::time::sleep(ms(1500)).await;
    let got = read_to_end(&mut stream).await;
    assert!(got.len() < BIG, "the whole response was written");
    // The server is fine, and its shutdown is not held up.
    let (status, _) = request(&server.endpoint(), "HEAD", "/", &[], b"", CLIENT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let t0 = std::time::Instant::now();
    server.shutdown().await;
    assert!(t0.elapsed() < Duration::from_secs(2));
}
