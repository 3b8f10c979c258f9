//! Helpers shared by the namespace tests.

pub mod raw;
