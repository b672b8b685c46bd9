#!/usr/bin/env python3
"""The pika example worker broken on purpose, to show that the conformance kit can fail.

It serves the same methods as pika_worker.py (same flags), but it acks each job as soon as it
arrives, before anything is done, so a job whose worker dies is lost instead of redelivered; and
it ignores deadlines, so it runs a job whose caller was already answered -32001. The conformance
kit must report FAIL redelivery and FAIL deadline-skip against it
(tests/tests/e2e/conformance.rs).

    python3 tests/workers/nonconforming_worker.py --conformance
"""

import sys

import pika_worker


class AcksEarlyIgnoresDeadlines(pika_worker.Worker):
    def deadline_passed(self, job):
        return False

    def wait_then(self, job, seconds, answer):
        job.deadline = None  # and no stop at the deadline either
        return super().wait_then(job, seconds, answer)

    def on_job(self, channel, deliver, props, body):
        channel.basic_ack(deliver.delivery_tag)  # the broker forgets the job here
        super().on_job(channel, deliver, props, body)

    def ack(self, delivery_tag):
        pass  # acked on arrival

    def nack(self, delivery_tag):
        pass  # too late: acked on arrival


if __name__ == "__main__":
    sys.exit(pika_worker.main(AcksEarlyIgnoresDeadlines))
