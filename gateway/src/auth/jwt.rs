//! JWTs: HS256 with a shared secret, RS256 or ES256 with a PEM public key. `sub` is the
//! caller's identity, `wsmq_methods` (optional) the methods it may call.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::{Allowlist, Caller, Refusal, SecurityError, read};

/// A JWT verifier.
pub(super) struct Jwt {
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
    pub(super) fn hs256(path: &Path, audience: Option<&str>) -> Result<Self, SecurityError> {
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
    pub(super) fn public_key(path: &Path, audience: Option<&str>) -> Result<Self, SecurityError> {
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

    pub(super) fn verify(&self, token: &str) -> Result<Caller, Refusal> {
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

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;

    use super::super::tests::{bearer, unix_now};
    use super::super::{AuthConfig, Authenticator};
    use super::*;

    /// Test-only RSA keys (tests/fixtures/README.md).
    const RS256_PRIVATE: &str = include_str!("../../../tests/fixtures/jwt-rs256-test.key");
    const RS256_PUBLIC: &str = include_str!("../../../tests/fixtures/jwt-rs256-test.pub.pem");

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
}
