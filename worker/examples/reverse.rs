//! README's "worker in ten lines": serves `reverse`, `{"text": "abc"}` -> `{"reversed": "cba"}`.
//!
//! Beside `scripts/run`: `cargo run -p wsmq-worker --example reverse`, then
//! `wsmq call reverse '{"text": "abc"}'`. Keep README's copy of the code below in step.
use serde_json::json;
use tokio_util::sync::CancellationToken;
use wsmq_worker::{Request, RpcError, Worker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let worker = Worker::builder("amqp://guest:guest@127.0.0.1:5672/%2f")
        .method("reverse", |req: Request| async move {
            let text = req.params["text"]
                .as_str()
                .ok_or(RpcError::invalid_params("no text"))?;
            Ok(json!({ "reversed": text.chars().rev().collect::<String>() }))
        })
        .build()?;
    worker.run(CancellationToken::new()).await?; // reconnects by itself; returns on cancel
    Ok(())
}
