//! The one runner of child processes, for exec probes and exec hooks: the
//! child leads its own process group, so a timeout kills everything it
//! started (a `sh -c` and its children alike); stdin is fed, stdout and
//! stderr are drained while waiting (a chatty child never blocks on a full
//! pipe) and capped; after the child exits its pipes are drained for a
//! short grace only (a background process it left may hold them open).

use std::{
    io,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _},
    process::{Child, ChildStdin, Command},
    time::timeout,
};

/// How much of a child's stdout and of its stderr is kept (each).
pub const OUTPUT_CAP: usize = 4096;
/// After a child exits, how long its pipes are still drained.
const PIPE_GRACE: Duration = Duration::from_millis(200);
/// After killing a timed-out child, how long to wait to reap it.
const REAP_GRACE: Duration = Duration::from_secs(1);

/// Who every child runs as, set once by the daemon (`daemon.run_as`):
/// unset (library use, unit tests), children run as the caller.
static CHILD_USER: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();

/// Makes every child from now on run as `uid`/`gid` with no supplementary
/// groups (and, as a non-root user under `no_new_privs`, no capability).
/// The first call wins.
pub fn run_children_as(uid: u32, gid: u32) {
    let _ = CHILD_USER.set((uid, gid));
}

/// `args` with every `{name}` of `values` replaced by its value (exec
/// checks' `{address}`, `{port}`; promotion hooks' `{token}`, ...). The
/// values are the daemon's own (addresses it formats, names from the
/// config), and the child gets them as separate arguments, never through a
/// shell; unknown `{...}` are left as they are.
pub fn fill_placeholders(args: &[String], values: &[(&str, &str)]) -> Vec<String> {
    args.iter()
        .map(|a| {
            let mut a = a.clone();
            for (k, v) in values {
                if a.contains('{') {
                    a = a.replace(&format!("{{{k}}}"), v);
                }
            }
            a
        })
        .collect()
}

/// Resolves `daemon.run_as`: a user name (its uid and primary group) or
/// `UID:GID`.
pub fn lookup_user(spec: &str) -> Result<(u32, u32), String> {
    if let Some((u, g)) = spec.split_once(':') {
        return match (u.parse(), g.parse()) {
            (Ok(u), Ok(g)) => Ok((u, g)),
            _ => Err(format!("{spec:?}: expected UID:GID in numbers")),
        };
    }
    let name = std::ffi::CString::new(spec).map_err(|_| format!("{spec:?}: NUL in the name"))?;
    // SAFETY: getpwnam_r fills `pw` and `buf`, which we own and which
    // outlive the call; `found` points to `pw` or is null.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            name.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        );
        if rc != 0 || found.is_null() {
            return Err(format!("{spec:?}: no such user on this host"));
        }
        Ok((pw.pw_uid, pw.pw_gid))
    }
}

/// How a run ended.
#[derive(Debug)]
pub enum Ended {
    Exited(ExitStatus),
    /// Still running at the deadline: killed with its process group.
    TimedOut,
    /// Waiting for it failed (it was killed with its group).
    WaitFailed(io::Error),
}

/// What a run left: how it ended and the first [`OUTPUT_CAP`] bytes of
/// each output.
#[derive(Debug)]
pub struct Outcome {
    pub ended: Ended,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `cmd` (program, arguments and environment set by the caller) for
/// at most `limit`, with `input` on its stdin (then closed; `None`: stdin
/// is /dev/null). `Err`: it could not be started.
pub async fn run(mut cmd: Command, input: Option<&[u8]>, limit: Duration) -> io::Result<Outcome> {
    if let Some(&(uid, gid)) = CHILD_USER.get() {
        // std drops the supplementary groups too when it changes the uid.
        cmd.uid(uid).gid(gid);
    }
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // Its own process group, so that a timeout kills what it started too.
    .process_group(0)
    // Never the daemon's working directory: its user (`run_as`) may not
    // be allowed in it, and some tools (psql) fail when they cannot go
    // back there.
    .current_dir("/")
    // Never the daemon's line to systemd: a child must not report ready or
    // feed the watchdog.
    .env_remove("NOTIFY_SOCKET")
    .env_remove("WATCHDOG_USEC")
    .env_remove("WATCHDOG_PID")
    .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pid = child.id();
    // A run dropped before its end (the agent stopping mid-hook) kills the
    // child's whole group too, not only the child (kill_on_drop).
    let mut group = GroupGuard(pid.and_then(|p| libc::pid_t::try_from(p).ok()));
    let mut cap = Capture::default();
    // On timeout drive() is dropped and `cap` keeps what it had.
    let _ = timeout(
        limit,
        drive(&mut child, input.unwrap_or_default(), &mut cap),
    )
    .await;
    // From here on `kill` (or the exit) takes care of the group.
    group.0 = None;
    let ended = match cap.status.take() {
        Some(Ok(status)) => Ended::Exited(status),
        Some(Err(e)) => {
            kill(&mut child, pid).await;
            Ended::WaitFailed(e)
        }
        None => {
            kill(&mut child, pid).await;
            Ended::TimedOut
        }
    };
    Ok(Outcome {
        ended,
        stdout: cap.stdout,
        stderr: cap.stderr,
    })
}

/// Kills the process group it names when dropped (disarmed with `None`
/// once the run ends normally). The child is not reaped while the guard is
/// armed, so the group id still belongs to it.
struct GroupGuard(Option<libc::pid_t>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.filter(|&p| p > 1) {
            // SAFETY: kill(2) only sends a signal; the group leader (our
            // child) is not reaped yet, so the id is still its group's.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

/// What a run collected; filled in place so that a run cut short by the
/// timeout still leaves what it had.
#[derive(Default)]
struct Capture {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<io::Result<ExitStatus>>,
}

/// Feeds stdin, drains stdout and stderr and waits for the exit status, all
/// at once (so that neither side can block the other on a full pipe). Once
/// the child has exited, its pipes are drained for at most [`PIPE_GRACE`].
async fn drive(child: &mut Child, input: &[u8], cap: &mut Capture) {
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (out, err) = (&mut cap.stdout, &mut cap.stderr);
    let reads = async move { tokio::join!(read_capped(stdout, out), read_capped(stderr, err)) };
    let feed = feed(stdin, input);
    let wait = child.wait();
    tokio::pin!(reads, feed, wait);
    let (mut reads_done, mut feed_done) = (false, false);
    let status = loop {
        tokio::select! {
            st = &mut wait => break st,
            () = &mut feed, if !feed_done => feed_done = true,
            _ = &mut reads, if !reads_done => reads_done = true,
        }
    };
    cap.status = Some(status);
    if !reads_done {
        let _ = timeout(PIPE_GRACE, &mut reads).await;
    }
}

/// Writes `input` to the child's stdin and closes it. A child that does not
/// read its stdin is fine (the write error is ignored).
async fn feed(stdin: Option<ChildStdin>, input: &[u8]) {
    if let Some(mut stdin) = stdin {
        let _ = stdin.write_all(input).await;
        let _ = stdin.shutdown().await;
    }
}

/// Reads `r` to its end, keeping the first [`OUTPUT_CAP`] bytes.
async fn read_capped<R: AsyncRead + Unpin>(r: Option<R>, keep: &mut Vec<u8>) {
    let Some(mut r) = r else { return };
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = OUTPUT_CAP.saturating_sub(keep.len());
                keep.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Kills a child that is still running, with its process group, and reaps
/// it (bounded; if that fails tokio reaps it later: kill_on_drop).
async fn kill(child: &mut Child, pid: Option<u32>) {
    if let Some(pgid) = pid
        .and_then(|p| libc::pid_t::try_from(p).ok())
        .filter(|&p| p > 1)
    {
        // SAFETY: kill(2) only sends a signal. The child is not reaped yet,
        // so its pid, the id of the group it leads, still belongs to it.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
    let _ = child.start_kill();
    let _ = timeout(REAP_GRACE, child.wait()).await;
}

/// Why a program could not be started, in a few words.
pub fn spawn_error(program: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => format!("no such program: {program}"),
        io::ErrorKind::PermissionDenied => format!("permission denied: {program}"),
        _ => format!("cannot run {program}: {e}"),
    }
}
