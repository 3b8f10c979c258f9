//! `cargo xtask fuzz`: the packet mutation fuzzer. Mutants of valid VIP and
//! non-VIP packets (`failover_tests::fuzz`) run through the loaded XDP
//! program with BPF_PROG_TEST_RUN in the packet-test lab (`pktlab::Lab`);
//! every output is judged by the independent model in `fuzz.rs`, and the
//! per-CPU reason counters are compared with the model batch by batch.
//! Backend states change every `--state-every` packets.
//!
//! Everything is derived from `--seed`: rerunning with the same seed and
//! `--packets` (one more than the failing iteration is enough) replays the
//! same packets, states and flows. `--batch 1` reads the counters after
//! every packet (slow) to name the packet behind a counter mismatch.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::maps::{HashMap as BpfHashMap, MapData, MapError};
use failover_common::{
    FlowKey, FlowValue, REASON_COUNT, Reason, STATE_DISABLED, STATE_DOWN, STATE_DOWN_RESET,
    STATE_DRAINING, STATE_UP, map_names,
};
use failover_tests::{
    fuzz::{self, After, Before, Case, Mask, Model, Rng, Side},
    pkt::hex,
    pktlab::{CONFIG, Lab},
};
use failover_user::config;
use serde_json::{Value, json};

struct Opts {
    packets: u64,
    seed: u64,
    out: PathBuf,
    state_every: u64,
    batch: usize,
}

const USAGE: &str =
    "failover-fuzz [--packets N] [--seed S] [--state-every K] [--batch B] [--out FILE]";

fn parse_args() -> anyhow::Result<Opts> {
    let mut o = Opts {
        packets: 10_000_000,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        out: PathBuf::from("target/fuzz/packets.json"),
        state_every: 1000,
        batch: 4096,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--packets" => o.packets = parse_num(&value("--packets")?)?,
            "--seed" => o.seed = parse_num(&value("--seed")?)?,
            "--state-every" => o.state_every = parse_num(&value("--state-every")?)?,
            "--batch" => o.batch = parse_num::<usize>(&value("--batch")?)?.max(1),
            "--out" => o.out = PathBuf::from(value("--out")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\nusage: {USAGE}"),
        }
    }
    Ok(o)
}

/// A number, with `_` separators allowed (`10_000_000`).
fn parse_num<T: std::str::FromStr>(s: &str) -> anyhow::Result<T> {
    s.replace('_', "")
        .parse()
        .map_err(|_| anyhow::anyhow!("not a number: {s:?}"))
}

const ACTIONS: [&str; 5] = [
    "XDP_ABORTED",
    "XDP_DROP",
    "XDP_PASS",
    "XDP_TX",
    "XDP_REDIRECT",
];

/// Violations printed and kept in the report in full (the rest counted).
const KEEP: usize = 20;

#[derive(Default)]
struct Stats {
    actions: [u64; 6],
    classes: BTreeMap<&'static str, u64>,
    mutations: BTreeMap<&'static str, u64>,
    refused: u64,
    state_changes: u64,
    violations: Vec<Value>,
    violation_count: u64,
    by_invariant: [u64; 5],
}

impl Stats {
    fn violation(&mut self, invariant: u8, v: Value) {
        self.violation_count += 1;
        self.by_invariant[usize::from(invariant.min(4))] += 1;
        if self.violations.len() < KEEP {
            eprintln!("VIOLATION of invariant {invariant}: {v:#}");
            self.violations.push(v);
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let o = parse_args()?;
    let cfg = config::parse(CONFIG, "fuzz").context("the lab config")?;
    let mut lab = Lab::new();
    let model = Model::new(&cfg, &lab.layout, lab.c0, lab.b0);
    // The backend states as the maps hold them (the config's initial ones),
    // then as the fuzzer writes them.
    let mut states: HashMap<u32, u32> = HashMap::new();
    for (s, sl) in cfg.services.iter().zip(&lab.layout.services) {
        for (b, bl) in s.tiers.iter().flatten().zip(sl.tiers.iter().flatten()) {
            states.insert(bl.id, b.state.word());
        }
    }
    let backends = model.backends();
    let seeds = fuzz::seeds();
    println!(
        "fuzz: {} packets, seed {}, {} seed packets, backend state change every {} packets, counters checked every {} packets",
        o.packets,
        o.seed,
        seeds.len(),
        o.state_every,
        o.batch
    );

    let mut st = Stats::default();
    let first = lab.dp.reason_counts()?;
    let mut before = first.clone();
    let mut batch: Vec<Mask> = Vec::with_capacity(o.batch);
    let mut batch_start = 0u64;
    let all: Mask = (1 << REASON_COUNT) - 1;
    let started = Instant::now();
    let mut last_progress = Instant::now();
    for i in 0..o.packets {
        if o.state_every > 0 && i > 0 && i % o.state_every == 0 {
            let mut r = Rng::for_iteration(o.seed ^ 0x5eed_5eed, i);
            let (id, _) = r.pick(&backends);
            let w = *r.pick(&[
                STATE_UP,
                STATE_UP,
                STATE_UP,
                STATE_DOWN,
                STATE_DRAINING,
                STATE_DISABLED,
                STATE_DOWN_RESET,
            ]);
            lab.dp.set_state(*id, w)?;
            states.insert(*id, w);
            st.state_changes += 1;
        }
        // The seeds run untouched first (they open the flows replies need).
        let case = if (i as usize) < seeds.len() {
            let s = &seeds[i as usize];
            Case {
                frame: s.frame.clone(),
                seed: i as usize,
                from_backend: s.from_backend,
                mutations: Vec::new(),
            }
        } else {
            fuzz::make_case(&seeds, &mut Rng::for_iteration(o.seed, i))
        };
        for m in &case.mutations {
            *st.mutations.entry(m).or_default() += 1;
        }
        let side = if case.from_backend {
            Side::Backend
        } else {
            Side::Client
        };
        let pre = model.prepare(&case.frame, side);
        let tables = tables_before(&mut lab, &pre)?;
        let (action, out) = match lab.try_run(model.ifindex(side), &case.frame) {
            Ok(r) => r,
            Err(e) => {
                st.refused += 1;
                if st.refused <= 3 {
                    eprintln!(
                        "fuzz: the kernel refused iteration {i} ({} bytes): {e:#}",
                        case.frame.len()
                    );
                }
                continue;
            }
        };
        st.actions[(action as usize).min(5)] += 1;
        let state = |b: u32| states.get(&b).copied().unwrap_or(STATE_DOWN);
        let judged = model
            .judge(&case.frame, &pre, &tables, &state, action, &out)
            .and_then(|j| {
                let after = tables_after(&mut lab, &pre)?;
                model.check_tables(&pre, &tables, &after).map(|()| j)
            });
        match judged {
            Ok(j) => {
                *st.classes.entry(j.class).or_default() += 1;
                batch.push(j.reasons);
            }
            Err(v) => {
                batch.push(all);
                st.violation(
                    v.invariant,
                    json!({
                        "iteration": i,
                        "invariant": v.invariant,
                        "what": v.what,
                        "seed_packet": seeds[case.seed].name,
                        "mutations": case.mutations,
                        "ingress": if case.from_backend { "b0" } else { "c0" },
                        "conntrack_before": tables.conntrack.map(flow_json),
                        "embryonic_before": tables.embryonic.map(flow_json),
                        "direct_before": tables.direct,
                        "input": hex(&case.frame),
                        "action": action,
                        "output": hex(&out),
                        "reproduce": format!("cargo xtask fuzz --seed {} --packets {}", o.seed, i + 1),
                    }),
                );
            }
        }
        if batch.len() >= o.batch || i + 1 == o.packets {
            let after = lab.dp.reason_counts()?;
            let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            if let Err(v) = fuzz::check_counters(&batch, &delta) {
                st.violation(
                    v.invariant,
                    json!({
                        "iterations": [batch_start, i],
                        "invariant": v.invariant,
                        "what": v.what,
                        "reproduce": format!(
                            "cargo xtask fuzz --seed {} --packets {} --batch 1",
                            o.seed,
                            i + 1
                        ),
                    }),
                );
            }
            before = after;
            batch.clear();
            batch_start = i + 1;
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            let s = started.elapsed().as_secs_f64();
            println!(
                "fuzz: {} packets in {s:.0} s ({:.0}/s), {} violations",
                i + 1,
                (i + 1) as f64 / s,
                st.violation_count
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let last = lab.dp.reason_counts()?;
    let reasons: BTreeMap<&str, u64> = Reason::ALL
        .iter()
        .map(|r| (r.name(), last[*r as usize] - first[*r as usize]))
        .collect();
    let actions: BTreeMap<&str, u64> = ACTIONS
        .iter()
        .enumerate()
        .map(|(i, a)| (*a, st.actions[i]))
        .chain(std::iter::once(("other", st.actions[5])))
        .collect();
    let run = o.packets - st.refused;
    let report = json!({
        "seed": o.seed,
        "packets": run,
        "refused_by_kernel": st.refused,
        "seconds": secs,
        "packets_per_second": run as f64 / secs,
        "state_changes": st.state_changes,
        "counter_batch": o.batch,
        "actions": actions,
        "reasons": reasons,
        "classes": st.classes,
        "mutations": st.mutations,
        "violation_count": st.violation_count,
        "violations_by_invariant": {
            "1_never_aborted": st.by_invariant[1],
            "2_non_vip_untouched": st.by_invariant[2],
            "3_forwarded_correctly": st.by_invariant[3],
            "4_documented_reason": st.by_invariant[4],
        },
        "violations": st.violations,
        "reproduce": format!("cargo xtask fuzz --seed {} --packets {}", o.seed, o.packets),
    });
    if let Some(dir) = o.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&o.out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", o.out.display()))?;

    println!(
        "fuzz: {run} packets in {secs:.1} s ({:.0} packets/s), seed {}, {} backend state changes",
        run as f64 / secs,
        o.seed,
        st.state_changes
    );
    println!("fuzz: actions: {}", fmt_map(&actions));
    println!("fuzz: reasons: {}", fmt_map(&reasons));
    println!("fuzz: classes: {}", fmt_map(&st.classes));
    println!("fuzz: report in {}", o.out.display());
    if st.refused > 0 {
        println!(
            "fuzz: {} frames refused by the kernel (not run)",
            st.refused
        );
    }
    if st.violation_count > 0 {
        eprintln!(
            "fuzz: FAILED: {} violations (1: {}, 2: {}, 3: {}, 4: {}); reproduce with `cargo xtask fuzz --seed {} --packets N`",
            st.violation_count,
            st.by_invariant[1],
            st.by_invariant[2],
            st.by_invariant[3],
            st.by_invariant[4],
            o.seed
        );
        return Ok(ExitCode::FAILURE);
    }
    println!("fuzz: ok, no invariant violated");
    Ok(ExitCode::SUCCESS)
}

/// What `CONNTRACK`, `EMBRYONIC` and `DIRECT` hold for the packet's flow
/// before it runs.
fn tables_before(lab: &mut Lab, pre: &fuzz::Pre) -> anyhow::Result<Before> {
    let mut b = Before::default();
    if let Some(k) = &pre.flow {
        b.conntrack = lab.dp.flow_in(map_names::CONNTRACK, k)?;
        b.embryonic = lab.dp.flow_in(map_names::EMBRYONIC, k)?;
    }
    if let Some(k) = &pre.direct {
        b.direct = direct_has(lab, k)?;
    }
    Ok(b)
}

/// What the tables hold after the packet ran (see `fuzz::After`). A map
/// read that fails is reported as a violation of invariant 4.
fn tables_after(lab: &mut Lab, pre: &fuzz::Pre) -> Result<After, fuzz::Violation> {
    let read = |lab: &mut Lab| -> anyhow::Result<After> {
        let mut a = After::default();
        if let Some(k) = &pre.flow {
            a.conntrack = lab.dp.flow_in(map_names::CONNTRACK, k)?;
            a.embryonic = lab.dp.flow_in(map_names::EMBRYONIC, k)?;
        }
        if let Some((dk, gone)) = &pre.direct_syn {
            a.direct_recorded = direct_has(lab, dk)?;
            a.gone_conntrack = lab.dp.flow_in(map_names::CONNTRACK, gone)?.is_some();
            a.gone_embryonic = lab.dp.flow_in(map_names::EMBRYONIC, gone)?.is_some();
        }
        Ok(a)
    };
    read(lab).map_err(|e| fuzz::Violation {
        invariant: 4,
        what: format!("reading the flow tables: {e:#}"),
    })
}

fn direct_has(lab: &mut Lab, k: &FlowKey) -> anyhow::Result<bool> {
    let map = lab
        .dp
        .ebpf_mut()
        .map(map_names::DIRECT)
        .context("no DIRECT map")?;
    let direct: BpfHashMap<&MapData, FlowKey, u32> = BpfHashMap::try_from(map)?;
    match direct.get(k, 0) {
        Ok(_) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(e) => Err(e).context("reading DIRECT"),
    }
}

fn flow_json(v: FlowValue) -> Value {
    json!({
        "backend_id": v.backend_id,
        "service_id": v.service_id,
        "state": v.state,
        "flags": v.flags,
        "client_isn": v.client_isn,
        "server_isn": v.server_isn,
        "seen_ms": v.seen_ms,
        "timeout_ms": v.timeout_ms,
    })
}

fn fmt_map<K: std::fmt::Display>(m: &BTreeMap<K, u64>) -> String {
    m.iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
