// wsmq-worker: serve wsmq JSON-RPC methods from RabbitMQ in Node.js.

export { Worker, WorkerConfigError, DEFAULT_AMQP, DEFAULT_CONCURRENCY, DEFAULT_MAX_REPLY_BYTES,
  DEFAULT_SHUTDOWN_GRACE_MS, DEFAULT_DELIVERY_LIMIT } from './src/worker.js';
export { WsmqJobError } from './src/errors.js';
export { Job, JobAbortedError } from './src/job.js';
export { createLogger } from './src/log.js';
export { PARSE_ERROR, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR } from './src/contract.js';
