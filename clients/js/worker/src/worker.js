// The worker: one supervising loop per process that connects to the first broker that answers,
// declares the contract's topology, hands jobs to handlers and their outcomes back, and
// reconnects (with capped, jittered backoff) when the broker goes away; at SIGTERM or SIGINT
// it stops taking jobs and lets the running ones finish.
//
// Why its own loop rather than amqplib's recovery: on every new connection the whole topology
// (the cancellation queue, the method queues, the consumers and their prefetch) must be
// declared again, jobs of the lost connection must be told (their acks can no longer reach the
// broker), and the next URL of a list must be tried; the loop below does exactly that, as the
// Rust SDK does.

import os from 'node:os';
import amqp from 'amqplib';

import * as contract from './contract.js';
import { WsmqJobError } from './errors.js';
import { Job, JobAbortedError } from './job.js';
import {
  Backoff,
  RecentlyCancelled,
  Slots,
  brokerUrls,
  maskUrl,
  tryOrder,
  urlProblem,
} from './lifecycle.js';
import { createLogger } from './log.js';

/** The broker used when neither the `amqp` option nor `WSMQ_AMQP` names one. */
export const DEFAULT_AMQP = 'amqp://guest:guest@127.0.0.1:5672/%2f';
/** Handlers running at once, over all methods; also each method consumer's prefetch. */
export const DEFAULT_CONCURRENCY = 16;
/** Largest reply or progress body sent (like the Rust SDK); a larger reply becomes -32603. */
export const DEFAULT_MAX_REPLY_BYTES = 16 * 1024 * 1024;
/** How long running jobs get to finish at shutdown before they are abandoned (requeued). */
export const DEFAULT_SHUTDOWN_GRACE_MS = 10_000;
/** Default delivery limit of quorum method queues: a poison job runs at most 4 times. */
export const DEFAULT_DELIVERY_LIMIT = 3;
/**
 * Bound on opening one broker session: an unreachable host must not hold the loop, and the next
 * broker of the list is tried after it (10 s, like the Rust bridge and worker).
 */
export const CONNECT_TIMEOUT_MS = 10_000;
/** Bound on each goodbye (basic.cancel, connection.close) to a broker that may be gone. */
const GOODBYE_TIMEOUT_MS = 2_000;
/** After the shutdown grace expires, how long abandoned handlers get to see their signal. */
const ABANDON_TIMEOUT_MS = 1_000;
/** Exit status after a second signal cut the drain short (like the Rust binaries). */
const EXIT_INTERRUPTED = 130;
/** setTimeout's longest delay; a deadline further away is re-armed. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** A configuration the worker cannot run with; found before any connection is opened. */
export class WorkerConfigError extends Error {
  constructor(message) {
    super(message);
    this.name = 'WorkerConfigError';
  }
}

function envInt(name) {
  const value = process.env[name];
  if (value === undefined || value === '') return undefined;
  return /^[0-9]+$/.test(value.trim()) ? Number(value.trim()) : Number.NaN;
}

function settle(promise, ms) {
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve('timeout'), ms);
  });
  return Promise.race([promise.then(() => 'done', () => 'done'), timeout]).finally(() =>
    clearTimeout(timer),
  );
}

function describe(error) {
  if (error instanceof Error) return error.message;
  return String(error);
}

/**
 * A wsmq worker. Options (each defaults to its environment variable, then to the default):
 *
 * - `amqp` (`WSMQ_AMQP`): a broker URL, an array of them, or a comma-separated list; the worker
 *   connects to the first that answers, in order, and on losing it goes to the next;
 * - `queuePrefix` (`WSMQ_QUEUE_PREFIX`, default empty): must match the bridge's;
 * - `concurrency` (`WSMQ_CONCURRENCY`, default 16): handlers at once, and each queue's prefetch;
 * - `queueType` (`WSMQ_QUEUE_TYPE`): `classic` (default) or `quorum`;
 * - `deliveryLimit` (`WSMQ_DELIVERY_LIMIT`, default 3): with `quorum`, returns a job survives;
 * - `maxPriority` (`WSMQ_MAX_PRIORITY`, default 9): classic queues' `x-max-priority`; 0 or
 *   `null` declares them without it;
 * - `maxReplyBytes` (default 16 MiB), `shutdownGraceMs` (default 10 s);
 * - `logger` (an object with `debug`, `info`, `warn`, `error`), or `logFormat`
 *   (`WSMQ_LOG_FORMAT`: `plain` or `json`) and `logLevel` (`WSMQ_LOG_LEVEL`, default `info`).
 */
export class Worker {
  constructor(options = {}) {
    this.routes = new Map();
    this.settings = {};
    this.configure(options, true);
    this.running = new Map();
    this.cancelled = new RecentlyCancelled();
    this.inflight = new Set();
    this.session = null;
    this.stopping = false;
    this.interrupted = false;
    this.wakeUp = null;
    this.done = null;
  }

  /**
   * Changes settings before `run()` (the command line uses it for its flags). Only the options
   * given are changed.
   */
  configure(options, withDefaults = false) {
    const env = process.env;
    const pick = (key, fromEnv, fallback) => {
      if (options[key] !== undefined) return options[key];
      if (!withDefaults) return this.settings[key];
      return fromEnv !== undefined ? fromEnv : fallback;
    };
    const maxPriorityEnv = envInt('WSMQ_MAX_PRIORITY');
    this.settings = {
      amqp: pick('amqp', env.WSMQ_AMQP || undefined, DEFAULT_AMQP),
      queuePrefix: pick('queuePrefix', env.WSMQ_QUEUE_PREFIX, ''),
      concurrency: pick('concurrency', envInt('WSMQ_CONCURRENCY'), DEFAULT_CONCURRENCY),
      queueType: pick('queueType', env.WSMQ_QUEUE_TYPE || undefined, 'classic'),
      deliveryLimit: pick('deliveryLimit', envInt('WSMQ_DELIVERY_LIMIT'), DEFAULT_DELIVERY_LIMIT),
      maxPriority: pick('maxPriority', maxPriorityEnv, contract.DEFAULT_MAX_PRIORITY),
      maxReplyBytes: pick('maxReplyBytes', undefined, DEFAULT_MAX_REPLY_BYTES),
      shutdownGraceMs: pick('shutdownGraceMs', undefined, DEFAULT_SHUTDOWN_GRACE_MS),
      connectTimeoutMs: pick('connectTimeoutMs', undefined, CONNECT_TIMEOUT_MS),
      logFormat: pick('logFormat', env.WSMQ_LOG_FORMAT || undefined, 'plain'),
      logLevel: pick('logLevel', env.WSMQ_LOG_LEVEL || undefined, 'info'),
      logger: pick('logger', undefined, undefined),
    };
    this.log =
      this.settings.logger ??
      createLogger({ format: this.settings.logFormat, level: this.settings.logLevel });
    return this;
  }

  /**
   * Serves `name` with `handler(params, job)`, an async function (or one returning a value):
   * what it returns is the call's result (`undefined` is sent as `null`); a `WsmqJobError` it
   * throws is the call's error as is; anything else it throws is answered -32603
   * "internal error: method <name> failed" and logged with its stack.
   */
  method(name, handler) {
    if (typeof name !== 'string' || name.length === 0) {
      throw new WorkerConfigError('method names must be non-empty strings');
    }
    if (typeof handler !== 'function') {
      throw new WorkerConfigError(`the handler of method ${JSON.stringify(name)} is not a function`);
    }
    if (this.routes.has(name)) {
      throw new WorkerConfigError(`method ${JSON.stringify(name)} registered twice`);
    }
    this.routes.set(name, handler);
    return this;
  }

  /** The methods served, in registration order. */
  get methods() {
    return [...this.routes.keys()];
  }

  /** Checks the configuration; returns the usable broker URLs. */
  validate() {
    const s = this.settings;
    if (this.routes.size === 0) throw new WorkerConfigError('no method registered');
    if (!Number.isSafeInteger(s.concurrency) || s.concurrency < 1 || s.concurrency > 65535) {
      throw new WorkerConfigError(`concurrency must be an integer from 1 to 65535, got ${s.concurrency}`);
    }
    if (s.queueType !== 'classic' && s.queueType !== contract.QUORUM) {
      throw new WorkerConfigError(`queueType must be "classic" or "quorum", got ${JSON.stringify(s.queueType)}`);
    }
    if (!Number.isSafeInteger(s.deliveryLimit) || s.deliveryLimit < 0 || s.deliveryLimit > 0xffffffff) {
      throw new WorkerConfigError(`deliveryLimit must be an integer from 0 to 4294967295, got ${s.deliveryLimit}`);
    }
    const priority = s.maxPriority;
    if (priority !== null && (!Number.isSafeInteger(priority) || priority < 0 || priority > 255)) {
      throw new WorkerConfigError(`maxPriority must be an integer from 0 to 255 or null, got ${priority}`);
    }
    if (typeof s.queuePrefix !== 'string') throw new WorkerConfigError('queuePrefix must be a string');
    const cancelExchange = contract.cancelExchangeName(s.queuePrefix);
    if (Buffer.byteLength(cancelExchange) > contract.MAX_QUEUE_NAME_LEN) {
      throw new WorkerConfigError(
        `queue prefix is ${Buffer.byteLength(s.queuePrefix)} bytes; at most 244 leave room for the exchange <prefix>wsmq.cancel`,
      );
    }
    for (const method of this.routes.keys()) {
      const queue = contract.queueName(s.queuePrefix, method);
      const len = Buffer.byteLength(queue);
      if (len > contract.MAX_QUEUE_NAME_LEN) {
        throw new WorkerConfigError(`queue name for method ${JSON.stringify(method)} is ${len} bytes; AMQP allows at most 255`);
      }
      if (contract.isReservedQueueName(queue)) {
        throw new WorkerConfigError(`queue name ${JSON.stringify(queue)} starts with a reserved prefix (amq. or wsmq.)`);
      }
    }
    const urls = [];
    brokerUrls(s.amqp).forEach((url, index) => {
      const problem = urlProblem(url);
      if (problem) this.log.error('broker URL skipped', { position: index + 1, url: maskUrl(url), reason: problem });
      else urls.push(url);
    });
    if (urls.length === 0) throw new WorkerConfigError('no usable broker URL (amqp://... or amqps://...)');
    return urls;
  }

  /**
   * Runs until `stop()`, or SIGTERM/SIGINT when `signals` is true (the default): then stops
   * taking jobs, lets the running ones reply within `shutdownGraceMs`, closes the connection and
   * resolves. A second signal cuts the drain short (running jobs go back to their queue) and sets
   * `process.exitCode` to 130. Rejects only with a `WorkerConfigError`, before connecting.
   */
  async run({ signals = true } = {}) {
    if (this.done) throw new WorkerConfigError('the worker is already running');
    const urls = this.validate();
    this.urls = urls;
    this.slots = new Slots(this.settings.concurrency);
    const onSignal = (signal) => {
      if (!this.stopping) {
        this.log.info('signal received; stopping', { signal });
        this.stop();
      } else if (!this.interrupted) {
        this.log.warn('second signal; abandoning the running jobs', { signal });
        this.interrupt();
      }
    };
    if (signals) {
      process.on('SIGTERM', onSignal);
      process.on('SIGINT', onSignal);
    }
    this.done = this.supervise(urls);
    try {
      await this.done;
    } finally {
      if (signals) {
        process.off('SIGTERM', onSignal);
        process.off('SIGINT', onSignal);
      }
    }
  }

  /** Starts the graceful stop (see `run`); resolves when the worker has stopped. */
  stop() {
    this.stopping = true;
    if (this.wakeUp) this.wakeUp();
    if (this.session) this.session.stopTaking();
    return this.done ?? Promise.resolve();
  }

  /** Cuts the stop short: running jobs are abandoned and go back to their queue. */
  interrupt() {
    this.interrupted = true;
    process.exitCode = EXIT_INTERRUPTED;
    this.stop();
    this.abortAll('shutdown', 'the worker was interrupted');
    if (this.session) this.session.close('worker interrupted');
  }

  async supervise(urls) {
    const backoff = new Backoff();
    let lost = -1;
    this.log.info('worker starting', {
      methods: this.methods,
      queue_prefix: this.settings.queuePrefix,
      concurrency: this.settings.concurrency,
      queue_type: this.settings.queueType,
    });
    while (!this.stopping) {
      const session = await this.openSession(urls, lost);
      if (session === null) {
        if (this.stopping) break;
        const delay = backoff.nextDelay();
        this.log.warn('no broker answered; retrying', { delay_ms: delay });
        await this.pause(delay);
        continue;
      }
      backoff.reset();
      this.session = session;
      if (this.stopping) session.stopTaking();
      this.log.info('worker ready', {
        broker: maskUrl(urls[session.urlIndex]),
        methods: this.methods,
      });
      await session.ended;
      if (this.stopping && !session.lostReason) {
        await this.drain(session);
        break;
      }
      lost = session.urlIndex;
      this.log.warn('broker connection lost; reconnecting', { reason: session.lostReason });
      await session.close('worker reconnecting');
      this.session = null;
      if (this.stopping) break;
      await this.pause(backoff.nextDelay());
    }
    // Jobs of a lost session may still be finishing; they are not acked, so give them their
    // abandon time and leave.
    if (this.inflight.size > 0) await settle(Promise.allSettled([...this.inflight]), ABANDON_TIMEOUT_MS);
    this.log.info('worker stopped');
  }

  /** Waits `ms`, or less if `stop()` is called meanwhile. */
  pause(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wakeUp = () => {
        this.wakeUp = null;
        done();
      };
    });
  }

  /** Tries each broker in turn (the one after `lost` first); `null` when none answered. */
  async openSession(urls, lost) {
    for (const index of tryOrder(urls.length, lost)) {
      if (this.stopping) return null;
      const session = new Session(this, urls[index], index);
      try {
        await session.open();
        return session;
      } catch (error) {
        this.log.warn('broker unavailable', { broker: maskUrl(urls[index]), error: describe(error) });
        await session.close('setup failed');
      }
    }
    return null;
  }

  /** Waits for the running jobs within the grace period, then abandons what is left. */
  async drain(session) {
    const jobs = [...this.inflight];
    this.log.info('worker draining: taking no new jobs', { running: this.running.size });
    if (jobs.length > 0 && !this.interrupted) {
      const outcome = await settle(Promise.allSettled(jobs), this.settings.shutdownGraceMs);
      if (outcome === 'timeout') {
        this.log.warn('shutdown grace expired; abandoning the running jobs (they go back to their queue)', {
          running: this.running.size,
          grace_ms: this.settings.shutdownGraceMs,
        });
        this.abortAll('shutdown', 'the worker is shutting down');
        await settle(Promise.allSettled([...this.inflight]), ABANDON_TIMEOUT_MS);
      }
    }
    await session.close('worker stopped');
  }

  /** Aborts every running job's signal. */
  abortAll(reason, message) {
    for (const entry of this.running.values()) {
      entry.controller.abort(new JobAbortedError(reason, message));
    }
  }

  /** A cancellation arrived: abort the job if it runs here; remember it either way. */
  cancel(jobId, reason) {
    this.cancelled.add(jobId);
    const entry = this.running.get(jobId);
    if (entry) {
      this.log.debug('job cancelled while running', { job_id: jobId, reason });
      const why = reason === contract.REASON_TIMEOUT ? 'timeout' : 'cancelled';
      entry.controller.abort(new JobAbortedError(why, `the call was ${why === 'timeout' ? 'timed out' : 'cancelled'}`));
    }
  }

  /** Serves one delivery of `session`; tracked so that the drain can wait for it. */
  accept(session, method, message) {
    const task = this.serveJob(session, method, message).catch((error) => {
      // Every path inside handles its own errors; this is the net under them.
      this.log.error('job failed unexpectedly', { method, error: error?.stack ?? String(error) });
    });
    this.inflight.add(task);
    task.finally(() => this.inflight.delete(task));
  }

  async serveJob(session, method, message) {
    const properties = message.properties;
    const address = contract.replyAddress(properties);
    if (address === null) {
      this.log.warn('job without reply_to or correlation_id; acking it unanswered', { method });
      session.ack(message);
      return;
    }
    const jobId = address.correlationId;
    await this.slots.acquire();
    let entry = null;
    let timer = null;
    try {
      if (session.lostReason || session.stoppedTaking) {
        // Not started: it goes back to its queue (now, or when the connection closes).
        session.nackRequeue(message);
        return;
      }
      const read = contract.deadlineFromHeaders(properties.headers);
      if (read.error) {
        this.log.warn('unreadable deadline; running the job without one', { job_id: jobId, error: read.error });
      }
      const deadline = read.error ? null : read.deadline;
      if (this.cancelled.has(jobId)) {
        this.log.debug('job skipped: cancelled before it started', { job_id: jobId, method });
        session.ack(message);
        return;
      }
      if (contract.deadlinePassed(deadline, Date.now())) {
        this.log.debug('job skipped: deadline passed before it started', { job_id: jobId, method });
        session.ack(message);
        return;
      }
      const controller = new AbortController();
      entry = { controller, session, finished: false };
      this.running.set(jobId, entry);
      if (deadline !== null) {
        const arm = () => {
          const left = deadline - Date.now();
          if (left <= 0) {
            controller.abort(new JobAbortedError('timeout', 'the deadline passed'));
            return;
          }
          timer = setTimeout(arm, Math.min(left, MAX_TIMER_MS));
        };
        arm();
      }
      const decoded = contract.decodeParams(message.content);
      let outcome;
      if (decoded.error) {
        outcome = { error: decoded.error };
      } else {
        const job = new Job({
          id: jobId,
          method,
          caller: contract.callerFromHeaders(properties.headers),
          deadline,
          redelivered: Boolean(message.fields.redelivered),
          signal: controller.signal,
          report: (value) => this.report(entry, address, value),
        });
        outcome = await this.callHandler(method, decoded.params, job);
      }
      entry.finished = true;
      if (controller.signal.aborted || contract.deadlinePassed(deadline, Date.now())) {
        // The caller stopped waiting (it was answered -32002 or -32001), or the worker gave
        // the job up; a reply would only be dropped.
        this.log.debug('job ended after its cancellation; no reply', { job_id: jobId, method });
        if (!session.lostReason && !this.interrupted) session.ack(message);
        return;
      }
      const reply = contract.encodeReply(outcome, this.settings.maxReplyBytes);
      const properties2 = contract.replyProperties(jobId, reply.status);
      try {
        await session.publish(address, reply.body, properties2);
        session.ack(message);
      } catch (error) {
        this.log.warn('reply not confirmed; requeueing the job', { job_id: jobId, error: describe(error) });
        session.nackRequeue(message);
      }
    } finally {
      if (timer !== null) clearTimeout(timer);
      if (entry !== null && this.running.get(jobId) === entry) this.running.delete(jobId);
      this.slots.release();
    }
  }

  /** Calls the handler, turning whatever it throws into the JSON-RPC error to answer. */
  async callHandler(method, params, job) {
    try {
      const result = await this.routes.get(method)(params, job);
      return { result };
    } catch (error) {
      if (error instanceof WsmqJobError) return { error: error.toJSON() };
      if (job.signal.aborted) {
        this.log.debug('handler threw after its job was aborted', { job_id: job.id, method, error: describe(error) });
      } else {
        this.log.error('handler threw; answering -32603', {
          job_id: job.id,
          method,
          error: error instanceof Error && error.stack ? error.stack : String(error),
        });
      }
      return { error: { code: contract.INTERNAL_ERROR, message: `internal error: method ${method} failed` } };
    }
  }

  /** `job.progress(value)`: publishes a progress report on the job's own session. */
  report(entry, address, value) {
    const encoded = contract.encodeProgress(value, this.settings.maxReplyBytes);
    if (encoded.error) {
      const ErrorType = encoded.error.includes('exceeds') ? RangeError : TypeError;
      throw new ErrorType(encoded.error);
    }
    const { session, controller } = entry;
    if (entry.finished || controller.signal.aborted || session.lostReason) return Promise.resolve(false);
    const properties = contract.replyProperties(address.correlationId, contract.STATUS_PROGRESS);
    return session.publish(address, encoded.body, properties).then(
      () => true,
      (error) => {
        this.log.warn('progress report not confirmed', { job_id: address.correlationId, error: describe(error) });
        return false;
      },
    );
  }
}

/**
 * One connection to one broker and what the worker opens on it: the reply channel (in confirm
 * mode), the consume channel with the cancellation queue and the method consumers.
 */
class Session {
  constructor(worker, url, urlIndex) {
    this.worker = worker;
    this.url = url;
    this.urlIndex = urlIndex;
    this.connection = null;
    this.replyChannel = null;
    this.consumeChannel = null;
    this.consumerTags = [];
    this.lostReason = null;
    this.stoppedTaking = false;
    this.closed = false;
    this.ended = new Promise((resolve) => {
      this.end = resolve;
    });
  }

  /** Connects and declares everything, within the connect timeout. */
  async open() {
    const { connectTimeoutMs } = this.worker.settings;
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${connectTimeoutMs} ms`)), connectTimeoutMs);
    });
    try {
      await Promise.race([this.setup(), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  async setup() {
    const worker = this.worker;
    const s = worker.settings;
    const connection = await amqp.connect(this.url, {
      timeout: s.connectTimeoutMs,
      clientProperties: { connection_name: `wsmq-worker (node) ${os.hostname()}:${process.pid}` },
    });
    this.connection = connection;
    if (this.closed) {
      // open() timed out while the connection was being made: nobody will close it but us.
      await settle(connection.close(), GOODBYE_TIMEOUT_MS);
      throw new Error('closed while connecting');
    }
    // Listen before anything else can fail, so that no error is missed (and none is thrown
    // as an unhandled 'error' event).
    connection.on('error', (error) => this.lose(`connection error: ${describe(error)}`));
    connection.on('close', (error) => this.lose(error ? `connection closed: ${describe(error)}` : 'connection closed'));
    connection.on('blocked', (reason) => worker.log.warn('the broker blocked the connection; replies wait', { reason }));
    connection.on('unblocked', () => worker.log.info('the broker unblocked the connection'));

    const replyChannel = await connection.createConfirmChannel();
    this.replyChannel = replyChannel;
    replyChannel.on('error', (error) => this.lose(`reply channel error: ${describe(error)}`));
    replyChannel.on('close', () => this.lose('reply channel closed'));

    const channel = await connection.createChannel();
    this.consumeChannel = channel;
    channel.on('error', (error) => this.lose(`consume channel error: ${describe(error)}`));
    channel.on('close', () => this.lose('consume channel closed'));

    // Cancellations are heard before any job arrives, so that none sent after a job's delivery
    // is missed. Exactly the contract's settings: the bridge declares the exchange too.
    const cancelExchange = contract.cancelExchangeName(s.queuePrefix);
    await channel.assertExchange(cancelExchange, 'fanout', { durable: true });
    const cancelQueue = await channel.assertQueue('', { exclusive: true, autoDelete: true, durable: false });
    await channel.bindQueue(cancelQueue.queue, cancelExchange, '');
    await channel.consume(
      cancelQueue.queue,
      (message) => {
        if (message === null) {
          this.lose('the cancellation consumer was cancelled (queue deleted?)');
          return;
        }
        const cancellation = contract.readCancellation(message.properties);
        if (cancellation) worker.cancel(cancellation.jobId, cancellation.reason);
      },
      { noAck: true },
    );
    if (s.queueType === contract.QUORUM) {
      // Before the queues: a job dead-lettered to a missing exchange is lost silently.
      await channel.assertExchange(contract.deadLetterExchangeName(s.queuePrefix), 'fanout', { durable: true });
    }
    const maxPriority = s.maxPriority === 0 ? null : s.maxPriority;
    const argumentsOf = contract.queueArguments({
      queueType: s.queueType,
      prefix: s.queuePrefix,
      maxPriority,
      deliveryLimit: s.deliveryLimit,
    });
    for (const method of worker.methods) {
      const queue = contract.queueName(s.queuePrefix, method);
      await channel.assertQueue(queue, { durable: true, exclusive: false, autoDelete: false, arguments: argumentsOf });
    }
    // Per consumer (global QoS is deprecated in RabbitMQ): it applies to the consumers started
    // after it on this channel, so each method queue has a prefetch of `concurrency`.
    await channel.prefetch(s.concurrency, false);
    for (const method of worker.methods) {
      const queue = contract.queueName(s.queuePrefix, method);
      const { consumerTag } = await channel.consume(
        queue,
        (message) => {
          if (message === null) {
            this.lose(`the consumer of queue ${queue} was cancelled (queue deleted?)`);
            return;
          }
          worker.accept(this, method, message);
        },
        { noAck: false },
      );
      this.consumerTags.push(consumerTag);
    }
  }

  /** The session is lost: its jobs are told, and the supervisor reconnects. */
  lose(reason) {
    if (this.lostReason || this.closed) return;
    this.lostReason = reason;
    for (const entry of this.worker.running.values()) {
      if (entry.session === this) {
        entry.controller.abort(new JobAbortedError('lost', 'the broker connection was lost'));
      }
    }
    this.end('lost');
  }

  /** Stops the method consumers (at shutdown); the running jobs go on. */
  stopTaking() {
    if (this.stoppedTaking) return;
    this.stoppedTaking = true;
    const channel = this.consumeChannel;
    const cancels = this.consumerTags.map((tag) =>
      channel.cancel(tag).catch((error) => this.worker.log.debug('basic.cancel failed', { error: describe(error) })),
    );
    settle(Promise.all(cancels), GOODBYE_TIMEOUT_MS).then(() => this.end('shutdown'));
  }

  /** Publishes on the reply channel; resolves when RabbitMQ confirmed the message. */
  publish(address, body, properties) {
    return new Promise((resolve, reject) => {
      try {
        this.replyChannel.publish('', address.replyTo, body, properties, (error) => {
          if (error) reject(error);
          else resolve();
        });
      } catch (error) {
        // The channel is closed: the session is gone, and the job with it.
        this.lose(`publishing failed: ${describe(error)}`);
        reject(error);
      }
    });
  }

  ack(message) {
    try {
      this.consumeChannel.ack(message);
    } catch (error) {
      // The channel is gone; the broker requeues the job by itself.
      this.worker.log.debug('job not acked: its channel is closed', { error: describe(error) });
    }
  }

  nackRequeue(message) {
    try {
      this.consumeChannel.nack(message, false, true);
    } catch (error) {
      this.worker.log.debug('job not nacked: its channel is closed', { error: describe(error) });
    }
  }

  /** Closes the connection if it still can be (unacked jobs go back to their queues). */
  async close(reason) {
    if (this.closed) return;
    this.closed = true;
    this.end('closed');
    if (this.connection) {
      const outcome = await settle(this.connection.close(), GOODBYE_TIMEOUT_MS);
      this.worker.log.debug('connection closed', { reason, outcome });
    }
  }
}
