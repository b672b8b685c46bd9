"""The demo methods and the conformance methods, served by the Python SDK.

    python -m wsmq_worker clients/python/examples/demo_worker.py:worker

Settings come from the
environment: ``WSMQ_AMQP`` (one URL or several, comma-separated), ``WSMQ_QUEUE_PREFIX`` (the
bridge's --queue-prefix), ``WSMQ_CONCURRENCY`` (default 8), ``WSMQ_QUEUE_TYPE`` (classic or
quorum) and ``WSMQ_DELIVERY_LIMIT`` (for quorum).

Demo methods (as the Rust demo worker's, docs/workers.md): ``echo``, ``sleep`` {"ms": N},
``progress`` {"steps": N, "ms": M}, ``fail``. Conformance methods (docs/conformance.md):
``conf.echo``, ``conf.progress``, ``conf.sleep``, ``conf.runs``, ``conf.fail``, ``conf.caller``,
``conf.raise``.
"""

import os
import threading

from wsmq_worker import JobError, Worker

worker = Worker(
    concurrency=int(os.environ.get("WSMQ_CONCURRENCY", "8")),
    queue_prefix=os.environ.get("WSMQ_QUEUE_PREFIX", ""),
    queue_type=os.environ.get("WSMQ_QUEUE_TYPE", "classic"),
    delivery_limit=int(os.environ["WSMQ_DELIVERY_LIMIT"]) if "WSMQ_DELIVERY_LIMIT" in os.environ else None,
)

MAX_SLEEP_MS = 600_000


def int_param(params, name, maximum, default=None):
    """params[name] as an integer in 0..maximum, else -32602."""
    value = params.get(name, default) if isinstance(params, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise JobError.invalid_params(f"{name} must be an integer from 0 to {maximum}")
    return value


# ---- the demo methods ----------------------------------------------------------------------


@worker.method("echo")
def echo(params, job):
    return params


@worker.method("sleep")
def sleep(params, job):
    ms = int_param(params, "ms", MAX_SLEEP_MS)
    if job.cancelled.wait(ms / 1000):
        return None  # nothing is sent: the caller already has its answer
    return {"slept_ms": ms}


@worker.method("progress")
def progress(params, job):
    steps = int_param(params, "steps", 1000)
    ms = int_param(params, "ms", 60_000, default=0)
    for step in range(1, steps + 1):
        if job.cancelled.wait(ms / 1000):
            return None
        job.progress({"step": step, "of": steps})
    return {"done": steps}


@worker.method("fail")
def fail(params, job):
    raise JobError(4000, "requested failure", params)


# ---- the conformance methods ---------------------------------------------------------------

# conf.runs: how many conf.sleep jobs with each tag this process started.
runs = {}
runs_lock = threading.Lock()


@worker.method("conf.echo")
def conf_echo(params, job):
    return params


@worker.method("conf.progress")
def conf_progress(params, job):
    steps = int_param(params, "steps", 100)
    for step in range(1, steps + 1):
        if not job.progress({"step": step}):
            return None  # cancelled
    return {"steps": steps}


@worker.method("conf.sleep")
def conf_sleep(params, job):
    ms = int_param(params, "ms", 60_000)
    tag = params.get("tag")
    if tag is not None and not isinstance(tag, str):
        raise JobError.invalid_params("tag must be a string")
    with runs_lock:
        runs[tag] = runs.get(tag, 0) + 1
    # How the kit knows the job runs (to cancel it, or kill this worker, at the right moment).
    if not job.progress({"started": True}):
        return None
    if job.cancelled.wait(ms / 1000):
        return None
    return {"slept": ms}


@worker.method("conf.runs")
def conf_runs(params, job):
    tag = params.get("tag") if isinstance(params, dict) else None
    if not isinstance(tag, str):
        raise JobError.invalid_params("tag must be a string")
    with runs_lock:
        return {"runs": runs.get(tag, 0)}


@worker.method("conf.fail")
def conf_fail(params, job):
    if not isinstance(params, dict) or not isinstance(params.get("code"), int) or not isinstance(params.get("message"), str):
        raise JobError.invalid_params("code must be an integer and message a string")
    if "data" in params:
        raise JobError(params["code"], params["message"], params["data"])
    raise JobError(params["code"], params["message"])


@worker.method("conf.caller")
def conf_caller(params, job):
    return {"caller": job.caller}


@worker.method("conf.raise")
def conf_raise(params, job):
    raise RuntimeError("conf.raise raises, as asked; this message stays in the worker's log")


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker.run()
