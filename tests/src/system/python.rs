//! The Python worker SDK (`clients/python/wsmq_worker`) in a test system: its example worker,
//! run through the SDK's command line exactly as a user runs it.

use super::*;

/// The example the SDK ships: the demo methods and the conformance methods.
pub const PYTHON_SDK_EXAMPLE: &str = "clients/python/examples/demo_worker.py";

/// The methods the example serves; their queues are deleted by cleanup.
pub const PYTHON_SDK_METHODS: [&str; 11] = [
    "echo",
    "sleep",
    "progress",
    "fail",
    "conf.echo",
    "conf.progress",
    "conf.sleep",
    "conf.runs",
    "conf.fail",
    "conf.caller",
    "conf.raise",
];

/// The environment that runs the SDK of this tree (not whatever copy pip installed) with
/// Python's output unbuffered, so each log line reaches the harness when it is written.
pub fn python_sdk_env() -> Result<Vec<(&'static str, String)>> {
    let sdk = workspace_root().join("clients/python");
    Ok(vec![
        ("PYTHONPATH", path_arg(&sdk)?.to_owned()),
        ("PYTHONUNBUFFERED", "1".to_owned()),
    ])
}

/// The Python interpreter: `WSMQ_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("WSMQ_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

impl System {
    /// Starts the Python SDK's example worker (`python3 -m wsmq_worker
    /// clients/python/examples/demo_worker.py:worker`) on this system's prefix with
    /// `concurrency` jobs at once, and waits until it consumes every queue.
    pub async fn start_python_sdk_worker(&mut self, concurrency: u32) -> Result<()> {
        self.start_python_sdk_worker_with(concurrency, &[]).await
    }

    /// [`Self::start_python_sdk_worker`] with more environment for the example (e.g.
    /// `WSMQ_QUEUE_TYPE`, `WSMQ_DELIVERY_LIMIT`).
    pub async fn start_python_sdk_worker_with(
        &mut self,
        concurrency: u32,
        extra_env: &[(&'static str, &str)],
    ) -> Result<()> {
        let example = workspace_root().join(PYTHON_SDK_EXAMPLE);
        let target = format!("{}:worker", path_arg(&example)?);
        self.start_python_sdk_target(&target, &PYTHON_SDK_METHODS, concurrency, extra_env)
            .await
    }

    /// Runs `python3 -m wsmq_worker target` (a `module:attribute` or `file.py:attribute` whose
    /// worker serves `methods`, reading `WSMQ_QUEUE_PREFIX` and `WSMQ_CONCURRENCY` from its
    /// environment) and waits until it consumes every queue.
    pub async fn start_python_sdk_target(
        &mut self,
        target: &str,
        methods: &[&str],
        concurrency: u32,
        extra_env: &[(&'static str, &str)],
    ) -> Result<()> {
        for method in methods {
            self.track_queue(self.queue_for(method));
        }
        let mut env = python_sdk_env()?;
        env.extend([
            ("WSMQ_AMQP", self.amqp_url.clone()),
            ("WSMQ_QUEUE_PREFIX", self.prefix.clone()),
            ("WSMQ_CONCURRENCY", concurrency.to_string()),
        ]);
        env.extend(extra_env.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let mut worker =
            Service::spawn("python-sdk", python(), ["-m", "wsmq_worker", target], &env)?;
        let ready = worker
            .wait_for_log("\"wsmq worker ready\"", |l| {
                l.text.contains("wsmq worker ready")
            })
            .await;
        self.workers.push(worker);
        ready
            .map(drop)
            .context("the Python SDK worker did not start (is pika installed?)")
    }
}
