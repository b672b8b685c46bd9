//! A corpus of hostile inputs from one client while other clients make normal calls.
//!
//! Every entry of [`corpus`] is (name, what is sent, what must come back): a JSON-RPC error with
//! an exact code and id, a result, nothing, or a websocket close with an exact code. Entries that
//! keep the socket open share one connection, and each is followed by a sentinel call that must
//! be answered next (so no entry produced a stray frame and the socket still works); entries
//! that close the socket get a fresh connection each. Meanwhile the bystander clients' calls
//! must all complete correctly, and the gateway's peak memory must stay within a generous bound
//! (it would not if something buffered a 100,000-member batch or a 100,000-deep nesting).
//!
//! Floods stay within the call-rate limit (`--call-rate`, default 1000/s after a burst of 2000),
//! so what bounds them here is the per-connection in-flight cap (-32003).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use wsmq_tests::{Incoming, RECV_TIMEOUT, System, WsClient, rpc};

/// `--max-params-bytes` for this test: below the 1 MiB message limit, so it can be hit.
const MAX_PARAMS_BYTES: usize = 64 * 1024;
/// `--max-inflight-per-client` for this test, so a flood meets it quickly.
const MAX_INFLIGHT_PER_CLIENT: usize = 64;
/// The default `--max-message-bytes`.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Clients making normal calls during the corpus.
const BYSTANDERS: u64 = 4;
/// How much the gateway's peak RSS may exceed its RSS before the corpus.
const MEMORY_GROWTH_LIMIT_KB: u64 = 200 * 1024;

const CLOSE_PROTOCOL: u16 = 1002;
const CLOSE_INVALID_DATA: u16 = 1007;
const CLOSE_TOO_BIG: u16 = 1009;

/// What one corpus entry sends.
enum Input {
    Text(String),
    /// Messages sent in order (binary frames, raw frames, fragments, pings).
    Messages(Vec<Message>),
    /// Many requests sent before reading any answer; one answer each.
    Flood(Vec<String>),
}

/// What must come back.
enum Expect {
    /// One error response: its code and its id as raw JSON text.
    Error(i64, &'static str),
    /// One success response with this raw id.
    Result(String),
    /// One batch response: a member per (raw id, error code or `None` for a result), any order.
    Batch(Vec<(String, Option<i64>)>),
    /// No frame at all (notifications, pings).
    Nothing,
    /// No frame, but the connection's in-flight cap may be full for a while after it
    /// (notifications' jobs count against it): the sentinel is retried while it gets -32003.
    NothingWhileBusy,
    /// Every flood request answered once, with a result or -32003, and -32003 exactly when the
    /// connection had `cap` calls in flight. The router takes a connection's calls in the
    /// order sent and answers them (results and refusals alike) on one queue, so when the
    /// refusal of request `k` (ids `"f<k>"`) arrives, the `k` requests before it, less those
    /// refused, less the results that came before it, were in flight: exactly `cap`.
    FloodUnderCap(usize),
    /// The socket closes with this close frame's code, never with a bare reset: the gateway
    /// lingers after its close frame, so even a client still writing a huge message reads it.
    Close { code: u16 },
}

struct Case {
    name: String,
    input: Input,
    expect: Expect,
}

fn case(name: impl Into<String>, input: Input, expect: Expect) -> Case {
    Case {
        name: name.into(),
        input,
        expect,
    }
}

fn text(t: impl Into<String>) -> Input {
    Input::Text(t.into())
}

fn frame(payload: impl Into<Vec<u8>>, opcode: OpCode, fin: bool) -> Message {
    // Built as a ping and re-headed: `Frame::message` only takes data opcodes.
    let mut f = Frame::ping(payload.into());
    f.header_mut().opcode = opcode;
    f.header_mut().is_final = fin;
    Message::Frame(f)
}

const PING: OpCode = OpCode::Control(Control::Ping);

const TEXT: OpCode = OpCode::Data(Data::Text);
const CONT: OpCode = OpCode::Data(Data::Continue);

fn req(id: &str, method: &str, params: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","method":"{method}","params":{params},"id":{id}}}"#)
}

/// A request whose `id` member is `id` (raw JSON), echoing `{}`.
fn with_id(id: &str) -> String {
    req(id, "echo", "{}")
}

fn nested(depth: usize) -> String {
    // The request object is one level.
    format!(
        r#"{{"jsonrpc":"2.0","method":"echo","id":1,"params":{}1{}}}"#,
        "[".repeat(depth - 1),
        "]".repeat(depth - 1)
    )
}

const INVALID: i64 = rpc::INVALID_REQUEST;

/// The raw `id` of a response object, and its error code if it is an error.
fn id_and_code(member: &HashMap<String, Box<RawValue>>) -> Result<(String, Option<i64>)> {
    let id = member
        .get("id")
        .context("response without an id")?
        .get()
        .to_owned();
    let code = match member.get("error") {
        None => {
            ensure!(member.contains_key("result"), "neither result nor error");
            None
        }
        Some(error) => {
            let error: Value = serde_json::from_str(error.get())?;
            Some(
                error["code"]
                    .as_i64()
                    .context("error without an integer code")?,
            )
        }
    };
    Ok((id, code))
}

async fn next_text(client: &mut WsClient) -> Result<String> {
    match client.next_incoming(RECV_TIMEOUT).await? {
        Incoming::Text(t) => Ok(t),
        other => bail!("expected a text frame, got {other:?}"),
    }
}

async fn send(client: &mut WsClient, input: &Input) -> Result<()> {
    match input {
        Input::Text(t) => client.send_text(t.clone()).await,
        Input::Messages(messages) => {
            for m in messages {
                client.send_message(m.clone()).await?;
            }
            Ok(())
        }
        Input::Flood(requests) => {
            for r in requests {
                client.send_text(r.clone()).await?;
            }
            Ok(())
        }
    }
}

/// Runs one entry that keeps the socket open; the sentinel call after it must be answered next.
async fn run_open(client: &mut WsClient, case: &Case, sentinel: u64) -> Result<()> {
    send(client, &case.input).await?;
    match &case.expect {
        Expect::Error(code, id) => {
            let t = next_text(client).await?;
            let member: HashMap<String, Box<RawValue>> = serde_json::from_str(&t)?;
            let got = id_and_code(&member)?;
            ensure!(
                got == ((*id).to_owned(), Some(*code)),
                "expected ({id}, {code}), got {got:?}: {t}"
            );
        }
        Expect::Result(id) => {
            let t = next_text(client).await?;
            let member: HashMap<String, Box<RawValue>> = serde_json::from_str(&t)?;
            let got = id_and_code(&member)?;
            ensure!(
                got == (id.clone(), None),
                "expected a result for id {id}, got {got:?}: {t}"
            );
        }
        Expect::Batch(expected) => {
            let t = next_text(client).await?;
            let members: Vec<HashMap<String, Box<RawValue>>> = serde_json::from_str(&t)?;
            let mut got: Vec<(String, Option<i64>)> =
                members.iter().map(id_and_code).collect::<Result<_>>()?;
            let mut want = expected.clone();
            got.sort();
            want.sort();
            ensure!(got == want, "batch answered {got:?}, expected {want:?}");
        }
        Expect::FloodUnderCap(cap) => {
            let Input::Flood(requests) = &case.input else {
                bail!("FloodUnderCap needs a flood");
            };
            let mut seen = HashSet::new();
            let (mut ok, mut refused) = (0usize, 0usize);
            for _ in requests {
                let t = next_text(client).await?;
                let member: HashMap<String, Box<RawValue>> = serde_json::from_str(&t)?;
                let (id, got) = id_and_code(&member)?;
                ensure!(seen.insert(id.clone()), "id {id} answered twice");
                match got {
                    None => ok += 1,
                    Some(rpc::TOO_MANY_IN_FLIGHT) => {
                        let k: usize = id
                            .trim_matches('"')
                            .strip_prefix('f')
                            .and_then(|n| n.parse().ok())
                            .with_context(|| format!("flood id {id} is not \"f<n>\""))?;
                        let in_flight = k as i64 - (refused + ok) as i64;
                        ensure!(
                            in_flight == *cap as i64,
                            "request {k} was refused -32003 with {in_flight} calls in flight \
                             ({refused} refused and {ok} answered before it), not at the cap \
                             of {cap}"
                        );
                        refused += 1;
                    }
                    Some(c) => bail!("id {id}: unexpected code {c}"),
                }
            }
            eprintln!(
                "[test] {}: {ok} results, {refused} refused at the cap of {cap}",
                case.name
            );
        }
        Expect::Nothing | Expect::NothingWhileBusy => {}
        Expect::Close { .. } => bail!("a closing case on the shared connection"),
    }
    let busy_until = Instant::now() + RECV_TIMEOUT;
    let response = loop {
        let response = client
            .call("echo", json!({"sentinel": sentinel}))
            .await
            .context("the sentinel call after the entry")?;
        let busy = rpc::error_code(&response) == Some(rpc::TOO_MANY_IN_FLIGHT);
        if !(busy && matches!(case.expect, Expect::NothingWhileBusy) && Instant::now() < busy_until)
        {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(
        rpc::result(&response) == Some(&json!({"sentinel": sentinel})),
        "sentinel answered {response}"
    );
    Ok(())
}

/// Runs one entry that must close the socket, on a connection of its own.
async fn run_closing(system: &System, case: &Case, code: u16) -> Result<()> {
    let mut client = system.client().await?;
    send(&mut client, &case.input).await?;
    match client.next_incoming(RECV_TIMEOUT).await? {
        Incoming::Close(Some((got, _))) => {
            ensure!(got == code, "closed with {got}, expected {code}")
        }
        other => bail!("expected a close with {code}, got {other:?}"),
    }
    Ok(())
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn memory_kb(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        line.split_whitespace()
            .nth(1)
            .context("empty field")?
            .parse()
            .context("not a number")
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Makes echo calls until `stop`, checking each result; returns the latencies.
async fn bystander(
    mut client: WsClient,
    number: u64,
    stop: Arc<AtomicBool>,
) -> Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let payload = json!({"bystander": number, "n": n});
        let started = Instant::now();
        let response = client.call("echo", payload.clone()).await?;
        latencies.push(started.elapsed());
        ensure!(
            rpc::result(&response) == Some(&payload),
            "bystander {number} got {response}"
        );
    }
    Ok(latencies)
}

#[tokio::test]
async fn hostile_corpus_gets_documented_answers_while_others_are_served() {
    let mut system = System::builder()
        .worker_concurrency(96)
        .gateway_arg("--max-params-bytes", MAX_PARAMS_BYTES)
        .max_inflight_per_client(MAX_INFLIGHT_PER_CLIENT)
        .start()
        .await
        .expect("system starts");
    let pid = system
        .gateway()
        .expect("gateway runs")
        .os_pid()
        .expect("gateway has a pid");
    let (rss_before, _) = memory_kb(pid).expect("reads gateway memory");

    let stop = Arc::new(AtomicBool::new(false));
    let mut bystanders = Vec::new();
    for number in 0..BYSTANDERS {
        let client = system.client().await.expect("bystander connects").quiet();
        bystanders.push(tokio::spawn(bystander(client, number, stop.clone())));
    }

    let cases = corpus::corpus();
    eprintln!("[test] {} corpus entries", cases.len());
    assert!(cases.len() >= 50, "the corpus has {} entries", cases.len());
    let mut hostile = system.client().await.expect("hostile client connects");
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        eprintln!("[test] entry {i}: {}", case.name);
        let outcome = match case.expect {
            Expect::Close { code } => run_closing(&system, case, code).await,
            _ => run_open(&mut hostile, case, i as u64).await,
        };
        if let Err(e) = outcome {
            eprintln!("[test] entry {i} ({}) FAILED: {e:#}", case.name);
            failures.push(format!("{}: {e:#}", case.name));
            // The shared connection is in an unknown state now; start a fresh one.
            hostile = system.client().await.expect("hostile client reconnects");
        }
    }

    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for (number, task) in bystanders.into_iter().enumerate() {
        let latencies = task
            .await
            .expect("bystander task")
            .unwrap_or_else(|e| panic!("bystander {number} saw an error: {e:#}"));
        assert!(!latencies.is_empty(), "bystander {number} made no call");
        all.extend(latencies);
    }
    all.sort();
    let pct = |p: usize| all[(all.len() - 1) * p / 100];
    eprintln!(
        "[test] bystanders: {} calls, all correct; latency p50 {:?} p99 {:?} max {:?}",
        all.len(),
        pct(50),
        pct(99),
        pct(100)
    );

    let (rss_after, hwm) = memory_kb(pid).expect("reads gateway memory");
    eprintln!(
        "[test] gateway memory: VmRSS {rss_before} KiB before, {rss_after} KiB after, peak VmHWM {hwm} KiB"
    );
    assert!(
        failures.is_empty(),
        "{} of {} entries failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(
        hwm.saturating_sub(rss_before) < MEMORY_GROWTH_LIMIT_KB,
        "gateway peak memory grew by {} KiB",
        hwm.saturating_sub(rss_before)
    );
    system.cleanup().await;
}

mod corpus;
