//! Which admin endpoint a request is for: a pure function of method and
//! path, so the whole URL space is one `match` that reads like the table
//! in the product spec.

use http::Method;

/// An admin endpoint: a read anyone on the listener may make, or a change
/// that needs an operator's token. The split is in the type so a handler
/// cannot forget to ask for the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Needs no token.
    Read(Read),
    /// Needs `Authorization: Bearer <token>`.
    Change(Change),
}

/// The endpoints that only look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// `GET /` and `GET /admin/ui`: the live status dashboard (one HTML
    /// page that polls the status and the event log).
    Dashboard,
    /// `GET /live`
    Live,
    /// `GET /ready`
    Ready,
    /// `GET /admin/status`
    Status,
    /// `GET /admin/events` (`?since=`, `?follow=1`)
    Events,
    /// `GET /admin/history`: the dashboard's last minutes, per second.
    History,
    /// `GET /metrics`: Prometheus (OpenMetrics text) exposition.
    Metrics,
    /// `GET /admin/fleet`: every live edge of the fleet and its view.
    Fleet,
}

/// The endpoints that change routing, with the names from their path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `POST /admin/stamps/{name}/drain`
    DrainStamp(String),
    /// `POST /admin/stamps/{name}/enable`
    EnableStamp(String),
    /// `POST /admin/stamps/{name}/disable`
    DisableStamp(String),
    /// `PUT /admin/stamps/{name}/weight`
    Weight(String),
    /// `POST /admin/regions/{region}/drain`
    DrainRegion(String),
    /// `POST /admin/regions/{region}/enable`
    EnableRegion(String),
    /// `POST /admin/reload`
    Reload,
    /// `POST /admin/stamps/{name}/clear-local`: end a local override.
    ClearLocal(String),
}

/// Why no endpoint matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoute {
    /// No endpoint has this path.
    NotFound,
    /// The path exists, with other methods (the `Allow` header value).
    MethodNotAllowed(&'static str),
}

/// The endpoint for `method` and `path` (without the query).
pub fn route(method: &Method, path: &str) -> Result<Endpoint, NoRoute> {
    // A trailing slash is forgiven; empty segments in the middle are not
    // (`/admin/stamps//drain` names no stamp).
    let trimmed = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    // Anything not starting with `/` is no path of ours (the first
    // segment was once skipped unread, whatever it held).
    let Some(absolute) = trimmed.strip_prefix('/') else {
        return Err(NoRoute::NotFound);
    };
    let segments: Vec<&str> = absolute.split('/').collect();
    let (allow, endpoint) = match segments.as_slice() {
        [""] | ["admin", "ui"] => ("GET", Endpoint::Read(Read::Dashboard)),
        ["live"] => ("GET", Endpoint::Read(Read::Live)),
        ["metrics"] => ("GET", Endpoint::Read(Read::Metrics)),
        ["ready"] => ("GET", Endpoint::Read(Read::Ready)),
        ["admin", "status"] => ("GET", Endpoint::Read(Read::Status)),
        ["admin", "events"] => ("GET", Endpoint::Read(Read::Events)),
        ["admin", "fleet"] => ("GET", Endpoint::Read(Read::Fleet)),
        ["admin", "history"] => ("GET", Endpoint::Read(Read::History)),
        ["admin", "reload"] => ("POST", Endpoint::Change(Change::Reload)),
        ["admin", "stamps", name, action] if !name.is_empty() => {
            let name = (*name).to_owned();
            let (allow, change) = match *action {
                "drain" => ("POST", Change::DrainStamp(name)),
                "enable" => ("POST", Change::EnableStamp(name)),
                "disable" => ("POST", Change::DisableStamp(name)),
                "weight" => ("PUT", Change::Weight(name)),
                "clear-local" => ("POST", Change::ClearLocal(name)),
                _ => return Err(NoRoute::NotFound),
            };
            (allow, Endpoint::Change(change))
        }
        ["admin", "regions", region, action] if !region.is_empty() => {
            let region = (*region).to_owned();
            let change = match *action {
                "drain" => Change::DrainRegion(region),
                "enable" => Change::EnableRegion(region),
                _ => return Err(NoRoute::NotFound),
            };
            ("POST", Endpoint::Change(change))
        }
        _ => return Err(NoRoute::NotFound),
    };
    // HEAD is what monitors use on /live and /ready; hyper drops the body.
    let method_ok = method.as_str() == allow || (allow == "GET" && method == Method::HEAD);
    if method_ok {
        Ok(endpoint)
    } else if allow == "GET" {
        Err(NoRoute::MethodNotAllowed("GET, HEAD"))
    } else {
        Err(NoRoute::MethodNotAllowed(allow))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_endpoint_routes() {
        use Endpoint::{Change as C, Read as R};
        let cases = [
            (Method::GET, "/", R(Read::Dashboard)),
            (Method::GET, "/admin/ui", R(Read::Dashboard)),
            (Method::HEAD, "/admin/ui/", R(Read::Dashboard)),
            (Method::GET, "/live", R(Read::Live)),
            (Method::HEAD, "/ready", R(Read::Ready)),
            (Method::GET, "/admin/status", R(Read::Status)),
            (Method::GET, "/admin/status/", R(Read::Status)),
            (Method::GET, "/admin/events", R(Read::Events)),
            (Method::POST, "/admin/reload", C(Change::Reload)),
            (Method::GET, "/admin/fleet", R(Read::Fleet)),
            (
                Method::POST,
                "/admin/stamps/a/clear-local",
                C(Change::ClearLocal("a".into())),
            ),
            (
                Method::POST,
                "/admin/stamps/eu-1/drain",
                C(Change::DrainStamp("eu-1".into())),
            ),
            (
                Method::POST,
                "/admin/stamps/eu-1/enable",
                C(Change::EnableStamp("eu-1".into())),
            ),
            (
                Method::POST,
                "/admin/stamps/eu-1/disable",
                C(Change::DisableStamp("eu-1".into())),
            ),
            (
                Method::PUT,
                "/admin/stamps/eu-1/weight",
                C(Change::Weight("eu-1".into())),
            ),
            (
                Method::POST,
                "/admin/regions/westeurope/drain",
                C(Change::DrainRegion("westeurope".into())),
            ),
            (
                Method::POST,
                "/admin/regions/westeurope/enable",
                C(Change::EnableRegion("westeurope".into())),
            ),
        ];
        for (method, path, want) in cases {
            assert_eq!(route(&method, path), Ok(want), "{method} {path}");
        }
    }

    #[test]
    fn wrong_methods_say_which_are_allowed() {
        let cases = [
            (Method::GET, "/admin/stamps/a/drain", "POST"),
            (Method::POST, "/admin/stamps/a/weight", "PUT"),
            (Method::DELETE, "/admin/status", "GET, HEAD"),
            (Method::POST, "/admin/ui", "GET, HEAD"),
            (Method::GET, "/admin/reload", "POST"),
            (Method::PUT, "/admin/regions/r/enable", "POST"),
        ];
        for (method, path, allow) in cases {
            assert_eq!(
                route(&method, path),
                Err(NoRoute::MethodNotAllowed(allow)),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn unknown_paths_are_not_found() {
        for path in [
            "",
            "/admin",
            "/admin/",
            "/admin/stamps",
            "/admin/stamps/a",
            "/admin/stamps//drain",
            "/admin/stamps/a/explode",
            "/admin/stamps/a/drain/now",
            "/admin/regions/r/disable",
        ] {
            assert_eq!(
                route(&Method::POST, path),
                Err(NoRoute::NotFound),
                "{path:?}"
            );
        }
    }
}
