//! A websocket JSON-RPC client of the gateway, as a browser would be, keeping every frame it
//! received in arrival order so a check can ask what came, and in which order.

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The notification the gateway sends for each progress report of a call
/// ([protocol](../../docs/protocol.md)).
const PROGRESS_METHOD: &str = "$/progress";
/// The notification a client sends to cancel one of its calls.
const CANCEL_METHOD: &str = "$/cancel";

/// The largest frame the kit accepts from the gateway: far above anything a check asks for.
const MAX_FRAME_BYTES: usize = 1 << 20;

/// One frame from the gateway, read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Frame {
    /// A `$/progress` notification: the call's id and the reported value.
    Progress { id: Value, value: Value },
    /// A response: the call's id and the whole response object.
    Response { id: Value, response: Value },
    /// Anything else (a `$/session` greeting, ...).
    Other(Value),
}

impl Frame {
    fn read(frame: Value) -> Self {
        let is_progress = frame.get("method").and_then(Value::as_str) == Some(PROGRESS_METHOD)
            && frame.get("id").is_none();
        if is_progress {
            let params = &frame["params"];
            return Self::Progress {
                id: params["id"].clone(),
                value: params["value"].clone(),
            };
        }
        match frame.get("id") {
            Some(id) if frame.get("result").is_some() || frame.get("error").is_some() => {
                Self::Response {
                    id: id.clone(),
                    response: frame,
                }
            }
            _ => Self::Other(frame),
        }
    }
}

/// One websocket connection to the gateway.
pub(crate) struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Every frame received, oldest first.
    log: Vec<Frame>,
}

impl Client {
    /// Connects to `url`, presenting `token` as `Authorization: Bearer` when given.
    pub(crate) async fn connect(url: &str, token: Option<&str>, until: Instant) -> Result<Self> {
        let mut request = url
            .into_client_request()
            .with_context(|| format!("bad websocket URL {url}"))?;
        if let Some(token) = token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .context("the token is not a valid header value")?;
            request.headers_mut().insert("authorization", value);
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        let connect = tokio_tungstenite::connect_async_with_config(request, Some(config), false);
        let (ws, _) = tokio::time::timeout_at(until, connect)
            .await
            .with_context(|| format!("the websocket handshake with {url} took too long"))?
            .with_context(|| format!("cannot connect to {url}"))?;
        Ok(Self {
            ws,
            log: Vec::new(),
        })
    }

    async fn send(&mut self, frame: &Value) -> Result<()> {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .context("cannot send to the gateway")
    }

    /// Sends a call; `timeout_ms` is its `wsmq.timeout_ms` option when given.
    pub(crate) async fn call(
        &mut self,
        id: impl Into<Value>,
        method: &str,
        params: Value,
        timeout_ms: Option<u64>,
    ) -> Result<()> {
        let mut request =
            json!({"jsonrpc": "2.0", "id": id.into(), "method": method, "params": params});
        if let Some(ms) = timeout_ms {
            request["wsmq"] = json!({ "timeout_ms": ms });
        }
        self.send(&request).await
    }

    /// Sends `$/cancel` for the call `id`.
    pub(crate) async fn cancel(&mut self, id: impl Into<Value>) -> Result<()> {
        let frame = json!({"jsonrpc": "2.0", "method": CANCEL_METHOD, "params": {"id": id.into()}});
        self.send(&frame).await
    }

    /// Reads frames until `done(log)` holds; fails at `until`, saying it was waiting for `what`.
    pub(crate) async fn wait(
        &mut self,
        until: Instant,
        what: &str,
        done: impl Fn(&[Frame]) -> bool,
    ) -> Result<()> {
        while !done(&self.log) {
            let next = match tokio::time::timeout_at(until, self.ws.next()).await {
                Ok(next) => next,
                Err(_) => bail!("no {what} in time; received: {}", self.transcript()),
            };
            match next {
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(text.as_str()).with_context(|| {
                        format!("the gateway sent a frame that is not JSON: {text}")
                    })?;
                    self.log.push(Frame::read(frame));
                }
                Some(Ok(Message::Close(close))) => {
                    bail!(
                        "the gateway closed the connection ({close:?}) while the kit waited for {what}"
                    )
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("the connection failed while the kit waited for {what}: {e}"),
                None => bail!("the connection ended while the kit waited for {what}"),
            }
        }
        Ok(())
    }

    /// Waits until the call `id` is answered, and returns the response.
    pub(crate) async fn response(&mut self, id: impl Into<Value>, until: Instant) -> Result<Value> {
        let id = id.into();
        self.wait(until, &format!("answer to call {id}"), |log| {
            response_of(log, &id).is_some()
        })
        .await?;
        response_of(&self.log, &id)
            .cloned()
            .with_context(|| format!("no answer to call {id}"))
    }

    /// Calls `method` and waits for its answer.
    pub(crate) async fn call_and_wait(
        &mut self,
        id: impl Into<Value>,
        method: &str,
        params: Value,
        until: Instant,
    ) -> Result<Value> {
        let id = id.into();
        self.call(id.clone(), method, params, None).await?;
        self.response(id, until).await
    }

    /// Every frame received so far.
    pub(crate) fn log(&self) -> &[Frame] {
        &self.log
    }

    /// The frames received so far, as text for an error message (the last 20).
    pub(crate) fn transcript(&self) -> String {
        let skip = self.log.len().saturating_sub(20);
        let frames: Vec<String> = self.log[skip..]
            .iter()
            .map(|frame| match frame {
                Frame::Progress { id, value } => format!("progress {id}: {value}"),
                Frame::Response { response, .. } => response.to_string(),
                Frame::Other(other) => other.to_string(),
            })
            .collect();
        if frames.is_empty() {
            "nothing".to_owned()
        } else {
            frames.join(" | ")
        }
    }
}

/// The response to call `id` in `log`, if it came.
pub(crate) fn response_of<'a>(log: &'a [Frame], id: &Value) -> Option<&'a Value> {
    log.iter().find_map(|frame| match frame {
        Frame::Response { id: got, response } if got == id => Some(response),
        _ => None,
    })
}

/// Where in `log` the response to call `id` came, if it did.
pub(crate) fn response_position(log: &[Frame], id: &Value) -> Option<usize> {
    log.iter()
        .position(|frame| matches!(frame, Frame::Response { id: got, .. } if got == id))
}

/// The progress values reported for call `id`, in order.
pub(crate) fn progress_of<'a>(log: &'a [Frame], id: &Value) -> Vec<&'a Value> {
    log.iter()
        .filter_map(|frame| match frame {
            Frame::Progress { id: got, value } if got == id => Some(value),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_read_as_progress_responses_or_other() {
        let progress = Frame::read(
            json!({"jsonrpc":"2.0","method":"$/progress","params":{"id":7,"value":{"step":1}}}),
        );
        assert_eq!(
            progress,
            Frame::Progress {
                id: json!(7),
                value: json!({"step": 1})
            }
        );
        let response = json!({"jsonrpc":"2.0","id":"a","result":null});
        assert_eq!(
            Frame::read(response.clone()),
            Frame::Response {
                id: json!("a"),
                response
            }
        );
        let error = json!({"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}});
        assert!(matches!(Frame::read(error), Frame::Response { .. }));
        let session = json!({"jsonrpc":"2.0","method":"$/session","params":{}});
        assert!(matches!(Frame::read(session), Frame::Other(_)));
    }

    #[test]
    fn responses_and_progress_are_found_by_id() {
        let log = vec![
            Frame::read(json!({"jsonrpc":"2.0","method":"$/progress","params":{"id":1,"value":1}})),
            Frame::read(json!({"jsonrpc":"2.0","id":2,"result":"two"})),
            Frame::read(json!({"jsonrpc":"2.0","method":"$/progress","params":{"id":1,"value":2}})),
            Frame::read(json!({"jsonrpc":"2.0","id":1,"result":"one"})),
        ];
        assert_eq!(progress_of(&log, &json!(1)), vec![&json!(1), &json!(2)]);
        assert_eq!(response_position(&log, &json!(1)), Some(3));
        assert_eq!(
            response_of(&log, &json!(2)).map(|r| &r["result"]),
            Some(&json!("two"))
        );
        assert_eq!(
            response_of(&log, &json!("1")),
            None,
            "ids compare as JSON values"
        );
    }
}
