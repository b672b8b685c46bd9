"""The worker's logic that needs no broker: registration, how a job is answered, and what a pool
thread hands the I/O thread for cancelled, expired and drained jobs."""

import asyncio
import json
import os
import threading
import time
import unittest

from wsmq_worker import Job, JobError, Worker
from wsmq_worker.__main__ import load
from wsmq_worker.worker import _Running, _Session, _Waiter


def make_worker(**kwargs):
    return Worker("amqp://guest:guest@127.0.0.1:5672/%2f", **kwargs)


# What `python -m wsmq_worker test_worker:MODULE_WORKER` would run.
MODULE_WORKER = make_worker()
MODULE_WORKER.method("echo")(lambda params, job: params)


class RegistrationTest(unittest.TestCase):
    def test_the_decorator_registers_and_returns_the_handler(self):
        worker = make_worker(queue_prefix="p.")

        @worker.method("thumbnail")
        def thumbnail(params, job):
            return 1

        self.assertEqual(thumbnail(None, None), 1)
        self.assertEqual(worker.methods, ["thumbnail"])
        self.assertEqual(worker.queue_names(), ["p.thumbnail"])

    def test_reserved_and_duplicate_methods_are_refused(self):
        worker = make_worker()
        with self.assertRaises(ValueError):
            worker.method("wsmq.cancel")
        worker.method("a")(lambda p, j: p)
        with self.assertRaisesRegex(ValueError, "already registered"):
            worker.method("a")

    def test_bad_settings_are_refused_at_construction(self):
        for kwargs in [
            {"concurrency": 0},
            {"concurrency": True},
            {"queue_prefix": "amq.x"},
            {"queue_type": "quorum"},  # no delivery limit
        ]:
            with self.assertRaises(ValueError, msg=kwargs):
                make_worker(**kwargs)
        with self.assertRaisesRegex(ValueError, "not amqp"):
            Worker("localhost:5672")

    def test_run_without_methods_is_refused(self):
        with self.assertRaisesRegex(RuntimeError, "no method"):
            make_worker().run()


def answer(worker, method, body, job=None):
    job = job or Job("job-1", method)
    status, encoded = worker._answer(job, body)
    return status, json.loads(encoded)


class AnswerTest(unittest.TestCase):
    def setUp(self):
        self.worker = make_worker()
        w = self.worker
        w.method("echo")(lambda params, job: params)
        w.method("fail")(lambda params, job: (_ for _ in ()).throw(JobError(4001, "bad image", {"why": "x"})))
        w.method("bare_fail")(lambda params, job: (_ for _ in ()).throw(JobError(4002, "no data")))
        w.method("raise")(lambda params, job: {}["secret-key"])
        w.method("set")(lambda params, job: {1, 2})
        w.method("bad_data")(lambda params, job: (_ for _ in ()).throw(JobError(1, "m", object())))

        @w.method("async")
        async def async_handler(params, job):
            await asyncio.sleep(0)
            return {"async": params}

    def test_a_result_is_sent_as_ok(self):
        self.assertEqual(answer(self.worker, "echo", b'{"a": 1}'), ("ok", {"a": 1}))

    def test_job_error_passes_through_with_code_message_and_data(self):
        self.assertEqual(
            answer(self.worker, "fail", b"{}"),
            ("error", {"code": 4001, "message": "bad image", "data": {"why": "x"}}),
        )
        self.assertEqual(answer(self.worker, "bare_fail", b"{}"), ("error", {"code": 4002, "message": "no data"}))

    def test_an_exception_is_answered_32603_and_its_traceback_is_logged_not_sent(self):
        with self.assertLogs("wsmq_worker", "ERROR") as logs:
            status, error = answer(self.worker, "raise", b"{}")
        self.assertEqual((status, error), ("error", {"code": -32603, "message": "internal error: method raise failed"}))
        self.assertIn("Traceback", logs.output[0])
        self.assertIn("secret-key", logs.output[0])

    def test_params_that_are_not_json_are_answered_32700(self):
        status, error = answer(self.worker, "echo", b"{nope")
        self.assertEqual(status, "error")
        self.assertEqual(error["code"], -32700)
        self.assertEqual(error["message"], "params are not valid JSON")

    def test_a_result_that_is_not_json_is_answered_32603(self):
        with self.assertLogs("wsmq_worker", "WARNING"):
            status, error = answer(self.worker, "set", b"{}")
        self.assertEqual(status, "error")
        self.assertEqual(error["code"], -32603)
        self.assertIn("could not be encoded as JSON", error["message"])

    def test_a_job_error_whose_data_is_not_json_is_answered_32603(self):
        with self.assertLogs("wsmq_worker", "WARNING"):
            status, error = answer(self.worker, "bad_data", b"{}")
        self.assertEqual((status, error["code"]), ("error", -32603))

    def test_async_handlers_run_to_their_result(self):
        self.assertEqual(answer(self.worker, "async", b"[1]"), ("ok", {"async": [1]}))


class ExecuteTest(unittest.TestCase):
    """What a pool thread hands the I/O thread, recorded instead of sent."""

    def setUp(self):
        self.worker = make_worker()
        self.ran = []
        self.handed = []

        @self.worker.method("work")
        def work(params, job):
            self.ran.append(job.id)
            if params == "cancel-me":
                job.cancelled.set()
            return "done"

        self.worker._call_io = lambda fn, *args: self.handed.append((fn.__name__, args)) or True

    def execute(self, body=b"1", deadline=None, cancelled=False):
        job = Job("j", "work", deadline=deadline)
        if cancelled:
            job.cancelled.set()
        record = _Running(job, _Session(1, 0), 1, "reply", body)
        self.worker._execute(record)
        ((name, args),) = self.handed
        return name, args[1:]

    def test_a_finished_job_hands_over_its_reply(self):
        self.assertEqual(self.execute(), ("_finish", (("ok", b'"done"'),)))
        self.assertEqual(self.ran, ["j"])

    def test_a_job_cancelled_before_it_starts_is_not_run_and_gets_no_reply(self):
        self.assertEqual(self.execute(cancelled=True), ("_finish", (None,)))
        self.assertEqual(self.ran, [])

    def test_a_job_past_its_deadline_is_not_run(self):
        self.assertEqual(self.execute(deadline=time.time() - 1), ("_finish", (None,)))
        self.assertEqual(self.ran, [])

    def test_a_job_cancelled_while_running_sends_nothing(self):
        self.assertEqual(self.execute(body=b'"cancel-me"'), ("_finish", (None,)))
        self.assertEqual(self.ran, ["j"])

    def test_a_job_waiting_when_the_drain_begins_is_requeued_not_run(self):
        self.worker._draining.set()
        self.assertEqual(self.execute(), ("_requeue", ()))
        self.assertEqual(self.ran, [])


class FakeChannel:
    """Records what the I/O thread does on its channel."""

    is_open = True

    def __init__(self):
        self.calls = []

    def basic_publish(self, exchange, routing_key, body, properties):
        self.calls.append(("publish", routing_key, properties.headers["wsmq-status"], body))

    def basic_ack(self, tag):
        self.calls.append(("ack", tag))

    def basic_nack(self, tag, requeue):
        self.calls.append(("nack", tag, requeue))


class Confirm:
    """A Basic.Ack / Basic.Nack frame as pika hands it to the confirm callback."""

    def __init__(self, acked, tag, multiple=False):
        import pika.spec

        kind = pika.spec.Basic.Ack if acked else pika.spec.Basic.Nack
        self.method = kind(delivery_tag=tag, multiple=multiple)


class IoThreadTest(unittest.TestCase):
    """The I/O thread's bookkeeping, driven by hand (no broker, no loop running)."""

    def setUp(self):
        self.worker = make_worker()
        self.worker.method("m")(lambda params, job: params)
        self.channel = FakeChannel()
        self.session = _Session(1, 0)
        self.session.channel = self.channel
        self.session.ready = True
        self.worker._session = self.session

    def delivered(self, tag, job_id=None):
        record = _Running(Job(job_id or f"job-{tag}", "m"), self.session, tag, "reply-q", b"{}")
        self.session.running[tag] = record
        return record

    def test_a_job_is_acked_only_after_its_reply_is_confirmed(self):
        record = self.delivered(7)
        self.worker._finish(record, ("ok", b"42"))
        self.assertEqual(self.channel.calls, [("publish", "reply-q", "ok", b"42")])
        self.worker._on_confirm(self.session, Confirm(True, 1))
        self.assertEqual(self.channel.calls[1:], [("ack", 7)])
        self.assertEqual(self.session.running, {})

    def test_a_nacked_reply_requeues_its_job(self):
        record = self.delivered(7)
        self.worker._finish(record, ("ok", b"42"))
        with self.assertLogs("wsmq_worker", "WARNING"):
            self.worker._on_confirm(self.session, Confirm(False, 1))
        self.assertEqual(self.channel.calls[1:], [("nack", 7, True)])

    def test_a_multiple_confirm_settles_every_reply_up_to_its_tag(self):
        for tag in (11, 12, 13):
            self.worker._finish(self.delivered(tag), ("ok", b"1"))
        self.worker._on_confirm(self.session, Confirm(True, 2, multiple=True))
        self.assertEqual(self.channel.calls[3:], [("ack", 11), ("ack", 12)])
        self.worker._on_confirm(self.session, Confirm(True, 3))
        self.assertEqual(self.channel.calls[5:], [("ack", 13)])

    def test_progress_and_reply_are_published_in_the_order_handed_over(self):
        record = self.delivered(3)
        waiter = _Waiter()
        self.worker._publish_progress(record, b'{"step":1}', waiter)
        self.worker._finish(record, ("ok", b"1"))
        self.assertEqual(
            [c[2] for c in self.channel.calls],
            ["progress", "ok"],
        )
        self.worker._on_confirm(self.session, Confirm(True, 1))
        self.assertTrue(waiter.wait(threading.Event()))

    def test_a_cancelled_job_is_acked_without_a_reply(self):
        self.worker._finish(self.delivered(5), None)
        self.assertEqual(self.channel.calls, [("ack", 5)])

    def test_a_job_of_a_lost_session_is_neither_answered_nor_acked(self):
        record = self.delivered(5)
        self.worker._session = _Session(2, 0)  # reconnected: tag 5 died with the old channel
        self.worker._finish(record, ("ok", b"1"))
        self.assertEqual(self.channel.calls, [])
        self.assertTrue(record.done)

    def deliver(self, tag, headers=None, reply_to="reply-q", correlation_id="job-x"):
        class Deliver:
            delivery_tag = tag
            redelivered = False

        class Props:
            pass

        props = Props()
        props.reply_to, props.correlation_id, props.headers = reply_to, correlation_id, headers
        self.worker._on_job(self.session, "m", self.channel, Deliver(), props, b"{}")

    def test_a_job_past_its_deadline_is_acked_and_never_queued(self):
        past_ms = int((time.time() - 1) * 1000)
        self.deliver(4, headers={"wsmq-deadline": past_ms})
        self.assertEqual(self.channel.calls, [("ack", 4)])
        self.assertTrue(self.worker._jobs.empty())

    def test_a_job_cancelled_before_it_arrived_is_acked_and_never_queued(self):
        self.worker._cancelled.add("job-x")
        self.deliver(4)
        self.assertEqual(self.channel.calls, [("ack", 4)])
        self.assertTrue(self.worker._jobs.empty())

    def test_a_job_without_reply_to_is_acked_unanswered(self):
        with self.assertLogs("wsmq_worker", "WARNING"):
            self.deliver(4, reply_to=None)
        self.assertEqual(self.channel.calls, [("ack", 4)])

    def test_a_live_job_is_queued_for_the_pool_with_its_caller_and_deadline(self):
        future_ms = int((time.time() + 60) * 1000)
        self.worker._ioloop.call_later = lambda delay, fn: None  # no loop runs here
        self.deliver(4, headers={"wsmq-deadline": future_ms, "wsmq-caller": b"alice"})
        record = self.worker._jobs.get_nowait()
        self.assertEqual(self.channel.calls, [])
        self.assertEqual((record.job.id, record.job.caller), ("job-x", "alice"))
        self.assertEqual(record.job.deadline, future_ms / 1000)

    def test_a_job_delivered_during_the_drain_goes_back_to_the_queue(self):
        self.worker._stopping = True
        self.deliver(4)
        self.assertEqual(self.channel.calls, [("nack", 4, True)])

    def test_a_cancellation_sets_the_running_jobs_event_and_is_remembered(self):
        class Props:
            correlation_id = "job-9"
            headers = {"wsmq-reason": "cancelled"}

        record = self.delivered(9)
        with self.assertLogs("wsmq_worker", "INFO"):
            self.worker._on_cancel(self.session, None, None, Props(), b"")
        self.assertTrue(record.job.cancelled.is_set())
        self.assertIn("job-9", self.worker._cancelled)


class JobTest(unittest.TestCase):
    def test_job_error_object_and_invalid_params(self):
        self.assertEqual(JobError(5, "m").to_object(), {"code": 5, "message": "m"})
        self.assertEqual(JobError(5, "m", None).to_object(), {"code": 5, "message": "m", "data": None})
        self.assertEqual(
            JobError.invalid_params("text must be a string").to_object(),
            {"code": -32602, "message": "invalid params: text must be a string"},
        )
        with self.assertRaises(TypeError):
            JobError("4000", "m")
        with self.assertRaises(TypeError):
            JobError(True, "m")

    def test_progress_of_a_job_without_a_worker_goes_nowhere(self):
        self.assertFalse(Job("j", "m").progress({"step": 1}))

    def test_progress_after_cancellation_is_not_sent(self):
        sent = []
        job = Job("j", "m", report=lambda body: sent.append(body) or True)
        self.assertTrue(job.progress({"step": 1}))
        job.cancelled.set()
        self.assertFalse(job.progress({"step": 2}))
        self.assertEqual(sent, [b'{"step":1}'])

    def test_progress_that_is_not_json_raises(self):
        with self.assertRaises(TypeError):
            Job("j", "m", report=lambda body: True).progress({1, 2})

    def test_time_left(self):
        self.assertIsNone(Job("j", "m").time_left())
        self.assertEqual(Job("j", "m", deadline=time.time() - 5).time_left(), 0.0)


class CommandLineTest(unittest.TestCase):
    def test_load_finds_the_worker_of_a_module(self):
        self.assertIs(load("test_worker:MODULE_WORKER"), MODULE_WORKER)

    def test_load_imports_a_file_by_its_path(self):
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "demo_worker.py")
        worker = load(f"{path}:worker")
        self.assertIn("conf.sleep", worker.methods)
        self.assertIn("echo", worker.methods)

    def test_load_refuses_what_is_not_a_worker(self):
        for target in ["", "no_such_module_xyz:worker", "json:dumps", "json:nothing", "/no/such/file.py:worker"]:
            with self.assertRaises(ValueError, msg=target):
                load(target)


if __name__ == "__main__":
    unittest.main()
