use std::net::SocketAddrV6;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
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
        let (addr, _server) = http_server("127.0.0.1:0", b"SSH-2.0-OpenSSH_9.6\r\n", after).await;
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
async fn http_body_over_64k_is_unhealthy() {
    let mut resp = b"HTTP/1.1 200 OK\r\n\r\nhead-marker".to_vec();
    resp.extend(std::iter::repeat_n(b'a', 70 * 1024));
    resp.extend_from_slice(b"tail-marker");
    // Whatever is looked for: a body over the limit is never read whole.
    for needle in ["head-marker", "tail-marker"] {
        let (addr, _server) = http_server("127.0.0.1:0", &resp, After::Hold).await;
        let r = probe(
            &http("/", &[(200, 299)], Some(needle)),
            &target(addr),
            Duration::from_secs(2),
        )
        .await;
        assert!(!r.ok, "{needle}: {r:?}");
        assert_eq!(r.detail, "http 200 but the body exceeds 64 KiB");
        assert!(r.latency < Duration::from_secs(1), "{r:?}");
    }
    // Just under the limit (Content-Length framed) is read and searched.
    let mut resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 64 * 1024).into_bytes();
    resp.extend(std::iter::repeat_n(b'a', 64 * 1024 - 11));
    resp.extend_from_slice(b"tail-marker");
    let (addr, _server) = http_server("127.0.0.1:0", &resp, After::Hold).await;
    let r = probe(
        &http("/", &[(200, 299)], Some("tail-marker")),
        &target(addr),
        Duration::from_secs(2),
    )
    .await;
    assert!(r.ok, "{r:?}");
    // Out of range and too large: the status decides.
    let mut resp = b"HTTP/1.1 503 Busy\r\n\r\n".to_vec();
    resp.extend(std::iter::repeat_n(b'a', 70 * 1024));
    let (addr, _server) = http_server("127.0.0.1:0", &resp, After::Close).await;
    let r = probe(
        &http("/", &[(200, 299)], Some("x")),
        &target(addr),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!((r.ok, r.detail.as_str()), (false, "http 503"), "{r:?}");
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

/// A chunked body arriving split at any byte is decoded; a malformed one
/// is an unhealthy result.
#[tokio::test]
async fn chunked_body_any_split() {
    let raw = b"4\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n";
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    for split in [0, 1, 3, 4, 9, 10, 17, 30, raw.len() - 3, raw.len() - 1] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            read_request_head(&mut s).await;
            s.write_all(head).await.unwrap();
            s.write_all(&raw[..split]).await.unwrap();
            s.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.write_all(&raw[split..]).await.unwrap();
            let mut sink = [0u8; 64];
            let _ = tokio::time::timeout(TEST_BOUND, s.read(&mut sink)).await;
        });
        let r = probe(
            &http("/", &[(200, 299)], Some("Wikipedia in\r\n\r\nchunks.")),
            &target(addr),
            Duration::from_secs(2),
        )
        .await;
        assert!(r.ok, "split {split}: {r:?}");
        server.abort();
    }
    for bad in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
    ] {
        let (addr, _server) = http_server("127.0.0.1:0", bad, After::Hold).await;
        let r = probe(
            &http("/", &[(200, 299)], Some("abc")),
            &target(addr),
            Duration::from_secs(2),
        )
        .await;
        assert!(!r.ok && r.detail.starts_with("http: "), "{r:?}");
    }
}

/// Status lines and header ends as the probe reads them from a server.
#[tokio::test]
async fn status_lines_and_head_end() {
    for (resp, want) in [
        (&b"HTTP/1.1 200 OK\r\n\r\nbody"[..], Ok("http 200")),
        (b"HTTP/1.0 404\r\n\r\n", Err("http 404")),
        (b"HTTP/1.1 200 OK\n\nbody", Ok("http 200")),
        (b"HTTP/1.1 20 OK\r\n\r\n", Err("http: malformed")),
        (b"HTTP/1.1 099 X\r\n\r\n", Err("http: malformed")),
        (b"ICY 200 OK\r\n\r\n", Err("http: malformed")),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            Err("http: malformed"),
        ),
    ] {
        let (addr, _server) = http_server("127.0.0.1:0", resp, After::Close).await;
        let r = probe(
            &http("/", &[(200, 299)], None),
            &target(addr),
            Duration::from_secs(2),
        )
        .await;
        let shown = String::from_utf8_lossy(resp);
        match want {
            Ok(d) => assert!(r.ok && r.detail == d, "{shown:?}: {r:?}"),
            Err(d) => assert!(!r.ok && r.detail.starts_with(d), "{shown:?}: {r:?}"),
        }
    }
    // A head that never ends within the limit.
    let mut resp = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..4000 {
        resp.extend_from_slice(format!("X-{i}: yyyyyyyyyyyy\r\n").as_bytes());
    }
    let (addr, _server) = http_server("127.0.0.1:0", &resp, After::Hold).await;
    let r = probe(
        &http("/", &[(200, 299)], None),
        &target(addr),
        Duration::from_secs(2),
    )
    .await;
    assert!(!r.ok && r.detail.contains("too large"), "{r:?}");
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
    let (addr, server) = udp_server("127.0.0.1:0", 10, |_| Some(b"+PONG ready\r\n".to_vec())).await;
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

/// Children run in `/`, not in the daemon's working directory (which
/// their user may not be allowed to enter).
#[tokio::test]
async fn exec_runs_in_the_root_directory() {
    let r = probe(
        &sh(r#"test "$(pwd)" = /"#),
        &target("127.0.0.1:1".parse().unwrap()),
        Duration::from_secs(5),
    )
    .await;
    assert!(r.ok, "{r:?}");
}

/// `{address}`, `{port}`, `{backend}` in arguments are the target's,
/// each whole in its own argument (no shell sees them); unknown
/// placeholders stay as they are.
#[tokio::test]
async fn exec_placeholders_are_the_targets() {
    let spec = exec(&[
        "/bin/sh",
        "-c",
        r#"test "$1|$2|$3|$4" = "127.0.0.3|4242|{backend-x}|b1@127.0.0.3:4242""#,
        "sh",
        "{address}",
        "{port}",
        "{backend-x}",
        "{backend}@{address}:{port}",
    ]);
    let mut t = target("127.0.0.3:4242".parse().unwrap());
    t.backend = "b1".into();
    let r = probe(&spec, &t, Duration::from_secs(5)).await;
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
