//! The failover daemon and CLI, as a library so tests can reach every part
//! that runs without root. One folder per concern, shared vocabulary at the
//! bottom (`model`); `tests/module_graph.rs` keeps the module graph acyclic.
//!
//! - `model`: the words every concern shares (states, actions, errors).
//! - `maglev`: the consistent-hash table builder (pure; a leaf).
//! - `config`: the TOML file: raw form, validation, the typed model, diff.
//! - `dataplane`: the loaded XDP programs and the one door to their maps
//!   (id layout, Maglev tables, readers for the CLI).
//! - `probe`: one check of one backend (tcp, http, udp, exec).
//! - `agent`: the health machines and the decider that writes states.
//! - `observe`: events, hooks, the audit chain, metrics.
//! - `cluster`: several nodes behind BGP (BIRD), agreeing through etcd;
//!   drives the agent through its handle, never the other way round.
//! - `api`: the admin API and `/metrics` over HTTP, alertmanager.
//! - `sys`: capabilities, the exec runner, files.
//! - `daemon`: start, reload, teardown.
//! - `cli`: the `failover` command line.

pub mod agent;
pub mod api;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod maglev;
pub mod model;
pub mod observe;
pub mod probe;
pub mod sys;
