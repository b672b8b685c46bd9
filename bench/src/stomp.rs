//! `stomp` mode: the same calls through RabbitMQ's Web-STOMP plugin, which is what a browser
//! would use to reach the workers without wsmq.
//!
//! Each websocket connection logs in with STOMP 1.2, and sends each job to
//! `/amq/queue/<prefix><method>` (the worker's queue, through the default exchange) with
//! `reply-to: /temp-queue/replies`: RabbitMQ gives the connection a private reply queue and
//! delivers the worker's reply as a MESSAGE frame carrying the same `correlation-id`.
//! Needs `rabbitmq-plugins enable rabbitmq_web_stomp` (no restart), listening on 15674.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use wsmq_amqp_proto::{CONTENT_TYPE, STATUS_ERROR, STATUS_HEADER};

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::gateway::{self, DRAIN, Ws};
use crate::stats::{LaneStats, Window};

/// How long RabbitMQ may take to answer CONNECT.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to log in, and what to send.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) login: String,
    pub(crate) passcode: String,
    /// The worker's queue.
    pub(crate) queue: String,
    pub(crate) params: String,
}

impl Target {
    fn send_frame(&self, id: u64) -> String {
        format!(
            "SEND\ndestination:/amq/queue/{}\nreply-to:/temp-queue/replies\ncorrelation-id:{id}\n\
             content-type:{CONTENT_TYPE}\ncontent-length:{}\n\n{}\0",
            self.queue,
            self.params.len(),
            self.params
        )
    }
}

/// Opens a websocket to Web-STOMP and logs in.
pub(crate) async fn connect(target: &Target) -> Result<Ws> {
    let addr = gateway::resolve(&target.url).await?;
    let mut ws = gateway::connect(&target.url, addr, None, Some(crate::ws_config())).await?;
    let login = format!(
        "CONNECT\naccept-version:1.2\nhost:/\nlogin:{}\npasscode:{}\nheart-beat:0,0\n\n\0",
        target.login, target.passcode
    );
    ws.send(Message::text(login)).await?;
    let answer = tokio::time::timeout(LOGIN_TIMEOUT, ws.next())
        .await
        .context("Web-STOMP did not answer CONNECT")?
        .context("Web-STOMP closed the connection")??;
    let text = answer.into_text()?;
    if !text.starts_with("CONNECTED") {
        bail!(
            "Web-STOMP refused the login: {}",
            text.trim_end_matches('\0')
        );
    }
    Ok(ws)
}

/// The command and the `correlation-id` header of a frame.
fn parse(frame: &str) -> (&str, Option<&str>) {
    let head = frame.split("\n\n").next().unwrap_or("");
    let mut lines = head.lines();
    let command = lines.next().unwrap_or("");
    let correlation = lines.find_map(|l| l.strip_prefix("correlation-id:"));
    (command, correlation)
}

/// Runs `share` calls in flight on `ws` until the window closes, then waits for the rest.
pub(crate) async fn drive(mut ws: Ws, share: usize, target: &Target, window: Window) -> LaneStats {
    let mut stats = LaneStats::new();
    let mut sent: HashMap<u64, Instant> = HashMap::with_capacity(share);
    let mut next_id = 0u64;
    // The worker marks error replies with its status header; STOMP passes it through.
    let error_reply = format!("\n{STATUS_HEADER}:{STATUS_ERROR}");
    let result = async {
        for _ in 0..share {
            next_id += 1;
            sent.insert(next_id, Instant::now());
            ws.feed(Message::text(target.send_frame(next_id))).await?;
        }
        ws.flush().await?;
        let drain_deadline = tokio::time::Instant::from_std(window.end + DRAIN);
        while !sent.is_empty() {
            let Ok(frame) = tokio::time::timeout_at(drain_deadline, ws.next()).await else {
                bail!("{} calls unanswered {DRAIN:?} after the run", sent.len());
            };
            let text = match frame.context("Web-STOMP closed the connection")?? {
                Message::Text(text) => text,
                Message::Close(close) => bail!("Web-STOMP closed the connection: {close:?}"),
                _ => continue,
            };
            let now = Instant::now();
            let (command, correlation) = parse(text.as_str());
            match command {
                "MESSAGE" => {}
                "" => continue, // a heart-beat
                "ERROR" => bail!("Web-STOMP error: {}", text.as_str().trim_end_matches('\0')),
                _ => continue,
            }
            let started = correlation
                .and_then(|id| id.parse::<u64>().ok())
                .and_then(|id| sent.remove(&id));
            let Some(started) = started else {
                stats.failed(1, || format!("message for no call: {correlation:?}"));
                continue;
            };
            if text.as_str().contains(&error_reply) {
                stats.failed(1, || "error reply".into());
            } else {
                stats.answered(&window, started, now);
            }
            if window.open(now) {
                next_id += 1;
                sent.insert(next_id, Instant::now());
                ws.send(Message::text(target.send_frame(next_id))).await?;
            }
        }
        if share == 0 {
            tokio::time::sleep_until(tokio::time::Instant::from_std(window.end)).await;
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        let lost = sent.len() as u64;
        stats.failed(lost.max(1), || format!("{e:#}"));
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_frames_give_their_correlation_id() {
        let frame = "MESSAGE\nsubscription:x\ncorrelation-id:42\ncontent-length:2\n\n{}\0";
        assert_eq!(parse(frame), ("MESSAGE", Some("42")));
    }

    #[test]
    fn a_body_that_looks_like_a_header_is_not_read_as_one() {
        let frame = "MESSAGE\nsubscription:x\n\ncorrelation-id:7\0";
        assert_eq!(parse(frame), ("MESSAGE", None));
    }
}
