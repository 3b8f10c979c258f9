//! The Alertmanager webhook payload (`POST /v1/alertmanager`): any body
//! gives requests or a 400 reason, never a panic, and never more than
//! `MAX_ALERTS` requests.
#![no_main]

use failover_user::{
    api::{AlertRequest, AlertmanagerCfg, MAX_ALERTS, parse_alertmanager},
    agent::AdminAction,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cfg = AlertmanagerCfg {
        service_label: "service".into(),
        backend_label: "backend".into(),
        action: AdminAction::Drain,
    };
    if let Ok(requests) = parse_alertmanager(data, &cfg) {
        assert!(requests.len() <= MAX_ALERTS);
        for r in requests {
            if let AlertRequest::Act { action, .. } = r {
                assert!(matches!(action, AdminAction::Drain | AdminAction::Undrain));
            }
        }
    }
});
