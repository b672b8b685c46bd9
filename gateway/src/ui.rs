//! The browser page at `/` (a console to send calls and watch them finish) and the JavaScript
//! client it runs on, at `/wsmq.js`. They are compiled into the binary so the gateway serves them
//! offline, with no build step and nothing fetched from elsewhere; the client file is the one in
//! `clients/js/`, so the page and the published client cannot drift apart.

use axum::Router;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const CLIENT_JS: &str = include_str!("../../clients/js/wsmq.js");

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// Scripts only from the gateway itself (the page has no inline script); styles inline; calls
/// only to the gateway's own origin: `'self'`, and its websockets at the host the page was
/// loaded from (older browsers do not count `ws:` URLs as `'self'`). `connect-src` is added
/// per request ([`content_security_policy`]).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's routes, for any router state.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|headers: HeaderMap| async move { asset(HTML, INDEX_HTML, &headers) }),
        )
        .route(
            "/app.js",
            get(|headers: HeaderMap| async move { asset(JAVASCRIPT, APP_JS, &headers) }),
        )
        .route(
            "/wsmq.js",
            get(|headers: HeaderMap| async move { asset(JAVASCRIPT, CLIENT_JS, &headers) }),
        )
}

/// The policy for a page requested with `Host: host`: websockets to that host only. A Host
/// that is not a plain `name[:port]` gets `connect-src 'self'` alone.
fn content_security_policy(host: Option<&str>) -> String {
    let connect = match host {
        Some(host)
            if !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)) =>
        {
            format!("connect-src 'self' ws://{host} wss://{host}")
        }
        _ => "connect-src 'self'".to_owned(),
    };
    format!("{CONTENT_SECURITY_POLICY}; {connect}")
}

fn asset(content_type: &'static str, body: &'static str, headers: &HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.trim().to_ascii_lowercase());
    (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            // Revalidate each time: a gateway upgrade must not leave an old page running.
            (header::CACHE_CONTROL, "no-cache".to_owned()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (
                header::CONTENT_SECURITY_POLICY,
                content_security_policy(host.as_deref()),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websockets_are_allowed_to_the_pages_own_host_only() {
        let csp = content_security_policy(Some("127.0.0.1:8080"));
        assert!(csp.ends_with("; connect-src 'self' ws://127.0.0.1:8080 wss://127.0.0.1:8080"));
        assert!(!csp.contains("ws: "), "{csp}");
        assert!(
            content_security_policy(Some("evil; script-src *")).ends_with("connect-src 'self'")
        );
        assert!(content_security_policy(None).ends_with("connect-src 'self'"));
    }

    #[test]
    fn the_page_loads_its_scripts_from_the_gateway_only() {
        assert!(INDEX_HTML.contains(r#"<script type="module" src="/app.js">"#));
        assert!(APP_JS.contains("from '/wsmq.js'"));
        for asset in [INDEX_HTML, APP_JS, CLIENT_JS] {
            assert!(!asset.contains("http://"), "no absolute http URL");
            assert!(!asset.contains("https://"), "no CDN or other origin");
            assert!(!asset.contains("<script>"), "no inline script");
        }
    }
}
