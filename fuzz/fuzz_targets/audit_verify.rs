//! The audit-log verifier (`failover audit verify`, and the daemon's check
//! at start): any bytes give a line count or the first bad line, never a
//! panic; memory stays bounded by the line limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match failover_user::observe::audit::verify_reader(data) {
        Ok(lines) => assert!(lines as usize <= data.len()),
        Err(e) => assert!(e.line as usize <= data.len() + 1),
    }
});
