//! HTTP check: one GET, judged on the status and optionally the body.

use super::*;

/// One GET request; judged on the status code and optionally the body.
pub(super) async fn http_check(
    addr: SocketAddr,
    path: &str,
    host: &str,
    expect_status: &[(u16, u16)],
    expect_body: Option<&str>,
) -> Check {
    let request = http_request(path, host)?;
    let mut stream = TcpStream::connect(addr).await.map_err(|e| io_detail(&e))?;
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("http send: {}", io_detail(&e)))?;
    let response = read_response(&mut stream, expect_body.is_some()).await?;
    judge_http(&response, expect_status, expect_body)
}

/// The request bytes; refuses a path or host that would break the request.
pub(super) fn http_request(path: &str, host: &str) -> Result<String, String> {
    let path = if path.is_empty() { "/" } else { path };
    let bad = |s: &str| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control());
    if bad(path) {
        return Err(format!("http: invalid path {:?}", clip(path)));
    }
    if bad(host) {
        return Err(format!("http: invalid Host {:?}", clip(host)));
    }
    Ok(format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         User-Agent: failover-health\r\nAccept: */*\r\n\r\n"
    ))
}

/// What was read of a response.
#[derive(Debug)]
pub(super) struct Response {
    status: u16,
    /// The body (decoded if chunked), as far as it was read.
    body: Vec<u8>,
}

/// A parsed response header.
#[derive(Debug)]
pub(super) struct Head {
    status: u16,
    /// Offset of the first body byte in the response.
    body_start: usize,
    framing: Framing,
}

/// How the end of a response body is found.
#[derive(Debug)]
pub(super) enum Framing {
    /// No body (1xx, 204, 304).
    Empty,
    /// `Content-Length`.
    Length(usize),
    /// `Transfer-Encoding: chunked`, decoded as it arrives.
    Chunked(Dechunker),
    /// Until the server closes (or the size limit).
    UntilClose,
}

/// Reads a response until its header (and, with `need_body`, its body) is
/// complete, the server closes, or [`HTTP_MAX_RESPONSE`] bytes were read.
pub(super) async fn read_response<S: AsyncRead + Unpin>(
    stream: &mut S,
    need_body: bool,
) -> Result<Response, String> {
    let mut raw = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let mut head: Option<Head> = None;
    let mut scanned = 0;
    while raw.len() < HTTP_MAX_RESPONSE {
        let want = chunk.len().min(HTTP_MAX_RESPONSE - raw.len());
        let n = match stream.read(&mut chunk[..want]).await {
            Ok(n) => n,
            // A reset after the header (the server closed without reading
            // our request, say) ends the response like a close does.
            Err(_) if head.is_some() => break,
            Err(e) => return Err(format!("http read: {}", io_detail(&e))),
        };
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if head.is_none() {
            let sniff = raw.len().min(5);
            if raw[..sniff] != b"HTTP/"[..sniff] {
                return Err(format!("http: malformed response {:?}", first_line(&raw)));
            }
            match find_head_end(&raw, scanned) {
                Some(end) => head = Some(parse_head(&raw[..end], end)?),
                None => {
                    scanned = raw.len().saturating_sub(2);
                    continue;
                }
            }
        }
        if let Some(h) = &mut head
            && (!need_body || body_complete(h, &raw)?)
        {
            break;
        }
    }
    let Some(mut head) = head else {
        return Err(if raw.is_empty() {
            "http: connection closed without response".to_string()
        } else if raw.len() >= HTTP_MAX_RESPONSE {
            format!(
                "http: response header exceeds {} KiB",
                HTTP_MAX_RESPONSE / 1024
            )
        } else {
            format!("http: truncated response header {:?}", first_line(&raw))
        });
    };
    let body = if need_body {
        take_body(&mut head, &raw)?
    } else {
        Vec::new()
    };
    Ok(Response {
        status: head.status,
        body,
    })
}

/// Whether the body behind `head` is complete in `raw`.
pub(super) fn body_complete(head: &mut Head, raw: &[u8]) -> Result<bool, String> {
    let body = raw.get(head.body_start..).unwrap_or_default();
    Ok(match &mut head.framing {
        Framing::Empty => true,
        Framing::Length(n) => body.len() >= *n,
        Framing::Chunked(d) => {
            d.feed(body)?;
            d.is_done()
        }
        Framing::UntilClose => false,
    })
}

/// The body behind `head` in `raw`, as far as it was received.
pub(super) fn take_body(head: &mut Head, raw: &[u8]) -> Result<Vec<u8>, String> {
    let body = raw.get(head.body_start..).unwrap_or_default();
    Ok(match &mut head.framing {
        Framing::Empty => Vec::new(),
        Framing::Length(n) => body[..body.len().min(*n)].to_vec(),
        Framing::Chunked(d) => {
            d.feed(body)?;
            std::mem::take(&mut d.body)
        }
        Framing::UntilClose => body.to_vec(),
    })
}

/// Offset just past the blank line ending the header, searching for line
/// ends from `from`; accepts bare `\n` line ends too.
pub(super) fn find_head_end(raw: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(off) = raw.get(i..)?.iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match raw.get(nl + 1..) {
            Some([b'\n', ..]) => return Some(nl + 2),
            Some([b'\r', b'\n', ..]) => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// Parses the status line and the headers that frame the body.
pub(super) fn parse_head(head: &[u8], body_start: usize) -> Result<Head, String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let status = parse_status_line(status_line)
        .ok_or_else(|| format!("http: malformed status line {:?}", clip(status_line)))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<usize>()
                .map_err(|_| format!("http: invalid Content-Length {:?}", clip(value)))?;
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked only counts as the last coding applied.
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    let framing = match (status, chunked, length) {
        (100..=199 | 204 | 304, _, _) => Framing::Empty,
        (_, true, _) => Framing::Chunked(Dechunker::default()),
        (_, false, Some(n)) => Framing::Length(n),
        (_, false, None) => Framing::UntilClose,
    };
    Ok(Head {
        status,
        body_start,
        framing,
    })
}

/// The code from "HTTP/x.y NNN reason", if the line is one.
pub(super) fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok().filter(|c| *c >= 100)
}

/// The verdict on a response.
pub(super) fn judge_http(
    response: &Response,
    expect_status: &[(u16, u16)],
    expect_body: Option<&str>,
) -> Check {
    let code = response.status;
    let ranges = if expect_status.is_empty() {
        DEFAULT_STATUS
    } else {
        expect_status
    };
    if !ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&code)) {
        return Err(format!("http {code}"));
    }
    if let Some(needle) = expect_body
        && !contains(&response.body, needle.as_bytes())
    {
        return Err(format!("http {code} but body lacks {:?}", clip(needle)));
    }
    Ok(format!("http {code}"))
}

/// Incremental decoder of a chunked body: fed the raw body received so far
/// (which only grows), it decodes what it has not seen yet.
#[derive(Debug, Default)]
pub(super) struct Dechunker {
    /// Offset in the raw body up to which it was decoded.
    pos: usize,
    state: ChunkState,
    /// Decoded bytes.
    pub(super) body: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, with this many bytes to go.
    Data(usize),
    /// Expecting the line end after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to a blank one.
    Trailer,
    /// The body is complete.
    Done,
}

impl Dechunker {
    /// Decodes `raw[self.pos..]` as far as it is complete.
    pub(super) fn feed(&mut self, raw: &[u8]) -> Result<(), String> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(()),
                ChunkState::Data(left) => {
                    let avail = &raw[self.pos.min(raw.len())..];
                    if avail.is_empty() {
                        return Ok(());
                    }
                    let take = left.min(avail.len());
                    self.body.extend_from_slice(&avail[..take]);
                    self.pos += take;
                    self.state = if take == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - take)
                    };
                }
                ChunkState::Size => {
                    let Some(line) = self.next_line(raw)? else {
                        return Ok(());
                    };
                    let size = parse_chunk_size(line)?;
                    self.state = if size == 0 {
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::DataEnd => {
                    let Some(line) = self.next_line(raw)? else {
                        return Ok(());
                    };
                    if !line.is_empty() {
                        return Err(
                            "http: malformed chunked body (data overruns chunk)".to_string()
                        );
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    let Some(line) = self.next_line(raw)? else {
                        return Ok(());
                    };
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }

    /// The next complete line (without its line end), consuming it.
    fn next_line<'a>(&mut self, raw: &'a [u8]) -> Result<Option<&'a [u8]>, String> {
        let rest = raw.get(self.pos..).unwrap_or_default();
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.pos += i + 1;
                let line = &rest[..i];
                Ok(Some(line.strip_suffix(b"\r").unwrap_or(line)))
            }
            None if rest.len() > CHUNK_LINE_MAX => {
                Err("http: malformed chunked body (line too long)".to_string())
            }
            None => Ok(None),
        }
    }

    pub(super) fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// The size from a chunk-size line ("1a" or "1a;ext=v").
pub(super) fn parse_chunk_size(line: &[u8]) -> Result<usize, String> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    std::str::from_utf8(digits)
        .ok()
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|d| usize::from_str_radix(d, 16).ok())
        .ok_or_else(|| {
            format!(
                "http: malformed chunked body (chunk size {:?})",
                clip(&String::from_utf8_lossy(line))
            )
        })
}
