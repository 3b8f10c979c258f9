//! The admin API's routes: which handler a method and path (and query)
//! name. Pure, so it is fuzzed (`fuzz/fuzz_targets/admin_request.rs`).

use crate::model::AdminAction;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET /v1/status`
    Status,
    /// `POST /v1/services/{service}/backends/{backend}/{action}`
    Action {
        service: &'a str,
        backend: &'a str,
        action: AdminAction,
    },
    /// The same with an action that does not exist (a 404 naming the actions).
    UnknownAction(&'a str),
    /// `POST /v1/services/{service}/switch`
    Switch { service: &'a str },
    /// `POST /v1/services/{service}/drill`
    Drill { service: &'a str },
    /// `POST /v1/reload` (`?dry_run=1` or `?dry_run=true`: only the diff).
    Reload { dry_run: bool },
    /// `POST /v1/alertmanager`
    Alertmanager,
    /// A known path with another method (405).
    MethodNotAllowed,
    /// Anything else (404).
    NotFound,
}

/// The route of `method` on `path` (without the query), `query` the part
/// after '?'. Empty segments from leading or trailing slashes are ignored.
pub fn route<'a>(method: &str, path: &'a str, query: Option<&str>) -> Route<'a> {
    let parts: Vec<&'a str> = path.trim_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("GET", ["v1", "status"]) => Route::Status,
        ("POST", ["v1", "services", service, "backends", backend, action]) => {
            match AdminAction::parse(action) {
                Some(AdminAction::Release) if force(query) => Route::Action {
                    service,
                    backend,
                    action: AdminAction::ForceRelease,
                },
                Some(action) => Route::Action {
                    service,
                    backend,
                    action,
                },
                None => Route::UnknownAction(action),
            }
        }
        ("POST", ["v1", "services", service, "switch"]) => Route::Switch { service },
        ("POST", ["v1", "services", service, "drill"]) => Route::Drill { service },
        ("POST", ["v1", "reload"]) => Route::Reload {
            dry_run: dry_run(query),
        },
        ("POST", ["v1", "alertmanager"]) => Route::Alertmanager,
        (
            _,
            ["v1", "status"] | ["v1", "reload"] | ["v1", "alertmanager"] | ["v1", "services", ..],
        ) => Route::MethodNotAllowed,
        _ => Route::NotFound,
    }
}

/// Whether a query string has `force=1` or `force=true`.
pub fn force(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|kv| kv == "force=1" || kv == "force=true"))
}

/// Whether a query string asks for a dry run: a `dry_run=1` or
/// `dry_run=true` pair among its `&`-separated pairs.
pub fn dry_run(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "dry_run=1" || kv == "dry_run=true")
    })
}

/// Whether a request for `route` needs the bearer token: everything not
/// over the (trusted) unix socket, and Alertmanager always (however its
/// path is spelt: `/v1/alertmanager/` is the same route).
pub fn needs_token(trusted: bool, route: &Route<'_>) -> bool {
    !trusted || matches!(route, Route::Alertmanager)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_queries() {
        assert_eq!(route("GET", "/v1/status", None), Route::Status);
        assert_eq!(route("GET", "/v1/status/", None), Route::Status);
        assert_eq!(route("POST", "/v1/status", None), Route::MethodNotAllowed);
        assert_eq!(
            route("POST", "/v1/services/web/backends/b1/drain", None),
            Route::Action {
                service: "web",
                backend: "b1",
                action: AdminAction::Drain
            }
        );
        assert_eq!(
            route("POST", "/v1/services/web/backends/b1/explode", None),
            Route::UnknownAction("explode")
        );
        assert_eq!(
            route("GET", "/v1/services/web/backends/b1/drain", None),
            Route::MethodNotAllowed
        );
        assert_eq!(
            route("POST", "/v1/services/web/switch", None),
            Route::Switch { service: "web" }
        );
        assert_eq!(
            route("POST", "/v1/reload", Some("a=b&dry_run=1")),
            Route::Reload { dry_run: true }
        );
        assert_eq!(
            route("POST", "/v1/reload", Some("dry_run=true")),
            Route::Reload { dry_run: true }
        );
        for q in [
            None,
            Some(""),
            Some("dry_run=0"),
            Some("dry_run=1x"),
            Some("xdry_run=1"),
        ] {
            assert_eq!(
                route("POST", "/v1/reload", q),
                Route::Reload { dry_run: false },
                "{q:?}"
            );
        }
        assert_eq!(route("POST", "/v1/alertmanager", None), Route::Alertmanager);
        assert_eq!(
            route("POST", "/v1/services/pg/drill", None),
            Route::Drill { service: "pg" }
        );
        assert_eq!(
            route(
                "POST",
                "/v1/services/pg/backends/db1/release",
                Some("force=1")
            ),
            Route::Action {
                service: "pg",
                backend: "db1",
                action: AdminAction::ForceRelease
            }
        );
        assert_eq!(
            route(
                "POST",
                "/v1/services/pg/backends/db1/release",
                Some("force=0")
            ),
            Route::Action {
                service: "pg",
                backend: "db1",
                action: AdminAction::Release
            }
        );
        assert_eq!(route("GET", "/metrics", None), Route::NotFound);
        assert_eq!(route("GET", "", None), Route::NotFound);
        assert_eq!(route("DELETE", "/v2/status", None), Route::NotFound);
        assert!(needs_token(false, &route("GET", "/v1/status", None)));
        assert!(!needs_token(true, &route("GET", "/v1/status", None)));
        for p in ["/v1/alertmanager", "/v1/alertmanager/", "//v1/alertmanager"] {
            assert!(needs_token(true, &route("POST", p, None)), "{p}");
        }
    }
}
