// The demo methods (echo, sleep, progress, fail: as the Rust demo worker serves them) and the
// conformance methods (conf.*, exactly as docs/conformance.md defines them), served by the Node SDK.
//
//   node bin/wsmq-worker.js examples/demo.js --queue-prefix P
//
// Settings come from the environment (WSMQ_AMQP, WSMQ_QUEUE_PREFIX, ...) or the flags.

import { setTimeout as sleep } from 'node:timers/promises';

import { INVALID_PARAMS, Worker, WsmqJobError } from '../index.js';

const MAX_SLEEP_MS = 600_000;
const MAX_PROGRESS_STEPS = 1000;
const MAX_PROGRESS_STEP_MS = 60_000;
const MAX_CONF_PROGRESS_STEPS = 100;
const MAX_CONF_SLEEP_MS = 60_000;
const FAIL_CODE = 4000;

function invalid(reason) {
  return new WsmqJobError(INVALID_PARAMS, `invalid params: ${reason}`);
}

/** `params[name]`, an integer from 0 to `max`, or an invalid-params error. */
function count(params, name, max) {
  const value = params !== null && typeof params === 'object' ? params[name] : undefined;
  if (!Number.isSafeInteger(value) || value < 0) throw invalid(`${name} must be a non-negative integer`);
  if (value > max) throw invalid(`${name} must be at most ${max}, got ${value}`);
  return value;
}

/** Waits `ms`, or less when the job's signal aborts (the SDK then sends nothing). */
async function pause(ms, job) {
  await sleep(ms, undefined, { signal: job.signal });
}

/** How many jobs of each `conf.sleep` tag this process started. */
const runs = new Map();

export const worker = new Worker();

worker
  .method('echo', (params) => params)
  .method('sleep', async (params, job) => {
    const ms = count(params, 'ms', MAX_SLEEP_MS);
    await pause(ms, job);
    return { slept_ms: ms };
  })
  .method('progress', async (params, job) => {
    const steps = count(params, 'steps', MAX_PROGRESS_STEPS);
    const ms = count(params, 'ms', MAX_PROGRESS_STEP_MS);
    for (let step = 1; step <= steps; step += 1) {
      await pause(ms, job);
      await job.progress({ step, of: steps });
    }
    return { done: steps };
  })
  .method('fail', (params) => {
    throw new WsmqJobError(FAIL_CODE, 'requested failure', params);
  })
  .method('conf.echo', (params) => params)
  .method('conf.progress', async (params, job) => {
    const steps = count(params, 'steps', MAX_CONF_PROGRESS_STEPS);
    // Published at once, in order (one channel keeps it); their confirms are awaited together,
    // so a broker slow to confirm (an fsync per batch) costs one wait, not one per report.
    const reports = [];
    for (let step = 1; step <= steps; step += 1) {
      reports.push(job.progress({ step }));
    }
    await Promise.all(reports);
    return { steps };
  })
  .method('conf.sleep', async (params, job) => {
    const ms = count(params, 'ms', MAX_CONF_SLEEP_MS);
    const tag = params.tag;
    if (tag !== undefined && typeof tag !== 'string') throw invalid('tag must be a string');
    if (tag !== undefined) runs.set(tag, (runs.get(tag) ?? 0) + 1);
    // How the kit knows the job runs (to cancel it, or kill this worker, at the right moment).
    // Not awaited: the report goes out before the result either way.
    job.progress({ started: true });
    await pause(ms, job);
    return { slept: ms };
  })
  .method('conf.runs', (params) => {
    const tag = params !== null && typeof params === 'object' ? params.tag : undefined;
    if (typeof tag !== 'string') throw invalid('tag must be a string');
    return { runs: runs.get(tag) ?? 0 };
  })
  .method('conf.fail', (params) => {
    if (params === null || typeof params !== 'object') throw invalid('expected {code, message, data?}');
    const { code, message } = params;
    if (!Number.isSafeInteger(code)) throw invalid('code must be an integer');
    if (typeof message !== 'string') throw invalid('message must be a string');
    throw new WsmqJobError(code, message, Object.hasOwn(params, 'data') ? params.data : undefined);
  })
  .method('conf.caller', (_params, job) => ({ caller: job.caller }))
  .method('conf.raise', () => {
    throw new Error('conf.raise raises on purpose');
  });

export default worker;
