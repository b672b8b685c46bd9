// The AMQP contract between the wsmq bridge and its workers, as the Node SDK speaks it.
//
// The contract's one owner is the Rust crate `wsmq-amqp-proto` (amqp-proto/ in the wsmq
// repository), and the JSON-RPC codes' owner is `wsmq-codes`; this file spells the same names
// and values for JavaScript, and nothing else in the SDK spells any of them. The end-to-end
// test `node_sdk_spells_the_contract_like_amqp_proto` (tests/tests/e2e/node_worker.rs) loads
// this module and compares every constant and queue argument with the Rust crates, so the two
// cannot drift apart unnoticed. Everything here is pure: no connection, no clock of its own.

/** Header of a job: the method it calls. */
export const METHOD_HEADER = 'wsmq-method';
/** Header of a job: its deadline in milliseconds since the Unix epoch (an AMQP integer). */
export const DEADLINE_HEADER = 'wsmq-deadline';
/** Header of a job: the caller's authenticated identity, when the gateway authenticates. */
export const CALLER_HEADER = 'wsmq-caller';
/** Header of a reply: what its body is (STATUS_OK, STATUS_ERROR or STATUS_PROGRESS). */
export const STATUS_HEADER = 'wsmq-status';
/** Status of a reply whose body is the JSON result. */
export const STATUS_OK = 'ok';
/** Status of a reply whose body is a JSON-RPC error object. */
export const STATUS_ERROR = 'error';
/** Status of a progress report: any JSON value; the reply is still to come. */
export const STATUS_PROGRESS = 'progress';
/** Header of a cancellation: why (REASON_CANCELLED or REASON_TIMEOUT). */
export const REASON_HEADER = 'wsmq-reason';
/** The caller cancelled the call. */
export const REASON_CANCELLED = 'cancelled';
/** The call's deadline passed. */
export const REASON_TIMEOUT = 'timeout';
/** `content_type` of jobs and replies. */
export const CONTENT_TYPE = 'application/json';
/** AMQP `delivery_mode` of persistent messages: replies use it like jobs. */
export const DELIVERY_MODE_PERSISTENT = 2;
/** The cancellation fanout exchange, after the queue prefix. */
export const CANCEL_EXCHANGE = 'wsmq.cancel';
/** The dead-letter fanout exchange of quorum method queues, after the queue prefix. */
export const DEAD_LETTER_EXCHANGE = 'wsmq.dead';
/** Before the delivery limit in a quorum queue's dead-letter routing key. */
export const DELIVERY_LIMIT_ROUTING_KEY_PREFIX = 'wsmq.delivery-limit.';
/** Queue argument of a classic method queue: its highest priority. */
export const MAX_PRIORITY_ARGUMENT = 'x-max-priority';
/** Queue argument naming the queue type. */
export const QUEUE_TYPE_ARGUMENT = 'x-queue-type';
/** QUEUE_TYPE_ARGUMENT value of a quorum queue. */
export const QUORUM = 'quorum';
/** Quorum queue argument: returns to the queue a job survives before it is dead-lettered. */
export const DELIVERY_LIMIT_ARGUMENT = 'x-delivery-limit';
/** Queue argument naming the exchange dead jobs go to. */
export const DEAD_LETTER_EXCHANGE_ARGUMENT = 'x-dead-letter-exchange';
/** Queue argument naming the routing key dead jobs go with. */
export const DEAD_LETTER_ROUTING_KEY_ARGUMENT = 'x-dead-letter-routing-key';
/** The x-max-priority method queues are declared with unless configured otherwise. */
export const DEFAULT_MAX_PRIORITY = 9;
/** The longest queue name AMQP allows, in bytes. */
export const MAX_QUEUE_NAME_LEN = 255;
/** Queue-name prefixes that are never a worker's (RabbitMQ's and wsmq's own). */
export const RESERVED_QUEUE_PREFIXES = Object.freeze(['amq.', 'wsmq.']);

/** JSON-RPC codes (owner: the Rust crate `wsmq-codes`). */
export const PARSE_ERROR = -32700;
export const METHOD_NOT_FOUND = -32601;
export const INVALID_PARAMS = -32602;
export const INTERNAL_ERROR = -32603;

/** The queue serving `method` under `prefix`. */
export function queueName(prefix, method) {
  return `${prefix}${method}`;
}

/** The cancellation exchange under `prefix`. */
export function cancelExchangeName(prefix) {
  return `${prefix}${CANCEL_EXCHANGE}`;
}

/** The dead-letter exchange under `prefix`. */
export function deadLetterExchangeName(prefix) {
  return `${prefix}${DEAD_LETTER_EXCHANGE}`;
}

/** The routing key a quorum method queue dead-letters with. */
export function deadLetterRoutingKey(deliveryLimit) {
  return `${DELIVERY_LIMIT_ROUTING_KEY_PREFIX}${deliveryLimit}`;
}

/** Whether `name` starts with a reserved prefix, ASCII case ignored. */
export function isReservedQueueName(name) {
  const lower = name.slice(0, 5).toLowerCase();
  return RESERVED_QUEUE_PREFIXES.some((prefix) => lower.startsWith(prefix));
}

/**
 * The arguments of a method queue, with the AMQP types the Rust SDK sends (amqplib's
 * `{'!': type, value}` notation): classic with `x-max-priority` (an unsigned byte) when
 * `maxPriority` is set, or quorum with the delivery limit (a long-long int) and dead-lettering
 * to `<prefix>wsmq.dead` with the routing key `wsmq.delivery-limit.<N>` (long strings). Every
 * worker of a queue must declare it alike, or RabbitMQ refuses the declaration.
 *
 * @param {{queueType: 'classic'|'quorum', prefix: string, maxPriority: number|null,
 *   deliveryLimit: number}} shape
 */
export function queueArguments({ queueType, prefix, maxPriority, deliveryLimit }) {
  if (queueType === QUORUM) {
    return {
      [QUEUE_TYPE_ARGUMENT]: QUORUM,
      [DELIVERY_LIMIT_ARGUMENT]: { '!': 'long', value: deliveryLimit },
      [DEAD_LETTER_EXCHANGE_ARGUMENT]: deadLetterExchangeName(prefix),
      [DEAD_LETTER_ROUTING_KEY_ARGUMENT]: deadLetterRoutingKey(deliveryLimit),
    };
  }
  if (maxPriority === null || maxPriority === undefined) {
    return {};
  }
  return { [MAX_PRIORITY_ARGUMENT]: { '!': 'unsignedbyte', value: maxPriority } };
}

/**
 * The text of a string header as amqplib delivers it: a JS string (AMQP long or short string)
 * or a Buffer (a byte array). Anything else is `null`, never guessed at.
 */
export function headerText(value) {
  if (typeof value === 'string') return value;
  if (Buffer.isBuffer(value)) return value.toString('utf8');
  return null;
}

/** The job's caller (`wsmq-caller`), or `null`. */
export function callerFromHeaders(headers) {
  return headers ? headerText(headers[CALLER_HEADER]) : null;
}

/**
 * Reads a job's deadline (`wsmq-deadline`) as milliseconds since the Unix epoch.
 *
 * Returns `{ deadline: number|null }`, or `{ error: string }` when the header holds no
 * non-negative number of milliseconds. Any integer type is read (amqplib gives a JS number;
 * a long-long beyond 2^53 loses precision, which is years past any deadline), as are a decimal
 * string and a non-negative float (truncated), like the Rust SDK.
 */
export function deadlineFromHeaders(headers) {
  const value = headers ? headers[DEADLINE_HEADER] : undefined;
  if (value === undefined || value === null) return { deadline: null };
  if (typeof value === 'number') {
    if (!Number.isFinite(value) || value < 0) {
      return { error: `${DEADLINE_HEADER} ${value} is not a non-negative finite number` };
    }
    return { deadline: Math.trunc(value) };
  }
  const text = headerText(value);
  if (text !== null) {
    if (!/^[0-9]+$/.test(text.trim())) {
      return { error: `${DEADLINE_HEADER} ${JSON.stringify(text)} is not a number of milliseconds` };
    }
    return { deadline: Number(text.trim()) };
  }
  return { error: `${DEADLINE_HEADER} is not an integer` };
}

/** Whether a deadline (ms since the epoch, or null) has passed at `now`: exactly now has. */
export function deadlinePassed(deadline, now) {
  return deadline !== null && deadline <= now;
}

/** Where a job's reply goes, or `null` when it lacks `replyTo` or `correlationId`. */
export function replyAddress(properties) {
  const { replyTo, correlationId } = properties;
  if (!replyTo || !correlationId) return null;
  return { replyTo: String(replyTo), correlationId: String(correlationId) };
}

/** The job id a cancellation names (its `correlationId`), or `null`; and its reason. */
export function readCancellation(properties) {
  const jobId = properties.correlationId ? String(properties.correlationId) : null;
  if (!jobId) return null;
  const reason = properties.headers ? headerText(properties.headers[REASON_HEADER]) : null;
  const known = reason === REASON_CANCELLED || reason === REASON_TIMEOUT;
  return { jobId, reason: known ? reason : 'unspecified' };
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Decodes a job body into the call's params: `{ params }`, or `{ error }` (a JSON-RPC error
 * object, -32700) when the body is not one valid JSON value in UTF-8.
 */
export function decodeParams(body) {
  let text;
  try {
    text = utf8.decode(body);
  } catch {
    return { error: { code: PARSE_ERROR, message: 'params are not valid JSON', data: 'body is not UTF-8' } };
  }
  try {
    return { params: JSON.parse(text) };
  } catch (e) {
    return { error: { code: PARSE_ERROR, message: 'params are not valid JSON', data: String(e.message) } };
  }
}

const LAST_RESORT_ERROR_BODY = Buffer.from(`{"code":${INTERNAL_ERROR},"message":"internal error"}`);

function internalError(reason) {
  return { code: INTERNAL_ERROR, message: `internal error: ${reason}` };
}

/**
 * Encodes a handler's outcome as a reply body of at most `maxBytes` bytes:
 * `{ status, body }` with `status` STATUS_OK or STATUS_ERROR and `body` a Buffer.
 *
 * `outcome` is `{ result }` (an `undefined` result is sent as `null`) or `{ error }` (an object
 * `{code, message, data?}`; a `data` of `undefined` is left out). A result or error that
 * cannot be encoded as JSON (a BigInt, a cycle, a function, a throwing `toJSON`), or whose
 * encoding is too large, is replaced by a -32603 error saying so: the caller gets an answer
 * either way, and the broker is never handed a message it would refuse.
 */
export function encodeReply(outcome, maxBytes) {
  let status;
  let text;
  let reason;
  try {
    if ('error' in outcome) {
      status = STATUS_ERROR;
      const { code, message, data } = outcome.error;
      const object = data === undefined ? { code, message } : { code, message, data };
      text = JSON.stringify(object);
    } else {
      status = STATUS_OK;
      const result = outcome.result === undefined ? null : outcome.result;
      text = JSON.stringify(result);
      if (text === undefined) reason = `reply could not be encoded as JSON: a ${typeof result} is no JSON value`;
    }
  } catch (e) {
    reason = `reply could not be encoded as JSON: ${e.message}`;
  }
  if (reason === undefined) {
    const body = Buffer.from(text, 'utf8');
    if (body.length <= maxBytes) return { status, body };
    reason = `reply of ${body.length} bytes exceeds the worker's limit of ${maxBytes} bytes`;
  }
  let body;
  try {
    body = Buffer.from(JSON.stringify(internalError(reason)), 'utf8');
  } catch {
    body = LAST_RESORT_ERROR_BODY;
  }
  return { status: STATUS_ERROR, body };
}

/**
 * Encodes a progress report: `{ body }`, or `{ error: string }` when the value cannot be
 * encoded as JSON or is larger than `maxBytes`.
 */
export function encodeProgress(value, maxBytes) {
  let text;
  try {
    text = JSON.stringify(value === undefined ? null : value);
  } catch (e) {
    return { error: `progress could not be encoded as JSON: ${e.message}` };
  }
  if (text === undefined) return { error: `progress could not be encoded as JSON: a ${typeof value} is no JSON value` };
  const body = Buffer.from(text, 'utf8');
  if (body.length > maxBytes) {
    return { error: `progress of ${body.length} bytes exceeds the worker's limit of ${maxBytes} bytes` };
  }
  return { body };
}

/** The properties of a reply or progress message (amqplib's publish options). */
export function replyProperties(correlationId, status) {
  return {
    correlationId,
    contentType: CONTENT_TYPE,
    deliveryMode: DELIVERY_MODE_PERSISTENT,
    headers: { [STATUS_HEADER]: status },
  };
}
