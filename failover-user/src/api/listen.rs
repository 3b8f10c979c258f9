//! The daemon's listeners: the admin API on its unix socket (trusted: the
//! socket's mode is the check) and optionally on TCP (token required), and
//! `/metrics` on TCP. Every listener gets the same bounds and request rate.

use std::{
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{
            ffi::OsStrExt as _,
            fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _},
        },
    },
    path::Path,
    sync::Arc,
};

use anyhow::{Context as _, bail};
use tokio::{net::UnixListener, sync::watch, task::JoinHandle};
use tracing::debug;

use super::{
    AdminState, handle,
    limits::Limits,
    metrics_response,
    server::{self, Handler},
};
use crate::config;

/// Binds every configured listener and serves until `stop` turns true.
/// Returns the server tasks (they end after `stop`).
pub async fn start(
    st: Arc<AdminState>,
    admin: &config::Admin,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let handler = |trusted: bool| -> Handler {
        let st = st.clone();
        Arc::new(move |req| {
            let st = st.clone();
            Box::pin(async move { handle(st, req, trusted).await })
        })
    };
    let limits = Limits {
        max_requests_per_sec: admin.rate_limit,
        ..Limits::default()
    };
    let mut servers = Vec::new();
    let unix = bind_unix(&admin.socket)
        .with_context(|| format!("admin socket {}", admin.socket.display()))?;
    servers.push(tokio::spawn(server::serve_unix(
        unix,
        handler(true),
        limits,
        stop.clone(),
    )));
    if let Some(addr) = admin.listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("admin listener {addr}"))?;
        // The token holder's requests have a budget of their own.
        servers.push(tokio::spawn(server::serve_tcp_with_token(
            l,
            handler(false),
            limits,
            st.token.as_deref().map(Arc::from),
            stop.clone(),
        )));
    }
    if let Some(addr) = admin.metrics_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics listener {addr}"))?;
        let st = st.clone();
        let h: Handler = Arc::new(move |req| {
            let st = st.clone();
            Box::pin(async move { metrics_response(&st, &req) })
        });
        servers.push(tokio::spawn(server::serve_tcp(l, h, limits, stop.clone())));
    }
    Ok(servers)
}

/// Binds a unix socket at `path` with mode 0600 (owner only). Creates the parent directory with
/// mode 0700 if it is missing (an existing one is left alone). An existing socket file at `path`
/// is replaced only if nothing listens on it; a live socket, a regular file, a directory or a
/// symlink there is an error. Must be called within a tokio runtime.
pub fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    if tokio::runtime::Handle::try_current().is_err() {
        bail!("bind_unix must be called within a tokio runtime");
    }
    let max = std::mem::size_of::<libc::sockaddr_un>()
        - std::mem::offset_of!(libc::sockaddr_un, sun_path);
    let len = path.as_os_str().as_bytes().len();
    if len == 0 || len >= max {
        bail!(
            "unix socket path {:?} must be 1 to {} bytes long, not {len}",
            path,
            max - 1
        );
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && std::fs::symlink_metadata(parent).is_err()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("creating directory {}", parent.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match probe_unix_socket(path) {
            Ok(true) => bail!(
                "unix socket {} is in use by another process",
                path.display()
            ),
            Ok(false) => match std::fs::remove_file(path) {
                Ok(()) => debug!(path = %path.display(), "removed stale unix socket"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("removing stale unix socket {}", path.display()));
                }
            },
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("checking whether unix socket {} is in use", path.display())
                });
            }
        },
        Ok(meta) => {
            let ft = meta.file_type();
            let kind = if ft.is_file() {
                "a regular file"
            } else if ft.is_dir() {
                "a directory"
            } else if ft.is_symlink() {
                "a symlink"
            } else {
                "not a socket"
            };
            bail!(
                "refusing to replace {} with a unix socket: it is {kind}",
                path.display()
            );
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding unix socket {}", path.display()))?;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        drop(listener);
        let _ = std::fs::remove_file(path);
        return Err(e).with_context(|| format!("setting mode 0600 on {}", path.display()));
    }
    Ok(listener)
}

/// Whether something listens on the unix socket at `path`, by a non-blocking connect (a full
/// backlog answers EAGAIN instead of blocking). `Ok(false)` when refused or gone.
fn probe_unix_socket(path: &Path) -> io::Result<bool> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data, for which all-zero bytes are a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unusable unix socket path",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    // SAFETY: a plain socket(2) call; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    // SAFETY: `addr` is initialised, NUL-terminated and `len` does not exceed its size.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN | libc::EINPROGRESS) => Ok(true),
        Some(libc::ECONNREFUSED | libc::ENOENT) => Ok(false),
        _ => Err(err),
    }
}
