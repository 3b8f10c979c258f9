//! The cluster lab (issue 16): two load balancers announcing the VIP to a
//! router over eBGP (BIRD, BFD 20 ms x 3, ECMP), agreeing through a
//! three-member etcd cluster (lb1, lb2 and a witness) on a separate control
//! network, in front of two backends and a client. Namespaces only,
//! addresses from 198.18.0.0/15, no default routes; everything (processes,
//! namespaces, pins, files) is removed when the [`ClusterLab`] drops, also
//! on failure or panic. Built after the shell prototype in
//! `docs/cluster-design/` (its configs and lessons).
//!
//! ```text
//!   client 198.18.0.2 --cr/rc-- router 198.18.0.1 (BIRD AS 65000, ECMP, BFD)
//!                                 | bridge "dp" 198.18.10.1/24 (the data LAN)
//!          +-------------+--------+----+--------------+
//!          | rl1         | rl2         | rb1          | rb2
//!   lb1 up0 .11   lb2 up0 .12    b1 dp0 .21      b2 dp0 .22
//!   (AS 65001,    (AS 65001,     (primary)       (standby)
//!    XDP, etcd)    XDP, etcd)
//!   lb1 ctl0 198.18.9.1 -- wl1 \
//!   lb2 ctl0 198.18.9.2 -- wl2 -- bridge "ctl" 198.18.9.3 in the witness (etcd)
//! ```
//!
//! One-armed: VIP packets come to a load balancer from the router on its
//! one data link (`up0`, where the daemon attaches XDP) and leave on the
//! same link (XDP_TX). The LBs, the router and the backends share one L2
//! segment (the bridge `dp` in the router's namespace), so that DSR (which
//! only rewrites MAC addresses) reaches the backends too; in NAT mode the
//! rewritten packet also goes straight to the backend's MAC. The router's
//! side of each LB link (`rl1`, `rl2`, bridge ports) is where faults are
//! injected with nftables bridge tables (so they also catch XDP_TX frames,
//! which bypass the LB's own netfilter and qdiscs; this kernel has neither
//! `tc` matchall nor the gact drop action).
//!
//! **NAT return path.** A NAT backend answers the client's address; the
//! answer must go through *a live* LB (any LB translates a reply from its
//! `REVERSE` map). The router sends what comes *from the backends*
//! (`ip rule from 198.18.10.16/28 lookup 100`) to kernel table 100, whose
//! route to the client network has the live LBs as ECMP next hops: each
//! LB's BIRD announces the client network 198.18.0.0/24 from a static
//! protocol `lab_return` `via "fo-live"` with `check link on` (fo-live is
//! the daemon's liveness tun), and the router's BIRD exports that prefix
//! (only) to table 100 through a second kernel protocol, the VIP /32s
//! (only) to the main table. The connected client route in the main table
//! still serves everything else. A dead LB (tun gone, carrier off, BGP/BFD
//! down) stops getting replies as fast as it stops getting VIP traffic.
//! Table 100 also has an `unreachable` route of a high metric, so that
//! without any live LB replies are dropped at the router instead of leaking
//! untranslated to the client. DSR replies (source = VIP) do not match the
//! rule and go straight to the client.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    AcceptLog, DaemonProcess, Server,
    client::Sample,
    netns::{self, Netns, run},
};

/// The VIP the LBs announce (never configured by the lab, except on the
/// backends' loopback in DSR mode).
pub const VIP4: &str = "198.18.100.10";
pub const CLIENT_ADDR: &str = "198.18.0.2";
pub const CLIENT_NET: &str = "198.18.0.0/24";
pub const ROUTER_DP: &str = "198.18.10.1";
pub const ROUTER_CLIENT_SIDE: &str = "198.18.0.1";
/// The backends' data-LAN addresses lie in this block (the router's
/// policy rule for the NAT return path matches it).
pub const BACKEND_BLOCK: &str = "198.18.10.16/28";
/// Kernel routing table of the NAT return path in the router.
pub const RETURN_TABLE: &str = "100";
/// The liveness tun the daemon creates and holds in each LB.
pub const LIVE_DEVICE: &str = "fo-live";
/// The LB's data link (the daemon attaches XDP here).
pub const UPLINK: &str = "up0";
/// The LB's control link (etcd).
pub const CTL_LINK: &str = "ctl0";
/// TCP ports the backends' servers listen on (NAT: the services' backend
/// ports; DSR: the VIP ports themselves).
pub const NAT_TCP_PORTS: [u16; 2] = [8080, 8081];
pub const NAT_UDP_PORT: u16 = 5353;
pub const DSR_TCP_PORTS: [u16; 2] = [80, 81];
pub const DSR_UDP_PORT: u16 = 53;

/// A load-balancer node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    Lb1,
    Lb2,
}

impl Node {
    pub const ALL: [Node; 2] = [Node::Lb1, Node::Lb2];

    /// `lb1`, `lb2` (the `[cluster] node` name too).
    pub fn name(self) -> &'static str {
        match self {
            Node::Lb1 => "lb1",
            Node::Lb2 => "lb2",
        }
    }

    fn idx(self) -> usize {
        self as usize
    }

    /// Its address on the data LAN (its BGP session and next hop).
    pub fn dp_addr(self) -> &'static str {
        ["198.18.10.11", "198.18.10.12"][self.idx()]
    }

    /// Its address on the control network (its etcd member).
    pub fn ctl_addr(self) -> &'static str {
        ["198.18.9.1", "198.18.9.2"][self.idx()]
    }

    /// The router's side of its data link (a bridge port).
    fn router_port(self) -> &'static str {
        ["rl1", "rl2"][self.idx()]
    }

    /// The witness's side of its control link (a bridge port).
    fn witness_port(self) -> &'static str {
        ["wl1", "wl2"][self.idx()]
    }
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An etcd member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Member {
    Lb(Node),
    Witness,
}

impl Member {
    pub const ALL: [Member; 3] = [
        Member::Lb(Node::Lb1),
        Member::Lb(Node::Lb2),
        Member::Witness,
    ];

    fn idx(self) -> usize {
        match self {
            Member::Lb(n) => n.idx(),
            Member::Witness => 2,
        }
    }

    /// `e1`, `e2`, `e3` (the etcd member name).
    pub fn name(self) -> &'static str {
        ["e1", "e2", "e3"][self.idx()]
    }

    pub fn addr(self) -> &'static str {
        match self {
            Member::Lb(n) => n.ctl_addr(),
            Member::Witness => WITNESS_CTL,
        }
    }

    /// `http://ADDR:2379`
    pub fn client_url(self) -> String {
        format!("http://{}:2379", self.addr())
    }
}

const WITNESS_CTL: &str = "198.18.9.3";

/// A backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backend {
    B1,
    B2,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::B1, Backend::B2];

    /// `b1`, `b2`: the name in the daemon's config and in the servers'
    /// answers.
    pub fn name(self) -> &'static str {
        ["b1", "b2"][self as usize]
    }

    pub fn addr(self) -> &'static str {
        ["198.18.10.21", "198.18.10.22"][self as usize]
    }

    fn router_port(self) -> &'static str {
        ["rb1", "rb2"][self as usize]
    }
}

/// The services' forwarding mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Nat,
    Dsr,
}

/// How a [`ClusterLab`] is set up.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    /// The body of a `[service.check]` table for every service; `None`:
    /// `type = "none"`.
    pub check: Option<String>,
    /// Keys added to every `[[service]]`.
    pub service_keys: String,
    /// Keys added to `[cluster]` (after `node`, `name`, `warmup`).
    pub cluster_keys: String,
    /// `[cluster] warmup`.
    pub warmup: String,
    /// `[cluster.etcd] lease_ttl`, `request_timeout`.
    pub lease_ttl: String,
    pub request_timeout: String,
    /// Top-level tables added to every LB's config (e.g. `[admin]`).
    pub top: String,
    /// Start the three etcd members in [`ClusterLab::create`] (and wait
    /// until the cluster is healthy).
    pub start_etcd: bool,
    /// Start BIRD on the router and both LBs in [`ClusterLab::create`].
    pub start_bird: bool,
    /// Start both backends' servers in [`ClusterLab::create`].
    pub start_servers: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mode: Mode::Nat,
            check: None,
            service_keys: String::new(),
            cluster_keys: String::new(),
            warmup: "1s".into(),
            lease_ttl: "3s".into(),
            request_timeout: "300ms".into(),
            top: String::new(),
            start_etcd: true,
            start_bird: true,
            start_servers: true,
        }
    }
}

/// Fails, naming the package, unless BIRD 2, etcd, etcdctl and nft are
/// installed (and we are root).
pub fn check_prerequisites() -> anyhow::Result<()> {
    crate::check_prerequisites()?;
    for (exe, pkg) in [
        (BIRD, "bird2"),
        (BIRDC, "bird2"),
        (ETCD, "etcd-server"),
        (ETCDCTL, "etcd-client"),
    ] {
        if !Path::new(exe).is_file() {
            bail!(
                "{exe} is missing: the cluster lab needs it (`apt-get install {pkg}`, or `cargo xtask setup`)"
            );
        }
    }
    run(Command::new("nft").arg("--version")).context(
        "nftables' `nft` is needed for the cluster lab's faults (`apt-get install nftables`)",
    )?;
    Ok(())
}

const BIRD: &str = "/usr/sbin/bird";
const BIRDC: &str = "/usr/sbin/birdc";
const ETCD: &str = "/usr/bin/etcd";
const ETCDCTL: &str = "/usr/bin/etcdctl";

/// A child process (BIRD, etcd) killed (SIGKILL) and reaped on drop.
pub struct Proc {
    child: Child,
    what: String,
}

impl Proc {
    fn spawn(mut cmd: Command, what: &str, log: &Path) -> anyhow::Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {what}: {cmd:?}"))?;
        Ok(Self {
            child,
            what: what.to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal`; for SIGKILL and SIGTERM also waits (at most 5 s) for
    /// the exit.
    pub fn signal(&mut self, signal: libc::c_int) -> anyhow::Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        if signal == libc::SIGKILL || signal == libc::SIGTERM {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if self.child.try_wait()?.is_some() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            bail!("{} did not exit within 5 s", self.what);
        }
        Ok(())
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes the lab's directories (declared last in [`ClusterLab`], so it
/// runs after the processes and namespaces are gone).
struct Dirs {
    work: PathBuf,
    bpffs: Vec<PathBuf>,
}

impl Drop for Dirs {
    fn drop(&mut self) {
        if std::env::var_os("FAILOVER_LAB_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.work);
        }
        for b in &self.bpffs {
            let _ = std::fs::remove_dir_all(b);
        }
    }
}

/// The cluster lab. Fields drop in order: daemons, servers, BIRD, etcd,
/// then the namespaces, then the directories.
pub struct ClusterLab {
    daemons: [Option<DaemonProcess>; 2],
    tuns: [Option<File>; 2],
    servers: [Option<Server>; 2],
    accepts: [AcceptLog; 2],
    bird_router: Option<Proc>,
    bird: [Option<Proc>; 2],
    etcd: [Option<Proc>; 3],
    pub router: Netns,
    pub client: Netns,
    pub lbs: [Netns; 2],
    pub witness: Netns,
    pub backends: [Netns; 2],
    pub opts: Options,
    /// The namespace prefix (also `[cluster] name`).
    pub prefix: String,
    /// The lab's work directory (configs, sockets, logs, etcd data).
    pub dir: PathBuf,
    _dirs: Dirs,
}

impl ClusterLab {
    /// Builds the lab with namespaces `<prefix>r` (router), `<prefix>c`
    /// (client), `<prefix>l1`, `<prefix>l2`, `<prefix>w` (witness),
    /// `<prefix>b1`, `<prefix>b2`; a work directory
    /// `$TMPDIR/failover-cluster-<prefix>` and pin directories
    /// `/sys/fs/bpf/failover-cluster-<prefix>-lbN`. The prefix must be
    /// unique on the host (`failover_tests::unique`, [`crate::Workdir`]).
    /// Starts what `opts` asks for; the daemons are started with
    /// [`ClusterLab::start_daemon`].
    pub fn create(prefix: &str, opts: Options) -> anyhow::Result<Self> {
        check_prerequisites()?;
        let work = std::env::temp_dir().join(format!("failover-cluster-{prefix}"));
        let dirs = Dirs {
            work: work.clone(),
            bpffs: Node::ALL
                .iter()
                .map(|n| PathBuf::from(format!("/sys/fs/bpf/failover-cluster-{prefix}-{n}")))
                .collect(),
        };
        for sub in ["router", "lb1", "lb2", "witness"] {
            let d = work.join(sub);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let router = Netns::new(&format!("{prefix}r"))?;
        let client = Netns::new(&format!("{prefix}c"))?;
        let lbs = [
            Netns::new(&format!("{prefix}l1"))?,
            Netns::new(&format!("{prefix}l2"))?,
        ];
        let witness = Netns::new(&format!("{prefix}w"))?;
        let backends = [
            Netns::new(&format!("{prefix}b1"))?,
            Netns::new(&format!("{prefix}b2"))?,
        ];
        let mut lab = Self {
            daemons: [None, None],
            tuns: [None, None],
            servers: [None, None],
            accepts: [AcceptLog::default(), AcceptLog::default()],
            bird_router: None,
            bird: [None, None],
            etcd: [None, None, None],
            router,
            client,
            lbs,
            witness,
            backends,
            opts,
            prefix: prefix.to_string(),
            dir: work,
            _dirs: dirs,
        };
        lab.wire().context("wiring the cluster lab")?;
        for n in Node::ALL {
            lab.write_files(n)?;
        }
        lab.write_router_bird()?;
        if lab.opts.start_servers {
            for b in Backend::ALL {
                lab.start_backend(b)?;
            }
        }
        if lab.opts.start_etcd {
            for m in Member::ALL {
                lab.start_etcd(m)?;
            }
            lab.wait_etcd_healthy(Duration::from_secs(20))?;
        }
        if lab.opts.start_bird {
            lab.start_router_bird()?;
            for n in Node::ALL {
                lab.start_bird(n)?;
            }
            lab.wait_bgp_established(Duration::from_secs(20))?;
        }
        Ok(lab)
    }

    /// Links, addresses, routes and sysctls.
    fn wire(&self) -> anyhow::Result<()> {
        let all = [
            &self.router,
            &self.client,
            &self.lbs[0],
            &self.lbs[1],
            &self.witness,
            &self.backends[0],
            &self.backends[1],
        ];
        for ns in all {
            ns.sysctl("net/ipv6/conf/all/accept_dad", "0")?;
            ns.sysctl("net/ipv6/conf/default/accept_dad", "0")?;
            ns.sysctl("net/ipv4/conf/all/rp_filter", "0")?;
            ns.sysctl("net/ipv4/conf/default/rp_filter", "0")?;
        }
        let r = &self.router;
        // The router: forwarding, flows hashed on L4 over the ECMP next
        // hops, and no ICMP redirects (the data LAN is one segment: a
        // backend's NAT reply comes in and goes out on `dp`, to an LB).
        r.forwarding()?;
        r.sysctl("net/ipv4/fib_multipath_hash_policy", "1")?;
        r.sysctl("net/ipv4/conf/all/send_redirects", "0")?;
        r.sysctl("net/ipv4/conf/default/send_redirects", "0")?;
        r.ip(&["link", "add", "dp", "type", "bridge"])?;
        r.sysctl("net/ipv4/conf/dp/send_redirects", "0")?;
        r.ip(&["link", "set", "dp", "up"])?;
        r.ip(&["addr", "add", &format!("{ROUTER_DP}/24"), "dev", "dp"])?;
        // Client.
        netns::veth(&self.client, "cr", r, "rc")?;
        self.client
            .ip(&["addr", "add", "198.18.0.2/24", "dev", "cr"])?;
        r.ip(&[
            "addr",
            "add",
            &format!("{ROUTER_CLIENT_SIDE}/24"),
            "dev",
            "rc",
        ])?;
        self.client
            .ip(&["route", "add", "198.18.100.0/24", "via", ROUTER_CLIENT_SIDE])?;
        self.client
            .ip(&["route", "add", "198.18.10.0/24", "via", ROUTER_CLIENT_SIDE])?;
        self.client.run(|| netns::disable_tx_checksum("cr"))?;
        // The load balancers' data links: bridge ports in the router.
        for n in Node::ALL {
            let lb = &self.lbs[n.idx()];
            lb.forwarding()?;
            netns::veth(lb, UPLINK, r, n.router_port())?;
            r.ip(&["link", "set", n.router_port(), "master", "dp"])?;
            lb.ip(&["addr", "add", &format!("{}/24", n.dp_addr()), "dev", UPLINK])?;
            self.lb_routes(n)?;
            lb.run(|| netns::disable_tx_checksum(UPLINK))?;
            // Frames the LB sends with XDP_TX arrive at the router's end
            // of the veth, which only takes XDP frames when it runs XDP
            // itself or has GRO on (NAPI): GRO, so that no eBPF object is
            // needed here.
            let port = n.router_port();
            r.run(|| crate::netns::ethtool_set(port, ETHTOOL_SGRO, 1))?;
            r.run(|| netns::disable_tx_checksum(port))?;
        }
        r.run(|| netns::disable_tx_checksum("rc"))?;
        let _ = r.run(|| netns::disable_tx_checksum("dp"));
        // Backends on the data LAN; replies to clients via the router.
        for b in Backend::ALL {
            let ns = &self.backends[b as usize];
            netns::veth(ns, "dp0", r, b.router_port())?;
            r.ip(&["link", "set", b.router_port(), "master", "dp"])?;
            ns.ip(&["addr", "add", &format!("{}/24", b.addr()), "dev", "dp0"])?;
            ns.ip(&["route", "add", CLIENT_NET, "via", ROUTER_DP])?;
            ns.sysctl("net/ipv4/conf/all/accept_redirects", "0")?;
            ns.sysctl("net/ipv4/conf/all/arp_ignore", "1")?;
            ns.sysctl("net/ipv4/conf/all/arp_announce", "2")?;
            ns.run(|| netns::disable_tx_checksum("dp0"))?;
            if self.opts.mode == Mode::Dsr {
                ns.ip(&["addr", "add", &format!("{VIP4}/32"), "dev", "lo"])?;
            }
        }
        // The NAT return path (see the module's doc): what comes from the
        // backends is routed by table 100 (BIRD fills it with the live
        // LBs); dropped there when no LB is live.
        r.ip(&[
            "rule",
            "add",
            "from",
            BACKEND_BLOCK,
            "lookup",
            RETURN_TABLE,
            "priority",
            "100",
        ])?;
        r.ip(&[
            "route",
            "add",
            "unreachable",
            CLIENT_NET,
            "table",
            RETURN_TABLE,
            "metric",
            "4000",
        ])?;
        // The control network: a bridge in the witness.
        let w = &self.witness;
        w.ip(&["link", "add", "ctl", "type", "bridge"])?;
        w.ip(&["link", "set", "ctl", "up"])?;
        w.ip(&["addr", "add", &format!("{WITNESS_CTL}/24"), "dev", "ctl"])?;
        for n in Node::ALL {
            let lb = &self.lbs[n.idx()];
            netns::veth(lb, CTL_LINK, w, n.witness_port())?;
            w.ip(&["link", "set", n.witness_port(), "master", "ctl"])?;
            lb.ip(&[
                "addr",
                "add",
                &format!("{}/24", n.ctl_addr()),
                "dev",
                CTL_LINK,
            ])?;
        }
        Ok(())
    }

    /// The LB's static routes through the router (set again after its
    /// uplink comes back: Linux drops routes through a link that goes
    /// down).
    fn lb_routes(&self, n: Node) -> anyhow::Result<()> {
        self.lbs[n.idx()].ip(&["route", "replace", CLIENT_NET, "via", ROUTER_DP])?;
        Ok(())
    }

    // ---------------------------------------------------------------- paths

    /// `<work>/lbN/`
    pub fn node_dir(&self, n: Node) -> PathBuf {
        self.dir.join(n.name())
    }
    pub fn config_path(&self, n: Node) -> PathBuf {
        self.node_dir(n).join("failover.toml")
    }
    pub fn bird_socket(&self, n: Node) -> PathBuf {
        self.node_dir(n).join("bird.ctl")
    }
    pub fn router_bird_socket(&self) -> PathBuf {
        self.dir.join("router/bird.ctl")
    }
    /// The include file the daemon owns (created empty by the lab).
    /// The failsafe's key file of LB `n`.
    pub fn failsafe_key(&self, n: Node) -> PathBuf {
        self.node_dir(n).join("failsafe.key")
    }

    pub fn include_path(&self, n: Node) -> PathBuf {
        self.node_dir(n).join("failover-vips.conf")
    }
    pub fn bpffs(&self, n: Node) -> PathBuf {
        PathBuf::from(format!(
            "/sys/fs/bpf/failover-cluster-{}-{}",
            self.prefix,
            n.name()
        ))
    }
    pub fn state_dir(&self, n: Node) -> PathBuf {
        self.node_dir(n).join("state")
    }
    pub fn events_path(&self, n: Node) -> PathBuf {
        self.node_dir(n).join("events.jsonl")
    }
    pub fn daemon_log(&self, n: Node) -> PathBuf {
        self.node_dir(n).join("daemon.log")
    }
    pub fn lb(&self, n: Node) -> &Netns {
        &self.lbs[n.idx()]
    }
    pub fn backend(&self, b: Backend) -> &Netns {
        &self.backends[b as usize]
    }
    fn member_dir(&self, m: Member) -> PathBuf {
        match m {
            Member::Lb(n) => self.node_dir(n),
            Member::Witness => self.dir.join("witness"),
        }
    }
    fn member_ns(&self, m: Member) -> &Netns {
        match m {
            Member::Lb(n) => self.lb(n),
            Member::Witness => &self.witness,
        }
    }

    /// The etcd client URLs of the three members (`[cluster.etcd]
    /// endpoints`).
    pub fn etcd_endpoints(&self) -> Vec<String> {
        Member::ALL.iter().map(|m| m.client_url()).collect()
    }

    // ---------------------------------------------------------------- files

    fn write_files(&self, n: Node) -> anyhow::Result<()> {
        let write = |p: PathBuf, text: &str| -> anyhow::Result<()> {
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
        };
        write(self.include_path(n), "")?;
        // The failsafe's shared key (the same on both nodes), 0600.
        {
            use std::os::unix::fs::PermissionsExt as _;
            let key = self.failsafe_key(n);
            write(key.clone(), &format!("lab-failsafe-key-{}\n", self.prefix))?;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("chmod {}", key.display()))?;
        }
        write(self.node_dir(n).join("bird.conf"), &self.lb_bird_conf(n))?;
        write(self.config_path(n), &self.config(n, true))?;
        Ok(())
    }

    /// The operator's part of LB `n`'s bird.conf: the BGP session to the
    /// router with BFD, the daemon's include, the return-path static, and
    /// an export filter that lets out only static routes of protocols
    /// named `fo_*` (VIP /32s) and `lab_return`.
    pub fn lb_bird_conf(&self, n: Node) -> String {
        let dir = self.node_dir(n);
        format!(
            r#"# LB {node}: written by failover-lab (the operator's part); the daemon owns the include.
log "{log}" all;
router id {addr};
timeformat protocol iso long;

protocol device {{ scan time 10; }}

protocol bfd {{
    interface "{UPLINK}" {{
        min rx interval 20 ms;
        min tx interval 20 ms;
        idle tx interval 300 ms;
        multiplier 3;
    }};
}}

# The NAT return path: while this node is live (its daemon's tun exists and
# has carrier) the router sends the backends' replies to the clients through
# it (the router puts this route in its kernel table {RETURN_TABLE} only).
protocol static lab_return {{
    check link on;
    ipv4;
    route {CLIENT_NET} via "{LIVE_DEVICE}";
}}

# Written by the daemon: one `protocol static fo_<service>_v4|v6` per VIP.
include "{include}";

filter fo_export {{
    if source != RTS_STATIC then reject;
    if proto = "lab_return" then accept;
    if proto ~ "fo_*" && net.type = NET_IP4 && net.len = 32 then accept;
    reject;
}}

protocol bgp uplink {{
    local {addr} as 65001;
    neighbor {ROUTER_DP} as 65000;
    ipv4 {{
        import none;
        export filter fo_export;
    }};
    bfd on;
    graceful restart off;
    hold time 3;
    keepalive time 1;
    connect delay time 1;
    connect retry time 2;
    error wait time 1, 5;
}}
"#,
            node = n.name(),
            log = dir.join("bird.log").display(),
            addr = n.dp_addr(),
            include = self.include_path(n).display(),
        )
    }

    /// The router's bird.conf: eBGP to both LBs with BFD, VIP /32s into the
    /// main table and the client network (the return path) into table
    /// 100, both with ECMP (`merge paths`).
    pub fn router_bird_conf(&self) -> String {
        format!(
            r#"# The router: written by failover-lab.
log "{log}" all;
router id {ROUTER_DP};
timeformat protocol iso long;

protocol device {{ scan time 10; }}

# VIP /32s into the main table, one multipath route per VIP.
protocol kernel kvip {{
    ipv4 {{ import none; export where source = RTS_BGP && net ~ [ 198.18.100.0/24{{32,32}} ]; }};
    merge paths on limit 16;
    learn off;
    scan time 10;
}}

# The NAT return path: the client network via every live LB, into kernel
# table {RETURN_TABLE} (the router's `ip rule from {BACKEND_BLOCK}` uses it). One
# kernel protocol per BIRD table, hence a table of its own and a pipe (which
# passes every route, so `merge paths` still sees both LBs).
ipv4 table ret4;

protocol pipe ret_pipe {{
    table master4;
    peer table ret4;
    import none;
    export where source = RTS_BGP && net = {CLIENT_NET};
}}

protocol kernel kret {{
    ipv4 {{ table ret4; import none; export all; }};
    kernel table {RETURN_TABLE};
    merge paths on limit 16;
    learn off;
    scan time 10;
}}

protocol bfd {{
    interface "dp" {{
        min rx interval 20 ms;
        min tx interval 20 ms;
        idle tx interval 300 ms;
        multiplier 3;
    }};
}}

template bgp lbnode {{
    local {ROUTER_DP} as 65000;
    ipv4 {{
        import where net ~ [ 198.18.100.0/24{{32,32}} ] || net = {CLIENT_NET};
        export none;
    }};
    bfd on;
    graceful restart off;        # never keep a dead node's routes
    hold time 3;
    keepalive time 1;
    connect delay time 1;
    connect retry time 2;
    error wait time 1, 5;        # default 60,300: a failback would wait a minute
}}

protocol bgp lb1 from lbnode {{ neighbor {lb1} as 65001; }}
protocol bgp lb2 from lbnode {{ neighbor {lb2} as 65001; }}
"#,
            log = self.dir.join("router/bird.log").display(),
            lb1 = Node::Lb1.dp_addr(),
            lb2 = Node::Lb2.dp_addr(),
        )
    }

    fn write_router_bird(&self) -> anyhow::Result<()> {
        let p = self.dir.join("router/bird.conf");
        std::fs::write(&p, self.router_bird_conf())
            .with_context(|| format!("writing {}", p.display()))
    }

    /// LB `n`'s daemon config: `web` (TCP 80, b1 primary, b2 standby),
    /// `dns` (UDP 53, same) and `api` (TCP 81, b2 primary), in the lab's
    /// mode, with `[cluster]` tables when `cluster` (the format agreed for
    /// issue 16; see the module's doc).
    pub fn config(&self, n: Node, cluster: bool) -> String {
        let o = &self.opts;
        let dsr = o.mode == Mode::Dsr;
        let (tcp, api, udp) = if dsr {
            (DSR_TCP_PORTS[0], DSR_TCP_PORTS[1], DSR_UDP_PORT)
        } else {
            (NAT_TCP_PORTS[0], NAT_TCP_PORTS[1], NAT_UDP_PORT)
        };
        let mode = if dsr { "mode = \"dsr\"\n" } else { "" };
        let keys = format!("{mode}{}", o.service_keys);
        let check = match &o.check {
            Some(c) => format!("[service.check]\n{c}\n"),
            None => "[service.check]\ntype = \"none\"\n".to_string(),
        };
        let none = "[service.check]\ntype = \"none\"\n";
        let (b1, b2) = (Backend::B1.addr(), Backend::B2.addr());
        let cluster = if cluster {
            let endpoints: Vec<String> = self
                .etcd_endpoints()
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect();
            format!(
                r#"
[cluster]
node = "{node}"
name = "{name}"
warmup = "{warmup}"
{cluster_keys}
[cluster.bgp]
control_socket = "{sock}"
include = "{include}"
live_device = "{LIVE_DEVICE}"

[cluster.etcd]
endpoints = [{endpoints}]
lease_ttl = "{ttl}"
request_timeout = "{rto}"

[cluster.failsafe]
listen = "{ctl}:7946"
peers = ["{peer}:7946"]
key_file = "{key}"
"#,
                node = n.name(),
                name = self.prefix,
                warmup = o.warmup,
                cluster_keys = o.cluster_keys,
                sock = self.bird_socket(n).display(),
                include = self.include_path(n).display(),
                endpoints = endpoints.join(", "),
                ttl = o.lease_ttl,
                rto = o.request_timeout,
                ctl = n.ctl_addr(),
                peer = match n {
                    Node::Lb1 => Node::Lb2.ctl_addr(),
                    Node::Lb2 => Node::Lb1.ctl_addr(),
                },
                key = self.failsafe_key(n).display(),
            )
        } else {
            String::new()
        };
        format!(
            r#"# LB {node} of the cluster lab, written by `failover-lab`.
[daemon]
interfaces = ["{UPLINK}"]
bpffs = "{bpffs}"
state_dir = "{state}"
events_file = "{events}"
{top}
{cluster}
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
{check}
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
{none}
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
{check}"#,
            node = n.name(),
            bpffs = self.bpffs(n).display(),
            state = self.state_dir(n).display(),
            events = self.events_path(n).display(),
            top = o.top,
        )
    }

    /// Rewrites LB `n`'s daemon config (e.g. after changing `opts`).
    pub fn rewrite_config(&self, n: Node, cluster: bool) -> anyhow::Result<PathBuf> {
        let p = self.config_path(n);
        std::fs::write(&p, self.config(n, cluster))
            .with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    }

    // ---------------------------------------------------------------- BIRD

    fn spawn_bird(&self, ns: &Netns, dir: &Path) -> anyhow::Result<Proc> {
        let conf = dir.join("bird.conf");
        let sock = dir.join("bird.ctl");
        let _ = std::fs::remove_file(&sock);
        let mut cmd = ns.cmd(BIRD);
        cmd.arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(&sock)
            .arg("-P")
            .arg(dir.join("bird.pid"));
        let p = Proc::spawn(cmd, &format!("bird in {}", ns.name), &dir.join("bird.out"))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if birdc_at(&sock, "show status").is_ok() {
                return Ok(p);
            }
            if Instant::now() > deadline {
                let out = std::fs::read_to_string(dir.join("bird.out")).unwrap_or_default();
                bail!(
                    "bird in {} did not answer on {} within 5 s: {}",
                    ns.name,
                    sock.display(),
                    out.trim()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn start_router_bird(&mut self) -> anyhow::Result<()> {
        let p = self.spawn_bird(&self.router, &self.dir.join("router"))?;
        self.bird_router = Some(p);
        Ok(())
    }

    /// Starts BIRD on LB `n` (stopping one that runs).
    pub fn start_bird(&mut self, n: Node) -> anyhow::Result<()> {
        self.bird[n.idx()] = None;
        let p = self.spawn_bird(self.lb(n), &self.node_dir(n))?;
        self.bird[n.idx()] = Some(p);
        Ok(())
    }

    /// Sends `signal` to LB `n`'s BIRD (SIGKILL/SIGTERM: and forgets it).
    pub fn stop_bird(&mut self, n: Node, signal: libc::c_int) -> anyhow::Result<()> {
        let Some(p) = self.bird[n.idx()].as_mut() else {
            bail!("bird on {n} is not running");
        };
        p.signal(signal)?;
        if signal == libc::SIGKILL || signal == libc::SIGTERM {
            self.bird[n.idx()] = None;
        }
        Ok(())
    }

    /// Runs a `birdc` command against LB `n`'s BIRD; its output.
    pub fn birdc(&self, n: Node, command: &str) -> anyhow::Result<String> {
        birdc_at(&self.bird_socket(n), command)
    }

    /// The same against the router's BIRD.
    pub fn router_birdc(&self, command: &str) -> anyhow::Result<String> {
        birdc_at(&self.router_bird_socket(), command)
    }

    /// Writes LB `n`'s include by hand (what the daemon does) and runs
    /// `configure`.
    pub fn write_include(&self, n: Node, text: &str) -> anyhow::Result<()> {
        let p = self.include_path(n);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        let out = self.birdc(n, "configure")?;
        if !out.contains("Reconfigured") && !out.contains("Reconfiguration") {
            bail!("birdc configure on {n}: {out}");
        }
        Ok(())
    }

    /// Waits until the router has an established BGP session to both LBs.
    pub fn wait_bgp_established(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.router_birdc("show protocols").unwrap_or_default();
            let up = out
                .lines()
                .filter(|l| {
                    (l.starts_with("lb1 ") || l.starts_with("lb2 ")) && l.contains("Established")
                })
                .count();
            if up == 2 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the router's BGP sessions are not both established after {timeout:?}:\n{out}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // ---------------------------------------------------------------- liveness by hand

    /// Creates (`true`) or deletes LB `n`'s `fo-live` tun by hand, as the
    /// daemon does (for the lab's own test and the demo without the
    /// daemon's cluster code): a non-persistent tun held open by the lab,
    /// up, with carrier; it goes when the lab closes it.
    pub fn fake_live(&mut self, n: Node, on: bool) -> anyhow::Result<()> {
        self.tuns[n.idx()] = None;
        if on {
            let f = self.lb(n).run(|| open_tun(LIVE_DEVICE))?;
            self.tuns[n.idx()] = Some(f);
            self.lb(n).ip(&["link", "set", LIVE_DEVICE, "up"])?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- etcd

    /// Starts etcd member `m` (with its data dir: a restarted member
    /// rejoins).
    pub fn start_etcd(&mut self, m: Member) -> anyhow::Result<()> {
        self.etcd[m.idx()] = None;
        let dir = self.member_dir(m);
        let peers: Vec<String> = Member::ALL
            .iter()
            .map(|p| format!("{}=http://{}:2380", p.name(), p.addr()))
            .collect();
        let a = m.addr();
        let mut cmd = self.member_ns(m).cmd(ETCD);
        cmd.args(["--name", m.name(), "--data-dir"])
            .arg(dir.join("etcd"))
            .args([
                "--listen-peer-urls",
                &format!("http://{a}:2380"),
                "--initial-advertise-peer-urls",
                &format!("http://{a}:2380"),
                "--listen-client-urls",
                &format!("http://{a}:2379,http://127.0.0.1:2379"),
                "--advertise-client-urls",
                &format!("http://{a}:2379"),
                "--initial-cluster",
                &peers.join(","),
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                &self.prefix,
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
                "--logger",
                "zap",
                "--log-outputs",
            ])
            .arg(dir.join("etcd.log"));
        let p = Proc::spawn(cmd, &format!("etcd {}", m.name()), &dir.join("etcd.out"))?;
        self.etcd[m.idx()] = Some(p);
        Ok(())
    }

    /// Sends `signal` to etcd member `m` (SIGKILL/SIGTERM: and forgets it).
    pub fn stop_etcd(&mut self, m: Member, signal: libc::c_int) -> anyhow::Result<()> {
        let Some(p) = self.etcd[m.idx()].as_mut() else {
            bail!("etcd {} is not running", m.name());
        };
        p.signal(signal)?;
        if signal == libc::SIGKILL || signal == libc::SIGTERM {
            self.etcd[m.idx()] = None;
        }
        Ok(())
    }

    /// Kills every etcd member.
    pub fn stop_etcd_all(&mut self) {
        for e in &mut self.etcd {
            *e = None;
        }
    }

    /// Runs `etcdctl ARGS` from the witness with every endpoint (a 1 s
    /// command timeout); its stdout, or its error.
    pub fn etcdctl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.etcdctl_from(Member::Witness, &self.etcd_endpoints().join(","), args)
    }

    /// The same from `m`'s namespace against `endpoints` (comma-separated).
    pub fn etcdctl_from(
        &self,
        m: Member,
        endpoints: &str,
        args: &[&str],
    ) -> anyhow::Result<String> {
        let mut cmd = self.member_ns(m).cmd(ETCDCTL);
        cmd.env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                endpoints,
                "--command-timeout",
                "1s",
                "--dial-timeout",
                "1s",
            ])
            .args(args);
        let out = run(&mut cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until every *running* member is healthy.
    pub fn wait_etcd_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let eps: Vec<String> = Member::ALL
            .iter()
            .filter(|m| self.etcd[m.idx()].is_some())
            .map(|m| m.client_url())
            .collect();
        let deadline = Instant::now() + timeout;
        loop {
            match self.etcdctl_from(Member::Witness, &eps.join(","), &["endpoint", "health"]) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("etcd not healthy after {timeout:?}")));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    // ---------------------------------------------------------------- daemons

    /// Starts `failover --netns <lbN> daemon --detach-on-exit --config
    /// <lbN>/failover.toml`, output to `<lbN>/daemon.log`.
    pub fn start_daemon(&mut self, n: Node, failover: &Path) -> anyhow::Result<()> {
        let cfg = self.config_path(n);
        self.start_daemon_with(n, failover, &cfg)
    }

    /// The same with another config file.
    pub fn start_daemon_with(
        &mut self,
        n: Node,
        failover: &Path,
        config: &Path,
    ) -> anyhow::Result<()> {
        self.daemons[n.idx()] = None;
        let log = self.daemon_log(n);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(failover)
            .args([
                "--netns",
                &self.lb(n).name,
                "daemon",
                "--detach-on-exit",
                "--config",
            ])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", failover.display()))?;
        self.daemons[n.idx()] = Some(DaemonProcess(child));
        Ok(())
    }

    /// Waits (at most 20 s) until LB `n`'s daemon has attached to the
    /// uplink.
    pub fn wait_daemon_attached(&mut self, n: Node) -> anyhow::Result<()> {
        let bpffs = self.bpffs(n);
        let log = self.daemon_log(n);
        let d = self.daemons[n.idx()]
            .as_mut()
            .with_context(|| format!("no daemon on {n}"))?;
        d.wait_attached(&bpffs, &[UPLINK])
            .with_context(|| format!("daemon on {n} (log: {})", log.display()))
    }

    /// Sends `signal` to LB `n`'s daemon; SIGKILL/SIGTERM also wait for
    /// its exit and forget it.
    pub fn kill_daemon(&mut self, n: Node, signal: libc::c_int) -> anyhow::Result<()> {
        let d = self.daemons[n.idx()]
            .as_mut()
            .with_context(|| format!("no daemon on {n}"))?;
        if signal == libc::SIGTERM {
            d.terminate()?;
        } else {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(d.0.id() as libc::pid_t, signal) };
            if signal == libc::SIGKILL {
                d.0.wait().context("reaping the daemon")?;
            }
        }
        if signal == libc::SIGKILL || signal == libc::SIGTERM {
            self.daemons[n.idx()] = None;
        }
        Ok(())
    }

    /// LB `n`'s daemon, if the lab started one.
    pub fn daemon(&mut self, n: Node) -> Option<&mut DaemonProcess> {
        self.daemons[n.idx()].as_mut()
    }

    // ---------------------------------------------------------------- backends

    /// Starts backend `b`'s servers (TCP and UDP, answering with its
    /// name), keeping its accept log across restarts.
    pub fn start_backend(&mut self, b: Backend) -> anyhow::Result<()> {
        self.servers[b as usize] = None;
        let (tcp, udp) = match self.opts.mode {
            Mode::Nat => (NAT_TCP_PORTS, NAT_UDP_PORT),
            Mode::Dsr => (DSR_TCP_PORTS, DSR_UDP_PORT),
        };
        let s = Server::start_logged(
            self.backend(b),
            b.name(),
            &tcp,
            udp,
            self.accepts[b as usize].clone(),
        )?;
        self.servers[b as usize] = Some(s);
        Ok(())
    }

    /// Stops backend `b`'s servers (listeners and connections close).
    pub fn kill_backend(&mut self, b: Backend) {
        if let Some(s) = self.servers[b as usize].take() {
            s.stop();
        }
    }

    /// When backend `b` accepted each new TCP connection from the client
    /// (over the lab's life): the load balancers' health checks are not
    /// counted.
    pub fn accepts(&self, b: Backend) -> Vec<Instant> {
        let client: std::net::IpAddr = CLIENT_ADDR.parse().expect("CLIENT_ADDR is an address");
        self.accepts[b as usize]
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|(_, peer)| *peer == client)
                    .map(|(t, _)| *t)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// New connections per backend in buckets of `bucket` from `since`:
    /// `[b1, b2]` per bucket. A bucket with both non-zero is a window in
    /// which both backends took new flows (split brain, for an
    /// active/standby service).
    pub fn accept_histogram(&self, since: Instant, bucket: Duration) -> Vec<[u64; 2]> {
        let mut h: Vec<[u64; 2]> = Vec::new();
        let step = bucket.as_nanos().max(1);
        for b in Backend::ALL {
            for t in self.accepts(b) {
                let Some(d) = t.checked_duration_since(since) else {
                    continue;
                };
                let i = (d.as_nanos() / step) as usize;
                if h.len() <= i {
                    h.resize(i + 1, [0, 0]);
                }
                h[i][b as usize] += 1;
            }
        }
        h
    }

    // ---------------------------------------------------------------- faults

    /// Takes LB `n`'s data link down (`ip link set down`; the router sees
    /// no carrier on its port) or up again (with the LB's routes).
    pub fn uplink(&self, n: Node, up: bool) -> anyhow::Result<()> {
        self.lb(n)
            .ip(&["link", "set", UPLINK, if up { "up" } else { "down" }])?;
        if up {
            self.lb_routes(n)?;
        }
        Ok(())
    }

    /// Drops everything to and from LB `n` on its data link at the
    /// router's bridge port, carrier up (a dead node whose link stays up:
    /// BFD's case). XDP_TX frames included (they bypass the LB's own
    /// netfilter and qdiscs, hence the router's side).
    pub fn silent_drop(&self, n: Node, on: bool) -> anyhow::Result<()> {
        let port = n.router_port();
        self.port_filter(&self.router, &format!("fo_silent_{port}"), port, "", on)
    }

    /// Cuts LB `n` off the etcd cluster: everything on its control link is
    /// dropped at the witness's bridge port (its own member stays
    /// reachable from the LB itself, without a leader).
    pub fn cut_etcd(&self, n: Node, cut: bool) -> anyhow::Result<()> {
        let port = n.witness_port();
        self.port_filter(&self.witness, &format!("fo_cut_{port}"), port, "", cut)
    }

    /// LB `n` can no longer reach backend `b`, nor `b` it: frames between
    /// them (by `b`'s MAC address, so DSR frames too) are dropped at the
    /// router's bridge port of `n`'s link; the rest of `n`'s traffic
    /// (client flows to the other backend, replies routed by the router)
    /// passes.
    pub fn cut_backend(&self, n: Node, b: Backend, cut: bool) -> anyhow::Result<()> {
        let mac = self.backend_mac(b)?;
        let port = n.router_port();
        let table = format!("fo_cut_{port}_{}", b.name());
        self.port_filter(&self.router, &table, port, &mac, cut)
    }

    /// An nftables bridge table `table` in `ns` dropping the frames that
    /// enter the bridge from `port` (to `mac` only, if given) and those
    /// that leave through it (from `mac` only, if given); or its removal.
    fn port_filter(
        &self,
        ns: &Netns,
        table: &str,
        port: &str,
        mac: &str,
        on: bool,
    ) -> anyhow::Result<()> {
        if !on {
            netns::run(ns.cmd("nft").args(["delete", "table", "bridge", table]))
                .with_context(|| format!("removing the filter {table} in {}", ns.name))?;
            return Ok(());
        }
        let (to, from) = if mac.is_empty() {
            (String::new(), String::new())
        } else {
            (format!("ether daddr {mac} "), format!("ether saddr {mac} "))
        };
        let rules = format!(
            "table bridge {table} {{\n\
             \tchain pre {{ type filter hook prerouting priority -300; iifname \"{port}\" {to}drop; }}\n\
             \tchain post {{ type filter hook postrouting priority -300; oifname \"{port}\" {from}drop; }}\n\
             }}\n"
        );
        let file = self.dir.join(format!("{}-{table}.nft", ns.name));
        std::fs::write(&file, rules).with_context(|| format!("writing {}", file.display()))?;
        netns::run(ns.cmd("nft").arg("-f").arg(&file))
            .with_context(|| format!("adding the filter {table} in {}", ns.name))?;
        Ok(())
    }

    /// Backend `b`'s link down or up (with its route to the clients).
    pub fn backend_link(&self, b: Backend, up: bool) -> anyhow::Result<()> {
        let ns = self.backend(b);
        ns.ip(&["link", "set", "dp0", if up { "up" } else { "down" }])?;
        if up {
            ns.ip(&["route", "replace", CLIENT_NET, "via", ROUTER_DP])?;
        }
        Ok(())
    }

    fn backend_mac(&self, b: Backend) -> anyhow::Result<String> {
        let out = self.backend(b).ip(&["-j", "link", "show", "dp0"])?;
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing `ip -j link show`")?;
        v.get(0)
            .and_then(|l| l.get("address"))
            .and_then(|a| a.as_str())
            .map(str::to_string)
            .context("no MAC address for dp0")
    }

    // ---------------------------------------------------------------- observation

    /// The LBs the router's kernel routes `vip` through (ECMP next hops of
    /// its main table), sorted.
    pub fn router_nexthops(&self, vip: &str) -> anyhow::Result<Vec<Node>> {
        self.nexthops(&["-j", "route", "show", vip])
    }

    /// The LBs the router sends the backends' replies to the clients
    /// through (table 100; the NAT return path).
    pub fn return_nexthops(&self) -> anyhow::Result<Vec<Node>> {
        self.nexthops(&[
            "-j",
            "route",
            "show",
            CLIENT_NET,
            "table",
            RETURN_TABLE,
            "proto",
            "bird",
        ])
    }

    fn nexthops(&self, args: &[&str]) -> anyhow::Result<Vec<Node>> {
        let out = self.router.ip(args)?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_nexthops(&text)
    }

    /// Waits until the router's next hops for `vip` are exactly `want`;
    /// how long it took.
    pub fn wait_nexthops(
        &self,
        vip: &str,
        want: &[Node],
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let mut want = want.to_vec();
        want.sort();
        let start = Instant::now();
        loop {
            let got = self.router_nexthops(vip)?;
            if got == want {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!("the router routes {vip} via {got:?}, not {want:?}, after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until the router routes the VIP through `n` (among others).
    pub fn wait_announced(&self, n: Node, timeout: Duration) -> anyhow::Result<Duration> {
        self.wait_route(n, true, timeout)
    }

    /// Waits until the router no longer routes the VIP through `n`.
    pub fn wait_withdrawn(&self, n: Node, timeout: Duration) -> anyhow::Result<Duration> {
        self.wait_route(n, false, timeout)
    }

    fn wait_route(&self, n: Node, present: bool, timeout: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            let got = self.router_nexthops(VIP4)?;
            if got.contains(&n) == present {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "{n} still {} for {VIP4} after {timeout:?} (next hops {got:?})",
                    if present {
                        "not announced"
                    } else {
                        "announced"
                    }
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The VIP's socket address for `port`.
    pub fn vip(port: u16) -> SocketAddr {
        SocketAddr::from(([198, 18, 100, 10], port))
    }

    /// Starts the per-flow client (see [`FlowClient`]) in the client's
    /// namespace against the VIP.
    pub fn flow_client(&self, o: &FlowOptions) -> FlowClient {
        FlowClient::start(&self.client.name, Self::vip(o.port), o)
    }
}

/// The LBs in `ip -j route show` output (one route, possibly multipath),
/// by their data-LAN address; sorted. No route: empty.
pub fn parse_nexthops(json: &str) -> anyhow::Result<Vec<Node>> {
    let json = json.trim();
    if json.is_empty() {
        return Ok(Vec::new());
    }
    let v: serde_json::Value = serde_json::from_str(json).context("parsing `ip -j route`")?;
    let mut out = Vec::new();
    let node_of = |gw: &str| Node::ALL.into_iter().find(|n| n.dp_addr() == gw);
    for route in v.as_array().map(Vec::as_slice).unwrap_or_default() {
        if route
            .get("type")
            .and_then(|t| t.as_str())
            .is_some_and(|t| t != "unicast")
        {
            continue;
        }
        if let Some(gw) = route.get("gateway").and_then(|g| g.as_str()) {
            out.extend(node_of(gw));
        }
        for hop in route
            .get("nexthops")
            .and_then(|h| h.as_array())
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if let Some(gw) = hop.get("gateway").and_then(|g| g.as_str()) {
                out.extend(node_of(gw));
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// `birdc -s SOCKET COMMAND`: its output, or an error with it.
pub fn birdc_at(socket: &Path, command: &str) -> anyhow::Result<String> {
    let out = run(Command::new(BIRDC)
        .arg("-s")
        .arg(socket)
        .args(command.split_whitespace()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if text.contains("Unable to connect") {
        bail!("birdc on {}: {text}", socket.display());
    }
    Ok(text)
}

/// The include the daemon would write for the lab's VIP on an announcing
/// node (`disabled no`) or a withdrawn one (`disabled yes`).
pub fn include_text(announced: bool) -> String {
    format!(
        "# written by failover-lab by hand (what the daemon writes)\n\
         protocol static fo_web_v4 {{\n    disabled {};\n    check link on;\n    ipv4;\n    \
         route {VIP4}/32 via \"{LIVE_DEVICE}\";\n}}\n",
        if announced { "no" } else { "yes" }
    )
}

/// Opens a new non-persistent tun `name` (in the calling thread's
/// namespace), close-on-exec; the device lives as long as the file.
fn open_tun(name: &str) -> anyhow::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    #[repr(C)]
    struct IfReq {
        name: [libc::c_char; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TUN: libc::c_short = 0x0001;
    const IFF_NO_PI: libc::c_short = 0x1000;
    if name.len() >= libc::IFNAMSIZ {
        bail!("interface name {name:?} too long");
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    for (d, s) in req.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    use std::os::fd::AsRawFd as _;
    // SAFETY: TUNSETIFF with a valid ifreq on a tun fd we own.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
    if rc != 0 {
        bail!(
            "creating the tun {name}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(f)
}

const ETHTOOL_SGRO: u32 = 0x2c;

// -------------------------------------------------------------------- client

/// How a [`FlowClient`] runs.
#[derive(Debug, Clone)]
pub struct FlowOptions {
    /// Long-lived TCP flows (at most 256).
    pub flows: usize,
    /// Between two requests of one flow.
    pub interval: Duration,
    /// How long the client runs at most (it also ends on `stop`).
    pub duration: Duration,
    /// The VIP port (80: `web`, 81: `api`).
    pub port: u16,
    /// Per connect and per answer.
    pub timeout: Duration,
}

impl Default for FlowOptions {
    fn default() -> Self {
        Self {
            flows: 16,
            interval: Duration::from_millis(5),
            duration: Duration::from_secs(10),
            port: 80,
            timeout: Duration::from_millis(300),
        }
    }
}

/// What one flow saw.
#[derive(Debug, Clone, Default)]
pub struct FlowReport {
    pub flow: usize,
    pub answers: u64,
    /// Requests without an answer (timeout, reset, closed) and failed
    /// connects.
    pub failures: u64,
    /// Connections the flow had to open again after its first (each a
    /// lost connection: a reset, a close or a timeout).
    pub reconnects: u64,
    /// The longest time between two answers (or from the last answer to
    /// the end, or from the start to the first answer).
    pub longest_gap: Duration,
    /// Answers per backend name.
    pub by_backend: BTreeMap<String, u64>,
    /// Every request: when it was sent (from the client's start) and who
    /// answered.
    pub samples: Vec<Sample>,
}

/// N long-lived TCP flows through the VIP from the client's namespace,
/// one request every `interval` each, reconnecting after a failure:
/// the per-flow outage of a failover. One thread per flow.
pub struct FlowClient {
    t0: Instant,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<FlowReport>>,
}

impl FlowClient {
    pub fn start(netns: &str, to: SocketAddr, o: &FlowOptions) -> Self {
        let t0 = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..o.flows.min(256))
            .map(|i| {
                let (ns, stop, o) = (netns.to_string(), stop.clone(), o.clone());
                std::thread::spawn(move || run_flow(i, &ns, to, &o, t0, &stop))
            })
            .collect();
        Self { t0, stop, threads }
    }

    /// When the client started (sample times are relative to it).
    pub fn t0(&self) -> Instant {
        self.t0
    }

    /// Stops the flows now and returns their reports.
    pub fn stop(self) -> Vec<FlowReport> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// Waits until the flows end (their duration) and returns their
    /// reports.
    pub fn join(mut self) -> Vec<FlowReport> {
        std::mem::take(&mut self.threads)
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                t.join().unwrap_or_else(|_| FlowReport {
                    flow: i,
                    ..Default::default()
                })
            })
            .collect()
    }
}

impl Drop for FlowClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A one-line summary of flow reports: flows, answers, failures, the
/// worst gap, answers per backend.
pub fn summarize(reports: &[FlowReport]) -> String {
    let answers: u64 = reports.iter().map(|r| r.answers).sum();
    let failures: u64 = reports.iter().map(|r| r.failures).sum();
    let reconnects: u64 = reports.iter().map(|r| r.reconnects).sum();
    let worst = reports
        .iter()
        .map(|r| r.longest_gap)
        .max()
        .unwrap_or_default();
    let mut by: BTreeMap<&str, u64> = BTreeMap::new();
    for r in reports {
        for (k, v) in &r.by_backend {
            *by.entry(k).or_default() += v;
        }
    }
    let by: Vec<String> = by.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{} flows: {answers} answers ({}), {failures} failures, {reconnects} reconnects, longest gap {:.1} ms",
        reports.len(),
        by.join(" "),
        worst.as_secs_f64() * 1e3
    )
}

fn run_flow(
    i: usize,
    netns: &str,
    to: SocketAddr,
    o: &FlowOptions,
    t0: Instant,
    stop: &AtomicBool,
) -> FlowReport {
    let mut r = FlowReport {
        flow: i,
        ..Default::default()
    };
    if let Err(e) = failover_user::sys::netns::enter_named(netns) {
        tracing::warn!(error = %format!("{e:#}"), "flow client cannot enter its namespace");
        r.failures = 1;
        return r;
    }
    let start = Instant::now();
    let mut last_ok = start;
    let mut conn: Option<(BufReader<TcpStream>, TcpStream)> = None;
    let mut opened = 0u64;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && start.elapsed() < o.duration {
        let sent = t0.elapsed();
        n += 1;
        if conn.is_none() {
            match TcpStream::connect_timeout(&to, o.timeout) {
                Ok(s) => {
                    let _ = s.set_read_timeout(Some(o.timeout));
                    let _ = s.set_write_timeout(Some(o.timeout));
                    let _ = s.set_nodelay(true);
                    if let Ok(w) = s.try_clone() {
                        opened += 1;
                        conn = Some((BufReader::new(s), w));
                    }
                }
                Err(_) => {
                    r.failures += 1;
                    r.samples.push(Sample {
                        sent,
                        who: None,
                        rtt: None,
                    });
                    std::thread::sleep(o.interval);
                    continue;
                }
            }
        }
        let Some((rd, w)) = conn.as_mut() else {
            continue;
        };
        let msg = format!("f{i}n{n}");
        let t = Instant::now();
        let answer = (|| -> Option<String> {
            w.write_all(format!("{msg}\n").as_bytes()).ok()?;
            let mut line = String::new();
            if rd.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let (name, echoed) = line.trim_end().split_once(' ')?;
            (echoed == msg).then(|| name.to_string())
        })();
        match answer {
            Some(who) => {
                let now = Instant::now();
                r.longest_gap = r.longest_gap.max(now - last_ok);
                last_ok = now;
                r.answers += 1;
                *r.by_backend.entry(who.clone()).or_default() += 1;
                r.samples.push(Sample {
                    sent,
                    who: Some(who),
                    rtt: Some(t.elapsed()),
                });
            }
            None => {
                r.failures += 1;
                conn = None;
                r.samples.push(Sample {
                    sent,
                    who: None,
                    rtt: None,
                });
            }
        }
        std::thread::sleep(o.interval);
    }
    r.longest_gap = r.longest_gap.max(last_ok.elapsed());
    r.reconnects = opened.saturating_sub(1);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nexthops_of_ip_json() {
        let multi = r#"[{"dst":"198.18.100.10","protocol":"bird","metric":32,"flags":[],"nexthops":[{"gateway":"198.18.10.11","dev":"dp","weight":1,"flags":[]},{"gateway":"198.18.10.12","dev":"dp","weight":1,"flags":[]}]}]"#;
        assert_eq!(parse_nexthops(multi).unwrap(), vec![Node::Lb1, Node::Lb2]);
        let one = r#"[{"dst":"198.18.100.10","gateway":"198.18.10.12","dev":"dp","protocol":"bird","metric":32,"flags":[]}]"#;
        assert_eq!(parse_nexthops(one).unwrap(), vec![Node::Lb2]);
        assert!(parse_nexthops("[]").unwrap().is_empty());
        assert!(parse_nexthops("\n").unwrap().is_empty());
        let unreachable =
            r#"[{"type":"unreachable","dst":"198.18.0.0/24","metric":4000,"flags":[]}]"#;
        assert!(parse_nexthops(unreachable).unwrap().is_empty());
    }
}
