//! The failover daemon and CLI, as a library so tests can reach every part
//! that runs without root: config validation, Maglev tables, id layout.
//! `dataplane` wraps the loaded XDP program and its maps.

pub mod config;
pub mod dataplane;
pub mod lab;
pub mod layout;
pub mod maglev;
pub mod objects;
