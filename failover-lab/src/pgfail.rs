//! The PostgreSQL lab with the daemon in front and roles configured
//! (`[service.promotion]`): a primary (db1) and its streaming standby (db2)
//! from [`crate::pg`], the shipped `examples/postgresql` scripts as the
//! checks and the promote and fence hooks, an events file and an admin
//! socket. For the failover scenario tests (`tests/pg_failover.rs`) and the
//! bench's `postgresql` section; not part of the product.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    DaemonProcess, LB_IFACES, Topology, Workdir,
    pg::{self, InsertClient, InsertOptions, InsertReport, PgInstall, PgServer, PgServiceConfig},
};

/// The shipped scripts the lab's daemon runs.
pub const SCRIPTS: [&str; 3] = ["pg-role", "pg-promote", "pg-fence"];

/// Fields drop in order: the databases first, then the daemon, then the
/// namespaces, then the directories.
pub struct PgFailoverLab {
    pub db: Vec<PgServer>,
    pub daemon: DaemonProcess,
    pub topo: Topology,
    pub config: PathBuf,
    pub events: PathBuf,
    exe: PathBuf,
    sync: bool,
    _w: Workdir,
}

/// The shipped scripts, copied where the checks' user (`nobody`) can run
/// them (a CI clone may sit in a private directory).
pub fn install_scripts(dir: &Path) -> anyhow::Result<PathBuf> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/postgresql");
    for s in SCRIPTS {
        std::fs::copy(src.join(s), bin.join(s))
            .with_context(|| format!("copying {s} from {}", src.display()))?;
    }
    Ok(bin)
}

/// How a [`PgFailoverLab`] is set up.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Synchronous replication (else asynchronous).
    pub sync: bool,
    /// Passive detection in the datapath (`rst`), confirmed by a probe.
    pub passive: bool,
    /// The promote command as a TOML array (default: the shipped
    /// `pg-promote`).
    pub promote: Option<String>,
    /// The daemon's own PostgreSQL checks (`type = "postgres"`, a kept
    /// connection, every 10 ms) instead of the shipped `pg-role` script
    /// as exec checks (a `psql` each, every 25 ms).
    pub native: bool,
}

impl PgFailoverLab {
    /// A primary (db1) and its streaming standby (db2), the daemon `exe`
    /// with roles in front of them, both backends in their roles.
    pub fn start(exe: &Path, o: &Options) -> anyhow::Result<Self> {
        let (sync, passive, promote) = (o.sync, o.passive, o.promote.as_deref());
        let install = PgInstall::find()?;
        let w = Workdir::new("fpf")?;
        let topo = Topology::create(&w.prefix)?;
        pg::route_backends(&topo)?;
        let bin = install_scripts(&w.dir)?;
        let b = bin.display();
        let events = w.dir.join("events.jsonl");
        let promote = promote.map_or_else(
            || format!("[\"{b}/pg-promote\", \"{{address}}\", \"{{port}}\", \"{{token}}\"]"),
            str::to_string,
        );
        let passive = if passive {
            "[service.passive]\nsignals = [\"rst\"]\nfailures = 1\nwindow = \"1s\"\nconfirm_within = \"1s\"\n"
        } else {
            ""
        };
        let (active_check, standby_check) = if o.native {
            (
                "type = \"postgres\"\nrole = \"primary\"\ninterval = \"10ms\"\nfast_interval = \"5ms\"\ntimeout = \"200ms\"\nfall = 2\nrise = 2\n".to_string(),
                "type = \"postgres\"\nrole = \"standby\"\ninterval = \"50ms\"\ntimeout = \"200ms\"\n".to_string(),
            )
        } else {
            (
                format!(
                    "type = \"exec\"\ncommand = [\"{b}/pg-role\", \"active\", \"{{address}}\", \"{{port}}\"]\ninterval = \"25ms\"\nfast_interval = \"10ms\"\ntimeout = \"1s\"\nfall = 2\nrise = 2\n"
                ),
                format!(
                    "type = \"exec\"\ncommand = [\"{b}/pg-role\", \"standby\", \"{{address}}\", \"{{port}}\"]\ninterval = \"100ms\"\ntimeout = \"1s\"\n"
                ),
            )
        };
        let x = PgServiceConfig {
            daemon_keys: format!("events_file = \"{}\"\n", events.display()),
            top: format!(
                "[admin]\nsocket = \"{}\"\naudit_file = \"{}\"\n",
                w.dir.join("admin.sock").display(),
                w.dir.join("audit.jsonl").display()
            ),
            service_keys: "flows_on_down = \"reset\"\non_no_backend = \"reset\"\n".into(),
            check: Some(active_check),
            service_tables: format!(
                "{passive}\n[service.promotion]\npromote = {promote}\nfence = [\"{b}/pg-fence\", \"{{address}}\", \"{{port}}\"]\nhook_timeout = \"10s\"\nready_within = \"5s\"\n\n[service.promotion.standby_check]\n{standby_check}"
            ),
        };
        let config = pg::write_daemon_config(&w, &x)?;
        let mut db1 = PgServer::on_backend(&install, &topo, &w, 0)?;
        let mut db2 = PgServer::on_backend(&install, &topo, &w, 1)?;
        db1.init_primary(sync).context("primary on backend 1")?;
        db2.init_standby_of(db1.ip())
            .context("standby on backend 2")?;
        db1.wait_streaming("db2", Duration::from_secs(10))
            .context("db2 streams from db1")?;
        let mut daemon = DaemonProcess::spawn(exe, &topo.lb.name, &config)?;
        daemon.wait_attached(&w.bpffs, &LB_IFACES)?;
        // The replication connection crosses the load balancer. One opened
        // before the program was attached looks, from its first packet on,
        // like a VIP flow whose entry is gone (db1:5432 is the service's
        // endpoint) and is translated as its reply (see docs/deploy.md):
        // restart the standby now that the program sees its SYN.
        db2.stop().context("restarting db2")?;
        db2.start().context("restarting db2")?;
        db1.wait_streaming("db2", Duration::from_secs(10))
            .context("db2 streams from db1 again")?;
        let lab = Self {
            db: vec![db1, db2],
            daemon,
            topo,
            config,
            events,
            exe: exe.to_path_buf(),
            sync,
            _w: w,
        };
        lab.wait_state("db1", "up")?;
        lab.wait_state("db2", "standby")?;
        Ok(lab)
    }

    pub fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The `n`th event (counting from 0) of `kind`, waited for (10 s).
    pub fn wait_event(&self, kind: &str, n: usize) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<_> = self
                .events()
                .into_iter()
                .filter(|e| e["kind"] == kind)
                .collect();
            if let Some(e) = found.get(n) {
                return Ok(e.clone());
            }
            if Instant::now() >= deadline {
                anyhow::bail!("no {kind} event #{n} within 10 s: {:#?}", self.events());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs the CLI against the lab's daemon: (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        let out = Command::new(&self.exe)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .with_context(|| format!("running {}", self.exe.display()))?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Backend `b`'s state as `failover backends` shows it.
    pub fn state_of(&self, b: &str) -> anyhow::Result<String> {
        let (ok, out, err) = self.cli(&["backends", "pg", "--json"])?;
        if !ok {
            anyhow::bail!("failover backends: {err}");
        }
        let v: serde_json::Value =
            serde_json::from_str(&out).context("failover backends --json")?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .find(|r| r["backend"] == b)
            .and_then(|r| r["state"].as_str())
            .unwrap_or("?")
            .to_string())
    }

    /// Waits (15 s) until backend `b` shows `want`.
    pub fn wait_state(&self, b: &str, want: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = self.state_of(b)?;
            if s == want {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "{b} is {s}, not {want}, after 15 s; events: {:#?}",
                    self.events()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The application: an insert every 10 ms through the VIP, ids from
    /// `first_id`.
    pub fn client(&self, first_id: i64) -> anyhow::Result<InsertClient> {
        InsertClient::start(
            &self.topo.client,
            InsertOptions {
                first_id,
                // An application that retries at once: a SYN dropped while
                // no backend takes new flows is not retried by TCP for 1 s.
                connect_timeout: Duration::from_millis(100),
                ..Default::default()
            },
        )
    }

    /// Makes `old` (stopped, or running on its own) a standby of `primary`
    /// again: rebuilt and streaming; with synchronous replication
    /// `synchronous_standby_names` is set on the primary again (the
    /// promote hook cleared it) and the standby is its synchronous one.
    pub fn rejoin(&mut self, old: usize, primary: usize) -> anyhow::Result<()> {
        let ip = self.db[primary].ip();
        let name = self.db[old].name().to_string();
        self.db[old]
            .rebuild_as_standby_of(ip)
            .context("rebuilt as a standby")?;
        if self.sync {
            self.db[primary].set_synchronous(true)?;
        }
        let state = self.db[primary].wait_streaming(&name, Duration::from_secs(10))?;
        if self.sync && state != "sync" {
            anyhow::bail!("{name} streams as {state}, not sync");
        }
        Ok(())
    }
}

/// Ids whose insert started at or after `t`.
pub fn started_after(r: &InsertReport, t: Instant) -> BTreeSet<i64> {
    r.attempts
        .iter()
        .filter(|a| a.start >= t)
        .map(|a| a.id)
        .collect()
}
