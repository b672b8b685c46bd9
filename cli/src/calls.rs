//! Runs calls over one websocket to the gateway: keeps up to `concurrency` in flight, matches
//! each answer to its call by id, hands progress to the display, and makes sure every call ends
//! (answer, local deadline, connection lost, or Ctrl-C, which cancels what is in flight).
//!
//! One task owns the socket and the table of calls in flight; nothing is shared.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Largest message accepted from the gateway: its own largest frame (16 MiB).
const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// How long past a call's deadline the CLI waits for the gateway's own -32001 before it gives
/// up on the answer itself.
pub(crate) const DEADLINE_GRACE: Duration = Duration::from_secs(5);
/// After Ctrl-C, how long the CLI waits for the answers to its `$/cancel`s.
const CANCEL_WAIT: Duration = Duration::from_secs(2);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The same call, made `count` times.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) method: String,
    pub(crate) params: Option<Value>,
    pub(crate) timeout: Duration,
    pub(crate) priority: Option<u8>,
    pub(crate) count: usize,
    pub(crate) concurrency: usize,
}

/// A JSON-RPC error object, as the gateway (or the worker through it) sends it.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub(crate) struct RpcError {
    pub(crate) code: i64,
    pub(crate) message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) data: Option<Value>,
}

/// How one call ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Result(Value),
    Error(RpcError),
    /// No answer by the deadline plus [`DEADLINE_GRACE`].
    NoAnswer,
    /// The connection ended before the answer (the reason).
    Lost(String),
    /// Ctrl-C, and no answer to the `$/cancel` came in time.
    Interrupted,
}

/// What the calls report as they go; the display implements it.
pub(crate) trait Observer {
    /// Call `index` (0-based) reported progress.
    fn progress(&mut self, index: usize, value: &Value);
    /// Call `index` ended.
    fn finished(&mut self, index: usize, outcome: &Outcome);
}

/// Opens the websocket. The token goes in `Authorization: Bearer`, which (unlike a query
/// parameter) stays out of access logs.
pub(crate) async fn connect(url: &str, token: Option<&str>) -> anyhow::Result<Socket> {
    let mut request = url
        .into_client_request()
        .with_context(|| format!("{url} is not a websocket URL"))?;
    if let Some(token) = token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the token cannot go in an HTTP header")?;
        request.headers_mut().insert("authorization", value);
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
        .max_write_buffer_size(MAX_MESSAGE_BYTES * 2);
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), false);
    let (socket, _) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .with_context(|| format!("connecting to {url} took over {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| describe_connect_error(url, e))?;
    Ok(socket)
}

fn describe_connect_error(url: &str, error: tungstenite::Error) -> anyhow::Error {
    match error {
        tungstenite::Error::Http(response) => {
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .unwrap_or_default();
            anyhow::anyhow!(
                "{url} refused the websocket: HTTP {} {body}",
                response.status()
            )
        }
        // Not chained as a source: tungstenite's message already repeats its cause.
        other => anyhow::anyhow!("cannot connect to {url}: {other}"),
    }
}

/// A call in flight.
struct InFlight {
    index: usize,
    deadline: Instant,
}

/// The state of one run: owned by [`run`]'s loop, nothing shared.
struct Runner<'a> {
    plan: &'a Plan,
    observer: &'a mut dyn Observer,
    outcomes: Vec<Option<Outcome>>,
    /// By the id sent, which is the call's index + 1.
    in_flight: HashMap<u64, InFlight>,
    /// Calls sent so far.
    sent: usize,
}

impl Runner<'_> {
    fn finish(&mut self, index: usize, outcome: Outcome) {
        if self.outcomes[index].is_some() {
            return;
        }
        self.observer.finished(index, &outcome);
        self.outcomes[index] = Some(outcome);
    }

    fn finish_id(&mut self, id: u64, outcome: Outcome) {
        if let Some(call) = self.in_flight.remove(&id) {
            self.finish(call.index, outcome);
        }
    }

    /// Ends every call in flight and every call not sent yet with `outcome`.
    fn end_all(&mut self, outcome: &Outcome) {
        for index in 0..self.plan.count {
            self.finish(index, outcome.clone());
        }
        self.in_flight.clear();
    }

    fn done(&self) -> bool {
        self.outcomes.iter().all(Option::is_some)
    }

    /// A message from the gateway: an answer or a progress report (anything else is ignored).
    fn receive(&mut self, message: &Value) {
        if message.get("method").and_then(Value::as_str) == Some("$/progress") {
            let params = &message["params"];
            if let Some(call) = params["id"].as_u64().and_then(|id| self.in_flight.get(&id)) {
                self.observer.progress(call.index, &params["value"]);
            }
            return;
        }
        let Some(id) = message.get("id").and_then(Value::as_u64) else {
            return;
        };
        let outcome = if let Some(error) = message.get("error") {
            match serde_json::from_value::<RpcError>(error.clone()) {
                Ok(error) => Outcome::Error(error),
                Err(e) => Outcome::Error(RpcError {
                    code: wsmq_codes::INTERNAL_ERROR,
                    message: format!("unreadable error object: {e}"),
                    data: Some(error.clone()),
                }),
            }
        } else {
            Outcome::Result(message.get("result").cloned().unwrap_or(Value::Null))
        };
        self.finish_id(id, outcome);
    }
}

/// What a run did.
#[derive(Debug)]
pub(crate) struct Finished {
    /// Every call's outcome, by index.
    pub(crate) outcomes: Vec<Outcome>,
    /// Ctrl-C cut the run short (the calls in flight were cancelled).
    pub(crate) interrupted: bool,
}

/// Runs `plan` on `socket` until every call has ended.
pub(crate) async fn run(mut socket: Socket, plan: &Plan, observer: &mut dyn Observer) -> Finished {
    let mut runner = Runner {
        plan,
        observer,
        outcomes: vec![None; plan.count],
        in_flight: HashMap::new(),
        sent: 0,
    };
    let mut interrupted_at: Option<Instant> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    while !runner.done() {
        // Send while there is room.
        while interrupted_at.is_none()
            && runner.sent < plan.count
            && runner.in_flight.len() < plan.concurrency.max(1)
        {
            let id = runner.sent as u64 + 1;
            if let Err(e) = socket
                .send(Message::text(request(plan, id).to_string()))
                .await
            {
                runner.end_all(&Outcome::Lost(format!("sending failed: {e}")));
                break;
            }
            let deadline = Instant::now() + plan.timeout + DEADLINE_GRACE;
            runner.in_flight.insert(
                id,
                InFlight {
                    index: runner.sent,
                    deadline,
                },
            );
            runner.sent += 1;
        }
        if runner.done() {
            break;
        }
        if interrupted_at.is_some() && runner.in_flight.is_empty() {
            // Ctrl-C before these were sent.
            runner.end_all(&Outcome::Interrupted);
            break;
        }
        let wake = runner
            .in_flight
            .values()
            .map(|c| c.deadline)
            .chain(interrupted_at.map(|at| at + CANCEL_WAIT))
            .min()
            .unwrap_or_else(|| Instant::now() + DEADLINE_GRACE);

        tokio::select! {
            frame = socket.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    for message in messages(&text) {
                        runner.receive(&message);
                    }
                }
                Some(Ok(Message::Close(close))) => {
                    let reason = match close {
                        Some(c) => format!("the gateway closed the connection ({} {})", u16::from(c.code), c.reason),
                        None => "the gateway closed the connection".to_owned(),
                    };
                    runner.end_all(&Outcome::Lost(reason));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => runner.end_all(&Outcome::Lost(format!("the connection failed: {e}"))),
                None => runner.end_all(&Outcome::Lost("the connection ended".to_owned())),
            },
            () = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if interrupted_at.is_some_and(|at| at + CANCEL_WAIT <= now) {
                    runner.end_all(&Outcome::Interrupted);
                    break;
                }
                let late: Vec<u64> = runner
                    .in_flight
                    .iter()
                    .filter(|(_, c)| c.deadline <= now)
                    .map(|(id, _)| *id)
                    .collect();
                for id in late {
                    runner.finish_id(id, Outcome::NoAnswer);
                }
            },
            _ = &mut ctrl_c, if interrupted_at.is_none() => {
                interrupted_at = Some(Instant::now());
                let ids: Vec<u64> = runner.in_flight.keys().copied().collect();
                for id in ids {
                    let cancel = json!({"jsonrpc": "2.0", "method": "$/cancel", "params": {"id": id}});
                    if socket.send(Message::text(cancel.to_string())).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    // Best effort: every answer is in; a failed close changes nothing for the user.
    let _ = tokio::time::timeout(CANCEL_WAIT, socket.close(None)).await;
    let interrupted = interrupted_at.is_some();
    let outcomes = runner
        .outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or(if interrupted {
                Outcome::Interrupted
            } else {
                Outcome::Lost("no answer".to_owned())
            })
        })
        .collect();
    Finished {
        outcomes,
        interrupted,
    }
}

/// The request for call `id`.
fn request(plan: &Plan, id: u64) -> Value {
    let timeout_ms = u64::try_from(plan.timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let mut options = json!({ "timeout_ms": timeout_ms });
    if let Some(priority) = plan.priority {
        options["priority"] = json!(priority);
    }
    let mut request = json!({"jsonrpc": "2.0", "method": plan.method, "id": id, "wsmq": options});
    if let Some(params) = &plan.params {
        request["params"] = params.clone();
    }
    request
}

/// The messages in a text frame (a batch answer is an array of them); nothing if it is not JSON.
fn messages(text: &str) -> Vec<Value> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => items,
        Ok(message) => vec![message],
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            method: "sleep".into(),
            params: Some(json!({"ms": 5})),
            timeout: Duration::from_millis(1500),
            priority: Some(7),
            count: 1,
            concurrency: 1,
        }
    }

    #[test]
    fn request_carries_the_deadline_and_priority_as_wsmq_options() {
        assert_eq!(
            request(&plan(), 3),
            json!({"jsonrpc": "2.0", "method": "sleep", "id": 3, "params": {"ms": 5},
                   "wsmq": {"timeout_ms": 1500, "priority": 7}})
        );
        let bare = Plan {
            params: None,
            priority: None,
            ..plan()
        };
        assert_eq!(
            request(&bare, 1),
            json!({"jsonrpc": "2.0", "method": "sleep", "id": 1, "wsmq": {"timeout_ms": 1500}})
        );
    }

    #[test]
    fn a_batch_frame_yields_each_message_and_garbage_none() {
        assert_eq!(messages(r#"[{"id":1},{"id":2}]"#).len(), 2);
        assert_eq!(messages(r#"{"id":1}"#).len(), 1);
        assert!(messages("not json").is_empty());
    }
}
