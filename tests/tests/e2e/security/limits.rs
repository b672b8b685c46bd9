//! Per-connection limits: call rate, connections per address, the handshake timeout, keepalive, idleness and frame size.

use super::*;

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
    // The gauge drops once the connection has given its slots back.
    system
        .wait_metric("wsmq_connections", "1", |n| n == 1.0)
        .await
        .expect("the gateway lets the closed connection go");
    let mut third = connect_with(&system, "/ws", &[])
        .await
        .unwrap_or_else(|status| panic!("a slot should be free: HTTP {status}"));
    echo_works(&mut third).await;
    echo_works(&mut second).await;
    system.cleanup().await;
}

#[tokio::test]
async fn connections_past_the_gateway_limit_get_503_until_one_closes() {
    let system = system_with(&[("--max-connections", "2".to_owned())]).await;
    let first = system.client().await.expect("1st");
    let mut second = system.client().await.expect("2nd");
    assert_eq!(status_of(connect_with(&system, "/ws", &[]).await), 503);
    first.close().await.expect("closes");
    // The gauge drops once the connection has given its slot back.
    system
        .wait_metric("wsmq_connections", "1", |n| n == 1.0)
        .await
        .expect("the gateway lets the closed connection go");
    let mut third = connect_with(&system, "/ws", &[])
        .await
        .expect("a slot is free again");
    echo_works(&mut third).await;
    echo_works(&mut second).await;
    let refused = system
        .metric("wsmq_connections_refused_total{reason=\"limit\"}")
        .await
        .expect("metrics answer");
    assert_eq!(refused, 1.0, "the refusal is counted");
    system.cleanup().await;
}

#[tokio::test]
async fn client_that_stops_reading_is_closed_with_1008() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    /// Results of this size, this many: more than the 8 MiB the gateway lets wait for a
    /// client's socket.
    const RESULT_BYTES: usize = 512 * 1024;
    const CALLS: usize = 24;
    let mut system = system_with(&[]).await;
    let addr = system.gateway_addr().expect("addr");
    // A small receive buffer, so the gateway's results pile up on its side, not in ours.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = socket.connect(addr).await.expect("tcp connects");
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .expect("upgrades");
    let pad = "x".repeat(RESULT_BYTES);
    for id in 0..CALLS {
        let call = rpc::request(id, "echo", json!({ "pad": pad }));
        ws.send(Message::text(call.to_string()))
            .await
            .expect("sends a call");
    }
    // Never read until the gateway has given up on the client...
    system
        .gateway()
        .expect("gateway")
        .wait_for_message("client is not reading its responses; disconnecting it")
        .await
        .expect("the gateway takes the client for one that does not read");
    // ...then read: what the socket had taken, then the close frame, which the gateway
    // writes once the socket takes it again (best effort, for a while).
    let close = loop {
        let next = tokio::time::timeout(RECV_TIMEOUT, ws.next())
            .await
            .expect("the connection ends");
        match next {
            Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(frame))) => {
                break frame.map(|f| (u16::from(f.code), f.reason.to_string()));
            }
            other => panic!("expected the close frame, got {other:?}"),
        }
    };
    assert_eq!(
        close,
        Some((1008, "too slow reading responses".to_owned())),
        "close frame"
    );
    let closed = system
        .metric("wsmq_slow_clients_closed_total")
        .await
        .expect("metrics answer");
    assert_eq!(closed, 1.0, "the slow client is counted");
    let mut other = system.client().await.expect("others still connect");
    echo_works(&mut other).await;
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
    // The silent peer's socket still takes what the gateway writes, so the close frame is
    // there to read, behind the pings it never answered.
    match dead
        .next_incoming(RECV_TIMEOUT)
        .await
        .expect("the dead peer's socket ends")
    {
        Incoming::Close(Some((code, reason))) => {
            assert_eq!((code, reason.as_str()), (4001, "no pong"));
        }
        other => panic!("expected close 4001, got {other:?}"),
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
        other => panic!("expected close 1009, got {other:?}"),
    }
    system.cleanup().await;
}
