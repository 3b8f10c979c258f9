use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use rustls_pki_types::CertificateDer;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use super::*;

const EVENT: &str = r#"{"kind":"failover","service":"web","reason":"tier 0 has no healthy backend: $(touch x) `y` 'q' \"z\"","from_tier":0,"to_tier":1}"#;

/// A fresh directory for one test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("failover-hooks-{}-{n}-{name}", std::process::id()));
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
fn serve_once(listener: TcpListener, response: &'static str) -> tokio::task::JoinHandle<Request> {
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
    let mut params = rcgen::CertificateParams::new(vec!["hooks.test".to_string()]).expect("params");
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

/// Status lines and interim responses as the client reads them from a
/// server: only a well-formed final status counts.
#[tokio::test]
async fn status_lines() {
    let cases: [(&'static str, Result<&str, &str>); 6] = [
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            Ok("http 200"),
        ),
        ("HTTP/1.0 404\r\n\r\n", Err("http 404")),
        ("HTTP/1.1 20 OK\r\n\r\n", Err("bad response")),
        ("HTTP/2 200\r\n\r\n", Err("bad response")),
        ("hello\r\n\r\n", Err("bad response")),
        (
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\nA: b\r\n\r\nHTTP/1.1 202 Accepted\r\n\r\n",
            Ok("http 202"),
        ),
    ];
    for (response, want) in cases {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = serve_once(l, response);
        let o = run(
            &webhook(&format!("http://{addr}/"), Duration::from_secs(5)),
            EVENT,
            &env(),
        )
        .await;
        match want {
            Ok(detail) => assert!(o.ok && o.detail == detail, "{response:?}: {o:?}"),
            Err(start) => assert!(!o.ok && o.detail.starts_with(start), "{response:?}: {o:?}"),
        }
        server.await.expect("server");
    }
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
