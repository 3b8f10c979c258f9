//! The program's maps. Capacities here are defaults; the daemon overrides
//! them from the config's `[limits]` when it loads the program. Types are in
//! `failover-common`, shared with userspace.

use aya_ebpf::{
    btf_maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    macros::btf_map,
};
use failover_common::{
    AddrFilter, BackendValue, Counter, EndpointKey, FlowKey, FlowTimeouts, FlowValue, NextHop,
    PassiveConfig, PassiveEvent, PassiveGuard, PassiveHealth, PassiveStats, REASON_COUNT,
    ReverseValue, ServiceStats, ServiceValue, TableValue, VipAddrKey, defaults,
};

const MAX_SERVICES: usize = defaults::MAX_SERVICES as usize;
const MAX_VIP_ADDRS: usize = defaults::MAX_VIP_ADDRS as usize;
const MAX_TIERS_TOTAL: usize = defaults::MAX_TIERS_TOTAL as usize;
const MAX_TABLES: usize = 2 * MAX_TIERS_TOTAL;
const MAX_BACKENDS: usize = defaults::MAX_BACKENDS as usize;
const CONNTRACK_ENTRIES: usize = defaults::CONNTRACK_ENTRIES as usize;
const EMBRYONIC_ENTRIES: usize = defaults::EMBRYONIC_ENTRIES as usize;
const DIRECT_ENTRIES: usize = defaults::DIRECT_ENTRIES as usize;
const DEVMAP_ENTRIES: usize = defaults::DEVMAP_ENTRIES as usize;
const REASONS: usize = REASON_COUNT as usize;
/// BPF_F_NO_PREALLOC is not used: preallocated hash maps never fail an
/// insert for lack of memory on the packet path.
const NO_FLAGS: usize = 0;

/// (VIP, port, protocol) -> service.
#[btf_map]
pub static SERVICES: HashMap<EndpointKey, ServiceValue, MAX_SERVICES, NO_FLAGS> = HashMap::new();

/// Every VIP address, so traffic to a VIP that cannot be parsed is never
/// handed to the host by mistake.
#[btf_map]
pub static VIP_ADDRS: HashMap<VipAddrKey, u32, MAX_VIP_ADDRS, NO_FLAGS> = HashMap::new();

/// Which of a tier's two tables is live (0 or 1).
#[btf_map]
pub static TIER_ACTIVE: Array<u32, MAX_TIERS_TOTAL, NO_FLAGS> = Array::new();

/// Maglev tables, two per tier: `TABLES[tier * 2 + TIER_ACTIVE[tier]]`.
#[btf_map]
pub static TABLES: Array<TableValue, MAX_TABLES, NO_FLAGS> = Array::new();

/// Backend id -> address, port, service.
#[btf_map]
pub static BACKENDS: Array<BackendValue, MAX_BACKENDS, NO_FLAGS> = Array::new();

/// Backend id -> `STATE_*` word, read on every packet.
#[btf_map]
pub static BACKEND_STATE: Array<u32, MAX_BACKENDS, NO_FLAGS> = Array::new();

/// Verified client flows -> backend: TCP flows whose handshake completed
/// (or that the backend answered mid-stream), UDP flows the backend
/// answered. Nothing an off-path sender can fake gets in, so a flood never
/// evicts these.
#[btf_map]
pub static CONNTRACK: LruHashMap<FlowKey, FlowValue, CONNTRACK_ENTRIES, NO_FLAGS> =
    LruHashMap::new();

/// Flows not verified yet: TCP handshakes in progress, UDP flows without a
/// reply (and every DSR UDP flow). A SYN flood churns this table only.
#[btf_map]
pub static EMBRYONIC: LruHashMap<FlowKey, FlowValue, EMBRYONIC_ENTRIES, NO_FLAGS> =
    LruHashMap::new();

/// Direct TCP connections through the load balancer to a NAT backend
/// endpoint (client -> backend address and port, as the client sent
/// them), recorded at their SYN: their replies are not translated. The
/// value is the `CLOCK` of the SYN.
#[btf_map]
pub static DIRECT: LruHashMap<FlowKey, u32, DIRECT_ENTRIES, NO_FLAGS> = LruHashMap::new();

/// Service id -> idle timeouts of its flows, read on state changes only.
#[btf_map]
pub static FLOW_TIMEOUTS: Array<FlowTimeouts, MAX_SERVICES, NO_FLAGS> = Array::new();

/// Programs the packet path tail-calls: `[PROG_ICMP]` handles ICMP and
/// ICMPv6 (errors about VIP flows, passive signals). A program of its own,
/// verified on its own: inlined, its paths would multiply the main
/// program's past the verifier's limit.
#[btf_map]
pub static PROGS: ProgramArray<1, NO_FLAGS> = ProgramArray::new();
pub const PROG_ICMP: u32 = 0;

/// Coarse time in milliseconds (CLOCK_MONOTONIC), written by the daemon
/// every 100 ms: flows expire on it without a clock read per packet. Zero
/// (no daemon) means flows never expire.
#[btf_map]
pub static CLOCK: Array<u64, 1, NO_FLAGS> = Array::new();

/// NAT backend endpoint -> the VIP its replies are translated back to.
#[btf_map]
pub static REVERSE: HashMap<EndpointKey, ReverseValue, MAX_BACKENDS, NO_FLAGS> = HashMap::new();

/// Backend id -> its next hop as the FIB last answered it (per CPU:
/// learned by the CPU that uses it, so it is never written torn and its
/// cache line never bounces). See `forward.rs` and `NextHop`.
#[btf_map]
pub static NEXTHOPS: PerCpuArray<NextHop, MAX_BACKENDS, NO_FLAGS> = PerCpuArray::new();

/// Slot 0: the next-hop epoch. The daemon bumps it on every netlink event
/// that may change a route or a neighbour, and on every change of the
/// egress set; a `NEXTHOPS` entry of another epoch is looked up again.
#[btf_map]
pub static NH_EPOCH: Array<u32, 1, NO_FLAGS> = Array::new();

/// Slot 0: the address filter (see `filter.rs` and `AddrFilter`).
#[btf_map]
pub static ADDR_FILTER: Array<AddrFilter, 1, NO_FLAGS> = Array::new();

/// Interfaces we may redirect to, keyed by ifindex.
#[btf_map]
pub static DEVMAP: DevMapHash<DEVMAP_ENTRIES, NO_FLAGS> = DevMapHash::new();

#[btf_map]
pub static SERVICE_STATS: PerCpuArray<ServiceStats, MAX_SERVICES, NO_FLAGS> = PerCpuArray::new();

#[btf_map]
pub static BACKEND_STATS: PerCpuArray<Counter, MAX_BACKENDS, NO_FLAGS> = PerCpuArray::new();

#[btf_map]
pub static REASON_STATS: PerCpuArray<u64, REASONS, NO_FLAGS> = PerCpuArray::new();

/// Passive failure detection (see `passive.rs`): per-service thresholds,
/// written by the agent.
#[btf_map]
pub static PASSIVE_CFG: Array<PassiveConfig, MAX_SERVICES, NO_FLAGS> = Array::new();

/// Per-backend failure streaks, shared by all CPUs.
#[btf_map]
pub static PASSIVE_HEALTH: Array<PassiveHealth, MAX_BACKENDS, NO_FLAGS> = Array::new();

/// Per-tier guard rail (limit, marks settled), written by the agent only.
#[btf_map]
pub static PASSIVE_GUARD: Array<PassiveGuard, MAX_TIERS_TOTAL, NO_FLAGS> = Array::new();

/// Per-tier count of the datapath's mark-downs, written by the datapath only.
#[btf_map]
pub static PASSIVE_MARKED: Array<u64, MAX_TIERS_TOTAL, NO_FLAGS> = Array::new();

#[btf_map]
pub static PASSIVE_STATS: PerCpuArray<PassiveStats, MAX_BACKENDS, NO_FLAGS> = PerCpuArray::new();

/// Mark-down events for the agent.
#[btf_map]
pub static PASSIVE_EVENTS: RingBuf<PassiveEvent, PASSIVE_EVENTS_BYTES, NO_FLAGS> = RingBuf::new();

const PASSIVE_EVENTS_BYTES: usize = 1 << 16;
