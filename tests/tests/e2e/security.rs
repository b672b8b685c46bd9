//! Who gets in and what they may do: authentication (tokens file, JWT), the Origin allowlist,
//! TLS, the caller's identity on jobs, method allowlists, sessions bound to their identity,
//! and the per-connection limits (rate, per-address count, handshake, keepalive, idle).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsmq_tests::{
    FakeWorker, HEALTH_TIMEOUT, Incoming, RECV_TIMEOUT, Refusal, STARTUP_TIMEOUT, System, WsClient,
    http, rpc,
};

const ALICE: &str = "alice-token-3f9a";
const BOB: &str = "bob-token-77c1";

/// A temp dir holding the test's secrets (tokens file, keys), kept for the test's life.
struct Secrets {
    dir: TempDir,
}

impl Secrets {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write secret");
        path
    }
}

fn arg(path: &Path) -> String {
    path.to_str().expect("utf-8 path").to_owned()
}

async fn system_with(args: &[(&str, String)]) -> System {
    let mut builder = System::builder();
    for (flag, value) in args {
        builder = builder.gateway_arg(flag, value);
    }
    builder.start().await.expect("system starts")
}

async fn connect_with(
    system: &System,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<WsClient, u16> {
    let addr = system.gateway_addr().expect("gateway running");
    match WsClient::try_connect_with(addr, path, headers)
        .await
        .expect("handshake answered")
    {
        Ok(client) => Ok(client),
        Err(Refusal::Status(status)) => Err(status),
        Err(Refusal::Failed(why)) => panic!("handshake failed without an HTTP status: {why}"),
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn echo_works(client: &mut WsClient) {
    let payload = json!({"n": 1});
    let response = client
        .call("echo", payload.clone())
        .await
        .expect("echo answered");
    assert_eq!(rpc::result(&response), Some(&payload), "{response}");
}

fn status_of(result: Result<WsClient, u16>) -> u16 {
    match result {
        Ok(_) => 101,
        Err(status) => status,
    }
}

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
    assert_eq!(refusals, 3, "each refusal is logged");
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

#[tokio::test]
async fn method_outside_the_allowlist_is_refused_exactly_like_an_unknown_method() {
    let secrets = Secrets::new();
    let tokens = secrets.write("tokens", &format!("alice:{ALICE}:echo,prog*\nbob:{BOB}\n"));
    let system = system_with(&[("--tokens", arg(&tokens))]).await;

    let header = bearer(ALICE);
    let mut alice = connect_with(&system, "/ws", &[("authorization", &header)])
        .await
        .expect("alice");
    echo_works(&mut alice).await;
    // The worker answers it (here: about its params), so the gateway let it through.
    let progress = alice.call("progress", json!({})).await.expect("answered");
    assert_ne!(
        rpc::error_code(&progress),
        Some(-32601),
        "prog* allows progress: {progress}"
    );

    // fib exists (bob may call it); nosuch.method does not. Alice cannot tell them apart.
    let header = bearer(BOB);
    let mut bob = connect_with(&system, "/ws", &[("authorization", &header)])
        .await
        .expect("bob");
    let fib = bob.call("fib", json!({"n": 10})).await.expect("answered");
    assert!(rpc::result(&fib).is_some(), "fib exists: {fib}");

    let refused = alice.call("fib", json!({"n": 10})).await.expect("answered");
    let unknown = alice
        .call("nosuch.method", json!({"n": 10}))
        .await
        .expect("answered");
    for (response, method) in [(&refused, "fib"), (&unknown, "nosuch.method")] {
        assert_eq!(
            response["error"],
            json!({"code": -32601, "message": "Method not found", "data": format!("no worker serves {method:?}")}),
            "{response}"
        );
    }
    system.cleanup().await;
}

#[tokio::test]
async fn callers_identity_reaches_the_worker_in_the_wsmq_caller_header() {
    let secrets = Secrets::new();
    let tokens = secrets.write("tokens", &format!("alice:{ALICE}\n"));
    let mut system = system_with(&[("--tokens", arg(&tokens))]).await;
    let mut worker = FakeWorker::start(&mut system, "whoami", |job| {
        Some(serde_json::to_vec(&json!({"caller": job.caller_header})).expect("json"))
    })
    .await
    .expect("fake worker");

    let header = bearer(ALICE);
    let mut alice = connect_with(&system, "/ws", &[("authorization", &header)])
        .await
        .expect("alice");
    let response = alice.call("whoami", json!({})).await.expect("answered");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"caller": "alice"})),
        "{response}"
    );
    let job = worker.next_job().await.expect("job");
    assert_eq!(job.caller_header.as_deref(), Some("alice"));
    worker.stop().await;
    system.cleanup().await;
}

#[tokio::test]
async fn session_resumes_only_for_the_identity_that_created_it() {
    let secrets = Secrets::new();
    let tokens = secrets.write("tokens", &format!("alice:{ALICE}\nbob:{BOB}\n"));
    let system = system_with(&[("--tokens", arg(&tokens))]).await;

    let alice_auth = bearer(ALICE);
    let mut alice = connect_with(&system, "/ws", &[("authorization", &alice_auth)])
        .await
        .expect("alice");
    let session = alice
        .await_session(RECV_TIMEOUT)
        .await
        .expect("greeting")
        .token;
    alice.close().await.expect("closes");
    let resume = format!("/ws?session={session}");

    let bob_auth = bearer(BOB);
    assert_eq!(
        status_of(connect_with(&system, &resume, &[("authorization", &bob_auth)]).await),
        404,
        "another identity is told the session does not exist"
    );
    assert_eq!(
        status_of(
            connect_with(
                &system,
                "/ws?session=00112233445566778899aabbccddeeff",
                &[("authorization", &bob_auth)]
            )
            .await
        ),
        404
    );
    // The connection's close reaches the gateway asynchronously: retry while it says in use.
    let deadline = tokio::time::Instant::now() + HEALTH_TIMEOUT;
    let mut alice = loop {
        match connect_with(&system, &resume, &[("authorization", &alice_auth)]).await {
            Ok(client) => break client,
            Err(409) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("alice could not resume her session: HTTP {status}"),
        }
    };
    echo_works(&mut alice).await;
    system.cleanup().await;
}

#[tokio::test]
async fn disallowed_origin_gets_403_and_allowed_or_absent_origin_passes() {
    let system = system_with(&[("--allowed-origin", "https://app.example.com".to_owned())]).await;
    assert_eq!(
        status_of(connect_with(&system, "/ws", &[("origin", "https://evil.example.com")]).await),
        403
    );
    assert_eq!(
        status_of(connect_with(&system, "/ws", &[("origin", "null")]).await),
        403
    );
    let mut browser = connect_with(&system, "/ws", &[("origin", "https://app.example.com")])
        .await
        .expect("allowed");
    echo_works(&mut browser).await;
    let mut tool = connect_with(&system, "/ws", &[])
        .await
        .expect("no Origin: not a browser");
    echo_works(&mut tool).await;
    system.cleanup().await;
}

#[tokio::test]
async fn wss_with_a_self_signed_certificate_serves_calls() {
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::ring};
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("self-signed certificate");
    let secrets = Secrets::new();
    let cert_file = secrets.write("cert.pem", &cert.cert.pem());
    let key_file = secrets.write("key.pem", &cert.key_pair.serialize_pem());
    let tokens = secrets.write("tokens", &format!("alice:{ALICE}\n"));
    // /healthz moves to the plain admin port, where the harness polls it.
    let system = system_with(&[
        ("--tls-cert", arg(&cert_file)),
        ("--tls-key", arg(&key_file)),
        ("--tokens", arg(&tokens)),
        ("--admin-listen", "127.0.0.1:0".to_owned()),
    ])
    .await;
    let addr = system.gateway_addr().expect("addr");

    let mut roots = RootCertStore::empty();
    roots
        .add(cert.cert.der().clone())
        .expect("trust the test certificate");
    let tls = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let header = bearer(ALICE);
    let mut client = WsClient::try_connect_url(
        &format!("wss://{addr}/ws"),
        &[("authorization", &header)],
        Some(Arc::new(tls)),
    )
    .await
    .expect("handshake answered")
    .expect("wss connects");
    echo_works(&mut client).await;

    // Plain websockets get nowhere on the TLS port.
    let plain = WsClient::try_connect_with(addr, "/ws", &[("authorization", &header)])
        .await
        .expect("answered");
    assert!(
        matches!(plain, Err(Refusal::Failed(_))),
        "plain ws:// on the TLS port must fail"
    );
    system.cleanup().await;
}

#[tokio::test]
async fn admin_listen_moves_health_and_metrics_off_the_websocket_port() {
    let secrets = Secrets::new();
    let tokens = secrets.write("tokens", &format!("alice:{ALICE}\n"));
    let system = system_with(&[
        ("--tokens", arg(&tokens)),
        ("--admin-listen", "127.0.0.1:0".to_owned()),
    ])
    .await;
    let admin = system.admin_addr().expect("admin address");
    let main = system.gateway_addr().expect("main address");
    for path in ["/healthz", "/readyz", "/metrics"] {
        let on_admin = http::get(admin, path).await.expect("admin answers");
        assert_eq!(
            on_admin.status, 200,
            "{path} on the admin port, without a token"
        );
        let on_main = http::get(main, path).await.expect("main answers");
        assert_eq!(on_main.status, 404, "{path} is not on the websocket port");
    }
    let metrics = http::get(admin, "/metrics").await.expect("metrics");
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(!text.contains(ALICE), "no token in /metrics");
    system.cleanup().await;
}

#[tokio::test]
async fn calls_past_the_rate_limit_get_32005_and_others_are_served() {
    let system = system_with(&[
        ("--call-rate", "1".to_owned()),
        ("--call-burst", "3".to_owned()),
    ])
    .await;
    let mut client = system.client().await.expect("connects");
    let batch: Vec<Value> = (1..=10)
        .map(|i| rpc::request(i, "echo", json!({"i": i})))
        .collect();
    client.send_json(&Value::Array(batch)).await.expect("sends");
    let reply = client.recv_json().await.expect("batch answered");
    let mut responses = reply.as_array().expect("a batch response").clone();
    responses.sort_by_key(|r| r["id"].as_i64());
    assert_eq!(responses.len(), 10, "{reply}");
    for response in &responses[..3] {
        assert!(
            rpc::result(response).is_some(),
            "the burst is served: {response}"
        );
    }
    let limited = responses
        .iter()
        .filter(|r| rpc::error_code(r) == Some(-32005))
        .count();
    // At 1 call/s at most a token or two comes back while the batch is handled.
    assert!(
        limited >= 5,
        "calls past the burst are refused with -32005: {reply}"
    );
    assert!(
        responses
            .iter()
            .all(|r| rpc::result(r).is_some() || rpc::error_code(r) == Some(-32005)),
        "{reply}"
    );
    // Another connection has its own bucket.
    let mut other = system.client().await.expect("connects");
    echo_works(&mut other).await;
    system.cleanup().await;
}

#[tokio::test]
async fn connections_past_the_per_address_limit_get_429_until_one_closes() {
    let system = system_with(&[("--max-connections-per-ip", "2".to_owned())]).await;
    let first = system.client().await.expect("1st");
    let mut second = system.client().await.expect("2nd");
    assert_eq!(status_of(connect_with(&system, "/ws", &[]).await), 429);
    first.close().await.expect("closes");
    let deadline = tokio::time::Instant::now() + HEALTH_TIMEOUT;
    let mut third = loop {
        match connect_with(&system, "/ws", &[]).await {
            Ok(client) => break client,
            Err(429) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("a slot should free up: HTTP {status}"),
        }
    };
    echo_works(&mut third).await;
    echo_works(&mut second).await;
    system.cleanup().await;
}

#[tokio::test]
async fn connection_that_never_finishes_its_request_is_closed_at_the_handshake_timeout() {
    let mut system = system_with(&[("--handshake-timeout", "500ms".to_owned())]).await;
    let addr = system.gateway_addr().expect("addr");
    let mut slow = tokio::net::TcpStream::connect(addr)
        .await
        .expect("tcp connects");
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await
        .expect("half a request");
    let mut buf = [0u8; 512];
    let read = tokio::time::timeout(RECV_TIMEOUT, slow.read(&mut buf))
        .await
        .expect("the gateway acts");
    // Closed without an answer (or, should hyper get there first, after a 408).
    if let Ok(n) = read
        && n > 0
    {
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 408"), "{head}");
        let rest = tokio::time::timeout(RECV_TIMEOUT, slow.read(&mut buf))
            .await
            .expect("closed");
        assert!(matches!(rest, Ok(0) | Err(_)), "the connection is closed");
    }
    let gateway = system.gateway().expect("gateway");
    gateway
        .wait_for_message("no complete HTTP request within the handshake timeout; closing")
        .await
        .expect("the timeout is logged");
    let mut client = system.client().await.expect("others still connect");
    echo_works(&mut client).await;
    system.cleanup().await;
}

#[tokio::test]
async fn keepalive_drops_a_peer_that_answers_no_ping_and_keeps_a_live_one() {
    let mut system = system_with(&[
        ("--ping-interval", "1s".to_owned()),
        ("--idle-timeout", "0s".to_owned()),
    ])
    .await;
    let mut dead = system.client().await.expect("dead peer connects");
    let live = system.client().await.expect("live peer connects");
    let stop = tokio_util::sync::CancellationToken::new();
    let live_task = tokio::spawn({
        let stop = stop.clone();
        let mut live = live;
        async move {
            let mut calls = 0u32;
            while !stop.is_cancelled() {
                let response = live.call("echo", json!({"n": calls})).await?;
                anyhow::ensure!(
                    rpc::result(&response).is_some(),
                    "live call failed: {response}"
                );
                calls += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::Ok((live, calls))
        }
    });
    let gateway = system.gateway().expect("gateway");
    gateway
        .wait_for_message("keepalive: no answer to the last ping; dropping the connection")
        .await
        .expect("the silent peer is dropped");
    stop.cancel();
    let (mut live, calls) = live_task
        .await
        .expect("joins")
        .expect("every live call is served");
    assert!(calls > 0);
    echo_works(&mut live).await;
    match dead
        .next_incoming(RECV_TIMEOUT)
        .await
        .expect("the dead peer's socket ends")
    {
        Incoming::Close(Some((code, _))) => assert_eq!(code, 4001),
        Incoming::Ended(_) | Incoming::Close(None) => {}
        other => panic!("expected the connection to end, got {other:?}"),
    }
    system.cleanup().await;
}

#[tokio::test]
async fn idle_connection_is_closed_with_4000_but_not_while_a_call_runs() {
    let system = system_with(&[("--idle-timeout", "700ms".to_owned())]).await;
    let mut busy = system.client().await.expect("connects");
    // A call that outlasts the idle timeout keeps the connection open until it is answered.
    let response = busy
        .call("sleep", json!({"ms": 1500}))
        .await
        .expect("answered, not closed");
    assert!(rpc::result(&response).is_some(), "{response}");
    match busy
        .next_incoming(RECV_TIMEOUT)
        .await
        .expect("closed when idle")
    {
        Incoming::Close(Some((code, reason))) => {
            assert_eq!((code, reason.as_str()), (4000, "idle timeout"));
        }
        other => panic!("expected close 4000, got {other:?}"),
    }
    system.cleanup().await;
}

#[tokio::test]
async fn frames_over_the_frame_limit_close_with_1009_while_fragmented_messages_pass() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let system = system_with(&[
        ("--max-message-bytes", "4096".to_owned()),
        ("--max-frame-bytes", "1024".to_owned()),
    ])
    .await;
    let mut client = system.client().await.expect("connects");
    // 2.4 KiB in three frames of 800 bytes: each frame and the message are within limits.
    let text = rpc::request(1, "echo", json!({"blob": "z".repeat(2300)})).to_string();
    let bytes = text.as_bytes();
    let parts: Vec<&[u8]> = bytes.chunks(800).collect();
    for (i, part) in parts.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        client
            .send_frame(Frame::message(part.to_vec(), opcode, i + 1 == parts.len()))
            .await
            .expect("sends a fragment");
    }
    let response = client
        .recv_json()
        .await
        .expect("the fragmented call is answered");
    assert!(rpc::result(&response).is_some(), "{response}");

    // One 2 KiB frame is over the frame limit though the message limit would allow it.
    let big = rpc::request(2, "echo", json!({"blob": "y".repeat(2000)})).to_string();
    client.send_text(big).await.expect("sends");
    match client
        .next_incoming(RECV_TIMEOUT)
        .await
        .expect("the gateway reacts")
    {
        Incoming::Close(Some((code, _))) => assert_eq!(code, 1009),
        Incoming::Ended(_) => {}
        other => panic!("expected close 1009, got {other:?}"),
    }
    system.cleanup().await;
}

#[tokio::test]
async fn bridge_speaks_tls_to_an_amqps_url_and_never_logs_its_password() {
    let bins = wsmq_tests::binaries::binaries().await.expect("binaries");
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("bridge.sock");
    let id = uuid::Uuid::new_v4().simple().to_string();
    let password = format!("s3cret-{id}");
    // RabbitMQ's plain port: the TLS handshake the amqps:// URL asks for must fail there.
    let url = format!("amqps://guest:{password}@127.0.0.1:5672/%2f");
    let mut bridge = wsmq_tests::Service::spawn(
        "bridge",
        &bins.bridge,
        [
            "--ipc",
            socket.to_str().expect("utf-8"),
            "--amqp",
            &url,
            "--instance",
            &format!("test-{id}"),
            "--queue-prefix",
            &format!("wsmq-test.{id}."),
            "--log-format",
            "json",
        ],
        &[] as &[(&str, &str)],
    )
    .expect("bridge starts");
    let lost = bridge
        .wait_for_message("broker connection lost")
        .await
        .expect("the connection fails");
    let printed = bridge
        .lines()
        .await
        .expect("lines")
        .into_iter()
        .map(|l| l.text)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !printed.contains(&password),
        "the password leaked: {printed}"
    );
    // rustls met RabbitMQ's plain AMQP greeting where a TLS record should be.
    let cause = lost
        .field("error")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        ["corrupt message", "invalidcontenttype", "tls", "handshake"]
            .iter()
            .any(|w| cause.contains(w)),
        "an amqps:// URL must make the bridge speak TLS: {}",
        lost.text
    );
    bridge.terminate().await.expect("stops");
}
