// The worker's bookkeeping: cancelled ids, backoff, broker order, slots.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Backoff, RecentlyCancelled, Slots, brokerUrls, maskUrl, tryOrder, urlProblem } from '../src/lifecycle.js';

test('recently cancelled forgets the oldest id first', () => {
  const set = new RecentlyCancelled(3);
  for (const id of ['a', 'b', 'c', 'd']) set.add(id);
  assert.equal(set.has('a'), false);
  assert.ok(set.has('b') && set.has('c') && set.has('d'));
  assert.equal(set.size, 3);
});

test('a repeated cancellation does not make an id live longer', () => {
  const set = new RecentlyCancelled(2);
  set.add('a');
  set.add('b');
  set.add('a');
  set.add('c');
  assert.equal(set.has('a'), false);
  assert.ok(set.has('b') && set.has('c'));
});

test('backoff doubles from 100 ms to a 5 s cap, jittered within [half, full]', () => {
  const low = new Backoff(100, 5000, () => 0);
  const high = new Backoff(100, 5000, () => 1);
  const lows = Array.from({ length: 8 }, () => low.nextDelay());
  const highs = Array.from({ length: 8 }, () => high.nextDelay());
  assert.deepEqual(highs, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
  assert.deepEqual(lows, [50, 100, 200, 400, 800, 1600, 2500, 2500]);
  high.reset();
  assert.equal(high.nextDelay(), 100);
});

test('broker URLs come from an array or a comma-separated list', () => {
  assert.deepEqual(brokerUrls('amqp://a, amqp://b,,'), ['amqp://a', 'amqp://b']);
  assert.deepEqual(brokerUrls(['amqp://a', ' amqp://b ']), ['amqp://a', 'amqp://b']);
});

test('a URL that is not amqp: or amqps: is named as unusable', () => {
  assert.equal(urlProblem('amqp://guest:guest@127.0.0.1:5672/%2f'), null);
  assert.equal(urlProblem('amqps://h'), null);
  assert.equal(urlProblem('http://h'), 'has scheme http: (amqp: or amqps: expected)');
  assert.equal(urlProblem('not a url'), 'is not a URL');
});

test('logs never show a broker password', () => {
  assert.equal(maskUrl('amqp://u:secret@h:5672/%2f'), 'amqp://u:***@h:5672/%2f');
});

test('after losing a broker the next one is tried first, the lost one last', () => {
  assert.deepEqual(tryOrder(3, -1), [0, 1, 2]);
  assert.deepEqual(tryOrder(3, 0), [1, 2, 0]);
  assert.deepEqual(tryOrder(3, 2), [0, 1, 2]);
  assert.deepEqual(tryOrder(1, 0), [0]);
});

test('slots let at most the limit through, then hand on in order', async () => {
  const slots = new Slots(1);
  const order = [];
  await slots.acquire();
  const second = slots.acquire().then(() => order.push('second'));
  const third = slots.acquire().then(() => order.push('third'));
  assert.equal(slots.pending, 2);
  slots.release();
  await second;
  slots.release();
  await third;
  assert.deepEqual(order, ['second', 'third']);
});
