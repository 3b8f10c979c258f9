//! The body of `POST /v1/services/S/switch` (`{"to": "BACKEND"}`): any
//! body gives the backend or a 400 reason, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(to) = failover_user::api::parse_switch_body(data) {
        // Accepted only as JSON whose "to" is that string.
        let v: serde_json::Value = serde_json::from_slice(data).expect("accepted, so JSON");
        assert_eq!(v["to"].as_str(), Some(to.as_str()));
    }
});
