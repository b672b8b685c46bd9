#!/usr/bin/env python3
"""A wsmq worker in Python with pika: proof that any language can serve a method.

It keeps to the AMQP contract documented in worker/src/lib.rs:

* it declares its queue durable, with no arguments (the bridge never declares it);
* a job's body is the call's JSON params; its reply goes to the default exchange with
  routing key = the job's reply_to, the job's correlation_id, content_type application/json,
  delivery_mode 2, and header wsmq-status = "ok" (body: the result) or "error" (body: a
  JSON-RPC error object);
* a job is acked only after the broker confirmed its reply; a nacked reply requeues the job.

It serves "reverse": {"text": "abc"} -> {"reversed": "cba", "worker": "pika"}.

    python3 tests/workers/pika_worker.py --amqp URL --queue QUEUE_NAME

It prints "pika worker ready" on stdout once consuming, and exits with status 0 on SIGTERM or
SIGINT. On a lost connection it exits with status 1 and leaves restarting to its supervisor.
"""

import argparse
import json
import logging
import os
import signal
import sys

import pika
import pika.exceptions

DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/%2f"
PREFETCH = 8
# How long one wait for broker traffic may last: the latency of noticing a stop request.
POLL_SECONDS = 0.2

log = logging.getLogger("pika_worker")


def reverse(params):
    """The method itself: returns (status, body) for the reply."""
    text = params.get("text") if isinstance(params, dict) else None
    if not isinstance(text, str):
        return "error", {"code": -32602, "message": "invalid params: text must be a string"}
    return "ok", {"reversed": text[::-1], "worker": "pika"}


def reject_constant(name):
    # Python's json accepts NaN and Infinity; JSON does not.
    raise ValueError(f"{name} is not JSON")


def answer(body):
    """The reply (status, body) for a job body."""
    try:
        params = json.loads(body, parse_constant=reject_constant)
    except (ValueError, UnicodeDecodeError) as e:
        return "error", {"code": -32700, "message": "params are not valid JSON", "data": str(e)}
    return reverse(params)


def on_job(channel, deliver, props, body):
    if not props.reply_to or not props.correlation_id:
        # Nothing can answer it, and a requeue would bring it straight back.
        log.warning("job without reply_to or correlation_id; acking it unanswered")
        channel.basic_ack(deliver.delivery_tag)
        return
    status, reply = answer(body)
    reply_props = pika.BasicProperties(
        correlation_id=props.correlation_id,
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        headers={"wsmq-status": status},  # a str header travels as an AMQP long string
    )
    try:
        # The channel is in confirm mode: this returns once the broker confirmed the reply.
        channel.basic_publish("", props.reply_to, json.dumps(reply).encode(), reply_props)
    except pika.exceptions.NackError:
        log.warning("reply %s nacked by the broker; requeueing the job", props.correlation_id)
        channel.basic_nack(deliver.delivery_tag, requeue=True)
        return
    channel.basic_ack(deliver.delivery_tag)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp", default=os.environ.get("WSMQ_AMQP", DEFAULT_AMQP))
    parser.add_argument("--queue", required=True, help="the queue to serve, <prefix>reverse")
    args = parser.parse_args()
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
        # The same arguments the Rust SDK declares, so either kind of worker can serve a queue
        # (RabbitMQ refuses a redeclaration with other arguments).
        channel.queue_declare(queue=args.queue, durable=True, arguments={"x-max-priority": 9})
        channel.basic_qos(prefetch_count=PREFETCH)
        consumer_tag = channel.basic_consume(args.queue, on_job, auto_ack=False)
        print("pika worker ready", flush=True)
        while not stop:
            connection.process_data_events(time_limit=POLL_SECONDS)
        log.info("signal %s: stopping", signal.Signals(stop[0]).name)
        # Jobs delivered but not yet handled go back to the queue when the connection closes.
        channel.basic_cancel(consumer_tag)
        connection.close()
    except pika.exceptions.AMQPError as e:
        log.error("broker connection failed: %r", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
