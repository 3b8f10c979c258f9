//! What a reload would change, as JSON.

use super::*;

/// What a reload would change, service by service and backend by backend.
pub fn diff(old: &Config, new: &Config) -> serde_json::Value {
    use serde_json::json;
    let mut added = Vec::new();
    let mut removed = Vec::new();
    let mut changed = Vec::new();
    for s in &new.services {
        match old.services.iter().find(|o| o.name == s.name) {
            None => added.push(s.name.clone()),
            Some(o) if o == s => {}
            Some(o) => {
                let mut what = Vec::new();
                if (o.vip, o.port, o.protocol) != (s.vip, s.port, s.protocol) {
                    what.push(format!(
                        "address {}:{} {} -> {}:{} {}",
                        o.vip, o.port, o.protocol, s.vip, s.port, s.protocol
                    ));
                }
                if o.mode != s.mode {
                    what.push(format!("mode {:?} -> {:?}", o.mode, s.mode));
                }
                let names = |c: &Service| -> Vec<(String, usize, IpAddr, u16, u32)> {
                    c.tiers
                        .iter()
                        .enumerate()
                        .flat_map(|(t, bs)| {
                            bs.iter()
                                .map(move |b| (b.name.clone(), t, b.address, b.port, b.weight))
                        })
                        .collect()
                };
                let (ob, nb) = (names(o), names(s));
                for b in &nb {
                    match ob.iter().find(|x| x.0 == b.0) {
                        None => what.push(format!("backend {} added ({}:{}, tier {})", b.0, b.2, b.3, b.1)),
                        Some(x) if x != b => what.push(format!(
                            "backend {} changed ({}:{} tier {} weight {} -> {}:{} tier {} weight {})",
                            b.0, x.2, x.3, x.1, x.4, b.2, b.3, b.1, b.4
                        )),
                        Some(_) => {}
                    }
                }
                for x in &ob {
                    if !nb.iter().any(|b| b.0 == x.0) {
                        what.push(format!("backend {} removed", x.0));
                    }
                }
                if o.check != s.check {
                    what.push("health check changed".to_string());
                }
                if (o.failback, o.flows_on_down, o.damping, o.on_no_backend)
                    != (s.failback, s.flows_on_down, s.damping, s.on_no_backend)
                {
                    what.push("policy changed".to_string());
                }
                if o.hooks != s.hooks {
                    what.push("hooks changed".to_string());
                }
                if o.passive != s.passive {
                    what.push("passive detection changed".to_string());
                }
                if o.table_size != s.table_size {
                    what.push(format!("table_size {} -> {}", o.table_size, s.table_size));
                }
                changed.push(json!({"service": s.name, "changes": what}));
            }
        }
    }
    for o in &old.services {
        if !new.services.iter().any(|s| s.name == o.name) {
            removed.push(o.name.clone());
        }
    }
    json!({"added": added, "removed": removed, "changed": changed, "unchanged": new.services.len() - added.len() - changed.len()})
}
