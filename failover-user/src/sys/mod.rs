//! The host underneath: Linux capabilities and the one child-process runner
//! (process group, deadline, output excerpt) for probes and hooks.

pub mod caps;
pub mod exec;
pub mod files;
pub mod heartbeat;
pub mod http_client;
pub mod netlink;
pub mod netns;
