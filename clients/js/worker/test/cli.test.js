import assert from 'node:assert/strict';
import { test } from 'node:test';

import { parseArgs } from '../src/cli.js';
import { WorkerConfigError } from '../src/worker.js';

test('flags become worker settings, --amqp repeatable and comma-separated', () => {
  assert.deepEqual(
    parseArgs(['--amqp', 'amqp://a', '--amqp=amqp://b,amqp://c', '--queue-prefix', 'p.', '--concurrency', '4', './w.js']),
    { module: './w.js', exportName: 'default', options: { amqp: ['amqp://a', 'amqp://b', 'amqp://c'], queuePrefix: 'p.', concurrency: 4 } },
  );
});

test('MODULE:EXPORT names the export', () => {
  assert.equal(parseArgs(['./w.js:worker']).exportName, 'worker');
  assert.equal(parseArgs(['./w.js:worker']).module, './w.js');
  assert.equal(parseArgs(['C:\\w.js']).module, 'C:\\w.js');
});

test('a bad command line is refused with the reason', () => {
  assert.throws(() => parseArgs([]), WorkerConfigError);
  assert.throws(() => parseArgs(['--bogus', 'x', 'w.js']), /unknown flag --bogus/);
  assert.throws(() => parseArgs(['--concurrency', 'many', 'w.js']), /must be a non-negative integer/);
  assert.throws(() => parseArgs(['w.js', '--amqp']), /--amqp needs a value/);
  assert.deepEqual(parseArgs(['-h']), { help: true });
});
