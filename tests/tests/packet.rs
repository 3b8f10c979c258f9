//! Packet tests: the loaded XDP program run on packets built here, through
//! BPF_PROG_TEST_RUN, with the exact expected verdict and output bytes.
//!
//! Each test makes its own network namespace holding the load balancer's
//! two interfaces (`c0` towards clients, `b0` towards backends) with fixed
//! MACs, addresses and permanent neighbour entries, so `bpf_fib_lookup`
//! answers deterministically; the program runs with `ingress_ifindex` set to
//! one of them. Expected packets are built with full checksums computed by
//! the test's own code.

use std::net::IpAddr;

use aya::programs::{TestRun, TestRunOptions};
use failover_common::{FAMILY_V4, FlowKey, Reason, STATE_DOWN, STATE_DRAINING, STATE_UP};
use failover_tests::{
    pkt::{L4, Pkt, arp_request, hex, verify_checksums},
    pktlab::*,
};
use failover_user::{config, dataplane::addr16, layout::Layout};

struct Case {
    name: &'static str,
    ingress_backend_side: bool,
    input: Vec<u8>,
    action: u32,
    /// `None`: output must equal the input.
    output: Option<Vec<u8>>,
    reason: Reason,
}

fn check(lab: &mut Lab, c: &Case) {
    let before = lab.reasons();
    let ifindex = if c.ingress_backend_side {
        lab.b0
    } else {
        lab.c0
    };
    let (action, out) = lab.run(ifindex, &c.input);
    let want = c.output.as_ref().unwrap_or(&c.input);
    assert_eq!(action, c.action, "{}: verdict", c.name);
    assert_eq!(hex(&out), hex(want), "{}: output bytes", c.name);
    if c.output.is_some() && c.action != XDP_DROP {
        verify_checksums(&out).unwrap_or_else(|e| panic!("{}: bad {e} in output", c.name));
    }
    let after = lab.reasons();
    let r = c.reason as usize;
    assert_eq!(
        after[r],
        before[r] + 1,
        "{}: counted as {}",
        c.name,
        c.reason.name()
    );
    let total: u64 = after.iter().sum::<u64>() - before.iter().sum::<u64>();
    assert_eq!(total, 1, "{}: exactly one reason counted", c.name);
}

/// An untagged IPv4 frame with its total length set to `len` (and the
/// header checksum recomputed); the bytes stay.
fn with_ipv4_total_length(mut v: Vec<u8>, len: u16) -> Vec<u8> {
    v[16..18].copy_from_slice(&len.to_be_bytes());
    v[24..26].copy_from_slice(&[0, 0]);
    let c = failover_tests::pkt::inet_checksum(&v[14..34]);
    v[24..26].copy_from_slice(&c.to_be_bytes());
    v
}

fn truncate(mut v: Vec<u8>, n: usize) -> Vec<u8> {
    v.truncate(n);
    v
}

/// The table of stateless cases: forwarding in both modes and both
/// families, every rule for traffic that is not forwarded, and truncations
/// at every layer.
#[test]
fn packet_cases() {
    let mut lab = Lab::new();
    let mut cases = Vec::new();

    // --- forwarded, NAT ---
    let p = from_client("198.18.0.10", L4::tcp(40000, 80));
    cases.push(Case {
        name: "ipv4 tcp nat -> primary (redirect to b0)",
        ingress_backend_side: false,
        output: Some(natted(&p, "198.18.1.2", 8080, P_MAC, LB_B_MAC).bytes()),
        input: p.bytes(),
        action: XDP_REDIRECT,
        reason: Reason::FwdRedirect,
    });
    let p = from_client("198.18.0.10", L4::udp(40001, 53, b"query"));
    cases.push(Case {
        name: "ipv4 udp nat",
        ingress_backend_side: false,
        output: Some(natted(&p, "198.18.1.2", 5353, P_MAC, LB_B_MAC).bytes()),
        input: p.bytes(),
        action: XDP_REDIRECT,
        reason: Reason::FwdRedirect,
    });
    let p = from_client(
        "198.18.0.10",
        L4::Udp {
            sport: 40002,
            dport: 53,
            payload: b"q".to_vec(),
            no_checksum: true,
        },
    );
    cases.push(Case {
        name: "ipv4 udp nat without checksum stays without",
        ingress_backend_side: false,
        output: Some(natted(&p, "198.18.1.2", 5353, P_MAC, LB_B_MAC).bytes()),
        input: p.bytes(),
        action: XDP_REDIRECT,
        reason: Reason::FwdRedirect,
    });
    let p = from_client(
        "2001:db8::10",
        L4::Tcp {
            sport: 40003,
            dport: 80,
            flags: 0x18,
            payload: b"GET /".to_vec(),
        },
    );
    cases.push(Case {
        name: "ipv6 tcp nat",
        ingress_backend_side: false,
        output: Some(natted(&p, "2001:db8:1::2", 8080, P_MAC, LB_B_MAC).bytes()),
        input: p.bytes(),
        action: XDP_REDIRECT,
        reason: Reason::FwdRedirect,
    });
    let mut p = from_client("198.18.0.10", L4::tcp(40004, 80));
    p.vlan = Some(100);
    cases.push(Case {
        name: "vlan-tagged ipv4 tcp nat keeps its tag",
        ingress_backend_side: false,
        output: Some(natted(&p, "198.18.1.2", 8080, P_MAC, LB_B_MAC).bytes()),
        input: p.bytes(),
        action: XDP_REDIRECT,
        reason: Reason::FwdRedirect,
    });
    let mut p = from_client("198.18.0.10", L4::tcp(40005, 80));
    // Record-route-ish options: NOP NOP, then a 4-byte timestamp-like option
    // padded to 8 bytes.
    p.ip_options = vec![1, 1, 0x44, 4, 5, 0, 0, 0];
    cases.push(Case {
        name: "ipv4 with options nat",
        ingress_backend_side: false,
        output: Some(natted(&p, "198.18.1.2", 8080, P_MAC, LB_B_MAC).bytes()),
        input: p.bytes(),
        action: XDP_REDIRECT,
        reason: Reason::FwdRedirect,
    });
    let mut p = from_client("2001:db8::10", L4::tcp(40006, 80));
    p.v6_dstopts = true;
    cases.push(Case {
        name: "ipv6 with a destination-options header nat",
        ingress_backend_side: false,
        output: Some(natted(&p, "2001:db8:1::2", 8080, P_MAC, LB_B_MAC).bytes()),
        input: p.bytes(),
        action: XDP_REDIRECT,
        reason: Reason::FwdRedirect,
    });

    // --- forwarded, DSR: only MACs change ---
    let p = from_client("198.18.0.11", L4::tcp(40010, 80));
    let mut e = p.clone();
    e.dmac = P_MAC;
    e.smac = LB_B_MAC;
    cases.push(Case {
        name: "ipv4 tcp dsr",
        ingress_backend_side: false,
        output: Some(e.bytes()),
        input: p.bytes(),
        action: XDP_REDIRECT,
        reason: Reason::FwdRedirect,
    });
    let p = from_client("198.18.0.11", L4::udp(40011, 53, b"q"));
    let mut e = p.clone();
    e.dmac = S_MAC;
    e.smac = LB_B_MAC;
    cases.push(Case {
        name: "ipv4 udp dsr",
        ingress_backend_side: false,
        output: Some(e.bytes()),
        input: p.bytes(),
        action: XDP_REDIRECT,
        reason: Reason::FwdRedirect,
    });
    let p = from_client("198.18.0.15", L4::tcp(40012, 80));
    let mut e = p.clone();
    e.dmac = Q_MAC;
    e.smac = LB_C_MAC;
    cases.push(Case {
        name: "dsr to a backend on the ingress segment uses XDP_TX",
        ingress_backend_side: false,
        output: Some(e.bytes()),
        input: p.bytes(),
        action: XDP_TX,
        reason: Reason::FwdTx,
    });

    // --- not for a VIP: untouched ---
    let mut p = Pkt::new(ip("198.18.0.2"), ip("198.18.0.99"), L4::tcp(40020, 80));
    p.dmac = LB_C_MAC;
    cases.push(Case {
        name: "non-VIP ipv4 tcp",
        ingress_backend_side: false,
        input: p.bytes(),
        output: None,
        action: XDP_PASS,
        reason: Reason::PassNotVip,
    });
    let p = Pkt::new(
        ip("2001:db8::2"),
        ip("2001:db8::99"),
        L4::udp(40021, 53, b"x"),
    );
    cases.push(Case {
        name: "non-VIP ipv6 udp",
        ingress_backend_side: false,
        input: p.bytes(),
        output: None,
        action: XDP_PASS,
        reason: Reason::PassNotVip,
    });
    cases.push(Case {
        name: "arp",
        ingress_backend_side: false,
        input: arp_request(CLIENT_MAC, [198, 18, 0, 2], [198, 18, 0, 10]),
        output: None,
        action: XDP_PASS,
        reason: Reason::PassNonIp,
    });
    cases.push(Case {
        name: "icmp echo to a VIP goes to the host",
        ingress_backend_side: false,
        input: from_client("198.18.0.10", L4::Echo { id: 7 }).bytes(),
        output: None,
        action: XDP_PASS,
        reason: Reason::PassVipOtherPort,
    });
    cases.push(Case {
        name: "VIP address, unconfigured port",
        ingress_backend_side: false,
        input: from_client("198.18.0.10", L4::tcp(40022, 443)).bytes(),
        output: None,
        action: XDP_PASS,
        reason: Reason::PassVipOtherPort,
    });
    let mut p = Pkt::new(ip("198.18.1.2"), ip("198.18.0.2"), L4::tcp(8080, 40999));
    p.dmac = LB_B_MAC;
    cases.push(Case {
        name: "backend packet of no tracked flow (e.g. a probe reply) is untouched",
        ingress_backend_side: true,
        input: p.bytes(),
        output: None,
        action: XDP_PASS,
        reason: Reason::PassNotVip,
    });

    // --- VIP packets that are not forwarded ---
    let mut p = from_client("198.18.0.10", L4::tcp(40030, 80));
    p.frag = 0x2000; // MF
    cases.push(Case {
        name: "ipv4 fragment to a VIP",
        ingress_backend_side: false,
        input: p.bytes(),
        output: None,
        action: XDP_DROP,
        reason: Reason::DropFragment,
    });
    let mut p = from_client("2001:db8::10", L4::tcp(40031, 80));
    p.v6_fragment = true;
    cases.push(Case {
        name: "ipv6 fragment to a VIP",
        ingress_backend_side: false,
        input: p.bytes(),
        output: None,
        action: XDP_DROP,
        reason: Reason::DropFragment,
    });
    cases.push(Case {
        name: "VIP with no healthy backend, rule drop",
        ingress_backend_side: false,
        input: from_client("198.18.0.12", L4::tcp(40032, 80)).bytes(),
        output: None,
        action: XDP_DROP,
        reason: Reason::DropNoBackend,
    });
    cases.push(Case {
        name: "VIP with no healthy backend, rule pass",
        ingress_backend_side: false,
        input: from_client("198.18.0.13", L4::tcp(40033, 80)).bytes(),
        output: None,
        action: XDP_PASS,
        reason: Reason::PassNoBackend,
    });
    let mut p = from_client("198.18.0.10", L4::tcp(40034, 80));
    p.ttl = 1;
    cases.push(Case {
        name: "ttl 1: the kernel answers time-exceeded",
        ingress_backend_side: false,
        input: p.bytes(),
        output: None,
        action: XDP_PASS,
        reason: Reason::PassTtlExceeded,
    });
    let p = from_client("198.18.0.14", L4::tcp(40035, 80));
    let mut e = p.clone();
    e.dst = ip("198.18.1.9");
    e.l4.set_ports(40035, 8080);
    cases.push(Case {
        name: "nat with no neighbour yet: rewritten, handed to the kernel",
        ingress_backend_side: false,
        output: Some(e.bytes()),
        input: p.bytes(),
        action: XDP_PASS,
        reason: Reason::PassNoNeigh,
    });

    // --- truncations at every layer ---
    let v4 = from_client("198.18.0.10", L4::tcp(40040, 80)).bytes();
    let v6 = from_client("2001:db8::10", L4::tcp(40041, 80)).bytes();
    let v4u = from_client("198.18.0.10", L4::udp(40042, 53, b"")).bytes();
    let mut vl = from_client("198.18.0.10", L4::tcp(40043, 80));
    vl.vlan = Some(7);
    let vl = vl.bytes();
    for (name, input, action, reason) in [
        // (The kernel refuses test frames shorter than an Ethernet header, as
        // no driver hands XDP one.)
        (
            "ethernet header only, ethertype ipv4",
            truncate(v4.clone(), 14),
            XDP_PASS,
            Reason::PassMalformed,
        ),
        (
            "truncated vlan tag",
            truncate(vl.clone(), 15),
            XDP_PASS,
            Reason::PassNonIp,
        ),
        (
            "ipv4 header cut before the destination",
            truncate(v4.clone(), 14 + 16),
            XDP_PASS,
            Reason::PassMalformed,
        ),
        (
            "ipv4 header cut inside the destination",
            truncate(v4.clone(), 14 + 19),
            XDP_PASS,
            Reason::PassMalformed,
        ),
        (
            "ipv4 header alone, payload missing (VIP)",
            truncate(v4.clone(), 14 + 20),
            XDP_DROP,
            Reason::DropMalformed,
        ),
        (
            "ipv4 total length beyond the frame (VIP)",
            truncate(v4.clone(), v4.len() - 1),
            XDP_DROP,
            Reason::DropMalformed,
        ),
        (
            "ipv6 header cut (destination unknown)",
            truncate(v6.clone(), 14 + 30),
            XDP_PASS,
            Reason::PassMalformed,
        ),
        (
            "ipv6 payload beyond the frame (VIP)",
            truncate(v6.clone(), v6.len() - 1),
            XDP_DROP,
            Reason::DropMalformed,
        ),
    ] {
        cases.push(Case {
            name,
            ingress_backend_side: false,
            input,
            output: None,
            action,
            reason,
        });
    }
    // L4 truncated but IP lengths consistent: shorten the IP lengths too.
    let mut tcp_cut = truncate(v4.clone(), 14 + 20 + 10);
    tcp_cut[16..18].copy_from_slice(&30u16.to_be_bytes());
    let c = failover_tests::pkt::inet_checksum(&{
        let mut h = tcp_cut[14..34].to_vec();
        h[10] = 0;
        h[11] = 0;
        h
    });
    tcp_cut[24..26].copy_from_slice(&c.to_be_bytes());
    cases.push(Case {
        name: "tcp header cut (VIP)",
        ingress_backend_side: false,
        input: tcp_cut,
        output: None,
        action: XDP_DROP,
        reason: Reason::DropMalformed,
    });
    let mut udp_cut = truncate(v4u.clone(), 14 + 20 + 4);
    udp_cut[16..18].copy_from_slice(&24u16.to_be_bytes());
    let c = failover_tests::pkt::inet_checksum(&{
        let mut h = udp_cut[14..34].to_vec();
        h[10] = 0;
        h[11] = 0;
        h
    });
    udp_cut[24..26].copy_from_slice(&c.to_be_bytes());
    cases.push(Case {
        name: "udp header cut (VIP)",
        ingress_backend_side: false,
        input: udp_cut,
        output: None,
        action: XDP_DROP,
        reason: Reason::DropMalformed,
    });
    let mut v6cut = truncate(v6.clone(), 14 + 40 + 12);
    v6cut[18..20].copy_from_slice(&12u16.to_be_bytes());
    cases.push(Case {
        name: "ipv6 tcp header cut (VIP)",
        ingress_backend_side: false,
        input: v6cut,
        output: None,
        action: XDP_DROP,
        reason: Reason::DropMalformed,
    });
    let mut bad_ihl = v4.clone();
    bad_ihl[14] = 0x44; // IHL 4 < 5
    cases.push(Case {
        name: "ipv4 ihl below 5 (VIP)",
        ingress_backend_side: false,
        input: bad_ihl,
        output: None,
        action: XDP_DROP,
        reason: Reason::DropMalformed,
    });

    // --- headers in the bytes after the IP packet (found by the fuzzer):
    // a short IP packet in a padded frame (Ethernet pads to 60 bytes) must
    // not have its TCP/UDP or extension header read from the padding. These
    // were forwarded, with the port and checksum written into the padding.
    let mut padded = with_ipv4_total_length(v4.clone(), 20 + 10);
    padded.resize(60, 0);
    cases.push(Case {
        name: "ipv4 tcp header past the total length, in padding (VIP)",
        ingress_backend_side: false,
        input: padded,
        output: None,
        action: XDP_DROP,
        reason: Reason::DropMalformed,
    });
    let mut padded = with_ipv4_total_length(v4u.clone(), 20 + 4);
    padded.resize(60, 0);
    cases.push(Case {
        name: "ipv4 udp header past the total length, in padding (VIP)",
        ingress_backend_side: false,
        input: padded,
        output: None,
        action: XDP_DROP,
        reason: Reason::DropMalformed,
    });
    let mut v6pad = v6.clone();
    v6pad[18..20].copy_from_slice(&12u16.to_be_bytes());
    cases.push(Case {
        name: "ipv6 tcp header past the payload length (VIP)",
        ingress_backend_side: false,
        input: v6pad,
        output: None,
        action: XDP_DROP,
        reason: Reason::DropMalformed,
    });
    let mut p = from_client("2001:db8::10", L4::tcp(40044, 80));
    p.v6_dstopts = true;
    let mut v6ext = p.bytes();
    v6ext[18..20].copy_from_slice(&0u16.to_be_bytes());
    cases.push(Case {
        name: "ipv6 extension header past the payload length (VIP)",
        ingress_backend_side: false,
        input: v6ext,
        output: None,
        action: XDP_DROP,
        reason: Reason::DropMalformed,
    });
    let mut reply = Pkt::new(ip("198.18.1.2"), ip("198.18.0.2"), L4::tcp(8080, 40045));
    reply.dmac = LB_B_MAC;
    let mut padded = with_ipv4_total_length(reply.bytes(), 20 + 12);
    padded.resize(60, 0);
    cases.push(Case {
        name: "backend packet whose tcp header is past the total length: untouched",
        ingress_backend_side: true,
        input: padded,
        output: None,
        action: XDP_PASS,
        reason: Reason::PassNotVip,
    });

    for c in &cases {
        check(&mut lab, c);
    }
    println!("{} packet cases passed", cases.len());
    assert!(cases.len() >= 30, "the table shrank: {}", cases.len());
}

fn flow_key(p: &Pkt) -> FlowKey {
    let (src, family) = addr16(p.src);
    let (dst, _) = addr16(p.dst);
    let (sport, dport, proto) = match p.l4 {
        L4::Tcp { sport, dport, .. } => (sport, dport, 6),
        L4::Udp { sport, dport, .. } => (sport, dport, 17),
        L4::Echo { .. } => panic!("no flow for echo"),
    };
    FlowKey {
        src,
        dst,
        sport: sport.to_be_bytes(),
        dport: dport.to_be_bytes(),
        proto,
        family,
        _pad: [0; 2],
    }
}

/// Conntrack: a flow stays on its backend while it is healthy, moves on its
/// next packet when its backend is marked down, and replies of a tracked
/// flow are translated back to the VIP.
#[test]
fn conntrack_failover_and_reverse_nat() {
    let mut lab = Lab::new();
    let p = from_client("198.18.0.10", L4::tcp(41000, 80));
    let key = flow_key(&p);
    assert_eq!(key.family, FAMILY_V4);

    let (a, out) = lab.run(lab.c0, &p.bytes());
    assert_eq!(a, XDP_REDIRECT);
    assert_eq!(
        hex(&out),
        hex(&natted(&p, "198.18.1.2", 8080, P_MAC, LB_B_MAC).bytes())
    );
    let ct = lab.dp.flow(&key).expect("ct").expect("flow recorded");
    assert_eq!(ct.backend_id, lab.backend("web", "p"));

    // The reply from the primary is translated back: source = VIP:80.
    let mut reply = Pkt::new(
        ip("198.18.1.2"),
        ip("198.18.0.2"),
        L4::Tcp {
            sport: 8080,
            dport: 41000,
            flags: 0x12,
            payload: vec![],
        },
    );
    reply.smac = P_MAC;
    reply.dmac = LB_B_MAC;
    let mut want = reply.clone();
    want.src = ip("198.18.0.10");
    want.l4.set_ports(80, 41000);
    want.ttl -= 1;
    want.dmac = CLIENT_MAC;
    want.smac = LB_C_MAC;
    let (a, out) = lab.run(lab.b0, &reply.bytes());
    assert_eq!(a, XDP_REDIRECT, "reply redirected to c0");
    assert_eq!(hex(&out), hex(&want.bytes()), "reverse NAT bytes");
    verify_checksums(&out).expect("reply checksums");

    // A reply from the standby for this flow is not ours (the flow is on p).
    let mut wrong = reply.clone();
    wrong.src = ip("198.18.1.3");
    wrong.smac = S_MAC;
    let (a, out) = lab.run(lab.b0, &wrong.bytes());
    assert_eq!(
        (a, hex(&out)),
        (XDP_PASS, hex(&wrong.bytes())),
        "reply of a backend the flow is not on"
    );

    // Mark the primary down: the same flow moves to the standby on its next
    // packet, and conntrack follows.
    lab.set_state("web", "p", STATE_DOWN);
    let (a, out) = lab.run(lab.c0, &p.bytes());
    assert_eq!(a, XDP_REDIRECT);
    assert_eq!(
        hex(&out),
        hex(&natted(&p, "198.18.1.3", 8080, S_MAC, LB_B_MAC).bytes()),
        "moved to standby"
    );
    assert_eq!(
        lab.dp.flow(&key).unwrap().unwrap().backend_id,
        lab.backend("web", "s")
    );

    // The primary comes back: the established flow stays on the standby
    // (it is healthy), a new flow goes to the primary.
    lab.set_state("web", "p", STATE_UP);
    let (_, out) = lab.run(lab.c0, &p.bytes());
    assert_eq!(
        hex(&out),
        hex(&natted(&p, "198.18.1.3", 8080, S_MAC, LB_B_MAC).bytes()),
        "stays on standby"
    );
    let p2 = from_client("198.18.0.10", L4::tcp(41001, 80));
    let (_, out) = lab.run(lab.c0, &p2.bytes());
    assert_eq!(
        hex(&out),
        hex(&natted(&p2, "198.18.1.2", 8080, P_MAC, LB_B_MAC).bytes()),
        "new flow to primary"
    );

    // Draining the primary: its established flow (p2) stays, a new flow goes
    // to the standby.
    lab.set_state("web", "p", STATE_DRAINING);
    let (_, out) = lab.run(lab.c0, &p2.bytes());
    assert_eq!(
        hex(&out),
        hex(&natted(&p2, "198.18.1.2", 8080, P_MAC, LB_B_MAC).bytes()),
        "draining keeps flows"
    );
    let p3 = from_client("198.18.0.10", L4::tcp(41002, 80));
    let (_, out) = lab.run(lab.c0, &p3.bytes());
    assert_eq!(
        hex(&out),
        hex(&natted(&p3, "198.18.1.3", 8080, S_MAC, LB_B_MAC).bytes()),
        "no new flows while draining"
    );

    // Both down: the service has no backend; rule drop.
    lab.set_state("web", "s", STATE_DOWN);
    lab.set_state("web", "p", STATE_DOWN);
    let (a, _) = lab.run(lab.c0, &p.bytes());
    assert_eq!(a, XDP_DROP);

    // Counters: the web service forwarded 6 client packets, 1 reply, 1 drop.
    let id = lab.layout.service("web").unwrap().id;
    let st = lab.dp.service_stats(id).unwrap();
    assert_eq!(
        (st.fwd.packets, st.reply.packets, st.dropped.packets),
        (6, 1, 1)
    );
    let len = p.bytes().len() as u64;
    assert_eq!(
        lab.dp
            .backend_stats(lab.backend("web", "p"))
            .unwrap()
            .packets,
        3
    );
    assert_eq!(
        lab.dp.backend_stats(lab.backend("web", "s")).unwrap(),
        failover_common::Counter {
            packets: 3,
            bytes: 3 * len
        }
    );
}

/// The RST the dataplane must send for client packet `p` (TCP, IPv4,
/// headers from our builder: seq 0x01020304, ack 0, id 0x1234) of a flow
/// whose backend went down with `reset`. Built byte by byte here.
fn expected_rst(p: &Pkt, payload_len: u32, flags: u8) -> Vec<u8> {
    let (IpAddr::V4(client), IpAddr::V4(vip)) = (p.src, p.dst) else {
        panic!("v4 only")
    };
    let L4::Tcp { sport, dport, .. } = p.l4 else {
        panic!("tcp only")
    };
    let (seq, ack, rflags) = if flags & 0x10 != 0 {
        (0u32, 0u32, 0x04u8)
    } else {
        (0, 0x0102_0304u32.wrapping_add(payload_len), 0x14)
    };
    let mut f = Vec::new();
    f.extend_from_slice(&p.smac);
    f.extend_from_slice(&p.dmac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 40, 0x12, 0x34, 0, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&vip.octets());
    ip.extend_from_slice(&client.octets());
    let c = failover_tests::pkt::inet_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.extend_from_slice(&[0x50, rflags, 0, 0, 0, 0, 0, 0]);
    let mut pseudo = vip.octets().to_vec();
    pseudo.extend_from_slice(&client.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&tcp);
    let c = failover_tests::pkt::inet_checksum(&pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

/// `flows_on_down = "reset"`: the next non-SYN TCP packet of a flow on a
/// backend marked down-reset is answered with a RST (exact bytes); a SYN
/// on the same tuple opens a new flow on a healthy backend; UDP moves.
#[test]
fn reset_flows_of_a_down_backend() {
    let mut lab = Lab::new();
    let data = |sport: u16, flags: u8, payload: &[u8]| {
        from_client(
            "198.18.0.10",
            L4::Tcp {
                sport,
                dport: 80,
                flags,
                payload: payload.to_vec(),
            },
        )
    };
    let syn = data(43000, 0x02, b"");
    let (a, _) = lab.run(lab.c0, &syn.bytes());
    assert_eq!(a, XDP_REDIRECT, "flow pinned to the primary");
    let syn2 = data(43001, 0x02, b"");
    lab.run(lab.c0, &syn2.bytes());
    lab.set_state("web", "p", failover_common::STATE_DOWN_RESET);

    let before = lab.reasons();
    let p = data(43000, 0x18, b"hello");
    let (a, out) = lab.run(lab.c0, &p.bytes());
    assert_eq!(a, XDP_TX, "answered back out of the client side");
    assert_eq!(
        hex(&out),
        hex(&expected_rst(&p, 5, 0x18)),
        "RST for an ACKing segment"
    );
    verify_checksums(&out).expect("RST checksums");
    assert_eq!(
        lab.reasons()[Reason::TxReset as usize],
        before[Reason::TxReset as usize] + 1
    );

    let p = data(43001, 0x08, b"abc");
    let (a, out) = lab.run(lab.c0, &p.bytes());
    assert_eq!(a, XDP_TX);
    assert_eq!(
        hex(&out),
        hex(&expected_rst(&p, 3, 0x08)),
        "RST|ACK for a segment without ACK"
    );

    // A SYN on the same tuple is a new connection: to the standby.
    let (a, out) = lab.run(lab.c0, &syn.bytes());
    assert_eq!(a, XDP_REDIRECT);
    assert_eq!(
        hex(&out),
        hex(&natted(&syn, "198.18.1.3", 8080, S_MAC, LB_B_MAC).bytes())
    );
    // A RST from the client is not answered with a RST.
    let r = data(43001, 0x04, b"");
    let (a, _) = lab.run(lab.c0, &r.bytes());
    assert_ne!(a, XDP_TX);
}

/// Active-passive across tiers with active-active inside a tier: flows
/// spread over the tier's healthy members by the Maglev table.
#[test]
fn tiers_and_maglev_spread() {
    let mut lab = Lab::new();
    let cfg = config::parse(
        r#"
[[service]]
name = "aa"
vip = "198.18.0.20"
port = 80
[[service.backend]]
name = "p"
address = "198.18.1.2"
[[service.backend]]
name = "s"
address = "198.18.1.3"
[[service.backend]]
name = "standby"
address = "2001:db8:1::2"
tier = 1
"#,
        "t",
    );
    // A v6 backend under a v4 VIP is refused by validation.
    assert!(cfg.is_err());
    let cfg = config::parse(
        r#"
[[service]]
name = "aa"
vip = "198.18.0.20"
port = 80
[[service.backend]]
name = "p"
address = "198.18.1.2"
[[service.backend]]
name = "s"
address = "198.18.1.3"
[[service.backend]]
name = "q"
address = "198.18.0.5"
tier = 1
"#,
        "t",
    )
    .expect("valid");
    let layout = Layout::assign(&cfg, None).unwrap();
    lab.dp
        .apply(&cfg, &layout, &Default::default())
        .expect("apply");
    lab.layout = layout;
    let mut counts = [0u32; 3];
    let n = 400u16;
    for i in 0..n {
        let p = from_client("198.18.0.20", L4::tcp(30000 + i, 80));
        let (a, out) = lab.run(lab.c0, &p.bytes());
        assert!(a == XDP_REDIRECT || a == XDP_TX);
        let dmac: [u8; 6] = out[..6].try_into().unwrap();
        let which = [P_MAC, S_MAC, Q_MAC]
            .iter()
            .position(|m| *m == dmac)
            .expect("a known backend");
        counts[which] += 1;
    }
    assert_eq!(
        counts[2], 0,
        "the standby tier takes nothing while tier 0 is healthy"
    );
    for c in &counts[..2] {
        assert!(*c > 150, "tier-0 members share flows: {counts:?}");
    }
    // Tier 0 entirely down: everything to the standby tier (same segment as
    // the client: XDP_TX).
    lab.set_state("aa", "p", STATE_DOWN);
    lab.set_state("aa", "s", STATE_DOWN);
    let p = from_client("198.18.0.20", L4::tcp(30000, 80));
    let (a, out) = lab.run(lab.c0, &p.bytes());
    assert_eq!(a, XDP_TX);
    assert_eq!(&out[..6], &Q_MAC);
    // One tier-0 member back: new flows go to it only.
    lab.set_state("aa", "s", STATE_UP);
    for i in 0..50u16 {
        let p = from_client("198.18.0.20", L4::tcp(31000 + i, 80));
        let (_, out) = lab.run(lab.c0, &p.bytes());
        assert_eq!(&out[..6], &S_MAC);
    }
}

/// BPF_PROG_TEST_RUN with `repeat` runs the program again and again on the
/// same buffer, which it rewrites in place: a NAT packet stops being a VIP
/// packet after the first run, so the repeated VIP path is measured with a
/// DSR service (only MACs change). The figures are printed beside the empty
/// XDP program's for the record; speed is for `cargo xtask bench`, never
/// asserted here. What is asserted: the verdicts stay right under repeat.
#[test]
fn per_packet_cost_beside_the_empty_program() {
    let lab = Lab::new();
    let repeat = 200_000;
    let run = |prog: &aya::programs::Xdp, frame: &[u8], want: u32| -> f64 {
        let mut ctx = Vec::new();
        for v in [0u32, frame.len() as u32, 0, lab.c0, 0, 0] {
            ctx.extend_from_slice(&v.to_ne_bytes());
        }
        let mut best = f64::MAX;
        for _ in 0..5 {
            let res = prog
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    ctx_in: Some(&ctx),
                    repeat,
                    ..TestRunOptions::default()
                })
                .expect("repeat run");
            assert_eq!(res.return_value, want);
            best = best.min(res.duration.as_nanos() as f64);
        }
        best
    };
    let mut empty =
        aya::Ebpf::load(failover_user::objects::PASS).expect("loading the empty program");
    let pass: &mut aya::programs::Xdp = empty
        .program_mut(failover_user::objects::PASS_PROGRAM)
        .unwrap()
        .try_into()
        .unwrap();
    pass.load()
        .expect("loading the empty program into the kernel");
    let vip = from_client("198.18.0.11", L4::tcp(42000, 80)).bytes();
    let other = Pkt::new(ip("198.18.0.2"), ip("198.18.0.99"), L4::tcp(42001, 80)).bytes();
    let floor = run(pass, &vip, XDP_PASS);
    let prog = lab.dp.program().unwrap();
    let non_vip = run(prog, &other, XDP_PASS);
    let vip_est = run(prog, &vip, XDP_REDIRECT);
    println!(
        "per packet (best of 5 x {repeat}): empty XDP {floor:.0} ns, non-VIP {non_vip:.0} ns ({:.1}x), VIP established flow {vip_est:.0} ns ({:.1}x)",
        non_vip / floor,
        vip_est / floor
    );
}
