#!/usr/bin/env python3
"""A wsmq worker in Python with pika: proof that any language can serve a method.

It keeps to the AMQP contract documented in docs/workers.md:

* it declares its queues durable, with x-max-priority 9 as the Rust SDK does (the bridge never
  declares them);
* a job's body is the call's JSON params; its reply goes to the default exchange with
  routing key = the job's reply_to, the job's correlation_id, content_type application/json,
  delivery_mode 2, and header wsmq-status = "ok" (body: the result), "error" (body: a
  JSON-RPC error object) or "progress" (body: a progress report, before the result);
* a job is acked only after the broker confirmed its reply; a nacked reply requeues the job;
* a job whose wsmq-deadline has passed is acked unanswered and never run, and a running job
  stops at its deadline;
* cancellations are heard on the fanout exchange <prefix>wsmq.cancel: a running job stops, a
  job cancelled before it arrives is skipped; either way it is acked and nothing is sent.

It serves "reverse" from --queue: {"text": "abc"} -> {"reversed": "cba", "worker": "pika"};
and with --conformance the conformance kit's methods conf.* (docs/conformance.md) from
<prefix>conf.echo etc.

    python3 tests/workers/pika_worker.py --amqp URL --queue QUEUE_NAME
    python3 tests/workers/pika_worker.py --conformance   # WSMQ_AMQP, WSMQ_QUEUE_PREFIX, WSMQ_CONCURRENCY

Everything runs on one thread: pika's BlockingConnection is not thread-safe, so a job that
waits (conf.sleep) is a timer on the connection rather than a blocked thread, and up to
--concurrency jobs (the prefetch) wait at once. It prints "pika worker ready" on stdout once
consuming, and exits with status 0 on SIGTERM or SIGINT after letting running jobs finish (up
to 5 s). On a lost connection it exits with status 1 and leaves restarting to its supervisor.
"""

import argparse
import collections
import json
import logging
import os
import signal
import sys
import time

import pika
import pika.exceptions

DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/%2f"
DEFAULT_CONCURRENCY = 8
MAX_PRIORITY = 9
# How long one wait for broker traffic may last: the latency of noticing a stop request.
POLL_SECONDS = 0.2
# How long a stop waits for running jobs before leaving them to be redelivered.
DRAIN_SECONDS = 5.0
# Cancelled job ids remembered, to skip a job whose cancellation came before it.
MAX_CANCELLED = 4096
# conf.runs tags remembered; past this the oldest is forgotten.
MAX_TAGS = 4096
MAX_SLEEP_MS = 60000
MAX_STEPS = 100

# The contract's names (docs/workers.md; their owner is the Rust crate wsmq-amqp-proto).
STATUS_HEADER = "wsmq-status"
DEADLINE_HEADER = "wsmq-deadline"
CALLER_HEADER = "wsmq-caller"
CANCEL_EXCHANGE = "wsmq.cancel"
PARSE_ERROR = -32700
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

log = logging.getLogger("pika_worker")


class JobError(Exception):
    """A JSON-RPC error to answer the job with."""

    def __init__(self, code, message, data=None, has_data=False):
        super().__init__(message)
        self.error = {"code": code, "message": message}
        if has_data or data is not None:
            self.error["data"] = data


def invalid_params(reason):
    return JobError(INVALID_PARAMS, f"invalid params: {reason}")


def reject_constant(name):
    # Python's json accepts NaN and Infinity; JSON does not.
    raise ValueError(f"{name} is not JSON")


def header_text(value):
    """A string header as text: pika gives a long string as str, a byte array as bytes."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def deadline_of(props):
    """The job's deadline in seconds since the epoch, or None (absent or unreadable)."""
    value = (props.headers or {}).get(DEADLINE_HEADER)
    if isinstance(value, bool):
        return None
    if isinstance(value, (bytes, str)):
        try:
            value = int(header_text(value).strip())
        except ValueError:
            return None
    if isinstance(value, (int, float)) and value >= 0:
        return value / 1000.0
    return None


class Job:
    """One delivered job: where its reply goes, and its progress reports."""

    def __init__(self, worker, channel, deliver, props, params):
        self.worker = worker
        self.channel = channel
        self.deliver = deliver
        self.props = props
        self.params = params
        self.id = props.correlation_id
        self.deadline = deadline_of(props)
        self.caller = header_text((props.headers or {}).get(CALLER_HEADER))
        # While it waits: the connection's timer that ends the wait.
        self.timer = None

    def progress(self, value):
        """Publishes a progress report (confirmed) before the result."""
        self.worker.publish(self, "progress", value)


# What a handler returns when it answers later itself (conf.sleep).
LATER = object()


class Worker:
    """Serves the methods of one connection; every callback runs on its one thread."""

    def __init__(self, connection, channel, prefix):
        self.connection = connection
        self.channel = channel
        self.prefix = prefix
        self.handlers = {}  # queue -> handler(job) returning the result, LATER, or raising
        self.running = {}  # job id -> Job waiting on a timer
        self.cancelled = collections.OrderedDict()
        self.runs = collections.OrderedDict()

    # --- serving -------------------------------------------------------------------------

    def serve(self, queue, handler):
        self.channel.queue_declare(queue=queue, durable=True,
                                   arguments={"x-max-priority": MAX_PRIORITY})
        self.handlers[queue] = handler
        return self.channel.basic_consume(queue, self.on_job, auto_ack=False)

    def listen_for_cancellations(self):
        exchange = self.prefix + CANCEL_EXCHANGE
        self.channel.exchange_declare(exchange=exchange, exchange_type="fanout", durable=True)
        queue = self.channel.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
        self.channel.queue_bind(queue=queue, exchange=exchange, routing_key="")
        return self.channel.basic_consume(queue, self.on_cancel, auto_ack=True)

    def deadline_passed(self, job):
        return job.deadline is not None and job.deadline <= time.time()

    def on_job(self, channel, deliver, props, body):
        if not props.reply_to or not props.correlation_id:
            # Nothing can answer it, and a requeue would bring it straight back.
            log.warning("job without reply_to or correlation_id; acking it unanswered")
            self.ack(deliver.delivery_tag)
            return
        job = Job(self, channel, deliver, props, None)
        if job.id in self.cancelled or self.deadline_passed(job):
            # The caller already has its answer (-32002 or -32001): never run it.
            self.ack(deliver.delivery_tag)
            return
        try:
            job.params = json.loads(body, parse_constant=reject_constant)
        except (ValueError, UnicodeDecodeError) as e:
            self.finish(job, "error", {"code": PARSE_ERROR, "message": "params are not valid JSON",
                                       "data": str(e)})
            return
        handler = self.handlers.get(deliver.routing_key)
        if handler is None:
            self.finish(job, "error", {"code": METHOD_NOT_FOUND,
                                       "message": f"method not found: {deliver.routing_key}"})
            return
        try:
            result = handler(job)
        except JobError as e:
            self.finish(job, "error", e.error)
            return
        except Exception:  # an uncaught error: logged with its traceback, never sent
            log.exception("method %s failed on job %s", deliver.routing_key, job.id)
            self.finish(job, "error", {"code": INTERNAL_ERROR,
                                       "message": f"internal error: {method_of(self, deliver)} failed"})
            return
        if result is not LATER:
            self.finish(job, "ok", result)

    def on_cancel(self, channel, deliver, props, body):
        job_id = props.correlation_id
        if not job_id:
            return
        self.cancelled[job_id] = True
        while len(self.cancelled) > MAX_CANCELLED:
            self.cancelled.popitem(last=False)
        job = self.running.pop(job_id, None)
        if job is not None:
            self.connection.remove_timeout(job.timer)
            self.ack(job.deliver.delivery_tag)  # stopped: acked, nothing sent

    # --- replies and acks ----------------------------------------------------------------

    def publish(self, job, status, body):
        props = pika.BasicProperties(
            correlation_id=job.id,
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            headers={STATUS_HEADER: status},  # a str header travels as an AMQP long string
        )
        # The channel is in confirm mode: this returns once the broker confirmed the message.
        self.channel.basic_publish("", job.props.reply_to, json.dumps(body).encode(), props)

    def finish(self, job, status, body):
        """Publishes the reply, then acks the job: a worker that dies in between gets the job
        redelivered, never lost."""
        try:
            self.publish(job, status, body)
        except (TypeError, ValueError) as e:
            log.error("the result of job %s cannot be encoded as JSON: %s", job.id, e)
            self.publish(job, "error", {"code": INTERNAL_ERROR,
                                        "message": "internal error: the result is not JSON"})
        except pika.exceptions.NackError:
            log.warning("reply %s nacked by the broker; requeueing the job", job.id)
            self.nack(job.deliver.delivery_tag)
            return
        self.ack(job.deliver.delivery_tag)

    def ack(self, delivery_tag):
        self.channel.basic_ack(delivery_tag)

    def nack(self, delivery_tag):
        self.channel.basic_nack(delivery_tag, requeue=True)

    # --- waiting jobs --------------------------------------------------------------------

    def wait_then(self, job, seconds, answer):
        """Answers `job` with `answer()` after `seconds`, unless it is cancelled or its
        deadline comes first (then it is acked and nothing is sent)."""
        until_deadline = None if job.deadline is None else max(0.0, job.deadline - time.time())
        if until_deadline is not None and until_deadline < seconds:
            def expire():
                if self.running.pop(job.id, None) is not None:
                    self.ack(job.deliver.delivery_tag)
            job.timer = self.connection.call_later(until_deadline, expire)
        else:
            def done():
                if self.running.pop(job.id, None) is not None:
                    self.finish(job, "ok", answer())
            job.timer = self.connection.call_later(seconds, done)
        self.running[job.id] = job
        return LATER

    def record_run(self, tag):
        self.runs[tag] = self.runs.pop(tag, 0) + 1
        while len(self.runs) > MAX_TAGS:
            self.runs.popitem(last=False)


def method_of(worker, deliver):
    return deliver.routing_key[len(worker.prefix):]


# --- the methods ---------------------------------------------------------------------------


def reverse(job):
    text = job.params.get("text") if isinstance(job.params, dict) else None
    if not isinstance(text, str):
        raise invalid_params("text must be a string")
    return {"reversed": text[::-1], "worker": "pika"}


def whole_number(params, name, limit):
    value = params.get(name) if isinstance(params, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise invalid_params(f"{name} must be a whole number from 0 to {limit}")
    return value


def conformance_methods(worker):
    """The conformance kit's methods (docs/conformance.md), by name."""

    def echo(job):
        return job.params

    def progress(job):
        steps = whole_number(job.params, "steps", MAX_STEPS)
        for step in range(1, steps + 1):
            job.progress({"step": step})
        return {"steps": steps}

    def sleep(job):
        ms = whole_number(job.params, "ms", MAX_SLEEP_MS)
        tag = job.params.get("tag")
        if tag is not None and not isinstance(tag, str):
            raise invalid_params("tag must be a string")
        if tag is not None:
            worker.record_run(tag)
        job.progress({"started": True})
        return worker.wait_then(job, ms / 1000.0, lambda: {"slept": ms})

    def runs(job):
        tag = job.params.get("tag") if isinstance(job.params, dict) else None
        if not isinstance(tag, str):
            raise invalid_params("tag must be a string")
        return {"runs": worker.runs.get(tag, 0)}

    def fail(job):
        params = job.params if isinstance(job.params, dict) else {}
        code, message = params.get("code"), params.get("message")
        if isinstance(code, bool) or not isinstance(code, int) or not isinstance(message, str):
            raise invalid_params("expected {code: integer, message: string, data?: any}")
        raise JobError(code, message, params.get("data"), has_data="data" in params)

    def caller(job):
        return {"caller": job.caller}

    def raise_(job):
        raise RuntimeError("conf.raise: the uncaught error the conformance kit asks for")

    return {"conf.echo": echo, "conf.progress": progress, "conf.sleep": sleep,
            "conf.runs": runs, "conf.fail": fail, "conf.caller": caller, "conf.raise": raise_}


def main(worker_class=Worker):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp", default=os.environ.get("WSMQ_AMQP", DEFAULT_AMQP))
    parser.add_argument("--queue", help="serve reverse from this queue, <prefix>reverse")
    parser.add_argument("--conformance", action="store_true",
                        help="serve the conformance kit's methods conf.* under --queue-prefix")
    parser.add_argument("--queue-prefix", default=os.environ.get("WSMQ_QUEUE_PREFIX", ""))
    parser.add_argument("--concurrency", type=int,
                        default=int(os.environ.get("WSMQ_CONCURRENCY", DEFAULT_CONCURRENCY)),
                        help="jobs held at once (the prefetch)")
    args = parser.parse_args()
    if not args.queue and not args.conformance:
        parser.error("give --queue, --conformance or both")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pika").setLevel(logging.WARNING)  # its INFO is a line per socket step

    # The handlers only raise a flag: pika's BlockingConnection must not be re-entered from a
    # signal handler, so the loop below checks the flag between short waits.
    stop = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: stop.append(signum))

    try:
        connection = pika.BlockingConnection(pika.URLParameters(args.amqp))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_qos(prefetch_count=args.concurrency)
        worker = worker_class(connection, channel, args.queue_prefix)
        consumers = [worker.listen_for_cancellations()]
        if args.queue:
            consumers.append(worker.serve(args.queue, reverse))
        if args.conformance:
            for method, handler in conformance_methods(worker).items():
                consumers.append(worker.serve(args.queue_prefix + method, handler))
        print("pika worker ready", flush=True)
        while not stop:
            connection.process_data_events(time_limit=POLL_SECONDS)
        log.info("signal %s: stopping", signal.Signals(stop[0]).name)
        for consumer in consumers:
            channel.basic_cancel(consumer)
        drain_until = time.time() + DRAIN_SECONDS
        while worker.running and time.time() < drain_until:
            connection.process_data_events(time_limit=POLL_SECONDS)
        # Jobs delivered but not answered go back to the queue when the connection closes.
        connection.close()
    except pika.exceptions.AMQPError as e:
        log.error("broker connection failed: %r", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
