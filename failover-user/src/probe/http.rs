//! HTTP check: one GET through the shared client (`sys::http_client`),
//! judged on the status and optionally the body.

use http_body_util::Full;
use hyper::{Request, body::Bytes};

use super::*;
use crate::sys::http_client::{self, Caps, Failure};

/// One GET request; judged on the status code and optionally the body.
pub(super) async fn http_check(
    addr: SocketAddr,
    path: &str,
    host: &str,
    expect_status: &[(u16, u16)],
    expect_body: Option<&str>,
) -> Check {
    let request = http_request(path, host)?;
    let stream = TcpStream::connect(addr).await.map_err(|e| io_detail(&e))?;
    // Without a body expectation only the head is read.
    let caps = Caps {
        head: HTTP_MAX_RESPONSE,
        body: expect_body.map(|_| HTTP_MAX_RESPONSE),
    };
    match http_client::exchange(stream, request, caps).await {
        Ok((status, body)) => judge_http(status, &body, expect_status, expect_body),
        Err(Failure::BodyTooLarge { status, max }) => {
            judge_http(status, b"", expect_status, None)?;
            Err(format!(
                "http {status} but the body exceeds {} KiB",
                max / 1024
            ))
        }
        Err(Failure::Http(e)) if e.is_incomplete_message() => {
            Err("http: connection closed without response".to_string())
        }
        Err(Failure::Http(e)) => Err(format!("http: {}", http_client::hyper_detail(&e))),
    }
}

/// The request; refuses a path or host that would break it.
pub(super) fn http_request(path: &str, host: &str) -> Result<Request<Full<Bytes>>, String> {
    let path = if path.is_empty() { "/" } else { path };
    let bad = |s: &str| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control());
    if bad(path) {
        return Err(format!("http: invalid path {:?}", clip(path)));
    }
    if bad(host) {
        return Err(format!("http: invalid Host {:?}", clip(host)));
    }
    http_client::build_request(
        "GET",
        path,
        &[
            ("Host", host),
            ("User-Agent", "failover-health"),
            ("Accept", "*/*"),
        ],
        b"",
    )
    .map_err(|e| format!("http: {e}"))
}

/// The verdict on a response.
pub(super) fn judge_http(
    code: u16,
    body: &[u8],
    expect_status: &[(u16, u16)],
    expect_body: Option<&str>,
) -> Check {
    let ranges = if expect_status.is_empty() {
        DEFAULT_STATUS
    } else {
        expect_status
    };
    if !ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&code)) {
        return Err(format!("http {code}"));
    }
    if let Some(needle) = expect_body
        && !contains(body, needle.as_bytes())
    {
        return Err(format!("http {code} but body lacks {:?}", clip(needle)));
    }
    Ok(format!("http {code}"))
}
