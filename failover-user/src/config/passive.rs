//! Validation of `[service.passive]` and `[service.timeouts]`.

use super::*;

pub(super) fn validate_passive(
    errs: &mut Errors,
    p: &str,
    raw: RawPassive,
    mode: Mode,
    protocol: Protocol,
    checked: bool,
) -> Passive {
    let pp = format!("{p}.passive");
    if !checked {
        errs.push(
            pp.clone(),
            "needs a health check: the agent confirms every passive mark-down with probes",
        );
    }
    // Bits of the signals this mode and protocol can see.
    let possible: u32 = match (mode, protocol) {
        (Mode::Nat, Protocol::Tcp) => 0b1111,
        (Mode::Nat, Protocol::Udp) => 1 << failover_common::SIG_ICMP,
        (Mode::Dsr, Protocol::Tcp) => 1 << failover_common::SIG_SYN_RETX,
        (Mode::Dsr, Protocol::Udp) => 0,
    };
    let signals = match raw.signals {
        None => possible,
        Some(names) => {
            let mut bits = 0;
            for (i, n) in names.iter().enumerate() {
                match PASSIVE_SIGNALS.iter().position(|s| s == n) {
                    Some(b) if possible & (1 << b) != 0 => bits |= 1 << b,
                    Some(_) => errs.push(
                        format!("{pp}.signals[{i}]"),
                        format!(
                            "{n:?} cannot be seen in mode {mode:?} with {protocol:?}: {}",
                            if mode == Mode::Dsr {
                                "in DSR the backends' replies bypass the load balancer; only syn-retransmit (TCP) is seen"
                            } else {
                                "rst, syn-retransmit and no-reply are TCP signals; UDP has icmp"
                            }
                        ),
                    ),
                    None => errs.push(
                        format!("{pp}.signals[{i}]"),
                        format!("{n:?}: use {}", PASSIVE_SIGNALS.join(", ")),
                    ),
                }
            }
            bits
        }
    };
    if signals == 0 && possible == 0 {
        errs.push(
            pp.clone(),
            "no passive signal exists for UDP in DSR mode; remove [service.passive]",
        );
    } else if signals == 0 {
        errs.push(format!("{pp}.signals"), "empty: nothing would be detected");
    }
    let failures = raw.failures.unwrap_or(3);
    if failures == 0 || failures > 1000 {
        errs.push(
            format!("{pp}.failures"),
            format!("{failures} must be 1-1000"),
        );
    }
    let max_ejection = raw.max_ejection.unwrap_or(0.5);
    if !(max_ejection > 0.0 && max_ejection <= 1.0) {
        errs.push(
            format!("{pp}.max_ejection"),
            format!("{max_ejection} must be a fraction in (0, 1]"),
        );
    }
    Passive {
        signals,
        failures,
        window: duration(
            errs,
            &format!("{pp}.window"),
            raw.window.as_deref(),
            Duration::from_secs(10),
        ),
        no_reply: duration(
            errs,
            &format!("{pp}.no_reply"),
            raw.no_reply.as_deref(),
            Duration::from_secs(1),
        ),
        max_ejection,
        confirm_within: duration(
            errs,
            &format!("{pp}.confirm_within"),
            raw.confirm_within.as_deref(),
            Duration::from_secs(2),
        ),
    }
}

/// `[service.timeouts]`: each from 1 s to 24 days (the dataplane compares
/// 32-bit millisecond clocks).
pub(super) fn validate_timeouts(errs: &mut Errors, p: &str, raw: &RawTimeouts) -> FlowTimeouts {
    let d = FlowTimeouts::DEFAULT;
    let mut one = |name: &str, v: &Option<String>, default: u32| -> u32 {
        let path = format!("{p}.timeouts.{name}");
        let t = duration(
            errs,
            &path,
            v.as_deref(),
            Duration::from_millis(default.into()),
        );
        if t < Duration::from_secs(1) || t > Duration::from_secs(24 * 86400) {
            errs.push(path, format!("{t:?} is out of range (1s to 24 days)"));
            return default;
        }
        t.as_millis() as u32
    };
    FlowTimeouts {
        syn_ms: one("syn", &raw.syn, d.syn_ms),
        established_ms: one("established", &raw.established, d.established_ms),
        closing_ms: one("closing", &raw.closing, d.closing_ms),
        udp_ms: one("udp", &raw.udp, d.udp_ms),
    }
}
