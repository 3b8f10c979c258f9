//! Route health injection through a local BIRD: the daemon never speaks
//! BGP. It owns one file BIRD's config `include`s (one static protocol per
//! VIP, `disabled yes|no`) and drives BIRD over its control socket.
//!
//! The file is the source of truth: BIRD's `configure` re-enables a
//! protocol disabled only from the CLI (measured, docs/cluster-design), so
//! every announcement change rewrites the file and reconfigures. A
//! withdrawal also sends `disable` first: it cannot fail on a broken
//! config.
//!
//! The control protocol is BIRD's own line protocol (`DDDD-` more lines,
//! `DDDD ` last line, a leading space continues the previous line, `+`
//! spontaneous output, codes 8xxx/9xxx errors); it is small enough that a
//! client crate (the `birdc` crate is unmaintained) would add more than it
//! saves.

use std::{collections::BTreeMap, net::IpAddr, path::Path, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("BIRD control socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("BIRD control socket {0}: no answer within the timeout")]
    Timeout(String),
    #[error("BIRD answered {code}: {text}")]
    Refused { code: u16, text: String },
    #[error("BIRD control socket: unexpected line {0:?}")]
    Protocol(String),
}

/// One reply: its last code and every line's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<(u16, String)>,
}

/// Parses one reply line: `Some((code, text, last))`, or `None` for a
/// continuation (` text`) or spontaneous output (`+...`).
fn parse_line(line: &str) -> Result<Option<(u16, &str, bool)>, BirdError> {
    if line.starts_with(' ') || line.starts_with('+') || line.is_empty() {
        return Ok(None);
    }
    let b = line.as_bytes();
    if b.len() < 5 || !b[..4].iter().all(u8::is_ascii_digit) || !(b[4] == b'-' || b[4] == b' ') {
        return Err(BirdError::Protocol(line.chars().take(120).collect()));
    }
    let code: u16 = line[..4]
        .parse()
        .map_err(|_| BirdError::Protocol(line.to_string()))?;
    Ok(Some((code, &line[5..], b[4] == b' ')))
}

/// A connection to BIRD's control socket.
pub struct Bird {
    path: String,
    timeout: Duration,
    r: BufReader<tokio::net::unix::OwnedReadHalf>,
    w: tokio::net::unix::OwnedWriteHalf,
}

impl Bird {
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, BirdError> {
        let p = path.display().to_string();
        let s = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| BirdError::Timeout(p.clone()))?
            .map_err(|source| BirdError::Io {
                path: p.clone(),
                source,
            })?;
        let (r, w) = s.into_split();
        let mut b = Bird {
            path: p,
            timeout,
            r: BufReader::new(r),
            w,
        };
        // The greeting: "0001 BIRD x.y.z ready."
        b.read_reply().await?;
        Ok(b)
    }

    async fn read_reply(&mut self) -> Result<Reply, BirdError> {
        let mut lines = Vec::new();
        let mut last_code = 0;
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(self.timeout, self.r.read_line(&mut line))
                .await
                .map_err(|_| BirdError::Timeout(self.path.clone()))?
                .map_err(|source| BirdError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(BirdError::Io {
                    path: self.path.clone(),
                    source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                });
            }
            if lines.len() > 10_000 {
                return Err(BirdError::Protocol("reply over 10000 lines".into()));
            }
            let line = line.trim_end_matches(['\n', '\r']);
            match parse_line(line)? {
                None => {
                    if let Some(t) = line.strip_prefix(' ') {
                        lines.push((last_code, t.to_string()));
                    }
                }
                Some((code, text, last)) => {
                    last_code = code;
                    lines.push((code, text.to_string()));
                    if last {
                        if code >= 8000 {
                            return Err(BirdError::Refused {
                                code,
                                text: text.to_string(),
                            });
                        }
                        return Ok(Reply { code, lines });
                    }
                }
            }
        }
    }

    /// Runs one CLI command (one line, no newline in it).
    pub async fn command(&mut self, cmd: &str) -> Result<Reply, BirdError> {
        if cmd.contains(['\n', '\r']) {
            return Err(BirdError::Protocol("a command is one line".into()));
        }
        let line = format!("{cmd}\n");
        tokio::time::timeout(self.timeout, self.w.write_all(line.as_bytes()))
            .await
            .map_err(|_| BirdError::Timeout(self.path.clone()))?
            .map_err(|source| BirdError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.read_reply().await
    }

    /// `configure`: BIRD rereads its config (and so the include). "In
    /// progress" and "queued" answers are fine: BIRD finishes on its own.
    pub async fn configure(&mut self) -> Result<(), BirdError> {
        self.command("configure").await.map(|_| ())
    }

    pub async fn disable(&mut self, proto: &str) -> Result<(), BirdError> {
        self.command(&format!("disable {proto}")).await.map(|_| ())
    }

    /// The state (`up`, `down`, `start`, ...) of every protocol whose name
    /// starts with `prefix`.
    pub async fn protocols(&mut self, prefix: &str) -> Result<BTreeMap<String, String>, BirdError> {
        let reply = self
            .command(&format!("show protocols \"{prefix}*\""))
            .await?;
        Ok(reply
            .lines
            .iter()
            .filter(|(code, _)| *code == 1002)
            .filter_map(|(_, t)| {
                let mut f = t.split_whitespace();
                let name = f.next()?;
                let _proto = f.next()?;
                let _table = f.next()?;
                let state = f.next()?;
                Some((name.to_string(), state.to_string()))
            })
            .collect())
    }
}

/// The BIRD protocol name of a VIP: `fo_v4_198_18_100_10`,
/// `fo_v6_2001_db8__10`.
pub fn proto_name(vip: IpAddr) -> String {
    let (fam, text) = match vip {
        IpAddr::V4(a) => ("v4", a.to_string()),
        IpAddr::V6(a) => ("v6", a.to_string()),
    };
    let body: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("fo_{fam}_{body}")
}

/// The include file for these VIPs (`true`: announced). Deterministic: the
/// same inputs give the same bytes, so an unchanged file is not rewritten.
pub fn render(node: &str, live_device: &str, vips: &BTreeMap<IpAddr, bool>, why: &str) -> String {
    let mut s = format!(
        "# Written by failover (node {node}); do not edit: the daemon rewrites it.\n# {why}\n"
    );
    for (vip, on) in vips {
        let (fam, len) = match vip {
            IpAddr::V4(_) => ("ipv4", 32),
            IpAddr::V6(_) => ("ipv6", 128),
        };
        s.push_str(&format!(
            "\nprotocol static {} {{\n    disabled {};\n    check link on;\n    {fam};\n    route {vip}/{len} via \"{live_device}\";\n}}\n",
            proto_name(*vip),
            if *on { "no" } else { "yes" },
        ));
    }
    s
}

/// Writes `text` to `path` atomically (a temporary file, then a rename),
/// so BIRD never reads half a file. Returns whether it changed.
pub fn write_include(path: &Path, text: &str) -> std::io::Result<bool> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines_parse() {
        assert_eq!(
            parse_line("0001 BIRD 2.0.12 ready.").unwrap(),
            Some((1, "BIRD 2.0.12 ready.", true))
        );
        assert_eq!(
            parse_line("1002-fo_v4_x Static master4 up").unwrap(),
            Some((1002, "fo_v4_x Static master4 up", false))
        );
        assert_eq!(parse_line(" Hostname is vm").unwrap(), None);
        assert_eq!(parse_line("+spontaneous").unwrap(), None);
        assert!(parse_line("garbage").is_err());
        assert!(parse_line("12a4 x").is_err());
    }

    #[test]
    fn names_and_include() {
        assert_eq!(
            proto_name("198.18.100.10".parse().unwrap()),
            "fo_v4_198_18_100_10"
        );
        assert_eq!(
            proto_name("2001:db8::10".parse().unwrap()),
            "fo_v6_2001_db8__10"
        );
        let mut v = BTreeMap::new();
        v.insert("198.18.100.10".parse().unwrap(), true);
        v.insert("2001:db8::10".parse().unwrap(), false);
        let t = render("lb1", "fo-live", &v, "test");
        assert!(t.contains("protocol static fo_v4_198_18_100_10 {\n    disabled no;\n    check link on;\n    ipv4;\n    route 198.18.100.10/32 via \"fo-live\";\n}"));
        assert!(t.contains("protocol static fo_v6_2001_db8__10 {\n    disabled yes;\n    check link on;\n    ipv6;\n    route 2001:db8::10/128 via \"fo-live\";\n}"));
    }

    #[tokio::test]
    async fn talks_to_a_control_socket() {
        // A fake BIRD: greeting, one multi-line reply, one error.
        let dir = std::env::temp_dir().join(format!("fo-bird-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let sock = dir.join("bird.ctl");
        let _ = std::fs::remove_file(&sock);
        let l = tokio::net::UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            w.write_all(b"0001 BIRD 2.0.12 ready.\n").await.unwrap();
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            assert_eq!(line, "show protocols \"fo_*\"\n");
            w.write_all(b"2002-Name       Proto      Table      State  Since         Info\n1002-fo_v4_198_18_100_10 Static     master4    up     2026-11-30 00:03:52\n1002-fo_v4_198_18_100_11 Static     master4    down   2026-11-30 00:03:52\n0000 \n").await.unwrap();
            line.clear();
            r.read_line(&mut line).await.unwrap();
            w.write_all(b"9001 syntax error\n").await.unwrap();
        });
        let mut b = Bird::connect(&sock, Duration::from_secs(2)).await.unwrap();
        let p = b.protocols("fo_").await.unwrap();
        assert_eq!(p.get("fo_v4_198_18_100_10").map(String::as_str), Some("up"));
        assert_eq!(
            p.get("fo_v4_198_18_100_11").map(String::as_str),
            Some("down")
        );
        match b.disable("nosuch").await {
            Err(BirdError::Refused { code: 9001, .. }) => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
        server.await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
