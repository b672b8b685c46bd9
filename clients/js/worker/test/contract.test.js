// The contract as the Node SDK spells it: pure functions, no broker.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import * as c from '../src/contract.js';

test('classic queues carry x-max-priority as an unsigned byte only when set', () => {
  assert.deepEqual(c.queueArguments({ queueType: 'classic', prefix: 'p.', maxPriority: 9, deliveryLimit: 3 }), {
    'x-max-priority': { '!': 'unsignedbyte', value: 9 },
  });
  assert.deepEqual(c.queueArguments({ queueType: 'classic', prefix: 'p.', maxPriority: null, deliveryLimit: 3 }), {});
});

test('quorum queues dead-letter to the prefixed exchange with the limit in the routing key', () => {
  assert.deepEqual(c.queueArguments({ queueType: 'quorum', prefix: 't1.', maxPriority: 9, deliveryLimit: 2 }), {
    'x-queue-type': 'quorum',
    'x-delivery-limit': { '!': 'long', value: 2 },
    'x-dead-letter-exchange': 't1.wsmq.dead',
    'x-dead-letter-routing-key': 'wsmq.delivery-limit.2',
  });
});

test('names follow the prefix', () => {
  assert.equal(c.queueName('t1.', 'echo'), 't1.echo');
  assert.equal(c.cancelExchangeName('t1.'), 't1.wsmq.cancel');
  assert.equal(c.deadLetterExchangeName(''), 'wsmq.dead');
  assert.equal(c.isReservedQueueName('AMQ.gen-1'), true);
  assert.equal(c.isReservedQueueName('wsmq.reply.x'), true);
  assert.equal(c.isReservedQueueName('wsmq_echo'), false);
});

test('string headers are read from strings and buffers, nothing else', () => {
  assert.equal(c.headerText('alice'), 'alice');
  assert.equal(c.headerText(Buffer.from('alice')), 'alice');
  assert.equal(c.headerText(7), null);
  assert.equal(c.callerFromHeaders({ 'wsmq-caller': Buffer.from('bob') }), 'bob');
  assert.equal(c.callerFromHeaders({}), null);
  assert.equal(c.callerFromHeaders(undefined), null);
});

test('deadline is read from numbers and decimal strings; garbage is an error', () => {
  assert.deepEqual(c.deadlineFromHeaders({ 'wsmq-deadline': 1_700_000_000_123 }), { deadline: 1_700_000_000_123 });
  assert.deepEqual(c.deadlineFromHeaders({ 'wsmq-deadline': 12.9 }), { deadline: 12 });
  assert.deepEqual(c.deadlineFromHeaders({ 'wsmq-deadline': ' 42 ' }), { deadline: 42 });
  assert.deepEqual(c.deadlineFromHeaders({ 'wsmq-deadline': Buffer.from('42') }), { deadline: 42 });
  assert.deepEqual(c.deadlineFromHeaders({}), { deadline: null });
  assert.deepEqual(c.deadlineFromHeaders(undefined), { deadline: null });
  for (const bad of [-1, Number.NaN, 'soon', true, { a: 1 }]) {
    assert.ok(c.deadlineFromHeaders({ 'wsmq-deadline': bad }).error, String(bad));
  }
});

test('a deadline of exactly now has passed; none never passes', () => {
  assert.equal(c.deadlinePassed(100, 100), true);
  assert.equal(c.deadlinePassed(101, 100), false);
  assert.equal(c.deadlinePassed(null, 100), false);
});

test('reply address needs reply_to and correlation_id', () => {
  assert.deepEqual(c.replyAddress({ replyTo: 'r', correlationId: 'j' }), { replyTo: 'r', correlationId: 'j' });
  assert.equal(c.replyAddress({ replyTo: 'r' }), null);
  assert.equal(c.replyAddress({ correlationId: 'j', replyTo: '' }), null);
});

test('cancellation names its job and reason; unknown reasons still cancel', () => {
  assert.deepEqual(c.readCancellation({ correlationId: 'j', headers: { 'wsmq-reason': 'timeout' } }), {
    jobId: 'j',
    reason: 'timeout',
  });
  assert.deepEqual(c.readCancellation({ correlationId: 'j', headers: { 'wsmq-reason': 'bored' } }), {
    jobId: 'j',
    reason: 'unspecified',
  });
  assert.equal(c.readCancellation({ headers: {} }), null);
});

test('params that are not one JSON value in UTF-8 are a -32700 error', () => {
  assert.deepEqual(c.decodeParams(Buffer.from('{"n": 3}')), { params: { n: 3 } });
  assert.deepEqual(c.decodeParams(Buffer.from('null')), { params: null });
  for (const body of ['{not json', '', '1 2', 'NaN']) {
    const { error } = c.decodeParams(Buffer.from(body));
    assert.equal(error.code, -32700, body);
    assert.equal(error.message, 'params are not valid JSON');
    assert.equal(typeof error.data, 'string');
  }
  assert.deepEqual(c.decodeParams(Buffer.from([0x22, 0xff, 0x22])).error, {
    code: -32700,
    message: 'params are not valid JSON',
    data: 'body is not UTF-8',
  });
});

test('a result reply is the bare JSON result; undefined is null', () => {
  assert.deepEqual(c.encodeReply({ result: { slept: 5 } }, 1024), { status: 'ok', body: Buffer.from('{"slept":5}') });
  assert.deepEqual(c.encodeReply({ result: undefined }, 1024), { status: 'ok', body: Buffer.from('null') });
});

test('an error reply is the JSON-RPC error object, without absent data', () => {
  assert.deepEqual(c.encodeReply({ error: { code: 4000, message: 'm', data: [1] } }, 1024), {
    status: 'error',
    body: Buffer.from('{"code":4000,"message":"m","data":[1]}'),
  });
  assert.deepEqual(c.encodeReply({ error: { code: 4000, message: 'm', data: undefined } }, 1024).body, Buffer.from('{"code":4000,"message":"m"}'));
  assert.deepEqual(c.encodeReply({ error: { code: 4000, message: 'm', data: null } }, 1024).body, Buffer.from('{"code":4000,"message":"m","data":null}'));
});

test('a result JSON cannot encode becomes -32603 saying why', () => {
  const cycle = {};
  cycle.self = cycle;
  const throwing = { toJSON() { throw new Error('nope'); } };
  for (const [result, why] of [
    [10n, 'reply could not be encoded as JSON: Do not know how to serialize a BigInt'],
    [cycle, 'reply could not be encoded as JSON: Converting circular structure to JSON'],
    [() => 1, 'reply could not be encoded as JSON: a function is no JSON value'],
    [throwing, 'reply could not be encoded as JSON: nope'],
  ]) {
    const reply = c.encodeReply({ result }, 1024);
    assert.equal(reply.status, 'error');
    const error = JSON.parse(reply.body);
    assert.equal(error.code, -32603);
    assert.ok(error.message.startsWith(`internal error: ${why}`), error.message);
  }
  const badData = c.encodeReply({ error: { code: 1, message: 'm', data: 1n } }, 1024);
  assert.equal(JSON.parse(badData.body).code, -32603);
});

test('an oversized reply becomes -32603 naming the sizes', () => {
  const reply = c.encodeReply({ result: 'x'.repeat(100) }, 64);
  assert.equal(reply.status, 'error');
  assert.deepEqual(JSON.parse(reply.body), {
    code: -32603,
    message: "internal error: reply of 102 bytes exceeds the worker's limit of 64 bytes",
  });
});

test('progress is encoded as JSON, or refused with a reason', () => {
  assert.deepEqual(c.encodeProgress({ step: 1 }, 64), { body: Buffer.from('{"step":1}') });
  assert.match(c.encodeProgress(1n, 64).error, /^progress could not be encoded as JSON/);
  assert.match(c.encodeProgress('x'.repeat(100), 64).error, /exceeds the worker's limit of 64 bytes$/);
});

test('reply properties follow the contract', () => {
  assert.deepEqual(c.replyProperties('j', 'progress'), {
    correlationId: 'j',
    contentType: 'application/json',
    deliveryMode: 2,
    headers: { 'wsmq-status': 'progress' },
  });
});
