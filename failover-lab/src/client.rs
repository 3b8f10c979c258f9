//! A client for failover measurements: a new TCP connection to the VIP
//! every millisecond, each with its own budget, recording who answered.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

/// One request of the stream.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was sent, relative to the stream's `t0`.
    pub sent: Duration,
    /// The backend that answered, `None` if nobody did within 300 ms.
    pub who: Option<String>,
    /// From sending to the answer (`None` without one).
    pub rtt: Option<Duration>,
}

/// Opens a new TCP connection to `to` every millisecond for `dur`, from the
/// network namespace `netns` (each request with its own 300 ms budget, so a
/// stuck one does not slow the rest). Send times are relative to `t0`.
pub fn stream(
    netns: &str,
    to: SocketAddr,
    t0: Instant,
    dur: Duration,
) -> std::thread::JoinHandle<Vec<Sample>> {
    let name = netns.to_string();
    std::thread::spawn(move || {
        if let Err(e) = failover_user::sys::netns::enter_named(&name) {
            tracing::warn!(error = %format!("{e:#}"), "client stream cannot enter its namespace");
            return Vec::new();
        }
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return Vec::new();
        };
        rt.block_on(async move {
            let mut handles = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < dur {
                tick.tick().await;
                n += 1;
                let msg = format!("r{n}");
                let sent = t0.elapsed();
                handles.push(tokio::spawn(async move {
                    let t = Instant::now();
                    let who = tokio::time::timeout(Duration::from_millis(300), ask(to, msg))
                        .await
                        .ok()
                        .flatten();
                    let rtt = who.as_ref().map(|_| t.elapsed());
                    Sample { sent, who, rtt }
                }));
            }
            let mut out = Vec::new();
            for h in handles {
                if let Ok(s) = h.await {
                    out.push(s);
                }
            }
            out
        })
    })
}

async fn ask(to: SocketAddr, msg: String) -> Option<String> {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let s = tokio::net::TcpStream::connect(to).await.ok()?;
    let (r, mut w) = s.into_split();
    w.write_all(format!("{msg}\n").as_bytes()).await.ok()?;
    let mut line = String::new();
    tokio::io::BufReader::new(r)
        .read_line(&mut line)
        .await
        .ok()?;
    let (name, echoed) = line.trim_end().split_once(' ')?;
    (echoed == msg).then(|| name.to_string())
}

/// From the failure at `fail_at` to the first answer, by `standby`, of a
/// request sent after it; and the requests that failed in between.
pub fn recovery(samples: &[Sample], fail_at: Duration, standby: &str) -> Option<(Duration, usize)> {
    let first = samples
        .iter()
        .filter(|s| s.sent >= fail_at && s.who.as_deref() == Some(standby))
        .map(|s| s.sent)
        .min()?;
    let failed = samples
        .iter()
        .filter(|s| s.sent >= fail_at && s.sent < first && s.who.is_none())
        .count();
    Some((first - fail_at, failed))
}

/// Load from `netns` towards `to` for `dur`: `conns` tasks, each either
/// reusing one connection for request after request (`keepalive`) or
/// opening a new connection per request. Returns (answered, failed).
pub fn load(
    netns: &str,
    to: SocketAddr,
    conns: usize,
    dur: Duration,
    keepalive: bool,
) -> anyhow::Result<(u64, u64)> {
    use anyhow::Context as _;
    let name = netns.to_string();
    std::thread::spawn(move || -> anyhow::Result<(u64, u64)> {
        failover_user::sys::netns::enter_named(&name)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("runtime")?;
        rt.block_on(async move {
            let deadline = tokio::time::Instant::now() + dur;
            let mut tasks = Vec::new();
            for c in 0..conns {
                tasks.push(tokio::spawn(async move {
                    let (mut ok, mut bad) = (0u64, 0u64);
                    let mut n = 0u64;
                    while tokio::time::Instant::now() < deadline {
                        if keepalive {
                            match keepalive_session(to, c, deadline, &mut n).await {
                                Some(k) => ok += k,
                                None => bad += 1,
                            }
                        } else {
                            n += 1;
                            let budget = Duration::from_millis(500);
                            match tokio::time::timeout(budget, ask(to, format!("c{c}n{n}"))).await {
                                Ok(Some(_)) => ok += 1,
                                _ => bad += 1,
                            }
                        }
                    }
                    (ok, bad)
                }));
            }
            let (mut ok, mut bad) = (0, 0);
            for t in tasks {
                if let Ok((o, b)) = t.await {
                    ok += o;
                    bad += b;
                }
            }
            Ok((ok, bad))
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("load thread panicked"))?
}

/// One connection used for requests until `deadline`; the answers it got
/// (`None`: it could not connect).
async fn keepalive_session(
    to: SocketAddr,
    c: usize,
    deadline: tokio::time::Instant,
    n: &mut u64,
) -> Option<u64> {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let s = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(to),
    )
    .await
    .ok()?
    .ok()?;
    let (r, mut w) = s.into_split();
    let mut r = tokio::io::BufReader::new(r);
    let mut ok = 0;
    let mut line = String::new();
    while tokio::time::Instant::now() < deadline {
        *n += 1;
        let msg = format!("c{c}n{n}");
        if w.write_all(format!("{msg}\n").as_bytes()).await.is_err() {
            break;
        }
        line.clear();
        match tokio::time::timeout(Duration::from_millis(500), r.read_line(&mut line)).await {
            Ok(Ok(k)) if k > 0 && line.trim_end().ends_with(&msg) => ok += 1,
            _ => break,
        }
    }
    Some(ok)
}
