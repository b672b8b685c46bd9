//! The conformance methods every worker under test serves (docs/conformance.md has their params
//! and results; the worker side of this contract is the doc, since workers in other languages
//! cannot import a Rust constant).

/// Answers its params unchanged.
pub(crate) const ECHO: &str = "conf.echo";
/// `{"steps": n}`: reports `{"step": 1}` … `{"step": n}`, answers `{"steps": n}`.
pub(crate) const PROGRESS: &str = "conf.progress";
/// `{"ms": n, "tag": t}`: counts a run of t, reports `{"started": true}`, sleeps n ms unless
/// cancelled, answers `{"slept": n}`.
pub(crate) const SLEEP: &str = "conf.sleep";
/// `{"tag": t}`: answers `{"runs": k}`, the runs of t this worker process started.
pub(crate) const RUNS: &str = "conf.runs";
/// `{"code", "message", "data"?}`: answers that JSON-RPC error.
pub(crate) const FAIL: &str = "conf.fail";
/// Answers `{"caller": <the job's caller or null>}`.
pub(crate) const CALLER: &str = "conf.caller";
/// Its handler raises an uncaught error: answered -32603.
pub(crate) const RAISE: &str = "conf.raise";

/// Every conformance method: the worker is ready when each one's queue has a consumer.
pub(crate) const ALL: [&str; 7] = [ECHO, PROGRESS, SLEEP, RUNS, FAIL, CALLER, RAISE];

/// The demo methods the example workers of the wsmq repository (the Python and Node SDKs')
/// serve beside the conformance methods: with `--start`, their queues under the kit's prefix are
/// deleted at the end too, so that running the kit leaves nothing behind.
pub(crate) const EXAMPLE_DEMO_METHODS: [&str; 5] = ["echo", "sleep", "progress", "fail", "fib"];
