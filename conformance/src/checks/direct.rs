//! Checks that publish jobs straight to the worker's queues, as the bridge would, where only a
//! hand-made job shows the behaviour (a reply's exact properties, a body that is not JSON, a job
//! already past its deadline), and the queue declarations.

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use serde_json::{Value, json};
use tokio::time::Instant;
use wsmq_amqp_proto::{
    CONTENT_TYPE, DEFAULT_MAX_PRIORITY, DELIVERY_MODE_PERSISTENT, Reply, ReplyStatus,
    cancel_exchange_name, classify_reply, queue_name,
};
use wsmq_codes::PARSE_ERROR;

use super::{Kit, Outcome, runs, tag};
use crate::broker::DirectReply;
use crate::methods::{self, ECHO, SLEEP};

/// The `expiration` of the kit's jobs: long enough that RabbitMQ never drops one first.
const EXPIRES_IN: Duration = Duration::from_secs(30);
/// The deadline of the kit's live jobs, in milliseconds from now.
const LIVE_DEADLINE_MS: i64 = 30_000;
/// How far in the past the deadline of `deadline-skip`'s expired job is, in milliseconds.
const PAST_DEADLINE_MS: i64 = -1_000;

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The reply's status, or what is wrong with it.
fn status(reply: &DirectReply) -> Result<ReplyStatus> {
    Ok(ReplyStatus::read(reply.headers.as_ref())?)
}

/// Whether `reply` is a job's final reply (a result or an error), not a progress report.
fn is_final(reply: &DirectReply) -> bool {
    !matches!(status(reply), Ok(ReplyStatus::Progress))
}

/// The JSON value of a result reply, or an error saying what the reply is instead.
fn result_value(reply: &DirectReply, what: &str) -> Result<Value> {
    match classify_reply(reply.headers.as_ref(), &reply.body) {
        Ok(Reply::Result(raw)) => Ok(serde_json::from_str(raw.get())?),
        Ok(Reply::Error(error)) => bail!(
            "{what} was answered with error {} {:?}",
            error.code,
            error.message
        ),
        Ok(Reply::Progress(raw)) => bail!("{what}'s final reply is a progress report {raw}"),
        Err(e) => bail!("{what}'s reply cannot be read: {e}"),
    }
}

/// `reply-format`: the reply to a job carries the job's correlation id, `application/json`,
/// delivery mode 2, an `ok` (or no) status, and the result as its body.
pub(super) async fn reply_format(kit: &mut Kit, until: Instant) -> Result<Outcome> {
    let id = new_id();
    let params = json!({"direct": true, "n": 7, "text": "ünïcode"});
    kit.broker
        .publish_job(
            &kit.prefix,
            ECHO,
            &id,
            params.to_string().as_bytes(),
            LIVE_DEADLINE_MS,
            EXPIRES_IN,
        )
        .await?;
    let reply = kit.broker.reply_to(&id, until, |_| true).await?;
    ensure!(
        reply.content_type.as_deref() == Some(CONTENT_TYPE),
        "the reply's content_type is {:?}, not {CONTENT_TYPE:?}",
        reply.content_type
    );
    ensure!(
        reply.delivery_mode == Some(DELIVERY_MODE_PERSISTENT),
        "the reply's delivery_mode is {:?}, not {DELIVERY_MODE_PERSISTENT} (persistent)",
        reply.delivery_mode
    );
    let status = status(&reply)?;
    ensure!(
        status == ReplyStatus::Ok,
        "the reply's status is {status:?}, not ok"
    );
    let result = result_value(&reply, ECHO)?;
    ensure!(result == params, "{ECHO} with {params} replied {result}");
    Ok(Outcome::Pass(format!(
        "correlation_id, {CONTENT_TYPE}, persistent, status ok, body the result"
    )))
}

/// `bad-params`: a job whose body is not JSON is answered -32700 as an error reply, and the
/// next job is served.
pub(super) async fn bad_params(kit: &mut Kit, until: Instant) -> Result<Outcome> {
    let bad = new_id();
    let good = new_id();
    kit.broker
        .publish_job(
            &kit.prefix,
            ECHO,
            &bad,
            b"{not json",
            LIVE_DEADLINE_MS,
            EXPIRES_IN,
        )
        .await?;
    let params = json!({"after": "bad params"});
    kit.broker
        .publish_job(
            &kit.prefix,
            ECHO,
            &good,
            params.to_string().as_bytes(),
            LIVE_DEADLINE_MS,
            EXPIRES_IN,
        )
        .await?;
    let reply = kit.broker.reply_to(&bad, until, |_| true).await?;
    match classify_reply(reply.headers.as_ref(), &reply.body) {
        Ok(Reply::Error(error)) if error.code == PARSE_ERROR => {}
        Ok(Reply::Error(error)) => {
            bail!(
                "the job with a body that is not JSON was answered error {} {:?}, not {PARSE_ERROR}",
                error.code,
                error.message
            )
        }
        Ok(other) => bail!(
            "the job with a body that is not JSON was answered {other:?}, not error {PARSE_ERROR}"
        ),
        Err(e) => bail!("the reply to the job with a body that is not JSON cannot be read: {e}"),
    }
    let reply = kit.broker.reply_to(&good, until, |_| true).await?;
    let result = result_value(&reply, ECHO)?;
    ensure!(
        result == params,
        "{ECHO} after the bad job replied {result}, not {params}"
    );
    Ok(Outcome::Pass(format!(
        "error reply {PARSE_ERROR} for that job, the next one served"
    )))
}

/// `deadline-skip`: a job whose deadline passed before it was delivered is neither run nor
/// answered. A live job published after it on the same queue shows when the worker has had it.
pub(super) async fn deadline_skip(kit: &mut Kit, until: Instant) -> Result<Outcome> {
    let (expired, live) = (new_id(), new_id());
    let (expired_tag, live_tag) = (tag("deadline-expired"), tag("deadline-live"));
    let body = |tag: &str| json!({"ms": 0, "tag": tag}).to_string();
    kit.broker
        .publish_job(
            &kit.prefix,
            SLEEP,
            &expired,
            body(&expired_tag).as_bytes(),
            PAST_DEADLINE_MS,
            EXPIRES_IN,
        )
        .await?;
    kit.broker
        .publish_job(
            &kit.prefix,
            SLEEP,
            &live,
            body(&live_tag).as_bytes(),
            LIVE_DEADLINE_MS,
            EXPIRES_IN,
        )
        .await?;
    let reply = kit.broker.reply_to(&live, until, is_final).await?;
    let result = result_value(&reply, SLEEP)?;
    ensure!(
        result == json!({"slept": 0}),
        "the live {SLEEP} job replied {result}"
    );
    let mut client = kit.client(until).await?;
    let expired_runs = runs(&mut client, "expired", &expired_tag, until).await?;
    let live_runs = runs(&mut client, "live", &live_tag, until).await?;
    ensure!(
        live_runs == 1,
        "{} counts {live_runs} runs of the live job's tag, not 1",
        methods::RUNS
    );
    ensure!(
        expired_runs == 0,
        "the job whose deadline had passed was run ({expired_runs} run(s) of its tag)"
    );
    let replies = kit.broker.replies_so_far(&expired);
    ensure!(
        replies.is_empty(),
        "the job whose deadline had passed was answered ({} message(s), the first: {})",
        replies.len(),
        String::from_utf8_lossy(&replies[0].body)
    );
    Ok(Outcome::Pass(
        "the expired job was neither run nor answered; the live one after it ran once".to_owned(),
    ))
}

/// The most characters of a broker's refusal a FAIL line shows.
const MAX_REASON_CHARS: usize = 240;

/// A refusal's text, once (lapin repeats it down its error chain) and cut short.
fn brief(error: &anyhow::Error) -> String {
    let text = error.to_string();
    match text.char_indices().nth(MAX_REASON_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

/// `queue-arguments`: RabbitMQ accepts the Rust worker's declaration of every `conf.*` queue
/// (it refuses one whose arguments differ from those the queue has), and the bridge's of the
/// cancellation exchange.
pub(super) async fn queue_arguments(kit: &mut Kit) -> Result<Outcome> {
    let mut refused = Vec::new();
    if let Some(exchange) = kit.queue_type.dead_letter_exchange(&kit.prefix)
        && let Err(e) = kit.broker.declare_fanout(&exchange).await
    {
        refused.push(format!("exchange {exchange}: {}", brief(&e)));
    }
    let arguments = kit
        .queue_type
        .arguments(&kit.prefix, Some(DEFAULT_MAX_PRIORITY));
    for method in methods::ALL {
        let queue = queue_name(&kit.prefix, method);
        if let Err(e) = kit.broker.declare_queue(&queue, arguments.clone()).await {
            refused.push(format!("{queue}: {}", brief(&e)));
        }
    }
    let exchange = cancel_exchange_name(&kit.prefix);
    if let Err(e) = kit.broker.declare_fanout(&exchange).await {
        refused.push(format!("exchange {exchange}: {}", brief(&e)));
    }
    ensure!(
        refused.is_empty(),
        "RabbitMQ refused {} declaration(s); the first: {}",
        refused.len(),
        refused[0]
    );
    let arguments: Vec<String> = arguments
        .inner()
        .iter()
        .map(|(name, value)| format!("{name}={value:?}"))
        .collect();
    Ok(Outcome::Pass(format!(
        "{} queues accept durable with {}",
        methods::ALL.len(),
        arguments.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_cut_short_on_a_character_boundary() {
        let long = anyhow::anyhow!("é".repeat(MAX_REASON_CHARS + 10));
        let text = brief(&long);
        assert_eq!(
            text.chars().count(),
            MAX_REASON_CHARS + 1,
            "and the ellipsis"
        );
        assert!(text.ends_with('…'));
        assert_eq!(brief(&anyhow::anyhow!("short")), "short");
    }
}
