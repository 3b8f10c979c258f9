//! Which map slot each service, tier and backend of a config occupies.
//!
//! Ids are kept stable across restarts and reloads where the service or
//! backend is unchanged (matched by name and address), so established flows
//! in the pinned conntrack map keep pointing at the right backend. The
//! layout is saved as JSON in the state directory, where the CLI reads it to
//! turn names into map slots.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    path::Path,
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::config::{Config, Mode, Protocol};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Layout {
    pub services: Vec<ServiceLayout>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceLayout {
    pub name: String,
    pub id: u32,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    /// Tier ids are `first_tier .. first_tier + tiers.len()`.
    pub first_tier: u32,
    pub tiers: Vec<Vec<BackendLayout>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendLayout {
    pub name: String,
    pub id: u32,
    pub address: IpAddr,
    pub port: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("no free {what} slot (limit {limit})")]
    Full { what: &'static str, limit: u32 },
}

/// Hands out the lowest free id below a limit, avoiding ids that the
/// previous layout used for something else while others are free: pinned
/// conntrack entries may still name them, and a flow must never follow a
/// recycled id to a different backend.
struct Ids {
    used: BTreeSet<u32>,
    retired: BTreeSet<u32>,
    limit: u32,
    what: &'static str,
}

impl Ids {
    fn new(limit: u32, what: &'static str, retired: BTreeSet<u32>) -> Self {
        Self {
            used: BTreeSet::new(),
            retired,
            limit,
            what,
        }
    }
    fn claim(&mut self, id: u32) -> bool {
        id < self.limit && self.used.insert(id)
    }
    fn next(&mut self) -> Result<u32, LayoutError> {
        let free = |i: &u32| !self.used.contains(i);
        let id = (0..self.limit)
            .find(|i| free(i) && !self.retired.contains(i))
            .or_else(|| (0..self.limit).find(free))
            .ok_or(LayoutError::Full {
                what: self.what,
                limit: self.limit,
            })?;
        self.used.insert(id);
        Ok(id)
    }
}

impl Layout {
    /// Assigns slots for `cfg`, reusing `prev`'s where the same service (by
    /// name) and backend (by service, name, address and port) existed.
    pub fn assign(cfg: &Config, prev: Option<&Layout>) -> Result<Layout, LayoutError> {
        let prev_services = prev.map(|p| p.services.as_slice()).unwrap_or_default();
        let old_svc_ids = prev_services.iter().map(|s| s.id).collect();
        let old_backend_ids = prev_services
            .iter()
            .flat_map(|s| s.tiers.iter().flatten())
            .map(|b| b.id)
            .collect();
        let mut svc_ids = Ids::new(cfg.limits.max_services, "service", old_svc_ids);
        let mut backend_ids = Ids::new(cfg.limits.max_backends, "backend", old_backend_ids);
        let mut prev_svc: HashMap<&str, u32> = HashMap::new();
        let mut prev_backend: HashMap<(&str, &str, IpAddr, u16), u32> = HashMap::new();
        for s in prev_services {
            prev_svc.insert(&s.name, s.id);
            for b in s.tiers.iter().flatten() {
                prev_backend.insert((&s.name, &b.name, b.address, b.port), b.id);
            }
        }
        // First claim every reusable id, then hand out fresh ones, so a new
        // entry never steals an old one's slot.
        let mut svc_reuse = HashMap::new();
        let mut backend_reuse = HashMap::new();
        for s in &cfg.services {
            if let Some(&id) = prev_svc.get(s.name.as_str())
                && svc_ids.claim(id)
            {
                svc_reuse.insert(s.name.as_str(), id);
            }
            for b in s.tiers.iter().flatten() {
                let k = (s.name.as_str(), b.name.as_str(), b.address, b.port);
                if let Some(&id) = prev_backend.get(&k)
                    && backend_ids.claim(id)
                {
                    backend_reuse.insert(k, id);
                }
            }
        }
        let mut services = Vec::with_capacity(cfg.services.len());
        let mut next_tier = 0u32;
        for s in &cfg.services {
            let id = match svc_reuse.get(s.name.as_str()) {
                Some(&id) => id,
                None => svc_ids.next()?,
            };
            let mut tiers = Vec::with_capacity(s.tiers.len());
            for t in &s.tiers {
                let mut members = Vec::with_capacity(t.len());
                for b in t {
                    let k = (s.name.as_str(), b.name.as_str(), b.address, b.port);
                    let bid = match backend_reuse.get(&k) {
                        Some(&id) => id,
                        None => backend_ids.next()?,
                    };
                    members.push(BackendLayout {
                        name: b.name.clone(),
                        id: bid,
                        address: b.address,
                        port: b.port,
                    });
                }
                tiers.push(members);
            }
            let first_tier = next_tier;
            next_tier += tiers.len() as u32;
            if next_tier > cfg.limits.max_tiers {
                return Err(LayoutError::Full {
                    what: "tier",
                    limit: cfg.limits.max_tiers,
                });
            }
            services.push(ServiceLayout {
                name: s.name.clone(),
                id,
                vip: s.vip,
                port: s.port,
                protocol: s.protocol,
                mode: s.mode,
                first_tier,
                tiers,
            });
        }
        Ok(Layout { services })
    }

    pub fn service(&self, name: &str) -> Option<&ServiceLayout> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The backend id of `service`/`backend`.
    pub fn backend_id(&self, service: &str, backend: &str) -> Option<u32> {
        self.service(service)?
            .tiers
            .iter()
            .flatten()
            .find(|b| b.name == backend)
            .map(|b| b.id)
    }

    pub fn load(path: &Path) -> anyhow::Result<Option<Layout>> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("parsing {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the layout atomically (temp file + rename), mode 0600.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).context("serialising the layout")?;
        crate::sys::files::write_atomic(path, &bytes)
            .with_context(|| format!("saving the layout {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const CFG: &str = r#"
[[service]]
name = "a"
vip = "198.18.0.10"
port = 80
[[service.backend]]
name = "p"
address = "198.18.1.2"
[[service.backend]]
name = "s"
address = "198.18.2.2"
tier = 1

[[service]]
name = "b"
vip = "198.18.0.11"
port = 80
[[service.backend]]
name = "x"
address = "198.18.3.2"
"#;

    #[test]
    fn fresh_assignment_is_dense() {
        let cfg = parse(CFG, "t").unwrap();
        let l = Layout::assign(&cfg, None).unwrap();
        assert_eq!(l.services[0].id, 0);
        assert_eq!(l.services[1].id, 1);
        assert_eq!(l.services[0].first_tier, 0);
        assert_eq!(l.services[1].first_tier, 2);
        assert_eq!(l.backend_id("a", "p"), Some(0));
        assert_eq!(l.backend_id("a", "s"), Some(1));
        assert_eq!(l.backend_id("b", "x"), Some(2));
        assert_eq!(l.backend_id("b", "nope"), None);
    }

    #[test]
    fn ids_survive_reordering_and_additions() {
        let cfg = parse(CFG, "t").unwrap();
        let first = Layout::assign(&cfg, None).unwrap();
        // Service b first, a new backend in a, backend s moved address.
        let text = r#"
[[service]]
name = "b"
vip = "198.18.0.11"
port = 80
[[service.backend]]
name = "x"
address = "198.18.3.2"

[[service]]
name = "a"
vip = "198.18.0.10"
port = 80
[[service.backend]]
name = "new"
address = "198.18.4.2"
[[service.backend]]
name = "p"
address = "198.18.1.2"
[[service.backend]]
name = "s"
address = "198.18.2.3"
tier = 1
"#;
        let cfg2 = parse(text, "t").unwrap();
        let second = Layout::assign(&cfg2, Some(&first)).unwrap();
        assert_eq!(second.service("a").unwrap().id, 0);
        assert_eq!(second.service("b").unwrap().id, 1);
        assert_eq!(
            second.backend_id("a", "p"),
            Some(0),
            "unchanged backend keeps its slot"
        );
        assert_eq!(second.backend_id("b", "x"), Some(2));
        // s changed address: a new identity. Its old slot 1 may still be named
        // by pinned flows, so new backends get never-used slots first.
        assert_eq!(second.backend_id("a", "new"), Some(3));
        assert_eq!(second.backend_id("a", "s"), Some(4));
    }

    #[test]
    fn limits_are_reported() {
        let text = format!("[limits]\nmax_backends = 3\nmax_tiers = 2\n{CFG}");
        let cfg = parse(&text, "t").unwrap_err().to_string();
        assert!(cfg.contains("limits.max_tiers is 2"), "{cfg}");
    }
}
