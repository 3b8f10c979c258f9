//! Who may call the API: the bearer token (read from a file only root can
//! read, compared in constant time).

use std::path::Path;

use anyhow::{Context as _, bail};

/// Reads a token file, refusing one that others may read.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).with_context(|| format!("token file {}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        bail!(
            "token file {} is readable by group or others (mode {:o}): chmod 600 it",
            path.display(),
            meta.mode() & 0o777
        );
    }
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("reading token file {}", path.display()))?;
    let t = t.trim().to_string();
    if t.len() < 16 {
        bail!(
            "token in {} is too short (at least 16 characters)",
            path.display()
        );
    }
    Ok(t)
}

/// The token of an `Authorization: Bearer TOKEN` value (surrounding blanks
/// trimmed), if it is one.
pub fn bearer(authorization: &str) -> Option<&str> {
    authorization
        .strip_prefix("Bearer ")
        .map(|t| t.trim_matches([' ', '\t']))
}

/// Whether `authorization` (the header's value, if sent) carries `token`.
/// No configured token: nobody is authorised.
pub fn authorized(token: Option<&str>, authorization: Option<&str>) -> bool {
    let (Some(token), Some(sent)) = (token, authorization.and_then(bearer)) else {
        return false;
    };
    same(sent, token)
}

/// Constant-time comparison (the token must not leak through timing; only
/// its length may).
pub fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(same("abcdef0123456789", "abcdef0123456789"));
        assert!(!same("abcdef0123456789", "abcdef0123456788"));
        assert!(!same("abc", "abcd"));
        let t = Some("abcdef0123456789");
        assert!(authorized(t, Some("Bearer abcdef0123456789")));
        assert!(authorized(t, Some("Bearer  abcdef0123456789 ")));
        assert!(!authorized(t, Some("bearer abcdef0123456789")));
        assert!(!authorized(t, Some("Basic abcdef0123456789")));
        assert!(!authorized(t, None));
        assert!(!authorized(None, Some("Bearer abcdef0123456789")));
        assert!(!authorized(None, None));
    }

    #[test]
    fn token_file_permissions() {
        use std::os::unix::fs::PermissionsExt as _;
        let p = std::env::temp_dir().join(format!("failover-token-{}", std::process::id()));
        std::fs::write(&p, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_token(&p).unwrap_err().to_string();
        assert!(e.contains("readable by group or others"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token(&p).unwrap(), "0123456789abcdef0123");
        std::fs::write(&p, "short").unwrap();
        assert!(
            read_token(&p)
                .unwrap_err()
                .to_string()
                .contains("too short")
        );
        let _ = std::fs::remove_file(&p);
    }
}
