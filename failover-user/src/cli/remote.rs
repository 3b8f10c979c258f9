//! Admin verbs: the CLI as a client of the daemon's API (unix socket, or TCP
//! with a token).

use std::path::PathBuf;

use anyhow::Context as _;

use crate::{api as admin, config, sys::http_client as http};

/// How the CLI reaches the daemon's admin API.
#[derive(clap::Args, Clone)]
pub struct ApiArgs {
    /// The daemon's config (for its admin socket).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The admin socket (default /run/failover/admin.sock, or the config's).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Use the TCP listener at ip:port instead (needs --token-file).
    #[arg(long)]
    pub tcp: Option<std::net::SocketAddr>,
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

#[derive(clap::Args, Clone)]
pub struct ActionArgs {
    pub service: String,
    pub backend: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub fn api_call(
    api: &ApiArgs,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<serde_json::Value> {
    api_call_within(api, method, path, body, std::time::Duration::from_secs(30))
}

/// [`api_call`] with its own limit (a drill or a switchover waits for a
/// promotion).
pub fn api_call_within(
    api: &ApiArgs,
    method: &str,
    path: &str,
    body: &[u8],
    limit: std::time::Duration,
) -> anyhow::Result<serde_json::Value> {
    let target = match (&api.tcp, &api.socket, &api.config) {
        (Some(addr), _, _) => http::Endpoint::Tcp(*addr),
        (None, Some(s), _) => http::Endpoint::Unix(s.clone()),
        (None, None, Some(c)) => http::Endpoint::Unix(config::load(c)?.admin.socket),
        (None, None, None) => http::Endpoint::Unix(admin::default_socket(std::path::Path::new(
            config::DEFAULT_STATE_DIR,
        ))),
    };
    let token = match &api.token_file {
        Some(p) => Some(admin::read_token(p)?),
        None => None,
    };
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    let (status, body) = rt
        .block_on(http::request(&target, method, path, &headers, body, limit))
        .with_context(|| {
            format!("talking to the daemon at {target:?} (is it running? are you root?)")
        })?;
    let v: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()));
    if !(200..300).contains(&status) {
        let why = v
            .get("error")
            .and_then(|e| e.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        anyhow::bail!("the daemon refused ({status}): {why}");
    }
    Ok(v)
}

pub fn cmd_action(action: &str, a: &ActionArgs) -> anyhow::Result<()> {
    let v = api_call(
        &a.api,
        "POST",
        &format!("/v1/services/{}/backends/{}/{action}", a.service, a.backend),
        b"",
    )?;
    let (from, to) = (
        v["from"].as_str().unwrap_or("?"),
        v["to"].as_str().unwrap_or("?"),
    );
    if from == to {
        println!(
            "{}/{}: unchanged ({to}; map {})",
            a.service,
            a.backend,
            v["map_word"].as_str().unwrap_or("?")
        );
    } else {
        println!(
            "{}/{}: {from} -> {to} (map {}, version {})",
            a.service,
            a.backend,
            v["map_word"].as_str().unwrap_or("?"),
            v["map_version"]
        );
    }
    Ok(())
}

/// `failover drill`: prints the plan (`--dry-run`) or the measured RTO.
pub fn cmd_drill(
    service: &str,
    to: Option<&str>,
    back: bool,
    dry_run: bool,
    api: &ApiArgs,
) -> anyhow::Result<()> {
    let body = serde_json::json!({"to": to, "back": back, "dry_run": dry_run}).to_string();
    let v = api_call_within(
        api,
        "POST",
        &format!("/v1/services/{service}/drill"),
        body.as_bytes(),
        std::time::Duration::from_secs(300),
    )?;
    println!("drill of {service}:");
    for (i, step) in v["plan"].as_array().into_iter().flatten().enumerate() {
        println!("  {}. {}", i + 1, step.as_str().unwrap_or("?"));
    }
    if dry_run {
        println!("(dry run: nothing changed)");
        return Ok(());
    }
    let line = |what: &str, x: &serde_json::Value| match x.get("rto_ms").and_then(|r| r.as_f64()) {
        Some(ms) => println!(
            "{what}: {} is active (token {}), RTO {ms:.1} ms",
            x["switchover"]["to"].as_str().unwrap_or("?"),
            x["switchover"]["token"]
        ),
        None => println!(
            "{what}: not done: {}",
            x["error"].as_str().unwrap_or("unknown error")
        ),
    };
    line("drill", &v);
    if let Some(b) = v.get("back") {
        line("back", b);
    }
    Ok(())
}
