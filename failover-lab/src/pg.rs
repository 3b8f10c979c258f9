//! A real PostgreSQL lab on the failover lab's backends: a primary and a
//! streaming standby (synchronous or not) in the backend namespaces, the
//! daemon's `pg` service in front of them on the VIP, and an application
//! ([`InsertClient`]) in the client namespace inserting a row every few
//! milliseconds through the VIP and recording what happened to each one.
//! For failover scenario tests and the bench; not part of the product.
//!
//! ```text
//!  client (c) --- lb (l) --- backend 1: db1, 198.18.1.2:5432 (primary)
//!  InsertClient    |  \----- backend 2: db2, 198.18.2.2:5432 (standby of db1)
//!                  VIP 198.18.100.10:5432 (service `pg`, NAT)
//! ```
//!
//! Replication traffic between the backends crosses the load balancer's
//! namespace (routes from [`route_backends`]): it is not VIP traffic, so the
//! XDP program passes it and the kernel there forwards it.
//!
//! Every PostgreSQL program runs as the `postgres` user inside the backend's
//! network namespace: `nsenter --net=/run/netns/NS -- setpriv --reuid
//! postgres ... -- BIN/PROG` (nsenter and setpriv exec, neither forks, so the
//! postmaster is our own child: its pid is the one [`PgServer::kill_postmaster`]
//! kills, and we reap it). Clusters live under the [`Workdir`]'s directory
//! with their unix sockets there too, so two labs never share a file; each
//! lab has its own namespaces, so port 5432 on each backend address is free.
//!
//! Things worth knowing (measured on PostgreSQL 15):
//! - `statement_timeout` does not bound a commit waiting for a synchronous
//!   standby (it is disabled before the commit): only the client's own
//!   deadline does, and such a commit is in doubt, not failed (it is durable
//!   locally and becomes visible when the standby answers or the cluster
//!   restarts).
//! - `synchronous_commit = on` waits for the standby's flush, not its
//!   replay: an acknowledged row may not be visible on the standby yet (wait
//!   with [`PgServer::wait_replayed`]); promotion replays everything flushed.
//! - A promoted standby keeps `synchronous_standby_names = '*'` from its
//!   primary: its commits wait until a standby connects (or until
//!   [`PgServer::set_synchronous`]`(false)`).
//! - Helper queries (`sql`, `ids`, table setup) use `synchronous_commit =
//!   local`, so they never hang on a missing standby.

use std::{
    collections::BTreeSet,
    fs,
    io::Read as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio_postgres::{AsyncMessage, NoTls, error::SqlState};

use crate::{BACKENDS, Topology, VIP4, Workdir, netns::Netns};

/// PostgreSQL's port, on the backends and on the VIP.
pub const PG_PORT: u16 = 5432;
/// The database the lab creates, with its table `t(id bigint primary key,
/// at timestamptz default now())`.
pub const DB: &str = "app";
/// The names of the backends in the daemon config and of the clusters
/// (`cluster_name`, hence `application_name` in `pg_stat_replication`).
pub const NAMES: [&str; 2] = ["db1", "db2"];

/// Waits for a server to accept connections after start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Waits for a fast or immediate shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bounds every helper command (psql, initdb, pg_basebackup).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

// ------------------------------------------------------------ installation

/// The PostgreSQL installation the lab uses and the `postgres` user that
/// owns its clusters.
#[derive(Debug, Clone)]
pub struct PgInstall {
    /// `/usr/lib/postgresql/<version>/bin` (Debian's layout).
    pub bin: PathBuf,
    /// The major version (the directory's name).
    pub version: u32,
    pub uid: u32,
    pub gid: u32,
}

impl PgInstall {
    /// The highest version in `/usr/lib/postgresql/*/bin` that has
    /// `initdb`, the `postgres` user, and `nsenter` and `setpriv`
    /// (util-linux). Fails saying what is missing and how to fix it.
    pub fn find() -> anyhow::Result<Self> {
        let (version, bin) = find_bin_dir().context(
            "PostgreSQL's server binaries (/usr/lib/postgresql/<version>/bin/initdb) are \
             missing: run `cargo xtask setup` (as root it installs the `postgresql` package)",
        )?;
        for prog in ["postgres", "pg_basebackup", "psql", "pg_isready"] {
            if !bin.join(prog).is_file() {
                bail!(
                    "{} is missing: reinstall PostgreSQL (`cargo xtask setup`)",
                    bin.join(prog).display()
                );
            }
        }
        let id = |flag: &str| -> anyhow::Result<u32> {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .context("running `id`")?;
            if !out.status.success() {
                bail!(
                    "no `postgres` user ({}): run `cargo xtask setup`",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .context("parsing the output of `id`")
        };
        let (uid, gid) = (id("-u")?, id("-g")?);
        for tool in ["nsenter", "setpriv"] {
            let ok = Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                bail!("`{tool}` (util-linux) is needed to run PostgreSQL in the lab");
            }
        }
        Ok(Self {
            bin,
            version,
            uid,
            gid,
        })
    }
}

/// `/usr/lib/postgresql/<highest version>/bin` if it has `initdb`, with
/// the version.
pub fn find_bin_dir() -> Option<(u32, PathBuf)> {
    fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max_by_key(|(v, _)| *v)
}

/// PostgreSQL's bin directory (see [`PgInstall::find`]).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    Ok(PgInstall::find()?.bin)
}

// ------------------------------------------------------------------ routes

/// Routes between the two backends through the load balancer (backend 1
/// reaches 198.18.2.0/24 via 198.18.1.1, backend 2 reaches 198.18.1.0/24
/// via 198.18.2.1), so a standby on one streams from a primary on the
/// other. Idempotent: call it again after [`Topology::backend_link`] brings
/// a link back up (a link going down loses its routes).
pub fn route_backends(topo: &Topology) -> anyhow::Result<()> {
    for (i, ns) in topo.backends.iter().enumerate().take(2) {
        let (n, other) = (i + 1, 2 - i);
        ns.ip(&[
            "route",
            "replace",
            &format!("198.18.{other}.0/24"),
            "via",
            &format!("198.18.{n}.1"),
        ])
        .with_context(|| format!("routing backend {n} to backend {other}"))?;
    }
    Ok(())
}

// ------------------------------------------------------------ daemon config

/// Additions to the `pg` service's daemon config (see [`daemon_config`]).
#[derive(Debug, Clone, Default)]
pub struct PgServiceConfig {
    /// Keys added to `[daemon]` (e.g. `events_file = "..."`).
    pub daemon_keys: String,
    /// Top-level tables added after `[daemon]` (e.g. `[admin]`).
    pub top: String,
    /// Keys of the service itself, placed before its backend tables (e.g.
    /// `failback = "manual"`).
    pub service_keys: String,
    /// The body of `[service.check]`; `None`: `type = "none"`.
    pub check: Option<String>,
    /// Tables appended to the service (`[service.passive]`,
    /// `[[service.hook]]`, `[service.damping]`, ...).
    pub service_tables: String,
}

/// The daemon config of a lab with one service, `pg`: VIP 198.18.100.10
/// port 5432, NAT, backends `db1` (198.18.1.2:5432, tier 0) and `db2`
/// (198.18.2.2:5432, tier 1), interfaces `lc`, `lb1`, `lb2`, pins in the
/// workdir's bpffs directory and state in `<workdir>/state`.
pub fn daemon_config(wd: &Workdir, x: &PgServiceConfig) -> String {
    let check = x.check.as_deref().unwrap_or("type = \"none\"");
    format!(
        r#"# The PostgreSQL lab's config, written by failover-lab (pg.rs).
[daemon]
interfaces = ["lc", "lb1", "lb2"]
bpffs = "{bpffs}"
state_dir = "{state}"
{daemon_keys}
{top}

[[service]]
name = "pg"
vip = "{VIP4}"
port = {PG_PORT}
mode = "nat"
{service_keys}
[[service.backend]]
name = "{db1}"
address = "{b1}"
port = {PG_PORT}
tier = 0

[[service.backend]]
name = "{db2}"
address = "{b2}"
port = {PG_PORT}
tier = 1

[service.check]
{check}

{tables}
"#,
        bpffs = wd.bpffs.display(),
        state = wd.dir.join("state").display(),
        daemon_keys = x.daemon_keys,
        top = x.top,
        service_keys = x.service_keys,
        db1 = NAMES[0],
        db2 = NAMES[1],
        b1 = BACKENDS[0].0,
        b2 = BACKENDS[1].0,
        tables = x.service_tables,
    )
}

/// Writes [`daemon_config`] to `<workdir>/pg.toml` and returns the path.
pub fn write_daemon_config(wd: &Workdir, x: &PgServiceConfig) -> anyhow::Result<PathBuf> {
    let path = wd.dir.join("pg.toml");
    fs::write(&path, daemon_config(wd, x))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

// ----------------------------------------------------------------- servers

/// One PostgreSQL cluster in a backend's namespace, listening on the
/// backend's address, port 5432, and on a unix socket in its own directory
/// (`<workdir>/pg-<name>/sock`); data in `<workdir>/pg-<name>/data`, the
/// server's log in `<workdir>/pg-<name>/postgres.log`. Stopped (immediate
/// shutdown, then SIGKILL, then any leftover process in its data directory)
/// on drop.
pub struct PgServer {
    install: PgInstall,
    name: String,
    netns: String,
    addr: Ipv4Addr,
    root: PathBuf,
    postmaster: Option<Child>,
}

impl PgServer {
    /// A server named `name` (e.g. `db1`) in namespace `ns` on `addr`, with
    /// its files under `<dir>/pg-<name>`. Nothing runs yet: see
    /// [`Self::init_primary`] and [`Self::init_standby_of`].
    pub fn new(
        install: &PgInstall,
        ns: &Netns,
        name: &str,
        addr: Ipv4Addr,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let root = dir.join(format!("pg-{name}"));
        let server = Self {
            install: install.clone(),
            name: name.to_string(),
            netns: ns.name.clone(),
            addr,
            root,
            postmaster: None,
        };
        let socket = server.socket_dir().join(format!(".s.PGSQL.{PG_PORT}"));
        // sun_path holds 108 bytes with the terminating NUL.
        if socket.as_os_str().len() >= 108 {
            bail!(
                "the unix socket path {} is too long: set TMPDIR to a shorter directory",
                socket.display()
            );
        }
        server.make_dir(&server.root)?;
        server.make_dir(&server.socket_dir())?;
        Ok(server)
    }

    /// Backend `i`'s server (0: `db1` on 198.18.1.2 in `<p>1`, 1: `db2` on
    /// 198.18.2.2 in `<p>2`), files under the workdir.
    pub fn on_backend(
        install: &PgInstall,
        topo: &Topology,
        wd: &Workdir,
        i: usize,
    ) -> anyhow::Result<Self> {
        let ns = topo.backends.get(i).context("no such backend")?;
        let (name, (addr, _)) = NAMES
            .get(i)
            .zip(BACKENDS.get(i))
            .context("no such backend")?;
        let addr: Ipv4Addr = addr.parse().context("backend address")?;
        Self::new(install, ns, name, addr, &wd.dir)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it listens on.
    pub fn ip(&self) -> Ipv4Addr {
        self.addr
    }

    /// The address and port it listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.addr), PG_PORT)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// The postmaster's pid while it runs (our child).
    pub fn pid(&self) -> Option<u32> {
        self.postmaster.as_ref().map(Child::id)
    }

    /// A directory owned by `postgres`, mode 0700.
    fn make_dir(&self, dir: &Path) -> anyhow::Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::os::unix::fs::chown(dir, Some(self.install.uid), Some(self.install.gid))
            .with_context(|| format!("chown postgres {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 0700 {}", dir.display()))?;
        Ok(())
    }

    /// `prog` from the bin directory, run as `postgres` in the namespace,
    /// with a clean environment (HOME is the server's directory, so no
    /// `~/.pgpass` or `~/.psqlrc` of root's is read).
    fn command(&self, prog: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .args([
                "--",
                "setpriv",
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(self.install.bin.join(prog))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", &self.root)
            .env("LC_ALL", "C")
            .env("PGCONNECT_TIMEOUT", "5")
            .current_dir(&self.root)
            .stdin(Stdio::null());
        c
    }

    /// initdb, the lab's configuration, start, then the database `app` and
    /// its table `t`. Leaves the server running as a primary. With `sync`,
    /// commits wait for a synchronous standby (`synchronous_standby_names =
    /// '*'`, `synchronous_commit = on`): start one before writing through
    /// the VIP.
    pub fn init_primary(&mut self, sync: bool) -> anyhow::Result<()> {
        let data = self.data_dir();
        run_bounded(
            self.command("initdb").arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]),
            COMMAND_TIMEOUT,
        )
        .with_context(|| format!("initdb for {}", self.name))?;
        let conf = data.join("postgresql.conf");
        let mut text =
            fs::read_to_string(&conf).with_context(|| format!("reading {}", conf.display()))?;
        text.push_str(&primary_settings(sync));
        fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
        let hba = data.join("pg_hba.conf");
        fs::write(&hba, HBA).with_context(|| format!("writing {}", hba.display()))?;
        self.start()?;
        self.psql("postgres", &format!("CREATE DATABASE {DB}"))?;
        self.sql("CREATE TABLE t (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")?;
        Ok(())
    }

    /// A standby of the primary at `primary` (port 5432): `pg_basebackup
    /// -R` (fast checkpoint, WAL streamed), then start. Leaves it running,
    /// streaming from the primary. The data directory must not exist yet.
    pub fn init_standby_of(&mut self, primary: Ipv4Addr) -> anyhow::Result<()> {
        run_bounded(
            self.command("pg_basebackup")
                .args(["-h", &primary.to_string(), "-p", &PG_PORT.to_string()])
                .args(["-U", "postgres", "-D"])
                .arg(self.data_dir())
                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]),
            COMMAND_TIMEOUT,
        )
        .with_context(|| format!("pg_basebackup of {} from {primary}", self.name))?;
        self.start()
    }

    /// Wipes the data directory and makes this server a standby of
    /// `primary` (how an old primary comes back after a failover): stops it
    /// first if it runs (immediate), then as [`Self::init_standby_of`].
    pub fn rebuild_as_standby_of(&mut self, primary: Ipv4Addr) -> anyhow::Result<()> {
        if self.postmaster.is_some() {
            self.shutdown(libc::SIGQUIT)?;
        }
        self.kill_leftovers()?;
        let data = self.data_dir();
        if data.exists() {
            fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
        }
        self.init_standby_of(primary)
    }

    /// Starts the postmaster and waits (at most 30 s) until it accepts
    /// connections (as a primary, or read-only as a hot standby).
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.postmaster.is_some() {
            bail!("{} is already running", self.name);
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("opening {}", self.log_path().display()))?;
        let log2 = log.try_clone().context("cloning the log file")?;
        let socket_dir = self.socket_dir();
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-c", &format!("listen_addresses={}", self.addr)])
            .args(["-c", &format!("port={PG_PORT}")])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", socket_dir.display()))
            .args(["-c", &format!("cluster_name={}", self.name)])
            .stdout(log)
            .stderr(log2)
            .spawn()
            .with_context(|| format!("starting the postmaster of {}", self.name))?;
        let pid = child.id();
        self.postmaster = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait()? {
                self.postmaster = None;
                bail!(
                    "{}'s postmaster exited during start ({status}); its log ends:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            // A killed postmaster leaves its postmaster.pid behind: only
            // our child's counts.
            if let Some((file_pid, state)) = self.pid_file_status()
                && file_pid == pid
                && (state == "ready" || state == "standby")
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not accept connections within {START_TIMEOUT:?}; its log ends:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The postmaster's pid and status from `postmaster.pid` (line 1 and
    /// line 8: `starting`, `ready`, `standby`, `stopping`), if it is there.
    fn pid_file_status(&self) -> Option<(u32, String)> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let mut lines = text.lines();
        let pid = lines.next()?.trim().parse().ok()?;
        let state = lines.nth(6).unwrap_or("").trim().to_string();
        Some((pid, state))
    }

    /// The postmaster's exit status if it has exited (reaped).
    fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match &mut self.postmaster {
            Some(c) => c.try_wait().context("checking the postmaster"),
            None => Ok(None),
        }
    }

    /// Whether the postmaster runs.
    pub fn is_running(&mut self) -> bool {
        self.postmaster.is_some() && matches!(self.try_wait(), Ok(None))
    }

    /// Fast shutdown (SIGINT: sessions are ended, a checkpoint written);
    /// waits for the postmaster's exit, at most 30 s, then kills it.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.shutdown(libc::SIGINT)
    }

    /// Sends `signal` to the postmaster and waits (at most 30 s) for its
    /// exit; SIGKILL after that. No-op when it is not running.
    fn shutdown(&mut self, signal: libc::c_int) -> anyhow::Result<()> {
        let Some(mut child) = self.postmaster.take() else {
            return Ok(());
        };
        if child
            .try_wait()
            .context("checking the postmaster")?
            .is_some()
        {
            return Ok(());
        }
        // SAFETY: kill(2) on our own child, which we have not reaped yet
        // (so the pid is still ours).
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if child
                .try_wait()
                .context("waiting for the postmaster")?
                .is_some()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "{} did not stop within {STOP_TIMEOUT:?} of signal {signal}: killed",
            self.name
        )
    }

    /// A crash: SIGKILL to the postmaster (reaped). Its children notice the
    /// postmaster's death and exit on their own, as in production; this
    /// waits (at most 10 s) until none is left and returns how long that
    /// took after the kill. `postmaster.pid` stays behind, as after a real
    /// crash; [`Self::start`] recovers.
    pub fn kill_postmaster(&mut self) -> anyhow::Result<Duration> {
        let mut child = self
            .postmaster
            .take()
            .with_context(|| format!("{} is not running", self.name))?;
        let killed = Instant::now();
        child.kill().context("SIGKILL to the postmaster")?;
        child.wait().context("reaping the postmaster")?;
        let deadline = killed + Duration::from_secs(10);
        while !self.leftover_pids().is_empty() {
            if Instant::now() >= deadline {
                bail!(
                    "{}'s children still run 10 s after the postmaster was killed: {:?}",
                    self.name,
                    self.leftover_pids()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(killed.elapsed())
    }

    /// Processes whose working directory is this server's data directory:
    /// the postmaster and all its children (they chdir there).
    fn leftover_pids(&self) -> Vec<libc::pid_t> {
        processes_in(&self.data_dir())
    }

    /// SIGKILLs whatever still runs in the data directory and waits (at
    /// most 5 s) until it is gone.
    fn kill_leftovers(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.leftover_pids();
            if pids.is_empty() {
                return Ok(());
            }
            for pid in &pids {
                // SAFETY: kill(2) on a process of this server (its cwd is
                // our data directory); no memory involved.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            if Instant::now() >= deadline {
                bail!("processes of {} survive SIGKILL: {pids:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs `sql` in database `db` through the unix socket with psql
    /// (`ON_ERROR_STOP`, tuples only, unaligned), `synchronous_commit =
    /// local` and a 30 s statement timeout; returns psql's output, trimmed.
    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let out = run_bounded(
            self.command("psql")
                .env(
                    "PGOPTIONS",
                    "-c synchronous_commit=local -c statement_timeout=30000",
                )
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-tA", "-h"])
                .arg(self.socket_dir())
                .args(["-p", &PG_PORT.to_string(), "-U", "postgres", "-d", db])
                .args(["-c", sql]),
            COMMAND_TIMEOUT,
        )
        .with_context(|| format!("{sql:?} on {}", self.name))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// [`Self::psql`] in the database `app`.
    pub fn sql(&self, sql: &str) -> anyhow::Result<String> {
        self.psql(DB, sql)
    }

    /// `pg_is_in_recovery()`: true on a standby.
    pub fn is_in_recovery(&self) -> anyhow::Result<bool> {
        parse_bool(&self.sql("SELECT pg_is_in_recovery()")?)
    }

    /// Promotes a standby and waits (at most 25 s) until it is out of
    /// recovery; returns how long that took. `pg_promote(wait => false)`,
    /// then `pg_is_in_recovery()` every few milliseconds: with `wait =>
    /// true` PostgreSQL itself checks only every 100 ms.
    pub fn promote(&self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        if !parse_bool(&self.sql("SELECT pg_promote(wait => false)")?)? {
            bail!("{} refused the promotion", self.name);
        }
        while self.is_in_recovery()? {
            if t.elapsed() > Duration::from_secs(25) {
                bail!(
                    "{} was not promoted within 25 s; its log ends:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(t.elapsed())
    }

    /// Turns waiting for a synchronous standby on (`*`) or off (`''`) with
    /// `ALTER SYSTEM` and a reload. Turning it off releases commits that
    /// are waiting.
    pub fn set_synchronous(&self, sync: bool) -> anyhow::Result<()> {
        let names = if sync { "*" } else { "" };
        self.sql(&format!(
            "ALTER SYSTEM SET synchronous_standby_names = '{names}'"
        ))?;
        self.sql("SELECT pg_reload_conf()")?;
        Ok(())
    }

    /// On a primary: waits (at most `timeout`) until the standby named
    /// `standby` streams from it and has reported a flush position, and
    /// returns its `sync_state` (`sync`, `async`, `potential`, `quorum`).
    /// Until that first report a synchronous standby shows as `async`.
    pub fn wait_streaming(&self, standby: &str, timeout: Duration) -> anyhow::Result<String> {
        if !standby
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            bail!("not a standby name: {standby:?}");
        }
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.sql(&format!(
                "SELECT sync_state FROM pg_stat_replication \
                 WHERE application_name = '{standby}' AND state = 'streaming' \
                 AND flush_lsn IS NOT NULL"
            ))?;
            if let Some(state) = out.lines().next() {
                return Ok(state.to_string());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{standby} does not stream from {} after {timeout:?}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// On a primary, the current WAL insert position; on a standby, the
    /// last replayed position.
    pub fn wal_lsn(&self) -> anyhow::Result<String> {
        self.sql(
            "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
             ELSE pg_current_wal_lsn() END",
        )
    }

    /// On a standby: waits (at most `timeout`) until it has replayed WAL up
    /// to `lsn` (from the primary's [`Self::wal_lsn`]), so every commit
    /// before it is visible here.
    pub fn wait_replayed(&self, lsn: &str, timeout: Duration) -> anyhow::Result<()> {
        if lsn.is_empty() || !lsn.chars().all(|c| c.is_ascii_hexdigit() || c == '/') {
            bail!("not an LSN: {lsn:?}");
        }
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.sql(&format!(
                "SELECT coalesce(pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn, false)"
            ))?;
            if parse_bool(&out)? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} has not replayed up to {lsn} after {timeout:?} (at {})",
                    self.name,
                    self.wal_lsn().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The ids in `app.t`.
    pub fn ids(&self) -> anyhow::Result<BTreeSet<i64>> {
        let out = self.sql("SELECT id FROM t ORDER BY id")?;
        out.lines()
            .map(|l| {
                l.trim()
                    .parse()
                    .with_context(|| format!("an id from {}: {l:?}", self.name))
            })
            .collect()
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.postmaster.is_some() {
            // Immediate shutdown: the children exit at once.
            let _ = self.shutdown(libc::SIGQUIT);
        }
        let _ = self.kill_leftovers();
    }
}

/// Settings appended to a primary's postgresql.conf (standbys get them
/// with the base backup). Per-server ones (address, port, socket, name)
/// are on the postmaster's command line instead.
fn primary_settings(sync: bool) -> String {
    let names = if sync { "*" } else { "" };
    format!(
        "
# failover-lab (pg.rs)
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = '256MB'
hot_standby = on
synchronous_standby_names = '{names}'
synchronous_commit = on
# CI speed: crash safety of the host's disk is not under test (a killed
# postmaster keeps its data: the kernel still has the pages).
fsync = off
shared_buffers = '32MB'
max_connections = 100
# A dead peer is noticed within seconds, and a standby retries its
# primary every 100 ms (default 5 s).
wal_sender_timeout = '5s'
wal_receiver_timeout = '5s'
wal_receiver_status_interval = '1s'
wal_retrieve_retry_interval = '100ms'
logging_collector = off
log_line_prefix = '%m [%p] %q%a '
log_checkpoints = off
"
    )
}

/// Trust for local connections and for the lab's whole range, replication
/// included.
const HBA: &str = "\
# failover-lab (pg.rs): the lab's addresses only.
local all         all                trust
local replication all                trust
host  all         all  198.18.0.0/15 trust
host  replication all  198.18.0.0/15 trust
";

fn parse_bool(s: &str) -> anyhow::Result<bool> {
    match s.trim() {
        "t" => Ok(true),
        "f" => Ok(false),
        other => bail!("expected t or f, got {other:?}"),
    }
}

/// Pids of the processes whose working directory is `dir`.
fn processes_in(dir: &Path) -> Vec<libc::pid_t> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: libc::pid_t = e.file_name().to_str()?.parse().ok()?;
            let cwd = fs::read_link(e.path().join("cwd")).ok()?;
            (cwd == dir).then_some(pid)
        })
        .collect()
}

/// Runs `cmd` with its output captured, killing it after `timeout`; fails
/// with its stderr unless it exits 0.
fn run_bounded(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let reader = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_reader = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let err_reader = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().context("waiting for a command")? {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    let Some(status) = status else {
        bail!("{cmd:?} did not finish within {timeout:?}: killed");
    };
    if !status.success() {
        bail!(
            "{cmd:?} failed ({status}): {}{}",
            String::from_utf8_lossy(&stdout).trim(),
            String::from_utf8_lossy(&stderr).trim()
        );
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

// ------------------------------------------------------------ the client

/// How [`InsertClient`] connects and paces.
#[derive(Debug, Clone)]
pub struct InsertOptions {
    /// Where to connect: the VIP, 198.18.100.10:5432, by default.
    pub target: SocketAddr,
    pub user: String,
    pub dbname: String,
    /// The first id (1); the next attempts use the next ones. Give a
    /// second client on the same table its own range.
    pub first_id: i64,
    /// One insert per interval (10 ms); a late one is not made up for.
    pub interval: Duration,
    /// Bounds a connection attempt, start-up included (1 s).
    pub connect_timeout: Duration,
    /// The server's `statement_timeout` and the client's own deadline for
    /// an insert (1 s). The client's deadline is what bounds a commit
    /// waiting for a synchronous standby (PostgreSQL does not apply
    /// statement_timeout there).
    pub statement_timeout: Duration,
}

impl Default for InsertOptions {
    fn default() -> Self {
        Self {
            target: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 100, 10)), PG_PORT),
            user: "postgres".into(),
            dbname: DB.into(),
            first_id: 1,
            interval: Duration::from_millis(10),
            connect_timeout: Duration::from_secs(1),
            statement_timeout: Duration::from_secs(1),
        }
    }
}

/// Why a connection could not be made (the insert was never sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectFailure {
    /// ECONNREFUSED: nothing listens (or a RST came back).
    Refused,
    /// No connection within the connect timeout.
    Timeout,
    /// Anything else: unreachable, reset, or the server refused the session
    /// (`code` is its SQLSTATE, e.g. 57P03 while starting up).
    Other {
        code: Option<String>,
        message: String,
    },
}

/// What happened to one insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed and acknowledged.
    Acked,
    /// SQLSTATE 25006 `read_only_sql_transaction`: it reached a standby.
    /// Not committed.
    ReadOnly,
    /// No connection; the insert was not sent.
    Connect(ConnectFailure),
    /// Sent, no answer within the statement timeout: in doubt.
    Timeout,
    /// Sent, the connection broke before the answer, or the server ended
    /// the session (SQLSTATE 57P01-57P05): in doubt.
    ConnectionLost(String),
    /// Any other error (`code`: its SQLSTATE when the server sent one).
    Error {
        code: Option<String>,
        message: String,
    },
}

/// One insert attempt of [`InsertClient`].
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The id it tried to insert (`first_id`, then one more per attempt).
    pub id: i64,
    /// When the attempt began (connecting first if there was no
    /// connection).
    pub start: Instant,
    /// When the insert was sent; `None` if there was no connection.
    pub sent: Option<Instant>,
    /// When the outcome was known (the acknowledgement's arrival for
    /// [`Outcome::Acked`]).
    pub done: Instant,
    pub outcome: Outcome,
    /// Notices and warnings the server sent during the attempt (e.g.
    /// "canceling wait for synchronous replication").
    pub notices: Vec<String>,
}

impl Attempt {
    pub fn acked(&self) -> bool {
        self.outcome == Outcome::Acked
    }
}

/// Attempts per outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    pub acked: usize,
    pub read_only: usize,
    pub connect_refused: usize,
    pub connect_timeout: usize,
    pub connect_other: usize,
    pub timeout: usize,
    pub connection_lost: usize,
    pub other: usize,
}

/// An application in the client's namespace: one connection to the VIP,
/// one `INSERT INTO t(id) VALUES (n)` per interval (n = 1, 2, 3, ... by
/// default),
/// reconnecting after any error, every attempt recorded. Runs on its own
/// thread until [`Self::stop`] (or drop).
pub struct InsertClient {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<InsertReport>>>,
}

impl InsertClient {
    /// Starts the client's thread in `ns` (usually the lab's client
    /// namespace).
    pub fn start(ns: &Netns, opts: InsertOptions) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (name, stop2) = (ns.name.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("pg-insert".into())
            .spawn(move || -> anyhow::Result<InsertReport> {
                let setup = (|| -> anyhow::Result<tokio::runtime::Runtime> {
                    // This thread only: sockets it opens belong to `name`.
                    failover_user::sys::netns::enter_named(&name)?;
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("building the client's runtime")
                })();
                let rt = match setup {
                    Ok(rt) => {
                        let _ = ready_tx.send(Ok(()));
                        rt
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{e:#}")));
                        return Err(e);
                    }
                };
                Ok(rt.block_on(insert_loop(opts, stop2)))
            })
            .context("spawning the insert client's thread")?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                bail!("starting the insert client: {e}")
            }
            Err(_) => bail!("the insert client's thread died at start"),
        }
    }

    /// Stops after the attempt in progress (at most a timeout later) and
    /// returns the report.
    pub fn stop(mut self) -> anyhow::Result<InsertReport> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().context("the client was stopped")?;
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("the insert client's thread panicked"))?
    }
}

impl Drop for InsertClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Connection = (tokio_postgres::Client, tokio_postgres::Statement);

async fn insert_loop(opts: InsertOptions, stop: Arc<AtomicBool>) -> InsertReport {
    let mut cfg = tokio_postgres::Config::new();
    cfg.hostaddr(opts.target.ip())
        .port(opts.target.port())
        .user(&opts.user)
        .dbname(&opts.dbname)
        .application_name("failover-lab-insert")
        .connect_timeout(opts.connect_timeout)
        .options(format!(
            "-c statement_timeout={}",
            opts.statement_timeout.as_millis()
        ));
    let notices: Arc<Mutex<Vec<String>>> = Arc::default();
    let started = Instant::now();
    let mut attempts = Vec::new();
    let mut conn: Option<Connection> = None;
    let mut driver: Option<tokio::task::JoinHandle<()>> = None;
    let mut next = Instant::now();
    let mut id = opts.first_id - 1;
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        let start = Instant::now();
        if let Ok(mut n) = notices.lock() {
            n.clear();
        }
        if conn.is_none() {
            match connect(&cfg, &opts, &notices).await {
                Ok((c, d)) => {
                    conn = Some(c);
                    if let Some(old) = driver.replace(d) {
                        old.abort();
                    }
                }
                Err(failure) => {
                    attempts.push(Attempt {
                        id,
                        start,
                        sent: None,
                        done: Instant::now(),
                        outcome: Outcome::Connect(failure),
                        notices: take(&notices),
                    });
                    pace(&mut next, opts.interval).await;
                    continue;
                }
            }
        }
        let Some((client, stmt)) = &conn else {
            continue;
        };
        let sent = Instant::now();
        let result =
            tokio::time::timeout(opts.statement_timeout, client.execute(stmt, &[&id])).await;
        let done = Instant::now();
        let outcome = match result {
            Ok(Ok(_)) => Outcome::Acked,
            Ok(Err(e)) => classify(&e),
            Err(_) => Outcome::Timeout,
        };
        if outcome != Outcome::Acked {
            // As an application would: a new connection after any error.
            conn = None;
            if let Some(d) = driver.take() {
                d.abort();
            }
        }
        attempts.push(Attempt {
            id,
            start,
            sent: Some(sent),
            done,
            outcome,
            notices: take(&notices),
        });
        pace(&mut next, opts.interval).await;
    }
    if let Some(d) = driver.take() {
        d.abort();
    }
    InsertReport {
        attempts,
        started,
        stopped: Instant::now(),
    }
}

/// Sleeps until the next tick; ticks missed while an attempt took longer
/// are skipped, not made up for.
async fn pace(next: &mut Instant, interval: Duration) {
    *next += interval;
    let now = Instant::now();
    if *next < now {
        *next = now;
    }
    tokio::time::sleep_until(tokio::time::Instant::from_std(*next)).await;
}

fn take(notices: &Mutex<Vec<String>>) -> Vec<String> {
    notices
        .lock()
        .map(|mut n| std::mem::take(&mut *n))
        .unwrap_or_default()
}

/// Connects (within the connect timeout, start-up included), starts the
/// task that drives the connection and keeps its notices, and prepares the
/// insert.
async fn connect(
    cfg: &tokio_postgres::Config,
    opts: &InsertOptions,
    notices: &Arc<Mutex<Vec<String>>>,
) -> Result<(Connection, tokio::task::JoinHandle<()>), ConnectFailure> {
    let (client, mut connection) =
        match tokio::time::timeout(opts.connect_timeout, cfg.connect(NoTls)).await {
            Err(_) => return Err(ConnectFailure::Timeout),
            Ok(Err(e)) => return Err(connect_failure(&e)),
            Ok(Ok(c)) => c,
        };
    let sink = notices.clone();
    let driver = tokio::spawn(async move {
        while let Some(msg) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match msg {
                Ok(AsyncMessage::Notice(n)) => {
                    if let Ok(mut v) = sink.lock() {
                        v.push(format!(
                            "{} {}: {}",
                            n.severity(),
                            n.code().code(),
                            n.message()
                        ));
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    let prepared = tokio::time::timeout(
        opts.connect_timeout,
        client.prepare("INSERT INTO t (id) VALUES ($1)"),
    )
    .await;
    match prepared {
        Ok(Ok(stmt)) => Ok(((client, stmt), driver)),
        Ok(Err(e)) => {
            driver.abort();
            Err(connect_failure(&e))
        }
        Err(_) => {
            driver.abort();
            Err(ConnectFailure::Timeout)
        }
    }
}

/// The I/O error under a client error, if any.
fn io_error(e: &tokio_postgres::Error) -> Option<&std::io::Error> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = s.source();
    }
    None
}

fn connect_failure(e: &tokio_postgres::Error) -> ConnectFailure {
    if let Some(db) = e.as_db_error() {
        return ConnectFailure::Other {
            code: Some(db.code().code().to_string()),
            message: db.message().to_string(),
        };
    }
    match io_error(e).map(std::io::Error::kind) {
        Some(std::io::ErrorKind::ConnectionRefused) => ConnectFailure::Refused,
        Some(std::io::ErrorKind::TimedOut) => ConnectFailure::Timeout,
        _ => ConnectFailure::Other {
            code: None,
            message: e.to_string(),
        },
    }
}

fn classify(e: &tokio_postgres::Error) -> Outcome {
    if let Some(db) = e.as_db_error() {
        if *db.code() == SqlState::READ_ONLY_SQL_TRANSACTION {
            return Outcome::ReadOnly;
        }
        // 57P01-57P05 (admin or crash shutdown, "terminating connection
        // due to unexpected postmaster exit", ...): the server ended the
        // session, a lost connection.
        if db.code().code().starts_with("57P") {
            return Outcome::ConnectionLost(format!("{}: {}", db.code().code(), db.message()));
        }
        return Outcome::Error {
            code: Some(db.code().code().to_string()),
            message: db.message().to_string(),
        };
    }
    if e.is_closed() || io_error(e).is_some() {
        return Outcome::ConnectionLost(e.to_string());
    }
    Outcome::Error {
        code: None,
        message: e.to_string(),
    }
}

/// What an [`InsertClient`] saw, attempt by attempt.
#[derive(Debug, Clone)]
pub struct InsertReport {
    pub attempts: Vec<Attempt>,
    pub started: Instant,
    pub stopped: Instant,
}

impl InsertReport {
    /// The ids whose inserts were acknowledged.
    pub fn acked_ids(&self) -> BTreeSet<i64> {
        self.attempts
            .iter()
            .filter(|a| a.acked())
            .map(|a| a.id)
            .collect()
    }

    pub fn counts(&self) -> OutcomeCounts {
        let mut c = OutcomeCounts::default();
        for a in &self.attempts {
            match &a.outcome {
                Outcome::Acked => c.acked += 1,
                Outcome::ReadOnly => c.read_only += 1,
                Outcome::Connect(ConnectFailure::Refused) => c.connect_refused += 1,
                Outcome::Connect(ConnectFailure::Timeout) => c.connect_timeout += 1,
                Outcome::Connect(ConnectFailure::Other { .. }) => c.connect_other += 1,
                Outcome::Timeout => c.timeout += 1,
                Outcome::ConnectionLost(_) => c.connection_lost += 1,
                Outcome::Error { .. } => c.other += 1,
            }
        }
        c
    }

    /// The first acknowledged attempt that began at or after `t` (an
    /// insert in flight at `t` does not count: it may have been answered
    /// by the old primary).
    pub fn first_ack_after(&self, t: Instant) -> Option<&Attempt> {
        self.attempts.iter().find(|a| a.start >= t && a.acked())
    }

    /// The recovery time after an incident at `t`: from `t` to the
    /// acknowledgement of [`Self::first_ack_after`].
    pub fn rto(&self, t: Instant) -> Option<Duration> {
        self.first_ack_after(t).map(|a| a.done.duration_since(t))
    }

    /// The last acknowledgement that arrived before `t`.
    pub fn last_ack_before(&self, t: Instant) -> Option<&Attempt> {
        self.attempts.iter().rev().find(|a| a.done < t && a.acked())
    }

    /// The longest time between two consecutive acknowledgements (from the
    /// start and to the stop, too): the outage the application saw.
    pub fn longest_ack_gap(&self) -> Duration {
        let mut last = self.started;
        let mut gap = Duration::ZERO;
        for a in self.attempts.iter().filter(|a| a.acked()) {
            gap = gap.max(a.done.saturating_duration_since(last));
            last = a.done;
        }
        gap.max(self.stopped.saturating_duration_since(last))
    }

    /// Read-only errors whose answers arrived in `[from, to)`.
    pub fn read_only_between(&self, from: Instant, to: Instant) -> Vec<&Attempt> {
        self.attempts
            .iter()
            .filter(|a| a.outcome == Outcome::ReadOnly && a.done >= from && a.done < to)
            .collect()
    }

    /// Acknowledged ids missing from `present` (the table's ids on the
    /// surviving primary): writes lost.
    pub fn lost(acked: &BTreeSet<i64>, present: &BTreeSet<i64>) -> BTreeSet<i64> {
        acked.difference(present).copied().collect()
    }

    /// Attempts that were neither acknowledged nor certainly refused
    /// (timeouts, lost connections, other errors after the insert was
    /// sent): they may or may not have committed.
    pub fn in_doubt(&self) -> BTreeSet<i64> {
        self.attempts
            .iter()
            .filter(|a| {
                matches!(
                    a.outcome,
                    Outcome::Timeout | Outcome::ConnectionLost(_) | Outcome::Error { .. }
                )
            })
            .map(|a| a.id)
            .collect()
    }

    /// One line per outcome kind, the distinct error messages with counts,
    /// and the longest gap between acknowledgements.
    pub fn summary(&self) -> String {
        let c = self.counts();
        let mut s = format!(
            "{} attempts in {:.2?}: {} acked, {} read-only, connect: {} refused, {} timed out, \
             {} other; {} timed out, {} connections lost, {} other errors; longest gap between \
             acks {:.0?}",
            self.attempts.len(),
            self.stopped.duration_since(self.started),
            c.acked,
            c.read_only,
            c.connect_refused,
            c.connect_timeout,
            c.connect_other,
            c.timeout,
            c.connection_lost,
            c.other,
            self.longest_ack_gap(),
        );
        let mut messages: std::collections::BTreeMap<String, usize> = Default::default();
        for a in &self.attempts {
            let m = match &a.outcome {
                Outcome::Connect(ConnectFailure::Other { code, message })
                | Outcome::Error { code, message } => {
                    format!("{}: {message}", code.as_deref().unwrap_or("-"))
                }
                Outcome::ConnectionLost(m) => format!("lost: {m}"),
                _ => continue,
            };
            *messages.entry(m).or_default() += 1;
        }
        for (m, n) in messages {
            s.push_str(&format!("\n  {n} x {m}"));
        }
        s
    }
}
