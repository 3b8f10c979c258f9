//! What the daemon tells the outside: the events file, hooks and webhooks,
//! the tamper-evident audit chain, and the Prometheus metrics.

pub mod audit;
pub mod events;
pub mod hooks;
pub mod metrics;
