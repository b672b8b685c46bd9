"""What a handler sees of its job (``Job``) and how it answers with an error (``JobError``)."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

from . import contract

_ABSENT = contract._ABSENT


class JobError(Exception):
    """Raise it from a handler to answer the call with this JSON-RPC error, as is.

    ``data`` is optional (left out of the error when not given) and must be JSON-encodable; an
    error whose data is not is answered -32603 instead.
    """

    def __init__(self, code: int, message: str, data: Any = _ABSENT):
        if not isinstance(code, int) or isinstance(code, bool):
            raise TypeError(f"a JSON-RPC error code is an integer, not {code!r}")
        if not isinstance(message, str):
            raise TypeError(f"a JSON-RPC error message is a string, not {message!r}")
        super().__init__(code, message)
        self.code = code
        self.message = message
        self._data = data

    @property
    def data(self) -> Any:
        """The error's data, None when it has none."""
        return None if self._data is _ABSENT else self._data

    @property
    def has_data(self) -> bool:
        return self._data is not _ABSENT

    def to_object(self) -> dict:
        """The JSON-RPC error object sent for it."""
        return contract.error_object(self.code, self.message, self._data)

    @classmethod
    def invalid_params(cls, reason: str, data: Any = _ABSENT) -> "JobError":
        """-32602, worded as the Rust SDK words it: ``invalid params: <reason>``."""
        return cls(contract.INVALID_PARAMS, f"invalid params: {reason}", data)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ProgressError(Exception):
    """A progress report the broker refused (nacked)."""


class Job:
    """One call being served: its identity, its deadline, its cancellation, its progress.

    - ``id``: the job id (the message's ``correlation_id``, a UUID);
    - ``method``: the method called;
    - ``caller``: the caller's authenticated identity (``wsmq-caller``), None without one;
    - ``deadline``: seconds since the Unix epoch (compare with ``time.time()``), None without one;
    - ``redelivered``: the broker delivered this job before (a worker died holding it);
    - ``cancelled``: a ``threading.Event``, set when the caller cancelled, the deadline passed,
      the broker connection holding the job was lost, or the drain's grace period ran out.
      Once it is set nothing the handler returns is sent (the caller already has its answer),
      so a handler should check it between steps and return.
    """

    def __init__(
        self,
        job_id: str,
        method: str,
        caller: Optional[str] = None,
        deadline: Optional[float] = None,
        redelivered: bool = False,
        report: Optional[Callable[[bytes], bool]] = None,
        max_reply_bytes: int = contract.DEFAULT_MAX_REPLY_BYTES,
    ):
        self.id = job_id
        self.method = method
        self.caller = caller
        self.deadline = deadline
        self.redelivered = redelivered
        self.cancelled = threading.Event()
        # Hands an encoded report to the worker's I/O thread and waits for its confirm; None
        # for a job built in a unit test, whose progress goes nowhere.
        self._report = report
        self._max_reply_bytes = max_reply_bytes
        self._finished = False

    def time_left(self) -> Optional[float]:
        """Seconds until the deadline (0 once passed), None without a deadline."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.time())

    def progress(self, value: Any) -> bool:
        """Sends ``value`` to the caller as a ``$/progress`` notification and waits until the
        broker has confirmed it. Reports arrive in the order sent, all before the result.

        Returns True once confirmed; False when nothing was sent: the job is cancelled (or its
        connection lost), or it has already been answered. Raises TypeError/ValueError when
        ``value`` cannot be encoded as JSON or is over the reply size limit, and ProgressError
        when the broker refuses it.
        """
        body = contract.encode_json(value)
        if len(body) > self._max_reply_bytes:
            raise ValueError(
                f"progress of {len(body)} bytes exceeds the worker's limit of {self._max_reply_bytes} bytes"
            )
        if self.cancelled.is_set() or self._finished or self._report is None:
            return False
        return self._report(body)

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, method={self.method!r}, caller={self.caller!r})"
