//! The failover daemon and CLI, as a library so tests can reach every part
//! that runs without root: config validation, Maglev tables, id layout.
//! `dataplane` wraps the loaded XDP program and its maps.

pub mod admin;
pub mod agent;
pub mod audit;
pub mod caps;
pub mod config;
pub mod dataplane;
pub mod events;
pub mod exec;
pub mod health;
pub mod hooks;
pub mod http;
pub mod inspect;
pub mod lab;
pub mod layout;
pub mod maglev;
pub mod metrics;
pub mod model;
pub mod objects;
pub mod probe;
