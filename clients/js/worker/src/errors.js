// The error a handler throws to answer its call with a JSON-RPC error of its own.

const BRAND = Symbol.for('wsmq.WsmqJobError');

/**
 * Thrown by a handler to answer its call with exactly this JSON-RPC error: `code`, `message`
 * and, when given, `data` reach the caller as they are. Any other thrown value is answered
 * -32603 "internal error: method <name> failed", and its stack is logged, never sent.
 */
export class WsmqJobError extends Error {
  /**
   * @param {number} code an integer; -32768..-32000 is reserved by JSON-RPC, apps use the rest
   * @param {string} message a short description
   * @param {*} [data] anything JSON can encode; left out of the error when `undefined`
   */
  constructor(code, message, data) {
    if (!Number.isSafeInteger(code)) {
      throw new TypeError(`WsmqJobError code must be an integer, got ${String(code)}`);
    }
    if (typeof message !== 'string') {
      throw new TypeError(`WsmqJobError message must be a string, got ${typeof message}`);
    }
    super(message);
    this.name = 'WsmqJobError';
    this.code = code;
    this.data = data;
  }

  /** The JSON-RPC error object this error is answered with. */
  toJSON() {
    return this.data === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, data: this.data };
  }

  /** Whether `value` is a WsmqJobError, from this copy of the package or another. */
  static [Symbol.hasInstance](value) {
    return value !== null && typeof value === 'object' && value[BRAND] === true;
  }
}

Object.defineProperty(WsmqJobError.prototype, BRAND, { value: true });
