//! Flow lifecycle through real namespaces: new connections on reused
//! client ports follow drain and failback, and a direct connection to a
//! backend endpoint on the tuple of an earlier VIP flow keeps its replies
//! untranslated. Real daemon, real servers, real TCP. Needs root; fails
//! (never skips) without it.

use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::fd::FromRawFd,
    path::PathBuf,
    process::Command,
    time::Duration,
};

use anyhow::{Context, bail};
use failover_lab::raw;
use failover_lab::{
    BACKEND_TCP_PORT, BACKEND_UDP_PORT, DaemonProcess, LB_IFACES, Server, Topology, Workdir, vip,
};

const T: Duration = Duration::from_millis(1000);

fn exe() -> PathBuf {
    failover_tests::failover_exe()
}

fn set_state(config: &std::path::Path, service: &str, backend: &str, state: &str) {
    failover_lab::set_state(&exe(), config, service, backend, state).expect("set-state");
}

/// One request on a new IPv4 connection from local port `port` (bound with
/// SO_REUSEADDR; closed with a RST, SO_LINGER 0, so the port is free again
/// at once): the backend that answered. Called inside the client's
/// namespace.
fn request_from_port(port: u16, to: SocketAddrV4, msg: &str) -> anyhow::Result<String> {
    // SAFETY: plain socket syscalls on a descriptor we own; the structs
    // passed are initialised and sized as the kernel expects.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is ours; from here the TcpStream owns and closes it.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    let sa = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let local = sa(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
    let remote = sa(to);
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: as above.
    let rc = unsafe {
        let opt = |name, v: *const libc::c_void, l: usize| {
            libc::setsockopt(fd, libc::SOL_SOCKET, name, v, l as libc::socklen_t)
        };
        if opt(libc::SO_REUSEADDR, (&one as *const i32).cast(), 4) != 0
            || opt(
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>(),
            ) != 0
            || opt(
                libc::SO_SNDTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>(),
            ) != 0
            || libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0
        {
            -1
        } else {
            libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len)
        }
    };
    if rc != 0 {
        bail!("port {port} -> {to}: {}", std::io::Error::last_os_error());
    }
    stream.set_read_timeout(Some(T))?;
    (&stream).write_all(format!("{msg}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .context("reading the answer")?;
    match line.trim_end().split_once(' ') {
        Some((name, echoed)) if echoed == msg => Ok(name.to_string()),
        _ => bail!("unexpected answer {line:?}"),
    }
}

struct Lab {
    topo: Topology,
    config: PathBuf,
    _daemon: DaemonProcess,
    servers: Vec<Server>,
    _s: Workdir,
}

fn start_lab() -> Lab {
    start_lab_with("")
}

/// The lab with `top` added to its config (e.g. a `[limits]` table).
fn start_lab_with(top: &str) -> Lab {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "namespace tests need root");
    let s = Workdir::new("ffl").expect("scratch dir");
    let topo = Topology::create(&s.prefix).expect("creating the lab topology");
    let config = s.dir.join("lab.toml");
    let extras = failover_lab::LabExtras {
        top: top.to_string(),
        ..Default::default()
    };
    std::fs::write(
        &config,
        topo.config_with(&s.bpffs, &s.dir.join("state"), &extras),
    )
    .expect("writing config");
    let ports = [BACKEND_TCP_PORT, BACKEND_TCP_PORT + 1];
    let servers = vec![
        Server::start(&topo.backends[0], "b1", &ports, BACKEND_UDP_PORT).expect("b1 servers"),
        Server::start(&topo.backends[1], "b2", &ports, BACKEND_UDP_PORT).expect("b2 servers"),
    ];
    let mut daemon =
        DaemonProcess::spawn(&exe(), &topo.lb.name, &config).expect("starting the daemon");
    daemon
        .wait_attached(&s.bpffs, &LB_IFACES)
        .expect("daemon attached");
    Lab {
        topo,
        config,
        _daemon: daemon,
        servers,
        _s: s,
    }
}

/// Who answered `n` connections cycling over the client ports `ports`.
fn tally(lab: &Lab, ports: std::ops::Range<u16>, n: usize, tag: &str) -> (usize, usize) {
    let SocketAddr::V4(to) = vip(false, 80) else {
        unreachable!("an IPv4 VIP")
    };
    let ports: Vec<u16> = ports.collect();
    lab.topo
        .client
        .run(|| {
            let (mut b1, mut b2) = (0, 0);
            for i in 0..n {
                let port = ports[i % ports.len()];
                match request_from_port(port, to, &format!("{tag}-{i}"))?.as_str() {
                    "b1" => b1 += 1,
                    "b2" => b2 += 1,
                    other => bail!("answered by {other}"),
                }
            }
            Ok((b1, b2))
        })
        .expect("every connection answered")
}

/// 2000 new connections over 10 client ports while the primary drains
/// reach it 0 times; after it is up again every new connection goes back
/// to it (failback), reused tuples included.
#[test]
fn drain_and_failback_hold_for_reused_ports() {
    let lab = start_lab();
    let ports = 47100..47110;
    assert_eq!(
        tally(&lab, ports.clone(), 50, "warm"),
        (50, 0),
        "primary first"
    );
    set_state(&lab.config, "web", "b1", "draining");
    assert_eq!(
        tally(&lab, ports.clone(), 2000, "drain"),
        (0, 2000),
        "no new connection reaches the draining primary"
    );
    set_state(&lab.config, "web", "b1", "up");
    assert_eq!(
        tally(&lab, ports, 500, "back"),
        (500, 0),
        "every new connection fails back"
    );
}

/// A direct connection through the load balancer to a backend endpoint,
/// from the client port an earlier VIP flow used, is answered from the
/// backend's own address (its replies are not rewritten to the VIP).
#[test]
fn direct_connection_after_a_vip_flow_on_the_same_port() {
    let lab = start_lab();
    lab.topo
        .client
        .ip(&["route", "add", "198.18.1.0/24", "via", "198.18.0.1"])
        .expect("route to the backends");
    let SocketAddr::V4(to_vip) = vip(false, 80) else {
        unreachable!("an IPv4 VIP")
    };
    let direct = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), BACKEND_TCP_PORT);
    lab.topo
        .client
        .run(|| {
            for (i, port) in (47200..47210).enumerate() {
                assert_eq!(request_from_port(port, to_vip, &format!("vip-{i}"))?, "b1");
                assert_eq!(
                    request_from_port(port, direct, &format!("direct-{i}"))?,
                    "b1",
                    "direct connection from port {port}"
                );
                // And the VIP again on the same port.
                assert_eq!(
                    request_from_port(port, to_vip, &format!("again-{i}"))?,
                    "b1"
                );
            }
            Ok(())
        })
        .expect("direct and VIP connections on the same ports");
}

/// A VLAN-tagged client packet to the VIP (real frames on the client's
/// link; this kernel has no VLAN devices, so the frame is sent through an
/// AF_PACKET socket) reaches the untagged backend link without the tag,
/// NATed, and the backend's server answers it: the load balancer's FIB
/// lookup was for untagged interfaces, so the tag must not cross over.
#[test]
fn vlan_tagged_packets_leave_untagged() {
    let lab = start_lab();
    let (c, b1) = (&lab.topo.client, &lab.topo.backends[0]);
    // One untagged request first: the load balancer resolves b1's MAC (a
    // tagged frame the kernel had to resolve for would find no VLAN device
    // on this host).
    assert_eq!(
        failover_lab::tcp_request(c, vip(false, 80), "warm", T).expect("untagged request"),
        "b1"
    );
    let lb_mac = raw::mac_of(&lab.topo.lb, "lc").expect("LB MAC");
    let client_mac = raw::mac_of(c, "cl").expect("client MAC");
    let capture = b1.run(|| raw::packet_socket("b1")).expect("capture on b1");
    let client_rx = c.run(|| raw::packet_socket("cl")).expect("capture on cl");
    let tx = c.run(|| raw::packet_socket("cl")).expect("socket on cl");
    let syn = raw::Tcp::syn([198, 18, 0, 2], [198, 18, 100, 10], 47300, 80, 0x1234_5678);
    let frame = raw::ether(lb_mac, client_mac, Some(100), &syn.ip());
    assert!(raw::send(&tx, &frame), "sending the tagged SYN");
    let recv = raw::recv_matching;
    // On the backend link: our SYN, NATed, with no tag.
    let ours = |f: &[u8]| -> bool {
        let (et, ip) = if f[12..14] == [0x81, 0x00] {
            (&f[16..18], 18)
        } else {
            (&f[12..14], 14)
        };
        et == [0x08, 0x00]
            && f.len() >= ip + 24
            && f[ip + 9] == 6
            && f[ip + 12..ip + 16] == [198, 18, 0, 2]
            && f[ip + 20..ip + 22] == 47300u16.to_be_bytes()
    };
    let got = recv(&capture, &ours).expect("the SYN reached the backend link");
    assert_eq!(
        (got.vlan, &got.data[12..14]),
        (None, &[0x08u8, 0x00][..]),
        "no VLAN tag on the backend link"
    );
    assert_eq!(&got.data[30..34], &[198, 18, 1, 2], "NATed to b1");
    // The backend's server answers (SYN-ACK), translated back to the VIP.
    let syn_ack = |f: &[u8]| -> bool {
        f[12..14] == [0x08, 0x00]
            && f.len() >= 54
            && f[26..30] == [198, 18, 100, 10]
            && f[36..38] == 47300u16.to_be_bytes()
            && f[47] & 0x12 == 0x12
    };
    assert!(
        recv(&client_rx, &syn_ack).is_some(),
        "the backend's SYN-ACK came back from the VIP"
    );
}

/// 1 000 000 SYNs from spoofed sources at the VIP while 20 established
/// connections wait for answers their server sends after 4 s of silence:
/// all 20 answers arrive, from the VIP. The flood churns only the table of
/// unverified flows. With the default tables (65536 verified, 65536
/// embryonic flows).
#[test]
fn syn_flood_breaks_no_established_connection() {
    syn_flood("");
}

fn syn_flood(top: &str) {
    let mut lab = start_lab_with(top);
    // b1's service port is the held server's.
    lab.servers.remove(0).stop();
    let o = failover_lab::flood::run(&lab.topo, 1_000_000).expect("the flood");
    println!("flood: {o:?}");
    let stats = Command::new(exe())
        .args(["stats", "--config"])
        .arg(&lab.config)
        .output()
        .expect("failover stats");
    println!("{}", String::from_utf8_lossy(&stats.stdout));
    assert!(o.sent >= 900_000, "the flood was sent ({})", o.sent);
    assert_eq!(
        (o.answered, o.leaked),
        (failover_lab::flood::HELD, 0),
        "established connections answered after the flood, replies leaked"
    );
}

/// The next-hop cache follows the kernel (issue 14): a backend's NIC is
/// replaced (a new MAC on the same address, and the load balancer's
/// neighbour entry updated, as a gratuitous ARP would) and the very next
/// connections reach it. Without the rtnetlink watcher that bumps the
/// cache's epoch, they would go to the old MAC for up to
/// NEXTHOP_MAX_AGE_JIFFIES (1 to 10 s) and time out: b1's kernel drops
/// frames for another MAC, while its health probes, which the kernel
/// routes, stay green.
#[test]
fn next_hops_follow_neighbour_changes() {
    let lab = start_lab();
    let ports = 47300..47310;
    assert_eq!(tally(&lab, ports.clone(), 20, "warm"), (20, 0), "b1 first");
    let new_mac = "02:00:00:00:0b:01";
    lab.topo.backends[0]
        .ip(&["link", "set", "b1", "address", new_mac])
        .expect("new MAC on b1");
    lab.topo
        .lb
        .ip(&[
            "neigh",
            "replace",
            "198.18.1.2",
            "lladdr",
            new_mac,
            "dev",
            "lb1",
            "nud",
            "reachable",
        ])
        .expect("the load balancer learns b1's new MAC");
    // The event's delivery to the daemon's watcher is microseconds away.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        tally(&lab, ports, 20, "after"),
        (20, 0),
        "every connection after the change reaches b1 at its new MAC"
    );
}
