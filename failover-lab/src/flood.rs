//! A SYN flood against the lab's VIP while established connections wait
//! for their answers (the namespace test and the bench's flood row): 20
//! connections to `web` on b1 each send a request, idle 1 s, then a flood
//! of spoofed SYNs reaches the load balancer; b1 answers each request once
//! the flood is over and never before 4 s of silence. Counts the answers
//! that arrive, and every packet the client sees from a backend's own
//! address (a reply leaked untranslated).

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{BACKEND_TCP_PORT, BACKENDS, Topology, raw, vip};

/// Established connections held across the flood.
pub const HELD: usize = 20;

/// What a flood did.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Spoofed SYNs sent.
    pub sent: u32,
    /// Held connections answered (of [`HELD`]).
    pub answered: usize,
    /// Packets the client received from a backend's own address.
    pub leaked: u64,
    /// How long the flood took.
    pub flood_secs: f64,
}

/// Runs the flood: `syns` spoofed SYNs (each sent twice, as a
/// retransmission: a real flood's entries are looked up again), from four
/// senders, bounded by 30 s. b1's TCP service port must be free (no lab
/// server on it); the load balancer must forward `web` to b1.
pub fn run(topo: &Topology, syns: u32) -> anyhow::Result<Outcome> {
    let over = Arc::new(AtomicBool::new(false));
    let server = held_server(topo, over.clone())?;
    let c = &topo.client;
    let to = vip(false, 80);
    let conns: Vec<TcpStream> = c.run(|| {
        (0..HELD)
            .map(|i| {
                let s = TcpStream::connect_timeout(&to, Duration::from_secs(1))
                    .with_context(|| format!("connecting to {to}"))?;
                (&s).write_all(format!("held-{i}\n").as_bytes())?;
                Ok(s)
            })
            .collect::<anyhow::Result<_>>()
    })?;
    // Leaks: anything from a backend's own address on the client's link.
    let leaked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let capture = {
        let (leaked, stop) = (leaked.clone(), stop.clone());
        let fd = c.run(|| raw::packet_socket("cl"))?;
        let backends: Vec<[u8; 4]> = BACKENDS
            .iter()
            .filter_map(|(v4, _)| v4.parse::<std::net::Ipv4Addr>().ok())
            .map(|a| a.octets())
            .collect();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(f) = raw::recv_frame(&fd)
                    && f.data.len() >= 34
                    && f.data[12..14] == [0x08, 0x00]
                    && backends.iter().any(|b| f.data[26..30] == *b)
                {
                    leaked.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // The connections' entries age a while before the flood.
    std::thread::sleep(Duration::from_secs(1));
    let lb_mac = raw::mac_of(&topo.lb, "lc")?;
    let client_mac = raw::mac_of(c, "cl")?;
    let parts = 4u32;
    let per = syns / 2 / parts;
    let started = Instant::now();
    let sender = |part: u32| -> anyhow::Result<u32> {
        c.run(|| {
            let tx = raw::packet_socket("cl")?;
            let mut sent = 0u32;
            for i in part * per..(part + 1) * per {
                if started.elapsed() > Duration::from_secs(30) {
                    break;
                }
                let src = [198, 19, (i >> 8) as u8, i as u8];
                let port = 1024 + (i % 60_000) as u16;
                let syn = raw::Tcp::syn(src, [198, 18, 100, 10], port, 80, i);
                let f = raw::ether(lb_mac, client_mac, None, &syn.ip());
                for _ in 0..2 {
                    // A full transmit queue refuses a frame (ENOBUFS): try
                    // again shortly, a bounded number of times.
                    for _ in 0..1000 {
                        if raw::send(&tx, &f) {
                            sent += 1;
                            break;
                        }
                        std::thread::yield_now();
                    }
                }
            }
            Ok(sent)
        })
    };
    let sent = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..parts).map(|p| sc.spawn(move || sender(p))).collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a flood sender panicked"))?
            })
            .sum::<anyhow::Result<u32>>()
    })?;
    let flood_secs = started.elapsed().as_secs_f64();
    over.store(true, Ordering::Relaxed);
    // One deadline for every answer: a broken connection answers nothing,
    // and waiting for each in turn would take minutes.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut answered = 0;
    for (i, s) in conns.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(10))))?;
        let mut line = String::new();
        if BufReader::new(s).read_line(&mut line).is_ok()
            && line.trim_end() == format!("b1 held-{i}")
        {
            answered += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = capture.join();
    let _ = server.join();
    Ok(Outcome {
        sent,
        answered,
        leaked: leaked.load(Ordering::Relaxed),
        flood_secs,
    })
}

/// b1's server on the TCP service port: answers each of [`HELD`] lines once
/// `over` is set and at least 4 s after the line came (at most 40 s).
fn held_server(
    topo: &Topology,
    over: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let listener = topo.backends[0]
        .run(|| TcpListener::bind(("::", BACKEND_TCP_PORT)).context("binding b1's held server"))?;
    // Non-blocking, with a deadline: the thread ends even if fewer
    // connections come.
    listener.set_nonblocking(true)?;
    Ok(std::thread::spawn(move || {
        let mut handlers = Vec::new();
        let until = Instant::now() + Duration::from_secs(10);
        while handlers.len() < HELD && Instant::now() < until {
            let s = match listener.accept() {
                Ok((s, _)) => s,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            };
            let _ = s.set_nonblocking(false);
            let over = over.clone();
            handlers.push(std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let mut line = String::new();
                if BufReader::new(&s).read_line(&mut line).is_err() {
                    return;
                }
                let read = Instant::now();
                while (!over.load(Ordering::Relaxed) || read.elapsed() < Duration::from_secs(4))
                    && read.elapsed() < Duration::from_secs(40)
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = (&s).write_all(format!("b1 {line}").as_bytes());
            }));
        }
        for h in handlers {
            let _ = h.join();
        }
    }))
}
