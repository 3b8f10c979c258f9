//! Map keys, values and constants shared by the XDP program and the
//! userspace daemon/CLI.
//!
//! Every type here is `#[repr(C)]` with explicit padding and a compile-time
//! size assertion, so that the kernel, the eBPF program and userspace agree on
//! the layout byte for byte. Addresses and ports are stored exactly as they
//! appear on the wire (network byte order, as byte arrays), so neither side
//! ever has to guess an endianness.
//!
//! The crate is `no_std` so the eBPF program can use it; the `user` feature
//! adds `aya::Pod` and `bytemuck` impls for the userspace side.
#![no_std]

pub mod csum;
pub mod hash;

/// Address family tag stored in keys (not the kernel's AF_* numbers).
pub const FAMILY_V4: u8 = 4;
/// Address family tag stored in keys.
pub const FAMILY_V6: u8 = 6;

/// IP protocol numbers used in keys.
pub const PROTO_TCP: u8 = 6;
/// IP protocol numbers used in keys.
pub const PROTO_UDP: u8 = 17;

/// Priority tiers per service (active-passive groups).
pub const MAX_TIERS: usize = 4;
/// Backends per tier (active-active members spread by the Maglev table).
pub const MAX_TIER_MEMBERS: usize = 32;
/// Compile-time capacity of one Maglev table (a prime). A service may use any
/// prime size up to this.
pub const MAX_TABLE_SIZE: usize = 65537;

/// Backend state words, stored in `BACKEND_STATE[backend_id]`. A zeroed
/// (never written) slot reads as `DOWN`, so an unknown backend is never used.
pub const STATE_DOWN: u32 = 0;
/// Healthy: takes new flows and keeps its established ones.
pub const STATE_UP: u32 = 1;
/// Keeps its established flows, takes no new ones.
pub const STATE_DRAINING: u32 = 2;
/// Administratively disabled: treated like down by the dataplane.
pub const STATE_DISABLED: u32 = 3;
/// Down, and its established TCP flows are reset: the next packet of such
/// a flow (other than a SYN) is answered with a TCP RST by the dataplane
/// itself; other flows move like `DOWN`.
pub const STATE_DOWN_RESET: u32 = 4;

/// `ServiceValue::flags`: forwarding mode in the low two bits.
pub const FLAG_MODE_MASK: u32 = 0b11;
/// NAT mode: destination address/port rewritten, replies translated back.
pub const MODE_NAT: u32 = 0;
/// DSR mode: only MAC addresses rewritten, backends hold the VIP.
pub const MODE_DSR: u32 = 1;
/// `ServiceValue::flags`: when set, a packet for a service with no usable
/// backend is passed to the host stack instead of dropped.
pub const FLAG_NO_BACKEND_PASS: u32 = 1 << 4;
/// `ServiceValue::flags`: when set, a TCP packet for a service with no
/// usable backend is answered with a RST (the client's connect fails at
/// once instead of waiting for its SYN to be retransmitted); other
/// packets are dropped.
pub const FLAG_NO_BACKEND_RESET: u32 = 1 << 5;

/// Why a packet was not forwarded (or how it was). Index into `REASON_STATS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed untouched.
    PassNonIp = 0,
    /// IP, but not addressed to a VIP and not a reply of a tracked NAT flow.
    PassNotVip = 1,
    /// Addressed to a VIP address but to no configured (port, protocol).
    PassVipOtherPort = 2,
    /// Addressed to a VIP address, but the headers are truncated or invalid.
    DropMalformed = 3,
    /// An IP fragment addressed to a VIP: ports cannot be read; dropped.
    DropFragment = 4,
    /// The service has no usable backend and its rule is `drop`.
    DropNoBackend = 5,
    /// The service has no usable backend and its rule is `pass`.
    PassNoBackend = 6,
    /// No neighbour entry for the next hop yet: handed to the kernel (NAT:
    /// already rewritten, so the kernel resolves and forwards it).
    PassNoNeigh = 7,
    /// DSR with no neighbour entry for the backend: dropped.
    DropNoNeigh = 8,
    /// The FIB lookup failed (no route, blackhole, forwarding disabled).
    DropFibFail = 9,
    /// The egress device is not in the redirect devmap: handed to the kernel.
    PassNoEgress = 10,
    /// Packet too big for the egress MTU: handed to the kernel (ICMP).
    PassFragNeeded = 11,
    /// TTL/hop limit would expire: handed to the kernel (ICMP time exceeded).
    PassTtlExceeded = 12,
    /// Internal inconsistency (a map the config promised is missing).
    DropInternal = 13,
    /// Forwarded with XDP_TX (same interface).
    FwdTx = 14,
    /// Forwarded with XDP_REDIRECT (devmap).
    FwdRedirect = 15,
    /// A reply translated back (NAT) and forwarded.
    FwdReply = 16,
    /// The IP header is truncated or invalid and its destination is not a
    /// VIP (or unknown): passed to the host untouched.
    PassMalformed = 17,
    /// A TCP flow of a backend that went down with `flows_on_down = reset`:
    /// answered with a RST (XDP_TX).
    TxReset = 18,
    /// A reply of a direct connection (not through the VIP) to a NAT
    /// backend endpoint: passed untouched.
    PassDirect = 19,
    /// A reply of a VIP flow that has no conntrack entry (evicted, expired
    /// while idle, a restarted daemon): translated back from `REVERSE`.
    FwdReplyUntracked = 20,
    /// An ICMP/ICMPv6 error about a VIP flow, translated and forwarded.
    FwdIcmp = 21,
}

/// Number of entries in `REASON_STATS`.
pub const REASON_COUNT: u32 = 22;

impl Reason {
    /// All reasons in index order.
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::PassNonIp,
        Reason::PassNotVip,
        Reason::PassVipOtherPort,
        Reason::DropMalformed,
        Reason::DropFragment,
        Reason::DropNoBackend,
        Reason::PassNoBackend,
        Reason::PassNoNeigh,
        Reason::DropNoNeigh,
        Reason::DropFibFail,
        Reason::PassNoEgress,
        Reason::PassFragNeeded,
        Reason::PassTtlExceeded,
        Reason::DropInternal,
        Reason::FwdTx,
        Reason::FwdRedirect,
        Reason::FwdReply,
        Reason::PassMalformed,
        Reason::TxReset,
        Reason::PassDirect,
        Reason::FwdReplyUntracked,
        Reason::FwdIcmp,
    ];

    /// Stable snake_case name used in CLI output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNonIp => "pass_non_ip",
            Reason::PassNotVip => "pass_not_vip",
            Reason::PassVipOtherPort => "pass_vip_other_port",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropFragment => "drop_fragment",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::PassNoBackend => "pass_no_backend",
            Reason::PassNoNeigh => "pass_no_neigh",
            Reason::DropNoNeigh => "drop_no_neigh",
            Reason::DropFibFail => "drop_fib_fail",
            Reason::PassNoEgress => "pass_no_egress",
            Reason::PassFragNeeded => "pass_frag_needed",
            Reason::PassTtlExceeded => "pass_ttl_exceeded",
            Reason::DropInternal => "drop_internal",
            Reason::FwdTx => "fwd_tx",
            Reason::FwdRedirect => "fwd_redirect",
            Reason::FwdReply => "fwd_reply",
            Reason::PassMalformed => "pass_malformed",
            Reason::TxReset => "tx_reset",
            Reason::PassDirect => "pass_direct",
            Reason::FwdReplyUntracked => "fwd_reply_untracked",
            Reason::FwdIcmp => "fwd_icmp",
        }
    }
}

/// An L4 endpoint: the key of `SERVICES` (a VIP) and of `REVERSE` (a NAT
/// backend). IPv4 addresses occupy the first four bytes, the rest is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub addr: [u8; 16],
    /// Port in network byte order.
    pub port: [u8; 2],
    pub proto: u8,
    pub family: u8,
}

/// The key of `VIP_ADDRS`: every address that carries at least one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipAddrKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// The value of `SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Index into the per-service stats and the id stored in flows.
    pub id: u32,
    /// `MODE_*` in the low bits, `FLAG_*` above.
    pub flags: u32,
    /// The service's tiers are `first_tier .. first_tier + tier_count`,
    /// highest priority first.
    pub first_tier: u32,
    pub tier_count: u32,
}

/// One Maglev lookup table of one tier. `TABLES` holds two per tier (double
/// buffering): the agent writes the inactive one whole, then flips
/// `TIER_ACTIVE[tier]` with a single 4-byte write, so a packet never sees a
/// half-written table.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TableValue {
    /// The table's prime size (entries used), `<= MAX_TABLE_SIZE`.
    pub size: u32,
    /// Members used in `members`.
    pub member_count: u32,
    /// Backend ids of the tier's members.
    pub members: [u32; MAX_TIER_MEMBERS],
    /// Maglev entries: indexes into `members`.
    pub entries: [u16; MAX_TABLE_SIZE],
    pub _pad: [u8; 2],
}

impl TableValue {
    /// An empty table (no members).
    pub const EMPTY: TableValue = TableValue {
        size: 0,
        member_count: 0,
        members: [0; MAX_TIER_MEMBERS],
        entries: [0; MAX_TABLE_SIZE],
        _pad: [0; 2],
    };
}

/// The value of `BACKENDS[backend_id]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendValue {
    pub addr: [u8; 16],
    /// Port in network byte order (NAT rewrites the destination port to it).
    pub port: [u8; 2],
    pub family: u8,
    pub _pad: u8,
    /// The service this backend belongs to.
    pub service_id: u32,
    /// Its tier (global index, as in `TIER_ACTIVE`): the guard rail of
    /// passive detection is per tier.
    pub tier: u32,
}

/// The key of `CONNTRACK`: a client's flow towards a VIP, as the client sent
/// it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// The value of `CONNTRACK` (verified flows) and `EMBRYONIC` (flows not
/// yet verified: a TCP handshake in progress, or UDP the backend has not
/// answered). Times are in milliseconds of `CLOCK` (low 32 bits): an entry
/// whose `now - seen_ms` exceeds `timeout_ms` counts as absent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub backend_id: u32,
    pub service_id: u32,
    /// `CLOCK` when a packet of the flow was last seen (either direction).
    pub seen_ms: u32,
    /// Idle timeout of the flow's current state.
    pub timeout_ms: u32,
    /// `CLOCK` when the flow was pinned to `backend_id`.
    pub created_ms: u32,
    /// TCP: the sequence number of the client's SYN.
    pub client_isn: u32,
    /// TCP (NAT): the sequence number of the backend's SYN-ACK.
    pub server_isn: u32,
    /// `FS_*`.
    pub state: u8,
    /// `FLOW_*` bits.
    pub flags: u8,
    /// SYNs the client sent on this flow (towards this backend).
    pub syns: u16,
}

/// A next hop learned from the kernel's FIB (`NEXTHOPS`, per CPU, by
/// backend id): what `bpf_fib_lookup` answered for the backend's address.
/// The packet path uses it instead of a FIB lookup while it is fresh: its
/// `epoch` equals `NH_EPOCH[0]` (which the daemon bumps on every netlink
/// route, neighbour, address or link event and on every change of the
/// egress set), it was learned for the same ingress interface, it is at
/// most [`NEXTHOP_MAX_AGE_JIFFIES`] old, and the packet is no longer than
/// one the FIB accepted on this path (`mtu_ok`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// Egress interface.
    pub ifindex: u32,
    /// The ingress interface it was learned for (0: empty slot).
    pub iif: u32,
    /// `NH_EPOCH[0]` when it was learned.
    pub epoch: u32,
    /// The longest L3 length the FIB accepted on this path (the MTU is
    /// known to be at least this).
    pub mtu_ok: u16,
    /// `NH_TX` (leaves by the ingress interface) or `NH_REDIRECT`.
    pub how: u8,
    pub _pad: u8,
    /// `bpf_jiffies64()` when it was learned (low 32 bits; wrapping).
    pub learned_jiffies: u32,
    /// [`addr_tag`] of the address it was learned for: a backend slot
    /// given to another address misses at once, before any epoch bump.
    pub addr_tag: u32,
}

/// A 32-bit fold of a 16-byte address (its words xored): what `NextHop`
/// remembers of the address it was learned for.
#[inline(always)]
pub fn addr_tag(a: &[u8; 16]) -> u32 {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    w(0) ^ w(4) ^ w(8) ^ w(12)
}

/// The first question the packet path asks (`ADDR_FILTER`, one slot): may
/// this packet concern a VIP or a backend at all? A bit set per VIP
/// address and per backend address (at [`addr_filter_slot`] of its
/// [`addr_tag`]); a TCP or UDP packet with neither its source nor its
/// destination set is passed at once, untouched. A false positive (two
/// addresses on one bit) only sends a packet down the full path, as every
/// packet went before. 65 536 bits: a few hundred addresses set leave a
/// stranger's address under 1 % odds of a false positive.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AddrFilter {
    pub words: [u64; ADDR_FILTER_WORDS],
}

pub const ADDR_FILTER_WORDS: usize = 1024;

/// The word and the bit of an address tag in `AddrFilter` (a
/// multiplicative hash: a tag's high bits depend on all of its bits).
#[inline(always)]
pub fn addr_filter_slot(tag: u32) -> (usize, u64) {
    let h = tag.wrapping_mul(0x9e37_79b1) >> 16;
    (
        (h >> 6) as usize & (ADDR_FILTER_WORDS - 1),
        1u64 << (h & 63),
    )
}

impl AddrFilter {
    /// Sets the bit of a 16-byte address (IPv4 in the first four bytes).
    pub fn insert(&mut self, addr: &[u8; 16]) {
        let (w, bit) = addr_filter_slot(addr_tag(addr));
        self.words[w] |= bit;
    }

    /// Every bit of `other` set here too.
    pub fn union(&mut self, other: &AddrFilter) {
        for (a, b) in self.words.iter_mut().zip(other.words.iter()) {
            *a |= *b;
        }
    }
}

/// `NextHop::how`.
pub const NH_TX: u8 = 1;
pub const NH_REDIRECT: u8 = 2;
/// A next hop older than this many jiffies (1 to 10 s, by the kernel's HZ)
/// is looked up again even without an event: the bound on staleness if the
/// daemon is not running to bump the epoch.
pub const NEXTHOP_MAX_AGE_JIFFIES: u32 = 1000;

/// Flow states (`FlowValue::state`).
/// TCP: the client's SYN was forwarded, the handshake is not complete.
pub const FS_SYN: u8 = 1;
/// TCP: the handshake completed (or the backend answered mid-stream).
pub const FS_ESTABLISHED: u8 = 2;
/// TCP: a FIN or RST was seen from either side.
pub const FS_CLOSING: u8 = 3;
/// UDP.
pub const FS_UDP: u8 = 4;

/// The backend answered on this flow (NAT: a reply came through).
pub const FLOW_REPLIED: u8 = 1;
/// The client's SYN had a valid TCP checksum (it may count as evidence
/// for passive detection).
pub const FLOW_SYN_VALID: u8 = 2;

/// The value of `FLOW_TIMEOUTS[service_id]`: idle timeouts per flow state,
/// in milliseconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowTimeouts {
    pub syn_ms: u32,
    pub established_ms: u32,
    pub closing_ms: u32,
    pub udp_ms: u32,
}

impl FlowTimeouts {
    /// 5 s embryonic, 300 s established, 10 s closing, 30 s UDP.
    pub const DEFAULT: FlowTimeouts = FlowTimeouts {
        syn_ms: 5_000,
        established_ms: 300_000,
        closing_ms: 10_000,
        udp_ms: 30_000,
    };
}

/// Passive failure signals (bit numbers in `PassiveConfig::signals`, and
/// indexes of `PassiveStats::signals`).
pub const SIG_RST: u32 = 0;
/// ICMP/ICMPv6 destination unreachable quoting a flow to the backend.
pub const SIG_ICMP: u32 = 1;
/// A client retransmitted a SYN of a flow the backend never answered.
pub const SIG_SYN_RETX: u32 = 2;
/// New flows sent to the backend and no reply for `no_reply_ns` (NAT).
pub const SIG_NO_REPLY: u32 = 3;
pub const SIGNAL_COUNT: usize = 4;

/// The value of `PASSIVE_CFG[service_id]`: passive failure detection of a
/// service (`signals == 0`: off).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassiveConfig {
    /// Bit `SIG_*` set: that signal counts.
    pub signals: u32,
    /// Failures (signals) within `window_ns`, without a success between,
    /// that mark a backend down.
    pub failures: u32,
    pub window_ns: u64,
    /// For `SIG_NO_REPLY`: how long new flows may go unanswered.
    pub no_reply_ns: u64,
    /// The state word written when the datapath marks a backend down (the
    /// service's flow policy: `STATE_DOWN`, `STATE_DOWN_RESET` or
    /// `STATE_DRAINING`).
    pub down_word: u32,
    pub _pad: u32,
}

/// The value of `PASSIVE_HEALTH[backend_id]`, shared by all CPUs (updated
/// with atomics; a lost update only delays a decision by one signal).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassiveHealth {
    /// Failures in the current window since the last success.
    pub fails: u64,
    /// New TCP flows sent since the backend last replied (NAT).
    pub pending: u64,
    pub window_start_ns: u64,
    /// When the oldest of `pending` was sent (0: none pending).
    pub pending_since_ns: u64,
    /// When the datapath marked the backend down (0: not marked, or the
    /// agent settled the mark): one mark per backend until then.
    pub marked_ns: u64,
}

/// The value of `PASSIVE_GUARD[tier]`, written only by the agent: how many
/// of the tier's backends the datapath may mark down at once (`limit`), and
/// how many of its marks the agent has settled (`released`). The datapath
/// counts its marks in `PASSIVE_MARKED[tier]`; unsettled marks are
/// `marked - released`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassiveGuard {
    pub limit: u64,
    pub released: u64,
}

/// Per-CPU per-backend counters of passive detection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassiveStats {
    /// Signals seen, by `SIG_*`.
    pub signals: [u64; SIGNAL_COUNT],
    /// Times the datapath marked the backend down.
    pub marked: u64,
    /// Mark-downs refused by the tier's guard rail.
    pub suppressed: u64,
}

/// A ring-buffer event: the datapath marked a backend down.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassiveEvent {
    pub ts_ns: u64,
    pub service_id: u32,
    pub backend_id: u32,
    /// The `SIG_*` that crossed the threshold.
    pub signal: u32,
    /// Failures counted in the window (or unanswered flows).
    pub count: u32,
}

/// The value of `REVERSE`: which VIP a NAT backend's replies are translated
/// back to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReverseValue {
    pub vip: [u8; 16],
    pub vport: [u8; 2],
    pub _pad: [u8; 2],
    pub service_id: u32,
    pub backend_id: u32,
}

/// Per-CPU packet/byte counters (service and backend stats).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Per-CPU per-service counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Client packets forwarded to a backend.
    pub fwd: Counter,
    /// Backend replies translated back (NAT).
    pub reply: Counter,
    /// Packets not forwarded (no backend, no route, ...).
    pub dropped: Counter,
}

const _: () = assert!(core::mem::size_of::<EndpointKey>() == 20);
const _: () = assert!(core::mem::size_of::<VipAddrKey>() == 20);
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 16);
const _: () = assert!(
    core::mem::size_of::<TableValue>() == 8 + 4 * MAX_TIER_MEMBERS + 2 * MAX_TABLE_SIZE + 2
);
const _: () = assert!(core::mem::size_of::<TableValue>().is_multiple_of(4));
const _: () = assert!(core::mem::size_of::<BackendValue>() == 28);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<FlowValue>() == 32);
const _: () = assert!(core::mem::size_of::<NextHop>() == 36);
const _: () = assert!(core::mem::size_of::<AddrFilter>() == 8 * ADDR_FILTER_WORDS);
const _: () = assert!(core::mem::size_of::<FlowTimeouts>() == 16);
const _: () = assert!(core::mem::size_of::<PassiveConfig>() == 32);
const _: () = assert!(core::mem::size_of::<PassiveHealth>() == 40);
const _: () = assert!(core::mem::size_of::<PassiveGuard>() == 16);
const _: () = assert!(core::mem::size_of::<PassiveStats>() == 48);
const _: () = assert!(core::mem::size_of::<PassiveEvent>() == 24);
const _: () = assert!(core::mem::size_of::<ReverseValue>() == 28);
const _: () = assert!(core::mem::size_of::<Counter>() == 16);
const _: () = assert!(core::mem::size_of::<ServiceStats>() == 48);

/// Names of the maps, as declared in the eBPF program and pinned under the
/// bpffs directory.
pub mod map_names {
    pub const SERVICES: &str = "SERVICES";
    pub const VIP_ADDRS: &str = "VIP_ADDRS";
    pub const TIER_ACTIVE: &str = "TIER_ACTIVE";
    pub const TABLES: &str = "TABLES";
    pub const BACKENDS: &str = "BACKENDS";
    pub const BACKEND_STATE: &str = "BACKEND_STATE";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const REVERSE: &str = "REVERSE";
    pub const DEVMAP: &str = "DEVMAP";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const REASON_STATS: &str = "REASON_STATS";
    pub const PASSIVE_CFG: &str = "PASSIVE_CFG";
    pub const PASSIVE_HEALTH: &str = "PASSIVE_HEALTH";
    pub const PASSIVE_GUARD: &str = "PASSIVE_GUARD";
    pub const PASSIVE_MARKED: &str = "PASSIVE_MARKED";
    pub const PASSIVE_STATS: &str = "PASSIVE_STATS";
    pub const PASSIVE_EVENTS: &str = "PASSIVE_EVENTS";
    pub const EMBRYONIC: &str = "EMBRYONIC";
    pub const DIRECT: &str = "DIRECT";
    pub const FLOW_TIMEOUTS: &str = "FLOW_TIMEOUTS";
    pub const CLOCK: &str = "CLOCK";
    pub const PROGS: &str = "PROGS";
    pub const NEXTHOPS: &str = "NEXTHOPS";
    pub const NH_EPOCH: &str = "NH_EPOCH";
    pub const ADDR_FILTER: &str = "ADDR_FILTER";
    /// Every map the daemon pins, in a stable order.
    pub const ALL: [&str; 26] = [
        SERVICES,
        VIP_ADDRS,
        TIER_ACTIVE,
        TABLES,
        BACKENDS,
        BACKEND_STATE,
        CONNTRACK,
        REVERSE,
        DEVMAP,
        SERVICE_STATS,
        BACKEND_STATS,
        REASON_STATS,
        PASSIVE_CFG,
        PASSIVE_HEALTH,
        PASSIVE_GUARD,
        PASSIVE_MARKED,
        PASSIVE_STATS,
        PASSIVE_EVENTS,
        EMBRYONIC,
        DIRECT,
        FLOW_TIMEOUTS,
        CLOCK,
        PROGS,
        NEXTHOPS,
        NH_EPOCH,
        ADDR_FILTER,
    ];
}

/// Default capacities (compile-time `max_entries`; the daemon may override
/// them from the config's `[limits]` at load time).
pub mod defaults {
    pub const MAX_SERVICES: u32 = 64;
    pub const MAX_VIP_ADDRS: u32 = 64;
    /// Tiers across all services; `TABLES` holds twice as many tables.
    pub const MAX_TIERS_TOTAL: u32 = 64;
    pub const MAX_BACKENDS: u32 = 1024;
    pub const CONNTRACK_ENTRIES: u32 = 65536;
    /// Flows not yet verified (handshakes in progress): a SYN flood fills
    /// this table, never `CONNTRACK`.
    pub const EMBRYONIC_ENTRIES: u32 = 65536;
    /// Direct connections through the load balancer to NAT backend
    /// endpoints (their replies are never translated).
    pub const DIRECT_ENTRIES: u32 = 16384;
    pub const DEVMAP_ENTRIES: u32 = 64;
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    macro_rules! pod {
        ($($t:ty),* $(,)?) => {$(
            // SAFETY: `#[repr(C)]`, only integer/array fields, explicit
            // padding fields and no implicit padding (sizes asserted above).
            unsafe impl aya::Pod for $t {}
            // SAFETY: as above: every bit pattern is valid, no padding bytes.
            unsafe impl bytemuck::Zeroable for $t {}
            // SAFETY: as above.
            unsafe impl bytemuck::Pod for $t {}
        )*};
    }
    pod!(
        AddrFilter,
        NextHop,
        EndpointKey,
        VipAddrKey,
        ServiceValue,
        TableValue,
        BackendValue,
        FlowKey,
        FlowValue,
        FlowTimeouts,
        ReverseValue,
        Counter,
        ServiceStats,
        PassiveConfig,
        PassiveHealth,
        PassiveGuard,
        PassiveStats,
        PassiveEvent,
    );
}
