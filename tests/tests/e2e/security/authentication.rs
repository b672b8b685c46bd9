//! Authentication: refusing to start without it on a public bind, tokens files (and SIGHUP reloads), token transports, and JWTs (HS256, ES256).

use super::*;

#[tokio::test]
async fn public_listen_without_auth_refuses_to_start_unless_insecure_is_given() {
    let system = System::builder()
        .without_worker()
        .without_gateway()
        .start()
        .await
        .expect("system starts");

    let mut refused = system
        .spawn_bare_gateway(&["--listen", "0.0.0.0:0"])
        .expect("spawns");
    // Waiting for the line (not just the exit) lets the output reader catch up with it.
    refused
        .wait_for_log("the refusal, saying why and how", |l| {
            l.text.contains("not loopback") && l.text.contains("--insecure-no-auth")
        })
        .await
        .expect("the refusal says why and how");
    let status = tokio::time::timeout(STARTUP_TIMEOUT, refused.exited())
        .await
        .expect("exits")
        .expect("status");
    assert_eq!(status.code(), Some(64), "a configuration error exits 64");

    let mut insecure = system
        .spawn_bare_gateway(&["--listen", "0.0.0.0:0", "--insecure-no-auth"])
        .expect("spawns");
    insecure
        .wait_for_message("gateway listening")
        .await
        .expect("starts");
    let lines = insecure.lines().await.expect("lines");
    let warned = |needle: &str| {
        lines
            .iter()
            .any(|l| l.level() == Some("WARN") && l.message().is_some_and(|m| m.contains(needle)))
    };
    assert!(
        warned("INSECURE"),
        "--insecure-no-auth is logged at WARN: {lines:?}"
    );
    // Browsers are let in from the gateway's own origin only by default (issue 17 §5): nothing
    // to warn about without `--allowed-origin '*'`.
    assert!(
        !warned("allowed-origin"),
        "no Origin warning without '*': {lines:?}"
    );
    insecure.terminate().await.expect("stops");
    system.cleanup().await;
}

#[tokio::test]
async fn missing_or_bad_token_gets_401_and_the_token_is_never_logged() {
    let secrets = Secrets::new();
    let tokens = secrets.write("tokens", &format!("# test\nalice:{ALICE}\n"));
    let mut system = system_with(&[("--tokens", arg(&tokens))]).await;

    assert_eq!(status_of(connect_with(&system, "/ws", &[]).await), 401);
    let wrong = "wrong-token-5d0e";
    let header = bearer(wrong);
    assert_eq!(
        status_of(connect_with(&system, "/ws", &[("authorization", &header)]).await),
        401
    );
    assert_eq!(
        status_of(connect_with(&system, &format!("/ws?token={wrong}"), &[]).await),
        401
    );
    // The whole answer: 401 with the challenge RFC 6750 asks for.
    let refused = http::get_with(
        system.gateway_addr().expect("gateway running"),
        "/ws",
        &http::UPGRADE_HEADERS,
    )
    .await
    .expect("the refusal is answered");
    assert_eq!(refused.status, 401);
    let challenges: Vec<&str> = refused
        .headers
        .iter()
        .filter(|(name, _)| name == "www-authenticate")
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(challenges, ["Bearer"], "WWW-Authenticate of a 401");
    // The right token still works, so the 401s were about the token.
    let header = bearer(ALICE);
    let mut alice = connect_with(&system, "/ws", &[("authorization", &header)])
        .await
        .expect("alice gets in");
    echo_works(&mut alice).await;

    let gateway = system.gateway().expect("gateway");
    let lines = gateway.lines().await.expect("lines");
    let refusals = lines
        .iter()
        .filter(|l| l.message() == Some("authentication failed; upgrade refused with 401"))
        .count();
    assert_eq!(refusals, 4, "each refusal is logged");
    for line in &lines {
        assert!(
            !line.text.contains(wrong) && !line.text.contains(ALICE),
            "a token leaked into the log: {}",
            line.text
        );
    }
    system.cleanup().await;
}

#[tokio::test]
async fn token_is_accepted_as_bearer_header_query_parameter_or_subprotocol() {
    let secrets = Secrets::new();
    let tokens = secrets.write("tokens", &format!("alice:{ALICE}\n"));
    let system = system_with(&[("--tokens", arg(&tokens))]).await;

    let header = bearer(ALICE);
    let mut by_header = connect_with(&system, "/ws", &[("authorization", &header)])
        .await
        .expect("header");
    echo_works(&mut by_header).await;

    let mut by_query = connect_with(&system, &format!("/ws?token={ALICE}"), &[])
        .await
        .expect("query");
    echo_works(&mut by_query).await;

    let protocols = format!("wsmq, bearer.{ALICE}");
    let mut by_protocol = connect_with(&system, "/ws", &[("sec-websocket-protocol", &protocols)])
        .await
        .expect("subprotocol");
    assert_eq!(
        by_protocol.subprotocol(),
        Some("wsmq"),
        "the non-token subprotocol is echoed"
    );
    echo_works(&mut by_protocol).await;
    system.cleanup().await;
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn jwt(
    key: &jsonwebtoken::EncodingKey,
    algorithm: jsonwebtoken::Algorithm,
    claims: &Value,
) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(algorithm), claims, key).expect("signs")
}

#[tokio::test]
async fn hs256_jwt_is_checked_for_signature_expiry_and_audience() {
    use jsonwebtoken::{Algorithm, EncodingKey};
    let secrets = Secrets::new();
    let secret = "a-test-secret-of-more-than-32-bytes-0123456789";
    let secret_file = secrets.write("jwt.secret", &format!("{secret}\n"));
    let system = system_with(&[
        ("--jwt-secret-file", arg(&secret_file)),
        ("--jwt-audience", "wsmq-test".to_owned()),
    ])
    .await;
    let key = EncodingKey::from_secret(secret.as_bytes());
    let now = unix_now();
    let try_token = |token: String| {
        let system = &system;
        async move {
            let header = bearer(&token);
            connect_with(system, "/ws", &[("authorization", &header)]).await
        }
    };

    let good = jwt(
        &key,
        Algorithm::HS256,
        &json!({"sub": "erin", "aud": "wsmq-test", "exp": now + 600}),
    );
    let mut erin = try_token(good).await.expect("a good token gets in");
    echo_works(&mut erin).await;

    let expired = jwt(
        &key,
        Algorithm::HS256,
        &json!({"sub": "erin", "aud": "wsmq-test", "exp": now - 3600}),
    );
    assert_eq!(status_of(try_token(expired).await), 401, "expired");
    let wrong_aud = jwt(
        &key,
        Algorithm::HS256,
        &json!({"sub": "erin", "aud": "other", "exp": now + 600}),
    );
    assert_eq!(status_of(try_token(wrong_aud).await), 401, "wrong audience");
    let not_yet = jwt(
        &key,
        Algorithm::HS256,
        &json!({"sub": "erin", "aud": "wsmq-test", "exp": now + 7200, "nbf": now + 3600}),
    );
    assert_eq!(status_of(try_token(not_yet).await), 401, "not valid yet");
    let other_key = EncodingKey::from_secret(b"another-secret-of-more-than-32-bytes-xyz");
    let forged = jwt(
        &other_key,
        Algorithm::HS256,
        &json!({"sub": "erin", "aud": "wsmq-test", "exp": now + 600}),
    );
    assert_eq!(status_of(try_token(forged).await), 401, "bad signature");

    // The wsmq_methods claim is the identity's allowlist.
    let limited = jwt(
        &key,
        Algorithm::HS256,
        &json!({"sub": "frank", "aud": "wsmq-test", "exp": now + 600, "wsmq_methods": ["echo"]}),
    );
    let mut frank = try_token(limited).await.expect("gets in");
    echo_works(&mut frank).await;
    let refused = frank.call("fib", json!({"n": 3})).await.expect("answered");
    assert_eq!(rpc::error_code(&refused), Some(-32601), "{refused}");
    system.cleanup().await;
}

#[tokio::test]
async fn es256_jwt_verifies_with_the_public_key() {
    use jsonwebtoken::{Algorithm, EncodingKey};
    let pair = rcgen::KeyPair::generate().expect("P-256 key"); // rcgen's default: ECDSA P-256
    let secrets = Secrets::new();
    let public = secrets.write("jwt.pub.pem", &pair.public_key_pem());
    let system = system_with(&[("--jwt-public-key", arg(&public))]).await;

    let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("private key");
    let token = jwt(
        &key,
        Algorithm::ES256,
        &json!({"sub": "gina", "exp": unix_now() + 600}),
    );
    let header = bearer(&token);
    let mut gina = connect_with(&system, "/ws", &[("authorization", &header)])
        .await
        .expect("gets in");
    echo_works(&mut gina).await;

    let stranger = rcgen::KeyPair::generate().expect("another key");
    let key = EncodingKey::from_ec_pem(stranger.serialize_pem().as_bytes()).expect("private key");
    let forged = jwt(
        &key,
        Algorithm::ES256,
        &json!({"sub": "gina", "exp": unix_now() + 600}),
    );
    let header = bearer(&forged);
    assert_eq!(
        status_of(connect_with(&system, "/ws", &[("authorization", &header)]).await),
        401
    );
    system.cleanup().await;
}

#[tokio::test]
async fn sighup_reloads_the_tokens_file_and_keeps_the_old_one_if_the_new_is_broken() {
    let secrets = Secrets::new();
    let tokens = secrets.write("tokens", &format!("alice:{ALICE}\n"));
    let mut system = system_with(&[("--tokens", arg(&tokens))]).await;
    let bob = bearer(BOB);
    assert_eq!(
        status_of(connect_with(&system, "/ws", &[("authorization", &bob)]).await),
        401
    );

    std::fs::write(&tokens, format!("alice:{ALICE}\nbob:{BOB}\n")).expect("rewrite");
    let gateway = system.gateway().expect("gateway");
    gateway.signal(Signal::SIGHUP).expect("SIGHUP");
    gateway
        .wait_for_message("tokens file reloaded")
        .await
        .expect("reloaded");
    let mut client = connect_with(&system, "/ws", &[("authorization", &bob)])
        .await
        .expect("bob now gets in");
    echo_works(&mut client).await;

    std::fs::write(&tokens, "this line has no token\n").expect("break it");
    let gateway = system.gateway().expect("gateway");
    gateway.signal(Signal::SIGHUP).expect("SIGHUP");
    gateway
        .wait_for_message("tokens file not reloaded; keeping the current tokens")
        .await
        .expect("the broken file is refused");
    let mut client = connect_with(&system, "/ws", &[("authorization", &bob)])
        .await
        .expect("bob still gets in");
    echo_works(&mut client).await;
    system.cleanup().await;
}
