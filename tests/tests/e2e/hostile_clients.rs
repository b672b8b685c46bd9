//! Clients that abuse the gateway's resources rather than its parser (issue 17): a fast
//! pipelining reader, a client that never reads, method names that name wsmq's or RabbitMQ's
//! own queues, cross-site browsers, a dawdling handshake, and dead sessions that keep results.
//!
//! What these tests count (memory, open sockets) is read from the gateway process itself
//! (`/proc/<pid>/status`, `/proc/<pid>/fd`), never inferred from the client's side.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use wsmq_tests::metrics::read as metric;
use wsmq_tests::{Incoming, RECV_TIMEOUT, Refusal, System, WsClient, http, rpc};

/// Open sockets of a process, from `/proc/<pid>/fd`.
fn open_sockets(pid: u32) -> Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(entry) = entry else { continue };
        if std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        {
            n += 1;
        }
    }
    Ok(n)
}

/// `VmRSS` of a process, in KiB.
fn rss_kb(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/<pid>/status")?;
    line.split_whitespace()
        .nth(1)
        .context("empty VmRSS")?
        .parse()
        .context("VmRSS is not a number")
}

/// Waits until `check` holds, polling every 100 ms, for at most `limit`.
async fn wait_until(limit: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<bool> {
    let until = Instant::now() + limit;
    loop {
        if check()? {
            return Ok(true);
        }
        if Instant::now() >= until {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One connection pipelines `calls` echo calls as fast as it can while a second task reads
/// everything; returns how many answers came and the close, if the gateway closed.
async fn pipeline(addr: std::net::SocketAddr, calls: usize) -> Result<(usize, Option<Incoming>)> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .context("connects")?;
    let (mut sink, mut stream) = ws.split();
    let writer = tokio::spawn(async move {
        for i in 0..calls {
            let call = json!({"jsonrpc": "2.0", "method": "echo", "params": {"i": i}, "id": i});
            if sink.send(Message::text(call.to_string())).await.is_err() {
                break;
            }
        }
        sink
    });
    let mut answered = 0;
    let mut ended = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while answered < calls {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .context("answers stopped coming")?;
        match next {
            Some(Ok(Message::Text(text))) => {
                let v: Value = serde_json::from_str(text.as_str())?;
                if v.get("id").is_some() {
                    answered += 1;
                }
            }
            Some(Ok(Message::Close(frame))) => {
                ended = Some(Incoming::Close(
                    frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                ));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                ended = Some(Incoming::Ended(Some(e.to_string())));
                break;
            }
            None => {
                ended = Some(Incoming::Ended(None));
                break;
            }
        }
    }
    let mut sink = writer.await.context("writer task")?;
    let _ = sink.close().await;
    Ok((answered, ended))
}

/// Issue 17 §1: a client that reads everything is never taken for a slow one, however fast it
/// pipelines (each call is answered: a result, or -32003/-32005 past the caps).
#[tokio::test]
async fn a_client_that_reads_is_never_dropped_as_slow_however_fast_it_pipelines() {
    let mut system = System::start().await.expect("system starts");
    let addr = system.gateway_addr().expect("addr");
    const ROUNDS: usize = 3;
    const CALLS: usize = 10_000;
    for round in 0..ROUNDS {
        let (answered, ended) = pipeline(addr, CALLS).await.expect("pipeline runs");
        assert!(
            ended.is_none() && answered == CALLS,
            "round {round}: {answered} of {CALLS} answered, then {ended:?}"
        );
    }
    let lines = system
        .gateway()
        .expect("gateway")
        .lines()
        .await
        .expect("log");
    assert!(
        !lines
            .iter()
            .any(|l| l.message() == Some("client is not reading its responses; disconnecting it")),
        "no reading client is taken for a slow one"
    );
    system.cleanup().await;
}

/// Opens a websocket over a TCP socket with a 4 KiB receive buffer and sends 16 KiB echo calls
/// until a send blocks for a second (the gateway stopped reading, or closed), never reading.
async fn stuff_and_never_read(addr: std::net::SocketAddr) -> Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut tcp = socket.connect(addr).await?;
    tcp.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    // Read the 101 answer only (up to its blank line), nothing after.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(RECV_TIMEOUT, tcp.read(&mut byte)).await??;
        ensure!(n == 1, "closed during the handshake");
        head.push(byte[0]);
    }
    ensure!(head.starts_with(b"HTTP/1.1 101"), "upgrade refused");
    let payload = json!({"jsonrpc": "2.0", "method": "echo", "params": {"pad": "x".repeat(16 * 1024)}, "id": 1})
        .to_string();
    let frame = masked_text_frame(payload.as_bytes());
    for _ in 0..4000 {
        match tokio::time::timeout(Duration::from_secs(1), tcp.write_all(&frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    Ok(tcp)
}

/// A client-to-server text frame (masked, as RFC 6455 requires of clients).
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81u8];
    let len = payload.len();
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else if len <= 0xffff {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Issue 17 §3: three clients that send until their sends block and never read are let go:
/// the gateway's open sockets return to what they were before them.
#[tokio::test]
async fn clients_that_never_read_are_let_go_and_their_sockets_closed() {
    let system = System::builder()
        .gateway_arg("--ping-interval", "1s")
        .gateway_arg("--idle-timeout", "3s")
        .start()
        .await
        .expect("system starts");
    let addr = system.gateway_addr().expect("addr");
    let pid = system.gateway_pid().expect("pid");
    let before = open_sockets(pid).expect("fds");
    let mut stuck = Vec::new();
    for _ in 0..3 {
        stuck.push(stuff_and_never_read(addr).await.expect("client stuffs"));
    }
    eprintln!(
        "[test] gateway sockets: {before} before, {} with the stuck clients",
        open_sockets(pid).expect("fds")
    );
    let released = wait_until(Duration::from_secs(45), || Ok(open_sockets(pid)? <= before))
        .await
        .expect("reads /proc");
    assert!(
        released,
        "the gateway still holds {} sockets ({before} before the stuck clients)",
        open_sockets(pid).expect("fds")
    );
    // Every slot is free again: a normal client still gets in and is served.
    let mut client = system.client().await.expect("connects");
    let answer = client
        .call("echo", json!({"ok": true}))
        .await
        .expect("echo");
    assert_eq!(rpc::result(&answer), Some(&json!({"ok": true})));
    drop(stuck);
    system.cleanup().await;
}

/// Issue 17 §4: method names that are wsmq's own queue and exchange names, or RabbitMQ's
/// `amq.` names, are answered -32601 exactly like a method no worker serves, and nothing is
/// published to them.
#[tokio::test]
async fn methods_naming_internal_queues_get_32601_like_an_unknown_method() {
    let mut system = System::start().await.expect("system starts");
    let mut client = system.client().await.expect("connects");
    let unknown = client
        .call("no.such.method", json!({}))
        .await
        .expect("answered");
    let unknown_error = rpc::error_code(&unknown);
    assert_eq!(unknown_error, Some(rpc::METHOD_NOT_FOUND));
    let reserved = [
        "wsmq.dead".to_owned(),
        format!("wsmq.reply.{}", system.instance()),
        "wsmq.reply.another-bridge".to_owned(),
        "wsmq.cancel".to_owned(),
        "amq.gen-JzTY20BRgKO-HjmUJj0wLg".to_owned(),
        "amq.rabbitmq.reply-to".to_owned(),
    ];
    for method in &reserved {
        let answer = client.call(method, json!({})).await.expect("answered");
        assert_eq!(
            answer["error"],
            json!({"code": rpc::METHOD_NOT_FOUND, "message": "Method not found",
                   "data": format!("no worker serves {method:?}")}),
            "{method}: {answer}"
        );
    }
    let dead = system.dead_letter_name();
    let conn = wsmq_tests::broker::connect(system.amqp_url())
        .await
        .expect("broker");
    assert_eq!(
        wsmq_tests::broker::queue_depth(&conn, &dead)
            .await
            .expect("depth"),
        0,
        "nothing reached {dead}"
    );
    let lines = system.bridge().expect("bridge").lines().await.expect("log");
    assert!(
        !lines
            .iter()
            .any(|l| l.message().is_some_and(|m| m.contains("dead job"))),
        "the bridge never saw a job on its dead-letter queue"
    );
    system.cleanup().await;
}

/// Issue 17 §4, defence in depth: a job for a reserved method that reaches the bridge without
/// the gateway (a raw IPC peer) is rejected as an invalid method, and nothing is published.
#[tokio::test]
async fn the_bridge_refuses_jobs_for_reserved_names_on_its_own() {
    use tokio_util::codec::Framed;
    use wsmq_ipc_proto::{
        Hello, IpcCodec, Job, JobId, PROTOCOL_VERSION, Rejection, ToBridge, ToGateway,
    };
    let system = System::builder()
        .without_gateway()
        .start()
        .await
        .expect("bridge and worker start");
    let stream = tokio::net::UnixStream::connect(system.socket_path())
        .await
        .expect("connects to the bridge");
    let mut framed = Framed::new(stream, IpcCodec::<ToGateway, ToBridge>::new());
    framed
        .send(ToBridge::Hello(Hello {
            version: PROTOCOL_VERSION,
            peer: "e2e reserved-name test".into(),
        }))
        .await
        .expect("hello");
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
        + 30_000;
    let methods = [
        "wsmq.dead".to_owned(),
        format!("wsmq.reply.{}", system.instance()),
        "amq.gen-JzTY20BRgKO-HjmUJj0wLg".to_owned(),
    ];
    for (n, method) in methods.iter().enumerate() {
        framed
            .send(ToBridge::Submit(Job {
                id: JobId(1000 + n as u128),
                method: method.clone(),
                params: "{}".into(),
                client: 1,
                deadline_unix_ms: deadline,
                priority: None,
                caller: None,
            }))
            .await
            .expect("submit");
    }
    let mut rejected = Vec::new();
    while rejected.len() < methods.len() {
        let frame = tokio::time::timeout(RECV_TIMEOUT, framed.next())
            .await
            .expect("the bridge answers")
            .expect("not closed")
            .expect("decodes");
        match frame {
            ToGateway::Rejected { job, reason } => {
                assert_eq!(reason, Rejection::InvalidMethod, "{job}");
                rejected.push(job);
            }
            ToGateway::Published { job } => panic!("job {job} was published"),
            _ => {}
        }
    }
    let conn = wsmq_tests::broker::connect(system.amqp_url())
        .await
        .expect("broker");
    let dead = system.dead_letter_name();
    assert_eq!(
        wsmq_tests::broker::queue_depth(&conn, &dead)
            .await
            .expect("depth"),
        0
    );
    drop(framed);
    system.cleanup().await;
}

async fn upgrade_status(addr: std::net::SocketAddr, headers: &[(&str, &str)]) -> u16 {
    match WsClient::try_connect_with(addr, "/ws", headers)
        .await
        .expect("handshake answered")
    {
        Ok(client) => {
            let _ = client.close().await;
            101
        }
        Err(wsmq_tests::Refusal::Status(status)) => status,
        Err(other) => panic!("handshake failed: {other:?}"),
    }
}

/// Issue 17 §5: without `--allowed-origin`, a browser is let in only from the gateway's own
/// origin; clients without an Origin are unaffected; the console's CSP allows websockets to
/// the gateway's own origin only.
#[tokio::test]
async fn by_default_only_the_gateways_own_origin_may_open_a_websocket() {
    let mut system = System::start().await.expect("system starts");
    let addr = system.gateway_addr().expect("addr");
    let own = format!("http://{addr}");
    let own_localhost = format!("http://localhost:{}", addr.port());
    assert_eq!(
        upgrade_status(addr, &[("origin", "https://evil.example.com")]).await,
        403,
        "a foreign page is refused"
    );
    assert_eq!(upgrade_status(addr, &[("origin", "null")]).await, 403);
    assert_eq!(
        upgrade_status(addr, &[("origin", &own_localhost)]).await,
        403,
        "same host name but another origin than the Host the request went to"
    );
    assert_eq!(
        upgrade_status(addr, &[("origin", &own)]).await,
        101,
        "the console served by the gateway itself gets in"
    );
    assert_eq!(
        upgrade_status(addr, &[]).await,
        101,
        "no Origin: not a browser"
    );
    let page = http::get(addr, "/").await.expect("GET /");
    assert_eq!(page.status, 200);
    let csp = page
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-security-policy"))
        .map(|(_, v)| v.clone())
        .expect("the console has a CSP");
    let connect_src = csp
        .split(';')
        .map(str::trim)
        .find(|d| d.starts_with("connect-src"))
        .expect("connect-src");
    assert_eq!(
        connect_src,
        format!("connect-src 'self' ws://{addr} wss://{addr}"),
        "websockets to the gateway's own origin only: {csp}"
    );
    let gateway = system.gateway().expect("gateway");
    let lines = gateway.lines().await.expect("log");
    assert!(
        !lines.iter().any(|l| l
            .message()
            .is_some_and(|m| m.contains("--allowed-origin '*'"))),
        "no warning without '*'"
    );
    system.cleanup().await;
}

/// Issue 17 §5: `--allowed-origin '*'` lets every Origin in, as before, and says so at start.
#[tokio::test]
async fn allowed_origin_star_admits_every_origin_with_a_warning() {
    let mut system = System::builder()
        .gateway_arg("--allowed-origin", "*")
        .start()
        .await
        .expect("system starts");
    let addr = system.gateway_addr().expect("addr");
    assert_eq!(
        upgrade_status(addr, &[("origin", "https://evil.example.com")]).await,
        101
    );
    let gateway = system.gateway().expect("gateway");
    let warning = gateway
        .wait_for_message(
            "--allowed-origin '*': any web page may open a websocket here with its visitors' browsers",
        )
        .await
        .expect("warned at start");
    assert_eq!(warning.level(), Some("WARN"));
    system.cleanup().await;
}

/// Issue 17 §6: the handshake timeout closes a connection that sent half a request when it
/// passes, not a grace period later: once the gateway logs the timeout, the socket is closed.
#[tokio::test]
async fn a_half_sent_request_is_closed_when_the_handshake_timeout_is_logged() {
    let mut system = System::builder()
        .gateway_arg("--handshake-timeout", "1s")
        .start()
        .await
        .expect("system starts");
    let addr = system.gateway_addr().expect("addr");
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await
        .expect("half a request");
    system
        .gateway()
        .expect("gateway")
        .wait_for_message("no complete HTTP request within the handshake timeout; closing")
        .await
        .expect("the timeout is logged");
    // The old code waited a 2 s grace for hyper after logging; closed at once now.
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_millis(1500), slow.read(&mut buf)).await;
    match read {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => {
            let head = String::from_utf8_lossy(&buf[..n]);
            assert!(head.starts_with("HTTP/1.1 408"), "{head}");
        }
        Err(_) => panic!("the socket is still open after the handshake timeout was logged"),
    }
    system.cleanup().await;
}

/// Starts `n` connections in a row that each send `calls` echo calls of `params_bytes` and
/// close before reading anything.
async fn abandon_calls(
    addr: std::net::SocketAddr,
    n: usize,
    calls: usize,
    params_bytes: usize,
) -> Result<()> {
    let pad = "x".repeat(params_bytes);
    for c in 0..n {
        let mut client = WsClient::connect(addr).await?.quiet();
        for i in 0..calls {
            client
                .send_json(&json!({"jsonrpc": "2.0", "method": "echo",
                                   "params": {"pad": pad}, "id": format!("{c}-{i}")}))
                .await?;
        }
        client.close().await?;
    }
    Ok(())
}

/// WARN lines of the gateway's log whose message starts with `prefix`.
async fn warnings(system: &mut System, prefix: &str) -> usize {
    let lines = system
        .gateway()
        .expect("gateway")
        .lines()
        .await
        .expect("log");
    lines
        .iter()
        .filter(|l| l.level() == Some("WARN") && l.message().is_some_and(|m| m.starts_with(prefix)))
        .count()
}

/// Issue 17 §1: a session that cannot keep what its calls produce says so once, not once per
/// dropped response (a client leaving 400 calls behind logged over a hundred WARN lines).
#[tokio::test]
async fn a_session_that_drops_results_warns_once() {
    let mut system = System::builder()
        .gateway_arg("--max-inflight-per-client", 512)
        .gateway_arg("--call-rate", 0)
        .session_resume_secs(60)
        .start()
        .await
        .expect("system starts");
    let addr = system.gateway_addr().expect("addr");
    abandon_calls(addr, 1, 400, 16).await.expect("calls sent");
    let settled = async {
        loop {
            if metric(addr, "wsmq_calls_in_flight").await? == 0.0
                && metric(addr, "wsmq_results_dropped_total")
                    .await
                    .unwrap_or(0.0)
                    > 0.0
            {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), settled)
        .await
        .expect("all calls end, some dropped")
        .expect("metrics");
    assert_eq!(
        warnings(&mut system, "session kept too much").await,
        1,
        "one WARN line for the session"
    );
    system.cleanup().await;
}

/// Issue 17 §2: what closed sessions keep is bounded in bytes, whatever the message count: four
/// connections that leave 64 results of 256 KiB each behind (64 MiB in all, each session within
/// the message count it may keep) grow the gateway's RSS by less than `--max-kept-bytes` (8 MiB)
/// plus a margin; the oldest sessions are forgotten, their results counted under
/// `session_evicted`, and that is logged once.
#[tokio::test]
async fn closed_sessions_keep_at_most_the_configured_bytes() {
    const KEPT_TOTAL: usize = 4 * 1024 * 1024;
    const MARGIN_KB: u64 = 16 * 1024;
    let mut system = System::builder()
        .gateway_arg("--max-kept-bytes", KEPT_TOTAL)
        .gateway_arg("--max-inflight-per-client", 512)
        .gateway_arg("--call-rate", 0)
        .session_resume_secs(120)
        .start()
        .await
        .expect("system starts");
    let addr = system.gateway_addr().expect("addr");
    let pid = system.gateway_pid().expect("pid");
    let before = rss_kb(pid).expect("rss");
    // One connection at a time, each settled (every call answered and handed to its closed
    // session, kept or dropped) before the next: what the gateway holds in flight stays small,
    // so RSS shows what the sessions keep.
    let sessions = async {
        for _ in 0..8 {
            abandon_calls(addr, 1, 16, 256 * 1024).await?;
            while metric(addr, "wsmq_calls_in_flight").await? != 0.0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(90), sessions)
        .await
        .expect("all calls end")
        .expect("calls sent and metrics read");
    let after = rss_kb(pid).expect("rss");
    eprintln!("[test] gateway VmRSS {before} KiB before, {after} KiB with the closed sessions");
    assert!(
        after.saturating_sub(before) < (KEPT_TOTAL / 1024) as u64 + MARGIN_KB,
        "RSS grew by {} KiB, over {} KiB kept + {MARGIN_KB} KiB",
        after.saturating_sub(before),
        KEPT_TOTAL / 1024
    );
    let evicted = metric(
        addr,
        "wsmq_results_dropped_total{reason=\"session_evicted\"}",
    )
    .await
    .expect("the oldest sessions' results are counted as evicted");
    assert!(evicted > 0.0, "{evicted} results counted as evicted");
    assert_eq!(
        warnings(&mut system, "disconnected sessions reached a bound").await,
        1,
        "one WARN line for all evictions"
    );
    system.cleanup().await;
}

/// Issue 17 §2: the sessions one address leaves behind are bounded in number
/// (`--max-sessions-per-ip`): three connections from one address each leave a call running and
/// close; with a bound of 2, the oldest session is forgotten (resuming it gets 404, its result
/// counted once under `session_evicted`) and the two newer ones resume with their results.
#[tokio::test]
async fn one_address_leaves_at_most_max_sessions_per_ip_behind_and_loses_its_oldest() {
    let system = System::builder()
        .gateway_arg("--max-sessions-per-ip", 2)
        .session_resume_secs(120)
        .start()
        .await
        .expect("system starts");
    let addr = system.gateway_addr().expect("addr");
    let mut tokens = Vec::new();
    for n in 0..3 {
        let mut client = WsClient::connect(addr).await.expect("connects");
        let greeting = client.await_session(RECV_TIMEOUT).await.expect("greeting");
        client
            .send_json(&json!({"jsonrpc": "2.0", "method": "sleep",
                               "params": {"ms": 200}, "id": format!("left-{n}")}))
            .await
            .expect("sends");
        client.close().await.expect("closes");
        // Settled before the next: its result is kept by (or dropped with) its session.
        let settled = async {
            while metric(addr, "wsmq_calls_in_flight").await? != 0.0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(Duration::from_secs(20), settled)
            .await
            .unwrap_or_else(|_| panic!("call {n} never ended"))
            .expect("metrics read");
        tokens.push(greeting.token);
    }
    let evicted = metric(
        addr,
        "wsmq_results_dropped_total{reason=\"session_evicted\"}",
    )
    .await
    .expect("metric");
    assert_eq!(evicted, 1.0, "the oldest session's one result");
    match WsClient::try_connect(addr, &format!("/ws?session={}", tokens[0]))
        .await
        .expect("handshake answered")
    {
        Err(Refusal::Status(status)) => assert_eq!(status, 404, "the oldest session is gone"),
        Err(other) => panic!("expected HTTP 404, got {other:?}"),
        Ok(_) => panic!("the oldest session was resumed; expected HTTP 404"),
    }
    for (n, token) in tokens.iter().enumerate().skip(1) {
        let mut client = WsClient::connect_path(addr, &format!("/ws?session={token}"))
            .await
            .expect("a newer session resumes");
        client.await_session(RECV_TIMEOUT).await.expect("greeting");
        let response = client.recv_json().await.expect("its kept result");
        assert_eq!(response["id"], json!(format!("left-{n}")), "{response}");
        assert_eq!(response["result"], json!({"slept_ms": 200}), "{response}");
        client.close().await.expect("closes");
    }
    system.cleanup().await;
}
