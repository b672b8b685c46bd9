"""The worker: one I/O thread owning the broker connection, a pool of threads running handlers.

pika's connections are not thread-safe, so exactly one thread (the I/O thread, running a pika
``SelectConnection`` on its own ``IOLoop``) touches the connection: it declares the queues,
receives jobs and cancellations, publishes replies and progress, acks, and reconnects. Handlers
run on ``concurrency`` pool threads (blocking code is the normal case) and reach the I/O thread
only through ``IOLoop.add_callback_threadsafe``, whose queue is first in, first out: a job's
progress and its reply are published in the order its thread handed them over, on one channel,
so RabbitMQ keeps that order.

The I/O thread alone owns the table of running jobs; a pool thread owns nothing but the job it
runs. A job is acked only once the broker has confirmed its reply (publisher confirms); a
nacked reply requeues the job; a job of a lost connection is not acked at all (its delivery tag
died with the connection, and RabbitMQ redelivers it).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import queue
import signal
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import pika
import pika.exceptions
import pika.spec
from pika.adapters.select_connection import IOLoop

from . import contract
from .job import Job, JobError, ProgressError

log = logging.getLogger("wsmq_worker")

# Bound on setting a session up once the connection is open (channel, exchanges, queues,
# consumers): a broker that stops answering must not hold the worker forever. The TCP and AMQP
# handshakes are bounded by pika's own socket and stack timeouts.
SETUP_TIMEOUT = 30.0
# Default for ``shutdown_grace``: as the Rust SDK's DEFAULT_SHUTDOWN_GRACE.
DEFAULT_SHUTDOWN_GRACE = 10.0
DEFAULT_CONCURRENCY = 4
# How often a thread waiting for the I/O thread checks that it still runs.
_IO_ALIVE_POLL = 0.5

Handler = Callable[[Any, Job], Any]


class _Session:
    """One broker connection and what was opened on it; owned by the I/O thread."""

    def __init__(self, number: int, url_index: int):
        self.number = number
        self.url_index = url_index
        self.connection: Optional[pika.SelectConnection] = None
        self.channel = None
        self.ready = False
        self.closing = False
        self.cancel_queue = ""
        self.consumer_tags: List[str] = []
        # Delivery tag -> the job it delivered, until it is acked, requeued or abandoned.
        self.running: Dict[int, "_Running"] = {}
        # Publish sequence number -> what to call with its confirm (True: ack, False: nack,
        # None: the session was lost first). Bounded by the publishes in flight: one reply per
        # running job, and each job's thread waits for its progress confirm before going on.
        self.confirms: Dict[int, Callable[[Optional[bool]], None]] = {}
        self.publish_seq = 0
        self.setup_timer = None


class _Running:
    """A delivered job: what the I/O thread needs to answer and ack it."""

    __slots__ = ("job", "session", "tag", "reply_to", "body", "timer", "done")

    def __init__(self, job: Job, session: _Session, tag: int, reply_to: str, body: bytes):
        self.job = job
        self.session = session
        self.tag = tag
        self.reply_to = reply_to
        self.body = body
        self.timer = None
        # Set by the I/O thread once the job is acked, requeued or abandoned.
        self.done = False


class _Waiter:
    """A pool thread waiting for the I/O thread (a progress confirm)."""

    def __init__(self):
        self._event = threading.Event()
        self._outcome: Optional[bool] = None

    def resolve(self, acked: Optional[bool]) -> None:
        self._outcome = acked
        self._event.set()

    def wait(self, io_done: threading.Event) -> Optional[bool]:
        while not self._event.wait(_IO_ALIVE_POLL):
            if io_done.is_set():
                return None
        return self._outcome


class Worker:
    """Serves methods from their wsmq queues. See the package docs for an example.

    ``amqp``: one broker URL, a comma-separated string of them, or a list; None reads
    ``WSMQ_AMQP`` (also comma-separated), else the local broker. The worker connects to the
    first that answers, in order; on losing it, it tries the next.

    ``concurrency``: jobs run at once (pool threads), and each method queue's prefetch.
    ``queue_prefix``: the bridge's ``--queue-prefix``. ``queue_type``: ``"classic"`` (declared
    with ``x-max-priority`` = ``max_priority``; None or 0 declares no arguments) or ``"quorum"``
    (with ``delivery_limit``, dead-lettering to ``<prefix>wsmq.dead``), exactly as the Rust SDK
    declares them. ``shutdown_grace``: seconds a drain waits for running jobs before leaving
    them to the broker's requeue. ``max_reply_bytes``: a larger result is answered -32603.
    ``connection_name``: what the broker shows for the connection (default
    ``wsmq-worker (python) pid <pid>``).
    """

    def __init__(
        self,
        amqp: Union[str, Sequence[str], None] = None,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        queue_prefix: str = "",
        queue_type: str = contract.CLASSIC,
        delivery_limit: Optional[int] = None,
        max_priority: Optional[int] = contract.DEFAULT_MAX_PRIORITY,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
        max_reply_bytes: int = contract.DEFAULT_MAX_REPLY_BYTES,
        connection_name: Optional[str] = None,
    ):
        self._urls = contract.parse_urls(amqp, os.environ)
        # As the Rust SDK's, so an operator can tell the broker's connections apart.
        connection_name = connection_name or f"wsmq-worker (python) pid {os.getpid()}"
        self._parameters = [self._url_parameters(url, connection_name) for url in self._urls]
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or not 1 <= concurrency <= 65535:
            raise ValueError(f"concurrency is 1..65535, not {concurrency!r}")
        if not isinstance(queue_prefix, str):
            raise ValueError(f"queue_prefix is a string, not {queue_prefix!r}")
        if queue_prefix.lower().startswith(contract.RESERVED_PREFIXES):
            raise ValueError("queue_prefix must not start with amq. or wsmq.")
        self.concurrency = concurrency
        self.queue_prefix = queue_prefix
        self.queue_type = queue_type
        self._queue_arguments = contract.queue_arguments(
            queue_prefix,
            queue_type,
            max_priority if queue_type == contract.CLASSIC else None,
            delivery_limit,
        )
        self._shutdown_grace = float(shutdown_grace)
        self._max_reply_bytes = max_reply_bytes
        self._methods: Dict[str, Handler] = {}
        # Set while every method queue is consumed (for tests and health checks).
        self.ready = threading.Event()

        self._ioloop = IOLoop()
        # Jobs for the pool threads. Unbounded in type only: it never holds more than the
        # broker delivers unacked, `concurrency` per method queue (the prefetch).
        self._jobs: "queue.SimpleQueue[Optional[_Running]]" = queue.SimpleQueue()
        self._started = False
        self._start_lock = threading.Lock()
        self._io_done = threading.Event()
        self._fatal: Optional[BaseException] = None
        # Set once a drain begins: pool threads stop starting jobs.
        self._draining = threading.Event()
        # The rest is the I/O thread's alone.
        self._stopping = False
        self._session: Optional[_Session] = None
        self._sessions = 0
        self._round: List[int] = []
        self._backoff = contract.Backoff()
        self._reconnect_timer = None
        self._grace_timer = None
        self._cancelled = contract.RecentlyCancelled()

    @staticmethod
    def _url_parameters(url: str, connection_name: str) -> pika.URLParameters:
        try:
            parameters = pika.URLParameters(url)
        except Exception as e:  # pika raises several types for a malformed URL
            raise ValueError(f"broker URL {contract.redact_url(url)!r} is invalid: {e}") from None
        parameters.client_properties = {"connection_name": connection_name}
        return parameters

    # ---- registration -------------------------------------------------------------------

    def method(self, name: str) -> Callable[[Handler], Handler]:
        """Decorator: serve ``name`` with ``handler(params, job)``.

        The handler returns the result (any JSON value), raises ``JobError`` for an error
        answer, or returns anything once ``job.cancelled`` is set (nothing is sent then). Any
        other exception is logged with its traceback and answered -32603 ``internal error:
        method <name> failed``. ``async def`` handlers run on their pool thread's own event loop.
        """
        contract.check_method_name(self.queue_prefix, name)
        if name in self._methods:
            raise ValueError(f"method {name!r} is already registered")
        if self._started:
            raise RuntimeError("methods are registered before run()")

        def register(handler: Handler) -> Handler:
            if not callable(handler):
                raise TypeError(f"the handler of {name!r} is not callable")
            self._methods[name] = handler
            return handler

        return register

    @property
    def methods(self) -> List[str]:
        return list(self._methods)

    def queue_names(self) -> List[str]:
        return [contract.queue_name(self.queue_prefix, m) for m in self._methods]

    # ---- life -----------------------------------------------------------------------------

    def run(self) -> None:
        """Serves until ``stop()``, SIGTERM or SIGINT, then drains: stops taking jobs, lets the
        running ones finish (up to ``shutdown_grace``), closes the connection and returns.

        Broker outages are logged and retried for ever with capped, jittered backoff; signal
        handlers are installed only when called from the main thread.
        """
        if not self._methods:
            raise RuntimeError("no method is registered: use @worker.method(name)")
        with self._start_lock:
            if self._started:
                raise RuntimeError("a worker runs once")
            self._started = True
        previous = self._install_signal_handlers()
        for number in range(self.concurrency):
            threading.Thread(target=self._pool_main, name=f"wsmq-job-{number}", daemon=True).start()
        io = threading.Thread(target=self._io_main, name="wsmq-io", daemon=True)
        io.start()
        try:
            # Short joins: the main thread runs the signal handlers between them.
            while io.is_alive():
                io.join(0.2)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for _ in range(self.concurrency):
                self._jobs.put(None)
        if self._fatal is not None:
            raise RuntimeError("the worker's I/O thread failed") from self._fatal

    def stop(self) -> None:
        """Asks the worker to drain and return from ``run()``; callable from any thread or a
        signal handler. Further calls change nothing: ``shutdown_grace`` bounds the drain."""
        self._call_io(self._begin_drain)

    def _install_signal_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_signal(signum, _frame):
            log.info("%s: draining (no new jobs; running jobs finish)", signal.Signals(signum).name)
            self.stop()

        return {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}

    def _call_io(self, fn: Callable, *args) -> bool:
        """Runs ``fn(*args)`` on the I/O thread; False when the worker has stopped."""
        if self._io_done.is_set():
            return False
        try:
            self._ioloop.add_callback_threadsafe(functools.partial(fn, *args))
            return True
        except Exception:  # the loop is closed: the worker has stopped
            return False

    def _io_main(self) -> None:
        try:
            self._ioloop.add_callback_threadsafe(functools.partial(self._start_round, 0))
            self._ioloop.start()
        except BaseException as e:  # noqa: BLE001 - reported by run()
            log.exception("the worker's I/O loop failed")
            self._fatal = e
        finally:
            self.ready.clear()
            self._io_done.set()

    # ---- connecting (I/O thread) ------------------------------------------------------------

    def _start_round(self, first: int) -> None:
        """Tries every URL once, starting with ``first``, until one answers."""
        self._reconnect_timer = None
        count = len(self._urls)
        self._round = [(first + i) % count for i in range(count)]
        self._connect_next()

    def _connect_next(self) -> None:
        if self._stopping:
            self._finish_stop()
            return
        index = self._round.pop(0)
        self._sessions += 1
        session = _Session(self._sessions, index)
        self._session = session
        log.debug("connecting to %s", contract.redact_url(self._urls[index]))
        try:
            session.connection = pika.SelectConnection(
                self._parameters[index],
                on_open_callback=functools.partial(self._on_open, session),
                on_open_error_callback=functools.partial(self._on_open_error, session),
                on_close_callback=functools.partial(self._on_closed, session),
                custom_ioloop=self._ioloop,
            )
        except Exception as e:
            self._on_open_error(session, None, e)

    def _on_open_error(self, session: _Session, _connection, error) -> None:
        if session is not self._session:
            return
        self._session = None
        log.warning("cannot connect to the broker at %s: %r", self._url(session), error)
        self._after_failure(session)

    def _after_failure(self, session: _Session) -> None:
        """After a failed or lost session: the next URL of this round at once, else a backoff
        and a new round (from the URL after a lost one, from the first after failures)."""
        if self._stopping:
            self._finish_stop()
            return
        if session.ready:
            self._backoff.reset()
            self._round = []
            first = (session.url_index + 1) % len(self._urls)
        elif self._round:
            self._connect_next()
            return
        else:
            first = 0
        delay = self._backoff.next_delay()
        log.info("reconnecting in %.2f s", delay)
        self._reconnect_timer = self._ioloop.call_later(delay, functools.partial(self._start_round, first))

    def _url(self, session: _Session) -> str:
        return contract.redact_url(self._urls[session.url_index])

    def _on_open(self, session: _Session, connection) -> None:
        if session is not self._session or session.closing or self._stopping:
            # Asked to stop (or timed out) while the handshake ran.
            self._close_session(session, "worker stopping")
            return
        session.setup_timer = self._ioloop.call_later(SETUP_TIMEOUT, functools.partial(self._setup_timed_out, session))
        connection.channel(on_open_callback=functools.partial(self._on_channel_open, session))

    def _setup_timed_out(self, session: _Session) -> None:
        session.setup_timer = None
        if session is self._session and not session.ready:
            log.warning("setting up on %s took over %s s; reconnecting", self._url(session), SETUP_TIMEOUT)
            self._close_session(session, "set-up timed out")

    def _on_channel_open(self, session: _Session, channel) -> None:
        session.channel = channel
        channel.add_on_close_callback(functools.partial(self._on_channel_closed, session))
        cancel_exchange = contract.cancel_exchange_name(self.queue_prefix)
        steps: List[Callable[[Any, Callable], None]] = [
            lambda _f, done: channel.confirm_delivery(
                ack_nack_callback=functools.partial(self._on_confirm, session), callback=done
            ),
            # Cancellations are heard before any job arrives, so none sent after a job's
            # delivery is missed. Exactly these exchange settings: the bridge declares it too.
            lambda _f, done: channel.exchange_declare(
                cancel_exchange, exchange_type="fanout", durable=True, callback=done
            ),
            # Server-named and gone with the connection: each session hears every cancellation.
            lambda _f, done: channel.queue_declare("", exclusive=True, auto_delete=True, callback=done),
            lambda frame, done: self._bind_cancel_queue(session, frame, cancel_exchange, done),
            # Without acks: a cancellation lost with a connection is harmless (the deadline still
            # stops the job, and the bridge drops its reply).
            lambda _f, done: channel.basic_consume(
                session.cancel_queue,
                functools.partial(self._on_cancel, session),
                auto_ack=True,
                callback=done,
            ),
        ]
        if self.queue_type == contract.QUORUM:
            # Before the queues: a job dead-lettered to a missing exchange is lost silently.
            dead = contract.dead_letter_exchange_name(self.queue_prefix)
            steps.append(
                lambda _f, done: channel.exchange_declare(dead, exchange_type="fanout", durable=True, callback=done)
            )
        for name in self._methods:
            steps.append(functools.partial(self._declare_queue, channel, name))
        # Per consumer (global QoS is refused by quorum queues): each method's consumer may
        # hold `concurrency` unacked jobs.
        steps.append(lambda _f, done: channel.basic_qos(prefetch_count=self.concurrency, callback=done))
        for name in self._methods:
            steps.append(functools.partial(self._consume, session, name))
        self._run_steps(session, steps, 0, None)

    def _run_steps(self, session: _Session, steps, index: int, frame) -> None:
        if session is not self._session or session.closing:
            return
        if index == len(steps):
            self._on_ready(session)
            return
        steps[index](frame, functools.partial(self._run_steps, session, steps, index + 1))

    def _bind_cancel_queue(self, session: _Session, frame, exchange: str, done) -> None:
        session.cancel_queue = frame.method.queue
        session.channel.queue_bind(session.cancel_queue, exchange, routing_key="", callback=done)

    def _declare_queue(self, channel, method: str, _frame, done) -> None:
        # Exactly these options and arguments: the contract fixes the queue's shape, and the
        # broker refuses a redeclaration that differs (the channel then closes with the reason).
        queue_name = contract.queue_name(self.queue_prefix, method)
        channel.queue_declare(queue_name, durable=True, arguments=dict(self._queue_arguments), callback=done)

    def _consume(self, session: _Session, method: str, _frame, done) -> None:
        queue_name = contract.queue_name(self.queue_prefix, method)
        tag = session.channel.basic_consume(
            queue_name, functools.partial(self._on_job, session, method), auto_ack=False, callback=done
        )
        session.consumer_tags.append(tag)

    def _on_ready(self, session: _Session) -> None:
        session.ready = True
        if session.setup_timer is not None:
            self._ioloop.remove_timeout(session.setup_timer)
            session.setup_timer = None
        self._backoff.reset()
        log.info(
            "wsmq worker ready: consuming %s on %s (concurrency %d, %s queues)",
            ", ".join(self.queue_names()),
            self._url(session),
            self.concurrency,
            self.queue_type,
        )
        self.ready.set()
        if self._stopping:
            self._close_session(session, "worker stopping")

    def _on_channel_closed(self, session: _Session, _channel, reason) -> None:
        if session is not self._session or session.closing:
            return
        if not isinstance(reason, pika.exceptions.ChannelClosed):
            return  # the connection closed under it: _on_closed reports that
        # E.g. PRECONDITION_FAILED: a queue declared with other arguments by another worker.
        log.error("the broker closed the worker's channel on %s: %s", self._url(session), reason)
        self._close_session(session, "channel closed")

    def _close_session(self, session: _Session, reason: str) -> None:
        session.closing = True
        connection = session.connection
        try:
            if connection is not None and not (connection.is_closing or connection.is_closed):
                connection.close(reply_code=200, reply_text=reason)
        except Exception as e:
            log.debug("closing the connection failed: %r", e)

    def _on_closed(self, session: _Session, _connection, reason) -> None:
        if session is not self._session:
            return
        self._session = None
        self.ready.clear()
        if session.setup_timer is not None:
            self._ioloop.remove_timeout(session.setup_timer)
        # The connection's delivery tags died with it: its jobs cannot be acked any more, and
        # RabbitMQ requeues them. Their handlers are told to stop; what they return is dropped.
        for record in list(session.running.values()):
            record.job.cancelled.set()
            self._forget(record)
        for on_confirm in session.confirms.values():
            on_confirm(None)
        session.confirms.clear()
        if self._stopping:
            self._finish_stop()
            return
        if session.ready:
            log.warning("lost the broker connection to %s: %s", self._url(session), reason)
        else:
            log.warning("the broker connection to %s ended during set-up: %s", self._url(session), reason)
        self._after_failure(session)

    # ---- jobs (I/O thread) ----------------------------------------------------------------

    def _on_job(self, session: _Session, method: str, channel, deliver, props, body: bytes) -> None:
        tag = deliver.delivery_tag
        if session is not self._session or session.closing:
            return
        if self._stopping:
            # Delivered before the broker took in our basic.cancel: another worker takes it.
            channel.basic_nack(tag, requeue=True)
            return
        if not props.reply_to or not props.correlation_id:
            # Nothing can answer it, and a requeue would bring it straight back.
            log.warning("a %s job without reply_to or correlation_id; acking it unanswered", method)
            channel.basic_ack(tag)
            return
        job_id = props.correlation_id
        if job_id in self._cancelled:
            log.debug("job %s was cancelled before it arrived; skipping it", job_id)
            channel.basic_ack(tag)
            return
        try:
            deadline = contract.deadline_from_headers(props.headers)
        except ValueError as e:
            log.warning("job %s: %s; running it without a deadline", job_id, e)
            deadline = None
        if contract.deadline_passed(deadline):
            # Its caller was already answered -32001.
            log.debug("job %s arrived past its deadline; skipping it", job_id)
            channel.basic_ack(tag)
            return
        job = Job(
            job_id,
            method,
            caller=contract.caller_from_headers(props.headers),
            deadline=deadline,
            redelivered=bool(deliver.redelivered),
            max_reply_bytes=self._max_reply_bytes,
        )
        record = _Running(job, session, tag, props.reply_to, body)
        job._report = functools.partial(self._report, record)
        session.running[tag] = record
        if deadline is not None:
            record.timer = self._ioloop.call_later(max(0.0, deadline - time.time()), job.cancelled.set)
        self._jobs.put(record)

    def _on_cancel(self, session: _Session, _channel, _deliver, props, _body) -> None:
        job_id = props.correlation_id
        if not job_id:
            return
        self._cancelled.add(job_id)
        reason = contract.header_text((props.headers or {}).get(contract.REASON_HEADER))
        for record in session.running.values():
            if record.job.id == job_id and not record.job.cancelled.is_set():
                log.info("job %s cancelled (%s)", job_id, reason or "no reason given")
                record.job.cancelled.set()

    def _finish(self, record: _Running, reply) -> None:
        """A pool thread is done with ``record``: publish its reply (ack once confirmed), or
        ack it without one."""
        if record.done:
            return
        session = record.session
        if session is not self._session or not self._channel_open(session):
            self._forget(record)
            return
        if reply is None:
            session.channel.basic_ack(record.tag)
            self._forget(record)
            self._check_drained()
            return
        status, body = reply
        self._publish(session, record, status, body, functools.partial(self._reply_confirmed, record))

    def _requeue(self, record: _Running) -> None:
        """A job not started before the drain: back to the queue for another worker."""
        if record.done:
            return
        session = record.session
        if session is self._session and self._channel_open(session):
            session.channel.basic_nack(record.tag, requeue=True)
        self._forget(record)
        self._check_drained()

    def _reply_confirmed(self, record: _Running, acked: Optional[bool]) -> None:
        if acked is None or record.done:
            return  # the session was lost: the broker requeues the job
        session = record.session
        if not self._channel_open(session):
            self._forget(record)
            return
        if acked:
            session.channel.basic_ack(record.tag)
        else:
            log.warning("the broker nacked the reply to job %s; requeueing the job", record.job.id)
            session.channel.basic_nack(record.tag, requeue=True)
        self._forget(record)
        self._check_drained()

    def _publish_progress(self, record: _Running, body: bytes, waiter: _Waiter) -> None:
        session = record.session
        if record.done or record.job._finished or session is not self._session or not self._channel_open(session):
            waiter.resolve(None)
            return
        self._publish(session, record, contract.STATUS_PROGRESS, body, waiter.resolve)

    def _publish(self, session: _Session, record: _Running, status: str, body: bytes, on_confirm) -> None:
        properties = pika.BasicProperties(
            correlation_id=record.job.id,
            content_type=contract.CONTENT_TYPE,
            delivery_mode=contract.DELIVERY_MODE_PERSISTENT,
            headers=contract.reply_headers(status),
        )
        try:
            session.channel.basic_publish("", record.reply_to, body, properties)
        except Exception as e:
            log.warning("publishing to %s failed: %r; reconnecting", record.reply_to, e)
            on_confirm(None)
            self._close_session(session, "publish failed")
            return
        session.publish_seq += 1
        session.confirms[session.publish_seq] = on_confirm

    def _on_confirm(self, session: _Session, frame) -> None:
        if session is not self._session:
            return
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        if method.multiple:
            tags = sorted(t for t in session.confirms if t <= method.delivery_tag)
        else:
            tags = [method.delivery_tag]
        for tag in tags:
            on_confirm = session.confirms.pop(tag, None)
            if on_confirm is not None:
                on_confirm(acked)

    def _forget(self, record: _Running) -> None:
        record.done = True
        record.body = b""
        record.session.running.pop(record.tag, None)
        if record.timer is not None:
            self._ioloop.remove_timeout(record.timer)
            record.timer = None

    @staticmethod
    def _channel_open(session: _Session) -> bool:
        return session.channel is not None and session.channel.is_open and not session.closing

    # ---- draining (I/O thread) --------------------------------------------------------------

    def _begin_drain(self) -> None:
        if self._stopping:
            # A process group signalled twice (a shell, `timeout`, systemd and a wrapper) must
            # not cost the running jobs their answers: the grace period bounds the drain.
            log.info("already draining")
            return
        self._stopping = True
        self._draining.set()
        if self._reconnect_timer is not None:
            self._ioloop.remove_timeout(self._reconnect_timer)
            self._reconnect_timer = None
        session = self._session
        if session is None:
            self._finish_stop()
            return
        if not session.ready:
            self._close_session(session, "worker stopping")
            return
        log.info("draining: %d job(s) running or waiting", len(session.running))
        for tag in session.consumer_tags:
            session.channel.basic_cancel(tag)
        self._grace_timer = self._ioloop.call_later(self._shutdown_grace, self._grace_expired)
        self._check_drained()

    def _check_drained(self) -> None:
        session = self._session
        if self._stopping and session is not None and session.ready and not session.running:
            log.info("drained: every job answered and acked")
            self._close_session(session, "worker stopping")

    def _grace_expired(self) -> None:
        self._grace_timer = None
        log.warning(
            "shutdown grace of %s s expired; leaving the running jobs to the broker's requeue",
            self._shutdown_grace,
        )
        self._abandon()

    def _abandon(self) -> None:
        session = self._session
        if session is None:
            self._finish_stop()
            return
        for record in list(session.running.values()):
            record.job.cancelled.set()
        self._close_session(session, "worker stopping")

    def _finish_stop(self) -> None:
        if self._grace_timer is not None:
            self._ioloop.remove_timeout(self._grace_timer)
            self._grace_timer = None
        self.ready.clear()
        self._ioloop.stop()

    # ---- pool threads -------------------------------------------------------------------

    def _pool_main(self) -> None:
        while True:
            record = self._jobs.get()
            if record is None:
                return
            try:
                self._execute(record)
            except Exception:  # a bug here must not cost the pool a thread
                log.exception("serving job %s failed", record.job.id)

    def _execute(self, record: _Running) -> None:
        job = record.job
        if self._draining.is_set():
            self._call_io(self._requeue, record)
            return
        if job.cancelled.is_set() or contract.deadline_passed(job.deadline):
            self._call_io(self._finish, record, None)
            return
        reply = self._answer(job, record.body)
        job._finished = True
        if job.cancelled.is_set() or contract.deadline_passed(job.deadline):
            # The caller stopped waiting: it has its answer, and a reply would be dropped.
            reply = None
        self._call_io(self._finish, record, reply)

    def _answer(self, job: Job, body: bytes):
        """The (status, body) of the reply to ``job``: its result, its JobError, or the error
        for params that are not JSON, an uncaught exception or a reply that cannot be sent."""
        try:
            params = contract.decode_params(body)
        except contract.ParamsError as e:
            log.info("job %s (%s): params are not JSON: %s", job.id, job.method, e)
            return self._encode(job, contract.STATUS_ERROR, contract.params_error(str(e)))
        handler = self._methods[job.method]
        try:
            if inspect.iscoroutinefunction(handler):
                result = asyncio.run(handler(params, job))
            else:
                result = handler(params, job)
        except JobError as e:
            return self._encode(job, contract.STATUS_ERROR, e.to_object())
        except (Exception, SystemExit):
            # The traceback is for the worker's log only: it may hold paths, data, secrets.
            log.exception("method %s raised on job %s; answering -32603", job.method, job.id)
            return self._encode(job, contract.STATUS_ERROR, contract.method_failed_error(job.method))
        return self._encode(job, contract.STATUS_OK, result)

    def _encode(self, job: Job, status: str, value: Any):
        status, body, problem = contract.encode_reply(status, value, self._max_reply_bytes)
        if problem is not None:
            log.warning("method %s on job %s: %s; answering -32603", job.method, job.id, problem)
        return status, body

    def _report(self, record: _Running, body: bytes) -> bool:
        """``job.progress``: hands the report to the I/O thread and waits for its confirm."""
        waiter = _Waiter()
        if not self._call_io(self._publish_progress, record, body, waiter):
            return False
        outcome = waiter.wait(self._io_done)
        if outcome is False:
            raise ProgressError(f"the broker refused a progress report of job {record.job.id}")
        return bool(outcome)
