//! Tamper-evident audit log: a JSON-lines file whose lines form a SHA-256
//! hash chain.
//!
//! # Line format
//!
//! Every line is one compact JSON object, keys in this order:
//!
//! ```text
//! {"seq":1,"ts":"2024-01-02T03:04:05.678901Z","prev":"<64 hex>",<record fields...>,"hash":"<64 hex>"}
//! ```
//!
//! * `seq`: 1 for the first line, then +1 per line.
//! * `ts`: RFC 3339 UTC with microseconds (`YYYY-MM-DDTHH:MM:SS.ffffffZ`),
//!   supplied by the caller (e.g. `crate::observe::events::now_rfc3339()`).
//! * `prev`: the previous line's `hash`; 64 zeros on the first line.
//! * the caller's record fields (`serde_json::to_string` of each key and
//!   value, in the map's iteration order); `seq`, `ts`, `prev` and `hash` are
//!   reserved.
//! * `hash`: lowercase hex SHA-256 of the line's exact bytes *without* the
//!   hash field: i.e. of `{"seq":..,"ts":..,"prev":..,<fields>}`. The stored
//!   line is that text with `,"hash":"<hex>"` inserted before the final `}`.
//!
//! Verifying a line: it must end with `,"hash":"<64 lowercase hex>"}`; strip
//! that suffix, re-append `}`, hash the bytes, compare with the stored hash.
//! Because the hash is over the bytes as stored (never a re-serialisation),
//! changing any byte of any line breaks that line's own hash, and because each
//! `prev` must equal the previous `hash`, deleting, inserting or reordering
//! lines breaks the chain at the first line after the change. The last line
//! has no follower to vouch for it, which is why each line carries its own
//! `hash` (a plain `prev` chain could not detect an edit of the last line).
//!
//! # Limitations
//!
//! * There is no secret key: someone who can write the file can rewrite it
//!   from the first changed line on and recompute every hash. The chain proves
//!   consistency, not authorship; to detect that, anchor the head
//!   ([`AuditLog::last_hash`] and [`AuditLog::next_seq`]) somewhere the
//!   attacker cannot write (a remote log, a signed checkpoint).
//! * Removing lines from the *end* leaves a valid, shorter chain. Only an
//!   anchored head (see above) reveals it.
//! * A crash in the middle of a write leaves a last line without its newline.
//!   [`AuditLog::open`] refuses such a log (naming the line) instead of
//!   truncating it silently: an operator must inspect and repair it.
//! * [`verify`] on a log that a daemon is appending to may see a line that
//!   is still being written and report a missing final newline.
//!
//! # Durability and exclusivity
//!
//! The file is created with mode 0600 (its directory, if created, 0700) and
//! opened with `O_APPEND`; each append is one `write_all` of the line and its
//! newline followed by `sync_data`. [`AuditLog`] holds an exclusive `flock` on
//! the file for its lifetime, so two daemons cannot interleave their chains.
//! After a failed write or sync the log refuses further appends: reopening it
//! re-verifies what actually reached the file.

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::{self, BufRead, BufReader, ErrorKind, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

/// The longest line (without its newline) that [`verify`] accepts and
/// [`AuditLog::append`] writes: 1 MiB.
pub const MAX_LINE_LEN: usize = 1 << 20;

/// Keys the audit log writes itself; a record may not contain them.
pub const RESERVED_KEYS: [&str; 4] = ["seq", "ts", "prev", "hash"];

/// The `prev` of the first line.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `,"hash":"` + 64 hex + `"}`.
const HASH_PREFIX: &[u8] = b",\"hash\":\"";
const HASH_SUFFIX_LEN: usize = HASH_PREFIX.len() + 64 + 2;

/// Errors of [`AuditLog`].
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "audit log {} failed verification at {source}; refusing to append to a broken or tampered log",
        path.display()
    )]
    Broken {
        path: PathBuf,
        #[source]
        source: VerifyError,
    },
    #[error("audit log {} is locked by another process (or another AuditLog in this one)", path.display())]
    Locked { path: PathBuf },
    #[error("record field {0:?} is reserved (seq, ts, prev and hash are written by the audit log)")]
    ReservedKey(String),
    #[error("timestamp {0:?} is not RFC 3339 UTC with microseconds (YYYY-MM-DDTHH:MM:SS.ffffffZ)")]
    BadTimestamp(String),
    #[error("audit line {seq} would be {len} bytes, over the {max}-byte limit")]
    RecordTooLarge { seq: u64, len: usize, max: usize },
    #[error("serialising audit record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("audit log sequence number overflow")]
    SeqOverflow,
    #[error(
        "audit log {}: an earlier write or sync failed, the file is in an unknown state; reopen it to re-verify",
        path.display()
    )]
    Poisoned { path: PathBuf },
}

/// Why a log failed verification: the first bad line (1-based) and the
/// reason. `line` is 0 for errors not tied to a line (the file could not be
/// opened); [`Display`](fmt::Display) then shows the reason alone, otherwise
/// `line N: reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyError {
    pub line: u64,
    pub reason: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.reason)
        } else {
            write!(f, "line {}: {}", self.line, self.reason)
        }
    }
}

impl std::error::Error for VerifyError {}

/// An open audit log, verified and ready to continue its chain.
#[derive(Debug)]
pub struct AuditLog {
    file: File,
    path: PathBuf,
    next_seq: u64,
    last_hash: String,
    poisoned: bool,
    /// The file's length after the last good line: a failed write is cut
    /// back to it (a torn line never stays in the chain).
    good_len: u64,
    /// While poisoned: when it began and how many records were lost.
    gap: Option<(String, u64)>,
}

impl AuditLog {
    /// Opens (creating if needed, mode 0600, missing directories 0700) the
    /// log at `path`, takes an exclusive lock on it, verifies the existing
    /// chain and continues it. A broken chain (including a last line without
    /// its newline) is [`AuditError::Broken`], naming the first bad line.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let io_err = |op: &'static str| {
            move |source: io::Error| AuditError::Io {
                path: path.to_path_buf(),
                op,
                source,
            }
        };
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(dir) = parent
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err("creating directory"))?;
        }
        let mut opts = OpenOptions::new();
        // Never through a symlink: a planted one would receive the audit.
        opts.read(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
        let (file, created) = match opts.clone().create_new(true).open(path) {
            Ok(f) => (f, true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                (opts.open(path).map_err(io_err("opening"))?, false)
            }
            Err(e) => return Err(io_err("creating")(e)),
        };
        lock_exclusive(&file).map_err(|e| {
            if e.kind() == ErrorKind::WouldBlock {
                AuditError::Locked {
                    path: path.to_path_buf(),
                }
            } else {
                io_err("locking")(e)
            }
        })?;
        if created {
            // Make the new directory entry durable too.
            let dir = parent.unwrap_or(Path::new("."));
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("syncing directory"))?;
        } else {
            let meta = file.metadata().map_err(io_err("stat"))?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format_args!("{mode:04o}"),
                    "audit log is readable or writable by group/others"
                );
            }
        }
        let chain = verify_chain(BufReader::new(&file)).map_err(|source| match source {
            ChainError::Io { line: 0, source } => io_err("reading")(source),
            other => AuditError::Broken {
                path: path.to_path_buf(),
                source: other.into(),
            },
        })?;
        let good_len = file.metadata().map_err(io_err("stat"))?.len();
        Ok(Self {
            file,
            path: path.to_path_buf(),
            next_seq: chain.lines.checked_add(1).ok_or(AuditError::SeqOverflow)?,
            last_hash: chain.last_hash,
            poisoned: false,
            good_len,
            gap: None,
        })
    }

    /// Appends one record with timestamp `ts` (RFC 3339 UTC with
    /// microseconds); returns its `seq`. The line is on disk (`sync_data`)
    /// when this returns `Ok`.
    pub fn append(&mut self, ts: &str, record: Map<String, Value>) -> Result<u64, AuditError> {
        if self.poisoned && self.heal(ts).is_err() {
            if let Some((_, lost)) = &mut self.gap {
                *lost += 1;
            }
            return Err(AuditError::Poisoned {
                path: self.path.clone(),
            });
        }
        self.write_record(ts, record)
    }

    /// Whether the log takes records now (after a failure: whether it could
    /// be healed, see [`heal`](Self::heal)).
    pub fn writable(&mut self, ts: &str) -> bool {
        !self.poisoned || self.heal(ts).is_ok()
    }

    /// Whether the last write failed and the log has not been healed since.
    pub fn failing(&self) -> bool {
        self.poisoned
    }

    /// After a failed write: cuts the file back to its last good line and
    /// seals the gap into the chain with an `audit-gap` record (when the
    /// failure began, how many records were lost). Fails (and stays
    /// poisoned) while writing still fails.
    pub fn heal(&mut self, ts: &str) -> Result<(), AuditError> {
        if !self.poisoned {
            return Ok(());
        }
        self.file
            .set_len(self.good_len)
            .map_err(|source| AuditError::Io {
                path: self.path.clone(),
                op: "cutting a torn line",
                source,
            })?;
        self.poisoned = false;
        let (since, lost) = self.gap.take().unwrap_or_default();
        let mut gap = Map::new();
        gap.insert("kind".into(), Value::String("audit-gap".into()));
        gap.insert("since".into(), Value::String(since.clone()));
        gap.insert("records_lost".into(), Value::from(lost));
        match self.write_record(ts, gap) {
            Ok(_) => {
                tracing::warn!(
                    since,
                    lost,
                    "the audit log is written again; the gap is sealed"
                );
                Ok(())
            }
            Err(e) => {
                self.gap = Some((since, lost));
                Err(e)
            }
        }
    }

    fn write_record(&mut self, ts: &str, record: Map<String, Value>) -> Result<u64, AuditError> {
        if let Some(k) = RESERVED_KEYS.iter().find(|k| record.contains_key(**k)) {
            return Err(AuditError::ReservedKey((*k).to_string()));
        }
        if !is_valid_ts(ts) {
            return Err(AuditError::BadTimestamp(ts.to_string()));
        }
        let seq = self.next_seq;
        let next_seq = seq.checked_add(1).ok_or(AuditError::SeqOverflow)?;
        let (mut line, hash) = encode_line(seq, ts, &self.last_hash, &record)?;
        if line.len() > MAX_LINE_LEN {
            return Err(AuditError::RecordTooLarge {
                seq,
                len: line.len(),
                max: MAX_LINE_LEN,
            });
        }
        line.push('\n');
        let written = self
            .file
            .write_all(line.as_bytes())
            .map_err(|e| (e, "writing"))
            .and_then(|()| self.file.sync_data().map_err(|e| (e, "syncing")));
        if let Err((source, op)) = written {
            self.poisoned = true;
            if self.gap.is_none() {
                self.gap = Some((ts.to_string(), 0));
            }
            if let Some((_, lost)) = &mut self.gap {
                *lost += 1;
            }
            return Err(AuditError::Io {
                path: self.path.clone(),
                op,
                source,
            });
        }
        self.next_seq = next_seq;
        self.last_hash = hash;
        self.good_len += line.len() as u64;
        Ok(seq)
    }

    /// The `seq` the next appended line will get (1 for an empty log).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The `hash` of the last line (64 zeros for an empty log): with
    /// [`next_seq`](Self::next_seq), the head to anchor elsewhere so that
    /// truncation or a wholesale rewrite can be detected.
    pub fn last_hash(&self) -> &str {
        &self.last_hash
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Checks a published head (`SEQ:HASH`, as `status` shows it) against the
/// log at `path`: the chain verifies, and its line `SEQ` still has that
/// hash. A log cut short, or rewritten from that line on, fails with what
/// was found.
pub fn verify_head(path: &Path, head: &str) -> Result<u64, String> {
    let (seq, hash) = head
        .split_once(':')
        .and_then(|(s, h)| Some((s.parse::<u64>().ok()?, h)))
        .ok_or_else(|| format!("{head:?}: expected SEQ:HASH"))?;
    let lines = verify(path).map_err(|e| e.to_string())?;
    if seq == 0 {
        return Ok(lines);
    }
    if lines < seq {
        return Err(format!(
            "truncated: the log ends at line {lines}, the published head is line {seq}"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let found = text
        .lines()
        .nth(usize::try_from(seq - 1).map_err(|e| e.to_string())?)
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .and_then(|v| v["hash"].as_str().map(str::to_string))
        .unwrap_or_default();
    if found != hash {
        return Err(format!(
            "rewritten: line {seq} has hash {found}, the published head says {hash}"
        ));
    }
    Ok(lines)
}

/// What [`repair`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    /// Complete lines kept (the chain over them verifies).
    pub lines: u64,
    /// The torn last line's bytes, moved (not deleted) to this file.
    pub evidence: Option<(PathBuf, usize)>,
}

/// Repairs a log whose last line was torn by a crash or a full disk (no
/// final newline): the torn bytes move to `<path>.torn-<ms>` (kept as
/// evidence) and the log ends at its last complete line, whose chain must
/// verify. Anything else wrong with the chain is refused: repair never
/// rewrites history. Run it with the daemon stopped.
pub fn repair(path: &Path) -> Result<Repaired, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let lines = verify_reader(&bytes[..keep]).map_err(|e| {
        format!("the chain is broken before the last line ({e}): not a torn line; repair does not rewrite history")
    })?;
    if keep == bytes.len() {
        return Ok(Repaired {
            lines,
            evidence: None,
        });
    }
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".torn-{ms}"));
    let evidence = PathBuf::from(name);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&evidence)
        .map_err(|e| format!("{}: {e}", evidence.display()))?;
    f.write_all(&bytes[keep..])
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", evidence.display()))?;
    let log = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    log.set_len(keep as u64)
        .and_then(|()| log.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Repaired {
        lines,
        evidence: Some((evidence, bytes.len() - keep)),
    })
}

/// Verifies the whole log at `path`: `Ok(number of lines)` or the first bad
/// line and why.
pub fn verify(path: &Path) -> Result<u64, VerifyError> {
    let file = File::open(path).map_err(|e| VerifyError {
        line: 0,
        reason: format!("cannot open {}: {e}", path.display()),
    })?;
    verify_reader(BufReader::new(file))
}

/// Verifies a log read from `r`, streaming (memory is bounded by
/// [`MAX_LINE_LEN`]): `Ok(number of lines)` or the first bad line and why.
pub fn verify_reader(r: impl BufRead) -> Result<u64, VerifyError> {
    verify_chain(r).map(|c| c.lines).map_err(Into::into)
}

struct Chain {
    lines: u64,
    last_hash: String,
}

enum ChainError {
    Io { line: u64, source: io::Error },
    Line(VerifyError),
}

impl From<ChainError> for VerifyError {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::Io { line, source } => VerifyError {
                line,
                reason: format!("read error: {source}"),
            },
            ChainError::Line(v) => v,
        }
    }
}

fn verify_chain(mut r: impl BufRead) -> Result<Chain, ChainError> {
    let mut buf = Vec::new();
    let mut lines = 0u64;
    let mut last_hash = GENESIS_PREV.to_string();
    loop {
        let lineno = lines + 1;
        let bad = |reason: String| {
            ChainError::Line(VerifyError {
                line: lineno,
                reason,
            })
        };
        buf.clear();
        match read_line_bounded(&mut r, &mut buf, MAX_LINE_LEN) {
            Err(source) => {
                // Line 0 until a line has been read: an error of the file.
                let line = if lines == 0 && buf.is_empty() {
                    0
                } else {
                    lineno
                };
                return Err(ChainError::Io { line, source });
            }
            Ok(LineRead::Eof) => return Ok(Chain { lines, last_hash }),
            Ok(LineRead::TooLong) => {
                return Err(bad(format!("line longer than {MAX_LINE_LEN} bytes")));
            }
            Ok(LineRead::Unterminated) => {
                return Err(bad(
                    "missing final newline (trailing garbage or an interrupted write)".to_string(),
                ));
            }
            Ok(LineRead::Line) => {}
        }
        let hash = check_line(&buf, lineno, &last_hash).map_err(bad)?;
        lines = lineno;
        last_hash = hash;
    }
}

/// Checks one line (without its newline) as line `seq` following a line
/// whose hash is `prev`; returns its hash.
fn check_line(line: &[u8], seq: u64, prev: &str) -> Result<String, String> {
    if line.is_empty() {
        return Err("empty line".to_string());
    }
    let obj: Map<String, Value> =
        serde_json::from_slice(line).map_err(|e| format!("bad JSON: {e}"))?;
    let got_seq = match obj.get("seq") {
        None => return Err("missing field seq".to_string()),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| "field seq is not an unsigned integer".to_string())?,
    };
    let ts = match obj.get("ts") {
        None => return Err("missing field ts".to_string()),
        Some(v) => v
            .as_str()
            .ok_or_else(|| "field ts is not a string".to_string())?,
    };
    if !is_valid_ts(ts) {
        return Err(format!(
            "field ts {ts:?} is not RFC 3339 UTC with microseconds"
        ));
    }
    let got_prev = match obj.get("prev") {
        None => return Err("missing field prev".to_string()),
        Some(v) => v
            .as_str()
            .filter(|s| is_hex64(s.as_bytes()))
            .ok_or_else(|| "field prev is not 64 lowercase hex digits".to_string())?,
    };
    if !obj.contains_key("hash") {
        return Err("missing field hash".to_string());
    }
    // The hash field must be the last one, in canonical form.
    let split = line
        .len()
        .checked_sub(HASH_SUFFIX_LEN)
        .filter(|&at| {
            let suffix = &line[at..];
            suffix.starts_with(HASH_PREFIX)
                && is_hex64(&suffix[HASH_PREFIX.len()..HASH_PREFIX.len() + 64])
                && suffix.ends_with(b"\"}")
        })
        .ok_or_else(|| "line does not end with ,\"hash\":\"<64 lowercase hex>\"}".to_string())?;
    let stored_hash = &line[split + HASH_PREFIX.len()..split + HASH_PREFIX.len() + 64];
    // seq, ts, prev must come first, in that order, each exactly once.
    let head = format!(
        "{{\"seq\":{got_seq},\"ts\":{},\"prev\":\"{got_prev}\"",
        serde_json::to_string(ts).map_err(|e| e.to_string())?
    );
    let body = &line[..split];
    if !body.starts_with(head.as_bytes()) || !matches!(body.get(head.len()), None | Some(b',')) {
        return Err(
            "fields seq, ts, prev are not first, in that order, in compact form".to_string(),
        );
    }
    let mut hasher = Sha256::new();
    hasher.update(body);
    hasher.update(b"}");
    let computed = hex(&hasher.finalize());
    if computed.as_bytes() != stored_hash {
        return Err(format!(
            "hash mismatch: the line was modified (stored {}, computed {computed})",
            String::from_utf8_lossy(stored_hash)
        ));
    }
    if got_seq != seq {
        return Err(format!(
            "seq not consecutive: expected {seq}, found {got_seq} (lines deleted, inserted or reordered)"
        ));
    }
    if got_prev != prev {
        return Err(format!(
            "prev hash mismatch: expected {prev} (hash of the previous line), found {got_prev}"
        ));
    }
    Ok(computed)
}

/// Builds line `seq` (without newline) and its hash.
fn encode_line(
    seq: u64,
    ts: &str,
    prev: &str,
    record: &Map<String, Value>,
) -> Result<(String, String), serde_json::Error> {
    let mut line = format!(
        "{{\"seq\":{seq},\"ts\":{},\"prev\":\"{prev}\"",
        serde_json::to_string(ts)?
    );
    for (k, v) in record {
        line.push(',');
        line.push_str(&serde_json::to_string(k)?);
        line.push(':');
        line.push_str(&serde_json::to_string(v)?);
    }
    line.push('}');
    let hash = sha256_hex(line.as_bytes());
    line.pop();
    line.push_str(",\"hash\":\"");
    line.push_str(&hash);
    line.push_str("\"}");
    Ok((line, hash))
}

enum LineRead {
    Eof,
    Line,
    /// Bytes at EOF without a newline.
    Unterminated,
    /// Over the limit; reading stopped there.
    TooLong,
}

/// Reads one line into `buf` (without its newline), never buffering more
/// than `max` bytes.
fn read_line_bounded(r: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<LineRead> {
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(if buf.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Unterminated
            });
        }
        let (take, found) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (avail.len(), false),
        };
        if buf.len() + take > max {
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(&avail[..take]);
        r.consume(take + usize::from(found));
        if found {
            return Ok(LineRead::Line);
        }
    }
}

/// flock(LOCK_EX | LOCK_NB) through std (`File::try_lock`); `WouldBlock`
/// when another holder has it.
fn lock_exclusive(file: &File) -> io::Result<()> {
    file.try_lock().map_err(io::Error::from)
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` with plausible field ranges.
fn is_valid_ts(ts: &str) -> bool {
    let b = ts.as_bytes();
    if b.len() != 27 {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let num =
        |r: std::ops::Range<usize>| b[r].iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    let shape = digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..26)
        && b[26] == b'Z';
    shape
        && (1..=12).contains(&num(5..7))
        && (1..=31).contains(&num(8..10))
        && num(11..13) < 24
        && num(14..16) < 60
        && num(17..19) < 61
}

fn is_hex64(s: &[u8]) -> bool {
    s.len() == 64 && s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

#[cfg(test)]
mod tests;
