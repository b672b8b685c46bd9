//! Who a websocket client is, and which methods it may call.
//!
//! Checked once, before the upgrade: a client without a valid token never gets a websocket, so
//! nothing past the HTTP handler has to think about strangers. Two methods, either or both:
//! a tokens file (`identity:token[:pattern,...]` per line, compared in constant time, reloaded
//! on SIGHUP) and JWTs (HS256 with a shared secret, RS256/ES256 with a public key). The token
//! never appears in a log line or an error: errors name the line or the reason only.
//!
//! This file holds who a caller is, what it may call and the check itself; the tokens file is
//! [`tokens`]'s, the JWT verifier [`jwt`]'s.

mod jwt;
mod tokens;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use tokio::sync::watch;

pub(crate) use tokens::{TokensReloader, spawn_sighup_handler};

use jwt::Jwt;
use tokens::TokenSet;

/// Prefix of the websocket subprotocol that carries a token (`bearer.<token>`), for browsers,
/// which cannot set headers on a websocket.
pub(crate) const BEARER_PROTOCOL_PREFIX: &str = "bearer.";

/// The authenticated client, as far as the gateway cares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Caller {
    /// `None` when the gateway runs without authentication.
    pub(crate) identity: Option<Arc<str>>,
    /// The methods it may call.
    pub(crate) methods: Allowlist,
}

/// A method pattern: `echo` (exactly), `report.*` (anything starting with `report.`), `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty method pattern".to_owned());
        }
        match text.strip_suffix('*') {
            Some(prefix) if !prefix.contains('*') => Ok(Pattern::Prefix(prefix.to_owned())),
            None if !text.contains('*') => Ok(Pattern::Exact(text.to_owned())),
            _ => Err(format!(
                "method pattern {text:?}: `*` may only end a pattern"
            )),
        }
    }

    pub(crate) fn matches(&self, method: &str) -> bool {
        match self {
            Pattern::Exact(m) => m == method,
            Pattern::Prefix(p) => method.starts_with(p.as_str()),
        }
    }
}

/// The methods an identity may call; `All` unless its token or JWT names some.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum Allowlist {
    #[default]
    All,
    Only(Arc<[Pattern]>),
}

impl Allowlist {
    pub(crate) fn allows(&self, method: &str) -> bool {
        match self {
            Allowlist::All => true,
            Allowlist::Only(patterns) => patterns.iter().any(|p| p.matches(method)),
        }
    }

    fn parse<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let patterns = patterns
            .into_iter()
            .map(Pattern::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Allowlist::Only(patterns.into()))
    }
}

/// Why a tokens file or key could not be used. Never holds a token or key material.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SecurityError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {why}")]
    TokensLine {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("{path}: {why}")]
    Key { path: PathBuf, why: String },
}

fn read(path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Why a client was turned away. The text goes to the log, never the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("no token presented")]
    Missing,
    #[error("{0}")]
    Invalid(&'static str),
}

/// The authentication settings.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuthConfig {
    pub(crate) tokens: Option<PathBuf>,
    pub(crate) jwt_secret_file: Option<PathBuf>,
    pub(crate) jwt_public_key: Option<PathBuf>,
    pub(crate) jwt_audience: Option<String>,
}

impl AuthConfig {
    pub(crate) fn enabled(&self) -> bool {
        self.tokens.is_some() || self.jwt_secret_file.is_some() || self.jwt_public_key.is_some()
    }
}

/// Checks tokens for the HTTP handler. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Authenticator {
    tokens: Option<watch::Receiver<Arc<TokenSet>>>,
    jwt: Option<Arc<Jwt>>,
}

impl Authenticator {
    /// Loads every configured key and file; the reloader is there when a tokens file is.
    pub(crate) fn load(
        config: &AuthConfig,
    ) -> Result<(Self, Option<TokensReloader>), SecurityError> {
        let (tokens, reloader) = match &config.tokens {
            Some(path) => {
                let set = TokenSet::load(path)?;
                let (tx, rx) = watch::channel(Arc::new(set));
                (
                    Some(rx),
                    Some(TokensReloader {
                        path: path.clone(),
                        tx,
                    }),
                )
            }
            None => (None, None),
        };
        let audience = config.jwt_audience.as_deref();
        let jwt = match (&config.jwt_secret_file, &config.jwt_public_key) {
            (Some(secret), _) => Some(Arc::new(Jwt::hs256(secret, audience)?)),
            (None, Some(key)) => Some(Arc::new(Jwt::public_key(key, audience)?)),
            (None, None) => None,
        };
        Ok((Self { tokens, jwt }, reloader))
    }

    /// Whether any method is configured (otherwise everyone is let in, anonymously).
    pub(crate) fn enabled(&self) -> bool {
        self.tokens.is_some() || self.jwt.is_some()
    }

    /// Who presents these headers and query token.
    pub(crate) fn authenticate(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Caller, Refusal> {
        if !self.enabled() {
            return Ok(Caller::default());
        }
        let token = presented_token(headers, query_token).ok_or(Refusal::Missing)?;
        if let Some(tokens) = &self.tokens
            && let Some(caller) = tokens.borrow().find(token.as_bytes())
        {
            return Ok(caller.clone());
        }
        match &self.jwt {
            Some(jwt) => jwt.verify(&token),
            None => Err(Refusal::Invalid("unknown token")),
        }
    }
}

/// The token, from (in this order) `Authorization: Bearer`, the `token` query parameter, or a
/// `bearer.<token>` websocket subprotocol.
fn presented_token(headers: &HeaderMap, query_token: Option<&str>) -> Option<String> {
    for value in headers.get_all(AUTHORIZATION) {
        let Ok(value) = value.to_str() else { continue };
        if let Some((scheme, token)) = value.trim().split_once(' ')
            && scheme.eq_ignore_ascii_case("bearer")
            && !token.trim().is_empty()
        {
            return Some(token.trim().to_owned());
        }
    }
    if let Some(token) = query_token.filter(|t| !t.is_empty()) {
        return Some(token.to_owned());
    }
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(BEARER_PROTOCOL_PREFIX))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::Algorithm;
    use jwt::MIN_JWT_SECRET_BYTES;

    #[test]
    fn patterns_match_exactly_by_prefix_or_all() {
        let p = |s: &str| Pattern::parse(s).expect("valid");
        assert!(p("echo").matches("echo"));
        assert!(!p("echo").matches("echo.x"));
        assert!(p("report.*").matches("report.daily"));
        assert!(p("report.*").matches("report.a.b"));
        assert!(!p("report.*").matches("report"));
        assert!(!p("report.*").matches("reports.x"));
        assert!(p("*").matches("anything"));
        assert!(Pattern::parse("a*b").is_err());
        assert!(Pattern::parse("**").is_err());
        assert!(Pattern::parse("").is_err());
    }

    pub(super) fn unix_now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
    }

    pub(super) fn bearer(token: &str) -> HeaderMap {
        headers(&[("authorization", &format!("Bearer {token}"))])
    }

    #[test]
    fn tokens_file_and_jwt_work_side_by_side() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "alice:tok-alice\n").expect("write");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "x".repeat(MIN_JWT_SECRET_BYTES)).expect("write");
        let (auth, _) = Authenticator::load(&AuthConfig {
            tokens: Some(tokens),
            jwt_secret_file: Some(secret),
            ..AuthConfig::default()
        })
        .expect("loads");
        let by_file = auth.authenticate(&bearer("tok-alice"), None).expect("file");
        assert_eq!(by_file.identity.as_deref(), Some("alice"));
        let jwt = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "bob", "exp": unix_now() + 60}),
            &jsonwebtoken::EncodingKey::from_secret("x".repeat(MIN_JWT_SECRET_BYTES).as_bytes()),
        )
        .expect("signs");
        let by_jwt = auth
            .authenticate(&HeaderMap::new(), Some(&jwt))
            .expect("jwt");
        assert_eq!(by_jwt.identity.as_deref(), Some("bob"));
        assert!(auth.authenticate(&bearer("tok-nobody"), None).is_err());
    }

    pub(super) fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, v.parse().expect("header value"));
        }
        map
    }

    #[test]
    fn token_is_taken_from_header_query_or_subprotocol() {
        assert_eq!(
            presented_token(&headers(&[("authorization", "Bearer abc")]), None).as_deref(),
            Some("abc")
        );
        assert_eq!(
            presented_token(&headers(&[("authorization", "bearer  abc ")]), None).as_deref(),
            Some("abc")
        );
        assert_eq!(
            presented_token(&headers(&[]), Some("q")).as_deref(),
            Some("q")
        );
        assert_eq!(
            presented_token(
                &headers(&[("sec-websocket-protocol", "wsmq, bearer.xyz")]),
                None
            )
            .as_deref(),
            Some("xyz")
        );
        assert_eq!(
            presented_token(&headers(&[("authorization", "Basic abc")]), None),
            None
        );
        assert_eq!(
            presented_token(&headers(&[("sec-websocket-protocol", "wsmq")]), None),
            None
        );
    }
}
