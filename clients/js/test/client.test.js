// The JavaScript client against a real gateway, bridge, demo worker and RabbitMQ.
//
// Run by the Rust e2e test `clients::js_client_passes_its_node_tests_against_a_real_system`,
// which starts the system with a gateway that requires a token and passes its websocket URL in
// WSMQ_URL and the token in WSMQ_TOKEN. By hand, against a gateway with `--tokens` listing it:
//   WSMQ_URL=ws://127.0.0.1:8080/ws WSMQ_TOKEN=... node --experimental-websocket --test clients/js/test/

import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  connect, codes, WsmqError, TimeoutError, CancelledError, ConnectionLostError,
} from '../wsmq.js';
import { Proxy } from './proxy.js';

const URL_ = process.env.WSMQ_URL;
assert.ok(URL_, 'WSMQ_URL must name the gateway websocket, e.g. ws://127.0.0.1:8080/ws');
const GATEWAY = new URL(URL_).host;
const TOKEN = process.env.WSMQ_TOKEN;
assert.ok(TOKEN, 'WSMQ_TOKEN must be a token the gateway requires (it runs with --tokens)');

/** How long a test polls for something the gateway does before it fails. */
const POLL_LIMIT_MS = 10_000;

/** A client whose state changes are recorded, connected through `proxy` when given. */
async function open(proxy, options = {}) {
  const url = proxy ? `ws://127.0.0.1:${proxy.port}/ws` : URL_;
  const states = [];
  const waiters = [];
  const client = await connect(url, {
    token: TOKEN,
    ...options,
    onState(state, info) {
      states.push({ state, ...info });
      for (const w of [...waiters]) w();
    },
  });
  /** Resolves once `pred(states)` holds. */
  client.until = (pred) => new Promise((resolve) => {
    const check = () => {
      if (pred(states)) {
        waiters.splice(waiters.indexOf(check), 1);
        resolve();
      }
    };
    waiters.push(check);
    check();
  });
  client.states = states;
  return client;
}

/** Resolves once the gateway's `$/session` greeting has arrived. */
async function sessionOf(client) {
  await client.until(() => client.session !== null);
  return client.session;
}

async function metric(name, labels) {
  const url = new URL(URL_);
  url.protocol = 'http:';
  url.pathname = '/metrics';
  const text = await (await fetch(url)).text();
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) {
      total += Number(line.split(' ').pop());
    }
  }
  return total;
}

test('a call resolves with its result', async () => {
  const c = await open();
  assert.deepEqual(await c.call('echo', { hello: 'wsmq', n: [1, 2] }), { hello: 'wsmq', n: [1, 2] });
  assert.deepEqual(await c.call('fib', { n: 50 }), 12586269025);
  await c.close();
});

test('results arrive as jobs finish, each to its own promise', async () => {
  const c = await open();
  const order = [];
  const slow = c.call('sleep', { ms: 2000 }).then((r) => { order.push('slow'); return r; });
  const fast = c.call('echo', { fast: true }).then((r) => { order.push('fast'); return r; });
  assert.deepEqual(await Promise.all([slow, fast]), [{ slept_ms: 2000 }, { fast: true }]);
  assert.deepEqual(order, ['fast', 'slow']);
  await c.close();
});

test('progress reports reach onProgress in order, before the result', async () => {
  const c = await open();
  const seen = [];
  const result = await c.call('progress', { steps: 4, ms: 20 }, {
    onProgress: (value) => seen.push(value),
  });
  assert.deepEqual(result, { done: 4 });
  assert.deepEqual(seen, [1, 2, 3, 4].map((step) => ({ step, of: 4 })));
  await c.close();
});

test('errors are typed and carry the JSON-RPC code and data', async () => {
  const c = await open();
  const fail = await c.call('fail', { why: 'testing' }).catch((e) => e);
  assert.ok(fail instanceof WsmqError);
  assert.equal(fail.code, 4000);
  assert.equal(fail.message, 'requested failure');
  assert.deepEqual(fail.data, { why: 'testing' });

  const missing = await c.call('no-such-method-here', {}).catch((e) => e);
  assert.equal(missing.code, codes.METHOD_NOT_FOUND);

  await assert.rejects(c.call('echo', {}, { timeoutMs: 0 }), RangeError);

  const badPriority = await c.call('echo', {}, { priority: 10 }).catch((e) => e);
  assert.equal(badPriority.code, codes.INVALID_REQUEST);
  assert.equal(badPriority.retryable, false);
  await c.close();
});

test('the timeout option becomes the gateway deadline: -32001 as TimeoutError', async () => {
  const c = await open();
  const error = await c.call('sleep', { ms: 5000 }, { timeoutMs: 200 }).catch((e) => e);
  assert.ok(error instanceof TimeoutError, String(error));
  assert.equal(error.code, codes.TIMEOUT);
  // The connection is fine afterwards.
  assert.deepEqual(await c.call('echo', [1]), [1]);
  await c.close();
});

test('a priority is accepted and the call still answers', async () => {
  const c = await open();
  assert.deepEqual(await c.call('echo', { p: 9 }, { priority: 9 }), { p: 9 });
  await c.close();
});

test('aborting the signal rejects at once with CancelledError and cancels on the gateway',
  async () => {
    const c = await open();
    const before = await metric('wsmq_calls_total', { method: 'progress', outcome: 'cancelled' });
    const abort = new AbortController();
    const seen = [];
    const call = c.call('progress', { steps: 1000, ms: 50 }, {
      signal: abort.signal,
      onProgress: (v) => {
        seen.push(v);
        if (seen.length === 1) abort.abort();
      },
    });
    const error = await call.catch((e) => e);
    assert.ok(error instanceof CancelledError, String(error));
    assert.equal(error.code, codes.CANCELLED);
    assert.equal(c.pending, 0);
    // The gateway got `$/cancel` and ended the call as cancelled.
    const deadline = Date.now() + POLL_LIMIT_MS;
    for (;;) {
      const after = await metric('wsmq_calls_total', { method: 'progress', outcome: 'cancelled' });
      if (after > before) break;
      assert.ok(Date.now() < deadline,
        `no cancelled progress call in /metrics within ${POLL_LIMIT_MS} ms (${after} <= ${before})`);
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.deepEqual(await c.call('echo', ['still here']), ['still here']);
    await c.close();
  });

test('an already aborted signal rejects without sending', async () => {
  const c = await open();
  const abort = new AbortController();
  abort.abort();
  await assert.rejects(c.call('echo', {}, { signal: abort.signal }), CancelledError);
  await c.close();
});

test('a dropped connection resumes its session and loses nothing', async () => {
  const proxy = await Proxy.start(GATEWAY);
  const c = await open(proxy);
  const token = await sessionOf(c);
  const seen = [];
  let cut = false;
  const call = c.call('progress', { steps: 6, ms: 100 }, {
    onProgress: (v) => {
      seen.push(v.step);
      if (!cut) {
        cut = true;
        proxy.cut();
      }
    },
  });
  // A call made while the connection is down is queued and sent on resume.
  await c.until((s) => s.some((x) => x.state === 'reconnecting'));
  const later = c.call('echo', { queued: true });

  assert.deepEqual(await call, { done: 6 });
  assert.deepEqual(seen, [1, 2, 3, 4, 5, 6], 'every progress report, in order');
  assert.deepEqual(await later, { queued: true });
  assert.equal(c.state, 'open');
  assert.equal(c.session, token, 'the same session was resumed');
  assert.ok(proxy.accepted >= 2, 'a second connection was made');
  await c.close();
  await proxy.close();
});

test('a session that cannot be resumed fails its calls with ConnectionLostError, then a new one serves',
  async () => {
    const proxy = await Proxy.start(GATEWAY);
    const c = await open(proxy);
    const token = await sessionOf(c);
    const inFlight = c.call('sleep', { ms: 3000 });
    // Let the request reach the gateway before cutting.
    assert.deepEqual(await c.call('echo', [1]), [1]);
    proxy.refuseResume = true;
    proxy.cut();
    const error = await inFlight.catch((e) => e);
    assert.ok(error instanceof ConnectionLostError, String(error));
    assert.equal(error.code, codes.CONNECTION_LOST);
    assert.equal(error.retryable, true);

    await c.until(() => c.state === 'open' && c.session !== null && c.session !== token);
    assert.notEqual(c.session, token);
    assert.deepEqual(await c.call('echo', ['new session']), ['new session']);
    await c.close();
    await proxy.close();
  });

test('a call whose request never reaches the gateway settles by its own deadline', async () => {
  const proxy = await Proxy.start(GATEWAY);
  const c = await open(proxy);
  await sessionOf(c);
  proxy.blackhole = true;
  const error = await c.call('echo', {}, { timeoutMs: 100 }).catch((e) => e);
  assert.ok(error instanceof TimeoutError, String(error));
  assert.equal(c.pending, 0);
  await c.close();
  await proxy.close();
});

test('close() fails pending calls and later calls with ConnectionLostError', async () => {
  const c = await open();
  const pending = c.call('sleep', { ms: 2000 }).catch((e) => e);
  await c.close();
  assert.ok((await pending) instanceof ConnectionLostError);
  await assert.rejects(c.call('echo', {}), ConnectionLostError);
  assert.equal(c.state, 'closed');
});

test('connect() rejects when nothing listens', async () => {
  const proxy = await Proxy.start(GATEWAY);
  const port = proxy.port;
  await proxy.close();
  await assert.rejects(connect(`ws://127.0.0.1:${port}/ws`), ConnectionLostError);
});

test('the token is passed along as ?token=: the gateway refuses the same client without it',
  async () => {
    const c = await open(null, { token: TOKEN });
    assert.deepEqual(await c.call('echo', ['t']), ['t']);
    await c.close();
    await assert.rejects(connect(URL_), ConnectionLostError);
    await assert.rejects(connect(URL_, { token: `${TOKEN}-wrong` }), ConnectionLostError);
  });
