//! The bridge's side of the IPC socket: it refuses what is not its protocol, then still serves.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;
use wsmq_ipc_proto::{Hello, IpcCodec, PROTOCOL_VERSION, ToBridge, ToGateway};
use wsmq_tests::{RECV_TIMEOUT, System, rpc};

/// How long the bridge may take to hang up on a peer it refuses.
const HANG_UP_LIMIT: Duration = Duration::from_secs(5);

/// Reads until the peer closes; `Err` if it keeps the connection open past [`HANG_UP_LIMIT`].
async fn assert_hangs_up(stream: &mut UnixStream, why: &str) {
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(HANG_UP_LIMIT, async {
        loop {
            match stream.read(&mut buf).await {
                // EOF, or a reset because the bridge closed with our bytes unread: both a hang-up.
                Ok(0) | Err(_) => return,
                // A refusal or anything else it says first is fine; keep reading.
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{why}: the bridge kept the connection open");
}

#[tokio::test]
async fn ipc_refuses_another_protocol_version() {
    let mut system = System::builder()
        .without_gateway()
        .start()
        .await
        .expect("bridge and worker start");

    // A peer speaking the next version gets a refusal naming ours, then EOF.
    let stream = UnixStream::connect(system.socket_path())
        .await
        .expect("connects to the bridge socket");
    let mut framed = Framed::new(stream, IpcCodec::<ToGateway, ToBridge>::new());
    framed
        .send(ToBridge::Hello(Hello {
            version: PROTOCOL_VERSION + 1,
            peer: "e2e test from the future".into(),
        }))
        .await
        .expect("sends hello");
    let answer = tokio::time::timeout(RECV_TIMEOUT, framed.next())
        .await
        .expect("the bridge answers the hello");
    match answer {
        Some(Ok(ToGateway::Refused(refusal))) => {
            assert_eq!(
                refusal.version, PROTOCOL_VERSION,
                "the refusal names the bridge's version"
            );
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    let end = tokio::time::timeout(HANG_UP_LIMIT, framed.next())
        .await
        .expect("the bridge closes after refusing");
    assert!(end.is_none(), "expected EOF after the refusal, got {end:?}");
    drop(framed);

    // Bytes that are not frames: a huge length prefix, then a frame that does not decode.
    let not_frames: [&[u8]; 2] = [
        b"GET / HTTP/1.1\r\nHost: bridge\r\n\r\n",
        &[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff],
    ];
    for garbage in not_frames {
        let mut stream = UnixStream::connect(system.socket_path())
            .await
            .expect("connects to the bridge socket");
        stream.write_all(garbage).await.expect("sends garbage");
        assert_hangs_up(&mut stream, &format!("after {garbage:?}")).await;
    }

    // None of that hurt the bridge: a real gateway connects and serves a call.
    system
        .start_gateway()
        .await
        .expect("gateway starts and is healthy");
    let mut client = system.client().await.expect("client connects");
    let response = client
        .call("echo", json!({"after": "refusals"}))
        .await
        .expect("echo works");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"after": "refusals"})),
        "{response}"
    );

    system.cleanup().await;
}
