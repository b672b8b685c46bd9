// The command line: `wsmq-worker [flags] MODULE[:EXPORT]` loads a module that builds a Worker
// and runs it until SIGTERM or SIGINT.

import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

import { WorkerConfigError } from './worker.js';

/** Exit status for a bad command line or configuration (BSD `EX_USAGE`, like the Rust binaries). */
export const EXIT_USAGE = 64;

export const USAGE = `usage: wsmq-worker [flags] MODULE[:EXPORT]

Runs the wsmq worker that MODULE exports (its default export, or EXPORT) until SIGTERM or
SIGINT, then lets the running jobs finish and exits 0. Flags override the module's settings
and the environment (WSMQ_AMQP, WSMQ_QUEUE_PREFIX, ...):

  --amqp URL            a broker; repeat for several, tried in order (or a comma-separated list)
  --queue-prefix P      prefix of the method queues; must match the bridge's
  --concurrency N       jobs at once, and each queue's prefetch
  --queue-type T        classic or quorum
  --delivery-limit N    with quorum queues: returns a job survives before it is dead-lettered
  --max-priority N      x-max-priority of classic queues; 0 for none
  --log-format F        plain or json
  -h, --help            this text`;

const FLAGS = {
  '--amqp': 'amqp',
  '--queue-prefix': 'queuePrefix',
  '--concurrency': 'concurrency',
  '--queue-type': 'queueType',
  '--delivery-limit': 'deliveryLimit',
  '--max-priority': 'maxPriority',
  '--log-format': 'logFormat',
};
const NUMERIC = new Set(['concurrency', 'deliveryLimit', 'maxPriority']);

/**
 * Parses the command line: `{ help: true }`, or `{ module, exportName, options }`; throws a
 * `WorkerConfigError` naming what is wrong.
 */
export function parseArgs(argv) {
  const options = {};
  const positional = [];
  for (let i = 0; i < argv.length; i += 1) {
    let arg = argv[i];
    if (arg === '-h' || arg === '--help') return { help: true };
    let value;
    const eq = arg.indexOf('=');
    if (arg.startsWith('--') && eq > 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    if (arg.startsWith('-')) {
      const key = FLAGS[arg];
      if (!key) throw new WorkerConfigError(`unknown flag ${arg}`);
      if (value === undefined) {
        i += 1;
        if (i >= argv.length) throw new WorkerConfigError(`${arg} needs a value`);
        value = argv[i];
      }
      if (NUMERIC.has(key)) {
        if (!/^[0-9]+$/.test(value)) throw new WorkerConfigError(`${arg} must be a non-negative integer, got ${JSON.stringify(value)}`);
        options[key] = Number(value);
      } else if (key === 'amqp') {
        options.amqp = [...(options.amqp ?? []), ...value.split(',')];
      } else {
        options[key] = value;
      }
    } else {
      positional.push(arg);
    }
  }
  if (positional.length !== 1) throw new WorkerConfigError('give exactly one MODULE[:EXPORT]');
  const [spec] = positional;
  // A colon after the last path separator names the export (not a Windows drive letter).
  const colon = spec.lastIndexOf(':');
  const slash = Math.max(spec.lastIndexOf('/'), spec.lastIndexOf('\\'));
  const hasExport = colon > slash && colon > 1;
  return {
    module: hasExport ? spec.slice(0, colon) : spec,
    exportName: hasExport ? spec.slice(colon + 1) : 'default',
    options,
  };
}

/** Runs the command line; resolves to the exit status. */
export async function main(argv) {
  let parsed;
  try {
    parsed = parseArgs(argv);
  } catch (error) {
    process.stderr.write(`wsmq-worker: ${error.message}\n${USAGE}\n`);
    return EXIT_USAGE;
  }
  if (parsed.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const url = pathToFileURL(resolve(parsed.module)).href;
  const loaded = await import(url);
  const worker = loaded[parsed.exportName];
  // Duck-typed: the module may have loaded another copy of this package.
  if (typeof worker?.run !== 'function' || typeof worker?.configure !== 'function') {
    process.stderr.write(`wsmq-worker: ${parsed.module} exports no Worker as ${parsed.exportName}\n`);
    return EXIT_USAGE;
  }
  worker.configure(parsed.options);
  try {
    await worker.run();
  } catch (error) {
    if (error instanceof WorkerConfigError) {
      process.stderr.write(`wsmq-worker: ${error.message}\n`);
      return EXIT_USAGE;
    }
    throw error;
  }
  return process.exitCode ?? 0;
}
