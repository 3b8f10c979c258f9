//! Path-MTU discovery through the VIP: a router on each side of the load
//! balancer forwards onto a narrower path (a locked route MTU), so each
//! direction of a TCP transfer meets one "fragmentation needed" / "packet
//! too big" about a NAT flow: from the client-side router to the VIP (the
//! backend's segments) and from the backend-side router to the client
//! (the client's segments). Only if the load balancer translates them to
//! the flow they quote do both ends learn the path MTU; else large DF
//! segments vanish and the transfer stalls. 1 MB each way, over IPv4 and
//! IPv6, with Linux's default DF. Needs root; fails (never skips) without.
//!
//! ```text
//!  client --c0/r0-- rc --r1/l0-- lb --l1/r2-- rb --r3/b0-- backend
//!          path MTU 1300 (v4) /            path MTU 1400
//!          1280 (v6) towards the client    towards the backend
//! ```

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context, bail};
use failover_lab::{
    DaemonProcess, Workdir, attach_pass,
    netns::{self, Netns},
};

const MB: usize = 1 << 20;
const PORT: u16 = 8080;

fn exe() -> PathBuf {
    failover_tests::failover_exe()
}

struct Net {
    client: Netns,
    rc: Netns,
    lb: Netns,
    rb: Netns,
    backend: Netns,
    // Dropped before the namespaces.
    _pass: Vec<failover_lab::PassXdp>,
}

fn build(prefix: &str) -> anyhow::Result<Net> {
    let client = Netns::new(&format!("{prefix}c"))?;
    let rc = Netns::new(&format!("{prefix}r"))?;
    let lb = Netns::new(&format!("{prefix}l"))?;
    let rb = Netns::new(&format!("{prefix}s"))?;
    let backend = Netns::new(&format!("{prefix}b"))?;
    for ns in [&client, &rc, &lb, &rb, &backend] {
        ns.sysctl("net/ipv6/conf/all/accept_dad", "0")?;
        ns.sysctl("net/ipv6/conf/default/accept_dad", "0")?;
    }
    netns::veth(&client, "c0", &rc, "r0")?;
    netns::veth(&rc, "r1", &lb, "l0")?;
    netns::veth(&lb, "l1", &rb, "r2")?;
    netns::veth(&rb, "r3", &backend, "b0")?;
    let addr = |ns: &Netns, a: &str, dev: &str| -> anyhow::Result<()> {
        if a.contains(':') {
            ns.ip(&["-6", "addr", "add", a, "dev", dev, "nodad"])?;
        } else {
            ns.ip(&["addr", "add", a, "dev", dev])?;
        }
        Ok(())
    };
    for (ns, dev, n, host) in [
        (&client, "c0", 10, 2),
        (&rc, "r0", 10, 1),
        (&rc, "r1", 11, 2),
        (&lb, "l0", 11, 1),
        (&lb, "l1", 12, 1),
        (&rb, "r2", 12, 2),
        (&rb, "r3", 13, 1),
        (&backend, "b0", 13, 2),
    ] {
        addr(ns, &format!("198.18.{n}.{host}/24"), dev)?;
        addr(ns, &format!("2001:db8:{n}::{host}/64"), dev)?;
    }
    // Specific routes only (no default route anywhere).
    let route = |ns: &Netns, to: &str, via: &str| -> anyhow::Result<()> {
        let fam = if to.contains(':') { "-6" } else { "-4" };
        ns.ip(&[fam, "route", "add", to, "via", via])?;
        Ok(())
    };
    route(&client, "198.18.100.0/24", "198.18.10.1")?;
    route(&client, "2001:db8:100::/64", "2001:db8:10::1")?;
    for (to, to6) in [
        ("198.18.100.0/24", "2001:db8:100::/64"),
        ("198.18.12.0/24", "2001:db8:12::/64"),
    ] {
        route(&rc, to, "198.18.11.1")?;
        route(&rc, to6, "2001:db8:11::1")?;
    }
    route(&lb, "198.18.10.0/24", "198.18.11.2")?;
    route(&lb, "2001:db8:10::/64", "2001:db8:11::2")?;
    route(&lb, "198.18.13.0/24", "198.18.12.2")?;
    route(&lb, "2001:db8:13::/64", "2001:db8:12::2")?;
    // Replies to clients go back through the load balancer (NAT).
    route(&rb, "198.18.10.0/24", "198.18.12.1")?;
    route(&rb, "2001:db8:10::/64", "2001:db8:12::1")?;
    route(&backend, "198.18.10.0/24", "198.18.13.1")?;
    route(&backend, "2001:db8:10::/64", "2001:db8:13::1")?;
    // The narrower paths: forwarded packets larger than a locked route MTU
    // are answered with fragmentation needed / packet too big. (IPv6: the
    // connected route's metric, else it stays ahead of the new one.)
    rc.ip(&[
        "route",
        "replace",
        "198.18.10.0/24",
        "dev",
        "r0",
        "mtu",
        "lock",
        "1300",
    ])?;
    rc.ip(&[
        "-6",
        "route",
        "replace",
        "2001:db8:10::/64",
        "dev",
        "r0",
        "metric",
        "256",
        "mtu",
        "lock",
        "1280",
    ])?;
    rb.ip(&[
        "route",
        "replace",
        "198.18.13.0/24",
        "dev",
        "r3",
        "mtu",
        "lock",
        "1400",
    ])?;
    rb.ip(&[
        "-6",
        "route",
        "replace",
        "2001:db8:13::/64",
        "dev",
        "r3",
        "metric",
        "256",
        "mtu",
        "lock",
        "1400",
    ])?;
    for ns in [&rc, &lb, &rb] {
        ns.forwarding()?;
    }
    client.run(|| netns::disable_tx_checksum("c0"))?;
    backend.run(|| netns::disable_tx_checksum("b0"))?;
    // The load balancer's veth peers accept redirected frames only with an
    // XDP program.
    let pass = vec![attach_pass(&rc, "r1")?, attach_pass(&rb, "r2")?];
    Ok(Net {
        client,
        rc,
        lb,
        rb,
        backend,
        _pass: pass,
    })
}

fn config(w: &Workdir) -> String {
    format!(
        r#"[daemon]
interfaces = ["l0", "l1"]
bpffs = "{}"
state_dir = "{}"

[[service]]
name = "web"
vip = "198.18.100.10"
port = 80
[[service.backend]]
name = "b"
address = "198.18.13.2"
port = {PORT}

[[service]]
name = "web6"
vip = "2001:db8:100::10"
port = 80
[[service.backend]]
name = "b"
address = "2001:db8:13::2"
port = {PORT}
"#,
        w.bpffs.display(),
        w.dir.join("state").display()
    )
}

/// The path MTU the kernel holds for a connected socket.
fn path_mtu(s: &TcpStream, v6: bool) -> anyhow::Result<u32> {
    let (level, name) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU)
    };
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes an int into `v`, whose size we pass.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        bail!("getsockopt: {}", std::io::Error::last_os_error());
    }
    Ok(v as u32)
}

/// Sends 1 MB to the VIP, reads 1 MB back (the server echoes a pattern),
/// within 20 s; returns the client's path MTU afterwards.
fn transfer(net: &Net, to: SocketAddr) -> anyhow::Result<u32> {
    net.client.run(|| {
        let s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .with_context(|| format!("connecting to {to}"))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.set_write_timeout(Some(Duration::from_secs(20)))?;
        let data: Vec<u8> = (0..MB).map(|i| (i % 251) as u8).collect();
        let mut w = s.try_clone()?;
        let writer = std::thread::spawn(move || w.write_all(&data));
        let mut back = vec![0u8; MB];
        (&s).read_exact(&mut back)
            .context("reading 1 MB back through the VIP")?;
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))?
            .context("writing 1 MB through the VIP")?;
        if back.iter().enumerate().any(|(i, &b)| b != (i % 239) as u8) {
            bail!("the bytes that came back are not the server's");
        }
        path_mtu(&s, to.is_ipv6())
    })
}

/// The backend's server: reads 1 MB, checks it, writes 1 MB back; one
/// connection per family, then it ends.
fn serve(backend: &Netns, v6: bool) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    let bind: IpAddr = if v6 {
        "2001:db8:13::2".parse()?
    } else {
        "198.18.13.2".parse()?
    };
    let l = backend.run(|| TcpListener::bind((bind, PORT)).context("binding the server"))?;
    Ok(std::thread::spawn(move || {
        let (s, _) = l.accept().context("accepting")?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.set_write_timeout(Some(Duration::from_secs(20)))?;
        let mut got = vec![0u8; MB];
        (&s).read_exact(&mut got).context("server reading 1 MB")?;
        if got.iter().enumerate().any(|(i, &b)| b != (i % 251) as u8) {
            bail!("the server received other bytes");
        }
        let data: Vec<u8> = (0..MB).map(|i| (i % 239) as u8).collect();
        (&s).write_all(&data).context("server writing 1 MB")?;
        // Let the client read it all before the close.
        let mut rest = [0u8; 1];
        let _ = (&s).read(&mut rest);
        Ok(())
    }))
}

#[test]
fn path_mtu_discovery_through_the_vip() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "namespace tests need root");
    let w = Workdir::new("fpm").expect("scratch dir");
    let net = build(&w.prefix).expect("building the routed topology");
    let cfg = w.dir.join("pmtu.toml");
    std::fs::write(&cfg, config(&w)).expect("writing the config");
    let mut daemon = DaemonProcess::spawn(&exe(), &net.lb.name, &cfg).expect("starting the daemon");
    daemon
        .wait_attached(&w.bpffs, &["l0", "l1"])
        .expect("daemon attached");
    for (v6, vip, client_mtu) in [
        (false, "198.18.100.10", 1400),
        (true, "2001:db8:100::10", 1400),
    ] {
        let server = serve(&net.backend, v6).expect("server");
        let to = SocketAddr::new(vip.parse().expect("vip"), 80);
        let mtu = transfer(&net, to).unwrap_or_else(|e| panic!("1 MB each way via {to}: {e:#}"));
        server
            .join()
            .expect("server thread")
            .unwrap_or_else(|e| panic!("server via {to}: {e:#}"));
        assert_eq!(
            mtu, client_mtu,
            "the client learnt the backend side's path MTU via {to}"
        );
    }
    let _ = (&net.rc, &net.rb);
    drop(daemon);
}
