//! The lab: a client, a load balancer and two backends, each in its own
//! network namespace, joined by veth pairs, with addresses from
//! 198.18.0.0/15 and 2001:db8::/32 and no default routes. Used by
//! `failover-lab demo` (the README's run command), by the namespace tests,
//! the bench and the chaos run; not part of the product (`failover`).
//! Everything is removed when the [`Topology`] drops.
//!
//! ```text
//!  client (c) --cl/lc-- lb (l) --lb1/b1-- backend 1 (198.18.1.2, 2001:db8:1::2)
//!  198.18.0.2           |    \--lb2/b2-- backend 2 (198.18.2.2, 2001:db8:2::2)
//!  2001:db8::2          VIPs 198.18.100.10, 2001:db8:100::10 (routed via the lb)
//! ```

pub mod client;
pub mod cluster;
pub mod cluster_demo;
pub mod demo;
pub mod flood;
pub mod netns;
pub mod pg;
pub mod pgfail;
pub mod raw;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};

use self::netns::{Netns, ip};
use failover_user::dataplane::{self, objects};

pub const VIP4: &str = "198.18.100.10";
pub const VIP6: &str = "2001:db8:100::10";
/// Backend addresses (v4, v6) of backend 1 and 2.
pub const BACKENDS: [(&str, &str); 2] = [
    ("198.18.1.2", "2001:db8:1::2"),
    ("198.18.2.2", "2001:db8:2::2"),
];
pub const BACKEND_TCP_PORT: u16 = 8080;
pub const BACKEND_UDP_PORT: u16 = 5353;
/// The load balancer's interfaces in its namespace.
pub const LB_IFACES: [&str; 3] = ["lc", "lb1", "lb2"];

/// An XDP program that passes everything, attached to a veth peer so that
/// frames the load balancer sends with XDP_TX/XDP_REDIRECT are accepted
/// (a veth only takes XDP frames when its peer runs XDP). Detached on drop.
pub struct PassXdp {
    _ebpf: Ebpf,
}

/// Attaches the pass program to `iface` in `ns`.
pub fn attach_pass(ns: &Netns, iface: &str) -> anyhow::Result<PassXdp> {
    objects::check(objects::PASS, "failover-pass")?;
    ns.run(|| {
        let mut ebpf = Ebpf::load(objects::PASS).context("loading the pass program")?;
        let prog: &mut Xdp = ebpf
            .program_mut(objects::PASS_PROGRAM)
            .context("pass program missing")?
            .try_into()
            .context("pass program is not XDP")?;
        prog.load()
            .context("loading the pass program into the kernel")?;
        prog.attach(iface, XdpMode::Driver)
            .with_context(|| format!("attaching the pass program to {iface}"))?;
        Ok(PassXdp { _ebpf: ebpf })
    })
}

/// The lab's namespaces and links.
pub struct Topology {
    pub client: Netns,
    pub lb: Netns,
    pub backends: Vec<Netns>,
    // Dropped before the namespaces (fields drop in order). The client's
    // first, then the backends'.
    pass: Vec<PassXdp>,
}

impl Topology {
    /// Creates the lab with namespace names `<prefix>c`, `<prefix>l`,
    /// `<prefix>1`, `<prefix>2` (the prefix must be unique on the host).
    pub fn create(prefix: &str) -> anyhow::Result<Self> {
        let client = Netns::new(&format!("{prefix}c"))?;
        let lb = Netns::new(&format!("{prefix}l"))?;
        let b1 = Netns::new(&format!("{prefix}1"))?;
        let b2 = Netns::new(&format!("{prefix}2"))?;
        // No duplicate address detection: link-local addresses would stay
        // tentative for a second or two, and neighbour discovery with them.
        for ns in [&client, &lb, &b1, &b2] {
            ns.sysctl("net/ipv6/conf/all/accept_dad", "0")?;
            ns.sysctl("net/ipv6/conf/default/accept_dad", "0")?;
        }
        // The client opens a connection every millisecond for as long as a
        // run lasts, and closes first: without reusing TIME_WAIT ports it
        // runs out of source ports after about 14 s (connect() uses the
        // even half of the range first), and requests fail for that alone.
        // The same in the load balancer's namespace, where a proxy (HAProxy
        // in the bench) opens its own connections to the backends.
        for ns in [&client, &lb] {
            ns.sysctl("net/ipv4/tcp_tw_reuse", "1")?;
            ns.sysctl("net/ipv4/ip_local_port_range", "1024 65535")?;
        }
        netns::veth(&client, "cl", &lb, "lc")?;
        netns::veth(&lb, "lb1", &b1, "b1")?;
        netns::veth(&lb, "lb2", &b2, "b2")?;
        let addr = |ns: &Netns, a: &str, dev: &str| -> anyhow::Result<()> {
            if a.contains(':') {
                ns.ip(&["-6", "addr", "add", a, "dev", dev, "nodad"])?;
            } else {
                ns.ip(&["addr", "add", a, "dev", dev])?;
            }
            Ok(())
        };
        addr(&client, "198.18.0.2/24", "cl")?;
        addr(&client, "2001:db8::2/64", "cl")?;
        addr(&lb, "198.18.0.1/24", "lc")?;
        addr(&lb, "2001:db8::1/64", "lc")?;
        for (i, (b, dev, lbdev)) in [(&b1, "b1", "lb1"), (&b2, "b2", "lb2")]
            .into_iter()
            .enumerate()
        {
            let n = i + 1;
            addr(&lb, &format!("198.18.{n}.1/24"), lbdev)?;
            addr(&lb, &format!("2001:db8:{n}::1/64"), lbdev)?;
            addr(b, &format!("198.18.{n}.2/24"), dev)?;
            addr(b, &format!("2001:db8:{n}::2/64"), dev)?;
            // Replies to clients go back through the load balancer (NAT);
            // specific routes only, no default route.
            b.ip(&[
                "route",
                "add",
                "198.18.0.0/24",
                "via",
                &format!("198.18.{n}.1"),
            ])?;
            b.ip(&[
                "-6",
                "route",
                "add",
                "2001:db8::/64",
                "via",
                &format!("2001:db8:{n}::1"),
            ])?;
        }
        client.ip(&["route", "add", "198.18.100.0/24", "via", "198.18.0.1"])?;
        client.ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:100::/64",
            "via",
            "2001:db8::1",
        ])?;
        lb.forwarding()?;
        for (ns, dev) in [(&client, "cl"), (&b1, "b1"), (&b2, "b2")] {
            ns.run(|| netns::disable_tx_checksum(dev))?;
        }
        let pass = vec![
            attach_pass(&client, "cl")?,
            attach_pass(&b1, "b1")?,
            attach_pass(&b2, "b2")?,
        ];
        Ok(Self {
            client,
            lb,
            backends: vec![b1, b2],
            pass,
        })
    }

    /// Backend `i`'s (0: b1, 1: b2) servers on the lab's ports: TCP
    /// `BACKEND_TCP_PORT` and the next one, UDP `BACKEND_UDP_PORT`.
    pub fn start_server(&self, i: usize) -> anyhow::Result<Server> {
        let ns = self.backends.get(i).context("no such backend")?;
        Server::start(
            ns,
            &format!("b{}", i + 1),
            &[BACKEND_TCP_PORT, BACKEND_TCP_PORT + 1],
            BACKEND_UDP_PORT,
        )
    }

    /// Takes backend `i`'s link (0: b1, 1: b2) down or up again. Linux drops
    /// the routes through a link that goes down (and its IPv6 addresses), so
    /// coming up restores the backend's address and routes back to the
    /// clients too.
    pub fn backend_link(&self, i: usize, up: bool) -> anyhow::Result<()> {
        let ns = self.backends.get(i).context("no such backend")?;
        let (n, dev) = (i + 1, format!("b{}", i + 1));
        ns.ip(&["link", "set", &dev, if up { "up" } else { "down" }])?;
        if up {
            ns.ip(&[
                "route",
                "replace",
                "198.18.0.0/24",
                "via",
                &format!("198.18.{n}.1"),
            ])?;
            ns.ip(&[
                "-6",
                "addr",
                "replace",
                &format!("2001:db8:{n}::2/64"),
                "dev",
                &dev,
                "nodad",
            ])?;
            ns.ip(&[
                "-6",
                "route",
                "replace",
                "2001:db8::/64",
                "via",
                &format!("2001:db8:{n}::1"),
            ])?;
        }
        Ok(())
    }

    /// Detaches the pass programs from the backends' interfaces (the bench
    /// attaches its own counting sink there instead).
    pub fn detach_backend_pass(&mut self) {
        self.pass.truncate(1);
    }

    /// The daemon config for this lab: `web` (TCP 80, backend 1 primary,
    /// backend 2 standby), `dns` (UDP 53, same), `web6` (TCP 80 over IPv6),
    /// and `api` (TCP 81, backend 2 primary, backend 1 standby), with no
    /// health checks.
    pub fn config(&self, bpffs: &Path, state_dir: &Path) -> String {
        self.config_with(bpffs, state_dir, &LabExtras::default())
    }

    /// The same with health checks, policies, hooks or events added.
    pub fn config_with(&self, bpffs: &Path, state_dir: &Path, x: &LabExtras) -> String {
        let (b1, b1v6) = BACKENDS[0];
        let (b2, b2v6) = BACKENDS[1];
        let check = |default: &str| -> String {
            match &x.check {
                Some(c) => format!("\n[service.check]\n{c}\n"),
                None => default.to_string(),
            }
        };
        let none = "\n[service.check]\ntype = \"none\"\n";
        let keys = &x.service_keys;
        let tail = &x.service_tables;
        let checked = if x.check.is_some() {
            x.checked_tables.as_str()
        } else {
            ""
        };
        let events = match &x.events_file {
            Some(p) => format!("events_file = \"{}\"\n", p.display()),
            None => String::new(),
        };
        format!(
            r#"# The lab's config, written by `failover-lab`.
[daemon]
interfaces = ["lc", "lb1", "lb2"]
bpffs = "{bpffs}"
state_dir = "{state}"
{events}
{top}

[[service]]
name = "web"
vip = "{VIP4}"
port = 80
{keys}
[[service.backend]]
name = "b1"
address = "{b1}"
port = {tcp}
[[service.backend]]
name = "b2"
address = "{b2}"
port = {tcp}
tier = 1
{web_check}{checked}{tail}

[[service]]
name = "dns"
vip = "{VIP4}"
port = 53
protocol = "udp"
{keys}
[[service.backend]]
name = "b1"
address = "{b1}"
port = {udp}
[[service.backend]]
name = "b2"
address = "{b2}"
port = {udp}
tier = 1
{none}{tail}

[[service]]
name = "web6"
vip = "{VIP6}"
port = 80
{keys}
[[service.backend]]
name = "b1"
address = "{b1v6}"
port = {tcp}
[[service.backend]]
name = "b2"
address = "{b2v6}"
port = {tcp}
tier = 1
{web_check}{checked}{tail}

[[service]]
name = "api"
vip = "{VIP4}"
port = 81
{keys}
[[service.backend]]
name = "b2"
address = "{b2}"
port = {api}
[[service.backend]]
name = "b1"
address = "{b1}"
port = {api}
tier = 1
{api_check}{checked}{tail}
"#,
            bpffs = bpffs.display(),
            state = state_dir.display(),
            tcp = BACKEND_TCP_PORT,
            udp = BACKEND_UDP_PORT,
            api = BACKEND_TCP_PORT + 1,
            web_check = check(none),
            api_check = check(none),
            top = x.top,
        )
    }
}

/// Additions to the lab's config (see [`Topology::config_with`]).
#[derive(Debug, Clone, Default)]
pub struct LabExtras {
    /// The body of a `[service.check]` table for the TCP services (`dns`
    /// stays unchecked); `None`: no checks.
    pub check: Option<String>,
    /// Keys added to every service (e.g. `failback = "hold-down"`).
    pub service_keys: String,
    /// Tables added to every service (e.g. `[[service.hook]]` ...).
    pub service_tables: String,
    /// Tables added to the TCP services that `check` applies to (web,
    /// web6, api), e.g. `[service.passive]`.
    pub checked_tables: String,
    pub events_file: Option<std::path::PathBuf>,
    /// Top-level tables added to the config (e.g. `[admin]`).
    pub top: String,
}

/// An HTTP/1.1 health endpoint answering every request with the status in
/// `status` (body "ok" for 2xx, "unavailable" otherwise), until dropped.
pub struct HttpHealth {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpHealth {
    pub fn start(
        ns: &Netns,
        port: u16,
        status: Arc<std::sync::atomic::AtomicU16>,
    ) -> anyhow::Result<Self> {
        let l = ns.run(|| {
            let l =
                TcpListener::bind(("::", port)).with_context(|| format!("binding TCP {port}"))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = [0u8; 2048];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") && got.len() < 8192 {
                    match std::io::Read::read(&mut s, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let code = status.load(Ordering::Relaxed);
                let body = if (200..300).contains(&code) {
                    "ok"
                } else {
                    "unavailable"
                };
                let _ = s.write_all(
                    format!("HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                        .as_bytes(),
                );
            }
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for HttpHealth {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// When a [`Server`] accepted each of its TCP connections (shared, so that
/// a log can outlive a server and be handed to the next one).
/// When each TCP connection was accepted, and from which address.
pub type AcceptLog = Arc<std::sync::Mutex<Vec<(Instant, std::net::IpAddr)>>>;

/// A backend's TCP and UDP servers: every TCP line and every UDP datagram
/// is answered with `<name> <what was sent>`. Stops (and closes its
/// sockets) on [`Server::stop`] or drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Clones of the listening sockets, shut down at once on stop (as when
    /// a process dies), before the threads notice the flag.
    listeners: Vec<TcpListener>,
    accepts: AcceptLog,
}

impl Server {
    /// Listens on `[::]` (dual stack) TCP `tcp_ports` and UDP `udp_port` in
    /// `ns`.
    pub fn start(ns: &Netns, name: &str, tcp_ports: &[u16], udp_port: u16) -> anyhow::Result<Self> {
        Self::start_logged(ns, name, tcp_ports, udp_port, AcceptLog::default())
    }

    /// The same, recording every accepted TCP connection in `accepts`.
    pub fn start_logged(
        ns: &Netns,
        name: &str,
        tcp_ports: &[u16],
        udp_port: u16,
        accepts: AcceptLog,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (listeners, udp) = ns.run(|| {
            let mut ls = Vec::new();
            for p in tcp_ports {
                let l =
                    TcpListener::bind(("::", *p)).with_context(|| format!("binding TCP {p}"))?;
                l.set_nonblocking(true)?;
                ls.push(l);
            }
            let u = UdpSocket::bind(("::", udp_port))
                .with_context(|| format!("binding UDP {udp_port}"))?;
            u.set_read_timeout(Some(Duration::from_millis(20)))?;
            Ok((ls, u))
        })?;
        let mut clones = Vec::new();
        for l in listeners {
            clones.push(l.try_clone().context("cloning a listener")?);
            let (stop, name, log) = (stop.clone(), name.to_string(), accepts.clone());
            threads.push(std::thread::spawn(move || tcp_loop(&l, &name, &stop, &log)));
        }
        let (stop2, name2) = (stop.clone(), name.to_string());
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let reply = format!("{name2} {}", String::from_utf8_lossy(&buf[..n]));
                    let _ = udp.send_to(reply.as_bytes(), from);
                }
            }
        }));
        Ok(Self {
            stop,
            threads,
            listeners: clones,
            accepts,
        })
    }

    /// When each TCP connection was accepted.
    pub fn accept_log(&self) -> AcceptLog {
        self.accepts.clone()
    }

    /// Stops the servers: listeners and open connections close (the
    /// backend's process "dies").
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Stop listening now: new connections are refused from here on.
        for l in self.listeners.drain(..) {
            use std::os::fd::AsRawFd as _;
            // SAFETY: shutdown(2) on a socket we own; no memory involved.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn tcp_loop(l: &TcpListener, name: &str, stop: &Arc<AtomicBool>, log: &AcceptLog) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((s, peer)) => {
                if let Ok(mut v) = log.lock() {
                    v.push((Instant::now(), peer.ip().to_canonical()));
                }
                let (stop, name) = (stop.clone(), name.to_string());
                conns.push(std::thread::spawn(move || serve_conn(s, &name, &stop)));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
        conns.retain(|c| !c.is_finished());
    }
    for c in conns {
        let _ = c.join();
    }
}

fn serve_conn(s: TcpStream, name: &str, stop: &Arc<AtomicBool>) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
    let Ok(mut w) = s.try_clone() else { return };
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match r.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if w.write_all(format!("{name} {}", line).as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// A client TCP connection made from inside `ns`: one line out, one back.
pub struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    pub fn open(ns: &Netns, to: SocketAddr, timeout: Duration) -> anyhow::Result<Self> {
        let s = ns.run(|| {
            TcpStream::connect_timeout(&to, timeout).with_context(|| format!("connecting to {to}"))
        })?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        let w = s.try_clone()?;
        Ok(Self {
            r: BufReader::new(s),
            w,
        })
    }

    /// Sends `msg` and returns the name of the backend that answered.
    pub fn ask(&mut self, msg: &str) -> anyhow::Result<String> {
        self.w
            .write_all(format!("{msg}\n").as_bytes())
            .context("sending")?;
        let mut line = String::new();
        let n = self.r.read_line(&mut line).context("reading the answer")?;
        if n == 0 {
            bail!("connection closed");
        }
        parse_answer(&line, msg)
    }
}

fn parse_answer(line: &str, msg: &str) -> anyhow::Result<String> {
    let line = line.trim_end();
    match line.split_once(' ') {
        Some((name, echoed)) if echoed == msg => Ok(name.to_string()),
        _ => bail!("unexpected answer {line:?} to {msg:?}"),
    }
}

/// One TCP request on a new connection made from the calling thread's
/// network namespace: the backend that answered.
pub fn tcp_request_here(to: SocketAddr, msg: &str, timeout: Duration) -> anyhow::Result<String> {
    let s =
        TcpStream::connect_timeout(&to, timeout).with_context(|| format!("connecting to {to}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let w = s.try_clone()?;
    Conn {
        r: BufReader::new(s),
        w,
    }
    .ask(msg)
}

/// One TCP request on a new connection: the backend that answered.
pub fn tcp_request(
    ns: &Netns,
    to: SocketAddr,
    msg: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    Conn::open(ns, to, timeout)?.ask(msg)
}

/// One UDP request from inside `ns`: the backend that answered.
pub fn udp_request(
    ns: &Netns,
    to: SocketAddr,
    msg: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let s = ns.run(|| UdpSocket::bind(bind).context("binding a UDP client socket"))?;
    s.set_read_timeout(Some(timeout))?;
    s.send_to(msg.as_bytes(), to).context("sending")?;
    let mut buf = [0u8; 1500];
    let (n, from) = s
        .recv_from(&mut buf)
        .context("waiting for the UDP answer")?;
    if from != to {
        bail!("UDP answer from {from}, not from {to}: the reply was not translated back");
    }
    parse_answer(&String::from_utf8_lossy(&buf[..n]), msg)
}

/// The VIP socket address of a lab service port.
pub fn vip(v6: bool, port: u16) -> SocketAddr {
    let ip: IpAddr = if v6 {
        IpAddr::from([0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10])
    } else {
        IpAddr::from([198, 18, 100, 10])
    };
    SocketAddr::new(ip, port)
}

/// Fails unless the lab can run here.
pub fn check_prerequisites() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab needs root (network namespaces, XDP): run it with sudo or as root");
    }
    ip(&["-V"]).context("iproute2's `ip` is needed for the lab")?;
    Ok(())
}

/// Runs `exe set-state SERVICE BACKEND STATE --config CONFIG` (the
/// operator's one map write); fails with its stderr.
pub fn set_state(
    exe: &Path,
    config: &Path,
    service: &str,
    backend: &str,
    state: &str,
) -> anyhow::Result<()> {
    let out = Command::new(exe)
        .args(["set-state", service, backend, state, "--config"])
        .arg(config)
        .output()
        .context("running failover set-state")?;
    if !out.status.success() {
        bail!("set-state failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A `failover daemon` child process, stopped (SIGTERM, then SIGKILL after
/// 5 s) on drop.
pub struct DaemonProcess(pub Child);

impl DaemonProcess {
    /// Starts `exe --netns NETNS daemon --detach-on-exit --config CONFIG`.
    pub fn spawn(exe: &Path, netns: &str, config: &Path) -> anyhow::Result<Self> {
        let child = Command::new(exe)
            .args(["--netns", netns, "daemon", "--detach-on-exit", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        Ok(Self(child))
    }

    /// Waits (at most 20 s) until the daemon has pinned an XDP link for
    /// every interface.
    pub fn wait_attached(&mut self, bpffs: &Path, ifaces: &[&str]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().context("checking the daemon")? {
                bail!("the daemon exited early ({status})");
            }
            if ifaces
                .iter()
                .all(|i| dataplane::link_pin_path(bpffs, i).exists())
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the daemon did not attach within 20 s")
    }

    /// Sends SIGTERM and waits (at most 5 s) for the exit status.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(st) = self.0.try_wait().context("waiting for the daemon")? {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        bail!("the daemon did not exit within 5 s of SIGTERM")
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.terminate();
        }
        let _ = self.0.wait();
    }
}

/// Per-run names and directories for a lab (tests, bench): a namespace
/// prefix unique on the host, a temp directory and a bpffs pin directory,
/// both removed on drop.
pub struct Workdir {
    pub prefix: String,
    pub dir: std::path::PathBuf,
    pub bpffs: std::path::PathBuf,
}

impl Workdir {
    /// `tag`: a short name for the namespace prefix and the directories
    /// (e.g. "fot" gives namespaces `fot<pid><n>c`, ...).
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        use std::sync::atomic::AtomicU32;
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("failover-{tag}-{id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            prefix: format!("{tag}{id}"),
            dir,
            bpffs: std::path::PathBuf::from(format!("/sys/fs/bpf/failover-{tag}-{id}")),
        })
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.bpffs);
    }
}
