//! Who may connect and over what: Origin checks, wss, the admin listener, and the bridge's TLS to RabbitMQ.

use super::*;

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
