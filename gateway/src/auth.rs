//! Who a websocket client is, and which methods it may call.
//!
//! Checked once, before the upgrade: a client without a valid token never gets a websocket, so
//! nothing past the HTTP handler has to think about strangers. Two methods, either or both:
//! a tokens file (`identity:token[:pattern,...]` per line, compared in constant time, reloaded
//! on SIGHUP) and JWTs (HS256 with a shared secret, RS256/ES256 with a public key). The token
//! never appears in a log line or an error: errors name the line or the reason only.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tracing::{info, warn};

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

/// One line of a tokens file.
#[derive(Debug, Clone)]
struct TokenEntry {
    token: Vec<u8>,
    caller: Caller,
}

/// The contents of a tokens file.
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenSet {
    entries: Vec<TokenEntry>,
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

impl TokenSet {
    /// Parses a tokens file: `identity:token` or `identity:token:pattern,pattern` per line;
    /// blank lines and lines starting with `#` are skipped.
    pub(crate) fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut entries = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.splitn(3, ':');
            let identity = fields.next().unwrap_or_default().trim();
            let Some(token) = fields.next().map(str::trim) else {
                return Err((line_no, "expected identity:token".to_owned()));
            };
            if identity.is_empty() || identity.chars().any(char::is_whitespace) {
                return Err((line_no, "empty identity or one with spaces".to_owned()));
            }
            if token.is_empty() || !token.bytes().all(is_token_char) {
                return Err((
                    line_no,
                    "empty token or one with characters outside A-Z a-z 0-9 - . _ ~ + / ="
                        .to_owned(),
                ));
            }
            if !seen.insert(token) {
                return Err((
                    line_no,
                    "this token is already given to another line".to_owned(),
                ));
            }
            let methods = match fields.next() {
                None => Allowlist::All,
                Some(list) => Allowlist::parse(list.split(',')).map_err(|why| (line_no, why))?,
            };
            entries.push(TokenEntry {
                token: token.as_bytes().to_vec(),
                caller: Caller {
                    identity: Some(identity.into()),
                    methods,
                },
            });
        }
        Ok(Self { entries })
    }

    pub(crate) fn load(path: &Path) -> Result<Self, SecurityError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecurityError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, why)| SecurityError::TokensLine {
            path: path.to_owned(),
            line,
            why,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The caller a token belongs to. Compares against every entry, each in constant time, so
    /// the time taken does not say which entry (or how much of one) matched.
    fn find(&self, presented: &[u8]) -> Option<&Caller> {
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.token.as_slice().ct_eq(presented)) {
                found = Some(&entry.caller);
            }
        }
        found
    }
}

/// Characters a token may have: those of a base64/base64url string, and allowed in a
/// websocket subprotocol name, so every transport can carry it.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

/// A JWT verifier.
struct Jwt {
    key: DecodingKey,
    validation: Validation,
}

/// The claims the gateway reads: `sub` is the identity; `wsmq_methods`, an array of method
/// patterns, the methods it may call (every method without it).
#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    #[serde(default, rename = "wsmq_methods")]
    methods: Option<Vec<String>>,
}

/// Minimum length of an HS256 secret (RFC 7518 §3.2: at least the hash size).
pub(crate) const MIN_JWT_SECRET_BYTES: usize = 32;

impl Jwt {
    fn hs256(path: &Path, audience: Option<&str>) -> Result<Self, SecurityError> {
        let secret = read(path)?;
        let secret = secret.trim_ascii();
        if secret.len() < MIN_JWT_SECRET_BYTES {
            return Err(SecurityError::Key {
                path: path.to_owned(),
                why: format!("an HS256 secret needs at least {MIN_JWT_SECRET_BYTES} bytes"),
            });
        }
        Ok(Self::new(
            DecodingKey::from_secret(secret),
            Algorithm::HS256,
            audience,
        ))
    }

    /// RS256 for an RSA key, ES256 for a P-256 key, both PEM.
    fn public_key(path: &Path, audience: Option<&str>) -> Result<Self, SecurityError> {
        let pem = read(path)?;
        if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
            return Ok(Self::new(key, Algorithm::RS256, audience));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
            return Ok(Self::new(key, Algorithm::ES256, audience));
        }
        Err(SecurityError::Key {
            path: path.to_owned(),
            why: "not a PEM RSA or EC (P-256) public key".to_owned(),
        })
    }

    fn new(key: DecodingKey, algorithm: Algorithm, audience: Option<&str>) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Self { key, validation }
    }

    fn verify(&self, token: &str) -> Result<Caller, Refusal> {
        use jsonwebtoken::errors::ErrorKind;
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
                Refusal::Invalid(match e.kind() {
                    ErrorKind::ExpiredSignature => "expired token",
                    ErrorKind::ImmatureSignature => "token not valid yet (nbf)",
                    ErrorKind::InvalidAudience => "wrong audience",
                    ErrorKind::InvalidSignature => "bad signature",
                    ErrorKind::MissingRequiredClaim(_) => "missing claim",
                    ErrorKind::InvalidAlgorithm => "wrong algorithm",
                    _ => "malformed token",
                })
            })?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(Refusal::Invalid("empty sub"));
        }
        let methods = match &claims.methods {
            None => Allowlist::All,
            Some(list) => Allowlist::parse(list.iter().map(String::as_str))
                .map_err(|_| Refusal::Invalid("bad wsmq_methods claim"))?,
        };
        Ok(Caller {
            identity: Some(claims.sub.into()),
            methods,
        })
    }
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

/// Keeps the tokens file current: [`TokensReloader::reload`] re-reads it, keeping the old set
/// if the new one does not parse.
pub(crate) struct TokensReloader {
    path: PathBuf,
    tx: watch::Sender<Arc<TokenSet>>,
}

impl TokensReloader {
    pub(crate) fn reload(&self) {
        match TokenSet::load(&self.path) {
            Ok(set) => {
                info!(path = %self.path.display(), tokens = set.len(), "tokens file reloaded");
                self.tx.send_replace(Arc::new(set));
            }
            Err(e) => warn!(
                error = %e,
                tokens = self.tx.borrow().len(),
                "tokens file not reloaded; keeping the current tokens"
            ),
        }
    }
}

/// Handles SIGHUP until `shutdown`: reloads the tokens file if there is one. Installed in every
/// case, since SIGHUP's default action (`systemctl reload` sends it) would end the process.
pub(crate) fn spawn_sighup_handler(
    reloader: Option<TokensReloader>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => hup,
        Err(e) => {
            warn!(error = %e, "cannot install a SIGHUP handler; the tokens file will not be reloaded");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                got = hup.recv() => match (got, &reloader) {
                    (None, _) => return,
                    (Some(()), Some(reloader)) => reloader.reload(),
                    (Some(()), None) => info!("SIGHUP: no tokens file to reload"),
                },
            }
        }
    });
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

    fn caller(identity: &str, methods: Allowlist) -> Caller {
        Caller {
            identity: Some(identity.into()),
            methods,
        }
    }

    #[test]
    fn tokens_file_lines_give_identities_and_optional_allowlists() {
        let set = TokenSet::parse("# ops\n\nalice:tok-a\n  bob : tok-b : report.*, echo \n")
            .expect("parses");
        assert_eq!(set.len(), 2);
        assert_eq!(set.find(b"tok-a"), Some(&caller("alice", Allowlist::All)));
        let bob = set.find(b"tok-b").expect("bob");
        assert_eq!(bob.identity.as_deref(), Some("bob"));
        assert!(bob.methods.allows("report.daily"));
        assert!(bob.methods.allows("echo"));
        assert!(!bob.methods.allows("echo2"));
        assert!(!bob.methods.allows("fib"));
        assert_eq!(set.find(b"tok-c"), None);
        assert_eq!(set.find(b"tok-"), None);
        assert_eq!(set.find(b""), None);
    }

    #[test]
    fn tokens_file_errors_name_the_line_not_the_token() {
        for (text, line) in [
            ("alice\n", 1),
            ("# c\n:SECRET\n", 2),
            ("alice:\n", 1),
            ("a:SECRET\nb:SECRET\n", 2),
            ("a:SECRET space\n", 1),
            ("a:SECRET:re*port\n", 1),
            ("a:SECRET:,\n", 1),
        ] {
            let (got, why) = TokenSet::parse(text).expect_err(text);
            assert_eq!(got, line, "{text:?}: {why}");
            assert!(!why.contains("SECRET"), "{why}");
        }
    }

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

    fn unix_now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
    }

    fn bearer(token: &str) -> HeaderMap {
        headers(&[("authorization", &format!("Bearer {token}"))])
    }

    /// Test-only RSA keys (tests/fixtures/README.md).
    const RS256_PRIVATE: &str = include_str!("../../tests/fixtures/jwt-rs256-test.key");
    const RS256_PUBLIC: &str = include_str!("../../tests/fixtures/jwt-rs256-test.pub.pem");

    #[test]
    fn rs256_jwt_from_a_pem_public_key_gives_sub_and_methods() {
        use jsonwebtoken::{EncodingKey, Header, encode};
        let dir = tempfile::tempdir().expect("tempdir");
        let public = dir.path().join("pub.pem");
        std::fs::write(&public, RS256_PUBLIC).expect("write");
        let (auth, reloader) = Authenticator::load(&AuthConfig {
            jwt_public_key: Some(public),
            jwt_audience: Some("wsmq".to_owned()),
            ..AuthConfig::default()
        })
        .expect("loads");
        assert!(reloader.is_none());
        let key = EncodingKey::from_rsa_pem(RS256_PRIVATE.as_bytes()).expect("private key");
        let sign = |claims: serde_json::Value| {
            encode(&Header::new(Algorithm::RS256), &claims, &key).expect("signs")
        };
        let exp = unix_now() + 600;
        let token = sign(serde_json::json!({
            "sub": "hal", "aud": "wsmq", "exp": exp, "wsmq_methods": ["report.*"]
        }));
        let caller = auth.authenticate(&bearer(&token), None).expect("valid");
        assert_eq!(caller.identity.as_deref(), Some("hal"));
        assert!(caller.methods.allows("report.daily"));
        assert!(!caller.methods.allows("echo"));

        let no_sub = sign(serde_json::json!({"aud": "wsmq", "exp": exp}));
        assert!(auth.authenticate(&bearer(&no_sub), None).is_err());
        let hs = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "hal", "aud": "wsmq", "exp": exp}),
            &EncodingKey::from_secret(RS256_PUBLIC.as_bytes()),
        )
        .expect("signs");
        assert_eq!(
            auth.authenticate(&bearer(&hs), None),
            Err(Refusal::Invalid("wrong algorithm")),
            "an HS256 token signed with the public key must not pass (algorithm confusion)"
        );
        assert_eq!(
            auth.authenticate(&HeaderMap::new(), None),
            Err(Refusal::Missing)
        );
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

    #[test]
    fn short_hs256_secret_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "short\n").expect("write");
        let err = Authenticator::load(&AuthConfig {
            jwt_secret_file: Some(secret),
            ..AuthConfig::default()
        })
        .err()
        .expect("refused");
        assert!(err.to_string().contains("at least 32 bytes"), "{err}");
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
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
