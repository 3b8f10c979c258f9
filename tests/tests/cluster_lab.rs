//! The cluster lab itself (`failover-lab/src/cluster.rs`), proven without
//! the daemon's cluster code: liveness tuns made by hand and the include
//! written by hand give the router two ECMP next hops for the VIP; a
//! deleted tun, a silent drop (BFD) and a link down withdraw one; the NAT
//! return path goes through a live LB; the etcd cluster answers and
//! survives one member's control link being cut. Needs root, bird2, etcd
//! and etcdctl; fails (never skips) without them. Times are printed; the
//! bounds asserted are generous (1 s where the design expects ~60 ms).

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use failover_lab::cluster::{
    Backend, CLIENT_ADDR, ClusterLab, Member, Node, Options, VIP4, include_text,
};

fn lab(opts: Options) -> ClusterLab {
    failover_tests::require_root();
    let prefix = failover_tests::unique("fcl");
    match ClusterLab::create(&prefix, opts) {
        Ok(l) => l,
        Err(e) => panic!("creating the cluster lab: {e:#}"),
    }
}

/// What BIRD says, for a failure message.
fn dump(lab: &ClusterLab) -> String {
    let mut out = String::new();
    for c in ["show protocols", "show route all"] {
        out += &format!("router> {c}\n{}\n", lab.router_birdc(c).unwrap_or_default());
        for n in [Node::Lb1, Node::Lb2] {
            out += &format!("{n}> {c}\n{}\n", lab.birdc(n, c).unwrap_or_default());
        }
    }
    out
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// A UDP datagram from backend b1 to the client with IP TTL `ttl`: the
/// source address the client saw it from, if it arrived. The router sends
/// it to an LB (table 100), the LB (here nftables' SNAT standing in for
/// the XDP program's translation) back to the router: three forwarding
/// hops, so TTL 3 dies on the way and 4 arrives.
fn backend_to_client(lab: &ClusterLab, ttl: u32) -> Option<std::net::IpAddr> {
    let rx = lab
        .client
        .run(|| Ok(UdpSocket::bind((CLIENT_ADDR, 0))?))
        .expect("client socket");
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let to = rx.local_addr().expect("addr");
    let tx = lab
        .backend(Backend::B1)
        .run(|| Ok(UdpSocket::bind((Backend::B1.addr(), 0))?))
        .expect("backend socket");
    tx.set_ttl(ttl).expect("ttl");
    for _ in 0..3 {
        tx.send_to(b"ret", to).expect("send");
        let mut buf = [0u8; 16];
        if let Ok((_, from)) = rx.recv_from(&mut buf) {
            return Some(from.ip());
        }
    }
    None
}

/// What the XDP program does to a backend's reply, done by nftables in
/// LB `n` (source address -> VIP), so that the reply does not match the
/// router's return rule again.
fn stand_in_nat(lab: &ClusterLab, n: Node) {
    let rules = format!(
        "table ip lab_nat {{\nchain post {{\ntype nat hook postrouting priority 100\n\
         ip saddr {} ip daddr {} snat to {VIP4}\n}}\n}}\n",
        failover_lab::cluster::BACKEND_BLOCK,
        failover_lab::cluster::CLIENT_NET
    );
    failover_lab::netns::run(lab.lb(n).cmd("nft").arg(&rules)).expect("nft snat");
}

#[test]
fn bgp_ecmp_bfd_and_the_return_path() {
    let mut lab = lab(Options {
        start_etcd: false,
        ..Options::default()
    });
    let both = [Node::Lb1, Node::Lb2];
    assert!(
        lab.router_nexthops(VIP4).unwrap().is_empty(),
        "nothing announced yet"
    );
    for n in both {
        lab.fake_live(n, true).expect("tun");
        lab.write_include(n, &include_text(true)).expect("include");
    }
    let t = lab
        .wait_nexthops(VIP4, &both, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("ECMP over both LBs: {e:#}\n{}", dump(&lab)));
    println!("announced by both after {}", ms(t));
    let deadline = Instant::now() + Duration::from_secs(2);
    while lab.return_nexthops().unwrap() != both {
        assert!(
            Instant::now() < deadline,
            "return path: {:?}",
            lab.return_nexthops()
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // The NAT return path, with real packets: backend -> router (table
    // 100) -> an LB -> router -> client.
    for n in both {
        stand_in_nat(&lab, n);
    }
    let vip: std::net::IpAddr = VIP4.parse().unwrap();
    assert_eq!(
        backend_to_client(&lab, 4),
        Some(vip),
        "a backend's datagram did not reach the client through an LB"
    );
    assert_eq!(
        backend_to_client(&lab, 3),
        None,
        "a backend's datagram with TTL 3 arrived: it did not go through an LB"
    );

    // The daemon dies: its tun goes.
    lab.fake_live(Node::Lb1, false).expect("tun del");
    let t = lab
        .wait_nexthops(VIP4, &[Node::Lb2], Duration::from_secs(1))
        .expect("lb1 withdrawn when its tun goes");
    println!("tun deleted on lb1: withdrawn after {}", ms(t));
    assert_eq!(lab.return_nexthops().unwrap(), vec![Node::Lb2]);
    assert_eq!(
        backend_to_client(&lab, 4),
        Some(vip),
        "the return path via lb2"
    );
    lab.fake_live(Node::Lb1, true).expect("tun");
    let t = lab
        .wait_nexthops(VIP4, &both, Duration::from_secs(2))
        .expect("lb1 back");
    println!("tun back on lb1: announced after {}", ms(t));

    // The include says withdrawn.
    lab.write_include(Node::Lb1, &include_text(false))
        .expect("include");
    let t = lab
        .wait_nexthops(VIP4, &[Node::Lb2], Duration::from_secs(1))
        .expect("withdrawn by the include");
    println!("include disabled on lb1: withdrawn after {}", ms(t));
    assert_eq!(
        lab.return_nexthops().unwrap(),
        both,
        "the return path follows liveness, not the VIP"
    );
    lab.write_include(Node::Lb1, &include_text(true))
        .expect("include");
    lab.wait_nexthops(VIP4, &both, Duration::from_secs(2))
        .expect("lb1 back");

    // Silent drop on lb2 (carrier up): BFD.
    let start = Instant::now();
    lab.silent_drop(Node::Lb2, true).expect("drop");
    lab.wait_nexthops(VIP4, &[Node::Lb1], Duration::from_secs(1))
        .expect("BFD withdraws lb2 within 1 s");
    println!(
        "silent drop on lb2: withdrawn after {}",
        ms(start.elapsed())
    );
    assert_eq!(lab.return_nexthops().unwrap(), vec![Node::Lb1]);
    let start = Instant::now();
    lab.silent_drop(Node::Lb2, false).expect("undrop");
    lab.wait_nexthops(VIP4, &both, Duration::from_secs(10))
        .expect("lb2 back after the drop heals");
    println!(
        "silent drop on lb2 healed: announced again after {}",
        ms(start.elapsed())
    );

    // Link down on lb1.
    let start = Instant::now();
    lab.uplink(Node::Lb1, false).expect("down");
    lab.wait_nexthops(VIP4, &[Node::Lb2], Duration::from_secs(1))
        .expect("lb1 withdrawn on link down");
    println!(
        "uplink down on lb1: withdrawn after {}",
        ms(start.elapsed())
    );
    let start = Instant::now();
    lab.uplink(Node::Lb1, true).expect("up");
    lab.wait_nexthops(VIP4, &both, Duration::from_secs(10))
        .expect("lb1 back after link up");
    println!(
        "uplink up on lb1: announced again after {}",
        ms(start.elapsed())
    );

    // BIRD killed on lb2.
    let start = Instant::now();
    lab.stop_bird(Node::Lb2, libc::SIGKILL).expect("kill bird");
    lab.wait_nexthops(VIP4, &[Node::Lb1], Duration::from_secs(1))
        .expect("lb2 withdrawn when its BIRD dies");
    println!(
        "bird killed on lb2: withdrawn after {}",
        ms(start.elapsed())
    );
    lab.start_bird(Node::Lb2).expect("bird again");
    lab.wait_nexthops(VIP4, &both, Duration::from_secs(10))
        .expect("lb2 back with BIRD");
}

#[test]
fn etcd_answers_and_survives_a_cut_member() {
    let lab = lab(Options {
        start_bird: false,
        ..Options::default()
    });
    let health = lab.etcdctl(&["endpoint", "health"]).expect("etcd healthy");
    println!("{health}");
    lab.etcdctl(&["put", "/failover/lab", "one"]).expect("put");
    assert!(
        lab.etcdctl(&["get", "/failover/lab", "--print-value-only"])
            .expect("get")
            .contains("one")
    );

    // Cut lb1's control link: the others keep a quorum (after a new
    // election, if lb1's member led).
    lab.cut_etcd(Node::Lb1, true).expect("cut");
    let others = format!(
        "{},{}",
        Member::Lb(Node::Lb2).client_url(),
        Member::Witness.client_url()
    );
    let start = Instant::now();
    loop {
        match lab.etcdctl_from(Member::Witness, &others, &["put", "/failover/lab", "two"]) {
            Ok(_) => break,
            Err(e) => assert!(
                start.elapsed() < Duration::from_secs(5),
                "no write through lb2 and the witness within 5 s of the cut: {e:#}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("write after cutting lb1 off: {}", ms(start.elapsed()));
    assert!(
        lab.etcdctl(&["endpoint", "health"]).is_err(),
        "lb1's member still reachable from the witness"
    );
    // From lb1, its own member has no leader: a linearizable read fails.
    let own = Member::Lb(Node::Lb1).client_url();
    assert!(
        lab.etcdctl_from(Member::Lb(Node::Lb1), &own, &["get", "/failover/lab"])
            .is_err(),
        "lb1's member answered a linearizable read while cut off"
    );
    lab.cut_etcd(Node::Lb1, false).expect("uncut");
    lab.wait_etcd_healthy(Duration::from_secs(10))
        .expect("healthy again");
    let start = Instant::now();
    loop {
        let v = lab.etcdctl_from(
            Member::Lb(Node::Lb1),
            &own,
            &["get", "/failover/lab", "--print-value-only"],
        );
        if v.as_deref().is_ok_and(|v| v.contains("two")) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "lb1's member did not catch up: {v:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
