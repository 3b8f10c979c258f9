//! What of an admin request is still parsed by our code (hyper parses the
//! HTTP framing): the route of a method and path, the `?dry_run=1` query,
//! the bearer token header and the switch body. Input: lines
//! `METHOD`, `PATH[?QUERY]`, `AUTHORIZATION`, then the body. Nothing
//! panics, and every answer is consistent with its input.
#![no_main]

use failover_user::api::{
    auth::{authorized, bearer},
    parse_switch_body,
    routes::{Route, dry_run, needs_token, route},
};
use libfuzzer_sys::fuzz_target;

const TOKEN: &str = "0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |&b| b == b'\n');
    let method = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let target = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let auth = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let body = parts.next().unwrap_or_default();

    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target.as_ref(), None),
    };
    let r = route(&method, path, query);
    // Off the unix socket, every route needs the token; on it, Alertmanager
    // does however its path is spelt.
    assert!(needs_token(false, &r));
    let alertmanager = method == "POST"
        && path.split('/').filter(|s| !s.is_empty()).eq(["v1", "alertmanager"])
        && !path.trim_matches('/').contains("//");
    if alertmanager {
        assert!(needs_token(true, &r));
    }
    match r {
        Route::Action {
            service, backend, ..
        } => {
            assert_eq!(method, "POST");
            assert!(!service.contains('/') && !backend.contains('/'));
            assert!(path.contains(service) && path.contains(backend));
        }
        Route::UnknownAction(action) => assert!(!action.contains('/')),
        Route::Switch { service } => {
            assert_eq!(method, "POST");
            assert!(!service.contains('/'));
            if let Ok(to) = parse_switch_body(body) {
                let v: serde_json::Value = serde_json::from_slice(body).expect("accepted, so JSON");
                assert_eq!(v["to"].as_str(), Some(to.as_str()));
            }
        }
        Route::Drill { service } => {
            assert_eq!(method, "POST");
            assert!(!service.contains('/') && path.contains(service));
        }
        Route::Reload { dry_run: d } => assert_eq!(d, dry_run(query)),
        Route::Status => assert_eq!(method, "GET"),
        Route::Alertmanager => assert!(needs_token(true, &r)),
        Route::MethodNotAllowed | Route::NotFound => {}
    }

    let auth = auth.as_ref();
    if authorized(Some(TOKEN), Some(auth)) {
        assert_eq!(bearer(auth), Some(TOKEN));
        assert!(auth.starts_with("Bearer "));
    }
    assert!(!authorized(None, Some(auth)));
});
