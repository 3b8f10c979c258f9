//! Validation of `[admin]` and `[alertmanager]`.

use super::*;

pub(super) fn validate_admin(
    errs: &mut Errors,
    a: RawAdmin,
    am: RawAlertmanager,
    state_dir: &Path,
) -> Admin {
    let addr =
        |errs: &mut Errors, field: &str, v: Option<String>| -> Option<std::net::SocketAddr> {
            match v.as_deref() {
                None | Some("off") => None,
                Some(s) => match s.parse() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        errs.push(
                            format!("admin.{field}"),
                            format!("{s:?} is not ip:port (or \"off\")"),
                        );
                        None
                    }
                },
            }
        };
    let listen = addr(errs, "listen", a.listen);
    let metrics_listen = match a.metrics_listen {
        None => Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9477))),
        v => addr(errs, "metrics_listen", v),
    };
    if listen.is_some() && a.token_file.is_none() {
        errs.push(
            "admin.token_file",
            "required when admin.listen is set: TCP requests must carry a bearer token",
        );
    }
    for (f, p) in [
        ("socket", &a.socket),
        ("token_file", &a.token_file),
        ("audit_file", &a.audit_file),
    ] {
        if let Some(p) = p
            && !p.is_absolute()
        {
            errs.push(
                format!("admin.{f}"),
                format!("{} must be an absolute path", p.display()),
            );
        }
    }
    let action = match am.action.as_deref() {
        None | Some("drain") => AdminAction::Drain,
        Some("disable") => AdminAction::Disable,
        Some(other) => {
            errs.push(
                "alertmanager.action",
                format!("{other:?}: use \"drain\" or \"disable\""),
            );
            AdminAction::Drain
        }
    };
    Admin {
        socket: a.socket.unwrap_or_else(|| state_dir.join("admin.sock")),
        listen,
        token_file: a.token_file,
        metrics_listen,
        // The audit log must outlive a reboot: with the default state
        // directory (/run, a tmpfs) it goes under /var/lib.
        audit_file: a.audit_file.unwrap_or_else(|| {
            if state_dir == Path::new(DEFAULT_STATE_DIR) {
                PathBuf::from(DEFAULT_AUDIT_FILE)
            } else {
                state_dir.join("audit.jsonl")
            }
        }),
        alertmanager: AlertmanagerCfg {
            service_label: am.service_label.unwrap_or_else(|| "service".to_string()),
            backend_label: am.backend_label.unwrap_or_else(|| "backend".to_string()),
            action,
        },
        rate_limit: a.rate_limit.unwrap_or(DEFAULT_RATE_LIMIT),
    }
}
