//! The config parser and validator (`failover check-config`, SIGHUP
//! reload, `POST /v1/reload`): any text gives a config or field errors,
//! never a panic; a valid config can always be laid out.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = failover_user::config::parse(text, "fuzz") {
        let _ = failover_user::dataplane::layout::Layout::assign(&cfg, None);
    }
});
