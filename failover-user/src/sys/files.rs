//! The daemon's files and directories, opened so that nobody else can
//! steer them: directories must belong to the daemon's user and be closed
//! to others, files are opened without following symlinks, temporary files
//! are created exclusively, and one daemon holds a directory at a time.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

/// What is wrong with a directory or file the daemon would use.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} exists and is not a directory")]
    NotDir { path: PathBuf },
    #[error(
        "{path} belongs to uid {owner}, not to the daemon's user (uid {me}): \
         someone else could replace what the daemon keeps there; \
         remove it or `chown {me} {path}`"
    )]
    ForeignOwner { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "{path} is writable by others (mode {mode:o}): anyone could replace what the \
         daemon keeps there; `chmod go-w {path}` (0700 is recommended)"
    )]
    OpenToOthers { path: PathBuf, mode: u32 },
    #[error("{path} is a symbolic link: refusing to follow it")]
    Symlink { path: PathBuf },
    #[error("{path} is held by another failover daemon{}", holder_text(*.holder))]
    Locked { path: PathBuf, holder: Option<u32> },
}

fn holder_text(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .split('\0')
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            format!(" (pid {pid}: {cmd})")
        }
        None => String::new(),
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Checks that `dir` is a directory (not a symlink to one) owned by the
/// daemon's user and not writable by group or others.
pub fn check_private_dir(dir: &Path) -> Result<(), FileError> {
    let meta = std::fs::symlink_metadata(dir).map_err(io_at(dir))?;
    if meta.file_type().is_symlink() {
        return Err(FileError::Symlink {
            path: dir.to_path_buf(),
        });
    }
    if !meta.is_dir() {
        return Err(FileError::NotDir {
            path: dir.to_path_buf(),
        });
    }
    let me = euid();
    if meta.uid() != me {
        return Err(FileError::ForeignOwner {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(FileError::OpenToOthers {
            path: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Creates `dir` (and missing parents) with mode 0700, or checks an
/// existing one with [`check_private_dir`]. Returns whether it was created
/// (so a failed start can remove what it made).
pub fn ensure_private_dir(dir: &Path) -> Result<bool, FileError> {
    match std::fs::symlink_metadata(dir) {
        Ok(_) => check_private_dir(dir).map(|()| false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_at(dir))?;
            Ok(true)
        }
        Err(e) => Err(io_at(dir)(e)),
    }
}

/// Opens `path` for appending (created 0600 if missing) without following
/// a symlink in its last component; refuses anything but a regular file.
pub fn open_append(path: &Path) -> Result<File, FileError> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| nofollow_error(path, e))?;
    regular(path, f)
}

/// Opens an existing `path` for reading without following a symlink.
pub fn open_read(path: &Path) -> Result<File, FileError> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| nofollow_error(path, e))?;
    regular(path, f)
}

fn regular(path: &Path, f: File) -> Result<File, FileError> {
    let meta = f.metadata().map_err(io_at(path))?;
    if !meta.is_file() {
        return Err(FileError::Io {
            path: path.to_path_buf(),
            source: io::Error::other("not a regular file"),
        });
    }
    Ok(f)
}

fn nofollow_error(path: &Path, e: io::Error) -> FileError {
    // O_NOFOLLOW on a symlink fails with ELOOP.
    if e.raw_os_error() == Some(libc::ELOOP) {
        FileError::Symlink {
            path: path.to_path_buf(),
        }
    } else {
        io_at(path)(e)
    }
}

/// Replaces `path` with `bytes` atomically: a temporary file created
/// exclusively (`O_EXCL`: a planted file or symlink is refused, not
/// followed), synced, then renamed over `path` (rename replaces a symlink
/// at `path` itself, never its target).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    // A leftover of ours from a crash: remove it (unlink never follows).
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| nofollow_error(&tmp, e))?;
    let res = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_at(path)(e));
    }
    Ok(())
}

/// An exclusive hold on a directory (flock on the directory itself, so it
/// works on bpffs, where no regular file can be created). Released when
/// dropped or when the process dies; not inherited by children (CLOEXEC).
#[derive(Debug)]
pub struct DirLock {
    _dir: File,
    pub path: PathBuf,
}

/// Takes `dir`'s lock without waiting; if another process holds it, the
/// error names that process (found through /proc/locks).
pub fn lock_dir(dir: &Path) -> Result<DirLock, FileError> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| nofollow_error(dir, e))?;
    // std's `try_lock` is flock(LOCK_EX | LOCK_NB) on Linux.
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = f
                .metadata()
                .ok()
                .and_then(|m| lock_holder(m.dev(), m.ino()));
            return Err(FileError::Locked {
                path: dir.to_path_buf(),
                holder,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_at(dir)(e)),
    }
    Ok(DirLock {
        _dir: f,
        path: dir.to_path_buf(),
    })
}

/// The pid holding a flock on (dev, ino), from /proc/locks
/// (`1: FLOCK  ADVISORY  WRITE 1234 00:1f:5678 0 EOF`).
fn lock_holder(dev: u64, ino: u64) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (pid, id) = (f.get(4)?, f.get(5)?);
        let mut parts = id.split(':');
        let ma = u32::from_str_radix(parts.next()?, 16).ok()?;
        let mi = u32::from_str_radix(parts.next()?, 16).ok()?;
        let i: u64 = parts.next()?.parse().ok()?;
        (f.get(1) == Some(&"FLOCK") && ma == major && mi == minor && i == ino)
            .then(|| pid.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("failover-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::DirBuilder::new().mode(0o700).create(&d).unwrap();
        d
    }

    #[test]
    fn symlinks_are_refused_not_followed() {
        let d = tmpdir("symlink");
        let victim = d.join("victim");
        std::fs::write(&victim, b"precious\n").unwrap();
        let link = d.join("events.jsonl");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(matches!(open_append(&link), Err(FileError::Symlink { .. })));
        // The temp file of an atomic write is planted as a symlink too.
        let target = d.join("states.json");
        let planted = d.join(format!(".states.json.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        write_atomic(&target, b"{}\n").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
        assert_eq!(std::fs::read(&target).unwrap(), b"{}\n");
        // A symlink at the target itself is replaced, its target untouched.
        let t2 = d.join("layout.json");
        std::os::unix::fs::symlink(&victim, &t2).unwrap();
        write_atomic(&t2, b"[]\n").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
        assert!(
            !std::fs::symlink_metadata(&t2)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn directories_open_to_others_are_refused() {
        let d = tmpdir("perm");
        check_private_dir(&d).unwrap();
        let open = d.join("open");
        std::fs::DirBuilder::new()
            .mode(0o777)
            .create(&open)
            .unwrap();
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
            .unwrap();
        assert!(matches!(
            check_private_dir(&open),
            Err(FileError::OpenToOthers { .. })
        ));
        let link = d.join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(matches!(
            check_private_dir(&link),
            Err(FileError::Symlink { .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_second_holder_is_refused_and_named() {
        let d = tmpdir("lock");
        let first = lock_dir(&d).unwrap();
        match lock_dir(&d) {
            Err(FileError::Locked { holder, .. }) => {
                assert_eq!(holder, Some(std::process::id()));
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        lock_dir(&d).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }
}
