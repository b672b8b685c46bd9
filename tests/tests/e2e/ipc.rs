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

/// The uid the "other user" runs as: nobody.
const OTHER_UID: u32 = 65534;

/// `setpriv` (util-linux) arguments that run a program as [`OTHER_UID`], its group, and no
/// supplementary groups.
fn setpriv_args() -> [String; 3] {
    [
        format!("--reuid={OTHER_UID}"),
        format!("--regid={OTHER_UID}"),
        "--clear-groups".to_owned(),
    ]
}

/// A command that runs `program` as [`OTHER_UID`], through `setpriv`. Fails the test, saying
/// why, when this process cannot run anything as another user (it needs root; CI runs the suite
/// as root): a peer-credential test that cannot bring a second uid checks nothing, and must not
/// pass.
async fn as_other_user(program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    let check = tokio::process::Command::new("setpriv")
        .args(setpriv_args())
        .args(["id", "-u"])
        .output()
        .await;
    match check {
        Ok(out)
            if out.status.success()
                && String::from_utf8_lossy(&out.stdout).trim() == OTHER_UID.to_string() => {}
        Ok(out) => panic!(
            "cannot run a process as uid {OTHER_UID}, the other side of this peer-credential \
             check (setpriv: {}, {}); run the suite as root, as CI does",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "cannot run setpriv (util-linux) to take uid {OTHER_UID} for this peer-credential \
             check: {e}"
        ),
    }
    let mut command = tokio::process::Command::new("setpriv");
    command.args(setpriv_args()).arg(program);
    command
}

/// A Python the other user may run: the system's, since one on root's `PATH` may live in a
/// home directory closed to others (pyenv's shims in `/root`).
fn system_python() -> &'static str {
    ["/usr/bin/python3", "/bin/python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("python3")
}

/// Runs `wsmq-ipc ping` against the socket as [`OTHER_UID`] and returns its exit code.
async fn ping_as_other_user(socket: &std::path::Path) -> i32 {
    let bins = wsmq_tests::binaries::binaries()
        .await
        .expect("binaries found");
    let out = as_other_user(&bins.ipc)
        .await
        .arg("ping")
        .arg("--ipc")
        .arg(socket)
        .args(["--timeout", "5s"])
        .output()
        .await
        .expect("wsmq-ipc runs as another user");
    eprintln!(
        "[test] ping as uid {OTHER_UID}: {} stdout {:?} stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.code().expect("ping exits, not killed")
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("exists")
        .permissions()
        .mode()
        & 0o7777
}

fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test]
async fn ipc_socket_is_private_and_another_uid_is_refused_by_its_credentials() {
    // Fails here, before anything starts, when no second uid can be had.
    drop(as_other_user("true").await);
    let mut system = System::builder()
        .without_gateway()
        .start()
        .await
        .expect("bridge and worker start");
    let socket = system.socket_path().to_path_buf();
    let dir = socket
        .parent()
        .expect("socket has a directory")
        .to_path_buf();
    assert_eq!(mode_of(&socket), 0o600, "socket mode");
    assert_eq!(mode_of(&dir) & 0o077, 0, "socket directory is private");

    // File permissions keep the other user out: ping cannot even connect (exit 3).
    assert_eq!(
        ping_as_other_user(&socket).await,
        3,
        "blocked by permissions"
    );

    // Open both wide, as a careless chmod would: the credential check still refuses (exit 2,
    // the bridge's Refused), and the bridge logs who it refused.
    chmod(&dir, 0o755);
    chmod(&socket, 0o666);
    assert_eq!(
        ping_as_other_user(&socket).await,
        2,
        "refused by credentials"
    );
    let line = system
        .bridge()
        .expect("bridge runs")
        .wait_for_message("refused an ipc peer")
        .await
        .expect("the bridge logs the refusal");
    let reason = line.field("reason").and_then(|r| r.as_str()).unwrap_or("");
    assert!(
        reason.contains(&format!("uid {OTHER_UID}")),
        "the log names the peer's uid: {reason}"
    );

    // The refused peer never held the gateway slot: a real gateway connects and serves...
    system.start_gateway().await.expect("gateway starts");
    let mut client = system.client().await.expect("client connects");
    let response = client
        .call("echo", json!({"n": 1}))
        .await
        .expect("echo works");
    assert_eq!(rpc::result(&response), Some(&json!({"n": 1})), "{response}");
    // ...and another refused peer while it is connected does not disturb it.
    assert_eq!(ping_as_other_user(&socket).await, 2, "refused again");
    let response = client
        .call("echo", json!({"n": 2}))
        .await
        .expect("echo still works");
    assert_eq!(rpc::result(&response), Some(&json!({"n": 2})), "{response}");

    system.cleanup().await;
}

#[tokio::test]
async fn ipc_garbage_on_either_side_is_dropped_and_logged_and_the_link_recovers() {
    let mut system = System::builder().start().await.expect("system starts");
    let socket = system.socket_path().to_path_buf();
    let mut client = system.client().await.expect("client connects");

    // A peer sending garbage while the real gateway is connected is hung up on; the gateway's
    // calls go on.
    let mut stream = UnixStream::connect(&socket).await.expect("connects");
    // The bridge refuses a second peer at once, so it may have hung up before this write
    // (EPIPE): either way the peer is dropped.
    let _ = stream
        .write_all(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff])
        .await;
    assert_hangs_up(&mut stream, "garbage beside a live gateway").await;
    let response = client
        .call("echo", json!({"beside": "garbage"}))
        .await
        .expect("echo works");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"beside": "garbage"})),
        "{response}"
    );

    // The bridge goes; a fake one takes its socket and answers the gateway's hello with
    // garbage. The gateway drops it and logs the whole cause, not just "ipc framing failed".
    system.stop_bridge().await.expect("bridge stops");
    let _ = std::fs::remove_file(&socket);
    let fake = tokio::net::UnixListener::bind(&socket).expect("fake bridge binds");
    let (mut conn, _) = tokio::time::timeout(RECV_TIMEOUT, fake.accept())
        .await
        .expect("the gateway reconnects")
        .expect("accepts");
    let mut hello = [0u8; 4];
    conn.read_exact(&mut hello)
        .await
        .expect("the gateway says hello");
    conn.write_all(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff])
        .await
        .expect("answers garbage");
    assert_hangs_up(&mut conn, "the gateway, after a garbage welcome").await;
    let line = system
        .gateway()
        .expect("gateway runs")
        .wait_for_log("the link failure with its cause", |l| {
            l.message() == Some("bridge link lost; reconnecting")
                && l.field("error")
                    .and_then(|e| e.as_str())
                    .is_some_and(|e| e.contains("does not decode") && e.contains(": "))
        })
        .await
        .expect("the gateway logs why");
    eprintln!("[test] gateway logged: {}", line.text);
    drop(conn);
    drop(fake);

    // The real bridge comes back (clearing the fake's stale socket) and calls flow again.
    system.start_bridge().await.expect("bridge restarts");
    system
        .wait_healthy()
        .await
        .expect("gateway sees the bridge again");
    let response = client
        .call("echo", json!({"after": "fake bridge"}))
        .await
        .expect("echo works after the fake bridge");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"after": "fake bridge"})),
        "{response}"
    );

    system.cleanup().await;
}

#[tokio::test]
async fn gateway_refuses_a_bridge_socket_held_by_another_uid() {
    // Fails here, before anything starts, when no second uid can be had.
    drop(as_other_user("true").await);
    let mut system = System::builder().start().await.expect("system starts");
    let socket = system.socket_path().to_path_buf();
    let dir = socket
        .parent()
        .expect("socket has a directory")
        .to_path_buf();

    // The bridge goes, and another user takes its socket path (the directory left writable, as
    // a careless setup might).
    system.stop_bridge().await.expect("bridge stops");
    let _ = std::fs::remove_file(&socket);
    chmod(&dir, 0o777);
    let listen = "import socket, sys, time\n\
                  s = socket.socket(socket.AF_UNIX)\n\
                  s.bind(sys.argv[1]); s.listen(16)\n\
                  print('listening', flush=True)\n\
                  conns = []\n\
                  while True:\n    c, _ = s.accept(); conns.append(c)\n";
    let mut impostor = as_other_user(system_python())
        .await
        .args(["-c", listen])
        .arg(&socket)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs as another user");
    let mut out = tokio::io::BufReader::new(impostor.stdout.take().expect("stdout"));
    let mut line = String::new();
    tokio::time::timeout(
        RECV_TIMEOUT,
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line),
    )
    .await
    .expect("the impostor listens in time")
    .expect("reads its output");
    assert_eq!(line.trim(), "listening");

    let refused = system
        .gateway()
        .expect("gateway runs")
        .wait_for_log("the refusal of the impostor", |l| {
            l.message() == Some("refused the process on the bridge socket")
                && l.field("error")
                    .and_then(|e| e.as_str())
                    .is_some_and(|e| e.contains(&format!("uid {OTHER_UID}")))
        })
        .await
        .expect("the gateway refuses the impostor and says who it is");
    eprintln!("[test] gateway logged: {}", refused.text);
    let (status, _) = system.healthz().await.expect("healthz answers");
    assert_eq!(status, 503, "the link must not be up with the impostor");

    // The impostor goes, the real bridge returns: the gateway links up again.
    impostor.kill().await.expect("impostor stops");
    let _ = std::fs::remove_file(&socket);
    chmod(&dir, 0o700);
    system.start_bridge().await.expect("bridge restarts");
    system
        .wait_healthy()
        .await
        .expect("gateway links to the real bridge");
    let mut client = system.client().await.expect("client connects");
    let response = client
        .call("echo", json!({"after": "impostor"}))
        .await
        .expect("echo works");
    assert_eq!(
        rpc::result(&response),
        Some(&json!({"after": "impostor"})),
        "{response}"
    );
    system.cleanup().await;
}
