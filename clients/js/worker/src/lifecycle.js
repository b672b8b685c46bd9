// The pure pieces of the worker's bookkeeping: which jobs were cancelled, how long to wait
// before reconnecting, which broker to try next, and how many handlers may run.

/** How many cancelled job ids a worker remembers for jobs it has not been given yet. */
export const RECENTLY_CANCELLED_CAPACITY = 4096;

/** The last `capacity` cancelled job ids, oldest forgotten first. */
export class RecentlyCancelled {
  constructor(capacity = RECENTLY_CANCELLED_CAPACITY) {
    this.capacity = capacity;
    // A Set iterates in insertion order: its first element is the oldest.
    this.ids = new Set();
  }

  /** Remembers `jobId`; an id already held keeps its place (it does not live longer). */
  add(jobId) {
    if (this.capacity === 0 || this.ids.has(jobId)) return;
    if (this.ids.size >= this.capacity) {
      const oldest = this.ids.values().next().value;
      this.ids.delete(oldest);
    }
    this.ids.add(jobId);
  }

  has(jobId) {
    return this.ids.has(jobId);
  }

  get size() {
    return this.ids.size;
  }
}

/** First reconnect delay, in ms (like the Rust SDK). */
export const RECONNECT_INITIAL_MS = 100;
/** Longest reconnect delay, in ms. */
export const RECONNECT_MAX_MS = 5000;

/**
 * Capped exponential backoff with jitter: the n-th delay is `initial * 2^n`, capped at `max`,
 * times a random factor in [0.5, 1] (so workers that lost one broker do not all come back at
 * the same instant). `reset()` after a session that worked.
 */
export class Backoff {
  constructor(initialMs = RECONNECT_INITIAL_MS, maxMs = RECONNECT_MAX_MS, random = Math.random) {
    this.initialMs = initialMs;
    this.maxMs = maxMs;
    this.random = random;
    this.attempt = 0;
  }

  /** The un-jittered delay of the current attempt. */
  ceiling() {
    return Math.min(this.initialMs * 2 ** Math.min(this.attempt, 30), this.maxMs);
  }

  nextDelay() {
    const ceiling = this.ceiling();
    this.attempt += 1;
    const factor = Math.min(Math.max(0.5 + this.random() * 0.5, 0), 1);
    return Math.round(ceiling * factor);
  }

  reset() {
    this.attempt = 0;
  }
}

/**
 * The broker URLs from an option or the environment: an array as given, or a string with
 * comma-separated URLs (like `WSMQ_AMQP`), blanks trimmed and empty entries dropped.
 */
export function brokerUrls(value) {
  const list = Array.isArray(value) ? value : String(value).split(',');
  return list.map((url) => String(url).trim()).filter((url) => url.length > 0);
}

/**
 * Whether `url` can be handed to amqplib: it parses, and its scheme is amqp: or amqps:.
 * Returns the reason when it cannot, `null` when it can.
 */
export function urlProblem(url) {
  let parsed;
  try {
    parsed = new URL(url);
  } catch {
    return 'is not a URL';
  }
  if (parsed.protocol !== 'amqp:' && parsed.protocol !== 'amqps:') {
    return `has scheme ${parsed.protocol} (amqp: or amqps: expected)`;
  }
  return null;
}

/** A URL for logs: its password masked. */
export function maskUrl(url) {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return '<unparseable URL>';
  }
}

/**
 * The order to try `count` brokers in after losing broker `lost` (or at the start, `lost` =
 * -1): the next one first, then on round the list, the lost one last.
 */
export function tryOrder(count, lost) {
  const order = [];
  for (let i = 1; i <= count; i += 1) order.push((lost + i + count) % count);
  return order;
}

/**
 * At most `limit` holders at once; the rest wait, first come first served. `acquire()`
 * resolves when a slot is free; `release()` hands it on.
 */
export class Slots {
  constructor(limit) {
    this.free = limit;
    this.waiting = [];
  }

  acquire() {
    if (this.free > 0) {
      this.free -= 1;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  release() {
    const next = this.waiting.shift();
    if (next) next();
    else this.free += 1;
  }

  /** How many are waiting for a slot. */
  get pending() {
    return this.waiting.length;
  }
}
