//! The daemon's listeners: the admin API on its unix socket (trusted: the
//! socket's mode is the check) and optionally on TCP (token required), and
//! `/metrics` on TCP. Every listener gets the same bounds and request rate.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::{sync::watch, task::JoinHandle};

use super::{AdminState, handle, http, metrics_response};
use crate::config;

/// Binds every configured listener and serves until `stop` turns true.
/// Returns the server tasks (they end after `stop`).
pub async fn start(
    st: Arc<AdminState>,
    admin: &config::Admin,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let handler = |trusted: bool| -> http::Handler {
        let st = st.clone();
        Arc::new(move |req| {
            let st = st.clone();
            Box::pin(async move { handle(st, req, trusted).await })
        })
    };
    let limits = http::Limits {
        max_requests_per_sec: admin.rate_limit,
        ..http::Limits::default()
    };
    let mut servers = Vec::new();
    let unix = http::bind_unix(&admin.socket)
        .with_context(|| format!("admin socket {}", admin.socket.display()))?;
    servers.push(tokio::spawn(http::serve_unix(
        unix,
        handler(true),
        limits,
        stop.clone(),
    )));
    if let Some(addr) = admin.listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("admin listener {addr}"))?;
        servers.push(tokio::spawn(http::serve_tcp(
            l,
            handler(false),
            limits,
            stop.clone(),
        )));
    }
    if let Some(addr) = admin.metrics_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics listener {addr}"))?;
        let st = st.clone();
        let h: http::Handler = Arc::new(move |req| {
            let st = st.clone();
            Box::pin(async move { metrics_response(&st, &req) })
        });
        servers.push(tokio::spawn(http::serve_tcp(l, h, limits, stop.clone())));
    }
    Ok(servers)
}
