"""wsmq_worker: serve wsmq methods from Python.

    from wsmq_worker import Worker, JobError

    worker = Worker(amqp="amqp://guest:guest@127.0.0.1:5672/%2f", concurrency=4)

    @worker.method("reverse")
    def reverse(params, job):
        if not isinstance(params.get("text"), str):
            raise JobError.invalid_params("text must be a string")
        return {"reversed": params["text"][::-1]}

    worker.run()   # until SIGTERM/SIGINT: stops taking jobs, finishes running ones, returns

The worker contract it keeps is docs/workers.md; the package's README has the whole API.
"""

from .contract import INTERNAL_ERROR, INVALID_PARAMS, PARSE_ERROR
from .job import Job, JobError, ProgressError
from .worker import Worker

__all__ = ["Worker", "Job", "JobError", "ProgressError", "INTERNAL_ERROR", "INVALID_PARAMS", "PARSE_ERROR"]
__version__ = "0.1.0"
