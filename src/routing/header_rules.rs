//! Which headers the proxy adds to requests and responses: part of the
//! routing table, so a reload that changes them is one publish. The
//! rewriting itself is the data plane's (`proxy::headers`).

use crate::config::defaults::{DEFAULT_FORWARDED_HEADERS, DEFAULT_REQUEST_ID};

/// Which headers the proxy adds on the way to a stamp and back
/// (`proxy.forwarded_headers`, `proxy.request_id`); both on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderRules {
    /// `X-Forwarded-For/-Proto/-Host` and `Via` on requests.
    pub forwarded: bool,
    /// An `X-Request-Id` made for a request without one, and returned on
    /// its response.
    pub request_id: bool,
}

impl Default for HeaderRules {
    /// The config's defaults, stated once in [`crate::config::defaults`].
    fn default() -> HeaderRules {
        HeaderRules {
            forwarded: DEFAULT_FORWARDED_HEADERS,
            request_id: DEFAULT_REQUEST_ID,
        }
    }
}
