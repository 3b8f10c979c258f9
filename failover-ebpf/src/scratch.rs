//! The per-CPU scratch space of the packet path and the types that live in
//! it (kept apart from the maps and the stages, as Cilium keeps its types
//! apart from its maps: every stage uses them, none owns them).

use aya_ebpf::{bindings::bpf_fib_lookup as FibParams, btf_maps::PerCpuArray, macros::btf_map};
use failover_common::{EndpointKey, FlowKey, FlowValue, VipAddrKey};

use crate::{
    nat::Rewrite,
    parse::{Flow, OFF_MASK},
};

/// Per-CPU scratch space for what would not fit the 512-byte BPF stack:
/// the parsed flow and the FIB lookup parameters of the packet being
/// processed. XDP runs to completion on one CPU, so one slot per CPU is
/// never shared.
pub struct Scratch {
    pub flow: Flow,
    pub fib: FibParams,
    /// Lookup keys built from the flow.
    pub ep: EndpointKey,
    pub vip: VipAddrKey,
    pub ct: FlowKey,
    /// A direct connection's key.
    pub dk: FlowKey,
    /// The NAT rewrite to apply.
    pub rw: Rewrite,
    /// Passive detection's work for this packet.
    pub op: Op,
    /// A new conntrack entry being built.
    pub fv: FlowValue,
    /// The packet an ICMP error quotes.
    pub quote: Quote,
}

#[btf_map]
pub static SCRATCH: PerCpuArray<Scratch, 1, 0> = PerCpuArray::new();

/// What the packet path asks of passive detection, recorded in scratch and
/// carried out by `passive::apply` after the packet's fate is decided: deferring it
/// keeps its stack frame out of the deepest call chain (512 bytes in all).
pub struct Op {
    pub kind: u32,
    pub sig: u32,
    pub sid: u32,
    pub bid: u32,
}

pub const OP_NONE: u32 = 0;
pub const OP_FAILURE: u32 = 1;
pub const OP_SUCCESS: u32 = 2;
pub const OP_NEW_FLOW: u32 = 3;

impl Op {
    #[inline(always)]
    pub fn set(&mut self, kind: u32, sig: u32, sid: u32, bid: u32) {
        self.kind = kind;
        self.sig = sig;
        self.sid = sid;
        self.bid = bid;
    }
}

/// Where the quoted packet and its parts are, and what to write.
pub struct Quote {
    /// Offset of the quoted IP header.
    pub ip: usize,
    /// Offset of the quoted TCP/UDP header.
    pub l4: usize,
    pub proto: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// The rewrite: which way, the new address and port.
    pub dir: Dir,
    pub addr: [u8; 16],
    pub port: [u8; 2],
}

impl Quote {
    /// Offset of the quoted IP header (masked: offsets read back from map
    /// memory are unbounded for the verifier).
    #[inline(always)]
    pub fn ip(&self) -> usize {
        self.ip & OFF_MASK
    }

    /// Offset of the quoted TCP/UDP header.
    #[inline(always)]
    pub fn l4(&self) -> usize {
        self.l4 & OFF_MASK
    }
}

/// Which way the error goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Outer destination and quoted source become the backend's.
    ToBackend,
    /// Quoted destination becomes the VIP's; the outer source too when it
    /// is the backend itself.
    ToClient,
}
