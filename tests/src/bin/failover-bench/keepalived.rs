//! The `keepalived` section: the cluster baseline (issue 16). Two load
//! balancer nodes run keepalived (VRRPv3, priorities 150 and 100) for one
//! VIP on a shared LAN, each with a UDP echo bound to the VIP; a client on
//! the same LAN sends a request every 2 ms. The master node is lost (its
//! keepalived killed, or its link taken down) and the section measures how
//! long the VIP takes to appear on the backup and the client's longest
//! interval without an answer, at `advert_int` 1 s and 0.01 s (the VRRPv3
//! minimum, which keepalived's own config check is asked to accept).
//!
//! ```text
//!  client (c, 198.18.10.100) --+
//!  lb1 (1, 198.18.10.2, 150) --+-- bridge (s)      VIP 198.18.10.10/32
//!  lb2 (2, 198.18.10.3, 100) --+
//! ```
//!
//! Its own namespaces, config, pid and log files (a `Workdir`); no
//! `/etc/keepalived`, no systemd. Everything it started is killed and
//! removed on drop, also when a run fails.

use std::{
    fs::OpenOptions,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::FromRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use failover_lab::{
    Workdir,
    netns::{Netns, veth},
};
use serde_json::{Value, json};

use super::{Opts, ensure_packages, median};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 10, 10);
const PORT: u16 = 7000;
const LB_ADDRS: [&str; 2] = ["198.18.10.2/24", "198.18.10.3/24"];
const CLIENT_ADDR: &str = "198.18.10.100/24";
const PRIORITIES: [u8; 2] = [150, 100];
/// `advert_int` values measured: the default and the VRRPv3 minimum.
const ADVERTS: [&str; 2] = ["1", "0.01"];
/// Below the VRRPv3 minimum: keepalived's config check must refuse it.
const TOO_FAST: &str = "0.005";
/// The client's request interval.
const EVERY: Duration = Duration::from_millis(2);
/// How long after the backup's first answer the client keeps measuring.
const AFTER: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `kill -9` of the master's keepalived (both processes), its echo
    /// silenced at the same instant: the node's software dies, its link
    /// stays up.
    Kill,
    /// `ip link set down` of the master's LAN interface.
    LinkDown,
}

impl Event {
    pub fn key(self) -> &'static str {
        match self {
            Event::Kill => "kill",
            Event::LinkDown => "link-down",
        }
    }

    pub fn what(self) -> &'static str {
        match self {
            Event::Kill => "kill -9 of the master's keepalived (and its echo)",
            Event::LinkDown => "master's link down",
        }
    }
}

/// One (advert_int, event) case over its runs.
pub struct Series {
    pub advert: &'static str,
    pub event: Event,
    /// From the event to the VIP being local on the backup.
    pub vip_ms: Vec<f64>,
    /// The client's longest interval without an answer.
    pub gap_ms: Vec<f64>,
    /// From the event to the client's first answer from the backup.
    pub backup_answer_ms: Vec<f64>,
    /// Requests sent after the event and never answered.
    pub lost: Vec<usize>,
}

pub fn run(o: &Opts, report: &mut Value) -> anyhow::Result<Vec<Series>> {
    ensure_packages(&[("keepalived", "keepalived")])?;
    let version = keepalived_version();
    // `--quick`: one run per case at 1 s (each costs ~8 s), two at 0.01 s.
    let runs = |advert: &str| match (o.quick, advert) {
        (false, _) => 3,
        (true, "1") => 1,
        (true, _) => 2,
    };
    let _reaper = Subreaper::set()?;
    let mut lab = VrrpLab::create().context("the keepalived lab")?;
    // keepalived's own config check, in the node's namespace (it needs the
    // interface): the fastest interval must pass, one below it must not.
    for a in ADVERTS {
        if !lab.config_accepted(a)? {
            bail!("keepalived -t refuses advert_int {a}");
        }
    }
    let too_fast_refused = !lab.config_accepted(TOO_FAST)?;
    let mut out = Vec::new();
    for advert in ADVERTS {
        lab.start(advert)?;
        for event in [Event::Kill, Event::LinkDown] {
            let mut s = Series {
                advert,
                event,
                vip_ms: Vec::new(),
                gap_ms: Vec::new(),
                backup_answer_ms: Vec::new(),
                lost: Vec::new(),
            };
            for i in 0..runs(advert) {
                let r = lab
                    .one(event, advert)
                    .with_context(|| format!("advert_int {advert}, {}, run {i}", event.key()))?;
                s.vip_ms.push(r.vip_ms);
                s.gap_ms.push(r.gap_ms);
                s.backup_answer_ms.push(r.backup_answer_ms);
                s.lost.push(r.lost);
            }
            out.push(s);
        }
        lab.stop_all();
    }
    report["keepalived"] = json!({
        "keepalived": version,
        "vrrp_version": 3,
        "priorities": PRIORITIES,
        "client_interval_ms": EVERY.as_secs_f64() * 1e3,
        "advert_int_accepted_s": ADVERTS.iter().map(|a| a.parse::<f64>().unwrap_or(f64::NAN)).collect::<Vec<_>>(),
        "advert_int_refused_s": if too_fast_refused { json!(TOO_FAST.parse::<f64>().unwrap_or(f64::NAN)) } else { Value::Null },
        "cases": out.iter().map(|s| json!({
            "advert_int_s": s.advert.parse::<f64>().unwrap_or(f64::NAN),
            "event": s.event.key(),
            "what": s.event.what(),
            "runs": s.gap_ms.len(),
            "vip_on_backup_ms": s.vip_ms,
            "vip_on_backup_ms_median": median(s.vip_ms.clone()),
            "client_gap_ms": s.gap_ms,
            "client_gap_ms_median": median(s.gap_ms.clone()),
            "client_gap_ms_min": min(&s.gap_ms),
            "client_gap_ms_max": max(&s.gap_ms),
            "first_backup_answer_ms": s.backup_answer_ms,
            "requests_lost": s.lost,
        })).collect::<Vec<_>>(),
    });
    Ok(out)
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// `median (min-max)`, in ms.
fn spread(v: &[f64]) -> String {
    format!("{:.0} ({:.0}-{:.0})", median(v.to_vec()), min(v), max(v))
}

pub fn print(report: &Value, series: &[Series]) {
    let k = &report["keepalived"];
    println!(
        "\n| keepalived VRRPv3 (priorities 150/100), client UDP every {} ms | advert_int s | runs | VIP on the backup after, ms median (min-max) | client gap, ms median (min-max) | requests lost (median) |",
        k["client_interval_ms"]
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for s in series {
        println!(
            "| {} | {} | {} | {} | {} | {:.0} |",
            s.event.what(),
            s.advert,
            s.gap_ms.len(),
            spread(&s.vip_ms),
            spread(&s.gap_ms),
            median(s.lost.iter().map(|&n| n as f64).collect())
        );
    }
    println!(
        "\n({}; advert_int below 0.01 s {})",
        k["keepalived"].as_str().unwrap_or("keepalived"),
        if k["advert_int_refused_s"].is_null() {
            "was NOT refused by keepalived -t"
        } else {
            "is refused by keepalived -t"
        }
    );
}

fn keepalived_version() -> String {
    std::process::Command::new("keepalived")
        .arg("--version")
        .output()
        .map(|o| {
            let all = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&all)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// One run's figures.
struct Outcome {
    vip_ms: f64,
    gap_ms: f64,
    backup_answer_ms: f64,
    lost: usize,
}

/// The lab. Field order is drop order after [`Drop::drop`]: processes and
/// threads first, then the namespaces, then the work directory.
struct VrrpLab {
    ka: [Option<Keepalived>; 2],
    echo: Vec<Echo>,
    /// lb1, lb2.
    lb: [Netns; 2],
    client: Netns,
    _switch: Netns,
    w: Workdir,
}

impl VrrpLab {
    fn create() -> anyhow::Result<Self> {
        let w = Workdir::new("fkb")?;
        let p = &w.prefix;
        let switch = Netns::new(&format!("{p}s"))?;
        let client = Netns::new(&format!("{p}c"))?;
        let lb = [Netns::new(&format!("{p}1"))?, Netns::new(&format!("{p}2"))?];
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        for (ns, port, addr) in [
            (&lb[0], "p1", LB_ADDRS[0]),
            (&lb[1], "p2", LB_ADDRS[1]),
            (&client, "pc", CLIENT_ADDR),
        ] {
            veth(ns, "lan0", &switch, port)?;
            switch.ip(&["link", "set", port, "master", "br0"])?;
            ns.ip(&["addr", "add", addr, "dev", "lan0"])?;
        }
        let mut lab = Self {
            ka: [None, None],
            echo: Vec::new(),
            lb,
            client,
            _switch: switch,
            w,
        };
        for n in 0..2 {
            let e = Echo::start(&lab.lb[n], n as u8 + 1)?;
            lab.echo.push(e);
        }
        Ok(lab)
    }

    fn conf_path(&self, n: usize) -> PathBuf {
        self.w.dir.join(format!("keepalived-lb{}.conf", n + 1))
    }

    fn write_conf(&self, n: usize, advert: &str) -> anyhow::Result<PathBuf> {
        let conf = format!(
            "# failover-bench keepalived baseline, lb{node}\n\
             global_defs {{\n    router_id {prefix}lb{node}\n    vrrp_version 3\n}}\n\
             vrrp_instance VI_BENCH {{\n    state BACKUP\n    interface lan0\n    \
             virtual_router_id 51\n    priority {prio}\n    advert_int {advert}\n    \
             virtual_ipaddress {{\n        {VIP}/32 dev lan0\n    }}\n}}\n",
            node = n + 1,
            prefix = self.w.prefix,
            prio = PRIORITIES[n],
        );
        let path = self.conf_path(n);
        std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// `keepalived -t` on lb1's config with `advert`.
    fn config_accepted(&self, advert: &str) -> anyhow::Result<bool> {
        let conf = self.write_conf(0, advert)?;
        let out = self.lb[0]
            .cmd("keepalived")
            .args(["-t", "-l", "-f"])
            .arg(&conf)
            .stdin(Stdio::null())
            .output()
            .context("running keepalived -t")?;
        Ok(out.status.success())
    }

    /// Both nodes' keepalived with `advert`; returns once lb1 holds the VIP
    /// and lb2 does not.
    fn start(&mut self, advert: &str) -> anyhow::Result<()> {
        self.stop_all();
        for n in 0..2 {
            self.write_conf(n, advert)?;
            self.ka[n] = Some(Keepalived::start(
                &self.lb[n],
                &self.w.dir,
                n,
                &self.conf_path(n),
            )?);
        }
        self.wait_lb1_master(advert)
    }

    fn stop_all(&mut self) {
        for k in self.ka.iter_mut() {
            if let Some(mut k) = k.take() {
                k.kill();
            }
        }
        for ns in &self.lb {
            let _ = ns.ip(&["addr", "del", &format!("{VIP}/32"), "dev", "lan0"]);
        }
    }

    fn has_vip(&self, n: usize) -> anyhow::Result<bool> {
        self.lb[n].run(|| Ok(vip_is_local()))
    }

    fn wait_lb1_master(&self, advert: &str) -> anyhow::Result<()> {
        let a: f64 = advert.parse().context("advert_int")?;
        let deadline = Instant::now() + Duration::from_secs_f64(10.0 + 5.0 * a);
        loop {
            if self.has_vip(0)? && !self.has_vip(1)? {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "lb1 did not become the only VRRP master (logs: {})",
                    self.w.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // A few adverts so both nodes have settled.
        std::thread::sleep(Duration::from_secs_f64((2.0 * a).max(0.3)));
        Ok(())
    }

    /// One run: steady answers from lb1, the event, the VIP on lb2 and
    /// the client's answers from lb2; then lb1 is put back as the master.
    fn one(&mut self, event: Event, advert: &str) -> anyhow::Result<Outcome> {
        let a: f64 = advert.parse().context("advert_int")?;
        let client = Client::start(&self.client)?;
        let steady_by = Instant::now() + Duration::from_secs(5);
        loop {
            std::thread::sleep(Duration::from_millis(100));
            if client.steady_from(1, Duration::from_millis(200)) {
                break;
            }
            if Instant::now() > steady_by {
                bail!("the client had no steady answers from lb1 before the event");
            }
        }
        let deadline = Duration::from_secs_f64(3.0 + 5.0 * a);
        let t0 = Instant::now();
        let (vip_at, event_result) = std::thread::scope(|s| {
            let lb2 = &self.lb[1];
            let poll = s.spawn(move || {
                lb2.run(|| {
                    while t0.elapsed() < deadline {
                        if vip_is_local() {
                            return Ok(Some(Instant::now()));
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Ok(None)
                })
            });
            let r = match event {
                Event::Kill => {
                    self.echo[0].dead.store(true, Ordering::SeqCst);
                    if let Some(k) = self.ka[0].as_mut() {
                        k.kill();
                    }
                    Ok(())
                }
                // In-process (an ioctl, not `ip`): the event happens at t0,
                // not a process start later.
                Event::LinkDown => {
                    self.lb[0].run(|| failover_lab::netns::set_link_up("lan0", false))
                }
            };
            let vip = poll
                .join()
                .map_err(|_| anyhow::anyhow!("the VIP poller panicked"))
                .and_then(|r| r);
            (vip, r)
        });
        event_result.context("the event")?;
        // The client until it has had answers from lb2 for a while.
        while t0.elapsed() < deadline {
            if client
                .first_from(2, t0)
                .is_some_and(|t| t.elapsed() >= AFTER)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = client.stop();
        let vip_at = vip_at?.with_context(|| {
            format!(
                "the VIP was not on lb2 {deadline:?} after the event (logs: {})",
                self.w.dir.display()
            )
        })?;
        let r = log.outcome(t0, vip_at)?;
        self.restore(event, advert)?;
        Ok(r)
    }

    fn restore(&mut self, event: Event, advert: &str) -> anyhow::Result<()> {
        match event {
            Event::Kill => {
                // The killed master left the VIP on its interface.
                let _ = self.lb[0].ip(&["addr", "del", &format!("{VIP}/32"), "dev", "lan0"]);
                self.echo[0].dead.store(false, Ordering::SeqCst);
                self.ka[0] = Some(Keepalived::start(
                    &self.lb[0],
                    &self.w.dir,
                    0,
                    &self.conf_path(0),
                )?);
            }
            Event::LinkDown => {
                self.lb[0].ip(&["link", "set", "lan0", "up"])?;
            }
        }
        self.wait_lb1_master(advert)
    }
}

impl Drop for VrrpLab {
    fn drop(&mut self) {
        self.stop_all();
        for e in &mut self.echo {
            e.stop();
        }
        // Anything still running in the namespaces was started here.
        for ns in self.lb.iter().chain([&self.client]) {
            if let Ok(out) = failover_lab::netns::ip(&["netns", "pids", &ns.name]) {
                for pid in String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    // SAFETY: kill(2) on a pid inside our own namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

/// Whether the VIP is a local address in the calling thread's namespace
/// (binding to it succeeds only then).
fn vip_is_local() -> bool {
    UdpSocket::bind(SocketAddrV4::new(VIP, 0)).is_ok()
}

/// One node's keepalived (`-n`: the child is keepalived's main process;
/// `-P`: VRRP only, in a second process named by its pid file).
struct Keepalived {
    child: Child,
    vrrp_pid_file: PathBuf,
}

impl Keepalived {
    fn start(ns: &Netns, dir: &Path, n: usize, conf: &Path) -> anyhow::Result<Self> {
        let pid_file = dir.join(format!("keepalived-lb{}.pid", n + 1));
        let vrrp_pid_file = dir.join(format!("vrrp-lb{}.pid", n + 1));
        // A killed keepalived's pid files would keep the next one from
        // starting ("daemon is already running") if their pid is reused or
        // still a zombie.
        let _ = std::fs::remove_file(&pid_file);
        let _ = std::fs::remove_file(&vrrp_pid_file);
        let log_path = dir.join(format!("keepalived-lb{}.log", n + 1));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut child = ns
            .cmd("keepalived")
            .args(["-n", "-l", "-D", "-P", "-f"])
            .arg(conf)
            .arg("-p")
            .arg(&pid_file)
            .arg("-r")
            .arg(&vrrp_pid_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting keepalived")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let k = loop {
            if let Some(st) = child.try_wait()? {
                bail!(
                    "keepalived on lb{} exited ({st}): {}",
                    n + 1,
                    tail(&log_path)
                );
            }
            if read_pid(&vrrp_pid_file).is_some() {
                break Self {
                    child,
                    vrrp_pid_file,
                };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "keepalived on lb{} wrote no VRRP pid file in 5 s: {}",
                    n + 1,
                    tail(&log_path)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Ok(k)
    }

    /// `kill -9` of the VRRP process, then of the main one; both reaped
    /// (the VRRP process through [`Subreaper`]), so no zombie is left
    /// behind.
    fn kill(&mut self) {
        let vrrp = read_pid(&self.vrrp_pid_file);
        if let Some(pid) = vrrp {
            // SAFETY: kill(2) on the VRRP child of the keepalived we started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(pid) = vrrp {
            // Orphaned by the main process, it is ours now; bounded in case
            // it is not (then its new parent reaps it).
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline {
                let mut status = 0;
                // SAFETY: waitpid(2) on one pid, WNOHANG, with a live int.
                let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                if r != 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Makes this process the child subreaper while the section runs, so the
/// VRRP process of a keepalived killed with `kill -9` is reparented to us
/// and reaped here, not left a zombie under an init that does not reap (a
/// container's); restores the previous setting on drop.
struct Subreaper {
    was: libc::c_int,
}

impl Subreaper {
    fn set() -> anyhow::Result<Self> {
        let mut was: libc::c_int = 0;
        // SAFETY: PR_GET_CHILD_SUBREAPER writes one int to the pointer.
        unsafe { libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut was as *mut libc::c_int) };
        // SAFETY: PR_SET_CHILD_SUBREAPER takes a plain flag.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) } != 0 {
            bail!(
                "PR_SET_CHILD_SUBREAPER: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Self { was })
    }
}

impl Drop for Subreaper {
    fn drop(&mut self) {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes a plain flag.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, self.was as libc::c_ulong) };
    }
}

fn read_pid(p: &Path) -> Option<i32> {
    std::fs::read_to_string(p)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&n| n > 0)
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(8)..].join(" | ")
}

/// A UDP echo bound to the VIP:PORT on one node (IP_FREEBIND: before the
/// VIP is there). Answers `[node, request...]` unless `dead`.
struct Echo {
    stop: Arc<AtomicBool>,
    dead: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start(ns: &Netns, node: u8) -> anyhow::Result<Self> {
        let sock = ns.run(|| freebind_udp(SocketAddrV4::new(VIP, PORT)))?;
        sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let dead = Arc::new(AtomicBool::new(false));
        let (st, de) = (stop.clone(), dead.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf[1..]) {
                    if de.load(Ordering::SeqCst) {
                        continue;
                    }
                    buf[0] = node;
                    let _ = sock.send_to(&buf[..n + 1], from);
                }
            }
        });
        Ok(Self {
            stop,
            dead,
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop();
    }
}

fn freebind_udp(addr: SocketAddrV4) -> anyhow::Result<UdpSocket> {
    // SAFETY: a new socket; its fd is owned by the UdpSocket below or
    // closed on error.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is ours and valid; from here on the UdpSocket closes it.
    let sock = unsafe { UdpSocket::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on our socket with a pointer to a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_FREEBIND,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("IP_FREEBIND: {}", std::io::Error::last_os_error());
    }
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: bind with a valid sockaddr_in of the size given.
    let rc = unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("binding {addr}: {}", std::io::Error::last_os_error());
    }
    Ok(sock)
}

/// What the client saw: per answer (arrival, node, sequence number); per
/// request its send time (indexed by sequence number).
#[derive(Default)]
struct Log {
    answers: Vec<(Instant, u8, u64)>,
    sent: Vec<Instant>,
}

impl Log {
    fn outcome(&self, t0: Instant, vip_at: Instant) -> anyhow::Result<Outcome> {
        let first_backup = self
            .answers
            .iter()
            .find(|(t, node, _)| *node == 2 && *t >= t0)
            .map(|(t, ..)| *t)
            .context("the client got no answer from lb2 after the event")?;
        // The longest interval between consecutive answers from just
        // before the event (answers come every 2 ms while all is well).
        let times: Vec<Instant> = self
            .answers
            .iter()
            .map(|(t, ..)| *t)
            .filter(|t| *t + Duration::from_millis(200) >= t0)
            .collect();
        let gap = times
            .windows(2)
            .map(|w| w[1].duration_since(w[0]))
            .max()
            .context("no answers around the event")?;
        let end = self
            .answers
            .last()
            .map(|(t, ..)| *t)
            .unwrap_or(t0)
            .checked_sub(Duration::from_millis(50))
            .unwrap_or(t0);
        let answered: std::collections::HashSet<u64> =
            self.answers.iter().map(|(_, _, s)| *s).collect();
        let lost = self
            .sent
            .iter()
            .enumerate()
            .filter(|(seq, t)| **t >= t0 && **t <= end && !answered.contains(&(*seq as u64)))
            .count();
        Ok(Outcome {
            vip_ms: ms(vip_at.duration_since(t0)),
            gap_ms: ms(gap),
            backup_answer_ms: ms(first_backup.duration_since(t0)),
            lost,
        })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The client: a request (an 8-byte sequence number) to VIP:PORT every
/// [`EVERY`], answers recorded by a second thread.
struct Client {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Log>>,
    threads: Vec<JoinHandle<()>>,
}

impl Client {
    fn start(ns: &Netns) -> anyhow::Result<Self> {
        let sock = ns.run(|| {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(SocketAddrV4::new(VIP, PORT))?;
            Ok(s)
        })?;
        sock.set_read_timeout(Some(Duration::from_millis(10)))?;
        let rx = sock.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Log::default()));
        let (st, lg) = (stop.clone(), log.clone());
        let sender = std::thread::spawn(move || {
            let mut next = Instant::now();
            let mut seq: u64 = 0;
            while !st.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep(next - now);
                }
                let at = Instant::now();
                let _ = sock.send(&seq.to_le_bytes());
                if let Ok(mut l) = lg.lock() {
                    l.sent.push(at);
                }
                seq += 1;
                next += EVERY;
                // Behind by far (the machine stalled): do not burst.
                if at > next + Duration::from_millis(50) {
                    next = at + EVERY;
                }
            }
        });
        let (st, lg) = (stop.clone(), log.clone());
        let receiver = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !st.load(Ordering::Relaxed) {
                if let Ok(n) = rx.recv(&mut buf)
                    && n == 9
                {
                    let at = Instant::now();
                    let mut s = [0u8; 8];
                    s.copy_from_slice(&buf[1..9]);
                    if let Ok(mut l) = lg.lock() {
                        l.answers.push((at, buf[0], u64::from_le_bytes(s)));
                    }
                }
            }
        });
        Ok(Self {
            stop,
            log,
            threads: vec![sender, receiver],
        })
    }

    /// At least a third of the expected answers over the last `window`,
    /// all from `node`.
    fn steady_from(&self, node: u8, window: Duration) -> bool {
        let Ok(l) = self.log.lock() else { return false };
        let recent: Vec<u8> = l
            .answers
            .iter()
            .rev()
            .take_while(|(t, ..)| t.elapsed() <= window)
            .map(|(_, n, _)| *n)
            .collect();
        recent.len() as u128 >= window.as_millis() / EVERY.as_millis() / 3
            && recent.iter().all(|n| *n == node)
    }

    fn first_from(&self, node: u8, since: Instant) -> Option<Instant> {
        let l = self.log.lock().ok()?;
        l.answers
            .iter()
            .find(|(t, n, _)| *n == node && *t >= since)
            .map(|(t, ..)| *t)
    }

    fn stop(mut self) -> Log {
        self.halt();
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.halt();
    }
}
