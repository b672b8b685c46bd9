//! The browser page at `/` (a console to send calls and watch them finish) and the JavaScript
//! client it runs on, at `/wsmq.js`. They are compiled into the binary so the gateway serves them
//! offline, with no build step and nothing fetched from elsewhere; the client file is the one in
//! `clients/js/`, so the page and the published client cannot drift apart.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const CLIENT_JS: &str = include_str!("../../clients/js/wsmq.js");

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// Scripts only from the gateway itself (the page has no inline script); styles inline; calls
/// only to the gateway's own origin over websocket (and `/healthz` when reconnecting).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self' ws: wss:; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's routes, for any router state.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset(HTML, INDEX_HTML) }))
        .route("/app.js", get(|| async { asset(JAVASCRIPT, APP_JS) }))
        .route("/wsmq.js", get(|| async { asset(JAVASCRIPT, CLIENT_JS) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Revalidate each time: a gateway upgrade must not leave an old page running.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

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
