//! The per-CPU scratch space of the packet path and the types that live in
//! it (kept apart from the maps and the stages, as Cilium keeps its types
//! apart from its maps: every stage uses them, none owns them).

use aya_ebpf::{bindings::bpf_fib_lookup as FibParams, btf_maps::PerCpuArray, macros::btf_map};
use failover_common::{EndpointKey, FlowKey, FlowValue, VipAddrKey};

use crate::{
    nat::Rewrite,
    parse::{Flow, Quoted},
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

/// The packet an ICMP error quotes, and what to write into it.
pub struct Quote {
    /// Where the quoted packet and its parts are (`parse::quote`).
    pub pkt: Quoted,
    /// The rewrite: which way, the new address and port.
    pub dir: Dir,
    pub addr: [u8; 16],
    pub port: [u8; 2],
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
