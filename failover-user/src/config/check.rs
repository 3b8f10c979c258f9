//! Validation of `[service.check]`: the probe a backend gets.

use super::*;

pub(super) fn status_range(v: &toml::Value) -> Result<(u16, u16), String> {
    let s = match v {
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::String(s) => s.clone(),
        other => {
            return Err(format!(
                "{other}: use a code, a range \"200-299\" or a class \"2xx\""
            ));
        }
    };
    let code = |t: &str| -> Result<u16, String> {
        t.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
            .ok_or_else(|| format!("{t:?} is not an HTTP status code"))
    };
    if let Some(class) = s.strip_suffix("xx") {
        let c = code(&format!("{class}00"))?;
        return Ok((c, c + 99));
    }
    if let Some((a, b)) = s.split_once('-') {
        let (a, b) = (code(a)?, code(b)?);
        if a > b {
            return Err(format!("{s:?}: empty range"));
        }
        return Ok((a, b));
    }
    let c = code(&s)?;
    Ok((c, c))
}

pub(super) fn validate_check(errs: &mut Errors, p: &str, c: RawCheck) -> Option<Check> {
    validate_check_at(errs, &format!("{p}.check"), c)
}

/// The same for a check table at path `cp` (the standby check of
/// `[service.promotion]` too).
pub(super) fn validate_check_at(errs: &mut Errors, cp: &str, c: RawCheck) -> Option<Check> {
    let cp = cp.to_string();
    let unused = |errs: &mut Errors, field: &str, set: bool, kinds: &str| {
        if set {
            errs.push(
                format!("{cp}.{field}"),
                format!("only used by {kinds} checks"),
            );
        }
    };
    unused(
        errs,
        "path",
        c.path.is_some() && c.kind != CheckKind::Http,
        "http",
    );
    unused(
        errs,
        "host",
        c.host.is_some() && c.kind != CheckKind::Http,
        "http",
    );
    unused(
        errs,
        "expect_status",
        c.expect_status.is_some() && c.kind != CheckKind::Http,
        "http",
    );
    unused(
        errs,
        "expect_body",
        c.expect_body.is_some() && c.kind != CheckKind::Http,
        "http",
    );
    unused(
        errs,
        "payload",
        c.payload.is_some() && c.kind != CheckKind::Udp,
        "udp",
    );
    unused(
        errs,
        "expect",
        c.expect.is_some() && c.kind != CheckKind::Udp,
        "udp",
    );
    unused(
        errs,
        "command",
        c.command.is_some() && c.kind != CheckKind::Exec,
        "exec",
    );
    let pg = c.kind == CheckKind::Postgres;
    for (field, set) in [
        ("role", c.role.is_some()),
        ("user", c.user.is_some()),
        ("database", c.database.is_some()),
        ("password_file", c.password_file.is_some()),
    ] {
        unused(errs, field, set && !pg, "postgres");
    }
    let probe = match c.kind {
        CheckKind::None => return None,
        CheckKind::Postgres => {
            let role = match c.role.as_deref() {
                Some("primary") => crate::probe::PgRole::Primary,
                Some("standby") => crate::probe::PgRole::Standby,
                Some(other) => {
                    errs.push(
                        format!("{cp}.role"),
                        format!("{other:?}: use \"primary\" (accepts writes) or \"standby\""),
                    );
                    crate::probe::PgRole::Primary
                }
                None => {
                    errs.push(
                        format!("{cp}.role"),
                        "missing: \"primary\" (accepts writes) or \"standby\"",
                    );
                    crate::probe::PgRole::Primary
                }
            };
            let password = match &c.password_file {
                None => None,
                Some(p) => match std::fs::read_to_string(p) {
                    Ok(s) => Some(crate::probe::Password(
                        s.trim_end_matches(['\n', '\r']).to_string(),
                    )),
                    Err(e) => {
                        errs.push(
                            format!("{cp}.password_file"),
                            format!("cannot read {}: {e}", p.display()),
                        );
                        None
                    }
                },
            };
            ProbeSpec::Postgres {
                role,
                user: c.user.unwrap_or_else(|| "postgres".into()),
                database: c.database.unwrap_or_else(|| "postgres".into()),
                password,
            }
        }
        CheckKind::Tcp => ProbeSpec::Tcp,
        CheckKind::Http => {
            let path = c.path.unwrap_or_else(|| "/".to_string());
            if !path.starts_with('/')
                || path.chars().any(|ch| ch.is_whitespace() || ch.is_control())
            {
                errs.push(
                    format!("{cp}.path"),
                    format!("{path:?} must start with '/' and have no spaces"),
                );
            }
            if let Some(h) = &c.host
                && (h.is_empty() || h.chars().any(|ch| ch.is_whitespace() || ch.is_control()))
            {
                errs.push(
                    format!("{cp}.host"),
                    format!("{h:?} is not a valid Host header"),
                );
            }
            let mut expect_status = Vec::new();
            for (i, v) in c.expect_status.unwrap_or_default().iter().enumerate() {
                match status_range(v) {
                    Ok(r) => expect_status.push(r),
                    Err(e) => errs.push(format!("{cp}.expect_status[{i}]"), e),
                }
            }
            if expect_status.is_empty() {
                expect_status.push((200, 399));
            }
            ProbeSpec::Http {
                path,
                host: c.host,
                expect_status,
                expect_body: c.expect_body,
            }
        }
        CheckKind::Udp => ProbeSpec::Udp {
            payload: c.payload.unwrap_or_else(|| "ping".to_string()).into_bytes(),
            expect: c.expect.map(String::into_bytes),
        },
        CheckKind::Exec => match c.command {
            Some(command) if !command.is_empty() && !command[0].is_empty() => {
                ProbeSpec::Exec { command }
            }
            _ => {
                errs.push(
                    format!("{cp}.command"),
                    "an exec check needs a command (program and arguments, no shell)",
                );
                ProbeSpec::Tcp
            }
        },
    };
    let interval = duration(
        errs,
        &format!("{cp}.interval"),
        c.interval.as_deref(),
        Duration::from_secs(1),
    );
    let fast_interval = duration(
        errs,
        &format!("{cp}.fast_interval"),
        c.fast_interval.as_deref(),
        (interval / 4).max(Duration::from_millis(1)),
    );
    let timeout = duration(
        errs,
        &format!("{cp}.timeout"),
        c.timeout.as_deref(),
        interval.min(Duration::from_secs(2)),
    );
    if interval < Duration::from_millis(1) {
        errs.push(format!("{cp}.interval"), "must be at least 1ms");
    }
    let rise = c.rise.unwrap_or(2);
    let fall = c.fall.unwrap_or(3);
    for (f, v) in [("rise", rise), ("fall", fall)] {
        if v == 0 || v > 100 {
            errs.push(format!("{cp}.{f}"), format!("{v} must be 1-100"));
        }
    }
    let jitter = c.jitter.unwrap_or(0.1);
    if !(0.0..=0.5).contains(&jitter) {
        errs.push(
            format!("{cp}.jitter"),
            format!("{jitter} must be between 0 and 0.5"),
        );
    }
    if c.port == Some(0) {
        errs.push(format!("{cp}.port"), "must be 1-65535");
    }
    Some(Check {
        probe,
        interval,
        fast_interval,
        timeout,
        rise,
        fall,
        jitter,
        port: c.port,
    })
}
