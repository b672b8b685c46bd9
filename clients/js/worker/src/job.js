// What a handler is given besides its params: the job's identity, its cancellation signal and
// a way to report progress.

/** Why a job's signal was aborted: `reason` is `cancelled`, `timeout`, `shutdown` or `lost`. */
export class JobAbortedError extends Error {
  constructor(reason, message) {
    super(message);
    this.name = 'AbortError';
    this.reason = reason;
  }
}

/**
 * One job, as its handler sees it.
 *
 * - `id`: the job id (the message's `correlation_id`, a UUID);
 * - `method`: the method called;
 * - `caller`: the caller's authenticated identity (`wsmq-caller`), or `null`;
 * - `deadline`: when the caller stops waiting, a `Date`, or `null`;
 * - `redelivered`: whether the broker delivered this job before (at-least-once delivery);
 * - `signal`: an `AbortSignal`, aborted when the call is cancelled, when its deadline passes,
 *   when the worker gives up on it at shutdown, or when the broker connection is lost. Whatever
 *   the handler returns after that is not sent, and the job is acked;
 * - `progress(value)`: see below.
 */
export class Job {
  /** @internal built by the worker */
  constructor({ id, method, caller, deadline, redelivered, signal, report }) {
    this.id = id;
    this.method = method;
    this.caller = caller;
    this.deadline = deadline === null ? null : new Date(deadline);
    this.redelivered = redelivered;
    this.signal = signal;
    Object.defineProperty(this, 'report', { value: report });
  }

  /**
   * Sends `value` (anything JSON can encode) to the caller as a `$/progress` notification.
   * Reports reach the caller in the order they are made, all before the result.
   *
   * Throws at once (a `TypeError` or `RangeError`) when `value` cannot be encoded as JSON or
   * is larger than the worker's `maxReplyBytes`. Otherwise returns a promise that never
   * rejects: `true` once RabbitMQ confirmed the report, `false` when it was not sent (the job
   * was cancelled or has returned, or the connection was lost) or the broker refused it.
   * Awaiting it is optional; it makes a fast producer wait for the broker.
   *
   * @param {*} value
   * @returns {Promise<boolean>}
   */
  progress(value) {
    return this.report(value);
  }
}
