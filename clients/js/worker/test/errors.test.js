import assert from 'node:assert/strict';
import { test } from 'node:test';

import { WsmqJobError } from '../src/errors.js';

test('a job error is the JSON-RPC error object it names', () => {
  assert.deepEqual(new WsmqJobError(4001, 'bad image', { why: 'x' }).toJSON(), {
    code: 4001,
    message: 'bad image',
    data: { why: 'x' },
  });
  assert.deepEqual(new WsmqJobError(4001, 'bad image').toJSON(), { code: 4001, message: 'bad image' });
  assert.deepEqual(new WsmqJobError(4001, 'm', null).toJSON(), { code: 4001, message: 'm', data: null });
});

test('a job error needs an integer code and a string message', () => {
  assert.throws(() => new WsmqJobError(1.5, 'm'), TypeError);
  assert.throws(() => new WsmqJobError('4000', 'm'), TypeError);
  assert.throws(() => new WsmqJobError(4000, 42), TypeError);
});

test('a job error from another copy of the package is recognised', () => {
  const foreign = { code: 1, message: 'm', [Symbol.for('wsmq.WsmqJobError')]: true };
  assert.ok(foreign instanceof WsmqJobError);
  assert.ok(!({ code: 1, message: 'm' } instanceof WsmqJobError));
  assert.ok(new WsmqJobError(1, 'm') instanceof Error);
});
