"""The contract's pure functions: every value the SDK puts on the wire, and how it reads jobs."""

import json
import random
import unittest

from wsmq_worker import contract


class QueueArgumentsTest(unittest.TestCase):
    def test_classic_queues_carry_x_max_priority_9_as_the_rust_sdk_declares(self):
        self.assertEqual(contract.queue_arguments("p."), {"x-max-priority": 9})

    def test_classic_queues_without_priority_have_no_arguments(self):
        self.assertEqual(contract.queue_arguments("p.", max_priority=None), {})
        self.assertEqual(contract.queue_arguments("p.", max_priority=0), {})

    def test_quorum_queues_dead_letter_to_the_prefixed_exchange_after_the_delivery_limit(self):
        # The same four arguments as amqp-proto/src/queue.rs pins, and no x-max-priority.
        self.assertEqual(
            contract.queue_arguments("t1.", contract.QUORUM, max_priority=9, delivery_limit=2),
            {
                "x-queue-type": "quorum",
                "x-delivery-limit": 2,
                "x-dead-letter-exchange": "t1.wsmq.dead",
                "x-dead-letter-routing-key": "wsmq.delivery-limit.2",
            },
        )

    def test_bad_queue_settings_are_refused(self):
        with self.assertRaisesRegex(ValueError, "delivery_limit"):
            contract.queue_arguments("p.", contract.QUORUM)
        with self.assertRaisesRegex(ValueError, "quorum queues only"):
            contract.queue_arguments("p.", contract.CLASSIC, delivery_limit=3)
        with self.assertRaisesRegex(ValueError, "queue_type"):
            contract.queue_arguments("p.", "stream")
        with self.assertRaisesRegex(ValueError, "max_priority"):
            contract.queue_arguments("p.", max_priority=256)

    def test_names_follow_the_prefix(self):
        self.assertEqual(contract.queue_name("p.", "echo"), "p.echo")
        self.assertEqual(contract.cancel_exchange_name("p."), "p.wsmq.cancel")
        self.assertEqual(contract.dead_letter_exchange_name(""), "wsmq.dead")

    def test_reserved_method_names_are_refused(self):
        for name in ["wsmq.dead", "WSMQ.x", "amq.gen-1", ""]:
            with self.assertRaises(ValueError, msg=name):
                contract.check_method_name("", name)
        with self.assertRaises(ValueError):
            contract.check_method_name("x" * 250, "method")
        contract.check_method_name("", "wsmq_echo")  # fine


class HeaderTest(unittest.TestCase):
    def test_caller_is_read_from_a_long_string_or_a_byte_array(self):
        self.assertEqual(contract.caller_from_headers({"wsmq-caller": "alice"}), "alice")
        self.assertEqual(contract.caller_from_headers({"wsmq-caller": b"bob"}), "bob")
        self.assertIsNone(contract.caller_from_headers({"wsmq-caller": 7}))
        self.assertIsNone(contract.caller_from_headers(None))
        self.assertIsNone(contract.caller_from_headers({}))

    def test_deadline_is_milliseconds_since_the_epoch_in_any_integer_or_decimal_form(self):
        for value in [1_700_000_000_123, "1700000000123", b" 1700000000123 ", 1_700_000_000_123.9]:
            self.assertEqual(contract.deadline_from_headers({"wsmq-deadline": value}), 1_700_000_000.123, value)
        self.assertIsNone(contract.deadline_from_headers({}))
        self.assertIsNone(contract.deadline_from_headers(None))

    def test_an_unreadable_deadline_is_an_error(self):
        for value in [-1, "soon", True, float("nan"), {"ms": 1}]:
            with self.assertRaises(ValueError, msg=repr(value)):
                contract.deadline_from_headers({"wsmq-deadline": value})

    def test_deadline_passed_at_and_after_it(self):
        self.assertTrue(contract.deadline_passed(10.0, now=10.0))
        self.assertTrue(contract.deadline_passed(10.0, now=11.0))
        self.assertFalse(contract.deadline_passed(10.0, now=9.999))
        self.assertFalse(contract.deadline_passed(None, now=1e12))

    def test_replies_say_their_status_in_wsmq_status(self):
        self.assertEqual(contract.reply_headers("progress"), {"wsmq-status": "progress"})


class BodyTest(unittest.TestCase):
    def test_params_are_one_json_value(self):
        self.assertEqual(contract.decode_params(b'{"n": 3}'), {"n": 3})
        self.assertIsNone(contract.decode_params(b"null"))
        self.assertEqual(contract.decode_params('"h\u00e9"'.encode()), "h\u00e9")

    def test_params_that_are_not_json_are_a_params_error(self):
        for body in [b"{not json", b"", b"1 2", b"NaN", b"[Infinity]", b"\xff\xfe"]:
            with self.assertRaises(contract.ParamsError, msg=body):
                contract.decode_params(body)

    def test_the_params_error_is_32700_with_the_reason_as_data(self):
        self.assertEqual(
            contract.params_error("Expecting value"),
            {"code": -32700, "message": "params are not valid JSON", "data": "Expecting value"},
        )

    def test_a_result_is_compact_utf8_json(self):
        self.assertEqual(
            contract.encode_reply("ok", {"a": ["\u00e9", 1]}), ("ok", '{"a":["\u00e9",1]}'.encode(), None)
        )

    def test_a_result_that_cannot_be_json_becomes_an_internal_error(self):
        circular = []
        circular.append(circular)
        for value in [{1, 2}, object(), float("nan"), circular]:
            status, body, problem = contract.encode_reply("ok", value)
            self.assertEqual(status, "error")
            self.assertIn("could not be encoded as JSON", problem)
            error = json.loads(body)
            self.assertEqual(error["code"], -32603)
            self.assertTrue(error["message"].startswith("internal error: reply could not be encoded as JSON"), error)
            self.assertNotIn("data", error)

    def test_a_reply_over_the_limit_becomes_an_internal_error(self):
        status, body, _problem = contract.encode_reply("ok", "x" * 100, max_bytes=64)
        self.assertEqual(status, "error")
        self.assertEqual(
            json.loads(body),
            {"code": -32603, "message": "internal error: reply of 102 bytes exceeds the worker's limit of 64 bytes"},
        )

    def test_an_uncaught_exception_is_answered_32603_naming_the_method_only(self):
        self.assertEqual(
            contract.method_failed_error("thumbnail"),
            {"code": -32603, "message": "internal error: method thumbnail failed"},
        )

    def test_an_error_object_leaves_out_absent_data_but_keeps_null(self):
        self.assertEqual(contract.error_object(1, "m"), {"code": 1, "message": "m"})
        self.assertEqual(contract.error_object(1, "m", None), {"code": 1, "message": "m", "data": None})


class UrlTest(unittest.TestCase):
    def test_several_urls_in_a_list_or_comma_separated(self):
        a, b = "amqp://u:p@h1:5672/%2f", "amqps://h2/v"
        self.assertEqual(contract.parse_urls(f"{a}, {b},"), [a, b])
        self.assertEqual(contract.parse_urls([a, b]), [a, b])

    def test_none_reads_wsmq_amqp_else_the_local_broker(self):
        self.assertEqual(contract.parse_urls(None, {"WSMQ_AMQP": "amqp://a,amqp://b"}), ["amqp://a", "amqp://b"])
        self.assertEqual(contract.parse_urls(None, {}), [contract.DEFAULT_AMQP])

    def test_a_url_that_is_not_amqp_is_refused_without_its_password(self):
        with self.assertRaises(ValueError) as caught:
            contract.parse_urls("http://u:secret@h/")
        self.assertNotIn("secret", str(caught.exception))
        with self.assertRaises(ValueError):
            contract.parse_urls(" , ")

    def test_redact_url_hides_the_password(self):
        self.assertEqual(contract.redact_url("amqp://u:pw@h:1/%2f"), "amqp://u:***@h:1/%2f")
        self.assertEqual(contract.redact_url("amqp://h/%2f"), "amqp://h/%2f")


class BackoffTest(unittest.TestCase):
    def test_delays_double_from_100_ms_to_a_5_s_cap_with_jitter_in_half_to_full(self):
        backoff = contract.Backoff(rng=random.Random(7))
        ceilings = []
        for _ in range(10):
            ceiling = backoff.ceiling()
            delay = backoff.next_delay()
            self.assertGreaterEqual(delay, ceiling * 0.5)
            self.assertLessEqual(delay, ceiling)
            ceilings.append(ceiling)
        self.assertEqual(ceilings[:7], [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0])
        self.assertEqual(ceilings[-1], 5.0)
        backoff.reset()
        self.assertEqual(backoff.ceiling(), 0.1)


class RecentlyCancelledTest(unittest.TestCase):
    def test_remembers_the_last_ids_up_to_its_capacity(self):
        cancelled = contract.RecentlyCancelled(capacity=3)
        for job_id in "abcd":
            cancelled.add(job_id)
        self.assertEqual(len(cancelled), 3)
        self.assertNotIn("a", cancelled)
        self.assertIn("d", cancelled)


if __name__ == "__main__":
    unittest.main()
