"""The wsmq worker contract (docs/workers.md) as pure functions: names, queue arguments, headers,
reply bodies, the reconnect schedule.

Nothing here does I/O, so every value that reaches the wire is pinned by the unit tests in
clients/python/tests. The owner of the contract is the Rust crate ``wsmq-amqp-proto``
(amqp-proto/src); the names and arguments below are spelled exactly as it spells them, so a
Python worker and a Rust worker can serve one queue (RabbitMQ refuses a redeclaration with other
arguments).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import OrderedDict
from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

# Job headers (amqp-proto/src/headers.rs).
METHOD_HEADER = "wsmq-method"
DEADLINE_HEADER = "wsmq-deadline"
CALLER_HEADER = "wsmq-caller"
# Reply header and its values.
STATUS_HEADER = "wsmq-status"
STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_PROGRESS = "progress"
# Cancellation broadcasts.
REASON_HEADER = "wsmq-reason"
CANCEL_EXCHANGE = "wsmq.cancel"
DEAD_LETTER_EXCHANGE = "wsmq.dead"
DELIVERY_LIMIT_ROUTING_KEY_PREFIX = "wsmq.delivery-limit."
# Queue arguments (amqp-proto/src/queue.rs).
MAX_PRIORITY_ARGUMENT = "x-max-priority"
QUEUE_TYPE_ARGUMENT = "x-queue-type"
QUORUM = "quorum"
CLASSIC = "classic"
DELIVERY_LIMIT_ARGUMENT = "x-delivery-limit"
DEAD_LETTER_EXCHANGE_ARGUMENT = "x-dead-letter-exchange"
DEAD_LETTER_ROUTING_KEY_ARGUMENT = "x-dead-letter-routing-key"
DEFAULT_MAX_PRIORITY = 9
CONTENT_TYPE = "application/json"
DELIVERY_MODE_PERSISTENT = 2
RESERVED_PREFIXES = ("amq.", "wsmq.")
MAX_QUEUE_NAME_LEN = 255

# JSON-RPC codes an SDK answers with (codes/src/lib.rs).
PARSE_ERROR = -32700
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

# Largest reply or progress body sent, as the Rust SDK's DEFAULT_MAX_REPLY_BYTES: far below
# RabbitMQ's message size limit.
DEFAULT_MAX_REPLY_BYTES = 16 * 1024 * 1024
# Reconnect schedule, as every wsmq program's (service/src/backoff.rs): 100 ms doubling to 5 s,
# each delay scaled by a random factor in [0.5, 1.0] so that workers cut off together do not
# come back together.
RECONNECT_INITIAL = 0.1
RECONNECT_MAX = 5.0
# How many cancelled job ids a worker remembers, to skip a job whose cancellation it heard
# before the job was delivered (the Rust SDK's RECENTLY_CANCELLED_CAPACITY).
RECENTLY_CANCELLED_CAPACITY = 4096

DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/%2f"

_ABSENT = object()


def queue_name(prefix: str, method: str) -> str:
    """The queue serving ``method``: the bridge's queue prefix, then the method."""
    return prefix + method


def cancel_exchange_name(prefix: str) -> str:
    return prefix + CANCEL_EXCHANGE


def dead_letter_exchange_name(prefix: str) -> str:
    return prefix + DEAD_LETTER_EXCHANGE


def dead_letter_routing_key(delivery_limit: int) -> str:
    return f"{DELIVERY_LIMIT_ROUTING_KEY_PREFIX}{delivery_limit}"


def check_method_name(prefix: str, method: str) -> None:
    """Raises ValueError for a method no call can reach (docs/workers.md "Reserved names")."""
    if not isinstance(method, str) or not method:
        raise ValueError(f"a method name is a non-empty string, not {method!r}")
    for name in (method, prefix + method):
        if name.lower().startswith(RESERVED_PREFIXES):
            raise ValueError(f"method {method!r}: names starting with amq. or wsmq. are reserved")
    if len((prefix + method).encode()) > MAX_QUEUE_NAME_LEN:
        raise ValueError(f"method {method!r}: its queue name is over {MAX_QUEUE_NAME_LEN} bytes")


def queue_arguments(
    prefix: str,
    queue_type: str = CLASSIC,
    max_priority: Optional[int] = DEFAULT_MAX_PRIORITY,
    delivery_limit: Optional[int] = None,
) -> dict:
    """The arguments every method queue is declared with.

    Classic: ``x-max-priority`` when ``max_priority`` is set (None or 0: no arguments, for a
    queue declared before priorities). Quorum: the queue type, the delivery limit and the
    dead-lettering to ``<prefix>wsmq.dead`` with routing key ``wsmq.delivery-limit.<N>``, and no
    priority (quorum queues have none).
    """
    if queue_type == CLASSIC:
        if delivery_limit is not None:
            raise ValueError("delivery_limit applies to quorum queues only")
        if max_priority is None or max_priority == 0:
            return {}
        if not isinstance(max_priority, int) or not 0 < max_priority <= 255:
            raise ValueError(f"max_priority is 1..255 or None, not {max_priority!r}")
        return {MAX_PRIORITY_ARGUMENT: max_priority}
    if queue_type == QUORUM:
        if not isinstance(delivery_limit, int) or isinstance(delivery_limit, bool):
            raise ValueError("a quorum queue needs an integer delivery_limit")
        if not 0 <= delivery_limit <= 0xFFFF_FFFF:
            raise ValueError(f"delivery_limit is 0..4294967295, not {delivery_limit}")
        return {
            QUEUE_TYPE_ARGUMENT: QUORUM,
            DELIVERY_LIMIT_ARGUMENT: delivery_limit,
            DEAD_LETTER_EXCHANGE_ARGUMENT: dead_letter_exchange_name(prefix),
            DEAD_LETTER_ROUTING_KEY_ARGUMENT: dead_letter_routing_key(delivery_limit),
        }
    raise ValueError(f"queue_type is {CLASSIC!r} or {QUORUM!r}, not {queue_type!r}")


def header_text(value: Any) -> Optional[str]:
    """A string header's text: pika hands an AMQP long string over as ``str`` (or ``bytes`` when
    it is not UTF-8) and a byte array as ``bytes``. Any other type is None, never guessed at."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return None


def caller_from_headers(headers: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The job's caller identity (``wsmq-caller``), None when absent or not a string."""
    if not headers:
        return None
    return header_text(headers.get(CALLER_HEADER))


def deadline_from_headers(headers: Optional[Mapping[str, Any]]) -> Optional[float]:
    """The job's deadline in seconds since the Unix epoch (like ``time.time()``), None if none.

    The contract sends milliseconds as an AMQP integer; like the Rust reader, a decimal string
    and a non-negative float are accepted too. Raises ValueError for anything else.
    """
    if not headers or DEADLINE_HEADER not in headers:
        return None
    value = headers[DEADLINE_HEADER]
    if isinstance(value, bool):
        raise ValueError(f"{DEADLINE_HEADER} is a boolean, not milliseconds")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{DEADLINE_HEADER} {value} is not a finite number")
        ms = int(value)
    else:
        text = header_text(value)
        if text is None:
            raise ValueError(f"{DEADLINE_HEADER} has type {type(value).__name__}, not an integer")
        try:
            ms = int(text.strip())
        except ValueError:
            raise ValueError(f"{DEADLINE_HEADER} {text!r} is not a number of milliseconds") from None
    if ms < 0:
        raise ValueError(f"{DEADLINE_HEADER} is negative ({ms})")
    return ms / 1000.0


def deadline_passed(deadline: Optional[float], now: Optional[float] = None) -> bool:
    """Whether a job with ``deadline`` must not start (or reply) any more: its caller has
    already been answered -32001."""
    if deadline is None:
        return False
    return deadline <= (time.time() if now is None else now)


def _reject_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity; JSON has neither.
    raise ValueError(f"{name} is not JSON")


class ParamsError(ValueError):
    """A job body that is not one JSON value."""


def decode_params(body: bytes) -> Any:
    """The call's params from a job body; raises ParamsError when it is not one JSON value."""
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ParamsError(str(e)) from None


def encode_json(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON; raises TypeError or ValueError for what JSON cannot hold
    (a set, an object, NaN, a circular structure)."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    except RecursionError:
        raise ValueError("the value is nested too deeply") from None


def error_object(code: int, message: str, data: Any = _ABSENT) -> dict:
    """A JSON-RPC error object; ``data`` is left out when not given."""
    error = {"code": code, "message": message}
    if data is not _ABSENT:
        error["data"] = data
    return error


def encode_reply(
    status: str, value: Any, max_bytes: int = DEFAULT_MAX_REPLY_BYTES
) -> Tuple[str, bytes, Optional[str]]:
    """The (status, body, problem) published for a result (``ok``) or an error object
    (``error``); ``problem`` is None when the value was sent as given.

    A value that cannot be encoded as JSON, or whose encoding is over ``max_bytes``, becomes an
    internal error (-32603) for this call only, worded as the Rust SDK words it; ``problem``
    then says why, for the worker's log.
    """
    try:
        body = encode_json(value)
    except (TypeError, ValueError) as e:
        reason = f"reply could not be encoded as JSON: {e}"
    else:
        if len(body) <= max_bytes:
            return status, body, None
        reason = f"reply of {len(body)} bytes exceeds the worker's limit of {max_bytes} bytes"
    return STATUS_ERROR, encode_json(error_object(INTERNAL_ERROR, f"internal error: {reason}")), reason


def method_failed_error(method: str) -> dict:
    """The error an uncaught exception in ``method``'s handler is answered with. Says which
    method failed and nothing of the exception (that goes to the worker's log only)."""
    return error_object(INTERNAL_ERROR, f"internal error: method {method} failed")


def params_error(reason: str) -> dict:
    """The error a job whose body is not JSON is answered with (as the Rust SDK's)."""
    return error_object(PARSE_ERROR, "params are not valid JSON", reason)


def reply_headers(status: str) -> dict:
    """The headers of a reply or progress message (a ``str`` travels as an AMQP long string)."""
    return {STATUS_HEADER: status}


def parse_urls(amqp: Union[str, Sequence[str], None], environ: Optional[Mapping[str, str]] = None) -> list:
    """The broker URLs to try, in order: a list, or one string with comma-separated URLs (as
    ``WSMQ_AMQP`` takes them); None reads ``WSMQ_AMQP``, else the local default broker.

    Raises ValueError when no URL is given or one is not an ``amqp://``/``amqps://`` URL.
    """
    if amqp is None:
        amqp = (environ if environ is not None else {}).get("WSMQ_AMQP") or DEFAULT_AMQP
    items: Iterable[str] = amqp.split(",") if isinstance(amqp, str) else amqp
    urls = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"a broker URL is a string, not {item!r}")
        url = item.strip()
        if not url:
            continue
        if urlsplit(url).scheme not in ("amqp", "amqps"):
            raise ValueError(f"broker URL {redact_url(url)!r} is not amqp:// or amqps://")
        urls.append(url)
    if not urls:
        raise ValueError("no broker URL given")
    return urls


def redact_url(url: str) -> str:
    """``url`` without its password, for logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()
    except ValueError:
        return "<unparsable URL>"


class Backoff:
    """Capped exponential backoff with jitter: ``initial`` doubling per attempt up to ``maximum``,
    each delay scaled by a random factor in [0.5, 1.0]."""

    def __init__(self, initial: float = RECONNECT_INITIAL, maximum: float = RECONNECT_MAX, rng=None):
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        """The un-jittered delay of the current attempt."""
        return min(self.maximum, self.initial * (2 ** min(self.attempt, 62)))

    def next_delay(self) -> float:
        ceiling = self.ceiling()
        self.attempt += 1
        return min(ceiling, ceiling * self._rng.uniform(0.5, 1.0))

    def reset(self) -> None:
        self.attempt = 0


class RecentlyCancelled:
    """The last ``capacity`` cancelled job ids: a job whose cancellation was heard before it was
    delivered is skipped. Oldest forgotten first, so memory stays bounded."""

    def __init__(self, capacity: int = RECENTLY_CANCELLED_CAPACITY):
        self.capacity = capacity
        self._ids: OrderedDict = OrderedDict()

    def add(self, job_id: str) -> None:
        self._ids[job_id] = None
        self._ids.move_to_end(job_id)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)
