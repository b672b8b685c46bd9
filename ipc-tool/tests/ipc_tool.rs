//! `wsmq-ipc` against the real binaries: ping a real bridge, tap a real gateway's link while a
//! real call goes through it, decode bytes made by the protocol's own codec.
//!
//! The bridge, gateway and demo worker come from the e2e harness (`wsmq-tests`): per-test queue
//! prefix and instance name, socket in a temp dir, queues deleted by `System::cleanup`. Our own
//! binary is cargo's `CARGO_BIN_EXE_wsmq-ipc`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use bytes::BytesMut;
use serde_json::{Value, json};
use tokio::process::Command;
use tokio_util::codec::Encoder;
use wsmq_ipc_proto::{
    BrokerState, Hello, IpcCodec, Job, JobId, PROTOCOL_VERSION, Reply, ReplyBody, ReplySeq,
    ToBridge, ToGateway, Welcome,
};
use wsmq_tests::binaries::binaries;
use wsmq_tests::{
    HEALTH_POLL_INTERVAL, HEALTH_TIMEOUT, LogLine, RECV_TIMEOUT, Service, System, http, rpc,
};

const WSMQ_IPC: &str = env!("CARGO_BIN_EXE_wsmq-ipc");

/// How long one `wsmq-ipc ping` or `decode` run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `wsmq-ipc args...` to completion, with `stdin` as its input.
async fn wsmq_ipc(args: &[&str], stdin: Option<Vec<u8>>) -> Output {
    use std::process::Stdio;
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(WSMQ_IPC)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("wsmq-ipc starts");
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(&bytes).await.expect("writes stdin");
    }
    let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("wsmq-ipc {args:?} did not finish within {RUN_TIMEOUT:?}"))
        .expect("wsmq-ipc runs");
    eprintln!(
        "[wsmq-ipc {args:?}] {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout_lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Polls the gateway's `/readyz` until it says a call would be taken.
async fn wait_ready(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + HEALTH_TIMEOUT;
    loop {
        let last = match http::get(addr, "/readyz").await {
            Ok(response) if response.status == 200 => return,
            Ok(response) => format!(
                "HTTP {} {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            ),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz did not say 200 within {HEALTH_TIMEOUT:?}; last: {last}"
        );
        tokio::time::sleep(HEALTH_POLL_INTERVAL).await;
    }
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

#[tokio::test]
async fn ping_names_the_instance_of_a_bridge_whose_broker_is_up() {
    let mut system = System::builder()
        .without_gateway()
        .without_worker()
        .start()
        .await
        .expect("bridge starts");
    let socket = path_arg(system.socket_path()).to_owned();

    let human = wsmq_ipc(&["ping", "--ipc", &socket], None).await;
    assert_eq!(human.status.code(), Some(0), "welcome, broker up");
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains(system.instance()),
        "names the instance: {text}"
    );
    assert!(text.contains("broker up"), "{text}");

    // Until the bridge has ended that ping's session, the slot is taken and a ping is refused.
    system
        .bridge()
        .expect("bridge")
        .wait_for_message("gateway session ended")
        .await
        .expect("the bridge ends the first ping's session");
    let json_run = wsmq_ipc(&["ping", "--ipc", &socket, "--json"], None).await;
    assert_eq!(json_run.status.code(), Some(0));
    let answer = &stdout_lines(&json_run)[0];
    assert_eq!(answer["result"], "welcome");
    assert_eq!(answer["instance"], system.instance());
    assert_eq!(answer["broker"], "up");
    assert_eq!(answer["version"], PROTOCOL_VERSION);
    assert!(
        answer["rtt_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{answer}"
    );

    system.cleanup().await;
}

#[tokio::test]
async fn ping_is_refused_with_a_note_while_the_gateway_is_connected() {
    // The gateway is up and healthy, so it holds the bridge's one gateway slot.
    let system = System::builder()
        .without_worker()
        .start()
        .await
        .expect("bridge and gateway start");
    let socket = path_arg(system.socket_path()).to_owned();

    let output = wsmq_ipc(&["ping", "--ipc", &socket], None).await;
    assert_eq!(output.status.code(), Some(2), "refused");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("already connected"), "{text}");
    assert!(text.contains("Expected in production"), "{text}");

    let json_run = wsmq_ipc(&["ping", "--ipc", &socket, "--json"], None).await;
    assert_eq!(json_run.status.code(), Some(2));
    let answer = &stdout_lines(&json_run)[0];
    assert_eq!(answer["result"], "refused");
    assert_eq!(answer["exit_code"], 2);

    system.cleanup().await;
}

#[tokio::test]
async fn ping_without_a_bridge_or_an_answer_exits_3() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-bridge.sock");
    let output = wsmq_ipc(&["ping", "--ipc", path_arg(&missing)], None).await;
    assert_eq!(output.status.code(), Some(3));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("cannot connect"), "{text}");

    // Something listens but never answers: the timeout ends it.
    let mute = dir.path().join("mute.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&mute).expect("binds");
    let output = wsmq_ipc(
        &[
            "ping",
            "--ipc",
            path_arg(&mute),
            "--timeout",
            "300ms",
            "--json",
        ],
        None,
    )
    .await;
    assert_eq!(output.status.code(), Some(3));
    let answer = &stdout_lines(&output)[0];
    assert_eq!(answer["result"], "error");
    assert_eq!(answer["error"], "no answer within 300ms");
}

/// The message of a tap line (`{"Submit": {...}}`) as (variant, payload, dir).
fn tap_message(line: &LogLine) -> Option<(String, Value, String)> {
    let json = line.json.as_ref()?;
    let (variant, payload) = json.get("msg")?.as_object()?.iter().next()?;
    let dir = json.get("dir")?.as_str()?.to_owned();
    Some((variant.clone(), payload.clone(), dir))
}

#[tokio::test]
async fn tap_relays_a_real_call_and_prints_each_frame_in_its_direction() {
    let system = System::builder()
        .without_gateway()
        .start()
        .await
        .expect("bridge and worker start");
    let bins = binaries().await.expect("binaries");
    let dir = tempfile::tempdir().expect("temp dir");
    let tap_socket = dir.path().join("tap.sock");
    let tap_arg = path_arg(&tap_socket).to_owned();
    let bridge_arg = path_arg(system.socket_path()).to_owned();
    let no_env: &[(&str, &str)] = &[];

    // The bridge's live socket is not ours to take.
    let taken = wsmq_ipc(
        &["tap", "--listen", &bridge_arg, "--connect", &tap_arg],
        None,
    )
    .await;
    assert_eq!(taken.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&taken.stderr).contains("already listening"));

    // A stale socket file (a tap that crashed) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&tap_socket).expect("binds"));
    assert!(tap_socket.exists());

    let mut tap = Service::spawn(
        "tap",
        WSMQ_IPC,
        ["tap", "--listen", &tap_arg, "--connect", &bridge_arg],
        no_env,
    )
    .expect("tap starts");
    tap.wait_for_log("\"listening on\"", |l| l.text.contains("listening on"))
        .await
        .expect("tap listens");

    let mut gateway = Service::spawn(
        "gateway",
        &bins.gateway,
        [
            "--listen",
            "127.0.0.1:0",
            "--ipc",
            &tap_arg,
            "--log-format",
            "json",
        ],
        no_env,
    )
    .expect("gateway starts");
    let listening = gateway
        .wait_for_message("gateway listening")
        .await
        .expect("gateway listens");
    let addr: SocketAddr = listening
        .field("addr")
        .and_then(Value::as_str)
        .and_then(|a| a.parse().ok())
        .expect("gateway listening has fields.addr");
    tap.wait_for_log("a Welcome line", |l| {
        tap_message(l).is_some_and(|(v, _, _)| v == "Welcome")
    })
    .await
    .expect("the handshake goes through the tap");
    // The Welcome passing the tap is not yet the gateway having read it.
    wait_ready(addr).await;

    let mut client = wsmq_tests::WsClient::connect(addr)
        .await
        .expect("websocket connects");
    client
        .send_text(r#"{"jsonrpc":"2.0","method":"echo","params":{"x":1},"id":1}"#)
        .await
        .expect("sends the call");
    let response = client
        .recv_json_within(RECV_TIMEOUT)
        .await
        .expect("a response");
    assert_eq!(response["id"], 1, "{response}");
    assert_eq!(rpc::result(&response), Some(&json!({"x": 1})), "{response}");

    // Taken is the last frame of the call: the gateway confirms the reply it delivered.
    tap.wait_for_log("a Taken line", |l| {
        tap_message(l).is_some_and(|(v, _, _)| v == "Taken")
    })
    .await
    .expect("the reply's Taken goes through the tap");
    // The bridge sends Published from the publish's own task, so it can reach the tap after
    // the reply (and even after Taken): wait for it too.
    tap.wait_for_log("a Published line", |l| {
        tap_message(l).is_some_and(|(v, _, _)| v == "Published")
    })
    .await
    .expect("the job's Published goes through the tap");
    let frames: Vec<(String, Value, String)> = tap
        .lines()
        .await
        .expect("tap output")
        .iter()
        .filter_map(tap_message)
        .collect();
    let find = |variant: &str| -> (usize, &Value, &str) {
        let at = frames
            .iter()
            .position(|(v, _, _)| v == variant)
            .unwrap_or_else(|| panic!("no {variant} line in {frames:#?}"));
        (at, &frames[at].1, frames[at].2.as_str())
    };
    let to_bridge = "gateway->bridge";
    let to_gateway = "bridge->gateway";

    let (hello, hello_msg, dir) = find("Hello");
    assert_eq!(dir, to_bridge);
    assert_eq!(hello_msg["version"], PROTOCOL_VERSION);
    let (welcome, welcome_msg, dir) = find("Welcome");
    assert_eq!(dir, to_gateway);
    assert_eq!(welcome_msg["instance"], system.instance());
    assert_eq!(welcome_msg["broker"], "Up");
    let (submit, job, dir) = find("Submit");
    assert_eq!(dir, to_bridge);
    assert_eq!(job["method"], "echo");
    assert_eq!(job["params"], r#"{"x":1}"#);
    let job_id = job["id"].as_str().expect("job id is a UUID string");
    assert!(job_id.parse::<JobId>().is_ok(), "{job_id}");
    let (published, published_msg, dir) = find("Published");
    assert_eq!(dir, to_gateway);
    assert_eq!(published_msg["job"], job_id);
    let (reply, reply_msg, dir) = find("Reply");
    assert_eq!(dir, to_gateway);
    assert_eq!(reply_msg["job"], job_id);
    let result = reply_msg["body"]["Result"].as_str().expect("a Result body");
    assert_eq!(
        serde_json::from_str::<Value>(result).expect("JSON"),
        json!({"x": 1})
    );
    let (taken, taken_msg, dir) = find("Taken");
    assert_eq!(dir, to_bridge);
    assert_eq!(taken_msg["reply"], reply_msg["seq"]);
    // Causal order; Published races Reply and Taken, so only after Submit.
    assert!(hello < welcome && welcome < submit, "{frames:#?}");
    assert!(
        submit < published && submit < reply && reply < taken,
        "{frames:#?}"
    );

    client.close().await.expect("websocket closes");
    gateway.terminate().await.expect("gateway stops");
    let status = tap.terminate().await.expect("tap stops on SIGTERM");
    assert!(status.success(), "tap exits 0 on SIGTERM: {status}");
    assert!(!tap_socket.exists(), "tap removes its socket file");
    system.cleanup().await;
}

fn encode_to_bridge(msgs: Vec<ToBridge>) -> Vec<u8> {
    let mut codec = IpcCodec::<ToGateway, ToBridge>::new();
    let mut buf = BytesMut::new();
    for m in msgs {
        codec.encode(m, &mut buf).expect("encodes");
    }
    buf.to_vec()
}

fn encode_to_gateway(msgs: Vec<ToGateway>) -> Vec<u8> {
    let mut codec = IpcCodec::<ToBridge, ToGateway>::new();
    let mut buf = BytesMut::new();
    for m in msgs {
        codec.encode(m, &mut buf).expect("encodes");
    }
    buf.to_vec()
}

#[tokio::test]
async fn decode_prints_each_frame_and_exits_1_at_a_truncated_tail() {
    let job = JobId(0x0f1e_2d3c_4b5a_4697_8877_6655_4433_2211);
    let stream = encode_to_bridge(vec![
        ToBridge::Hello(Hello {
            version: PROTOCOL_VERSION,
            peer: "test".into(),
        }),
        ToBridge::Submit(Job {
            id: job,
            method: "echo".into(),
            params: r#"{"x":1}"#.into(),
            client: 1,
            deadline_unix_ms: 1_900_000_000_000,
            priority: None,
            caller: None,
        }),
        ToBridge::Taken { reply: ReplySeq(0) },
    ]);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("to-bridge.bin");
    std::fs::write(&file, &stream).expect("writes the capture");

    let output = wsmq_ipc(&["decode", path_arg(&file)], None).await;
    assert_eq!(output.status.code(), Some(0));
    let lines = stdout_lines(&output);
    let variants: Vec<&str> = lines
        .iter()
        .map(|l| {
            l["msg"]
                .as_object()
                .and_then(|m| m.keys().next())
                .map_or("?", String::as_str)
        })
        .collect();
    assert_eq!(variants, ["Hello", "Submit", "Taken"]);
    assert!(lines.iter().all(|l| l["dir"] == "gateway->bridge"));
    assert_eq!(lines[0]["offset"], 0);
    assert_eq!(lines[1]["msg"]["Submit"]["id"], job.to_string());

    // The same bytes cut two bytes short of the end: the last frame is reported at its offset.
    let last_offset = lines[2]["offset"].as_u64().expect("offset");
    let cut = &stream[..stream.len() - 2];
    let output = wsmq_ipc(&["decode", "-"], Some(cut.to_vec())).await;
    assert_eq!(output.status.code(), Some(1));
    let lines = stdout_lines(&output);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["offset"], last_offset);
    let error = lines[2]["error"].as_str().expect("error");
    assert!(error.contains(&format!("offset {last_offset}")), "{error}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("offset {last_offset}")),
        "{stderr}"
    );
}

#[tokio::test]
async fn decode_reads_the_bridges_direction_from_stdin() {
    let stream = encode_to_gateway(vec![
        ToGateway::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            instance: "b".into(),
            broker: BrokerState::Up,
        }),
        ToGateway::Reply(Reply {
            seq: ReplySeq(7),
            job: JobId(u128::MAX),
            body: ReplyBody::Result("[1,2]".into()),
        }),
    ]);
    let output = wsmq_ipc(&["decode", "--dir", "to-gateway"], Some(stream.clone())).await;
    assert_eq!(output.status.code(), Some(0));
    let lines = stdout_lines(&output);
    assert_eq!(lines[1]["dir"], "bridge->gateway");
    assert_eq!(
        lines[1]["msg"],
        json!({"Reply": {"seq": 7, "job": "ffffffff-ffff-ffff-ffff-ffffffffffff",
                         "body": {"Result": "[1,2]"}}})
    );

    // Decoded as the wrong direction, every frame is an error: exit 1.
    let output = wsmq_ipc(&["decode", "--dir", "to-bridge"], Some(stream)).await;
    assert_eq!(output.status.code(), Some(1));
}
