//! Passive failure detection in the datapath, through BPF_PROG_TEST_RUN:
//! each signal, the thresholds (a single spurious RST changes nothing) and
//! the tier guard rail. Thresholds are written straight into the maps here
//! (the agent writes them from the config).

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use failover_common::{
    PassiveConfig, PassiveEvent, PassiveGuard, PassiveStats, SIG_ICMP, SIG_NO_REPLY, SIG_RST,
    SIG_SYN_RETX, STATE_DOWN, STATE_UP, map_names,
};
use failover_tests::{
    pkt::{L4, Pkt, hex, inet_checksum},
    pktlab::*,
};

const XDP_REDIRECT: u32 = 4;
const ALL: u32 = 0b1111;

/// Turns passive detection on for `svc` with `failures` within 1 s, the
/// given no-reply time, and a guard rail of `limit` per tier.
fn enable(lab: &mut Lab, svc: &str, signals: u32, failures: u32, no_reply_ms: u64, limit: u64) {
    let sl = lab
        .layout
        .services
        .iter()
        .find(|s| s.name == svc)
        .expect("service")
        .clone();
    let ebpf = lab.dp.ebpf_mut();
    let mut cfg: Array<&mut MapData, PassiveConfig> =
        Array::try_from(ebpf.map_mut(map_names::PASSIVE_CFG).expect("PASSIVE_CFG")).expect("cfg");
    cfg.set(
        sl.id,
        PassiveConfig {
            signals,
            failures,
            window_ns: 1_000_000_000,
            no_reply_ns: no_reply_ms * 1_000_000,
            down_word: STATE_DOWN,
            _pad: 0,
        },
        0,
    )
    .expect("write PASSIVE_CFG");
    let mut guard: Array<&mut MapData, PassiveGuard> = Array::try_from(
        ebpf.map_mut(map_names::PASSIVE_GUARD)
            .expect("PASSIVE_GUARD"),
    )
    .expect("guard");
    for t in 0..sl.tiers.len() as u32 {
        guard
            .set(sl.first_tier + t, PassiveGuard { limit, released: 0 }, 0)
            .expect("write PASSIVE_GUARD");
    }
}

fn state(lab: &mut Lab, svc: &str, b: &str) -> u32 {
    let id = lab.backend(svc, b);
    let a: Array<&MapData, u32> = Array::try_from(
        lab.dp
            .ebpf_mut()
            .map(map_names::BACKEND_STATE)
            .expect("BACKEND_STATE"),
    )
    .expect("state");
    a.get(&id, 0).expect("state word")
}

fn stats(lab: &mut Lab, svc: &str, b: &str) -> PassiveStats {
    let id = lab.backend(svc, b);
    let a: PerCpuArray<&MapData, PassiveStats> = PerCpuArray::try_from(
        lab.dp
            .ebpf_mut()
            .map(map_names::PASSIVE_STATS)
            .expect("PASSIVE_STATS"),
    )
    .expect("stats");
    let mut sum = PassiveStats::default();
    for s in a.get(&id, 0).expect("stats").iter() {
        for (t, v) in sum.signals.iter_mut().zip(s.signals) {
            *t += v;
        }
        sum.marked += s.marked;
        sum.suppressed += s.suppressed;
    }
    sum
}

fn events(lab: &mut Lab) -> Vec<PassiveEvent> {
    let mut rb = RingBuf::try_from(
        lab.dp
            .ebpf_mut()
            .map_mut(map_names::PASSIVE_EVENTS)
            .expect("PASSIVE_EVENTS"),
    )
    .expect("ring");
    let mut out = Vec::new();
    while let Some(item) = rb.next() {
        assert_eq!(item.len(), std::mem::size_of::<PassiveEvent>());
        let e: PassiveEvent = *bytemuck_from(&item);
        out.push(e);
    }
    out
}

fn bytemuck_from(b: &[u8]) -> &PassiveEvent {
    assert!(b.len() >= std::mem::size_of::<PassiveEvent>());
    // SAFETY: PassiveEvent is a repr(C) plain-old-data struct of integers,
    // the ring item is at least that long and 8-byte aligned (ring records
    // are 8-byte aligned).
    unsafe { &*(b.as_ptr() as *const PassiveEvent) }
}

fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
        payload: vec![],
    }
}

/// The primary's (198.18.1.2:8080) packet to the client for `port`,
/// acknowledging the client's SYN (the builder's sequence number).
fn from_primary(port: u16, flags: u8) -> Pkt {
    let mut r = Pkt::new(ip("198.18.1.2"), ip("198.18.0.2"), tcp(8080, port, flags));
    r.smac = P_MAC;
    r.dmac = LB_B_MAC;
    r.ack = 0x0102_0305;
    r
}

/// A client SYN to web (NAT, primary p) from `port`, and its verdict.
fn syn(lab: &Lab, port: u16) -> (u32, Vec<u8>) {
    lab.run(
        lab.c0,
        &from_client("198.18.0.10", L4::tcp(port, 80)).bytes(),
    )
}

#[test]
fn refused_connections_mark_the_backend_down_after_the_threshold() {
    let mut lab = Lab::new();
    enable(&mut lab, "web", 1 << SIG_RST, 3, 0, 1);
    // A single spurious RST, then an answered connection: the streak ends.
    assert_eq!(syn(&lab, 42000).0, XDP_REDIRECT);
    assert_eq!(
        lab.run(lab.b0, &from_primary(42000, 0x14).bytes()).0,
        XDP_REDIRECT
    );
    assert_eq!(syn(&lab, 42001).0, XDP_REDIRECT);
    assert_eq!(
        lab.run(lab.b0, &from_primary(42001, 0x12).bytes()).0,
        XDP_REDIRECT
    );
    // A RST inside a connection that was answered is not a refusal.
    assert_eq!(
        lab.run(lab.b0, &from_primary(42001, 0x14).bytes()).0,
        XDP_REDIRECT
    );
    for port in [42002, 42003] {
        assert_eq!(syn(&lab, port).0, XDP_REDIRECT);
        lab.run(lab.b0, &from_primary(port, 0x14).bytes());
    }
    assert_eq!(state(&mut lab, "web", "p"), STATE_UP, "2 refusals < 3");
    assert!(events(&mut lab).is_empty());
    assert_eq!(stats(&mut lab, "web", "p").signals[SIG_RST as usize], 3);

    // The third refusal in a row crosses the threshold.
    assert_eq!(syn(&lab, 42004).0, XDP_REDIRECT);
    lab.run(lab.b0, &from_primary(42004, 0x14).bytes());
    assert_eq!(state(&mut lab, "web", "p"), STATE_DOWN);
    let ev = events(&mut lab);
    assert_eq!(ev.len(), 1, "one event: {ev:?}");
    assert_eq!(
        (
            ev[0].service_id,
            ev[0].backend_id,
            ev[0].signal,
            ev[0].count
        ),
        (
            lab.layout.services[0].id,
            lab.backend("web", "p"),
            SIG_RST,
            3
        )
    );
    assert_eq!(stats(&mut lab, "web", "p").marked, 1);
    // The next connection goes to the standby, without any probe.
    let p = from_client("198.18.0.10", L4::tcp(42005, 80));
    let (a, out) = lab.run(lab.c0, &p.bytes());
    assert_eq!(a, XDP_REDIRECT);
    assert_eq!(
        hex(&out),
        hex(&natted(&p, "198.18.1.3", 8080, S_MAC, LB_B_MAC).bytes())
    );
}

#[test]
fn the_guard_rail_refuses_marks_beyond_its_limit() {
    let mut lab = Lab::new();
    enable(&mut lab, "web", ALL, 1, 1000, 0);
    assert_eq!(syn(&lab, 43000).0, XDP_REDIRECT);
    lab.run(lab.b0, &from_primary(43000, 0x14).bytes());
    assert_eq!(state(&mut lab, "web", "p"), STATE_UP, "limit 0: never");
    let s = stats(&mut lab, "web", "p");
    assert_eq!(
        (s.signals[SIG_RST as usize], s.marked, s.suppressed),
        (1, 0, 1)
    );
    assert!(events(&mut lab).is_empty());

    // With room for one, the mark is taken.
    enable(&mut lab, "web", ALL, 1, 1000, 1);
    assert_eq!(syn(&lab, 43001).0, XDP_REDIRECT);
    lab.run(lab.b0, &from_primary(43001, 0x14).bytes());
    assert_eq!(state(&mut lab, "web", "p"), STATE_DOWN);
    assert_eq!(events(&mut lab).len(), 1);
}

#[test]
fn retransmitted_syns_of_a_silent_backend_mark_it_down() {
    let mut lab = Lab::new();
    // web-dsr: replies never come through us; only the client is seen.
    enable(&mut lab, "web-dsr", 1 << SIG_SYN_RETX, 2, 0, 1);
    let s = from_client("198.18.0.11", L4::tcp(44000, 80)).bytes();
    // A completed handshake (the client's ACK) is a success.
    let ack = from_client("198.18.0.11", tcp(44001, 80, 0x10)).bytes();
    let s2 = from_client("198.18.0.11", L4::tcp(44001, 80)).bytes();
    assert_eq!(lab.run(lab.c0, &s2).0, XDP_REDIRECT);
    assert_eq!(lab.run(lab.c0, &ack).0, XDP_REDIRECT);
    // Retransmissions count when paced as a TCP stack paces them (the
    // clock moves 1 s between them); one sent at once counts for nothing.
    let mut clock = 1_000_000;
    lab.dp.set_clock(clock).unwrap();
    assert_eq!(lab.run(lab.c0, &s).0, XDP_REDIRECT);
    assert_eq!(lab.run(lab.c0, &s).0, XDP_REDIRECT, "at once: no evidence");
    assert_eq!(
        stats(&mut lab, "web-dsr", "p").signals[SIG_SYN_RETX as usize],
        0
    );
    clock += 1000;
    lab.dp.set_clock(clock).unwrap();
    assert_eq!(lab.run(lab.c0, &s).0, XDP_REDIRECT, "first retransmission");
    assert_eq!(state(&mut lab, "web-dsr", "p"), STATE_UP);
    clock += 1000;
    lab.dp.set_clock(clock).unwrap();
    assert_eq!(lab.run(lab.c0, &s).0, XDP_REDIRECT, "second retransmission");
    assert_eq!(state(&mut lab, "web-dsr", "p"), STATE_DOWN);
    let ev = events(&mut lab);
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].signal, ev[0].count), (SIG_SYN_RETX, 2));
    // The next retransmission finds no backend (the service has one).
    let (a, _) = lab.run(lab.c0, &s);
    assert_ne!(a, XDP_REDIRECT);
}

#[test]
fn new_flows_without_replies_mark_a_nat_backend_down() {
    let mut lab = Lab::new();
    enable(&mut lab, "web", 1 << SIG_NO_REPLY, 3, 50, 1);
    // Answered flows keep the count at zero.
    for port in 45000..45005 {
        assert_eq!(syn(&lab, port).0, XDP_REDIRECT);
        lab.run(lab.b0, &from_primary(port, 0x12).bytes());
    }
    assert_eq!(state(&mut lab, "web", "p"), STATE_UP);
    // Three unanswered, but within 50 ms of the first: not yet.
    for port in 45010..45013 {
        assert_eq!(syn(&lab, port).0, XDP_REDIRECT);
    }
    assert_eq!(state(&mut lab, "web", "p"), STATE_UP);
    std::thread::sleep(std::time::Duration::from_millis(60));
    assert_eq!(syn(&lab, 45013).0, XDP_REDIRECT);
    assert_eq!(state(&mut lab, "web", "p"), STATE_DOWN);
    let ev = events(&mut lab);
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].signal, ev[0].count), (SIG_NO_REPLY, 4));
}

/// An ICMP port unreachable from the primary about the client's flow.
fn icmp_unreachable(port: u16) -> Vec<u8> {
    let quoted = natted(
        &from_client("198.18.0.10", L4::tcp(port, 80)),
        "198.18.1.2",
        8080,
        P_MAC,
        LB_B_MAC,
    )
    .bytes();
    let inner = &quoted[14..14 + 20 + 8];
    let mut icmp = vec![3u8, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(inner);
    let c = inet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45u8, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
    ip.extend_from_slice(&[198, 18, 1, 2, 198, 18, 0, 2]);
    let total = (20 + icmp.len()) as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let c = inet_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&LB_B_MAC);
    f.extend_from_slice(&P_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

#[test]
fn icmp_unreachable_about_a_backend_flow_marks_it_down() {
    let mut lab = Lab::new();
    enable(&mut lab, "web", 1 << SIG_ICMP, 1, 0, 1);
    // About a flow we never sent: no signal (the error itself is
    // translated to the client, as a reply of an untracked flow is).
    let unknown = icmp_unreachable(46999);
    let (a, _) = lab.run(lab.b0, &unknown);
    assert_eq!(a, XDP_REDIRECT);
    assert_eq!(state(&mut lab, "web", "p"), STATE_UP);
    // About a flow to the primary: marked down, the error sent on to the
    // client (translated: see the packet test of ICMP errors).
    assert_eq!(syn(&lab, 46000).0, XDP_REDIRECT);
    let e = icmp_unreachable(46000);
    let (a, _) = lab.run(lab.b0, &e);
    assert_eq!(a, XDP_REDIRECT);
    assert_eq!(state(&mut lab, "web", "p"), STATE_DOWN);
    let ev = events(&mut lab);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].signal, SIG_ICMP);
}

/// What an off-path sender can make counts for nothing: RSTs the backend
/// sends to bare ACKs or that do not answer the SYN, SYN retransmissions
/// with a bad checksum, ICMP errors from the client's side or quoting
/// another sequence number.
#[test]
fn forged_signals_count_for_nothing() {
    let mut lab = Lab::new();
    // Every signal but no-reply: the handshakes here are left unanswered on
    // purpose, which no-reply rightly counts.
    let signals = ALL & !(1 << SIG_NO_REPLY);
    enable(&mut lab, "web", signals, 1, 0, 1);
    enable(&mut lab, "web-dsr", signals, 1, 0, 1);
    // A bare ACK to a new tuple: the backend answers with a RST.
    let ack = from_client("198.18.0.10", tcp(47000, 80, 0x10)).bytes();
    assert_eq!(lab.run(lab.c0, &ack).0, XDP_REDIRECT);
    let mut r = from_primary(47000, 0x04);
    r.ack = 0;
    assert_eq!(lab.run(lab.b0, &r.bytes()).0, XDP_REDIRECT);
    // A RST that does not acknowledge the SYN we forwarded.
    assert_eq!(syn(&lab, 47001).0, XDP_REDIRECT);
    let mut r = from_primary(47001, 0x14);
    r.ack = 0x0102_0399;
    assert_eq!(lab.run(lab.b0, &r.bytes()).0, XDP_REDIRECT);
    // SYN retransmissions with a bad TCP checksum (DSR: only the client is
    // seen, paced as a TCP stack would: only the checksum disqualifies them).
    let mut bad = from_client("198.18.0.11", L4::tcp(47002, 80)).bytes();
    bad[50] ^= 0xff;
    for k in 0..4 {
        lab.dp.set_clock(1_000_000 + k * 1000).unwrap();
        assert_eq!(lab.run(lab.c0, &bad).0, XDP_REDIRECT);
    }
    // And valid SYNs repeated at once (before any answer could be back).
    let quick = from_client("198.18.0.11", L4::tcp(47004, 80)).bytes();
    for _ in 0..4 {
        assert_eq!(lab.run(lab.c0, &quick).0, XDP_REDIRECT);
    }
    // An ICMP error about a real unanswered handshake, but sent from the
    // client's side, and one quoting another sequence number.
    assert_eq!(syn(&lab, 47003).0, XDP_REDIRECT);
    let mut from_client_side = icmp_unreachable(47003);
    from_client_side[0..6].copy_from_slice(&failover_tests::pktlab::LB_C_MAC);
    lab.run(lab.c0, &from_client_side);
    let mut other_seq = icmp_unreachable(47003);
    // Ethernet 14 + IP 20 + ICMP 8 + quoted IP 20 + ports 4: the sequence.
    other_seq[66] ^= 0x01;
    lab.run(lab.b0, &other_seq);
    for (svc, b) in [("web", "p"), ("web-dsr", "p")] {
        assert_eq!(state(&mut lab, svc, b), STATE_UP, "{svc}/{b} not marked");
        let st = stats(&mut lab, svc, b);
        assert_eq!((st.signals, st.marked), ([0; 4], 0), "{svc}/{b}: no signal");
    }
    assert!(events(&mut lab).is_empty());
    // The same ICMP error from the backend's side, quoting the SYN, counts.
    let e = icmp_unreachable(47003);
    lab.run(lab.b0, &e);
    assert_eq!(state(&mut lab, "web", "p"), STATE_DOWN);
}
