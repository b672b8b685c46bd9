// wsmq.js: a dependency-free JavaScript client for the wsmq websocket JSON-RPC gateway.
//
// Works in browsers and in Node.js (22+ as is; 20 with --experimental-websocket; or pass any
// WHATWG-compatible WebSocket class as `options.WebSocket`). One connection carries every call;
// the gateway answers calls as their jobs finish, in any order, and this client matches each
// answer to its promise by id.
//
// The promise of every call settles exactly once: with the result, or with a `WsmqError` whose
// `code` says why (the gateway's or the worker's JSON-RPC code, -32001 for a timeout, -32002 for
// a cancellation, `CONNECTION_LOST` when the connection died and its session could not be
// resumed). Every call has a deadline that the gateway enforces and that this client also keeps
// locally, so no promise waits forever even if an answer never comes.
//
// When the connection drops, the client reconnects to `/ws?session=<token>` (the token comes in
// the gateway's `$/session` greeting) and the gateway hands over whatever arrived meanwhile, so
// a network blip loses nothing. Calls made while reconnecting are queued and sent on resume.

/** JSON-RPC and wsmq error codes (docs/protocol.md, "Error codes"; the Rust list is wsmq-codes). */
export const codes = Object.freeze({
  PARSE_ERROR: -32700,
  INVALID_REQUEST: -32600,
  METHOD_NOT_FOUND: -32601,
  INVALID_PARAMS: -32602,
  INTERNAL_ERROR: -32603,
  BROKER_UNAVAILABLE: -32000,
  TIMEOUT: -32001,
  CANCELLED: -32002,
  TOO_MANY_IN_FLIGHT: -32003,
  JOB_FAILED: -32004,
  RATE_LIMITED: -32005,
  JSON_TOO_DEEP: -32010,
  BATCH_TOO_LONG: -32011,
  PARAMS_TOO_LARGE: -32012,
  /** Client-side: the connection was lost and its session could not be resumed, or the
   * client was closed. Not a JSON-RPC code; outside the range JSON-RPC reserves. */
  CONNECTION_LOST: -1,
});

/** A call that failed. `code` is the JSON-RPC code; `data` the error's data, if any. */
export class WsmqError extends Error {
  constructor(code, message, data) {
    super(message);
    this.name = 'WsmqError';
    this.code = code;
    if (data !== undefined) this.data = data;
  }

  /** Whether trying the same call again later may succeed. */
  get retryable() {
    return this.code === codes.BROKER_UNAVAILABLE || this.code === codes.TOO_MANY_IN_FLIGHT
      || this.code === codes.RATE_LIMITED || this.code === codes.CONNECTION_LOST;
  }
}

/** The call's deadline passed (the gateway's -32001, or no answer by the local deadline). */
export class TimeoutError extends WsmqError {
  constructor(message = 'timeout', data) {
    super(codes.TIMEOUT, message, data);
    this.name = 'TimeoutError';
  }
}

/** The call was cancelled (its AbortSignal fired; the gateway was sent `$/cancel`). */
export class CancelledError extends WsmqError {
  constructor(message = 'cancelled', data) {
    super(codes.CANCELLED, message, data);
    this.name = 'CancelledError';
  }
}

/** The connection was lost past resume, or the client was closed, before the call's answer. */
export class ConnectionLostError extends WsmqError {
  constructor(message = 'connection lost') {
    super(codes.CONNECTION_LOST, message);
    this.name = 'ConnectionLostError';
  }
}

/** The error for a JSON-RPC error object, typed by its code. */
export function errorFrom(error) {
  const code = Number.isInteger(error?.code) ? error.code : codes.INTERNAL_ERROR;
  const message = typeof error?.message === 'string' ? error.message : 'error';
  if (code === codes.TIMEOUT) return new TimeoutError(message, error.data);
  if (code === codes.CANCELLED) return new CancelledError(message, error.data);
  return new WsmqError(code, message, error?.data);
}

/** The gateway's default `--call-timeout`: the deadline of a call that names none. */
const DEFAULT_TIMEOUT_MS = 30_000;
/** How long past a call's deadline the client waits for the gateway's own -32001. */
const DEADLINE_GRACE_MS = 5_000;
/** The longest delay setTimeout takes (about 24.8 days); longer ones would fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** Most messages queued while reconnecting; past it, new calls fail at once. */
const MAX_QUEUED = 1024;
/** How long close() waits for the gateway to answer the close handshake. */
const CLOSE_WAIT_MS = 1_000;
/** Reconnect backoff: first delay, cap. Each attempt doubles it, with jitter. */
const BACKOFF_FIRST_MS = 100;
const BACKOFF_MAX_MS = 2_000;
/** When the gateway answers HTTP but refuses the websocket this many times in a row, the
 * session is gone (unknown or expired) and waiting out the resume window is pointless. */
const REFUSALS_BEFORE_NEW_SESSION = 3;

/**
 * Opens a connection to the gateway's websocket.
 *
 * @param {string} url e.g. `ws://127.0.0.1:8080/ws` (in a page served by the gateway,
 *   `wsUrlFor(location)` gives it)
 * @param {object} [options]
 * @param {string} [options.token] sent as `?token=`
 * @param {number} [options.timeoutMs] deadline of calls that name none (default 30000)
 * @param {boolean} [options.reconnect] reconnect and resume after a drop (default true)
 * @param {(state: string, info: object) => void} [options.onState] called on every change of
 *   `state`: `open`, `reconnecting`, `closed`; `info` has `session`, `attempt`, `lost` (calls
 *   failed when a session could not be resumed)
 * @param {typeof WebSocket} [options.WebSocket] the WebSocket class (default: the global one)
 * @returns {Promise<Client>} once the first connection is open
 */
export async function connect(url, options = {}) {
  const client = new Client(url, options);
  await client._open();
  return client;
}

/** The websocket URL of the gateway that served a page (`location`): same host, path `/ws`. */
export function wsUrlFor(location) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/ws`;
}

/**
 * Calls `fn` once when `ws` fails before opening: on `error` or `close`, whichever comes first
 * (Node 20's WebSocket fires only `error` when the upgrade is refused).
 */
function failed(ws, fn) {
  let done = false;
  const once = () => {
    if (done) return;
    done = true;
    fn();
  };
  ws.addEventListener('error', once, { once: true });
  ws.addEventListener('close', once, { once: true });
}

class Client {
  constructor(url, options) {
    const WS = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WS !== 'function') {
      throw new Error('no WebSocket class: use Node.js 22+, node --experimental-websocket, '
        + 'or pass options.WebSocket');
    }
    this._WS = WS;
    this._url = new URL(url);
    if (options.token != null) this._url.searchParams.set('token', options.token);
    this._timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this._reconnect = options.reconnect ?? true;
    this._onState = options.onState ?? (() => {});
    /** Calls awaiting their answer, by id. */
    this._pending = new Map();
    /** Frames waiting for a connection (sent in order once one is open). */
    this._queue = [];
    this._nextId = 1;
    this._ws = null;
    this._session = null;
    this._resumeWithinMs = 0;
    this._state = 'connecting';
    this._closed = false;
    this._retry = null;
    /** The session last reported to `onState`. */
    this._reported = null;
  }

  /** `connecting`, `open`, `reconnecting` or `closed`. */
  get state() {
    return this._state;
  }

  /** The current session's token, once the gateway sent it (null when sessions are off). */
  get session() {
    return this._session;
  }

  /** How many calls await their answer. */
  get pending() {
    return this._pending.size;
  }

  /**
   * Calls `method` and resolves with its result.
   *
   * @param {string} method
   * @param {object|Array} [params]
   * @param {object} [options]
   * @param {number} [options.timeoutMs] the call's deadline, from now
   * @param {number} [options.priority] 0-9; higher runs first when jobs queue
   * @param {(value: any) => void} [options.onProgress] each `$/progress` value, in order
   * @param {(queued: boolean) => void} [options.onQueued] `true` when the gateway holds the
   *   call for fair share (`$/queued`), `false` when it sends it on to the workers
   * @param {AbortSignal} [options.signal] aborting it cancels the call (`$/cancel`) and
   *   rejects it with CancelledError at once
   */
  call(method, params, options = {}) {
    return new Promise((resolve, reject) => {
      if (this._closed) {
        reject(new ConnectionLostError('client closed'));
        return;
      }
      if (options.signal?.aborted) {
        reject(new CancelledError('cancelled before it was sent'));
        return;
      }
      const timeoutMs = options.timeoutMs ?? this._timeoutMs;
      if (!(Number.isFinite(timeoutMs) && timeoutMs > 0)) {
        reject(new RangeError(`timeoutMs must be a positive number of ms, got ${timeoutMs}`));
        return;
      }
      const id = this._nextId++;
      const wsmq = { timeout_ms: Math.max(1, Math.ceil(timeoutMs)) };
      if (options.priority != null) wsmq.priority = options.priority;
      if (options.onQueued) wsmq.queued = true;
      const request = { jsonrpc: '2.0', method, id, wsmq };
      if (params !== undefined) request.params = params;

      const call = {
        resolve,
        reject,
        onProgress: options.onProgress,
        onQueued: options.onQueued,
        signal: options.signal,
        onAbort: null,
        timer: null,
        // Sent on a connection of the current session (so only a lost session loses it).
        sent: false,
      };
      call.timer = setTimeout(() => {
        this._settle(id, new TimeoutError(`no answer within ${timeoutMs} ms`), true);
      }, Math.min(timeoutMs + DEADLINE_GRACE_MS, MAX_TIMER_MS));
      if (call.signal) {
        call.onAbort = () => {
          if (!this._pending.has(id)) return;
          this._send({ jsonrpc: '2.0', method: '$/cancel', params: { id } }, true);
          this._settle(id, new CancelledError('cancelled by the caller'), true);
        };
        call.signal.addEventListener('abort', call.onAbort, { once: true });
      }
      this._pending.set(id, call);
      if (!this._send(request, false, id)) {
        this._settle(id, new ConnectionLostError('too many calls queued while reconnecting'),
          true);
      }
    });
  }

  /**
   * Closes the connection. Calls still pending fail with ConnectionLostError.
   * @returns {Promise<void>} once the socket is closed
   */
  close() {
    if (this._closed) return Promise.resolve();
    this._closed = true;
    clearTimeout(this._retry);
    for (const id of [...this._pending.keys()]) {
      this._settle(id, new ConnectionLostError('client closed'), true);
    }
    this._queue = [];
    const ws = this._ws;
    this._setState('closed', {});
    if (!ws || ws.readyState === 3) return Promise.resolve();
    return new Promise((resolve) => {
      // A peer that never answers the close handshake must not keep the caller waiting.
      const timer = setTimeout(resolve, CLOSE_WAIT_MS);
      ws.addEventListener('close', () => {
        clearTimeout(timer);
        resolve();
      }, { once: true });
      ws.close(1000, 'client closed');
    });
  }

  // ---- internals ----

  /** Settles call `id` once; `isError` rejects with `value`. Later answers find nothing. */
  _settle(id, value, isError) {
    const call = this._pending.get(id);
    if (!call) return;
    this._pending.delete(id);
    clearTimeout(call.timer);
    if (!call.sent) {
      // Never sent: it must not go out on a later connection.
      const at = this._queue.findIndex((q) => q.id === id);
      if (at >= 0) this._queue.splice(at, 1);
    }
    if (call.signal && call.onAbort) call.signal.removeEventListener('abort', call.onAbort);
    if (isError) call.reject(value);
    else call.resolve(value);
  }

  /** Sends `frame` now if open, else queues it. False if the queue is full. */
  _send(frame, isCancel, id) {
    const text = JSON.stringify(frame);
    if (this._ws && this._ws.readyState === 1 && this._state === 'open') {
      this._ws.send(text);
      if (id !== undefined) this._pending.get(id).sent = true;
      return true;
    }
    // A cancel for a call never sent is not needed: settling the call takes it off the queue.
    if (isCancel && this._pending.get(frame.params.id)?.sent === false) return true;
    if (this._queue.length >= MAX_QUEUED) return false;
    this._queue.push({ text, id });
    return true;
  }

  _setState(state, info) {
    // Reported when the state or the session changes, and on every reconnect attempt.
    if (this._state === state && this._reported === this._session && state !== 'reconnecting') {
      return;
    }
    this._state = state;
    this._reported = this._session;
    try {
      this._onState(state, { session: this._session, ...info });
    } catch (_) {
      // A listener's bug must not break the connection.
    }
  }

  /** Opens the first connection; rejects if it cannot. */
  _open() {
    return new Promise((resolve, reject) => {
      const ws = this._socket(this._url);
      let opened = false;
      ws.addEventListener('open', () => {
        opened = true;
        this._attach(ws);
        resolve();
      }, { once: true });
      failed(ws, () => {
        if (!opened) {
          reject(new ConnectionLostError(`cannot connect to ${this._url.origin}${this._url.pathname}`));
        }
      });
    });
  }

  _socket(url) {
    return new this._WS(url.toString());
  }

  /** Makes `ws` the connection: flushes the queue, listens for frames and for its end. */
  _attach(ws) {
    this._ws = ws;
    ws.addEventListener('message', (ev) => this._onMessage(ev.data));
    ws.addEventListener('close', () => this._onClose(ws), { once: true });
    this._setState('open', {});
    const queued = this._queue;
    this._queue = [];
    for (const { text, id } of queued) {
      ws.send(text);
      const call = id !== undefined ? this._pending.get(id) : undefined;
      if (call) call.sent = true;
    }
  }

  _onMessage(data) {
    if (typeof data !== 'string') return; // the gateway sends text only
    let frame;
    try {
      frame = JSON.parse(data);
    } catch (_) {
      return;
    }
    for (const message of Array.isArray(frame) ? frame : [frame]) this._dispatch(message);
  }

  _dispatch(message) {
    if (message === null || typeof message !== 'object') return;
    if (message.method === '$/session' && message.params) {
      this._session = message.params.session ?? null;
      this._resumeWithinMs = (message.params.resume_within_s ?? 0) * 1000;
      this._setState('open', {});
      return;
    }
    if (message.method === '$/progress' && message.params) {
      const call = this._pending.get(message.params.id);
      if (call?.onProgress) {
        try {
          call.onProgress(message.params.value);
        } catch (_) {
          // The caller's callback failing does not fail the call.
        }
      }
      return;
    }
    if (message.method === '$/queued' && message.params) {
      const call = this._pending.get(message.params.id);
      if (call?.onQueued) {
        try {
          call.onQueued(message.params.queued === true);
        } catch (_) {
          // The caller's callback failing does not fail the call.
        }
      }
      return;
    }
    if (!('id' in message)) return;
    if ('error' in message) this._settle(message.id, errorFrom(message.error), true);
    else this._settle(message.id, message.result, false);
  }

  _onClose(ws) {
    if (ws !== this._ws) return;
    this._ws = null;
    if (this._closed) return;
    if (!this._reconnect || !this._session || this._resumeWithinMs <= 0) {
      this._loseSession();
      if (this._reconnect) this._reconnectLoop(null, 0, Infinity);
      else this.close();
      return;
    }
    const deadline = Date.now() + this._resumeWithinMs;
    this._reconnectLoop(this._session, 0, deadline);
  }

  /** Fails every call sent on the session that is gone; queued ones go on the next. */
  _loseSession() {
    const lost = [];
    for (const [id, call] of this._pending) {
      if (call.sent) lost.push(id);
    }
    for (const id of lost) {
      this._settle(id, new ConnectionLostError('connection lost and its session could not be '
        + 'resumed'), true);
    }
    this._session = null;
    return lost.length;
  }

  /**
   * Tries to reconnect: resuming `session` until `deadline`, or (session null) a new session
   * until it works.
   */
  _reconnectLoop(session, attempt, deadline, refusals = 0) {
    if (this._closed) return;
    this._setState('reconnecting', { attempt });
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** attempt) * (0.5 + Math.random() / 2);
    this._retry = setTimeout(() => {
      if (this._closed) return;
      if (session && Date.now() > deadline) {
        this._giveUpSession();
        return;
      }
      const url = new URL(this._url);
      if (session) url.searchParams.set('session', session);
      const ws = this._socket(url);
      let opened = false;
      ws.addEventListener('open', () => {
        opened = true;
        if (this._closed) {
          ws.close(1000, 'client closed');
          return;
        }
        this._attach(ws);
      }, { once: true });
      failed(ws, async () => {
        if (opened || this._closed) return;
        // The websocket API hides the HTTP status of a refused upgrade (404: the session is
        // unknown or expired; 409: in use). If the gateway answers HTTP, it refused us.
        let next = refusals;
        if (session) next = (await this._gatewayAnswers()) ? refusals + 1 : 0;
        if (this._closed) return;
        if (session && next >= REFUSALS_BEFORE_NEW_SESSION) {
          this._giveUpSession();
          return;
        }
        this._reconnectLoop(session, attempt + 1, deadline, next);
      });
    }, attempt === 0 ? 0 : delay);
  }

  _giveUpSession() {
    const lost = this._loseSession();
    this._setState('reconnecting', { attempt: 0, lost });
    this._reconnectLoop(null, 0, Infinity);
  }

  /** Whether the gateway answers a plain HTTP request (`/healthz`) right now. */
  async _gatewayAnswers() {
    if (typeof fetch !== 'function') return false;
    const url = new URL(this._url);
    url.protocol = url.protocol === 'wss:' ? 'https:' : 'http:';
    url.pathname = url.pathname.replace(/\/ws\/?$/, '') + '/healthz';
    url.search = '';
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), 2_000);
    try {
      await fetch(url, { signal: abort.signal, cache: 'no-store' });
      return true;
    } catch (_) {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }
}
